"""The distillation losses, METHOD.md equations (8)-(11): pure functions, tensors in, scalar out, no model calls.

Shapes: N pairs, H hidden, V vocabulary (or 2 when restricted to the answer tokens).

Choices not fixed by the paper:
- the KLs run over the full vocabulary by default; `support=(y_pos, y_neg)` restricts both distributions to the
  two answer tokens (renormalised);
- temperature tau divides both logits; the KL is NOT multiplied by tau^2 (no gradient-scale correction);
- lmbda in (10) is a free weight chosen on a development split;
- the listwise KL (10b) is an option beyond the paper, off by default (mu = 0);
- the pool term (11), InfoNCE of the student's scores of the gold against pool documents, is beyond the paper and on
  by default in distill.py (`--nce`): (8)-(10) alone never see a document the teacher did not score.
"""
from __future__ import annotations

from dataclasses import dataclass

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
    """The ablation of (9) (distill.py --kl forward): KL(p_T || p_S) = sum_v p_T(v) (log p_T(v) - log p_S(v)).
    Shapes and reduction as reverse_kl."""
    log_p_s = _log_probs(student_logits, tau, support)
    log_p_t = _log_probs(teacher_logits.detach(), tau, support)
    # F.kl_div(input, target, log_target=True) = KL(target || input): target = log p_T, input = log p_S.
    return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="sum") / student_logits.shape[0]


def listwise_kl(student_scores: torch.Tensor, teacher_scores: torch.Tensor, groups: torch.Tensor,
                tau: float = 1.0) -> torch.Tensor:
    """(10b) [ours, beyond the paper] reverse KL between the student's and the teacher's score distributions over the
    documents of one query: for each query q with pairs D_q in the batch, KL(softmax(s_S(q, D_q) / tau) ||
    softmax(s_T(q, D_q) / tau)); mean over the queries with at least two documents (one document carries no ranking).
    student_scores, teacher_scores (N,) = z[y+] - z[y-] (3); groups (N,) the query of each pair; teacher detached."""
    teacher_scores = teacher_scores.detach()
    terms = []
    for g in torch.unique(groups):
        m = groups == g
        if int(m.sum()) < 2:
            continue
        log_p_s = F.log_softmax(student_scores[m] / tau, dim=-1)
        log_p_t = F.log_softmax(teacher_scores[m] / tau, dim=-1)
        terms.append((log_p_s.exp() * (log_p_s - log_p_t)).sum())
    return torch.stack(terms).mean() if terms else student_scores.new_zeros(())


def pool_nce(scores: torch.Tensor, target: torch.Tensor, exclude: torch.Tensor | None = None,
             tau: float = 1.0) -> torch.Tensor:
    """(11) [ours, beyond the paper] InfoNCE of the student's scores over documents of the pool, so that documents
    the teacher never scored for a query still enter its loss: for each query q with gold document d+ and pool
    documents D(q) (d+ among them), L_pool = -log( exp(s_S(q, d+) / tau) / sum_{d in D(q)} exp(s_S(q, d) / tau) ).
    scores (B, n) s_S of each query against n documents; target (B,) the column of each query's d+; exclude (B, n)
    True for documents that must not count as negatives (the query's other gold documents). Mean over the B queries."""
    logits = scores / tau
    if exclude is not None:
        keep = torch.zeros_like(exclude)
        keep[torch.arange(len(target), device=target.device), target] = True
        logits = logits.masked_fill(exclude & ~keep, float("-inf"))
    return F.cross_entropy(logits, target)


@dataclass(frozen=True)
class Weights:
    """The weights of the objective (10). The paper's: `jepa` on (8) and `lmbda` on (9) (an ablation sets one to 0).
    Ours, beyond the paper: `mu` on the listwise KL (10b) and `nu` on the pool term (11) (0 = off)."""
    jepa: float = 1.0
    lmbda: float = 1.0
    mu: float = 0.0
    nu: float = 0.0


def total_loss(h_hat: torch.Tensor, h_T: torch.Tensor, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               w: Weights = Weights(), tau: float = 1.0, support: tuple[int, ...] | None = None, kl: str = "reverse",
               groups: torch.Tensor | None = None, answer: tuple[int, int] | None = None,
               pool: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float] | None = None,
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """(10) L = jepa L_JEPA (8) + lmbda L_RKL (9) [+ mu L_list (10b)] [+ nu L_pool (11)], the weights `w`; a term
    whose weight is 0 is not computed. h_hat, h_T (N, H); student_logits, teacher_logits (N, V); kl="forward" swaps
    in the forward KL (an ablation). (10b) needs `groups` (N,), the query of each pair, and `answer` (y+, y-), the
    tokens of the score (3); (11) needs `pool` = (scores (B, n), target (B,), exclude (B, n), tau_p) of the pool
    term's queries. Returns (loss, {"jepa", "kl", "list", "pool", "total"}), the parts for logging."""
    zero = h_hat.new_zeros(())
    l_jepa = jepa_loss(h_hat, h_T) if w.jepa else zero
    kl_fn = reverse_kl if kl == "reverse" else forward_kl
    l_kl = kl_fn(student_logits, teacher_logits, tau, support) if w.lmbda else zero
    loss = w.jepa * l_jepa + w.lmbda * l_kl
    l_list = l_pool = zero
    if w.mu:
        if groups is None or answer is None:
            raise ValueError("the listwise term (mu > 0) needs groups (the query of each pair) and answer (y+, y-)")
        y_pos, y_neg = answer
        l_list = listwise_kl(student_logits[:, y_pos] - student_logits[:, y_neg],
                             teacher_logits[:, y_pos] - teacher_logits[:, y_neg], groups, tau)
        loss = loss + w.mu * l_list
    if w.nu:
        if pool is None:
            raise ValueError("the pool term (nu > 0) needs pool = (scores, target, exclude, tau)")
        l_pool = pool_nce(*pool)
        loss = loss + w.nu * l_pool
    return loss, {"jepa": l_jepa.item(), "kl": l_kl.item(), "list": l_list.item(), "pool": l_pool.item(),
                  "total": loss.item()}
