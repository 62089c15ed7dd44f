"""Checkpoints of the two trained parts: the teacher's trained tensors and the student's predictor, each one
safetensors file with a JSON sidecar (config, base model id, fingerprints, metrics; `common.save_tensors`), and the
identities that tie a student, an index or a score cache to the exact teacher it was made with.

    teacher = load_teacher("runs/teacher-virtualhome")[0]          # base model + trained tensors, checked
    student = load_student("runs/distill-virtualhome")              # its teacher, frozen, + the trained predictor
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import torch

import parallel
from common import check_tensors, load_tensors, read_json, save_tensors
from jepa import Predictor
from llm import DEFAULT_MODEL, fingerprint, load_llm
from student import Student
from teacher import INSTRUCTION, Teacher


# ---------------------------------------------------------------------------- the teacher
def save_teacher(teacher: Teacher, out_dir: str | Path, cfg, base_fp: str, meta: dict,
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
        if meta["base_fingerprint"] != base_fp:
            raise ValueError(f"{path}.json: base_fingerprint {meta['base_fingerprint']} != fingerprint {base_fp} of "
                             f"the loaded base model '{model}': the checkpoint was trained on other weights")
        copy_into(lm, path, model)
        lm.tie_weights()
        lm.rab_fingerprint = teacher_identity(base_fp, meta["digest"])
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


# ---------------------------------------------------------------------------- the student's predictor
def save_predictor(student: Student, path: str | Path, meta: dict) -> None:
    save_tensors(path, student.predictor.state_dict(), {"kind": "predictor", "act": student.predictor.act_name, **meta})


def load_predictor(student: Student, path: str | Path, teacher_fingerprint: str) -> dict:
    """Load predictor weights; the sidecar's teacher fingerprint must match the loaded teacher."""
    tensors, meta = load_tensors(path, {"kind": "predictor", "teacher_fingerprint": teacher_fingerprint},
                                 fix="run distill.py again")
    width, act = tensors["A.weight"].shape[0], meta.get("act", "gelu")  # a predictor saved before --act: GELU
    if width != student.predictor.A.out_features or act != student.predictor.act_name:
        student.predictor = Predictor(student.lm.config.hidden_size, width, act).to(student.u.device)
    student.predictor.load_state_dict(tensors)
    return meta


def load_student(folder: str | Path, device: str = "auto", quiet: bool = False, batch_size: int = 8,
                 attn: str = "sdpa", dtype: str = "auto") -> Student:
    """A distill.py output folder (predictor.safetensors + sidecar) -> the Student: its teacher checkpoint, frozen,
    with the trained predictor."""
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
    teacher, _ = load_teacher(ckpt.parent, device=device, batch_size=batch_size, quiet=quiet, attn=attn, dtype=dtype)
    student = Student(teacher)
    load_predictor(student, path, fingerprint(teacher.lm))
    student.folder, student.teacher_dir = str(Path(folder).resolve()), str(ckpt.parent.resolve())
    return student


def predictor_digest(student: Student) -> str:
    """Identity of the trained predictor (an index holds B h_d, which only this predictor can score)."""
    h = hashlib.blake2b(digest_size=12)
    for name, t in student.predictor.state_dict().items():
        h.update(name.encode() + t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
