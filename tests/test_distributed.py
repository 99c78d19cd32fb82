"""Distributed data parallel: 2 processes with gloo on 127.0.0.1 against one process with the global batch.

The workers are this file run as a script (``python tests/test_distributed.py
OUT DATA``) with the environment torchrun gives its workers (RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so they join the process
group through ``contrastkit.distributed.init`` as under torchrun. They are
started once for the whole module (one step of every method, then the
``fit`` runs) and leave their results in files that the tests read; one more
test runs the real ``torchrun -m contrastkit train``. Everything runs on one
thread per process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from contrastkit import distributed
from contrastkit.checkpoint import load_checkpoint, load_method
from contrastkit.config import METHOD_NAMES, TrainConfig
from contrastkit.errors import ConfigError
from contrastkit.methods import build_method
from contrastkit.methods.base import Method
from contrastkit.runlock import run_lock
from contrastkit.runtime import torch_threads
from contrastkit.train import _no_buffer_sync, augment_seed

WORLD = 2
LOCAL_B = 4  # images per rank in the one-step equivalence test; the single process gets WORLD * LOCAL_B
SMALL = dict(proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=8, queue_size=24, dino_out_dim=64, local_views=2)
GATHERED = ("simclr", "pairwise", "supcon", "barlowtwins", "vicreg", "nnclr")  # the loss of the global batch on every rank
FIT = dict(method="moco", epochs=2, batch_size=32, device="cpu", precision="fp32", monitor_bank=64, monitor_queries=32,
           knn_k=5, warmup_epochs=0.5, checkpoint_minutes=1e-6, proj_hidden_dim=32, proj_dim=16, queue_size=48)
NAN_AT_CALL = 7  # 128 images / 32 = 4 steps per epoch: epoch 2, step 3


# --------------------------------------------------------------------------
# Shared by the workers and the single-process reference
# --------------------------------------------------------------------------


def _tiny_method(name: str) -> Method:
    """A method whose BatchNorm layers use fixed statistics, so that every image is processed on its own.

    Per-process BatchNorm statistics differ from the single-process ones by
    design (SyncBatchNorm, CUDA only, is the remedy); with them fixed, the
    gather is the only coupling across the batch, which is what is tested.
    """
    method = build_method(TrainConfig(method=name, **SMALL), in_channels=1, num_classes=3)
    for m in method.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return method


def _global_inputs(method: Method) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Fixed views of WORLD * LOCAL_B images (global views 16 px, then local ones 8 px) and their labels."""
    g = torch.Generator().manual_seed(0)
    n = WORLD * LOCAL_B
    views = [torch.randn(n, 1, 16, 16, generator=g) for _ in range(method.num_views)]
    views += [torch.randn(n, 1, 8, 8, generator=g) for _ in range(method.num_local_views)]
    return views, torch.tensor([0, 1, 2, 0, 1, 1, 2, 0])


def _shared_buffers(method: Method) -> dict[str, torch.Tensor]:
    """Buffers that must be identical on every rank: queues and DINO's centre."""
    return {k: v.clone() for k, v in method.named_buffers() if k.startswith(("queue.", "support.", "loss.center"))}


def _one_step(method: nn.Module, views: list[torch.Tensor], labels: torch.Tensor) -> dict[str, Any]:
    inner = method.module if isinstance(method, nn.parallel.DistributedDataParallel) else method
    loss, _ = method(views, labels)
    loss.backward()
    return {
        "loss": float(loss.detach()),
        "mean_loss": float(distributed.all_reduce_mean(loss.detach())),
        "grads": {k: p.grad.clone() for k, p in inner.named_parameters() if p.requires_grad},
        "buffers": _shared_buffers(inner),
    }


# --------------------------------------------------------------------------
# Workers (run as `python tests/test_distributed.py OUT DATA`)
# --------------------------------------------------------------------------


def _worker_gather(rank: int) -> dict[str, torch.Tensor]:
    """gather_with_grad and gather_batch with different upstream gradients on each rank."""
    x = (torch.arange(6.0).reshape(3, 2) + 10 * rank).requires_grad_()
    y = distributed.gather_with_grad(x)  # (6, 2)
    weight = (rank + 1) * torch.arange(12.0).reshape(6, 2)  # differs per rank
    (weight * y).sum().backward()
    z = torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(rank)).bfloat16().requires_grad_()
    p = torch.randn(3, 5, generator=torch.Generator().manual_seed(10 + rank)).requires_grad_()
    zg, pg = distributed.gather_batch(z, p)
    (zg.sum() + 2 * pg.sum()).backward()
    return {"y": y.detach(), "x_grad": x.grad, "zg": zg.detach(), "pg": pg.detach(), "z_grad": z.grad, "p_grad": p.grad,
            "labels": distributed.all_gather_tensor(torch.tensor([rank, rank + 5]))}


def _worker_steps(out: Path) -> None:
    """One step of every method on this rank's LOCAL_B images, wrapped in DDP as ``fit`` does."""
    rank = distributed.rank()
    results: dict[str, Any] = {"gather": _worker_gather(rank)}
    for name in METHOD_NAMES:
        method = _tiny_method(name)
        ddp = nn.parallel.DistributedDataParallel(method, **_no_buffer_sync())  # as train.fit wraps it
        views, labels = _global_inputs(method)
        mine = [distributed.shard(v, rank, WORLD) for v in views]
        results[name] = _one_step(ddp, mine, distributed.shard(labels, rank, WORLD))
    torch.save(results, out / f"steps-rank{rank}.pt")


def _worker_fit(out: Path, data_path: str) -> None:
    """``fit`` inside the process group: sync-bn refused, a full run, a run stopped by a NaN, its resume."""
    from contrastkit.data import load_dataset
    from contrastkit.errors import TrainingError
    from contrastkit.runlock import RunLockedError
    from contrastkit.train import fit

    rank = distributed.rank()
    data = load_dataset(data_path)
    config = TrainConfig(**FIT)
    report: dict[str, Any] = {}

    sync = dataclasses.replace(config, sync_bn=True)
    try:
        fit(build_method(sync, 1), data, sync, out / "sync", progress=False)
    except ConfigError as e:
        report["sync_bn_error"] = str(e)

    # Another process (the test) holds the lock of "held": rank 0 is refused, and rank 1 stops with it, not hanging.
    try:
        fit(build_method(config, 1), data, config, out / "held", progress=False)
    except RunLockedError as e:
        report["locked_error"] = str(e)

    # Uninterrupted. Rank 1 is handed another folder: it must write nothing there.
    ref = fit(build_method(config, 1), data, config, out / ("ref" if rank == 0 else "ref-rank1"), progress=False)
    report["ref_history"] = ref.history

    # The loss becomes NaN on rank 1 only: every rank stops at the same step, rank 0's last checkpoint is intact.
    method = build_method(config, 1)
    forward, calls = method.forward, {"n": 0}

    def poisoned(views: list[torch.Tensor], labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        calls["n"] += 1
        loss, logs = forward(views, labels)
        return (loss * float("nan"), logs) if calls["n"] == NAN_AT_CALL and rank == 1 else (loss, logs)

    method.forward = poisoned  # type: ignore[method-assign]
    try:
        fit(method, data, config, out / "cut", progress=False)
    except TrainingError as e:
        report["nan_error"] = str(e)
    distributed.barrier()
    stopped = load_checkpoint(out / "cut" / "checkpoints" / "last.pt")
    report["stopped_at"] = [stopped["epoch"], stopped["step_in_epoch"], list(stopped["aug_rng_ranks"].shape)]
    resumed = fit(build_method(config, 1), data, config, out / "cut", resume=True, progress=False)
    report["resumed_history"] = resumed.history
    (out / f"fit-rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    torch.set_num_threads(1)
    assert distributed.init(torch.device("cpu")) and distributed.world_size() == WORLD  # from torchrun's variables
    _worker_steps(Path(sys.argv[1]))
    _worker_fit(Path(sys.argv[1]), sys.argv[2])
    distributed.cleanup()
    sys.exit(0)


# --------------------------------------------------------------------------
# Launching
# --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}
    if "GLOO_SOCKET_IFNAME" not in env and Path("/sys/class/net/lo").exists():
        env["GLOO_SOCKET_IFNAME"] = "lo"  # gloo talks over loopback even where the host name resolves elsewhere
    return env


def _run_workers(*args: str, timeout: float = 180) -> None:
    """Start WORLD workers of this file with torchrun's environment; fail fast if one fails."""
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, *args],
            env=_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD),
                     MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for r in range(WORLD)
    ]
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        outputs = [p.communicate()[0] for p in procs]
    failed = [f"rank {r} exited with {p.returncode}:\n{text[-3000:]}" for r, (p, text) in enumerate(zip(procs, outputs))
              if p.returncode != 0]
    assert not failed, "\n\n".join(failed)


@pytest.fixture(scope="module")
def tiny_npz(fmnist_small, tmp_path_factory) -> Path:
    """128 training and 32 test images of real Fashion-MNIST."""
    _, data = fmnist_small
    path = tmp_path_factory.mktemp("dist-data") / "tiny.npz"
    np.savez(path, images=data.train.images[::4][:128].numpy(), labels=data.train.labels[::4][:128].numpy(),
             test_images=data.test.images[::5][:32].numpy(), test_labels=data.test.labels[::5][:32].numpy())
    return path


@pytest.fixture(scope="module")
def workers(tiny_npz, tmp_path_factory) -> Path:
    """The folder where the 2 gloo workers left their results (one launch for the whole module)."""
    out = tmp_path_factory.mktemp("dist")
    with run_lock(out / "held"):  # a run folder another command is writing (see _worker_fit)
        _run_workers(str(out), str(tiny_npz))
    return out


@pytest.fixture(scope="module")
def two_rank_steps(workers) -> list[dict[str, Any]]:
    """One step of every method on 2 gloo processes, LOCAL_B images each: what each rank saw."""
    return [torch.load(workers / f"steps-rank{r}.pt", weights_only=True) for r in range(WORLD)]


# --------------------------------------------------------------------------
# Tests without a process group
# --------------------------------------------------------------------------


def test_shards_partition_each_global_batch_in_rank_order():
    batch = torch.randperm(12)
    blocks = [distributed.shard(batch, r, 3) for r in range(3)]
    assert all(len(b) == 4 for b in blocks) and torch.equal(torch.cat(blocks), batch)
    with pytest.raises(ValueError):
        distributed.shard(torch.arange(10), 0, 3)


def test_global_batch_must_split_evenly():
    assert distributed.local_batch_size(128, 4) == 32 and distributed.local_batch_size(7, 1) == 7
    with pytest.raises(ConfigError, match="--batch-size 130 is the global batch.*multiple of 4, e.g. 128 or 132"):
        distributed.local_batch_size(130, 4)
    with pytest.raises(ConfigError, match="fewer than 2 images; use --batch-size 8"):
        distributed.local_batch_size(4, 4)


def test_single_process_collectives_are_the_identity():
    x = torch.randn(3, 2, requires_grad=True)
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    assert distributed.gather_with_grad(x) is x
    assert distributed.gather_batch(x, x)[1] is x
    assert distributed.all_reduce_mean(x) is x and distributed.all_gather_tensor(x) is x
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.init(torch.device("cpu")) is False  # WORLD_SIZE unset: no process group


def test_augmentation_streams_differ_per_rank_and_rank_0_is_the_single_process_one():
    seeds = {augment_seed(0, e, r) for e in range(50) for r in range(8)}
    assert len(seeds) == 400
    from contrastkit.engine_contract import epoch_seed as _epoch_seed

    assert augment_seed(3, 5, 0) == _epoch_seed(3, 5, 2)


def test_sync_bn_is_a_config_field_and_a_cli_flag():
    from contrastkit.cli import _config_from_args, build_parser

    assert TrainConfig().sync_bn is False
    args = build_parser().parse_args(["train", "--sync-bn"])
    assert _config_from_args(args)[0].sync_bn is True


# --------------------------------------------------------------------------
# 2 processes against 1
# --------------------------------------------------------------------------


def test_gather_with_grad_sums_every_ranks_gradient_of_its_rows(two_rank_steps):
    rows = [torch.arange(6.0).reshape(3, 2) + 10 * r for r in range(WORLD)]
    weight_sum = sum((r + 1) * torch.arange(12.0).reshape(6, 2) for r in range(WORLD))  # the all-reduce
    for r, res in enumerate(two_rank_steps):
        g = res["gather"]
        assert torch.equal(g["y"], torch.cat(rows))
        assert torch.equal(g["x_grad"], weight_sum[3 * r : 3 * r + 3])
        assert g["zg"].shape == (6, 2, 4) and g["zg"].dtype == torch.float32 and g["pg"].shape == (6, 5)
        assert g["z_grad"].dtype == torch.bfloat16 and torch.equal(g["z_grad"].float(), torch.full((3, 2, 4), 2.0))
        assert torch.equal(g["p_grad"], torch.full((3, 5), 4.0))  # 2 (the loss) x 2 ranks
        assert g["labels"].tolist() == [0, 5, 1, 6]
    assert torch.equal(two_rank_steps[0]["gather"]["zg"], two_rank_steps[1]["gather"]["zg"])


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_one_step_on_two_processes_equals_one_process_with_the_global_batch(two_rank_steps, name):
    """Loss, every parameter's gradient (after DDP's averaging) and the queues / centre, to 1e-5 relative."""
    with torch_threads(1):  # as the workers: many times faster on a busy CPU
        method = _tiny_method(name)
        want = _one_step(method, *_global_inputs(method))
    for r, res in enumerate(two_rank_steps):
        got = res[name]
        assert got["mean_loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-6), r
        if name in GATHERED:  # each rank computes the loss of the whole global batch
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-6), r
        assert got["grads"].keys() == want["grads"].keys()
        # Relative to the largest gradient of the model: some gradients are 0 in exact arithmetic (a bias
        # before Barlow Twins' batch centring) and only rounding noise in floating point. On AVX-512 CPUs the
        # noise of a few small gradients (VICReg's and NNCLR's last predictor bias) reaches 1.7e-5 x that scale
        # and varies from run to run (the kernels' reduction order); a wrong reduction is off by the gradient itself.
        scale = max(float(g.abs().max()) for g in want["grads"].values())
        for k, g in want["grads"].items():
            torch.testing.assert_close(got["grads"][k], g, rtol=1e-5, atol=5e-5 * scale, msg=lambda m: f"rank {r} {k}: {m}")
        assert got["buffers"].keys() == want["buffers"].keys()
        for k, b in want["buffers"].items():
            torch.testing.assert_close(got["buffers"][k], b, rtol=1e-5, atol=1e-6, msg=lambda m: f"rank {r} {k}: {m}")


def test_distributed_fit_writes_on_rank_0_only_stops_together_and_resumes_exactly(workers):
    """moco on 2 processes: the run folder, one locked by another process, a NaN on rank 1 stopping both ranks,
    and a mid-epoch resume."""
    out = workers
    reports = [json.loads((out / f"fit-rank{r}.json").read_text()) for r in range(WORLD)]
    for rep in reports:
        assert "--sync-bn needs CUDA GPUs" in rep["sync_bn_error"]
        assert f"held: in use by another contrastkit command (PID {os.getpid()}, " in rep["locked_error"]
        assert "loss became nan at epoch 2, step 3" in rep["nan_error"]
        assert rep["ref_history"] == reports[0]["ref_history"]  # every rank returns rank 0's history
    ref, cut = out / "ref", out / "cut"
    assert not (out / "ref-rank1").exists() and not (out / "sync").exists()
    assert sorted(p.name for p in (out / "held").iterdir()) == [".lock"]  # the refused run wrote nothing
    assert TrainConfig.load(ref / "config.json") == TrainConfig(**FIT)
    log = [json.loads(line) for line in (ref / "log.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in log] == [1, 2] and all(line["knn_top1"] is not None for line in log)
    assert (ref / "checkpoints" / "best.pt").is_file()
    _, config, _ = load_method(ref, "last")  # loads in one process
    assert config == TrainConfig(**FIT)

    # The stopped run's last checkpoint: 1 epoch and 2 steps done, with both ranks' augmentation states.
    assert reports[0]["stopped_at"][:2] == [1, 2] and reports[0]["stopped_at"][2][0] == WORLD

    want, got = load_checkpoint(ref / "checkpoints" / "last.pt"), load_checkpoint(cut / "checkpoints" / "last.pt")
    assert want["world_size"] == got["world_size"] == WORLD
    assert want["model"].keys() == got["model"].keys()
    for k, v in want["model"].items():  # weights, key encoder, queue and rank 0's BatchNorm statistics
        assert torch.equal(v, got["model"][k]), k
    assert [h["loss"] for h in reports[0]["resumed_history"]] == [h["loss"] for h in log]
    assert [h["knn_top1"] for h in reports[0]["resumed_history"]] == [h["knn_top1"] for h in log]


def test_torchrun_runs_the_cli_and_only_rank_0_reports(tiny_npz, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(WORLD),
           "-m", "contrastkit", "train", "--data", str(tiny_npz), "--out", str(run), "--epochs", "1",
           "--batch-size", "32", "--device", "cpu", "--precision", "fp32", "--monitor-bank", "64",
           "--monitor-queries", "32", "--knn-k", "5", "--proj-hidden-dim", "32", "--proj-dim", "16", "--quiet"]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("run folder:") == 1, proc.stdout
    assert proc.stderr.count("training simclr/small_cnn") == 1 and "2 processes x 16 images (gloo)" in proc.stderr
    assert len((run / "log.jsonl").read_text().splitlines()) == 1
    method, config, data = load_method(run)
    assert config.batch_size == 32 and data["channels"] == 1
