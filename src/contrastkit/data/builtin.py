"""Built-in data sets, loaded by name.

Names (:data:`BUILTIN_NAMES`):

- ``default``: the embedded default, used when no data is given. A
  stratified subset of real Fashion-MNIST, 1000 training and 200 test images
  per class (10000 / 2000, 1 x 28 x 28), shipped inside the package as
  ``embedded/fashion_mnist_subset.npz`` (source, licence and how it was drawn
  in ``embedded/NOTICE.txt``; made by ``tools/make_embedded_default.py``).
- ``fashion-mnist``: the full Fashion-MNIST (60000 / 10000).
- ``mnist``: the full MNIST (60000 / 10000).
- ``cifar10``, ``cifar100``: the full CIFAR sets (50000 / 10000, 3 x 32 x 32;
  CIFAR-100 with its 100 fine labels).
- ``digits``: scikit-learn's 8 x 8 handwritten digits (1797 images, no
  download), pixel values 0..16 scaled to 0..255, split 80 / 20 per class with
  a fixed seed.

Where files are looked for, in order (the first folder that holds the
complete set wins):

1. ``$CONTRASTKIT_DATA/<name>/``
2. ``cache_dir()/<name>/`` (``$XDG_CACHE_HOME/contrastkit`` or
   ``~/.cache/contrastkit``; the same folder as 1 when ``$CONTRASTKIT_DATA``
   is set)
3. for ``fashion-mnist`` also ``/usr/share/datasets/fashion-mnist`` (Debian
   package dataset-fashion-mnist)

For CIFAR the folder ``<name>/`` holds the extracted ``cifar-10-batches-py/``
(or ``cifar-100-python/``) or the official archive; ``cifar-10-batches-py/``
directly inside 1 or 2 is found too. When nothing is found the files are
downloaded into ``cache_dir()/<name>/`` from the official source and
verified by SHA-256 and by the publisher's MD5 before use.

Mirrors: set ``CONTRASTKIT_MIRROR_<NAME>`` (``<NAME>`` upper-cased with ``-``
as ``_``, e.g. ``CONTRASTKIT_MIRROR_FASHION_MNIST``) to a base URL that
serves the same file names; it replaces the official base URLs. Downloads
from a mirror are verified against the same digests, so a mirror cannot
substitute other data.

Checksums (:data:`REMOTE`), and how they were confirmed:

- Fashion-MNIST: the MD5s are those the Fashion-MNIST README and torchvision
  publish. The Debian copies in /usr/share/datasets/fashion-mnist differ from
  the official files only in their gzip header (file name dropped, time
  stamp set to the package date by Debian's build tools); restoring the
  header (name, mtime 2017-08-31) gives files whose MD5s equal the published
  ones, and the SHA-256s below were computed from those restored files
  (``tools/make_embedded_default.py --verify-official`` repeats the check).
  Other projects publish the same SHA-256s for the official files.
- MNIST: SHA-256s as several independent projects publish them (e.g.
  guild.ai's mnist package for the original site, scripts that fetch from
  each of the two mirrors below, all giving the same digests); MD5s as
  torchvision publishes them. Not computed here (no local copy).
- CIFAR-10 / CIFAR-100: SHA-256s as Keras (``keras.datasets.cifar10`` /
  ``cifar100``, ``file_hash``) and torchvision's prototype datasets publish
  them; MD5s as the CIFAR page and torchvision publish them. Not computed
  here (no local copy).
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from contrastkit.data.cifar import CIFAR10, CIFAR100, CifarLayout, extract_archive, is_cifar, load_cifar
from contrastkit.data.dataset import DataSplits, ImageDataset, split_dataset
from contrastkit.data.download import DATA_ENV, cache_dir, download
from contrastkit.data.idx import load_idx_dir
from contrastkit.errors import ConfigError, DataError

BUILTIN_NAMES = ("default", "fashion-mnist", "mnist", "cifar10", "cifar100", "digits")

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
DIGIT_CLASSES = [str(i) for i in range(10)]

EMBEDDED_PACKAGE = "contrastkit.data"
EMBEDDED_FILE = "fashion_mnist_subset.npz"  # inside the package folder embedded/
EMBEDDED_KEYS = ("train_images", "train_labels", "test_images", "test_labels", "class_names",
                 "train_indices", "test_indices")
MIRROR_ENV_PREFIX = "CONTRASTKIT_MIRROR_"
DIGITS_TEST_FRACTION = 0.2  # share of each class held out for testing
DIGITS_SEED = 0
IDX_STEMS = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True)
class RemoteFile:
    """One published file and its digests."""

    name: str  # file name, appended to a base URL
    sha256: str
    md5: str  # as the publisher states it; checked in addition to the SHA-256


@dataclass(frozen=True)
class RemoteSet:
    """Where a built-in data set is published."""

    base_urls: tuple[str, ...]  # tried in order; each ends with "/"
    files: tuple[RemoteFile, ...]


REMOTE: dict[str, RemoteSet] = {
    "fashion-mnist": RemoteSet(
        # The Zalando file server listed in the Fashion-MNIST README.
        base_urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        files=(
            RemoteFile("train-images-idx3-ubyte.gz",
                       "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                       "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
            RemoteFile("train-labels-idx1-ubyte.gz",
                       "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                       "25c81989df183df01b3e8a0aad5dffbe"),
            RemoteFile("t10k-images-idx3-ubyte.gz",
                       "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                       "bef4ecab320f06d8554ea6380940ec79"),
            RemoteFile("t10k-labels-idx1-ubyte.gz",
                       "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                       "bb300cfdad3c16e7a12a480ee83cd310"),
        ),
    ),
    "mnist": RemoteSet(
        # The mirrors torchvision and TensorFlow Datasets use (the original site now refuses scripts).
        base_urls=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        files=(
            RemoteFile("train-images-idx3-ubyte.gz",
                       "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                       "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            RemoteFile("train-labels-idx1-ubyte.gz",
                       "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                       "d53e105ee54ea40749a09fcbcd1e9432"),
            RemoteFile("t10k-images-idx3-ubyte.gz",
                       "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                       "9fb629c4189551a2d022fa330f9573f3"),
            RemoteFile("t10k-labels-idx1-ubyte.gz",
                       "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                       "ec29112dd5afa0611ce80d1b7f02629c"),
        ),
    ),
    "cifar10": RemoteSet(
        base_urls=("https://www.cs.toronto.edu/~kriz/",),
        files=(
            RemoteFile("cifar-10-python.tar.gz",
                       "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
                       "c58f30108f718f92721af3b95e74349a"),
        ),
    ),
    "cifar100": RemoteSet(
        base_urls=("https://www.cs.toronto.edu/~kriz/",),
        files=(
            RemoteFile("cifar-100-python.tar.gz",
                       "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
                       "eb9058c3a382ffc7106e4002c42a8d85"),
        ),
    ),
}

# Folders outside contrastkit's own that may hold a set (checked after the data and cache folders).
SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}

CIFAR_LAYOUTS: dict[str, CifarLayout] = {"cifar10": CIFAR10, "cifar100": CIFAR100}


# ---------------------------------------------------------------- where to look


def mirror_env(name: str) -> str:
    """The environment variable that overrides the download base URL of ``name``."""
    return MIRROR_ENV_PREFIX + name.upper().replace("-", "_")


def base_urls(name: str) -> tuple[str, ...]:
    """Base URLs to download ``name`` from: the mirror variable if set, else the official ones."""
    mirror = os.environ.get(mirror_env(name))
    if mirror:
        return (mirror if mirror.endswith("/") else mirror + "/",)
    return REMOTE[name].base_urls


def data_roots() -> list[Path]:
    """contrastkit's own data folders, in lookup order: ``$CONTRASTKIT_DATA``, then :func:`cache_dir`."""
    roots: list[Path] = []
    env = os.environ.get(DATA_ENV)
    for root in ([Path(env).expanduser()] if env else []) + [cache_dir()]:
        if root not in roots:
            roots.append(root)
    return roots


def _fetch(name: str, folder: Path, progress: bool) -> None:
    """Download every file of ``name`` into ``folder`` (files already there and verified are kept)."""
    for remote in REMOTE[name].files:
        urls = [base + remote.name for base in base_urls(name)]
        for i, url in enumerate(urls):
            try:
                download(url, folder / remote.name, remote.sha256, md5=remote.md5, progress=progress)
                break
            except DataError:
                if i == len(urls) - 1:
                    raise


def _not_found(name: str, looked: list[Path], files: list[str]) -> DataError:
    """The error for a set that is nowhere on disk while downloads are off."""
    return DataError(
        f"built-in data set '{name}' was not found and downloads are off; looked in "
        + ", ".join(str(p) for p in looked)
        + f". Place {', '.join(files)} in {looked[0]}, or allow the download"
    )


# ---------------------------------------------------------------- loaders


def _named(splits: DataSplits, name: str, folder: Path) -> DataSplits:
    """Give both splits the data set's name and record where it came from."""
    splits.train.name = f"{name}:train"
    splits.test.name = f"{name}:test"
    splits.info = {"format": "builtin", "name": name, "path": str(folder)}
    return splits


def _has_idx_set(folder: Path) -> bool:
    """Whether ``folder`` holds all four MNIST-layout files (raw or .gz)."""
    return all((folder / s).is_file() or (folder / f"{s}.gz").is_file() for s in IDX_STEMS)


def _load_idx_set(name: str, class_names: list[str], allow_download: bool, progress: bool) -> DataSplits:
    """Fashion-MNIST or MNIST from the first folder that holds it, else downloaded into the cache."""
    candidates = [root / name for root in data_roots()] + list(SYSTEM_DIRS.get(name, ()))
    for folder in candidates:
        if _has_idx_set(folder):
            return _named(load_idx_dir(folder, class_names), name, folder)
    folder = cache_dir() / name
    if not allow_download:
        raise _not_found(name, candidates, [f.name for f in REMOTE[name].files])
    _fetch(name, folder, progress)
    return _named(load_idx_dir(folder, class_names), name, folder)


def _load_cifar_set(name: str, allow_download: bool, progress: bool) -> DataSplits:
    """CIFAR-10/100 from an extracted folder, else from the archive in the cache (downloaded if needed)."""
    layout = CIFAR_LAYOUTS[name]
    candidates = []
    for root in data_roots():
        candidates += [root / name / layout.folder, root / layout.folder]
    for folder in candidates:
        if folder.is_dir() and is_cifar(folder):
            splits = load_cifar(folder)
            if splits.info.get("format") != name:
                raise DataError(f"{folder}: holds {splits.info.get('format')}, expected {name}")
            return _named(splits, name, folder)
    home = cache_dir() / name
    archive = home / REMOTE[name].files[0].name
    if not allow_download and not archive.is_file():
        raise _not_found(name, [home, *candidates], [archive.name])
    if allow_download:
        _fetch(name, home, progress)  # keeps a hand-placed archive whose digest is right
    folder = extract_archive(archive, home)
    return _named(load_cifar(folder), name, folder)


def load_default() -> DataSplits:
    """The embedded Fashion-MNIST subset (10000 train / 2000 test, 1 x 28 x 28).

    Item sources are ``"fashion-mnist:<split>:<index in the original file>"``.
    """
    ref = resources.files(EMBEDDED_PACKAGE).joinpath("embedded", EMBEDDED_FILE)
    where = f"{EMBEDDED_PACKAGE}/embedded/{EMBEDDED_FILE}"
    try:
        raw = ref.read_bytes()
    except OSError as e:
        raise DataError(
            f"{where}: the embedded default data set is missing from the installed package ({e}); "
            "reinstall contrastkit"
        ) from e
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            arrays = {k: z[k] for k in EMBEDDED_KEYS}
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
        raise DataError(f"{where}: the embedded default data set is corrupt ({e}); reinstall contrastkit") from e
    class_names = [str(n) for n in arrays["class_names"]]
    splits = []
    for split in ("train", "test"):
        x = arrays[f"{split}_images"]  # (N, 28, 28)
        y = arrays[f"{split}_labels"]  # (N,)
        idx = arrays[f"{split}_indices"]  # (N,) positions in the original files
        splits.append(
            ImageDataset(
                images=torch.from_numpy(x).unsqueeze(1),  # (N, 28, 28) -> (N, 1, 28, 28)
                labels=torch.from_numpy(y.astype(np.int64)),
                class_names=class_names,
                sources=[f"fashion-mnist:{split}:{i}" for i in idx.tolist()],
                name=f"default:{split}",
            )
        )
    info = {"format": "builtin", "name": "default", "path": where}
    return DataSplits(train=splits[0], test=splits[1], info=info)


def load_digits_splits() -> DataSplits:
    """scikit-learn's 8 x 8 digits as uint8 (0..16 scaled to 0..255), split 80 / 20 per class."""
    from sklearn.datasets import load_digits  # imported here: scikit-learn is slow to import

    d = load_digits()
    x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8), 0..16 -> 0..255
    ds = ImageDataset(
        images=torch.from_numpy(x).unsqueeze(1),  # (N, 8, 8) -> (N, 1, 8, 8)
        labels=torch.from_numpy(d.target.astype(np.int64)),
        class_names=list(DIGIT_CLASSES),
        sources=[f"digits:{i}" for i in range(len(x))],
        name="digits",
    )
    splits = split_dataset(ds, fraction=DIGITS_TEST_FRACTION, seed=DIGITS_SEED)
    splits.info = {"format": "builtin", "name": "digits", "path": "sklearn.datasets.load_digits"}
    return splits


def load_builtin(name: str, *, allow_download: bool = True, progress: bool = True) -> DataSplits:
    """Load a built-in data set by name (see the module docstring for where files are found).

    Args:
        name: one of :data:`BUILTIN_NAMES`.
        allow_download: fetch the files from the official source (or the
            ``CONTRASTKIT_MIRROR_<NAME>`` mirror) when they are not found.
        progress: show download progress bars on stderr.

    Returns:
        Train and test splits with uint8 images, int64 labels and class names.

    Raises:
        ConfigError: unknown name (the message lists :data:`BUILTIN_NAMES`).
        DataError: the files are not found and cannot be downloaded, fail
            verification, or are malformed.
    """
    if name == "default":
        return load_default()
    if name == "digits":
        return load_digits_splits()
    if name == "fashion-mnist":
        return _load_idx_set(name, list(FASHION_MNIST_CLASSES), allow_download, progress)
    if name == "mnist":
        return _load_idx_set(name, list(DIGIT_CLASSES), allow_download, progress)
    if name in CIFAR_LAYOUTS:
        return _load_cifar_set(name, allow_download, progress)
    raise ConfigError(f"unknown built-in data set '{name}'; valid names: {', '.join(BUILTIN_NAMES)}")
