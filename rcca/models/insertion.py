"""Placing context modules (RCCA-3D, non-local) after blocks of a backbone or of any 3D network.

Two kinds of network take context modules:

* A `VideoBackbone` (TSM ResNet, MF-Net): positions are the paper's block names `convN_i`
  (`rcca.models.positions`), and the module becomes the block's `context`, which the block
  applies to its output as N x C x T x H x W (TSM's non-local extension does the same).
  Parameter names: `<block>.context.*`.
* Any other `nn.Module`: positions are dotted submodule names (as in `named_modules()`)
  of submodules whose output is N x C x T x H x W. Each is replaced in its parent by a
  `WithContext(block, context)` computing context(block(x)). Parameter names of a wrapped
  submodule move from `<name>.*` to `<name>.block.*`, so load pretrained weights first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from rcca.models.interface import VideoBackbone
from rcca.models.positions import valid_positions


class WithContext(nn.Module):
    """A submodule followed by a context module: context(block(x)).

    Args:
        block: the submodule; its output is N x C x T x H x W.
        context: a module taking and returning N x C x T x H x W (e.g. `RCCA3D(C)`).

    Shapes: the block's input in, the block's output shape out.
    """

    def __init__(self, block: nn.Module, context: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.context = context

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.context(self.block(*args, **kwargs))


def blocks_by_position(stages: dict[str, list[nn.Module]]) -> dict[str, nn.Module]:
    """Position name -> block, for a backbone's `residual_blocks()` (stages conv2, conv3, ... in order).

    Args:
        stages: stage name -> its blocks, as returned by `VideoBackbone.residual_blocks`.

    Returns:
        `convN_i` -> the i-th block of stage N, in network order.
    """
    positions = valid_positions([len(blocks) for blocks in stages.values()])
    return dict(zip(positions, (block for blocks in stages.values() for block in blocks)))


def block_contexts(stages: dict[str, list[nn.Module]]) -> dict[str, nn.Module]:
    """The context modules set on a backbone's blocks (what `VideoBackbone.context_modules` returns).

    Args:
        stages: stage name -> its blocks, as returned by `VideoBackbone.residual_blocks`.

    Returns:
        `convN_i` -> the `context` of that block, for the blocks that have one, in network order.
    """
    blocks = blocks_by_position(stages)
    return {position: block.context for position, block in blocks.items() if block.context is not None}


def context_modules(model: nn.Module) -> dict[str, nn.Module]:
    """The context modules inserted into `model` by `insert_context_modules`.

    Args:
        model: a `VideoBackbone`, or any network with `WithContext` submodules.

    Returns:
        Position -> context module: `convN_i` names for a backbone, otherwise the dotted
        names of the submodules the modules follow. In network order.
    """
    if isinstance(model, VideoBackbone):
        return model.context_modules()
    return {name: module.context for name, module in model.named_modules() if isinstance(module, WithContext)}


def insert_context_modules(
    model: nn.Module,
    positions: Sequence[str],
    make_module: Callable[[int], nn.Module],
    *,
    channels: int | None = None,
    example_input: Tensor | None = None,
) -> dict[str, nn.Module]:
    """Insert `make_module(C)` after each named block of `model`, in place (see the module docstring).

    Args:
        model: a `VideoBackbone`, or any network whose named submodules output N x C x T x H x W.
        positions: where to insert: `convN_i` names for a backbone, dotted submodule names
            (e.g. "layer2" or "features.3") for any other network.
        make_module: builds the context module from the channel count C, e.g. `RCCA3D` or
            `functools.partial(RCCA3D, recurrence=2)`.
        channels: other networks only: C of every named submodule's output. When left out,
            C is read from a dry run of `model(example_input)`.
        example_input: other networks only: an input for that dry run, which runs in eval
            mode without gradients and leaves every module's training mode as it was.

    Returns:
        Position -> the inserted module, in the order of `positions`.

    Raises:
        ValueError: a position names no block (the message lists the valid ones) or is
            listed twice; a backbone is given `channels` or `example_input`; another
            network is given neither; or the dry run shows an output that is not 5-D.
    """
    duplicates = sorted({position for position in positions if list(positions).count(position) > 1})
    if duplicates:
        raise ValueError(f"positions: {', '.join(duplicates)} listed twice")
    if isinstance(model, VideoBackbone):
        if channels is not None or example_input is not None:
            raise ValueError("channels and example_input are for other networks: a VideoBackbone knows its blocks' C")
        return _insert_into_backbone(model, positions, make_module)
    return _insert_after_submodules(model, positions, make_module, channels, example_input)


def _insert_into_backbone(
    backbone: VideoBackbone, positions: Sequence[str], make_module: Callable[[int], nn.Module]
) -> dict[str, nn.Module]:
    """Set `make_module(C)` as the `context` of the blocks at `positions` (`convN_i`)."""
    blocks = blocks_by_position(backbone.residual_blocks())
    unknown = [position for position in positions if position not in blocks]
    if unknown:
        unknown_names = ", ".join(map(repr, unknown))
        raise ValueError(f"module.positions: {unknown_names} not a block of this backbone; valid: {', '.join(blocks)}")
    inserted: dict[str, nn.Module] = {}
    for position in positions:
        block = blocks[position]
        block.context = make_module(backbone.block_channels(block))
        inserted[position] = block.context
    return inserted


def _insert_after_submodules(
    model: nn.Module,
    names: Sequence[str],
    make_module: Callable[[int], nn.Module],
    channels: int | None,
    example_input: Tensor | None,
) -> dict[str, nn.Module]:
    """Replace each named submodule of `model` by `WithContext(submodule, make_module(C))`."""
    submodules = dict(model.named_modules())
    unknown = [name for name in names if name not in submodules or name == ""]
    if unknown:
        valid = ", ".join(name for name in submodules if name)
        raise ValueError(f"positions: {', '.join(map(repr, unknown))} not a submodule of the network; valid: {valid}")
    if channels is None:
        if example_input is None:
            raise ValueError("give channels= (C of the named submodules' outputs) or example_input= to measure it")
        widths = _output_channels(model, {name: submodules[name] for name in names}, example_input)
    else:
        widths = dict.fromkeys(names, channels)
    inserted: dict[str, nn.Module] = {}
    for name in names:  # parents are looked up before any replacement, so nested names work too
        parent_name, _, child = name.rpartition(".")
        wrapper = WithContext(submodules[name], make_module(widths[name]))
        setattr(submodules[parent_name], child, wrapper)
        inserted[name] = wrapper.context
    return inserted


def _output_channels(model: nn.Module, targets: dict[str, nn.Module], example_input: Tensor) -> dict[str, int]:
    """C of each target's N x C x T x H x W output, from one forward of `model(example_input)`.

    The forward runs in eval mode (batch-norm statistics untouched) without gradients; every
    module's training mode is restored afterwards.
    """
    shapes: dict[str, tuple[int, ...] | str] = {}  # an output's shape, or what it is when not a tensor

    def recorder(name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(_: nn.Module, __: Any, output: Any) -> None:
            shapes.setdefault(name, tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__)

        return hook

    modes = {module: module.training for module in model.modules()}
    hooks = [module.register_forward_hook(recorder(name)) for name, module in targets.items()]
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in modes.items():
            module.training = training
    found = {name: shapes.get(name, "never called") for name in targets}
    wrong = {name: shape for name, shape in found.items() if not (isinstance(shape, tuple) and len(shape) == 5)}
    if wrong:
        raise ValueError(f"positions: a context module needs an N x C x T x H x W output; got {wrong}")
    return {name: shape[1] for name, shape in found.items()}
