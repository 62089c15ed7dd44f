"""The student: the trained teacher, frozen, reading queries and documents separately (METHOD.md (5)-(7)).

The student shares the teacher's module (one copy of the weights); nothing of the LLM trains, only the predictor.
    h_q = f(prompt_q(q))[last]      (5) the teacher prompt without its Document line
    h_d = f(prompt_d(d))[last]      (6) the teacher prompt cut right after the document: cacheable offline
    h_hat = g_phi(h_q, h_d)         (7) then the frozen head: z_S = W h_hat, s_S = z_S[y+] - z_S[y-]

Document embeddings are cached on disk in shards, keyed by the model fingerprint, the prompt pieces and the
truncation length; a cache made under another key is refused, never reused.

Choices not fixed by the paper: the two prompts (5) and (6); the shard size of the cache (`SHARD` documents).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

from common import load_tensors, progress, save_tensors, write_json
from jepa import Predictor
from llm import fingerprint, last_hidden
from teacher import Teacher

SHARD = 512


class StaleCacheError(ValueError):
    """A document cache made for other weights, prompt or corpus."""


class Student:
    """Frozen teacher trunk + head, with a trainable `predictor` between them."""

    def __init__(self, teacher: Teacher, width: int = 256):
        self.teacher = teacher
        self.lm = teacher.lm                     # shared, not copied
        self.lm.eval().requires_grad_(False)
        self.prompt = teacher.prompt
        head = self.lm.lm_head.weight
        self.predictor = Predictor(self.lm.config.hidden_size, width).to(head.device)
        self.y_pos, self.y_neg = teacher.y_pos, teacher.y_neg

    @property
    def head(self) -> torch.Tensor:
        """W (V, H), frozen, float32."""
        return self.lm.lm_head.weight.float()

    @property
    def u(self) -> torch.Tensor:
        """u = W[y+] - W[y-] (H,): s = u . h for any embedding h."""
        w = self.lm.lm_head.weight
        return (w[self.y_pos] - w[self.y_neg]).float()

    def encode_queries(self, texts: list[str], desc: str = "queries") -> torch.Tensor:
        """(5) h_q for each query, (N, H)."""
        seqs = [self.prompt.query_only(q) for q in texts]
        return last_hidden(self.lm, seqs, self.teacher.batch_size, self.teacher.pad_id, desc, self.teacher.quiet,
                           len(self.prompt.pre_q) if self.teacher.prefix_len else 0)

    def encode_docs(self, texts: list[str], desc: str = "documents") -> torch.Tensor:
        """(6) h_d for each document, (N, H)."""
        seqs = [self.prompt.doc_prefix(d) for d in texts]
        return last_hidden(self.lm, seqs, self.teacher.batch_size, self.teacher.pad_id, desc, self.teacher.quiet,
                           self.teacher.prefix_len)

    def forward(self, h_q: torch.Tensor, h_d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Paired (N, H) inputs -> h_hat (N, H), z_S (N, V), s_S (N,). Gradients reach only the predictor."""
        h_hat = self.predictor(h_q, h_d)
        z = h_hat @ self.head.T
        return h_hat, z, z[:, self.y_pos] - z[:, self.y_neg]

    @torch.no_grad()
    def score_all(self, h_q: torch.Tensor, h_d: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """Exact factorised s_S for every query x document, (B, n)."""
        dev = self.u.device
        side = self.predictor.doc_side(h_d.to(dev))
        rows = [self.predictor.scores(h_q[i:i + batch].to(dev), side, self.u).cpu()
                for i in range(0, h_q.shape[0], batch)]
        return torch.cat(rows) if rows else torch.empty(0, h_d.shape[0])


# ---------------------------------------------------------------------------- document-embedding cache
def cache_key(student: Student, doc_ids: list[str], texts: list[str], kind: str) -> dict:
    h = hashlib.blake2b(digest_size=12)
    for d, t in zip(doc_ids, texts):
        h.update(d.encode() + b"\0" + t.encode() + b"\1")
    return {"model_fingerprint": fingerprint(student.lm), "prompt": student.prompt.describe(), "kind": kind,
            "corpus": h.hexdigest(), "n_docs": len(doc_ids)}


def encode_corpus(student: Student, doc_ids: list[str], texts: list[str], folder: str | Path,
                  refresh: bool = False, kind: str = "docs") -> torch.Tensor:
    """h_d (6) for a corpus (kind="docs"), or h_q (5) for a query set (kind="queries"), cached in `folder` as
    shards of SHARD texts; resumes after a kill; (n, H)."""
    folder = Path(folder)
    encode = {"docs": student.encode_docs, "queries": student.encode_queries}[kind]
    key = cache_key(student, doc_ids, texts, kind)
    meta_path = folder / "key.json"
    if refresh and folder.exists():
        shutil.rmtree(folder)  # rebuilt from scratch: stale or damaged shards are never reused
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        diff = [k for k in key if old.get(k) != key[k]]
        if diff:
            raise StaleCacheError(f"{meta_path}: document cache made for different {', '.join(diff)} "
                                  "(model weights, prompt or corpus changed); delete the folder or pass "
                                  "--refresh-cache")
    folder.mkdir(parents=True, exist_ok=True)
    write_json(meta_path, key)
    shards = []
    starts = range(0, len(doc_ids), SHARD)
    for i in progress(starts, desc="doc cache", quiet=student.teacher.quiet or len(starts) < 2):
        path = folder / f"shard-{i // SHARD:05d}.safetensors"
        if path.exists() and Path(str(path) + ".json").exists():
            tensors, _ = load_tensors(path, {"start": i, "corpus": key["corpus"]},
                                      fix="pass --refresh-cache to rebuild the cache")
        else:
            tensors = {"h_d": encode(texts[i:i + SHARD], desc=f"{kind} {i}+")}
            save_tensors(path, tensors, {"start": i, "corpus": key["corpus"]})
        shards.append(tensors["h_d"])
    return torch.cat(shards) if shards else torch.empty(0, student.lm.config.hidden_size)


def save_predictor(student: Student, path: str | Path, meta: dict) -> None:
    save_tensors(path, student.predictor.state_dict(), {"kind": "predictor", **meta})


def load_predictor(student: Student, path: str | Path, teacher_fingerprint: str) -> dict:
    """Load predictor weights; the sidecar's teacher fingerprint must match the loaded teacher."""
    tensors, meta = load_tensors(path, {"kind": "predictor", "teacher_fingerprint": teacher_fingerprint})
    width = tensors["A.weight"].shape[0]
    if width != student.predictor.A.out_features:
        student.predictor = Predictor(student.lm.config.hidden_size, width).to(student.u.device)
    student.predictor.load_state_dict(tensors)
    return meta
