"""The teacher: an LLM generative reranker that reads the document first, then the query, and scores relevance by the
log-probabilities of "yes" / "no" (METHOD.md equations (1)-(4); the paper's teacher is LaHoRe, arXiv 2412.16615).

    python teacher.py train --bench virtualhome                          # SFT (4) + dev metric, ~2.5 min on 2 CPU cores
    python teacher.py train --bench esconv --data-dir DIR
    python teacher.py score --query "I feel so alone" --doc "Reflection of feelings" [--checkpoint runs/teacher-esconv]
    python teacher.py bench                                               # pairs/s at total lengths 128 and 512

Choices not fixed by the paper:
- exact prompt wording, rendered with the model's chat template (plain text + "Answer:" when it has none); the
  question is each bench's own by default (`--instruction task`), or METHOD.md's generic one (`generic`), or a text;
- score s_T = z_T[yes] - z_T[no] (3), which ranks like p(yes | {yes, no});
- length policy: the document is cut to `--max-doc-tokens`; a prompt over the model's window cuts the document
  further, then the query from its start; the instruction never (`Prompt`);
- SFT negatives: per query `--neg-bm25` hard negatives from BM25's top ranks plus `--neg-random` from the pool;
- `--train-layers N` (default 2, on every device) trains only the last N blocks and the final norm; 0 = the full
  fine-tune the paper reports. The head (tied to the embeddings in SmolLM2) stays frozen unless N = 0.
  With N > 0 the frozen bottom blocks see every SFT pair and every dev pair exactly once: their output states are
  kept in memory (`llm.trunk_states`) and each epoch, and the zero-shot and trained dev metric, run only the top N
  blocks on them (`llm.top_last`; equal to the full forward, tested). Epochs then cost ~N/L of a pass.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from common import (add_dataclass_args, check_finite, check_sizes, check_tensors, cli, config_from_args, field,
                    load_tensors, prepare_output, progress, read_json, resolve_device, save_tensors, set_seed, subset,
                    write_json)
import parallel
from llm import (ATTENTION, DEFAULT_MODEL, can_split, fingerprint, forget_fingerprint, last_hidden, last_logits,
                 load_llm, top_last, trunk_states, weights_fingerprint)
from metrics import BM25, candidate_sets, describe_protocol, evaluate_run, label_prior, ranked

YES, NO = "yes", "no"
INSTRUCTION = "Does the document fit the query? Answer yes or no."  # the generic question of METHOD.md
# `--instruction task` [ours]: the question each bench actually asks, in the same yes/no form
TASK_INSTRUCTIONS = {
    "virtualhome": "Is the document the next step of the task? Answer yes or no.",
    "saycan": "Is the document the next step of the task? Answer yes or no.",
    "esconv": "Is the document the strategy the supporter uses next? Answer yes or no.",
    "psyqa": "Is the document the strategy the answer uses next? Answer yes or no.",
}
RELEVANCE = "Is the document relevant to the query? Answer yes or no."  # BEIR, MS MARCO


def instruction_for(kind: str, bench: str) -> str:
    """The question of the prompt: 'generic' (METHOD.md), 'task' (per bench, ours) or any text of one's own."""
    if kind == "generic":
        return INSTRUCTION
    if kind == "task":
        return TASK_INSTRUCTIONS.get(bench, RELEVANCE)
    return kind
_D, _Q = "\ue000", "\ue001"  # private-use markers that no template or tokenizer touches


# ---------------------------------------------------------------------------- prompts (1), (5), (6)
class Prompt:
    """Token pieces of the teacher prompt (1) and of its two halves used by the student, (5) and (6).

    teacher(q, d)   = pre + doc(d) + mid + query(q) + post     document first, then query        (1)
    doc_prefix(d)   = pre + doc(d)                             exactly what the teacher reads before the query (6)
    query_only(q)   = pre_q + query(q) + post_q                the teacher prompt without its Document line (5)
    Each piece is tokenised on its own, so these are exact prefixes / sub-sequences of one another.

    Length policy (one for teacher and student): the document is cut to `max_doc_tokens`; a prompt longer than the
    model's window `max_len` cuts the document further, then the query from its start (the last turns of a dialogue
    matter most). The instruction and template are never cut: a window too small for them is an error. `cut` counts
    the distinct documents and queries that were cut."""

    def __init__(self, tok, max_doc_tokens: int = 256, max_len: int | None = None, instruction: str = INSTRUCTION):
        self.tok, self.max_doc_tokens, self.instruction = tok, max_doc_tokens, instruction
        pre, rest = self.render(f"Document:{_D}\nQuery:{_Q}\n{instruction}").split(_D)
        mid, post = rest.split(_Q)
        pre_q, post_q = self.render(f"Query:{_Q}\n{instruction}").split(_Q)
        bos = [tok.bos_token_id] if self._adds_bos() else []
        self.pre, self.mid, self.post = bos + self.enc(pre), self.enc(mid), self.enc(post)
        self.pre_q, self.post_q = bos + self.enc(pre_q), self.enc(post_q)
        self.max_len = max_len or 10 ** 9
        fixed = len(self.pre) + len(self.mid) + len(self.post)
        if fixed >= self.max_len:
            raise ValueError(f"the prompt template and instruction alone are {fixed} tokens, not under the model's "
                             f"window of {self.max_len} tokens: no document or query can fit")
        self.cut: dict[str, set[int]] = {"documents": set(), "queries": set()}

    def render(self, content: str) -> str:
        if self.tok.chat_template:
            return self.tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                add_generation_prompt=True)
        return content + "\nAnswer:"

    def _adds_bos(self) -> bool:
        bos = self.tok.bos_token_id
        ids = self.tok("a").input_ids
        return bos is not None and len(ids) > 0 and ids[0] == bos and not self.tok.chat_template

    def enc(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False).input_ids

    def _fit(self, d: str | None, q: str | None, budget: int) -> tuple[list[int], list[int]]:
        """Document and query tokens within `budget`: the document cut first, then the query from its start."""
        doc = self.enc(" " + d) if d is not None else []
        query = self.enc(" " + q) if q is not None else []
        keep_doc = min(len(doc), self.max_doc_tokens, max(0, budget - len(query)))
        if keep_doc < len(doc):
            self.cut["documents"].add(hash(d))
        if len(query) > budget - keep_doc:
            query = query[len(query) - (budget - keep_doc):]
            self.cut["queries"].add(hash(q))
        return doc[:keep_doc], query

    def doc(self, d: str) -> list[int]:
        return self._fit(d, None, self.max_len - len(self.pre))[0]

    def query(self, q: str) -> list[int]:
        return self._fit(None, q, self.max_len - len(self.pre_q) - len(self.post_q))[1]

    def teacher(self, q: str, d: str) -> list[int]:
        doc, query = self._fit(d, q, self.max_len - len(self.pre) - len(self.mid) - len(self.post))
        return self.pre + doc + self.mid + query + self.post

    def doc_prefix(self, d: str) -> list[int]:
        return self.pre + self.doc(d)

    def query_only(self, q: str) -> list[int]:
        return self.pre_q + self.query(q) + self.post_q

    def cut_counts(self) -> dict[str, int]:
        """Distinct documents and queries cut so far (logged and written to results.json)."""
        return {k: len(v) for k, v in self.cut.items()}

    def describe(self) -> dict:
        """What a cache of encodings depends on besides the weights."""
        dec = self.tok.decode
        return {"pre": dec(self.pre), "mid": dec(self.mid), "post": dec(self.post), "pre_q": dec(self.pre_q),
                "post_q": dec(self.post_q), "max_doc_tokens": self.max_doc_tokens}


def answer_ids(tok, name: str = "") -> tuple[int, int]:
    """Token ids of y+ = "yes" and y- = "no"; each must be a single token of this tokenizer."""
    ids = []
    for word in (YES, NO):
        t = tok(word, add_special_tokens=False).input_ids
        if len(t) != 1:
            raise ValueError(f"model {name or tok.name_or_path}: answer word {word!r} is {len(t)} tokens {t}, "
                             "not one; the score (3) needs single-token answers")
        ids.append(t[0])
    return ids[0], ids[1]


# ---------------------------------------------------------------------------- the teacher model
class Teacher:
    """Generative reranker around one causal LM. Outputs per (q, d): h_T (1), z_T (2), s_T (3)."""

    def __init__(self, lm, tok, max_doc_tokens: int = 256, batch_size: int = 8, quiet: bool = False,
                 prefix_cache: bool = True, instruction: str = INSTRUCTION):
        self.lm, self.tok = lm, tok
        self.prompt = Prompt(tok, max_doc_tokens, getattr(lm.config, "max_position_embeddings", None), instruction)
        self.y_pos, self.y_neg = answer_ids(tok, getattr(lm, "name_or_id", ""))
        self.batch_size, self.quiet = batch_size, quiet
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.prefix_len = len(self.prompt.pre) if prefix_cache else 0  # shared template head, encoded once per call

    @property
    def head(self) -> torch.Tensor:
        """W, the LM head (V, H), in the model's dtype (float32 on CPU, bfloat16 on GPU) and on its device."""
        return self.lm.lm_head.weight

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """(2) z = W h, for h (N, H) -> (N, V) float32."""
        return (h.to(self.head.dtype).to(self.head.device) @ self.head.T).float().cpu()

    def encode_pairs(self, queries: list[str], docs: list[str], desc: str = "teacher") -> torch.Tensor:
        """(1) h_T(q, d) = f(prompt(d, q))[last] for each pair, (N, H).

        Because the document comes first, a document met by at least `batch_size` queries in this call has its
        whole prefix (template head + document) encoded once and reused (document-prefix cache); the other pairs
        share only the template head. Same numbers as the plain forward up to float rounding (tested)."""
        seqs = [self.prompt.teacher(q, d) for q, d in zip(queries, docs)]
        if not self.prefix_len:
            return last_hidden(self.lm, seqs, self.batch_size, self.pad_id, desc, self.quiet)
        by_doc: dict[str, list[int]] = {}
        for i, d in enumerate(docs):
            by_doc.setdefault(d, []).append(i)
        out = torch.empty(len(seqs), self.lm.config.hidden_size)
        rest = []
        for d, idx in progress(by_doc.items(), desc=f"{desc} (by document)", quiet=self.quiet or len(by_doc) < 3):
            if len(idx) < self.batch_size:
                rest += idx
                continue
            out[idx] = last_hidden(self.lm, [seqs[i] for i in idx], self.batch_size, self.pad_id, desc, True,
                                   len(self.prompt.doc_prefix(d)))
        if rest:
            out[rest] = last_hidden(self.lm, [seqs[i] for i in rest], self.batch_size, self.pad_id, desc, self.quiet,
                                    self.prefix_len)
        return out

    def score(self, queries: list[str], docs: list[str], desc: str = "teacher") -> torch.Tensor:
        """(3) s_T = z_T[y+] - z_T[y-] = log p(y+) - log p(y-) (tau = 1) for each pair, (N,).
        Computed as u . h_T with u = W[y+] - W[y-]: only the two answer rows of W are needed."""
        return self.encode_pairs(queries, docs, desc) @ self.u

    @property
    def u(self) -> torch.Tensor:
        """u = W[y+] - W[y-], (H,) float32 on the CPU: s_T = u . h_T (3)."""
        return (self.head[self.y_pos] - self.head[self.y_neg]).float().cpu()


# ---------------------------------------------------------------------------- training (4)
@dataclass
class TrainConfig:
    bench: str = field("virtualhome", "virtualhome | esconv | psyqa | saycan | msmarco | BEIR name")
    data_dir: str = field("", "local copy of the data set (default: embedded or official download)")
    model: str = field(DEFAULT_MODEL, "embedded name, Hugging Face id or local folder")
    device: str = field("auto", "auto | cpu | cuda", choices=["auto", "cpu", "cuda"])
    dtype: str = field("auto", "auto (fp32 CPU, bf16 GPU) | float32 | bfloat16")
    attn_implementation: str = field("sdpa", "attention kernel of the LLM", choices=list(ATTENTION))
    output_dir: str = field("", "where the checkpoint goes (default runs/teacher-{bench})")
    train_layers: int = field(2, "train only the last N blocks + final norm; 0 = full fine-tune")
    lr: float = field(3e-4, "AdamW peak learning rate")
    weight_decay: float = field(0.0, "AdamW weight decay")
    epochs: int = field(3, "passes over the SFT pairs")
    batch_size: int = field(8, "pairs per forward (a micro-batch, per process)")
    grad_accum: int = field(1, "micro-batches per optimiser step: the global batch is batch_size x grad_accum pairs "
                               "whatever the number of processes (each runs its share)")
    warmup: float = field(0.1, "fraction of steps with linear warmup, then cosine decay")
    clip: float = field(1.0, "gradient norm clip")
    neg_bm25: int = field(1, "hard negatives per query from BM25's top ranks")
    neg_random: int = field(1, "random negatives per query from the pool")
    neg_self: int = field(0, "self-mined negatives per query (ours): after the first pass, the teacher's own N "
                             "best-scored wrong documents among --mine-k of BM25 and --mine-k frequent ones, then a "
                             "second pass over all pairs (0 = off)")
    mine_k: int = field(8, "with --neg-self: documents of BM25's top and of the most frequent gold ones scored")
    max_train_queries: int = field(96, "training queries used (0 = all)")
    max_dev_queries: int = field(64, "held-out queries for the dev metric (0 = all)")
    rerank_k: int = field(8, "dev metric: size of C(q), the whole pool when smaller (metrics.candidate_sets)")
    grad_checkpoint: bool = field(False, "activation checkpointing in the trained blocks (less memory, ~1/3 slower)")
    max_doc_tokens: int = field(256, "document truncation budget in tokens")
    instruction: str = field("task", "the prompt's question: task (per bench, ours), generic (METHOD.md) or a text")
    seed: int = field(0, "seed for sampling and shuffling")
    save_every: int = field(50, "save a resumable SFT state every N optimiser steps (0 = never)")
    resume: bool = field(False, "continue an SFT run killed in output_dir from its last saved state")
    overwrite: bool = field(False, "replace the teacher in output_dir (students distilled from it become unusable)")
    quiet: bool = field(False, "no progress bars")

    def __post_init__(self):
        check_finite(self)
        check_sizes(self, ("epochs", "batch_size", "grad_accum", "rerank_k", "max_doc_tokens"), 1)
        check_sizes(self, ("train_layers", "neg_bm25", "neg_random", "neg_self", "max_train_queries",
                           "max_dev_queries", "save_every"), 0)
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite contradict each other: choose one")
        if self.resume and self.neg_self:
            raise ValueError("--resume does not cover --neg-self's second pass yet: rerun with --overwrite")
        check_sizes(self, ("mine_k",), 1)
        if not 0 <= self.warmup < 1 or self.lr <= 0:
            raise ValueError(f"--warmup {self.warmup}, --lr {self.lr}: need 0 <= warmup < 1 and lr > 0")
        self.output_dir = self.output_dir or f"runs/teacher-{self.bench}"


def set_trainable(lm, train_layers: int) -> list[torch.nn.Parameter]:
    """Freeze all, then unfreeze the last `train_layers` blocks and the final norm (all weights when 0)."""
    for p in lm.parameters():
        p.requires_grad_(train_layers == 0)
    if train_layers > 0:
        for module in list(lm.model.layers[-train_layers:]) + [lm.model.norm]:
            for p in module.parameters():
                p.requires_grad_(True)
    return [p for p in lm.parameters() if p.requires_grad]


def sft_loss(z: torch.Tensor, labels: torch.Tensor, y_pos: int, y_neg: int) -> torch.Tensor:
    """(4) cross-entropy of the answer token over the full vocabulary: target y+ if label 1, else y-.
    z (B, V) logits at the last prompt position, labels (B,) in {0, 1}; mean over the batch."""
    target = torch.where(labels.bool(), torch.full_like(labels, y_pos), torch.full_like(labels, y_neg))
    return F.cross_entropy(z.float(), target)


def sft_pairs(data, split: str, cfg: TrainConfig, bm25, gen: torch.Generator) -> list[tuple[str, str, int]]:
    """(query text, doc id, label): every gold doc as positive, plus BM25-hard and random negatives per query."""
    queries, qrels = data.split(split)
    qids = subset(list(queries), cfg.max_train_queries, gen)
    doc_ids = list(data.corpus)
    pairs = []
    for qid in qids:
        gold = {d for d, g in qrels[qid].items() if g > 0}
        pairs += [(queries[qid], d, 1) for d in sorted(gold)]
        hard = [d for d in bm25.top(queries[qid], cfg.neg_bm25 + len(gold) + 5) if d not in gold][:cfg.neg_bm25]
        pairs += [(queries[qid], d, 0) for d in hard]
        pool = [d for d in doc_ids if d not in gold and d not in hard]
        for i in torch.randperm(len(pool), generator=gen)[:cfg.neg_random].tolist():
            pairs.append((queries[qid], pool[i], 0))
    return pairs


def split_point(lm, train_layers: int) -> int:
    """First trained block when the frozen bottom can be run once and its states reused; 0 = run the whole model."""
    return len(lm.model.layers) - train_layers if train_layers and can_split(lm) else 0


class SFTHead(torch.nn.Module):
    """The trained part of SFT as one module, what DistributedDataParallel wraps: the logits z (B, V) (2) at each
    pair's last prompt token, from stored frozen-bottom states (start > 0: only the top blocks run) or from the token
    ids (start = 0: the whole model, through lm.forward so that FSDP2's hooks run)."""

    def __init__(self, lm, start: int, pad_id: int):
        super().__init__()
        self.lm, self.start, self.pad_id = lm, start, pad_id

    def forward(self, batch: list) -> torch.Tensor:
        if self.start:
            return self.lm.lm_head(top_last(self.lm, batch, self.start))  # (B, H) -> (B, V)
        return last_logits(self.lm, batch, self.pad_id)


def parallelize(lm, head: SFTHead, train_layers: int, device: torch.device):
    """Under torchrun: the top blocks with DDP (`--train-layers N > 0`), or the whole model with FSDP2
    (`--train-layers 0`: one `fully_shard` unit per decoder block, then the root; on GPU bf16 compute with fp32
    gradient reduction). Returns the module to call. One process: `head` itself."""
    if parallel.world() == 1:
        return head
    if train_layers > 0:
        from torch.nn.parallel import DistributedDataParallel as DDP
        return DDP(head, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if device.type == "cuda" \
        else MixedPrecisionPolicy()
    for block in lm.model.layers:
        fully_shard(block, mp_policy=mp)
    fully_shard(lm, mp_policy=mp)
    return head


def train(teacher: Teacher, data, split: str, cfg: TrainConfig, bm25, pairs: list | None = None) -> dict:
    """SFT (4) with AdamW, warmup + cosine, gradient accumulation and clipping, on `sft_pairs` or on the given
    (query text, doc id, label) `pairs`. Returns the loss history.

    One optimiser step = a global batch of batch_size x grad_accum pairs in a seeded order, whatever the number of
    processes: under torchrun pair i is owned by rank i % N (its frozen-bottom states computed there only), each rank
    runs its pairs of the step in micro-batches of batch_size, and the gradient is the mean over the global batch
    (local sum / global count, x N because DDP and FSDP2 average over ranks)."""
    from transformers import get_cosine_schedule_with_warmup

    gen = torch.Generator().manual_seed(cfg.seed + (0 if pairs is None else 2))
    pairs = sft_pairs(data, split, cfg, bm25, gen) if pairs is None else pairs
    if len(pairs) < parallel.world():
        raise ValueError(f"teacher SFT: {len(pairs)} pairs for {parallel.world()} processes")
    seqs = [teacher.prompt.teacher(q, data.doc_text(d)) for q, d, _ in pairs]
    t0 = time.time()
    lm, world = teacher.lm, parallel.world()
    owned = set(parallel.mine(len(pairs)))
    start = split_point(lm, cfg.train_layers)
    states = trunk_states(lm, seqs, start, cfg.batch_size, teacher.pad_id, "teacher SFT: frozen blocks (once)",
                          cfg.quiet, keep=sorted(owned)) if start else None
    forget_fingerprint(lm)  # the weights change from here on
    set_trainable(lm, cfg.train_layers)
    if cfg.grad_checkpoint:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = parallelize(lm, SFTHead(lm, start, teacher.pad_id), cfg.train_layers, next(lm.parameters()).device)
    params = [p for p in lm.parameters() if p.requires_grad]  # FSDP2 replaced them with sharded ones
    opt = MasterWeights(params, lr=cfg.lr, weight_decay=cfg.weight_decay)  # fp32 masters of bf16 / fp16 weights
    per_step = cfg.batch_size * cfg.grad_accum
    steps = math.ceil(len(pairs) / per_step) * cfg.epochs
    sched = get_cosine_schedule_with_warmup(opt.opt, int(cfg.warmup * steps), steps)
    fsdp = parallel.world() > 1 and cfg.train_layers == 0
    folder = Path(cfg.output_dir) / SFT_STATE
    losses: list[float] = load_sft_state(folder, lm, opt, sched, fsdp) if cfg.resume else []
    if losses:
        print(f"[teacher] resuming SFT after step {len(losses)} of {steps}")
    lm.train()
    print(f"[teacher] SFT: {len(pairs)} pairs, {steps} steps; global batch {per_step} pairs per step (--batch-size "
          f"{cfg.batch_size} x --grad-accum {cfg.grad_accum}) over {world} process(es): about {per_step / world:.0f} "
          f"pairs per process per step, in micro-batches of up to {cfg.batch_size}")
    bar = progress(total=steps, initial=len(losses), desc="teacher SFT", quiet=cfg.quiet)
    step = 0
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(pairs), generator=gen).tolist()  # drawn for every epoch, also the ones resumed
        for k in range(0, len(order), per_step):
            step += 1
            if step <= len(losses):
                continue
            batch = order[k:k + per_step]
            mine = [i for i in batch if i in owned]
            # every rank runs as many micro-batches as the busiest one (FSDP2 gathers weights in each), empty = no-op
            most = max(sum(1 for i in batch if i % world == r) for r in range(world))
            micro = [mine[j:j + cfg.batch_size] for j in range(0, max(most, 1), cfg.batch_size)]
            total = torch.zeros(())
            for m, idx in enumerate(micro):
                with sync_grads(model, m == len(micro) - 1):
                    run = idx or [min(owned)]  # a rank with no pair in this step still joins the reduction
                    z = model([states[i] for i in run] if start else [seqs[i] for i in run])
                    labels = torch.tensor([pairs[i][2] for i in run], device=z.device)
                    ce = sft_loss(z, labels, teacher.y_pos, teacher.y_neg) * len(run) * (1 if idx else 0)
                    (ce * world / len(batch)).backward()
                total += ce.detach().float().cpu()
            loss = parallel.sum_ranks(total).item() / len(batch)  # the global batch's mean cross-entropy
            if not math.isfinite(loss):
                raise FloatingPointError(f"teacher SFT: loss {loss} at epoch {epoch} step {len(losses)}")
            torch.nn.utils.clip_grad_norm_(opt.gather_grads(), cfg.clip)
            opt.step(), sched.step(), opt.zero_grad()
            losses.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}")
            if cfg.save_every and len(losses) % cfg.save_every == 0 and len(losses) < steps:
                save_sft_state(folder, lm, opt, sched, losses, fsdp)
    bar.close()
    if cfg.grad_checkpoint:
        lm.gradient_checkpointing_disable()
    lm.eval().requires_grad_(False)
    return {"losses": losses, "steps": len(losses), "pairs": len(pairs), "seconds": time.time() - t0,
            "fsdp": fsdp, "pair_list": pairs, "optimizer": opt}


SFT_STATE = "sft_state"  # the resumable state of an SFT run, inside its output folder, removed once it is saved


def _named(lm, opt: "MasterWeights") -> list[tuple[str, torch.nn.Parameter, torch.Tensor]]:
    names = {id(p): n for n, p in lm.named_parameters()}
    return [(names[id(p)], p, m) for p, m in zip(opt.params, opt.master)]


def save_sft_state(folder: Path, lm, opt: "MasterWeights", sched, losses: list[float], fsdp: bool) -> None:
    """Everything a killed SFT run needs to continue with the same losses: the trained weights, their fp32 masters,
    AdamW's moments, the schedule and the losses so far. One process or DDP (every rank holds the same state): one
    safetensors file written by rank 0. FSDP2 (sharded): torch.distributed.checkpoint, each rank writing its shards,
    so no full copy is ever gathered. The sidecar is written last and names the complete state."""
    meta = {"kind": "sft-state", "step": len(losses), "losses": losses, "sched": sched.state_dict()}
    if fsdp:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
        where = folder / f"dcp-{len(losses):07d}"
        dcp.save({"model": get_model_state_dict(lm), "optim": get_optimizer_state_dict(lm, opt.opt)},
                 checkpoint_id=str(where))
        parallel.barrier()
        write_json(folder / "state.json", meta | {"dcp": where.name})
        if parallel.is_main():
            for old in folder.glob("dcp-*"):
                if old.name != where.name:
                    shutil.rmtree(old, ignore_errors=True)
        return
    tensors = {}
    for name, p, m in _named(lm, opt):
        tensors[f"param/{name}"] = p.detach()
        if m is not p:
            tensors[f"master/{name}"] = m.detach()
        for key, value in opt.opt.state.get(m, {}).items():
            if key != "step":
                tensors[f"{key}/{name}"] = value
    adam_step = next((float(st["step"]) for st in opt.opt.state.values() if "step" in st), 0.0)
    save_tensors(folder / "state.safetensors", tensors, meta | {"adam_step": adam_step})
    parallel.barrier()


def load_sft_state(folder: Path, lm, opt: "MasterWeights", sched, fsdp: bool) -> list[float]:
    """The losses so far of the state `save_sft_state` left in `folder`, with the weights, masters, moments and
    schedule put back; [] when there is none (the run starts from the beginning)."""
    if fsdp:
        if not (folder / "state.json").exists():
            return []
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                             set_model_state_dict, set_optimizer_state_dict)
        meta = read_json(folder / "state.json", "rerun with --overwrite")
        state = {"model": get_model_state_dict(lm), "optim": get_optimizer_state_dict(lm, opt.opt)}
        dcp.load(state, checkpoint_id=str(folder / meta["dcp"]))
        set_model_state_dict(lm, state["model"])
        set_optimizer_state_dict(lm, opt.opt, state["optim"])
    else:
        if not (folder / "state.safetensors").exists():
            return []
        tensors, meta = load_tensors(folder / "state.safetensors", {"kind": "sft-state"},
                                     fix="rerun with --overwrite to start the SFT again")
        with torch.no_grad():
            for name, p, m in _named(lm, opt):
                p.copy_(tensors[f"param/{name}"])
                if m is not p:
                    m.copy_(tensors[f"master/{name}"])
                moments = {k: tensors[f"{k}/{name}"] for k in ("exp_avg", "exp_avg_sq") if f"{k}/{name}" in tensors}
                if moments:
                    opt.opt.state[m] = {"step": torch.tensor(meta["adam_step"]), **moments}
    sched.load_state_dict(meta["sched"])
    for group, lr in zip(opt.opt.param_groups, sched.get_last_lr()):  # the schedule's state does not set the lr
        group["lr"] = lr
    return list(meta["losses"])


class MasterWeights:
    """AdamW with float32 master copies of low-precision (bfloat16 / float16) trainable parameters: the optimizer
    steps the float32 copy, and each model parameter then takes its copy rounded to its own dtype. An update far
    below bfloat16's resolution (AdamW moves a weight by about lr per step: LaHoRe's lr 1e-6 against a resolution of
    ~1e-4 at |w| = 0.02) accumulates in the master instead of vanishing. float32 parameters (CPU, FSDP2's sharded
    fp32 parameters) are stepped directly, with no copy. `opt` is the torch optimizer (for the LR schedule)."""

    def __init__(self, params: list[torch.nn.Parameter], **adamw):
        self.params = list(params)
        self.master = [p if p.dtype == torch.float32 else p.detach().float().clone().requires_grad_(True)
                       for p in self.params]
        self.opt = torch.optim.AdamW(self.master, **adamw)

    def gather_grads(self) -> list[torch.Tensor]:
        """Copy each low-precision gradient into its master as float32; returns the masters (to clip)."""
        for p, m in zip(self.params, self.master):
            if m is not p:
                m.grad = None if p.grad is None else p.grad.float()
        return self.master

    def step(self) -> None:
        self.gather_grads()
        self.opt.step()
        with torch.no_grad():
            for p, m in zip(self.params, self.master):
                if m is not p:
                    p.copy_(m)

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        for p in self.params:
            p.grad = None


def mine_negatives(teacher: Teacher, data, split: str, cfg: TrainConfig, bm25,
                   pairs: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """Self-mined negatives [ours]: for each query of `pairs`, the teacher trained so far scores a first stage (BM25's
    top --mine-k and the --mine-k documents most often gold in the training split, the hubs a retriever meets), and
    its --neg-self best-scored documents that are neither gold nor already paired with the query become new
    negatives: the mistakes it would make when reranking a pool."""
    queries, qrels = data.split(split)
    gold_of: dict[str, set[str]] = {}  # by query text: queries with the same text share their gold documents
    for q, t in queries.items():
        gold_of.setdefault(t, set()).update(d for d, g in qrels[q].items() if g > 0)
    counts = label_prior(data, split)
    frequent = sorted(counts, key=lambda d: (-counts[d], d))[:cfg.mine_k]
    used: dict[str, set[str]] = {}
    for q, d, _ in pairs:
        used.setdefault(q, set()).add(d)
    cands = {}
    for q, seen in used.items():
        first = dict.fromkeys(bm25.top(q, cfg.mine_k) + frequent)
        cands[q] = [d for d in first if d not in gold_of[q] and d not in seen]
    run = teacher_run(teacher, {q: q for q in cands}, {q: c for q, c in cands.items() if c}, data.doc_text,
                      "teacher SFT: mining negatives")
    return [(q, d, 0) for q in cands for d in ranked(run.get(q, {}))[:cfg.neg_self]]


@contextmanager
def sync_grads(model, sync: bool):
    """Gradient accumulation: DDP and FSDP2 reduce gradients only on the last micro-batch of a step."""
    if hasattr(model, "no_sync") and not sync:  # DDP
        with model.no_sync():
            yield
        return
    fsdp = getattr(getattr(model, "lm", None), "set_requires_gradient_sync", None)
    if fsdp is not None:
        fsdp(sync)
    yield


# ---------------------------------------------------------------------------- dev metric
def teacher_run(teacher: Teacher, queries: dict[str, str], candidates: dict[str, list[str]], doc_text,
                desc: str = "teacher") -> dict[str, dict[str, float]]:
    """Score every (query, candidate) and return a run {qid: {doc id: s_T}}; doc_text maps a doc id to its text."""
    flat = [(q, d) for q, ds in candidates.items() for d in ds]
    return to_run(flat, teacher.score([queries[q] for q, _ in flat], [doc_text(d) for _, d in flat], desc))


def to_run(flat: list[tuple[str, str]], scores: torch.Tensor) -> dict[str, dict[str, float]]:
    """(query id, doc id) pairs and their scores -> a run {qid: {doc id: score}}."""
    run: dict[str, dict[str, float]] = {}
    for (q, d), v in zip(flat, scores.tolist()):
        run.setdefault(q, {})[d] = v
    return run


class DevSet:
    """The dev pairs (query, document in C(q)) of `metrics.candidate_sets`, scored before and after training. With a
    frozen bottom (start > 0) their states are computed once here and both metrics run only the top blocks; under
    torchrun each rank keeps and scores the pairs it owns, and the scores are summed over ranks."""

    def __init__(self, teacher: Teacher, data, split: str, bm25, cfg: TrainConfig, start: int, train_split: str):
        self.data, self.split, self.start = data, split, start
        self.majority_from = train_split
        self.queries, qrels = data.split(split)
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        qids = subset(list(self.queries), cfg.max_dev_queries, gen)
        self.cands = candidate_sets(qids, self.queries, qrels, list(data.corpus), bm25, cfg.rerank_k, gen)
        self.qrels = {q: qrels[q] for q in self.cands}
        self.protocol = describe_protocol(len(data.corpus), cfg.rerank_k)
        self.flat = [(q, d) for q, ds in self.cands.items() for d in ds]
        self.states = None
        if start:
            seqs = [teacher.prompt.teacher(self.queries[q], data.doc_text(d)) for q, d in self.flat]
            self.states = trunk_states(teacher.lm, seqs, start, teacher.batch_size, teacher.pad_id,
                                       "dev: frozen blocks (once)", teacher.quiet, keep=parallel.mine(len(seqs)))

    def metric(self, teacher: Teacher, desc: str) -> dict:
        if self.states is None:
            run = teacher_run(teacher, self.queries, self.cands, self.data.doc_text, desc)
        else:
            order = sorted(parallel.mine(len(self.flat)), key=lambda i: len(self.states[i]))
            h = torch.zeros(len(self.flat), teacher.lm.config.hidden_size)
            with torch.inference_mode():
                for k in range(0, len(order), teacher.batch_size):
                    idx = order[k:k + teacher.batch_size]
                    h[idx] = top_last(teacher.lm, [self.states[i] for i in idx], self.start).float().cpu()
            run = to_run(self.flat, parallel.sum_ranks(h) @ teacher.u)
        m = evaluate_run(run, self.qrels)
        return {"R@1": m["R@1"], "MRR@10": m["MRR@10"], "n_queries": len(self.cands), "protocol": self.protocol,
                "split": self.split, "majority_R@1": majority_r1(self.data, self.majority_from, self.qrels)}


def majority_r1(data, split: str, qrels: dict) -> float:
    """R@1 on `qrels` of always ranking first the document most often gold in `split`, the training split
    (ESConv: "Questions"); a query whose gold is another document counts as a miss."""
    counts = label_prior(data, split)
    top = max(counts, key=counts.get)
    return sum(qrels[q].get(top, 0) > 0 for q in qrels) / max(len(qrels), 1)


# ---------------------------------------------------------------------------- checkpoint
def save_checkpoint(teacher: Teacher, out_dir: str | Path, cfg: TrainConfig, base_fp: str, meta: dict,
                    fsdp: bool = False) -> tuple[Path, str]:
    """Only the trained tensors (all of them for a full fine-tune) + sidecar with base model id and fingerprint.
    Under FSDP2 the full state dict is gathered to rank 0, which writes the one-process format. Returns the path and
    the file's digest (the same on every rank)."""
    lm = teacher.lm
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        sd = get_model_state_dict(lm, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        sd = lm.state_dict()
    if cfg.train_layers == 0:  # a tied head is the embedding matrix: saved once, tied again on load
        names = [k for k in sd if not (k == "lm_head.weight" and lm.config.tie_word_embeddings)]
    else:
        n = len(lm.model.layers)
        keep = tuple(f"model.layers.{i}." for i in range(n - cfg.train_layers, n)) + ("model.norm.",)
        names = [k for k in sd if k.startswith(keep)]
    path = Path(out_dir) / "teacher.safetensors"
    digest = save_tensors(path, {k: sd[k] for k in names},
                          {"kind": "teacher", "base_model": cfg.model, "base_fingerprint": base_fp,
                           "max_doc_tokens": cfg.max_doc_tokens, "instruction": teacher.prompt.instruction,
                           "config": dataclasses.asdict(cfg), **meta})
    return path, parallel.broadcast(digest)


def teacher_identity(base_fp: str, digest: str) -> str:
    """A trained teacher's fingerprint: its base model's and its checkpoint file's digests together."""
    return hashlib.blake2b(f"{base_fp}+{digest}".encode(), digest_size=12).hexdigest()


def load_teacher(checkpoint: str | Path | None = None, model: str | None = None, device: str = "auto",
                 dtype: str = "auto", batch_size: int = 8, quiet: bool = False,
                 instruction: str | None = None, attn: str = "sdpa") -> tuple[Teacher, dict]:
    """Base model (+ trained tensors from `checkpoint`, a folder or .safetensors file). The base model and the
    prompt's instruction are the checkpoint's; a different `model` alongside a checkpoint is an error, not ignored.
    `instruction` (a text) is used without a checkpoint (zero-shot)."""
    meta: dict = {}
    if checkpoint:
        path = Path(checkpoint)
        path = path / "teacher.safetensors" if path.is_dir() else path
        side = Path(str(path) + ".json")
        if not path.exists() or not side.exists():
            raise FileNotFoundError(f"{path}: no teacher checkpoint (or its sidecar {side.name}); train one with "
                                    "`python teacher.py train`")
        meta = read_json(side, "train the teacher again (`python teacher.py train ... --overwrite`)")
        if model and model != meta.get("base_model"):
            raise ValueError(f"--model {model} contradicts the checkpoint {path}, trained from "
                             f"'{meta.get('base_model')}': drop --model (the checkpoint brings its base model)")
        if instruction and instruction != meta.get("instruction", INSTRUCTION):
            raise ValueError(f"instruction {instruction!r} contradicts the checkpoint {path}, trained with "
                             f"{meta.get('instruction', INSTRUCTION)!r}: train a teacher with it (another --teacher)")
        model = meta["base_model"]
    lm, tok = load_llm(model or DEFAULT_MODEL, device, dtype, attn)
    if checkpoint:
        base_fp = fingerprint(lm)
        meta = check_tensors(path, {"kind": "teacher"},
                             fix="train the teacher again (`python teacher.py train ... --overwrite`)")
        if meta["base_fingerprint"] not in (base_fp, weights_fingerprint(lm) if base_fp != meta["base_fingerprint"]
                                            else None):  # checkpoints from before file digests hashed the weights
            raise ValueError(f"{path}.json: base_fingerprint {meta['base_fingerprint']} != fingerprint {base_fp} of "
                             f"the loaded base model '{model}': the checkpoint was trained on other weights")
        copy_into(lm, path, model)
        lm.tie_weights()
        lm.rab_fingerprint = teacher_identity(base_fp, meta["digest"]) if "digest" in meta else None
    return Teacher(lm, tok, meta.get("max_doc_tokens", 256), batch_size, quiet,
                   instruction=meta.get("instruction", instruction or INSTRUCTION)), meta


def copy_into(lm, path: Path, model: str) -> None:
    """The trained tensors of a checkpoint copied into the loaded model one at a time, on the model's device: host
    memory holds one tensor at once, never the whole checkpoint (a 7B full fine-tune is 30 GB in float32)."""
    from safetensors import safe_open

    params = lm.state_dict()
    with safe_open(str(path), framework="pt") as f:
        missing = [k for k in f.keys() if k not in params]
        if missing:
            raise ValueError(f"{path}: tensors {sorted(missing)[:3]} do not exist in model '{model}'")
        with torch.no_grad():
            for k in f.keys():
                params[k].copy_(f.get_tensor(k))


# ---------------------------------------------------------------------------- CLI
def cmd_train(cfg: TrainConfig) -> dict:
    from data import check_split, load_bench, train_test_splits

    set_seed(cfg.seed)
    device = resolve_device(cfg.device)  # inputs and settings are checked before anything is written
    if cfg.neg_self and parallel.world() > 1:
        raise ValueError("--neg-self runs in one process (its second pass would wrap the model for DDP / FSDP2 "
                         "twice): run `python teacher.py train ...` without torchrun")
    with parallel.main_first():  # a download or unpacking happens once
        data = load_bench(cfg.bench, cfg.data_dir or None)
    train_split, test_split = train_test_splits(data)
    check_split(data, train_split, "training")
    check_split(data, test_split, "dev")
    prepare_output(cfg.output_dir, cfg, cfg.resume, cfg.overwrite, script="teacher", can_resume=True,
                   same=("resume", "overwrite", "quiet", "save_every"))
    bm25 = BM25({d: data.doc_text(d) for d in data.corpus})
    fsdp_gpu = cfg.train_layers == 0 and parallel.world() > 1 and device.type == "cuda"  # fp32 master weights
    lm, tok = load_llm(cfg.model, cfg.device, "float32" if fsdp_gpu and cfg.dtype == "auto" else cfg.dtype,
                       cfg.attn_implementation)
    base_fp = fingerprint(lm)
    teacher = Teacher(lm, tok, cfg.max_doc_tokens, cfg.batch_size, cfg.quiet,
                      instruction=instruction_for(cfg.instruction, cfg.bench))
    dev = DevSet(teacher, data, test_split, bm25, cfg, split_point(lm, cfg.train_layers), train_split)
    before_path = Path(cfg.output_dir) / "dev_before.json"
    before = read_json(before_path) if cfg.resume and before_path.exists() else dev.metric(teacher, "dev (zero-shot)")
    write_json(before_path, before)
    print(f"[teacher] zero-shot {test_split}: R@1 {before['R@1']:.4f} MRR@10 {before['MRR@10']:.4f} "
          f"({before['n_queries']} queries, {before['protocol']}; majority R@1 {before['majority_R@1']:.4f})")
    hist = train(teacher, data, train_split, cfg, bm25)
    if cfg.neg_self:  # a second pass over the pairs and the teacher's own mistakes
        mined = mine_negatives(teacher, data, train_split, cfg, bm25, hist["pair_list"])
        print(f"[teacher] mined {len(mined)} negatives (its own top-ranked wrong documents); training again")
        second = train(teacher, data, train_split, cfg, bm25, hist["pair_list"] + mined)
        hist = second | {"losses": hist["losses"] + second["losses"], "steps": hist["steps"] + second["steps"],
                         "seconds": hist["seconds"] + second["seconds"]}
    meta = {"step": hist["steps"], "train_split": train_split, "dev_before": before,
            "train_seconds": hist["seconds"], "loss_first": hist["losses"][0], "loss_last": hist["losses"][-1],
            "truncated": teacher.prompt.cut_counts()}
    path, digest = save_checkpoint(teacher, cfg.output_dir, cfg, base_fp, meta, hist["fsdp"])
    parallel.barrier()
    if parallel.is_main():  # the checkpoint is complete: the resumable state is not needed any more
        shutil.rmtree(Path(cfg.output_dir) / SFT_STATE, ignore_errors=True)
    if hist["fsdp"]:  # the sharded model is done: every rank reloads the gathered checkpoint for the dev metric
        teacher, _ = load_teacher(cfg.output_dir, device=cfg.device, batch_size=cfg.batch_size, quiet=cfg.quiet,
                                  attn=cfg.attn_implementation)
        dev = DevSet(teacher, data, test_split, bm25, cfg, 0, train_split)
    else:
        lm.rab_fingerprint = teacher_identity(base_fp, digest)
    after = dev.metric(teacher, "dev (trained)")
    print(f"[teacher] trained   {test_split}: R@1 {after['R@1']:.4f} MRR@10 {after['MRR@10']:.4f} "
          f"({hist['pairs']} SFT pairs on {train_split}, {hist['steps']} steps, {hist['seconds']:.0f}s)")
    print(f"[teacher] cut to fit (--max-doc-tokens / the model's window): {meta['truncated']}")
    meta["dev_after"] = after
    side = read_json(str(path) + ".json") if parallel.is_main() else {}
    write_json(str(path) + ".json", side | {"dev_after": after})  # the same tensors: only the sidecar gains a field
    write_json(Path(cfg.output_dir) / "teacher_metrics.json", meta | {"losses": hist["losses"]})
    parallel.barrier()
    print(f"[teacher] saved {path}")
    return meta


def cmd_score(args) -> None:
    for flag, text in (("--query", args.query), ("--doc", args.doc)):
        if not text.strip():
            raise ValueError(f"{flag} is empty or only whitespace")
    teacher, _ = load_teacher(args.checkpoint, args.model, args.device)
    s = teacher.score([args.query], [args.doc]).item()
    print(f"s_T = {s:.4f}   p(yes | yes, no) = {1 / (1 + math.exp(-s)):.4f}")


def cmd_bench(args) -> None:
    """Throughput in pairs/s at fixed total lengths (random token ids of exactly that length)."""
    for name in ("batch_size", "pairs"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} is {getattr(args, name)}; it must be >= 1")
    lm, tok = load_llm(args.model, args.device)
    rows = []
    for length in (128, 512):
        seqs = torch.randint(100, lm.config.vocab_size - 100, (args.pairs, length)).tolist()
        last_hidden(lm, seqs[:args.batch_size], args.batch_size, 0, quiet=True)  # warm-up
        t0 = time.perf_counter()
        last_hidden(lm, seqs, args.batch_size, 0, desc=f"L={length}")
        dt = time.perf_counter() - t0
        rows.append({"total_tokens": length, "batch_size": args.batch_size, "pairs": args.pairs,
                     "pairs_per_s": args.pairs / dt, "threads": torch.get_num_threads(),
                     "device": str(next(lm.parameters()).device), "model": args.model})
        print(rows[-1])
    write_json(Path(args.output), rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    add_dataclass_args(sub.add_parser("train", help="SFT (4) and save a checkpoint"), TrainConfig)
    s = sub.add_parser("score", help="score one (query, document) pair")
    s.add_argument("--query", required=True)
    s.add_argument("--doc", required=True)
    s.add_argument("--checkpoint", default=None)
    s.add_argument("--model", default=None, help=f"base model without --checkpoint (default {DEFAULT_MODEL})")
    s.add_argument("--device", default="auto")
    b = sub.add_parser("bench", help="teacher throughput")
    b.add_argument("--model", default=DEFAULT_MODEL)
    b.add_argument("--device", default="auto")
    b.add_argument("--batch-size", type=int, default=8)
    b.add_argument("--pairs", type=int, default=32)
    b.add_argument("--output", default="results/teacher_throughput.json")
    args = p.parse_args(argv)
    if args.cmd == "train":
        cmd_train(config_from_args(TrainConfig, args))
    elif args.cmd == "score":
        cmd_score(args)
    else:
        cmd_bench(args)


if __name__ == "__main__":
    cli(main, again="rerun the command")
