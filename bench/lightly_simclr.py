"""lightly's SimCLR on an .npz of images: the child that bench/vs_lightly.py runs in lightly's own venv.

Written the way lightly's documentation and examples train SimCLR: a
torchvision-style data set that returns PIL images, lightly's
``SimCLRTransform`` applied per image in a torch ``DataLoader`` with worker
processes, ``SimCLRProjectionHead`` and ``NTXentLoss``. The backbone is
contrastkit's (imported from ``src/`` on PYTHONPATH, which needs only torch),
so both sides train the same network. The augmentation parameters are
contrastkit's grayscale recipe, passed in by bench/vs_lightly.py from
``contrastkit.augment.default_recipe`` (crop area, flip, brightness and
contrast jitter with its probability; no blur, no grayscale), so both sides
see the same view distribution.

Prints one JSON line: images/s of the training epochs, the epoch seconds,
and writes the backbone features of the train and test images to --features.
With --ntxent-check IN.npz OUT.json it only evaluates lightly's NTXentLoss
on the embeddings in IN.npz and exits.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset


class ArrayImages(Dataset):
    """uint8 (N, 1, H, W) images as PIL 'L' images, like torchvision's FashionMNIST data set."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.images[i, 0], mode="L")
        return self.transform(img), int(self.labels[i])


def ntxent_check(inp: str, out: str) -> None:
    from lightly.loss import NTXentLoss

    z = np.load(inp)
    results = {}
    for t in [float(x) for x in z["temperatures"]]:
        loss = NTXentLoss(temperature=t)(torch.from_numpy(z["z0"]), torch.from_numpy(z["z1"]))
        results[str(t)] = float(loss)
    with open(out, "w") as f:
        json.dump(results, f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="npz with images, labels, test_images, test_labels, mean, std")
    parser.add_argument("--backbone", default="small_cnn")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--temperature", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--warmup-epochs", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    # The view recipe: no defaults here, vs_lightly.py passes contrastkit's (lightly_view_args).
    parser.add_argument("--min-scale", type=float, help="smallest crop area fraction")
    parser.add_argument("--brightness", type=float)
    parser.add_argument("--contrast", type=float)
    parser.add_argument("--jitter-p", type=float, help="probability of the brightness/contrast jitter")
    parser.add_argument("--flip-p", type=float)
    parser.add_argument("--features", help="write train/test backbone features (npz) here")
    parser.add_argument("--ntxent-check", nargs=2, metavar=("IN", "OUT"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.ntxent_check:
        ntxent_check(*args.ntxent_check)
        return
    missing = [f"--{k.replace('_', '-')}" for k in ("data", "min_scale", "brightness", "contrast", "jitter_p", "flip_p")
               if getattr(args, k) is None]
    if missing:
        parser.error(f"training needs {', '.join(missing)} (bench/vs_lightly.py passes them)")

    import torchvision.transforms as T
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform
    from lightly.utils.scheduler import CosineWarmupScheduler

    from contrastkit.models.backbones import build_backbone

    torch.manual_seed(args.seed)
    d = np.load(args.data)
    images, labels = d["images"], d["labels"]
    size = images.shape[-1]
    norm = {"mean": [float(m) for m in d["mean"]], "std": [float(s) for s in d["std"]]}
    transform = SimCLRTransform(
        input_size=size, min_scale=args.min_scale, cj_prob=args.jitter_p, cj_strength=1.0, cj_bright=args.brightness,
        cj_contrast=args.contrast, cj_sat=0.0, cj_hue=0.0, random_gray_scale=0.0, gaussian_blur=0.0, hf_prob=args.flip_p,
        normalize=norm,
    )
    loader = DataLoader(ArrayImages(images, labels, transform), batch_size=args.batch_size, shuffle=True,
                        drop_last=True, num_workers=args.workers, persistent_workers=args.workers > 0)

    backbone = build_backbone(args.backbone, images.shape[1])
    model = nn.Sequential()
    model.backbone = backbone
    model.head = SimCLRProjectionHead(backbone.embed_dim, 512, 128)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = NTXentLoss(temperature=args.temperature)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps = len(loader)
    scheduler = CosineWarmupScheduler(optimizer, warmup_epochs=min(int(args.warmup_epochs * steps), args.epochs * steps),
                                      max_epochs=args.epochs * steps)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
    epoch_seconds = []
    model.train()
    for _ in range(args.epochs):
        t0 = time.perf_counter()
        for (x0, x1), _ in loader:
            if args.channels_last:
                x0, x1 = x0.contiguous(memory_format=torch.channels_last), x1.contiguous(memory_format=torch.channels_last)
            with autocast:
                z0 = model.head(model.backbone(x0))
                z1 = model.head(model.backbone(x1))
                loss = criterion(z0.float(), z1.float())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        epoch_seconds.append(time.perf_counter() - t0)

    if args.features:
        plain = T.Compose([T.ToTensor(), T.Normalize(norm["mean"], norm["std"])])
        model.eval()
        feats = {}
        with torch.no_grad():
            for split, arr in (("train", images), ("test", d["test_images"])):
                out = []
                for start in range(0, len(arr), 512):
                    x = torch.stack([plain(Image.fromarray(a[0], mode="L")) for a in arr[start:start + 512]])
                    out.append(backbone(x).float())
                feats[split] = torch.cat(out).numpy()
        np.savez(args.features, train=feats["train"], test=feats["test"])
    n = steps * args.batch_size
    print(json.dumps({"epoch_seconds": epoch_seconds, "images_per_s": n * len(epoch_seconds) / sum(epoch_seconds),
                      "torch": torch.__version__, "loss": float(loss.detach())}))


if __name__ == "__main__":
    main()
