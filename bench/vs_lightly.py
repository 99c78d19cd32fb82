"""contrastkit's SimCLR against lightly's, side by side: same backbone, batch, epochs, threads and views.

Each round trains both, one after the other (the order alternates between
rounds), in child processes with the same thread count:
- contrastkit: ``contrastkit train`` with its defaults (batched augmentation
  on the device, bf16 autocast where the CPU has bf16 instructions,
  channels_last);
- lightly: ``bench/lightly_simclr.py`` in lightly's own venv (build it with
  ``bash bench/lightly_venv.sh``), its ``SimCLRTransform`` in a torchvision
  ``DataLoader`` with worker processes, ``NTXentLoss``, in each requested
  variant: ``fp32`` as its documentation trains, and ``bf16+cl`` (bf16
  autocast and channels_last, as a user tuning it for this CPU would).
Reported: training images/s over the epochs (the median of the rounds), the
ratio of contrastkit's to lightly's, and kNN accuracy of both backbones after
the same epochs (contrastkit's kNN code on both). First, the script checks
that contrastkit's NT-Xent equals lightly's ``NTXentLoss`` on the same inputs.

Usage:
    bash bench/lightly_venv.sh
    python bench/vs_lightly.py --epochs 3 --repeats 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from contrastkit.augment import AugmentConfig, default_recipe
from contrastkit.config import TrainConfig
from contrastkit.data import load_dataset
from contrastkit.embedding import read_embeddings
from contrastkit.evaluation import evaluate_features
from contrastkit.losses import nt_xent_loss
from contrastkit.train import data_info

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from environment import describe  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_LIGHTLY_PYTHON = Path(os.environ.get("LIGHTLY_VENV", Path.home() / ".cache/contrastkit-bench/lightly-venv")) / "bin/python"
LIGHTLY_VARIANTS = {"fp32": [], "bf16+cl": ["--precision", "bf16", "--channels-last"]}


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(HERE.parent / "src"))
    return env


def knn_scores(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> tuple[float, float]:
    """(kNN k=20, weighted k=200) top-1 accuracy: contrastkit's evaluation on both sides."""
    out = evaluate_features(*(torch.from_numpy(np.asarray(a)) for a in (train_x, train_y, test_x, test_y)), linear=False)
    return out["knn_top1_k20"], out["knn_top1_k200_weighted"]


def check_ntxent(python: Path, tmp: Path, threads: int) -> float:
    """Largest |ours - lightly's| NT-Xent over a few random batches and temperatures."""
    gen = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(256, 128, generator=gen), torch.randn(256, 128, generator=gen)
    z1 = z1 + 2 * z0  # positives more similar than negatives, as after training
    temps = [0.07, 0.1, 0.5]
    np.savez(tmp / "z.npz", z0=z0.numpy(), z1=z1.numpy(), temperatures=np.array(temps))
    subprocess.run([str(python), str(HERE / "lightly_simclr.py"), "--ntxent-check", str(tmp / "z.npz"), str(tmp / "z.json")],
                   check=True, env=child_env(threads))
    theirs = json.loads((tmp / "z.json").read_text())
    worst = 0.0
    for t in temps:
        ours = float(nt_xent_loss(z0, z1, temperature=t))
        print(f"NT-Xent t={t}: contrastkit {ours:.7f}, lightly {theirs[str(t)]:.7f}", flush=True)
        worst = max(worst, abs(ours - theirs[str(t)]))
    return worst


def run_ours(args, npz: Path, run: Path, data) -> dict:
    cmd = [sys.executable, "-m", "contrastkit", "train", "--data", str(npz), "--backbone", args.backbone,
           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--temperature", "0.1",
           "--erase-p", "0", "--out", str(run), "--quiet"]  # lightly's SimCLRTransform has no random erasing
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=child_env(args.threads), stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    seconds = sum(r["epoch_seconds"] for r in log)
    images = (len(data.train) // args.batch_size) * args.batch_size * len(log)
    # The last epoch, as on lightly's side: one rule for both (best.pt would pick by the validation slice).
    subprocess.run([sys.executable, "-m", "contrastkit", "embed", str(run), "--checkpoint", "last"], check=True,
                   env=child_env(args.threads), stdout=subprocess.DEVNULL)
    emb = read_embeddings(run)
    (tx, ty), (qx, qy) = emb.split("train"), emb.split("test")
    return {"images_per_s": images / seconds, "wall_s": wall, "knn": knn_scores(tx, ty, qx, qy)}


def lightly_view_args(recipe: AugmentConfig) -> list[str]:
    """contrastkit's view recipe as lightly_simclr.py's arguments (lightly's ``SimCLRTransform`` parameters).

    Only the grayscale recipe maps one to one (crop up to the whole image
    with lightly's fixed aspect ratios 3/4-4/3, flip, brightness and contrast
    jitter); the RGB recipes add saturation, hue, grayscale and blur, whose
    lightly counterparts draw their factors differently.
    """
    extras = {k: getattr(recipe, k) for k in ("saturation", "hue", "grayscale_p", "blur_p", "solarize_p", "erase_p")
              if getattr(recipe, k)}
    if recipe.crop_scale[1] != 1.0:
        extras["crop_scale"] = recipe.crop_scale
    if not np.allclose(recipe.crop_ratio, (3 / 4, 4 / 3)):
        extras["crop_ratio"] = recipe.crop_ratio
    if extras:
        raise SystemExit(f"vs_lightly compares grayscale recipes only (crop up to the whole image, flip, brightness and "
                         f"contrast); this data's default recipe also has {extras}")
    return ["--min-scale", str(recipe.crop_scale[0]), "--brightness", str(recipe.brightness),
            "--contrast", str(recipe.contrast), "--jitter-p", str(recipe.jitter_p), "--flip-p", str(recipe.flip_p)]


def run_lightly(args, python: Path, npz: Path, feats: Path, variant: str, data, views: list[str]) -> dict:
    cmd = [str(python), str(HERE / "lightly_simclr.py"), "--data", str(npz), "--backbone", args.backbone,
           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--workers", str(args.workers),
           "--threads", str(args.threads), "--features", str(feats), *views, *LIGHTLY_VARIANTS[variant]]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, env=child_env(args.threads), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    res = json.loads(out.stdout.strip().splitlines()[-1])
    f = np.load(feats)
    knn = knn_scores(f["train"], data.train.labels.numpy(), f["test"], data.test.labels.numpy())
    return {"images_per_s": res["images_per_s"], "wall_s": wall, "knn": knn, "torch": res["torch"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lightly-python", type=Path, default=DEFAULT_LIGHTLY_PYTHON,
                        help="python of lightly's venv (bash bench/lightly_venv.sh builds it)")
    parser.add_argument("--data", default=None, help="data set (default: the embedded Fashion-MNIST subset, 10k / 2k)")
    parser.add_argument("--backbone", default="small_cnn")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads on both sides")
    parser.add_argument("--workers", type=int, default=2, help="lightly's DataLoader worker processes")
    parser.add_argument("--variants", default=",".join(LIGHTLY_VARIANTS), help=f"lightly variants: {', '.join(LIGHTLY_VARIANTS)}")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (median reported)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    if any(v not in LIGHTLY_VARIANTS for v in variants):
        raise SystemExit(f"--variants: choose from {', '.join(LIGHTLY_VARIANTS)}")
    if not args.lightly_python.exists():
        raise SystemExit(f"lightly's venv not found at {args.lightly_python}: build it with `bash bench/lightly_venv.sh` "
                         "or pass --lightly-python")

    print(describe())
    data = load_dataset(args.data)
    info = data_info(data.train, TrainConfig())
    views = lightly_view_args(dataclasses.replace(default_recipe(info["channels"], info["image_size"]), erase_p=0.0))
    print(f"data: {data.train.name}, {len(data.train)} train / {len(data.test)} test; {args.backbone}, batch "
          f"{args.batch_size}, {args.epochs} epochs, {args.threads} threads, lightly workers {args.workers}; views "
          f"{' '.join(views)}", flush=True)
    results: dict[str, list[dict]] = {"contrastkit": [], **{f"lightly {v}": [] for v in variants}}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        worst = check_ntxent(args.lightly_python, tmp, args.threads)
        print(f"NT-Xent: largest difference {worst:.2e} ({'equal' if worst < 1e-5 else 'DIFFERENT'} to 1e-5)", flush=True)
        npz = tmp / "data.npz"
        np.savez(npz, images=data.train.images.numpy(), labels=data.train.labels.numpy(),
                 test_images=data.test.images.numpy(), test_labels=data.test.labels.numpy(),
                 mean=np.array(info["mean"]), std=np.array(info["std"]))
        for r in range(args.repeats):
            sides = ["contrastkit", *variants]
            if r % 2:
                sides.reverse()
            for side in sides:
                if side == "contrastkit":
                    res = run_ours(args, npz, tmp / f"ours-{r}", data)
                    results["contrastkit"].append(res)
                else:
                    res = run_lightly(args, args.lightly_python, npz, tmp / f"lightly-{side}-{r}.npz", side, data, views)
                    results[f"lightly {side}"].append(res)
                print(f"round {r + 1}: {side}: {res['images_per_s']:.0f} img/s, kNN {res['knn'][0]:.2%}", flush=True)

    ours = statistics.median(x["images_per_s"] for x in results["contrastkit"])
    print()
    print(f"| side | images/s (median of {args.repeats}) | range | contrastkit's speed-up | kNN k=20 | kNN w. k=200 |")
    print("|---|---|---|---|---|---|")
    for side, rows in results.items():
        rates = [x["images_per_s"] for x in rows]
        med = statistics.median(rates)
        k20 = statistics.median(x["knn"][0] for x in rows)
        k200 = statistics.median(x["knn"][1] for x in rows)
        print(f"| {side} | {med:.0f} | {min(rates):.0f}-{max(rates):.0f} | {ours / med:.2f}x | {k20:.2%} | {k200:.2%} |")
    if args.out:
        args.out.write_text(json.dumps({"environment": describe(), "ntxent_max_abs_diff": worst, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
