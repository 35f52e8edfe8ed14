"""Exporting a model to TorchScript or ONNX, checked against the model it came from.

Both formats start from a trace of the model in eval mode under `torch.no_grad()`: CCA-3D then takes
its inference path (`criss_cross_attention`, plain tensor operations) instead of its autograd
function, which neither TorchScript nor ONNX can hold. The traced shapes are symbolic, so the
exported model takes any batch size N of clips N x 3 x T x crop x crop; T and the crop size are
those of the export and are fixed.

* TorchScript: `torch.jit.trace`; load it with `torch.jit.load(path)`.
* ONNX: PyTorch's TorchScript-based exporter (`torch.onnx.export(..., dynamo=False)`; the newer
  `torch.export` one needs `onnxscript`), input `clips`, output `logits`, dynamic axis 0.

Nothing is written before the exported model has been run on random clips of two batch sizes
(`CHECK_BATCHES`; ONNX by ONNX Runtime) and its logits compared with the eager model's: a
difference above `TOLERANCE` (relative to the logits' scale, at least 1) is an error and no file
is written. This catches an exporter that mistranslates an operation (CCA-3D sums out of place when
traced and uses non-negative dims for this reason: PyTorch's ONNX exporter got writes through views
and negative dims wrong).
"""

from __future__ import annotations

import importlib.util
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from rcca.engine.files import write_atomically
from rcca.errors import UserError

FORMATS = ("torchscript", "onnx")
SUFFIXES = {"torchscript": ".torchscript.pt", "onnx": ".onnx"}  # the default output: <checkpoint stem><suffix>
DEFAULT_OPSET = 17
INPUT_NAME = "clips"  # the ONNX model's input: N x 3 x T x crop x crop
OUTPUT_NAME = "logits"  # and its output: N x num_classes
CHECK_BATCHES = (1, 2)  # the export traces the first; the check runs both
TOLERANCE = 1e-3  # max |exported - eager| / max(1, max |eager|)
INSTALL_HINT = 'pip install "rcca[export]"'


@dataclass
class ExportReport:
    """What `export_model` wrote and how closely the written model reproduces the eager one.

    Attributes:
        path: the file written.
        format: "torchscript" or "onnx".
        size: bytes written.
        max_difference: the largest absolute difference of the logits, over `CHECK_BATCHES`.
        scale: the largest absolute eager logit (what `TOLERANCE` is relative to, when above 1).
    """

    path: Path
    format: str
    size: int
    max_difference: float
    scale: float


def check_format(fmt: str) -> str:
    """`fmt` if it names an export format.

    Args:
        fmt: the `format=` value.

    Returns:
        `fmt`.

    Raises:
        UserError: one line, naming the formats, when it does not.
    """
    if fmt not in FORMATS:
        raise UserError(f"format={fmt}: choose one of {', '.join(FORMATS)}")
    return fmt


def require_dependencies(fmt: str) -> None:
    """Check that the optional package an export to `fmt` needs is installed (ONNX: onnxruntime, which
    runs the check; PyTorch's exporter itself needs no package).

    Args:
        fmt: "torchscript" (needs nothing beyond torch) or "onnx".

    Raises:
        UserError: one line naming the missing package and the command that installs it.
    """
    if fmt == "onnx" and importlib.util.find_spec("onnxruntime") is None:
        raise UserError(f"format=onnx needs the onnxruntime package: {INSTALL_HINT}")


def output_path(ckpt: str | Path, fmt: str, output: str | Path | None, overwrite: bool) -> Path:
    """Where the exported model goes, checked before any work is done.

    Args:
        ckpt: the checkpoint being exported.
        fmt: the export format.
        output: the file asked for; None or "" for `<checkpoint stem><SUFFIXES[fmt]>` beside the checkpoint.
        overwrite: whether an existing file may be replaced.

    Returns:
        The output file.

    Raises:
        UserError: one line, when the checkpoint is missing (for the default output), the file exists
            and `overwrite` is false, it is a folder, or its folder is missing or not writable.
    """
    if not output:
        ckpt = Path(ckpt)
        if not ckpt.is_file():
            raise UserError(f"ckpt={ckpt}: no such file; give a checkpoint (a last.pt or best.pt of a run)")
        output = ckpt.with_name(ckpt.stem + SUFFIXES[fmt])
    path = Path(output)
    if path.is_dir():
        raise UserError(
            f"output={path} is a folder; name the file to write (e.g. output={path / ('model' + SUFFIXES[fmt])})"
        )
    if path.exists() and not overwrite:
        raise UserError(f"output={path} exists; set overwrite=true to replace it, or choose another output=")
    folder = path.parent
    if not folder.is_dir():
        raise UserError(f"output={path}: the folder {folder} does not exist; create it or choose another output=")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"output={path}: the folder {folder} is not writable; choose another output=")
    return path


def serialize(model: nn.Module, example: Tensor, fmt: str, opset: int = DEFAULT_OPSET) -> bytes:
    """The exported model as the bytes of its file, traced on `example`.

    The tracer's warnings (values it records as constants) and the deprecation warnings of torch.jit and
    of the TorchScript-based ONNX exporter are silenced: `check_export` tells whether the result is right.

    Args:
        model: the network, in eval mode.
        example: a batch of clips on the model's device, N x 3 x T x crop x crop.
        fmt: "torchscript" or "onnx".
        opset: the ONNX opset version (ONNX only).

    Returns:
        The file's contents.

    Raises:
        UserError: one line, when the model is in training mode or the exporter fails.
    """
    if model.training:
        raise UserError("the model is in training mode; export it after model.eval()")
    buffer = io.BytesIO()
    setting = f"format={fmt}" + (f" opset={opset}" if fmt == "onnx" else "")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)  # the ONNX exporter's
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation (recent PyTorch releases)
            if fmt == "torchscript":
                traced = torch.jit.trace(model, example, check_trace=False)
                traced.requires_grad_(False)  # runs as traced (no autograd) outside torch.no_grad() too
                torch.jit.save(traced, buffer)
            else:
                axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
                torch.onnx.export(
                    model,
                    (example,),
                    buffer,
                    dynamo=False,
                    opset_version=opset,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes=axes,
                )
    except Exception as error:  # the exporters raise many types (RuntimeError, OnnxExporterError, ValueError, ...)
        reason = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        other = "torchscript" if fmt == "onnx" else "onnx"
        raise UserError(f"{setting}: the export failed ({reason[:300]}); try format={other}") from error
    return buffer.getvalue()


def exported_logits(data: bytes, fmt: str, clips: Tensor) -> Tensor:
    """Run an exported model (the bytes of its file) on `clips`: TorchScript on the clips' device,
    ONNX with ONNX Runtime on the CPU.

    Args:
        data: the file's contents (`serialize`).
        fmt: its format.
        clips: N x 3 x T x crop x crop.

    Returns:
        The logits, N x num_classes, on the CPU.
    """
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation (recent PyTorch releases)
            module = torch.jit.load(io.BytesIO(data), map_location=clips.device)
        with torch.no_grad():
            return module(clips).cpu()
    import onnxruntime

    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: clips.cpu().numpy()})
    return torch.from_numpy(logits)


def check_export(model: nn.Module, data: bytes, fmt: str, clip_shape: tuple[int, ...]) -> tuple[float, float]:
    """Compare an exported model's logits with the eager model's on random clips, one batch size per
    `CHECK_BATCHES` entry.

    Args:
        model: the eager network, in eval mode.
        data: the exported model's file contents.
        fmt: its format.
        clip_shape: one clip, 3 x T x crop x crop.

    Returns:
        (the largest absolute difference of the logits, the largest absolute eager logit).

    Raises:
        UserError: one line, when the exported model fails to run or the difference exceeds `TOLERANCE`
            times max(1, the largest eager logit).
    """
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(0)
    other = "torchscript" if fmt == "onnx" else "onnx"
    difference = scale = 0.0
    for batch in CHECK_BATCHES:
        clips = torch.randn(batch, *clip_shape, generator=generator).to(device)
        with torch.no_grad():
            expected = model(clips).float().cpu()
        try:
            logits = exported_logits(data, fmt, clips)
        except Exception as error:  # TorchScript's and ONNX Runtime's own error types
            reason = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
            raise UserError(
                f"format={fmt}: the exported model fails on {batch} clip(s) ({reason[:300]}); nothing was written, "
                f"try format={other}"
            ) from error
        difference = max(difference, (logits - expected).abs().max().item())
        scale = max(scale, expected.abs().max().item())
        if not difference <= TOLERANCE * max(1.0, scale):  # not <=: a NaN difference fails too
            raise UserError(
                f"format={fmt}: the exported model's logits differ from PyTorch's by {difference:.3g} on {batch} "
                f"clip(s) (largest logit {scale:.3g}): the exporter mistranslated the model; nothing was written, "
                f"try format={other}"
            )
    return difference, scale


def export_model(
    model: nn.Module, clip_shape: tuple[int, ...], fmt: str, path: Path, opset: int = DEFAULT_OPSET
) -> ExportReport:
    """Export `model`, check the result (`check_export`), then write it to `path` atomically.

    Args:
        model: the network, in eval mode, on its device.
        clip_shape: one clip, 3 x T x crop x crop: the exported model takes N x `clip_shape`, any N.
        fmt: "torchscript" or "onnx".
        path: the file to write (see `output_path`); replaced if it exists.
        opset: the ONNX opset version (ONNX only).

    Returns:
        The file written and the difference of its logits from the eager model's.

    Raises:
        UserError: one line, for an unknown format, a missing optional package, a failed export,
            an exported model whose logits differ, or a disk without the space for the file.
    """
    require_dependencies(check_format(fmt))
    device = next(model.parameters()).device
    example = torch.randn(CHECK_BATCHES[0], *clip_shape, generator=torch.Generator().manual_seed(0)).to(device)
    data = serialize(model, example, fmt, opset)
    difference, scale = check_export(model, data, fmt, clip_shape)
    write_atomically(path, data)
    return ExportReport(Path(path), fmt, len(data), difference, scale)
