"""Figures of a trained model on one video: `python scripts/visualize.py SUBCOMMAND key=value ...`.

    python scripts/visualize.py features ckpt=<run>/best.pt video=clip.mp4 [channels=0,5,9]
    python scripts/visualize.py cam ckpt=<run>/best.pt video=clip.mp4 [compare=<other ckpt>] [class=<name>] [gif=true]
    python scripts/visualize.py attention ckpt=<run>/best.pt video=clip.mp4 point=t,h,w [module=conv3_3]

features: the input and output maps of every context module (channel mean, and the named channels or the
three most varying), one row per map, time steps left to right (paper Fig. 6). cam: class activation maps
of the predicted (or the named) class over the frames, one row per model (Fig. 7), optionally as a GIF.
attention: an RCCA-3D's attention weights of the query (t, h, w of the module's feature map) in each pass,
and the context the query gathers after 1..R passes (Fig. 1 and 4), over the frames.

The model sees one view: one clip, the centre crop (test.num_clips=1 test.num_crops=1 unless overridden).
The PNG goes to output= or `<checkpoint's folder>/visualize/<video name>-<subcommand>.png`; an existing
file is kept unless overwrite=true. Any other key with a dot, or a config group (test.resize_short=128,
trainer.device=cpu, dataset=ucf101), overrides the checkpoint's run config as in test.py; for official
releases, name the model (ckpt_format=tsm experiment=paper_tsm dataset=kinetics400).
Needs matplotlib (pip install "rcca[plot]"). Exit status 2 with one line `error: ...` for bad input.
"""

from __future__ import annotations

import sys

from rcca.engine.cli import ScriptKey, exit_codes, script_arguments, script_bool, script_key_lines
from rcca.errors import UserError
from rcca.visualization import (
    SUBCOMMANDS,
    attention_figure,
    cam_figure,
    features_figure,
    load_model,
    output_path,
)
from rcca.visualization.drawing import write_gif, write_png

COMMON = {
    "ckpt": ScriptKey("the checkpoint (a run's best.pt / last.pt, or a release with ckpt_format)", required=True),
    "video": ScriptKey("the video file", required=True),
    "output": ScriptKey("the PNG to write (default: <ckpt folder>/visualize/<video>-<subcommand>.png)"),
    "overwrite": ScriptKey("true: replace an existing output", "false"),
    "ckpt_format": ScriptKey("rcca, or an official release's format (tsm, tsn, mfnet)", "rcca"),
}
KEYS = {
    "features": {
        **COMMON,
        "channels": ScriptKey("channels shown besides the mean, e.g. 0,5,9 (default: 3 most varying)"),
    },
    "cam": {
        **COMMON,
        "compare": ScriptKey("a second checkpoint (same ckpt_format and overrides), drawn in the second row"),
        "class": ScriptKey("the class shown, by name or index (default: each model's prediction)"),
        "gif": ScriptKey("true: also write an animated GIF beside the PNG", "false"),
    },
    "attention": {
        **COMMON,
        "point": ScriptKey("the query t,h,w in the module's feature map", required=True),
        "module": ScriptKey("the RCCA-3D's position, e.g. conv3_3 (default: the first)"),
    },
}


def integers(values: dict[str, str | None], key: str, count: int | None = None) -> list[int] | None:
    """A comma-separated list of integers (None when the key is not given), of `count` of them when given.

    Raises:
        UserError: one line, for anything else.
    """
    text = values[key]
    if text is None:
        return None
    try:
        numbers = [int(part) for part in text.split(",")]
    except ValueError:
        numbers = []
    if not numbers or (count is not None and len(numbers) != count):
        shape = "t,h,w" if count == 3 else "comma-separated integers, e.g. 0,5,9"
        raise UserError(f"{key}={text}: expected {shape}")
    return numbers


def usage() -> str:
    """The script's help: its docstring's first paragraph and every subcommand's keys."""
    lines = [__doc__.split("\n\n")[0], ""]
    for subcommand, keys in KEYS.items():
        lines.append(f"{subcommand}:")
        lines += script_key_lines(keys)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if argv is None else argv
    if not arguments or arguments[0] in ("-h", "--help") or "--help" in arguments or "-h" in arguments:
        print(usage())
        return
    with exit_codes():
        subcommand, *rest = arguments
        if subcommand not in KEYS:
            raise UserError(f"{subcommand}: unknown subcommand; choose one of {', '.join(SUBCOMMANDS)}")
        keys, overrides = script_arguments(rest, KEYS[subcommand], usage())
        ckpt, video, overwrite = keys["ckpt"], keys["video"], script_bool("overwrite", keys["overwrite"])
        gif = subcommand == "cam" and script_bool("gif", keys["gif"])
        channels = integers(keys, "channels") if subcommand == "features" else None
        point = integers(keys, "point", 3) if subcommand == "attention" else None
        png = output_path(keys["output"], ckpt, video, subcommand, ".png", overwrite)
        animation_path = output_path(keys["output"], ckpt, video, subcommand, ".gif", overwrite) if gif else None
        trained = load_model(ckpt, overrides, keys["ckpt_format"])
        if subcommand == "features":
            image = features_figure(trained, video, channels)
        elif subcommand == "cam":
            compared = [load_model(keys["compare"], overrides, keys["ckpt_format"])] if keys["compare"] else []
            image, animation = cam_figure([trained, *compared], video, keys["class"], gif)
            if animation_path is not None:
                write_gif(animation, animation_path)
        else:
            image = attention_figure(trained, video, (point[0], point[1], point[2]), keys["module"])
        write_png(image, png)
    extra = f", {animation_path}" if gif else ""
    print(f"{subcommand}: wrote {png}{extra} ({image.shape[1]} x {image.shape[0]} pixels)")


if __name__ == "__main__":
    main()
