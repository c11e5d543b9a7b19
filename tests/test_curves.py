"""``bivol-robust curves``: training loss and test accuracy of train folders, one line per run."""
from __future__ import annotations

import numpy as np
import pandas as pd
from click.testing import CliRunner

from robustbench_bivol import curves
from robustbench_bivol.cli import main


def _log(folder, epochs, start):
    folder.mkdir(parents=True)
    epoch = np.arange(1, epochs + 1)
    pd.DataFrame({"epoch": epoch, "lr": 0.1, "train_loss": start / epoch, "train_acc": 0.5,
                  "test_acc": 1 - 0.5 / epoch, "seconds": 1.0}).to_csv(folder / "log.csv", index=False)


def test_curves_plot_every_run_by_folder_name(tmp_path, monkeypatch):
    _log(tmp_path / "resnet20-seed0", 5, 2.0)
    _log(tmp_path / "bivol_resnet20-seed0", 3, 1.5)
    figures = []
    save = curves.save
    monkeypatch.setattr(curves, "save", lambda fig, folder, stem: (figures.append(fig), save(fig, folder, stem)))
    result = CliRunner().invoke(main, ["curves", str(tmp_path / "resnet20-seed0"), str(tmp_path / "bivol_resnet20-seed0"),
                                       "--out", str(tmp_path / "out" / "curves.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "curves.png").stat().st_size and (tmp_path / "out" / "curves.svg").stat().st_size
    loss, accuracy = figures[0].axes
    lines = {line.get_label(): line for line in loss.get_lines()}
    assert list(lines) == ["resnet20-seed0", "bivol_resnet20-seed0"]
    np.testing.assert_allclose(lines["bivol_resnet20-seed0"].get_ydata(), 1.5 / np.arange(1, 4))
    np.testing.assert_allclose(accuracy.get_lines()[0].get_ydata(), 100 * (1 - 0.5 / np.arange(1, 6)))
    assert loss.get_yscale() == "log" and figures[0].legends


def test_a_folder_without_a_log_is_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["curves", str(tmp_path / "empty"), "--out", str(tmp_path / "c.png")])
    assert result.exit_code == 2 and result.output.startswith("error: no training log at"), result.output
