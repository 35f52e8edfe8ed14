"""MAC counts: fvcore against counts derived here from shapes, the paper's tables, and scripts/complexity.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache

import pytest
import torch
from conftest import run_entry
from torch import nn

from rcca.config import BackboneConfig, ModuleConfig
from rcca.models.attention import RCCA3D, CrissCrossAttention3D
from rcca.models.build import build_model
from rcca.models.complexity import count_macs, count_parameters, mac_analysis
from rcca.models.nonlocal_block import NonLocal3D

# Feature maps (C, T, H, W) of the paper's insertion sites, clip of 8 (TSM) / 16 (MF-Net) frames at 224.
TSM_CONV3, TSM_CONV4, TSM_CONV5 = (512, 8, 28, 28), (1024, 8, 14, 14), (2048, 8, 7, 7)
MF_CONV3, MF_CONV4 = (192, 8, 28, 28), (384, 8, 14, 14)  # MF-Net halves time in conv2


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Counting runs real full-size forwards. CPU matmul handles CCA-3D's permuted line products
    one tiny matrix at a time; with 2 threads on a busy machine that took seconds per forward
    instead of ~0.1 s. One thread is fast and steady, and the counts do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cca_macs(n: int, c: int, t: int, h: int, w: int, inner: int, value: int) -> int:
    """One CCA-3D: 1x1x1 convs q, k (C -> C'), v (C -> Cv) at every position, then per query
    T + H + W energies of C' MACs (its own position appears on all three lines and is masked
    on two after being computed) and the same number of Cv-wide aggregation terms."""
    positions = n * t * h * w
    convs = positions * (2 * c * inner + c * value)
    return convs + positions * (t + h + w) * (inner + value)


def nonlocal_macs(n: int, c: int, t: int, h: int, w: int, subsample: bool) -> int:
    """Non-local: theta, phi, g (C -> C/2) and out (C/2 -> C) convs, BN (one MAC per element),
    and two THW x L x C/2 products (affinity and aggregation) with L keys (THW/4 if subsampled)."""
    inner, positions = c // 2, n * t * h * w
    keys = t * (h // 2) * (w // 2) if subsample else positions // n
    return positions * (4 * c * inner + c) + 2 * positions * keys * inner


def macs_of(module: nn.Module, c: int, t: int, h: int, w: int, n: int = 1) -> int:
    with torch.no_grad():
        return count_macs(module.eval(), torch.zeros(n, c, t, h, w))


@pytest.mark.parametrize(
    "n, c, t, h, w, inner, value", [(1, 16, 4, 5, 6, 4, 16), (2, 8, 1, 3, 7, 2, 4), (1, 4, 1, 1, 1, 1, 4)]
)
def test_cca_count_matches_shapes(n: int, c: int, t: int, h: int, w: int, inner: int, value: int) -> None:
    assert macs_of(CrissCrossAttention3D(c, inner, value), c, t, h, w, n) == cca_macs(n, c, t, h, w, inner, value)


@pytest.mark.parametrize("structure", ["a", "b", "c", "d"])
@pytest.mark.parametrize("recurrence", [1, 3, 4])
def test_rcca_is_recurrence_times_cca(structure: str, recurrence: int) -> None:
    """R applications of the shared CCA-3D; structure c adds its restoring conv (Cv -> C) each time."""
    c, t, h, w = 16, 4, 6, 5
    module = RCCA3D(c, structure=structure, recurrence=recurrence)
    value = c // 2 if structure == "c" else c
    restore = t * h * w * value * c if structure == "c" else 0
    assert macs_of(module, c, t, h, w) == recurrence * (cca_macs(1, c, t, h, w, c // 4, value) + restore)


@pytest.mark.parametrize("subsample", [False, True])
def test_nonlocal_count_matches_shapes(subsample: bool) -> None:
    c, t, h, w = 16, 3, 6, 8
    assert macs_of(NonLocal3D(c, subsample=subsample), c, t, h, w, n=2) == nonlocal_macs(2, c, t, h, w, subsample)


def test_unknown_matrix_products_are_refused() -> None:
    """An op fvcore cannot count (here a batched addition of products) stops the analysis."""

    class Baddbmm(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.baddbmm(x, x, x)

    with pytest.raises(RuntimeError, match="aten::baddbmm"):
        mac_analysis(Baddbmm(), torch.zeros(2, 3, 3))


@cache
def cca_step_macs(site: tuple[int, int, int, int], inner_fraction: float = 0.25) -> int:
    """fvcore count of one CCA-3D application (RCCA3D with R = 1) at a paper-sized site.

    An RCCA3D with R applications costs exactly R times this (test_rcca_is_recurrence_times_cca),
    which keeps the table checks below to one full-size trace per site.
    """
    return macs_of(RCCA3D(site[0], recurrence=1, inner_fraction=inner_fraction), *site)


@cache
def nl_macs(site: tuple[int, int, int, int], subsample: bool) -> int:
    return macs_of(NonLocal3D(site[0], subsample=subsample), *site)


# Increments over the baseline in the paper's convention (2 x module MACs), from Tables III-VI:
# row FLOPs minus the baseline's (TSM 33.0G, MF-Net 11.1G). Tolerance: 1% or 0.1G (rounding).
PAPER_DELTAS = {
    "I/III conv3_3": (lambda: 3 * cca_step_macs(TSM_CONV3), 16.3),
    "III conv4_5": (lambda: 3 * cca_step_macs(TSM_CONV4), 15.2),
    "III conv5_2": (lambda: 3 * cca_step_macs(TSM_CONV5), 14.9),
    "IV R=1 (5.4G per CCA-3D)": (lambda: cca_step_macs(TSM_CONV3), 5.4),
    "IV R=2": (lambda: 2 * cca_step_macs(TSM_CONV3), 10.9),
    "IV R=4": (lambda: 4 * cca_step_macs(TSM_CONV3), 21.7),
    "V C_d=1/2": (lambda: 3 * cca_step_macs(TSM_CONV3, 1 / 2), 21.5),
    "V C_d=1/8": (lambda: 3 * cca_step_macs(TSM_CONV3, 1 / 8), 13.7),
    "V C_d=1/16": (lambda: 3 * cca_step_macs(TSM_CONV3, 1 / 16), 12.4),
    "VI TSM+NL*1": (lambda: nl_macs(TSM_CONV4, False), 11.6),
    "VI TSM+NL*5": (lambda: 2 * nl_macs(TSM_CONV3, True) + 3 * nl_macs(TSM_CONV4, True), 57.0),
    "VI MF-Net+NL*5": (lambda: 2 * nl_macs(MF_CONV3, True) + 3 * nl_macs(MF_CONV4, True), 13.6),
    "VI MF-Net+RCCA*5": (lambda: 3 * (2 * cca_step_macs(MF_CONV3) + 3 * cca_step_macs(MF_CONV4)), 12.0),
}


@pytest.mark.parametrize("row", list(PAPER_DELTAS))
def test_paper_table_increments(row: str) -> None:
    macs, paper = PAPER_DELTAS[row]
    delta = 2 * macs() / 1e9
    assert abs(delta - paper) <= max(0.1, 0.01 * paper), f"{row}: 2 x {macs() / 1e9:.3f} GMACs vs paper +{paper}G"


def test_complexity_script_on_tsm_r50_rcca() -> None:
    """The script's JSON: build_model's parameters, RCCA-3D at conv3_3 = 8.15 GMACs (+16.3G), TSM 33.0G."""
    overrides = ["experiment=none", "backbone=tsm_r50", "module=rcca", "module.positions=[conv3_3]", "dataset=ucf101"]
    result = run_entry("scripts/complexity.py", *overrides, timeout=120)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    model = build_model(BackboneConfig(name="tsm", depth=50), ModuleConfig(name="rcca", positions=["conv3_3"]), 101)
    assert report["params"] == count_parameters(model)
    assert report["input_shape"] == [1, 3, 8, 224, 224]
    (module,) = report["modules"]
    assert module["position"] == "conv3_3" and module["kind"].startswith("RCCA3D(a, R=3, C=512, C'=128")
    assert module["params"] == 393_985
    assert module["macs"] == 3 * cca_step_macs(TSM_CONV3)
    assert module["macs"] == pytest.approx(8.15e9, rel=0.01)
    assert report["backbone_macs"] == pytest.approx(33.0e9, rel=0.01)
    assert report["paper_flops"] == pytest.approx(49.3e9, rel=0.01)
    assert "own position" in result.stdout  # the T+H+W vs T+H+W-2 note
