"""The HTML report of a real tiny run: self-contained, escaped, complete, and rendered by headless chromium."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from contrastkit.cli import main

TRAIN_ARGS = ["--epochs", "2", "--batch-size", "64", "--monitor-bank", "300", "--monitor-queries", "100"]
TINY_GEN = ["--rep-epochs", "2", "--rep-batch-size", "128", "--rep-hidden", "32", "--rep-blocks", "1",
            "--epochs", "1", "--batch-size", "128", "--width", "8", "--quiet"]  # as tests/test_generate.py
HOSTILE = "<script>alert('x')</script> & \"co\""
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def report(trained_copy):
    """A trained run whose first class has a hostile name, and its report (evaluated on the way)."""
    run = trained_copy("report", *TRAIN_ARGS)
    assert main(["embed", str(run)]) == 0
    meta = json.loads((run / "meta.json").read_text())
    meta["class_names"][0] = HOSTILE
    (run / "meta.json").write_text(json.dumps(meta))
    assert not (run / "metrics.json").exists()
    assert main(["report", str(run), "--max-points", "400"]) == 0
    return run, (run / "report.html").read_text()


def test_report_is_self_contained(report):
    _, text = report
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert "<link" not in text and "<script" not in text.lower()
    imgs = re.findall(r'<img [^>]*src="([^"]*)"', text)
    assert len(imgs) >= 6 and all(s.startswith("data:image/png;base64,") for s in imgs)


def test_report_has_metrics_class_names_and_sections(report):
    run, text = report
    metrics = json.loads((run / "metrics.json").read_text())  # evaluated first
    ssl = metrics["ssl"]
    for key in ("knn_top1_k20", "knn_top1_k200_weighted", "linear_probe_top1"):
        assert f"{ssl[key]:.2%}" in text
    assert f"{metrics['baselines']['raw_pixel_knn_top1_k20']:.2%}" in text
    for name in metrics["class_names"][1:]:
        assert html.escape(name) in text
    for section in ("Configuration", "Training curves", "Accuracy against baselines", "Per-class accuracy",
                    "Confusion matrix", "2-D map", "Nearest neighbours", "Clusters", "Saliency"):
        assert f"<h2>{section}" in text, section
    assert "k-means with 10 clusters" in text  # no labels.csv: clustered in memory
    assert f"<td>batch_size</td><td class=\"num\">64</td>" in text


def test_report_escapes_hostile_class_name(report):
    _, text = report
    assert HOSTILE not in text
    assert html.escape(HOSTILE) in text


def test_report_uses_labels_csv_when_present(report, tmp_path, capsys):
    run, _ = report
    assert main(["label", str(run), "--clusters", "3", "--no-montage"]) == 0
    out = tmp_path / "r.html"
    assert main(["report", str(run), "--out", str(out), "--max-points", "200"]) == 0
    text = out.read_text()
    assert "from labels.csv" in text and text.count("<figcaption>cluster ") == 3


def test_report_without_a_generator_has_no_generation_section(report):
    _, text = report
    assert "<h2>Generation" not in text and "generated samples" not in text


def _img(text: str, alt: str) -> np.ndarray:
    """The pixels of the report's <img alt=...>."""
    m = re.search(rf'<img alt="{re.escape(alt)}" src="data:image/png;base64,([^"]+)"', text)
    assert m, alt
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(m.group(1)))))


@pytest.fixture(scope="module")
def generated(report, tmp_path_factory):
    """A copy of the report's run with a toy generator (trained as tests/test_generate.py trains one)."""
    run = tmp_path_factory.mktemp("generated") / "run"
    shutil.copytree(report[0], run)
    (run / "labels.csv").unlink(missing_ok=True)
    assert main(["train-generator", str(run), *TINY_GEN]) == 0
    return run


def test_report_shows_seeded_samples_of_the_generator(generated, tmp_path):
    from contrastkit.montage import montage_image

    out = tmp_path / "r.html"
    assert main(["report", str(generated), "--out", str(out), "--max-points", "200"]) == 0
    text = out.read_text()
    assert "<h2>Generation" in text and "no fidelity.json" in text
    # the grid is `contrastkit generate RUN --n 16 --seed 0`'s images, 8 per row
    assert main(["generate", str(generated), "--n", "16", "--seed", "0", "--out", str(tmp_path / "g")]) == 0
    images = np.load(tmp_path / "g" / "samples.npz")["images"]
    expected = np.asarray(montage_image(images, columns=8))
    assert np.array_equal(_img(text, "generated samples"), expected)
    assert "<td>representation generator</td><td class=\"num\">2</td>" in text  # epochs trained, from log.jsonl
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I) and "<script" not in text.lower()


def test_report_shows_fidelity_beside_its_real_floors(generated, tmp_path, capsys):
    from contrastkit.fidelity import FIGURES

    samples = tmp_path / "g"
    assert main(["generate", str(generated), "--n", "20", "--steps", "3", "--out", str(samples)]) == 0
    assert main(["fidelity", str(generated), str(samples / "samples.npz"), "--max-items", "100"]) == 0
    capsys.readouterr()
    result = json.loads((generated / "fidelity.json").read_text())
    out = tmp_path / "r.html"
    assert main(["report", str(generated), "--out", str(out), "--max-points", "200"]) == 0
    text = out.read_text()
    assert "Fidelity of generated images" in text and "no fidelity.json" not in text
    assert len(result["spaces"]) == 2
    for name, fig in result["spaces"].items():
        assert f"<h4>{html.escape(name)}</h4>" in text
        for key, label, fmt, _ in FIGURES:  # every figure on one row with its floor
            row = (f"<td>{html.escape(label)}</td><td>{fmt.format(fig['generated'][key])}</td>"
                   f"<td>{fmt.format(fig['real_floor'][key])}</td>")
            assert row in text, (name, key)
    (generated / "fidelity.json").write_text("[1, 2]")  # broken: a note, the report is still written
    assert main(["report", str(generated), "--out", str(out), "--max-points", "200"]) == 0
    assert "fidelity.json not shown: not a fidelity.json" in out.read_text()
    (generated / "fidelity.json").unlink()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is absent (apt-get install chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    run, _ = report
    shot = tmp_path / "shot.png"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--enable-logging=stderr", "--v=0", f"--screenshot={shot}", "--window-size=1200,3000",
           (run / "report.html").resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert shot.is_file(), proc.stderr[-2000:]
    px = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert px.shape == (3000, 1200)
    assert px.var() > 100  # text, tables and figures, not a blank page
    errors = [line for line in proc.stderr.splitlines()
              if ("Uncaught" in line or "ERROR:CONSOLE" in line) and "report.html" in line]
    assert not errors, errors


def test_report_puts_the_headline_first_and_folds_other_methods_options(report):
    """Issue 17: accuracy against baselines, the map and neighbours come before the curves and the configuration,
    and options of other methods (a simclr run: dino's, vicreg's, the queue) are folded into a <details>."""
    from contrastkit.report import option_applies

    _, text = report
    order = [text.index(f"<h2>{s}") for s in ("Accuracy against baselines", "2-D map", "Nearest neighbours",
                                               "Training curves", "Per-class accuracy", "Configuration")]
    assert order == sorted(order)
    config = text[text.index("<h2>Configuration"):]
    folded = config.index("<details>")
    assert config.index("<td>batch_size</td>") < folded and config.index("<td>temperature</td>") < folded
    for other in ("dino_out_dim", "vicreg_sim_weight", "queue_size", "margin", "momentum"):
        assert config.index(f"<td>{other}</td>") > folded, other
    assert option_applies("momentum", "dino") and option_applies("queue_size", "nnclr")
    assert not option_applies("temperature", "byol") and option_applies("epochs", "byol")
