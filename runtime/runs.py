"""What distill.py does around its loop: the inputs checked and the output folder made before anything runs, and the
state of the last finished round read back on --resume.
"""
from __future__ import annotations

from pathlib import Path

from runtime.common import check_teacher_folder, load_tensors, prepare_output, read_json, set_seed
from runtime.files import check_split
from runtime.llm import fingerprint
from runtime.metrics import check_trec_ids


def start_distill(cfg, data) -> Path:
    """distill.py's inputs and settings checked before anything is written, then its output folder. Steps 0-5 read
    the train split only; Step 6 evaluates cfg.eval_split (dev to choose, test to report)."""
    check_split(data, "train", "training")
    check_split(data, cfg.eval_split, cfg.eval_split)
    check_trec_ids(data.corpus, "document", f"{cfg.bench} corpus")
    check_teacher_folder(cfg.teacher, cfg.output_dir)
    sidecar = Path(cfg.teacher, "teacher.safetensors.json")
    trained_on = read_json(sidecar).get("config", {}).get("bench") if sidecar.exists() else None
    if trained_on not in (None, cfg.bench):
        print(f"[distill] note: the teacher {cfg.teacher} was trained on {trained_on} (its sidecar says so), the "
              f"student is distilled on {cfg.bench}; pass --teacher DIR for a teacher of {cfg.bench}")
    out = prepare_output(cfg.output_dir, cfg, cfg.resume, cfg.overwrite, script="distill", can_resume=True)
    set_seed(cfg.seed)
    return out


def resume_distill(cfg, out: Path, student) -> tuple[int, list[dict], list]:
    """(first round to run, the loss log, the pairs so far): with --resume, those of the last finished round, whose
    predictor is loaded into `student`; else a fresh start."""
    state = out / "state.safetensors"
    if not (cfg.resume and state.exists()):
        return 0, [], []
    tensors, meta = load_tensors(state, {"teacher_fingerprint": fingerprint(student.lm)},
                                 fix="the round cannot be recovered: start again with --overwrite")
    student.predictor.load_state_dict(tensors)
    print(f"[distill] resuming after round {meta['round']}")
    return meta["round"] + 1, meta["log"], [(a, b, tuple(c)) for a, b, c in meta["pairs"]]
