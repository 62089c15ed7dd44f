"""The yardsticks: ranking metrics, agreement with the teacher, bootstrap confidence intervals, the candidate protocol
C(q), BM25, the label prior and TREC run files. Everything that judges a system lives here, and teacher.py,
distill.py and evaluate.py all stand on it; it imports nothing of the project but `common` and `parallel`.

Shapes: a run is {query id: {doc id: score}}, qrels are {query id: {doc id: grade}}.

Choices not fixed by the paper:
- ties in a ranking are broken by document id, descending, exactly as trec_eval does (`ranked`);
- fidelity to the teacher on C(q): `agree@1` is the chance that the system's first document is the teacher's first
  document when each breaks its ties at the top uniformly at random; `kendall_tau` is Kendall's tau-b between the
  system's and the teacher's scores over C(q) (0 when either ranks every document the same);
- 95% confidence intervals: percentile bootstrap over queries, 1000 resamples, seeded, the same resamples for every
  metric and system of a table (so CIs of two systems are computed on the same draws);
- C(q) (`candidate_sets`): the whole pool when it has at most `size` documents, else the gold documents plus
  `size` - 1 negatives, (size - 1) // 2 from BM25's top ranks and the rest drawn at random from the pool;
- BM25 with k1 0.9, b 0.4 (Pyserini's defaults), Lucene idf, lowercase word tokens minus Lucene's 33 English stop
  words, no stemming (BEIR numbers sit a little below Pyserini's Porter-stemmed index).
"""
from __future__ import annotations

import math
from array import array
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from runtime import parallel
from runtime.common import atomic_write, progress
from runtime.files import DataError

KS = (1, 3, 5, 10, 100)
TOP = 100
N_BOOT = 1000


# ---------------------------------------------------------------------------- metrics against the gold
def ranked(scores: dict[str, float]) -> list[str]:
    """Documents by score, descending; ties broken by document id descending, exactly as trec_eval does."""
    return [d for d, _ in sorted(scores.items(), key=lambda x: (x[1], x[0]), reverse=True)]


def first_stage_union(runs: list[dict[str, dict[str, float]]], qids: list[str], k: int) -> dict[str, list[str]]:
    """For each query, the union of the top k documents of each first-stage run, in order of first appearance."""
    out = {}
    for q in qids:
        seen: dict[str, None] = {}
        for run in runs:
            seen |= dict.fromkeys(ranked(run.get(q, {}))[:k])
        out[q] = list(seen)
    return out


def recall_at(rank: list[str], rel: dict[str, int], k: int) -> float:
    """Fraction of the relevant documents (grade > 0) found in the top k (trec_eval recall_k)."""
    good = {d for d, g in rel.items() if g > 0}
    return len(good.intersection(rank[:k])) / len(good)


def mrr_at(rank: list[str], rel: dict[str, int], k: int) -> float:
    """1 / rank of the first relevant document within the top k, else 0 (MS MARCO's MRR@10)."""
    for i, d in enumerate(rank[:k]):
        if rel.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def ndcg_at(rank: list[str], rel: dict[str, int], k: int) -> float:
    """sum_i g_i / log2(i + 1) over the top k, divided by the same for the ideal order; gain = the grade itself
    (trec_eval ndcg_cut and BEIR's convention, not 2^g - 1)."""
    dcg = sum(rel.get(d, 0) / math.log2(i + 2) for i, d in enumerate(rank[:k]) if rel.get(d, 0) > 0)
    ideal = sorted((g for g in rel.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg


def judged(qrels: dict[str, dict[str, int]]) -> list[str]:
    """The queries that have at least one relevant document: the ones every metric averages over."""
    return [q for q, rel in qrels.items() if any(g > 0 for g in rel.values())]


def per_query(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]], ks=KS) -> dict[str, list[float]]:
    """R@k, MRR@k, nDCG@k of every judged query, in `judged(qrels)` order; a query missing from the run scores 0."""
    per: dict[str, list[float]] = {}
    for qid in judged(qrels):
        rel, rank = qrels[qid], ranked(run.get(qid, {}))
        for k in ks:
            per.setdefault(f"R@{k}", []).append(recall_at(rank, rel, k))
            per.setdefault(f"MRR@{k}", []).append(mrr_at(rank, rel, k))
            per.setdefault(f"nDCG@{k}", []).append(ndcg_at(rank, rel, k))
    return per


def evaluate_run(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]], ks=KS) -> dict[str, float]:
    """Mean R@k, MRR@k, nDCG@k over the queries of `qrels` that have a relevant document."""
    return {m: float(np.mean(v)) for m, v in per_query(run, qrels, ks).items()}


def drop_identical(run: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """BEIR convention: a document whose id equals the query id is never counted (ArguAna, Quora)."""
    return {q: {d: s for d, s in docs.items() if d != q} for q, docs in run.items()}


def topk_blocked(score_block, n: int, rows: int, k: int, block: int = 1 << 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The top k (values, column indices) of each of `rows` rows over `n` columns, best first, scored a block of
    columns at a time by score_block(i, j) -> (rows, j - i) float32: a running top-k, so the rows x n matrix never
    exists. Under torchrun rank r scores blocks r, r + N, ... and the ranks' top k are merged, the same on every
    rank."""
    k = min(k, n)
    vals = torch.full((rows, k), -math.inf)
    idx = torch.zeros((rows, k), dtype=torch.long)
    for b in parallel.shard(math.ceil(n / block)):
        i, j = b * block, min(n, (b + 1) * block)
        s = score_block(i, j).float().cpu()
        cat_v, cat_i = torch.cat([vals, s], 1), torch.cat([idx, torch.arange(i, j).expand(rows, -1)], 1)
        top = cat_v.topk(k, dim=1)
        vals, idx = top.values, cat_i.gather(1, top.indices)
    if parallel.world() > 1:
        every = parallel.all_gather([vals, idx])
        cat_v, cat_i = torch.cat([v for v, _ in every], 1), torch.cat([i for _, i in every], 1)
        top = cat_v.topk(k, dim=1)
        vals, idx = top.values, cat_i.gather(1, top.indices)
    return vals, idx


# ---------------------------------------------------------------------------- fidelity to the teacher
def agree_at_1(system: dict[str, float], teacher: dict[str, float]) -> float:
    """Chance that the system's top document is the teacher's top document, each breaking ties at its top
    uniformly at random: |top_S & top_T| / (|top_S| |top_T|). Both score the same documents."""
    top_s = {d for d, v in system.items() if v == max(system.values())}
    top_t = {d for d, v in teacher.items() if v == max(teacher.values())}
    return len(top_s & top_t) / (len(top_s) * len(top_t))


def kendall_tau(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b of two score lists over the same items: (C - D) / sqrt((n0 - n1)(n0 - n2)), with C / D the
    concordant / discordant pairs, n0 all pairs, n1 / n2 the pairs tied in x / in y. 0 when x or y is constant."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    i, j = np.triu_indices(len(x), k=1)
    sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    n0, n1, n2 = len(i), int((sx == 0).sum()), int((sy == 0).sum())
    if n0 == n1 or n0 == n2:
        return 0.0
    return float((sx * sy).sum() / math.sqrt((n0 - n1) * (n0 - n2)))


def fidelity(run: dict[str, dict[str, float]], teacher_run: dict[str, dict[str, float]],
             qids: list[str]) -> dict[str, list[float]]:
    """agree@1 and kendall_tau of `run` against the teacher's scores, over the documents the teacher scored for each
    query (C(q)). The system must have scored every one of them."""
    out: dict[str, list[float]] = {"agree@1": [], "kendall_tau": []}
    for q in qids:
        cands = list(teacher_run[q])
        missing = [d for d in cands if d not in run.get(q, {})]
        if missing:
            raise KeyError(f"fidelity: query '{q}': the system did not score candidates {missing[:3]} of C(q)")
        mine = {d: run[q][d] for d in cands}
        out["agree@1"].append(agree_at_1(mine, teacher_run[q]))
        out["kendall_tau"].append(kendall_tau([mine[d] for d in cands], [teacher_run[q][d] for d in cands]))
    return out


def pool_fidelity(run: dict[str, dict[str, float]], teacher_run: dict[str, dict[str, float]], qids: list[str],
                  k: int = 10) -> dict[str, list[float]]:
    """How closely a whole-pool ranking reproduces the teacher's own ranking of the whole pool (`--teacher-k 0`), per
    query: `pool_agree@1`, the same document first (ranks as `ranked` orders them); `pool_overlap@k`, the share of the
    teacher's top k in the system's top k; `pool_kendall_tau`, Kendall's tau-b of the two score lists over the
    teacher's top k, a document the system did not return (beyond its kept top) ranked below all it returned. The
    items are chosen by the teacher alone, so a ranking unrelated to the teacher's has tau 0 on average (over the
    union of both top k, as before, chance was about -0.57: each side's own picks sit at the bottom of the other)."""
    out: dict[str, list[float]] = {"pool_agree@1": [], f"pool_overlap@{k}": [], "pool_kendall_tau": []}
    for q in qids:
        mine, theirs = run.get(q, {}), teacher_run[q]
        top_s, top_t = ranked(mine)[:k], ranked(theirs)[:k]
        floor = min(mine.values(), default=0.0) - 1.0
        out["pool_agree@1"].append(float(bool(top_s) and top_s[0] == top_t[0]))
        out[f"pool_overlap@{k}"].append(len(set(top_s) & set(top_t)) / max(1, len(top_t)))
        out["pool_kendall_tau"].append(kendall_tau([mine.get(d, floor) for d in top_t], [theirs[d] for d in top_t]))
    return out


# ---------------------------------------------------------------------------- hubness over the whole pool
def hubness(run: dict[str, dict[str, float]], pool_size: int, k: int = 10) -> dict[str, float]:
    """How much a few documents dominate a retriever's rankings over a pool of `pool_size` documents (Radovanovic et
    al., JMLR 2010): `distinct_top1` = documents ranked first for at least one query; `max_top1_share` = the largest
    fraction of queries that one document tops; `n10_skew` = the skewness E[(N - mean)^3] / std^3 of N_k(d), the number
    of queries whose top k holds d, over all `pool_size` documents (those never in a top k count as 0). A ranking
    that ignores the query (the label prior) gives 1, 1.0 and the largest skew; a uniform spread gives skew near 0."""
    tops = [ranked(docs) for docs in run.values() if docs]
    if not tops or pool_size < 1:
        raise ValueError("hubness: no ranking or an empty pool")
    first = Counter(t[0] for t in tops)
    n_k = Counter(d for t in tops for d in t[:k])
    counts = np.zeros(pool_size, dtype=np.float64)
    if len(n_k) > pool_size:
        raise ValueError(f"hubness: {len(n_k)} distinct documents in the top {k}s, more than the pool's {pool_size}")
    counts[:len(n_k)] = list(n_k.values())
    std = counts.std()
    skew = float(((counts - counts.mean()) ** 3).mean() / std ** 3) if std > 0 else 0.0
    return {"distinct_top1": len(first), "max_top1_share": max(first.values()) / len(tops), f"n{k}_skew": skew}


# ---------------------------------------------------------------------------- confidence intervals
def bootstrap_ci(values, seed: int = 0, n_boot: int = N_BOOT, level: float = 0.95) -> list[float]:
    """Percentile bootstrap CI of the mean over queries: `n_boot` resamples with replacement of the per-query values,
    drawn from numpy's default_rng(seed); [low, high] = the (1 - level) / 2 and (1 + level) / 2 quantiles."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("bootstrap_ci: no values (no judged query)")
    idx = np.random.default_rng(seed).integers(0, v.size, size=(n_boot, v.size))
    means = v[idx].mean(axis=1)
    return [float(np.quantile(means, (1 - level) / 2)), float(np.quantile(means, (1 + level) / 2))]


def summarize(per: dict[str, list[float]], seed: int = 0) -> dict[str, float | list[float]]:
    """{metric: mean, metric_ci: [low, high]} for per-query values (every metric resampled with the same seed)."""
    out: dict[str, float | list[float]] = {}
    for m, v in per.items():
        out[m] = float(np.mean(v))
        out[f"{m}_ci"] = bootstrap_ci(v, seed)
    return out


# ---------------------------------------------------------------------------- BM25
STOP = set("a an and are as at be but by for if in into is it no not of on or such that the their then there these "
           "they this to was will with".split())


def tokenize(text: str) -> list[str]:
    return [t for t in re.findall(r"\w+", text.lower()) if t not in STOP]


class BM25:
    """Okapi BM25 over an inverted index: score(q, d) = sum_{t in q} idf(t) * tf (k1 + 1) / (tf + k1 (1 - b + b dl/avgdl)),
    idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5)) (Lucene). Repeated query terms count once per occurrence."""

    def __init__(self, docs: dict[str, str], k1: float = 0.9, b: float = 0.4):
        """The postings in compressed sparse rows: term t's documents are rows[offsets[t]:offsets[t + 1]] (ascending)
        with their BM25 weights alongside. Built from flat int32 arrays, not per-term Python lists: about 45 bytes
        per (document, distinct term) at the peak, for corpora of millions (benchmarks/scale.py measures it)."""
        self.ids = list(docs)
        self.vocab: dict[str, int] = {}
        terms, rows, tfs = array("i"), array("i"), array("i")  # one entry per (document, distinct term)
        lengths = np.empty(len(self.ids))
        for i, d in enumerate(progress(self.ids, desc="bm25 index", quiet=len(self.ids) < 100_000)):
            toks = tokenize(docs[d])
            lengths[i] = len(toks)
            for term, tf in Counter(toks).items():
                terms.append(self.vocab.setdefault(term, len(self.vocab)))
                rows.append(i)
                tfs.append(tf)
        n = len(self.ids)
        avgdl = max(lengths.mean(), 1e-9) if n else 1.0
        norm = k1 * (1 - b + b * lengths / avgdl)
        term_of = np.frombuffer(terms, dtype=np.int32) if terms else np.zeros(0, dtype=np.int32)
        order = np.argsort(term_of, kind="stable")  # by term, documents ascending within a term
        df = np.bincount(term_of, minlength=len(self.vocab))
        self.offsets = np.concatenate([[0], np.cumsum(df)])
        self.rows = (np.frombuffer(rows, dtype=np.int32) if rows else np.zeros(0, dtype=np.int32))[order]
        tf = (np.frombuffer(tfs, dtype=np.int32) if tfs else np.zeros(0, dtype=np.int32))[order].astype(np.float64)
        del terms, rows, tfs
        idf = np.array([math.log(1 + (n - f + 0.5) / (f + 0.5)) for f in df.tolist()])
        self.weights = idf[term_of[order]] * tf * (k1 + 1) / (tf + norm[self.rows])

    def scores(self, query: str) -> np.ndarray:
        """Every document's score, (n,): for small pools and tests; `sparse` touches only the matching documents."""
        s = np.zeros(len(self.ids))
        rows, w = self.sparse(query)
        s[rows] = w
        return s

    def sparse(self, query: str) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of the documents that hold a query term: the postings are summed over the union of their
        rows, so the cost is the postings' length, never the pool's."""
        spans = [(self.offsets[t], self.offsets[t + 1]) for t in map(self.vocab.get, tokenize(query)) if t is not None]
        if not spans:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        rows = np.concatenate([self.rows[a:b] for a, b in spans]).astype(np.int64)
        uniq, inverse = np.unique(rows, return_inverse=True)
        weights = np.concatenate([self.weights[a:b] for a, b in spans])
        return uniq, np.bincount(inverse, weights=weights, minlength=len(uniq))

    def top_sparse(self, query: str, k: int) -> dict[str, float]:
        """The top k of the pool for a query from its postings alone, {doc id: score} best first (`top`)."""
        rows, w = self.sparse(query)
        score = dict(zip(rows.tolist(), w.tolist()))
        return {self.ids[r]: float(score.get(r, 0.0)) for r in self._top_rows(rows, w, k)}

    def top(self, query: str, k: int) -> list[str]:
        """The ids of the top k documents, best first: by score, ties by document id descending as trec_eval orders
        them (`ranked`); documents that hold no query term score 0 and fill the list in that order. From the
        postings alone: the cost is the postings' length, never the pool's."""
        rows, w = self.sparse(query)
        return [self.ids[r] for r in self._top_rows(rows, w, k)]

    def _top_rows(self, rows: np.ndarray, w: np.ndarray, k: int) -> list[int]:
        if not hasattr(self, "_by_id_desc"):  # rows in id-descending order, and each row's place in it
            self._by_id_desc = sorted(range(len(self.ids)), key=self.ids.__getitem__, reverse=True)
            self._place = np.empty(len(self.ids), dtype=np.int64)
            self._place[self._by_id_desc] = np.arange(len(self.ids))
        k = min(k, len(self.ids))
        out = rows[np.lexsort((self._place[rows], -w))[:k]].tolist()
        if len(out) < k:
            hit = set(rows.tolist())
            for r in self._by_id_desc:
                if len(out) >= k:
                    break
                if r not in hit:
                    out.append(r)
        return out

    def run(self, queries: dict[str, str], k: int = TOP, quiet: bool = False) -> dict[str, dict[str, float]]:
        out = {}
        for qid, text in progress(queries.items(), desc="bm25", quiet=quiet):
            s = self.scores(text)
            kk = min(k, len(s))
            idx = np.argpartition(-s, kk - 1)[:kk]
            out[qid] = {self.ids[i]: float(s[i]) for i in idx}
        return out


def to_run(flat: list[tuple[str, str]], scores: torch.Tensor) -> dict[str, dict[str, float]]:
    """(query id, doc id) pairs and their scores -> a run {qid: {doc id: score}}."""
    run: dict[str, dict[str, float]] = {}
    for (q, d), v in zip(flat, scores.tolist()):
        run.setdefault(q, {})[d] = v
    return run


# ---------------------------------------------------------------------------- the label prior and C(q)
def label_prior(data, split: str) -> dict[str, int]:
    """How often each document is gold in `split` (the training split): the label prior."""
    counts: dict[str, int] = {}
    for rel in data.split(split)[1].values():
        for d, g in rel.items():
            counts[d] = counts.get(d, 0) + (g > 0)
    return counts


def gold_hubs(data, split: str) -> list[str]:
    """The documents that are gold in `split`, most often gold first (ties by id): the pool's hubs."""
    counts = label_prior(data, split)
    return sorted(counts, key=lambda d: (-counts[d], d))


RANDPERM_MAX = 1 << 16  # pools up to this size draw from a permutation; larger ones by rejection (sample_excluding)


def sample_excluding(n: int, exclude: set[int], k: int, gen: torch.Generator) -> list[int]:
    """k rows of range(n) drawn uniformly without replacement, none in `exclude`, in the order drawn; never a list
    or a permutation over a large pool. Up to RANDPERM_MAX rows: the first k of a seeded permutation of the rows
    left (the draws of listing them and permuting the list); above: draws by rejection, O(k) per call."""
    skip = sorted(e for e in exclude if 0 <= e < n)
    k = min(k, n - len(skip))
    if n <= RANDPERM_MAX:
        out = []
        for i in torch.randperm(n - len(skip), generator=gen)[:k].tolist():  # the i-th row not excluded
            for e in skip:
                if e > i:
                    break
                i += 1
            out.append(i)
        return out
    out, taken = [], set(skip)
    while len(out) < k:
        for r in torch.randint(n, (2 * (k - len(out)) + 8,), generator=gen).tolist():
            if len(out) < k and r not in taken:
                taken.add(r)
                out.append(r)
    return out


def candidate_sets(qids: list[str], queries: dict[str, str], qrels: dict[str, dict[str, int]], pool: list[str],
                   bm25: BM25, size: int, gen: torch.Generator) -> dict[str, list[str]]:
    """C(q) for each query: the whole pool if it has at most `size` documents; else the gold documents plus size - 1
    negatives, (size - 1) // 2 from BM25's top ranks and the rest drawn from the pool with `gen` (so a random
    ranking has R@1 = 1 / size whatever a first stage would find; `sample_excluding`)."""
    if len(pool) <= size:
        return {q: list(pool) for q in qids}
    row = {d: i for i, d in enumerate(pool)}
    out = {}
    for q in qids:
        gold = sorted(d for d, g in qrels[q].items() if g > 0)
        hard = [d for d in bm25.top(queries[q], size + len(gold)) if d not in gold][:(size - 1) // 2]
        rand = sample_excluding(len(pool), {row[d] for d in gold + hard if d in row}, size - 1 - len(hard), gen)
        out[q] = gold + hard + [pool[i] for i in rand]
    return out


def describe_protocol(pool_size: int, size: int) -> str:
    """One line saying how C(q) was built, for results.json and the tables."""
    if pool_size <= size:
        return f"C(q) = all {pool_size} documents"
    return (f"C(q) = gold + {size - 1} negatives ({(size - 1) // 2} BM25-hard, {size - 1 - (size - 1) // 2} random) "
            f"of {pool_size} documents; random R@1 = {1 / size:.3f}")


# ---------------------------------------------------------------------------- TREC run files
def trec_id(x: str) -> str:
    """An id as one whitespace-free TREC field: ESConv's strategy names have spaces, written with '_' for them."""
    return "_".join(x.split())


def check_trec_ids(ids, kind: str, where) -> None:
    """Two ids that `trec_id` writes as one (`d 1`, `d_1`) would merge in a TREC run: an error naming both."""
    seen: dict[str, str] = {}
    for x in sorted(ids):
        other = seen.setdefault(trec_id(x), x)
        if other != x:
            raise DataError(f"{where}: the {kind} ids {other!r} and {x!r} are one id once whitespace is written as "
                            f"'_' ({trec_id(x)!r}); TREC run files would merge them: rename one")


def write_trec(path: Path, run: dict[str, dict[str, float]], name: str) -> None:
    """TREC run file: `qid Q0 docid rank score run` (whitespace inside ids replaced by '_', see `trec_id`; two ids
    that would become one are an error)."""
    check_trec_ids(run, "query", path)
    check_trec_ids({d for docs in run.values() for d in docs}, "document", path)
    lines = []
    for q, docs in run.items():
        for i, d in enumerate(ranked(docs)[:TOP]):
            lines.append(f"{trec_id(q)} Q0 {trec_id(d)} {i + 1} {docs[d]:.6f} {name}")
    atomic_write(path, "\n".join(lines) + "\n")
