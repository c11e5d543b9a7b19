"""What an evaluation returns: its tables as pandas DataFrames, and the run folder's reports on request."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from .. import reports
from ..html_report import write_html
from ..io import atomic_write_json
from .run import add_extras


@dataclass(repr=False)
class Results:
    """The figures of one evaluation, computed from per-image predictions when first asked for.

    ``cells`` is the tidy table (one row per model x corruption x severity: n, correct, error
    with its Wilson interval, in %); ``corruption_errors``, ``ce`` and ``study`` are the tables of
    the run folder, ``summary`` its ``summary.json``. ``write_reports(folder)`` writes all of them
    with the plots. ``print(results)`` shows the terminal summary.
    """

    counts: pd.DataFrame  # model, corruption, severity, n, correct, error (a fraction)
    per_sample: dict[tuple[str, str, int], Any]  # (model, corruption, severity) -> correct per image
    baseline: str | None
    alexnet_normalisation: bool
    command: str
    skipped: list[str] = field(default_factory=list)  # images left out as unreadable
    clean_absent: bool = False
    run_dir: Path | None = None  # where the run is stored; None when it was kept in memory

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(self.counts["model"]))

    @cached_property
    def cells(self) -> pd.DataFrame:
        return reports.results_table(self.counts)

    @cached_property
    def corruption_errors(self) -> pd.DataFrame:
        """Rows: clean, corruptions, group means, mean; columns: models; top-1 error in %."""
        return reports.corruption_error_table(self.counts, self.models)

    @cached_property
    def ce(self) -> pd.DataFrame:
        """CE per corruption and mCE, per normalisation that applies (rows: measure, corruption)."""
        return reports.ce_table(self.counts, self.models, self.baseline, self.alexnet_normalisation)

    @cached_property
    def summary(self) -> dict[str, Any]:
        summary = reports.build_summary(self.counts, self.per_sample, self.baseline, self.alexnet_normalisation,
                                        self.command)
        return add_extras(summary, skipped=self.skipped, clean_absent=self.clean_absent)

    @cached_property
    def study(self) -> pd.DataFrame:
        """One row per model: params, GFLOPs, clean accuracy, mean corruption error, mCE, noise error
        (with 95% intervals), and differences from the baseline clustered by image (bootstrap
        interval, sign-flip p-value)."""
        return reports.study_table(self.summary)

    def write_reports(self, folder: str | Path) -> Path:
        """Write results.csv, corruption_errors, ce, study (CSV and Markdown), summary.json, plots/ and
        report.html (all of them in one page)."""
        folder = Path(folder)
        summary = reports.write_reports(folder, self.counts, per_sample=self.per_sample, baseline=self.baseline,
                                        alexnet_normalisation=self.alexnet_normalisation, command=self.command)
        if "summary" not in self.__dict__:  # the same figures: keep them rather than compute them twice
            self.__dict__["summary"] = add_extras(summary, skipped=self.skipped, clean_absent=self.clean_absent)
        atomic_write_json(folder / "summary.json", self.summary)
        write_html(folder)
        return folder

    def __str__(self) -> str:
        return reports.format_summary(self.summary)

    def __repr__(self) -> str:
        where = f", run_dir={str(self.run_dir)!r}" if self.run_dir else ""
        return f"Results(models={self.models}, cells={len(self.counts) // max(len(self.models), 1)}{where})"
