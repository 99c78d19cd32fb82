"""contrastkit fidelity: each measure against its paper's formula or a reference package, and end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from contrastkit.cli import main
from contrastkit.fidelity import (
    authenticity,
    copy_level,
    copy_scores,
    frechet_distance,
    kernel_distance,
    prdc,
)

TRAIN_ARGS = ["--epochs", "1", "--batch-size", "64", "--monitor-bank", "300", "--monitor-queries", "100"]  # as test_index


def test_frechet_distance_of_two_gaussians_matches_the_closed_form():
    """Diagonal Gaussians: FD = |mu1 - mu2|^2 + sum_i (s1_i - s2_i)^2; and the sample FD equals scipy's sqrtm form."""
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(0)
    mu1, mu2 = np.array([0.0, 1.0, -1.0, 2.0]), np.array([0.5, 1.0, 0.0, 2.0])
    s1, s2 = np.array([1.0, 2.0, 0.5, 1.0]), np.array([1.5, 1.0, 0.5, 3.0])
    a = mu1 + s1 * rng.standard_normal((200_000, 4))
    b = mu2 + s2 * rng.standard_normal((200_000, 4))
    closed = ((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum()  # 1.25 + 5.25 = 6.5
    assert frechet_distance(a, b) == pytest.approx(closed, rel=0.02)

    x, y = rng.standard_normal((300, 6)), rng.standard_normal((200, 6)) @ rng.standard_normal((6, 6))
    ca, cb = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    reference = ((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * sqrtm(ca @ cb).real)
    assert frechet_distance(x, y) == pytest.approx(reference, rel=1e-6)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_kernel_distance_is_the_unbiased_mmd_with_the_cubic_kernel():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((12, 3)), rng.standard_normal((12, 3)) + 0.5
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    m = 12
    slow = (sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
            + sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
            - 2 * sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2)
    assert kernel_distance(x, y, subset=12, subsets=1) == pytest.approx(slow, rel=1e-9)
    same = kernel_distance(rng.standard_normal((2000, 8)), rng.standard_normal((2000, 8)), subsets=5)
    shifted = kernel_distance(rng.standard_normal((2000, 8)), rng.standard_normal((2000, 8)) + 1.0, subsets=5)
    assert abs(same) < 0.01 < shifted


def test_prdc_matches_the_prdc_package():
    """Naeem et al.'s own package (prdc 0.2) on random data, for the same k on all four figures."""
    reference = pytest.importorskip("prdc")
    rng = np.random.default_rng(2)
    real = rng.standard_normal((400, 16))
    fake = 1.2 * rng.standard_normal((300, 16)) + 0.3
    for k in (3, 5):
        want = reference.compute_prdc(real_features=real, fake_features=fake, nearest_k=k)
        got = prdc(real, fake, pr_k=k, dc_k=k)
        for key in ("precision", "recall", "density", "coverage"):
            assert got[key] == pytest.approx(float(want[key]), abs=1e-12), (k, key)


def test_identical_sets_score_perfectly_and_copies_are_not_authentic():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 8))
    same = prdc(x, x.copy())
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    assert same["density"] == pytest.approx(1.0 + 1 / 5)  # each point is also inside its own ball: (k + 1) / k
    assert authenticity(x, x.copy()) == 0.0  # distance 0 to its real twin
    assert authenticity(x, x + 100.0) == 1.0  # far from every real sample


def test_copy_detection_flags_copies_and_not_new_samples():
    rng = np.random.default_rng(4)
    train = rng.standard_normal((1000, 32))
    level = copy_level(train)
    copies = copy_scores(train, train[:50] + 1e-4 * rng.standard_normal((50, 32)), level)
    fresh = copy_scores(train, rng.standard_normal((200, 32)), level)
    assert copies.share_above == 1.0 and (copies.nearest == np.arange(50)).all()
    assert fresh.share_above <= 0.03  # new draws of the distribution sit near the train-to-train level


@pytest.fixture(scope="module")
def run(trained_copy):
    return trained_copy("fidelity", *TRAIN_ARGS)


def test_cli_flags_memorised_training_images_and_not_held_out_ones(run, fmnist_small, tmp_path, capsys):
    """Positive control: copies of training images are flagged as copies; the real floor (held-out test images)
    is not; the closest pairs are drawn; noise scores far from the floor."""
    _, data = fmnist_small
    copies = tmp_path / "copies.npz"
    np.savez(copies, images=data.train.images[:150].numpy())
    assert main(["fidelity", str(run), str(copies), "--max-items", "150", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for space in result["spaces"].values():
        assert space["generated"]["copy_share"] == 1.0
        assert space["real_floor"]["copy_share"] <= 0.05
    assert result["counts"]["generated"] == 150 and result["counts"]["train_for_copies"] == len(data.train)
    assert all(p["similarity"] > 0.999 for p in result["closest"])
    assert json.loads((run / "fidelity.json").read_text())["spaces"].keys() == result["spaces"].keys()
    assert (run / "fidelity_closest.png").stat().st_size > 0

    noise = tmp_path / "noise.npz"
    np.savez(noise, images=np.random.default_rng(0).integers(0, 256, (150, 1, 28, 28), dtype=np.uint8))
    assert main(["fidelity", str(run), str(noise), "--max-items", "150"]) == 0
    out = capsys.readouterr().out
    assert "run encoder:" in out and "raw pixels:" in out and "real floor" in out
    fig = json.loads((run / "fidelity.json").read_text())["spaces"]["run encoder"]
    assert fig["generated"]["frechet_distance"] > 10 * fig["real_floor"]["frechet_distance"]
    assert fig["generated"]["recall"] < fig["real_floor"]["recall"]


def test_cli_errors_name_the_problem(run, tmp_path, capsys):
    assert main(["fidelity", str(run), str(tmp_path / "missing.npz")]) != 0
    assert "missing.npz" in capsys.readouterr().err
    few = tmp_path / "few.npz"
    np.savez(few, images=np.zeros((3, 1, 28, 28), dtype=np.uint8))
    assert main(["fidelity", str(run), str(few)]) != 0
    assert "at least 10 generated" in capsys.readouterr().err
    assert main(["fidelity", str(run), str(few), "--max-items", "2"]) != 0
    assert "--max-items must be >= 10" in capsys.readouterr().err
    assert main(["fidelity", str(tmp_path / "no-run"), str(few)]) != 0
    assert "no such run folder" in capsys.readouterr().err and not (tmp_path / "no-run").exists()
