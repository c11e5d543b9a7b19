"""Compare the per-sample predictions of two result folders: REPRODUCE.md's check.

A folder is a run folder or a folder holding run folders (the study keeps one per model under
``runs/``); every ``cells/<corruption>_s<severity>/shard-*.npz`` below it is read. Each
prediction both folders hold, keyed by (cell, model, sample index), is compared. Prints how many
were compared and how many differ; exits 1 if any differ or none are shared.

    python results/cifar10/check_predictions.py FRESH_RUN results/cifar10
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def predictions(folder: Path) -> dict[tuple[str, str, int], int]:
    found: dict[tuple[str, str, int], int] = {}
    for shard in sorted(folder.rglob("cells/*/shard-*.npz")):
        cell = shard.parent.name
        with np.load(shard) as data:
            for key in data.files:
                if key.startswith("pred::"):
                    model = key.split("::", 1)[1]
                    found.update(((cell, model, int(i)), int(p)) for i, p in zip(data["indices"], data[key]))
    return found


def main(fresh: str, reference: str) -> int:
    a, b = predictions(Path(fresh)), predictions(Path(reference))
    shared = a.keys() & b.keys()
    differ = sum(a[k] != b[k] for k in shared)
    models = sorted({k[1] for k in shared})
    cells = {k[0] for k in shared}
    print(f"{len(shared)} predictions compared ({len(cells)} cells x {len(models)} models: {', '.join(models)}), "
          f"{differ} differ")
    return 1 if differ or not shared else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
