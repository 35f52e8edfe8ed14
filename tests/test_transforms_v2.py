"""The clip pipelines against brute-force references, and their printed form.

The references use only tensor slicing, `torch.flip`, `torch.nn.functional.interpolate` and
arithmetic, with the settings the pipelines documented before they used torchvision's v2
transforms: bilinear, antialiased, half-pixel centres (`align_corners=False`) resizing;
`round((free space) / 2)` for the centre crop (torchvision's rule, kept from before); floor
division for the centre of the 3 test crops; `(x / 255 - mean) / std`.
"""

from __future__ import annotations

import platform

import pytest
import torch
from torch.nn.functional import interpolate

from rcca.data import transforms
from rcca.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TSM_SCALES,
    CenterCrop,
    MultiScaleCrop,
    MultiViewCrop,
    Normalize,
    ToCTHW,
    build_test_transform,
    build_train_transform,
)

SHAPES = [(120, 160), (97, 131), (160, 120)]  # wide, wide with odd free space around crops, tall


def random_clip(height: int, width: int, num_frames: int = 3, seed: int = 0) -> torch.Tensor:
    """uint8 T x 3 x H x W noise."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (num_frames, 3, height, width), dtype=torch.uint8, generator=generator)


def reference_resize(clip: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear antialiased resize of a uint8 ``... x C x H x W`` clip to ``height x width``.

    On CPUs with AVX2/AVX512 and on ARM, torchvision hands uint8 straight to `interpolate`;
    elsewhere it interpolates in float32 and rounds. Both are done here as there.
    """
    flat = clip.reshape(-1, *clip.shape[-3:])
    native = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in ("aarch64", "arm64")
    source = flat if native else flat.float()
    resized = interpolate(source, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    resized = resized if native else resized.round().to(torch.uint8)
    return resized.reshape(*clip.shape[:-2], height, width)


def reference_normalize(clip: torch.Tensor) -> torch.Tensor:
    """``(x / 255 - mean) / std`` per channel, in float32."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (clip.float() / 255 - mean) / std


def window(clip: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
    """``clip[..., top : top + height, left : left + width]``."""
    return clip[..., top : top + height, left : left + width]


@pytest.mark.parametrize("flip", [True, False])
@pytest.mark.parametrize(("height", "width"), SHAPES)
def test_train_pipeline_matches_crop_resize_flip_normalise_by_hand(flip: bool, height: int, width: int) -> None:
    """Same RNG state -> same crop window (drawn first) and flip (one `torch.rand(1) < 0.5` draw after)."""
    clip = random_clip(height, width)
    pipeline = build_train_transform(64, TSM_SCALES, flip=flip)
    flips = set()
    for seed in range(12):
        torch.manual_seed(seed)
        out = pipeline(clip)
        torch.manual_seed(seed)
        top, left, crop_h, crop_w = MultiScaleCrop(64, TSM_SCALES).sample_crop(height, width)
        flipped = flip and torch.rand(1).item() < 0.5
        expected = reference_resize(window(clip, top, left, crop_h, crop_w), 64, 64)
        expected = torch.flip(expected, dims=[-1]) if flipped else expected
        torch.testing.assert_close(out, reference_normalize(expected).permute(1, 0, 2, 3))
        flips.add(flipped)
    assert flips == ({True, False} if flip else {False})


def reference_views(clip: torch.Tensor, size: int, num_crops: int) -> torch.Tensor:
    """V x T x C x size x size test views of an already resized clip, by slicing."""
    height, width = clip.shape[-2:]
    free_y, free_x = height - size, width - size
    centre = window(clip, round(free_y / 2), round(free_x / 2), size, size)
    if num_crops == 1:
        views = [centre]
    elif num_crops == 3:
        if width >= height:
            views = [window(clip, free_y // 2, left, size, size) for left in (0, free_x // 2, free_x)]
        else:
            views = [window(clip, top, free_x // 2, size, size) for top in (0, free_y // 2, free_y)]
    else:
        corners = [(0, 0), (0, free_x), (free_y, 0), (free_y, free_x)]  # top-left, top-right, bottom-left, bottom-right
        views = [*(window(clip, top, left, size, size) for top, left in corners), centre]
        views += [torch.flip(view, dims=[-1]) for view in views]
    return torch.stack(views)


@pytest.mark.parametrize("num_crops", [1, 3, 10])
@pytest.mark.parametrize(("height", "width"), SHAPES)
@pytest.mark.parametrize("resize_short", [64, 80])
def test_test_pipeline_matches_resize_and_slicing_by_hand(
    num_crops: int, height: int, width: int, resize_short: int
) -> None:
    clip = random_clip(height, width)
    short, long = min(height, width), max(height, width)
    new_long = int(resize_short * long / short)  # the short side becomes resize_short, the aspect ratio is kept
    new_h, new_w = (resize_short, new_long) if height <= width else (new_long, resize_short)
    views = reference_views(reference_resize(clip, new_h, new_w), 57, num_crops)
    out = build_test_transform(resize_short, 57, num_crops)(clip)
    torch.testing.assert_close(out, reference_normalize(views).permute(0, 2, 1, 3, 4))


def test_centre_crop_rounds_half_free_space_like_the_centre_view() -> None:
    clip = random_clip(16, 21)  # free space 7 x 12 around a 9 x 9 crop: top round(3.5) = 4, left 6
    expected = window(clip, round(7 / 2), 6, 9, 9)
    assert torch.equal(CenterCrop(9)(clip), expected)
    assert torch.equal(MultiViewCrop(9, 1)(clip)[0], expected)


def test_resize_to_the_same_size_keeps_the_pixels() -> None:
    clip = random_clip(64, 80)
    expected = reference_normalize(window(clip, 0, 8, 64, 64))[None].transpose(1, 2)
    torch.testing.assert_close(build_test_transform(64, 64, 1)(clip), expected)


# --- printed form -----------------------------------------------------------


@pytest.mark.parametrize(
    "step",
    [
        MultiScaleCrop(224, (1, 0.875, 0.75, 0.66)),
        MultiScaleCrop(112, (1, 0.5), 0, False, False),
        CenterCrop(8),
        MultiViewCrop(224, 10),
        Normalize(),
        Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
        ToCTHW(),
    ],
    ids=repr,
)
def test_own_steps_print_as_the_call_that_builds_them(step: object) -> None:
    """mmaction2 style: Name(arg=value, ...), which rebuilds an equal step when evaluated."""
    text = repr(step)
    assert text.startswith(f"{type(step).__name__}(") and text.endswith(")") and "\n" not in text
    assert repr(eval(text, vars(transforms))) == text  # noqa: S307 - our own repr


def test_multiscale_crop_repr_lists_size_and_float_scales() -> None:
    assert repr(MultiScaleCrop(224, (1, 0.875, 0.75, 0.66))).startswith(
        "MultiScaleCrop(size=224, scales=(1.0, 0.875, 0.75, 0.66), max_distort=1, fix_crop=True, more_fix_crop=True"
    )


@pytest.mark.parametrize("flip", [True, False])
def test_train_pipeline_prints_one_step_per_line(flip: bool) -> None:
    lines = repr(build_train_transform(112, [1, 0.875], flip)).splitlines()
    steps = [line.strip() for line in lines[1:-1]]
    assert lines[0] == "Compose(" and lines[-1] == ")"
    assert steps == [
        "MultiScaleCrop(size=112, scales=(1.0, 0.875), max_distort=1, fix_crop=True, more_fix_crop=True)",
        *(["RandomHorizontalFlip(p=0.5)"] if flip else []),
        f"Normalize(mean={IMAGENET_MEAN}, std={IMAGENET_STD})",
        "ToCTHW()",
    ]


def test_test_pipeline_prints_one_step_per_line() -> None:
    lines = repr(build_test_transform(128, 112, 3)).splitlines()
    steps = [line.strip() for line in lines[1:-1]]
    assert lines[0] == "Compose(" and lines[-1] == ")" and len(steps) == 4
    assert steps[0].startswith("Resize(size=[128]") and "BILINEAR" in steps[0] and "antialias=True" in steps[0]
    assert steps[1:] == [
        "MultiViewCrop(size=112, num_crops=3)",
        f"Normalize(mean={IMAGENET_MEAN}, std={IMAGENET_STD})",
        "ToCTHW()",
    ]
