"""Batches of Step 5: the distillation pairs of one epoch in a seeded order (whole queries together for the listwise
KL (10b)), and the queries of the pool term (11) with their negatives drawn from the pool.
"""
from __future__ import annotations

import torch


def batches(qi: torch.Tensor, batch_size: int, gen: torch.Generator, by_query: bool) -> list[torch.Tensor]:
    """One epoch's batches of pair indices in a random order. by_query (the listwise KL (10b) needs a query's
    documents together): whole queries, in random order, are packed until a batch holds at least batch_size pairs."""
    order = torch.randperm(len(qi), generator=gen)
    if not by_query:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    groups: dict[int, list[int]] = {}
    for j in order.tolist():  # queries in order of first appearance: a random order
        groups.setdefault(int(qi[j]), []).append(j)
    out, cur = [], []
    for members in groups.values():
        cur += members
        if len(cur) >= batch_size:
            out.append(torch.tensor(cur))
            cur = []
    return out + ([torch.tensor(cur)] if cur else [])


class PoolBatches:
    """The queries of the pool term (11), cycled in a seeded order, `size` per step, with their negatives: every
    document of the pool (`negatives` = 0) or `negatives` documents drawn from it per step (shared by the step's
    queries, as in-batch negatives), plus each query's gold. One gold per query and step, drawn at random."""

    def __init__(self, h_q: torch.Tensor, gold: list[set[int]], n_docs: int, size: int, negatives: int,
                 gen: torch.Generator):
        self.h_q, self.gold, self.n_docs, self.size, self.negatives, self.gen = h_q, gold, n_docs, size, negatives, gen
        self.order: list[int] = []

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(h_q (B, H), document rows (n,), target (B,) column of each query's chosen gold, exclude (B, n))."""
        while len(self.order) < self.size:
            self.order += torch.randperm(len(self.gold), generator=self.gen).tolist()
        idx, self.order = self.order[:self.size], self.order[self.size:]
        golds = [sorted(self.gold[i]) for i in idx]
        chosen = [g[int(torch.randint(len(g), (1,), generator=self.gen))] for g in golds]
        if self.negatives and self.negatives < self.n_docs:
            drawn = torch.randperm(self.n_docs, generator=self.gen)[:self.negatives].tolist()
            docs = list(dict.fromkeys(chosen + drawn))
        else:
            docs = list(range(self.n_docs))
        col = {d: j for j, d in enumerate(docs)}
        exclude = torch.zeros(len(idx), len(docs), dtype=torch.bool)
        for row, g in enumerate(golds):
            exclude[row, [col[d] for d in g if d in col]] = True
        return self.h_q[idx].float(), torch.tensor(docs), torch.tensor([col[c] for c in chosen]), exclude
