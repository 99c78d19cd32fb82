"""DINO: self-distillation with no labels, a teacher following the student by EMA, with multi-crop.

The loss is :class:`contrastkit.losses.DINOLoss`.
"""

from __future__ import annotations

import torch
from torch import nn

from contrastkit.config import TrainConfig
from contrastkit.distributed import all_reduce_mean
from contrastkit.errors import ConfigError
from contrastkit.losses import DINOLoss
from contrastkit.methods.base import Method, _forward_by_size
from contrastkit.methods.targets import _frozen_copy, cosine_momentum, ema_update, warmed_up
from contrastkit.models.heads import DINOHead


class DINO(Method):
    """DINO (Caron et al. 2021, arXiv 2104.14294): self-distillation with no labels.

    Student = backbone + :class:`DINOHead`; teacher (``teacher_backbone``,
    ``teacher_head``) = a copy that never receives gradients, lives in the
    state dict and follows the student by EMA in :meth:`after_step`, with
    tau following :func:`cosine_momentum` from ``--momentum`` to 1 (the
    paper's schedule, as BYOL's). The teacher sees the 2 global views, the
    student those and ``--local-views`` small local crops (multi-crop); the
    loss (:class:`DINOLoss`, Eq. 1 and 3) is the cross-entropy from the
    centred, sharpened teacher to the student over every pair of different
    views, and the centre (``loss.center``) moves after each training forward,
    towards the teacher's batch mean all-reduced over the ranks under data
    parallelism (Eq. 4; the loss itself is per image and needs no gather).

    The teacher temperature is the constant ``--dino-teacher-temp`` (the
    paper code's default, 0.04) or, with ``--dino-warmup-teacher-temp-epochs
    E > 0``, warms up linearly per step from ``--dino-warmup-teacher-temp``
    over the first E epochs (:func:`warmed_up`; the paper: 0.04 to 0.07 over
    30 epochs). The current value is the buffer ``teacher_temp``, set in
    :meth:`after_step`, so a resumed run continues from it exactly; it only
    exists when the warm-up is on, so other checkpoints keep their keys.

    Not taken from the paper: freezing the prototypes during the first epoch.
    """

    num_views = 2

    def __init__(self, backbone: nn.Module, config: TrainConfig) -> None:
        super().__init__(backbone)
        self.num_local_views = 4 if config.local_views is None else config.local_views
        self.head = DINOHead(backbone.embed_dim, config.proj_hidden_dim, config.proj_dim, config.dino_out_dim)
        self.teacher_backbone = _frozen_copy(backbone)
        self.teacher_head = _frozen_copy(self.head)
        self.base_momentum = config.momentum
        self.loss = DINOLoss(config.dino_out_dim, config.dino_student_temp, config.dino_teacher_temp, config.dino_center_momentum)
        if config.dino_warmup_teacher_temp_epochs > 0 and config.epochs is None:
            raise ConfigError("--dino-warmup-teacher-temp-epochs needs the run's length in epochs: build the method from "
                              "contrastkit.train.resolve_epochs(config, data.train), as `contrastkit train` does, or give --epochs")
        self.warmup_epochs_fraction = config.dino_warmup_teacher_temp_epochs / config.epochs if config.epochs else 0.0
        self.temp_start, self.temp_end = config.dino_warmup_teacher_temp, config.dino_teacher_temp
        self.warms_up = self.warmup_epochs_fraction > 0
        if self.warms_up:
            self.register_buffer("teacher_temp", torch.tensor(self.temp_start, dtype=torch.float32))

    def forward(self, views: list[torch.Tensor], labels: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        if len(views) < self.num_views:
            raise ConfigError(f"method 'dino' needs at least {self.num_views} global views, got {len(views)}")
        student = _forward_by_size(self.backbone, self.head, views)  # (V, B, K)
        with torch.no_grad():
            teacher = _forward_by_size(self.teacher_backbone, self.teacher_head, views[: self.num_views])  # (2, B, K)
            batch_mean = all_reduce_mean(teacher.float().reshape(-1, teacher.shape[-1]).mean(dim=0))  # (K,)
        if self.warms_up:
            self.loss.teacher_temp = float(self.teacher_temp)
        loss = self.loss(student, teacher, center_source=batch_mean[None])
        logs = {"loss": float(loss.detach())}
        if self.warms_up:
            logs["teacher_temp"] = self.loss.teacher_temp
        return loss, logs

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """EMA of the student into the teacher (tau = :func:`cosine_momentum`); the teacher temperature of the next step."""
        tau = cosine_momentum(step, total_steps, self.base_momentum)
        ema_update(self.teacher_backbone, self.backbone, tau)
        ema_update(self.teacher_head, self.head, tau)
        if self.warms_up:
            warmup_steps = round(self.warmup_epochs_fraction * total_steps)
            self.teacher_temp.fill_(warmed_up(step, warmup_steps, self.temp_start, self.temp_end))
