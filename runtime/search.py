"""`python student.py index | search`: a corpus encoded (6) into an `Index` of B h_d for a trained student, and
queries searched there (printed, or written as a TREC run). The student is loaded by the loader student.py passes in.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from runtime.common import check_output_file, entries, folder_owner, read_json, writable_folder
from runtime.files import doc_text, load_corpus, load_queries
from runtime.index import INDEX_DTYPE, INDEX_FILES, Index, corpus_changes
from runtime.llm import ATTENTION
from runtime.metrics import BM25, check_trec_ids, write_trec


def main(argv, doc: str, load_student) -> None:
    args = parser(doc).parse_args(argv)
    build_index(args, load_student) if args.cmd == "index" else search_index(args, load_student)


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


def build_index(args, load_student) -> None:
    check_cli_values(args)
    corpus = load_corpus(args.corpus)  # checked before anything is written
    out = Path(args.out)
    if (out / "index.safetensors").exists() and not args.overwrite:
        raise FileExistsError(f"{out}: holds an index; pass --overwrite to rebuild it")
    owner = folder_owner(out) if out.is_dir() else None
    if owner not in (None, "index"):
        raise FileExistsError(f"--out {out}: made by {owner}.py; an index needs a folder of its own")
    if owner is None and out.is_dir() and not {p.name for p in entries(out)} <= INDEX_FILES:
        raise FileExistsError(f"--out {out}: a folder that holds files and no index; an index needs a folder of its "
                              "own (new or empty)")
    if owner is None and out.is_dir() and any(entries(out)):  # only an interrupted build's files: it continues
        print(f"[index] {out}: an interrupted build; continuing from its finished shards")
    writable_folder(out, "--out")
    student = load_student(args.student, args.device, args.quiet, args.batch_size, args.attn_implementation)
    t0 = time.perf_counter()
    index = Index.build(student, corpus, out, args.dtype, args.refresh_cache, str(Path(args.corpus).resolve()))
    print(f"[index] {len(index.ids)} documents -> {out} ({index.meta['dtype']} B h_d, "
          f"{index.doc_side.numel() * index.doc_side.element_size() / 2 ** 20:.1f} MiB) in "
          f"{time.perf_counter() - t0:.1f}s")
    report_cuts(student, "index")


def search_index(args, load_student) -> None:
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
        if folder.resolve() in Path(args.out).resolve().parents:
            raise FileExistsError(f"--out {args.out}: inside the index folder {folder}; write the run elsewhere")
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


def parser(doc: str) -> argparse.ArgumentParser:
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
