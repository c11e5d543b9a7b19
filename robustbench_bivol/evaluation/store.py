"""The on-disk results of one run: its configuration and one file per (cell, shard).

A cell is one (corruption, severity) pair, or ('clean', 0). Each (cell, shard) file holds the
sample indices, labels and every model's top-1 predictions, written atomically, so a killed run
loses at most the piece in flight and a rerun skips every finished piece.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import BivolError, UsageError
from ..io import atomic_save_npz, atomic_write_json

CLEAN = "clean"
Cell = tuple[str, int]
CONFIG_FILE = "run.json"


@dataclass
class CellResult:
    indices: np.ndarray
    labels: np.ndarray
    predictions: dict[str, np.ndarray]


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """The configuration as it must match to resume: a dataset read from a folder is named by its
    kind and the last two parts of its path (``folder:cifar10-jpg/test``), so a run folder resumes
    with the data extracted elsewhere; the sample count and the digest of the sample indices still
    have to match."""
    def located(name: Any) -> Any:
        kind, sep, rest = name.partition(":") if isinstance(name, str) else ("", "", "")
        if not (sep and rest.startswith("/")):
            return name
        return f"{kind}:{'/'.join(Path(rest).parts[-2:])}"

    return {k: located(v) if k in ("dataset", "clean_dataset") else v for k, v in config.items()}


class RunStore:
    """A run folder: ``run.json`` (configuration) and ``cells/<corruption>_s<severity>/shard-*.npz``."""

    def __init__(self, root: str | Path, config: dict[str, Any]) -> None:
        self.root = Path(root)
        self.config = config

    @classmethod
    def open(cls, root: str | Path, config: dict[str, Any]) -> "RunStore":
        """Create the folder, or reopen it if it holds the same configuration; refuse otherwise."""
        root = Path(root)
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe = root / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise BivolError(f"cannot write to output folder {root}: {exc.strerror or exc}") from None
        path = root / CONFIG_FILE
        if path.exists():
            stored = json.loads(path.read_text())
            if _comparable(stored) != _comparable(config):
                differing = sorted(k for k in set(stored) | set(config)
                                   if _comparable(stored).get(k) != _comparable(config).get(k))
                raise UsageError(
                    f"{root} holds a run with another configuration (differs in: {', '.join(differing)}); "
                    "rerun with the same options to resume, or choose another --out folder."
                )
        else:
            atomic_write_json(path, config)
        for stray in root.glob("cells/*/.*.tmp"):  # left by a killed writer; never read as results
            stray.unlink(missing_ok=True)
        return cls(root, config)

    def _path(self, cell: Cell, shard: int) -> Path:
        corruption, severity = cell
        return self.root / "cells" / f"{corruption}_s{severity}" / f"shard-{shard:05d}.npz"

    def has(self, cell: Cell, shard: int) -> bool:
        return self._path(cell, shard).is_file()

    def write(self, cell: Cell, shard: int, result: CellResult) -> None:
        arrays = {"indices": result.indices, "labels": result.labels}
        arrays.update({f"pred::{name}": pred for name, pred in result.predictions.items()})
        atomic_save_npz(self._path(cell, shard), **arrays)

    def read(self, cell: Cell, shard: int) -> CellResult:
        with np.load(self._path(cell, shard)) as data:
            predictions = {key.split("::", 1)[1]: data[key] for key in data.files if key.startswith("pred::")}
            return CellResult(data["indices"], data["labels"], predictions)

    def per_sample(self, cells: list[Cell], shards: int) -> dict[tuple[str, str, int], np.ndarray]:
        """Per-sample correctness {(model, corruption, severity): bool array ordered by sample index}."""
        out: dict[tuple[str, str, int], np.ndarray] = {}
        for cell in cells:
            parts = [self.read(cell, shard) for shard in range(shards) if self.has(cell, shard)]
            if not parts:
                continue
            indices = np.concatenate([p.indices for p in parts])
            order = np.argsort(indices, kind="stable")
            labels = np.concatenate([p.labels for p in parts])[order]
            for model in parts[0].predictions:
                pred = np.concatenate([p.predictions[model] for p in parts])[order]
                out[(model, *cell)] = pred == labels
        return out

    def tidy(self, cells: list[Cell], shards: int, models: list[str]) -> pd.DataFrame:
        """One row per (model, corruption, severity) with n, correct, error; complete cells only."""
        correct = self.per_sample(cells, shards)
        complete = {cell for cell in cells if all(self.has(cell, s) for s in range(shards))}
        rows = [
            {"model": model, "corruption": cell[0], "severity": cell[1],
             "n": int(len(correct[(model, *cell)])), "correct": int(correct[(model, *cell)].sum())}
            for model in models for cell in cells if cell in complete
        ]
        table = pd.DataFrame(rows, columns=["model", "corruption", "severity", "n", "correct"])
        table["error"] = 1.0 - table["correct"] / table["n"]
        return table


class MemoryStore(RunStore):
    """A run kept in memory (the Python API with ``out=None``): nothing is written, nothing resumes."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(Path(), config)
        self._pieces: dict[tuple[Cell, int], CellResult] = {}

    def has(self, cell: Cell, shard: int) -> bool:
        return (cell, shard) in self._pieces

    def write(self, cell: Cell, shard: int, result: CellResult) -> None:
        self._pieces[(cell, shard)] = result

    def read(self, cell: Cell, shard: int) -> CellResult:
        return self._pieces[(cell, shard)]
