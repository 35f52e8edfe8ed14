"""MF-Net 3D: size, cost, shapes, official names, and context-module insertion."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rcca.models.attention import RCCA3D
from rcca.models.insertion import insert_context_modules
from rcca.models.mfnet import MFNet3D, MultiFiberUnit
from rcca.models.nonlocal_block import NonLocal3D

POSITIONS = ["conv3_1", "conv3_3", "conv4_1", "conv4_3", "conv4_5"]
MFNET_PARAMS = 7_996_368  # 400 classes; the paper's Table VI: 8.00M


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def mfnet() -> MFNet3D:
    torch.manual_seed(0)
    return MFNet3D(num_classes=400).eval()


def test_parameter_count(mfnet):
    assert count(mfnet) == MFNET_PARAMS
    assert round(count(mfnet) / 1e6, 3) == 7.996


@pytest.mark.filterwarnings("ignore::FutureWarning")  # fvcore traces with torch.jit
def test_macs_at_16x224x224(mfnet):
    from fvcore.nn import FlopCountAnalysis

    flops = FlopCountAnalysis(mfnet, torch.zeros(1, 3, 16, 224, 224))
    flops.unsupported_ops_warnings(False)
    flops.uncalled_modules_warnings(False)
    by_op = flops.by_operator()
    # fvcore counts one multiply-accumulate as one flop. Its default also charges one per
    # element to every (eval-mode) BatchNorm: 0.131G here, which puts the total at 11.18G.
    # The published 11.05G (MF-Net paper; 11.1G in the RCCA-3D paper) is convs + classifier.
    macs = by_op["conv"] + by_op["linear"]
    assert macs == pytest.approx(11.05e9, rel=0.01)
    assert by_op["batch_norm"] == pytest.approx(0.131e9, rel=0.01)


def test_output_shape_and_other_input_sizes(mfnet):
    with torch.no_grad():
        assert mfnet(torch.randn(2, 3, 16, 64, 64)).shape == (2, 400)
        assert mfnet(torch.randn(1, 3, 8, 48, 80)).shape == (1, 400)  # adaptive pooling


def test_strides_per_stage(mfnet):
    shapes = {}
    hooks = [
        getattr(mfnet, name).register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape)))
        for name in ("conv1", "maxpool", "conv2", "conv3", "conv4", "conv5")
    ]
    with torch.no_grad():
        mfnet(torch.randn(1, 3, 16, 64, 64))
    for hook in hooks:
        hook.remove()
    assert shapes == {
        "conv1": (1, 16, 16, 32, 32),
        "maxpool": (1, 16, 16, 16, 16),
        "conv2": (1, 96, 8, 16, 16),  # temporal stride 2 in conv2's first unit
        "conv3": (1, 192, 8, 8, 8),
        "conv4": (1, 384, 8, 4, 4),
        "conv5": (1, 768, 8, 2, 2),
    }


def test_official_parameter_names(mfnet):
    state = mfnet.state_dict()
    expected_shapes = {
        "conv1.conv.weight": (16, 3, 3, 5, 5),
        "conv1.bn.weight": (16,),
        "conv2.B01.conv_i1.bn.weight": (16,),
        "conv2.B01.conv_i1.conv.weight": (24, 16, 1, 1, 1),
        "conv2.B01.conv_i2.conv.weight": (16, 24, 1, 1, 1),
        "conv2.B01.conv_m1.conv.weight": (96, 1, 3, 3, 3),  # 16 groups of 1 input channel
        "conv2.B01.conv_m2.conv.weight": (96, 96, 1, 1, 1),  # first unit: ungrouped 1x1x1
        "conv2.B01.conv_w1.conv.weight": (96, 16, 1, 1, 1),
        "conv2.B02.conv_m2.conv.weight": (96, 6, 1, 3, 3),  # other units: grouped 1x3x3
        "conv5.B03.conv_m1.conv.weight": (768, 48, 3, 3, 3),
        "tail.bn.weight": (768,),
        "classifier.weight": (400, 768),
        "classifier.bias": (400,),
    }
    for name, shape in expected_shapes.items():
        assert tuple(state[name].shape) == shape, name
    assert "conv2.B02.conv_w1.conv.weight" not in state
    stages = mfnet.residual_blocks()
    assert {k: len(v) for k, v in stages.items()} == {"conv2": 3, "conv3": 4, "conv4": 6, "conv5": 3}
    assert [mfnet.block_channels(stages[s][0]) for s in stages] == [96, 192, 384, 768]
    assert mfnet.get_classifier() is mfnet.classifier  # the release's name for the classifier


def test_context_applied_to_unit_output():
    unit = MultiFiberUnit(16, 32, 32, groups=4, first=True).eval()
    assert unit.context is None
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape))
            return torch.zeros_like(x)

    unit.context = Probe()
    out = unit(torch.randn(2, 16, 4, 6, 6))
    assert seen == [(2, 32, 4, 6, 6)]
    assert torch.count_nonzero(out) == 0
    assert "context" in dict(unit.named_children())


@pytest.mark.parametrize(
    ("make", "added", "millions"),
    [(lambda c: RCCA3D(c), 776_453, 0.78), (lambda c: NonLocal3D(c), 1_039_104, 1.04)],
    ids=["rcca3d", "nonlocal"],
)
def test_five_inserted_modules(make, added, millions):
    torch.manual_seed(0)
    model = MFNet3D(num_classes=400).eval()
    inserted = insert_context_modules(model, POSITIONS, make)
    assert list(inserted) == POSITIONS
    assert count(model) - MFNET_PARAMS == added
    # Table VI of the paper: +0.78M for RCCA-3D x5 (8.78M), +1.04M for non-local x5 (9.04M).
    assert round(added / 1e6, 2) == millions
    assert any(k.startswith("conv3.B01.context.") for k in model.state_dict())
    with torch.no_grad():
        out = model(torch.randn(1, 3, 16, 64, 64))
    assert out.shape == (1, 400)
    assert torch.isfinite(out).all()
