"""The student: the trained teacher, frozen, reading queries and documents separately (METHOD.md (5)-(7)).

The student shares the teacher's module (one copy of the weights); nothing of the LLM trains, only the predictor.
    h_q = f(prompt_q(q))[last]      (5) the teacher prompt without its Document line
    h_d = f(prompt_d(d))[last]      (6) the teacher prompt cut right after the document: cacheable offline
    h_hat = g_phi(h_q, h_d)         (7) then the frozen head: z_S = W h_hat, s_S = z_S[y+] - z_S[y-]

Document embeddings are cached on disk in shards, keyed by the model fingerprint, the prompt pieces and the
truncation length; a cache made under another key is refused, never reused. An `Index` is such a cache turned into
B h_d for one trained predictor, searched by the exact factorised score (7):

    python student.py index --student runs/distill-virtualhome --corpus DIR/corpus.jsonl --out runs/index-DIR
    python student.py search --index runs/index-DIR --query "Task: make coffee" [--k 10]
    python student.py search --index runs/index-DIR --queries DIR/queries.jsonl --out run.trec

Choices not fixed by the paper: the two prompts (5) and (6); the shard size of the cache (`SHARD` documents); B h_d
kept in float16 in an index (`--dtype`).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import torch

import parallel
from common import (IntegrityError, file_digest, folder_owner, load_tensors, progress, read_json, save_tensors,
                    write_json)
from jepa import INDEX_DTYPE, Predictor
from llm import ATTENTION, fingerprint, last_hidden, weights_fingerprint
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
        """W (V, H), frozen, float32: the weight itself for a float32 model, else a new float32 copy (V x H x 4 bytes:
        2.2 GB for Qwen2-7B), so a loop takes it once (`forward(..., head=)`)."""
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

    def forward(self, h_q: torch.Tensor, h_d: torch.Tensor,
                head: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Paired (N, H) inputs -> h_hat (N, H), z_S (N, V), s_S (N,). Gradients reach only the predictor.
        `head`: W already in float32 (a training loop passes it once per round, not a fresh copy per step)."""
        h_hat = self.predictor(h_q, h_d)
        z = h_hat @ (self.head if head is None else head).T
        return h_hat, z, z[:, self.y_pos] - z[:, self.y_neg]

    def score_all(self, h_q: torch.Tensor, h_d: torch.Tensor) -> torch.Tensor:
        """Exact factorised s_S (7) for every query x document, (B, n): a float32 `Index` of h_d, scored."""
        return Index.from_h_d(self, [str(i) for i in range(h_d.shape[0])], h_d, "float32").scores(self, h_q)


# ---------------------------------------------------------------------------- document-embedding cache
def cache_key(student: Student, doc_ids: list[str], texts: list[str], kind: str) -> dict:
    """What a cache of encodings depends on: the weights, the texts, and the prompt pieces of its kind (a document
    prefix (6) ends before the question, so documents do not depend on the instruction; queries (5) do)."""
    h = hashlib.blake2b(digest_size=12)
    for d, t in zip(doc_ids, texts):
        h.update(d.encode() + b"\0" + t.encode() + b"\1")
    pieces = ("pre", "max_doc_tokens") if kind == "docs" else ("pre_q", "post_q")
    prompt = {k: v for k, v in student.prompt.describe().items() if k in pieces}
    return {"model_fingerprint": fingerprint(student.lm), "prompt": prompt, "kind": kind,
            "corpus": h.hexdigest(), "n_docs": len(doc_ids)}


def encode_corpus(student: Student, doc_ids: list[str], texts: list[str], folder: str | Path,
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


def save_predictor(student: Student, path: str | Path, meta: dict) -> None:
    save_tensors(path, student.predictor.state_dict(), {"kind": "predictor", **meta})


def load_predictor(student: Student, path: str | Path, teacher_fingerprint: str) -> dict:
    """Load predictor weights; the sidecar's teacher fingerprint must match the loaded teacher."""
    tensors, meta = load_tensors(path, {"kind": "predictor", "teacher_fingerprint": teacher_fingerprint},
                                 fix="run distill.py again")
    width = tensors["A.weight"].shape[0]
    if width != student.predictor.A.out_features:
        student.predictor = Predictor(student.lm.config.hidden_size, width).to(student.u.device)
    student.predictor.load_state_dict(tensors)
    return meta


def load_student(folder: str | Path, device: str = "auto", quiet: bool = False, batch_size: int = 8,
                 attn: str = "sdpa") -> Student:
    """A distill.py output folder (predictor.safetensors + sidecar) -> the Student: its teacher checkpoint, frozen,
    with the trained predictor."""
    from teacher import load_teacher

    path = Path(folder) / "predictor.safetensors"
    side = Path(str(path) + ".json")
    if not path.exists() or not side.exists():
        raise FileNotFoundError(f"{path}: no student checkpoint; run `python distill.py` or pass --student DIR")
    meta = read_json(side, "run distill.py again")
    # the teacher where distill.py saw it (absolute), else relative to this working folder, else next to the student
    # folder (runs/distill-x beside runs/teacher-x); the fingerprint check below refuses a wrong one
    tries = [Path(meta.get("teacher_checkpoint_abs", "")), Path(meta["teacher_checkpoint"]),
             Path(folder).resolve().parent.parent / meta["teacher_checkpoint"]]
    ckpt = next((t for t in tries if t.name and t.exists()), tries[1])
    teacher, _ = load_teacher(ckpt.parent, device=device, batch_size=batch_size, quiet=quiet, attn=attn)
    student = Student(teacher)
    fp = fingerprint(teacher.lm)
    if meta.get("teacher_fingerprint") != fp and meta.get("teacher_fingerprint") == weights_fingerprint(teacher.lm):
        fp = meta["teacher_fingerprint"]  # distilled before file digests: the identity was a hash of the weights
    load_predictor(student, path, fp)
    student.folder, student.teacher_dir = str(Path(folder).resolve()), str(ckpt.parent.resolve())
    return student


def predictor_digest(student: Student) -> str:
    """Identity of the trained predictor (an index holds B h_d, which only this predictor can score)."""
    h = hashlib.blake2b(digest_size=12)
    for name, t in student.predictor.state_dict().items():
        h.update(name.encode() + t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------- index and search
def ids_digest(ids: list[str]) -> str:
    return hashlib.blake2b(json.dumps(ids).encode(), digest_size=12).hexdigest()


def text_digests(texts: list[str]) -> torch.Tensor:
    """An 8-byte blake2b digest of each document's text, (n, 8) uint8: what an index remembers of its corpus."""
    rows = [list(hashlib.blake2b(t.encode(), digest_size=8).digest()) for t in texts]
    return torch.tensor(rows, dtype=torch.uint8).reshape(len(rows), 8)


def corpus_changes(index: "Index", corpus: dict[str, dict[str, str]]) -> str:
    """'' when `corpus` is the one the index was built from, else what differs, in words."""
    from data import doc_text

    if index.doc_digest is None:
        return ""
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


class Index:
    """A corpus ready for the student: `doc_side` = B h_d (n, P) for its documents in a compact dtype, and their
    ids. Every document is scored for a query by the exact factorised predictor (7) (`Predictor.scores`); the
    only approximation is the dtype of B h_d (float16: scores within ~1e-3 relative of float32, see the README)."""

    def __init__(self, ids: list[str], doc_side: torch.Tensor, meta: dict, doc_digest: torch.Tensor | None = None):
        if len(ids) != doc_side.shape[0]:
            raise ValueError(f"index: {len(ids)} ids for {doc_side.shape[0]} rows of B h_d")
        self.ids, self.doc_side, self.meta, self.doc_digest = ids, doc_side, meta, doc_digest

    @classmethod
    def from_h_d(cls, student: Student, ids: list[str], h_d: torch.Tensor, dtype: str = "float16") -> "Index":
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
    def build(cls, student: Student, corpus: dict[str, dict[str, str]], folder: str | Path, dtype: str = "float16",
              refresh: bool = False, corpus_path: str = "") -> "Index":
        """Encode a corpus (6) into `folder` (the fingerprinted, resumable, sharded cache of `encode_corpus` under
        folder/h_d), then save B h_d and the ids as folder/index.safetensors (+ sidecar) and folder/ids.json."""
        from data import doc_text

        folder = Path(folder)
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
    def load(cls, folder: str | Path, student: Student | None = None) -> "Index":
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
        return cls(ids, tensors["doc_side"], meta, tensors.get("doc_digest"))

    def scores(self, student: Student, h_q: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """s_S (7) of every document for each query h_q (B, H) -> (B, n) float32, queries in batches of `batch`."""
        if not self.ids:
            raise ValueError("index: it holds no document")
        dev = student.u.device
        side = self.doc_side.to(dev)
        with torch.no_grad():
            rows = [student.predictor.scores(h_q[i:i + batch].to(dev).float(), side, student.u).cpu()
                    for i in range(0, h_q.shape[0], batch)]
        return torch.cat(rows) if rows else torch.empty(0, len(self.ids))

    def topk(self, student: Student, h_q: torch.Tensor, k: int,
             block: int = 1 << 16) -> tuple[torch.Tensor, torch.Tensor]:
        """The top k (scores, document rows) of every query h_q (B, H) over the whole index, best first, scored a
        block of documents at a time (`metrics.topk_blocked`: the B x n matrix never exists; ranks share the blocks
        under torchrun)."""
        from metrics import topk_blocked

        if not self.ids:
            raise ValueError("index: it holds no document")
        dev = student.u.device
        q = h_q.to(dev).float()
        with torch.no_grad():
            return topk_blocked(lambda i, j: student.predictor.scores(q, self.doc_side[i:j].to(dev), student.u),
                                len(self.ids), h_q.shape[0], k, block)

    def scores_at(self, student: Student, h_q: torch.Tensor, rows: list[list[int]]) -> list[list[float]]:
        """s_S (7) of query i against the documents rows[i] only (a candidate set per query), exact."""
        dev, out = student.u.device, []
        with torch.no_grad():
            for q, r in zip(h_q, rows):
                out.append(student.predictor.scores(q[None].to(dev).float(), self.doc_side[r].to(dev),
                                                    student.u)[0].cpu().tolist())
        return out

    def search(self, student: Student, queries: list[str], k: int = 10,
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


# ---------------------------------------------------------------------------- CLI
def writable_folder(path: Path, flag: str) -> None:
    """Checked before a model loads: `path` (a folder, made if absent) accepts a file."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"{flag} {path}: cannot write there ({e.strerror}); choose a writable folder") from e


def check_cli_values(args) -> None:
    """Every number of the index / search commands, checked before anything loads."""
    for name in ("batch_size", "k", "first_k"):
        if getattr(args, name, 1) < 1:
            raise ValueError(f"--{name.replace('_', '-')} is {getattr(args, name)}; it must be >= 1")


def report_cuts(student: Student, tag: str) -> None:
    """Printed once per run: how many documents and queries were cut to fit the window or --max-doc-tokens."""
    cut = student.prompt.cut_counts()
    if any(cut.values()):
        print(f"[{tag}] cut to fit (the model's window / max_doc_tokens): {cut['documents']} documents, "
              f"{cut['queries']} queries")


def cmd_index(args) -> None:
    from data import load_corpus

    check_cli_values(args)
    corpus = load_corpus(args.corpus)  # checked before anything is written
    out = Path(args.out)
    if (out / "index.safetensors").exists() and not args.overwrite:
        raise FileExistsError(f"{out}: holds an index; pass --overwrite to rebuild it")
    owner = folder_owner(out) if out.is_dir() else None
    if owner not in (None, "index"):
        raise FileExistsError(f"--out {out}: made by {owner}.py; an index needs a folder of its own")
    writable_folder(out, "--out")
    student = load_student(args.student, args.device, args.quiet, args.batch_size, args.attn_implementation)
    t0 = time.perf_counter()
    index = Index.build(student, corpus, out, args.dtype, args.refresh_cache, str(Path(args.corpus).resolve()))
    print(f"[index] {len(index.ids)} documents -> {out} ({index.meta['dtype']} B h_d, "
          f"{index.doc_side.numel() * index.doc_side.element_size() / 2 ** 20:.1f} MiB) in "
          f"{time.perf_counter() - t0:.1f}s")
    report_cuts(student, "index")


def cmd_search(args) -> None:
    from data import doc_text, load_corpus, load_queries
    from metrics import BM25, write_trec

    if (args.query is not None) == bool(args.queries):
        raise ValueError("give one of --query TEXT or --queries queries.jsonl")
    if args.query is not None and not args.query.strip():
        raise ValueError("--query is empty or only whitespace: give the text to search for")
    check_cli_values(args)
    queries = {"query": args.query} if args.query is not None else load_queries(args.queries)
    folder = Path(args.index)
    side_path = folder / "index.safetensors.json"
    if not side_path.exists():
        raise FileNotFoundError(f"--index {folder}: no index here (index.safetensors.json is missing); build one "
                                "with `python student.py index`")
    side = read_json(side_path, "build the index again with `student.py index --overwrite`")
    if args.out:
        writable_folder(Path(args.out).resolve().parent, "--out")
    corpus = None
    if side.get("corpus") and Path(side["corpus"]).exists():
        corpus = load_corpus(side["corpus"])
    elif args.first_stage == "bm25" or args.reindex:
        raise FileNotFoundError(f"{side_path}: the corpus the index was built from, {side.get('corpus')!r}, is gone")
    student = load_student(args.student or side.get("student") or "", args.device, args.quiet, args.batch_size,
                           args.attn_implementation)
    student.predictor.compiled = args.compile
    index = Index.load(folder, student)
    changes = corpus_changes(index, corpus) if corpus is not None else ""
    if changes and not args.reindex:
        raise ValueError(f"{side['corpus']}: the corpus changed since the index was built ({changes}); rebuild "
                         "it with --reindex, or `python student.py index ... --overwrite --refresh-cache`")
    if changes:
        print(f"[search] the corpus changed ({changes}): rebuilding the index")
        index = Index.build(student, corpus, folder, index.meta["dtype"], True, side["corpus"])
    if index.doc_digest is None:
        print(f"[search] {folder} predates per-document digests: the corpus cannot be checked against it")
    t0 = time.perf_counter()
    cands = None
    if args.first_stage == "bm25":
        bm25 = BM25({d: doc_text(corpus[d]) for d in corpus})
        cands = [bm25.top(q, args.first_k) for q in queries.values()]
    hits = index.search(student, list(queries.values()), args.k, cands)
    dt = time.perf_counter() - t0
    if args.out:
        write_trec(Path(args.out), {q: dict(h) for q, h in zip(queries, hits)}, "student")
        print(f"[search] {len(queries)} queries x {len(index.ids)} documents in {dt:.2f}s -> {args.out}")
    else:
        for rank, (d, s) in enumerate(hits[0], 1):
            print(f"{rank:3d}  {s:9.4f}  {d}")
    report_cuts(student, "search")


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("index", help="encode a BEIR corpus into an index for a trained student")
    i.add_argument("--student", required=True, help="distill.py output folder (predictor.safetensors)")
    i.add_argument("--corpus", required=True, help="BEIR corpus.jsonl or the folder holding it")
    i.add_argument("--out", required=True, help="index folder")
    i.add_argument("--dtype", default="float16", choices=sorted(INDEX_DTYPE), help="dtype of B h_d")
    i.add_argument("--refresh-cache", action="store_true", help="re-encode the documents from scratch")
    i.add_argument("--overwrite", action="store_true", help="replace an existing index")
    s = sub.add_parser("search", help="search an index with one query or a queries.jsonl")
    s.add_argument("--index", required=True)
    s.add_argument("--student", default="", help="distill.py output folder (default: the one that built the index)")
    s.add_argument("--query", default=None)
    s.add_argument("--queries", default="", help="BEIR queries.jsonl")
    s.add_argument("--out", default="", help="TREC run file (with --queries)")
    s.add_argument("--k", type=int, default=10)
    s.add_argument("--first-stage", default="none", choices=["none", "bm25"],
                   help="score only a first stage's top --first-k (for corpora too large to score whole on a CPU)")
    s.add_argument("--first-k", type=int, default=1000)
    s.add_argument("--reindex", action="store_true",
                   help="rebuild the index when its corpus changed since it was built")
    s.add_argument("--compile", action="store_true", help="score through torch.compile's fused kernel")
    for a in (i, s):
        a.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        a.add_argument("--attn-implementation", default="sdpa", choices=list(ATTENTION), help="attention kernel")
        a.add_argument("--batch-size", type=int, default=8, help="texts per LLM forward")
        a.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    cmd_index(args) if args.cmd == "index" else cmd_search(args)


if __name__ == "__main__":
    from common import cli
    cli(main, again="rerun the same command (an index build continues from its finished shards)")
