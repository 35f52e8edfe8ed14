"""The compiled CPU kernels of CCA-3D's line products (dot products and weighted sums): built where a
compiler is, equal to independent references and to the ATen path, and a clean fallback where they cannot
be built or are not wanted."""

from __future__ import annotations

import importlib.util
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import dense_line_weights
from torch import Tensor

from rcca.models import compiled
from rcca.models.attention import line_affinities, line_aggregate, line_attention
from rcca.models.compiled import KERNELS_VARIABLE, cpu_kernels


@pytest.fixture(autouse=True)
def fresh_kernels() -> None:
    """Each test looks the kernels up afresh (its own environment), and leaves no choice behind."""
    cpu_kernels.cache_clear()
    yield
    cpu_kernels.cache_clear()


def through_aten(
    monkeypatch: pytest.MonkeyPatch, function: Callable[..., Tensor], *args: object, **kwargs: object
) -> Tensor:
    """`function` (`line_aggregate`, `line_affinities`) through the ATen path (matrix products per batch of lines)."""
    with monkeypatch.context() as patch:
        patch.setenv(KERNELS_VARIABLE, "aten")
        cpu_kernels.cache_clear()
        result = function(*args, **kwargs)
    cpu_kernels.cache_clear()
    return result


def einsum_affinities(a: Tensor, b: Tensor) -> Tensor:
    """Dot products with the positions on each line, written axis by axis: N x T x H x W x (T + H + W)."""
    along_t = torch.einsum("nthwc,nshwc->nthws", a, b)
    along_h = torch.einsum("nthwc,ntswc->nthws", a, b)
    along_w = torch.einsum("nthwc,nthsc->nthws", a, b)
    return torch.cat([along_t, along_h, along_w], dim=-1)


def test_the_kernels_build_where_a_compiler_and_ninja_are() -> None:
    if shutil.which("c++") is None or importlib.util.find_spec("ninja") is None:
        pytest.skip("no C++ compiler or ninja here: the attention runs its ATen path")
    assert cpu_kernels() is not None


# N, T, H, W, K: sizes of 1, 1 to 7 pairs of float32 vectors and an odd one left, an empty batch
SHAPES = [(1, 3, 4, 5, 64), (2, 4, 6, 5, 16), (1, 1, 1, 1, 48), (2, 1, 5, 1, 32), (1, 6, 2, 7, 112), (0, 2, 3, 3, 16)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("with_base", [False, True])
def test_compiled_line_sums_equal_the_aten_path(
    shape: tuple[int, ...], dtype: torch.dtype, transpose: bool, with_base: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weighted sums along the lines, their adjoint (`transpose`) and the residual (`base`), on values that
    are every other channel pair of a wider map (a row stride of their own, as q and k are of q|k)."""
    if cpu_kernels() is None:
        pytest.skip("the CPU kernels cannot be built here")
    n, t, h, w, k = shape
    generator = torch.Generator().manual_seed(sum(shape))
    weights = line_attention(torch.randn(n, t, h, w, 4, generator=generator, dtype=dtype))
    values = torch.randn(n, t, h, w, 2 * k + 1, generator=generator, dtype=dtype)[..., 1 : k + 1]
    base = torch.randn(n, t, h, w, k, generator=generator, dtype=dtype) if with_base else None
    ours = line_aggregate(weights, values, transpose=transpose, base=base)
    reference = through_aten(monkeypatch, line_aggregate, weights, values, transpose=transpose, base=base)
    assert ours.shape == (n, t, h, w, k) and ours.dtype == dtype and ours.is_contiguous()
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    assert torch.allclose(ours, reference, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(2, 3, 6, 5, 40), (1, 5, 4, 9, 16), (1, 2, 3, 2, 8)])
def test_compiled_line_sums_equal_dense_products(shape: tuple[int, ...], threads: int) -> None:
    """Against an independent reference: the weights spread over a dense THW x THW matrix per clip, times
    the values (its transpose for the adjoint). Arbitrary weights, so that the columns of each position's
    own place on its T and H lines count too; float64 (8 channels a vector): tiles of 2 and of 1 vector;
    1 and 2 threads."""
    if cpu_kernels() is None:
        pytest.skip("the CPU kernels cannot be built here")
    n, t, h, w, k = shape
    generator = torch.Generator().manual_seed(k)
    weights = torch.randn(n, t, h, w, t + h + w, generator=generator, dtype=torch.float64)
    values = torch.randn(n, t, h, w, k, generator=generator, dtype=torch.float64)
    base = torch.randn(n, t, h, w, k, generator=generator, dtype=torch.float64)
    dense, rows = dense_line_weights(weights), values.reshape(n, t * h * w, k)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        forward = line_aggregate(weights, values, base=base)
        adjoint = line_aggregate(weights, values, transpose=True)
    finally:
        torch.set_num_threads(previous)
    assert torch.allclose(forward, (dense @ rows).view(shape) + base, rtol=1e-12, atol=1e-12)
    assert torch.allclose(adjoint, (dense.transpose(1, 2) @ rows).view(shape), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_compiled_affinities_equal_einsum_and_the_aten_path(
    shape: tuple[int, ...], dtype: torch.dtype, threads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dot products with every position on the three lines, of maps that are the two halves of a wider one
    (a row stride of their own, as q and k are of q|k): tiles of 4 x 4 rows and their remainders (lines of
    1 to 7), whole vectors of channels."""
    if cpu_kernels() is None:
        pytest.skip("the CPU kernels cannot be built here")
    n, t, h, w, k = shape
    generator = torch.Generator().manual_seed(sum(shape) + threads)
    a, b = torch.randn(n, t, h, w, 2 * k, generator=generator, dtype=dtype).chunk(2, dim=-1)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ours = line_affinities(a, b)
    finally:
        torch.set_num_threads(previous)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-4
    assert ours.shape == (n, t, h, w, t + h + w) and ours.dtype == dtype
    assert torch.allclose(ours, einsum_affinities(a, b), rtol=tolerance, atol=tolerance)
    assert torch.allclose(ours, through_aten(monkeypatch, line_affinities, a, b), rtol=tolerance, atol=tolerance)


def test_channels_short_of_a_vector_take_the_aten_path() -> None:
    assert compiled.kernel_takes(torch.zeros(1, 2, 2, 2, 32)) and compiled.kernel_takes(
        torch.zeros(1, 2, 2, 2, 8).double()
    )
    assert not compiled.kernel_takes(torch.zeros(1, 2, 2, 2, 24)) and not compiled.kernel_takes(
        torch.zeros(2, 4).half()
    )


def test_kernels_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KERNELS_VARIABLE, "aten")
    assert cpu_kernels() is None


def test_a_bad_kernel_choice_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KERNELS_VARIABLE, "fast")
    with pytest.raises(ValueError, match=r"RCCA_CPU_KERNELS='fast': choose compiled \(the default\) or aten"):
        cpu_kernels()


def test_a_failed_build_falls_back_to_the_aten_path_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No compiler (or a broken one): the attention still runs, and the log says why once."""
    from torch.utils import cpp_extension

    calls = []

    def failing_build(**kwargs: object) -> None:
        calls.append(kwargs)
        raise RuntimeError(  # what torch's build says when the compiler is missing (abridged)
            "Error building extension 'rcca_cpu_kernels_0': [1/2] c++ -MMD -c line_products.cpp\n"
            "FAILED: [code=127] line_products.o\nc++ -MMD -c line_products.cpp\n/bin/sh: 1: c++: not found\n"
            "ninja: build stopped: subcommand failed."
        )

    monkeypatch.setattr(cpp_extension, "load", failing_build)
    weights = line_attention(torch.randn(1, 2, 3, 4, 4))
    values = torch.randn(1, 2, 3, 4, 16)
    with caplog.at_level(logging.WARNING, logger="rcca"):
        first = line_aggregate(weights, values)
        second = line_aggregate(weights, values)
    assert len(calls) == 1
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "/bin/sh: 1: c++: not found" in warnings[0] and "ATen path" in warnings[0]
    assert torch.equal(first, second)
    assert torch.allclose(first, through_aten(monkeypatch, line_aggregate, weights, values))


def test_a_compiler_error_is_the_reason_given() -> None:
    error = RuntimeError(
        "Error building extension 'x': [1/2] c++ -c line_products.cpp\nFAILED: [code=1] line_products.o\n"
        "line_products.cpp: In function 'int f()':\nline_products.cpp:2:18: error: 'y' was not declared\n"
        "ninja: build stopped: subcommand failed."
    )
    assert compiled.failure_reason(error) == "line_products.cpp:2:18: error: 'y' was not declared"
    assert compiled.failure_reason(RuntimeError("Ninja is required to load C++ extensions")).startswith("Ninja")


def test_the_build_name_follows_the_cpu_and_the_sources(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A build tuned for one CPU is never loaded on another (a cache shared over a cluster's file system),
    and another copy of the sources builds under a name of its own."""
    here = compiled.build_tag()
    edited = tmp_path / "line_products.cpp"
    edited.write_bytes(compiled.SOURCES[0].read_bytes() + b"// edited\n")
    with monkeypatch.context() as patch:
        patch.setattr(compiled, "SOURCES", [edited])
        assert compiled.build_tag() != here
    monkeypatch.setattr(compiled.platform, "machine", lambda: "another-cpu")
    assert compiled.build_tag() != here
