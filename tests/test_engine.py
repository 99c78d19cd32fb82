"""The training engine on a trainable that is not an SSL method, and the --minutes budget of ``train``.

The toy: a small regression MLP on synthetic tensors, with a batch source of
its own (a per-epoch order and a noise generator whose state a mid-epoch
checkpoint keeps), an ``after_step`` EMA buffer, extra checkpoint state and a
validation-MSE monitor. The SIGKILL test runs it as this file run as a script
(``python tests/test_engine.py OUT [--resume] [--kill-at N]``), which kills
itself with SIGKILL inside a forward pass.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from contrastkit import engine
from contrastkit.engine_contract import Plan, RunResult, Selection
from contrastkit.errors import CheckpointError
from contrastkit.runtime import Runtime

N, D, BATCH, EPOCHS = 64, 4, 8, 3  # 8 steps per epoch


class Regressor(nn.Module):
    """y ~ MLP(x), with an EMA of its first layer (as a momentum encoder would keep) and a forward counter."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, 1))
        self.register_buffer("ema", torch.zeros(16, D))
        self.calls = 0  # process-local: kills the process at --kill-at
        self.kill_at = 0
        self.updates = 0  # saved through extra_state

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        self.calls += 1
        if self.calls == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        pred = self.net(x).squeeze(1)  # (B,)
        loss = F.mse_loss(pred, y)
        return loss, {"loss": float(loss.detach())}

    def after_step(self, step: int, total_steps: int) -> None:
        self.updates += 1
        with torch.no_grad():
            self.ema.mul_(0.9).add_(0.1 * self.net[0].weight)

    def extra_state(self) -> dict[str, Any]:
        return {"updates": self.updates}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])


class _NoisyEpoch:
    def __init__(self, src: "NoisyRows", order: torch.Tensor, start: int, gen: torch.Generator) -> None:
        self.src, self.order, self.start, self.gen = src, order, start, gen

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        s = self.src
        for step in range(self.start, s.steps_per_epoch):
            idx = self.order[step * BATCH : (step + 1) * BATCH]
            yield s.x[idx] + 0.1 * torch.randn(BATCH, D, generator=self.gen), s.y[idx]  # (B, D), (B,)

    def state(self) -> torch.Tensor:
        return self.gen.get_state()

    def close(self) -> None:
        pass


class NoisyRows:
    """Synthetic rows in a per-epoch order, with input noise from a per-epoch generator: a pure function of (seed, epoch, step)."""

    state_key = "noise_rng"
    items_per_step = BATCH
    steps_per_epoch = N // BATCH

    def __init__(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(N, D, generator=g)
        self.y = self.x @ torch.randn(D, generator=g) + 0.5 * self.x[:, 0].square()
        self.seed = seed

    def epoch(self, epoch: int, start_step: int, state: torch.Tensor | None) -> _NoisyEpoch:
        order = torch.randperm(N, generator=torch.Generator().manual_seed(1000 * self.seed + epoch))
        gen = torch.Generator()
        if state is not None:
            gen.set_state(state)
        else:
            gen.manual_seed(7 * self.seed + epoch + 1)
        return _NoisyEpoch(self, order, start_step, gen)


class ValidationMSE:
    def __init__(self, model: Regressor, source: NoisyRows) -> None:
        self.model, self.source = model, source

    def measure(self) -> dict[str, Any]:
        with torch.no_grad():
            return {"val_mse": float(F.mse_loss(self.model.net(self.source.x).squeeze(1), self.source.y))}

    def summary(self, record: dict[str, Any]) -> str:
        return f"val {record['val_mse']:.4f}"


def train_toy(out: Path, resume: bool = False, kill_at: int = 0, minutes: float | None = None) -> RunResult:
    torch.manual_seed(0)
    model = Regressor()
    model.kill_at = kill_at
    source = NoisyRows()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    plan = Plan(epochs=EPOCHS, lr=lambda step: 1e-2 * (1 - step / (EPOCHS * source.steps_per_epoch)),
                checkpoint_minutes=1e-9, minutes=minutes)  # a checkpoint after every step
    return engine.run(model, source, optimizer, plan, Runtime.create("cpu", "fp32", False), out, resume=resume,
                      progress=False, monitor=ValidationMSE(model, source), selection=Selection("val_mse", "min"))


def _script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True, timeout=120)


def _state(run: Path) -> dict[str, Any]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def test_sigkill_inside_an_epoch_then_resume_gives_the_same_weights(tmp_path):
    ref = _script(str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "killed"
    killed = _script(str(run), "--kill-at", "13")  # forward 13: epoch 2, step 5
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    cut = _state(run)
    assert (cut["epoch"], cut["step_in_epoch"]) == (1, 4) and cut["noise_rng"].numel() > 0
    assert cut["trainable_state"] == {"updates": 12}
    resumed = _script(str(run), "--resume")
    assert resumed.returncode == 0, resumed.stderr

    want, got = _state(tmp_path / "ref"), _state(run)
    assert want["model"].keys() == got["model"].keys() == {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias", "ema"}
    for k in want["model"]:
        assert torch.equal(want["model"][k], got["model"][k]), k
    assert got["trainable_state"] == {"updates": EPOCHS * NoisyRows.steps_per_epoch}
    ref_log = [json.loads(line) for line in (tmp_path / "ref" / "log.jsonl").read_text().splitlines()]
    run_log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["loss"], r["val_mse"]) for r in ref_log] == [(r["epoch"], r["loss"], r["val_mse"]) for r in run_log]
    assert len(ref_log) == EPOCHS and ref_log[-1]["val_mse"] < ref_log[0]["val_mse"]
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["val_mse"] == min(r["val_mse"] for r in run_log)


def _fake_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each reading of the engine's clock is one second later than the last."""
    ticks = itertools.count()
    monkeypatch.setattr(engine, "clock", lambda: float(next(ticks)))


def test_budget_stops_the_toy_inside_an_epoch_and_a_larger_budget_finishes_it(tmp_path, monkeypatch):
    reference = train_toy(tmp_path / "ref")
    assert not reference.stopped_on_time and len(reference.history) == EPOCHS
    _fake_clock(monkeypatch)
    cut = train_toy(tmp_path / "run", minutes=0.1)  # 6 fake seconds
    state = _state(tmp_path / "run")
    assert cut.stopped_on_time and state["stopped_on_time"] and 6 <= state["elapsed_s"] < 6 + 5
    assert state["epoch"] == 0 and 0 < state["step_in_epoch"] < NoisyRows.steps_per_epoch
    assert cut.history[-1]["stopped_on_time"] and cut.history[-1]["steps"] == state["step_in_epoch"]
    monkeypatch.undo()
    done = train_toy(tmp_path / "run", resume=True, minutes=60)
    assert not done.stopped_on_time and [h["loss"] for h in done.history] == [h["loss"] for h in reference.history]
    want, got = _state(tmp_path / "ref")["model"], _state(tmp_path / "run")["model"]
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_plan_checks_its_numbers():
    with pytest.raises(Exception, match="--minutes must be > 0"):
        Plan(epochs=1, lr=lambda s: 0.1, minutes=0)
    with pytest.raises(Exception, match="--epochs must be > 0"):
        Plan(epochs=0, lr=lambda s: 0.1)


class SometimesNothingToLearn(Regressor):
    """The toy, except that on odd forwards the loss is a constant without gradient (nothing in the batch to learn)."""

    forwards = 0

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        self.forwards += 1
        if self.forwards % 2:
            return torch.zeros(()), {"loss": 0.0}
        return super().forward(x, y)


def test_a_loss_without_gradient_takes_no_step_and_a_run_without_folder_writes_and_prints_nothing(
        tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = SometimesNothingToLearn()
    weights = [p.detach().clone() for p in model.parameters()]
    steps: list[tuple[int, list[torch.Tensor]]] = []
    model.after_step = lambda step, total: steps.append((step, [p.detach().clone() for p in model.parameters()]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5)  # decay alone would move them
    plan = Plan(epochs=2, lr=lambda step: 1e-2, checkpoint_minutes=1e-9)
    capsys.readouterr()
    result = engine.run(model, NoisyRows(), optimizer, plan, Runtime.create("cpu", "fp32", False), None,
                        progress=False, report=False, monitor=ValidationMSE(model, NoisyRows()))
    assert capsys.readouterr().err == "" and list(tmp_path.iterdir()) == []
    assert [s for s, _ in steps] == list(range(1, 2 * NoisyRows.steps_per_epoch + 1))  # every step counts
    for (step, after), (_, before) in zip(steps, [(0, weights)] + steps):
        moved = any(not torch.equal(a, b) for a, b in zip(after, before))
        assert moved == (step % 2 == 0), step  # odd forwards had no gradient: no step, not even weight decay
    assert len(result.history) == 2 and "val_mse" in result.history[0]
    with pytest.raises(CheckpointError, match="nothing to resume"):
        engine.run(model, NoisyRows(), optimizer, plan, Runtime.create("cpu", "fp32", False), None, resume=True)


@pytest.fixture(scope="module")
def tiny_images(fmnist_small, tmp_path_factory) -> Path:
    """192 training images of real Fashion-MNIST: 6 steps of 32 per epoch."""
    _, data = fmnist_small
    path = tmp_path_factory.mktemp("budget") / "tiny.npz"
    np.savez(path, images=data.train.images[::3][:192].numpy(), labels=data.train.labels[::3][:192].numpy(),
             test_images=data.test.images[:20].numpy(), test_labels=data.test.labels[:20].numpy())
    return path


def test_train_minutes_stops_on_time_with_a_checkpoint_and_resumes(tiny_images, tmp_path, monkeypatch, capsys):
    """`contrastkit train --minutes`: a 3-second budget (fake clock) stops inside epoch 1 with a resumable
    checkpoint; resumed with the same budget it does nothing, with a larger one it ends with the weights
    of an uninterrupted run."""
    from contrastkit.cli import main

    args = ["train", "--data", str(tiny_images), "--quiet", "--epochs", "2", "--batch-size", "32",
            "--monitor-bank", "100", "--monitor-queries", "20", "--knn-k", "5"]
    assert main([*args, "--out", str(tmp_path / "ref")]) == 0
    run = tmp_path / "run"
    _fake_clock(monkeypatch)
    capsys.readouterr()
    assert main([*args, "--out", str(run), "--minutes", "0.05"]) == 0
    out, err = capsys.readouterr()
    assert "stopped on time (--minutes 0.05)" in out and "time budget: stopped after" in err
    state = _state(run)
    assert state["stopped_on_time"] and 3 <= state["elapsed_s"] < 3 + 4
    assert state["epoch"] == 0 and 0 < state["step_in_epoch"] < 6
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["stopped_on_time"] and log[0]["steps"] == state["step_in_epoch"]
    assert log[0]["knn_top1"] is not None

    assert main([*args, "--out", str(run), "--resume", "--minutes", "0.05"]) == 0  # the budget is spent: no step
    assert all(torch.equal(v, _state(run)["model"][k]) for k, v in state["model"].items())
    monkeypatch.undo()
    assert main([*args, "--out", str(run), "--resume", "--minutes", "30"]) == 0
    want, got = _state(tmp_path / "ref"), _state(run)
    assert not got["stopped_on_time"] and got["epoch"] == 2
    assert all(torch.equal(want["model"][k], got["model"][k]) for k in want["model"])
    ref_log = [json.loads(line) for line in (tmp_path / "ref" / "log.jsonl").read_text().splitlines()]
    run_log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [h["loss"] for h in run_log] == [h["loss"] for h in ref_log]

    assert main([*args, "--out", str(tmp_path / "bad"), "--minutes", "0"]) == 2
    assert "--minutes must be > 0" in capsys.readouterr().err


if __name__ == "__main__":
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-at", type=int, default=0)
    a = parser.parse_args()
    train_toy(a.out, resume=a.resume, kill_at=a.kill_at)
