"""bench/serve_latency.py runs at toy size and prints its table (timings are measured, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_serve_latency_script_runs(tmp_path) -> None:
    out = tmp_path / "serve.json"
    done = subprocess.run([sys.executable, str(BENCH / "serve_latency.py"), "--sizes", "600", "--dim", "16",
                           "--repeats", "3", "--map-points", "100", "--data-dir", str(tmp_path), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| request | 600 items: median / p90 ms | response bytes |" in done.stdout
    for kind in ("page 1 (60 items)", "neighbours (k=12)", "image", "label write-back", "map region"):
        assert f"| {kind} |" in done.stdout
    results = json.loads(out.read_text())["results"]["600"]
    assert results["cached_start_s"] >= 0 and results["requests"]["image"]["bytes"] > 0


def test_serve_latency_times_the_audit_and_its_problems_view(tmp_path) -> None:
    out = tmp_path / "serve.json"
    done = subprocess.run([sys.executable, str(BENCH / "serve_latency.py"), "--sizes", "2000", "--dim", "16",
                           "--repeats", "2", "--map-points", "100", "--data-dir", str(tmp_path), "--audit",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())["results"]["2000"]
    assert results["found"]["exact_duplicate"] == 2 * (2000 // 997)  # the planted copies and their originals
    assert "| problems: exact_duplicate, worst first |" in done.stdout
    assert results["requests"]["problems: exact_duplicate, worst first"]["bytes"] > 100  # the items, not an empty page
    assert "| audit (contrastkit audit, s) |" in done.stdout
