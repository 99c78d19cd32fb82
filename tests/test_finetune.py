"""FixMatch fine-tuning from seed labels (contrastkit.finetune, ``label --finetune-minutes``)."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from contrastkit import engine
from contrastkit.cli import main
from contrastkit.errors import ConfigError
from contrastkit.finetune import FINETUNE_DIR, FineTuneConfig, fixmatch_loss, weak_recipe
from contrastkit.label import label_run

TRAIN_ARGS = ["--epochs", "2", "--batch-size", "64", "--monitor-bank", "300", "--monitor-queries", "100"]
SMALL = dict(steps=12, batch_size=8, mu=3, warmup_steps=2, minutes=None)  # 600 train images: 25 steps an epoch


def test_fixmatch_loss_is_the_papers_eq_2_to_4_by_hand() -> None:
    """l_s + lambda_u l_u with l_u averaged over all mu B unlabelled images, 0 below the threshold."""
    labelled = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    weak = torch.tensor([[5.0, 0.0], [0.2, 0.0], [0.0, 4.0]])  # confident 0, unsure, confident 1 (tau 0.95)
    strong = torch.tensor([[1.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    loss, logs = fixmatch_loss(labelled, labels, weak, strong, threshold=0.95, unlabelled_weight=2.0)

    def ce(logits: list[float], y: int) -> float:
        return -logits[y] + math.log(sum(math.exp(v) for v in logits))

    l_s = (ce([2.0, 0.0], 0) + ce([0.0, 1.0], 1)) / 2
    # softmax(5, 0)[0] = 0.9933 and softmax(0, 4)[1] = 0.982 pass tau; softmax(0.2, 0)[0] = 0.55 does not
    l_u = (ce([1.0, 0.0], 0) + 0.0 + ce([1.0, 1.0], 1)) / 3
    assert float(loss) == pytest.approx(l_s + 2.0 * l_u, rel=1e-6)
    assert logs["supervised"] == pytest.approx(l_s, rel=1e-6) and logs["unsupervised"] == pytest.approx(l_u, rel=1e-6)
    assert logs["mask_rate"] == pytest.approx(2 / 3)
    _, none = fixmatch_loss(labelled, labels, weak, strong, threshold=1.0, unlabelled_weight=1.0)
    assert none["unsupervised"] == 0.0 and none["mask_rate"] == 0.0  # nothing reaches probability 1
    # the teacher term: its labels on the strong views where its mask is set, over all mu B images
    taught, tlogs = fixmatch_loss(labelled, labels, weak, strong, threshold=0.95, unlabelled_weight=2.0,
                                  teacher_labels=torch.tensor([1, 1, 0]), teacher_mask=torch.tensor([True, False, True]),
                                  teacher_weight=0.5)
    l_t = (ce([1.0, 0.0], 1) + ce([1.0, 1.0], 0)) / 3
    assert tlogs["teacher"] == pytest.approx(l_t, rel=1e-6)
    assert float(taught) == pytest.approx(l_s + 2.0 * l_u + 0.5 * l_t, rel=1e-6)


def test_pseudo_labels_carry_no_gradient_to_the_weak_view() -> None:
    weak = torch.tensor([[3.0, 0.0]], requires_grad=True)
    strong = torch.tensor([[0.0, 1.0]], requires_grad=True)
    labelled = torch.tensor([[1.0, 0.0]], requires_grad=True)
    loss, _ = fixmatch_loss(labelled, torch.tensor([0]), weak, strong, threshold=0.9, unlabelled_weight=1.0)
    loss.backward()
    assert weak.grad is None or torch.count_nonzero(weak.grad) == 0
    assert torch.count_nonzero(strong.grad) > 0


def test_weak_views_keep_flips_and_mild_crops_only() -> None:
    from contrastkit.augment import default_recipe

    strong = default_recipe(3, 32)
    weak = weak_recipe(strong)
    assert weak.crop_scale == (0.8, 1.0) and weak.flip_p == strong.flip_p
    assert weak.jitter_p == weak.erase_p == weak.grayscale_p == weak.blur_p == weak.solarize_p == 0.0


def _seed_csv(run: Path, per_class: int, path: Path) -> tuple[list[int], np.ndarray]:
    with open(run / "items.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    truth = np.array([int(r["label"]) for r in rows])
    train = np.array([r["split"] == "train" for r in rows])
    seeds = [int(i) for c in range(10) for i in np.flatnonzero(train & (truth == c))[:per_class]]
    path.write_text("item,label\n" + "".join(f"{i},{truth[i]}\n" for i in seeds))
    return seeds, truth


def _embedded(trained_copy, name: str) -> Path:
    run = trained_copy(name, *TRAIN_ARGS)
    assert main(["embed", str(run)]) == 0
    return run


def test_finetuning_labels_every_item_keeps_the_seeds_and_beats_chance_far(trained_copy, tmp_path) -> None:
    run = _embedded(trained_copy, "ft-labels")
    seeds, truth = _seed_csv(run, 5, tmp_path / "seeds.csv")
    m = label_run(run, seed_labels=tmp_path / "seeds.csv", finetune=FineTuneConfig(**{**SMALL, "steps": 50}),
                  montages=False)
    assert m["model"] == "finetune" and m["finetune"]["steps"] == 50 and m["held_out_accuracy"] is None
    assert m["finetune"]["teacher"] in ("poisson", "knn", "propagation", "linear")  # the frozen model chosen first
    with open(run / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(truth) == 800
    assert all(rows[i]["label"] == m["class_names"][truth[i]] and float(rows[i]["confidence"]) == 1.0 for i in seeds)
    assert m["ground_truth"]["accuracy_non_seed"] > 0.5  # 10 classes: chance is 0.1
    log = [json.loads(line) for line in (run / FINETUNE_DIR / "log.jsonl").read_text().splitlines()]
    assert log and {"supervised", "unsupervised", "mask_rate"} <= set(log[-1]) and 0 <= log[-1]["mask_rate"] <= 1
    saved = json.loads((run / "label_metrics.json").read_text())
    assert saved["finetune"]["config"]["threshold"] == 0.95 and saved["model"] == "finetune"


def test_a_budget_cut_then_resume_ends_with_the_uninterrupted_weights(trained_copy, tmp_path, monkeypatch,
                                                                        capsys) -> None:
    whole, cut = _embedded(trained_copy, "ft-whole"), _embedded(trained_copy, "ft-cut")
    _seed_csv(whole, 3, tmp_path / "seeds.csv")
    config = FineTuneConfig(**SMALL)
    label_run(whole, seed_labels=tmp_path / "seeds.csv", finetune=config, montages=False)
    ticks = itertools.count()
    monkeypatch.setattr(engine, "clock", lambda: float(next(ticks)))  # each reading a second after the last
    label_run(cut, seed_labels=tmp_path / "seeds.csv", finetune=FineTuneConfig(**{**SMALL, "minutes": 0.05}),
              montages=False)
    state = torch.load(cut / FINETUNE_DIR / "checkpoints" / "last.pt", weights_only=True)
    assert state["stopped_on_time"] and state["epoch"] * 25 + state.get("step_in_epoch", 0) < 12
    assert "with a larger --finetune-minutes to train on" in capsys.readouterr().err  # the option this command has
    with pytest.raises(ConfigError, match="already holds a run"):
        label_run(cut, seed_labels=tmp_path / "seeds.csv", finetune=config, montages=False)
    with pytest.raises(ConfigError, match="other seeds or settings"):
        label_run(cut, seed_labels=tmp_path / "seeds.csv", finetune=FineTuneConfig(**{**SMALL, "lr": 1e-3}),
                  montages=False, resume=True)
    monkeypatch.setattr(engine, "clock", __import__("time").monotonic)
    label_run(cut, seed_labels=tmp_path / "seeds.csv", finetune=config, montages=False, resume=True)
    a = torch.load(whole / FINETUNE_DIR / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(cut / FINETUNE_DIR / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (whole / "labels.csv").read_bytes() == (cut / "labels.csv").read_bytes()


def test_cli_finetune_options_are_checked_in_one_line(trained_copy, tmp_path, capsys) -> None:
    run = trained_copy("ft-cli", *TRAIN_ARGS)
    _ = tmp_path
    assert main(["label", str(run), "--clusters", "3", "--finetune-minutes", "1"]) == 2
    assert "--seed-labels" in capsys.readouterr().err
    assert main(["label", str(run), "--clusters", "3", "--resume"]) == 2
    assert "--finetune-minutes" in capsys.readouterr().err
    assert main(["label", str(run), "--seed-labels", "x.csv", "--finetune-minutes", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--finetune-minutes must be > 0" in err and len(err.splitlines()) == 1
