"""Training: schedule, DyConv annealing, resume equals an uninterrupted run, bundling weights."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from robustbench_bivol import training, weights
from robustbench_bivol.checkpoint import load_checkpoint
from robustbench_bivol.cli import main
from robustbench_bivol.errors import CheckpointError, UsageError
from robustbench_bivol.models import create_model
from robustbench_bivol.training import TrainConfig, dyconv_temperature

from _support import write_image_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny dataset with train/ and test/ in ImageFolder layout (built-in images as PNGs)."""
    root = tmp_path_factory.mktemp("train-data")
    write_image_folder(root / "train", 40)
    write_image_folder(root / "test", 20)
    return root


def _train_args(folder, out, *extra: str) -> list[str]:
    return ["train", "--model", "resnet20", "--dataset", str(folder), "--epochs", "2", "--batch-size", "16",
            "--warmup-epochs", "1", "--out", str(out), "--no-progress", *extra]


def _lr_factors(config: TrainConfig, steps_per_epoch: int) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = training._schedule(optimizer, config, steps_per_epoch)
    factors = []
    for _ in range(config.epochs * steps_per_epoch):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return factors


def test_warmup_rises_linearly_then_cosine_decays():
    factors = _lr_factors(TrainConfig(model="resnet20", epochs=4, warmup_epochs=1), steps_per_epoch=10)
    assert factors[0] == pytest.approx(0.1)
    assert all(a < b for a, b in zip(factors[:10], factors[1:10]))  # linear rise over the first epoch
    assert all(a > b for a, b in zip(factors[10:], factors[11:]))  # cosine decay afterwards
    assert max(factors) == pytest.approx(factors[9]) and factors[-1] < 0.01
    plain = _lr_factors(TrainConfig(model="resnet20", epochs=4), steps_per_epoch=10)
    assert plain[0] == 1.0 and plain[10:] == pytest.approx(factors[10:])  # warm-up only changes the start


def test_warmup_with_one_cycle_is_refused():
    with pytest.raises(UsageError, match="one-cycle warms up by itself"):
        _lr_factors(TrainConfig(model="resnet20", schedule="onecycle", warmup_epochs=1), steps_per_epoch=10)


def test_dyconv_temperature_anneals_30_to_1():
    assert dyconv_temperature(0, 10) == 30.0
    assert dyconv_temperature(5, 10) == pytest.approx(15.5)
    assert dyconv_temperature(10, 10) == dyconv_temperature(25, 10) == 1.0
    assert dyconv_temperature(0, 0) == 1.0


def test_train_writes_log_and_loadable_checkpoint(folder, tmp_path):
    result = CliRunner().invoke(main, _train_args(folder, tmp_path / "run"))
    assert result.exit_code == 0, result.output
    log = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert log[0] == "epoch,lr,train_loss,train_acc,test_acc,seconds" and len(log) == 3
    state, meta, _ = load_checkpoint(tmp_path / "run" / "final.pt")
    assert meta.arch == "resnet20" and meta.classes == sorted(meta.classes) and len(meta.classes) == 10
    assert meta.provenance["train_config"]["warmup_epochs"] == 1.0
    assert meta.provenance["epochs"] == 2 and 0 <= meta.provenance["test_accuracy"] <= 1
    create_model("resnet20").load_state_dict(state)


def test_interrupted_training_resumes_to_the_same_weights(folder, tmp_path, monkeypatch):
    whole = CliRunner().invoke(main, _train_args(folder, tmp_path / "whole"))
    assert whole.exit_code == 0, whole.output

    calls = {"n": 0}
    real_accuracy = training.accuracy

    def interrupt_in_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_accuracy(*args, **kwargs)

    monkeypatch.setattr(training, "accuracy", interrupt_in_second_epoch)
    stopped = CliRunner().invoke(main, _train_args(folder, tmp_path / "resumed"))
    assert stopped.exit_code == 130 and "rerun the same command to resume" in stopped.output
    assert not (tmp_path / "resumed" / "final.pt").exists()
    monkeypatch.setattr(training, "accuracy", real_accuracy)
    resumed = CliRunner().invoke(main, _train_args(folder, tmp_path / "resumed"))
    assert resumed.exit_code == 0, resumed.output

    a, _, _ = load_checkpoint(tmp_path / "whole" / "final.pt")
    b, _, _ = load_checkpoint(tmp_path / "resumed" / "final.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_another_configuration_is_refused(folder, tmp_path):
    assert CliRunner().invoke(main, _train_args(folder, tmp_path / "run")).exit_code == 0
    result = CliRunner().invoke(main, _train_args(folder, tmp_path / "run", "--lr", "0.01"))
    assert result.exit_code != 0
    assert result.output.strip().startswith("error:") and "another configuration (differs in: lr)" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_run_moved_to_another_machine_resumes(folder, tmp_path, monkeypatch):
    """Data extracted elsewhere and the run folder moved (a checkpoint committed, then cloned):
    the configuration still matches, nothing is retrained, and the final weights are the same."""
    import shutil

    assert CliRunner().invoke(main, _train_args(folder, tmp_path / "here")).exit_code == 0
    elsewhere = tmp_path / "other-machine" / folder.name
    shutil.copytree(folder, elsewhere)
    shutil.copytree(tmp_path / "here", tmp_path / "moved")
    (tmp_path / "moved" / "final.pt").unlink()
    monkeypatch.setattr(training, "accuracy", lambda *a, **k: pytest.fail("an epoch was retrained"))
    result = CliRunner().invoke(main, [*_train_args(elsewhere, tmp_path / "moved"), "--workers", "1"])
    assert result.exit_code == 0, result.output
    a, _, _ = load_checkpoint(tmp_path / "here" / "final.pt")
    b, _, _ = load_checkpoint(tmp_path / "moved" / "final.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_generator_lr_scale_slows_only_the_input_dependent_kernel_generator():
    model = create_model("involution_resnet20")
    names = {id(p): n for n, p in model.named_parameters()}
    main_group, generator_group = training.parameter_groups(model, 0.05, 0.01)
    assert main_group["lr"] == 0.05 and generator_group["lr"] == pytest.approx(0.0005)
    slowed = {".".join(names[id(p)].split(".")[-2:]) for p in generator_group["params"]}
    assert slowed == {"reduce.weight", "bn.weight", "bn.bias", "span.weight"}  # not span.bias: the static filter
    assert len(generator_group["params"]) == 18 * 4  # every involution of the 9 blocks
    assert len(main_group["params"]) + len(generator_group["params"]) == len(list(model.parameters()))
    # models without involution, or scale 1: one group, as before the option existed
    assert len(training.parameter_groups(create_model("resnet20"), 0.1, 0.01)) == 1
    assert len(training.parameter_groups(model, 0.1, 1.0)) == 1
    with pytest.raises(UsageError, match="must be positive"):
        training.parameter_groups(model, 0.1, 0.0)


def test_generator_lr_scale_reaches_the_optimizer_and_schedules(folder, tmp_path):
    args = _train_args(folder, tmp_path / "run", "--generator-lr-scale", "0.01", "--lr", "0.1")
    args[args.index("resnet20")] = "involution_resnet20"
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    _, _, extra = load_checkpoint(tmp_path / "run" / "last.pt")
    lrs = [group["initial_lr"] for group in extra["optimizer"]["param_groups"]]
    assert lrs == [0.1, pytest.approx(0.001)]
    assert extra["train_config"]["generator_lr_scale"] == 0.01
    for schedule in ("cosine", "onecycle"):  # both schedules keep the ratio at every step
        optimizer = torch.optim.SGD(training.parameter_groups(create_model("involution_resnet20"), 0.1, 0.01), lr=0.1)
        config = TrainConfig(model="involution_resnet20", epochs=2, schedule=schedule)
        scheduler = training._schedule(optimizer, config, steps_per_epoch=5)
        for _ in range(7):
            optimizer.step()
            scheduler.step()
            main_lr, generator_lr = (group["lr"] for group in optimizer.param_groups)
            assert generator_lr == pytest.approx(0.01 * main_lr)


def test_runs_checkpointed_before_generator_lr_scale_existed_still_resume(folder, tmp_path, monkeypatch):
    assert CliRunner().invoke(main, _train_args(folder, tmp_path / "run", "--epochs", "1")).exit_code == 0
    last = tmp_path / "run" / "last.pt"
    state, meta, extra = load_checkpoint(last)
    del extra["train_config"]["generator_lr_scale"]
    training.save_checkpoint(last, state, meta, extra=extra)
    result = CliRunner().invoke(main, _train_args(folder, tmp_path / "run", "--epochs", "1"))
    assert result.exit_code == 0, result.output


def test_holdout_trains_on_the_rest_and_logs_validation_accuracy(folder, tmp_path, monkeypatch):
    seen = {}
    original = training._hold_out

    def spy(images, labels, n):
        parts = original(images, labels, n)
        seen["train"], seen["val"] = parts[1], parts[3]
        return parts

    monkeypatch.setattr(training, "_hold_out", spy)
    result = CliRunner().invoke(main, _train_args(folder, tmp_path / "run", "--holdout", "10", "--epochs", "1"))
    assert result.exit_code == 0, result.output
    assert len(seen["train"]) == 30 and torch.bincount(seen["val"]).tolist() == [1] * 10  # one per class
    log = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert log[0] == "epoch,lr,train_loss,train_acc,val_acc,test_acc,seconds"
    assert 0 <= float(log[1].split(",")[4]) <= 1
    for bad in ("40", "-1"):
        result = CliRunner().invoke(main, _train_args(folder, tmp_path / f"bad{bad}", "--holdout", bad))
        assert result.exit_code == 2 and "--holdout must be between 1 and 39" in result.output


def test_bundled_weights_are_hash_checked_and_loadable(folder, tmp_path, monkeypatch):
    assert CliRunner().invoke(main, _train_args(folder, tmp_path / "run")).exit_code == 0
    monkeypatch.setattr(weights, "PRETRAINED_DIR", tmp_path / "pretrained")
    monkeypatch.setattr(weights, "MANIFEST", tmp_path / "pretrained" / "manifest.json")
    (tmp_path / "pretrained").mkdir()
    target = weights.bundle_checkpoint(tmp_path / "run" / "final.pt", "cifar10")
    entry = json.loads(weights.MANIFEST.read_text())["resnet20"]["cifar10"]
    assert entry["file"] == target.name == "resnet20-cifar10.pt"
    assert entry["sha256"] == weights.sha256_of(target) and entry["command"]

    expected, _, _ = load_checkpoint(tmp_path / "run" / "final.pt")
    state, meta = weights.load_weights("cifar10", "resnet20")
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    assert weights.bundled_tags("resnet20") == ["cifar10"]

    target.write_bytes(target.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(CheckpointError, match="sha256"):
        weights.load_weights("cifar10", "resnet20")
