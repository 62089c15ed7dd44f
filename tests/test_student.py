"""jepa.py and student.py: (5)-(7), exact factorised scoring, frozen backbone, the document cache."""
import pytest
import torch

from conftest import make_lm
from runtime.index import Index, StaleCacheError, cache_key, encode_corpus
from jepa import ACTS, Predictor, naive_scores
from losses import Weights, total_loss
from student import Student
from teacher import Teacher


def _trained_like(p: Predictor, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in p.parameters():
            t.copy_(torch.randn(t.shape, generator=g) * 0.3)
    return p


def test_identity_at_init():
    """h_hat == h_q exactly before training."""
    p = Predictor(16, 8)
    hq, hd = torch.randn(5, 16), torch.randn(5, 16)
    assert torch.equal(p(hq, hd), hq)


def test_standardized_inputs():
    """(7b): after `standardize`, A and B read (h - mean) / std of the given queries and documents (each input
    dimension of the queries' A h_q has mean 0 and std 1 before A), by hand; a checkpoint made before (7b), with no
    shift / scale buffers, loads as the identity."""
    torch.manual_seed(0)
    p = _trained_like(Predictor(16, 8).double())
    hq = torch.randn(40, 16, dtype=torch.float64) * torch.linspace(0.1, 30, 16, dtype=torch.float64) + 5
    hd = torch.randn(50, 16, dtype=torch.float64) * 4 - 2
    p.standardize(hq, hd)
    zq, zd = (hq - hq.mean(0)) / hq.std(0, unbiased=False), (hd - hd.mean(0)) / hd.std(0, unbiased=False)
    assert torch.allclose(p.q_in(hq).mean(0), torch.zeros(16, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(p.q_in(hq).std(0, unbiased=False), torch.ones(16, dtype=torch.float64))
    by_hand = hq[:5] + p.W2(torch.relu(p.A(zq[:5]) + p.B(zd[:5])))
    assert torch.allclose(p(hq[:5], hd[:5]), by_hand, atol=1e-12)
    old = {k: v for k, v in p.state_dict().items() if not k.startswith(("q_", "d_"))}
    fresh = Predictor(16, 8).double()
    fresh.load_state_dict(old)
    assert torch.allclose(fresh(hq[:5], hd[:5]), hq[:5] + p.W2(torch.relu(p.A(hq[:5]) + p.B(hd[:5]))))
    other = Predictor(16, 8).double()
    other.load_state_dict(p.state_dict())  # the buffers travel with the checkpoint
    assert torch.equal(other(hq[:5], hd[:5]), p(hq[:5], hd[:5]))


@pytest.mark.parametrize("standardized", [False, True])
@pytest.mark.parametrize("act", list(ACTS))
def test_factorised_equals_naive_values_and_grads(act, standardized):
    """Factorised scores equal per-pair predictor + full head, and so do their gradients w.r.t. the predictor, for
    every activation, with and without the standardised inputs (7b)."""
    torch.manual_seed(0)
    H, V, P = 16, 30, 8
    p = _trained_like(Predictor(H, P, act).double())
    if standardized:
        p.standardize(torch.randn(20, H, dtype=torch.float64) * 5 + 3, torch.randn(20, H, dtype=torch.float64) - 1)
    head = torch.randn(V, H, dtype=torch.float64)
    hq, hd = torch.randn(3, H, dtype=torch.float64), torch.randn(7, H, dtype=torch.float64)
    u = head[4] - head[9]
    fast = p.scores(hq, p.doc_side(hd), u, block_bytes=4 * 3 * 2 * P)  # forces several blocks
    slow = naive_scores(p, hq, hd, head, 4, 9)
    assert torch.allclose(fast, slow, atol=1e-10)
    w = torch.randn(3, 7, dtype=torch.float64)
    g_fast = torch.autograd.grad((fast * w).sum(), list(p.parameters()))
    fast2 = p.scores(hq, p.doc_side(hd), u)
    g_slow = torch.autograd.grad((naive_scores(p, hq, hd, head, 4, 9) * w).sum(), list(p.parameters()))
    assert torch.allclose(fast2, fast)
    for a, b in zip(g_fast, g_slow):
        assert torch.allclose(a, b, atol=1e-10)


def test_student_encodings_match_plain_transformers(tiny):
    """(5)/(6) h_q and h_d equal the plain transformers forward's last hidden state; the student shares the module."""
    lm, tok = tiny
    s = Student(Teacher(lm, tok), width=8)
    assert s.lm is lm
    q, d = "how do you write an email", "walk to computer"
    with torch.no_grad():
        want_q = lm(input_ids=torch.tensor([s.prompt.query_only(q)]), output_hidden_states=True).hidden_states[-1][0, -1]
        want_d = lm(input_ids=torch.tensor([s.prompt.doc_prefix(d)]), output_hidden_states=True).hidden_states[-1][0, -1]
    assert torch.allclose(s.encode_queries([q])[0], want_q, atol=1e-5)
    assert torch.allclose(s.encode_docs([d])[0], want_d, atol=1e-5)


def test_mean_reading_by_hand(tiny):
    """(6m) --reading mean: h_q and h_d are the means of the plain forward's last hidden states over the query's /
    document's own tokens (the template around them left out), batched with other lengths and with the shared
    prefix cached; an empty document falls back to its last token; the cache key and the cache folder's tag differ
    from the last-token reading's, whose key is the one it had before (6m)."""
    lm, tok = tiny
    s = Student(Teacher(lm, tok, batch_size=3), width=8, reading="mean")
    qs, ds = ["how do you write an email", "help"], ["walk to computer", "grab the red cup and sit down", ""]
    p = s.prompt

    def states(seq):
        with torch.no_grad():
            return lm(input_ids=torch.tensor([seq]), output_hidden_states=True).hidden_states[-1][0]
    for q, got in zip(qs, s.encode_queries(qs)):
        seq = p.query_only(q)
        assert torch.allclose(got, states(seq)[len(p.pre_q):len(seq) - len(p.post_q)].mean(0), atol=1e-5)
    got = s.encode_docs(ds)
    for d, g in zip(ds[:2], got):
        assert torch.allclose(g, states(p.doc_prefix(d))[len(p.pre):].mean(0), atol=1e-5)
    assert torch.allclose(got[2], states(p.doc_prefix(""))[-1], atol=1e-5)
    last = Student(s.teacher, width=8)
    key = cache_key(s, ["a"], ["x"], "docs")
    assert key.pop("reading") == "mean" and key == cache_key(last, ["a"], ["x"], "docs") and "reading" not in key
    assert (s.tag, last.tag) == ("-mean", "")
    with pytest.raises(ValueError, match="reading 'max'"):
        Student(s.teacher, reading="max")


@pytest.mark.parametrize("standardized", [False, True])
def test_similarity_init_by_hand(standardized):
    """(7c): s_S(q, d) = u . h_q - |M (x_q - x_d)|_1, x the inputs as A and B read them, M = the first P/2 rows of
    A; the factorised scorer gives what the per-pair predictor + head give; ReLU and an even width required."""
    torch.manual_seed(0)
    H, V, P = 12, 20, 8
    p = Predictor(H, P).double()
    if standardized:
        p.standardize(torch.randn(30, H, dtype=torch.float64) * 4 + 1, torch.randn(30, H, dtype=torch.float64) - 2)
    head = torch.randn(V, H, dtype=torch.float64)
    u = head[3] - head[5]
    p.similarity_init(u, seed=1)
    hq, hd = torch.randn(3, H, dtype=torch.float64), torch.randn(5, H, dtype=torch.float64)
    m = p.A.weight[:P // 2]
    assert torch.equal(p.A.weight[P // 2:], -m) and torch.equal(p.B.weight, -p.A.weight)
    with torch.no_grad():
        want = (hq @ u)[:, None] - (p.q_in(hq)[:, None] - p.d_in(hd)[None]).matmul(m.T).abs().sum(-1)
        assert torch.allclose(p.scores(hq, p.doc_side(hd), u), want, atol=1e-10)
        assert torch.allclose(naive_scores(p, hq, hd, head, 3, 5), want, atol=1e-10)
    for bad in (Predictor(H, P, "gelu"), Predictor(H, 7)):
        with pytest.raises(ValueError, match="similarity init"):
            bad.similarity_init(u)


def test_only_predictor_gets_gradients(tiny):
    """Backpropagating (10) through a student forward gives gradients to the predictor and nothing else."""
    lm, tok = tiny
    s = Student(Teacher(lm, tok), width=8)
    _trained_like(s.predictor)
    hq, hd = s.encode_queries(["walk", "help"]), s.encode_docs(["find mouse", "grab cup"])
    h_hat, z, _ = s.forward(hq, hd)
    loss, _ = total_loss(h_hat, torch.randn_like(h_hat), z, torch.randn_like(z), Weights())
    loss.backward()
    assert all(p.grad is not None for p in s.predictor.parameters())
    assert all(p.grad is None and not p.requires_grad for p in lm.parameters())


def _score_all(s, h_q, h_d):
    """Exact factorised s_S (7) of every query x document: a float32 index of h_d, scored."""
    return Index.from_h_d(s, [str(i) for i in range(h_d.shape[0])], h_d, "float32").scores(s, h_q)


def test_index_scores_equal_forward(tiny):
    """The factorised scores of a float32 index equal s_S from Student.forward pair by pair."""
    lm, tok = tiny
    s = Student(Teacher(lm, tok), width=8)
    _trained_like(s.predictor)
    hq, hd = s.encode_queries(["walk", "help me"]), s.encode_docs(["find mouse", "grab cup", "sit"])
    all_ = _score_all(s, hq, hd)
    with torch.no_grad():
        for i in range(2):
            _, _, ss = s.forward(hq[i].expand(3, -1), hd)
            assert torch.allclose(all_[i], ss, atol=1e-4)


def test_doc_cache_round_trip_resume_and_stale(tiny, tmp_path, monkeypatch):
    """The cache returns h_d in float16 (within its rounding of the float32 encodings), memory-mapped from one
    joined file; a run killed while encoding resumes after its last finished shard; a changed model is refused."""
    from runtime import index as IX
    monkeypatch.setattr(IX, "SHARD", 2)
    lm, tok = tiny
    s = Student(Teacher(lm, tok), width=8)
    ids, texts = ["a", "b", "c", "d", "e"], ["walk", "find mouse", "grab cup", "sit on chair", "drink water"]
    ref = s.encode_docs(texts)
    calls = []
    orig = s.encode_docs

    def dies(t, desc=""):
        calls.append(len(t))
        if len(calls) == 3:
            raise KeyboardInterrupt("killed before the last shard")
        return orig(t)
    s.encode_docs = dies
    with pytest.raises(KeyboardInterrupt):
        encode_corpus(s, ids, texts, tmp_path / "c")
    assert sorted(p.name for p in (tmp_path / "c").glob("shard-*.safetensors")) == ["shard-00000.safetensors",
                                                                                    "shard-00001.safetensors"]
    calls.clear()
    s.encode_docs = lambda t, desc="": calls.append(len(t)) or orig(t)  # noqa: E731
    h = encode_corpus(s, ids, texts, tmp_path / "c")
    assert calls == [1] and h.dtype == torch.float16 and not list((tmp_path / "c").glob("shard-*"))
    assert torch.allclose(h.float(), ref, atol=2e-3, rtol=1e-3) and torch.equal(h, ref.half())
    assert (tmp_path / "c" / "encodings.f16").stat().st_size == 5 * lm.config.hidden_size * 2
    assert torch.equal(encode_corpus(s, ids, texts, tmp_path / "c"), h) and calls == [1]  # read back, not encoded
    other = Student(Teacher(make_lm(tok, seed=3), tok), width=8)
    with pytest.raises(StaleCacheError, match="model_fingerprint"):
        encode_corpus(other, ids, texts, tmp_path / "c")


@pytest.mark.parametrize("act", list(ACTS))
def test_blocked_scoring_equals_naive_fp32_and_fp16(act):
    """The blocked in-place scorer (no autograd) equals the naive per-pair predictor + head for every activation:
    float32 within 1e-5, float16 B h_d within 1e-3 of the score range, with the same top-10 order in float32."""
    torch.manual_seed(0)
    p = Predictor(16, 8, act)
    with torch.no_grad():
        p.W2.weight.normal_(0, 0.3)
        p.W2.bias.normal_(0, 0.3)
    h_q, h_d = torch.randn(3, 16), torch.randn(500, 16)
    head, y_pos, y_neg = torch.randn(11, 16), 4, 7
    ref = naive_scores(p, h_q, h_d, head, y_pos, y_neg)
    u = head[y_pos] - head[y_neg]
    with torch.no_grad():
        side = p.doc_side(h_d)
        for block in (4 * 3 * 8 * 7, 1 << 20):  # 7 documents per block (a ragged last block), and one block
            fast = p.scores(h_q, side, u, block_bytes=block)
            assert torch.allclose(fast, ref, atol=1e-5)
            assert torch.equal(fast.topk(10).indices, ref.topk(10).indices)
        half = p.scores(h_q, side.half(), u)
    assert (half - ref).abs().max() <= 1e-3 * (ref.max() - ref.min())


def test_index_build_load_search_and_refusals(tiny, tmp_path):
    """An index saved and loaded scores like the student's float32 scoring (float16 tolerance); search returns the
    top k ids; an index made by another student, an empty index and an unknown first-stage id are refused."""
    lm, tok = tiny
    s = Student(Teacher(lm, tok), width=8)
    with torch.no_grad():
        s.predictor.W2.weight.normal_(0, 0.5)
    corpus = {f"d{i}": {"title": "", "text": t} for i, t in enumerate(
        ["walk to the kitchen", "find the cup", "grab the mouse", "sit on the chair", "drink water", "open the sink"])}
    Index.build(s, corpus, tmp_path / "ix")
    index = Index.load(tmp_path / "ix", s)
    assert index.ids == list(corpus) and index.doc_side.dtype == torch.float16
    h_q = s.encode_queries(["what is this cup", "how you sit"])
    exact = _score_all(s, h_q, s.encode_docs([c["text"] for c in corpus.values()]))
    got = index.scores(s, h_q)
    assert (got - exact).abs().max() <= 1e-3 * (exact.max() - exact.min())
    hits = index.search(s, ["what is this cup"], k=3)
    assert [d for d, _ in hits[0]] == [list(corpus)[j] for j in exact[0].topk(3).indices.tolist()]
    assert index.search(s, ["what is this cup"], k=2, candidates=[["d4", "d1"]])[0][0][0] in ("d4", "d1")
    with pytest.raises(KeyError, match="unknown document id 'nope'"):
        index.search(s, ["cup"], candidates=[["d1", "nope"]])
    other = Student(Teacher(lm, tok), width=8)  # same teacher, another (untrained) predictor
    with pytest.raises(ValueError, match="made by another student"):
        Index.load(tmp_path / "ix", other)
    with pytest.raises(ValueError, match="holds no document"):
        Index([], torch.empty(0, 8), {}).search(s, ["cup"])


def test_compiled_scorer_equals_blocked():
    """Predictor.compiled scores through torch.compile's fused kernel: the blocked scorer's numbers within float32
    rounding, for one and several queries and any number of documents; one kernel serves every corpus size and
    batch size (one more for a single query), never one per shape."""
    torch.manual_seed(0)
    p = Predictor(16, 8)
    with torch.no_grad():
        p.W2.weight.normal_(0, 0.3)
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    side, u = torch.randn(5000, 8).half(), torch.randn(16)
    for b, n in [(3, 5000), (3, 4100), (5, 700), (64, 2), (1, 5000), (1, 37)]:
        h_q = torch.randn(b, 16)
        with torch.no_grad():
            p.compiled = False
            ref = p.scores(h_q, side[:n], u)
            p.compiled = True
            got = p.scores(h_q, side[:n], u)
        assert got.shape == (b, n) and torch.allclose(got, ref, atol=1e-4)
    assert counters["stats"]["unique_graphs"] == 2
