"""What the engine prints on stderr (rank 0): the expected-time line once the first steps are timed, and the epoch line."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

from contrastkit.engine_contract import Monitor, Plan

ESTIMATE_AFTER_STEPS = 10  # steps timed, after the first (which pays for warm-up), before the expected-time line


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def expected_time_line(per_step_s: float, steps_left: int, epochs_left: int, budget_left_s: float | None,
                       minutes: float | None, monitored: bool = True, budget_option: str = "--minutes") -> str:
    """The line printed once the first steps are timed: how long the rest of the run should take."""
    expected = per_step_s * steps_left
    line = (f"expected: about {_duration(expected)} more for {steps_left} step{'s' * (steps_left != 1)} "
            f"({per_step_s * 1e3:.0f} ms per step over {ESTIMATE_AFTER_STEPS} steps)")
    if monitored:
        line += f", plus the monitor at the end of each of {epochs_left} epoch{'s' * (epochs_left != 1)}"
    if budget_left_s is not None and minutes is not None and budget_left_s < expected:
        line += (f"; the {budget_option} {minutes:g} budget stops it after about {_duration(max(budget_left_s, 0.0))} "
                 f"(about {int(max(budget_left_s, 0.0) / max(per_step_s, 1e-9))} of these steps)")
    return line


def _report(record: dict[str, Any], epoch: int, plan: Plan, monitor: Monitor | None, partial: bool = False) -> None:
    """The epoch line on stderr (rank 0)."""
    summary = monitor.summary(record) if monitor is not None else ""
    where = f"epoch {epoch + 1}/{plan.epochs}" + (" (cut short by the time budget)" if partial else "")
    tqdm.write(f"{where}: loss {record['loss']:.4f}  {summary + '  ' if summary else ''}"
               f"{record['images_per_s']:.0f} img/s", file=sys.stderr)
