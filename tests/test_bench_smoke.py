"""Every script under bench/ runs at toy size and prints its table (benchmarks are measured, never asserted:
these tests check that the scripts work, plus the few pure functions they rely on)."""

from __future__ import annotations

import dataclasses

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from contrastkit.augment import default_recipe
from contrastkit.config import TrainConfig

BENCH = Path(__file__).resolve().parent.parent / "bench"


def load(name: str) -> ModuleType:
    """Import bench/NAME.py as a module (the scripts put bench/ on sys.path themselves)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quality_prints_every_row_and_writes_json(fmnist_small, tmp_path, capsys) -> None:
    path, _ = fmnist_small
    out = tmp_path / "q.json"
    load("quality").main(["--data", str(path), "--minutes", "0.01", "--set", "batch_size=32",
                          "--set", "monitor_bank=100", "--set", "monitor_queries=100", "--out", str(out)])
    text = capsys.readouterr().out
    for row in ("| simclr (small_cnn) |", "| supervised (small_cnn) |", "| untrained small_cnn |", "| raw pixels |"):
        assert row in text
    result = json.loads(out.read_text())
    (ssl,) = result["ssl"]
    assert ssl["epochs"] >= 1 and 0 < ssl["knn_top1_k20"] <= 1 and 0 < ssl["linear_probe_top1"] <= 1
    assert len(ssl["knn_monitor"]) == ssl["epochs"]
    assert 0 < result["supervised"][0]["test_top1"] <= 1


def test_quality_trains_fixed_epochs_when_asked(fmnist_small, capsys) -> None:
    path, _ = fmnist_small
    load("quality").main(["--data", str(path), "--minutes", "10", "--epochs", "1", "--no-supervised",
                          "--set", "batch_size=32", "--set", "monitor_bank=100", "--set", "monitor_queries=100"])
    text = capsys.readouterr().out
    assert "| simclr (small_cnn) | 10 min | 1 |" in text and "| supervised" not in text


def test_quality_trains_only_the_supervised_baseline_when_asked(fmnist_small, tmp_path, capsys) -> None:
    path, _ = fmnist_small
    out = tmp_path / "q.json"
    load("quality").main(["--data", str(path), "--minutes", "0.01", "--supervised-only", "--set", "batch_size=32",
                          "--out", str(out)])
    text = capsys.readouterr().out
    assert "| supervised (small_cnn) |" in text and "| simclr" not in text and "| raw pixels |" in text
    result = json.loads(out.read_text())
    assert result["ssl"] == [] and 0 < result["supervised"][0]["test_top1"] <= 1
    with pytest.raises(SystemExit):
        load("quality").main(["--data", str(path), "--supervised-only", "--no-supervised"])


def test_quality_rejects_an_unknown_override() -> None:
    with pytest.raises(SystemExit, match="FIELD=VALUE"):
        load("quality").parse_overrides(["no_such_field=1"])
    assert load("quality").parse_overrides(["batch-size=64", "method=byol"]) == {"batch_size": 64, "method": "byol"}


def test_throughput_reports_flops_and_mfu(fmnist_small, tmp_path, capsys) -> None:
    path, _ = fmnist_small
    out = tmp_path / "t.json"
    load("throughput").main(["--data", str(path), "--backbones", "seed_cnn", "--variants", "fp32,fp32+cl",
                             "--steps", "1", "--repeats", "1", "--batch-size", "16", "--peak-sizes", "512",
                             "--out", str(out)])
    assert "| seed_cnn | fp32+cl |" in capsys.readouterr().out
    rows = json.loads(out.read_text())["results"]
    assert {r["variant"] for r in rows} == {"fp32", "fp32+cl"}
    for r in rows:
        assert r["images_per_s"] > 0 and r["flops_per_step"] > 0 and 0 < r["mfu"] < 2


def test_throughput_counts_the_flops_of_a_linear_model() -> None:
    """The FLOP counter the MFU relies on: forward 2*B*I*O, backward twice that (input and weight grads)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    layer = torch.nn.Linear(64, 32, bias=False)
    x = torch.randn(8, 64, requires_grad=True)
    counter = FlopCounterMode(display=False)
    with counter:
        layer(x).sum().backward()
    assert counter.get_total_flops() == 3 * 2 * 8 * 64 * 32


def test_vs_lightly_gives_lightly_contrastkits_grayscale_views() -> None:
    recipe = dataclasses.replace(default_recipe(1, 28), erase_p=0.0)  # as vs_lightly runs both sides
    args = load("vs_lightly").lightly_view_args(recipe)
    values = dict(zip(args[::2], (float(v) for v in args[1::2])))
    assert values == {"--min-scale": recipe.crop_scale[0], "--brightness": recipe.brightness,
                      "--contrast": recipe.contrast, "--jitter-p": recipe.jitter_p, "--flip-p": recipe.flip_p}
    with pytest.raises(SystemExit, match="grayscale recipes only"):
        load("vs_lightly").lightly_view_args(default_recipe(3, 32))
    with pytest.raises(SystemExit, match="erase_p"):  # lightly's SimCLRTransform has no random erasing
        load("vs_lightly").lightly_view_args(default_recipe(1, 28))


def test_vs_lightly_says_how_to_build_lightlys_venv(tmp_path) -> None:
    with pytest.raises(SystemExit, match="bench/lightly_venv.sh"):
        load("vs_lightly").main(["--lightly-python", str(tmp_path / "none" / "python")])


def test_imbalance_profile_and_run(fmnist_small, capsys) -> None:
    mod = load("imbalance")
    counts = mod.long_tail_counts(10, 6000, 100)
    assert counts[0] == 6000 and counts[-1] == 60
    assert all(a > b for a, b in zip(counts, counts[1:]))
    assert counts[3] == int(6000 * 100 ** (-3 / 9))
    path, _ = fmnist_small
    mod.main(["--data", str(path), "--max-per-class", "40", "--ratio", "4", "--epochs", "1", "--batch-size", "32"])
    text = capsys.readouterr().out
    assert "| long-tailed (" in text and "| balanced (" in text and "| Ankle boot | 10 |" in text


def test_overfitting_early_stop_rule_and_jsonl(fmnist_small, tmp_path, capsys) -> None:
    mod = load("overfitting")
    assert mod.early_stop([0.5, 0.6, 0.55, 0.54, 0.53, 0.7], patience=2) == (4, 2)
    assert mod.early_stop([0.5, 0.6, 0.7], patience=1) == (3, 3)  # never triggered: runs to the end
    path, _ = fmnist_small
    out = tmp_path / "o.jsonl"
    mod.main(["--data", str(path), "--train-images", "200", "--epochs", "2", "--batch-size", "32",
              "--patience", "1", "--out", str(out)])
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]
    assert all(0 <= x["heldout_knn"] <= 1 and x["train_loss"] > 0 for x in lines)
    assert "| 1 |" in capsys.readouterr().out


def test_recipe_sweep_and_methods_run(fmnist_small, capsys) -> None:
    path, _ = fmnist_small
    load("recipe_sweep").main(["--data", str(path), "--epochs", "1",
                               "--variants", '[["b64", {"batch_size": 64, "monitor_bank": 100}], '
                               '["jitter", {"batch_size": 64, "monitor_bank": 100}, {"brightness": 0.8}]]'])
    out = capsys.readouterr().out
    assert "| b64 |" in out and '| jitter | `{"batch_size": 64, "monitor_bank": 100} views {"brightness": 0.8}` |' in out
    recipe = load("recipe_sweep")
    with recipe.view_recipe_overrides({"contrast": 0.9}):
        assert recipe.train_module.augment_recipe({"channels": 1, "image_size": 28}, TrainConfig()).contrast == 0.9
    assert recipe.train_module.augment_recipe({"channels": 1, "image_size": 28}, TrainConfig()) == default_recipe(1, 28)
    load("methods").main(["--data", str(path), "--minutes", "0.001", "--methods", "simclr"])
    assert "| simclr | 1 |" in capsys.readouterr().out


def test_gpu_check_runs_on_cpu_at_toy_size(tmp_path, capsys) -> None:
    out = tmp_path / "gpu.json"
    load("gpu_check").main(["--device", "cpu", "--images", "64", "--batch-size", "16", "--epochs", "1",
                            "--backbone", "small_cnn", "--variants", "fp32,amp+cl", "--out", str(out)])
    text = capsys.readouterr().out
    assert "| fp32 |" in text and "| amp+cl |" in text
    rows = json.loads(out.read_text())["results"]
    assert [r["variant"] for r in rows] == ["fp32", "amp+cl"] and all(r["finite"] and r["images_per_s"] > 0 for r in rows)
    with pytest.raises(SystemExit, match="unknown"):
        load("gpu_check").main(["--variants", "fp8"])


def test_speed_scripts_run(capsys) -> None:
    load("backbone_speed").main(["--backbones", "seed_cnn", "--batch-size", "8", "--warmup", "1", "--steps", "1"])
    assert "| seed_cnn" in capsys.readouterr().out
    load("augment_speed").main(["--batch", "8", "--runs", "1", "--warmup", "1"])
    assert "images_per_s_median" in capsys.readouterr().out


def test_retrieval_metrics_match_sklearn_average_precision() -> None:
    from sklearn.metrics import average_precision_score

    mod = load("autolabel_retrieval")
    rng = np.random.default_rng(0)
    db, q = rng.normal(size=(60, 8)), rng.normal(size=(7, 8))
    db_y, q_y = rng.integers(0, 3, 60), rng.integers(0, 3, 7)
    got = mod.retrieval_metrics(db, db_y, q, q_y, ks=(1, 5), chunk=3)
    sims = mod.normalise(q) @ mod.normalise(db).T
    aps = [average_precision_score(db_y == y, s) for s, y in zip(sims, q_y)]
    assert got["mAP"] == pytest.approx(np.mean(aps), abs=1e-6)
    top5 = np.argsort(-sims, axis=1)[:, :5]
    assert got["precision_at_5"] == pytest.approx(np.mean(db_y[top5] == q_y[:, None]), abs=1e-6)


def test_autolabel_retrieval_runs_on_a_trained_run(trained_copy, capsys) -> None:
    run = trained_copy("bench-autolabel", "--epochs", "1", "--batch-size", "64")
    load("autolabel_retrieval").main([str(run), "--seeds-per-class", "2", "--draws", "1"])
    text = capsys.readouterr().out
    assert "| k-means cluster accuracy |" in text and "| 2 label(s)/class" in text and "| retrieval mAP |" in text


def test_feature_choice_compares_read_outs_of_one_network(trained_copy, tmp_path, capsys) -> None:
    """Each read-out of bench/feature_choice.py has its dimension, validation kNN and test kNN."""
    run = trained_copy("bench-autolabel", "--epochs", "1", "--batch-size", "64")
    out = tmp_path / "features.json"
    load("feature_choice").main([str(run), "--no-linear", "--out", str(out)])
    text = capsys.readouterr().out
    results = json.loads(out.read_text())["results"]
    assert list(results) == ["layer3 (embed's)", "layer2+3", "layer3 max", "layer3 avg+max", "projector"]
    assert [r["dims"] for r in results.values()] == [256, 384, 256, 512, 128]
    assert all(0.1 < r["validation_knn"] <= 1 and 0.1 < r["knn_top1_k20"] <= 1 for r in results.values())
    assert "| layer2+3 | 384 |" in text


def test_index_and_kmeans_scale_scripts_run(tmp_path) -> None:
    """Run as scripts: index_scale measures each index kind in its own process (its own peak memory)."""
    import subprocess

    out = tmp_path / "index.json"
    subprocess.run([sys.executable, str(BENCH / "index_scale.py"), "--sizes", "12000", "--dim", "16", "--queries", "50",
                    "--tune-queries", "50", "--repeats", "1", "--kinds", "flat,ivf,ivfpq", "--out", str(out)],
                   check=True, capture_output=True, text=True)
    assert "ivfpq" in out.read_text()
    run = subprocess.run([sys.executable, str(BENCH / "kmeans_scale.py"), "--sizes", "3000", "--dim", "16",
                          "--out", str(tmp_path / "km.json")], check=True, capture_output=True, text=True)
    assert "faiss" in run.stdout


def test_default_length_compares_rules_against_raw_pixels(fmnist_small, tmp_path, capsys) -> None:
    mod = load("default_length")
    assert mod.parse_rule("epochs=30") == {"epochs": 30}
    assert mod.parse_rule("steps=2000") == {"epochs": None, "steps": 2000}
    with pytest.raises(SystemExit, match="expected epochs=E or steps=S"):
        mod.parse_rule("minutes=3")
    import torch

    labels = torch.arange(100) % 4
    rows = mod.stratified_rows(labels, 10, torch.arange(20), seed=0)
    assert len(rows) == 10 and not torch.isin(rows, torch.arange(20)).any()
    assert torch.bincount(labels[rows], minlength=4).tolist() == [3, 3, 2, 2]
    path, _ = fmnist_small  # 600 training images: 4 steps an epoch at batch 128, so steps=5 plans 2 epochs
    out = tmp_path / "rows.json"
    mod.main(["--sizes", "0", "--folder", str(path), "--rules", "epochs=1", "steps=5", "--out", str(out)])
    rows_out = json.loads(out.read_text())["rows"]
    assert [r["rule"] for r in rows_out] == ["raw pixels", "epochs=1", "steps=5"]
    assert [r.get("epochs") for r in rows_out] == [None, 1, 2]
    assert "| fmnist_small.npz (600) | steps=5 | 2 | 8 |" in capsys.readouterr().out


def test_emoji_folder_checks_the_checksum_and_files_by_category(tmp_path, monkeypatch) -> None:
    import base64
    import hashlib
    import io
    import tarfile

    from PIL import Image

    mod = load("emoji_folder")
    meta = [{"image": "1f600.png", "category": "Smileys & Emotion"},
            {"image": "1f44b.png", "category": "People & Body", "skin_variations": {"1F3FB": {"image": "1f44b-1f3fb.png"}}},
            {"image": "1f3fb.png", "category": "Component"}]
    tar_path = tmp_path / "emoji.tgz"
    with tarfile.open(tar_path, "w:gz") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        add("package/emoji.json", json.dumps(meta).encode())
        for name in ("1f600.png", "1f44b.png", "1f44b-1f3fb.png", "1f3fb.png"):
            png = io.BytesIO()
            Image.new("RGBA", (4, 4), (255, 0, 0, 128)).save(png, format="PNG")
            add(mod.IMAGE_DIR + name, png.getvalue())
    with pytest.raises(SystemExit, match="is not the registry's"):
        mod.build(tar_path, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    digest = "sha512-" + base64.b64encode(hashlib.sha512(tar_path.read_bytes()).digest()).decode()
    monkeypatch.setattr(mod, "INTEGRITY", digest)
    counts = mod.build(tar_path, tmp_path / "emoji")
    assert dict(counts) == {"smileys-emotion": 1, "people-body": 2}  # skin variants join their emoji; Component left out
    assert sorted(p.name for p in (tmp_path / "emoji" / "people-body").iterdir()) == ["1f44b-1f3fb.png", "1f44b.png"]
