"""scripts/export.py and rcca.models.export: exported TSM / MF-Net models with non-local and RCCA-3D modules
give the eager model's logits, for a batch size other than the export's too; one-line errors otherwise."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from conftest import load_script
from omegaconf import OmegaConf
from torch import nn

from rcca.config import compose_config
from rcca.engine.checkpoints import RunCheckpoint
from rcca.errors import UserError
from rcca.models.build import build_model
from rcca.models.export import (
    INSTALL_HINT,
    check_export,
    exported_logits,
    output_path,
    require_dependencies,
    serialize,
)

# Tiny models on 32-pixel clips of 4 frames: TSM ResNet-18 at width 8, MF-Net; context modules after conv3_1.
TINY = ["backbone.width=8", "backbone.num_frames=4", "data.crop_size=32", "trainer.device=cpu"]
MODELS = {
    "tsm_r18+rcca": [],
    "tsm_r18+nl": ["module=nl", "module.positions=[conv3_1]"],
    "tsm_r50+nl": ["backbone=tsm_r50", "backbone.width=8", "module=nl", "module.positions=[conv3_1]"],
    "mfnet+nl": ["backbone=mfnet", "backbone.num_frames=4", "module=nl", "module.positions=[conv3_1]"],
    "mfnet+rcca": ["backbone=mfnet", "backbone.num_frames=4", "module.positions=[conv3_1]"],
}
CLASSES = [f"action {index}" for index in range(8)]
EXACT = 1e-5  # float32 logits of about 1: the exported graphs run the same operations


def tiny_model(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    """The model `name` of MODELS with random weights and batch-norm statistics (so that the non-local block,
    whose last batch norm starts at zero, changes the output), in eval mode; and its clip shape."""
    cfg = compose_config([*TINY, *MODELS[name]])
    torch.manual_seed(0)
    model = build_model(cfg.backbone, cfg.module, len(CLASSES))
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.weight.data.uniform_(0.5, 1.5)
            module.running_mean.normal_(0.0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval(), (3, cfg.backbone.num_frames, cfg.data.crop_size, cfg.data.crop_size)


def eager_and_exported(model: nn.Module, data: bytes, fmt: str, clip_shape: tuple[int, ...], batch: int):
    """The eager and the exported logits of `batch` random clips."""
    clips = torch.randn(batch, *clip_shape)
    with torch.no_grad():
        return model(clips), exported_logits(data, fmt, clips)


@pytest.mark.parametrize("name", ["tsm_r18+rcca", "tsm_r50+nl", "mfnet+rcca"])
def test_torchscript_gives_the_eager_logits_at_another_batch_size(name):
    model, clip_shape = tiny_model(name)
    data = serialize(model, torch.randn(2, *clip_shape), "torchscript")  # traced on 2 clips
    for batch in (2, 3):
        expected, logits = eager_and_exported(model, data, "torchscript", clip_shape, batch)
        assert logits.shape == (batch, len(CLASSES))
        torch.testing.assert_close(logits, expected, rtol=0, atol=EXACT)


@pytest.mark.parametrize("name", ["tsm_r18+nl", "mfnet+nl", "tsm_r18+rcca", "mfnet+rcca"])
def test_onnx_gives_the_eager_logits_at_another_batch_size(name):
    pytest.importorskip("onnxruntime")
    model, clip_shape = tiny_model(name)
    data = serialize(model, torch.randn(2, *clip_shape), "onnx")
    for batch in (2, 3):
        expected, logits = eager_and_exported(model, data, "onnx", clip_shape, batch)
        torch.testing.assert_close(logits, expected, rtol=0, atol=EXACT)


def test_check_catches_a_wrong_export():
    model, clip_shape = tiny_model("tsm_r18+rcca")
    other, _ = tiny_model("tsm_r18+rcca")
    with torch.no_grad():
        other.fc.bias.add_(1.0)
    data = serialize(other, torch.randn(1, *clip_shape), "torchscript")
    with pytest.raises(UserError, match="differ from PyTorch's"):
        check_export(model, data, "torchscript", clip_shape)


def save_checkpoint(path: Path, *overrides: str) -> Path:
    """An untrained run checkpoint of the tiny model (with `overrides`), as the trainer writes one."""
    cfg = compose_config([*TINY, *overrides])
    torch.manual_seed(0)
    model = build_model(cfg.backbone, cfg.module, len(CLASSES))
    RunCheckpoint(model.state_dict(), OmegaConf.to_container(cfg, resolve=True), CLASSES).save(path)
    return path


@pytest.fixture(scope="module")
def script():
    return load_script("export")


def run_script(script, argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `main(argv)`."""
    try:
        script.main(argv)
        status = 0
    except SystemExit as stop:
        status = stop.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_script_writes_beside_the_checkpoint_and_refuses_to_overwrite(tmp_path, script, capsys):
    ckpt = save_checkpoint(tmp_path / "best.pt")
    status, out, err = run_script(script, [f"ckpt={ckpt}", "format=torchscript"], capsys)
    written = tmp_path / "best.torchscript.pt"
    assert status == 0, err
    lines = out.strip().splitlines()
    assert "max abs difference" in lines[-2] and lines[-1].startswith(f"wrote {written} (torchscript")
    assert "N x 3 x 4 x 32 x 32" in lines[-1] and "N x 8 logits" in lines[-1]
    difference = float(lines[-2].split("max abs difference ")[1].split()[0])
    assert difference <= EXACT
    module = torch.jit.load(str(written))
    assert module(torch.randn(3, 3, 4, 32, 32)).shape == (3, 8)

    before = written.read_bytes()
    status, _, err = run_script(script, [f"ckpt={ckpt}", "format=torchscript"], capsys)
    assert status == 2 and err.strip() == (
        f"error: output={written} exists; set overwrite=true to replace it, or choose another output="
    )
    assert written.read_bytes() == before
    status, _, err = run_script(script, [f"ckpt={ckpt}", "format=torchscript", "overwrite=true"], capsys)
    assert status == 0, err


def test_script_exports_onnx_to_the_named_file(tmp_path, script, capsys):
    pytest.importorskip("onnxruntime")
    ckpt = save_checkpoint(tmp_path / "last.pt", "module=nl", "module.positions=[conv3_1]")
    output = tmp_path / "exported.onnx"
    status, out, err = run_script(script, [f"ckpt={ckpt}", "format=onnx", f"output={output}", "opset=17"], capsys)
    assert status == 0, err
    assert out.strip().splitlines()[-1].startswith(f"wrote {output} (onnx")
    assert output.is_file() and not (tmp_path / "last.onnx").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["format=torchscript"], "error: ckpt= is required"),
        (["ckpt={ckpt}"], "error: format= is required"),
        (["ckpt={ckpt}", "format=tflite"], "error: format=tflite: choose one of torchscript, onnx"),
        (
            ["ckpt={ckpt}", "format=onnx", "batch=4"],
            "error: batch=4: not an argument of this script; its keys are ckpt=, format=",
        ),
        (["ckpt={ckpt}", "format=onnx", "verbose"], "error: verbose: not an argument of this script"),
        (["ckpt={ckpt}", "format=onnx", "overwrite=maybe"], "error: overwrite=maybe: must be true or false"),
        (["ckpt={ckpt}", "format=onnx", "opset=new"], "error: opset=new: must be an integer >= 1"),
        (["ckpt={tmp}/none.pt", "format=onnx"], "error: ckpt={tmp}/none.pt: no such file"),
        (["ckpt={ckpt}", "format=onnx", "output={tmp}/no/m.onnx"], "error: output={tmp}/no/m.onnx: the folder"),
        (["ckpt={ckpt}", "format=onnx", "output={tmp}"], "error: output={tmp} is a folder"),
        (["ckpt={ckpt}", "format=onnx", "ckpt_format=caffe"], "error: ckpt_format=caffe: choose one of"),
        (["ckpt={ckpt}", "format=onnx", "module=none"], "error: module=none: the checkpoint's own model is used"),
    ],
)
def test_script_errors_are_one_line(tmp_path, script, capsys, argv, message):
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"")  # never read: each error comes before the checkpoint is, or does not need it
    if "module=none" in argv:
        save_checkpoint(ckpt)
    argv = [argument.format(ckpt=ckpt, tmp=tmp_path) for argument in argv]
    status, _, err = run_script(script, argv, capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(message.format(tmp=tmp_path)), err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any folder")
def test_output_must_be_writable(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(UserError, match="is not writable; choose another output="):
            output_path("m.pt", "onnx", folder / "m.onnx", overwrite=False)
    finally:
        folder.chmod(0o700)


def test_missing_onnxruntime_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(UserError, match="format=onnx needs the onnxruntime package") as error:
        require_dependencies("onnx")
    assert INSTALL_HINT in str(error.value) and INSTALL_HINT == 'pip install "rcca[export]"'
    require_dependencies("torchscript")


@pytest.mark.filterwarnings("ignore:Exporting to ONNX opset version 999")
def test_a_failing_exporter_is_one_line_naming_the_format():
    model, clip_shape = tiny_model("tsm_r18+nl")
    with pytest.raises(UserError, match=r"format=onnx opset=999: the export failed \(.*\); try format=torchscript"):
        serialize(model, torch.randn(1, *clip_shape), "onnx", opset=999)
