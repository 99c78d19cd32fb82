"""What every benchmark prints first (the command, the machine, the versions, the commit), and writes with its results.

Evidence travels with results (airbench): a figure without these lines
cannot be reproduced or compared. :func:`write_results` is the one way the
scripts write their ``--out`` JSON, and :func:`peak_rss_bytes` the one way
they read peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, or platform's guess elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str:
    """The repository's HEAD commit (with -dirty when the tree has changes), or 'unknown'."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def describe() -> str:
    """Several lines: command, machine, versions, commit, load."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "command: " + shlex.join([os.path.relpath(sys.executable), *sys.argv]),
        f"machine: {cpu_model()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}, "
        f"load average {load:.2f}",
        f"versions: python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}",
        f"commit: {git_commit()}",
    ]
    if torch.cuda.is_available():
        lines.append(f"gpu: {torch.cuda.get_device_name()}")
    return "\n".join(lines)


def peak_rss_bytes(usage: resource.struct_rusage | None = None) -> int:
    """Peak resident set size in bytes: of this process, or of the child whose ``usage`` (from ``os.wait4``) is given.

    ``ru_maxrss`` is in KiB on Linux and in bytes on macOS.
    """
    usage = usage if usage is not None else resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def write_results(path: Path, args: argparse.Namespace, results: Any) -> None:
    """Write ``{"environment": describe(), "args": ..., "results": results}`` as indented JSON to ``path``."""
    record = {"environment": describe(), "args": {k: str(v) for k, v in vars(args).items()}, "results": results}
    Path(path).write_text(json.dumps(record, indent=2) + "\n")
