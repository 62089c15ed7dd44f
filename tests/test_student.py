"""jepa.py and student.py: (5)-(7), exact factorised scoring, frozen backbone, the document cache."""
import pytest
import torch

from jepa import Predictor, naive_scores
from losses import total_loss
from student import StaleCacheError, Student, encode_corpus
from teacher import Teacher
from conftest import make_lm


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


def test_factorised_equals_naive_values_and_grads():
    """Factorised scores equal per-pair predictor + full head, and so do their gradients w.r.t. the predictor."""
    torch.manual_seed(0)
    H, V, P = 16, 30, 8
    p = _trained_like(Predictor(H, P).double())
    head = torch.randn(V, H, dtype=torch.float64)
    hq, hd = torch.randn(3, H, dtype=torch.float64), torch.randn(7, H, dtype=torch.float64)
    u = head[4] - head[9]
    fast = p.scores(hq, p.doc_side(hd), u, max_elems=3 * 2 * P)  # forces several chunks
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


def test_only_predictor_gets_gradients(tiny):
    """Backpropagating (10) through a student forward gives gradients to the predictor and nothing else."""
    lm, tok = tiny
    s = Student(Teacher(lm, tok), width=8)
    _trained_like(s.predictor)
    hq, hd = s.encode_queries(["walk", "help"]), s.encode_docs(["find mouse", "grab cup"])
    h_hat, z, _ = s.forward(hq, hd)
    loss, _ = total_loss(h_hat, torch.randn_like(h_hat), z, torch.randn_like(z), lmbda=1.0)
    loss.backward()
    assert all(p.grad is not None for p in s.predictor.parameters())
    assert all(p.grad is None and not p.requires_grad for p in lm.parameters())


def test_score_all_equals_forward(tiny):
    """Student.score_all (factorised) equals s_S from Student.forward pair by pair."""
    lm, tok = tiny
    s = Student(Teacher(lm, tok), width=8)
    _trained_like(s.predictor)
    hq, hd = s.encode_queries(["walk", "help me"]), s.encode_docs(["find mouse", "grab cup", "sit"])
    all_ = s.score_all(hq, hd)
    with torch.no_grad():
        for i in range(2):
            _, _, ss = s.forward(hq[i].expand(3, -1), hd)
            assert torch.allclose(all_[i], ss, atol=1e-4)


def test_doc_cache_round_trip_resume_and_stale(tiny, tmp_path, monkeypatch):
    """The cache returns the same h_d, resumes from complete shards, and refuses a changed model."""
    import student as S
    monkeypatch.setattr(S, "SHARD", 2)
    lm, tok = tiny
    s = Student(Teacher(lm, tok), width=8)
    ids, texts = ["a", "b", "c", "d", "e"], ["walk", "find mouse", "grab cup", "sit on chair", "drink water"]
    h1 = encode_corpus(s, ids, texts, tmp_path / "c")
    assert torch.allclose(h1, s.encode_docs(texts), atol=1e-6)
    (tmp_path / "c" / "shard-00002.safetensors").unlink()  # as if killed before the last shard
    calls = []
    orig = s.encode_docs
    s.encode_docs = lambda t, desc="": calls.append(len(t)) or orig(t)  # noqa: E731
    h2 = encode_corpus(s, ids, texts, tmp_path / "c")
    assert torch.equal(h1, h2) and calls == [1]
    other = Student(Teacher(make_lm(tok, seed=3), tok), width=8)
    with pytest.raises(StaleCacheError, match="model_fingerprint"):
        encode_corpus(other, ids, texts, tmp_path / "c")
