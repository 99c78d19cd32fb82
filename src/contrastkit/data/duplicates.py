"""Several names for one image file: symbolic links, hard links and byte-identical copies.

An image folder can name one file several times: ``a.png`` and a symbolic
link to it, two hard links, or two copies with the same bytes. Read as
separate items they count twice, and may land one in the train split and one
in the test split, where the test copy is found by its own twin and inflates
every evaluation. :func:`find_duplicates` finds them so that the reader keeps
one of each group:

- the same file: the same ``(st_dev, st_ino)`` after following links (a
  symbolic link, a hard link, the same folder reached twice);
- the same bytes: only files whose sizes collide are hashed (SHA-256), so a
  folder of distinct sizes costs one ``stat`` per file.

The kept file is the first of its group in the order given (the reader's
item order: train before test, class folders and names sorted), so the
choice is deterministic.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from pathlib import Path
from typing import Sequence

HASH_BLOCK = 1 << 20  # bytes read at a time when hashing


def _digest(path: Path) -> str | None:
    """SHA-256 of the file's bytes; None when it cannot be read (it is then kept: the reader says why)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(HASH_BLOCK):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def find_duplicates(files: Sequence[Path]) -> dict[Path, Path]:
    """The files that are another file of ``files`` again, each mapped to the one kept (first in order).

    Files that cannot be ``stat``-ed or read are never merged (the reader
    lists them as bad files); empty files neither (they are bad files).
    """
    first_of: dict[object, Path] = {}  # (st_dev, st_ino) or digest -> the kept file
    merged: dict[Path, Path] = {}
    by_size: dict[int, list[Path]] = defaultdict(list)
    for p in files:
        try:
            st = os.stat(p)
        except OSError:
            continue
        key = ("inode", st.st_dev, st.st_ino)
        if key in first_of:
            merged[p] = first_of[key]
            continue
        first_of[key] = p
        if st.st_size > 0:
            by_size[st.st_size].append(p)
    for same_size in by_size.values():
        if len(same_size) < 2:
            continue
        for p in same_size:  # in the order given, so the first of a group is kept
            digest = _digest(p)
            if digest is None:
                continue
            kept = first_of.setdefault(("bytes", digest), p)
            if kept is not p:
                merged[p] = kept
    # A name merged into one that is itself merged (a hard link of a copy) points at the kept file.
    return {p: merged.get(k, k) for p, k in merged.items()}
