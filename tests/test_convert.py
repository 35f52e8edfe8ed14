"""Loading official TSM / MF-Net checkpoints and this framework's own into the models."""

from __future__ import annotations

import re

import pytest
import torch
import torchvision
from conftest import save_malicious_checkpoint

from rcca.engine.checkpoints import read_checkpoint
from rcca.errors import UserError
from rcca.models.convert import (
    LoadReport,
    convert_mfnet_checkpoint,
    convert_tsm_checkpoint,
    load_pretrained,
)
from rcca.models.insertion import insert_context_modules
from rcca.models.mfnet import MFNet3D
from rcca.models.nonlocal_block import NonLocal3D
from rcca.models.tsm import TSMResNet

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
    report = load_pretrained(model, read_checkpoint(path, "init_from"), "tsm")
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
    report = load_pretrained(model, read_checkpoint(path, "init_from"), "tsm")
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
    insert_context_modules(model, NL_POSITIONS, lambda c: NonLocal3D(c, subsample=True))
    source = randomized(model.state_dict())
    official = {official_tsm_nl_name(k): v for k, v in source.items()}
    assert "module.base_model.layer2.0.block.conv1.net.weight" in official
    assert "module.base_model.layer3.4.nl.W.1.running_var" in official
    path = tmp_path / "TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e100_dense_nl.pth"
    torch.save(full_tsm_checkpoint(official), path)

    target = TSMResNet(depth=50, num_classes=400)
    insert_context_modules(target, NL_POSITIONS, lambda c: NonLocal3D(c, subsample=True))
    report = load_pretrained(target, read_checkpoint(path, "init_from"), "tsm")
    assert report.skipped == [] and report.new == []
    assert_loaded(target, source, sorted(target.state_dict()))

    # Into a plain TSM: the backbone loads, the non-local tensors are reported as unknown.
    plain = TSMResNet(depth=50, num_classes=400)
    report = load_pretrained(plain, read_checkpoint(path, "init_from"), "tsm")
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
    report = load_pretrained(model, read_checkpoint(path, "init_from"), "mfnet")
    assert report.skipped == [] and report.new == []
    assert sorted(report.loaded) == sorted(converted)
    assert_loaded(model, mfnet_state, report.loaded)


def test_mfnet_classifier_for_other_classes_skipped(tmp_path, mfnet_state):
    official = {"module." + k: v for k, v in mfnet_state.items()}
    official["module.conv9.weight"] = torch.zeros(2)
    path = tmp_path / "mfnet.pth"
    torch.save({"epoch": 0, "state_dict": official}, path)
    model = MFNet3D(num_classes=101)
    report = load_pretrained(model, read_checkpoint(path, "init_from"), "mfnet")
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
    report = load_pretrained(model, read_checkpoint(path, "init_from"), "mfnet")
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
    report = load_pretrained(model, read_checkpoint(path, "init_from"), "rcca")
    assert report.skipped == [] and report.new == []
    assert_loaded(model, mfnet_state, sorted(model.state_dict()))


def test_missing_file_names_path_and_config_key(tmp_path):
    path = tmp_path / "nowhere.pth"
    with pytest.raises(UserError) as info:
        read_checkpoint(path, "init_from")
    message = str(info.value)
    assert str(path) in message and "init_from" in message and "\n" not in message


def test_bad_kind_and_wrong_checkpoint(tmp_path, mfnet_state):
    path = tmp_path / "mfnet.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in mfnet_state.items()}}, path)
    with pytest.raises(ValueError, match="choose one of"):
        load_pretrained(MFNet3D(num_classes=10), read_checkpoint(path, "init_from"), "i3d")
    with pytest.raises(ValueError, match="not a ResNet"):
        load_pretrained(TSMResNet(depth=18, num_classes=10), read_checkpoint(path, "init_from"), "tsm")
    with pytest.raises(ValueError, match="none of its"):
        load_pretrained(TSMResNet(depth=18, num_classes=10), read_checkpoint(path, "init_from"), "mfnet")
    with pytest.raises(ValueError, match="'model'"):
        load_pretrained(MFNet3D(num_classes=10), read_checkpoint(path, "init_from"), "rcca")


def test_context_modules_are_new_after_backbone_load(tmp_path, mfnet_state):
    path = tmp_path / "mfnet.pth"
    torch.save({"epoch": 0, "state_dict": {"module." + k: v for k, v in mfnet_state.items()}}, path)
    model = MFNet3D(num_classes=400)
    insert_context_modules(model, ["conv3_1"], NonLocal3D)
    report = load_pretrained(model, read_checkpoint(path, "init_from"), "mfnet")
    assert report.skipped == []
    assert report.new and all(k.startswith("conv3.B01.context.") for k in report.new)


def test_checkpoint_that_would_run_code_is_refused(tmp_path, mfnet_state):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pth"
    official = {"module." + k: v for k, v in mfnet_state.items()}
    save_malicious_checkpoint(path, marker, epoch=0, state_dict=official)
    with pytest.raises(UserError, match="refused, reading it would need") as info:
        read_checkpoint(path, "init_from")
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # what the refused file would have done
    assert marker.read_text() == "code ran"


@pytest.mark.parametrize("content", [b"just some text\n", b""])
def test_text_and_empty_files_are_one_line_errors(tmp_path, content):
    path = tmp_path / "notes.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match="is not a") as info:
        read_checkpoint(path, "resume")
    assert "\n" not in str(info.value) and "resume=" in str(info.value)


def test_truncated_checkpoint_and_folder_are_one_line_errors(tmp_path, mfnet_state):
    path = tmp_path / "last.pt"
    torch.save({"model": mfnet_state}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match="not a complete PyTorch checkpoint") as info:
        read_checkpoint(path, "resume")
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="is a folder"):
        read_checkpoint(tmp_path, "ckpt")


def as_if_pickled_by_numpy_1(path):
    """Rewrite a checkpoint's pickle to name NumPy's modules as NumPy 1.x did (`numpy.core`, not `numpy._core`),
    as in the released TSM / MF-Net files."""
    import zipfile

    with zipfile.ZipFile(path) as source:
        entries = [(item, source.read(item.filename)) for item in source.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as target:
        for item, data in entries:
            if item.filename.endswith("data.pkl"):
                assert b"numpy._core" in data
                data = data.replace(b"numpy._core", b"numpy.core")
            target.writestr(item, data)


@pytest.mark.parametrize("numpy_1", [False, True])
def test_numpy_values_of_released_checkpoints_load(tmp_path, mfnet_state, numpy_1):
    import numpy as np

    path = tmp_path / "release.pth"
    official = {"module." + k: v for k, v in mfnet_state.items()}
    torch.save({"epoch": 0, "state_dict": official, "best_prec1": np.float64(71.2), "rng": np.random.get_state()}, path)
    if numpy_1:
        as_if_pickled_by_numpy_1(path)
    checkpoint = read_checkpoint(path, "init_from")
    assert checkpoint["best_prec1"] == 71.2
    report = load_pretrained(MFNet3D(num_classes=400), checkpoint, "mfnet")
    assert report.skipped == [] and report.new == []


def shift_reference(
    model: torchvision.models.ResNet, clips: torch.Tensor, num_segments: int, place: str
) -> torch.Tensor:
    """Logits of TSM built by hand from a torchvision ResNet: forward pre-hooks shift each block's input
    ("block") or the input of its conv1 ("blockres"), as the official TemporalShift wrapper does."""
    from rcca.models.tsm import temporal_shift

    def shift(module, inputs):
        return (temporal_shift(inputs[0], num_segments, 8),)

    hooks = []
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in stage:
            hooks.append((block if place == "block" else block.conv1).register_forward_pre_hook(shift))
    n, c, t, h, w = clips.shape
    logits = model(clips.transpose(1, 2).reshape(n * t, c, h, w)).view(n, t, -1).mean(1)
    for hook in hooks:
        hook.remove()
    return logits


def test_block_shift_checkpoint_needs_and_gets_block_placement(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=10).eval()
    official = {}
    for name, value in reference.state_dict().items():
        name = re.sub(r"^(layer\d+\.\d+)\.", r"\1.net.", name)  # TemporalShift(block).net
        official[("module.new_fc." + name[3:]) if name.startswith("fc.") else "module.base_model." + name] = value
    path = tmp_path / "TSM_something_shift8_block.pth"
    torch.save(full_tsm_checkpoint(official), path)
    checkpoint = read_checkpoint(path, "init_from")

    with pytest.raises(ValueError, match="backbone.shift_place=block") as info:
        load_pretrained(TSMResNet(depth=18, num_classes=10), checkpoint, "tsm", f"init_from={path}")
    assert str(path) in str(info.value) and "\n" not in str(info.value)

    model = TSMResNet(depth=18, num_classes=10, shift_place="block").eval()
    report = load_pretrained(model, checkpoint, "tsm")
    assert report.skipped == [] and report.new == []
    clips = torch.randn(2, 3, 8, 64, 64)
    with torch.no_grad():
        expected = shift_reference(reference, clips, 8, "block")
        assert torch.allclose(model(clips), expected, atol=1e-5)
        other = shift_reference(reference, clips, 8, "blockres")
        assert (other - expected).abs().max() > 1e-3  # the placement matters


def test_plain_tsn_checkpoint_into_tsm_needs_the_tsn_format(tmp_path, resnet50_state):
    official = {"module.base_model." + k: v for k, v in resnet50_state.items()}  # no `.net.` anywhere
    path = tmp_path / "TSN_kinetics_resnet50.pth"
    torch.save(full_tsm_checkpoint(official), path)
    checkpoint = read_checkpoint(path, "init_from")
    with pytest.raises(ValueError, match="init_from_format=tsn"):
        load_pretrained(TSMResNet(depth=50, num_classes=400), checkpoint, "tsm")
    model = TSMResNet(depth=50, num_classes=400)
    report = load_pretrained(model, checkpoint, "tsn")
    assert report.skipped == [] and report.new == []
    assert_loaded(model, resnet50_state, report.loaded)
    # A file with shift tensors is a TSM checkpoint, whatever the format says.
    shifted = {official_tsm_name(k): v for k, v in resnet50_state.items()}
    with pytest.raises(ValueError, match="init_from_format=tsm"):
        load_pretrained(TSMResNet(depth=50, num_classes=400), full_tsm_checkpoint(shifted), "tsn")


def test_subsampled_nonlocal_release_needs_subsample(tmp_path):
    torch.manual_seed(0)
    source = TSMResNet(depth=50, num_classes=400)
    insert_context_modules(source, NL_POSITIONS, lambda c: NonLocal3D(c, subsample=True))
    path = tmp_path / "TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e100_dense_nl.pth"
    torch.save(full_tsm_checkpoint({official_tsm_nl_name(k): v for k, v in source.state_dict().items()}), path)
    target = TSMResNet(depth=50, num_classes=400)
    insert_context_modules(target, NL_POSITIONS, lambda c: NonLocal3D(c, subsample=False))
    with pytest.raises(ValueError, match="module.subsample=true"):
        load_pretrained(target, read_checkpoint(path, "init_from"), "tsm")


def test_rcca_checkpoint_settings_that_change_the_computation_are_compared(tmp_path):
    model = TSMResNet(depth=18, num_classes=10, width=16)
    insert_context_modules(model, ["conv3_1"], lambda c: NonLocal3D(c, subsample=True))
    config = {
        "backbone": {"name": "tsm", "shift_div": 8, "shift_place": "blockres"},
        "module": {"name": "nl", "subsample": True},
    }
    path = tmp_path / "best.pt"
    torch.save({"model": model.state_dict(), "config": config}, path)
    checkpoint = read_checkpoint(path, "init_from")
    assert load_pretrained(model, checkpoint, "rcca").skipped == []
    other = TSMResNet(depth=18, num_classes=10, width=16, shift_div=4)
    insert_context_modules(other, ["conv3_1"], lambda c: NonLocal3D(c, subsample=False))
    with pytest.raises(ValueError, match="backbone.shift_div=8, module.subsample=true"):
        load_pretrained(other, checkpoint, "rcca")


def test_own_checkpoint_with_rng_state_loads_silently(tmp_path, mfnet_state, recwarn):
    from rcca.engine.checkpoints import rng_state

    path = tmp_path / "last.pt"
    torch.save({"model": mfnet_state, "rng": rng_state(), "epoch": 1}, path)
    report = load_pretrained(MFNet3D(num_classes=400), read_checkpoint(path, "init_from"), "rcca")
    assert report.skipped == [] and report.new == []
    assert not recwarn.list
