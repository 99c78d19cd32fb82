"""A real RGB image folder from a package registry: Google's emoji (npm ``emoji-datasource-google``), by category.

The npm package ``emoji-datasource-google@16.0.0`` ships 3 786 RGBA PNG
images of 64 x 64 px and ``emoji.json``, which names each emoji's category
(Smileys & Emotion, People & Body, Animals & Nature, Food & Drink, Travel &
Places, Activities, Objects, Symbols, Flags; the five "Component" images are
left out). Skin-tone variations take their emoji's category, so the folder is
imbalanced: People & Body holds about 59% of it, as in the real folders of
issue 17. The tarball is fetched with ``npm pack`` (or given with
``--tarball``) and checked against the registry's published SHA-512 before
anything is extracted; only the PNG files named in ``emoji.json`` are written,
as ``OUT/<category>/<file>.png``.

Usage:
    python bench/emoji_folder.py runs/emoji
    python bench/emoji_folder.py runs/emoji --tarball emoji-datasource-google-16.0.0.tgz
"""

from __future__ import annotations

import argparse
import base64
import collections
import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "emoji-datasource-google@16.0.0"
TARBALL = "emoji-datasource-google-16.0.0.tgz"
# `npm view emoji-datasource-google@16.0.0 dist.integrity` (the registry's published checksum)
INTEGRITY = "sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A=="
IMAGE_DIR = "package/img/google/64/"


def verified(path: Path) -> bytes:
    """The tarball's bytes, after checking them against :data:`INTEGRITY`."""
    data = path.read_bytes()
    digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != INTEGRITY:
        raise SystemExit(f"{path}: SHA-512 {digest} is not the registry's {INTEGRITY}; refusing to extract it")
    return data


def fetch(cache: Path) -> Path:
    """``npm pack`` the package into ``cache`` (npm checks its own integrity too); the tarball's path."""
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / TARBALL
    if not target.exists():
        subprocess.run(["npm", "pack", PACKAGE, "--pack-destination", str(cache)], check=True,
                       stdout=subprocess.DEVNULL)
    return target


def folder_name(category: str) -> str:
    """'Food & Drink' -> 'food-drink'."""
    return re.sub(r"[^a-z0-9]+", "-", category.lower()).strip("-")


def build(tarball: Path, out: Path) -> collections.Counter[str]:
    """Write ``out/<category>/<image>.png`` for every categorised emoji image; the count per category."""
    with tarfile.open(fileobj=io.BytesIO(verified(tarball)), mode="r:gz") as tar:
        meta = json.load(tar.extractfile("package/emoji.json"))  # type: ignore[arg-type]
        category_of: dict[str, str] = {}
        for emoji in meta:
            if emoji["category"] == "Component":
                continue
            category_of[emoji["image"]] = emoji["category"]
            for variation in (emoji.get("skin_variations") or {}).values():
                category_of[variation["image"]] = emoji["category"]
        counts: collections.Counter[str] = collections.Counter()
        for member in tar.getmembers():
            name = member.name[len(IMAGE_DIR):] if member.name.startswith(IMAGE_DIR) else None
            if not member.isfile() or name not in category_of or "/" in name:
                continue
            folder = out / folder_name(category_of[name])
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]
            counts[folder.name] += 1
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write (must not exist)")
    parser.add_argument("--tarball", type=Path, default=None, help=f"{TARBALL} already on disk (else npm pack)")
    args = parser.parse_args(argv)
    if args.out.exists():
        raise SystemExit(f"{args.out}: already exists; remove it or choose another folder")
    with tempfile.TemporaryDirectory() as tmp:
        tarball = args.tarball or fetch(Path(tmp))
        counts = build(tarball, args.out)
    total = sum(counts.values())
    print(f"{args.out}: {total} images in {len(counts)} classes: "
          + ", ".join(f"{k} {v} ({v / total:.0%})" for k, v in counts.most_common()), file=sys.stderr)


if __name__ == "__main__":
    main()
