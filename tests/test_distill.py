"""distill.py end to end on a tiny random model and a VirtualHome-layout fixture task."""
import csv
import json

import pytest
import torch

import distill
import teacher as T
from conftest import make_lm, make_tokenizer, write_virtualhome


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("RABTRIEVER_CACHE", str(tmp_path / "cache"))
    tok = make_tokenizer()
    monkeypatch.setattr(T, "load_llm", lambda *a, **k: (make_lm(tok), tok))
    root = write_virtualhome(tmp_path, n_programs=10)
    return tmp_path, root


def _args(tmp, root, out, *extra):
    return ["--data-dir", str(root), "--teacher", str(tmp / "teacher"), "--output-dir", str(tmp / out),
            "--rounds", "2", "--k", "3", "--epochs", "15", "--width", "16", "--lr", "3e-3", "--batch-size", "8",
            "--max-train-queries", "0", "--max-test-queries", "0", "--rerank-k", "4", "--quiet", *extra]


def test_end_to_end_schema_loss_and_determinism(env):
    """Loss goes down; results.json has the schema; two runs with one seed give identical numbers."""
    tmp, root = env
    a = distill.main(_args(tmp, root, "a"))
    for name in ("prior", "bm25", "llm-biencoder", "teacher", "student"):
        assert set(a["systems"][name]) >= {"R@1", "R@3", "R@10", "MRR@10", "nDCG@10", "ms_per_query", "R@1_ci",
                                           "MRR@10_ci", "agree@1", "agree@1_ci", "kendall_tau", "kendall_tau_ci"}
    assert {"bench", "split", "n_queries", "protocol", "systems"} <= set(
        json.loads((tmp / "a" / "results.json").read_text()))
    rows = list(csv.DictReader(open(tmp / "a" / "metrics.csv")))
    r0 = [float(r["total"]) for r in rows if r["round"] == "0"]
    assert r0[-1] < r0[0]
    assert (tmp / "a" / "predictor.safetensors").exists() and (tmp / "a" / "results.md").exists()
    assert json.loads((tmp / "a" / "predictor.safetensors.json").read_text())["teacher_checkpoint"].endswith(
        "teacher.safetensors")
    b = distill.main(_args(tmp, root, "b"))
    assert a["systems"] == {**b["systems"], **{k: {**b["systems"][k], "ms_per_query": a["systems"][k]["ms_per_query"],
                                                   "corpus_encode_s": a["systems"][k]["corpus_encode_s"]}
                                                for k in b["systems"]}}


def test_resume_equals_uninterrupted(env, monkeypatch):
    """A run killed in round 1 and resumed ends with the same metrics as an uninterrupted run."""
    tmp, root = env
    full = distill.main(_args(tmp, root, "full"))
    orig = distill.train_predictor

    def dies(student, pairs, h_q, h_d, cache, cfg, r, log):
        if r == 1:
            raise KeyboardInterrupt("killed")
        return orig(student, pairs, h_q, h_d, cache, cfg, r, log)
    monkeypatch.setattr(distill, "train_predictor", dies)
    with pytest.raises(KeyboardInterrupt):
        distill.main(_args(tmp, root, "cut"))
    monkeypatch.setattr(distill, "train_predictor", orig)
    with pytest.raises(FileExistsError, match="--resume"):
        distill.main(_args(tmp, root, "cut"))
    resumed = distill.main(_args(tmp, root, "cut", "--resume"))
    strip = lambda r: {k: {m: v for m, v in s.items() if m not in ("ms_per_query", "corpus_encode_s")}  # noqa: E731
                       for k, s in r["systems"].items()}
    assert strip(resumed) == strip(full)


def test_teacher_logits_once_per_round_equal_per_batch(env, monkeypatch):
    """z_T computed once per round for all pairs gives the same run as z_T computed batch by batch."""
    tmp, root = env
    once = distill.main(_args(tmp, root, "once"))
    monkeypatch.setattr(distill, "Z_T_BYTES", 0)
    per_batch = distill.main(_args(tmp, root, "per_batch"))
    assert (tmp / "once" / "metrics.csv").read_text() == (tmp / "per_batch" / "metrics.csv").read_text()
    assert {k: s["R@1"] for k, s in once["systems"].items()} == {k: s["R@1"] for k, s in per_batch["systems"].items()}


def test_nan_loss_stops_with_parts(env, monkeypatch):
    """A non-finite loss stops the run and names the round, step and loss parts."""
    tmp, root = env
    monkeypatch.setattr(distill, "total_loss", lambda *a, **k: (a[0].sum() * float("nan"),
                                                               {"jepa": float("nan"), "kl": 0.0, "list": 0.0,
                                                                "total": float("nan")}))
    with pytest.raises(FloatingPointError, match=r"round 0 epoch 0 step 0: loss is nan \(jepa nan, kl 0.0\)"):
        distill.main(_args(tmp, root, "nan"))


def test_policy_off_and_ablations_run(env):
    """--policy off uses the same number of teacher calls per round; --no-jepa and --no-rkl run."""
    tmp, root = env
    on = distill.main(_args(tmp, root, "on"))
    off = distill.main(_args(tmp, root, "off", "--policy", "off"))
    assert off["teacher_calls"] == on["teacher_calls"]
    assert all(float(r["list"]) == 0 for r in csv.DictReader((tmp / "on" / "metrics.csv").open()))  # (10b) off
    distill.main(_args(tmp, root, "nj", "--no-jepa"))
    distill.main(_args(tmp, root, "nr", "--no-rkl"))


def test_listwise_option(env):
    """--listwise (10b, ours): batches hold whole queries, every pair once per epoch; the run logs a non-zero listwise
    part; off by default (the "list" column stays 0)."""
    g = torch.Generator().manual_seed(0)
    qi = torch.tensor([3, 1, 3, 0, 1, 1, 2, 0, 3])
    bs = distill.batches(qi, 4, g, by_query=True)
    assert sorted(torch.cat(bs).tolist()) == list(range(len(qi)))
    for b in bs:  # a query's pairs are never split over batches
        for q in set(qi[b].tolist()):
            assert (qi[b] == q).sum() == (qi == q).sum()
    assert all(len(b) >= 4 for b in bs[:-1])
    flat = distill.batches(qi, 4, torch.Generator().manual_seed(0), by_query=False)
    assert torch.equal(torch.cat(flat), torch.randperm(len(qi), generator=torch.Generator().manual_seed(0)))
    tmp, root = env
    distill.main(_args(tmp, root, "lw", "--listwise", "1"))
    rows = list(csv.DictReader((tmp / "lw" / "metrics.csv").open()))
    assert any(float(r["list"]) > 0 for r in rows)


def test_flags_parse():
    """Boolean flags mean what they say: --no-jepa sets no_jepa, --no-eval-teacher clears eval_teacher."""
    import argparse

    from common import add_dataclass_args, config_from_args
    p = argparse.ArgumentParser()
    add_dataclass_args(p, distill.DistillConfig)
    cfg = config_from_args(distill.DistillConfig, p.parse_args(["--no-jepa", "--no-eval-teacher", "--lmbda", "2"]))
    assert cfg.no_jepa and not cfg.no_rkl and not cfg.eval_teacher and cfg.lmbda == 2.0 and cfg.lmbda_eff == 2.0
    cfg = config_from_args(distill.DistillConfig, p.parse_args(["--no-rkl"]))
    assert cfg.no_rkl and cfg.lmbda_eff == 0.0 and cfg.eval_teacher
