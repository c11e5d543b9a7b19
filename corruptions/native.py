"""What a C/C++ kernel compiled at first use is keyed by, and where its binary is cached.

Why: the package ships sources, not binaries (``pip install`` stays pure Python), and a cache
folder shared between machines (a network home) must never load a binary built for another CPU
(``-march=native``) or another compiler. Used by :mod:`corruptions.philox` and by the fused
involution kernel of ``robustbench_bivol``.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
from pathlib import Path


def cpu_signature() -> str:
    """CPU model and feature flags (Linux /proc/cpuinfo; the platform string elsewhere)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() + platform.machine()
    keep = [line for line in info.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(keep)))


def compiler(variable: str = "CXX", default: str = "c++") -> str:
    """The compiler named by ``$variable`` (or ``default``); raises if it is not on PATH."""
    command = os.environ.get(variable, default)
    if shutil.which(command) is None:
        raise RuntimeError(f"no compiler ({command}) on PATH")
    return command


def compiler_version(command: str) -> str:
    return subprocess.run([command, "--version"], capture_output=True, text=True, check=False).stdout


def build_name(prefix: str, *parts: str) -> str:
    """``prefix_<hash>``: the hash of the source, flags, compiler and CPU (``parts``) plus this
    machine's CPU signature, so a changed input never reuses an old binary."""
    digest = hashlib.sha256("\0".join([*parts, cpu_signature()]).encode()).hexdigest()[:16]
    return f"{prefix}_{digest}"


def cache_dir() -> Path:
    """``$BIVOL_EXT_DIR``, else ``$TORCH_EXTENSIONS_DIR/robustbench_bivol``, else
    ``~/.cache/robustbench_bivol/ext``."""
    if "BIVOL_EXT_DIR" in os.environ:
        return Path(os.environ["BIVOL_EXT_DIR"])
    if "TORCH_EXTENSIONS_DIR" in os.environ:
        return Path(os.environ["TORCH_EXTENSIONS_DIR"]) / "robustbench_bivol"
    return Path.home() / ".cache" / "robustbench_bivol" / "ext"
