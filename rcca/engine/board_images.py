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


def write_confusion_matrix(writer, step: int, confusion_matrix: list[list[int]], class_names: list[str]) -> None:
    """Add a validation's confusion matrix (K x K counts, rows the true classes) as `val/confusion_matrix`.

    Args:
        writer: the run's `SummaryWriter`.
        step: the update step the image belongs to.
        confusion_matrix: the counts (`rcca.engine.metrics.video_metrics`).
        class_names: the K names.
    """
    from rcca.visualization.drawing import confusion_matrix_image

    writer.add_image(
        "val/confusion_matrix", confusion_matrix_image(confusion_matrix, class_names), step, dataformats="HWC"
    )


def write_class_activation_maps(writer, step: int, model: nn.Module, clip: Tensor, class_names: list[str]) -> None:
    """Add the class activation maps of the predicted class over one clip's frames as `val/class_activation_maps`.

    Args:
        writer: the run's `SummaryWriter`.
        step: the update step the image belongs to.
        model: the bare model (in any mode; it is evaluated and put back).
        clip: 3 x T x H x W, one normalised validation view.
        class_names: the K names.
    """
    from rcca.visualization.drawing import cam_grid_image
    from rcca.visualization.maps import class_activation_maps, display_frames

    maps = class_activation_maps(model, clip)
    best = int(maps.scores.argmax())
    title = f"predicted {class_names[best]} ({100 * float(maps.scores[best]):.1f}%) at update {step}"
    image = cam_grid_image(display_frames(clip), [maps.maps[best]], [title])
    writer.add_image("val/class_activation_maps", image, step, dataformats="HWC")
