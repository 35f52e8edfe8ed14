"""Export a trained model to TorchScript or ONNX: `python scripts/export.py ckpt=<file> format=torchscript|onnx`.

    python scripts/export.py ckpt=outputs/2026-01-01/12-00-00/best.pt format=torchscript
    python scripts/export.py ckpt=best.pt format=onnx output=exported/model.onnx overwrite=true trainer.device=cpu
    python scripts/export.py ckpt=TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth ckpt_format=tsm \\
        format=onnx experiment=paper_tsm dataset=kinetics400 module=none

The exported model takes N x 3 x T x crop x crop clips (any N; T = backbone.num_frames and
crop = data.crop_size of the checkpoint's run) and returns N x num_classes logits. Before writing,
the exported model is run on random clips of 1 and 2 clips (ONNX by ONNX Runtime) and its logits are
compared with PyTorch's; the script prints the largest difference and a last line naming the file.
The model is exported on the CPU unless trainer.device names another device. ONNX needs
`pip install "rcca[export]"`.

Arguments are key=value: the script's own keys (--help lists them), and config overrides, passed
as for test.py (a dotted key such as trainer.device=cpu, or a group choice such as module=none).
Exit status: 0 written; 2 a user error, printed as one line `error: ...`.
"""

from __future__ import annotations

import sys

from rcca.engine.cli import ScriptKey, exit_codes, script_arguments, script_bool, script_int
from rcca.engine.inference import load_trained_model
from rcca.models.export import (
    CHECK_BATCHES,
    DEFAULT_OPSET,
    FORMATS,
    check_format,
    export_model,
    output_path,
    require_dependencies,
)

KEYS = {
    "ckpt": ScriptKey(
        "the checkpoint: a last.pt / best.pt of a run, or an official release (see ckpt_format)", required=True
    ),
    "format": ScriptKey(f"what to write: {' or '.join(FORMATS)}", required=True),
    "output": ScriptKey("the file to write (default: beside ckpt, <ckpt stem>.torchscript.pt or .onnx)"),
    "overwrite": ScriptKey("true: replace the output file if it exists", "false"),
    "ckpt_format": ScriptKey(
        "rcca, or an official release's tsm, tsn, mfnet (the model is named by overrides)", "rcca"
    ),
    "opset": ScriptKey("the ONNX opset version", str(DEFAULT_OPSET)),
}


def main(argv: list[str] | None = None) -> None:
    with exit_codes():
        args, overrides = script_arguments(sys.argv[1:] if argv is None else argv, KEYS, __doc__.rstrip())
        fmt = check_format(args["format"])
        require_dependencies(fmt)
        opset = script_int("opset", args["opset"], 1)
        path = output_path(args["ckpt"], fmt, args["output"], script_bool("overwrite", args["overwrite"]))
        if not any(override.lstrip("+").startswith("trainer.device=") for override in overrides):
            overrides.append("trainer.device=cpu")  # the check compares float32 CPU logits, without TF32
        trained = load_trained_model(args["ckpt"], overrides, args["ckpt_format"])
        clip_shape = trained.input_shape()[1:]
        report = export_model(trained.model, clip_shape, fmt, path, opset)
    shape = " x ".join(str(size) for size in clip_shape)
    engine = "ONNX Runtime" if fmt == "onnx" else "TorchScript"
    batches = " and ".join(str(batch) for batch in CHECK_BATCHES)
    print(
        f"logits of the exported model ({engine}) against PyTorch's, on batches of {batches} random clips: "
        f"max abs difference {report.max_difference:.3g} (largest logit {report.scale:.3g})"
    )
    print(
        f"wrote {report.path} ({fmt}, {report.size / 1e6:.1f} MB): input N x {shape} clips, "
        f"output N x {len(trained.classes)} logits"
    )


if __name__ == "__main__":
    main()
