"""Paths named inside data files stay inside the folder they belong to.

Files that contrastkit reads can name other files: members of a CIFAR
archive, item sources in ``items.csv`` (``cat/001.png`` for an image
folder), items in a labels CSV. Such a name is data, not a command: it must
never make contrastkit read or write outside the folder it is relative to.
:func:`relative_parts` refuses names that are absolute (``/etc/passwd``,
``C:\\x``, ``\\\\server\\share``) or climb out with ``..``;
:func:`join_inside` also resolves symbolic links and refuses a result that
lies outside the folder.

Where names are used today:

- CIFAR archives: every member is checked with :func:`relative_parts` before
  anything is extracted, and each target with :func:`join_inside`.
- ``items.csv`` sources and labels-CSV items are never opened as files: the
  commands that show images (label montages, search montages, visualize,
  report) reload the run's own data set and match its sources exactly, so a
  crafted ``items.csv`` can at most make them skip the images. Code that
  ever turns an item source into a file must go through :func:`join_inside`
  with the data root recorded for the run.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from contrastkit.errors import DataError


def relative_parts(name: str, where: str) -> tuple[str, ...]:
    """The components of a relative path named in a data file; refuses any that could leave its folder.

    Both ``/`` and ``\\`` separate components, so a name means the same on
    every platform.

    Args:
        name: the path as written in the file.
        where: what to name in the error, e.g. ``"items.csv, row 12"``.

    Returns:
        The components, without ``.`` and empty ones (``"a//./b"`` -> ``("a", "b")``;
        ``"."`` -> ``()``, the folder itself).

    Raises:
        DataError: the name is empty, holds a NUL byte, is absolute (a
            leading separator, a drive such as ``C:``, a UNC share) or has a
            ``..`` component; the message names ``where`` and the path.
    """
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"{where}: empty path")
    if "\x00" in name:
        raise DataError(f"{where}: refused path {name!r}: it holds a NUL byte")
    unified = name.replace("\\", "/")
    if unified.startswith("/") or PureWindowsPath(name).drive or PureWindowsPath(name).root:
        raise DataError(f"{where}: refused path {name!r}: an absolute path (only paths relative to the folder are allowed)")
    parts = tuple(p for p in PurePosixPath(unified).parts if p not in ("", "."))
    if ".." in parts:
        raise DataError(f"{where}: refused path {name!r}: '..' would leave the folder")
    return parts


def join_inside(root: str | Path, name: str, where: str) -> Path:
    """``root / name`` after checking that it stays inside ``root``, symbolic links resolved.

    Args:
        root: the folder ``name`` is relative to (it need not exist yet).
        name: the relative path from the data file.
        where: what to name in the error, e.g. ``"labels.csv, line 3"``.

    Returns:
        The joined path (not resolved, so messages show it as the user knows it).

    Raises:
        DataError: ``name`` is refused by :func:`relative_parts`, or a
            symbolic link on the way leads outside ``root``.
    """
    root = Path(root)
    path = root.joinpath(*relative_parts(name, where))
    base = Path(os.path.realpath(root))
    real = Path(os.path.realpath(path))
    if real != base and base not in real.parents:
        raise DataError(f"{where}: refused path {name!r}: it leads outside {root} (through a symbolic link to {real})")
    return path
