"""Label review in the explorer: a person's corrections (``seed_labels.csv``), the review queue, re-spread and the data problems check.

:class:`LabelReview` is the part of :class:`~contrastkit.explorer.state.RunState`
that changes labels: it is mixed into it and uses its arrays (``sources``,
``label``, ``label_names``, ``confidence``, ``problems``), its lock and its
queries (:meth:`~contrastkit.explorer.state.RunState.select`, ``page``,
``check_item``, ``reload_labels``).
"""

from __future__ import annotations

import csv
import io
import json
import time
from typing import Any

import numpy as np

from contrastkit.atomic import atomic_write_text
from contrastkit.errors import ConfigError
from contrastkit.explorer.loading import _read_audit_csv
from contrastkit.runlock import run_lock
from contrastkit.sources import source_from_text, source_to_text

SEEDS_FILE = "seed_labels.csv"
CHANGED_SHOWN = 200  # re-spread: changed items listed in the reply (all are filterable)


class LabelReview:
    """Corrections, review, re-spread and the data problems check of a :class:`~contrastkit.explorer.state.RunState`."""

    def choices(self) -> list[str]:
        """The labels a person may give: the class names, else the labels in labels.csv."""
        return list(self.class_names) if self.class_names else sorted(self.label_names, key=lambda s: (len(s), s))

    def _row_of_source(self, text: str) -> int | None:
        if self._by_source is None:
            self._by_source = {s: i for i, s in enumerate(self.sources)}
        return self._by_source.get(source_from_text(text))

    def _read_corrections(self) -> dict[int, str]:
        path = self.run_dir / SEEDS_FILE
        out: dict[int, str] = {}
        if not path.is_file():
            return out
        with open(path, newline="", encoding="utf-8-sig") as f:
            for r in csv.DictReader(f):
                item, label = (r.get("item") or "").strip(), (r.get("label") or "").strip()
                i = self._row_of_source(item)
                if i is None and item.isdigit() and int(item) < self.n:
                    i = int(item)
                if i is not None and label:
                    out[i] = label
        return out

    def set_label(self, item: int, label: str | None) -> int:
        """Record (or with None remove) a person's label for ``item``; rewrite seed_labels.csv atomically.

        Returns the number of corrections now saved.
        """
        self.check_item(item)
        if label is not None and label not in self.choices():
            raise ConfigError(f"label {label!r} is not one of {', '.join(self.choices())}")
        with self._lock:
            corrections = dict(self.corrections)
            if label is None:
                corrections.pop(item, None)
            else:
                corrections[item] = label
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(["item", "label"])
            for i in sorted(corrections):
                w.writerow([source_to_text(self.sources[i]), corrections[i]])
            with run_lock(self.run_dir):  # a writer of the run folder holds its lock (contrastkit.runlock)
                atomic_write_text(self.run_dir / SEEDS_FILE, buf.getvalue())
            self.corrections = corrections
            return len(corrections)

    # ------------------------------------------------------------------ review, re-spread, problems

    def review(self, limit: int) -> list[dict[str, Any]]:
        """The least confident auto-labelled items not corrected yet, least confident first."""
        rows = self.select(sort="confidence", corrected=False)
        rows = rows[~np.isnan(self.confidence[rows])]
        return self.page(rows, 0, limit)["items"]

    def respread(self) -> dict[str, Any]:
        """Label every item from the corrections (``contrastkit label --seed-labels``); which labels changed.

        One at a time; :meth:`respread_status` tells the stage meanwhile. The reply says how long it took
        (``seconds``) and how many items changed label (``changed``).
        """
        from contrastkit.label import label_run

        if not self.corrections:
            raise ConfigError("no corrections yet: accept or correct some labels first")
        with self._lock:
            if self._respread["running"]:
                raise ConfigError(f"a re-spread is already running ({self._respread['stage']}); wait for it")
            self._respread.update(running=True, stage="reading the corrections", started=time.monotonic(), error=None)
        try:
            before = np.array([self.label_names[c] if c >= 0 else "" for c in self.label.tolist()], dtype=object)
            m = label_run(self.run_dir, seed_labels=self.run_dir / SEEDS_FILE, montages=False,
                          on_stage=self._respread_stage)
            self._respread_stage("reading the new labels")
            self.reload_labels()
            after = np.array([self.label_names[c] if c >= 0 else "" for c in self.label.tolist()], dtype=object)
            with self._lock:
                self.changed = before != after
            rows = np.flatnonzero(self.changed)
            seconds = round(time.monotonic() - self._respread["started"], 2)
            out = {"model": m["model"], "seeds": m["n_seeds"], "held_out_accuracy": m["held_out_accuracy"],
                   "changed": int(len(rows)), "seconds": seconds,
                   "items": [{"item": int(i), "before": before[i], "after": after[i]} for i in rows[:CHANGED_SHOWN]]}
            with self._lock:
                self._respread["last"] = {k: v for k, v in out.items() if k != "items"}
            return out
        except Exception as e:
            with self._lock:
                self._respread["error"] = str(e)
            raise
        finally:
            with self._lock:
                self._respread.update(running=False, stage=None)

    def _respread_stage(self, text: str) -> None:
        with self._lock:
            self._respread["stage"] = text

    def respread_status(self) -> dict[str, Any]:
        """``running``, the current ``stage`` and ``elapsed_s`` of a re-spread; ``last`` (the last finished one's
        model, seeds, held-out accuracy, changed and seconds) and ``error`` (the last failure's message, else None)."""
        with self._lock:
            r = dict(self._respread)
        started = r.pop("started")
        elapsed = round(time.monotonic() - started, 2) if r["running"] else None
        return {**r, "elapsed_s": elapsed}

    def run_audit(self) -> dict[str, Any]:
        """Run the data problems check (``contrastkit audit``) and load its findings."""
        from contrastkit.audit import audit_run

        summary = audit_run(self.run_dir)
        for key in ("result", "splits", "class_names"):
            summary.pop(key, None)
        self.problems, self.problem_scores = _read_audit_csv(self.run_dir / "audit.csv", self.n)
        return summary

    def audit_summary(self) -> dict[str, Any] | None:
        """audit.json when the check has run on these embeddings, else None."""
        path = self.run_dir / "audit.json"
        if not self.problems or not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None
