"""Checkpoints of the two trained parts: the teacher's trained tensors and the student's predictor, each one
safetensors file with a JSON sidecar (config, base model id, fingerprints, metrics; `common.save_tensors`), and the
identities that tie a student, an index or a score cache to the exact teacher it was made with.

The paper's files assemble their objects from these: `teacher.load_teacher` (base model + trained tensors, checked)
and `student.load_student` (its teacher, frozen, + the trained predictor).
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import torch
from safetensors import safe_open

from runtime import parallel
from runtime.common import check_tensors, load_tensors, read_json, save_tensors
from runtime.llm import DEFAULT_MODEL, fingerprint, load_llm


# ---------------------------------------------------------------------------- the teacher
def save_teacher(teacher, out_dir: str | Path, cfg, base_fp: str, meta: dict,
                 fsdp: bool = False) -> tuple[Path, str]:
    """Only the trained tensors (all of them for a full fine-tune) + sidecar with base model id and fingerprint.
    Under FSDP2 the full state dict is gathered to rank 0, which writes the one-process format. Returns the path and
    the file's digest (the same on every rank)."""
    lm = teacher.lm
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,  # only under FSDP2: torch.distributed
                                                             get_model_state_dict)
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


def load_teacher_lm(checkpoint: str | Path | None, model: str | None, device: str, dtype: str, attn: str,
                    instruction: str | None, default_instruction: str):
    """(lm, tok, sidecar) of a teacher: the base model, with the trained tensors of `checkpoint` (a folder or
    .safetensors file) copied in and checked. The base model and the prompt's instruction are the checkpoint's; a
    different `model` or `instruction` alongside a checkpoint is an error, not ignored."""
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
        trained_with = meta.get("instruction", default_instruction)
        if instruction and instruction != trained_with:
            raise ValueError(f"instruction {instruction!r} contradicts the checkpoint {path}, trained with "
                             f"{trained_with!r}: train a teacher with it (another --teacher)")
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
    return lm, tok, meta


def copy_into(lm, path: Path, model: str) -> None:
    """The trained tensors of a checkpoint copied into the loaded model one at a time, on the model's device: host
    memory holds one tensor at once, never the whole checkpoint (a 7B full fine-tune is 30 GB in float32)."""
    params = lm.state_dict()
    with safe_open(str(path), framework="pt") as f:
        missing = [k for k in f.keys() if k not in params]
        if missing:
            raise ValueError(f"{path}: tensors {sorted(missing)[:3]} do not exist in model '{model}'")
        with torch.no_grad():
            for k in f.keys():
                params[k].copy_(f.get_tensor(k))


# ---------------------------------------------------------------------------- the student's predictor
def save_predictor(student, path: str | Path, meta: dict) -> None:
    save_tensors(path, student.predictor.state_dict(), {"kind": "predictor", "act": student.predictor.act_name,
                                                           "reading": student.reading, **meta})


def load_predictor_tensors(path: str | Path, teacher_fingerprint: str) -> tuple[dict, dict]:
    """(tensors, sidecar) of a predictor checkpoint; its teacher fingerprint must be the loaded teacher's."""
    return load_tensors(path, {"kind": "predictor", "teacher_fingerprint": teacher_fingerprint},
                        fix="run distill.py again")


def student_files(folder: str | Path) -> tuple[Path, Path]:
    """(predictor checkpoint, its teacher's folder) of a distill.py output folder. The teacher is looked for where
    distill.py saw it (absolute), else relative to this working folder, else next to the student folder
    (runs/distill-x beside runs/teacher-x); the fingerprint check of `load_predictor_tensors` refuses a wrong one."""
    path = Path(folder) / "predictor.safetensors"
    side = Path(str(path) + ".json")
    if not path.exists() or not side.exists():
        raise FileNotFoundError(f"{path}: no student checkpoint; run `python distill.py` or pass --student DIR")
    meta = read_json(side, "run distill.py again")
    tries = [Path(meta.get("teacher_checkpoint_abs", "")), Path(meta["teacher_checkpoint"]),
             Path(folder).resolve().parent.parent / meta["teacher_checkpoint"]]
    return path, next((t for t in tries if t.name and t.exists()), tries[1]).parent


def predictor_digest(student) -> str:
    """Identity of the trained predictor (an index holds B h_d, which only this predictor can score)."""
    h = hashlib.blake2b(digest_size=12)
    for name, t in student.predictor.state_dict().items():
        h.update(name.encode() + t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
