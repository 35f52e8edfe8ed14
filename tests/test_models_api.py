"""The public API of rcca.models: imports, position names, the VideoBackbone interface, and
context-module insertion into the backbones and into a user's own 3D CNN, against by-hand references."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import rcca.models
from rcca.models import (
    RCCA3D,
    CrissCrossAttention3D,
    MFNet3D,
    NonLocal3D,
    TSMResNet,
    VideoBackbone,
    WithContext,
    build_model,
    context_modules,
    insert_context_modules,
)
from rcca.models.complexity import complexity_report, count_macs
from rcca.models.positions import (
    MFNET_STAGE_BLOCKS,
    TSM_STAGE_BLOCKS,
    parse_position,
    position_name,
    valid_positions,
)

README = Path(__file__).resolve().parents[1] / "README.md"
README_HEADING = "## Use RCCA-3D in your own network"


def test_public_names_come_from_their_modules() -> None:
    from rcca.models.attention import RCCA3D as attention_rcca
    from rcca.models.build import build_model as build_build_model
    from rcca.models.insertion import insert_context_modules as insertion_insert

    assert RCCA3D is attention_rcca and build_model is build_build_model
    assert insert_context_modules is insertion_insert
    assert issubclass(CrissCrossAttention3D, nn.Module) and issubclass(NonLocal3D, nn.Module)
    assert all(hasattr(rcca.models, name) for name in rcca.models.__all__)
    with pytest.raises(AttributeError):
        rcca.models.no_such_name  # noqa: B018


def test_positions_import_without_torch() -> None:
    """The config imports rcca.models.positions; that must not load torch (through rcca.models either)."""
    code = "import sys, rcca.models.positions; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("stage_blocks", [(2, 2, 2, 2), (3, 4, 6, 3), (1,), (2, 0, 1)])
def test_valid_positions_enumerate_blocks(stage_blocks: tuple[int, ...]) -> None:
    expected = []
    stage = 2  # the paper's conv2 is the first residual stage
    for count in stage_blocks:
        block = 1
        while block <= count:
            expected.append(f"conv{stage}_{block}")
            block += 1
        stage += 1
    assert valid_positions(stage_blocks) == expected
    assert [position_name(*parse_position(name)) for name in expected] == expected


@pytest.mark.parametrize("name", ["conv3", "layer2.0", "conv3_", "conv3_3 ", "Conv3_3"])
def test_parse_position_refuses_other_names(name: str) -> None:
    with pytest.raises(ValueError, match="convN_i"):
        parse_position(name)


BACKBONES = [f"tsm{depth}" for depth in TSM_STAGE_BLOCKS] + ["mfnet"]
CLIP = (2, 3, 4, 32, 32)  # N x 3 x T x H x W


def small_backbone(name: str) -> nn.Module:
    """A backbone of `BACKBONES`, narrow where it can be (TSM), for clips of 4 frames, in eval mode."""
    torch.manual_seed(0)
    if name == "mfnet":
        return MFNet3D(num_classes=3, groups=4).eval()
    return TSMResNet(depth=int(name[3:]), width=8, num_classes=3, num_segments=4).eval()


@pytest.mark.parametrize("name", BACKBONES)
def test_stage_block_counts_match_the_networks(name: str) -> None:
    blocks = MFNET_STAGE_BLOCKS if name == "mfnet" else TSM_STAGE_BLOCKS[int(name[3:])]
    assert [len(stage) for stage in small_backbone(name).residual_blocks().values()] == list(blocks)


@pytest.mark.parametrize("name", BACKBONES)
def test_backbones_satisfy_the_interface(name: str) -> None:
    model = small_backbone(name)
    assert isinstance(model, VideoBackbone)
    assert not isinstance(nn.Conv3d(3, 3, 1), VideoBackbone)
    assert model.context_modules() == {}

    # block_channels against the channels each block actually outputs (dim 1 for both layouts).
    measured: dict[nn.Module, int] = {}

    def measure(block: nn.Module, _: tuple, out: Tensor) -> None:
        measured[block] = out.shape[1]

    blocks = [block for stage in model.residual_blocks().values() for block in stage]
    hooks = [block.register_forward_hook(measure) for block in blocks]
    with torch.no_grad():
        model(torch.randn(CLIP))
    for hook in hooks:
        hook.remove()
    assert [model.block_channels(block) for block in blocks] == [measured[block] for block in blocks]

    # get_classifier is the layer that produces the logits: with zero weights they are its bias.
    classifier = model.get_classifier()
    assert isinstance(classifier, nn.Linear) and classifier.out_features == model.num_classes == 3
    with torch.no_grad():
        classifier.weight.zero_()
        classifier.bias.copy_(torch.tensor([1.0, -2.0, 3.0]))
        logits = model(torch.randn(CLIP))
    assert torch.allclose(logits, classifier.bias.expand(CLIP[0], 3))


def context_by_hand(model: nn.Module, block: nn.Module, context: nn.Module) -> torch.utils.hooks.RemovableHandle:
    """Make `block` of a plain backbone apply `context` to its output, as a forward hook.

    TSM blocks work on frames, (N*T) x C x H x W, so the output is regrouped into N x C x T x H x W clips
    around the module.
    """

    def on_frames(_: nn.Module, __: tuple, out: Tensor) -> Tensor:
        nt, c, h, w = out.shape
        t = model.num_segments
        clips = out.reshape(nt // t, t, c, h, w).permute(0, 2, 1, 3, 4)
        return context(clips).permute(0, 2, 1, 3, 4).reshape(nt, c, h, w)

    if isinstance(model, TSMResNet):
        return block.register_forward_hook(on_frames)
    return block.register_forward_hook(lambda _, __, out: context(out))


@pytest.mark.parametrize("name", ["tsm18", "tsm50", "mfnet"])
def test_backbone_insertion_matches_applying_the_module_by_hand(name: str) -> None:
    plain = small_backbone(name)
    model = copy.deepcopy(plain)
    torch.manual_seed(1)
    inserted = insert_context_modules(model, ["conv3_2", "conv2_1"], RCCA3D)
    assert list(inserted) == ["conv3_2", "conv2_1"]
    assert model.context_modules() == {"conv2_1": inserted["conv2_1"], "conv3_2": inserted["conv3_2"]}
    assert context_modules(model) == model.context_modules()
    stages = plain.residual_blocks()
    for position, module in inserted.items():
        stage, block = parse_position(position)
        assert module.cca.query.in_channels == plain.block_channels(stages[f"conv{stage}"][block - 1])

    clip = torch.randn(CLIP)
    with torch.no_grad():
        bare = plain(clip)
        hooks = [
            context_by_hand(plain, stages["conv2"][0], inserted["conv2_1"]),
            context_by_hand(plain, stages["conv3"][1], inserted["conv3_2"]),
        ]
        reference = plain(clip)
        for hook in hooks:
            hook.remove()
        out = model(clip)
    assert not torch.allclose(reference, bare)  # the modules do change the output
    torch.testing.assert_close(out, reference)


def test_backbone_refuses_channels_and_unknown_positions() -> None:
    model = small_backbone("tsm18")
    with pytest.raises(ValueError, match="VideoBackbone"):
        insert_context_modules(model, ["conv3_1"], RCCA3D, channels=16)
    with pytest.raises(ValueError, match=r"'layer2'.*valid: conv2_1, conv2_2, conv3_1, .*conv5_2"):
        insert_context_modules(model, ["layer2"], RCCA3D)
    with pytest.raises(ValueError, match="conv3_1 listed twice"):
        insert_context_modules(model, ["conv3_1", "conv3_1"], RCCA3D)
    assert model.context_modules() == {}


class UserNet(nn.Module):
    """A user's own 3D CNN, none of rcca's classes: N x 3 x T x H x W -> N x 5."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv3d(3, 8, 3, padding=1)
        self.layers = nn.Sequential(
            nn.Conv3d(8, 12, 3, stride=(1, 2, 2), padding=1),
            nn.BatchNorm3d(12),
            nn.ReLU(),
            nn.Conv3d(12, 16, 3, padding=1),
        )
        self.fc = nn.Linear(16, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.layers(self.stem(x)).mean(dim=(2, 3, 4)))


def user_net() -> UserNet:
    torch.manual_seed(0)
    net = UserNet()
    with torch.no_grad():  # non-trivial batch-norm statistics, so eval mode differs from the initial identity
        net.layers[1].running_mean.uniform_(-1, 1)
        net.layers[1].running_var.uniform_(0.5, 2)
    return net.eval()


@pytest.mark.parametrize("sizing", ["dry_run", "channels"])
def test_user_network_insertion_matches_applying_the_module_by_hand(sizing: str) -> None:
    reference = user_net()
    net = copy.deepcopy(reference)
    clip = torch.randn(2, 3, 4, 12, 12)
    torch.manual_seed(1)
    if sizing == "dry_run":
        inserted = insert_context_modules(net, ["stem", "layers.1"], RCCA3D, example_input=clip)
    else:
        inserted = insert_context_modules(net, ["stem"], RCCA3D, channels=8)
        inserted |= insert_context_modules(net, ["layers.1"], RCCA3D, channels=12)
    assert [m.cca.query.in_channels for m in inserted.values()] == [8, 12]
    assert context_modules(net) == inserted

    with torch.no_grad():
        h = inserted["stem"](reference.stem(clip))
        h = reference.layers[0](h)
        h = inserted["layers.1"](reference.layers[1](h))
        h = reference.layers[3](reference.layers[2](h))
        by_hand = reference.fc(h.mean(dim=(2, 3, 4)))
        assert not torch.allclose(by_hand, reference(clip))
        torch.testing.assert_close(net(clip), by_hand)


def test_nested_names_wrap_inside_out() -> None:
    reference = user_net()
    net = copy.deepcopy(reference)
    inserted = insert_context_modules(net, ["layers", "layers.3"], NonLocal3D, channels=16)
    for module in inserted.values():  # NonLocal3D starts as the identity: give its output BN a weight
        nn.init.ones_(module.bn.weight)
    clip = torch.randn(1, 3, 2, 8, 8)
    with torch.no_grad():
        h = reference.layers[2](reference.layers[1](reference.layers[0](reference.stem(clip))))
        h = inserted["layers"](inserted["layers.3"](reference.layers[3](h)))
        torch.testing.assert_close(net(clip), reference.fc(h.mean(dim=(2, 3, 4))))


def test_wrapped_parameters_move_under_block() -> None:
    net = user_net()
    before = net.state_dict()
    insert_context_modules(net, ["layers.1"], RCCA3D, channels=12)
    renamed = {re.sub(r"^layers\.1\.", "layers.1.block.", key): value for key, value in before.items()}
    after = net.state_dict()
    assert {key for key in after if ".context." not in key} == set(renamed)
    assert all(torch.equal(after[key], value) for key, value in renamed.items())
    assert isinstance(net.layers[1], WithContext)
    assert {key for key in after if ".context." in key} == {f"layers.1.context.{k}" for k in RCCA3D(12).state_dict()}


def test_dry_run_leaves_modes_and_statistics_alone() -> None:
    net = user_net().train()
    net.stem.eval()
    statistics = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}
    modes = {name: module.training for name, module in net.named_modules()}
    insert_context_modules(net, ["layers.3"], RCCA3D, example_input=torch.randn(2, 3, 2, 8, 8))
    after = net.state_dict()
    assert all(torch.equal(after[k], v) for k, v in statistics.items())
    assert {name: net.get_submodule(name).training for name in modes} == modes
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize(
    ("positions", "kwargs", "message"),
    [
        (["layers.7"], {"channels": 8}, r"'layers\.7' not a submodule.*valid: stem, layers, layers\.0"),
        ([""], {"channels": 8}, "not a submodule"),
        (["stem"], {}, "channels= .* or example_input="),
        (["fc"], {"example_input": torch.randn(1, 3, 2, 8, 8)}, r"N x C x T x H x W output; got \{'fc': \(1, 5\)\}"),
        (["stem", "stem"], {"channels": 8}, "stem listed twice"),
    ],
    ids=["unknown", "root", "no-size", "not-5d", "twice"],
)
def test_user_network_misuse_raises(positions: list[str], kwargs: dict, message: str) -> None:
    net = user_net()
    before = {name: type(module) for name, module in net.named_modules()}
    with pytest.raises(ValueError, match=message):
        insert_context_modules(net, positions, RCCA3D, **kwargs)
    assert {name: type(module) for name, module in net.named_modules()} == before  # nothing inserted


def test_complexity_report_itemises_user_network_modules() -> None:
    net = user_net()
    inserted = insert_context_modules(net, ["layers.1"], RCCA3D, channels=12)
    report = complexity_report(net, (1, 3, 4, 12, 12))
    [cost] = report.modules
    assert (cost.position, cost.name, cost.input_shape) == ("layers.1", "layers.1.context", [1, 12, 4, 6, 6])
    with torch.no_grad():
        assert cost.macs == count_macs(inserted["layers.1"], torch.zeros(1, 12, 4, 6, 6))


def readme_python_block(text: str, heading: str) -> str:
    """The first ```python block after the line `heading` of a Markdown text."""
    lines = text.splitlines()
    assert heading in lines, f"README.md has no section {heading!r}"
    after = "\n".join(lines[lines.index(heading) + 1 :])
    match = re.search(r"^```python\n(.*?)^```", after, re.MULTILINE | re.DOTALL)
    assert match is not None, f"no ```python block after {heading!r}"
    return match.group(1)


def test_readme_own_network_example_runs() -> None:
    code = readme_python_block(README.read_text(encoding="utf-8"), README_HEADING)
    exec(compile(code, f"{README}:{README_HEADING}", "exec"), {"__name__": "readme_example"})
