"""The training engine: one loop for every trainable.

The engine knows nothing of images or contrastive learning. It is handed

* a **trainable**: an ``nn.Module`` whose ``forward(*batch)`` returns
  ``(loss, logs)`` (``logs["loss"]``, when present, is the float logged), with
  an optional ``after_step(step, total_steps)`` hook (EMA targets, queues) and
  optional ``extra_state()`` / ``load_extra_state(state)`` for checkpoint state
  outside its ``state_dict``; a batch whose loss has no gradient (nothing in
  it to learn from) takes no optimiser step, but counts as a step (schedule,
  ``after_step``, the epoch's mean loss); under torchrun every rank skips it
  when any rank's loss has none;
* a **batch source** (:class:`~contrastkit.engine_contract.BatchSource`) whose batches are a pure function
  of (seed, epoch, step): ``epoch(e, start_step, state)`` gives the batches of
  epoch ``e`` from ``start_step`` on, and ``state()`` the one piece of hidden
  state (a tensor: an RNG's state) that a checkpoint inside an epoch must keep;
  a source whose batches also depend on state it computes as it goes (the
  sampling weights of :mod:`contrastkit.balance`) has optional
  ``extra_state()`` / ``load_extra_state(state)``, kept in every checkpoint;
* an optimiser and a :class:`~contrastkit.engine_contract.Plan`: epochs, the learning rate as a pure
  function of the step, the checkpoint interval and the wall-clock budget;

and owns the rest: precision (autocast, fp16 gradient scaling), progress with
an ETA, the NaN/inf stop, atomic checkpoints at epoch ends and every
``checkpoint_minutes`` inside an epoch, exact resume (weights, optimiser,
scaler, RNG, counters and the source's states), epoch-end monitors, the best
checkpoint and early stopping (:class:`~contrastkit.engine_contract.Selection`), ``log.jsonl``, the budget,
and DistributedDataParallel under torchrun (rank 0 decides, shows progress and
writes files; every rank returns the same history).

Wall-clock budget (``Plan.minutes``): the clock runs while the loop runs
(steps, monitors, checkpoint writes; not the start-up before the first
step). After the first step that ends past the budget the run checkpoints and
stops; an epoch cut short this way still gets a log record (its monitor
values, ``steps`` done of it, ``stopped_on_time``), which the completed epoch
replaces when the run is resumed. The time spent is kept in every checkpoint
(``elapsed_s``) and a resumed run continues the count: ``--minutes`` is the
budget of the whole run, so resuming with the same budget after it ran out
takes no step, and resuming with a larger one trains for the difference.
(A run killed between checkpoints loses the uncounted time since the last
one: at most ``checkpoint_minutes`` per kill.) The schedule is still planned
over ``epochs``: the budget only caps it, it never changes what a step does.

A short fit inside another command (SCAN's heads in ``contrastkit label``)
passes ``run_dir=None``: nothing is written (no checkpoint, no ``log.jsonl``,
no resume), and ``report=False``: no epoch lines (``progress`` still shows the
bar when asked).

This module is the loop; beside it :mod:`contrastkit.engine_contract` (the
protocols, :class:`~contrastkit.engine_contract.Plan`, selection, result and
per-epoch seeds), :mod:`contrastkit.engine_state` (checkpoint reading, RNG
state, ``log.jsonl``) and :mod:`contrastkit.engine_report` (its stderr lines).
"""

from __future__ import annotations

import inspect
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from contrastkit import distributed
from contrastkit.atomic import atomic_torch_save
from contrastkit.engine_contract import BatchSource, EpochBatches, Monitor, Plan, RunResult, Selection
from contrastkit.engine_report import ESTIMATE_AFTER_STEPS, _report, expected_time_line
from contrastkit.engine_state import _resumed_source_state, load_state, rng_state, set_rng_state, write_log
from contrastkit.errors import CheckpointError, ConfigError, TrainingError
from contrastkit.runtime import Runtime

SCHEMA = "contrastkit.engine/1"  # schema tag of checkpoints written without a caller's own
clock = time.monotonic  # the clock of the budget and the checkpoint interval (tests replace it)


def place(module: nn.Module, runtime: Runtime) -> nn.Module:
    """Move ``module`` to the runtime's device and memory format (in place), before its optimiser is built."""
    module.to(runtime.device)
    if runtime.channels_last:
        module.to(memory_format=torch.channels_last)
    return module


def agree(loss: torch.Tensor, logged: float, flags: tuple[bool, ...], world: int) -> tuple[float, tuple[bool, ...]]:
    """What every rank must agree on after a forward, in one all-reduce.

    Returns:
        The loss to log and check, averaged over ranks (the global-batch loss:
        equal on every rank for gathered losses, the mean of the ranks' means
        for per-image ones), so a NaN on any rank stops them all together; and
        each flag raised on any rank (rank 0's clock raises the first two: a
        checkpoint is due, the budget ran out; any rank's loss without
        gradient the third).
    """
    if world == 1:
        return (logged if bool(torch.isfinite(loss)) else float(loss.detach())), flags
    stats = torch.stack([loss.detach().float(), *(torch.tensor(float(f), device=loss.device) for f in flags)])
    stats = distributed.all_reduce_sum(stats)
    return float(stats[0]) / world, tuple(bool(s > 0) for s in stats[1:])


def no_buffer_sync() -> dict[str, bool]:
    """DistributedDataParallel's option not to broadcast buffers before every forward, in this torch's spelling."""
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}  # torch >= 2.13 (buffers are still synced once, at wrapping)
    return {"broadcast_buffers": False}


def _wrap(trainable: nn.Module, runtime: Runtime) -> nn.Module:
    """The module the loop calls: ``trainable`` itself, or wrapped in DistributedDataParallel inside a process group.

    Every trainable parameter is expected to take part in the loss (no search
    for unused ones). Buffers are not broadcast each step: a trainable keeps
    its own identical across ranks (queues by gathering, EMA targets by
    following identical weights); BatchNorm running statistics are rank 0's
    in the checkpoints.
    """
    if distributed.world_size() == 1:
        return trainable
    device_ids = None
    if runtime.device.type == "cuda":
        device_ids = [runtime.device.index if runtime.device.index is not None else torch.cuda.current_device()]
    return DistributedDataParallel(trainable, device_ids=device_ids, **no_buffer_sync())


@dataclass
class _Counters:
    """The loop's resumable counters (saved in every checkpoint under these names)."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # steps done of the epoch in progress
    history: list[dict[str, Any]] = field(default_factory=list)
    best: float | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    loss_sum: float = 0.0
    loss_count: int = 0
    elapsed_s: float = 0.0


def run(
    trainable: nn.Module,
    source: BatchSource,
    optimizer: torch.optim.Optimizer,
    plan: Plan,
    runtime: Runtime,
    run_dir: Path | None,
    *,
    resume: bool = False,
    progress: bool = True,
    report: bool = True,
    monitor: Monitor | None = None,
    selection: Selection | None = None,
    meta: dict[str, Any] | None = None,
    schema: str = SCHEMA,
    load: Callable[[Path], dict[str, Any]] = load_state,
    check_resume: Callable[[dict[str, Any]], None] | None = None,
    on_new_run: Callable[[], None] | None = None,
    banner: str | None = None,
) -> RunResult:
    """Train ``trainable`` on ``source`` as ``plan`` says, writing ``run_dir/checkpoints`` and ``run_dir/log.jsonl``.

    Call it on every rank of a process group (or in one process). The
    trainable must already be on the runtime's device (:func:`place`), and
    ``optimizer`` built on its parameters.

    Args:
        trainable: the module trained (see the module docstring).
        source: its batches (see :class:`BatchSource`).
        optimizer: the optimiser; its learning rate is set every step from ``plan.lr``.
        plan: epochs, schedule, checkpoint interval and budget.
        runtime: device, precision and memory format.
        run_dir: the run folder; it must not hold a run unless ``resume``. None: write no file at all.
        resume: continue from ``run_dir/checkpoints/last.pt``.
        progress: show a progress bar on stderr (rank 0).
        report: print the epoch lines, the expected-time line and the stop messages on stderr (rank 0).
        monitor: measured on rank 0 at every epoch end (and when the budget cuts an epoch short).
        selection: the monitor value that picks ``best.pt`` and stops early; without it every epoch is "best".
        meta: plain values saved in every checkpoint (``last.pt`` and ``best.pt``), e.g. the config.
        schema: the checkpoints' schema tag.
        load: reads a checkpoint (a caller's may check its own schema).
        check_resume: called with the loaded checkpoint before anything is restored; raises if it may not resume.
        on_new_run: called on rank 0 when a new run starts, after the folder is made (write config files here).
        banner: printed once on rank 0 when training starts.

    Raises:
        TrainingError: the loss became NaN or inf (the last checkpoint is kept).
        ConfigError: ``run_dir`` already holds a run and ``resume`` is off.
        CheckpointError: ``resume`` with nothing to resume.
    """
    world, rank = distributed.world_size(), distributed.rank()
    main = rank == 0
    if run_dir is None and resume:
        raise CheckpointError("nothing to resume: a run without a folder keeps no checkpoint")
    ckpt_dir = (run_dir or Path()) / "checkpoints"  # unused when run_dir is None
    last_path, best_path = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    if not resume and run_dir is not None and last_path.exists():
        raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    meta = dict(meta or {})
    scaler = torch.amp.GradScaler(enabled=runtime.dtype == torch.float16)
    steps_per_epoch, batch = source.steps_per_epoch, source.items_per_step
    if steps_per_epoch < 1:
        raise ConfigError(f"the batch source has no full batch of {batch} items per epoch; use a smaller --batch-size")
    total_steps = plan.epochs * steps_per_epoch
    budget_s = plan.minutes * 60 if plan.minutes is not None else None
    c = _Counters()
    source_state = None
    if resume:
        if not last_path.exists():
            raise CheckpointError(f"{run_dir}: nothing to resume, no {last_path}")
        state = load(last_path)  # on every rank: identical weights, optimiser and counters
        if check_resume is not None:
            check_resume(state)
        trainable.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        c.epoch, c.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        source_state = _resumed_source_state(state, source.state_key, rank, world) if c.step_in_epoch else None
        c.history, c.best = list(state["history"]), state.get("best", state.get("best_knn"))  # best_knn: before the engine
        c.bad_epochs, c.stopped_early = int(state["bad_epochs"]), bool(state["stopped_early"])
        c.loss_sum, c.loss_count = float(state["loss_sum"]), int(state["loss_count"])
        c.elapsed_s = float(state.get("elapsed_s", 0.0))
        if "trainable_state" in state and hasattr(trainable, "load_extra_state"):
            trainable.load_extra_state(state["trainable_state"])
        if "source_state" in state and hasattr(source, "load_extra_state"):
            source.load_extra_state(state["source_state"])
        set_rng_state(state["rng"])
    elif main:
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
        if on_new_run is not None:
            on_new_run()
    model = _wrap(trainable, runtime)
    after_step = getattr(trainable, "after_step", None)

    t_start = clock()

    def elapsed() -> float:
        return c.elapsed_s + (clock() - t_start)

    def checkpoint(batches: EpochBatches | None) -> None:
        """Write last.pt from rank 0; inside an epoch every rank must call it (its source state is gathered)."""
        if run_dir is None:
            return
        src = batches.state() if batches is not None else torch.zeros(0, dtype=torch.uint8)
        per_rank: dict[str, torch.Tensor] = {}
        if world > 1 and batches is not None:
            per_rank[f"{source.state_key}_ranks"] = distributed.all_gather_tensor(src[None])  # (world, state size)
        if not main:
            return
        extra = {"trainable_state": trainable.extra_state()} if hasattr(trainable, "extra_state") else {}
        if hasattr(source, "extra_state"):
            extra["source_state"] = source.extra_state()
        save(last_path, {
            **meta, "model": trainable.state_dict(), "epoch": c.epoch, "step_in_epoch": c.step_in_epoch,
            source.state_key: src, "world_size": world, **per_rank,
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "history": c.history,
            "best": c.best, "bad_epochs": c.bad_epochs, "stopped_early": c.stopped_early,
            "loss_sum": c.loss_sum, "loss_count": c.loss_count, "elapsed_s": elapsed(),
            "stopped_on_time": out_of_time, "rng": rng_state(), **extra,
        })

    def save(path: Path, state: dict[str, Any]) -> None:
        atomic_torch_save(path, {"schema": schema, **state})

    out_of_time = budget_s is not None and c.elapsed_s >= budget_s
    done = c.epoch >= plan.epochs or c.stopped_early or out_of_time
    bar = tqdm(
        total=total_steps, initial=c.epoch * steps_per_epoch + c.step_in_epoch, unit="step",
        desc="train", disable=not progress or done or not main, file=sys.stderr, dynamic_ncols=True,
        mininterval=0.5 if sys.stderr.isatty() else 30.0,  # a log file gets a line every 30 s, not every step
    )
    if not done and main and banner:
        tqdm.write(banner, file=sys.stderr)
    trainable.train()
    last_save = clock()
    partial: dict[str, Any] | None = None  # the record of an epoch the budget cut short
    steps_run, t_first_step = 0, 0.0  # this process's steps, for the expected-time line
    while c.epoch < plan.epochs and not c.stopped_early and not out_of_time:
        epoch = c.epoch
        t_epoch, items_seen = time.perf_counter(), 0
        lr = plan.lr(epoch * steps_per_epoch + c.step_in_epoch)
        batches = source.epoch(epoch, c.step_in_epoch, source_state)
        source_state = None
        try:
            for step, args in zip(range(c.step_in_epoch, steps_per_epoch), batches):
                global_step = epoch * steps_per_epoch + step
                lr = plan.lr(global_step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with runtime.autocast():
                    loss, logs = model(*args)
                now = clock()
                want_save = main and now - last_save > plan.checkpoint_minutes * 60 and step + 1 < steps_per_epoch
                want_stop = main and budget_s is not None and c.elapsed_s + (now - t_start) >= budget_s
                step_loss, (save_now, out_of_time, skip) = agree(  # skip: a loss without gradient on some rank
                    loss, logs.get("loss", float(loss.detach())), (want_save, want_stop, not loss.requires_grad), world)
                if not math.isfinite(step_loss):
                    bar.close()
                    kept = f"The last good checkpoint ({last_path}) is intact. " if run_dir is not None else ""
                    raise TrainingError(f"the loss became {step_loss} at epoch {epoch + 1}, step {step + 1}; "
                                        f"stopped. {kept}Try a lower --lr, or --precision fp32.")
                if not skip:
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                if after_step is not None:
                    after_step(global_step + 1, total_steps)  # momentum encoders, queues
                c.loss_sum += step_loss * batch
                c.loss_count += batch
                items_seen += batch
                rate = items_seen / max(time.perf_counter() - t_epoch, 1e-9)
                bar.set_postfix(epoch=f"{epoch + 1}/{plan.epochs}", loss=f"{step_loss:.4f}", img_s=f"{rate:.0f}",
                                refresh=False)
                bar.update(1)
                c.step_in_epoch = step + 1
                steps_run += 1
                if steps_run == 1:
                    t_first_step = time.perf_counter()
                elif steps_run == ESTIMATE_AFTER_STEPS + 1 and main and report:
                    per_step = (time.perf_counter() - t_first_step) / ESTIMATE_AFTER_STEPS
                    left = budget_s - elapsed() if budget_s is not None else None
                    tqdm.write(expected_time_line(per_step, total_steps - global_step - 1, plan.epochs - epoch,
                                                  left, plan.minutes, monitored=monitor is not None,
                                                  budget_option=plan.budget_option), file=sys.stderr)
                if out_of_time and c.step_in_epoch < steps_per_epoch:
                    checkpoint(batches)  # cut short inside the epoch: resumable from here
                    break
                if save_now:
                    checkpoint(batches)
                    last_save = clock()
        finally:
            batches.close()  # e.g. loader workers stop before the monitor runs
        epoch_seconds = time.perf_counter() - t_epoch
        cut = c.step_in_epoch < steps_per_epoch

        # Rank 0 measures while the others wait here; then every rank keeps the same history.
        measured = monitor.measure() if main and monitor is not None else {}
        measured, epoch_seconds = distributed.broadcast_object((measured, epoch_seconds))
        record = {
            "epoch": epoch + 1, "loss": c.loss_sum / max(c.loss_count, 1), "lr": lr,
            **measured, "images_per_s": items_seen / max(epoch_seconds, 1e-9), "epoch_seconds": epoch_seconds,
        }
        if cut:  # the budget ran out inside the epoch: the state stays mid-epoch, the record is provisional
            partial = {**record, "steps": c.step_in_epoch, "stopped_on_time": True}
            if main and report:
                _report(record, epoch, plan, monitor, partial=True)
            break
        c.loss_sum, c.loss_count, c.step_in_epoch = 0.0, 0, 0
        score = measured.get(selection.metric) if selection is not None else None
        improved = score is None or c.best is None or selection.better(score, c.best)
        if score is not None and improved:
            c.best = score
        c.bad_epochs = 0 if improved else c.bad_epochs + 1
        if (selection is not None and selection.patience and score is not None
                and c.bad_epochs >= selection.patience and epoch + 1 < plan.epochs):
            c.stopped_early = True
            record["stopped_early"] = True
        if out_of_time and epoch + 1 < plan.epochs:
            record["stopped_on_time"] = True
        c.history.append(record)
        c.epoch = epoch + 1
        if improved and main and run_dir is not None:
            save(best_path, {**meta, "model": trainable.state_dict(), "epoch": c.epoch,
                             **({selection.metric: score} if selection is not None else {})})
        checkpoint(None)
        last_save = clock()
        if not main:
            continue
        if run_dir is not None:
            write_log(run_dir, c.history)
        if report:
            _report(record, epoch, plan, monitor)
        if c.stopped_early and report:
            best = selection.fmt.format(c.best) if selection is not None else ""
            tqdm.write(f"early stop: no {selection.label or selection.metric} improvement for {selection.patience} "
                       f"epochs (best {best})", file=sys.stderr)
    bar.close()
    history = c.history + ([partial] if partial is not None else [])
    if partial is not None and main and run_dir is not None:
        write_log(run_dir, history)
    stopped_on_time = out_of_time and c.epoch < plan.epochs and not c.stopped_early
    if stopped_on_time and main and not done and report:
        tqdm.write(f"time budget: stopped after {elapsed() / 60:.2f} of {plan.minutes:g} minutes at epoch "
                   f"{c.epoch + (1 if partial else 0)}/{plan.epochs}, step {c.step_in_epoch or steps_per_epoch}"
                   + (f"; {last_path} resumes it (with a larger {plan.budget_option} to train on)" if run_dir is not None else ""),
                   file=sys.stderr)
    distributed.barrier()  # the other ranks return once rank 0 has written the run folder
    return RunResult(history=history, best=c.best, stopped_early=c.stopped_early,
                     stopped_on_time=stopped_on_time, elapsed_s=elapsed())
