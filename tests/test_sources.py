r"""Tests for contrastkit.sources: file names that are not UTF-8, from the folder to items.csv and back.

A name such as ``caf\xe9.png`` written by a Latin-1 system is common; Python
reads it as ``caf\udce9.png`` (surrogateescape), which no UTF-8 file can
hold. It must embed, read back to the same file, be found by label, search
and report, and print without crashing.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contrastkit.cli import main
from contrastkit.data.folder import load_folder
from contrastkit.embedding import read_embeddings, write_embeddings
from contrastkit.similar import format_results, search_run
from contrastkit.montage import run_images
from contrastkit.seeds import read_seed_labels
from contrastkit.sources import printable, source_from_text, source_to_text

LATIN1 = b"caf\xe9 \xff.png"  # not valid UTF-8: 0xe9 and 0xff stand alone


@pytest.mark.parametrize(
    "name",
    [b"plain.png", LATIN1, b"\xff\xfe\xfd", "é/ünïcödé.png".encode(), b"back\\slash.png", b"lit\\xff.png",
     b"lit\\\\xff.png", b"\\", b"a\\u00e9\\udcff\xc3"],
)
def test_every_file_name_round_trips_through_valid_utf8(name: bytes) -> None:
    source = os.fsdecode(name)  # what the folder reader holds
    text = source_to_text(source)
    assert source_from_text(text) == source and os.fsencode(source_from_text(text)) == name
    text.encode("utf-8")  # valid UTF-8: no surrogate left
    if b"\\" not in name:
        assert text == name.decode("utf-8", "backslashreplace")  # \xHH escapes, readable


def test_ordinary_names_and_old_files_read_the_same() -> None:
    assert source_to_text("cat/001.png") == "cat/001.png"
    for old in ("C:\\data\\a.png", "a\\b.png", "x\\"):  # backslashes written as themselves before the escaping
        assert source_from_text(old) == old
    assert printable(os.fsdecode(LATIN1)) == "caf\\xe9 \\xff.png" and printable("a\\b") == "a\\b"


def _folder_with_a_latin1_name(root: Path, n: int = 24) -> Path:
    """``root/<class>/*.png`` (28 x 28 grey) with one file per class named in Latin-1; returns that file."""
    rng = np.random.default_rng(0)
    for c, cls in enumerate(("dark", "light")):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 100, (28, 28), dtype=np.uint8) + 150 * c).save(root / cls / f"{i:02d}.png")
    weird = os.fsencode(root / "light") + b"/" + LATIN1
    try:
        os.rename(os.fsencode(root / "light" / "00.png"), weird)
    except OSError as e:  # e.g. APFS refuses names that are not UTF-8
        pytest.skip(f"this file system refuses a name that is not UTF-8 ({e})")
    return Path(os.fsdecode(weird))


def test_items_csv_writes_a_latin1_name_as_utf8_and_reads_back_the_same_file(tmp_path: Path) -> None:
    weird = _folder_with_a_latin1_name(tmp_path / "imgs")
    data = load_folder(tmp_path / "imgs")
    sources = data.train.sources + data.test.sources
    assert "light/" + os.fsdecode(LATIN1) in sources
    out = tmp_path / "emb"
    write_embeddings(out, data, torch.zeros(len(data.train), 3), torch.ones(len(data.test), 3), {"run": "x"})
    text = (out / "items.csv").read_bytes().decode("utf-8")  # valid UTF-8
    assert "light/caf\\xe9 \\xff.png" in text
    emb = read_embeddings(out)
    assert emb.sources == sources
    row = emb.sources.index("light/" + os.fsdecode(LATIN1))
    assert os.path.samefile(os.fsencode(tmp_path / "imgs") + b"/" + os.fsencode(emb.sources[row]), os.fsencode(weird))
    seeds = tmp_path / "seeds.csv"
    seeds.write_text("item,label\nlight/caf\\xe9 \\xff.png,light\n1,dark\n", encoding="utf-8")  # as items.csv shows it
    idx, y, _ = read_seed_labels(seeds, emb.sources, ["dark", "light"])
    assert dict(zip(idx.tolist(), y.tolist())) == {row: 1, 1: 0}


def test_a_run_on_a_folder_with_a_latin1_name_embeds_labels_searches_and_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _folder_with_a_latin1_name(tmp_path / "imgs")
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "imgs"), "--out", str(run), "--epochs", "1", "--batch-size", "8",
                 "--quiet", "--monitor-bank", "16", "--monitor-queries", "4", "--device", "cpu"]) == 0
    assert main(["embed", str(run)]) == 0  # was a UnicodeEncodeError writing items.csv
    emb = read_embeddings(run)
    row = emb.sources.index("light/" + os.fsdecode(LATIN1))
    get_images, why = run_images(run, emb.sources)  # items.csv matches the run's own data set again
    assert get_images is not None, why
    seeds = tmp_path / "seeds.csv"
    seeds.write_text("item,label\nlight/caf\\xe9 \\xff.png,light\ndark/01.png,dark\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["label", str(run), "--seed-labels", str(seeds), "--review", "48"]) == 0
    out = capsys.readouterr().out
    assert "light/caf\\xe9 \\xff.png" in out
    out.encode("utf-8")  # printable on any UTF-8 terminal
    labels = list(csv.DictReader(open(run / "labels.csv", encoding="utf-8")))
    assert labels[row]["source"] == "light/caf\\xe9 \\xff.png" and labels[row]["label"] == "light"
    assert (run / "montages").is_dir()  # drawn from the run's data set: the sources matched
    result = search_run(run, [row], 3)
    assert result["queries"][0]["results"][0]["source"] == "light/caf\\xe9 \\xff.png"
    format_results(result).encode("utf-8")
    assert main(["search", str(run), str(row), "--top-k", "3"]) == 0
    assert "light/caf\\xe9 \\xff.png" in capsys.readouterr().out
    assert main(["report", str(run)]) == 0
    (run / "report.html").read_bytes().decode("utf-8")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file names are bytes")
def test_a_query_file_named_in_latin1_prints(tmp_path: Path) -> None:
    result = {"index": {"kind": "flat"}, "queries": [{"query": os.fsdecode(b"/q/\xff.png"), "type": "file",
                                                      "results": []}]}
    assert "query /q/\\xff.png:" in format_results(result)
