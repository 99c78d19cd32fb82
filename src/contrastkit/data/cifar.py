"""Reader for the CIFAR-10 and CIFAR-100 "python version" batches.

The official archives (https://www.cs.toronto.edu/~kriz/cifar.html) hold
Python pickles of dicts with bytes keys: ``b'data'``, a uint8 array (N, 3072)
whose rows are the 1024 red, then 1024 green, then 1024 blue pixels of a
32 x 32 image in row-major order, and ``b'labels'`` (CIFAR-10) or
``b'fine_labels'`` (CIFAR-100), a list of N ints. The class names are in the
meta file (``batches.meta``: ``b'label_names'``; ``meta``:
``b'fine_label_names'``).

Layouts::

    cifar-10-batches-py/  data_batch_1 .. data_batch_5, test_batch, batches.meta
    cifar-100-python/     train, test, meta

A pickle can run any function it names, so every pickle is read with
:class:`RestrictedUnpickler`, which resolves only the few globals that numpy
arrays need to rebuild themselves (see :data:`ALLOWED_GLOBALS`); any other
global is refused before anything is called. Archives (``.tar.gz``) are
extracted by :func:`extract_archive`, which refuses links, devices, absolute
paths and ``..`` before writing anything.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import tarfile
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from contrastkit.atomic import give_plain_mode
from contrastkit.data.dataset import DataSplits, ImageDataset
from contrastkit.errors import DataError
from contrastkit.paths import join_inside

IMAGE_SHAPE = (3, 32, 32)  # (C, H, W)
ROW_BYTES = 3 * 32 * 32  # one image per row of b'data'


@dataclass(frozen=True)
class CifarLayout:
    """File names and keys of one CIFAR variant."""

    name: str  # data set name, "cifar10" / "cifar100"
    folder: str  # the folder the official archive unpacks to
    train: tuple[str, ...]  # training batch files, in order
    test: str
    meta: str
    labels_key: bytes
    names_key: bytes


CIFAR10 = CifarLayout(
    name="cifar10",
    folder="cifar-10-batches-py",
    train=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test="test_batch",
    meta="batches.meta",
    labels_key=b"labels",
    names_key=b"label_names",
)
CIFAR100 = CifarLayout(
    name="cifar100",
    folder="cifar-100-python",
    train=("train",),
    test="test",
    meta="meta",
    labels_key=b"fine_labels",
    names_key=b"fine_label_names",
)
LAYOUTS = (CIFAR10, CIFAR100)


# ---------------------------------------------------------------- unpickling


class _Refused(Exception):
    """A pickle asked for something the restricted unpickler does not allow."""


def _plain_dtype(obj: Any, align: bool = False, copy: bool = False) -> np.dtype:
    """``numpy.dtype`` for plain (non-object) types only."""
    dt = np.dtype(obj, align, copy)
    if dt.hasobject:
        raise _Refused(f"refused an object dtype ({dt}): object arrays could hold arbitrary Python objects")
    return dt


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes: latin-1 only."""
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise _Refused(f"refused _codecs.encode with codec {encoding!r} (only latin1 is used for bytes)")
    return text.encode("latin1", errors)


def _plain_only(func: Callable[..., Any], dtype_arg: int) -> Callable[..., Any]:
    """Wrap a numpy reconstructor so it refuses an object dtype in argument ``dtype_arg``.

    The dtype may arrive as a type code (``b'O'``) that never passes through
    the ``numpy.dtype`` entry of the allow-list.
    """

    def wrapper(*args: Any) -> Any:
        if len(args) > dtype_arg:
            try:
                has_object = np.dtype(args[dtype_arg]).hasobject
            except (TypeError, ValueError):
                has_object = False  # not a dtype at all: numpy itself will refuse it
            if has_object:
                raise _Refused(f"refused an object dtype ({args[dtype_arg]!r}) in {func.__name__}")
        return func(*args)

    return wrapper


def _numpy_functions() -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
    """numpy's (_reconstruct, scalar, _frombuffer), taken from numpy's own reducers.

    Asking numpy how it pickles an array finds these functions under numpy 1.x
    and 2.x alike, without importing the deprecated ``numpy.core`` alias.
    """
    a = np.zeros(1, dtype=np.uint8)
    reconstruct = a.__reduce__()[0]
    scalar = np.uint8(0).__reduce__()[0]
    frombuffer = a.__reduce_ex__(5)[0]
    return reconstruct, scalar, frombuffer


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The allow-list; each entry maps a name a pickle may use to the object it gets."""
    reconstruct, scalar, frombuffer = _numpy_functions()
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _plain_dtype,
        # Protocol <= 2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1").
        ("_codecs", "encode"): _latin1_encode,
    }
    # numpy 1.x pickles name numpy.core.*, numpy 2.x pickles name numpy._core.*.
    for core in ("numpy.core", "numpy._core"):
        # _reconstruct(subtype, shape, dtype), scalar(dtype, data), _frombuffer(buf, dtype, shape, order)
        allowed[(f"{core}.multiarray", "_reconstruct")] = _plain_only(reconstruct, 2)
        allowed[(f"{core}.multiarray", "scalar")] = _plain_only(scalar, 0)
        allowed[(f"{core}.numeric", "_frombuffer")] = _plain_only(frombuffer, 1)  # protocol 5
    return allowed


ALLOWED_GLOBALS: Mapping[tuple[str, str], Any] = MappingProxyType(_allowed_globals())
"""(module, name) -> object: everything a CIFAR pickle may reference.

Lists, dicts, tuples, bytes, str, ints, floats, bools and None need no global.
"""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS`.

    Every way a pickle reaches a callable (GLOBAL, STACK_GLOBAL, INST, OBJ,
    the extension registry) goes through :meth:`find_class`, so refusing there
    means nothing else in the pickle is ever called.
    """

    def find_class(self, module: str, name: str) -> Any:
        """The allowed object for ``module.name``; anything else is refused."""
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _Refused(
                f"refused to load global '{module}.{name}': CIFAR pickles may only reference "
                "numpy array internals (numpy.ndarray, numpy.dtype, numpy.core.multiarray._reconstruct, ...)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        """Persistent ids are never used by CIFAR pickles."""
        raise _Refused("refused a persistent id (not used by CIFAR pickles)")


def load_pickle(path: Path) -> Any:
    """Read one pickle file with :class:`RestrictedUnpickler` (``encoding='bytes'``).

    Raises:
        DataError: the file cannot be read, is not a valid pickle, or
            references a global outside :data:`ALLOWED_GLOBALS` (the message
            names the file and the refused global).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read CIFAR batch ({e.strerror or e})") from e
    try:
        # Parse every opcode first without running any: a length field that claims more bytes
        # than the file holds is refused here, before the unpickler would try to allocate them.
        for _ in pickletools.genops(data):
            pass
    except Exception as e:  # ValueError / EOFError / struct.error from malformed opcodes
        raise DataError(f"{path}: not a valid CIFAR pickle ({type(e).__name__}: {e})") from None
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _Refused as e:
        raise DataError(f"{path}: {e}") from None
    except Exception as e:  # untrusted bytes: any failure to parse is a data error
        raise DataError(f"{path}: not a valid CIFAR pickle ({type(e).__name__}: {e})") from e


# ---------------------------------------------------------------- batches


def _as_dict(obj: Any, path: Path) -> dict[bytes, Any]:
    """The unpickled dict with all keys as bytes (str keys are encoded)."""
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    out: dict[bytes, Any] = {}
    for k, v in obj.items():
        if isinstance(k, str):
            k = k.encode("utf-8")
        if isinstance(k, bytes):
            out[k] = v
    return out


def _key(d: dict[bytes, Any], key: bytes, path: Path) -> Any:
    """``d[key]``, or a DataError naming the file, the key and the keys present."""
    if key not in d:
        have = ", ".join(repr(k) for k in sorted(d)) or "none"
        raise DataError(f"{path}: missing key {key!r} (keys present: {have})")
    return d[key]


def read_batch(path: Path, labels_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one batch file.

    Args:
        path: the batch pickle.
        labels_key: ``b'labels'`` (CIFAR-10) or ``b'fine_labels'`` (CIFAR-100).

    Returns:
        (images uint8 (N, 3, 32, 32), labels int64 (N,)).
    """
    d = _as_dict(load_pickle(path), path)
    data = _key(d, b"data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        what = f"{data.dtype} array" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: b'data' must be a uint8 array, got {what}")
    if data.ndim != 2 or data.shape[1] != ROW_BYTES:
        raise DataError(
            f"{path}: b'data' has shape {data.shape}, expected (N, {ROW_BYTES}) "
            "(one 3 x 32 x 32 image per row)"
        )
    raw = _key(d, labels_key, path)
    try:
        labels = np.asarray(raw)
    except (ValueError, TypeError) as e:
        raise DataError(f"{path}: {labels_key!r} is not a list of integers ({e})") from e
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise DataError(
            f"{path}: {labels_key!r} must be a flat list of integers, got {labels.dtype} {labels.shape}"
        )
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} entries in {labels_key!r}")
    images = np.ascontiguousarray(data).reshape(len(data), *IMAGE_SHAPE)  # (N, 3072) -> (N, 3, 32, 32)
    return images, labels.astype(np.int64)


def read_class_names(path: Path, names_key: bytes) -> list[str]:
    """Class names from a CIFAR meta file."""
    d = _as_dict(load_pickle(path), path)
    names = _key(d, names_key, path)
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (bytes, str)) for n in names):
        raise DataError(f"{path}: {names_key!r} must be a list of strings")
    if not names:
        raise DataError(f"{path}: {names_key!r} is empty")
    return [n.decode("utf-8", errors="replace") if isinstance(n, bytes) else n for n in names]


# ---------------------------------------------------------------- folders


def _train_files(folder: Path, layout: CifarLayout) -> list[str]:
    """The training batch files present; CIFAR-10 may hold fewer than 5, in order from 1."""
    present = [name for name in layout.train if (folder / name).is_file()]
    if present != list(layout.train[: len(present)]):
        raise DataError(
            f"{folder}: training batches must be {', '.join(layout.train[:len(present) + 1])}..., "
            f"found {', '.join(present)}"
        )
    return present


def _layout_of(folder: Path) -> CifarLayout | None:
    """The layout whose test batch, meta file and first training batch ``folder`` holds."""
    for layout in LAYOUTS:
        need = (layout.train[0], layout.test, layout.meta)
        if all((folder / f).is_file() for f in need):
            return layout
    return None


def _resolve_folder(path: Path) -> tuple[Path, CifarLayout] | None:
    """(batches folder, layout) for a batches folder or a folder that contains one."""
    if not path.is_dir():
        return None
    layout = _layout_of(path)
    if layout is not None:
        return path, layout
    for layout in LAYOUTS:
        sub = path / layout.folder
        if sub.is_dir() and _layout_of(sub) is layout:
            return sub, layout
    return None


def _archive_layout(path: Path) -> CifarLayout | None:
    """The layout an archive unpacks to, judged by its first member (reads only its start)."""
    try:
        if not path.is_file() or not tarfile.is_tarfile(path):
            return None
        with tarfile.open(path, "r:*") as tar:
            first = tar.next()
    except (tarfile.TarError, OSError, EOFError):
        return None
    if first is None:
        return None
    top = PurePosixPath(first.name).parts[:1]
    for layout in LAYOUTS:
        if top == (layout.folder,):
            return layout
    return None


def is_cifar(path: Path) -> bool:
    """Whether ``path`` is a CIFAR batches folder, a folder holding one, or an official archive."""
    path = Path(path)
    return _resolve_folder(path) is not None or _archive_layout(path) is not None


def _check_member(member: tarfile.TarInfo, archive: Path, dest: Path) -> Path:
    """The extraction target of a plain file or folder at a relative path; anything else is refused."""
    name = member.name
    target = join_inside(dest, name, f"{archive}: archive member")  # absolute, '..', or through a link
    if not (member.isfile() or member.isdir()):
        kind = "link" if member.issym() or member.islnk() else "special file"
        raise DataError(f"{archive}: refused archive member '{name}': a {kind}, not a regular file")
    return target


def extract_archive(archive: Path, dest: Path) -> Path:
    """Safely extract an official CIFAR archive into ``dest``.

    Every member is checked before anything is written: absolute paths,
    ``..`` components, links and special files are refused. Each file is
    written under a temporary name and renamed into place, so an interrupted
    extraction never leaves a truncated batch.

    Args:
        archive: ``cifar-10-python.tar.gz`` or ``cifar-100-python.tar.gz``.
        dest: the folder to extract into (created if needed).

    Returns:
        The extracted batches folder (``dest/cifar-10-batches-py`` or
        ``dest/cifar-100-python``).
    """
    archive, dest = Path(archive), Path(dest)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            targets = [_check_member(m, archive, dest) for m in members]
            dest.mkdir(parents=True, exist_ok=True)
            for m, target in zip(members, targets):
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                if src is None:
                    raise DataError(f"{archive}: cannot read archive member '{m.name}'")
                fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
                give_plain_mode(fd)  # mkstemp makes it 0600; extracted files get a plain open()'s mode
                try:
                    with os.fdopen(fd, "wb") as out:
                        while block := src.read(1 << 20):
                            out.write(block)
                    os.replace(tmp, target)
                finally:
                    Path(tmp).unlink(missing_ok=True)
    except (tarfile.TarError, EOFError) as e:
        raise DataError(f"{archive}: not a readable .tar.gz archive ({e})") from e
    except OSError as e:
        raise DataError(f"{archive}: cannot extract into {dest} ({e.strerror or e})") from e
    found = _resolve_folder(dest)
    if found is None:
        raise DataError(
            f"{archive}: the archive holds no CIFAR batches (expected a folder "
            f"{' or '.join(layout.folder for layout in LAYOUTS)} with its batch and meta files)"
        )
    return found[0]


def _load_folder(folder: Path, layout: CifarLayout, origin: Path) -> DataSplits:
    """Read every batch of an extracted folder; ``origin`` is the path the user gave."""
    class_names = read_class_names(folder / layout.meta, layout.names_key)
    parts = []
    sources: list[str] = []
    for name in _train_files(folder, layout):
        x, y = read_batch(folder / name, layout.labels_key)
        parts.append((x, y))
        sources.extend(f"{name}:{i}" for i in range(len(x)))
    x_test, y_test = read_batch(folder / layout.test, layout.labels_key)
    x_train = np.concatenate([p[0] for p in parts])  # (N_train, 3, 32, 32)
    if len(x_train) == 0:
        names = ", ".join(_train_files(folder, layout))
        raise DataError(f"{folder}: the training batches ({names}) hold no images")
    if len(x_test) == 0:
        raise DataError(f"{folder / layout.test}: the test batch holds no images")
    y_train = np.concatenate([p[1] for p in parts])
    for y, file in ((y_train, layout.train[0]), (y_test, layout.test)):
        if len(y) and (y.min() < 0 or y.max() >= len(class_names)):
            raise DataError(
                f"{folder / file}: label values {int(y.min())}..{int(y.max())} are out of range "
                f"for the {len(class_names)} class names in {layout.meta}"
            )
    train = ImageDataset(
        images=torch.from_numpy(x_train),
        labels=torch.from_numpy(y_train),
        class_names=class_names,
        sources=sources,
        name=f"{layout.name}:train",
    )
    test = ImageDataset(
        images=torch.from_numpy(x_test),
        labels=torch.from_numpy(y_test),
        class_names=class_names,
        sources=[f"{layout.test}:{i}" for i in range(len(x_test))],
        name=f"{layout.name}:test",
    )
    return DataSplits(train=train, test=test, info={"format": layout.name, "path": str(origin)})


def _load_extracted(folder: Path, archive: Path) -> DataSplits:
    """Read the batches folder that :func:`extract_archive` returned."""
    found = _resolve_folder(folder)
    assert found is not None, "extract_archive returns a batches folder"
    return _load_folder(found[0], found[1], archive)


def load_cifar(path: Path, *, extract_to: Path | None = None) -> DataSplits:
    """Read CIFAR-10 or CIFAR-100 from a batches folder or an official archive.

    Args:
        path: ``cifar-10-batches-py/`` or ``cifar-100-python/``, a folder
            containing one of them, or the official ``.tar.gz`` archive.
        extract_to: where to extract an archive; a temporary folder (deleted
            after reading) when None.

    Returns:
        train (the data batches) and test (the test batch) with uint8 images
        (N, 3, 32, 32), int64 labels (fine labels for CIFAR-100) and the class
        names of the meta file. Item sources are ``"<batch file>:<row>"``.

    Raises:
        DataError: not a CIFAR folder or archive, or a file in it is malformed
            or refused (see :func:`load_pickle`).
    """
    path = Path(path)
    found = _resolve_folder(path)
    if found is not None:
        return _load_folder(found[0], found[1], path)
    if path.is_file():
        if _archive_layout(path) is None:
            raise DataError(
                f"{path}: not a CIFAR archive (expected cifar-10-python.tar.gz or "
                "cifar-100-python.tar.gz as published)"
            )
        if extract_to is not None:
            return _load_extracted(extract_archive(path, extract_to), path)
        with tempfile.TemporaryDirectory(prefix="contrastkit-cifar-") as tmp:
            return _load_extracted(extract_archive(path, Path(tmp)), path)
    expected = "; ".join(
        f"{lay.folder}/ with {', '.join((lay.train[0], lay.test, lay.meta))}" for lay in LAYOUTS
    )
    raise DataError(f"{path}: not a CIFAR folder or archive (expected {expected})")
