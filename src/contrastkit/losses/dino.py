"""DINO's self-distillation loss and its teacher centre (arXiv 2104.14294)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.errors import ConfigError
from contrastkit.losses._checks import _check_positive, _float32_region, _check_unit_interval


def _check_dino_outputs(student: Tensor, teacher: Tensor) -> None:
    """Raise ValueError unless student is (V, N, K) and teacher (G, N, K) with 1 <= G <= V, V >= 2.

    Args:
        student: Student logits of every view.
        teacher: Teacher logits of the global views.
    """
    if student.ndim != 3 or teacher.ndim != 3 or student.shape[1:] != teacher.shape[1:]:
        raise ValueError(
            f"student must have shape (V, N, K) and teacher (G, N, K), got student {tuple(student.shape)} "
            f"and teacher {tuple(teacher.shape)}"
        )
    v, n, k = student.shape
    if not 1 <= teacher.shape[0] <= v or v < 2 or n == 0 or k == 0:
        raise ValueError(
            f"need V >= 2 student views, 1 <= G <= V teacher views and N, K >= 1, got student "
            f"{tuple(student.shape)} and teacher {tuple(teacher.shape)}"
        )


def dino_loss(
    student: Tensor, teacher: Tensor, center: Tensor, student_temp: float = 0.1, teacher_temp: float = 0.04
) -> Tensor:
    """DINO self-distillation loss: Caron et al. (2021), arXiv 2104.14294, Eq. 1 / Algorithm 1, with multi-crop (Eq. 3).

    The teacher's distribution of global view g is centred and sharpened,
    ``P_t = softmax((t_g - c) / tau_t)`` (Algorithm 1), the student's of view
    v is ``P_s = softmax(s_v / tau_s)``, and the loss is the cross-entropy
    ``H(P_t, P_s) = -sum_k P_t log P_s`` averaged over the batch and over every
    pair (g, v) with g != v (Eq. 3: the teacher sees only the G global views,
    the student all V views, and no view is compared with itself), i.e. a mean
    over ``G (V - 1)`` pairs as in the paper's code. Student view g (g < G) and
    teacher view g must be the same crop. The teacher side is detached.

    Args:
        student: Student logits of all views, global ones first, shape (V, N, K), V >= 2.
        teacher: Teacher logits of the global views, shape (G, N, K), 1 <= G <= V.
        center: The centre c, shape (K,) (see :func:`dino_center_update`).
        student_temp: Student temperature tau_s > 0 (paper: 0.1).
        teacher_temp: Teacher temperature tau_t > 0 (paper: 0.04 to 0.07; below tau_s it sharpens).

    Returns:
        Scalar float32 loss, >= the mean entropy of the teacher's distributions.

    Raises:
        ConfigError: If a temperature is not a finite number > 0.
        ValueError: If the shapes do not fit.
    """
    _check_positive("student_temp", student_temp)
    _check_positive("teacher_temp", teacher_temp)
    _check_dino_outputs(student, teacher)
    g, v, n, k = teacher.shape[0], student.shape[0], student.shape[1], student.shape[2]
    if center.shape != (k,):
        raise ValueError(f"center must have shape ({k},), got {tuple(center.shape)}")
    with _float32_region(student.device):
        p_t = F.softmax((teacher.detach().float() - center.detach().float()) / teacher_temp, dim=-1)  # (G, N, K)
        log_p_s = F.log_softmax(student.float() / student_temp, dim=-1)  # (V, N, K)
        ce = -torch.einsum("gnk,vnk->gv", p_t, log_p_s) / n  # (G, V): H(P_t of g, P_s of v), batch mean
        pairs = ~torch.eye(g, v, dtype=torch.bool, device=ce.device)  # (G, V), no view with itself
        return ce[pairs].mean()


def dino_center_update(center: Tensor, teacher: Tensor, momentum: float = 0.9) -> Tensor:
    """The new DINO centre: ``c <- m c + (1 - m) mean(t)`` (Caron et al. 2021, arXiv 2104.14294, Eq. 4).

    ``mean(t)`` is the mean teacher logit vector over the batch and the global
    views. The result is detached. Under data parallelism the caller gathers
    the teacher logits of every rank first (the paper all-reduces the batch
    mean), like every other loss here.

    Args:
        center: Current centre, shape (K,).
        teacher: Teacher logits, shape (G, N, K) or (N, K).
        momentum: Centre momentum m in [0, 1) (paper: 0.9).

    Returns:
        The updated centre, shape (K,), float32.

    Raises:
        ConfigError: If ``momentum`` is not in [0, 1).
        ValueError: If the shapes do not fit.
    """
    _check_unit_interval("center momentum", momentum)
    k = center.shape[-1] if center.ndim == 1 else -1
    if center.ndim != 1 or teacher.shape[-1] != k or teacher.numel() == 0:
        raise ValueError(f"center must be (K,) and teacher (..., K) with K matching, got center "
                         f"{tuple(center.shape)} and teacher {tuple(teacher.shape)}")
    with _float32_region(center.device):
        batch_center = teacher.detach().float().reshape(-1, k).mean(dim=0)  # (K,)
        return momentum * center.detach().float() + (1.0 - momentum) * batch_center


class DINOLoss(nn.Module):
    """DINO: Caron et al. (2021), arXiv 2104.14294, Eq. 1 and 3 with centring and sharpening (Algorithm 1).

    Owns the centre c, a (K,) float32 buffer (zeros at first, as in the
    paper's code), so checkpoints and resume cover it. ``forward`` returns
    :func:`dino_loss` with the current centre and then, in training mode
    only, moves the centre with :func:`dino_center_update` (the update
    follows the loss, as in Algorithm 1). Inputs: student logits (V, N, K),
    teacher logits (G, N, K). Output: scalar float32 loss.
    """

    center: Tensor

    def __init__(
        self, out_dim: int, student_temp: float = 0.1, teacher_temp: float = 0.04, center_momentum: float = 0.9
    ) -> None:
        """Check and store the hyper-parameters; the centre starts at zero.

        Args:
            out_dim: Number of prototypes K >= 1.
            student_temp: Student temperature tau_s > 0 (paper: 0.1).
            teacher_temp: Teacher temperature tau_t > 0 (paper: 0.04 to 0.07).
            center_momentum: Centre momentum m in [0, 1) (paper: 0.9).

        Raises:
            ConfigError: If a hyper-parameter is out of range.
        """
        super().__init__()
        if isinstance(out_dim, bool) or not isinstance(out_dim, int) or out_dim < 1:
            raise ConfigError(f"out_dim must be a positive integer, got {out_dim!r}")
        _check_positive("student_temp", student_temp)
        _check_positive("teacher_temp", teacher_temp)
        _check_unit_interval("center momentum", center_momentum)
        self.student_temp = student_temp
        self.teacher_temp = teacher_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(out_dim))  # (K,)

    def forward(self, student: Tensor, teacher: Tensor, center_source: Tensor | None = None) -> Tensor:
        """Loss of the student's views against the teacher's global views; then the centre update (training only).

        Args:
            student: Student logits (V, N, K).
            teacher: Teacher logits (G, N, K).
            center_source: Teacher logits (..., K) the centre moves towards the
                mean of; default ``teacher``. Under data parallelism the
                caller passes the batch mean all-reduced over the ranks, shape
                (1, K), as the paper's code does.
        """
        loss = dino_loss(student, teacher, self.center.clone(), self.student_temp, self.teacher_temp)
        if self.training:
            with torch.no_grad():
                source = teacher if center_source is None else center_source
                self.center.copy_(dino_center_update(self.center, source, self.center_momentum))
        return loss

    def extra_repr(self) -> str:
        """Hyper-parameters shown by ``repr``."""
        return (f"out_dim={self.center.shape[0]}, student_temp={self.student_temp}, "
                f"teacher_temp={self.teacher_temp}, center_momentum={self.center_momentum}")
