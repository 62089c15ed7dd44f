"""Corpora of millions on one machine: time and peak memory of the student's whole-pool code paths on a synthetic
corpus, to size the paper's MS MARCO runs (8.8M passages, H = 3584) from measured figures.

    python -m benchmarks.scale                       # 1M documents, H = 576 (SmolLM2's width), CPU
    python -m benchmarks.scale --docs 100000 --quick      # a smaller check

What runs is the project's own code on synthetic inputs (no LLM is loaded; the encodings are random):
- the document encodings written as the cache keeps them (one raw float16 file) and memory-mapped (student.py);
- the index B h_d (7) built from them, float16 (student.Index);
- Steps 2-3 of a round: each training query's top k + |excluded| over the pool (distill.pick_top's path), blocked;
- Step 6 over the whole pool: the student's top 100 and its scores on C(q), the frozen bi-encoder's (cosine,
  blocked), BM25 from its postings (`metrics.BM25.sparse`) over synthetic texts.
Peak RSS is the process's (ru_maxrss), read after each stage; mapped file pages that were read count in it.
Choices: Zipf-distributed word ids for the texts (40 words per document, 30,000 words), N(0, 1) encodings.
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from jepa import Predictor
from runtime.baselines import cosine_runs, runs_from_top
from runtime.common import check_result_file, cli, write_json
from runtime.index import Index, _mapped
from runtime.metrics import BM25, TOP


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def run(docs: int, hidden: int, width: int, queries: int, words: int, out: str, seed: int = 0,
        compiled: bool = False, doc_words: int = 40) -> dict:
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    stages, t_all = [], time.perf_counter()

    def stage(name: str, t0: float, **extra) -> None:
        stages.append({"stage": name, "seconds": time.perf_counter() - t0, "peak_rss_GiB": peak_gib(), **extra})
        print(f"[scale] {name}: {stages[-1]['seconds']:.1f}s, peak RSS {stages[-1]['peak_rss_GiB']:.2f} GiB")

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = Path(tmp) / "encodings.f16"
        with open(path, "wb") as f:  # written in slices, as encode_corpus joins its shards
            for i in range(0, docs, 1 << 16):
                f.write(torch.randn(min(1 << 16, docs - i), hidden, generator=gen).half().numpy().tobytes())
        h_d = _mapped(path, docs, hidden)
        stage("document encodings: written, memory-mapped", t0, gib_on_disk=path.stat().st_size / 2 ** 30)

        torch.manual_seed(seed)
        student = SimpleNamespace(predictor=Predictor(hidden, width).eval(), u=torch.randn(hidden))
        student.predictor.compiled = compiled
        with torch.no_grad():
            student.predictor.W2.weight.normal_(0, 0.02)
        ids = [f"d{i}" for i in range(docs)]
        t0 = time.perf_counter()
        index = Index.from_h_d(student, ids, h_d, "float16")
        stage("index B h_d (float16)", t0, gib_index=index.doc_side.numel() * 2 / 2 ** 30)

        h_train = torch.randn(queries, hidden, generator=gen)
        excluded = [set(rng.integers(0, docs, 5).tolist()) for _ in range(queries)]
        t0 = time.perf_counter()
        _, top = index.topk(student, h_train, 2 + max(map(len, excluded)))
        picks = [[d for d in row if d not in e][:2] for row, e in zip(top.tolist(), excluded)]
        stage(f"Steps 2-3: top 2 unscored of {queries} training queries", t0, picked=sum(map(len, picks)))

        h_test = torch.randn(queries, hidden, generator=gen)
        qids = [f"q{i}" for i in range(queries)]
        cands = {q: [ids[j] for j in rng.integers(0, docs, 8).tolist()] for q in qids}
        t0 = time.perf_counter()
        vals, idx = index.topk(student, h_test, TOP)
        runs_from_top(qids, ids, vals, idx, cands, lambda i, rows: index.scores_at(student, h_test[i:i + 1], [rows])[0])
        stage(f"Step 6: the student's top {TOP} and C(q) of {queries} test queries", t0)

        t0 = time.perf_counter()
        cosine_runs(h_test, h_d, qids, ids, cands)
        stage(f"Step 6: the frozen bi-encoder's top {TOP} and C(q)", t0)

        t0 = time.perf_counter()
        zipf = np.minimum(rng.zipf(1.3, size=(docs, doc_words)), words) - 1
        bm25 = BM25({d: " ".join(f"w{w}" for w in row) for d, row in zip(ids, zipf.tolist())})
        del zipf
        stage(f"BM25 index over synthetic texts ({doc_words} words each)", t0,
              postings=len(bm25.rows), terms=len(bm25.vocab))
        t0 = time.perf_counter()
        for q in range(queries):
            bm25.top_sparse(" ".join(f"w{w}" for w in rng.integers(0, 200, 4).tolist()), TOP)
        stage(f"Step 6: BM25's top {TOP} of {queries} queries (postings only)", t0)

    res = {"docs": docs, "hidden": hidden, "width": width, "queries": queries, "doc_words": doc_words,
           "compiled": compiled, "threads": torch.get_num_threads(),
           "stages": stages, "seconds": time.perf_counter() - t_all, "peak_rss_GiB": peak_gib()}
    write_json(out, res)
    print(f"[scale] {docs:,} documents, H = {hidden}: {res['seconds']:.0f}s, peak RSS {res['peak_rss_GiB']:.2f} GiB "
          f"-> {out}")
    return res


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=1_000_000, help="documents in the synthetic pool")
    p.add_argument("--hidden", type=int, default=576, help="H (576 = SmolLM2-135M, 3584 = Qwen2-7B)")
    p.add_argument("--width", type=int, default=256, help="predictor width P")
    p.add_argument("--queries", type=int, default=128, help="training and test queries each")
    p.add_argument("--words", type=int, default=30000, help="vocabulary of the synthetic texts")
    p.add_argument("--doc-words", type=int, default=40,
                   help="words per synthetic document (MS MARCO's passages: about 56, 35-40 after stop words)")
    p.add_argument("--quick", action="store_true", help="32 queries")
    p.add_argument("--compile", action="store_true", help="the student scores through torch.compile's fused kernel")
    p.add_argument("--output", default="results/scale.json")
    return p


def main(argv=None) -> dict:
    a = parser().parse_args(argv)
    for name in ("docs", "hidden", "width", "queries", "words", "doc_words"):
        if getattr(a, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} is {getattr(a, name)}; it must be >= 1")
    check_result_file(a.output, "--output", "stages")
    return run(a.docs, a.hidden, a.width, 32 if a.quick else a.queries, a.words, a.output, compiled=a.compile,
               doc_words=a.doc_words)


if __name__ == "__main__":
    cli(main)
