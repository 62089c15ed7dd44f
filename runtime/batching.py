"""Batches of Step 5: the distillation pairs of one epoch in a seeded order (whole queries together for the listwise
KL (10b)), and the queries of the pool term (11) (`pool_queries`, encoded in Step 1) with their negatives drawn from
the pool.
"""
from __future__ import annotations

import torch

from runtime.common import cache_dir, subset
from runtime.index import encode_corpus, ids_digest
from runtime.llm import fingerprint


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


def pool_queries(cfg, student, train_q: dict[str, str], train_rel: dict, qids: list[str],
                 h_q: torch.Tensor, doc_index: dict[str, int]) -> tuple[torch.Tensor, list[set[int]]]:
    """The queries of the pool term (11): the teacher's training queries (all of them), then more training queries
    up to --nce-queries (a seeded subset; they cost the query pass (5) only, no teacher call, and are cached under
    $RABTRIEVER_CACHE/queryemb for every run of the same teacher), with their gold rows."""
    rest = [q for q in train_q if q not in set(qids)]
    n_extra = len(rest) if cfg.nce_queries == 0 else max(0, cfg.nce_queries - len(qids))
    extra = subset(rest, n_extra, torch.Generator().manual_seed(cfg.seed + 1)) if n_extra else []
    folder = cache_dir("queryemb",  # shared by runs
                       f"{cfg.bench}-{fingerprint(student.lm)}-{ids_digest(extra)}{student.tag}-f16")
    h_extra = encode_corpus(student, extra, [train_q[q] for q in extra], folder, kind="queries") if extra else h_q[:0]
    gold = [{doc_index[d] for d, g in train_rel[q].items() if g > 0} for q in qids + extra]
    return torch.cat([h_q, h_extra]), gold
