"""The run store: atomic pieces, per-sample alignment, refusal of another configuration."""
import numpy as np
import pytest

from robustbench_bivol.errors import BivolError, UsageError
from robustbench_bivol.evaluation.store import CellResult, RunStore


def _result(indices, labels, preds):
    return CellResult(np.array(indices), np.array(labels), {k: np.array(v) for k, v in preds.items()})


def test_tidy_and_per_sample_follow_sample_index(tmp_path):
    store = RunStore.open(tmp_path, {"a": 1})
    cells = [("clean", 0), ("fog", 1)]
    store.write(cells[0], 0, _result([0, 1], [0, 1], {"m": [0, 0]}))
    store.write(cells[0], 1, _result([2, 3], [1, 1], {"m": [1, 1]}))
    store.write(cells[1], 1, _result([2, 3], [1, 1], {"m": [0, 1]}))
    tidy = store.tidy(cells, shards=2, models=["m"])
    assert tidy.to_dict("records") == [
        {"model": "m", "corruption": "clean", "severity": 0, "n": 4, "correct": 3, "error": 0.25}
    ]  # fog is incomplete (shard 0 missing), so it has no row yet
    per_sample = store.per_sample(cells, shards=2)
    assert per_sample[("m", "clean", 0)].tolist() == [True, False, True, True]
    assert not list(tmp_path.rglob("*.tmp"))


def test_reopen_same_config_resumes_and_other_config_is_refused(tmp_path):
    store = RunStore.open(tmp_path, {"models": {"m": "builtin"}, "seed": 0})
    store.write(("clean", 0), 0, _result([0], [0], {"m": [0]}))
    again = RunStore.open(tmp_path, {"models": {"m": "builtin"}, "seed": 0})
    assert again.has(("clean", 0), 0)
    with pytest.raises(UsageError, match="differs in: seed"):
        RunStore.open(tmp_path, {"models": {"m": "builtin"}, "seed": 1})


def test_a_run_resumes_with_its_data_folder_elsewhere(tmp_path):
    config = {"dataset": "folder:/work/cache/cifar10-jpg/test", "n_samples": 10, "seed": 0}
    RunStore.open(tmp_path, config)
    RunStore.open(tmp_path, {**config, "dataset": "folder:/home/me/data/cifar10-jpg/test"})
    for other in ("folder:/work/cache/cifar10-jpg/train", "imagenet-c:/work/cache/cifar10-jpg/test", "builtin"):
        with pytest.raises(UsageError, match="differs in: dataset"):
            RunStore.open(tmp_path, {**config, "dataset": other})
    with pytest.raises(UsageError, match="differs in: n_samples"):
        RunStore.open(tmp_path, {**config, "dataset": "folder:/elsewhere/cifar10-jpg/test", "n_samples": 9})


def test_unwritable_folder_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BivolError, match="cannot write to output folder"):
        RunStore.open(blocker / "run", {})
