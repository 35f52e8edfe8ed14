"""Tests for rcca.data.transforms."""

import pytest
import torch
from torchvision.transforms.v2 import RandomHorizontalFlip, Resize
from torchvision.transforms.v2 import functional as F

from rcca.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    CenterCrop,
    MultiScaleCrop,
    MultiViewCrop,
    Normalize,
    ToCTHW,
    build_test_transform,
    build_train_transform,
)


def coord_clip(num_frames: int, height: int, width: int) -> torch.Tensor:
    """uint8 T x 3 x H x W clip with pixel (t, :, y, x) = (x, y, t): content encodes coordinates."""
    xs = torch.arange(width).expand(num_frames, height, width)
    ys = torch.arange(height)[:, None].expand(num_frames, height, width)
    ts = torch.arange(num_frames)[:, None, None].expand(num_frames, height, width)
    return torch.stack([xs, ys, ts], dim=1).to(torch.uint8)


def repeated_clip(num_frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """uint8 T x 3 x H x W clip whose frames are all the same random image."""
    image = torch.randint(0, 256, (3, height, width), generator=torch.Generator().manual_seed(seed))
    return image.to(torch.uint8).expand(num_frames, 3, height, width).clone()


def window(view: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a crop of a coord_clip; asserts it is one intact window."""
    top, left = int(view[..., 1, 0, 0].max()), int(view[..., 0, 0, 0].max())
    height, width = view.shape[-2:]
    expected = coord_clip(1, top + height, left + width)[..., top:, left:]
    assert torch.equal(view[..., :2, :, :], expected[..., :2, :, :].expand_as(view[..., :2, :, :]))
    return top, left, height, width


# --- MultiScaleCrop ---------------------------------------------------------

# Hand-computed for 120 x 160 frames and the default scales: base 120, sides
# int(120 * s) = 120, 105, 90, 79; (h, w) pairs whose scale indices differ by <= 1.
SIDES = [120, 105, 90, 79]
ALLOWED_SIZES = {(SIDES[i], SIDES[j]) for i in range(4) for j in range(4) if abs(i - j) <= 1}
# (row, col) steps on the 4 x 4 grid: corners, centre, then the 8 extra positions.
FIVE_GRID = {(0, 0), (0, 4), (4, 0), (4, 4), (2, 2)}
MORE_GRID = FIVE_GRID | {(0, 2), (4, 2), (2, 0), (2, 4), (1, 1), (1, 3), (3, 1), (3, 3)}


@pytest.mark.parametrize(("more_fix_crop", "grid"), [(True, MORE_GRID), (False, FIVE_GRID)])
def test_multiscale_crop_sizes_and_fixed_positions(more_fix_crop: bool, grid: set) -> None:
    crop = MultiScaleCrop(112, more_fix_crop=more_fix_crop, generator=torch.Generator().manual_seed(0))
    positions: dict[tuple[int, int], set[tuple[int, int]]] = {}
    for _ in range(3000):
        top, left, crop_h, crop_w = crop.sample_crop(120, 160)
        step_y, step_x = (120 - crop_h) // 4, (160 - crop_w) // 4
        assert (top, left) in {(row * step_y, col * step_x) for row, col in grid}
        positions.setdefault((crop_h, crop_w), set()).add((top, left))
    assert set(positions) == ALLOWED_SIZES
    # 90 x 90 crops: steps 7 and 17, so every grid cell is a distinct position
    assert positions[(90, 90)] == {(row * 7, col * 17) for row, col in grid}


def test_multiscale_crop_random_positions_stay_inside() -> None:
    crop = MultiScaleCrop(112, fix_crop=False, generator=torch.Generator().manual_seed(0))
    lefts = set()
    for _ in range(500):
        top, left, crop_h, crop_w = crop.sample_crop(120, 160)
        assert (crop_h, crop_w) in ALLOWED_SIZES
        assert 0 <= top <= 120 - crop_h and 0 <= left <= 160 - crop_w
        lefts.add(left)
    assert len(lefts) > 20  # not restricted to the fixed grid


@pytest.mark.parametrize(("height", "width"), [(64, 96), (96, 64)])
def test_multiscale_crop_window_same_for_all_frames(height: int, width: int) -> None:
    # scale 1 only: the crop is the 64 x 64 square, so resizing to 64 keeps the pixels
    crop = MultiScaleCrop(64, scales=(1,), max_distort=0, generator=torch.Generator().manual_seed(1))
    clip = coord_clip(5, height, width)
    frame_ids = torch.arange(5, dtype=torch.uint8)[:, None, None].expand(5, 64, 64)
    offsets = set()
    for _ in range(200):
        out = crop(clip)
        assert out.shape == (5, 3, 64, 64) and out.dtype == torch.uint8
        top, left, _, _ = window(out)
        offsets.add((top, left))
        assert torch.equal(out[:, 2], frame_ids)
    # steps (96 - 64) // 4 = 8 along the long side, 0 along the short side
    long_offsets = {0, 8, 16, 24, 32}
    expected = {(0, x) for x in long_offsets} if width > height else {(y, 0) for y in long_offsets}
    assert offsets == expected


def test_multiscale_crop_is_crop_then_resize_of_sampled_window() -> None:
    clip = torch.randint(0, 256, (4, 3, 120, 160), dtype=torch.uint8)
    sampler = MultiScaleCrop(112, generator=torch.Generator().manual_seed(5))
    crop = MultiScaleCrop(112, generator=torch.Generator().manual_seed(5))
    for _ in range(5):
        top, left, crop_h, crop_w = sampler.sample_crop(120, 160)
        expected = F.resize(F.crop(clip, top, left, crop_h, crop_w), [112, 112], antialias=True)
        assert torch.equal(crop(clip), expected)


def test_multiscale_crop_identical_frames_stay_identical() -> None:
    clip = repeated_clip(6, 120, 160)
    crop = MultiScaleCrop(112)
    torch.manual_seed(0)
    for _ in range(20):
        out = crop(clip)
        assert out.shape == (6, 3, 112, 112)
        assert all(torch.equal(out[0], frame) for frame in out)


def test_multiscale_crop_rejects_scale_above_one() -> None:
    with pytest.raises(ValueError, match="scales"):
        MultiScaleCrop(112, scales=(1.2, 1))


# --- RandomHorizontalFlip (torchvision's, as the training pipeline uses it) ---


def test_flip_p1_is_torch_flip_and_p0_is_identity() -> None:
    clip = coord_clip(4, 10, 12)
    assert torch.equal(RandomHorizontalFlip(p=1)(clip), torch.flip(clip, dims=[-1]))
    assert torch.equal(RandomHorizontalFlip(p=0)(clip), clip)


def test_flip_same_for_all_frames() -> None:
    clip = coord_clip(4, 10, 12)
    flip = RandomHorizontalFlip()
    torch.manual_seed(0)
    outcomes = set()
    for _ in range(50):
        out = flip(clip)
        flipped = torch.equal(out, torch.flip(clip, dims=[-1]))
        assert flipped or torch.equal(out, clip)
        outcomes.add(flipped)
    assert outcomes == {True, False}


def test_train_transform_keeps_identical_frames_identical() -> None:
    transform = build_train_transform(112, (1, 0.875, 0.75, 0.66), flip=True)
    torch.manual_seed(0)
    for _ in range(10):
        out = transform(repeated_clip(5, 120, 160))
        assert all(torch.equal(out[:, 0], out[:, t]) for t in range(5))


# --- resize and crops -------------------------------------------------------


@pytest.mark.parametrize(("shape", "expected"), [((120, 160), (60, 80)), ((160, 120), (80, 60))])
def test_resize_short_side(shape: tuple[int, int], expected: tuple[int, int]) -> None:
    out = Resize(60)(torch.zeros(3, 3, *shape, dtype=torch.uint8))
    assert out.shape == (3, 3, *expected)


def test_center_crop_window() -> None:
    out = CenterCrop(8)(coord_clip(3, 10, 20))
    assert out.shape == (3, 3, 8, 8)
    assert window(out) == (1, 6, 8, 8)


def test_crop_larger_than_frame_is_an_error() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        CenterCrop(16)(coord_clip(2, 10, 20))
    with pytest.raises(ValueError, match="does not fit"):
        MultiViewCrop(16, 3)(coord_clip(2, 10, 20))


@pytest.mark.parametrize("num_crops", [1, 3, 10])
def test_multi_view_counts(num_crops: int) -> None:
    out = MultiViewCrop(8, num_crops)(coord_clip(4, 10, 20))
    assert out.shape == (num_crops, 4, 3, 8, 8)


def test_multi_view_single_is_centre() -> None:
    assert window(MultiViewCrop(8, 1)(coord_clip(2, 10, 20))[0]) == (1, 6, 8, 8)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((10, 20), [(1, 0), (1, 6), (1, 12)]),  # wide: along W
        ((20, 10), [(0, 1), (6, 1), (12, 1)]),  # tall: along H
    ],
)
def test_multi_view_three_crops_along_long_side(shape: tuple[int, int], expected: list[tuple[int, int]]) -> None:
    views = MultiViewCrop(8, 3)(coord_clip(2, *shape))
    assert [window(view)[:2] for view in views] == expected


def test_multi_view_ten_crops() -> None:
    views = MultiViewCrop(8, 10)(coord_clip(3, 10, 20))
    corners_and_centre = [(0, 0), (0, 12), (2, 0), (2, 12), (1, 6)]
    assert [window(view)[:2] for view in views[:5]] == corners_and_centre
    for k in range(5):
        assert torch.equal(views[5 + k], torch.flip(views[k], dims=[-1]))


def test_multi_view_invalid_count_names_valid_values() -> None:
    with pytest.raises(ValueError, match=r"\(1, 3, 10\)"):
        MultiViewCrop(8, 5)


# --- Normalize and layout ---------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (2, 4, 3, 5, 6)])
def test_normalize_matches_manual_computation(shape: tuple[int, ...]) -> None:
    clip = torch.randint(0, 256, shape, dtype=torch.uint8)
    out = Normalize()(clip)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert out.dtype == torch.float32 and out.shape == shape
    torch.testing.assert_close(out, (clip.float() / 255 - mean) / std)


def test_normalize_custom_stats_and_dtype_check() -> None:
    clip = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    halves = (0.5, 0.5, 0.5)
    torch.testing.assert_close(Normalize(halves, halves)(clip), torch.ones(1, 3, 2, 2))
    with pytest.raises(TypeError, match="uint8"):
        Normalize()(clip.float())


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (2, 4, 3, 5, 6)])
def test_to_cthw(shape: tuple[int, ...]) -> None:
    clip = torch.randn(shape)
    out = ToCTHW()(clip)
    assert out.shape == (*shape[:-4], shape[-3], shape[-4], *shape[-2:])
    assert out.is_contiguous()
    assert torch.equal(out[..., 2, 1, :, :], clip[..., 1, 2, :, :])


# --- builders ---------------------------------------------------------------


@pytest.mark.parametrize("flip", [True, False])
def test_build_train_transform_layout(flip: bool) -> None:
    transform = build_train_transform(112, [1, 0.875, 0.75, 0.66], flip=flip)
    out = transform(torch.randint(0, 256, (8, 3, 120, 160), dtype=torch.uint8))
    assert out.shape == (3, 8, 112, 112) and out.dtype == torch.float32


def test_build_train_transform_reproducible_with_torch_seed() -> None:
    transform = build_train_transform(64, (1, 0.875, 0.75, 0.66), flip=True)
    clip = torch.randint(0, 256, (4, 3, 90, 120), dtype=torch.uint8)
    torch.manual_seed(3)
    first = [transform(clip) for _ in range(4)]
    torch.manual_seed(3)
    second = [transform(clip) for _ in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("num_crops", [1, 3, 10])
def test_build_test_transform_layout(num_crops: int) -> None:
    transform = build_test_transform(128, 112, num_crops)
    out = transform(torch.randint(0, 256, (8, 3, 120, 160), dtype=torch.uint8))
    assert out.shape == (num_crops, 3, 8, 112, 112) and out.dtype == torch.float32
