"""Corpora for the student: the offline encodings h_d (6) (and h_q (5) of query sets) cached on disk, and the
`Index` of B h_d that one trained predictor scores exactly by (7) (`python student.py index|search`).

The cache is keyed by the model fingerprint, the prompt pieces, the corpus and the truncation length; a cache made
under another key is refused, never reused. Encoded in shards of SHARD texts (a killed run resumes after its last
finished shard), then joined into one raw float16 file that is memory-mapped, its digest checked once per version.

Choices not fixed by the paper: the shard size (`SHARD` documents); B h_d kept in float16 in an index (`--dtype`).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from runtime import parallel
from runtime.common import IntegrityError, file_digest, load_tensors, progress, read_json, save_tensors, write_json
from runtime.checkpoints import predictor_digest
from runtime.files import doc_text
from runtime.llm import fingerprint
from runtime.metrics import topk_blocked

INDEX_DTYPE = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}  # dtypes of B h_d
SHARD = 512


class StaleCacheError(ValueError):
    """A document cache made for other weights, prompt or corpus."""


# ---------------------------------------------------------------------------- the encoding cache
def prompt_pieces(prompt) -> dict:
    """What a cache of encodings or scores depends on besides the weights: the prompt's pieces (teacher.Prompt) as
    text, and the document budget."""
    dec = prompt.tok.decode
    return {"pre": dec(prompt.pre), "mid": dec(prompt.mid), "post": dec(prompt.post), "pre_q": dec(prompt.pre_q),
            "post_q": dec(prompt.post_q), "max_doc_tokens": prompt.max_doc_tokens}


def cache_key(student, doc_ids: list[str], texts: list[str], kind: str) -> dict:
    """What a cache of encodings depends on: the weights, the texts, and the prompt pieces of its kind (a document
    prefix (6) ends before the question, so documents do not depend on the instruction; queries (5) do)."""
    h = hashlib.blake2b(digest_size=12)
    for d, t in zip(doc_ids, texts):
        h.update(d.encode() + b"\0" + t.encode() + b"\1")
    pieces = ("pre", "max_doc_tokens") if kind == "docs" else ("pre_q", "post_q")
    prompt = {k: v for k, v in prompt_pieces(student.prompt).items() if k in pieces}
    reading = getattr(student, "reading", "last")  # (6m): caches of the last token keep the key they had before it
    return {"model_fingerprint": fingerprint(student.lm), "prompt": prompt, "kind": kind,
            "corpus": h.hexdigest(), "n_docs": len(doc_ids)} | ({"reading": reading} if reading != "last" else {})


def encode_corpus(student, doc_ids: list[str], texts: list[str], folder: str | Path,
                  refresh: bool = False, kind: str = "docs") -> torch.Tensor:
    """h_d (6) for a corpus (kind="docs"), or h_q (5) for a query set (kind="queries"), (n, H) float16, cached in
    `folder`: encoded in shards of SHARD texts (a killed run resumes after its last finished shard), then joined
    into one raw float16 file, `encodings.f16`, and the shards removed. The result is that file memory-mapped (not
    read into memory: a rank reads only the rows it scores), its digest checked once per file version
    (`common.file_digest`). Under torchrun the ranks encode each shard together (`llm.last_hidden`), rank 0 writes,
    and every rank maps the same file (so the cache must be on a filesystem every rank sees)."""
    folder = Path(folder)
    encode = {"docs": student.encode_docs, "queries": student.encode_queries}[kind]
    key = cache_key(student, doc_ids, texts, kind)
    meta_path, joined = folder / "key.json", folder / "encodings.f16"
    if refresh and folder.exists() and parallel.is_main():
        shutil.rmtree(folder)  # rebuilt from scratch: stale or damaged shards are never reused
    parallel.barrier()
    hidden = student.lm.config.hidden_size
    if meta_path.exists():
        old = read_json(meta_path, "delete the folder or pass --refresh-cache")
        diff = [k for k in key if old.get(k) != key[k]]
        if diff:
            raise StaleCacheError(f"{meta_path}: document cache made for different {', '.join(diff)} "
                                  "(model weights, prompt or corpus changed); delete the folder or pass "
                                  "--refresh-cache")
        if "digest" in old and joined.exists():
            if file_digest(joined) != old["digest"]:
                raise IntegrityError(f"{joined}: content does not match the digest in {meta_path.name} (damaged or "
                                     "truncated); pass --refresh-cache to rebuild the cache")
            return _mapped(joined, len(doc_ids), hidden)
    folder.mkdir(parents=True, exist_ok=True)
    if not meta_path.exists():
        write_json(meta_path, key)
    starts = range(0, len(doc_ids), SHARD)
    done = parallel.broadcast({i for i in starts if all(
        (folder / f"shard-{i // SHARD:05d}.safetensors{ext}").exists() for ext in ("", ".json"))})
    for i in progress(starts, desc=f"{kind} cache", quiet=student.teacher.quiet or len(starts) < 2):
        if i not in done:
            save_tensors(folder / f"shard-{i // SHARD:05d}.safetensors",
                         {"h_d": encode(texts[i:i + SHARD], desc=f"{kind} {i}+").half()},
                         {"start": i, "corpus": key["corpus"]})
    if parallel.is_main():  # join the shards, checked, into one file; then drop them
        tmp = joined.with_name(joined.name + f".tmp{os.getpid()}")
        with open(tmp, "wb") as out:
            for i in starts:
                tensors, _ = load_tensors(folder / f"shard-{i // SHARD:05d}.safetensors",
                                          {"start": i, "corpus": key["corpus"]},
                                          fix="pass --refresh-cache to rebuild the cache")
                out.write(tensors["h_d"].half().contiguous().numpy().tobytes())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, joined)
        write_json(meta_path, key | {"digest": file_digest(joined), "dtype": "float16", "rows": len(doc_ids),
                                     "hidden": hidden})
        for i in starts:
            for ext in ("", ".json"):
                (folder / f"shard-{i // SHARD:05d}.safetensors{ext}").unlink(missing_ok=True)
    parallel.barrier()
    return _mapped(joined, len(doc_ids), hidden)


def _mapped(path: Path, rows: int, hidden: int) -> torch.Tensor:
    """A raw float16 (rows, hidden) file as a tensor mapped from disk (private, copy-on-write)."""
    if rows == 0:
        return torch.empty(0, hidden, dtype=torch.float16)
    expect = rows * hidden * 2
    if path.stat().st_size != expect:
        raise IntegrityError(f"{path}: {path.stat().st_size} bytes, not the {expect} of {rows} x {hidden} float16 "
                             "(truncated); pass --refresh-cache to rebuild the cache")
    return torch.from_file(str(path), shared=False, size=rows * hidden, dtype=torch.float16).view(rows, hidden)


# ---------------------------------------------------------------------------- index and search
def ids_digest(ids: list[str]) -> str:
    return hashlib.blake2b(json.dumps(ids).encode(), digest_size=12).hexdigest()


def text_digests(texts: list[str]) -> torch.Tensor:
    """An 8-byte blake2b digest of each document's text, (n, 8) uint8: what an index remembers of its corpus."""
    rows = [list(hashlib.blake2b(t.encode(), digest_size=8).digest()) for t in texts]
    return torch.tensor(rows, dtype=torch.uint8).reshape(len(rows), 8)


def corpus_changes(index: "Index", corpus: dict[str, dict[str, str]]) -> str:
    """'' when `corpus` is the one the index was built from, else what differs, in words."""
    row = {d: i for i, d in enumerate(index.ids)}
    added = [d for d in corpus if d not in row]
    removed = [d for d in index.ids if d not in corpus]
    kept = [d for d in index.ids if d in corpus]
    new = text_digests([doc_text(corpus[d]) for d in kept])
    old = index.doc_digest[[row[d] for d in kept]] if kept else new
    edited = [kept[i] for i in (old != new).any(dim=1).nonzero().flatten().tolist()]
    parts = [f"{len(x)} {w} (first {x[0]!r})" for x, w in ((edited, "edited"), (added, "added"), (removed, "removed"))
             if x]
    return ", ".join(parts)


INDEX_FILES = {"h_d", "ids.json", "index.safetensors", "index.safetensors.json"}  # what `Index.build` writes


class Index:
    """A corpus ready for the student: `doc_side` = B h_d (n, P) for its documents in a compact dtype, and their
    ids. Every document is scored for a query by the exact factorised predictor (7) (`Predictor.scores`); the
    only approximation is the dtype of B h_d (float16: scores within ~1e-3 relative of float32, see the README)."""

    def __init__(self, ids: list[str], doc_side: torch.Tensor, meta: dict, doc_digest: torch.Tensor | None = None):
        if len(ids) != doc_side.shape[0]:
            raise ValueError(f"index: {len(ids)} ids for {doc_side.shape[0]} rows of B h_d")
        self.ids, self.doc_side, self.meta, self.doc_digest = ids, doc_side, meta, doc_digest

    @classmethod
    def from_h_d(cls, student, ids: list[str], h_d: torch.Tensor, dtype: str = "float16") -> "Index":
        """B h_d of cached document embeddings h_d (n, H), computed in float32 and kept in `dtype`."""
        dev, out = student.u.device, []
        with torch.no_grad():
            for i in range(0, h_d.shape[0], 65536):
                side = student.predictor.doc_side(h_d[i:i + 65536].to(dev).float())
                if dtype == "float16" and side.abs().max() > torch.finfo(torch.float16).max:
                    raise ValueError("index: B h_d exceeds the float16 range; use --dtype bfloat16 or float32")
                out.append(side.to(INDEX_DTYPE[dtype]).cpu())
        doc_side = torch.cat(out) if out else torch.empty(0, student.predictor.A.out_features)
        return cls(list(ids), doc_side, {"kind": "index", "dtype": dtype, "n_docs": len(ids)})

    @classmethod
    def build(cls, student, corpus: dict[str, dict[str, str]], folder: str | Path, dtype: str = "float16",
              refresh: bool = False, corpus_path: str = "") -> "Index":
        """Encode a corpus (6) into `folder` (the fingerprinted, resumable, sharded cache of `encode_corpus` under
        folder/h_d), then save B h_d and the ids as folder/index.safetensors (+ sidecar) and folder/ids.json."""
        folder = Path(folder)
        if (folder / "ids.json").exists() and not any((folder / f).exists() for f in ("index.safetensors.json", "h_d")):
            raise FileExistsError(f"{folder / 'ids.json'}: not an index's (no index or encodings beside it); build the "
                                  "index in a folder of its own")
        ids = list(corpus)
        texts = [doc_text(corpus[d]) for d in ids]
        h_d = encode_corpus(student, ids, texts, folder / "h_d", refresh)
        index = cls.from_h_d(student, ids, h_d, dtype)
        index.doc_digest = text_digests(texts)
        index.meta |= {"student": getattr(student, "folder", ""), "corpus": corpus_path,
                       "predictor": predictor_digest(student),
                       "teacher_fingerprint": fingerprint(student.lm)}
        write_json(folder / "ids.json", ids)
        save_tensors(folder / "index.safetensors", {"doc_side": index.doc_side, "doc_digest": index.doc_digest},
                     {**index.meta, "ids_digest": ids_digest(ids)})
        return index

    @classmethod
    def load(cls, folder: str | Path, student=None) -> "Index":
        """An index saved by `build`; with `student`, an index made by another student (other predictor or teacher)
        is refused."""

        folder = Path(folder)
        path = folder / "index.safetensors"
        if not path.exists() or not Path(str(path) + ".json").exists():
            raise FileNotFoundError(f"{folder}: no index here (index.safetensors and its sidecar); build one with "
                                    "`python student.py index`")
        tensors, meta = load_tensors(path, {"kind": "index"}, fix="build the index again with `student.py index "
                                     "--overwrite --refresh-cache`")
        ids = read_json(folder / "ids.json", "build the index again with `student.py index --overwrite`")
        if ids_digest(ids) != meta.get("ids_digest"):
            raise ValueError(f"{folder / 'ids.json'}: does not match {path.name} (damaged); build the index again")
        if student is not None and (meta["predictor"], meta["teacher_fingerprint"]) != (
                predictor_digest(student), fingerprint(student.lm)):
            raise ValueError(f"{path}: made by another student (predictor {meta['predictor']}, teacher "
                             f"{meta['teacher_fingerprint']}); build an index with this student")
        return cls(ids, tensors["doc_side"], meta, tensors["doc_digest"])

    def scores(self, student, h_q: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """s_S (7) of every document for each query h_q (B, H) -> (B, n) float32, queries in batches of `batch`."""
        if not self.ids:
            raise ValueError("index: it holds no document")
        dev = student.u.device
        side = self.doc_side.to(dev)
        with torch.no_grad():
            rows = [student.predictor.scores(h_q[i:i + batch].to(dev).float(), side, student.u).cpu()
                    for i in range(0, h_q.shape[0], batch)]
        return torch.cat(rows) if rows else torch.empty(0, len(self.ids))

    def topk(self, student, h_q: torch.Tensor, k: int,
             block: int = 1 << 16) -> tuple[torch.Tensor, torch.Tensor]:
        """The top k (scores, document rows) of every query h_q (B, H) over the whole index, best first, scored a
        block of documents at a time (`metrics.topk_blocked`: the B x n matrix never exists; ranks share the blocks
        under torchrun)."""
        if not self.ids:
            raise ValueError("index: it holds no document")
        dev = student.u.device
        q = h_q.to(dev).float()
        with torch.no_grad():
            return topk_blocked(lambda i, j: student.predictor.scores(q, self.doc_side[i:j].to(dev), student.u),
                                len(self.ids), h_q.shape[0], k, block)

    def scores_at(self, student, h_q: torch.Tensor, rows: list[list[int]]) -> list[list[float]]:
        """s_S (7) of query i against the documents rows[i] only (a candidate set per query), exact."""
        dev, out = student.u.device, []
        with torch.no_grad():
            for q, r in zip(h_q, rows):
                out.append(student.predictor.scores(q[None].to(dev).float(), self.doc_side[r].to(dev),
                                                    student.u)[0].cpu().tolist())
        return out

    def search(self, student, queries: list[str], k: int = 10,
               candidates: list[list[str]] | None = None) -> list[list[tuple[str, float]]]:
        """The top k (doc id, score) of each query, best first. With `candidates` (a first stage's doc ids per
        query) only those documents are scored; an id the index does not hold is an error."""
        if not self.ids:
            raise ValueError("index: it holds no document")
        h_q = student.encode_queries(queries)
        if candidates is None:
            vals, idx = self.topk(student, h_q, k)
            return [[(self.ids[j], v) for j, v in zip(i.tolist(), s.tolist())] for i, s in zip(idx, vals)]
        row = {d: i for i, d in enumerate(self.ids)}
        out = []
        for q, cand in zip(h_q, candidates):
            unknown = [d for d in cand if d not in row]
            if unknown:
                raise KeyError(f"index: unknown document id {unknown[0]!r} among the first stage's candidates")
            sub = Index(cand, self.doc_side[[row[d] for d in cand]], self.meta)
            s = sub.scores(student, q[None])[0]
            vals, idx = s.topk(min(k, len(cand)))
            out.append([(cand[j], v) for j, v in zip(idx.tolist(), vals.tolist())])
        return out
