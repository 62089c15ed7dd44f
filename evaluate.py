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
  gets from the label distribution alone (ESConv's 8 strategies are far from uniform); `lookup` ranks first the
  training golds of training queries with the same key (SayCan / VirtualHome: title and history; else the text),
  then the prior: the score of memory, which a split that keeps test tasks out of training holds at the prior's;
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

import torch

from data import BEIR_13, load_bench
from runtime import parallel
from runtime.baselines import (SystemResult, runs_from_top, system_biencoder, system_bm25, system_lookup,
                               system_minilm, system_prior, timed)
from runtime.caches import TeacherScores, teacher_scores_cache
from runtime.common import (add_dataclass_args, atomic_write, cache_dir, check_sizes, check_values, cli,
                            config_from_args, field, prepare_output, resolve_device, set_seed, subset, write_json)
from runtime.config import RunConfig
from runtime.files import check_split
from runtime.index import Index, encode_corpus
from runtime.llm import compute_mode, fingerprint
from runtime.metrics import BM25, TOP, candidate_sets, check_trec_ids, describe_protocol, topk_blocked
from runtime.reporting import beir_summary, report
from runtime.rerank import system_teacher, system_teacher_at_k, system_teacher_centered
from runtime.runs import bench_names, data_dir_of, eval_queries, eval_split, shrink, splits_of
from student import Student, load_student
from teacher import instruction_for, load_teacher


# ---------------------------------------------------------------------------- the student and the teacher
def system_student(student, qids, doc_ids, h_q, h_d, cands, q_seconds, d_seconds, dtype: str = "float32",
                   hub: tuple[str, torch.Tensor] | None = None) -> list[tuple[str, SystemResult]]:
    """The student as a retriever: an `Index` of the corpus (B h_d in `dtype`), every document scored by the exact
    factorised predictor (7): the same code as `python student.py search`. With `hub` = (kind, reference queries'
    h_q), also the student with per-document offsets removed (12), as a second row."""
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


def run_systems(names: list[str], data, queries: dict[str, str], cands: dict[str, list[str]], bm25: BM25,
                bm25_seconds: float, train_split: str | None, teacher=None, student=None, h_d=None,
                d_seconds: float = 0.0, doc_cache: str | Path | None = None, quiet: bool = False,
                index_dtype: str = "float32", teacher_k: int = 8,
                first_stage: tuple[str, ...] = ("bm25", "student"), scores: TeacherScores | None = None,
                refresh_cache: bool = False, hub: tuple[str, torch.Tensor] | None = None, split: str = "test",
                teacher_center: dict[str, str] | None = None) -> dict:
    """Every system of `names` on the same queries and the same C(q), in the order of `names`; with "teacher",
    also teacher@k (`system_teacher_at_k`) over the first-stage systems of `first_stage` that were run, both through
    `scores` (the teacher's pairs, kept across runs when it has a folder). `queries` are of `split` (the lookup's
    keys), `train_split` the one the prior and the lookup read. The student's document embeddings h_d
    come in (distill.py) or are encoded into `doc_cache` (evaluate.py). `teacher_center`: reference queries of the
    teacher@k+center row (12)."""
    qids, doc_ids = list(queries), list(data.corpus)
    results: dict[str, SystemResult] = {}
    if train_split is None and {"prior", "lookup"} & set(names):
        print(f"[evaluate] prior and lookup skipped: {data.name} has no training split besides the evaluated one")
    elif train_split is not None:
        if "prior" in names:
            results["prior"] = system_prior(data, queries, cands, train_split)
        if "lookup" in names:
            results["lookup"] = system_lookup(data, queries, cands, split, train_split)
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
            name = f"teacher@{teacher_k or 'pool'}"
            results[name] = system_teacher_at_k(teacher, data, queries, first, teacher_k, scores)
            if teacher_center:
                results[name + "+center"] = system_teacher_centered(teacher, data, results[name], teacher_center,
                                                                    scores)
    order = [n for n in names if n in results] + [n for n in results if n not in names]
    return {k: results[k] for k in order}


def evaluate_distilled(cfg, data, split: str, teacher, student, h_d: torch.Tensor, d_seconds: float,
                       h_train: torch.Tensor) -> dict:
    """distill.py's Step 6: prior, lookup, bm25, llm-biencoder, student and teacher@k over the whole pool, and every system
    on the same C(q), on `split` (`cfg` a distill.DistillConfig); with --hub-correction also the corrected student
    (12), its offsets taken over the training queries h_train. Writes results.md and the runs; returns the dict."""
    queries, qrels = data.split(split)
    qids = eval_queries(queries, cfg.max_test_queries, cfg.seed)
    queries, qrels = {q: queries[q] for q in qids}, {q: qrels[q] for q in qids}
    doc_ids = list(data.corpus)
    bm25, bm25_seconds = timed(BM25, {d: data.doc_text(d) for d in doc_ids})
    cands = candidate_sets(qids, queries, qrels, doc_ids, bm25, cfg.rerank_k,
                           torch.Generator().manual_seed(cfg.seed + 11))
    names = ["prior", "lookup", "bm25", "llm-biencoder"] + (["teacher"] if cfg.eval_teacher else []) + ["student"]
    scores = teacher_scores_cache(teacher, cfg.bench) if cfg.eval_teacher else None
    results = run_systems(names, data, queries, cands, bm25, bm25_seconds, "train", teacher,
                          student, h_d, d_seconds, quiet=cfg.quiet, teacher_k=cfg.teacher_k, scores=scores,
                          hub=(cfg.hub_correction, h_train) if cfg.hub_correction != "none" else None, split=split)
    header = f"{len(qids)} of {len(data.split(split)[0])} {split} queries, {len(doc_ids)} documents"
    return report(cfg.output_dir, cfg.bench, split, qrels, results, describe_protocol(len(doc_ids), cfg.rerank_k),
                  header, extra={"truncated": teacher.prompt.cut_counts(), "splits": splits_of(data),
                                 "compute": compute_mode(teacher.lm),
                                 "step6_teacher_pairs": scores.this_run if scores else {}},
                  seed=cfg.seed, pool_size=len(doc_ids))


# ---------------------------------------------------------------------------- python evaluate.py
@dataclass
class EvalConfig(RunConfig):
    datasets: str = field(",".join(BEIR_13), "BEIR names for --bench beir (default: the 13 public sets such papers "
                          "average; each downloaded only when asked, or read from --data-dir)")
    systems: str = field("prior,lookup,bm25,llm-biencoder,minilm,teacher,student",
                         "comma-separated systems to compare (prior, lookup: need a training split)")
    split: str = field("", "split to evaluate: test (the default), dev (to choose a recipe) or train")
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
    instruction: str = field("task", "the zero-shot teacher's question (teacher.py --instruction); a checkpoint "
                             "brings its own")
    ignore_identical: bool = field(True, "BEIR: drop documents whose id equals the query id")
    refresh_cache: bool = field(False, "rebuild the student's document cache from scratch (a damaged or stale one)")
    compile: bool = field(False, "score the pool through torch.compile's fused kernel (jepa.fused_scores)")
    teacher_center: int = field(0, "diagnostic (ours): also teacher@k with each document's mean s_T over this many "
                                "seeded training queries removed (12), row teacher@k+center (0 = off)")

    def __post_init__(self):
        check_values(self)
        check_sizes(self, ("max_queries", "max_docs", "teacher_k", "teacher_center"), 0)
        check_sizes(self, ("rerank_k",), 1)
        if not self.system_list:
            raise ValueError("--systems is empty")
        if self.bench != "beir" and self.datasets != ",".join(BEIR_13):
            raise ValueError(f"--datasets applies to --bench beir only; with --bench {self.bench} it would be ignored")
        known = {"prior", "lookup", "bm25", "llm-biencoder", "minilm", "teacher", "student"}
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


def load_models(cfg: EvalConfig, bench: str):
    """(teacher or None, student or None). The student brings its own teacher checkpoint; without a student the
    teacher is --teacher, runs/teacher-{bench}, or the zero-shot --model (and the student object only encodes)."""
    if not {"llm-biencoder", "teacher", "student"} & set(cfg.system_list):
        return None, None
    if "student" in cfg.system_list:
        student = load_student(cfg.student or f"runs/distill-{bench}", cfg.device, cfg.quiet,
                               attn=cfg.attn_implementation, dtype=cfg.dtype)
        if cfg.teacher and Path(cfg.teacher).resolve() != Path(student.teacher_dir).resolve():
            raise ValueError(f"--teacher {cfg.teacher} is not the teacher of the student {student.folder} "
                             f"({student.teacher_dir}): drop --teacher, or 'student' from --systems")
        return student.teacher, student
    teacher_dir = cfg.teacher or f"runs/teacher-{bench}"
    if cfg.teacher != "zero-shot" and Path(teacher_dir, "teacher.safetensors").exists():
        teacher, _ = load_teacher(teacher_dir, device=cfg.device, quiet=cfg.quiet, attn=cfg.attn_implementation,
                                  dtype=cfg.dtype)
    else:
        if cfg.teacher not in ("", "zero-shot"):
            raise FileNotFoundError(f"--teacher {cfg.teacher}: no teacher.safetensors there")
        if "teacher" in cfg.system_list:
            print(f"[evaluate] no teacher checkpoint at {teacher_dir}: 'teacher' is the zero-shot {cfg.model}")
        teacher, _ = load_teacher(None, cfg.model, cfg.device, quiet=cfg.quiet, attn=cfg.attn_implementation,
                                  dtype=cfg.dtype,
                                  instruction=instruction_for(cfg.instruction, bench))
    return teacher, Student(teacher)


def evaluate_bench(cfg: EvalConfig, name: str, data, teacher, student, out: Path) -> dict:
    split = eval_split(cfg, data)
    train = "train" if "train" in data.queries and split != "train" else None  # the label prior's counts
    pool = len(data.corpus)
    data, queries, qrels = shrink(data, split, cfg)
    doc_ids = list(data.corpus)
    bm25, bm25_seconds = timed(BM25, {d: data.doc_text(d) for d in doc_ids})
    cands = candidate_sets(list(queries), queries, qrels, doc_ids, bm25, cfg.rerank_k,
                           torch.Generator().manual_seed(cfg.seed + 11))
    doc_cache = cache_dir("docemb", f"{name}-{fingerprint(student.lm)}-{len(doc_ids)}{student.tag}-f16") \
        if student else None
    center = None
    if cfg.teacher_center and "teacher" in cfg.system_list:
        if train is None:
            raise ValueError(f"--teacher-center: {name} has no training split to take the offsets (12) over")
        train_q = data.split(train)[0]
        center = {q: train_q[q] for q in subset(list(train_q), cfg.teacher_center,
                                                torch.Generator().manual_seed(cfg.seed + 13))}
    results = run_systems(cfg.system_list, data, queries, cands, bm25, bm25_seconds,
                          train, teacher, student, doc_cache=doc_cache, quiet=cfg.quiet,
                          index_dtype=cfg.index_dtype, teacher_k=cfg.teacher_k, first_stage=cfg.first_stage_list,
                          scores=teacher_scores_cache(teacher, name) if teacher and "teacher" in cfg.system_list
                          else None, refresh_cache=cfg.refresh_cache, split=split, teacher_center=center)
    header = (f"{len(queries)} of {len(data.split(split)[0])} {split} queries"
              f"{' (subset)' if len(queries) < len(data.split(split)[0]) else ''}, {len(doc_ids)} documents"
              f"{f' (subset of {pool})' if len(doc_ids) < pool else ''}")
    beir_format = name not in ("esconv", "psyqa", "saycan", "virtualhome")
    extra = {"splits": splits_of(data)} | ({"truncated": teacher.prompt.cut_counts(),
                                            "compute": compute_mode(teacher.lm)} if teacher else {})
    return report(out, name, split, qrels, results, describe_protocol(len(doc_ids), cfg.rerank_k), header,
                  ignore_identical=cfg.ignore_identical and beir_format, extra=extra, seed=cfg.seed,
                  pool_size=len(doc_ids))


def evaluate(cfg: EvalConfig) -> dict:
    set_seed(cfg.seed)
    resolve_device(cfg.device)  # inputs and settings are checked before anything is written
    names = bench_names(cfg, ",".join(BEIR_13))
    with parallel.main_first():  # fail early (offline, bad files, empty splits); a download happens once
        loaded = {n: load_bench(n, data_dir_of(cfg, n)) for n in names}
    for n, d in loaded.items():
        check_split(d, eval_split(cfg, d), "evaluated")
        check_trec_ids(d.corpus, "document", f"{n} corpus")
        check_trec_ids(d.queries[eval_split(cfg, d)], "query", f"{n} queries")
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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(p, EvalConfig)
    return p


def main(argv=None) -> dict:
    return evaluate(config_from_args(EvalConfig, parser().parse_args(argv), argv))


if __name__ == "__main__":
    cli(main, again="rerun the command (pass --overwrite if its output folder holds a partial run)")
