"""The command-line side of the paper's files: what `python teacher.py train|score|bench` and `python student.py
index|search` do around the method (loading and checking inputs, output folders, checkpoints, the dev metric, printing).
teacher.py and student.py hold the method and reach this module from their `main`.
"""
from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import parallel
from caches import teacher_scores_cache
from checkpoints import load_student, load_teacher, save_teacher, teacher_identity
from common import (add_dataclass_args, atomic_write, cache_dir, check_finite, check_output_file, check_sizes,
                    config_from_args, field, folder_owner, load_tensors, prepare_output, read_json, resolve_device,
                    set_seed, subset, writable_folder, write_json)
from data import BEIR_13
from evaluate import eval_queries, run_systems, splits_of, timed
from index import Index, corpus_changes
from jepa import INDEX_DTYPE
from llm import (ATTENTION, DEFAULT_MODEL, DTYPE_HELP, DTYPES, compute_id, compute_mode, fingerprint,
                 load_llm)
from metrics import BM25, candidate_sets, check_trec_ids, describe_protocol
from reporting import beir_summary, report
from teacher import Teacher, instruction_for


# ---------------------------------------------------------------------------- python teacher.py train
class TeacherRun:
    """Everything `teacher.train_teacher` needs around SFT (4): inputs and settings checked before anything is
    written, the bench and its BM25, the base model as a Teacher, the output folder, and the dev metric of the
    untrained teacher (kept in dev_before.json, reused by --resume); `finish` saves the checkpoint and measures the
    trained teacher."""

    def __init__(self, cfg):
        from data import load_bench
        from files import check_split
        from training import DevSet, split_point

        set_seed(cfg.seed)
        device = resolve_device(cfg.device)  # inputs and settings are checked before anything is written
        if cfg.neg_self and parallel.world() > 1:
            raise ValueError("--neg-self runs in one process (its second pass would wrap the model for DDP / FSDP2 "
                             "twice): run `python teacher.py train ...` without torchrun")
        with parallel.main_first():  # a download or unpacking happens once
            data = load_bench(cfg.bench, cfg.data_dir or None)
        train_split, dev_split = "train", "dev"  # the teacher is chosen on dev; it never reads the test split
        check_split(data, train_split, "training")
        check_split(data, dev_split, "dev")
        prepare_output(cfg.output_dir, cfg, cfg.resume, cfg.overwrite, script="teacher", can_resume=True,
                       same=("resume", "overwrite", "quiet", "save_every"))
        bm25 = BM25({d: data.doc_text(d) for d in data.corpus})
        fsdp_gpu = cfg.train_layers == 0 and parallel.world() > 1 and device.type == "cuda"  # fp32 master weights
        lm, tok = load_llm(cfg.model, cfg.device, "float32" if fsdp_gpu and cfg.dtype == "auto" else cfg.dtype,
                           cfg.attn_implementation)
        self.cfg, self.data, self.bm25, self.train_split, self.dev_split = cfg, data, bm25, train_split, dev_split
        self.base_fp = fingerprint(lm)
        self.teacher = Teacher(lm, tok, cfg.max_doc_tokens, cfg.batch_size, cfg.quiet,
                               instruction=instruction_for(cfg.instruction, cfg.bench))
        self.dev = DevSet(self.teacher, data, dev_split, bm25, cfg, split_point(lm, cfg.train_layers), train_split)
        before_path = Path(cfg.output_dir) / "dev_before.json"
        self.before = read_json(before_path) if cfg.resume and before_path.exists() else \
            self.dev.metric(self.teacher, "dev (zero-shot)")
        write_json(before_path, self.before)
        b = self.before
        print(f"[teacher] zero-shot {dev_split}: R@1 {b['R@1']:.4f} MRR@10 {b['MRR@10']:.4f} ({b['n_queries']} "
              f"queries, {b['protocol']}; majority R@1 {b['majority_R@1']:.4f})")

    def finish(self, hist: dict) -> dict:
        """Save the checkpoint (`checkpoints.save_teacher`), drop the resumable state, measure the trained teacher
        on dev, and write teacher_metrics.json."""
        from training import SFT_STATE, DevSet

        cfg, teacher = self.cfg, self.teacher
        meta = {"step": hist["steps"], "train_split": self.train_split, "dev_before": self.before,
                "train_seconds": hist["seconds"], "loss_first": hist["losses"][0], "loss_last": hist["losses"][-1],
                "truncated": teacher.prompt.cut_counts()}
        path, digest = save_teacher(teacher, cfg.output_dir, cfg, self.base_fp, meta, hist["fsdp"])
        parallel.barrier()
        if parallel.is_main():  # the checkpoint is complete: the resumable state is not needed any more
            shutil.rmtree(Path(cfg.output_dir) / SFT_STATE, ignore_errors=True)
        dev = self.dev
        if hist["fsdp"]:  # the sharded model is done: every rank reloads the gathered checkpoint for the dev metric
            teacher, _ = load_teacher(cfg.output_dir, device=cfg.device, batch_size=cfg.batch_size, quiet=cfg.quiet,
                                      attn=cfg.attn_implementation)
            dev = DevSet(teacher, self.data, self.dev_split, self.bm25, cfg, 0, self.train_split)
        else:
            teacher.lm.rab_fingerprint = teacher_identity(self.base_fp, digest)
        after = dev.metric(teacher, "dev (trained)")
        print(f"[teacher] trained   {self.dev_split}: R@1 {after['R@1']:.4f} MRR@10 {after['MRR@10']:.4f} "
              f"({hist['pairs']} SFT pairs on {self.train_split}, {hist['steps']} steps, {hist['seconds']:.0f}s)")
        print(f"[teacher] cut to fit (--max-doc-tokens / the model's window): {meta['truncated']}")
        meta["dev_after"] = after
        sidecar = read_json(str(path) + ".json") if parallel.is_main() else {}
        write_json(str(path) + ".json", sidecar | {"dev_after": after})  # the same tensors: the sidecar gains a field
        write_json(Path(cfg.output_dir) / "teacher_metrics.json", meta | {"losses": hist["losses"]})
        parallel.barrier()
        print(f"[teacher] saved {path}")
        return meta


# ---------------------------------------------------------------------------- python teacher.py score | bench
def add_teacher_commands(sub) -> None:
    s = sub.add_parser("score", help="score one (query, document) pair")
    s.add_argument("--query", required=True)
    s.add_argument("--doc", required=True)
    s.add_argument("--checkpoint", default=None)
    s.add_argument("--model", default=None, help=f"base model without --checkpoint (default {DEFAULT_MODEL})")
    s.add_argument("--device", default="auto")
    b = sub.add_parser("bench", help="teacher throughput")
    b.add_argument("--model", default=DEFAULT_MODEL)
    b.add_argument("--device", default="auto")
    b.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help=DTYPE_HELP)
    b.add_argument("--batch-size", type=int, default=8)
    b.add_argument("--pairs", type=int, default=32)
    b.add_argument("--output", default="results/teacher_throughput.json")


def teacher_main(argv=None) -> None:
    import argparse

    from teacher import TrainConfig, __doc__ as doc, train_teacher

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    add_dataclass_args(sub.add_parser("train", help="SFT (4) and save a checkpoint"), TrainConfig)
    add_teacher_commands(sub)
    args = p.parse_args(argv)
    if args.cmd == "train":
        train_teacher(config_from_args(TrainConfig, args))
    else:
        teacher_command(args)


def teacher_command(args) -> None:
    if args.cmd == "bench":
        from bench import teacher_bench
        teacher_bench(args)
        return
    for flag, text in (("--query", args.query), ("--doc", args.doc)):
        if not text.strip():
            raise ValueError(f"{flag} is empty or only whitespace")
    teacher, _ = load_teacher(args.checkpoint, args.model, args.device)
    s = teacher.score([args.query], [args.doc]).item()
    print(f"s_T = {s:.4f}   p(yes | yes, no) = {1 / (1 + math.exp(-s)):.4f}")


# ---------------------------------------------------------------------------- python student.py index | search
def check_cli_values(args) -> None:
    """Every number of the index / search commands, checked before anything loads."""
    for name in ("batch_size", "k", "first_k"):
        if getattr(args, name, 1) < 1:
            raise ValueError(f"--{name.replace('_', '-')} is {getattr(args, name)}; it must be >= 1")


def report_cuts(student, tag: str) -> None:
    """Printed once per run: how many documents and queries were cut to fit the window or --max-doc-tokens."""
    cut = student.prompt.cut_counts()
    if any(cut.values()):
        print(f"[{tag}] cut to fit (the model's window / max_doc_tokens): {cut['documents']} documents, "
              f"{cut['queries']} queries")


def student_index(args) -> None:
    from files import load_corpus

    check_cli_values(args)
    corpus = load_corpus(args.corpus)  # checked before anything is written
    out = Path(args.out)
    if (out / "index.safetensors").exists() and not args.overwrite:
        raise FileExistsError(f"{out}: holds an index; pass --overwrite to rebuild it")
    owner = folder_owner(out) if out.is_dir() else None
    if owner not in (None, "index"):
        raise FileExistsError(f"--out {out}: made by {owner}.py; an index needs a folder of its own")
    if owner is None and out.is_dir() and any(out.iterdir()):
        raise FileExistsError(f"--out {out}: a folder that holds files and no index; an index needs a folder of its "
                              "own (new or empty)")
    writable_folder(out, "--out")
    student = load_student(args.student, args.device, args.quiet, args.batch_size, args.attn_implementation)
    t0 = time.perf_counter()
    index = Index.build(student, corpus, out, args.dtype, args.refresh_cache, str(Path(args.corpus).resolve()))
    print(f"[index] {len(index.ids)} documents -> {out} ({index.meta['dtype']} B h_d, "
          f"{index.doc_side.numel() * index.doc_side.element_size() / 2 ** 20:.1f} MiB) in "
          f"{time.perf_counter() - t0:.1f}s")
    report_cuts(student, "index")


def student_search(args) -> None:
    from files import doc_text, load_corpus, load_queries
    from metrics import BM25, write_trec

    if (args.query is not None) == bool(args.queries):
        raise ValueError("give one of --query TEXT or --queries queries.jsonl")
    if args.query is not None and not args.query.strip():
        raise ValueError("--query is empty or only whitespace: give the text to search for")
    check_cli_values(args)
    queries = {"query": args.query} if args.query is not None else load_queries(args.queries)
    folder = Path(args.index)
    side_path = folder / "index.safetensors.json"
    if not side_path.exists():
        raise FileNotFoundError(f"--index {folder}: no index here (index.safetensors.json is missing); build one "
                                "with `python student.py index`")
    sidecar = read_json(side_path, "build the index again with `student.py index --overwrite`")
    if args.out:
        corpus = sidecar.get("corpus") or ""
        check_output_file(args.out, "--out", args.overwrite,
                          (args.queries, corpus, str(Path(corpus, "corpus.jsonl")) if corpus else ""))
        check_trec_ids(queries, "query", args.queries)
    corpus = None
    if sidecar.get("corpus") and Path(sidecar["corpus"]).exists():
        corpus = load_corpus(sidecar["corpus"])
    elif args.first_stage == "bm25" or args.reindex:
        raise FileNotFoundError(f"{side_path}: the corpus the index was built from, {sidecar.get('corpus')!r}, is gone")
    student = load_student(args.student or sidecar.get("student") or "", args.device, args.quiet, args.batch_size,
                           args.attn_implementation)
    student.predictor.compiled = args.compile
    index = Index.load(folder, student)
    if args.out:
        check_trec_ids(index.ids, "document", folder)
    changes = corpus_changes(index, corpus) if corpus is not None else ""
    if changes and not args.reindex:
        raise ValueError(f"{sidecar['corpus']}: the corpus changed since the index was built ({changes}); rebuild "
                         "it with --reindex, or `python student.py index ... --overwrite --refresh-cache`")
    if changes:
        print(f"[search] the corpus changed ({changes}): rebuilding the index")
        index = Index.build(student, corpus, folder, index.meta["dtype"], True, sidecar["corpus"])
    t0 = time.perf_counter()
    cands = None
    if args.first_stage == "bm25":
        bm25 = BM25({d: doc_text(corpus[d]) for d in corpus})
        cands = [bm25.top(q, args.first_k) for q in queries.values()]
    hits = index.search(student, list(queries.values()), args.k, cands)
    dt = time.perf_counter() - t0
    if args.out:
        write_trec(Path(args.out), {q: dict(h) for q, h in zip(queries, hits)}, "student")
        print(f"[search] {len(queries)} queries x {len(index.ids)} documents in {dt:.2f}s -> {args.out}")
    else:  # every query's hits, each block headed by its id when there are several
        for qid, h in zip(queries, hits):
            if len(queries) > 1:
                print(f"# {qid}")
            for rank, (d, s) in enumerate(h, 1):
                print(f"{rank:3d}  {s:9.4f}  {d}")
    report_cuts(student, "search")


def student_parser():
    import argparse
    from student import __doc__ as doc
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("index", help="encode a BEIR corpus into an index for a trained student")
    i.add_argument("--student", required=True, help="distill.py output folder (predictor.safetensors)")
    i.add_argument("--corpus", required=True, help="BEIR corpus.jsonl or the folder holding it")
    i.add_argument("--out", required=True, help="index folder")
    i.add_argument("--dtype", default="float16", choices=sorted(INDEX_DTYPE), help="dtype of B h_d")
    i.add_argument("--refresh-cache", action="store_true", help="re-encode the documents from scratch")
    i.add_argument("--overwrite", action="store_true", help="replace an existing index")
    s = sub.add_parser("search", help="search an index with one query or a queries.jsonl")
    s.add_argument("--index", required=True)
    s.add_argument("--student", default="", help="distill.py output folder (default: the one that built the index)")
    s.add_argument("--query", default=None)
    s.add_argument("--queries", default="", help="BEIR queries.jsonl")
    s.add_argument("--out", default="", help="TREC run file (with --queries); without it the hits are printed")
    s.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    s.add_argument("--k", type=int, default=10)
    s.add_argument("--first-stage", default="none", choices=["none", "bm25"],
                   help="score only a first stage's top --first-k (for corpora too large to score whole on a CPU)")
    s.add_argument("--first-k", type=int, default=1000)
    s.add_argument("--reindex", action="store_true",
                   help="rebuild the index when its corpus changed since it was built")
    s.add_argument("--compile", action="store_true", help="score through torch.compile's fused kernel")
    for a in (i, s):
        a.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        a.add_argument("--attn-implementation", default="sdpa", choices=list(ATTENTION), help="attention kernel")
        a.add_argument("--batch-size", type=int, default=8, help="texts per LLM forward")
        a.add_argument("--quiet", action="store_true")
    return p


# ---------------------------------------------------------------------------- python evaluate.py
@dataclass
class EvalConfig:
    bench: str = field("virtualhome", "beir | msmarco | esconv | psyqa | saycan | virtualhome | a single BEIR name")
    datasets: str = field(",".join(BEIR_13), "BEIR names for --bench beir (default: the 13 public sets such papers "
                          "average; each downloaded only when asked, or read from --data-dir)")
    data_dir: str = field("", "local copy (for beir: a folder holding one sub-folder per data set, or the set)")
    systems: str = field("prior,bm25,llm-biencoder,minilm,teacher,student",
                         "comma-separated systems to compare (prior: needs a training split)")
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
    model: str = field("smollm2-135m", "LLM for llm-biencoder when no teacher checkpoint exists")
    instruction: str = field("task", "the zero-shot teacher's question (teacher.py --instruction); a checkpoint "
                             "brings its own")
    device: str = field("auto", "auto | cpu | cuda", choices=["auto", "cpu", "cuda"])
    dtype: str = field("auto", DTYPE_HELP, choices=["auto", *DTYPES])
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
        if self.bench != "beir" and self.datasets != ",".join(BEIR_13):
            raise ValueError(f"--datasets applies to --bench beir only; with --bench {self.bench} it would be ignored")
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
    from student import Student

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


def eval_split(cfg: EvalConfig, data) -> str:
    """--split, else test (the held-out split), else the only one."""
    if cfg.split:
        return cfg.split
    return "test" if "test" in data.queries or len(data.queries) != 1 else next(iter(data.queries))


def evaluate_bench(cfg: EvalConfig, name: str, data, teacher, student, out: Path) -> dict:
    split = eval_split(cfg, data)
    train = "train" if "train" in data.queries and split != "train" else None  # the label prior's counts
    data, queries, qrels = shrink(data, split, cfg)
    doc_ids = list(data.corpus)
    bm25, bm25_seconds = timed(BM25, {d: data.doc_text(d) for d in doc_ids})
    cands = candidate_sets(list(queries), queries, qrels, doc_ids, bm25, cfg.rerank_k,
                           torch.Generator().manual_seed(cfg.seed + 11))
    doc_cache = cache_dir("docemb", f"{name}-{compute_id(student.lm)}-{len(doc_ids)}-f16") if student else None
    results = run_systems(cfg.system_list, data, queries, cands, bm25, bm25_seconds,
                          train, teacher, student, doc_cache=doc_cache, quiet=cfg.quiet,
                          index_dtype=cfg.index_dtype, teacher_k=cfg.teacher_k, first_stage=cfg.first_stage_list,
                          scores=teacher_scores_cache(teacher, name) if teacher and "teacher" in cfg.system_list
                          else None, refresh_cache=cfg.refresh_cache)
    header = (f"{len(queries)} of {len(data.split(split)[0])} {split} queries"
              f"{' (subset)' if cfg.max_queries else ''}, {len(doc_ids)} documents"
              f"{' (subset)' if cfg.max_docs else ''}")
    beir_format = name not in ("esconv", "psyqa", "saycan", "virtualhome")
    extra = {"splits": splits_of(data)} | ({"truncated": teacher.prompt.cut_counts(),
                                            "compute": compute_mode(teacher.lm)} if teacher else {})
    return report(out, name, split, qrels, results, describe_protocol(len(doc_ids), cfg.rerank_k), header,
                  ignore_identical=cfg.ignore_identical and beir_format, extra=extra, seed=cfg.seed,
                  pool_size=len(doc_ids))


def evaluate_run(cfg: EvalConfig) -> dict:
    from data import load_bench
    from files import check_split

    set_seed(cfg.seed)
    resolve_device(cfg.device)  # inputs and settings are checked before anything is written
    names = [n.strip() for n in cfg.datasets.split(",")] if cfg.bench == "beir" else [cfg.bench]
    with parallel.main_first():  # fail early (offline, bad files, empty splits); a download happens once
        loaded = {n: load_bench(n, _data_dir(cfg, n)) for n in names}
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


def _data_dir(cfg: EvalConfig, name: str) -> str | None:
    if not cfg.data_dir:
        return None
    if cfg.bench == "beir" and (Path(cfg.data_dir) / name).is_dir():
        return str(Path(cfg.data_dir) / name)
    return cfg.data_dir


def evaluate_main(argv=None) -> dict:
    import argparse
    from evaluate import __doc__ as doc

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(p, EvalConfig)
    return evaluate_run(config_from_args(EvalConfig, p.parse_args(argv)))


# ---------------------------------------------------------------------------- python distill.py
def distill_start(cfg):
    """Inputs and settings checked before anything is written, then the output folder: (data, output folder). Steps
    0-5 read the train split only; Step 6 evaluates cfg.eval_split (dev to choose, test to report)."""
    from common import check_teacher_folder
    from data import load_bench
    from files import check_split

    resolve_device(cfg.device)
    with parallel.main_first():  # a download or unpacking happens once
        data = load_bench(cfg.bench, cfg.data_dir or None)
    check_split(data, "train", "training")
    check_split(data, cfg.eval_split, cfg.eval_split)
    check_trec_ids(data.corpus, "document", f"{cfg.bench} corpus")
    check_teacher_folder(cfg.teacher, cfg.output_dir)
    sidecar = Path(cfg.teacher, "teacher.safetensors.json")
    trained_on = read_json(sidecar).get("config", {}).get("bench") if sidecar.exists() else None
    if trained_on not in (None, cfg.bench):
        print(f"[distill] note: the teacher {cfg.teacher} was trained on {trained_on} (its sidecar says so), the "
              f"student is distilled on {cfg.bench}; pass --teacher DIR for a teacher of {cfg.bench}")
    out = prepare_output(cfg.output_dir, cfg, cfg.resume, cfg.overwrite, script="distill", can_resume=True)
    set_seed(cfg.seed)
    return data, out


def distill_resume(cfg, out: Path, student) -> tuple[int, list[dict], list]:
    """(first round to run, the loss log, the pairs so far): with --resume, those of the last finished round, whose
    predictor is loaded into `student`; else a fresh start."""
    state = out / "state.safetensors"
    if not (cfg.resume and state.exists()):
        return 0, [], []
    tensors, meta = load_tensors(state, {"teacher_fingerprint": fingerprint(student.lm)},
                                 fix="the round cannot be recovered: start again with --overwrite")
    student.predictor.load_state_dict(tensors)
    print(f"[distill] resuming after round {meta['round']}")
    return meta["round"] + 1, meta["log"], [(a, b, tuple(c)) for a, b, c in meta["pairs"]]


# ---------------------------------------------------------------------------- python data.py stats
def data_main(argv=None) -> None:
    import argparse
    import json

    from data import __doc__ as doc, load_bench

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stats", help="print one JSON line of counts")
    s.add_argument("--bench", default="virtualhome", help="virtualhome | esconv | psyqa | saycan | msmarco | BEIR name")
    s.add_argument("--data-dir", default=None)
    s.add_argument("--split", default="all")
    args = p.parse_args(argv)
    print(json.dumps(load_bench(args.bench, args.data_dir).stats(args.split)))
