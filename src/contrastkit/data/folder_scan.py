"""An image folder's files and what is wrong with them: its layouts scanned, and the lines that list bad, skipped and merged files.

The layouts (flat, class subfolders, train/test or train/val splits) are
described in :mod:`contrastkit.data.folder`, which reads them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from contrastkit.errors import DataError
from contrastkit.sources import printable

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
BAD_FILES_LISTED = 20  # bad files named in the error; the rest are counted ("and N more")
SKIPPED_FILES_NAMED = 5  # skipped files named in the --skip-bad warning


def _image_files(folder: Path, recursive: bool) -> list[Path]:
    """Sorted image files under ``folder``, skipping hidden files and folders.

    Symbolic links that lead to no file (dangling, or a loop) are included,
    so that they are listed with the other unreadable files.
    """
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p for p in found
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and (p.is_file() or (p.is_symlink() and not p.exists()))
    )


def _scan(folder: Path) -> tuple[list[Path], dict[str, list[Path]] | None]:
    """(flat image files, None) or ([], {class name: files}) for one split folder."""
    top = _image_files(folder, recursive=False)
    classes: dict[str, list[Path]] = {}
    for d in sorted(folder.iterdir(), key=lambda p: p.name):
        if d.is_dir() and not d.name.startswith("."):
            files = _image_files(d, recursive=True)
            if files:
                classes[d.name] = files
    if top and classes:
        raise DataError(
            f"{folder}: holds both images and class subfolders ({', '.join(classes)}); "
            "put every image into a class folder, or use a flat folder of images"
        )
    if not top and not classes:
        raise DataError(
            f"{folder}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)} files, "
            "directly or in class subfolders)"
        )
    return (top, None) if top else ([], classes)


def _split_items(
    folder: Path, class_names: list[str] | None
) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """(files, labels, class names) of one split folder.

    Args:
        folder: the split folder.
        class_names: the train split's class names to map a test split onto,
            or None to take them from this folder.
    """
    flat, classes = _scan(folder)
    if classes is None:
        return flat, None, None
    names = class_names if class_names is not None else list(classes)
    files: list[Path] = []
    labels: list[int] = []
    for name, paths in classes.items():
        if name not in names:
            raise DataError(
                f"{folder / name}: class folder not among the train classes ({', '.join(names)})"
            )
        files += paths
        labels += [names.index(name)] * len(paths)
    return files, labels, names


def looks_like_image_folder(root: Path) -> bool:
    """Whether ``root`` holds image files directly or one or two folder levels down."""
    root = Path(root)
    if not root.is_dir():
        return False
    for pattern in ("*", "*/*", "*/*/*"):
        for p in root.glob(pattern):
            rel = p.relative_to(root).parts
            if p.suffix.lower() in IMAGE_EXTENSIONS and not any(s.startswith(".") for s in rel):
                return True
    return False


def _common_size(files: list[Path], sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """The one (H, W) all images share; a DataError naming two that differ otherwise."""
    for path, size in zip(files, sizes):
        if size != sizes[0]:
            raise DataError(
                f"images differ in size: {files[0]} is {sizes[0][0]}x{sizes[0][1]} (H x W) but "
                f"{path} is {size[0]}x{size[1]}; pass --image-size N to resize every image to N x N"
            )
    return sizes[0]


def _listing(root: Path, paths: Sequence[Path], reasons: dict[Path, str] | None, limit: int) -> str:
    """``"a.png (reason), b/c.png (reason) and 3 more"``: paths relative to ``root``."""
    def name(p: Path) -> str:
        try:
            return printable(p.relative_to(root).as_posix())  # a name that is not UTF-8 as \xHH escapes
        except ValueError:
            return printable(str(p))

    shown = [name(p) + (f" ({reasons[p]})" if reasons is not None else "") for p in paths[:limit]]
    more = f" and {len(paths) - limit} more" if len(paths) > limit else ""
    return ", ".join(shown) + more


def bad_files_error(root: Path, bad: dict[Path, str], total: int, skip_bad: bool = False) -> DataError:
    """The one error that lists the bad files of an image folder (at most :data:`BAD_FILES_LISTED`).

    Args:
        root: the image folder.
        bad: path -> reason of every bad file.
        total: the number of image files found.
        skip_bad: whether they were being skipped (then too few good files remain).
    """
    paths = sorted(bad)
    advice = (
        "too few readable images remain" if skip_bad
        else "remove or fix them, or pass --skip-bad to leave them out"
    )
    return DataError(
        f"{root.resolve()}: {len(paths)} of {total} image files cannot be read: "
        f"{_listing(root, paths, bad, BAD_FILES_LISTED)}; {advice}"
    )


def _warn_skipped(root: Path, bad: dict[Path, str], total: int) -> None:
    """One stderr line: how many bad files were skipped, and the first few names."""
    paths = sorted(bad)
    print(
        f"warning: {root}: skipped {len(paths)} of {total} image files that cannot be read "
        f"(--skip-bad): {_listing(root, paths, None, SKIPPED_FILES_NAMED)}",
        file=sys.stderr,
    )


def _warn_merged(root: Path, merged: dict[Path, Path], total: int) -> None:
    """One stderr line: how many names of an already read file were merged into it, and the first few."""
    paths = sorted(merged)
    shown = [f"{_listing(root, [p], None, 1)} (= {_listing(root, [merged[p]], None, 1)})" for p in paths[:SKIPPED_FILES_NAMED]]
    more = f" and {len(paths) - SKIPPED_FILES_NAMED} more" if len(paths) > SKIPPED_FILES_NAMED else ""
    print(
        f"warning: {root}: merged {len(paths)} of {total} image files that are another file again (a link to it, "
        f"or the same bytes); each is read once, under its first name: {', '.join(shown)}{more}",
        file=sys.stderr,
    )
