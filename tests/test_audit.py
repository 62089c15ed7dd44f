"""The six faults an audit of the code against METHOD.md found, each pinned by a test that failed before its fix:
bf16 gradient clipping, u in float32, a round resumed inside its teacher targets, the prefix cache under per-query
cuts, candidate sets and SFT pairs drawn without a list over the pool, and one order for BM25's ties."""
import tracemalloc

import pytest
import torch

import teacher as T
from runtime.caches import PairCache
from conftest import make_lm, make_tokenizer
from runtime.metrics import BM25, RANDPERM_MAX, candidate_sets, ranked, sample_excluding


def test_bf16_gradient_is_clipped_before_the_step():
    """With bf16 parameters the optimiser steps the fp32 masters with the clipped gradient: after one step of a
    tiny model whose gradient norm is far above --clip, AdamW's first moment is (1 - beta1) x the clipped gradient,
    norm (1 - beta1) x clip (before the fix the step gathered the unclipped gradient again)."""
    from test_teacher import _toy_data
    from runtime.training import SFT

    tok = make_tokenizer()
    lm = make_lm(tok).to(torch.bfloat16)
    teacher = T.Teacher(lm, tok, batch_size=4)
    data = _toy_data()
    cfg = T.TrainConfig(bench="toy", train_layers=1, lr=1e-3, epochs=1, batch_size=4, warmup=0.0, clip=1e-3,
                        neg_bm25=1, neg_random=1, neg_frequent=1,
                        max_train_queries=0, quiet=True, save_every=0)
    pairs = T.sft_pairs(data, "train", cfg, BM25({k: data.doc_text(k) for k in data.corpus}),
                        torch.Generator().manual_seed(0))
    sft = SFT(teacher, [teacher.prompt.teacher(q, data.doc_text(d)) for q, d, _ in pairs], cfg)
    batch = next(sft.batches(list(range(len(pairs)))))
    loss = sft.backward(batch, lambda z, rows: T.sft_loss(
        z, torch.tensor([pairs[i][2] for i in rows]), teacher.y_pos, teacher.y_neg))
    raw = torch.linalg.vector_norm(torch.stack([p.grad.float().norm() for p in sft.opt.params]))
    assert raw > 100 * cfg.clip  # clipping has work to do
    sft.step(loss)
    moment = torch.linalg.vector_norm(torch.stack([sft.opt.opt.state[m]["exp_avg"].norm() for m in sft.opt.master]))
    assert moment.item() == pytest.approx(0.1 * cfg.clip, rel=1e-3)
    assert all(m.dtype == torch.float32 and p.dtype == torch.bfloat16 for p, m in zip(sft.opt.params, sft.opt.master))


def test_u_is_subtracted_in_float32():
    """u = W[y+] - W[y-] is subtracted in float32 from a bf16 head, so s = u . h equals z[y+] - z[y-] of the float32
    logits (2) that the KL terms use (a bf16 subtraction rounds 1.0078125 + 2^-10 to 1.0078125)."""
    tok = make_tokenizer()
    lm = make_lm(tok).to(torch.bfloat16)
    t = T.Teacher(lm, tok)
    with torch.no_grad():
        lm.lm_head.weight[t.y_pos] = 0.0
        lm.lm_head.weight[t.y_neg] = 0.0
        lm.lm_head.weight[t.y_pos, 0] = 1.0078125
        lm.lm_head.weight[t.y_neg, 0] = -2.0 ** -10
    assert t.u[0].item() == 1.0078125 + 2.0 ** -10 and t.u.dtype == torch.float32
    h = torch.randn(3, lm.config.hidden_size)
    z = t.logits(h)
    assert torch.allclose(h @ t.u, z[:, t.y_pos] - z[:, t.y_neg], rtol=1e-6, atol=1e-6)
    from student import Student
    assert torch.equal(Student(t, width=4).u, t.u)


def test_a_round_resumed_inside_its_teacher_targets_keeps_every_chunk(tmp_path, monkeypatch):
    """Step 4 killed after its first chunk, then run again (a resume inside the round): the chunks left on disk hold
    every pair once, and a fresh cache reads them all back (before the fix the second run overwrote chunk 0)."""
    from runtime import caches
    monkeypatch.setattr(caches, "CHUNK", 4)

    class Teacher:
        batch_size, calls = 1, 0

        def encode_pairs(self, queries, docs, desc=""):
            Teacher.calls += 1
            if Teacher.calls == 2:
                raise KeyboardInterrupt("killed")
            return torch.tensor([[float(len(q) + len(d))] for q, d in zip(queries, docs)])
    pairs = [(f"q{i}", f"d{j}") for i in range(3) for j in range(3)]  # 9 pairs: chunks of 4, 4, 1
    queries = {f"q{i}": "query " * i for i in range(3)}
    with pytest.raises(KeyboardInterrupt):
        PairCache(tmp_path, "fp").fill(pairs, Teacher(), queries, lambda d: d, "r0", True)
    again = PairCache(tmp_path, "fp")
    assert len(again.h) == 4 and again.fill(pairs, Teacher(), queries, lambda d: d, "r0", True) == 5
    reread = PairCache(tmp_path, "fp")
    assert set(reread.h) == set(pairs) and len(list(tmp_path.glob("chunk-*.safetensors"))) == 3


def test_prefix_cache_with_per_query_cuts(tiny):
    """A document met by batch_size or more queries, cut differently per query because the window is short and the
    queries differ in length, is encoded exactly as without the cache (before the fix the prefix cache raised)."""
    lm, tok = tiny
    cached, plain = T.Teacher(lm, tok, batch_size=2), T.Teacher(lm, tok, batch_size=2, prefix_cache=False)
    for t in (cached, plain):
        t.prompt.max_len = len(t.prompt.pre) + len(t.prompt.mid) + len(t.prompt.post) + 12
    doc = "walk to the office and sit on the chair and open the sink and drink water"
    qs = ["walk", "how do you write an email to my office today", "help", "i feel sad"]
    cuts = {cached.prompt.teacher_split(q, doc)[1] for q in qs}
    assert len(cuts) > 1  # the document prefix differs between queries
    assert torch.allclose(cached.encode_pairs(qs, [doc] * 4), plain.encode_pairs(qs, [doc] * 4), atol=1e-5)


def _listed(pool, exclude, k, gen):
    """The draw as it was written before: list the rows left, permute, take k."""
    rest = [d for d in pool if d not in exclude]
    return [rest[i] for i in torch.randperm(len(rest), generator=gen)[:k].tolist()]


def test_sampling_without_a_list_over_the_pool():
    """Candidate sets and SFT negatives draw from the pool without a Python list over it: up to RANDPERM_MAX rows the
    draws equal listing the rows left and permuting them (the numbers of earlier runs); at 1M rows the draw is k
    distinct rows outside the excluded ones, seeded, and allocates no list over the pool."""
    for n, excl in ((50, {3, 0, 49, 17}), (RANDPERM_MAX, {5, RANDPERM_MAX - 1})):
        a, b = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
        assert sample_excluding(n, excl, 7, a) == _listed(range(n), excl, 7, b)
    n, excl = 1_000_000, {0, 7, 999_999}
    tracemalloc.start()
    rows = sample_excluding(n, excl, 12, torch.Generator().manual_seed(1))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 200_000, peak  # a list of 1M ids alone would be 8 MB
    assert len(set(rows)) == 12 and not set(rows) & excl and all(0 <= r < n for r in rows)
    assert rows == sample_excluding(n, excl, 12, torch.Generator().manual_seed(1))
    assert sample_excluding(5, {0, 1, 2}, 9, torch.Generator()) in ([3, 4], [4, 3])  # k capped by the rows left
    pool = [f"d{i}" for i in range(n)]
    docs = {"d0": "walk to the kitchen", "d1": "find the cup", "d2": "grab the cup"}
    bm25 = BM25(docs | {d: "x" for d in pool[3:2000]})
    cands = candidate_sets(["q"], {"q": "grab the cup"}, {"q": {"d2": 1}}, pool, bm25, 8,
                           torch.Generator().manual_seed(0))
    assert cands["q"][0] == "d2" and len(set(cands["q"])) == 8 and cands["q"][1] == "d1"


def test_bm25_ties_in_one_order():
    """BM25's top k breaks ties by document id descending, the order of `ranked` and trec_eval, for documents with
    the same score and for the zero-score ones that fill the list; `top_sparse` agrees (before the fix `top` used
    ascending ids)."""
    docs = {"a": "grab cup", "c": "grab cup", "b": "grab cup", "e": "walk", "d": "sit", "f": "cup cup water"}
    bm25 = BM25(docs)
    s = dict(zip(bm25.ids, bm25.scores("grab cup").tolist()))
    assert bm25.top("grab cup", 6) == ranked(s)[:6] and bm25.top("grab cup", 6)[:3] == ["c", "b", "a"]
    assert bm25.top("grab cup", 2) == ["c", "b"]
    assert list(bm25.top_sparse("grab cup", 5)) == ranked(s)[:5]
    assert bm25.top("nothing", 3) == ["f", "e", "d"]
