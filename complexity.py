"""Runtime against document length: the teacher's cost grows with L_d (quadratically once attention dominates), the
student's online cost does not (METHOD.md, "Complexity"; the paper's claim "quadratic -> linear").

    python complexity.py --overwrite           # embedded model, L_d = 16 .. 2048, n = 16, about 4 min on 2 CPU cores
                                               # (rewrites the committed results/complexity/)
    python complexity.py --quick               # L_d = 16 .. 128, n = 4, 1 repeat
    python complexity.py --device cuda --max-len 8192 --timed-pairs 0 --model Qwen/Qwen2-7B-Instruct

Per query with n candidates, l layers, hidden H, query length L_q:
    (a) teacher:          n joint passes over T = L_d + L_q (+ template) tokens: n * l * (c1 T H^2 + c2 T^2 H)
    (b) student online:   one pass over the query (+ template) + factorised scoring of n cached documents: O(n P)
    (c) student offline:  one pass over the document prefix, once per document (amortised over all queries)
    (d) FLOPs of each from the model config, the attention term (4 T^2 d_attn per layer) apart from the linear one.

Choices not fixed by the paper: the FLOP accounting counts the full T x T attention matrix (what SDPA computes
without a causal shortcut) and leaves out embeddings, norms and the head (the teacher needs two rows of it); texts
are VirtualHome programs cut to exactly L tokens; slopes are least-squares fits of log time on log L_d over the upper
half of the lengths, and the local slope between neighbouring lengths shows the teacher's exponent rising.
The n joint passes of (a) are independent forwards, so by default only `--timed-pairs` of them are timed and the
per-query figure is n / timed_pairs times that (on 2 CPU cores one pass of 2k tokens takes ~15 s); `--timed-pairs 0`
times all n in batches, which is what a GPU run should do (batching changes the per-pair cost there).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import torch

from data import load_virtualhome
from jepa import Predictor
from runtime.common import (add_dataclass_args, check_sizes, check_values, cli, config_from_args, field, prepare_output,
                            progress, resolve_device, set_seed)
from runtime.llm import DEFAULT_MODEL, last_hidden, load_llm
from runtime.reporting import write_outputs
from teacher import Prompt


@dataclass
class ComplexityConfig:
    model: str = field(DEFAULT_MODEL, "embedded name, Hugging Face id or local folder")
    device: str = field("auto", "auto | cpu | cuda", choices=["auto", "cpu", "cuda"])
    min_len: int = field(16, "shortest document length in tokens (then doubling)")
    max_len: int = field(2048, "cap on the document length (also capped by the model's limit)")
    query_len: int = field(32, "query length L_q in tokens")
    n: int = field(16, "candidate documents per query")
    width: int = field(256, "predictor width P")
    timed_pairs: int = field(1, "teacher joint passes actually timed per length (x n / timed_pairs); 0 = all n")
    batch_size: int = field(16, "sequences per forward")
    repeats: int = field(3, "timed repeats per point (after one warm-up)")
    output_dir: str = field("", "where csv, json, png and md go (default results/complexity, runs/complexity-quick)")
    overwrite: bool = field(False, "replace the results in output_dir (the folder is emptied first)")
    seed: int = field(0, "seed")
    quick: bool = field(False, "L_d up to 128, n = 4, 1 repeat")
    quiet: bool = field(False, "no progress bars")

    QUICK = {"max_len": 128, "n": 4, "repeats": 1}  # --quick caps (common.config_from_args)

    def __post_init__(self):
        check_values(self)
        check_sizes(self, ("min_len", "n", "width", "batch_size", "repeats", "query_len"), 1)
        check_sizes(self, ("timed_pairs",), 0)
        self.output_dir = self.output_dir or ("runs/complexity-quick" if self.quick else "results/complexity")
        self.timed = self.n if self.timed_pairs == 0 else min(self.n, self.timed_pairs)  # teacher passes timed
        if self.min_len < 1 or self.max_len < self.min_len or self.n < 1 or self.repeats < 1 or self.timed_pairs < 0:
            raise ValueError("need 1 <= min_len <= max_len, n >= 1, repeats >= 1, timed_pairs >= 0")


# ---------------------------------------------------------------------------- (d) FLOPs
def layer_flops(cfg, tokens: int) -> tuple[float, float]:
    """(linear, attention) FLOPs of one decoder layer over a sequence of `tokens`.
    linear = 2 T (H d_attn + 2 H d_kv + d_attn H + 3 H I)   (q, k, v, o projections and the gated MLP)
    attention = 4 T^2 d_attn                                 (Q K^T and A V, the full T x T matrix)"""
    h, inter = cfg.hidden_size, cfg.intermediate_size
    head_dim = getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads
    d_attn = cfg.num_attention_heads * head_dim
    d_kv = getattr(cfg, "num_key_value_heads", cfg.num_attention_heads) * head_dim
    linear = 2 * tokens * (h * d_attn + 2 * h * d_kv + d_attn * h + 3 * h * inter)
    attention = 4 * tokens ** 2 * d_attn
    return float(linear), float(attention)


def pass_flops(cfg, tokens: int) -> tuple[float, float]:
    lin, att = layer_flops(cfg, tokens)
    return cfg.num_hidden_layers * lin, cfg.num_hidden_layers * att


def crossover_length(cfg) -> float:
    """Sequence length at which the attention FLOPs of a pass equal its linear FLOPs."""
    lin1, _ = layer_flops(cfg, 1)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return lin1 / (4 * cfg.num_attention_heads * head_dim)


def theory(cfg, l_d: int, l_q: int, template: int, n: int, width: int) -> dict[str, tuple[float, float]]:
    """(linear, attention) FLOPs per query for (a), (b) and per document for (c)."""
    t_lin, t_att = pass_flops(cfg, l_d + l_q + template)
    q_lin, q_att = pass_flops(cfg, l_q + template)
    d_lin, d_att = pass_flops(cfg, l_d + template)
    h = cfg.hidden_size
    predictor = 2 * h * width + n * (3 * width)  # A h_q once, then add + act + dot with v per document
    return {"teacher": (n * t_lin, n * t_att), "student_online": (q_lin + predictor, q_att),
            "student_offline": (d_lin, d_att)}


# ---------------------------------------------------------------------------- measurement
def real_tokens(tok, count: int) -> list[int]:
    """`count` token ids of real text (VirtualHome programs, repeated if needed)."""
    data = load_virtualhome()
    text = " ".join(f"{q}" for q in list(data.queries["train"].values())[::7])
    ids = tok(text, add_special_tokens=False).input_ids
    while len(ids) < count:
        ids = ids + ids
    return ids[:count]


def median_time(fn, repeats: int, scale: float = 1.0) -> tuple[float, float, float]:
    """(median, min, max) seconds of `repeats` calls after one warm-up call, each multiplied by `scale`."""
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return scale * float(np.median(ts)), scale * min(ts), scale * max(ts)


def measure(lm, tok, cfg: ComplexityConfig) -> list[dict]:
    prompt = Prompt(tok, max_doc_tokens=10 ** 9)
    limit = getattr(lm.config, "max_position_embeddings", 10 ** 9) - cfg.query_len - 64
    lengths = []
    L = cfg.min_len
    while L <= min(cfg.max_len, limit):
        lengths.append(L)
        L *= 2
    pool = real_tokens(tok, cfg.max_len + cfg.query_len + cfg.n)
    query = pool[:cfg.query_len]
    dev = next(lm.parameters()).device
    h = lm.config.hidden_size
    pred = Predictor(h, cfg.width).to(dev)
    with torch.no_grad():
        pred.W2.weight.normal_(0, 0.01)
    u = torch.randn(h, device=dev)
    template = len(prompt.pre) + len(prompt.mid) + len(prompt.post)
    pad = tok.pad_token_id or 0
    rows = []
    for L in progress(lengths, desc="lengths", quiet=cfg.quiet):
        docs = [pool[cfg.query_len + i: cfg.query_len + i + L] for i in range(cfg.n)]
        joint = [prompt.pre + d + prompt.mid + query + prompt.post for d in docs[:cfg.timed]]
        q_only = [prompt.pre_q + query + prompt.post_q]
        d_prefix = [prompt.pre + docs[0]]
        side = pred.doc_side(torch.randn(cfg.n, h, device=dev)).detach()

        def teacher():
            last_hidden(lm, joint, cfg.batch_size, pad, quiet=True)

        def online():
            hq = last_hidden(lm, q_only, 1, pad, quiet=True).to(dev)
            with torch.no_grad():
                pred.scores(hq, side, u)

        def offline():
            last_hidden(lm, d_prefix, 1, pad, quiet=True)

        th = theory(lm.config, L, cfg.query_len, template, cfg.n, cfg.width)
        # the online cost is small and noisy: time it 3x as often
        for series, fn, reps, scale in (("teacher", teacher, cfg.repeats, cfg.n / cfg.timed),
                                        ("student_online", online, 3 * cfg.repeats, 1.0),
                                        ("student_offline", offline, cfg.repeats, 1.0)):
            med, lo, hi = median_time(fn, reps, scale)
            lin, att = th[series]
            rows.append({"L_d": L, "series": series, "median_s": med, "min_s": lo, "max_s": hi,
                         "flops_linear": lin, "flops_attention": att, "flops_total": lin + att})
    return rows


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y on log x."""
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def local_slopes(rows: list[dict], key: str) -> dict[int, float]:
    """Teacher log-log slope between each length and the one before it, keyed by the longer length."""
    t = {r["L_d"]: r[key] for r in rows if r["series"] == "teacher"}
    lengths = sorted(t)
    return {b: slope([a, b], [t[a], t[b]]) for a, b in zip(lengths, lengths[1:])}


def summarize(rows: list[dict], lm_config) -> dict:
    lengths = sorted({r["L_d"] for r in rows})
    upper = lengths[len(lengths) // 2:] if len(lengths) > 2 else lengths
    get = lambda s, key: [next(r[key] for r in rows if r["series"] == s and r["L_d"] == L) for L in upper]  # noqa: E731
    series = ("teacher", "student_online", "student_offline")
    med = {s: {r["L_d"]: r["median_s"] for r in rows if r["series"] == s} for s in series}
    return {"slopes": {s: slope(upper, get(s, "median_s")) for s in series},
            "flop_slopes": {s: slope(upper, get(s, "flops_total")) for s in series},
            "fit_lengths": upper,
            "speedup": {L: med["teacher"][L] / med["student_online"][L] for L in lengths},
            "teacher_local_slopes": local_slopes(rows, "median_s"),
            "teacher_local_flop_slopes": local_slopes(rows, "flops_total"),
            "attention_overtakes_linear_at_tokens": crossover_length(lm_config)}


def run(cfg: ComplexityConfig) -> dict:
    set_seed(cfg.seed)
    resolve_device(cfg.device)
    out = prepare_output(cfg.output_dir, cfg, overwrite=cfg.overwrite, script="complexity")
    lm, tok = load_llm(cfg.model, cfg.device)
    device = str(next(lm.parameters()).device)
    print(f"[complexity] device {device}, torch threads {torch.get_num_threads()}")
    rows = measure(lm, tok, cfg)
    summary = summarize(rows, lm.config)
    print(write_outputs(out, rows, summary, cfg, device))  # csv, json, md table and plot (reporting.py)
    return summary


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(p, ComplexityConfig)
    return p


def main(argv=None) -> dict:
    return run(config_from_args(ComplexityConfig, parser().parse_args(argv), argv))


if __name__ == "__main__":
    cli(main, again="rerun the command (pass --overwrite if its output folder holds a partial run)")
