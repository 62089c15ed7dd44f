"""The student's policy over the pool, Steps 2-3 of on-policy distillation (METHOD.md): every document of the pool
scored for each training query (Step 2), and the rules that pick the k documents the teacher scores next (Step 3).
distill.step3_pick chooses among them by the flags (`cfg`, a distill.DistillConfig).

Shapes: B queries, n documents, H hidden, P predictor width.

Choices not fixed by the paper: the pick rules (the k best-ranked, `--sampling top`, is ours; `--sampling softmax`
draws from softmax(s_S / tau_s), the policy read literally), the round-0 policy (`--round0`: BM25, the frozen
bi-encoder or uniform, where the untrained student scores every document the same), and the off-policy ablation's
fixed lists (`--policy off`).
"""
from __future__ import annotations

import math

import torch

from runtime.index import Index
from runtime.metrics import topk_blocked


def sample_softmax(scores: torch.Tensor, exclude: list[set[int]], k: int, tau_s: float,
                   gen: torch.Generator) -> list[list[int]]:
    """Step 3 with --sampling softmax: k documents per query without replacement from softmax(s_S / tau_s) over the
    documents not excluded (gold, or already sent to the teacher): every round costs the same teacher calls."""
    out = []
    for row, g in zip(scores, exclude):
        logits = row / tau_s
        logits[list(g)] = -math.inf
        probs = torch.softmax(logits.double(), 0)
        kk = min(k, int((probs > 0).sum()))
        out.append(torch.multinomial(probs, kk, replacement=False, generator=gen).tolist())
    return out


def top_k_unscored(scores: torch.Tensor, exclude: list[set[int]], k: int) -> list[list[int]]:
    """Step 3 [ours]: the k best-ranked documents of each query that are not excluded (gold, or already sent to the
    teacher): the student's own hard negatives, refreshed every round (as ANCE mines them); ties in topk's order."""
    out = []
    for row, g in zip(scores, exclude):
        row = row.double().clone()
        row[list(g)] = -math.inf
        kk = min(k, len(row) - len(g))
        out.append(row.topk(kk).indices.tolist() if kk > 0 else [])
    return out


def pick_top(cfg, r: int, student, h_q: torch.Tensor, h_d: torch.Tensor, bm25,
             texts: list[str], exclude: list[set[int]]) -> list[list[int]]:
    """Step 2 with --sampling top, and the pick: each training query's k best-ranked documents not in `exclude`. The
    student's own (7) from round 1 on, its top k + |exclude| kept a block of documents at a time; in round 0, where
    the untrained student scores every document the same, the --round0 policy [ours]: BM25 (one query's scores at a
    time) or the frozen bi-encoder (cosine of h_q (5) and h_d (6), blocked). Never a queries x pool matrix."""
    if r == 0 and cfg.round0 == "bm25":
        return [top_k_unscored(torch.from_numpy(bm25.scores(t))[None], [e], cfg.k)[0] for t, e in zip(texts, exclude)]
    n = min(h_d.shape[0], cfg.k + max(map(len, exclude)))
    if r == 0:
        _, top = topk_blocked(lambda i, j: cosine(h_q, h_d[i:j]), h_d.shape[0], h_q.shape[0], n)
    else:
        _, top = pool_index(student, h_d).topk(student, h_q, n)
    return [[d for d in row if d not in e][:cfg.k] for row, e in zip(top.tolist(), exclude)]


def policy_scores(cfg, r: int, student, h_q: torch.Tensor, h_d: torch.Tensor, bm25,
                  texts: list[str]) -> torch.Tensor:
    """Step 2 for --sampling softmax, which draws from a distribution over every document: the (Q, n) scores, the
    student's own (7) from round 1 on (and in round 0 with --round0 uniform), else the round-0 policy's (BM25 or the
    frozen bi-encoder's cosine). A full row per query: meant for pools of up to a few hundred thousand documents."""
    if r > 0 or cfg.round0 == "uniform":
        return pool_index(student, h_d).scores(student, h_q)
    if cfg.round0 == "bm25":
        return torch.stack([torch.from_numpy(bm25.scores(t)) for t in texts])
    return cosine(h_q, h_d)


def pool_index(student, h_d: torch.Tensor):
    """The pool as the student scores it, B h_d (n, P) in float32 (index.Index): s_S (7) of every document."""
    return Index.from_h_d(student, [str(i) for i in range(h_d.shape[0])], h_d, "float32")


def cosine(h_q: torch.Tensor, h_d: torch.Tensor) -> torch.Tensor:
    """The frozen bi-encoder's scores, cos(h_q (5), h_d (6)), (B, n)."""
    return torch.nn.functional.normalize(h_q.float(), dim=-1) @ torch.nn.functional.normalize(h_d.float(), dim=-1).T


def sample_fixed(bm25_top: list[list[int]], gold: list[set[int]], n_docs: int, k: int, r: int,
                 gen: torch.Generator) -> list[list[int]]:
    """Step 3 with --policy off: round r takes the next k of a fixed list alternating BM25 hard negatives and random
    ones."""
    out = []
    for top, g in zip(bm25_top, gold):
        rand = [d for d in torch.randperm(n_docs, generator=gen).tolist() if d not in g]
        hard = [d for d in top if d not in g]
        mixed, seen = [], set()
        for pair in zip(hard, rand):
            for d in pair:
                if d not in seen:
                    seen.add(d)
                    mixed.append(d)
        out.append(mixed[r * k:(r + 1) * k])
    return out
