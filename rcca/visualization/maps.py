"""What the figures show, computed from a model and a clip: the feature maps around each context module
(paper Fig. 6), class activation maps (Fig. 7), and RCCA-3D's attention at one position with the context
it gathers over R passes (Fig. 1 and 4).

Everything here is a pure computation on tensors (no files, no drawing) and runs the model in eval mode
without gradients; the model's own training mode is left as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rcca.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from rcca.models.attention import RCCA3D, line_aggregate
from rcca.models.insertion import context_modules


@dataclass
class ContextMaps:
    """The feature maps entering and leaving one context module, for the first clip of a batch.

    Attributes:
        position: where the module sits (`conv3_3`).
        input: its input, C x T x H x W.
        output: its output, C x T x H x W.
    """

    position: str
    input: Tensor
    output: Tensor


@dataclass
class ClassMaps:
    """Class activation maps of one clip.

    Attributes:
        maps: K x T' x H x W: for each class k, sum_c w_kc F_c over the map pooled before the classifier
            (T' = the clip's frames for TSM, fewer for a 3-D network that strides in time).
        scores: the K class probabilities (softmax of the logits).
    """

    maps: Tensor
    scores: Tensor


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Put `model` in eval mode without gradients for the block, then restore every module's mode."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes.items():
            module.training = training


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without any)."""
    return next((parameter.device for parameter in model.parameters()), torch.device("cpu"))


def context_features(model: nn.Module, clip: Tensor) -> list[ContextMaps]:
    """The input and output of every inserted context module for one clip.

    Args:
        model: a network with context modules (`rcca.models.insertion.context_modules`).
        clip: 3 x T x H x W, normalised as the model's input.

    Returns:
        One `ContextMaps` per module, in network order, on the CPU in float32.
    """
    captured: dict[str, tuple[Tensor, Tensor]] = {}

    def recorder(position: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(_: nn.Module, inputs: Any, output: Any) -> None:
            captured[position] = (inputs[0][0].float().cpu(), output[0].float().cpu())

        return hook

    modules = context_modules(model)
    hooks = [module.register_forward_hook(recorder(position)) for position, module in modules.items()]
    try:
        with evaluating(model):
            model(clip[None].to(model_device(model)))
    finally:
        for hook in hooks:
            hook.remove()
    return [ContextMaps(position, *captured[position]) for position in modules]


def top_variance_channels(features: Tensor, count: int) -> list[int]:
    """The `count` channels of a C x T x H x W map that vary most over T x H x W, most varying first.

    Args:
        features: C x T x H x W.
        count: how many channels (all of them when C is smaller).

    Returns:
        Channel indices.
    """
    variances = features.flatten(1).var(dim=1, unbiased=False)
    return variances.argsort(descending=True)[:count].tolist()


def pooled_feature_module(model: nn.Module) -> nn.Module:
    """The global average pooling whose output the classifier reads: the last adaptive average pooling layer.

    Raises:
        ValueError: the model has no `nn.AdaptiveAvgPool2d` / `nn.AdaptiveAvgPool3d`.
    """
    pools = [m for m in model.modules() if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d))]
    if not pools:
        raise ValueError("the model has no global average pooling layer: class activation maps need one")
    return pools[-1]


def class_activation_maps(model: nn.Module, clip: Tensor) -> ClassMaps:
    """Class activation maps (Zhou et al., CVPR 2016) of every class for one clip, extended to time.

    The map is the feature map F the model pools before its classifier (TSM: every frame's, the frames
    forming the batch; MF-Net: the 3-D map after its tail), weighted by the classifier: CAM_k = sum_c w_kc F_c.
    As pooling and consensus are averages, the mean of CAM_k plus the classifier's bias is the logit of k.

    Args:
        model: a `VideoBackbone` (`get_classifier()` gives its linear classifier).
        clip: 3 x T x H x W, normalised as the model's input.

    Returns:
        The maps (K x T' x h x w, CPU float32) and the class probabilities.

    Raises:
        ValueError: the model has no global average pooling layer.
    """
    captured: list[Tensor] = []
    hook = pooled_feature_module(model).register_forward_hook(
        lambda _, inputs, __: captured.append(inputs[0].float().cpu())
    )
    try:
        with evaluating(model):
            logits = model(clip[None].to(model_device(model)))[0].float().cpu()
    finally:
        hook.remove()
    features = captured[-1]
    if features.dim() == 4:  # TSM: (N*T) x C x h x w, the frames of the one clip
        features = features.transpose(0, 1)
    else:  # N x C x T' x h x w
        features = features[0]
    weight = model.get_classifier().weight.detach().float().cpu()
    maps = torch.einsum("kc,cthw->kthw", weight, features)
    return ClassMaps(maps, logits.softmax(dim=0))


def frame_slices(map_frames: int, clip_frames: int) -> list[int]:
    """For each frame of a clip, the time step of a map with fewer (or as many) steps that covers it.

    Args:
        map_frames: T' of the map.
        clip_frames: T of the clip.

    Returns:
        `clip_frames` indices into the map's time axis, floor(f T' / T) for frame f.
    """
    return [frame * map_frames // clip_frames for frame in range(clip_frames)]


def display_frames(clip: Tensor) -> np.ndarray:
    """The frames of a normalised clip as images: the ImageNet normalisation undone.

    Args:
        clip: 3 x T x H x W, normalised with `IMAGENET_MEAN` / `IMAGENET_STD`.

    Returns:
        T x H x W x 3 uint8 RGB frames.
    """
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    pixels = (clip.detach().float().cpu() * std + mean).clamp(0, 1) * 255
    return pixels.round().to(torch.uint8).permute(1, 2, 3, 0).numpy()


def module_input(model: nn.Module, module: nn.Module, clip: Tensor) -> Tensor:
    """The input `module` (a submodule of `model`) receives when `model` runs on one clip.

    Args:
        model: the network.
        module: one of its submodules, e.g. an inserted RCCA-3D.
        clip: 3 x T x H x W, normalised as the model's input.

    Returns:
        The module's first input, as it received it (on the model's device).
    """
    captured: list[Tensor] = []
    hook = module.register_forward_pre_hook(lambda _, inputs: captured.append(inputs[0]))
    try:
        with evaluating(model):
            model(clip[None].to(model_device(model)))
    finally:
        hook.remove()
    return captured[0]


def attention_at_point(weights: list[Tensor], point: tuple[int, int, int]) -> list[Tensor]:
    """Each pass's attention weights of one query position, spread over the T x H x W volume.

    Args:
        weights: the R passes' weights, each 1 x T x H x W x (T + H + W) (`RCCA3D.attention_weights`).
        point: the query (t, h, w) in the module's map.

    Returns:
        R volumes T x H x W (CPU float32), pass r's weights of the query: non-zero only on its temporal,
        vertical and horizontal lines, summing to 1 (the query itself holds its horizontal-line weight).
    """
    t, h, w = point
    return [
        line_volume(pass_weights[0, t, h, w].float().cpu(), point, pass_weights.shape[1:4]) for pass_weights in weights
    ]


def line_volume(row: Tensor, point: tuple[int, int, int], shape: torch.Size | tuple[int, ...]) -> Tensor:
    """One query's T + H + W line weights placed in the T x H x W volume.

    Args:
        row: T + H + W weights, columns [t' | h' | w'] as in `rcca.models.attention.line_affinities`.
        point: the query (t, h, w).
        shape: (T, H, W).

    Returns:
        T x H x W, zero off the query's three lines; the masked self-positions (zero) add nothing.
    """
    t, h, w = point
    frames, height, width = shape
    volume = row.new_zeros(frames, height, width)
    volume[:, h, w] += row[:frames]
    volume[t, :, w] += row[frames : frames + height]
    volume[t, h, :] += row[frames + height :]
    return volume


def effective_context(weights: list[Tensor], point: tuple[int, int, int]) -> list[Tensor]:
    """Where the attention of the query's output after r passes draws from, for r = 1..R (Fig. 4).

    Pass r computes Y_r(u) = sum_j A_r(u, j) Y_{r-1}(j) along u's lines (plus the residual, left out here:
    this follows the attention only). Unrolled, Y_r(u) draws on Y_0 with the weights of the product
    A_r ... A_1, i.e. the one-hot at u sent back through passes r..1 by their adjoints (`line_aggregate`
    with `transpose=True`). One pass reaches u's criss-cross lines, two the three planes through u, three
    the whole T x H x W volume.

    Args:
        weights: the R passes' weights, each 1 x T x H x W x (T + H + W) (`RCCA3D.attention_weights`).
        point: the query (t, h, w).

    Returns:
        R volumes T x H x W (CPU float32): after r passes, each summing to 1 (rows of A sum to 1).
    """
    shape = weights[0].shape[:4]
    contexts = []
    for passes in range(1, len(weights) + 1):
        context = torch.zeros(*shape, 1, dtype=torch.float64)
        context[0, point[0], point[1], point[2], 0] = 1.0
        for pass_weights in reversed(weights[:passes]):
            context = line_aggregate(pass_weights.detach().cpu().double(), context, transpose=True)
        contexts.append(context[0, ..., 0].float())
    return contexts


def rcca_modules(model: nn.Module) -> dict[str, RCCA3D]:
    """The inserted RCCA-3D modules of `model`, by position, in network order."""
    return {position: module for position, module in context_modules(model).items() if isinstance(module, RCCA3D)}
