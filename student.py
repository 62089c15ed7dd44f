"""The student: the trained teacher, frozen, reading queries and documents separately (METHOD.md (5)-(7)).

The student shares the teacher's module (one copy of the weights); nothing of the LLM trains, only the predictor.
    h_q = f(prompt_q(q))[last]      (5) the teacher prompt without its Document line
    h_d = f(prompt_d(d))[last]      (6) the teacher prompt cut right after the document: cacheable offline
    h_hat = g_phi(h_q, h_d)         (7) then the frozen head: z_S = W h_hat, s_S = z_S[y+] - z_S[y-]

As a retriever, a corpus is encoded once (6) into an index of B h_d that the trained predictor scores exactly
(index.py):

    python student.py index --student runs/distill-virtualhome --corpus DIR/corpus.jsonl --out runs/index-DIR
    python student.py search --index runs/index-DIR --query "Task: make coffee" [--k 10]
    python student.py search --index runs/index-DIR --queries DIR/queries.jsonl --out run.trec

Shapes: N pairs, H hidden, V vocabulary.

Choices not fixed by the paper: the two prompts (5) and (6) (teacher.Prompt.query_only / doc_prefix); B h_d kept
in float16 in an index (`--dtype`).
"""
from __future__ import annotations

from pathlib import Path

import torch

from jepa import READINGS, Predictor
from runtime import search
from runtime.checkpoints import load_predictor_tensors, student_files
from runtime.common import cli
from runtime.llm import fingerprint, last_hidden
from teacher import Teacher, load_teacher


class Student:
    """Frozen teacher trunk + head, with a trainable `predictor` between them."""

    def __init__(self, teacher: Teacher, width: int = 256, act: str = "relu", reading: str = "last"):
        if reading not in READINGS:
            raise ValueError(f"reading {reading!r}: choose from {', '.join(READINGS)}")
        self.teacher = teacher
        self.reading = reading                   # (5)/(6) at the last token, or (6m) the mean over the text's tokens
        self.lm = teacher.lm                     # shared, not copied
        self.lm.eval().requires_grad_(False)
        self.prompt = teacher.prompt
        self.predictor = Predictor(self.lm.config.hidden_size, width, act).to(self.lm.lm_head.weight.device)
        self.y_pos, self.y_neg = teacher.y_pos, teacher.y_neg

    @property
    def u(self) -> torch.Tensor:
        """u = W[y+] - W[y-] (H,), float32 on the model's device: s = u . h for any embedding h."""
        return self.teacher.u.to(self.lm.lm_head.weight.device)

    @property
    def tag(self) -> str:
        """What the reading adds to the name of an encoding cache ('' for the last token, as before (6m))."""
        return "" if self.reading == "last" else f"-{self.reading}"

    def _spans(self, seqs: list[list[int]], head: int, tail: int) -> list[tuple[int, int]] | None:
        """(6m) each sequence's own text, positions [head, len - tail); None for the last-token reading."""
        return [(head, len(s) - tail) for s in seqs] if self.reading == "mean" else None

    def encode_queries(self, texts: list[str], desc: str = "queries") -> torch.Tensor:
        """(5) h_q for each query, (N, H) (with --reading mean, (6m) over the query's tokens)."""
        seqs = [self.prompt.query_only(q) for q in texts]
        return last_hidden(self.lm, seqs, self.teacher.batch_size, self.teacher.pad_id, desc, self.teacher.quiet,
                           len(self.prompt.pre_q) if self.teacher.prefix_len else 0,
                           self._spans(seqs, len(self.prompt.pre_q), len(self.prompt.post_q)))

    def encode_docs(self, texts: list[str], desc: str = "documents") -> torch.Tensor:
        """(6) h_d for each document, (N, H) (with --reading mean, (6m) over the document's tokens)."""
        seqs = [self.prompt.doc_prefix(d) for d in texts]
        return last_hidden(self.lm, seqs, self.teacher.batch_size, self.teacher.pad_id, desc, self.teacher.quiet,
                           self.teacher.prefix_len, self._spans(seqs, len(self.prompt.pre), 0))

    def forward(self, h_q: torch.Tensor, h_d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(7) Paired (N, H) inputs -> h_hat (N, H), z_S = W h_hat (N, V) (the teacher's (2)), s_S (N,).
        Gradients reach only the predictor."""
        h_hat = self.predictor(h_q, h_d)
        z = self.teacher.logits(h_hat)
        return h_hat, z, z[:, self.y_pos] - z[:, self.y_neg]


def load_student(folder: str | Path, device: str = "auto", quiet: bool = False, batch_size: int = 8,
                 attn: str = "sdpa", dtype: str = "auto") -> Student:
    """A distill.py output folder (predictor.safetensors + sidecar) -> the Student: its teacher checkpoint, frozen,
    with the trained predictor (its width and activation from the checkpoint; the teacher's fingerprint checked)."""
    path, teacher_dir = student_files(folder)
    teacher, _ = load_teacher(teacher_dir, device=device, batch_size=batch_size, quiet=quiet, attn=attn, dtype=dtype)
    tensors, meta = load_predictor_tensors(path, fingerprint(teacher.lm))
    student = Student(teacher, tensors["A.weight"].shape[0], meta.get("act", "gelu"),  # saved before --act: GELU
                      meta.get("reading", "last"))
    student.predictor.load_state_dict(tensors)
    student.folder, student.teacher_dir = str(Path(folder).resolve()), str(teacher_dir.resolve())
    return student


def main(argv=None) -> None:
    search.main(argv, __doc__, load_student)  # python student.py index | search: the Index of runtime/index.py


if __name__ == "__main__":
    cli(main, again="rerun the same command (an index build continues from its finished shards)")
