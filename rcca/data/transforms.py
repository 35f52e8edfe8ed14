"""Clip transforms for video action recognition.

Clip convention: a clip is a ``torch.uint8`` tensor ``T x C x H x W`` (``C = 3``,
RGB) until :class:`Normalize`, after which it is ``float32``. Multi-view
clips add a leading view dimension ``V``. The pipelines end with
:class:`ToCTHW`, the model's ``C x T x H x W`` layout.

Which steps are torchvision's: where ``torchvision.transforms.v2`` does the
same job on a clip tensor, the pipelines use its transform as is
(``RandomHorizontalFlip``; ``Resize`` of the short side, bilinear and
antialiased) or wrapped with what it lacks (:class:`CenterCrop` refuses a
crop larger than the frames, where v2 pads; :class:`Normalize` takes ``uint8``
and scales it first, where v2's expects floats). :class:`MultiScaleCrop`
(TSM's crop grid), :class:`MultiViewCrop` (1, 3 or 10 test views, stacked)
and :class:`ToCTHW` have no v2 equivalent; their pixel work is done by
``torchvision.transforms.v2.functional``.

Every step prints as ``Name(arg=value, ...)`` and the pipelines are v2
``Compose`` objects, so ``repr(pipeline)`` lists the steps one per line.

Randomness: every random transform draws its parameters ONCE per call and
applies them to all frames of the clip. Draws use torch's global RNG, seeded
by ``torch.manual_seed`` (per sample by the dataset); :class:`MultiScaleCrop`
alone can be given its own ``torch.Generator`` instead. An explicit generator
is copied into every DataLoader worker with the same state, so the builders
leave it unset.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # per-channel RGB mean of ImageNet, in [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)  # per-channel RGB standard deviation of ImageNet, in [0, 1]

MULTI_VIEW_CROPS = (1, 3, 10)  # the test-time crop counts MultiViewCrop offers
TSM_SCALES = (1.0, 0.875, 0.75, 0.66)  # TSM's crop sides, as fractions of the short side
GRID_STEPS = 4  # fixed crop positions split the free space (frame side - crop side) of each axis into 4 steps
# Fixed crop positions, (row, col) in those steps: the 4 corners and the centre ...
CORNERS_AND_CENTRE = ((0, 0), (0, 4), (4, 0), (4, 4), (2, 2))
# ... and, with more_fix_crop, upper/lower centre, centre left/right and the 4 quarter positions.
MORE_POSITIONS = ((0, 2), (4, 2), (2, 0), (2, 4), (1, 1), (1, 3), (3, 1), (3, 3))
FLIP_PROBABILITY = 0.5  # chance that a training clip is mirrored left-right


def _describe(name: str, **fields: object) -> str:
    """mmaction2-style one-line repr: ``_describe("Crop", size=8)`` -> ``"Crop(size=8)"``."""
    return f"{name}({', '.join(f'{key}={value!r}' for key, value in fields.items())})"


def _randint(high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in ``[0, high)`` from ``generator`` (global RNG if None)."""
    return int(torch.randint(high, (1,), generator=generator).item())


def _check_fits(clip: torch.Tensor, size: int) -> None:
    """Raise ``ValueError`` if a ``size x size`` crop does not fit in the frames."""
    height, width = clip.shape[-2:]
    if size > height or size > width:
        raise ValueError(f"crop size {size} does not fit in {height}x{width} frames")


class MultiScaleCrop:
    """TSM multi-scale crop: a random-size, random-position crop resized to a square.

    With ``base`` the short side of the frames, candidate crop sides are
    ``int(base * s)`` for ``s`` in ``scales``. A (width, height) pair is drawn
    uniformly among pairs whose scale indices differ by at most
    ``max_distort``. The position is, with ``fix_crop``, one of the fixed
    offsets on a 4 x 4 grid of steps ``((W - w) // 4, (H - h) // 4)``: the 4
    corners and the centre, plus, with ``more_fix_crop``, upper/lower centre,
    centre left/right and the 4 quarter positions; without ``fix_crop`` it is
    uniform over all valid positions. The crop is then resized (bilinear,
    antialiased) to ``size x size``. torchvision's ``RandomResizedCrop`` draws
    an area and an aspect ratio instead, hence this class.

    Takes ``T x C x H x W``, returns ``T x C x size x size`` (same dtype).
    E.g. 120 x 160 frames, default scales: sides 120, 105, 90 and 79; a 90 x 105
    (h x w) crop has steps (30 // 4, 55 // 4) = (7, 13), so its top is one of
    0, 7, 14, 21, 28 and its left one of 0, 13, 26, 39, 52.
    """

    def __init__(
        self,
        size: int,
        scales: Sequence[float] = TSM_SCALES,
        max_distort: int = 1,
        fix_crop: bool = True,
        more_fix_crop: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        if not all(0 < scale <= 1 for scale in scales):
            raise ValueError(f"scales must lie in (0, 1], got {tuple(scales)}")
        self.size = size
        self.scales = tuple(float(scale) for scale in scales)
        self.max_distort = max_distort
        self.fix_crop = fix_crop
        self.more_fix_crop = more_fix_crop
        self.generator = generator

    def crop_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """All allowed ``(crop_h, crop_w)`` pairs for ``height x width`` frames."""
        sides = [int(min(height, width) * scale) for scale in self.scales]
        return [
            (crop_h, crop_w)
            for i, crop_w in enumerate(sides)
            for j, crop_h in enumerate(sides)
            if abs(i - j) <= self.max_distort
        ]

    def fixed_offsets(self, height: int, width: int, crop_h: int, crop_w: int) -> list[tuple[int, int]]:
        """Allowed ``(top, left)`` positions of a ``crop_h x crop_w`` crop when ``fix_crop``."""
        step_y = (height - crop_h) // GRID_STEPS
        step_x = (width - crop_w) // GRID_STEPS
        grid = CORNERS_AND_CENTRE + (MORE_POSITIONS if self.more_fix_crop else ())
        return [(row * step_y, col * step_x) for row, col in grid]

    def sample_crop(self, height: int, width: int) -> tuple[int, int, int, int]:
        """Draw one crop window ``(top, left, crop_h, crop_w)`` for ``height x width`` frames."""
        sizes = self.crop_sizes(height, width)
        crop_h, crop_w = sizes[_randint(len(sizes), self.generator)]
        if self.fix_crop:
            offsets = self.fixed_offsets(height, width, crop_h, crop_w)
            top, left = offsets[_randint(len(offsets), self.generator)]
        else:
            top = _randint(height - crop_h + 1, self.generator)
            left = _randint(width - crop_w + 1, self.generator)
        return top, left, crop_h, crop_w

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        top, left, crop_h, crop_w = self.sample_crop(*clip.shape[-2:])
        cropped = F.crop(clip, top, left, crop_h, crop_w)
        return F.resize(cropped, [self.size, self.size], interpolation=InterpolationMode.BILINEAR, antialias=True)

    def __repr__(self) -> str:
        return _describe(
            type(self).__name__, size=self.size, scales=self.scales, max_distort=self.max_distort,
            fix_crop=self.fix_crop, more_fix_crop=self.more_fix_crop,
        )


class CenterCrop:
    """Central ``size x size`` crop of every frame: v2's ``CenterCrop``, refusing a crop that does not fit.

    v2 pads frames smaller than the crop with zeros; here that is a ``ValueError``,
    as a test crop larger than the resized frames is a configuration mistake.
    Takes ``... x H x W`` with ``H, W >= size``, returns ``... x size x size``.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._crop = v2.CenterCrop(size)

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        _check_fits(clip, self.size)
        return self._crop(clip)

    def __repr__(self) -> str:
        return _describe(type(self).__name__, size=self.size)


class MultiViewCrop:
    """Deterministic multi-view ``size x size`` crops for testing.

    ``num_crops`` = 1: the centre crop. 3: start, centre and end along the long
    side, centred on the short side. 10: the 4 corner crops and the centre crop
    (top-left, top-right, bottom-left, bottom-right, centre) followed by their
    horizontal flips in the same order (v2's ``TenCrop`` flips the frame
    before cropping, which pairs each corner with the mirror of the opposite one).

    Takes ``T x C x H x W`` with ``H, W >= size``, returns
    ``V x T x C x size x size`` with ``V = num_crops``.
    """

    def __init__(self, size: int, num_crops: int) -> None:
        if num_crops not in MULTI_VIEW_CROPS:
            raise ValueError(f"num_crops must be one of {MULTI_VIEW_CROPS}, got {num_crops}")
        self.size = size
        self.num_crops = num_crops
        self._centre = CenterCrop(size)

    def _three_crops(self, clip: torch.Tensor) -> list[torch.Tensor]:
        """Start, centre and end ``size x size`` crops along the long side."""
        height, width = clip.shape[-2:]
        if width >= height:
            top = (height - self.size) // 2
            lefts = [0, (width - self.size) // 2, width - self.size]
            return [F.crop(clip, top, left, self.size, self.size) for left in lefts]
        left = (width - self.size) // 2
        tops = [0, (height - self.size) // 2, height - self.size]
        return [F.crop(clip, top, left, self.size, self.size) for top in tops]

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        _check_fits(clip, self.size)
        if self.num_crops == 1:
            views = [self._centre(clip)]
        elif self.num_crops == 3:
            views = self._three_crops(clip)
        else:
            five = list(F.five_crop(clip, [self.size, self.size]))
            views = five + [F.hflip(view) for view in five]
        return torch.stack(views)

    def __repr__(self) -> str:
        return _describe(type(self).__name__, size=self.size, num_crops=self.num_crops)


class Normalize:
    """Scale ``uint8`` values to ``[0, 1]`` and normalise per channel, with v2's ``ToDtype`` and ``Normalize``.

    v2's ``Normalize`` alone expects floats already in ``[0, 1]``; this step owns the
    conversion, and rejects a clip that is not ``uint8`` rather than normalising
    values of an unknown range. Takes ``... x C x H x W`` ``uint8`` (e.g.
    ``T x C x H x W`` or ``V x T x C x H x W``), returns the same shape as
    ``float32`` ``(x / 255 - mean) / std``.
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean = tuple(mean)
        self.std = tuple(std)
        self._steps = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)])

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        if clip.dtype != torch.uint8:
            raise TypeError(f"Normalize expects a uint8 clip, got {clip.dtype}")
        return self._steps(clip)

    def __repr__(self) -> str:
        return _describe(type(self).__name__, mean=self.mean, std=self.std)


class ToCTHW:
    """Move channels in front of time: the model input layout.

    Takes ``T x C x H x W`` (or ``V x T x C x H x W``), returns a contiguous
    ``C x T x H x W`` (or ``V x C x T x H x W``).
    """

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        return clip.transpose(-4, -3).contiguous()

    def __repr__(self) -> str:
        return _describe(type(self).__name__)


def build_train_transform(crop_size: int, scales: Sequence[float], flip: bool) -> v2.Compose:
    """Training pipeline: MultiScaleCrop -> (v2 RandomHorizontalFlip) -> Normalize -> ToCTHW.

    Takes a ``uint8`` ``T x C x H x W`` clip, returns ``float32``
    ``C x T x crop_size x crop_size``. ``repr`` of the result lists the steps.
    """
    steps: list[Callable[[torch.Tensor], torch.Tensor]] = [MultiScaleCrop(crop_size, scales)]
    if flip:
        steps.append(v2.RandomHorizontalFlip(p=FLIP_PROBABILITY))
    steps += [Normalize(), ToCTHW()]
    return v2.Compose(steps)


def build_test_transform(resize_short: int, crop_size: int, num_crops: int) -> v2.Compose:
    """Testing pipeline: v2 Resize (short side) -> MultiViewCrop -> Normalize -> ToCTHW.

    The resize keeps the aspect ratio: the short side becomes ``resize_short``,
    the long one ``int(resize_short * long / short)`` (bilinear, antialiased).
    Takes a ``uint8`` ``T x C x H x W`` clip, returns ``float32``
    ``V x C x T x crop_size x crop_size`` with ``V = num_crops``. ``repr`` of
    the result lists the steps.
    """
    return v2.Compose(
        [
            v2.Resize(resize_short, interpolation=InterpolationMode.BILINEAR, antialias=True),
            MultiViewCrop(crop_size, num_crops),
            Normalize(),
            ToCTHW(),
        ]
    )
