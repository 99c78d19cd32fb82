"""Make the embedded default data set: a stratified subset of real Fashion-MNIST.

Reads the four official Fashion-MNIST IDX files (by default from the Debian
package dataset-fashion-mnist, /usr/share/datasets/fashion-mnist), draws
1000 training and 200 test images per class with a fixed seed, and writes

    src/contrastkit/data/embedded/fashion_mnist_subset.npz
    src/contrastkit/data/embedded/NOTICE.txt

The .npz holds plain arrays only (no pickle): train_images (10000, 28, 28),
train_labels (10000,), test_images (2000, 28, 28), test_labels (2000,), all
uint8; class_names (10,) unicode; train_indices / test_indices (int32), the
positions of the chosen items in the original files. It is a normal numpy
.npz (a zip of .npy files, read with np.load) but written with fixed zip
timestamps, so running this script again gives a byte-identical file.

With --verify-official it only checks that the source files are the official
ones: it rebuilds the official gzip header on each Debian copy and compares
the result with the published MD5s and the SHA-256s in contrastkit.data.builtin.

Usage:
    python tools/make_embedded_default.py [--source DIR] [--out DIR] [--verify-official]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np

from contrastkit.data.idx import read_idx_images, read_idx_labels

SEED = 0  # numpy.random.default_rng seed for the draw
TRAIN_PER_CLASS = 1000
TEST_PER_CLASS = 200
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "contrastkit" / "data" / "embedded"
NPZ_NAME = "fashion_mnist_subset.npz"
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed timestamps make the file reproducible byte for byte

LICENSE = """\
The MIT License (MIT) Copyright © 2017 Zalando SE, https://tech.zalando.com

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated documentation files (the “Software”), to deal in the Software without restriction, including without limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED “AS IS”, WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


# The official .gz files carry the original file name and these time stamps in
# their gzip header (found by restoring the header of the Debian copies until the
# MD5 matched the published one); Debian's copies drop the name and reset the time.
OFFICIAL_GZIP_MTIME = {
    "train-images-idx3-ubyte.gz": 1504176606,  # 2017-08-31 10:50:06 UTC
    "train-labels-idx1-ubyte.gz": 1504176606,
    "t10k-images-idx3-ubyte.gz": 1504176627,  # 2017-08-31 10:50:27 UTC
    "t10k-labels-idx1-ubyte.gz": 1504176627,
}


def official_gzip(debian_gz: Path) -> bytes:
    """The official file rebuilt from a Debian copy: same deflate stream, official gzip header.

    A gzip header is ID1 ID2 CM FLG MTIME(4, little-endian) XFL OS [FNAME NUL]
    (RFC 1952). The official files set FLG.FNAME and store the name without
    ``.gz``; everything after the header is identical.
    """
    data = debian_gz.read_bytes()
    if data[:4] != b"\x1f\x8b\x08\x00":
        raise SystemExit(f"{debian_gz}: expected a gzip header without a file name")
    name = debian_gz.name
    header = b"\x1f\x8b\x08\x08" + OFFICIAL_GZIP_MTIME[name].to_bytes(4, "little") + data[8:10]
    return header + name[:-3].encode() + b"\x00" + data[10:]


def verify_official(source: Path) -> None:
    """Check the Debian copies against the published MD5s and the SHA-256s contrastkit downloads with."""
    from contrastkit.data.builtin import REMOTE

    for remote in REMOTE["fashion-mnist"].files:
        data = official_gzip(source / remote.name)
        md5 = hashlib.md5(data).hexdigest()
        sha = hashlib.sha256(data).hexdigest()
        ok = md5 == remote.md5 and sha == remote.sha256
        print(f"{remote.name}: md5 {md5} sha256 {sha} {'OK' if ok else 'MISMATCH'}")
        if not ok:
            raise SystemExit(f"{source / remote.name} is not the official file")


def stratified_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` indices of every class 0..9 drawn without replacement, sorted.

    Classes are drawn in order 0..9 from one generator, so the result depends
    only on the labels and the generator's state.
    """
    chosen = []
    for c in range(len(CLASS_NAMES)):
        pool = np.flatnonzero(labels == c)
        if len(pool) < per_class:
            raise SystemExit(f"class {c} has only {len(pool)} items, need {per_class}")
        chosen.append(rng.choice(pool, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int32)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An .npz (zip of .npy, deflated) with fixed timestamps, no pickled objects."""
    with zipfile.ZipFile(path, "w") as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_TIME)
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)


def notice(source: Path, digests: dict[str, str], npz_sha: str) -> str:
    """The NOTICE text: source, licence, how the subset was drawn."""
    lines = [
        "contrastkit embedded default data set: fashion_mnist_subset.npz",
        "",
        "Source",
        "------",
        "A subset of Fashion-MNIST by Zalando Research (Han Xiao, Kashif Rasul,",
        "Roland Vollgraf), https://github.com/zalandoresearch/fashion-mnist,",
        "described in arXiv:1708.07747. Fashion-MNIST is distributed under the",
        "MIT licence reproduced below; the subset is redistributed under the same",
        "licence and keeps its copyright notice.",
        "",
        "How the subset was drawn",
        "------------------------",
        "tools/make_embedded_default.py read the four official IDX files from",
        f"{source} (Debian package dataset-fashion-mnist)",
        f"and, with numpy.random.default_rng({SEED}), drew for each class 0..9 in",
        f"turn {TRAIN_PER_CLASS} training images without replacement, then for each",
        f"class {TEST_PER_CLASS} test images. The chosen items keep the order they have in",
        "the original files; their positions there are stored as train_indices",
        "and test_indices. Pixels and labels are unchanged.",
        "",
        "SHA-256 of the decompressed source files (the same as those of the",
        "official downloads: the Debian .gz files differ from the official ones",
        "only in their gzip header, and with the official header restored they",
        "match the MD5s published in the Fashion-MNIST README byte for byte):",
    ]
    lines += [f"  {name[:-3]}  {digest}" for name, digest in digests.items()]
    lines += [
        "",
        f"SHA-256 of fashion_mnist_subset.npz: {npz_sha}",
        "",
        "Class names: " + ", ".join(CLASS_NAMES),
        "",
        "Fashion-MNIST licence",
        "---------------------",
        LICENSE,
    ]
    return "\n".join(lines)


def main() -> None:
    """Read the source files, draw the subset, write the .npz and NOTICE.txt."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("/usr/share/datasets/fashion-mnist"),
                        help="folder with the four Fashion-MNIST .gz files")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--verify-official", action="store_true",
                        help="only check that the source files are the official Fashion-MNIST files")
    args = parser.parse_args()
    if args.verify_official:
        verify_official(args.source)
        return

    paths = {key: args.source / name for key, name in FILES.items()}
    x_train = read_idx_images(paths["train_images"])  # (60000, 28, 28)
    y_train = read_idx_labels(paths["train_labels"])  # (60000,)
    x_test = read_idx_images(paths["test_images"])  # (10000, 28, 28)
    y_test = read_idx_labels(paths["test_labels"])  # (10000,)
    raw = {"train_images": x_train, "train_labels": y_train, "test_images": x_test, "test_labels": y_test}
    digests = {}
    for key, name in FILES.items():
        header = hashlib.sha256()
        arr = raw[key]
        # Rebuild the IDX bytes (header + payload) to record the digest of the decompressed file.
        magic = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        header.update(magic)
        header.update(arr.tobytes())
        digests[name] = header.hexdigest()

    rng = np.random.default_rng(SEED)
    tr = stratified_indices(y_train, TRAIN_PER_CLASS, rng)
    te = stratified_indices(y_test, TEST_PER_CLASS, rng)
    arrays = {
        "train_images": x_train[tr],
        "train_labels": y_train[tr],
        "test_images": x_test[te],
        "test_labels": y_test[te],
        "class_names": np.array(CLASS_NAMES),
        "train_indices": tr,
        "test_indices": te,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    npz = args.out / NPZ_NAME
    write_npz(npz, arrays)
    npz_sha = hashlib.sha256(npz.read_bytes()).hexdigest()
    (args.out / "NOTICE.txt").write_text(notice(args.source, digests, npz_sha), encoding="utf-8")
    print(f"wrote {npz} ({npz.stat().st_size / 1e6:.2f} MB, sha256 {npz_sha})")


if __name__ == "__main__":
    main()
