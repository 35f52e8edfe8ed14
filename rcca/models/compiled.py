"""The project's own CPU kernels (`csrc/`), compiled on first use with `torch.utils.cpp_extension`.

`line_aggregate` (csrc/line_aggregate.cpp) computes CCA-3D's weighted sums along the three lines in
two parallel regions, with no scratch map: the attention's fallback (`rcca.models.attention.line_aggregate`)
issues about a dozen batched matrix products and sums their maps, and takes 1.2-2x as long.

The build needs a C++ compiler and ninja (a dependency of rcca). It runs once per machine kind (the code
is tuned for the CPU that builds it, so the build's name carries the CPU's identity) into torch's
extension cache, `TORCH_EXTENSIONS_DIR` (by default ~/.cache/torch_extensions), and takes about 20 s;
later processes load it in about a second, and concurrent ones wait for one build. Where the build is not
possible, or with `RCCA_CPU_KERNELS=aten`, the attention takes its ATen path, with the same results.
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
SOURCES = [Path(__file__).parent / "csrc" / "line_aggregate.cpp"]


def kernels_requested() -> bool:
    """Whether `RCCA_CPU_KERNELS` asks for the compiled kernels (unset or "compiled") or not ("aten")."""
    value = os.environ.get(KERNELS_VARIABLE, "compiled")
    if value not in ("compiled", "aten"):
        raise ValueError(f"{KERNELS_VARIABLE}={value!r}: choose compiled (the default) or aten")
    return value == "compiled"


def machine_tag() -> str:
    """A short name for this CPU and torch build: a build tuned for one CPU (-march=native) never loads on another."""
    cpu = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        lines = cpuinfo.read_text(errors="replace").splitlines()
        cpu += next((line for line in lines if line.startswith(("flags", "Features"))), "")
    return hashlib.sha256(f"{cpu} {torch.__version__}".encode()).hexdigest()[:12]


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
    flags = ["-O3", "-fopenmp"] + (["-march=native"] if platform.machine() in ("x86_64", "AMD64") else [])
    log.info("Loading rcca's CPU kernels (the first time on a machine, they are compiled: about 20 s)")
    try:
        return cpp_extension.load(
            name=f"rcca_cpu_kernels_{machine_tag()}",
            sources=[str(source) for source in SOURCES],
            extra_cflags=flags,
            extra_ldflags=["-fopenmp"],
        )
    except (OSError, RuntimeError, ImportError) as error:  # no compiler or ninja, a failed build or load
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        log.warning(
            "rcca's CPU kernels could not be built (%s): CCA-3D uses its ATen path, slower on the CPU. "
            "Set %s=aten to skip the build.",
            reason,
            KERNELS_VARIABLE,
        )
        return None
