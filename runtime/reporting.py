"""Reports: the tables and files a run leaves for a person to read (results.json, results.md, TREC runs, metrics.csv,
the BEIR summary, the complexity table and plot). The numbers are computed elsewhere (metrics.py, evaluate.py,
complexity.py); here they are only laid out and written atomically.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch

from runtime.common import atomic_write, write_json
from runtime.metrics import (N_BOOT, drop_identical, fidelity, hubness, judged, per_query, pool_fidelity, summarize,
                             write_trec)


POOL_HEAD = ("R@1", "MRR@10", "nDCG@10", "R@10")
CAND_HEAD = ("R@1", "MRR@10", "nDCG@10", "agree@1", "kendall_tau")
BASELINES = ("prior", "lookup", "bm25")  # the systems every other whole-pool row is compared with, query by query
PAIRED_HEAD = ("R@1", "MRR@10")


def _cell(s: dict, m: str, to: str = "-") -> str:
    return f"{s[m]:.3f} ({s[m + '_ci'][0]:.3f}{to}{s[m + '_ci'][1]:.3f})" if m in s else "-"


def report(out_dir: str | Path, bench: str, split: str, qrels: dict, results: dict,
           protocol: str, header: str = "", ignore_identical: bool = False, extra: dict | None = None,
           seed: int = 0, *, pool_size: int) -> dict:
    """Two tables, each metric with a 95% bootstrap CI over queries. First the paper's protocol: every retriever
    over the whole pool of `pool_size` documents, and teacher@k, with the hubness of each ranking
    (`metrics.hubness`), under each system's "full_pool"; when the teacher ranked the whole pool itself
    (teacher@pool), each system's fidelity to that ranking there too (`metrics.pool_fidelity`). Then fidelity on
    C(q): every system on the candidates the teacher scored, against the gold and, when the teacher was run,
    against the teacher's scores (agree@1, kendall_tau). Between them, each other whole-pool system minus each
    baseline of BASELINES, query by query: the mean difference with a paired bootstrap CI (the same resampled
    queries for both; an interval above 0 is a difference the queries support even where the two CIs overlap).
    Writes results.json, results.md and TREC run files (run.NAME.full.trec over the pool, run.NAME.trec
    on C(q)); returns the dict."""
    out = Path(out_dir)
    prep = drop_identical if ignore_identical else (lambda r: r)
    qids = judged(qrels)
    extra = dict(extra or {})
    if ignore_identical:  # BEIR's convention drops a document whose id is the query's: say what it costs
        lost = sorted(q for q in qids if qrels[q].get(q, 0) > 0)
        extra["ignore_identical"] = {"queries_whose_gold_is_dropped": len(lost), "examples": lost[:5]}
        if lost:
            print(f"[evaluate] --ignore-identical (BEIR's convention): {len(lost)} of {len(qids)} queries have a "
                  f"relevant document with their own id, never counted (e.g. {', '.join(lost[:3])}); "
                  "--no-ignore-identical counts it")
    teacher_run = prep(results["teacher"].cand_run) if "teacher" in results else None
    teacher_pool = prep(results["teacher@pool"].full_run) if "teacher@pool" in results else None
    systems, pool_per = {}, {}
    for name, r in results.items():
        s: dict = {"ms_per_query": r.ms_per_query, "corpus_encode_s": r.encode_seconds, "note": r.note}
        if r.full_run is not None:
            full = prep(r.full_run)
            per = pool_per[name] = per_query(full, qrels)
            if teacher_pool is not None and name != "teacher@pool":  # fidelity to the teacher's own whole-pool ranking
                per = per | pool_fidelity(full, teacher_pool, qids)
            s["full_pool"] = summarize(per, seed) | {"hubness": hubness({q: full.get(q, {}) for q in qids}, pool_size)}
            write_trec(out / f"run.{name}.full.trec", full, name)
        if r.cand_run is not None:
            run = prep(r.cand_run)
            per = per_query(run, qrels)
            if teacher_run is not None:
                per |= fidelity(run, teacher_run, qids)
            s["candidates"] = summarize(per, seed)
            write_trec(out / f"run.{name}.trec", run, name)
        systems[name] = s
    for name, per in pool_per.items():  # paired differences to each baseline (bootstrap_ci of a - b is paired)
        if name not in BASELINES:
            systems[name]["full_pool"]["minus"] = {
                b: summarize({h: list(np.subtract(per[h], pool_per[b][h])) for h in PAIRED_HEAD}, seed)
                for b in BASELINES if b in pool_per}
    res = {"bench": bench, "split": split, "n_queries": len(qids), "pool_size": pool_size, "protocol": protocol,
           "header": header, "ci": f"95% percentile bootstrap over queries, {N_BOOT} resamples, seed {seed}",
           "systems": systems, **extra}
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
    paired = [(n, b, d) for n, s in systems.items() for b, d in s.get("full_pool", {}).get("minus", {}).items()]
    if paired:
        md += ["", "Whole pool, query by query: each system minus a baseline, mean difference (95% paired bootstrap "
               "CI: the same resampled queries for both).", "",
               "| system | minus | " + " | ".join(f"Δ {h}" for h in PAIRED_HEAD) + " |",
               "|---" * (len(PAIRED_HEAD) + 2) + "|"]
        md += [f"| {n} | {b} | " + " | ".join(_cell(d, h, " to ") for h in PAIRED_HEAD) + " |" for n, b, d in paired]
    md += ["", f"Candidates C(q), fidelity to the teacher: {protocol}. agree@1 / kendall_tau against the teacher's "
           "scores on C(q).", "", "| system | " + " | ".join(CAND_HEAD) + " |", "|---" * (len(CAND_HEAD) + 1) + "|"]
    md += [f"| {name} | " + " | ".join(_cell(s["candidates"], h) for h in CAND_HEAD) + " |"
           for name, s in systems.items() if "candidates" in s]
    write_json(out / "results.json", res)
    atomic_write(out / "results.md", "\n".join(md) + "\n")
    print("\n".join(md))
    return res


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


def write_log(path: Path, log: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(log[0]))
    w.writeheader()
    w.writerows(log)
    atomic_write(path, buf.getvalue())


def write_outputs(out: Path, rows: list[dict], summary: dict, cfg, device: str) -> str:
    keys = list(rows[0])
    atomic_write(out / "complexity.csv", ",".join(keys) + "\n" +
                 "".join(",".join(str(r[k]) for k in keys) + "\n" for r in rows))
    write_json(out / "summary.json", summary)
    lengths = sorted({r["L_d"] for r in rows})
    by = {(r["series"], r["L_d"]): r for r in rows}
    md = [f"n = {cfg.n} candidates, L_q = {cfg.query_len}, P = {cfg.width}, {cfg.repeats} repeats (median), "
          f"{device}, {torch.get_num_threads()} threads, model {cfg.model}, teacher timed on "
          f"{cfg.timed} of the n = {cfg.n} joint passes per length", "",
          "| L_d | teacher ms/query | student online ms/query | student offline ms/doc | teacher / student online |"
          " teacher GFLOP (attention share) | teacher local slope: measured (FLOPs) |", "|---|---|---|---|---|---|---|"]
    for i, L in enumerate(lengths):
        t, o, f = by[("teacher", L)], by[("student_online", L)], by[("student_offline", L)]
        local = "" if i == 0 else (f"{summary['teacher_local_slopes'][L]:.2f} "
                                   f"({summary['teacher_local_flop_slopes'][L]:.2f})")
        md.append(f"| {L} | {1000 * t['median_s']:.1f} | {1000 * o['median_s']:.1f} | {1000 * f['median_s']:.1f} | "
                  f"{t['median_s'] / o['median_s']:.1f}x | {t['flops_total'] / 1e9:.1f} "
                  f"({t['flops_attention'] / t['flops_total']:.1%}) | {local} |")
    s = summary["slopes"]
    md += ["", f"log-log slopes over L_d in {summary['fit_lengths']}: teacher {s['teacher']:.2f}, student online "
           f"{s['student_online']:.2f}, student offline {s['student_offline']:.2f} (FLOP model: "
           + ", ".join(f"{k} {v:.2f}" for k, v in summary["flop_slopes"].items())
           + "); attention FLOPs overtake the linear ones at "
           + f"{summary['attention_overtakes_linear_at_tokens']:.0f} tokens."]
    text = "\n".join(md) + "\n"
    atomic_write(out / "complexity.md", text)
    plot(out / "complexity.png", rows, lengths)
    return text


def plot(path: Path, rows: list[dict], lengths: list[int]) -> None:
    try:
        import matplotlib  # optional (requirements-test.txt): without it, no plot
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # optional, as above
    except ImportError:
        print("[complexity] matplotlib not installed: no plot (pip install matplotlib)")
        return
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for s, c in (("teacher", "C3"), ("student_online", "C0"), ("student_offline", "C2")):
        pts = [r for r in rows if r["series"] == s]
        ax[0].errorbar([r["L_d"] for r in pts], [r["median_s"] for r in pts], fmt="o-", color=c, label=s,
                       yerr=[[r["median_s"] - r["min_s"] for r in pts], [r["max_s"] - r["median_s"] for r in pts]])
        ax[1].plot([r["L_d"] for r in pts], [r["flops_total"] for r in pts], "o--", color=c, label=s)
    for a, t in ((ax[0], "measured seconds"), (ax[1], "theoretical FLOPs")):
        a.set_xscale("log", base=2)
        a.set_yscale("log")
        a.set_xlabel("document length L_d (tokens)")
        a.set_title(t)
        a.legend()
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
