"""The distillation losses, METHOD.md equations (8)-(10): pure functions, tensors in, scalar out, no model calls.

Shapes: N pairs, H hidden, V vocabulary (or 2 when restricted to the answer tokens).

Choices not fixed by the paper:
- the KLs run over the full vocabulary by default; `support=(y_pos, y_neg)` restricts both distributions to the
  two answer tokens (renormalised);
- temperature tau divides both logits; the KL is NOT multiplied by tau^2 (no gradient-scale correction);
- lmbda in (10) is a free weight chosen on a development split.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def jepa_loss(h_hat: torch.Tensor, h_T: torch.Tensor) -> torch.Tensor:
    """(8) L_JEPA = mean over pairs and H of (h_hat - stopgrad(h_T))^2.
    h_hat (N, H) predicted query embedding, h_T (N, H) teacher embedding (detached here). Reduction: mean."""
    return F.mse_loss(h_hat, h_T.detach())


def _log_probs(logits: torch.Tensor, tau: float, support: tuple[int, ...] | None) -> torch.Tensor:
    if support is not None:
        logits = logits[..., list(support)]
    return F.log_softmax(logits / tau, dim=-1)


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float = 1.0,
               support: tuple[int, ...] | None = None) -> torch.Tensor:
    """(9) L_RKL = KL(p_S || p_T) = sum_v p_S(v) (log p_S(v) - log p_T(v)), p = softmax(z / tau).
    student_logits, teacher_logits (N, V); teacher side detached. Sum over V, mean over N."""
    log_p_s = _log_probs(student_logits, tau, support)
    log_p_t = _log_probs(teacher_logits.detach(), tau, support)
    # F.kl_div(input, target, log_target=True) = sum exp(target) (target - input) = KL(target || input):
    # target = log p_S, input = log p_T gives KL(p_S || p_T), the reverse KL.
    return F.kl_div(log_p_t, log_p_s, log_target=True, reduction="sum") / student_logits.shape[0]


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float = 1.0,
               support: tuple[int, ...] | None = None) -> torch.Tensor:
    """Ablation only: KL(p_T || p_S) = sum_v p_T(v) (log p_T(v) - log p_S(v)). Shapes and reduction as reverse_kl."""
    log_p_s = _log_probs(student_logits, tau, support)
    log_p_t = _log_probs(teacher_logits.detach(), tau, support)
    # F.kl_div(input, target, log_target=True) = KL(target || input): target = log p_T, input = log p_S.
    return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="sum") / student_logits.shape[0]


def total_loss(h_hat: torch.Tensor, h_T: torch.Tensor, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               lmbda: float = 1.0, tau: float = 1.0, support: tuple[int, ...] | None = None, use_jepa: bool = True,
               kl: str = "reverse") -> tuple[torch.Tensor, dict[str, float]]:
    """(10) L = L_JEPA + lmbda * L_RKL. Returns (loss, {"jepa", "kl", "total"}) with the parts for logging.
    `use_jepa=False` and `lmbda=0` are the two ablations; kl="forward" swaps in the forward KL (ablation)."""
    l_jepa = jepa_loss(h_hat, h_T) if use_jepa else h_hat.new_zeros(())
    kl_fn = reverse_kl if kl == "reverse" else forward_kl
    l_kl = kl_fn(student_logits, teacher_logits, tau, support) if lmbda else h_hat.new_zeros(())
    loss = l_jepa + lmbda * l_kl
    return loss, {"jepa": l_jepa.item(), "kl": l_kl.item(), "total": loss.item()}
