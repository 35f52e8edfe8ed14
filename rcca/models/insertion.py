"""Placing context modules (RCCA-3D, non-local) after residual blocks named `convN_i`.

Position `convN_i` is the i-th residual block (1-based) of stage N, in the paper's naming
(conv2..conv5); the module runs on that block's output, as in TSM's non-local extension.
A backbone takes part by providing `residual_blocks() -> {"conv2": [block, ...], ...}`, and
its blocks by having a `context` attribute that their forward applies to the block output.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from torch import nn

POSITION = re.compile(r"conv(\d+)_(\d+)")


def valid_positions(stages: dict[str, list[nn.Module]]) -> list[str]:
    """All position names of a backbone, in network order."""
    return [f"{stage}_{i + 1}" for stage, blocks in stages.items() for i in range(len(blocks))]


def insert_context_modules(
    stages: dict[str, list[nn.Module]],
    positions: list[str],
    make_module: Callable[[int], nn.Module],
    out_channels: Callable[[nn.Module], int],
) -> dict[str, nn.Module]:
    """Attach `make_module(C)` as the `context` of each named block; returns position -> module.

    Raises ValueError listing the valid positions when a name does not exist.
    """
    valid = valid_positions(stages)
    inserted: dict[str, nn.Module] = {}
    for position in positions:
        match = POSITION.fullmatch(position)
        if match is None or position not in valid:
            raise ValueError(f"module.positions: {position!r} is not a block of this backbone; valid: {', '.join(valid)}")
        if position in inserted:
            raise ValueError(f"module.positions: {position!r} is listed twice")
        block = stages[f"conv{match.group(1)}"][int(match.group(2)) - 1]
        block.context = make_module(out_channels(block))
        inserted[position] = block.context
    return inserted
