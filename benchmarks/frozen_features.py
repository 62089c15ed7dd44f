"""Does the frozen trunk carry relevance? The predictor's inputs (7) on a data set, measured without the teacher's
scores: a check to run before a long distillation (the student's trunk is frozen, so what its states do not carry the
predictor cannot add).

    python -m benchmarks.frozen_features --bench beir --data-dir DIR --teacher runs/teacher-NAME --out FILE.json
    python -m benchmarks.frozen_features --bench beir --data-dir DIR --model Qwen/Qwen2-7B-Instruct --out FILE.json

For the training queries and the whole corpus, encoded once by the trunk (the teacher's prompts (5) and (6)), and for
two readings of each state: `last`, the state at the last token (the project's h_q and h_d), and `mean`, the mean of
the states over the query's / document's own tokens (the student's `--reading mean`, (6m)), it reports:
- the outsized dimensions (7b) corrects: the largest and the median over dimensions of mean |h|;
- zero-shot: cosine of the centred states (each side's mean removed);
- the predictor (7) trained by the pool term (11) alone (no teacher), batched as distill.py does it, its inputs raw
  (`--no-standardize`) or standardised (7b), and standardised from the similarity init (7c)
  (`Predictor.similarity_init`: (7) set to start as a negative L1 distance between projections of the two inputs,
  then trained): after each epoch the training loss, R@1 on the training queries, and nDCG@10 / R@10 / R@100 on
  `--split` (dev by default);
- BM25 on the same queries.
Same seed, same numbers. Choices: the pool term's temperature 1, AdamW at --lr, ReLU, width 256, distill.py's
--batch-size and --nce-negatives; a random unit-scale u in place of W[y+] - W[y-] (the ranking depends on u only
through v = W2^T u, which trains); the query / document tokens as Prompt cuts them.
"""
from __future__ import annotations

import argparse
import math
import time

import torch

from data import load_bench
from jepa import Predictor
from losses import pool_nce
from runtime.batching import PoolBatches
from runtime.common import atomic_write, check_output_file, cli, progress, set_seed, subset, write_json
from runtime.config import RunConfig
from runtime.llm import exact, pad_right
from runtime.metrics import BM25, TOP, per_query, summarize, topk_blocked
from runtime.runs import eval_queries
from teacher import instruction_for, load_teacher

READINGS = ("last", "mean")
REPORTED = ("nDCG@10", "R@10", "R@100")


def encode(teacher, seqs: list[list[int]], spans: list[tuple[int, int]], desc: str) -> dict[str, torch.Tensor]:
    """Both readings of the trunk's last hidden state for each sequence: {"last": (N, H), "mean": (N, H)}, "mean" over
    the positions [start, stop) of `spans` (the query's or document's own tokens; the last token where empty)."""
    lm, n = teacher.lm, len(seqs)
    out = {r: torch.zeros(n, lm.config.hidden_size) for r in READINGS}
    order = sorted(range(n), key=lambda i: len(seqs[i]))
    dev = next(lm.parameters()).device
    with exact(), torch.inference_mode():
        for b in progress(range(0, n, teacher.batch_size), desc=desc, quiet=teacher.quiet):
            idx = order[b:b + teacher.batch_size]
            ids, mask, lengths = pad_right([seqs[i] for i in idx], teacher.pad_id)
            h = lm.model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).last_hidden_state.float().cpu()
            for row, i in enumerate(idx):
                start, stop = spans[i]
                last = int(lengths[row]) - 1
                out["last"][i] = h[row, last]
                out["mean"][i] = h[row, start:stop].mean(0) if stop > start else h[row, last]
    return out


def outsized(h: torch.Tensor) -> dict[str, float]:
    """Mean |h| per dimension: its largest, its median, and their ratio."""
    m = h.abs().mean(0)
    return {"max": float(m.max()), "median": float(m.median()), "ratio": float(m.max() / m.median())}


def run_of(scores: torch.Tensor, qids: list[str], doc_ids: list[str]) -> dict[str, dict[str, float]]:
    """Each query's top TOP documents by `scores` (B, n)."""
    vals, idx = scores.topk(min(TOP, scores.shape[1]), dim=1)
    return {q: {doc_ids[j]: float(v) for v, j in zip(vr.tolist(), ir.tolist())} for q, vr, ir in zip(qids, vals, idx)}


def metrics_of(run, qrels) -> dict[str, float]:
    s = summarize(per_query(run, qrels))
    return {m: s[m] for m in REPORTED} | {f"{m}_ci": s[f"{m}_ci"] for m in REPORTED}


def zero_shot(h_q: torch.Tensor, h_d: torch.Tensor) -> torch.Tensor:
    """Cosine of the centred states, (B, n)."""
    def unit(h):
        h = h - h.mean(0)
        return h / h.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return unit(h_q) @ unit(h_d).T


def train_predictor(h_train: torch.Tensor, gold: list[set[int]], h_d: torch.Tensor, h_eval: torch.Tensor,
                    evaluate, standardize: bool, args, similarity: bool = False) -> list[dict]:
    """(7) trained by (11) alone, batched as distill.py batches it (`PoolBatches`: --batch-size queries per step against
    --negatives sampled documents plus their golds; AdamW): one row per epoch (loss, train R@1 over the whole
    corpus, `evaluate`'s metrics of the (B, n) scores of h_eval)."""
    set_seed(args.seed)
    hidden, n = h_d.shape[1], h_d.shape[0]
    pred = Predictor(hidden, args.width, "relu")
    if standardize:
        pred.standardize(h_train, h_d, seed=args.seed)
    u = torch.randn(hidden, generator=torch.Generator().manual_seed(args.seed)) / math.sqrt(hidden)
    if similarity:
        pred.similarity_init(u, args.seed)
    opt = torch.optim.AdamW(pred.parameters(), lr=args.lr)
    batches = PoolBatches(h_train, gold, n, args.batch_size, args.negatives, torch.Generator().manual_seed(args.seed))
    rows = []
    if similarity:
        with torch.no_grad():
            rows.append({"epoch": 0, "loss": None, "train_R@1": None,
                         **evaluate(pred.scores(h_eval, pred.doc_side(h_d), u))})
    for epoch in range(1, args.epochs + 1):
        total, steps = 0.0, math.ceil(len(gold) / args.batch_size)
        for _ in range(steps):
            q, docs, target, exclude = batches.next()
            loss = pool_nce(pred.scores(q, pred.doc_side(h_d[docs]), u), target, exclude)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        with torch.no_grad():
            side = pred.doc_side(h_d)
            top1 = topk_blocked(lambda i, j: pred.scores(h_train, side[i:j], u), n, len(gold), 1)[1][:, 0]
            rows.append({"epoch": epoch, "loss": total / steps,
                         "train_R@1": sum(int(t) in g for t, g in zip(top1.tolist(), gold)) / len(gold),
                         **evaluate(pred.scores(h_eval, side, u))})
    return rows


def measure(args) -> dict:
    t0 = time.time()
    where = RunConfig(bench=args.bench, data_dir=args.data_dir)
    where.one_set()  # --bench beir --data-dir SET: the set named by its folder, as distill.py names it
    data = load_bench(where.bench, args.data_dir or None)
    if args.teacher:
        teacher, _ = load_teacher(args.teacher, device=args.device, batch_size=args.teacher_batch, quiet=args.quiet)
    else:
        teacher, _ = load_teacher(model=args.model, device=args.device, batch_size=args.teacher_batch, quiet=args.quiet,
                                  instruction=instruction_for("task", where.bench))
    prompt = teacher.prompt
    train_q, train_rel = data.split("train")
    eval_q, eval_rel = data.split(args.split)
    doc_ids = list(data.corpus)
    col = {d: j for j, d in enumerate(doc_ids)}
    tq = [q for q in subset(list(train_q), args.max_train_queries, torch.Generator().manual_seed(args.seed))
          if any(g > 0 for g in train_rel[q].values())]
    eq = [q for q in eval_queries(eval_q, args.max_queries, args.seed) if any(g > 0 for g in eval_rel[q].values())]
    if not tq or not eq:
        raise ValueError(f"{where.bench}: {'train' if not tq else args.split} has no query with a relevant document")
    gold = [{col[d] for d, g in train_rel[q].items() if g > 0} for q in tq]
    qrels = {q: eval_rel[q] for q in eq}

    docs = [prompt.doc_prefix(data.doc_text(d)) for d in doc_ids]
    h_d = encode(teacher, docs, [(len(prompt.pre), len(s)) for s in docs], "documents")
    queries = [prompt.query_only(t) for t in [train_q[q] for q in tq] + [eval_q[q] for q in eq]]
    spans = [(len(prompt.pre_q), len(s) - len(prompt.post_q)) for s in queries]
    h_q = encode(teacher, queries, spans, "queries")
    bm25 = BM25({d: data.doc_text(d) for d in doc_ids})
    res = {"bench": where.bench, "split": args.split, "train_queries": len(tq), "eval_queries": len(eq),
           "documents": len(doc_ids), "trunk": args.teacher or args.model, "config": vars(args),
           "bm25": metrics_of(bm25.run({q: eval_q[q] for q in eq}, quiet=args.quiet), qrels),
           "outsized": {r: {"queries": outsized(h_q[r]), "documents": outsized(h_d[r])} for r in READINGS},
           "zero_shot": {}, "trained": {}}
    for r in READINGS:
        q_train, q_eval = h_q[r][:len(tq)], h_q[r][len(tq):]
        res["zero_shot"][r] = metrics_of(run_of(zero_shot(q_eval, h_d[r]), eq, doc_ids), qrels)
        for std, sim in ((False, False), (True, False), (True, True)):
            name = f"{r}, {'standardised (7b)' if std else 'raw'}" + (", similarity init" if sim else "")
            res["trained"][name] = train_predictor(q_train, gold, h_d[r], q_eval,
                                                   lambda s: metrics_of(run_of(s, eq, doc_ids), qrels), std, args, sim)
            last = res["trained"][name][-1]
            print(f"[features] {name}: loss {last['loss']:.2f}, train R@1 {last['train_R@1']:.3f}, {args.split} "
                  + ", ".join(f"{m} {last[m]:.3f}" for m in REPORTED))
    res["seconds"] = time.time() - t0
    return res


def table(res: dict) -> str:
    """The summary as markdown: one row per system, the last epoch of each trained predictor."""
    lines = [f"{res['bench']}, {res['split']} ({res['eval_queries']} queries, {res['documents']} documents; "
             f"predictors trained on {res['train_queries']} training queries)", "",
             "| system | " + " | ".join(REPORTED) + " | train R@1 |", "|---" * (len(REPORTED) + 2) + "|"]

    def row(name, m, train="-"):
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.3f} ({m[k + '_ci'][0]:.3f}-{m[k + '_ci'][1]:.3f})"
                                                 for k in REPORTED) + f" | {train} |")
    row("bm25", res["bm25"])
    for r, m in res["zero_shot"].items():
        row(f"zero-shot cosine, {r}", m)
    for name, rows in res["trained"].items():
        if rows[0]["epoch"] == 0:
            row(f"predictor, {name}, at init", rows[0])
        best = rows[-1]
        row(f"predictor, {name}, epoch {best['epoch']}", best, f"{best['train_R@1']:.3f}")
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", default="beir", help="a bench name, or beir with --data-dir a BEIR-format folder")
    p.add_argument("--data-dir", default="")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--teacher", default="", help="a teacher.py train folder: the trunk the student freezes")
    who.add_argument("--model", default="", help="a model, zero-shot (smollm2-135m, a Hugging Face id, a folder)")
    p.add_argument("--split", default="dev", help="the split measured (dev: choose on dev)")
    p.add_argument("--max-train-queries", type=int, default=2048, help="0 = all")
    p.add_argument("--max-queries", type=int, default=256, help="of --split; 0 = all")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=32, help="training queries per step (as distill.py's)")
    p.add_argument("--negatives", type=int, default=1024,
                   help="documents per step as negatives (distill.py --nce-negatives; 0 = the whole corpus)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--teacher-batch", type=int, default=8, help="sequences per forward pass of the trunk")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="a .json file; the table goes beside it as .md")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    if min(args.epochs, args.batch_size, args.width, args.teacher_batch) < 1 or args.lr <= 0 or \
            min(args.max_train_queries, args.max_queries, args.negatives) < 0:
        raise ValueError("--epochs, --batch-size, --width, --teacher-batch need >= 1, --lr > 0, --negatives and "
                         "--max-*-queries >= 0")
    out = check_output_file(args.out, "--out", args.overwrite)
    md = check_output_file(out.with_suffix(".md"), "--out (its .md)", args.overwrite)
    res = measure(args)
    write_json(out, res)
    atomic_write(md, table(res))
    print(table(res))
    return res


if __name__ == "__main__":
    cli(main)
