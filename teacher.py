"""The teacher: an LLM generative reranker that reads the document first, then the query, and scores relevance by the
log-probabilities of "yes" / "no" (METHOD.md equations (1)-(4); the paper's teacher is LaHoRe, arXiv 2412.16615).

    python teacher.py train --bench virtualhome                          # SFT (4) + (4b) + dev metric, ~7 min on 2 CPU cores
    python teacher.py train --bench esconv --data-dir DIR
    python teacher.py score --query "I feel so alone" --doc "Reflection of feelings" [--checkpoint runs/teacher-esconv]

Shapes: B pairs, T tokens, H hidden, V vocabulary.

Choices not fixed by the paper:
- prompt wording, with the chat template; each bench's own question by default (`--instruction task | generic | TEXT`);
- score s_T = z_T[yes] - z_T[no] (3); length policy `--max-doc-tokens`, then the model's window (`Prompt`);
- SFT: (4) + the listwise (4b) over groups of BM25-hard, hub and random negatives (`--neg-bm25` etc.; `--listwise`);
- `--train-layers N` (2) trains the last N blocks + final norm, the bottom run once (training.py); 0 = full fine-tune.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from data import load_bench
from runtime import parallel
from runtime.checkpoints import load_teacher_lm
from runtime.common import add_dataclass_args, cli, config_from_args, field, resolve_device, set_seed, subset
from runtime.llm import (DEFAULT_MODEL, Float32View, bos_prefix, fingerprint, last_hidden_shared, load_llm,
                         single_token_ids, user_turn)
from runtime.metrics import BM25, gold_hubs, sample_excluding, to_run
from runtime.runs import start_teacher
from runtime.training import (SFT, DevSet, SFTRunConfig, check_train_config, listwise_group_size, merge_passes,
                              mine_negatives, report_trained, save_trained, sft_dtype, split_point)


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
    Each piece is tokenised on its own, so these are exact prefixes / sub-sequences of one another. Length policy:
    the document is cut to `max_doc_tokens`; a prompt over the window `max_len` cuts the document further, then the
    query from its start; the instruction and template never (a window too small for them is an error)."""

    def __init__(self, tok, max_doc_tokens: int = 256, max_len: int | None = None, instruction: str = INSTRUCTION):
        self.tok, self.max_doc_tokens, self.instruction = tok, max_doc_tokens, instruction
        pre, rest = user_turn(tok, f"Document:{_D}\nQuery:{_Q}\n{instruction}").split(_D)
        mid, post = rest.split(_Q)
        pre_q, post_q = user_turn(tok, f"Query:{_Q}\n{instruction}").split(_Q)
        bos = bos_prefix(tok)
        self.pre, self.mid, self.post = bos + self.enc(pre), self.enc(mid), self.enc(post)
        self.pre_q, self.post_q = bos + self.enc(pre_q), self.enc(post_q)
        self.max_len = max_len or 10 ** 9
        fixed = len(self.pre) + len(self.mid) + len(self.post)
        if fixed >= self.max_len:
            raise ValueError(f"the prompt template and instruction alone are {fixed} tokens, not under the model's "
                             f"window of {self.max_len} tokens: no document or query can fit")
        self.cut: dict[str, set[int]] = {"documents": set(), "queries": set()}

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
        return self.teacher_split(q, d)[0]

    def teacher_split(self, q: str, d: str) -> tuple[list[int], int]:
        """The teacher prompt (1) and the length of its document prefix (pre + the document as cut for this pair)."""
        doc, query = self._fit(d, q, self.max_len - len(self.pre) - len(self.mid) - len(self.post))
        return self.pre + doc + self.mid + query + self.post, len(self.pre) + len(doc)

    def doc_prefix(self, d: str) -> list[int]:
        return self.pre + self.doc(d)

    def query_only(self, q: str) -> list[int]:
        return self.pre_q + self.query(q) + self.post_q

    def cut_counts(self) -> dict[str, int]:
        """Distinct documents and queries cut so far (logged and written to results.json)."""
        return {k: len(v) for k, v in self.cut.items()}


def answer_ids(tok, name: str = "") -> tuple[int, int]:
    """Token ids of y+ = "yes" and y- = "no": the score (3) needs each to be a single token of this tokenizer."""
    return single_token_ids(tok, (YES, NO), name, "the score (3) needs single-token answers")


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
        self._head = Float32View(lm.lm_head)

    @property
    def head(self) -> torch.Tensor:
        """W, the LM head (V, H), in float32 on the model's device (one copy for a bfloat16 model)."""
        return self._head.get()

    def encode_pairs(self, queries: list[str], docs: list[str], desc: str = "teacher") -> torch.Tensor:
        """(1) h_T(q, d) = f(prompt(d, q))[last] for each pair, (B, H) float32 on the CPU. Because the document
        comes first, pairs that share a document prefix reuse it (`llm.last_hidden_shared`)."""
        seqs, prefix = zip(*(self.prompt.teacher_split(q, d) for q, d in zip(queries, docs))) if queries else ((), ())
        return last_hidden_shared(self.lm, list(seqs), list(prefix) if self.prefix_len else None, self.prefix_len,
                                  self.batch_size, self.pad_id, desc, self.quiet)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """(2) z = W h for h (B, H) -> (B, V) float32 on the head's device; differentiable in h (the student's
        z_S = W h_hat (7) is this function too)."""
        return h.float().to(self.head.device) @ self.head.T

    def score(self, queries: list[str], docs: list[str], desc: str = "teacher") -> torch.Tensor:
        """(3) s_T = z_T[y+] - z_T[y-] = log p(y+) - log p(y-) (tau = 1) for each pair, (B,).
        Computed as u . h_T with u = W[y+] - W[y-]: only the two answer rows of W are needed."""
        return self.encode_pairs(queries, docs, desc) @ self.u

    @property
    def u(self) -> torch.Tensor:
        """u = W[y+] - W[y-], (H,), subtracted in float32, on the CPU: s_T = u . h_T (3)."""
        w = self.lm.lm_head.weight
        return (w[self.y_pos].float() - w[self.y_neg].float()).cpu()

    def rerank(self, queries: dict[str, str], candidates: dict[str, list[str]], doc_text,
               desc: str = "teacher") -> dict[str, dict[str, float]]:
        """The teacher as a reranker: s_T (3) of every (query, candidate), as a run {qid: {doc id: s_T}}."""
        flat = [(q, d) for q, ds in candidates.items() for d in ds]
        return to_run(flat, self.score([queries[q] for q, _ in flat], [doc_text(d) for _, d in flat], desc))


def load_teacher(checkpoint: str | Path | None = None, model: str | None = None, device: str = "auto",
                 dtype: str = "auto", batch_size: int = 8, quiet: bool = False,
                 instruction: str | None = None, attn: str = "sdpa") -> tuple[Teacher, dict]:
    """(teacher, sidecar) of `checkpoint`, a teacher.py train folder (base model + trained tensors, checked by
    `runtime.checkpoints.load_teacher_lm`), or the zero-shot `model` asked `instruction` without one."""
    lm, tok, meta = load_teacher_lm(checkpoint, model, device, dtype, attn, instruction, INSTRUCTION)
    return Teacher(lm, tok, meta.get("max_doc_tokens", 256), batch_size, quiet,
                   instruction=meta.get("instruction", instruction or INSTRUCTION)), meta


# ---------------------------------------------------------------------------- training (4)
@dataclass
class TrainConfig(SFTRunConfig):  # + the run's settings: data, device, batching, resume, dev metric
    # the paper's: SFT of the reranker (4)
    lr: float = field(3e-4, "AdamW peak learning rate")
    epochs: int = field(3, "passes over the SFT pairs")
    warmup: float = field(0.1, "fraction of steps with linear warmup, then cosine decay")
    # ours: prompt, negatives, trained blocks
    instruction: str = field("task", "the prompt's question: task (per bench, ours), generic (METHOD.md) or a text")
    max_doc_tokens: int = field(256, "document truncation budget in tokens")
    neg_bm25: int = field(3, "hard negatives per query from BM25's top ranks")
    neg_random: int = field(2, "random negatives per query from the pool")
    neg_frequent: int = field(2, "negatives per query among the pool's hubs, most often gold in training (ours)")
    neg_self: int = field(0, "ours: the teacher's own N best-scored wrong documents, a second pass (0 = off)")
    listwise: float = field(1.0, "weight of the listwise loss (4b) (ours; 0 = the pointwise (4) alone)")
    mine_k: int = field(8, "with --neg-self: documents of BM25's top and of the most frequent gold ones scored")
    train_layers: int = field(2, "train only the last N blocks + final norm; 0 = full fine-tune")
    weight_decay: float = field(0.0, "AdamW weight decay")
    clip: float = field(1.0, "gradient norm clip")
    max_train_queries: int = field(96, "training queries used (0 = all)")
    quick: bool = field(False, "small CPU run: fewer queries and epochs (QUICK)")

    # --quick (common.config_from_args; distill.py --quick trains its teacher with these): caps on unset fields
    QUICK = {"max_train_queries": 16, "epochs": 2, "max_dev_queries": 8, "rerank_k": 4}

    def __post_init__(self):
        check_train_config(self)  # sizes, finite numbers, contradictions; --bench beir named by its set (one_set)
        self.output_dir = self.output_dir or f"runs/teacher-{self.bench}"

    def group_size(self, data, split: str) -> int:
        """Pairs per group of (4b), the same for every group (`runtime.training.listwise_group_size`)."""
        return listwise_group_size(self, data, split)


def sft_loss(z: torch.Tensor, labels: torch.Tensor, y_pos: int, y_neg: int) -> torch.Tensor:
    """(4) cross-entropy of the answer token over the full vocabulary: target y+ if label 1, else y-.
    z (B, V) logits at the last prompt position, labels (B,) in {0, 1}; mean over the batch."""
    target = torch.where(labels.bool(), torch.full_like(labels, y_pos), torch.full_like(labels, y_neg))
    return F.cross_entropy(z.float(), target)


def listwise_loss(s: torch.Tensor) -> torch.Tensor:
    """(4b) [ours] the gold against its query's negatives: s (G, 1 + M) scores s_T (3) of G groups, the gold in column
    0; mean over groups of -log softmax(s)[:, 0]."""
    return -torch.log_softmax(s, dim=-1)[:, 0].mean()


def sft_pairs(data, split: str, cfg: TrainConfig, bm25, gen: torch.Generator) -> list[tuple[str, str, int]]:
    """(query text, doc id, label): every gold doc as positive, plus BM25-hard, hub and random negatives per query.
    With --listwise each gold is followed by the query's negatives (a group of (4b), `TrainConfig.group_size` pairs;
    a query with several gold documents has one group per gold)."""
    queries, qrels = data.split(split)
    qids = subset(list(queries), cfg.max_train_queries, gen)
    doc_ids = list(data.corpus)
    row = {d: i for i, d in enumerate(doc_ids)}
    hubs = gold_hubs(data, split) if cfg.neg_frequent else []
    size = cfg.group_size(data, split) if cfg.listwise else 0
    pairs = []
    for qid in qids:
        gold = {d for d, g in qrels[qid].items() if g > 0}
        hard = [d for d in bm25.top(queries[qid], cfg.neg_bm25 + len(gold) + 5) if d not in gold][:cfg.neg_bm25]
        if cfg.neg_frequent:
            hard += [d for d in hubs if d not in gold and d not in hard][:cfg.neg_frequent]
        if cfg.listwise:
            hard = hard[:size - 1]
        rand = [doc_ids[i] for i in sample_excluding(len(doc_ids), {row[d] for d in gold | set(hard)},
                                                     size - 1 - len(hard) if cfg.listwise else cfg.neg_random, gen)]
        if cfg.listwise:
            pairs += [(queries[qid], d, int(d == g)) for g in sorted(gold) for d in [g] + hard + rand]
        else:
            pairs += [(queries[qid], d, 1) for d in sorted(gold)]
            pairs += [(queries[qid], d, 0) for d in hard + rand]
    return pairs


def train(teacher: Teacher, data, split: str, cfg: TrainConfig, bm25, pairs: list | None = None, dev=None) -> dict:
    """SFT (4) on `sft_pairs` or on the given (query text, doc id, label) `pairs` (the runtime, `training.SFT`: AdamW,
    warmup + cosine, clipping; with `dev`, the --dev-every learning curve). Returns the loss history and the curve."""
    gen = torch.Generator().manual_seed(cfg.seed + (0 if pairs is None else 2))
    pairs = sft_pairs(data, split, cfg, bm25, gen) if pairs is None else pairs
    seqs = [teacher.prompt.teacher(q, data.doc_text(d)) for q, d, _ in pairs]
    size = cfg.group_size(data, split) if cfg.listwise else 1  # --listwise: whole groups per micro-batch and rank
    sft = SFT(teacher, seqs, cfg, size, dev)  # frozen bottom once, trained blocks, torchrun, fp32 masters, resume

    def loss_fn(z: torch.Tensor, rows: list[int]) -> torch.Tensor:
        labels = torch.tensor([pairs[i][2] for i in rows], device=z.device)
        loss = sft_loss(z, labels, teacher.y_pos, teacher.y_neg)
        if cfg.listwise:  # rows hold whole groups, the gold first in each
            s = (z[:, teacher.y_pos] - z[:, teacher.y_neg]).float().view(-1, size)
            loss = loss + cfg.listwise * listwise_loss(s)
        return loss

    for epoch in range(cfg.epochs):
        order = [size * g + j for g in torch.randperm(len(pairs) // size, generator=gen).tolist() for j in range(size)]
        for batch in sft.batches(order):
            sft.step(sft.backward(batch, loss_fn))
    return sft.finish() | {"pair_list": pairs}


# ---------------------------------------------------------------------------- python teacher.py train
def train_teacher(cfg: TrainConfig) -> dict:
    """SFT (4) of the base model on the bench's training split (chosen on dev; the test split is never read), a
    second pass with its own mistakes (--neg-self), the checkpoint saved; the dev metric before and after."""
    set_seed(cfg.seed)
    device = resolve_device(cfg.device)  # inputs and settings are checked before anything is written
    with parallel.main_first():  # a download or unpacking happens once
        data = load_bench(cfg.bench, cfg.data_dir or None)
    start_teacher(cfg, data)  # the train and dev splits and the settings checked, then the output folder
    bm25 = BM25({d: data.doc_text(d) for d in data.corpus})
    lm, tok = load_llm(cfg.model, cfg.device, sft_dtype(cfg, device), cfg.attn_implementation)
    base_fp = fingerprint(lm)
    teacher = Teacher(lm, tok, cfg.max_doc_tokens, cfg.batch_size, cfg.quiet,
                      instruction=instruction_for(cfg.instruction, cfg.bench))
    dev = DevSet(teacher, data, "dev", bm25, cfg, split_point(lm, cfg.train_layers), "train")
    before = dev.before(teacher, Path(cfg.output_dir) / "dev_before.json", cfg.resume)  # kept for --resume

    hist = train(teacher, data, "train", cfg, bm25, dev=dev)
    if cfg.neg_self:  # a second pass over the pairs and the teacher's own mistakes
        mined = mine_negatives(teacher, data, "train", cfg, bm25, hist["pair_list"])
        print(f"[teacher] mined {len(mined)} negatives (its own top-ranked wrong documents); training again")
        hist = merge_passes(hist, train(teacher, data, "train", cfg, bm25, hist["pair_list"] + mined))

    path, meta = save_trained(teacher, cfg, base_fp, before, hist)  # the checkpoint, then the resumable state dropped
    if hist["fsdp"]:  # the sharded model is done: every rank reloads the gathered checkpoint for the dev metric
        teacher, _ = load_teacher(cfg.output_dir, device=cfg.device, batch_size=cfg.batch_size, quiet=cfg.quiet,
                                  attn=cfg.attn_implementation)
        dev = DevSet(teacher, data, "dev", bm25, cfg, 0, "train")
    return report_trained(path, cfg, meta, dev.metric(teacher, "dev (trained)"), hist)


# ---------------------------------------------------------------------------- python teacher.py score
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    add_dataclass_args(sub.add_parser("train", help="SFT (4) and save a checkpoint"), TrainConfig)
    s = sub.add_parser("score", help="score one (query, document) pair")
    for flag in ("--query", "--doc"):
        s.add_argument(flag, required=True)
    s.add_argument("--checkpoint", default=None)
    s.add_argument("--model", default=None, help=f"base model without --checkpoint (default {DEFAULT_MODEL})")
    s.add_argument("--device", default="auto")
    return p


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    if args.cmd == "train":
        train_teacher(config_from_args(TrainConfig, args, argv))
        return
    for flag, text in (("--query", args.query), ("--doc", args.doc)):
        if not text.strip():
            raise ValueError(f"{flag} is empty or only whitespace")
    teacher, _ = load_teacher(args.checkpoint, args.model, args.device)
    s = teacher.score([args.query], [args.doc]).item()  # (3)
    print(f"s_T = {s:.4f}   p(yes | yes, no) = {1 / (1 + math.exp(-s)):.4f}")


if __name__ == "__main__":
    cli(main, again="rerun the command")
