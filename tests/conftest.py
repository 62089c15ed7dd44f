"""Shared fixtures: a tiny randomly initialised Llama-style model with a word-level tokenizer (no download)."""
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import teacher  # noqa: E402
from runtime import checkpoints, training  # noqa: E402

torch.set_num_threads(1)  # tiny models: thread start-up costs more than it saves


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test of over ~15 s on 2 CPU cores (deselect with -m 'not slow')")

WORDS = ("Document Query Does Answer user assistant system Task Steps Seeker Supporter yes no document query does the fit answer or a an and to of in on with walk find grab put switch turn "
         "computer chair mouse keyboard email write cup water drink kitchen office sit open close plate sink "
         "task steps done so far none seeker supporter i feel sad lonely ask question share suggest help you "
         "what how why is are it this that my your").split()
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
    vocab = {w: i for i, w in enumerate(specials + WORDS + list("0123456789.,;:?!#-_'\n"))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(),
                                                 pre_tokenizers.Digits(individual_digits=True)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.chat_template = TEMPLATE
    return fast


def make_lm(tok, seed=0, layers=2, hidden=32, arch="llama"):
    """A tiny random causal LM: a Llama with a tied head (SmolLM2's layout), or with arch="qwen2" a Qwen2 (the
    paper's architecture: q/k/v biases, an untied lm_head)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config, model = (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    cfg = config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                 tie_word_embeddings=arch == "llama", pad_token_id=tok.pad_token_id)
    lm = model(cfg).eval().requires_grad_(False)
    lm.name_or_id = f"tiny-random-{arch}"
    return lm


def make_qwen2(tok, seed=0, layers=2, hidden=32):
    """make_lm's tiny random Qwen2 (untied head)."""
    return make_lm(tok, seed, layers, hidden, arch="qwen2")


@contextmanager
def killed_after(steps: int, exc=KeyboardInterrupt):
    """Within the `with`, teacher SFT dies (raises `exc`) right after its optimiser step number `steps`: a kill."""
    orig = training.MasterWeights.step

    def step(self):
        orig(self)
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == steps:
            raise exc("killed")
    training.MasterWeights.step = step
    try:
        yield
    finally:
        training.MasterWeights.step = orig


def patch_llm(monkeypatch, load) -> None:
    """Every place that loads the base LLM (a checkpoint's base model, a new teacher's) loads `load()` instead."""
    monkeypatch.setattr(checkpoints, "load_llm", load)
    monkeypatch.setattr(teacher, "load_llm", load)


@pytest.fixture
def tiny():
    """(lm, tok): a 2-layer random Llama and its word-level tokenizer with a chat template."""
    tok = make_tokenizer()
    return make_lm(tok), tok


def write_virtualhome(root: Path, n_programs: int = 10) -> Path:
    """A VirtualHome-layout folder: executable_programs/<scene>/<dir>/fileN.txt, title, description, steps."""
    folder = root / "dataset" / "programs" / "executable_programs" / "Scene1" / "results"
    folder.mkdir(parents=True)
    objs = ["computer", "chair", "mouse", "keyboard", "cup", "plate", "sink"]
    for p in range(n_programs):
        a, b = objs[p % 7], objs[(p + 3) % 7]
        steps = [f"[WALK] <{a}> (1.{p})", f"[FIND] <{a}> (1.{p})", f"[GRAB] <{b}> (1.2)",
                 f"[PUTBACK] <{b}> (1.2) <{a}> (1.{p})"]
        (folder / f"file{p}_1.txt").write_text(f"Task {p} with {a}\nwalk to the {a} and put the {b} on it\n\n\n"
                                               + "\n".join(steps) + "\n")
    return root / "dataset"


PSYQA_TYPES = ["Approval and Reassurance", "Restatement", "Interpretation", "Direct Guidance", "Self-disclosure",
               "Information", "Others"]


def write_psyqa(folder: Path, n_questions: int = 20, name: str = "PsyQA_example.json") -> Path:
    """A PsyQA file in the official format (github.com/thu-coai/PsyQA): questions with annotated answers (character
    spans with a strategy type), one unannotated answer (has_label false, labels_sequence null) per question."""
    import json
    items = []
    for i in range(n_questions):
        parts = [f"i feel sad {i} .", " what is it like ?", " you can ask a question ."]
        text = "".join(parts)
        spans, start = [], 0
        for k, p in enumerate(parts):
            spans.append({"start": start, "end": start + len(p), "type": PSYQA_TYPES[(i + k) % 7]})
            start += len(p)
        items.append({"question": f"why do i feel lonely {i} ?", "description": "my friends do not help me",
                      "keywords": "emotion,loneliness", "questionID": 4000 + i,
                      "answers": [{"answer_text": text, "has_label": True, "labels_sequence": spans},
                                  {"answer_text": "share it with your friends", "has_label": False,
                                   "labels_sequence": None}]})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(items, ensure_ascii=False, indent=1), encoding="utf-8")
    return folder
