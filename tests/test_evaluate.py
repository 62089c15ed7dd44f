"""metrics.py and evaluate.py: metrics against pytrec_eval, BM25 and fidelity by hand, bootstrap CIs, the candidate
protocol, the systems on a tiny bench."""
import json
import math
import random
import shutil

import pytest
import torch

import evaluate as E
import student as S
from runtime import baselines
from runtime import metrics as M
def _random_case(seed):
    rng = random.Random(seed)
    qrels, run = {}, {}
    for q in range(30):
        docs = [f"d{i}" for i in range(rng.randint(3, 40))]
        qrels[f"q{q}"] = {d: rng.choice([0, 1, 1, 2, 3]) for d in rng.sample(docs, rng.randint(1, min(8, len(docs))))}
        if not any(qrels[f"q{q}"].values()):
            qrels[f"q{q}"][docs[0]] = 1
        # scores drawn from a few values: many ties, broken by doc id as trec_eval does
        run[f"q{q}"] = {d: float(rng.choice([0.5, 1.0, 1.5, 2.0, rng.random()])) for d in docs}
    return qrels, run


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_pytrec_eval(seed):
    """nDCG@k, R@k and MRR@k equal pytrec_eval on random graded qrels and runs with ties (1e-6)."""
    pytrec_eval = pytest.importorskip("pytrec_eval")
    qrels, run = _random_case(seed)
    ours = {q: M.evaluate_run({q: run[q]}, {q: qrels[q]}) for q in qrels}
    ks = ",".join(str(k) for k in M.KS)
    ev = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut.{ks}", f"recall.{ks}"})
    ref = ev.evaluate(run)
    for q in qrels:
        for k in M.KS:
            assert ours[q][f"nDCG@{k}"] == pytest.approx(ref[q][f"ndcg_cut_{k}"], abs=1e-6)
            assert ours[q][f"R@{k}"] == pytest.approx(ref[q][f"recall_{k}"], abs=1e-6)
            top = {d: run[q][d] for d in M.ranked(run[q])[:k]}  # MRR@k = trec_eval recip_rank of the top-k list
            rr = pytrec_eval.RelevanceEvaluator({q: qrels[q]}, {"recip_rank"}).evaluate({q: top})[q]["recip_rank"]
            assert ours[q][f"MRR@{k}"] == pytest.approx(rr, abs=1e-6)


def test_identical_id_rule():
    """A document whose id equals the query id is dropped (BEIR), so it cannot earn or cost anything."""
    run = {"q1": {"q1": 9.0, "d1": 1.0, "d2": 2.0}}
    assert M.drop_identical(run) == {"q1": {"d1": 1.0, "d2": 2.0}}
    assert M.evaluate_run(M.drop_identical(run), {"q1": {"d1": 1}})["MRR@10"] == 0.5


def test_bm25_by_hand():
    """BM25 (k1 0.9, b 0.4, Lucene idf) equals the formula evaluated by hand on a 3-document corpus."""
    docs = {"a": "cat cat dog", "b": "dog bird", "c": "fish"}
    bm = M.BM25(docs)
    avgdl = (3 + 2 + 1) / 3
    idf_cat = math.log(1 + (3 - 1 + 0.5) / (1 + 0.5))
    idf_dog = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))
    def part(idf, tf, dl):
        return idf * tf * 1.9 / (tf + 0.9 * (1 - 0.4 + 0.4 * dl / avgdl))
    s = bm.scores("the cat and dog")
    assert s[0] == pytest.approx(part(idf_cat, 2, 3) + part(idf_dog, 1, 3), rel=1e-12)
    assert s[1] == pytest.approx(part(idf_dog, 1, 2), rel=1e-12) and s[2] == 0
    assert bm.top("cat dog", 2) == ["a", "b"]


def test_beir_scifact_style_run_matches_pytrec(tmp_path):
    """`evaluate.py --bench beir --datasets toy --systems bm25` on a BEIR folder writes results whose nDCG@10
    equals pytrec_eval on the TREC run file it wrote."""
    pytrec_eval = pytest.importorskip("pytrec_eval")
    from test_data import write_beir
    corpus = [{"_id": f"d{i}", "title": "", "text": t} for i, t in enumerate(
        ["cats purr softly", "dogs bark", "birds sing songs", "fish swim", "cats and dogs play", "q1 itself"])]
    queries = [{"_id": "q1", "text": "cats"}, {"_id": "q2", "text": "dogs bark"}, {"_id": "q3", "text": "songs"}]
    qrels = "query-id\tcorpus-id\tscore\nq1\td0\t2\nq1\td4\t1\nq2\td1\t1\nq3\td2\t1\n"
    write_beir(tmp_path / "beir" / "toy", corpus, queries, qrels)
    res = E.main(["--bench", "beir", "--datasets", "toy", "--data-dir", str(tmp_path / "beir"), "--systems", "bm25",
                  "--output-dir", str(tmp_path / "out"), "--quiet"])
    qrels_ = {"q1": {"d0": 2, "d4": 1}, "q2": {"d1": 1}, "q3": {"d2": 1}}
    for run_file, part in (("run.bm25.full.trec", "full_pool"), ("run.bm25.trec", "candidates")):
        trec = {}
        for line in (tmp_path / "out" / run_file).read_text().splitlines():
            q, _, d, _, s, _ = line.split()
            trec.setdefault(q, {})[d] = float(s)
        ref = pytrec_eval.RelevanceEvaluator(qrels_, {"ndcg_cut.10"}).evaluate(trec)
        want = sum(v["ndcg_cut_10"] for v in ref.values()) / 3
        assert res["systems"]["bm25"][part]["nDCG@10"] == pytest.approx(want, abs=1e-9)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["n_queries"] == 3 and saved["pool_size"] == 6
    md = (tmp_path / "out" / "results.md").read_text()
    assert md.index("Whole pool") < md.index("Candidates C(q)")


def test_beir_data_dir_of_one_set_is_that_set_once(tmp_path, capsys):
    """--bench beir --data-dir SET (a folder holding corpus.jsonl) evaluates SET once under its folder's name, not the
    13 default names over the same files; --datasets naming others with it is refused; --max-docs at least the pool
    size is not labelled a subset."""
    from test_data import write_beir
    corpus = [{"_id": f"d{i}", "title": "", "text": t} for i, t in enumerate(["cats purr", "dogs bark", "fish swim"])]
    write_beir(tmp_path / "myset", corpus, [{"_id": "q1", "text": "cats"}, {"_id": "q2", "text": "dogs"}],
               "query-id\tcorpus-id\tscore\nq1\td0\t1\nq2\td1\t1\n")
    argv = ["--bench", "beir", "--data-dir", str(tmp_path / "myset"), "--systems", "bm25", "--quiet"]
    res = E.main(argv + ["--output-dir", str(tmp_path / "out"), "--max-docs", "10"])
    assert res["bench"] == "myset" and res["n_queries"] == 2 and "subset" not in res["header"]
    assert not (tmp_path / "out" / "scifact").exists()
    from runtime.common import cli
    with pytest.raises(SystemExit):
        cli(E.main, argv + ["--datasets", "scifact,nfcorpus", "--output-dir", str(tmp_path / "o2")])
    assert "one BEIR set" in capsys.readouterr().err and not (tmp_path / "o2").exists()


def test_offline_message(tmp_path, monkeypatch, capsys):
    """Without network and --data-dir, a BEIR bench stops with a message naming the URL and --data-dir."""
    import data
    monkeypatch.setenv("RABTRIEVER_CACHE", str(tmp_path))
    monkeypatch.setattr(data, "BEIR_URL", "http://127.0.0.1:9/{name}.zip")
    from runtime.common import cli
    with pytest.raises(SystemExit) as e:
        cli(E.main, ["--bench", "beir", "--datasets", "scifact", "--systems", "bm25", "--output-dir",
                     str(tmp_path / "o")])
    assert e.value.code == 2
    assert "127.0.0.1:9/scifact.zip" in capsys.readouterr().err and not (tmp_path / "o").exists()


def _distilled(tmp_path, monkeypatch):
    """A VirtualHome-layout fixture and a student distilled on it from a tiny random LLM: (data root, student dir)."""
    import distill
    from conftest import make_lm, make_tokenizer, patch_llm, write_virtualhome
    monkeypatch.setenv("RABTRIEVER_CACHE", str(tmp_path / "cache"))
    tok = make_tokenizer()
    patch_llm(monkeypatch, lambda *a, **k: (make_lm(tok), tok))
    root = write_virtualhome(tmp_path, 10)
    distill.main(["--data-dir", str(root), "--teacher", str(tmp_path / "t"), "--output-dir", str(tmp_path / "s"),
                  "--rounds", "1", "--k", "2", "--epochs", "2", "--width", "8", "--quiet"])
    return root, tmp_path / "s"


def test_all_systems_on_tiny_bench(tmp_path, monkeypatch):
    """Every system runs end to end on a fixture bench with a tiny random LLM and a distilled student."""
    root, _ = _distilled(tmp_path, monkeypatch)
    res = E.main(["--bench", "virtualhome", "--data-dir", str(root), "--student", str(tmp_path / "s"),
                  "--systems", "prior,bm25,llm-biencoder,minilm,teacher,student", "--rerank-k", "4",
                  "--output-dir", str(tmp_path / "e"), "--quiet"])
    assert {"prior", "bm25", "llm-biencoder", "teacher", "student"} <= set(res["systems"])
    for name, s in res["systems"].items():  # a TREC file per protocol the system was run on
        assert (tmp_path / "e" / f"run.{name}.trec").exists() == ("candidates" in s)
        assert (tmp_path / "e" / f"run.{name}.full.trec").exists() == ("full_pool" in s)
    assert res["n_queries"] > 0 and "C(q) = gold + 3 negatives" in res["protocol"]
    for name, s in res["systems"].items():
        parts = [(s["candidates"], ("R@1", "MRR@10", "agree@1", "kendall_tau"))] if "candidates" in s else []
        parts += [(s["full_pool"], ("R@1", "MRR@10", "nDCG@10"))] if "full_pool" in s else []
        assert parts, name
        for part, ms in parts:
            for m in ms:
                lo, hi = part[m + "_ci"]
                assert lo <= part[m] <= hi
    teacher = res["systems"]["teacher"]["candidates"]
    assert teacher["agree@1"] == 1.0 and teacher["kendall_tau"] == 1.0
    assert "full_pool" in res["systems"]["student"] and "full_pool" not in res["systems"]["teacher"]
    assert "teacher@8" in res["systems"] and "reranks the union of the top 8 of bm25 and student" in \
        res["systems"]["teacher@8"]["note"]


def test_whole_pool_fidelity_when_the_teacher_ranks_the_pool(tmp_path, monkeypatch):
    """--teacher-k 0: the teacher ranks the whole pool itself (teacher@pool), and every other whole-pool ranking
    reports its fidelity to it (top-1 agreement, overlap of the top 10, tau over the union of the top 10s), with
    CIs; the teacher's own ranking is not compared with itself."""
    root, _ = _distilled(tmp_path, monkeypatch)
    res = E.main(["--bench", "virtualhome", "--data-dir", str(root), "--student", str(tmp_path / "s"),
                  "--systems", "prior,bm25,teacher,student", "--rerank-k", "4", "--teacher-k", "0",
                  "--max-queries", "6", "--teacher-center", "3", "--output-dir", str(tmp_path / "e0"), "--quiet"])
    pool = res["systems"]["teacher@pool"]["full_pool"]
    assert "over 3 training queries removed (12)" in res["systems"]["teacher@pool+center"]["note"]
    assert "pool_agree@1" not in pool and "reranks the whole pool" in res["systems"]["teacher@pool"]["note"]
    for name in ("prior", "bm25", "student"):
        fp = res["systems"][name]["full_pool"]
        for m in ("pool_agree@1", "pool_overlap@10", "pool_kendall_tau"):
            lo, hi = fp[m + "_ci"]
            assert lo <= fp[m] <= hi and -1 <= fp[m] <= 1


def test_every_system_ranks_the_same_candidates(tmp_path, monkeypatch):
    """The protocol: on each query every system scores exactly the teacher's C(q), nothing more or less."""
    import teacher as T
    from conftest import make_lm, make_tokenizer, write_virtualhome
    from data import load_virtualhome
    tok = make_tokenizer()
    teacher = T.Teacher(make_lm(tok), tok)
    from student import Student
    student = Student(teacher, 8)
    data = load_virtualhome(write_virtualhome(tmp_path, 10))
    queries, qrels = data.split("test")
    doc_ids = list(data.corpus)
    bm25 = M.BM25({d: data.doc_text(d) for d in doc_ids})
    cands = M.candidate_sets(list(queries), queries, qrels, doc_ids, bm25, 5, torch.Generator().manual_seed(0))
    results = E.run_systems(["prior", "lookup", "bm25", "llm-biencoder", "teacher", "student"], data, queries, cands,
                            bm25, 0.0, "train", teacher, student, doc_cache=tmp_path / "cache", quiet=True)
    assert len(results) == 7 and results["teacher@8"].cand_run is None
    for name, r in results.items():
        if name != "teacher@8":
            assert {q: sorted(r.cand_run[q]) for q in queries} == {q: sorted(cands[q]) for q in queries}, name


def test_trec_ids_with_spaces(tmp_path):
    """ESConv ids such as "Providing Suggestions" are written as one TREC field, so every line has 6 fields."""
    M.write_trec(tmp_path / "r.trec", {"q 1": {"Providing Suggestions": 1.0, "Other": 0.5}}, "x")
    lines = (tmp_path / "r.trec").read_text().splitlines()
    assert [len(line.split()) for line in lines] == [6, 6] and lines[0].split()[2] == "Providing_Suggestions"


def test_prior_ranks_by_training_gold_counts():
    """The prior system ranks documents by how often they are gold in the training split, the same list for every
    query, and never looks at the test qrels."""
    from data import Retrieval
    corpus = {d: {"title": "", "text": d} for d in ("a", "b", "c", "d")}
    queries = {"train": {"t1": "x", "t2": "y", "t3": "z"}, "test": {"q1": "x", "q2": "y"}}
    qrels = {"train": {"t1": {"c": 1}, "t2": {"c": 1}, "t3": {"a": 1, "b": 0}},
             "test": {"q1": {"c": 1}, "q2": {"d": 1}}}
    data = Retrieval("toy", corpus, queries, qrels)
    assert M.label_prior(data, "train") == {"c": 2, "a": 1, "b": 0}
    cands = {q: list(corpus) for q in queries["test"]}
    res = baselines.system_prior(data, queries["test"], cands, "train")
    for run in (res.cand_run, res.full_run):
        assert [M.ranked(run[q]) for q in ("q1", "q2")] == [["c", "a", "d", "b"]] * 2  # ties by id, descending
    m = M.evaluate_run(res.cand_run, qrels["test"])
    assert m["R@1"] == 0.5 and m["MRR@10"] == pytest.approx((1 + 1 / 3) / 2)


def test_lookup_ranks_training_golds_of_the_same_key_then_the_prior():
    """lookup: a query whose key equals training queries' ranks their golds first (most often gold first), then the
    prior's order; a query with an unseen key gets the prior's ranking exactly. Keys default to the query text."""
    from data import Retrieval
    corpus = {d: {"title": "", "text": d} for d in ("a", "b", "c", "d")}
    queries = {"train": {"t1": "x", "t2": "x2", "t3": "z", "t4": "z", "t5": "w", "t6": "w"},
               "test": {"q1": "x", "q2": "new", "q3": "z"}}
    qrels = {"train": {"t1": {"d": 1}, "t2": {"d": 1}, "t3": {"c": 1}, "t4": {"a": 1}, "t5": {"c": 1}, "t6": {"c": 1}},
             "test": {"q1": {"d": 1}, "q2": {"c": 1}, "q3": {"a": 1}}}
    data = Retrieval("toy", corpus, queries, qrels, keys={"t2": "x"})
    assert data.key("train", "t2") == "x" and data.key("test", "q2") == "new"
    cands = {q: list(corpus) for q in queries["test"]}
    res = baselines.system_lookup(data, queries["test"], cands, "test", "train")
    prior = ["c", "d", "a", "b"]                                 # gold 3, 2, 1 and 0 times
    for run in (res.cand_run, res.full_run):
        assert M.ranked(run["q1"]) == ["d", "c", "a", "b"]       # t1 and t2 share key "x": d, then the prior
        assert M.ranked(run["q2"]) == prior
        assert M.ranked(run["q3"]) == ["c", "a", "d", "b"]       # t3, t4: c and a once each, ties by the prior
    assert "2 of 3 matched" in res.note


def test_index_and_search_cli_equal_evaluate_student_run(tmp_path, monkeypatch):
    """`student.py index` + `student.py search --queries` give the run evaluate.py computes for the student with the
    same B h_d dtype: same ids in the same order, scores equal (1e-5); with float32 in evaluate, within fp16's
    tolerance."""
    import student as S
    from data import load_virtualhome
    root, _ = _distilled(tmp_path, monkeypatch)
    runs = {}
    for dtype in ("float16", "float32"):
        E.main(["--bench", "virtualhome", "--data-dir", str(root), "--student", str(tmp_path / "s"), "--systems",
                "student", "--index-dtype", dtype, "--output-dir", str(tmp_path / f"e-{dtype}"), "--quiet"])
        runs[dtype] = _read_trec(tmp_path / f"e-{dtype}" / "run.student.full.trec")
    data = load_virtualhome(root)
    queries = data.split("test")[0]
    (tmp_path / "beir").mkdir()
    (tmp_path / "beir" / "corpus.jsonl").write_text("".join(
        json.dumps({"_id": d, "title": "", "text": data.doc_text(d)}) + "\n" for d in data.corpus))
    (tmp_path / "beir" / "queries.jsonl").write_text("".join(
        json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    S.main(["index", "--student", str(tmp_path / "s"), "--corpus", str(tmp_path / "beir"), "--out",
            str(tmp_path / "ix"), "--quiet"])
    S.main(["search", "--index", str(tmp_path / "ix"), "--queries", str(tmp_path / "beir" / "queries.jsonl"),
            "--k", "100", "--out", str(tmp_path / "cli.trec"), "--quiet"])
    cli = _read_trec(tmp_path / "cli.trec")
    assert list(cli) == list(runs["float16"])
    for q in cli:
        assert [d for d, _ in cli[q]] == [d for d, _ in runs["float16"][q]]
        assert all(abs(a - b) < 1e-5 for (_, a), (_, b) in zip(cli[q], runs["float16"][q]))
        exact = dict(runs["float32"][q])
        spread = max(exact.values()) - min(exact.values())
        assert all(abs(s - exact[d]) <= 1e-3 * spread for d, s in cli[q] if d in exact)
    # nothing a search writes lands in the index; an interrupted build continues; a user's ids.json is not replaced
    from runtime.common import cli as run
    ids = (tmp_path / "ix" / "ids.json").read_text()
    with pytest.raises(SystemExit):
        run(S.main, ["search", "--index", str(tmp_path / "ix"), "--query", "walk", "--out",
                     str(tmp_path / "ix" / "ids.json"), "--overwrite", "--quiet"])
    assert (tmp_path / "ix" / "ids.json").read_text() == ids
    shutil.copytree(tmp_path / "ix" / "h_d", tmp_path / "ix2" / "h_d")  # killed after encoding, while saving
    (tmp_path / "ix2" / "ids.json.k3x9q1.tmp").write_text("[")  # the temporary file of an atomic write, left behind
    S.main(["index", "--student", str(tmp_path / "s"), "--corpus", str(tmp_path / "beir"), "--out",
            str(tmp_path / "ix2"), "--quiet"])
    assert (tmp_path / "ix2" / "ids.json").read_text() == ids
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "ids.json").write_text("my own list")
    from runtime.index import Index
    with pytest.raises(FileExistsError, match="not an index's"):
        Index.build(S.load_student(tmp_path / "s"), {"d": {"title": "", "text": "x"}}, tmp_path / "mine")
    assert (tmp_path / "mine" / "ids.json").read_text() == "my own list"


def _read_trec(path):
    run = {}
    for line in path.read_text().splitlines():
        q, _, d, _, s, _ = line.split()
        run.setdefault(q, []).append((d, float(s)))
    return run


def test_student_of_another_teacher_is_refused(tmp_path, monkeypatch):
    """load_student checks the predictor's teacher fingerprint against the teacher it loads."""
    _, folder = _distilled(tmp_path, monkeypatch)
    assert S.load_student(folder).predictor is not None
    side = folder / "predictor.safetensors.json"
    meta = json.loads(side.read_text())
    side.write_text(json.dumps(meta | {"teacher_fingerprint": "0" * 24}))
    with pytest.raises(ValueError, match="teacher_fingerprint"):
        S.load_student(folder)


def test_teacher_at_k_reranks_the_first_stage_union(tmp_path, monkeypatch):
    """teacher@k scores exactly the union of each first stage's top k (k = 0: the whole pool), with the teacher's
    own joint scores (1)-(3); pairs already scored on C(q) are not sent again."""
    import teacher as T
    from conftest import make_lm, make_tokenizer, write_virtualhome
    from data import load_virtualhome
    assert M.first_stage_union([{"q": {"a": 3, "b": 2, "c": 1}}, {"q": {"c": 9, "d": 8, "a": 7}}], ["q"], 2) == \
        {"q": ["a", "b", "c", "d"]}
    tok = make_tokenizer()
    teacher = T.Teacher(make_lm(tok), tok)
    data = load_virtualhome(write_virtualhome(tmp_path, 10))
    queries = dict(list(data.split("test")[0].items())[:3])
    pool = list(data.corpus)
    first = {"x": baselines.SystemResult(None, 0.0, full_run={q: {d: -i for i, d in enumerate(pool)} for q in queries}),
             "y": baselines.SystemResult(None, 0.0, full_run={q: {d: i for i, d in enumerate(pool)} for q in queries})}
    sent = []
    orig = T.Teacher.rerank
    monkeypatch.setattr(T.Teacher, "rerank", lambda t, qs, c, *a: sent.append(c) or orig(t, qs, c, *a))
    scores = E.TeacherScores(tmp_path / "scores")
    c_q = E.system_teacher(teacher, data, queries, {q: [pool[0]] for q in queries}, scores)
    r = E.system_teacher_at_k(teacher, data, queries, first, 2, scores)
    want = {q: [pool[0], pool[1], pool[-1], pool[-2]] for q in queries}
    assert {q: sorted(r.full_run[q]) for q in queries} == {q: sorted(w) for q, w in want.items()}
    assert sent[1] == {q: w[1:] for q, w in want.items()}  # pool[0] was scored on C(q): not sent again
    ref = orig(teacher, queries, want, data.doc_text)
    assert all(r.full_run[q][d] == pytest.approx(ref[q][d], abs=1e-5) for q in queries for d in want[q])
    assert all(c_q.cand_run[q][pool[0]] == r.full_run[q][pool[0]] for q in queries)
    again = E.system_teacher_at_k(teacher, data, queries, first, 2, E.TeacherScores(tmp_path / "scores"))
    assert len(sent) == 2 and again.full_run == r.full_run  # read back from disk, nothing sent
    assert again.ms_per_query == pytest.approx(r.ms_per_query)  # the cost measured when the pairs were scored
    whole = E.system_teacher_at_k(teacher, data, queries, {}, 0)
    assert all(sorted(whole.full_run[q]) == sorted(pool) for q in queries)
    # (12) for the teacher: each document's mean s_T over the reference queries removed, by hand
    reference = dict(list(data.split("train")[0].items())[:2])
    centered = E.system_teacher_centered(teacher, data, r, reference, scores)
    docs = sorted({d for w in want.values() for d in w})
    s_ref = orig(teacher, reference, {q: docs for q in reference}, data.doc_text)
    for q in queries:
        for d in want[q]:
            offset = sum(s_ref[x][d] for x in reference) / 2
            assert centered.full_run[q][d] == pytest.approx(r.full_run[q][d] - offset, abs=1e-5)
    assert "mean s_T over 2 training queries removed (12)" in centered.note


def test_max_docs_keeps_judged_and_fills_up(tmp_path):
    """--max-docs N keeps every judged document of the evaluated queries plus a seeded random rest, N in all."""
    from conftest import write_virtualhome
    root = write_virtualhome(tmp_path, 10)
    res = E.main(["--bench", "virtualhome", "--data-dir", str(root), "--systems", "bm25", "--max-docs", "12",
                  "--output-dir", str(tmp_path / "o"), "--quiet"])
    assert res["pool_size"] == 12 and "12 documents (subset of 28)" in res["header"]
    run = _read_trec(tmp_path / "o" / "run.bm25.full.trec")
    docs = {d for hits in run.values() for d, _ in hits}
    from data import load_virtualhome
    qrels = load_virtualhome(root).split("test")[1]
    assert len(docs) == 12 and {M.trec_id(d) for q in qrels for d in qrels[q]} <= docs


def test_hub_offsets_and_corrected_student_by_hand():
    """(12): center = each document's mean score over the reference queries, csls = the mean of its k highest; the
    corrected runs rank by s - r(d) (center) and 2 s - r(d) (csls), on the pool and on C(q)."""
    from types import SimpleNamespace

    from jepa import Predictor
    from runtime.index import Index
    torch.manual_seed(0)
    p = Predictor(6, 4)
    with torch.no_grad():
        p.W2.weight.normal_(0, 0.5)
    student = SimpleNamespace(predictor=p.eval(), u=torch.randn(6))
    h_d, ref, h_q = torch.randn(9, 6), torch.randn(5, 6), torch.randn(3, 6)
    ids = [f"d{i}" for i in range(9)]
    index = Index.from_h_d(student, ids, h_d, "float32")
    s_ref, s_q = index.scores(student, ref), index.scores(student, h_q)  # (5, 9), (3, 9)
    assert torch.allclose(E.hub_offsets(student, index, ref, "center", block=4), s_ref.mean(0), atol=1e-6)
    assert torch.allclose(E.hub_offsets(student, index, ref, "csls", k=2, block=4), s_ref.topk(2, 0).values.mean(0),
                          atol=1e-6)
    off = s_ref.mean(0)
    cands = {f"q{i}": ["d1", "d4"] for i in range(3)}
    r = E.system_student_corrected(student, index, list(cands), ids, h_q, cands, off, "center", 0.0)
    for i, q in enumerate(cands):
        want = s_q[i] - off
        assert M.ranked(r.full_run[q])[:9] == [ids[j] for j in want.argsort(descending=True).tolist()]
        assert r.cand_run[q]["d4"] == pytest.approx(float(want[4]), abs=1e-5)
