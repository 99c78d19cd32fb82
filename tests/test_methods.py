"""Tests of contrastkit.methods: the method contract, EMA targets, queues, checkpoints, and a real fit."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from contrastkit.checkpoint import load_checkpoint, load_method
from contrastkit.cli import _config_from_args, build_parser
from contrastkit.config import METHOD_NAMES, TrainConfig
from contrastkit.errors import ConfigError
from contrastkit.methods import METHODS, build_method
from contrastkit.methods.contrastive import MoCo
from contrastkit.methods.dino import DINO
from contrastkit.methods.non_contrastive import BYOL
from contrastkit.methods.targets import FeatureQueue, cosine_momentum, ema_update
from contrastkit.models.heads import DINOHead
from contrastkit.optim import build_optimizer
from contrastkit.train import LOCAL_SIZE_RATIO, fit

NEW_METHODS = ("barlowtwins", "vicreg", "simsiam", "byol", "moco", "nnclr", "dino")
TARGETS = {
    "byol": ("target_backbone", "target_head"),
    "moco": ("key_backbone", "key_head"),
    "dino": ("teacher_backbone", "teacher_head"),
}
SMALL = dict(proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=8, queue_size=24, dino_out_dim=64)


def _views(b: int = 6, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 1, 16, 16, generator=g) for _ in range(2)]


def _views_for(method: nn.Module, b: int = 6, seed: int = 0, size: int = 16) -> list[torch.Tensor]:
    """The views the training loop would feed ``method``: its global views, then its local ones (multi-crop)."""
    g = torch.Generator().manual_seed(seed)
    local = max(8, round(size * LOCAL_SIZE_RATIO))  # as train.local_recipe
    return [torch.randn(b, 1, size, size, generator=g) for _ in range(method.num_views)] + [
        torch.randn(b, 1, local, local, generator=g) for _ in range(method.num_local_views)
    ]


def _build(name: str, **overrides: object) -> nn.Module:
    return build_method(TrainConfig(method=name, **{**SMALL, **overrides}), in_channels=1, num_classes=3)


def _first_conv(module: nn.Module) -> nn.Conv2d:
    return next(m for m in module.modules() if isinstance(m, nn.Conv2d))


def test_registry_names_the_new_methods() -> None:
    assert set(NEW_METHODS) <= set(METHODS) and set(METHODS) == set(METHOD_NAMES)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_forward_backward_and_embed(name: str) -> None:
    method = _build(name)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    loss, logs = method(_views_for(method), labels)
    assert loss.ndim == 0 and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert isinstance(logs["loss"], float) and logs["loss"] == pytest.approx(loss.item())
    loss.backward()
    grad = _first_conv(method.backbone).weight.grad
    assert grad is not None and grad.abs().sum() > 0
    method.eval()
    x = _views(4, seed=1)[0]
    with torch.no_grad():
        emb = method.embed(x)
        assert emb.shape == (4, method.embed_dim) == (4, method.backbone.embed_dim)
        assert torch.equal(emb, method.backbone(x))  # backbone features, not the projector's


@pytest.mark.parametrize("name", NEW_METHODS)
def test_forward_under_bf16_autocast_gives_float32_loss(name: str) -> None:
    method = _build(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = method(_views_for(method))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert _first_conv(method.backbone).weight.grad is not None


def test_vicreg_logs_its_three_terms() -> None:
    _, logs = _build("vicreg")(_views())
    assert {"invariance", "variance", "covariance"} <= set(logs)
    assert logs["loss"] == pytest.approx(25 * logs["invariance"] + 25 * logs["variance"] + logs["covariance"], rel=1e-5)


@pytest.mark.parametrize("name", ("byol", "moco", "dino"))
def test_target_network_gets_no_gradient_and_no_optimiser(name: str) -> None:
    method = _build(name)
    loss, _ = method(_views_for(method))
    loss.backward()
    target_params = [p for part in TARGETS[name] for p in getattr(method, part).parameters()]
    assert target_params and all(not p.requires_grad and p.grad is None for p in target_params)
    optimised = {id(p) for g in build_optimizer(method, method_config(name)).param_groups for p in g["params"]}
    assert not optimised & {id(p) for p in target_params}
    assert {id(p) for p in method.backbone.parameters()} <= optimised


def method_config(name: str) -> TrainConfig:
    return TrainConfig(method=name, **SMALL)


def test_targets_start_as_copies_of_the_online_network() -> None:
    for name, (bb, head) in TARGETS.items():
        method = _build(name)
        for a, b in zip(method.backbone.parameters(), getattr(method, bb).parameters(), strict=True):
            assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
        for a, b in zip(method.head.parameters(), getattr(method, head).parameters(), strict=True):
            assert torch.equal(a, b)


def test_cosine_momentum_schedule() -> None:
    assert cosine_momentum(0, 100, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(50, 100, 0.99) == pytest.approx(0.995)
    assert cosine_momentum(100, 100, 0.99) == 1.0
    assert cosine_momentum(25, 100, 0.9) == pytest.approx(1 - 0.1 * (2**-0.5 + 1) / 2)


def _perturb_online(method: nn.Module) -> None:
    with torch.no_grad():
        for p in list(method.backbone.parameters()) + list(method.head.parameters()):
            p.add_(torch.randn_like(p))


@pytest.mark.parametrize("name", ("byol", "moco", "dino"))
def test_ema_update_matches_the_formula(name: str) -> None:
    base = 0.9
    method = _build(name, momentum=base)
    _perturb_online(method)
    bb, head = TARGETS[name]
    pairs = list(zip(getattr(method, bb).parameters(), method.backbone.parameters())) + list(
        zip(getattr(method, head).parameters(), method.head.parameters())
    )
    before = [(t.clone(), o.clone()) for t, o in pairs]
    method.after_step(2, 4)  # BYOL, DINO: tau = 1 - 0.1 (cos(pi/2) + 1)/2 = 0.95; MoCo: constant 0.9
    tau = 0.9 if name == "moco" else 0.95
    for (t, o), (t0, o0) in zip(pairs, before):
        assert torch.equal(o, o0)  # the online network is untouched
        torch.testing.assert_close(t, tau * t0 + (1 - tau) * o0, rtol=0, atol=1e-6)
    assert any(not torch.equal(t, t0) for (t, _), (t0, _) in zip(pairs, before))


def test_ema_update_exact_on_dyadic_values() -> None:
    target, online = nn.Linear(2, 2), nn.Linear(2, 2)
    with torch.no_grad():
        for p in target.parameters():
            p.fill_(1.0)
        for p in online.parameters():
            p.fill_(3.0)
    ema_update(target, online, 0.75)
    assert all(torch.equal(p, torch.full_like(p, 1.5)) for p in target.parameters())  # 0.75 * 1 + 0.25 * 3
    ema_update(target, online, 0.0)
    assert all(torch.equal(p, torch.full_like(p, 3.0)) for p in target.parameters())


def test_byol_target_reaches_online_weights_at_the_last_step() -> None:
    method = _build("byol", momentum=0.5)
    _perturb_online(method)
    method.after_step(10, 10)  # tau = 1: the target does not move at the end
    assert not torch.equal(_first_conv(method.target_backbone).weight, _first_conv(method.backbone).weight)


def _unit(rows: list[list[float]]) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def test_queue_is_fifo_with_wrap_around() -> None:
    q = FeatureQueue(5, 2)
    a = _unit([[1, 0], [0, 1], [1, 1]])
    b = _unit([[-1, 0], [0, -1], [-1, -1]])
    start = q.vectors.clone()
    q.push(a)
    assert torch.allclose(q.vectors[:3], a) and torch.equal(q.vectors[3:], start[3:]) and int(q.ptr) == 3
    q.push(b * 7.0)  # stored normalised
    # slots 3, 4 then wrap to 0: b[0], b[1] at the end, b[2] overwrote the oldest (a[0])
    assert torch.allclose(q.vectors, torch.stack([b[2], a[1], a[2], b[0], b[1]]))
    assert int(q.ptr) == 1
    c = _unit([[float(i), 1.0] for i in range(7)])
    q.push(c)  # more than K: the last 5 are kept, oldest first from the pointer
    assert torch.allclose(q.vectors, torch.stack([c[6], c[2], c[3], c[4], c[5]]))
    assert int(q.ptr) == 1


def test_moco_enqueues_both_views_keys_in_training_only() -> None:
    method = _build("moco", queue_size=24)
    method.train()
    views = _views(b=5)
    method(views)
    assert int(method.queue.ptr) == 10
    with torch.no_grad():
        k = [method.key_head(method.key_backbone(torch.cat(views)))]  # BN in train mode: same batch statistics
    torch.testing.assert_close(method.queue.vectors[:10], torch.nn.functional.normalize(k[0], dim=1))
    method.eval()
    before = method.queue.vectors.clone()
    method(views)
    assert torch.equal(method.queue.vectors, before) and int(method.queue.ptr) == 10


def test_nnclr_support_set_holds_first_view_projections() -> None:
    method = _build("nnclr", queue_size=24)
    views = _views(b=4)
    method(views)
    assert int(method.support.ptr) == 4


@pytest.mark.parametrize("name", ("byol", "moco", "nnclr", "dino"))
def test_state_dict_covers_target_and_queue(name: str) -> None:
    method = _build(name)
    method(_views_for(method))
    method.after_step(1, 10)
    state = method.state_dict()
    keys = set(state)
    if name in TARGETS:
        for part in TARGETS[name]:
            assert any(k.startswith(part + ".") for k in keys), part
    if name == "moco":
        assert {"queue.vectors", "queue.ptr"} <= keys
    if name == "nnclr":
        assert {"support.vectors", "support.ptr"} <= keys
    if name == "dino":
        assert "loss.center" in keys and state["loss.center"].abs().sum() > 0  # moved by the training forward
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    restored = _build(name, seed=1)  # other initial weights and queue
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for k, v in restored.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_build_method_refuses_bad_options() -> None:
    with pytest.raises(ConfigError, match=r"--momentum must be in \[0, 1\)"):
        TrainConfig(method="byol", momentum=1.0)
    with pytest.raises(ConfigError, match="--queue-size must be > 0"):
        TrainConfig(method="moco", queue_size=0)
    with pytest.raises(ConfigError, match="--barlow-lambda must be a finite number >= 0"):
        TrainConfig(method="barlowtwins", barlow_lambda=-1.0)
    with pytest.raises(ConfigError, match="--vicreg-var-weight must be a finite number >= 0"):
        TrainConfig(method="vicreg", vicreg_var_weight=-1.0)
    with pytest.raises(ConfigError, match="must not all be 0"):
        TrainConfig(method="vicreg", vicreg_sim_weight=0.0, vicreg_var_weight=0.0, vicreg_cov_weight=0.0)
    with pytest.raises(ConfigError, match="--pred-hidden-dim must be > 0"):
        TrainConfig(pred_hidden_dim=0)


def test_barlow_lambda_defaults_to_one_over_proj_dim() -> None:
    assert _build("barlowtwins").loss.lambda_ == 1 / 16
    assert _build("barlowtwins", barlow_lambda=5e-3).loss.lambda_ == 5e-3


@pytest.mark.parametrize("name", NEW_METHODS)
def test_cli_accepts_method_and_its_options(name: str) -> None:
    args = build_parser().parse_args(
        ["train", "--method", name, "--queue-size", "256", "--momentum", "0.996", "--barlow-lambda", "0.01",
         "--vicreg-sim-weight", "20", "--vicreg-var-weight", "30", "--vicreg-cov-weight", "2", "--pred-hidden-dim", "64"]
    )
    assert args.method == name and args.queue_size == 256 and args.momentum == 0.996
    assert args.barlow_lambda == 0.01 and args.vicreg_var_weight == 30.0 and args.pred_hidden_dim == 64


@pytest.mark.parametrize("name", NEW_METHODS)
def test_fit_one_epoch_on_real_images(name: str, fmnist_small, tmp_path) -> None:
    _, data = fmnist_small
    # fp32: bf16 kernels cost a one-off warm-up of tens of seconds per process on
    # some CPUs; bf16 is covered by test_forward_under_bf16_autocast below.
    config = TrainConfig(method=name, epochs=1, batch_size=64, monitor_bank=300, monitor_queries=100, queue_size=256, precision="fp32")
    method = build_method(config, data.train.shape[0], data.train.num_classes)
    result = fit(method, data, config, tmp_path / "run", progress=False)
    (record,) = result.history
    assert record["loss"] == record["loss"] and abs(record["loss"]) < 1e6  # finite
    assert 0.1 < record["knn_top1"] <= 1.0  # 10 classes
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    if name in TARGETS:
        assert any(k.startswith(TARGETS[name][0] + ".") for k in state)
    if name == "moco":
        steps = len(data.train) // 64
        assert int(state["queue.ptr"]) == (steps * 2 * 64) % 256
    if name == "dino":
        assert method.num_local_views == 4 and state["loss.center"].shape == (config.dino_out_dim,)
        assert state["loss.center"].abs().sum() > 0
        assert not torch.equal(state["teacher_head.prototypes"], state["head.prototypes"])  # EMA lags the student
    reloaded, _, _ = load_method(tmp_path / "run", which="last")
    assert type(reloaded) is type(method)


# --------------------------------------------------------------------- DINO


def test_dino_head_is_an_l2_bottleneck_then_weight_normalised_prototypes() -> None:
    torch.manual_seed(0)
    head = DINOHead(12, 32, 8, 50)
    x = torch.randn(5, 12)
    out = head(x)
    assert out.shape == (5, 50) and out.abs().max() <= 1 + 1e-6  # cosines
    code = torch.nn.functional.normalize(head.mlp(x), dim=1)
    protos = torch.nn.functional.normalize(head.prototypes, dim=1)
    torch.testing.assert_close(out, code @ protos.T)
    with torch.no_grad():
        head.prototypes.mul_(torch.rand(50, 1) * 10 + 0.1)  # weight norm with g = 1: row scales do not matter
    torch.testing.assert_close(head(x), out)
    assert sum(isinstance(m, nn.Linear) for m in head.mlp) == 3 and not any(isinstance(m, nn.BatchNorm1d) for m in head.mlp)
    with pytest.raises(ConfigError, match="DINOHead: out_dim must be a positive integer"):
        DINOHead(12, 32, 8, 0)


def test_local_views_default_per_method() -> None:
    assert _build("dino").num_local_views == 4  # the DINO recipe is multi-crop
    assert _build("simclr").num_local_views == 0  # plain two-view SimCLR unless asked
    assert _build("simclr", local_views=3).num_local_views == 3
    assert _build("byol", local_views=3).num_local_views == 0  # other methods ignore it


def test_simclr_multi_crop_is_supcon_with_one_class_per_image() -> None:
    from contrastkit.losses import nt_xent_loss, supcon_loss

    method = _build("simclr", local_views=2, temperature=0.2)
    views = _views_for(method, b=5)
    assert [tuple(v.shape) for v in views] == [(5, 1, 16, 16)] * 2 + [(5, 1, 8, 8)] * 2
    shapes: list[tuple[int, ...]] = []
    method.backbone.register_forward_hook(lambda m, i, o: shapes.append(tuple(i[0].shape)))
    method.eval()  # batch norm on running statistics: per-view passes give the same features
    with torch.no_grad():
        loss, _ = method(views)
        assert shapes == [(10, 1, 16, 16), (10, 1, 8, 8)]  # one backbone pass per view size
        z = torch.stack([method.head(method.backbone(v)) for v in views], dim=1)  # (B, V, D)
        torch.testing.assert_close(loss, supcon_loss(z, torch.arange(5), 0.2))
        # Its local crops change the loss; without them it is NT-Xent.
        assert not torch.allclose(loss, nt_xent_loss(z[:, 0], z[:, 1], 0.2))
        two_view = _build("simclr", temperature=0.2)
        two_view.load_state_dict(method.state_dict())
        two_view.eval()
        loss2, _ = two_view(views[:2])
        torch.testing.assert_close(loss2, nt_xent_loss(z[:, 0], z[:, 1], 0.2))
    method.train()
    loss, _ = method(views)
    loss.backward()
    assert _first_conv(method.backbone).weight.grad.abs().sum() > 0


def test_dino_views_and_one_backbone_pass_per_size() -> None:
    method = _build("dino", local_views=3)
    assert isinstance(method, DINO) and (method.num_views, method.num_local_views) == (2, 3)
    assert _build("dino", local_views=0).num_local_views == 0
    assert BYOL.num_local_views == 0  # only DINO asks for local views
    shapes: list[tuple[int, ...]] = []
    method.backbone.register_forward_hook(lambda m, i, o: shapes.append(tuple(i[0].shape)))
    teacher_shapes: list[tuple[int, ...]] = []
    method.teacher_backbone.register_forward_hook(lambda m, i, o: teacher_shapes.append(tuple(i[0].shape)))
    method(_views_for(method, b=4))
    assert shapes == [(8, 1, 16, 16), (12, 1, 8, 8)]  # globals together, locals together
    assert teacher_shapes == [(8, 1, 16, 16)]  # the teacher sees the global views only


def test_dino_without_local_views_is_algorithm_1() -> None:
    from contrastkit.losses import dino_loss

    method = _build("dino", local_views=0)
    views = _views_for(method, b=4)
    assert len(views) == 2
    center = method.loss.center.clone()
    loss, _ = method(views)
    with torch.no_grad():
        s = torch.stack([method.head(method.backbone(torch.cat(views)))[i * 4 : (i + 1) * 4] for i in range(2)])
        t = torch.stack([method.teacher_head(method.teacher_backbone(torch.cat(views)))[i * 4 : (i + 1) * 4] for i in range(2)])
    # H(t1, s2)/2 + H(t2, s1)/2 with the centre before the update (BN in training mode: same batch statistics)
    torch.testing.assert_close(loss.detach(), dino_loss(s, t, center, 0.1, 0.04), rtol=1e-5, atol=1e-6)


def test_warmed_up_is_linear_then_constant() -> None:
    from contrastkit.methods.targets import warmed_up

    assert [warmed_up(k, 4, 0.04, 0.08) for k in (0, 1, 2, 4, 9)] == pytest.approx([0.04, 0.05, 0.06, 0.08, 0.08])
    assert warmed_up(0, 0, 0.04, 0.07) == 0.07  # no warm-up: the final value from the start


def test_dino_teacher_temperature_warm_up_per_step_and_in_the_state_dict() -> None:
    from contrastkit.losses import dino_loss

    assert "teacher_temp" not in _build("dino").state_dict()  # off by default: checkpoints keep their keys
    method = _build("dino", local_views=0, epochs=4, dino_warmup_teacher_temp=0.04,
                    dino_teacher_temp=0.08, dino_warmup_teacher_temp_epochs=2)
    assert float(method.state_dict()["teacher_temp"]) == pytest.approx(0.04)
    views = _views_for(method, b=4)
    center = method.loss.center.clone()
    loss, logs = method(views)
    assert logs["teacher_temp"] == pytest.approx(0.04)
    with torch.no_grad():
        s = method.head(method.backbone(torch.cat(views))).reshape(2, 4, -1)
        t = method.teacher_head(method.teacher_backbone(torch.cat(views))).reshape(2, 4, -1)
    torch.testing.assert_close(loss.detach(), dino_loss(s, t, center, 0.1, 0.04), rtol=1e-5, atol=1e-6)
    # 8 steps in all, 2 of 4 epochs of warm-up = 4 steps: 0.04, 0.05, 0.06, 0.07, then 0.08.
    seen = []
    for step in range(1, 7):
        method.after_step(step, 8)
        seen.append(float(method.teacher_temp))
    assert seen == pytest.approx([0.05, 0.06, 0.07, 0.08, 0.08, 0.08])
    method.after_step(2, 8)
    resumed = _build("dino", local_views=0, epochs=4, dino_warmup_teacher_temp=0.04,
                     dino_teacher_temp=0.08, dino_warmup_teacher_temp_epochs=2)
    resumed.load_state_dict(method.state_dict())  # a checkpoint carries the temperature of the next step
    _, logs = resumed(views)
    assert logs["teacher_temp"] == pytest.approx(0.06)


def test_dino_warm_up_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="--dino-warmup-teacher-temp must be > 0"):
        TrainConfig(method="dino", dino_warmup_teacher_temp=0.0)
    with pytest.raises(ConfigError, match="--dino-warmup-teacher-temp-epochs must be a finite number >= 0"):
        TrainConfig(method="dino", dino_warmup_teacher_temp_epochs=-1)


def test_dino_centre_moves_after_a_training_forward_only() -> None:
    method = _build("dino", dino_center_momentum=0.5)
    views = _views_for(method, b=4)
    assert torch.equal(method.loss.center, torch.zeros(64))
    method(views)
    after_one = method.loss.center.clone()
    assert after_one.abs().sum() > 0
    with torch.no_grad():
        t = method.teacher_head(method.teacher_backbone(torch.cat(views[:2])))  # (2B, K)
    torch.testing.assert_close(after_one, 0.5 * torch.zeros(64) + 0.5 * t.mean(0), rtol=1e-5, atol=1e-6)
    method.eval()
    method(views)
    assert torch.equal(method.loss.center, after_one)


def test_dino_teacher_is_frozen_while_the_student_learns() -> None:
    method = _build("dino")
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    teacher_before = [p.clone() for p in method.teacher_head.parameters()]
    student_before = [p.clone() for p in method.head.parameters()]
    loss, _ = method(_views_for(method))
    loss.backward()
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(method.teacher_head.parameters(), teacher_before, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(method.head.parameters(), student_before, strict=True))


def test_dino_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="--local-views must be >= 0"):
        TrainConfig(method="dino", local_views=-1)
    with pytest.raises(ConfigError, match="--dino-out-dim must be > 0"):
        TrainConfig(method="dino", dino_out_dim=0)
    with pytest.raises(ConfigError, match="--dino-teacher-temp must be > 0"):
        TrainConfig(method="dino", dino_teacher_temp=0.0)
    with pytest.raises(ConfigError, match="--dino-student-temp must be > 0"):
        TrainConfig(method="dino", dino_student_temp=-0.1)
    with pytest.raises(ConfigError, match=r"--dino-center-momentum must be in \[0, 1\)"):
        TrainConfig(method="dino", dino_center_momentum=1.0)


def test_cli_accepts_dino_and_its_options() -> None:
    args = build_parser().parse_args(
        ["train", "--method", "dino", "--local-views", "2", "--dino-out-dim", "256", "--dino-teacher-temp", "0.07",
         "--dino-student-temp", "0.2", "--dino-center-momentum", "0.8", "--momentum", "0.996"]
    )
    config, _ = _config_from_args(args)
    assert (config.method, config.local_views, config.dino_out_dim) == ("dino", 2, 256)
    assert (config.dino_teacher_temp, config.dino_student_temp, config.dino_center_momentum, config.momentum) == (0.07, 0.2, 0.8, 0.996)
    method = build_method(config, in_channels=1)
    assert method.num_local_views == 2 and method.loss.center.shape == (256,)
    assert method.loss.teacher_temp == 0.07 and method.loss.student_temp == 0.2 and method.loss.center_momentum == 0.8
