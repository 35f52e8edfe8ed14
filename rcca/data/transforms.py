"""Clip transforms for video action recognition.

Clip convention: a clip is a ``torch.uint8`` tensor ``T x C x H x W`` (``C = 3``,
RGB) until :class:`Normalize`, after which it is ``float32``. Multi-view
clips add a leading view dimension ``V``.

Randomness: every random transform draws its parameters ONCE per call and
applies them to all frames of the clip. Draws use the ``torch.Generator``
given to the constructor, or torch's global RNG when none is given. The
global RNG is seeded by ``torch.manual_seed`` and, inside ``DataLoader``
workers, per worker by PyTorch itself. An explicit generator is copied into
every worker with the same state, so the builders leave it unset.

Pixel work (crop, resize, flip, normalise) is delegated to
``torchvision.transforms.v2.functional``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision.transforms.v2 import Compose
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MULTI_VIEW_CROPS = (1, 3, 10)


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
    antialiased) to ``size x size``.

    Takes ``T x C x H x W``, returns ``T x C x size x size`` (same dtype).
    """

    def __init__(
        self,
        size: int,
        scales: Sequence[float] = (1, 0.875, 0.75, 0.66),
        max_distort: int = 1,
        fix_crop: bool = True,
        more_fix_crop: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        if not all(0 < scale <= 1 for scale in scales):
            raise ValueError(f"scales must lie in (0, 1], got {tuple(scales)}")
        self.size = size
        self.scales = tuple(scales)
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

    def fixed_offsets(
        self, height: int, width: int, crop_h: int, crop_w: int
    ) -> list[tuple[int, int]]:
        """Allowed ``(top, left)`` positions of a ``crop_h x crop_w`` crop when ``fix_crop``."""
        step_y = (height - crop_h) // 4
        step_x = (width - crop_w) // 4
        grid = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2)]
        if self.more_fix_crop:
            grid += [(0, 2), (4, 2), (2, 0), (2, 4), (1, 1), (1, 3), (3, 1), (3, 3)]
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
        return F.resize(cropped, [self.size, self.size], antialias=True)


class RandomHorizontalFlip:
    """Flip the whole clip left-right with probability ``p`` (one draw per clip).

    Takes ``... x H x W``, returns the same shape and dtype.
    """

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        self.p = p
        self.generator = generator

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        if torch.rand(1, generator=self.generator).item() < self.p:
            return F.hflip(clip)
        return clip


class ResizeShortSide:
    """Resize so that the short side equals ``size``, keeping the aspect ratio.

    Bilinear with antialiasing. Takes ``T x C x H x W``, returns
    ``T x C x H' x W'`` with ``min(H', W') == size``.
    """

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        return F.resize(clip, self.size, antialias=True)


class CenterCrop:
    """Central ``size x size`` crop of every frame.

    Takes ``T x C x H x W`` with ``H, W >= size``, returns ``T x C x size x size``.
    """

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        _check_fits(clip, self.size)
        return F.center_crop(clip, [self.size, self.size])


class MultiViewCrop:
    """Deterministic multi-view ``size x size`` crops for testing.

    ``num_crops`` = 1: the centre crop. 3: start, centre and end along the long
    side, centred on the short side. 10: the 4 corner crops and the centre crop
    (top-left, top-right, bottom-left, bottom-right, centre) followed by their
    horizontal flips in the same order.

    Takes ``T x C x H x W`` with ``H, W >= size``, returns
    ``V x T x C x size x size`` with ``V = num_crops``.
    """

    def __init__(self, size: int, num_crops: int) -> None:
        if num_crops not in MULTI_VIEW_CROPS:
            raise ValueError(f"num_crops must be one of {MULTI_VIEW_CROPS}, got {num_crops}")
        self.size = size
        self.num_crops = num_crops

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
            views = [F.center_crop(clip, [self.size, self.size])]
        elif self.num_crops == 3:
            views = self._three_crops(clip)
        else:
            five = list(F.five_crop(clip, [self.size, self.size]))
            views = five + [F.hflip(view) for view in five]
        return torch.stack(views)


class Normalize:
    """Scale ``uint8`` values to ``[0, 1]`` and normalise per channel.

    Takes ``... x C x H x W`` ``uint8`` (e.g. ``T x C x H x W`` or
    ``V x T x C x H x W``), returns the same shape as ``float32``
    ``(x / 255 - mean) / std``.
    """

    def __init__(
        self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> None:
        self.mean = list(mean)
        self.std = list(std)

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        if clip.dtype != torch.uint8:
            raise TypeError(f"Normalize expects a uint8 clip, got {clip.dtype}")
        scaled = F.to_dtype(clip, torch.float32, scale=True)
        return F.normalize(scaled, self.mean, self.std)


class ToCTHW:
    """Move channels in front of time: the model input layout.

    Takes ``T x C x H x W`` (or ``V x T x C x H x W``), returns a contiguous
    ``C x T x H x W`` (or ``V x C x T x H x W``).
    """

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        return clip.transpose(-4, -3).contiguous()


def build_train_transform(
    crop_size: int, scales: Sequence[float], flip: bool
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Training pipeline: MultiScaleCrop -> (RandomHorizontalFlip) -> Normalize -> ToCTHW.

    Takes a ``uint8`` ``T x C x H x W`` clip, returns ``float32``
    ``C x T x crop_size x crop_size``.
    """
    steps: list[Callable[[torch.Tensor], torch.Tensor]] = [MultiScaleCrop(crop_size, scales)]
    if flip:
        steps.append(RandomHorizontalFlip())
    steps += [Normalize(), ToCTHW()]
    return Compose(steps)


def build_test_transform(
    resize_short: int, crop_size: int, num_crops: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Testing pipeline: ResizeShortSide -> MultiViewCrop -> Normalize -> ToCTHW.

    Takes a ``uint8`` ``T x C x H x W`` clip, returns ``float32``
    ``V x C x T x crop_size x crop_size`` with ``V = num_crops``.
    """
    return Compose(
        [
            ResizeShortSide(resize_short),
            MultiViewCrop(crop_size, num_crops),
            Normalize(),
            ToCTHW(),
        ]
    )
