"""One line describing where a benchmark ran, for the RESULTS files (shared by every benchmark)."""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def describe(device: torch.device | str = "cpu") -> str:
    """CPU model, cores, torch threads, GPU if used, versions and the current load average."""
    device = torch.device(device)
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = "/".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return (f"{cpu}, {os.cpu_count()} logical cores (torch threads {torch.get_num_threads()}){gpu}; "
            f"torch {torch.__version__}; Python {platform.python_version()}; load average {load}")
