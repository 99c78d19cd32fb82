"""Data larger than memory: batches decoded ahead by worker processes, embeddings streamed to disk."""

from __future__ import annotations

import pickle
import tracemalloc
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from contrastkit.checkpoint import load_checkpoint, load_method
from contrastkit.cli import build_parser, main
from contrastkit.config import TrainConfig
from contrastkit.data.dataset import DataSplits, ImageDataset
from contrastkit.data.decode import LazyFolderImages
from contrastkit.data.folder import load_folder
from contrastkit.data.streaming import IndexBatches, prefetch, resolve_workers
from contrastkit.embedding import (
    compute_embeddings,
    embed_run,
    iter_embeddings,
    read_embeddings,
    write_embedding_chunks,
    write_embeddings,
)
from contrastkit.errors import ConfigError
from contrastkit.methods import build_method
from contrastkit.runtime import Runtime, torch_threads
from contrastkit.train import epoch_order, fit

TINY = dict(epochs=1, batch_size=8, monitor_bank=36, monitor_queries=4, warmup_epochs=0.5, precision="fp32",
            proj_hidden_dim=32, proj_dim=16)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny shapes: one torch thread is several times faster than two on a busy CPU (see runtime.torch_threads)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 grayscale 16 x 16 PNGs in two class folders (36 train, 4 held out)."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(40):
        cls = root / f"c{i % 2}"
        cls.mkdir(exist_ok=True)
        pixels = rng.integers(0, 256, (16, 16), dtype=np.uint8) // (2 if i % 2 else 1)
        Image.fromarray(pixels).save(cls / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def lazy(folder: Path) -> DataSplits:
    splits = load_folder(folder, max_in_memory_bytes=0)  # any budget below the pixels: decoded on demand
    assert isinstance(splits.train.images, LazyFolderImages) and len(splits.train) == 36
    return splits


@pytest.fixture(scope="module")
def lazy_run(lazy: DataSplits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch run on the lazy folder, decoded in the training process."""
    config = TrainConfig(**TINY, workers=0)
    run = tmp_path_factory.mktemp("runs") / "w0"
    fit(build_method(config, 1, 2), lazy, config, run, progress=False)
    return run


def test_prefetcher_yields_the_batches_of_get_batch_in_order(lazy: DataSplits) -> None:
    ds = lazy.train
    order = epoch_order(len(ds), seed=3, epoch=1)
    rng_before = torch.get_rng_state()
    for batches in (IndexBatches(order, 8, start=2),  # a resumed epoch: from step 2, the last batch partial
                    IndexBatches(order, 8, start=1, stop=4, rank=1, world=2)):  # rank 1's half of each global batch
        want = [ds.get_batch(idx) for idx in batches]
        assert len(want) == 3 and all(w.dtype == torch.uint8 for w in want)
        for workers in (0, 2):
            got = list(prefetch(ds, batches, workers))
            assert len(got) == len(want) and all(torch.equal(g, w) for g, w in zip(got, want))
    assert [b.tolist() for b in IndexBatches(order, 8, start=1, stop=2, rank=1, world=2)] == [order[12:16].tolist()]
    assert torch.equal(torch.get_rng_state(), rng_before)  # workers draw no seeds from the global generator


def test_lazy_images_pickle_small_and_auto_workers(lazy: DataSplits, folder: Path) -> None:
    images = lazy.train.images
    copy = pickle.loads(pickle.dumps(images))
    assert copy.files == images.files and images.path(-1) == images.files[-1]
    assert torch.equal(copy.get_batch(torch.tensor([5, 0])), images.get_batch(torch.tensor([5, 0])))
    assert len(pickle.dumps(images)) < 1000 + sum(len(str(p)) for p in images.files)  # no per-path objects
    eager = load_folder(folder)
    assert resolve_workers(None, eager.train) == 0 and 1 <= resolve_workers(None, lazy.train) <= 4
    assert resolve_workers(3, eager.train) == 3
    with pytest.raises(ConfigError, match="--workers must be >= 0"):
        TrainConfig(workers=-1)


def test_workers_option_of_train_and_embed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert parser.parse_args(["train", "--workers", "3"]).workers == 3
    assert parser.parse_args(["embed", "run", "--workers", "0"]).workers == 0
    assert main(["embed", str(tmp_path), "--workers", "-1"]) == 2
    assert "--workers must be >= 0" in capsys.readouterr().err


def test_fit_with_workers_gives_the_same_weights(lazy: DataSplits, lazy_run: Path, tmp_path: Path) -> None:
    config = TrainConfig(**TINY, workers=2)
    fit(build_method(config, 1, 2), lazy, config, tmp_path / "w2", progress=False)
    want = load_checkpoint(lazy_run / "checkpoints" / "last.pt")
    got = load_checkpoint(tmp_path / "w2" / "checkpoints" / "last.pt")
    assert want["model"].keys() == got["model"].keys()
    assert all(torch.equal(want["model"][k], got["model"][k]) for k in want["model"])
    assert [h["loss"] for h in want["history"]] == [h["loss"] for h in got["history"]]


def test_embed_streams_the_same_npy(lazy: DataSplits, lazy_run: Path, tmp_path: Path) -> None:
    """Chunks of 5 rows written through the temporary file, decoded by 2 workers: np.save's bytes of the whole set."""
    method, config, info = load_method(lazy_run)
    runtime = Runtime.create(config.device, config.precision, config.channels_last)
    method.to(memory_format=torch.channels_last)  # as embed_run runs it
    whole = torch.cat([compute_embeddings(method, lazy.train, info, runtime, batch_size=5, workers=0),
                       compute_embeddings(method, lazy.test, info, runtime, batch_size=5, workers=0)])
    np.save(tmp_path / "want.npy", whole.numpy(), allow_pickle=False)
    emb = embed_run(lazy_run, data=lazy, out_dir=tmp_path / "out", batch_size=5, workers=2)
    assert (tmp_path / "out" / "embeddings.npy").read_bytes() == (tmp_path / "want.npy").read_bytes()
    assert isinstance(np.load(tmp_path / "out" / "embeddings.npy", mmap_mode="r"), np.memmap)
    assert emb.features.shape == (40, method.embed_dim) and emb.meta["count"] == 40
    assert emb.sources == lazy.train.sources + lazy.test.sources
    assert emb.labels is not None and emb.labels.tolist() == lazy.train.labels.tolist() + lazy.test.labels.tolist()
    method.train()
    list(iter_embeddings(method, lazy.test, info, runtime, batch_size=2))
    assert method.training  # eval mode only while embedding


class _NumpyFeatures(nn.Module):
    """A stand-in model whose features live in numpy buffers, so tracemalloc sees every one that is kept."""

    embed_dim = 16

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        v = x.float().mean(dim=(1, 2, 3)).numpy().astype(np.float32)  # (B,)
        return torch.from_numpy(np.repeat(v[:, None], self.embed_dim, axis=1))  # (B, 16)


def _synthetic(n: int) -> DataSplits:
    def ds(split: str, k: int) -> ImageDataset:
        images = torch.randint(0, 256, (k, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(k))
        return ImageDataset(images=images, labels=torch.arange(k) % 3, class_names=["a", "b", "c"],
                            sources=[f"{split}/{i}.png" for i in range(k)], name=split)
    return DataSplits(train=ds("train", n), test=ds("test", 10))


def _embed_peak(data: DataSplits, out: Path) -> int:
    """Peak traced bytes of embedding ``data`` in chunks of 64 rows into ``out``."""
    method, runtime = _NumpyFeatures(), Runtime(torch.device("cpu"), None, False)
    info = {"mean": [0.5], "std": [0.25], "image_size": None}
    chunks = (f for ds in (data.train, data.test) for f in iter_embeddings(method, ds, info, runtime, batch_size=64))
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    write_embedding_chunks(out, data, chunks, method.embed_dim, {"run": "synthetic"})
    return tracemalloc.get_traced_memory()[1] - base


def test_embedding_memory_does_not_grow_with_the_data(tmp_path: Path) -> None:
    small, large = _synthetic(2000), _synthetic(8000)  # features: 128 kB and 512 kB in all
    tracemalloc.start()
    try:
        _embed_peak(_synthetic(100), tmp_path / "warm-up")
        peaks = [_embed_peak(small, tmp_path / "small"), _embed_peak(large, tmp_path / "large")]
    finally:
        tracemalloc.stop()
    assert peaks[1] < peaks[0] * 1.25 + 16_384, peaks  # would grow by >= 384 kB if rows were kept
    features = np.load(tmp_path / "large" / "embeddings.npy")
    want = ((large.train.images.double() / 255 - 0.5) / 0.25).mean(dim=(1, 2, 3)).numpy()  # the stand-in's features
    assert features.shape == (8010, 16) and np.allclose(features[:8000, 3], want, atol=1e-5)
    assert len(read_embeddings(tmp_path / "large").sources) == 8010


def test_an_error_while_embedding_leaves_no_partial_file(tmp_path: Path) -> None:
    data = _synthetic(20)

    def failing() -> Iterator[torch.Tensor]:
        yield torch.zeros(8, 4)
        raise RuntimeError("the model failed")

    with pytest.raises(RuntimeError, match="the model failed"):
        write_embedding_chunks(tmp_path, data, failing(), 4, {"run": "v1"})
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing at all, not even a temporary file
    write_embeddings(tmp_path, data, torch.ones(20, 4), torch.ones(10, 4), {"run": "v1"})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(RuntimeError, match="the model failed"):
        write_embedding_chunks(tmp_path, data, failing(), 4, {"run": "v2"})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert read_embeddings(tmp_path).meta["run"] == "v1"
