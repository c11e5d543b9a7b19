"""report.html: one self-contained page per run folder, and it renders in a real browser."""
from __future__ import annotations

import base64
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from robustbench_bivol.html_report import write_html
from robustbench_bivol.io import atomic_write_json
from robustbench_bivol.reports import write_reports
from test_reports import _run

ODD = 'a<b>&"c\'</b>'  # a model name that is also markup: it must stay text
CELLS = [("clean", 0)] + [(c, s) for c in ("gaussian_noise", "fog") for s in (1, 3)]
BLUE = (0x00, 0x72, 0xB2)  # the first model's colour in every plot


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run & <folder>")
    tidy, ps = _run(["resnet20", ODD], CELLS, n=50)
    write_reports(folder, tidy, per_sample=ps, baseline="resnet20", alexnet_normalisation=False,
                  command=f"bivol-robust evaluate -m '{ODD}'")
    atomic_write_json(folder / "run.json", {"dataset": "builtin:test:seed0:32px", "n_samples": 50})
    return write_html(folder)


def test_page_is_self_contained_and_escaped(report):
    page = report.read_text()
    assert page.count("<table") == 3  # study, corruption errors, CE
    assert ODD not in page and "a&lt;b&gt;&amp;\"c'&lt;/b&gt;" in page
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page)  # nothing fetched
    images = re.findall(r'src="data:image/svg\+xml;base64,([^"]+)"', page)
    plots = sorted((report.parent / "plots").glob("*.svg"))
    assert len(images) == len(plots) == 3
    assert sorted(base64.b64decode(i) for i in images) == sorted(p.read_bytes() for p in plots)
    assert "builtin:test:seed0:32px" in page and '"torch": "' in page and '"python": "' in page


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("chromium not installed (Debian: apt-get install -y --no-install-recommends chromium; "
                    ".ci/run installs it)")
    return found


def _browse(tmp_path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    done = subprocess.run([_chromium(), *flags, *args], capture_output=True, text=True, timeout=180,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_page_renders_in_headless_chromium(report, tmp_path):
    dom = _browse(tmp_path, "--dump-dom", report.as_uri()).stdout
    assert len(re.findall(r"<table", dom)) == 3 and dom.count("<img") == 3
    assert "a&lt;b&gt;&amp;\"c'&lt;/b&gt;" in dom and "<b>&amp;" not in dom  # the name is text, not markup
    assert re.search(r"<td>resnet20</td>", dom)

    shot = tmp_path / "shot.png"
    _browse(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", report.as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    inked = (pixels < 200).any(axis=1).mean()
    assert 0.01 < inked < 0.6, inked  # text and plots on a white page, not blank and not all dark
    blue = (np.abs(pixels - BLUE).sum(axis=1) < 30).sum()
    assert blue > 500, blue  # the embedded SVG plots were drawn, not only the tables
