"""The TimeDistill loss: ground truth + multi-scale and multi-period matching of a frozen teacher.

Ni, Liu, Wang, Jin, Jin, "TimeDistill: Efficient Long-Term Time Series Forecasting with MLP via
Cross-Architecture Distillation", arXiv 2502.15016 (KDD 2026); docs/method.md ("Loss").

    L = sup  * MSE(Yhat_s, y)
      + alpha * ( L_period(Yhat_s, Yhat_t) + L_scale(Yhat_s, Yhat_t) )     predictions [B, S, C], along S
      + beta  * ( L_period(H_s, P(H_t))    + L_scale(H_s, P(H_t)) )        features    [B, C, D], along D

- L_scale (``multiscale_mse``): MSE at the original resolution and after 1..scales rounds of
  non-overlapping width-2 average pooling, averaged over the resolutions.
- L_period (``period_kl``): |rFFT| along the axis without the zero-frequency bin, softmax at
  temperature tau, KL(teacher || student) averaged over every element (``reduction="mean"``).
- P (``TimeDistillLoss.projection``): Linear(d_t -> D) -> ReLU -> Linear(D -> D), trained with the student.

The teacher's tensors are detached: no gradient ever reaches the teacher.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PART_NAMES = ("sup", "pred_scale", "pred_period", "feat_scale", "feat_period")


def _pool2(x: Tensor, dim: int) -> Tensor:
    """Non-overlapping average pooling of width 2 along ``dim``; an odd last element is dropped."""
    n = x.shape[dim] // 2
    pairs = x.narrow(dim, 0, 2 * n).unflatten(dim, (n, 2))  # [..., n, 2, ...] at position dim
    return pairs.mean(dim=dim + 1)


def multiscale_mse(a: Tensor, b: Tensor, dim: int, scales: int) -> Tensor:
    """Mean over resolutions of MSE(a, b): the original one, then after each of up to ``scales`` rounds
    of width-2 average pooling along ``dim`` (floor on odd lengths). Pooling stops early once the
    length along ``dim`` is 1, so a short axis contributes fewer resolutions.
    """
    dim = dim % a.dim()
    losses = [F.mse_loss(a, b)]
    for _ in range(scales):
        if a.shape[dim] < 2:
            break
        a, b = _pool2(a, dim), _pool2(b, dim)
        losses.append(F.mse_loss(a, b))
    return torch.stack(losses).mean()


def _at_least_float32(x: Tensor) -> Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def period_kl(student: Tensor, teacher: Tensor, dim: int, tau: float) -> Tensor:
    """KL(teacher || student) between softmax(|rFFT| / tau) distributions over the frequencies.

    The amplitude spectrum is taken along ``dim`` (half precision is computed in float32: its FFT is limited),
    the zero-frequency bin is dropped, the softmax runs over the remaining frequencies separately for
    every other index (sample, variable/channel), and the KL is averaged over all elements, as the
    research code's ``F.kl_div(..., reduction="mean")`` does. An axis of length 1 has no non-zero frequency: zero.
    """
    s = torch.fft.rfft(_at_least_float32(student), dim=dim).abs()
    t = torch.fft.rfft(_at_least_float32(teacher), dim=dim).abs()
    n_freq = s.shape[dim] - 1
    if n_freq < 1:
        return student.new_zeros(())
    s, t = s.narrow(dim, 1, n_freq), t.narrow(dim, 1, n_freq)  # drop the zero frequency
    log_p_student = F.log_softmax(s / tau, dim=dim)
    log_p_teacher = F.log_softmax(t / tau, dim=dim)
    # The teacher side is in log space: on the feature level it is the trainable projection, and
    # with probabilities a bin that underflows to 0 makes d/dp [p log p] = log 0 a NaN gradient.
    # The value is the same. The elementwise mean is written out: reduction="mean" is deprecated
    # (it will mean "batchmean"), while the research code's numbers assume the elementwise mean.
    return F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True).mean()


def reduce_feature_width(feature: Tensor, max_dim: int) -> Tensor:
    """Bound the width of teacher features ``[B, C, d]`` to ``max_dim``.

    Unchanged when ``d <= max_dim``; otherwise adaptive average pooling along d to exactly ``max_dim``
    (``F.adaptive_avg_pool1d``: output j averages input positions floor(j d / m) .. ceil((j + 1) d / m) - 1),
    a deterministic function of the input. The teacher cache stores reduced features and the online path
    applies the same function, so both feed the projection the same width ``min(d, max_dim)``.
    """
    if max_dim < 1:
        raise ValueError(f"max_dim must be a positive integer, got {max_dim!r}")
    if feature.dim() != 3:
        raise ValueError(f"feature must be [B, C, d], got shape {tuple(feature.shape)}")
    if feature.shape[-1] <= max_dim:
        return feature
    return F.adaptive_avg_pool1d(feature, max_dim)  # [B, C, d] -> [B, C, max_dim]


class TimeDistillLoss(nn.Module):
    """Student loss with the trainable feature projection; returns ``(total, parts)``.

    ``parts`` holds 0-dim tensors under ``sup, pred_scale, pred_period, feat_scale, feat_period``;
    skipped terms are zeros. ``alpha == 0`` skips the prediction terms and ``beta == 0`` the feature
    terms (no projection is created then); ``sup=False`` drops the ground-truth term, ``period=False``
    / ``scale=False`` drop those terms at both levels (the paper's ablations). The projection exists
    only when a feature term is computed (``beta > 0`` and ``period or scale``), else it is None.
    """

    def __init__(
        self,
        teacher_dim: int,
        student_dim: int,
        alpha: float,
        beta: float,
        tau: float = 0.5,
        scales: int = 3,
        sup: bool = True,
        period: bool = True,
        scale: bool = True,
    ) -> None:
        super().__init__()
        for name, dim in (("teacher_dim", teacher_dim), ("student_dim", student_dim)):
            if not isinstance(dim, int) or dim < 1:
                raise ValueError(f"{name} must be a positive integer, got {dim!r}")
        for name, weight in (("alpha", alpha), ("beta", beta)):
            if not weight >= 0:
                raise ValueError(f"{name} must be >= 0, got {weight!r}")
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau!r}")
        if not isinstance(scales, int) or scales < 0:
            raise ValueError(f"scales must be a non-negative integer, got {scales!r}")
        self.alpha, self.beta, self.tau, self.scales = float(alpha), float(beta), float(tau), scales
        self.sup, self.period, self.scale = sup, period, scale
        self.projection: nn.Sequential | None = None
        if self.beta > 0 and (period or scale):
            self.projection = nn.Sequential(
                nn.Linear(teacher_dim, student_dim), nn.ReLU(), nn.Linear(student_dim, student_dim)
            )

    def _match(self, student: Tensor, teacher: Tensor, dim: int) -> tuple[Tensor, Tensor]:
        """(L_scale, L_period) of student against teacher along ``dim``; zeros for dropped terms."""
        zero = student.new_zeros(())
        scale = multiscale_mse(student, teacher, dim, self.scales) if self.scale else zero
        period = period_kl(student, teacher, dim, self.tau).to(student.dtype) if self.period else zero
        return scale, period

    def forward(
        self,
        student_pred: Tensor,  # [B, S, C]
        student_feat: Tensor,  # [B, C, D]
        teacher_pred: Tensor,  # [B, S, C]
        teacher_feat: Tensor,  # [B, C, d_t]
        target: Tensor,  # [B, S, C]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        teacher_pred, teacher_feat = teacher_pred.detach(), teacher_feat.detach()
        zero = student_pred.new_zeros(())
        parts = dict.fromkeys(PART_NAMES, zero)

        if self.sup:
            parts["sup"] = F.mse_loss(student_pred, target)
        if self.alpha > 0:
            teacher_pred = teacher_pred.to(student_pred.dtype)
            parts["pred_scale"], parts["pred_period"] = self._match(student_pred, teacher_pred, dim=1)
        if self.projection is not None:
            projected = self.projection(teacher_feat.to(student_feat.dtype))  # [B, C, d_t] -> [B, C, D]
            parts["feat_scale"], parts["feat_period"] = self._match(student_feat, projected, dim=2)

        total = (
            parts["sup"]
            + self.alpha * (parts["pred_period"] + parts["pred_scale"])
            + self.beta * (parts["feat_period"] + parts["feat_scale"])
        )
        return total, parts


class MultiTeacherLoss(nn.Module):
    """The TimeDistill loss with several teachers (beyond the paper); returns ``(total, parts)``.

    The prediction terms match the student against one target, the teachers' predictions
    averaged with weights ``w`` (summing to 1); the feature terms run per teacher, each through
    its own projection, and are averaged with the same weights:

        L = sup * MSE(Yhat_s, y) + alpha * match(Yhat_s, sum_k w_k Yhat_k)
          + beta * sum_k w_k match(H_s, P_k(H_k))

    ``weights`` fixes w (from validation errors, or uniform); None learns it, as a softmax over
    logits that start equal and train with the student. Learned weights drift towards the
    teachers the student can follow most easily, which is not always the most accurate one.
    ``parts`` adds ``teacher_weight_<k>``. With one teacher of weight 1 it is TimeDistillLoss.
    """

    fixed: Tensor  # a buffer: the given weights w [K], empty when they are learned

    def __init__(self, teacher_dims: list[int], student_dim: int, alpha: float, beta: float,
                 weights: list[float] | None = None, tau: float = 0.5, scales: int = 3, sup: bool = True,
                 period: bool = True, scale: bool = True) -> None:
        super().__init__()
        if not teacher_dims or (weights is not None and len(weights) != len(teacher_dims)):
            raise ValueError(f"need one weight per teacher: {len(teacher_dims)} teachers, weights {weights}")
        if weights is not None and (min(weights) < 0 or abs(sum(weights) - 1) > 1e-6):
            raise ValueError(f"teacher weights must be non-negative and sum to 1, got {weights}")
        term_loss = partial(TimeDistillLoss, tau=tau, scales=scales, period=period, scale=scale)
        # the prediction level: sup and the terms against the combined target (no feature terms)
        self.prediction = term_loss(teacher_dims[0], student_dim, alpha, 0.0, sup=sup)
        # the feature level: one loss per teacher, feature terms only, each with its projection
        self.features = nn.ModuleList(term_loss(dim, student_dim, 0.0, beta, sup=False) for dim in teacher_dims)
        self.logits = nn.Parameter(torch.zeros(len(teacher_dims))) if weights is None else None
        self.register_buffer("fixed", torch.tensor(weights or [], dtype=torch.float32))

    def weights(self) -> Tensor:
        return torch.softmax(self.logits, dim=0) if self.logits is not None else self.fixed

    def forward(
        self,
        student_pred: Tensor,  # [B, S, C]
        student_feat: Tensor,  # [B, C, D]
        teacher_preds: list[Tensor],  # K x [B, S, C]
        teacher_feats: list[Tensor],  # K x [B, C, d_k]
        target: Tensor,  # [B, S, C]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        w = self.weights().to(student_pred.dtype)  # [K]
        preds = torch.stack([t.detach().to(student_pred.dtype) for t in teacher_preds])  # [K, B, S, C]
        combined = (w.view(-1, 1, 1, 1) * preds).sum(0)  # [B, S, C]; learned weights get gradients through it
        zero = student_pred.new_zeros(())
        parts = dict.fromkeys(PART_NAMES, zero)
        head = self.prediction
        if head.sup:
            parts["sup"] = F.mse_loss(student_pred, target)
        if head.alpha > 0:
            parts["pred_scale"], parts["pred_period"] = head._match(student_pred, combined, dim=1)
        total = parts["sup"] + head.alpha * (parts["pred_period"] + parts["pred_scale"])
        for k, (loss, feature) in enumerate(zip(self.features, teacher_feats, strict=True)):
            term, feature_parts = loss(student_pred, student_feat, teacher_preds[k], feature, target)
            total = total + w[k] * term
            for name in ("feat_scale", "feat_period"):
                parts[name] = parts[name] + w[k] * feature_parts[name]
            parts[f"teacher_weight_{k}"] = w[k].detach()
        return total, parts
