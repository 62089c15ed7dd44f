"""What the teacher computed in a run, kept on disk so that it is never computed twice: the teacher targets h_T (1)
of distillation's pairs (`PairCache`, Step 4) and the teacher's scores s_T (3) of evaluation's pairs
(`TeacherScores`, shared by every run of the same teacher). Both are keyed by the teacher's fingerprint (its
passes score in float32 under every --dtype that keeps float32 weights, `llm.exact`).
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from runtime import parallel
from runtime.common import IntegrityError, cache_dir, load_tensors, progress, save_tensors
from runtime.index import prompt_pieces
from runtime.llm import fingerprint

CHUNK = 64  # teacher targets are computed and saved in chunks of at least this many pairs (2 batches per rank)


class PairCache:
    """h_T by (query id, doc id), persisted as one safetensors file per finished chunk."""

    def __init__(self, folder: Path, teacher_fp: str, refresh: bool = False):
        """Loads every finished chunk; a damaged one stops the run, or with `refresh` is deleted (its pairs are
        computed again)."""
        self.folder, self.fp = folder, teacher_fp
        self.h: dict[tuple[str, str], torch.Tensor] = {}
        folder.mkdir(parents=True, exist_ok=True)
        for path in sorted(folder.glob("chunk-*.safetensors")):
            try:
                t, meta = load_tensors(path, {"teacher_fingerprint": teacher_fp},
                                       fix="pass --refresh-cache to compute its pairs again")
            except IntegrityError as e:
                if not refresh:
                    raise
                print(f"[distill] {e}: deleted, its pairs are recomputed")
                if parallel.is_main():
                    path.unlink(missing_ok=True)
                    Path(str(path) + ".json").unlink(missing_ok=True)
                continue
            for key, row in zip(meta["pairs"], t["h_T"]):
                self.h[tuple(key)] = row

    def fill(self, pairs: list[tuple[str, str]], teacher, queries: dict[str, str], doc_text, tag: str,
             quiet: bool) -> int:
        """h_T (1) of the pairs not held yet, computed by the teacher in chunks, each saved as one file named by its
        pairs; returns how many were computed."""
        todo = [p for p in dict.fromkeys(pairs) if p not in self.h]
        size = max(CHUNK, 2 * parallel.world() * teacher.batch_size)  # every rank gets two batches per chunk
        chunks = [todo[i:i + size] for i in range(0, len(todo), size)]
        for chunk in progress(chunks, desc=f"Step 4: teacher targets {tag}", quiet=quiet):
            h = teacher.encode_pairs([queries[q] for q, _ in chunk], [doc_text(d) for _, d in chunk], desc="teacher")
            name = hashlib.blake2b(json.dumps(chunk).encode(), digest_size=8).hexdigest()  # its pairs: a resumed
            save_tensors(self.folder / f"chunk-{tag}-{name}.safetensors", {"h_T": h},  # round never overwrites one
                         {"teacher_fingerprint": self.fp, "pairs": [list(p) for p in chunk]})
            for p, row in zip(chunk, h):
                self.h[p] = row
        return len(todo)


class TeacherScores:
    """s_T (3) of every (query, document) pair one teacher has scored, kept in `folder` (scores.safetensors + a
    sidecar with the pair keys and the seconds they took) so that another student evaluated with the same teacher
    costs only the pairs not scored yet; `folder` None keeps them in memory for one run. A pair's key is a digest of
    the query text and the document text. Times are honest: every pair of a run counts at the cost per pair measured
    when it was computed."""

    def __init__(self, folder: str | Path | None = None):
        self.folder = Path(folder) if folder else None
        self.s: dict[str, float] = {}
        self.seconds, self.computed = 0.0, 0
        self.this_run = {"scored": 0, "from_cache": 0}  # pairs of this process: scored by the teacher / read back
        path = self.folder / "scores.safetensors" if self.folder else None
        if path is not None and path.exists():
            t, meta = load_tensors(path, {"kind": "teacher-scores"}, fix=f"delete {self.folder} (it is a cache)")
            self.s = dict(zip(meta["keys"], t["s_T"].tolist()))
            self.seconds, self.computed = meta["seconds"], meta["computed"]

    @staticmethod
    def key(query: str, doc: str) -> str:
        return hashlib.blake2b(f"{query}\0{doc}".encode(), digest_size=10).hexdigest()

    def run(self, teacher, queries: dict[str, str], cands: dict[str, list[str]], doc_text,
            desc: str = "teacher") -> tuple[dict[str, dict[str, float]], float]:
        """(run {qid: {doc id: s_T}} over `cands`, seconds those pairs cost the teacher)."""
        keys = {(q, d): self.key(queries[q], doc_text(d)) for q, ds in cands.items() for d in ds}
        todo: dict[str, list[str]] = {}
        for (q, d), k in keys.items():
            if k not in self.s:
                todo.setdefault(q, []).append(d)
        n_todo = sum(map(len, todo.values()))
        self.this_run["scored"] += n_todo
        self.this_run["from_cache"] += len(keys) - n_todo
        if todo:
            t0 = time.perf_counter()
            new = teacher.rerank(queries, todo, doc_text, desc)
            dt = time.perf_counter() - t0
            for q, ds in new.items():
                for d, v in ds.items():
                    self.s[keys[q, d]] = v
            self.seconds, self.computed = self.seconds + dt, self.computed + n_todo
            if self.folder is not None:
                save_tensors(self.folder / "scores.safetensors", {"s_T": torch.tensor(list(self.s.values()))},
                             {"kind": "teacher-scores", "keys": list(self.s), "seconds": self.seconds,
                              "computed": self.computed})
        run = {q: {d: self.s[keys[q, d]] for d in ds} for q, ds in cands.items()}
        return run, len(keys) * self.seconds / max(1, self.computed)


def teacher_scores_cache(teacher, bench: str) -> TeacherScores:
    """The TeacherScores of this teacher (its weights' fingerprint and its prompt) for `bench`, kept under
    $RABTRIEVER_CACHE/teacher-scores."""
    prompt = hashlib.blake2b(json.dumps(prompt_pieces(teacher.prompt), sort_keys=True).encode(),
                             digest_size=6).hexdigest()
    return TeacherScores(cache_dir("teacher-scores", f"{bench}-{fingerprint(teacher.lm)}-{prompt}"))
