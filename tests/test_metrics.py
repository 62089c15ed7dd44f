"""metrics.py: agreement with the teacher and Kendall's tau by hand (ties included), bootstrap CIs, the C(q) protocol."""
import math
import random

import numpy as np
import pytest
import torch

from runtime import metrics as M
def test_agree_at_1_by_hand_with_ties():
    """agree@1 = |top_S & top_T| / (|top_S| |top_T|): 1 for the same unique top, 1/2 for a two-way tie at the
    system's top that holds the teacher's top, 0 when the tops differ, 1/4 with two-way ties on both sides."""
    teacher = {"a": 3.0, "b": 1.0, "c": 0.0}
    assert M.agree_at_1({"a": 0.9, "b": 0.1, "c": 0.0}, teacher) == 1.0
    assert M.agree_at_1({"a": 0.9, "b": 0.9, "c": 0.0}, teacher) == 0.5
    assert M.agree_at_1({"a": 0.1, "b": 0.9, "c": 0.0}, teacher) == 0.0
    assert M.agree_at_1({"a": 0.9, "b": 0.9, "c": 0.0}, {"a": 2.0, "b": 0.0, "c": 2.0}) == 0.25


def test_kendall_tau_b_by_hand():
    """tau-b on hand-counted pairs: identical order 1, reversed -1, and a tied case worked out on paper."""
    assert M.kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert M.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # x = [1, 1, 2, 3], y = [1, 2, 3, 3]: 6 pairs; (0,1) tied in x; (2,3) tied in y; the other 4 concordant.
    # tau_b = (4 - 0) / sqrt((6 - 1) (6 - 1)) = 0.8
    assert M.kendall_tau([1, 1, 2, 3], [1, 2, 3, 3]) == pytest.approx(0.8)
    assert M.kendall_tau([5, 5, 5], [1, 2, 3]) == 0.0  # a constant ranking carries no order


def test_kendall_tau_equals_scipy():
    """tau-b equals scipy.stats.kendalltau (its default variant) on random scores with ties."""
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y = rng.integers(0, 4, 9).astype(float), rng.normal(size=9)
        if len(set(x)) > 1:
            assert M.kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)


def test_fidelity_per_query_and_missing_candidate():
    """fidelity reads the system on the teacher's C(q) only; a candidate the system did not score is an error."""
    teacher = {"q1": {"a": 2.0, "b": 1.0, "c": 0.0}, "q2": {"a": 0.0, "b": 1.0, "c": 2.0}}
    system = {"q1": {"a": 5.0, "b": 4.0, "c": 3.0, "z": 99.0}, "q2": {"a": 5.0, "b": 4.0, "c": 3.0}}
    f = M.fidelity(system, teacher, ["q1", "q2"])
    assert f["agree@1"] == [1.0, 0.0] and f["kendall_tau"] == pytest.approx([1.0, -1.0])
    with pytest.raises(KeyError, match="query 'q2'.*'c'"):
        M.fidelity({"q1": system["q1"], "q2": {"a": 1.0, "b": 0.0}}, teacher, ["q1", "q2"])


def test_bootstrap_ci_by_hand():
    """Percentile bootstrap: constant values give a point; [0, 1] gives (0, 1) (resample means 0, 1/2, 1 with
    probabilities 1/4, 1/2, 1/4); the same seed gives the same CI; a large sample's CI is mean +- 1.96 SE."""
    assert M.bootstrap_ci([0.5] * 7) == [0.5, 0.5]
    assert M.bootstrap_ci([0.0, 1.0]) == [0.0, 1.0]
    v = np.random.default_rng(1).random(400)
    assert M.bootstrap_ci(v, seed=3) == M.bootstrap_ci(v, seed=3) != M.bootstrap_ci(v, seed=4)
    lo, hi = M.bootstrap_ci(v, n_boot=4000)
    se = v.std(ddof=1) / np.sqrt(len(v))
    assert lo == pytest.approx(v.mean() - 1.96 * se, abs=0.25 * se)
    assert hi == pytest.approx(v.mean() + 1.96 * se, abs=0.25 * se)
    # the hand-written resampling: the first resample of default_rng(0) for n = 3
    idx = np.random.default_rng(0).integers(0, 3, size=(M.N_BOOT, 3))
    means = np.array([1.0, 0.0, 0.0])[idx].mean(1)
    assert M.bootstrap_ci([1.0, 0.0, 0.0]) == [np.quantile(means, 0.025), np.quantile(means, 0.975)]
    with pytest.raises(ValueError, match="no values"):
        M.bootstrap_ci([])


def test_summarize_keys():
    """summarize gives each metric its mean and a `_ci` pair."""
    s = M.summarize({"R@1": [1.0, 0.0, 1.0, 1.0]})
    assert s["R@1"] == 0.75 and len(s["R@1_ci"]) == 2 and s["R@1_ci"][0] <= 0.75 <= s["R@1_ci"][1]


def test_candidate_sets_protocol():
    """C(q): the whole pool when small; else gold + (size-1)//2 BM25-hard + random negatives, size + gold - 1
    documents, no duplicates, seeded."""
    docs = {f"d{i}": f"word{i} common" for i in range(30)}
    docs["d3"] = "cats purr"
    docs["d4"] = "cats purr loudly"
    bm25 = M.BM25(docs)
    queries, qrels = {"q": "cats purr"}, {"q": {"d3": 1}}
    small = M.candidate_sets(["q"], queries, qrels, list(docs)[:5], bm25, 8, torch.Generator().manual_seed(0))
    assert small == {"q": list(docs)[:5]}
    c = M.candidate_sets(["q"], queries, qrels, list(docs), bm25, 8, torch.Generator().manual_seed(0))["q"]
    assert c[0] == "d3" and c[1] == "d4" and len(c) == len(set(c)) == 8
    again = M.candidate_sets(["q"], queries, qrels, list(docs), bm25, 8, torch.Generator().manual_seed(0))["q"]
    assert again == c
    assert "random R@1 = 0.125" in M.describe_protocol(31, 8) and "all 5" in M.describe_protocol(5, 8)


def test_hubness_by_hand():
    """Four queries over a pool of five documents: distinct top-1, the largest share one document tops, and the
    skewness of N_2 (documents never in a top 2 count as 0) worked out on paper."""
    run = {"q1": {"a": 3.0, "b": 2.0, "c": 1.0}, "q2": {"a": 5.0, "c": 4.0}, "q3": {"b": 1.0, "a": 0.5},
           "q4": {"a": 1.0, "b": 1.0}}  # q4: a tie, broken by id descending as trec_eval does -> b first
    h = M.hubness(run, pool_size=5, k=2)
    assert h["distinct_top1"] == 2 and h["max_top1_share"] == 0.5
    # N_2: a 4, b 3, c 1, d 0, e 0 -> mean 1.6, central moments m2 = 2.64, m3 = 1.632; skew = m3 / m2^1.5
    n = [4, 3, 1, 0, 0]
    m2 = sum((x - 1.6) ** 2 for x in n) / 5
    m3 = sum((x - 1.6) ** 3 for x in n) / 5
    assert m2 == pytest.approx(2.64) and m3 == pytest.approx(1.632)
    assert h["n2_skew"] == pytest.approx(m3 / m2 ** 1.5, rel=1e-12)
    same = M.hubness({q: {"a": 1.0, "b": 0.0} for q in ("q1", "q2", "q3")}, pool_size=3, k=1)
    assert same == {"distinct_top1": 1, "max_top1_share": 1.0, "n1_skew": pytest.approx(1 / 2 ** 0.5)}
    spread = M.hubness({"q1": {"a": 1.0}, "q2": {"b": 1.0}}, pool_size=2, k=1)
    assert spread == {"distinct_top1": 2, "max_top1_share": 0.5, "n1_skew": 0.0}
    with pytest.raises(ValueError, match="pool"):
        M.hubness(run, pool_size=2, k=2)


def test_topk_blocked_equals_the_full_matrix():
    """The running top-k over blocks of columns gives the values and columns of topk over the whole matrix, for any
    block size (one column, uneven last block, larger than n) and k larger than n."""
    g = torch.Generator().manual_seed(0)
    m = torch.randn(5, 23, generator=g)
    want = m.topk(7, dim=1)
    for block in (1, 4, 10, 100):
        vals, idx = M.topk_blocked(lambda i, j: m[:, i:j], 23, 5, 7, block)
        assert torch.equal(vals, want.values) and torch.equal(idx, want.indices)
    vals, idx = M.topk_blocked(lambda i, j: m[:, i:j], 23, 5, 50, 6)
    assert vals.shape == (5, 23) and torch.equal(vals, m.sort(dim=1, descending=True).values)


def test_sparse_bm25_equals_dense_and_ties_like_trec():
    """BM25 from the postings alone equals the dense scores bitwise; its top k holds the matching documents by score
    and fills up with non-matching ones (score 0) by id descending, as trec_eval orders ties."""
    docs = {"d1": "cats purr", "d2": "dogs bark loudly", "d3": "cats and dogs", "d4": "fish", "d5": "birds sing"}
    bm = M.BM25(docs)
    for q in ("cats dogs", "dogs dogs bark", "nothing here", "fish"):
        rows, w = bm.sparse(q)
        dense = bm.scores(q)
        assert np.array_equal(np.flatnonzero(dense), np.sort(rows)) and np.array_equal(dense[rows], w)
    top = bm.top_sparse("fish", 3)
    assert list(top) == ["d4", "d5", "d3"] and top["d5"] == top["d3"] == 0.0 and top["d4"] > 0
    assert M.ranked(bm.top_sparse("cats dogs", 5))[:3] == M.ranked({d: s for d, s in zip(bm.ids, bm.scores("cats dogs"))})[:3]


def test_pool_fidelity_by_hand():
    """Whole-pool fidelity to the teacher's own ranking, worked out on paper for two queries: top-1 agreement, the
    share of the teacher's top 3 in the system's top 3, and Kendall's tau-b over the teacher's top 3, a document the
    system did not return ranked below all it returned."""
    teacher = {"q1": {"a": 4.0, "b": 3.0, "c": 2.0, "d": 1.0}, "q2": {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}}
    system = {"q1": {"a": 0.9, "c": 0.8, "b": 0.1}, "q2": {"a": 0.7, "b": 0.2}}
    got = M.pool_fidelity(system, teacher, ["q1", "q2"], k=3)
    # q1: tops a / a; top 3 {a, c, b} vs {a, b, c}: 3 of 3; teacher's top 3 [a, b, c]: system (0.9, 0.1, 0.8),
    # teacher (4, 3, 2): pairs (a,b) +, (a,c) +, (b,c) - -> tau = (2 - 1) / 3
    # q2: tops a / d; top 3 {a, b} vs {d, c, b}: 1 of 3; teacher's top 3 [d, c, b]: system (-0.8, -0.8, 0.2) (d, c
    # missing, below the lowest returned 0.2: 0.2 - 1), teacher (4, 3, 2): pairs (d,c) tie in x, (d,b) -, (c,b) -
    # -> C - D = -2, n0 = 3, n1 = 1, n2 = 0 -> tau = -2 / sqrt(2 * 3)
    assert got["pool_agree@1"] == [1.0, 0.0] and got["pool_overlap@3"] == pytest.approx([1.0, 1 / 3])
    assert got["pool_kendall_tau"] == pytest.approx([1 / 3, -2 / math.sqrt(6)], rel=1e-12)


def test_pool_kendall_tau_is_zero_for_unrelated_rankings():
    """Chance level: a system that keeps its top 100 of 592 documents, drawn independently of the teacher's scores,
    has pool_kendall_tau near 0 on average over 400 queries (the union of both top 10 gave about -0.57)."""
    gen = random.Random(0)
    docs = [f"d{i}" for i in range(592)]
    teacher = {f"q{i}": {d: gen.random() for d in docs} for i in range(400)}
    system = {q: dict(sorted(((d, gen.random()) for d in docs), key=lambda x: -x[1])[:100]) for q in teacher}
    tau = M.pool_fidelity(system, teacher, list(teacher))["pool_kendall_tau"]
    assert abs(sum(tau) / len(tau)) < 0.03


def test_paired_differences_to_the_baselines(tmp_path):
    """report(): each non-baseline whole-pool system minus each baseline, query by query. On 40 queries where the
    system finds the gold first exactly where BM25 does plus on 6 more, the two systems' own CIs overlap but the
    paired CI of the difference lies above 0; the difference and its CI are bootstrap_ci of the per-query
    differences, and baselines are not compared with themselves."""
    from runtime.baselines import SystemResult
    from runtime.reporting import report
    qrels = {f"q{i}": {"gold": 1} for i in range(40)}
    first = lambda: {"gold": 2.0, "other": 1.0}  # noqa: E731
    last = lambda: {"other": 2.0, **{f"x{j}": 1.5 for j in range(10)}, "gold": 1.0}  # noqa: E731
    bm25 = {q: first() if i < 20 else last() for i, q in enumerate(qrels)}
    system = {q: first() if i < 26 else last() for i, q in enumerate(qrels)}
    res = report(tmp_path, "toy", "dev", qrels, {"bm25": SystemResult(None, 0.0, full_run=bm25),
                                                 "student": SystemResult(None, 0.0, full_run=system)},
                 "toy", pool_size=12)
    bm, st = res["systems"]["bm25"]["full_pool"], res["systems"]["student"]["full_pool"]
    assert "minus" not in bm and set(st["minus"]) == {"bm25"}
    d = st["minus"]["bm25"]
    assert d["R@1"] == pytest.approx(0.15) and d["R@1_ci"] == M.bootstrap_ci([0.0] * 20 + [1.0] * 6 + [0.0] * 14)
    assert st["R@1_ci"][0] < bm["R@1_ci"][1]  # the two CIs overlap ...
    assert d["R@1_ci"][0] > 0  # ... but every resample of the same queries favours the system
    assert "| student | bm25 | 0.150 (" in (tmp_path / "results.md").read_text()
