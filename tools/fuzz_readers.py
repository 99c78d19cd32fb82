"""Fuzz the data readers: random and mutated IDX, CIFAR, image and .npz files.

Each target writes one generated file next to valid companions (a labels
file, the other CIFAR batches, two good images) and reads it with the public
reader (``load_path``, ``load_image_file``, ``load_folder``). The inputs are
random bytes and mutations of valid files: truncation, bit flips, bytes
overwritten, inserted or deleted, header bytes replaced, 32-bit fields set to
edge values (0, 1, 2**31 - 1, 2**32 - 1, ...), chunks duplicated. The only
outcomes allowed are

- the reader accepts the file and returns a well-formed data set, or
- it raises contrastkit's own error (:class:`~contrastkit.errors.ContrastkitError`)
  with a message that names the generated file;

and for an image folder read with ``skip_bad=True`` only the first: a bad file
is skipped, never fatal, while two good images remain. Anything else (a raw
``ValueError`` from numpy, an ``OSError`` from Pillow, a crash) is a failure.

Hypothesis generates the inputs. ``tests/test_fuzz_readers.py`` runs a short,
derandomised pass of every target in ``make test``; this script runs a longer
one and prints, per target, the number of inputs tried and the failures:

    python tools/fuzz_readers.py --examples 2000          # inputs per target
    python tools/fuzz_readers.py --minutes 5               # time budget, split over the targets
    python tools/fuzz_readers.py --minutes 5 --save fuzz-failures/   # keep failing inputs

Exit status 1 when any input failed. The counts of the last long run are in
docs/bad-inputs.md.
"""

from __future__ import annotations

import argparse
import gzip
import io
import pickle
import struct
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from PIL import Image

from contrastkit.data.decode import load_image_file
from contrastkit.data.folder import load_folder
from contrastkit.data.formats import load_path
from contrastkit.errors import ContrastkitError

IMAGE_SIZE = 8  # side the image targets resize to
MAX_RANDOM_BYTES = 2048  # longest purely random input
BATCH = 50  # inputs per hypothesis run in --minutes mode (each run gets the next seed)
EDGE_INTS = (0, 1, 2, 3, 255, 256, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


# ---------------------------------------------------------------- valid seed files


def idx_bytes(arr: np.ndarray) -> bytes:
    """An unsigned-byte IDX file: magic 00 00 08 ndim, big-endian uint32 dims, data."""
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()


def _rng() -> np.random.Generator:
    return np.random.default_rng(0)


IDX_IMAGES = _rng().integers(0, 256, size=(4, 5, 6), dtype=np.uint8)
IDX_LABELS = np.array([0, 1, 2, 1], dtype=np.uint8)


def idx_image_seeds() -> list[tuple[str, bytes]]:
    raw = idx_bytes(IDX_IMAGES)
    return [("raw", raw), ("gz", gzip.compress(raw, mtime=0))]


def idx_label_seeds() -> list[tuple[str, bytes]]:
    raw = idx_bytes(IDX_LABELS)
    return [("raw", raw), ("gz", gzip.compress(raw, mtime=0))]


def cifar_batch(n: int, seed: int) -> dict[bytes, object]:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"fuzz batch",
        b"labels": [int(v) for v in rng.integers(0, 10, size=n)],
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


CIFAR_META = {b"num_cases_per_batch": 3, b"label_names": [f"class_{i}".encode() for i in range(10)], b"num_vis": 3072}


def pickle_seeds(obj: object) -> list[tuple[str, bytes]]:
    """``obj`` pickled with protocols 0 (text), 2 (as the official archives) and 5 (out-of-band capable)."""
    return [(f"proto{p}", pickle.dumps(obj, protocol=p)) for p in (0, 2, 5)]


def image_seeds() -> list[tuple[str, bytes]]:
    """Small images of many modes and formats: (extension, file bytes)."""
    rng = _rng()
    rgb = Image.fromarray(rng.integers(0, 256, size=(5, 6, 3), dtype=np.uint8))
    gray16 = Image.fromarray(rng.integers(0, 65536, size=(5, 6), dtype=np.uint16))
    out: list[tuple[str, bytes]] = []

    def add(ext: str, im: Image.Image, fmt: str, **kw: object) -> None:
        buf = io.BytesIO()
        im.save(buf, format=fmt, **kw)
        out.append((ext, buf.getvalue()))

    for mode in ("L", "LA", "RGB", "RGBA", "1"):
        add(".png", rgb.convert(mode), "PNG")
    add(".png", rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=8), "PNG")
    add(".png", gray16, "PNG")
    add(".jpg", rgb, "JPEG", quality=90)
    add(".jpg", rgb.convert("L"), "JPEG")
    add(".jpg", rgb.convert("CMYK"), "JPEG")
    add(".webp", rgb, "WEBP")
    add(".bmp", rgb, "BMP")
    return out


def npz_seeds() -> list[tuple[str, bytes]]:
    rng = _rng()
    arrays = {"images": rng.integers(0, 256, size=(4, 5, 6), dtype=np.uint8), "labels": np.array([0, 1, 0, 1])}
    out = []
    for name, save in (("stored", np.savez), ("deflated", np.savez_compressed)):
        buf = io.BytesIO()
        save(buf, **arrays)
        out.append((name, buf.getvalue()))
    return out


# ---------------------------------------------------------------- mutations


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """``seed`` after one to four random edits (truncate, flip, overwrite, insert, delete, header, int32, dup)."""
    data = bytearray(seed)
    for op in draw(st.lists(st.sampled_from(
        ("truncate", "flip", "set", "insert", "delete", "header", "int32", "duplicate")), min_size=1, max_size=4)):
        n = len(data)
        pos = draw(st.integers(0, max(n - 1, 0)))
        if op == "truncate":
            data = data[:pos]
        elif op == "flip" and n:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and n:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            data[pos : pos + draw(st.integers(1, 16))] = b""
        elif op == "header":
            start = draw(st.integers(0, 31))
            data[start : start + 4] = draw(st.binary(min_size=4, max_size=4))
        elif op == "int32":
            value = draw(st.one_of(st.sampled_from(EDGE_INTS), st.integers(0, 0xFFFFFFFF)))
            order = draw(st.sampled_from((">I", "<I")))
            data[pos : pos + 4] = struct.pack(order, value)
        elif op == "duplicate" and n:
            chunk = data[pos : pos + draw(st.integers(1, 64))]
            at = draw(st.integers(0, n))
            data[at:at] = chunk
    return bytes(data)


def inputs(seeds: list[tuple[str, bytes]]) -> st.SearchStrategy[tuple[str, bytes]]:
    """(seed name, bytes): a mutated seed (most of the time), an unmodified one, or random bytes."""
    names = [name for name, _ in seeds]
    by_name = dict(seeds)
    return st.one_of(
        st.sampled_from(names).flatmap(lambda name: mutated(by_name[name]).map(lambda b: (name, b))),
        st.sampled_from(seeds),
        st.tuples(st.sampled_from(names), st.binary(max_size=MAX_RANDOM_BYTES)),
    )


# ---------------------------------------------------------------- targets


@dataclass
class Target:
    """One reader under fuzzing.

    Attributes:
        name: short name, as printed.
        what: the reader and how it is called.
        seeds: valid files to mutate: (name, bytes).
        setup: writes the valid companions into a fresh folder, once.
        run: writes one input into the folder and reads it (raises what the reader raises).
    """

    name: str
    what: str
    seeds: list[tuple[str, bytes]]
    setup: Callable[[Path], None]
    run: Callable[[Path, str, bytes], None]
    tried: int = 0
    failures: list[str] = field(default_factory=list)


def _idx_setup(folder: Path) -> None:
    (folder / "fuzz-images-idx3-ubyte").write_bytes(idx_bytes(IDX_IMAGES))
    (folder / "fuzz-labels-idx1-ubyte").write_bytes(idx_bytes(IDX_LABELS))


def _idx_images_run(folder: Path, seed: str, data: bytes) -> None:
    path = folder / "fuzz-images-idx3-ubyte"
    path.write_bytes(data)
    splits = load_path(path)
    _check_splits(splits)


def _idx_labels_run(folder: Path, seed: str, data: bytes) -> None:
    images = folder / "fuzz-images-idx3-ubyte"
    images.write_bytes(idx_bytes(IDX_IMAGES))
    labels = folder / "fuzz-labels-idx1-ubyte"
    labels.write_bytes(data)
    _check_splits(load_path(images))


def _cifar_setup(folder: Path) -> None:
    batches = folder / "cifar-10-batches-py"
    batches.mkdir()
    (batches / "data_batch_1").write_bytes(pickle.dumps(cifar_batch(3, 1), protocol=2))
    (batches / "test_batch").write_bytes(pickle.dumps(cifar_batch(2, 2), protocol=2))
    (batches / "batches.meta").write_bytes(pickle.dumps(CIFAR_META, protocol=2))


def _cifar_run(file: str) -> Callable[[Path, str, bytes], None]:
    """A run function that fuzzes one file of a CIFAR-10 folder."""

    def run(folder: Path, seed: str, data: bytes) -> None:
        batches = folder / "cifar-10-batches-py"
        _cifar_setup_files(batches)
        (batches / file).write_bytes(data)
        _check_splits(load_path(batches))

    return run


def _cifar_setup_files(batches: Path) -> None:
    """Restore the valid files (a previous input may have replaced one)."""
    for name, obj in (("data_batch_1", cifar_batch(3, 1)), ("test_batch", cifar_batch(2, 2)), ("batches.meta", CIFAR_META)):
        (batches / name).write_bytes(pickle.dumps(obj, protocol=2))


IMAGE_EXTENSIONS = {".png", ".jpg", ".webp", ".bmp"}


def _image_ext(seed: str) -> str:
    return seed if seed in IMAGE_EXTENSIONS else ".png"


def _clear_fuzz_files(folder: Path) -> None:
    for p in folder.glob("fuzz.*"):
        p.unlink()


def _image_file_run(folder: Path, seed: str, data: bytes) -> None:
    _clear_fuzz_files(folder)
    path = folder / f"fuzz{_image_ext(seed)}"
    path.write_bytes(data)
    t = load_image_file(path, 3, (IMAGE_SIZE, IMAGE_SIZE))
    if tuple(t.shape) != (3, IMAGE_SIZE, IMAGE_SIZE):
        raise AssertionError(f"load_image_file returned shape {tuple(t.shape)}")


def _folder_setup(folder: Path) -> None:
    root = folder / "images"
    root.mkdir()
    rng = _rng()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, size=(5, 6, 3), dtype=np.uint8)).save(root / f"good{i}.png")


def _folder_run(folder: Path, seed: str, data: bytes) -> None:
    root = folder / "images"
    _clear_fuzz_files(root)
    path = root / f"fuzz{_image_ext(seed)}"
    path.write_bytes(data)
    with _quiet_stderr():
        skipped = load_folder(root, image_size=IMAGE_SIZE, skip_bad=True)  # must never fail: 2 good images remain
    n = len(skipped.train) + len(skipped.test)
    if n not in (2, 3):
        raise AssertionError(f"skip_bad=True kept {n} of 3 images")
    _check_splits(load_folder(root))  # default: accept, or one error that names the file


def _npz_run(folder: Path, seed: str, data: bytes) -> None:
    path = folder / "fuzz.npz"
    path.write_bytes(data)
    _check_splits(load_path(path))


def _check_splits(splits: object) -> None:
    """A data set a reader returned must be well-formed."""
    for ds in (splits.train, splits.test):  # type: ignore[attr-defined]
        shape = tuple(ds.images.shape)
        if len(shape) != 4 or len(ds.sources) != shape[0]:
            raise AssertionError(f"malformed split {ds.name}: images {shape}, {len(ds.sources)} sources")
        if ds.labels is not None and len(ds.labels) != shape[0]:
            raise AssertionError(f"malformed split {ds.name}: {len(ds.labels)} labels for {shape[0]} images")


class _quiet_stderr:
    """Swallow the one-line --skip-bad warnings while fuzzing."""

    def __enter__(self) -> None:
        self._saved = sys.stderr
        sys.stderr = io.StringIO()

    def __exit__(self, *exc: object) -> None:
        sys.stderr = self._saved


def targets() -> list[Target]:
    """Every fuzz target, with its seeds."""
    return [
        Target("idx-images", "load_path(<images idx3 file>) with a valid labels file beside it",
               idx_image_seeds(), _idx_setup, _idx_images_run),
        Target("idx-labels", "load_path(<valid images>) with a fuzzed labels idx1 file beside it",
               idx_label_seeds(), _idx_setup, _idx_labels_run),
        Target("cifar-batch", "load_path(cifar-10-batches-py/) with a fuzzed data_batch_1 (restricted unpickler)",
               pickle_seeds(cifar_batch(3, 1)), _cifar_setup, _cifar_run("data_batch_1")),
        Target("cifar-meta", "load_path(cifar-10-batches-py/) with a fuzzed batches.meta",
               pickle_seeds(CIFAR_META), _cifar_setup, _cifar_run("batches.meta")),
        Target("image-file", f"load_image_file(<file>, 3, ({IMAGE_SIZE}, {IMAGE_SIZE})) (PNG/JPEG/WebP/BMP, all modes)",
               image_seeds(), lambda folder: None, _image_file_run),
        Target("image-folder", "load_folder(<2 good images + the file>) with and without skip_bad",
               image_seeds(), _folder_setup, _folder_run),
        Target("npz", "load_path(<file>.npz)", npz_seeds(), lambda folder: None, _npz_run),
    ]


# ---------------------------------------------------------------- checking one input


def outcome(target: Target, folder: Path, seed: str, data: bytes) -> str | None:
    """None when the reader accepted ``data`` or refused it properly; otherwise what went wrong."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's and numpy's own warnings are not failures
            target.run(folder, seed, data)
    except ContrastkitError as e:
        msg = str(e)
        if not msg.strip():
            return f"{type(e).__name__} with an empty message"
        expected = _names_for(target)
        if not any(n in msg for n in expected):
            return f"{type(e).__name__} does not name the file ({' or '.join(expected)}): {msg}"
        return None
    except Exception as e:  # anything else is what fuzzing is looking for
        tb = traceback.extract_tb(e.__traceback__)[-1]
        return f"{type(e).__name__} at {Path(tb.filename).name}:{tb.lineno}: {e}"
    return None


def _names_for(target: Target) -> list[str]:
    """File names an error of ``target`` may name (the fuzzed file; for image files any fuzz.<ext>)."""
    return {
        "idx-images": ["fuzz-images-idx3-ubyte"],
        "idx-labels": ["fuzz-labels-idx1-ubyte"],
        "cifar-batch": ["data_batch_1"],
        "cifar-meta": ["batches.meta"],
        "npz": ["fuzz.npz"],
    }.get(target.name, [f"fuzz{ext}" for ext in sorted(IMAGE_EXTENSIONS)])


def fuzz(
    target: Target, folder: Path, examples: int, seed: int | None = None, derandomize: bool = False,
    on_failure: Callable[[Target, str, bytes, str], None] | None = None,
) -> None:
    """Try ``examples`` generated inputs on ``target``; count them and record failures (never raises)."""

    @settings(max_examples=examples, deadline=None, database=None, derandomize=derandomize,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(inputs(target.seeds))
    def one(case: tuple[str, bytes]) -> None:
        name, data = case
        target.tried += 1
        problem = outcome(target, folder, name, data)
        if problem is not None:
            target.failures.append(problem)
            if on_failure is not None:
                on_failure(target, name, data, problem)

    if seed is not None and not derandomize:
        one = hypothesis_seed(seed)(one)
    one()


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """Run every target (or those named) for a number of inputs or minutes; print the counts."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--examples", type=int, default=None, help="inputs per target (default: 500)")
    budget.add_argument("--minutes", type=float, default=None, help="total time budget, split evenly over the targets")
    parser.add_argument("--only", default=None, help="comma-separated target names (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="first hypothesis seed; each batch uses the next one")
    parser.add_argument("--save", type=Path, default=None, help="write each failing input into this folder")
    args = parser.parse_args(argv)

    chosen = targets()
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {t.name for t in chosen}
        if unknown:
            parser.error(f"unknown targets {sorted(unknown)}; valid: {', '.join(t.name for t in chosen)}")
        chosen = [t for t in chosen if t.name in wanted]
    if args.save is not None:
        args.save.mkdir(parents=True, exist_ok=True)

    def save(target: Target, name: str, data: bytes, problem: str) -> None:
        if len(target.failures) == 1 or problem not in target.failures[:-1]:
            print(f"  FAIL {target.name} ({name}, {len(data)} bytes): {problem}", file=sys.stderr)
        if args.save is not None:
            (args.save / f"{target.name}-{len(target.failures):04d}-{name}.bin").write_bytes(data)

    start = time.monotonic()
    for target in chosen:
        with tempfile.TemporaryDirectory(prefix=f"contrastkit-fuzz-{target.name}-") as tmp:
            folder = Path(tmp)
            target.setup(folder)
            t0 = time.monotonic()
            if args.minutes is None:
                fuzz(target, folder, args.examples or 500, seed=args.seed, on_failure=save)
            else:
                deadline = t0 + args.minutes * 60 / len(chosen)
                batch = 0
                while time.monotonic() < deadline:
                    fuzz(target, folder, BATCH, seed=args.seed + batch, on_failure=save)
                    batch += 1
            seconds = time.monotonic() - t0
        print(f"{target.name:13} {target.tried:8d} inputs  {len(target.failures):4d} failures  "
              f"{seconds:7.1f} s  {target.what}")
    total = sum(t.tried for t in chosen)
    failed = sum(len(t.failures) for t in chosen)
    print(f"{'total':13} {total:8d} inputs  {failed:4d} failures  {time.monotonic() - start:7.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
