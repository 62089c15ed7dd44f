"""teacher.py on a tiny random Llama: equations (1)-(4), batching, prompt order, training and checkpoints."""
import json
from contextlib import nullcontext

import pytest
import torch

from runtime import checkpoints
from runtime import parallel
import teacher as T
from runtime import training
from conftest import killed_after, make_lm, make_tokenizer, patch_llm


def test_score_equals_log_softmax_by_hand(tiny):
    """(3) s_T = log_softmax(z)[yes] - log_softmax(z)[no], z the plain forward's logits at the last position."""
    lm, tok = tiny
    t = T.Teacher(lm, tok)
    q, d = "i feel sad", "ask a question"
    ids = torch.tensor([t.prompt.teacher(q, d)])
    with torch.no_grad():
        z = lm(input_ids=ids).logits[0, -1]
    lp = torch.log_softmax(z.double(), -1)
    want = (lp[t.y_pos] - lp[t.y_neg]).item()
    assert t.score([q], [d]).item() == pytest.approx(want, abs=1e-5)
    h = t.encode_pairs([q], [d])
    assert torch.allclose(t.logits(h)[0], z, atol=1e-5)  # (2) z_T = W h_T


def test_batched_equals_one_by_one(tiny):
    """Right-padded batches of mixed lengths give the same scores as scoring each pair alone."""
    lm, tok = tiny
    t = T.Teacher(lm, tok, batch_size=3)
    qs = ["i feel sad", "how do you write an email to my office", "walk", "what is this cup of water", "help"]
    ds = ["ask a question", "share", "walk to computer and sit on the chair", "drink water", "suggest help"]
    batched = t.score(qs, ds)
    alone = torch.stack([t.score([q], [d])[0] for q, d in zip(qs, ds)])
    assert torch.allclose(batched, alone, atol=1e-5)


def test_prompt_order_and_truncation(tiny):
    """The document comes before the query; only the document is cut to max_doc_tokens; (5) and (6) are exact
    sub-sequences of the teacher prompt."""
    _, tok = tiny
    p = T.Prompt(tok, max_doc_tokens=4)
    q, d = "how you write an email", "walk to the office and sit on the chair"
    ids = p.teacher(q, d)
    dq, qq = p.doc(d), p.query(q)
    text = tok.decode(ids)
    assert text.index("walk") < text.index("how") and len(dq) == 4 and "chair" not in text
    assert tok.decode(qq).split() == q.split()  # query intact
    assert ids[:len(p.doc_prefix(d))] == p.doc_prefix(d)
    assert p.query_only(q) == p.pre_q + qq + p.post_q and p.post_q == p.post  # same last position as (1)
    assert "Document" not in tok.decode(p.pre_q) and "Document" in tok.decode(p.pre)


def test_answer_tokens_checked():
    """A tokenizer where 'yes' is not a single token is refused with the model named."""
    tok = make_tokenizer()
    class Split:
        name_or_path = "toy"
        def __call__(self, text, add_special_tokens=False):
            return tok("yes no" if text == "yes" else text, add_special_tokens=False)
    with pytest.raises(ValueError, match="model toy: answer word 'yes' is 2 tokens"):
        T.answer_ids(Split())


def _toy_data():
    from data import Retrieval
    corpus = {f"d{i}": {"title": "", "text": t} for i, t in enumerate(
        ["walk to computer", "find mouse", "grab cup", "drink water", "sit on chair", "open sink"])}
    queries = {f"q{i}": f"task {i} write an email steps done so far walk to computer" for i in range(12)}
    qrels = {f"q{i}": {f"d{i % 6}": 1} for i in range(12)}
    return Retrieval("toy", corpus, {"train": queries, "test": dict(queries)}, {"train": qrels, "test": dict(qrels)})


def test_training_lowers_loss_and_checkpoint_round_trip(tmp_path, monkeypatch):
    """A few SFT steps (4) lower the loss; saving and loading the trained tensors gives identical scores; a
    checkpoint on another base model is refused."""
    from runtime.metrics import BM25
    tok = make_tokenizer()
    lm = make_lm(tok)
    t = T.Teacher(lm, tok, batch_size=8)
    d = _toy_data()
    cfg = T.TrainConfig(bench="toy", train_layers=1, lr=3e-3, epochs=6, batch_size=6, warmup=0.0, neg_bm25=1,
                        neg_random=1, neg_frequent=0,
                        max_train_queries=0, quiet=True, output_dir=str(tmp_path))
    hist = T.train(t, d, "train", cfg, BM25({k: d.doc_text(k) for k in d.corpus}))
    first, last = sum(hist["losses"][:3]) / 3, sum(hist["losses"][-3:]) / 3
    assert last < first
    from runtime.llm import fingerprint
    base_fp = fingerprint(make_lm(tok))
    path, _ = checkpoints.save_teacher(t, tmp_path, cfg, base_fp, {"step": hist["steps"]})
    qs, ds = ["task 1 write"] * 3, ["walk to computer", "find mouse", "grab cup"]
    patch_llm(monkeypatch, lambda *a, **k: (make_lm(tok), tok))
    loaded, meta = T.load_teacher(tmp_path)
    assert torch.equal(loaded.score(qs, ds), t.score(qs, ds)) and meta["step"] == hist["steps"]
    patch_llm(monkeypatch, lambda *a, **k: (make_lm(tok, seed=1), tok))
    with pytest.raises(ValueError, match="base_fingerprint"):
        T.load_teacher(path)


def test_dev_curve_every_n_steps(tmp_path):
    """--dev-every N: the dev metric after every N optimiser steps, each point in dev_curve.json as it is measured
    (pairs seen, loss, R@1, MRR@10 over the whole pool when --rerank-k covers it); the last point equals the trained
    teacher's dev metric, and a resumed run keeps the points measured before."""
    from runtime.metrics import BM25
    from runtime.training import DevSet
    tok = make_tokenizer()
    t = T.Teacher(make_lm(tok), tok, batch_size=8)
    d = _toy_data()
    d.queries["dev"], d.qrels["dev"] = dict(d.queries["test"]), dict(d.qrels["test"])
    cfg = T.TrainConfig(bench="toy", train_layers=1, lr=3e-3, epochs=2, batch_size=4, warmup=0.0, neg_bm25=1,
                        neg_random=1, neg_frequent=0, max_train_queries=0, quiet=True, output_dir=str(tmp_path),
                        dev_every=2, rerank_k=len(d.corpus))
    bm25 = BM25({k: d.doc_text(k) for k in d.corpus})
    dev = DevSet(t, d, "dev", bm25, cfg, 1, "train")
    hist = T.train(t, d, "train", cfg, bm25, dev=dev)
    saved = json.loads((tmp_path / "dev_curve.json").read_text())
    assert saved["points"] == hist["curve"] and saved["protocol"].startswith("C(q) = all")
    steps = [p["step"] for p in hist["curve"]]
    assert steps == list(range(2, hist["steps"] + 1, 2)) and steps[-1] == hist["steps"]
    assert len({p["pairs_seen"] / p["step"] for p in hist["curve"]}) == 1 and hist["curve"][0]["pairs_seen"] > 0
    after = dev.metric(t, "dev")
    assert (hist["curve"][-1]["R@1"], hist["curve"][-1]["MRR@10"]) == (after["R@1"], after["MRR@10"])

    class Killed:  # a resumed run after 3 steps keeps the points up to step 3
        losses = [1.0] * 3
    assert DevSet.points_before(Killed, tmp_path / "dev_curve.json") == hist["curve"][:1]


def test_prefix_cache_equals_uncached(tiny):
    """Scores with the shared template prefix encoded once (key/value cache) equal the plain full forward."""
    lm, tok = tiny
    qs = ["i feel sad", "how you write an email to my office", "walk"]
    ds = ["ask a question", "share", "walk to computer and sit on the chair"]
    cached, plain = T.Teacher(lm, tok, batch_size=2), T.Teacher(lm, tok, batch_size=2, prefix_cache=False)
    assert cached.prefix_len > 0 and plain.prefix_len == 0
    assert torch.allclose(cached.encode_pairs(qs, ds), plain.encode_pairs(qs, ds), atol=1e-5)
    # a document met by >= batch_size queries reuses its whole prefix (template head + document)
    qs2, ds2 = qs + ["what is this cup", "help you"], ["share"] * 4 + ["drink water"]
    assert torch.allclose(cached.encode_pairs(qs2, ds2), plain.encode_pairs(qs2, ds2), atol=1e-5)


def test_bf16_autocast_score_does_not_depend_on_the_batch(tiny):
    """Under --dtype bf16-autocast a pair's s_T (3) is one number whatever its call: alone, batched with others of
    other lengths, through the template-head cache, through a shared document prefix, or by the dev metric's frozen
    bottom: each equal to float32's within float32 rounding (bfloat16 rounding, which follows the batch's shapes,
    moved it by up to 0.45 on a trained teacher)."""
    from runtime import llm
    lm, tok = tiny
    fast = make_lm(tok)
    fast.load_state_dict(lm.state_dict())
    llm.bf16_autocast(fast)
    qs = ["i feel sad", "how you write an email to my office", "walk", "what is this cup", "help you"]
    ds = ["share", "share", "share", "walk to computer and sit on the chair", "drink water"]
    want = T.Teacher(lm, tok, batch_size=8, prefix_cache=False).score(qs, ds)
    for kw in ({"batch_size": 8}, {"batch_size": 2}, {"batch_size": 3, "prefix_cache": False}):
        t = T.Teacher(fast, tok, **kw)
        alone = torch.cat([t.score([q], [d]) for q, d in zip(qs, ds)])
        assert torch.allclose(t.score(qs, ds), want, atol=1e-5) and torch.allclose(alone, want, atol=1e-5), kw
    seqs = [t.prompt.teacher(q, d) for q, d in zip(qs, ds)]  # the dev metric's path (training.DevSet, in `exact`)
    with llm.exact(), torch.inference_mode():
        h = llm.top_last(fast, llm.trunk_states(fast, seqs, 1, 2, tok.pad_token_id), 1)
    assert torch.allclose(h @ t.u, want, atol=1e-5)


def test_frozen_bottom_states_equal_full_forward(tiny):
    """--train-layers N: top blocks run on stored bottom states (llm.trunk_states + llm.top_last) give the same
    last-position states as the full forward, and the same gradients for the trained top block."""
    from runtime.llm import forward_last, top_last, trunk_states
    tok = make_tokenizer()
    lm = make_lm(tok, layers=3)
    prompt = T.Prompt(tok)
    seqs = [prompt.teacher(q, d) for q, d in [("i feel sad", "ask a question"), ("walk", "walk to computer and sit"),
                                              ("how you write an email to my office", "share")]]
    assert training.split_point(lm, 1) == 2 and training.split_point(lm, 0) == 0
    states = trunk_states(lm, seqs, 2, batch_size=2, pad_id=tok.pad_token_id)
    assert [len(s) for s in states] == [len(s) for s in seqs]
    top = lm.model.layers[2]
    top.requires_grad_(True)
    h_split = top_last(lm, states, 2)
    g_split = torch.autograd.grad(h_split.square().sum(), list(top.parameters()))
    h_full = forward_last(lm, seqs, tok.pad_token_id)
    g_full = torch.autograd.grad(h_full.square().sum(), list(top.parameters()))
    assert torch.allclose(h_split, h_full, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g_split, g_full))
    assert len(lm.model.layers) == 3  # the blocks are put back after each call


def test_task_instruction_in_prompt_and_checkpoint(tmp_path, monkeypatch):
    """--instruction task puts the bench's own question in (1), (5) and (6) alike; the checkpoint keeps it and the
    loaded teacher uses it; a contradicting instruction next to a checkpoint is refused."""
    tok = make_tokenizer()
    assert T.instruction_for("generic", "virtualhome") == T.INSTRUCTION
    task = T.instruction_for("task", "virtualhome")
    assert "next step" in task and T.instruction_for("task", "scifact") == T.RELEVANCE
    assert T.instruction_for("Is it? Answer yes or no.", "x") == "Is it? Answer yes or no."
    lm = make_lm(tok)
    t = T.Teacher(lm, tok, instruction=task)
    generic = T.Teacher(lm, tok).prompt
    assert t.prompt.post != generic.post and t.prompt.post_q == t.prompt.post  # (1) and (5) ask the task's question
    assert t.prompt.pre == generic.pre  # (6): the document prefix comes before the question
    cfg = T.TrainConfig(bench="virtualhome", instruction="task", output_dir=str(tmp_path))
    checkpoints.save_teacher(t, tmp_path, cfg, "fp", {})
    patch_llm(monkeypatch, lambda *a, **k: (make_lm(tok), tok))
    monkeypatch.setattr(checkpoints, "fingerprint", lambda lm: "fp")
    loaded, meta = T.load_teacher(tmp_path)
    assert meta["instruction"] == task and loaded.prompt.instruction == task
    with pytest.raises(ValueError, match="contradicts the checkpoint"):
        T.load_teacher(tmp_path, instruction=T.INSTRUCTION)


def test_full_fine_tune_checkpoint_with_tied_head(tmp_path, monkeypatch):
    """--train-layers 0 saves every weight once (the tied head is the embedding matrix) and loads back to the same
    scores."""
    tok = make_tokenizer()
    lm = make_lm(tok)
    with torch.no_grad():
        lm.model.embed_tokens.weight.mul_(1.5)  # a "trained" full model: the tied head changes with it
    t = T.Teacher(lm, tok)
    cfg = T.TrainConfig(bench="toy", train_layers=0, output_dir=str(tmp_path))
    path, _ = checkpoints.save_teacher(t, tmp_path, cfg, "fp", {})
    from safetensors.torch import load_file
    assert "lm_head.weight" not in load_file(path) and "model.embed_tokens.weight" in load_file(path)
    patch_llm(monkeypatch, lambda *a, **k: (make_lm(tok), tok))
    monkeypatch.setattr(checkpoints, "fingerprint", lambda lm: "fp")
    loaded, _ = T.load_teacher(tmp_path)
    qs, ds = ["task 1 write"] * 2, ["walk to computer", "grab cup"]
    assert torch.allclose(loaded.score(qs, ds), t.score(qs, ds), atol=1e-6)


def test_self_mined_negatives(tmp_path, monkeypatch):
    """--neg-self: the teacher's own best-scored documents among BM25's and the frequent ones' first stage, never a
    gold document nor one already paired with the query, at most N per query, ranked by its score (3)."""
    from runtime.metrics import BM25, ranked
    tok = make_tokenizer()
    t = T.Teacher(make_lm(tok), tok, batch_size=8)
    d = _toy_data()
    cfg = T.TrainConfig(bench="toy", neg_self=2, mine_k=3, max_train_queries=0, quiet=True, listwise=0.0,
                        neg_bm25=1, neg_random=1, neg_frequent=0)
    bm25 = BM25({k: d.doc_text(k) for k in d.corpus})
    pairs = T.sft_pairs(d, "train", cfg, bm25, torch.Generator().manual_seed(0))
    mined = training.mine_negatives(t, d, "train", cfg, bm25, pairs)
    queries, qrels = d.split("train")
    by_text = {txt: q for q, txt in queries.items()}
    counts = training.label_prior(d, "train")
    frequent = sorted(counts, key=lambda x: (-counts[x], x))[:3]
    for q in {p[0] for p in pairs}:
        mine = [doc for qq, doc, label in mined if qq == q]
        assert all(label == 0 for qq, _, label in mined if qq == q) and len(mine) <= 2
        seen = {doc for qq, doc, _ in pairs if qq == q}
        gold = {doc for qid, txt in queries.items() if txt == q for doc in qrels[qid]}
        first = [x for x in dict.fromkeys(bm25.top(q, 3) + frequent) if x not in gold | seen]
        scores = dict(zip(first, t.score([q] * len(first), [d.doc_text(x) for x in first]).tolist()))
        assert mine == ranked(scores)[:2], by_text[q]
    monkeypatch.setattr(parallel, "world", lambda: 2)
    with pytest.raises(ValueError, match="--neg-self runs in one process"):
        T.train_teacher(T.TrainConfig(bench="virtualhome", data_dir=str(tmp_path / "none"), neg_self=1, listwise=0.0,
                                  output_dir=str(tmp_path / "o")))


def test_bf16_training_keeps_fp32_master_weights():
    """SFT (4) of bfloat16 weights at lr 1e-6: AdamW on the bf16 weights themselves leaves almost every weight where
    it was (the update is below bf16's resolution), while the fp32 masters move as a float32 run's weights do and the
    model's weights are their bf16 rounding."""
    from runtime.metrics import BM25
    d = _toy_data()
    bm25 = BM25({k: d.doc_text(k) for k in d.corpus})
    tok = make_tokenizer()
    cfg = T.TrainConfig(bench="toy", train_layers=1, lr=1e-6, epochs=2, batch_size=6, warmup=0.0, neg_bm25=1,
                        neg_random=1, neg_frequent=0,
                        max_train_queries=0, quiet=True)
    runs = {}
    for dtype in (torch.float32, torch.bfloat16):
        lm = make_lm(tok).to(dtype)
        top = lm.model.layers[-1].mlp.down_proj.weight
        before = top.detach().float().clone()
        hist = T.train(T.Teacher(lm, tok, batch_size=6), d, "train", cfg, bm25)
        opt = hist["optimizer"]
        master = opt.master[[p is top for p in opt.params].index(True)]
        runs[dtype] = (before, master.detach().float().clone(), top.detach().clone())
    b32, m32, _ = runs[torch.float32]
    b16, m16, w16 = runs[torch.bfloat16]
    moved32, moved16 = (m32 - b32), (m16 - b16)
    assert moved32.abs().mean() > 1e-6  # two epochs of steps of about lr each
    assert (moved16 - moved32).abs().mean() < 0.2 * moved32.abs().mean()  # the masters move as fp32 weights do
    assert torch.equal(w16, m16.to(torch.bfloat16))  # the model holds the rounded masters
    naive = torch.nn.Parameter(b16.to(torch.bfloat16))  # AdamW stepping the bf16 weights themselves
    plain = torch.optim.AdamW([naive], lr=1e-6)
    for _ in range(4):
        naive.grad = torch.ones_like(naive)
        plain.step()
    assert (naive.detach().float() == b16).float().mean() > 0.9  # most weights do not move at all


def _sft_run(tmp_path, out, kill_at=None, resume=False, dtype=torch.float32):
    """SFT of the top block of a tiny model saving its state every 2 steps; `kill_at`: die after that many steps."""
    from runtime.metrics import BM25
    tok = make_tokenizer()
    lm = make_lm(tok).to(dtype)
    t = T.Teacher(lm, tok, batch_size=4)
    d = _toy_data()
    cfg = T.TrainConfig(bench="toy", train_layers=1, lr=3e-3, epochs=3, batch_size=4, grad_accum=2, warmup=0.2,
                        neg_bm25=1, neg_random=1, neg_frequent=1,
                        max_train_queries=0, quiet=True, save_every=2, output_dir=str(tmp_path / out), resume=resume)
    with killed_after(kill_at) if kill_at else nullcontext():
        hist = T.train(t, d, "train", cfg, BM25({k: d.doc_text(k) for k in d.corpus}))
    return hist["losses"], {k: v.clone() for k, v in lm.state_dict().items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sft_killed_and_resumed_equals_uninterrupted(tmp_path, dtype):
    """SFT killed after step 5 (state saved at step 4) and resumed with --resume ends with the losses and weights of
    an uninterrupted run, fp32 masters and AdamW moments included (bf16 weights too)."""
    losses, weights = _sft_run(tmp_path, "full", dtype=dtype)
    with pytest.raises(KeyboardInterrupt):
        _sft_run(tmp_path, "cut", kill_at=5, dtype=dtype)
    assert (tmp_path / "cut" / training.SFT_STATE / "state.safetensors").exists()
    again, resumed = _sft_run(tmp_path, "cut", resume=True, dtype=dtype)
    assert again == losses and len(losses) == 18  # 12 listwise groups of 4 pairs, 8 per step, 3 epochs
    for k in weights:
        assert torch.equal(resumed[k], weights[k]), k


def test_listwise_loss_by_hand_float64():
    """(4b) -log softmax over a group, gold in column 0, mean over groups; its gradient is softmax - onehot(0) / G."""
    g = torch.Generator().manual_seed(0)
    s = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    want = sum(-(s[i, 0] - torch.log(torch.exp(s[i]).sum())) for i in range(4)) / 4
    got = T.listwise_loss(s)
    assert got.dtype == torch.float64 and torch.allclose(got, want, rtol=0, atol=1e-12)
    got.backward()
    p = torch.exp(s.detach()) / torch.exp(s.detach()).sum(1, keepdim=True)
    p[:, 0] -= 1
    assert torch.allclose(s.grad, p / 4, rtol=0, atol=1e-12)


def test_listwise_groups_train_whole(tmp_path, monkeypatch):
    """--listwise: each gold is followed by its query's negatives (BM25-hard, hubs, random; never a gold), one group
    per gold, fewer negatives where the pool is small; every micro-batch holds whole groups, the gold first (seen by
    the losses' labels); the loss goes down; --neg-self with it is refused."""
    from runtime.metrics import BM25
    tok = make_tokenizer()
    t = T.Teacher(make_lm(tok), tok, batch_size=10)
    d = _toy_data()
    d.qrels["train"]["q0"] = {"d0": 1, "d3": 1}  # two gold documents: two groups
    cfg = T.TrainConfig(bench="toy", listwise=1.0, neg_bm25=1, neg_frequent=1, neg_random=2, train_layers=1,
                        lr=3e-3, epochs=4, batch_size=10, warmup=0.0, max_train_queries=0, quiet=True)
    assert cfg.group_size(d, "train") == 5
    assert T.TrainConfig(bench="toy").group_size(d, "train") == 5  # 8 asked, a pool of 6 with two golds for q0
    bm25 = BM25({k: d.doc_text(k) for k in d.corpus})
    pairs = T.sft_pairs(d, "train", cfg, bm25, torch.Generator().manual_seed(0))
    assert len(pairs) == 13 * 5
    queries, qrels = d.split("train")
    for k in range(0, len(pairs), 5):
        group = pairs[k:k + 5]
        q = group[0][0]
        gold = {doc for qid, txt in queries.items() if txt == q for doc in qrels[qid]}
        assert [lab for _, _, lab in group] == [1, 0, 0, 0, 0] and {x for x, _, _ in group} == {q}
        assert group[0][1] in gold and not {doc for _, doc, _ in group[1:]} & gold
        assert len({doc for _, doc, _ in group}) == 5
    seen = []
    sft_loss = T.sft_loss
    monkeypatch.setattr(T, "sft_loss", lambda z, labels, *a: seen.append(labels.view(-1, 5)) or sft_loss(z, labels, *a))
    hist = T.train(t, d, "train", cfg, bm25)
    assert seen and all((lab == torch.tensor([1, 0, 0, 0, 0])).all() for lab in seen)
    assert sum(hist["losses"][-3:]) < sum(hist["losses"][:3])
    with pytest.raises(ValueError, match="--listwise 0 with --neg-self"):
        T.TrainConfig(bench="toy", neg_self=1)
