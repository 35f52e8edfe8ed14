"""Loading official TSM / MF-Net checkpoints and this framework's own into the models."""

from __future__ import annotations

import re

import pytest
import torch
import torchvision

from rcca.models.convert import (
    LoadReport,
    convert_mfnet_checkpoint,
    convert_tsm_checkpoint,
    load_pretrained,
)
from rcca.models.insertion import insert_context_modules
from rcca.models.mfnet import MFNet3D, unit_out_channels
from rcca.models.nonlocal_block import NonLocal3D
from rcca.models.tsm import TSMResNet, block_out_channels

NL_POSITIONS = ["conv3_1", "conv3_3", "conv4_1", "conv4_3", "conv4_5"]
# The released TSM `_nl` model wraps these blocks (ops/non_local.py, make_non_local).
NL_BLOCKS = ("layer2.0", "layer2.2", "layer3.0", "layer3.2", "layer3.4")


def randomized(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Same names and shapes, fresh values (so a load is visible)."""
    generator = torch.Generator().manual_seed(1)
    out = {}
    for name, value in state.items():
        if value.is_floating_point():
            out[name] = torch.randn(value.shape, generator=generator)
        else:
            out[name] = torch.randint(0, 100, value.shape, generator=generator, dtype=value.dtype)
    return out


def official_tsm_name(name: str) -> str:
    """torchvision resnet name -> the key the official TSM main.py saves (DataParallel(TSN), blockres shift)."""
    if name.startswith("fc."):
        return "module.new_fc." + name[3:]  # dropout > 0: classifier lives in TSN.new_fc
    name = re.sub(r"^(layer\d+\.\d+)\.conv1\.", r"\1.conv1.net.", name)  # TemporalShift(conv1).net
    return "module.base_model." + name


def official_tsm_nl_name(name: str) -> str:
    """Name in a TSMResNet with NonLocal3D contexts -> key of the official `_nl` TSM checkpoint."""
    match = re.match(r"(layer\d+\.\d+)\.context\.(theta|phi|g|out|bn)\.(.+)", name)
    if match:
        block, part, rest = match.groups()
        part = {"theta": "theta", "phi": "phi.0", "g": "g.0", "out": "W.0", "bn": "W.1"}[part]
        return f"module.base_model.{block}.nl.{part}.{rest}"
    official = official_tsm_name(name)
    for block in NL_BLOCKS:  # NL3DWrapper(block): the residual block sits under `.block`
        official = official.replace(f"base_model.{block}.", f"base_model.{block}.block.")
    return official


def assert_loaded(model, source: dict[str, torch.Tensor], names: list[str]) -> None:
    """Every model tensor `name` equals source[name]."""
    state = model.state_dict()
    for name in names:
        assert torch.equal(state[name], source[name]), name


def full_tsm_checkpoint(state: dict[str, torch.Tensor]) -> dict:
    return {"epoch": 50, "arch": "resnet50", "state_dict": state, "optimizer": {"state": {}}, "best_prec1": 71.2}


# ---------------------------------------------------------------- TSM


@pytest.fixture(scope="module")
def resnet50_state() -> dict[str, torch.Tensor]:
    model = torchvision.models.resnet50(num_classes=400)
    return randomized(model.state_dict())


def test_convert_tsm_names(resnet50_state):
    official = {official_tsm_name(k): v for k, v in resnet50_state.items()}
    assert "module.base_model.layer1.0.conv1.net.weight" in official
    converted = convert_tsm_checkpoint(full_tsm_checkpoint(official))
    assert converted.keys() == resnet50_state.keys()
    bare = convert_tsm_checkpoint(official)  # bare state dict works too
    assert bare.keys() == resnet50_state.keys()
    # dropout = 0: the classifier stays base_model.fc
    assert "fc.weight" in convert_tsm_checkpoint({"module.base_model.fc.weight": torch.zeros(2, 3)})


def test_load_tsm_checkpoint_every_tensor(tmp_path, resnet50_state):
    path = tmp_path / "TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth"
    torch.save(full_tsm_checkpoint({official_tsm_name(k): v for k, v in resnet50_state.items()}), path)
    model = TSMResNet(depth=50, num_classes=400)
    report = load_pretrained(model, path, "tsm")
    assert isinstance(report, LoadReport)
    assert report.skipped == [] and report.new == []
    assert sorted(report.loaded) == sorted(model.state_dict())
    assert_loaded(model, resnet50_state, report.loaded)


def test_tsm_classifier_for_other_classes_skipped(tmp_path, resnet50_state):
    official = {official_tsm_name(k): v for k, v in resnet50_state.items()}
    official["module.base_model.layer1.0.extra.weight"] = torch.ones(3)  # unknown to the model
    path = tmp_path / "tsm.pth"
    torch.save(full_tsm_checkpoint(official), path)
    model = TSMResNet(depth=50, num_classes=101)
    report = load_pretrained(model, path, "tsm")
    assert sorted(report.skipped) == ["fc.bias", "fc.weight", "layer1.0.extra.weight"]
    assert "(400, 2048)" in report.reasons["fc.weight"] and "(101, 2048)" in report.reasons["fc.weight"]
    assert report.reasons["layer1.0.extra.weight"] == "not in the model"
    assert sorted(report.new) == ["fc.bias", "fc.weight"]
    assert_loaded(model, resnet50_state, report.loaded)
    assert len(report.loaded) == len(model.state_dict()) - 2
    assert "skipped fc.weight" in report.summary()


def test_tsm_nonlocal_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = TSMResNet(depth=50, num_classes=400)
    insert_context_modules(
        model.residual_blocks(), NL_POSITIONS, lambda c: NonLocal3D(c, subsample=True), block_out_channels
    )
    source = randomized(model.state_dict())
    official = {official_tsm_nl_name(k): v for k, v in source.items()}
    assert "module.base_model.layer2.0.block.conv1.net.weight" in official
    assert "module.base_model.layer3.4.nl.W.1.running_var" in official
    path = tmp_path / "TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e100_dense_nl.pth"
    torch.save(full_tsm_checkpoint(official), path)

    target = TSMResNet(depth=50, num_classes=400)
    insert_context_modules(
        target.residual_blocks(), NL_POSITIONS, lambda c: NonLocal3D(c, subsample=True), block_out_channels
    )
    report = load_pretrained(target, path, "tsm")
    assert report.skipped == [] and report.new == []
    assert_loaded(target, source, sorted(target.state_dict()))

    # Into a plain TSM: the backbone loads, the non-local tensors are reported as unknown.
    plain = TSMResNet(depth=50, num_classes=400)
    report = load_pretrained(plain, path, "tsm")
    assert report.new == []
    assert report.skipped and all(".context." in k for k in report.skipped)
    assert len(report.skipped) == 5 * 13  # theta/phi/g/out weight+bias, bn weight/bias/stats/count


def test_tsm_unsupported_checkpoints_rejected():
    with pytest.raises(ValueError, match="temporal-pooling"):
        convert_tsm_checkpoint({"module.base_model.layer2.net.0.conv1.net.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="not a ResNet"):
        convert_tsm_checkpoint({"module.base_model.features.0.0.weight": torch.zeros(1)})


# ---------------------------------------------------------------- MF-Net


@pytest.fixture(scope="module")
def mfnet_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return randomized(MFNet3D(num_classes=400).state_dict())


def test_load_mfnet_checkpoint_every_tensor(tmp_path, mfnet_state):
    # train/model.py save_checkpoint: {'epoch', 'state_dict'} of DataParallel(MFNET_3D).
    # PyTorch 0.4.0 (the release's version) had no BatchNorm num_batches_tracked.
    official = {"module." + k: v for k, v in mfnet_state.items() if not k.endswith("num_batches_tracked")}
    assert "module.conv2.B01.conv_i1.bn.weight" in official
    converted = convert_mfnet_checkpoint({"epoch": 0, "state_dict": official})
    assert set(converted) == {k[len("module.") :] for k in official}
    path = tmp_path / "MFNet3D_Kinetics-400_72.8.pth"
    torch.save({"epoch": 0, "state_dict": official}, path)
    model = MFNet3D(num_classes=400)
    report = load_pretrained(model, path, "mfnet")
    assert report.skipped == [] and report.new == []
    assert sorted(report.loaded) == sorted(converted)
    assert_loaded(model, mfnet_state, report.loaded)


def test_mfnet_classifier_for_other_classes_skipped(tmp_path, mfnet_state):
    official = {"module." + k: v for k, v in mfnet_state.items()}
    official["module.conv9.weight"] = torch.zeros(2)
    path = tmp_path / "mfnet.pth"
    torch.save({"epoch": 0, "state_dict": official}, path)
    model = MFNet3D(num_classes=101)
    report = load_pretrained(model, path, "mfnet")
    assert sorted(report.skipped) == ["classifier.bias", "classifier.weight", "conv9.weight"]
    assert sorted(report.new) == ["classifier.bias", "classifier.weight"]
    assert_loaded(model, mfnet_state, report.loaded)
    assert len(report.loaded) == len(model.state_dict()) - 2


def test_mfnet_2d_imagenet_kernels_inflated(tmp_path, mfnet_state):
    # MFNet2D_ImageNet1k-0000.pth: bare state dict, same names, 2-D kernels, 1000 classes.
    state_2d = {}
    for name, value in mfnet_state.items():
        if name.startswith("classifier"):
            continue
        state_2d[name] = value[:, :, 0] if value.dim() == 5 else value
    state_2d["classifier.weight"] = torch.zeros(1000, 768)
    state_2d["classifier.bias"] = torch.zeros(1000)
    path = tmp_path / "MFNet2D_ImageNet1k-0000.pth"
    torch.save(state_2d, path)
    model = MFNet3D(num_classes=101)
    report = load_pretrained(model, path, "mfnet")
    assert sorted(report.skipped) == ["classifier.bias", "classifier.weight"]
    state = model.state_dict()
    kernel = state["conv2.B01.conv_m1.conv.weight"]  # 3 x 3 x 3: each time slice = 2-D kernel / 3
    for t in range(3):
        assert torch.allclose(kernel[:, :, t], state_2d["conv2.B01.conv_m1.conv.weight"] / 3)
    assert torch.equal(state["conv2.B02.conv_m2.conv.weight"][:, :, 0], state_2d["conv2.B02.conv_m2.conv.weight"])
    assert torch.equal(state["tail.bn.running_var"], state_2d["tail.bn.running_var"])


# ---------------------------------------------------------------- own checkpoints and errors


def test_load_rcca_checkpoint(tmp_path, mfnet_state):
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": mfnet_state, "epoch": 3, "optimizer": {}}, path)
    model = MFNet3D(num_classes=400)
    report = load_pretrained(model, path, "rcca")
    assert report.skipped == [] and report.new == []
    assert_loaded(model, mfnet_state, sorted(model.state_dict()))


def test_missing_file_names_path_and_config_key(tmp_path):
    path = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError) as info:
        load_pretrained(MFNet3D(num_classes=10), path, "mfnet")
    message = str(info.value)
    assert str(path) in message and "init_from" in message and "\n" not in message


def test_bad_kind_and_wrong_checkpoint(tmp_path, mfnet_state):
    path = tmp_path / "mfnet.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in mfnet_state.items()}}, path)
    with pytest.raises(ValueError, match="choose one of"):
        load_pretrained(MFNet3D(num_classes=10), path, "i3d")
    with pytest.raises(ValueError, match="not a ResNet"):
        load_pretrained(TSMResNet(depth=18, num_classes=10), path, "tsm")
    with pytest.raises(ValueError, match="none of its"):
        load_pretrained(TSMResNet(depth=18, num_classes=10), path, "mfnet")
    with pytest.raises(ValueError, match="'model'"):
        load_pretrained(MFNet3D(num_classes=10), path, "rcca")


def test_context_modules_are_new_after_backbone_load(tmp_path, mfnet_state):
    path = tmp_path / "mfnet.pth"
    torch.save({"epoch": 0, "state_dict": {"module." + k: v for k, v in mfnet_state.items()}}, path)
    model = MFNet3D(num_classes=400)
    insert_context_modules(model.residual_blocks(), ["conv3_1"], NonLocal3D, unit_out_channels)
    report = load_pretrained(model, path, "mfnet")
    assert report.skipped == []
    assert report.new and all(k.startswith("conv3.B01.context.") for k in report.new)


def test_checkpoint_with_pickled_objects_loads_with_warning(tmp_path, mfnet_state):
    import argparse

    path = tmp_path / "with_args.pth"
    official = {"module." + k: v for k, v in mfnet_state.items()}
    torch.save({"epoch": 0, "state_dict": official, "args": argparse.Namespace(lr=0.1)}, path)
    model = MFNet3D(num_classes=400)
    with pytest.warns(UserWarning, match="not a weights-only file"):
        report = load_pretrained(model, path, "mfnet")
    assert report.skipped == [] and report.new == []


def test_own_checkpoint_with_rng_state_loads_silently(tmp_path, mfnet_state, recwarn):
    import numpy as np

    path = tmp_path / "last.pt"
    torch.save({"model": mfnet_state, "rng": {"numpy": np.random.get_state()}, "epoch": 1}, path)
    report = load_pretrained(MFNet3D(num_classes=400), path, "rcca")
    assert report.skipped == [] and report.new == []
    assert not [w for w in recwarn if "weights-only" in str(w.message)]
