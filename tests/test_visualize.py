"""Figures of a real tiny run (Fashion-MNIST, 2 epochs) and the saliency map against a closed form."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from contrastkit.cli import main
from contrastkit.visualize import FIGURES, read_log, saliency_map, training_curves

TRAIN_ARGS = ["--epochs", "2", "--batch-size", "64", "--monitor-bank", "300", "--monitor-queries", "100"]


@pytest.fixture(scope="module")
def run(trained_copy):
    return trained_copy("viz", *TRAIN_ARGS)


def _pixels(png: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(png))
    img.verify()  # a valid PNG
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)


def test_visualize_writes_every_figure(run, capsys):
    assert not (run / "embeddings.npy").exists()
    assert main(["visualize", str(run), "--max-points", "400"]) == 0
    assert (run / "embeddings.npy").is_file()  # embedded first
    out = capsys.readouterr().out
    for name in FIGURES:
        path = run / "figures" / f"{name}.png"
        assert str(path) in out
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        px = _pixels(data)
        assert min(px.shape) >= 100, (name, px.shape)
        assert px.std() > 10, name  # not blank


def test_visualize_what_and_out(run, tmp_path, capsys):
    assert main(["visualize", str(run), "--what", "curves,neighbours", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "neighbours.png"]
    grid = Image.open(tmp_path / "neighbours.png")
    assert grid.width > 8 * grid.height / 6  # 6 rows of 1 query + 8 neighbours (28 px images drawn at 56 px)
    assert main(["visualize", str(run), "--what", "bogus"]) == 2
    assert "choose from map,neighbours,saliency,curves" in capsys.readouterr().err


def test_map_by_cluster_needs_labels_csv(run, capsys):
    assert main(["visualize", str(run), "--what", "map", "--colour", "cluster", "--max-points", "100"]) == 2
    assert "labels.csv" in capsys.readouterr().err


def test_curves_read_log_jsonl(run, tmp_path):
    records = read_log(run / "log.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(isinstance(r["loss"], float) and r["knn_top1"] is not None for r in records)
    png = training_curves(records)
    assert _pixels(png).std() > 10
    # a log without the monitor still draws (those panels say "not logged")
    bare = [{"epoch": 1, "loss": 5.0, "lr": 0.1}, {"epoch": 2, "loss": 4.0, "lr": 0.05}]
    assert _pixels(training_curves(bare)).std() > 10
    (tmp_path / "log.jsonl").write_text(json.dumps(bare[0]) + "\nnot json\n")
    with pytest.raises(Exception, match="not a JSON line"):
        read_log(tmp_path / "log.jsonl")


def _cos_grad_closed_form(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d cos(Wa, Wb) / da and / db for a linear map: W^T (v / (|u||v|) - cos u / |u|^2)."""
    u, v = w @ a, w @ b
    cos = u @ v / (u.norm() * v.norm())
    ga = w.T @ (v / (u.norm() * v.norm()) - cos * u / u.norm() ** 2)
    gb = w.T @ (u / (u.norm() * v.norm()) - cos * v / v.norm() ** 2)
    return ga, gb


@pytest.mark.parametrize("channels", [1, 3])
def test_saliency_matches_linear_closed_form(channels):
    g = torch.Generator().manual_seed(channels)
    h, w_ = 5, 4
    d = channels * h * w_
    w = torch.randn(6, d, generator=g, dtype=torch.float64)
    dead = torch.zeros(channels, h, w_, dtype=torch.bool)
    dead[:, 1, :] = True  # a row of pixels the "backbone" ignores in every channel
    dead[:, 3, 2] = True
    w[:, dead.flatten()] = 0
    a = torch.randn(channels, h, w_, generator=g, dtype=torch.float64)
    b = torch.randn(channels, h, w_, generator=g, dtype=torch.float64)

    def embed(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).double() @ w.T  # (B, 6)

    ma, mb = saliency_map(embed, a, b)
    ga, gb = _cos_grad_closed_form(w, a.flatten(), b.flatten())
    for m, grad in ((ma, ga), (mb, gb)):
        expect = grad.abs().view(channels, h, w_).sum(0)
        expect = (expect / expect.max()).numpy()
        assert m.shape == (h, w_)
        assert (m >= 0).all() and m.max() == pytest.approx(1.0)
        np.testing.assert_allclose(m, expect, rtol=1e-5, atol=1e-6)
        assert (m[dead[0].numpy()] == 0).all()  # exactly 0 where the gradient is 0
        assert (m[~dead[0].numpy()] > 0).all()


def test_saliency_of_a_real_model_has_the_image_shape(run):
    from contrastkit.checkpoint import load_method

    method, _, info = load_method(run)
    x = torch.randn(2, 1, 28, 28)
    ma, mb = saliency_map(method.embed, x[0], x[1])
    assert ma.shape == mb.shape == (28, 28)
    for m in (ma, mb):
        assert m.dtype == np.float32 and (m >= 0).all() and m.max() == pytest.approx(1.0)
        assert (m > 0).mean() > 0.5  # a CNN looks at most pixels


def test_saliency_rejects_mismatched_images():
    with pytest.raises(Exception, match="one shape"):
        saliency_map(lambda x: x.flatten(1), torch.zeros(1, 4, 4), torch.zeros(1, 5, 4))
