"""Figures of a trained model on one video (`scripts/visualize.py`): the feature maps around its context
modules (paper Fig. 6), class activation maps (Fig. 7), and RCCA-3D's attention at one position with the
context it gathers over R passes (Fig. 1 and 4).

The model sees one view of the video: one clip, the centre crop (`test.num_clips=1 test.num_crops=1` unless
the command line says otherwise), and the figures show the frames of that view. `maps` computes what is
shown, `drawing` draws it; the functions here tie them to a checkpoint and a video.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor

from rcca.engine.inference import TrainedModel, load_trained_model, read_views, video_paths
from rcca.errors import UserError
from rcca.visualization.drawing import attention_image, cam_animation, cam_grid_image, features_image
from rcca.visualization.maps import (
    attention_at_point,
    class_activation_maps,
    context_features,
    display_frames,
    effective_context,
    module_input,
    rcca_modules,
    top_variance_channels,
)

SUBCOMMANDS = ("features", "cam", "attention")
ONE_VIEW = {"test.num_clips": "1", "test.num_crops": "1"}  # one clip, the centre crop: the frames shown are the model's
DEFAULT_CHANNELS = 3  # channels shown besides the mean when none are named


def load_model(ckpt: str, overrides: list[str], ckpt_format: str = "rcca") -> TrainedModel:
    """`load_trained_model` evaluating one view (one clip, centre crop) unless `overrides` name others.

    Args:
        ckpt: the checkpoint file.
        overrides: Hydra overrides of its run config.
        ckpt_format: "rcca" or an official release's format.

    Returns:
        The model.

    Raises:
        UserError: one line (see `load_trained_model`).
    """
    named = {override.lstrip("+").split("=", 1)[0] for override in overrides}
    one_view = [f"{key}={value}" for key, value in ONE_VIEW.items() if key not in named]
    return load_trained_model(ckpt, [*one_view, *overrides], ckpt_format)


def first_view(trained: TrainedModel, video: str | Path) -> Tensor:
    """The first test view of one video file (normalised as the model's input).

    Args:
        trained: the model, whose run config says how views are made (`test.*`, `data.crop_size`).
        video: the video file.

    Returns:
        3 x T x crop x crop.

    Raises:
        UserError: one line, when `video` is not one existing file or cannot be decoded.
    """
    if Path(video).is_dir():
        raise UserError(f"video={video} is a folder; name one video file")
    return read_views(trained, video_paths(video)[0])[0]


def output_path(
    output: str | None, ckpt: str, video: str | Path, subcommand: str, suffix: str, overwrite: bool
) -> Path:
    """Where a figure goes: `output` with `suffix`, or `<ckpt dir>/visualize/<video stem>-<subcommand><suffix>`.

    Args:
        output: the path asked for, or None.
        ckpt: the checkpoint file.
        video: the video file.
        subcommand: features, cam or attention.
        suffix: ".png" or ".gif".
        overwrite: whether an existing file may be replaced.

    Returns:
        The path.

    Raises:
        UserError: one line, when `output` is no PNG file name, or the file exists and `overwrite` is false.
    """
    if output:
        named = Path(output)
        if not named.name or named.name in (".", "..") or named.suffix.lower() not in ("", ".png"):
            raise UserError(f"output={output}: name a PNG file (an animation goes beside it, as .gif)")
        path = named.with_suffix(suffix)
    else:
        path = Path(ckpt).parent / "visualize" / f"{Path(video).stem}-{subcommand}{suffix}"
    if path.exists() and not overwrite:
        raise UserError(f"output={path} exists; add overwrite=true to replace it, or give another output=")
    return path


def context_positions(trained: TrainedModel) -> str:
    """The checkpoint's context modules for messages: "rcca at conv3_1, conv3_3" or "none"."""
    positions = list(trained.config.module.positions) if trained.config.module.name != "none" else []
    return f"{trained.config.module.name} at {', '.join(positions)}" if positions else "none"


def features_figure(trained: TrainedModel, video: str | Path, channels: list[int] | None) -> np.ndarray:
    """The input and output feature maps of every context module over time (Fig. 6).

    Args:
        trained: the model.
        video: the video file.
        channels: the channels to show besides the mean; None: each module's `DEFAULT_CHANNELS` most varying.

    Returns:
        The figure, H x W x 3 uint8.

    Raises:
        UserError: one line, for a model without context modules, a channel it does not have, or a video
            that cannot be read.
    """
    clip = first_view(trained, video)
    maps = context_features(trained.model, clip)
    if not maps:
        raise UserError(f"ckpt={trained.config.ckpt} has no context module (module: none); features shows their maps")
    chosen = {}
    for entry in maps:
        count = entry.input.shape[0]
        wrong = [c for c in channels or [] if not 0 <= c < count]
        if wrong:
            raise UserError(
                f"channels={wrong[0]}: the module at {entry.position} has {count} channels (0..{count - 1})"
            )
        chosen[entry.position] = (
            channels if channels is not None else top_variance_channels(entry.input, DEFAULT_CHANNELS)
        )
    title = f"{Path(video).name}: context module input and output maps ({Path(trained.config.ckpt).name})"
    return features_image(display_frames(clip), maps, chosen, title)


def class_index(name: str, classes: list[str], ckpt: str) -> int:
    """The index of a class given by name or number.

    Args:
        name: the class's name, or its index as digits.
        classes: the checkpoint's class names.
        ckpt: the checkpoint, for the message.

    Returns:
        The index into `classes`.

    Raises:
        UserError: one line, when the checkpoint has no such class.
    """
    if name in classes:
        return classes.index(name)
    if name.isdigit() and int(name) < len(classes):
        return int(name)
    shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
    raise UserError(
        f"class={name}: not a class of ckpt={ckpt} ({len(classes)} classes: {shown}; or an index 0..{len(classes) - 1})"
    )


def cam_figure(
    models: list[TrainedModel], video: str | Path, class_name: str | None, gif: bool
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Class activation maps over the frames, one row per model (Fig. 7).

    Each row shows the predicted class of its model, or `class_name` when given, with the class's score.

    Args:
        models: the models (the checkpoint, then any compared ones).
        video: the video file.
        class_name: a class name or index (looked up in each model's classes), or None for the prediction.
        gif: whether to draw the animation too.

    Returns:
        The figure (H x W x 3 uint8) and, when `gif`, one image per frame (otherwise none).

    Raises:
        UserError: one line, for a class a checkpoint does not have or a video that cannot be read.
    """
    frames, cams, titles = [], [], []
    for trained in models:
        clip = first_view(trained, video)
        result = class_activation_maps(trained.model, clip)
        predicted = int(result.scores.argmax())
        index = predicted if class_name is None else class_index(class_name, trained.classes, trained.config.ckpt)
        shown = f"{trained.classes[index]} (p={result.scores[index]:.2f})"
        if index != predicted:
            shown += f", predicted {trained.classes[predicted]} (p={result.scores[predicted]:.2f})"
        frames.append(display_frames(clip))
        cams.append(result.maps[index])
        titles.append(f"{Path(trained.config.ckpt).name} ({context_positions(trained)}): {shown}")
    title = f"{Path(video).name}: class activation maps"
    animation = cam_animation(frames, cams, titles, Path(video).name) if gif else []
    return cam_grid_image(frames, cams, titles, title), animation


def attention_figure(
    trained: TrainedModel, video: str | Path, point: tuple[int, int, int], position: str | None
) -> np.ndarray:
    """One position's attention in each CCA-3D pass and its context after 1..R passes (Fig. 1 and 4).

    Args:
        trained: the model.
        video: the video file.
        point: the query (t, h, w) in the module's feature map.
        position: the module's position (`conv3_3`); None: the first RCCA-3D.

    Returns:
        The figure, H x W x 3 uint8.

    Raises:
        UserError: one line, for a model without RCCA-3D, a position without one, a point outside the
            module's map, or a video that cannot be read.
    """
    modules = rcca_modules(trained.model)
    ckpt = trained.config.ckpt
    if not modules:
        raise UserError(f"ckpt={ckpt} has no RCCA-3D module (its context modules: {context_positions(trained)})")
    position = position or next(iter(modules))
    if position not in modules:
        raise UserError(f"module={position}: ckpt={ckpt} has RCCA-3D at {', '.join(modules)} only; name one of them")
    clip = first_view(trained, video)
    x = module_input(trained.model, modules[position], clip)
    size = tuple(x.shape[2:])
    if len(point) != 3 or not all(0 <= p < s for p, s in zip(point, size)):
        raise UserError(
            f"point={','.join(map(str, point))}: outside the {position} feature map, T x H x W = "
            f"{' x '.join(map(str, size))} (t, h, w count from 0)"
        )
    module = modules[position]
    weights = module.attention_weights(x)
    passes, contexts = attention_at_point(weights, point), effective_context(weights, point)
    title = (
        f"{Path(video).name}: RCCA-3D at {position}, R={module.recurrence}, query (t,h,w)={point} "
        f"of {' x '.join(map(str, size))} ({Path(ckpt).name})"
    )
    return attention_image(display_frames(clip), passes, contexts, point, title)
