"""robustbench_bivol: how robust are dynamic convolution operators to common image corruptions?

``robustbench_bivol.evaluate(...)`` is the Python API (:mod:`.api`), ``fourier_heatmap(...)`` its
frequency analysis (:mod:`.fourier`); they are imported on first use, so that
``bivol-robust --help`` does not pay for torch.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Results", "evaluate", "fourier_heatmap", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("evaluate", "Results"):
        from . import api

        return getattr(api, name)
    if name == "fourier_heatmap":
        from .fourier import fourier_heatmap

        return fourier_heatmap
    raise AttributeError(f"module 'robustbench_bivol' has no attribute '{name}'")
