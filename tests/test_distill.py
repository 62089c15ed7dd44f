"""distill.py end to end on a tiny random model and a VirtualHome-layout fixture task."""
import contextlib
import csv
import json

import pytest
import torch

import distill
import policy
import teacher
from conftest import make_lm, make_tokenizer, patch_llm, write_virtualhome


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("RABTRIEVER_CACHE", str(tmp_path / "cache"))
    tok = make_tokenizer()
    patch_llm(monkeypatch, lambda *a, **k: (make_lm(tok), tok))
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
        assert set(a["systems"][name]["candidates"]) >= {"R@1", "R@3", "R@10", "MRR@10", "nDCG@10", "R@1_ci",
                                                         "MRR@10_ci", "agree@1", "agree@1_ci", "kendall_tau",
                                                         "kendall_tau_ci"}
        assert "ms_per_query" in a["systems"][name]
    for name in ("prior", "bm25", "llm-biencoder", "student", "teacher@8"):  # the whole pool, the paper's protocol
        pool = a["systems"][name]["full_pool"]
        assert {"R@1", "R@1_ci", "MRR@10", "MRR@10_ci", "nDCG@10", "nDCG@10_ci"} <= set(pool)
        assert set(pool["hubness"]) == {"distinct_top1", "max_top1_share", "n10_skew"}
    assert "full_pool" not in a["systems"]["teacher"] and "candidates" not in a["systems"]["teacher@8"]
    saved = json.loads((tmp / "a" / "results.json").read_text())
    assert {"bench", "split", "n_queries", "protocol", "pool_size", "systems", "splits"} <= set(saved)
    assert saved["split"] == "test" and saved["splits"]["test"]["queries"] >= saved["n_queries"] > 0
    assert set(saved["splits"]) == {"train", "dev", "test"} and "program groups" in saved["splits"]["dev"]["from"]
    md = (tmp / "a" / "results.md").read_text()
    assert md.index("Whole pool") < md.index("Candidates C(q)")  # the paper's protocol leads
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


@contextlib.contextmanager
def killed_in_round_1(monkeypatch):
    """Inside the `with`, distill.py's Step 5 is killed when round 1 starts (a KeyboardInterrupt)."""
    orig = distill.step5_train_predictor

    def dies(student, pairs, h_q, h_d, cache, cfg, r, log, pool):
        if r == 1:
            raise KeyboardInterrupt("killed")
        return orig(student, pairs, h_q, h_d, cache, cfg, r, log, pool)
    monkeypatch.setattr(distill, "step5_train_predictor", dies)
    try:
        yield
    finally:
        monkeypatch.setattr(distill, "step5_train_predictor", orig)


def test_resume_equals_uninterrupted(env, monkeypatch):
    """A run killed in round 1 and resumed ends with the same metrics as an uninterrupted run."""
    tmp, root = env
    full = distill.main(_args(tmp, root, "full"))
    with killed_in_round_1(monkeypatch), pytest.raises(KeyboardInterrupt):
        distill.main(_args(tmp, root, "cut"))
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
    assert once["systems"]["student"]["full_pool"] == per_batch["systems"]["student"]["full_pool"]


def test_nan_loss_stops_with_parts(env, monkeypatch):
    """A non-finite loss stops the run and names the round, step and loss parts."""
    tmp, root = env
    monkeypatch.setattr(distill, "total_loss", lambda *a, **k: (a[0].sum() * float("nan"),
                                                               {"jepa": float("nan"), "kl": 0.0, "list": 0.0,
                                                                "pool": 0.0, "total": float("nan")}))
    with pytest.raises(FloatingPointError, match=r"round 0 epoch 0 step 0: loss is nan \(jepa nan, kl 0.0, pool "):
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

    from runtime.common import add_dataclass_args, config_from_args
    p = argparse.ArgumentParser()
    add_dataclass_args(p, distill.DistillConfig)
    cfg = config_from_args(distill.DistillConfig, p.parse_args(["--no-jepa", "--no-eval-teacher", "--lmbda", "2"]))
    assert cfg.no_jepa and not cfg.no_rkl and not cfg.eval_teacher and cfg.lmbda == 2.0
    assert cfg.weights.lmbda == 2.0 and cfg.weights.jepa == 0
    cfg = config_from_args(distill.DistillConfig, p.parse_args(["--no-rkl"]))
    assert cfg.no_rkl and cfg.weights.lmbda == 0.0 and cfg.eval_teacher
    # the student's recipe per kind of set (RECIPES, chosen on dev), each flag the user sets kept
    recipe = lambda c: (c.reading, c.init, c.lr)  # noqa: E731
    parsed = lambda *argv: config_from_args(distill.DistillConfig, p.parse_args(list(argv)))  # noqa: E731
    assert recipe(parsed()) == ("mean", "similarity", 1e-5)
    assert recipe(parsed("--bench", "esconv")) == ("last", "zero", 1e-3)
    assert recipe(distill.DistillConfig(bench="psyqa")) == ("last", "zero", 1e-3)
    assert recipe(parsed("--bench", "esconv", "--reading", "mean", "--lr", "3e-4")) == ("mean", "zero", 3e-4)


def test_sample_top_takes_the_best_unscored():
    """Step 3 with --sampling top: each query's k best-ranked documents that are neither gold nor already sent to
    the teacher; fewer when fewer are left."""
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.3], [5.0, 4.0, 3.0, 2.0, 1.0]])
    assert policy.top_k_unscored(scores, [{1}, {0, 1, 2, 3}], 2) == [[3, 2], [4]]
    assert policy.top_k_unscored(scores, [{0, 1, 2, 3, 4}, set()], 1) == [[], [0]]


def test_round0_not_uniform_and_no_pair_twice(env, monkeypatch):
    """Round 0 picks BM25's top documents (--round0 bm25), not uniform draws; over the rounds no (query, document)
    pair is sent to the teacher twice; every query keeps its gold pairs."""
    from runtime import metrics
    tmp, root = env
    picked = []
    orig = distill.pick_top

    def spy(cfg, r, student, h_q, h_d, bm25, texts, exclude):
        out = orig(cfg, r, student, h_q, h_d, bm25, texts, exclude)
        picked.append(([set(x) for x in exclude], out))
        return out
    monkeypatch.setattr(distill, "pick_top", spy)
    res = distill.main(_args(tmp, root, "r0"))
    from data import load_virtualhome
    data = load_virtualhome(root)
    train_q, train_rel = data.split("train")
    bm25 = metrics.BM25({d: data.doc_text(d) for d in data.corpus})
    doc_ids = list(data.corpus)
    for i, q in enumerate(train_q):  # round 0 takes BM25's best documents that are not gold
        gold = {doc_ids.index(d) for d in train_rel[q]}
        s = torch.from_numpy(bm25.scores(train_q[q]))
        s[list(gold)] = -float("inf")
        assert picked[0][1][i] == s.topk(3).indices.tolist()
    state = json.loads((tmp / "r0" / "state.safetensors.json").read_text())
    keys = [tuple(p[2]) for p in state["pairs"]]
    assert len(keys) == len(set(keys)) == res["teacher_calls"]
    for i, q in enumerate(train_q):
        gold = {doc_ids.index(d) for d in train_rel[q]}
        assert picked[0][0][i] == gold  # round 0 excludes the gold only
        assert picked[1][0][i] == gold | set(picked[0][1][i])  # round 1 also what round 0 sent to the teacher
        assert not set(picked[1][1][i]) & picked[1][0][i] and len(picked[1][1][i]) == 3
        assert all((q, doc_ids[d]) in keys for d in gold | set(picked[0][1][i]) | set(picked[1][1][i]))


def test_pool_batches_and_term(env):
    """PoolBatches: each step's queries, each with one of its gold documents among the negatives' columns and its
    other gold ones excluded; the whole pool when --nce-negatives >= the pool; a run with --nce logs the term and
    --nce 0 logs none."""
    h = torch.arange(12.0).reshape(6, 2)
    gold = [{0}, {1, 2}, {3}, {4}, {5}, {0, 5}]
    b = distill.PoolBatches(h, gold, 10, 4, 3, torch.Generator().manual_seed(0))
    seen = []
    for _ in range(3):
        hq, docs, target, exclude = b.next()
        idx = [int(r[0]) // 2 for r in hq]
        seen += idx
        assert hq.shape == (4, 2) and exclude.shape == (4, len(docs)) and len(docs) <= 4 + 3
        for row, i in enumerate(idx):
            assert int(docs[target[row]]) in gold[i] and exclude[row, target[row]]
            assert {int(docs[j]) for j in range(len(docs)) if exclude[row, j]} == gold[i] & set(docs.tolist())
    assert sorted(seen[:6]) == list(range(6))  # every query once per cycle
    whole = distill.PoolBatches(h, gold, 10, 2, 50, torch.Generator().manual_seed(0))
    assert whole.next()[1].tolist() == list(range(10))
    tmp, root = env
    distill.main(_args(tmp, root, "nce"))
    distill.main(_args(tmp, root, "no-nce", "--nce", "0"))
    rows = {run: list(csv.DictReader((tmp / run / "metrics.csv").open())) for run in ("nce", "no-nce")}
    assert all(float(r["pool"]) > 0 for r in rows["nce"]) and all(float(r["pool"]) == 0 for r in rows["no-nce"])


def test_psyqa_distill_and_evaluate(env):
    """`distill.py --bench psyqa` and `evaluate.py --bench psyqa` run end to end on a file in the official format:
    7 strategies, the whole pool being C(q)."""
    import evaluate
    from conftest import write_psyqa
    tmp, _ = env
    root = write_psyqa(tmp / "psyqa", 20)
    args = _args(tmp, root, "pq", "--bench", "psyqa", "--rerank-k", "8")
    args[args.index("--teacher") + 1] = str(tmp / "teacher-psyqa")
    res = distill.main(args)
    assert res["pool_size"] == 7 and res["protocol"] == "C(q) = all 7 documents"
    ev = evaluate.main(["--bench", "psyqa", "--data-dir", str(root), "--student", str(tmp / "pq"), "--systems",
                        "prior,bm25,student", "--output-dir", str(tmp / "pq-eval"), "--quiet"])
    assert ev["systems"]["student"]["full_pool"]["R@1"] == res["systems"]["student"]["full_pool"]["R@1"]


def test_mean_reading_and_similarity_start(env, monkeypatch):
    """--reading mean (6m) --init similarity (7c): the run saves its reading with the predictor, caches the corpus
    apart from the last-token reading's, and `evaluate.py --student` (which reads the reading from the checkpoint)
    ranks the test queries as distill.py's Step 6 did; a run killed in round 1 and resumed (the start is not applied
    again) ends as the uninterrupted one; the start needs ReLU and an even width."""
    import evaluate
    tmp, root = env
    res = distill.main(_args(tmp, root, "mean", "--reading", "mean", "--init", "similarity"))
    meta = json.loads((tmp / "mean" / "predictor.safetensors.json").read_text())
    assert meta["reading"] == "mean" and meta["config"]["init"] == "similarity"
    assert [p.name for p in (tmp / "cache" / "docemb").iterdir() if p.name.endswith("-mean-f16")]
    ev = evaluate.main(["--data-dir", str(root), "--student", str(tmp / "mean"), "--systems", "student",
                        "--output-dir", str(tmp / "mean-eval"), "--quiet", "--max-queries", "0"])
    for m in ("R@1", "MRR@10", "nDCG@10"):
        assert ev["systems"]["student"]["full_pool"][m] == res["systems"]["student"]["full_pool"][m]
    with killed_in_round_1(monkeypatch), pytest.raises(KeyboardInterrupt):
        distill.main(_args(tmp, root, "cut", "--reading", "mean", "--init", "similarity"))
    resumed = distill.main(_args(tmp, root, "cut", "--reading", "mean", "--init", "similarity", "--resume"))
    assert resumed["systems"]["student"]["full_pool"] == res["systems"]["student"]["full_pool"]
    for bad in (["--act", "gelu"], ["--width", "15"]):
        with pytest.raises(ValueError, match="--init similarity needs --act relu and an even --width"):
            distill.main(_args(tmp, root, "bad", "--init", "similarity", *bad))


def test_hub_correction_row(env):
    """--hub-correction center adds the corrected student (12) as a row over the whole pool and on C(q)."""
    tmp, root = env
    res = distill.main(_args(tmp, root, "hub", "--hub-correction", "center"))
    row = res["systems"]["student+center"]
    assert "hubness" in row["full_pool"] and "agree@1" in row["candidates"]


def test_quick_runs_execute_every_function_method_names(env):
    """A --quick listwise teacher and three --quick runs from it (with the listwise term and the hub correction;
    --sampling softmax with the forward KL; --policy off), traced: every function and class METHOD.md names for an equation or a Step was executed, so the
    functions a reader follows from the paper are the ones the pipeline runs."""
    import sys
    from pathlib import Path

    from test_docs import named_functions, resolve, split_name
    tmp, root = env
    called: set[tuple[str, str]] = set()

    def profile(frame, event, arg):
        if event == "call":
            called.add((Path(frame.f_code.co_filename).stem, frame.f_code.co_qualname))
    base = ["--quick", "--data-dir", str(root), "--teacher", str(tmp / "teacher"), "--width", "16", "--quiet"]
    sys.setprofile(profile)
    try:  # the teacher (the listwise loss (4b) is on by default), then three students of it
        teacher.main(["train", "--quick", "--data-dir", str(root), "--output-dir", str(tmp / "teacher"), "--quiet"])
        distill.main(base + ["--output-dir", str(tmp / "a"), "--listwise", "0.5", "--hub-correction", "center"])
        distill.main(base + ["--output-dir", str(tmp / "b"), "--sampling", "softmax", "--kl", "forward",
                             "--no-eval-teacher"])
        distill.main(base + ["--output-dir", str(tmp / "c"), "--policy", "off", "--no-eval-teacher",
                             "--no-standardize"])
    finally:
        sys.setprofile(None)
    import dataclasses
    reference_only = {"jepa.naive_scores"}  # the plain computation the factorised scorer is tested against
    missing = []
    for name in sorted(named_functions() - reference_only):
        module, qual = split_name(name)
        obj = resolve(name)
        defined = getattr(obj, "__module__", None) or module  # a re-export (data.task_title) runs in its own file
        module = defined.split(".")[-1]  # the traced file's stem
        if dataclasses.is_dataclass(obj):  # generated __init__: its instances are made by a function that ran
            assert ("distill", "DistillConfig.weights") in called or obj.__name__ != "Weights"
            continue
        if not any(m == module and (q == qual or q == qual + ".__init__") for m, q in called):
            missing.append(name)
    assert not missing, f"named in METHOD.md but never run by distill.py: {missing}"


class Sealed(dict):
    """A split's queries or qrels that fail when read (its size may be counted) while `Sealed.open` is False."""
    open = False

    def _check(self):
        if not Sealed.open:
            raise AssertionError("the test split was read before Step 6")

    def __getitem__(self, k):
        self._check()
        return super().__getitem__(k)

    def __iter__(self):
        self._check()
        return super().__iter__()

    def __contains__(self, k):
        self._check()
        return super().__contains__(k)

    def get(self, *a):
        self._check()
        return super().get(*a)

    def keys(self):
        self._check()
        return super().keys()

    def values(self):
        self._check()
        return super().values()

    def items(self):
        self._check()
        return super().items()


def test_no_choice_reads_the_test_split(env, monkeypatch):
    """Training the teacher (its dev metric before and after), Steps 0-5 and a dev evaluation never read a test
    query or judgement; a reported run reads them in Step 6 only (and in the check that the split has a judged
    query, before any compute); unsealed outside Step 6, the run fails, so the seal is effective."""
    import data
    from runtime import files, runs
    tmp, root = env
    load = data.load_bench

    def sealed_load(*a, **k):
        d = load(*a, **k)
        d.queries["test"], d.qrels["test"] = Sealed(d.queries["test"]), Sealed(d.qrels["test"])
        return d

    def opening(f):
        def call(*a, **k):
            Sealed.open = True
            try:
                return f(*a, **k)
            finally:
                Sealed.open = False
        return call
    for module in (distill, teacher):  # every script that loads a bench, where it looks the loader up
        monkeypatch.setattr(module, "load_bench", sealed_load)
    monkeypatch.setattr(runs, "check_split", opening(files.check_split))  # the guard before any compute: a judged query
    Sealed.open = False
    res = distill.main(_args(tmp, root, "dev", "--eval-split", "dev"))  # trains the teacher (Step 0) as well
    assert res["split"] == "dev" and json.loads((tmp / "teacher" / "teacher_metrics.json").read_text())[
        "dev_after"]["split"] == "dev"
    step6 = distill.step6_evaluate
    monkeypatch.setattr(distill, "step6_evaluate", opening(step6))
    assert distill.main(_args(tmp, root, "test"))["split"] == "test"
    with pytest.raises(AssertionError, match="before Step 6"):
        monkeypatch.setattr(distill, "step6_evaluate", step6)
        distill.main(_args(tmp, root, "test2"))


def test_beir_set_distilled_from_its_own_train_qrels(env, monkeypatch):
    """`distill.py --bench beir --data-dir SET` trains on SET's train qrels under SET's own name: its teacher and
    student land in runs/teacher-SET and runs/distill-SET, where `evaluate.py --bench beir --data-dir SET` finds
    the student; a second BEIR set never reuses them. Without one set's folder the run stops before any work."""
    import data
    import evaluate
    tmp, root = env
    monkeypatch.chdir(tmp)
    folder = tmp / "myset"  # VirtualHome's splits, in the BEIR layout (`data.py export`), read back as they were
    data.main(["export", "--bench", "virtualhome", "--data-dir", str(root), "--out", str(folder)])
    assert data.load_beir(folder).qrels == data.load_virtualhome(str(root)).qrels
    args = [a for a in _args(tmp, folder, "x") if a not in ("--teacher", str(tmp / "teacher"), "--output-dir",
                                                              str(tmp / "x"))]
    res = distill.main(["--bench", "beir", *args])
    assert (tmp / "runs" / "teacher-myset" / "teacher.safetensors").exists()
    assert (tmp / "runs" / "distill-myset" / "predictor.safetensors").exists() and res["bench"] == "myset"
    ev = evaluate.main(["--bench", "beir", "--data-dir", str(folder), "--systems", "bm25,student", "--quiet",
                        "--max-queries", "0"])
    for m in ("R@1", "MRR@10"):  # the same student, found by its set's name, ranks the same test queries alike
        assert ev["systems"]["student"]["full_pool"][m] == res["systems"]["student"]["full_pool"][m]
    for bad in ([], ["--data-dir", str(tmp)]):
        with pytest.raises(ValueError, match="--bench beir --data-dir .*corpus.jsonl"):
            distill.DistillConfig(bench="beir", **dict(zip(("data_dir",), bad[1:])))
