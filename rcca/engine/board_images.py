"""The images a training run writes to TensorBoard at its validations: the confusion matrix, and the class
activation maps (paper Fig. 7) of one fixed validation clip, so that a run shows how both evolve.

Drawing needs matplotlib (the `plot` extra); without it the run trains as usual and says once that it
writes no images.
"""

from __future__ import annotations

import importlib.util
import logging

from torch import Tensor, nn

log = logging.getLogger("rcca")


def can_draw() -> bool:
    """Whether matplotlib is importable; when not, logs that the run writes no images."""
    if importlib.util.find_spec("matplotlib") is None:
        log.warning(
            'TensorBoard gets no confusion matrix or CAM images: matplotlib is missing (pip install "rcca[plot]")'
        )
        return False
    return True


def write_validation_images(
    writer,
    step: int,
    confusion_matrix: list[list[int]],
    class_names: list[str],
    model: nn.Module | None,
    clip: Tensor | None,
) -> None:
    """Add the confusion matrix and, when `model` and `clip` are given, the clip's class activation maps.

    Args:
        writer: the run's `SummaryWriter`.
        step: the update step the images belong to.
        confusion_matrix: K x K counts, rows the true classes (`rcca.engine.metrics.video_metrics`).
        class_names: the K names.
        model: the bare model (in any mode; it is evaluated and put back), or None for no CAM image.
        clip: 3 x T x H x W, one normalised validation view.
    """
    from rcca.visualization.drawing import cam_grid_image, confusion_matrix_image
    from rcca.visualization.maps import class_activation_maps, display_frames

    writer.add_image(
        "val/confusion_matrix", confusion_matrix_image(confusion_matrix, class_names), step, dataformats="HWC"
    )
    if model is None or clip is None:
        return
    maps = class_activation_maps(model, clip)
    best = int(maps.scores.argmax())
    title = f"predicted {class_names[best]} ({100 * float(maps.scores[best]):.1f}%) at update {step}"
    image = cam_grid_image(display_frames(clip), [maps.maps[best]], [title])
    writer.add_image("val/class_activation_maps", image, step, dataformats="HWC")
