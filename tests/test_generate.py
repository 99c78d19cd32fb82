"""Generation (contrastkit.generate): flow matching against its formula, the Euler sampler on known fields,
guidance, a representation generator that learns a 2-D mixture, train-generator / generate / complete end to end."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contrastkit import engine
from contrastkit.engine_contract import Plan
from contrastkit.cli import main
from contrastkit.generate.complete import MASKS, make_mask, masked_error, mean_fill
from contrastkit.generate.flow import euler_sample, flow_matching_loss, guided_velocity, interpolate, time_embedding
from contrastkit.generate.mlp import VelocityMLP
from contrastkit.generate.training import FlowBatches, FlowTrainable, to_uint8, to_unit
from contrastkit.generate.unet import ConditionalUNet
from contrastkit.runtime import Runtime

TRAIN_ARGS = ["--epochs", "1", "--batch-size", "64", "--monitor-bank", "300", "--monitor-queries", "100"]
TINY_GEN = ["--rep-epochs", "2", "--rep-batch-size", "128", "--rep-hidden", "32", "--rep-blocks", "1",
            "--epochs", "1", "--batch-size", "128", "--width", "8", "--quiet"]
ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- flow matching, by hand


def test_flow_matching_loss_equals_its_formula_on_a_hand_case() -> None:
    x0 = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    x1 = torch.tensor([[1.0, 2.0], [3.0, 1.0]])
    v = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    # target x1 - x0 = [[1, 2], [2, 0]]; errors [[0, -1], [-2, 0]]; squares 0 + 1 + 4 + 0 over 4 elements
    assert float(flow_matching_loss(v, x0, x1)) == pytest.approx(1.25)
    assert float(flow_matching_loss(x1 - x0, x0, x1)) == 0.0
    t = torch.tensor([0.5, 0.25])
    assert torch.allclose(interpolate(x0, x1, t), torch.tensor([[0.5, 1.0], [1.5, 1.0]]))
    images = torch.zeros(2, 1, 3, 3)
    assert torch.equal(interpolate(images, images + 1, t)[:, 0, 0, 0], t)  # t broadcast over (C, H, W)
    with pytest.raises(ValueError, match="shapes differ"):
        flow_matching_loss(v[:1], x0, x1)


def test_euler_integrates_constant_and_straight_fields_exactly_and_is_euler() -> None:
    x0 = torch.tensor([[1.0, -2.0], [0.5, 0.0]], dtype=torch.float64)
    c = torch.tensor([0.25, 3.0], dtype=torch.float64)
    target = torch.tensor([[4.0, 5.0], [-1.0, 2.0]], dtype=torch.float64)
    for steps in (1, 3, 10):
        assert torch.allclose(euler_sample(lambda x, t: c.expand_as(x), x0, steps), x0 + c)
        # the flow-matching field to one point, (x1 - x) / (1 - t), is straight: Euler lands on x1 at any step count
        straight = euler_sample(lambda x, t: (target - x) / (1 - t.double())[:, None], x0, steps)
        assert torch.allclose(straight, target)
        # a field linear in t, v = 2t: Euler's left sums give (S - 1) / S instead of the integral 1
        assert torch.allclose(euler_sample(lambda x, t: 2 * t.double()[:, None].expand_as(x), x0, steps),
                              x0 + (steps - 1) / steps)
    with pytest.raises(ValueError, match="steps"):
        euler_sample(lambda x, t: x, x0, 0)


def test_guidance_zero_is_unconditional_one_conditional_and_extrapolates() -> None:
    u, c = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.equal(guided_velocity(u, c, 0.0), u)
    assert torch.equal(guided_velocity(u, c, 1.0), c)
    assert torch.allclose(guided_velocity(u, c, 2.0), 2 * c - u)
    # through the U-Net: the guided batch (condition + null) at W=0 / W=1 is the null / conditional forward
    torch.manual_seed(0)
    net = ConditionalUNet(1, 5, width=8)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)  # away from the zero initialisation, so the condition matters
    x, t, cond = torch.randn(2, 1, 12, 12), torch.rand(2), torch.randn(2, 5)
    with torch.no_grad():
        v_cond, v_null = net(x, t, cond), net(x, t)
        both = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, cond]),
                   torch.tensor([True, True, False, False]))
    assert not torch.allclose(v_cond, v_null)
    assert torch.allclose(guided_velocity(both[2:], both[:2], 0.0), v_null, atol=1e-5)
    assert torch.allclose(guided_velocity(both[2:], both[:2], 1.0), v_cond, atol=1e-5)


def test_unet_keeps_any_image_shape_and_starts_at_zero_velocity() -> None:
    for shape in ((1, 28, 28), (3, 32, 32), (1, 30, 26), (3, 9, 9)):
        net = ConditionalUNet(shape[0], 4, width=8).requires_grad_(False)
        v = net(torch.randn(2, *shape), torch.rand(2), torch.randn(2, 4), torch.tensor([True, False]))
        assert v.shape == (2, *shape) and float(v.abs().max()) == 0.0
    assert ConditionalUNet(1, 0, width=8)(torch.randn(2, 1, 8, 8), torch.rand(2)).shape == (2, 1, 8, 8)
    assert time_embedding(torch.tensor([0.0, 1.0]), 7).shape == (2, 7)
    u = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_uint8(to_unit(u)), u)


def test_rep_generator_trained_on_a_2d_mixture_moves_noise_toward_it(tmp_path) -> None:
    """The MLP flow on the engine, a few hundred steps: samples land near the 4 modes, noise does not."""
    g = torch.Generator().manual_seed(0)
    modes = torch.tensor([[2.0, 2.0], [-2.0, 2.0], [2.0, -2.0], [-2.0, -2.0]])
    data = modes[torch.randint(0, 4, (2048,), generator=g)] + 0.2 * torch.randn(2048, 2, generator=g)
    torch.manual_seed(0)
    trainable = FlowTrainable(VelocityMLP(2, hidden=64, blocks=2), pixels=False, ema_decay=0.99)
    source = FlowBatches(data, None, 128, seed=0, p_uncond=0.0, device=torch.device("cpu"))
    optimizer = torch.optim.AdamW(trainable.net.parameters(), lr=3e-3, weight_decay=0.0)
    plan = Plan(epochs=25, lr=lambda step: 3e-3)
    engine.run(trainable, source, optimizer, plan, Runtime.create("cpu", "fp32", False), tmp_path / "mix",
               progress=False)
    noise = torch.randn(2000, 2, generator=g)
    samples = euler_sample(lambda x, t: trainable.ema(x, t), noise, 20)

    def to_modes(x: torch.Tensor) -> float:
        return float(torch.cdist(x, modes).min(1).values.mean())

    assert to_modes(noise) > 1.2
    assert to_modes(samples) < 0.5
    cov_gap = lambda x: float((torch.cov(x.T) - torch.cov(data.T)).abs().max())  # noqa: E731
    assert cov_gap(samples) < 0.5 * cov_gap(noise)


# ----------------------------------------------------------------------------- train-generator and generate


@pytest.fixture(scope="module")
def generated_run(trained_copy) -> Path:
    """A tiny run with a tiny generator (both models one short training)."""
    run = trained_copy("generate", *TRAIN_ARGS)
    assert main(["train-generator", str(run), *TINY_GEN]) == 0
    return run


def test_train_generator_writes_both_engine_runs_and_its_config(generated_run, capsys) -> None:
    folder = generated_run / "generator"
    saved = json.loads((folder / "config.json").read_text())
    assert saved["config"]["width"] == 8 and saved["dim"] == 256 and saved["image_shape"] == [1, 28, 28]
    assert saved["train_images"] == 600 and (generated_run / "embeddings.npy").is_file()  # embedded first
    for model, epochs in (("rep", 2), ("pixel", 1)):
        log = [json.loads(line) for line in (folder / model / "log.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in log] == list(range(1, epochs + 1))
        assert all(np.isfinite(r["loss"]) for r in log)
        state = torch.load(folder / model / "checkpoints" / "last.pt", weights_only=True)
        assert state["schema"] == "contrastkit.generator/1" and state["model_kind"] == model
    # a second train-generator without --resume refuses to overwrite
    assert main(["train-generator", str(generated_run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "already holds a generator" in err and "--resume" in err and len(err.splitlines()) == 1


def _fake_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = itertools.count()
    monkeypatch.setattr(engine, "clock", lambda: float(next(ticks)))  # each reading one second after the last


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def test_budget_stops_train_generator_and_resume_ends_with_uninterrupted_weights(trained_copy, monkeypatch,
                                                                                  capsys) -> None:
    """--minutes stops both models on time (fake clock); --resume with a larger budget finishes them with the
    weights of an uninterrupted run."""
    args = [*TINY_GEN, "--epochs", "3", "--rep-epochs", "3"]  # 4 steps an epoch at batch 128 on 600 images
    whole = trained_copy("gen-whole", *TRAIN_ARGS)
    assert main(["train-generator", str(whole), *args]) == 0
    cut = trained_copy("gen-cut", *TRAIN_ARGS)
    for name in ("embeddings.npy", "items.csv", "meta.json"):  # embedded once: the same rows either way
        (cut / name).write_bytes((whole / name).read_bytes())
    _fake_clock(monkeypatch)
    assert main(["train-generator", str(cut), *args, "--minutes", "0.1"]) == 0  # 1.2 s rep, 4.8 s pixel
    out = capsys.readouterr().out
    assert out.count("stopped on time") == 2
    for model in ("rep", "pixel"):
        state = torch.load(cut / "generator" / model / "checkpoints" / "last.pt", weights_only=True)
        assert state["stopped_on_time"] and state["epoch"] < 3
    # resuming may not change what is learnt
    assert main(["train-generator", str(cut), "--resume", "--width", "16", "--quiet"]) == 2
    assert "--width" in capsys.readouterr().err
    monkeypatch.setattr(engine, "clock", __import__("time").monotonic)
    assert main(["train-generator", str(cut), "--resume", "--minutes", "1000", "--quiet"]) == 0
    for model in ("rep", "pixel"):
        a = _weights(whole / "generator" / model / "checkpoints" / "last.pt")
        b = _weights(cut / "generator" / model / "checkpoints" / "last.pt")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), model


def test_generate_writes_pngs_npz_and_grid_and_is_seeded(generated_run, tmp_path, capsys) -> None:
    from contrastkit.fidelity import images_of

    out = tmp_path / "gen"
    assert main(["generate", str(generated_run), "--n", "5", "--steps", "3", "--seed", "1", "--out", str(out)]) == 0
    pngs = sorted((out / "samples").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:04d}.png" for i in range(5)]
    assert Image.open(pngs[0]).size == (28, 28) and Image.open(pngs[0]).mode == "L"
    images = np.load(out / "samples.npz")["images"]
    assert images.shape == (5, 1, 28, 28) and images.dtype == np.uint8
    assert np.array_equal(np.asarray(Image.open(pngs[3])), images[3, 0])
    assert Image.open(out / "grid.png").size[0] > 4 * 28
    info = json.loads((out / "generate.json").read_text())
    assert info["mode"] == "unconditional" and info["seed"] == 1
    read = images_of(out / "samples.npz", 1, "generated").numpy()  # contrastkit's own reader, as fidelity reads it
    assert read.shape == images.shape and sorted(map(bytes, read)) == sorted(map(bytes, images))
    again = tmp_path / "again"
    assert main(["generate", str(generated_run), "--n", "5", "--steps", "3", "--seed", "1", "--out", str(again)]) == 0
    assert np.array_equal(np.load(again / "samples.npz")["images"], images)
    other = tmp_path / "other"
    assert main(["generate", str(generated_run), "--n", "5", "--steps", "3", "--seed", "2", "--guidance", "2",
                 "--out", str(other)]) == 0
    assert not np.array_equal(np.load(other / "samples.npz")["images"], images)
    # a second call with fewer images leaves no stale PNGs
    assert main(["generate", str(generated_run), "--n", "2", "--steps", "2", "--out", str(out)]) == 0
    assert len(list((out / "samples").glob("*.png"))) == 2


def test_generate_like_an_item_and_an_image_file(generated_run, tmp_path) -> None:
    query = tmp_path / "query.png"
    Image.fromarray(np.full((40, 40), 200, dtype=np.uint8)).save(query)  # decoded and resized as training images
    out = tmp_path / "like"
    assert main(["generate", str(generated_run), "--like", "3", str(query), "--n", "2", "--steps", "2",
                 "--out", str(out)]) == 0
    assert np.load(out / "samples.npz")["images"].shape == (4, 1, 28, 28)
    info = json.loads((out / "generate.json").read_text())
    assert [q["kind"] for q in info["queries"]] == ["item", "file"]
    w, h = Image.open(out / "grid.png").size
    assert w > h  # 2 rows of query + 2 variations


def test_generate_of_a_cluster_keeps_representations_nearest_its_centroid(generated_run, tmp_path) -> None:
    from contrastkit.embedding import read_embeddings
    from contrastkit.label import write_labels_csv

    emb = read_embeddings(generated_run)
    clusters = (emb.features[:, 0] > np.median(emb.features[:, 0])).astype(np.int64)  # two halves
    write_labels_csv(generated_run / "labels.csv", emb.sources, clusters, np.ones(len(clusters)), clusters)
    out = tmp_path / "cluster"
    assert main(["generate", str(generated_run), "--cluster", "1", "--n", "3", "--steps", "2", "--out", str(out)]) == 0
    info = json.loads((out / "generate.json").read_text())
    assert info["mode"] == "cluster" and 0 < info["accepted_share"] <= 1
    assert np.load(out / "samples.npz")["images"].shape == (3, 1, 28, 28)
    assert main(["generate", str(generated_run), "--cluster", "7", "--out", str(out)]) == 2


def test_generate_errors_are_one_line(generated_run, trained_copy, tmp_path, capsys) -> None:
    bare = trained_copy("no-generator", *TRAIN_ARGS)
    cases = [
        (["generate", str(bare), "--out", str(tmp_path / "a")], "train-generator"),
        (["generate", str(generated_run), "--like", "99999", "--out", str(tmp_path / "b")], "out of range"),
        (["generate", str(generated_run), "--like", "nope.png", "--out", str(tmp_path / "c")], "neither an image"),
        (["generate", str(generated_run), "--n", "0", "--out", str(tmp_path / "d")], "--n"),
        (["generate", str(generated_run), "--like", "1", "--cluster", "0", "--out", str(tmp_path / "e")], "give one"),
        (["train-generator", str(tmp_path / "missing"), "--quiet"], "no such run folder"),
        (["train-generator", str(bare), "--p-uncond", "2", "--quiet"], "--p-uncond"),
        (["train-generator", str(bare), "--resume", "--quiet"], "no generator to resume"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, (argv, err)
    (generated_run / "labels.csv").unlink(missing_ok=True)
    assert main(["generate", str(generated_run), "--cluster", "0", "--out", str(tmp_path / "f")]) == 2
    assert "contrastkit label" in capsys.readouterr().err


def test_bench_generation_runs_at_toy_size(generated_run, tmp_path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "generation.py"), "--run", str(generated_run), "--minutes", "0.05",
         "--samples", "20", "--steps", "2", "--max-items", "40", "--work", str(tmp_path / "work"), "--out", str(out),
         "--gen-options", " ".join(TINY_GEN[:-1])],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"conditional", "unconditional"} and "Fréchet distance" in proc.stdout
    assert set(results["conditional"]["spaces"]) == {"run encoder", "raw pixels"}


# ----------------------------------------------------------------------------- complete


def test_masks_hide_what_they_say() -> None:
    assert make_mask("center", 8, 8).sum() == 16 and make_mask("center", 8, 8)[2:6, 2:6].all()
    assert make_mask("top", 6, 4)[:3].all() and not make_mask("top", 6, 4)[3:].any()
    assert make_mask("bottom", 6, 4)[3:].all() and make_mask("left", 4, 6)[:, :3].all()
    assert make_mask("right", 4, 6).sum() == 12
    g = torch.Generator().manual_seed(0)
    r = make_mask("random", 28, 28, g)
    assert r.any() and torch.equal(r, make_mask("random", 28, 28, torch.Generator().manual_seed(0)))
    assert set(MASKS) == {"center", "top", "bottom", "left", "right", "random"}


def test_mean_fill_and_masked_error_by_hand() -> None:
    img = torch.tensor([[[[0, 255], [51, 102]]]], dtype=torch.uint8)  # (1, 1, 2, 2)
    mask = torch.tensor([[True, False], [False, False]])
    filled = mean_fill(img, mask)
    assert filled[0, 0, 0, 0] == 136 and torch.equal(filled[0, 0].flatten()[1:], img[0, 0].flatten()[1:])  # (255+51+102)/3
    assert float(masked_error(filled, img, mask)[0]) == pytest.approx((136 / 255) ** 2)
    assert float(masked_error(img, img, mask)[0]) == 0.0


def test_complete_keeps_visible_pixels_and_reports_both_baselines(generated_run, trained_copy, tmp_path,
                                                                   capsys) -> None:
    run = generated_run
    bare = trained_copy("complete-without-generator", *TRAIN_ARGS)
    assert main(["complete", str(bare), "0", "--out", str(tmp_path / "x")]) == 2  # no generator yet: one line
    assert "train-generator" in capsys.readouterr().err
    query = tmp_path / "q.png"
    Image.fromarray(np.tile(np.arange(28, dtype=np.uint8) * 9, (28, 1))).save(query)
    out = tmp_path / "done"
    assert main(["complete", str(run), "5", str(query), "--mask", "top", "--n", "2", "--steps", "2",
                 "--out", str(out)]) == 0
    info = json.loads((out / "complete.json").read_text())
    assert [q["item"] for q in info["queries"]] == [5, None] and info["hidden_fraction"] == 0.5
    assert set(info["means"]) == {"mean_fill", "nearest_neighbour", "nearest_average", "generator_mean",
                                  "generator_best", "generator_average"}
    images = np.load(out / "completions.npz")["images"]
    assert images.shape == (4, 1, 28, 28)
    q = np.asarray(Image.open(query))
    average = np.round(images[2:, 0].astype(np.float64).mean(0))  # the file query's two completions, averaged
    by_hand = np.mean(np.square((average[:14] - q[:14]) / 255.0))  # over the hidden top half
    assert info["queries"][1]["generator_average"] == pytest.approx(by_hand, rel=1e-5)
    assert info["queries"][1]["generator_best"] <= info["queries"][1]["generator_mean"]
    assert np.array_equal(images[2, 0, 14:], q[14:]) and np.array_equal(images[3, 0, 14:], q[14:])  # visible kept
    assert Image.open(out / "completion.png").size[0] > 6 * 28
    again = tmp_path / "again"
    assert main(["complete", str(run), "5", str(query), "--mask", "top", "--n", "2", "--steps", "2",
                 "--out", str(again)]) == 0
    assert np.array_equal(np.load(again / "completions.npz")["images"], images)  # seeded
    assert main(["complete", str(run), "999999", "--out", str(tmp_path / "y")]) == 2
    assert "out of range" in capsys.readouterr().err
