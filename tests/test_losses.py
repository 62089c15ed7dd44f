"""losses.py: equations (8)-(11) against closed forms and hand-written sums."""
import math

import pytest
import torch

from losses import Weights, forward_kl, jepa_loss, listwise_kl, pool_nce, reverse_kl, total_loss


def test_kl_zero_for_identical():
    """KL of a distribution with itself is 0, both directions."""
    z = torch.randn(4, 11)
    assert reverse_kl(z, z.clone()).item() == pytest.approx(0, abs=1e-6)
    assert forward_kl(z, z.clone()).item() == pytest.approx(0, abs=1e-6)


def test_kl_nonnegative_and_matches_hand_sum():
    """Reverse KL >= 0 and equals mean_n sum_v p_S (log p_S - log p_T) written out in float64, with temperature."""
    g = torch.Generator().manual_seed(0)
    for tau in (1.0, 2.0, 0.5):
        zs, zt = torch.randn(5, 13, generator=g, dtype=torch.float64), torch.randn(5, 13, generator=g, dtype=torch.float64)
        ps, pt = torch.softmax(zs / tau, -1), torch.softmax(zt / tau, -1)
        want = (ps * (ps.log() - pt.log())).sum(-1).mean().item()
        got = reverse_kl(zs, zt, tau).item()
        assert got >= 0 and got == pytest.approx(want, rel=1e-10)
        fwd = (pt * (pt.log() - ps.log())).sum(-1).mean().item()
        assert forward_kl(zs, zt, tau).item() == pytest.approx(fwd, rel=1e-10)


def test_reverse_and_forward_differ_by_hand():
    """p_S = (0.9, 0.1), p_T = (0.5, 0.5): KL(p_S||p_T) = 0.9 ln 1.8 + 0.1 ln 0.2 = 0.368064,
    KL(p_T||p_S) = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1) = 0.510826."""
    zs = torch.tensor([[math.log(0.9), math.log(0.1)]], dtype=torch.float64)
    zt = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    assert reverse_kl(zs, zt).item() == pytest.approx(0.9 * math.log(1.8) + 0.1 * math.log(0.2), abs=1e-12)
    assert reverse_kl(zs, zt).item() == pytest.approx(0.368064, abs=1e-6)
    assert forward_kl(zs, zt).item() == pytest.approx(0.510826, abs=1e-6)


def test_answer_support_restricts():
    """support=(i, j) is the KL between the renormalised two-token distributions."""
    zs, zt = torch.randn(3, 9, dtype=torch.float64), torch.randn(3, 9, dtype=torch.float64)
    got = reverse_kl(zs, zt, support=(2, 5))
    assert got.item() == pytest.approx(reverse_kl(zs[:, [2, 5]], zt[:, [2, 5]]).item(), rel=1e-12)


def test_kl_gradcheck():
    """torch.autograd.gradcheck passes for both KLs in float64 (w.r.t. the student logits)."""
    zs = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(3, 7, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: reverse_kl(a, zt, 1.5), (zs,))
    assert torch.autograd.gradcheck(lambda a: forward_kl(a, zt, 0.7), (zs,))


def test_teacher_side_gets_no_gradient():
    """Gradients reach h_hat and the student logits, never h_T or the teacher logits (stop-gradient)."""
    h_hat, h_t = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6, requires_grad=True)
    zs, zt = torch.randn(4, 9, requires_grad=True), torch.randn(4, 9, requires_grad=True)
    loss, parts = total_loss(h_hat, h_t, zs, zt, Weights(lmbda=0.5))
    loss.backward()
    assert h_hat.grad is not None and zs.grad is not None and h_t.grad is None and zt.grad is None
    assert jepa_loss(h_hat, h_t).item() == pytest.approx(((h_hat - h_t) ** 2).mean().item())
    assert parts["total"] == pytest.approx(parts["jepa"] + 0.5 * parts["kl"], rel=1e-6)


def test_ablations_switch_parts_off():
    """A weight of 0 switches its term off: jepa = 0 leaves only the KL, lmbda = 0 only the JEPA loss; kl="forward"
    swaps in the forward KL (the ablation of (9))."""
    h, ht, zs, zt = torch.randn(2, 3), torch.randn(2, 3), torch.randn(2, 5), torch.randn(2, 5)
    assert total_loss(h, ht, zs, zt, Weights(jepa=0))[0].item() == pytest.approx(reverse_kl(zs, zt).item())
    assert total_loss(h, ht, zs, zt, Weights(lmbda=0))[0].item() == pytest.approx(jepa_loss(h, ht).item())
    fwd = total_loss(h, ht, zs, zt, Weights(jepa=0), kl="forward")[0].item()
    assert fwd == pytest.approx(forward_kl(zs, zt).item()) and fwd != pytest.approx(reverse_kl(zs, zt).item())


def test_objective_10_by_hand_float64():
    """(10) = jepa (8) + lmbda (9) + mu (10b) + nu (11), every term written out by hand in float64 and each weighted
    as given; the parts are reported for logging; a term whose weight is 0 contributes nothing."""
    g = torch.Generator().manual_seed(3)
    h, ht = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    zs, zt = torch.randn(4, 5, generator=g, dtype=torch.float64), torch.randn(4, 5, generator=g, dtype=torch.float64)
    s_pool = torch.randn(2, 6, generator=g, dtype=torch.float64)
    target, groups = torch.tensor([1, 4]), torch.tensor([0, 0, 1, 1])
    jepa = sum((a - b) ** 2 for ra, rb in zip(h.tolist(), ht.tolist()) for a, b in zip(ra, rb)) / 12

    def kl(p_logits, q_logits):  # KL(softmax(p) || softmax(q)) of one row, by hand
        zp, zq = sum(math.exp(v) for v in p_logits), sum(math.exp(v) for v in q_logits)
        return sum(math.exp(a) / zp * (a - math.log(zp) - b + math.log(zq)) for a, b in zip(p_logits, q_logits))
    rkl = sum(kl(a, b) for a, b in zip(zs.tolist(), zt.tolist())) / 4
    s_s, s_t = (zs[:, 2] - zs[:, 0]).tolist(), (zt[:, 2] - zt[:, 0]).tolist()
    listwise = (kl(s_s[:2], s_t[:2]) + kl(s_s[2:], s_t[2:])) / 2
    nce = sum(math.log(sum(math.exp(v / 0.5) for v in row)) - row[t] / 0.5
              for row, t in zip(s_pool.tolist(), target.tolist())) / 2
    w = Weights(jepa=1.0, lmbda=0.3, mu=2.0, nu=0.7)
    loss, parts = total_loss(h, ht, zs, zt, w, groups=groups, answer=(2, 0), pool=(s_pool, target, None, 0.5))
    assert loss.item() == pytest.approx(jepa + 0.3 * rkl + 2.0 * listwise + 0.7 * nce, rel=1e-12)
    assert (parts["jepa"], parts["kl"], parts["list"], parts["pool"]) == pytest.approx((jepa, rkl, listwise, nce),
                                                                                         rel=1e-12)
    off = total_loss(h, ht, zs, zt, Weights(jepa=1.0, lmbda=0.3), groups=groups, answer=(2, 0),
                     pool=(s_pool, target, None, 0.5))[0]
    assert off.item() == pytest.approx(jepa + 0.3 * rkl, rel=1e-12)
    with pytest.raises(ValueError, match="needs pool"):
        total_loss(h, ht, zs, zt, Weights(nu=1.0))


def test_listwise_kl_by_hand():
    """(10b): per query, KL(softmax(s_S/tau) || softmax(s_T/tau)) over its documents, written out in float64; a query
    with one document is skipped; the mean is over the remaining queries; only the student side gets a gradient."""
    g = torch.Generator().manual_seed(1)
    s_s = torch.randn(7, generator=g, dtype=torch.float64, requires_grad=True)
    s_t = torch.randn(7, generator=g, dtype=torch.float64, requires_grad=True)
    groups = torch.tensor([2, 0, 2, 0, 0, 5, 2])  # query 5 has one document
    tau = 0.7
    want = 0.0
    for q in (0, 2):
        idx = [i for i in range(7) if groups[i] == q]
        ps = [math.exp(s_s[i].item() / tau) for i in idx]
        pt = [math.exp(s_t[i].item() / tau) for i in idx]
        ps, pt = [x / sum(ps) for x in ps], [x / sum(pt) for x in pt]
        want += sum(a * (math.log(a) - math.log(b)) for a, b in zip(ps, pt)) / 2
    got = listwise_kl(s_s, s_t, groups, tau)
    assert got.item() == pytest.approx(want, rel=1e-10) and got.item() > 0
    got.backward()
    assert s_s.grad is not None and s_t.grad is None
    assert listwise_kl(s_s, s_s.detach(), groups).item() == pytest.approx(0, abs=1e-12)
    assert listwise_kl(s_s, s_t, torch.arange(7)).item() == 0  # no query with two documents


def test_total_loss_listwise_term():
    """mu * (10b) on the scores z[y+] - z[y-] is added to (10); mu = 0 leaves (10) as it was."""
    g = torch.Generator().manual_seed(2)
    h, ht = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    zs, zt = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    groups = torch.tensor([0, 0, 1, 1])
    base, parts0 = total_loss(h, ht, zs, zt, Weights(lmbda=0.5))
    loss, parts = total_loss(h, ht, zs, zt, Weights(lmbda=0.5, mu=2.0), groups=groups, answer=(4, 1))
    lw = listwise_kl(zs[:, 4] - zs[:, 1], zt[:, 4] - zt[:, 1], groups)
    assert parts0["list"] == 0 and parts["list"] == pytest.approx(lw.item())
    assert loss.item() == pytest.approx(base.item() + 2.0 * lw.item(), rel=1e-6)
    with pytest.raises(ValueError, match="needs groups"):
        total_loss(h, ht, zs, zt, Weights(mu=1.0))


def test_pool_nce_by_hand_float64():
    """(11) = mean_q [log sum_{d in D(q)} exp(s(q, d) / tau) - s(q, d+) / tau], written out in float64; an excluded
    document (another gold of the query) leaves the sum, the target itself never does; gradients reach the scores."""
    s = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.3, 0.3, 1.2, -0.4]], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 2])
    for tau in (1.0, 0.5):
        want = sum(math.log(sum(math.exp(v / tau) for v in row)) - row[t] / tau
                   for row, t in zip(s.tolist(), target.tolist())) / 2
        assert pool_nce(s, target, tau=tau).item() == pytest.approx(want, rel=1e-12)
    exclude = torch.tensor([[True, False, True, False], [False, False, True, False]])  # q1: doc 2 is gold too
    row0 = [2.0, 0.5, 0.0]  # doc 2 of q1 excluded; q1's target (doc 0) is kept although marked
    row1 = [0.3, 0.3, 1.2, -0.4]
    want = (math.log(sum(math.exp(v) for v in row0)) - 2.0 + math.log(sum(math.exp(v) for v in row1)) - 1.2) / 2
    loss = pool_nce(s, target, exclude)
    assert loss.item() == pytest.approx(want, rel=1e-12)
    loss.backward()
    assert s.grad[0, 2] == 0 and s.grad[0, 0] < 0 and s.grad[1, 2] < 0  # the gold is pushed up, excluded untouched
    assert torch.autograd.gradcheck(lambda x: pool_nce(x, target, exclude, 0.7), (s.detach().requires_grad_(),))


def test_sft_loss_by_hand_float64():
    """(4) written out: for each pair, -log softmax(z)[target] with target y+ for label 1 and y- for label 0, summed in
    float64 by hand (log-sum-exp over the whole vocabulary), then the mean over the batch."""
    import teacher as T
    g = torch.Generator().manual_seed(3)
    z = torch.randn(4, 7, generator=g, dtype=torch.float64)
    labels = torch.tensor([1, 0, 0, 1])
    y_pos, y_neg = 5, 2
    total = 0.0
    for row, label in zip(z.tolist(), labels.tolist()):
        m = max(row)
        log_norm = m + math.log(sum(math.exp(v - m) for v in row))
        total += log_norm - row[y_pos if label else y_neg]
    assert T.sft_loss(z, labels, y_pos, y_neg).item() == pytest.approx(total / 4, rel=1e-6)
    same = torch.zeros(1, 7)  # a uniform distribution: log V whatever the label
    assert T.sft_loss(same, torch.tensor([1]), y_pos, y_neg).item() == pytest.approx(math.log(7), rel=1e-6)


def test_predictor_by_hand_float64():
    """(7) written out with plain loops, not through Predictor.forward: h_hat_j = h_q_j + b2_j + sum_p W2_jp
    act(sum_i A_pi h_q_i + b1_p + sum_i B_pi h_d_i), for ReLU and GELU (erf form), and the factorised score
    s_S = u . h_hat of `Predictor.scores`."""
    from jepa import Predictor
    torch.manual_seed(0)
    acts = {"relu": lambda x: max(x, 0.0), "gelu": lambda x: 0.5 * x * (1 + math.erf(x / math.sqrt(2)))}
    for name, act in acts.items():
        p = Predictor(3, 2, name).double()
        torch.nn.init.normal_(p.W2.weight)
        torch.nn.init.normal_(p.W2.bias)
        h_q, h_d, u = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64), torch.randn(3).double()
        A, b1, B = p.A.weight.tolist(), p.A.bias.tolist(), p.B.weight.tolist()
        W2, b2 = p.W2.weight.tolist(), p.W2.bias.tolist()
        hidden = [act(sum(A[k][i] * h_q[i].item() + B[k][i] * h_d[i].item() for i in range(3)) + b1[k])
                  for k in range(2)]
        want = [h_q[j].item() + b2[j] + sum(W2[j][k] * hidden[k] for k in range(2)) for j in range(3)]
        with torch.no_grad():
            got = p(h_q[None], h_d[None])[0].tolist()
            score = p.scores(h_q[None], p.doc_side(h_d[None]), u)[0, 0].item()
        assert got == pytest.approx(want, rel=1e-12, abs=1e-12)
        assert score == pytest.approx(sum(uj * hj for uj, hj in zip(u.tolist(), want)), rel=1e-9)
