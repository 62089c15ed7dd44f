"""The teacher's scores under two `--dtype`s on the dev split's C(q) pairs: speed, its dev metric under each, and how
far they agree (max and mean |s_T difference|, agree@1, Kendall tau per query). RESULTS.md, "Precision". Under
bf16-autocast the scores are float32's (`llm.exact`): compare float32 with bfloat16 weights instead.

    python -m benchmarks.compare_dtypes --teacher runs/teacher-virtualhome [--bench virtualhome] [--queries 128]
"""
import argparse
import time

import torch

from data import load_bench
from runtime.common import subset
from runtime.metrics import BM25, agree_at_1, candidate_sets, evaluate_run, kendall_tau
from teacher import load_teacher

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--teacher", required=True)
ap.add_argument("--bench", default="virtualhome")
ap.add_argument("--data-dir", default=None)
ap.add_argument("--queries", type=int, default=128)
ap.add_argument("--dtypes", default="float32,bfloat16")
a = ap.parse_args()
data = load_bench(a.bench, a.data_dir)
queries, qrels = data.split("dev")
gen = torch.Generator().manual_seed(1)
qids = subset(list(queries), a.queries, gen)
cands = candidate_sets(qids, queries, qrels, list(data.corpus), BM25({d: data.doc_text(d) for d in data.corpus}), 8,
                       gen)
runs = {}
for dtype in a.dtypes.split(","):
    teacher, _ = load_teacher(a.teacher, dtype=dtype, quiet=True)
    teacher.rerank(queries, {q: cands[q] for q in list(cands)[:2]}, data.doc_text, "warm-up")
    t0 = time.perf_counter()
    runs[dtype] = teacher.rerank(queries, cands, data.doc_text, dtype)
    seconds = time.perf_counter() - t0
    m = evaluate_run(runs[dtype], {q: qrels[q] for q in cands})
    pairs = sum(len(c) for c in cands.values())
    print(f"{dtype}: {pairs} pairs in {seconds:.1f} s ({pairs / seconds:.2f} pairs/s); dev C(q) R@1 {m['R@1']:.4f} "
          f"MRR@10 {m['MRR@10']:.4f}")
ref, other = (runs[d] for d in a.dtypes.split(",")[:2])
diff = torch.tensor([abs(ref[q][d] - other[q][d]) for q in ref for d in ref[q]])
spread = torch.tensor([s for q in ref for s in ref[q].values()]).std().item()
agree = sum(agree_at_1(other[q], ref[q]) for q in ref) / len(ref)
tau = sum(kendall_tau(list(ref[q].values()), [other[q][d] for d in ref[q]]) for q in ref) / len(ref)
print(f"|s_T difference|: max {diff.max():.3f}, mean {diff.mean():.3f} (s_T's std {spread:.2f}); agree@1 {agree:.3f}, "
      f"Kendall tau {tau:.3f} over {len(ref)} queries")
