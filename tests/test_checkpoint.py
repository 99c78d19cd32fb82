import os
import pickle
from pathlib import Path

import pytest
import torch

from contrastkit.checkpoint import SCHEMA, load_checkpoint, load_method, save_checkpoint
from contrastkit.config import TrainConfig
from contrastkit.errors import CheckpointError
from contrastkit.methods import build_method


class _Payload:
    """Unpickling this would run a shell command that creates a file."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def _valid_state(method, config):
    info = {"channels": 1, "image_size": 28, "mean": [0.5], "std": [0.25], "num_classes": 10, "class_names": None}
    return {"config": config.to_dict(), "data": info, "model": method.state_dict(), "epoch": 1}


def test_round_trip_and_rebuild(tmp_path):
    config = TrainConfig(backbone="small_cnn")
    method = build_method(config, 1)
    save_checkpoint(tmp_path / "checkpoints" / "best.pt", _valid_state(method, config))
    (tmp_path / "config.json").write_text("{}")
    loaded, cfg, info = load_method(tmp_path)
    assert cfg == config and info["channels"] == 1 and not loaded.training
    for (k, a), (_, b) in zip(method.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


def test_code_in_a_checkpoint_is_refused_and_not_run(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"schema": SCHEMA, "model": _Payload(target)}, path)
    with pytest.raises(CheckpointError, match="evil.pt: refused"):
        load_checkpoint(path)
    assert not target.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch notes the non-default protocol of the payload
def test_plain_pickle_file_is_refused_and_not_run(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(_Payload(target)))
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)
    assert not target.exists()


def test_schema_and_truncation_errors(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt: not a contrastkit checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    config = TrainConfig()
    save_checkpoint(tmp_path / "good.pt", _valid_state(build_method(config, 1), config))
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match="missing.pt: no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    state = _valid_state(build_method(config, 1), config)
    del state["data"]["mean"]
    save_checkpoint(tmp_path / "nomean.pt", state)
    with pytest.raises(CheckpointError, match="lacks data.mean"):
        load_checkpoint(tmp_path / "nomean.pt")


def test_run_without_checkpoint_says_so(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_method(tmp_path)
