"""Names of the insertion positions `convN_i` of the backbones, built in one place.

Position `convN_i` is the i-th residual block of stage N, in the paper's naming: conv1 is the
stem, the residual stages are conv2..conv5 (torchvision's layer1..layer4, MF-Net's
conv2..conv5), and blocks are counted from 1 within their stage (`conv3_3` is the third
block of conv3). This module imports nothing from torch, so the config can use it cheaply.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

FIRST_STAGE = 2  # conv1 is the stem; the residual stages start at conv2
TSM_STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}  # ResNet depth -> blocks of conv2..conv5
MFNET_STAGE_BLOCKS = (3, 4, 6, 3)  # multi-fibre units of conv2..conv5
POSITION = re.compile(r"conv(\d+)_(\d+)")  # a position name, to match with `fullmatch`: groups stage and block


def stage_name(stage: int) -> str:
    """Name of residual stage `stage` (the paper's number, 2..5): 3 -> "conv3".

    Args:
        stage: stage number, counted as in the paper (the stem is conv1).

    Returns:
        The stage's name, `conv{stage}`.
    """
    return f"conv{stage}"


def position_name(stage: int, block: int) -> str:
    """Name of the `block`-th block (1-based) of stage `stage` (the paper's number): (3, 3) -> "conv3_3".

    Args:
        stage: stage number, counted as in the paper (2..5 for the residual stages).
        block: block number within the stage, counted from 1.

    Returns:
        The position name `conv{stage}_{block}`.
    """
    return f"{stage_name(stage)}_{block}"


def parse_position(name: str) -> tuple[int, int]:
    """The inverse of `position_name`: "conv3_3" -> (3, 3).

    Args:
        name: a position name `convN_i`.

    Returns:
        (stage, block): the paper's stage number and the 1-based block number.

    Raises:
        ValueError: `name` is not of the form `convN_i`.
    """
    match = POSITION.fullmatch(name)
    if match is None:
        raise ValueError(f"{name!r} is not a position name convN_i (the i-th block of stage N, e.g. conv3_3)")
    return int(match.group(1)), int(match.group(2))


def valid_positions(stage_blocks: Sequence[int]) -> list[str]:
    """Every position name of a backbone, in network order.

    Args:
        stage_blocks: the number of blocks of each residual stage, conv2 first
            (e.g. `TSM_STAGE_BLOCKS[50]` or `MFNET_STAGE_BLOCKS`).

    Returns:
        conv2_1, conv2_2, ..., one name per block, stage after stage.
    """
    return [
        position_name(stage, block)
        for stage, count in enumerate(stage_blocks, start=FIRST_STAGE)
        for block in range(1, count + 1)
    ]
