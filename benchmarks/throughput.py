"""Benchmarks: throughput of the factorised scorer (7) against a dot product and of the teacher's joint passes, with
the machine's measured bounds beside them. Figures are written to results/; nothing here is asserted by a test.

    python -m benchmarks.throughput predictor [--sizes 1000000 --queries 1,64 --acts gelu,relu]
    python -m benchmarks.throughput teacher [--dtype float32]     # pairs/s at total lengths 128 and 512
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from jepa import ACTS, Predictor
from runtime.common import check_result_file, cli, write_json
from runtime.index import INDEX_DTYPE
from runtime.llm import DEFAULT_MODEL, DTYPE_HELP, DTYPES, compute_mode, last_hidden, load_llm


def _median_seconds(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


def read_bandwidth(nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """Measured bytes/s of streaming a `nbytes` float32 tensor from memory once (a sum: one read per element)."""
    x = torch.ones(nbytes // 4)
    x.sum()
    return nbytes / _median_seconds(x.sum, repeats)


def matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    """Measured FLOP/s of a square float32 matmul on this machine: the compute bound the teacher's scoring passes
    meet (float32 under every CPU --dtype, `llm.exact`)."""
    a, b = torch.randn(size, size), torch.randn(size, size)

    def product():
        return a @ b
    product()
    return 2 * size ** 3 / _median_seconds(product, repeats)


def pass_flops(lm, length: int) -> float:
    """FLOPs of one forward over `length` tokens: 2 x the non-embedding parameters per token, plus attention's
    QK^T and AV (4 x layers x length^2 x hidden, causal ignored), plus the last position's head."""
    cfg = lm.config
    embed = lm.get_input_embeddings().weight.numel()
    dense = sum(p.numel() for p in lm.model.layers.parameters())
    return 2 * dense * length + 4 * cfg.num_hidden_layers * length ** 2 * cfg.hidden_size + 2 * embed


def _filled(n: int, cols: int, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """A synthetic (n, cols) tensor of N(0, 1) values in `dtype`, filled in slices (no float32 copy of the whole)."""
    out = torch.empty(n, cols, dtype=dtype)
    for i in range(0, n, 1 << 20):
        out[i:i + (1 << 20)] = torch.randn(min(1 << 20, n - i), cols, generator=gen).to(dtype)
    return out


def bench(hidden: int = 576, width: int = 256, sizes=(10_000, 100_000, 1_000_000, 8_841_823), queries=(1, 64),
          dtype: str = "float16", max_pairs: float = 3e9, acts=("gelu", "relu"), compiled: bool = True,
          output: str = "results/predictor_throughput.json", read_bytes: int = 1 << 30) -> list[dict]:
    """Candidates scored per second and per query, for `queries` queries at once over n cached documents:
    factorised (7) over B h_d (n, P) with each activation of `acts`, blocked eager and compiled (`fused_scores`), vs
    a dot-product bi-encoder over embeddings (n, H), both stored in `dtype`, beside the memory-bandwidth bound of
    reading B h_d once per batch of queries, measured on this machine in the same run (each figure also as a share
    of that bound). Synthetic N(0, 1) data; 8,841,823 = MS MARCO's passages. Points over `max_pairs` (query, doc)
    pairs are skipped (minutes each on a CPU)."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    preds = {a: Predictor(hidden, width, a) for a in acts}
    with torch.no_grad():
        for p in preds.values():
            p.load_state_dict(preds[acts[0]].state_dict())
            p.W2.weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(1))
    u = torch.randn(hidden)
    bw = read_bandwidth(read_bytes)
    elem = torch.empty(0, dtype=INDEX_DTYPE[dtype]).element_size()
    rows = []
    for n in sizes:
        side = _filled(n, width, INDEX_DTYPE[dtype], gen)    # what an index holds: B h_d
        emb = _filled(n, hidden, INDEX_DTYPE[dtype], gen)    # what a bi-encoder holds: h_d
        for b in queries:
            if n * b > max_pairs:
                continue
            h_q = torch.randn(b, hidden, generator=gen)
            q = h_q.to(emb.dtype)
            repeats = 3 if n * b <= 1e8 else 1
            bound = b * bw / (width * elem)
            row = {"n": n, "queries": b, "hidden": hidden, "width": width, "dtype": dtype,
                   "threads": torch.get_num_threads(), "read_bandwidth_GBps": bw / 1e9,
                   "bandwidth_bound_cand_per_s": bound, "dot_bound_cand_per_s": b * bw / (hidden * elem)}
            with torch.no_grad():
                emb[:4096] @ q.T  # warm-up
                row["dot_cand_per_s"] = n * b / _median_seconds(lambda e=emb: e @ q.T, repeats)
                for a, p in preds.items():
                    p.scores(h_q, side[:4096], u)  # warm-up
                    row[f"{a}_cand_per_s"] = n * b / _median_seconds(lambda s=side: p.scores(h_q, s, u), repeats)
                    if compiled:
                        p.compiled = True
                        p.scores(h_q, side[:4096], u)  # compile outside the timing
                        seconds = _median_seconds(lambda s=side: p.scores(h_q, s, u), repeats)
                        row[f"{a}_compiled_cand_per_s"] = n * b / seconds
                        p.compiled = False
            rows.append(row)
            figures = {k[:-len("_cand_per_s")]: v for k, v in row.items() if k.endswith("_cand_per_s")}
            print(f"[bench] n={n:,} queries={b} ({dtype}, {bw / 1e9:.1f} GB/s read): " + ", ".join(
                f"{k} {v / 1e6:.1f}M/s ({v / bound:.0%} of bound)" for k, v in figures.items()
                if k not in ("bandwidth_bound", "dot_bound")) + f"; bound {bound / 1e6:.1f}M/s")
        del side, emb
    write_json(output, rows)
    return rows


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    ap = sub.add_parser("predictor", help="the factorised scorer's throughput against a dot product")
    ap.add_argument("--hidden", type=int, default=576, help="H (576 = SmolLM2-135M, 3584 = Qwen2-7B)")
    ap.add_argument("--width", type=int, default=256, help="predictor width P")
    ap.add_argument("--sizes", default="10000,100000,1000000,8841823", help="corpus sizes n")
    ap.add_argument("--queries", default="1,64", help="queries scored at once")
    ap.add_argument("--dtype", default="float16", choices=sorted(INDEX_DTYPE), help="dtype of B h_d and of h_d")
    ap.add_argument("--max-pairs", type=float, default=3e9, help="skip points with more (query, doc) pairs")
    ap.add_argument("--acts", default="gelu,relu", help="the predictor's activations to time (jepa.ACTS)")
    ap.add_argument("--no-compile", action="store_true", help="time the eager scorer only (no C++ compiler)")
    ap.add_argument("--read-mb", type=int, default=1024, help="MiB streamed to measure the read bandwidth")
    ap.add_argument("--output", default="results/predictor_throughput.json")
    b = sub.add_parser("teacher", help="the teacher's pairs/s")
    b.add_argument("--model", default=DEFAULT_MODEL)
    b.add_argument("--device", default="auto")
    b.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help=DTYPE_HELP)
    b.add_argument("--batch-size", type=int, default=8)
    b.add_argument("--pairs", type=int, default=32)
    b.add_argument("--output", default="results/teacher_throughput.json")
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    return predictor_bench(a) if a.cmd == "predictor" else teacher_bench(a)


def predictor_bench(a) -> list[dict]:
    try:
        sizes, queries = [int(x) for x in a.sizes.split(",")], [int(x) for x in a.queries.split(",")]
    except ValueError as e:
        raise ValueError(f"--sizes {a.sizes!r} / --queries {a.queries!r}: comma-separated whole numbers") from e
    if min(sizes + queries + [a.hidden, a.width]) < 1 or not a.max_pairs > 0:
        raise ValueError("--sizes, --queries, --hidden and --width must be >= 1, --max-pairs > 0")
    acts = tuple(x.strip() for x in a.acts.split(",") if x.strip())
    if not acts or set(acts) - set(ACTS):
        raise ValueError(f"--acts {a.acts!r}: choose from {', '.join(ACTS)}")
    check_result_file(a.output, "--output", "bandwidth_bound_cand_per_s")
    if a.read_mb < 1:
        raise ValueError(f"--read-mb {a.read_mb}: must be >= 1")
    return bench(a.hidden, a.width, sizes, queries, a.dtype, a.max_pairs, acts, not a.no_compile, a.output,
                 a.read_mb << 20)


def teacher_bench(args) -> None:
    """Throughput in pairs/s at fixed total lengths (random token ids of exactly that length)."""
    for name in ("batch_size", "pairs"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} is {getattr(args, name)}; it must be >= 1")
    check_result_file(args.output, "--output", "pairs_per_s")
    lm, tok = load_llm(args.model, args.device, args.dtype)
    compute = compute_mode(lm) + (" (scores in float32)" if compute_mode(lm) == "bf16-autocast" else "")
    peak = matmul_peak() if next(lm.parameters()).device.type == "cpu" else None
    rows = []
    for length in (128, 512):
        seqs = torch.randint(100, lm.config.vocab_size - 100, (args.pairs, length)).tolist()
        last_hidden(lm, seqs[:args.batch_size], args.batch_size, 0, quiet=True)  # warm-up
        t0 = time.perf_counter()
        last_hidden(lm, seqs, args.batch_size, 0, desc=f"L={length}")
        dt = time.perf_counter() - t0
        flops = pass_flops(lm, length) * args.pairs / dt
        rows.append({"total_tokens": length, "batch_size": args.batch_size, "pairs": args.pairs,
                     "pairs_per_s": args.pairs / dt, "GFLOP_per_s": flops / 1e9,
                     "matmul_peak_GFLOP_per_s": peak / 1e9 if peak else None,
                     "share_of_peak": flops / peak if peak else None, "threads": torch.get_num_threads(),
                     "device": str(next(lm.parameters()).device), "model": args.model, "compute": compute})
        bound = f" = {flops / peak:.0%} of this machine's float32 matmul peak {peak / 1e9:.0f} GFLOP/s" \
            if peak else ""
        print(f"[bench] {length} tokens: {rows[-1]['pairs_per_s']:.2f} pairs/s, {flops / 1e9:.0f} GFLOP/s{bound}")
    write_json(Path(args.output), rows)


if __name__ == "__main__":
    cli(main)
