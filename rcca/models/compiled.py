"""The project's own CPU kernels (`csrc/`), compiled on first use with `torch.utils.cpp_extension`.

csrc/line_products.cpp computes CCA-3D's products along the three lines, `line_affinities` (dot products)
and `line_aggregate` (weighted sums), in register tiles written straight into their results, in one and two
parallel regions. The ATen path of `rcca.models.attention` issues a batched matrix product per batch of lines
(1 + N + N T of them per axis set) and joins or sums their maps; on a 2-core CPU it takes 1.2-2x as long.

The build needs a C++ compiler and ninja (a dependency of rcca). It runs once per machine kind (the code
is tuned for the CPU that builds it, so the build's name carries the CPU's identity) into torch's
extension cache, `TORCH_EXTENSIONS_DIR` (by default ~/.cache/torch_extensions), and takes about 20 s;
later processes load it in well under a second, and concurrent ones wait for one build. Where the build is
not possible, or with `RCCA_CPU_KERNELS=aten`, the attention takes its ATen path, with the same results.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger("rcca")

KERNELS_VARIABLE = "RCCA_CPU_KERNELS"  # "compiled" (the default) or "aten"
SOURCES = [Path(__file__).parent / "csrc" / "line_products.cpp"]
VECTOR_BYTES = 64  # the kernels' vector width: they take channel counts that fill whole vectors


def kernel_takes(values: torch.Tensor) -> bool:
    """Whether the kernels take a map of these values: float32 or float64 on the CPU, its channels whole
    vectors (multiples of 16 or 8; fewer are faster through ATen), outside `torch.compile` (which records
    ATen operations)."""
    cpu_float = values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64)
    whole = cpu_float and values.shape[-1] % (VECTOR_BYTES // values.element_size()) == 0
    return whole and not torch.compiler.is_compiling()


def kernels_requested() -> bool:
    """Whether `RCCA_CPU_KERNELS` asks for the compiled kernels (unset or "compiled") or not ("aten")."""
    value = os.environ.get(KERNELS_VARIABLE, "compiled")
    if value not in ("compiled", "aten"):
        raise ValueError(f"{KERNELS_VARIABLE}={value!r}: choose compiled (the default) or aten")
    return value == "compiled"


def compiler_flags() -> list[str]:
    """Optimised for the CPU that builds (x86-64: its vector width, AVX-512 where it has it), with OpenMP
    (`at::parallel_for` then shares torch's threads and honours `torch.set_num_threads`)."""
    return ["-O3", "-fopenmp"] + (["-march=native"] if platform.machine() in ("x86_64", "AMD64") else [])


def build_tag() -> str:
    """A short name for this build: the CPU (a build tuned for one CPU never loads on another, e.g. from a
    cache shared over a cluster's file system), torch's version, the flags and the sources (two copies of
    rcca on one machine do not rebuild each other's)."""
    cpu = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        lines = cpuinfo.read_text(errors="replace").splitlines()
        cpu += next((line for line in lines if line.startswith(("flags", "Features"))), "")
    digest = hashlib.sha256(f"{cpu} {torch.__version__} {compiler_flags()}".encode())
    for source in SOURCES:
        digest.update(source.read_bytes())
    return digest.hexdigest()[:12]


def failure_reason(error: Exception) -> str:
    """The line of a failed build that says why: the compiler's first error or the shell's "not found",
    not the command line or ninja's last word; else the first line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    said = (line for line in lines if "error:" in line.lower() or "not found" in line.lower())
    return next(said, lines[0] if lines else type(error).__name__)


@functools.cache
def cpu_kernels() -> ModuleType | None:
    """The compiled CPU kernels, built on the first call of the process; None where they cannot be built
    (logged once, with the reason) or are not requested (`RCCA_CPU_KERNELS=aten`)."""
    if not kernels_requested():
        return None
    # cpp_extension warns at import that a CUDA build of torch finds no CUDA runtime: nothing here needs one.
    extension_log = logging.getLogger("torch.utils.cpp_extension")
    level = extension_log.level
    extension_log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        extension_log.setLevel(level)
    log.info("Loading rcca's CPU kernels (the first time on a machine, they are compiled: about 20 s)")
    try:
        return cpp_extension.load(
            name=f"rcca_cpu_kernels_{build_tag()}",
            sources=[str(source) for source in SOURCES],
            extra_cflags=compiler_flags(),
            extra_ldflags=["-fopenmp"],
        )
    except (OSError, RuntimeError, ImportError) as error:  # no compiler or ninja, a failed build or load
        log.debug("The build of rcca's CPU kernels failed:\n%s", error)
        reason = failure_reason(error)
        log.warning(
            "rcca's CPU kernels could not be built (%s): CCA-3D uses its ATen path, slower on the CPU. "
            "Set %s=aten to skip the build.",
            reason,
            KERNELS_VARIABLE,
        )
        return None
