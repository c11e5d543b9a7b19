"""``report.html``: a run folder in one self-contained page, for readers without a CSV viewer.

The page is rendered from the folder's own files (the tables' CSVs, ``plots/*.svg``, ``run.json``
or ``runs.json``, ``summary.json``), so it shows exactly what the folder holds, for an evaluate
run and a comparison alike. Plots are embedded as SVG data URIs (each keeps its own element ids)
and nothing is fetched: the file can be mailed or archived alone. Every text from the run
(model names, paths, the command) is HTML-escaped.
"""
from __future__ import annotations

import base64
import html
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from .io import atomic_write_text

REPORT = "report.html"

#: The tables shown, in reading order: file stem and heading.
TABLES = (
    ("study", "Study table (95% intervals in brackets)"),
    ("seeds", "Across training seeds"),
    ("corruption_errors", "Top-1 error (%) per corruption, mean over severities"),
    ("ce", "Corruption error (CE, %) and mCE"),
)
#: Plot order; any other SVG in plots/ follows.
PLOTS = ("group_summary", "ce_by_corruption", "error_vs_severity")
PACKAGES = ("robustbench_bivol", "torch", "torchvision", "numpy", "pandas", "scipy", "matplotlib", "pillow",
            "imagecorruptions-imaug", "timm")
STYLE = """
body { font-family: "DejaVu Sans", Verdana, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
tbody tr:nth-child(even) { background: #fafafa; }
figure { margin: 1em 0; } figure img { max-width: 100%; } figcaption { font-size: 0.85em; color: #555; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
code { font-size: 0.9em; }
"""


def versions() -> dict[str, str]:
    """Python, the platform, and the installed version of each package the numbers depend on."""
    found = {"python": platform.python_version(), "platform": platform.platform()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _text(value: str) -> str:
    """``value`` as HTML text (quotes need no escaping outside attributes)."""
    return html.escape(value, quote=False)


def _table(path: Path) -> str:
    frame = pd.read_csv(path)
    cells = frame.map(lambda v: "" if pd.isna(v) else f"{v:.2f}" if isinstance(v, float) else str(v))
    return cells.to_html(index=False, escape=True, border=0)


def _figure(svg: Path) -> str:
    data = base64.b64encode(svg.read_bytes()).decode("ascii")
    name = _text(svg.stem)
    return (f'<figure><img alt="{html.escape(svg.stem)}" src="data:image/svg+xml;base64,{data}">'
            f"<figcaption>{name} (plots/{name}.svg)</figcaption></figure>")


def _json_block(value: Any) -> str:
    return f"<pre>{_text(json.dumps(value, indent=2, sort_keys=True))}</pre>"


def render(folder: Path) -> str:
    """The page for ``folder`` as a string."""
    summary = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").is_file() else {}
    parts = [f"<h1>Corruption robustness: {_text(folder.resolve().name)}</h1>"]
    if summary.get("command"):
        parts.append(f"<p>Command: <code>{_text(summary['command'])}</code></p>")
    if summary.get("baseline"):
        parts.append(f"<p>Baseline (CE normalisation, differences): <b>{_text(summary['baseline'])}</b>. "
                     f"{_text(summary.get('units', ''))}.</p>")
    for note in summary.get("notes", []):
        parts.append(f"<p><i>Note: {_text(note)}</i></p>")
    for stem, heading in TABLES:
        if (folder / f"{stem}.csv").is_file():
            parts.append(f"<h2>{_text(heading)}</h2>{_table(folder / f'{stem}.csv')}")
    svgs = sorted((folder / "plots").glob("*.svg"), key=lambda p: (PLOTS.index(p.stem) if p.stem in PLOTS
                                                                   else len(PLOTS), p.name))
    if svgs:
        parts.append("<h2>Plots</h2>" + "".join(_figure(svg) for svg in svgs))
    if summary.get("ci_method"):
        parts.append(f"<h2>Method</h2><p>{_text(summary['ci_method'])}</p>")
        if summary.get("clustered_method"):
            parts.append(f"<p>{_text(summary['clustered_method'])}</p>")
    for name, heading in (("run.json", "Configuration (run.json)"), ("runs.json", "Compared runs (runs.json)")):
        if (folder / name).is_file():
            parts.append(f"<h2>{heading}</h2>{_json_block(json.loads((folder / name).read_text()))}")
    parts.append(f"<h2>Package versions (when this page was written)</h2>{_json_block(versions())}")
    title = _text(f"robustbench_bivol report: {folder.resolve().name}")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def write_html(folder: str | Path) -> Path:
    """Write ``folder/report.html`` from the folder's reports; returns its path."""
    folder = Path(folder)
    target = folder / REPORT
    atomic_write_text(target, render(folder))
    return target
