"""What the scripts do around their loops: the inputs checked and the output folder made before anything runs
(teacher.py train, distill.py), the state of distill.py's last finished round read back on --resume, and the subsets
evaluate.py draws.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from runtime.common import check_teacher_folder, load_tensors, prepare_output, read_json, set_seed, subset
from runtime.files import check_split
from runtime.llm import fingerprint
from runtime.metrics import check_trec_ids
from runtime.training import SFT_STATE


def start_teacher(cfg, data) -> Path:
    """teacher.py train's inputs and settings checked before anything is written, then its output folder. The
    teacher is trained on train and chosen on dev: it never reads the test split."""
    check_split(data, "train", "training")
    check_split(data, "dev", "dev")
    done = Path(cfg.output_dir, "teacher.safetensors")
    if cfg.resume and done.exists() and not Path(cfg.output_dir, SFT_STATE).exists():
        raise FileExistsError(f"--resume: {done} is a finished teacher (no unfinished SFT state in {cfg.output_dir}); "
                              "nothing to continue: use it as it is, or --overwrite to train it again")
    return prepare_output(cfg.output_dir, cfg, cfg.resume, cfg.overwrite, script="teacher", can_resume=True,
                          same=("resume", "overwrite", "quiet", "save_every"))


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


# ---------------------------------------------------------------------------- evaluate.py: the split, the subsets
def eval_split(cfg, data) -> str:
    """--split, else test (the held-out split), else the only one."""
    if cfg.split:
        return cfg.split
    return "test" if "test" in data.queries or len(data.queries) != 1 else next(iter(data.queries))


def eval_queries(queries: dict[str, str], n: int, seed: int) -> list[str]:
    """The seeded subset of held-out queries evaluated (the same in distill.py and evaluate.py for one seed)."""
    return subset(list(queries), n, torch.Generator().manual_seed(seed + 7))


def shrink(data, split: str, cfg):
    """Seeded subsets of queries and documents (judged documents of the kept queries always stay)."""
    queries, qrels = data.split(split)
    qids = eval_queries(queries, cfg.max_queries, cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    if cfg.max_docs and cfg.max_docs < len(data.corpus):
        keep = {d for q in qids for d in qrels[q]}
        if cfg.max_docs < len(keep):
            print(f"[evaluate] --max-docs {cfg.max_docs}: the kept queries judge {len(keep)} documents, all kept; "
                  f"the pool is those {len(keep)}")
        rest = [d for d in data.corpus if d not in keep]
        keep |= set(subset(rest, max(0, cfg.max_docs - len(keep)), gen))
        data = dataclasses.replace(data, corpus={d: v for d, v in data.corpus.items() if d in keep})
    return data, {q: queries[q] for q in qids}, {q: qrels[q] for q in qids}


def splits_of(data) -> dict[str, dict]:
    """Queries per split of a data set and where they come from (results.json names the split it reports, and
    these)."""
    return {s: {"queries": len(q), "from": data.origin.get(s, "")} for s, q in data.queries.items()}


def bench_names(cfg, default: str) -> list[str]:
    """The data sets an evaluation covers: --bench itself, or for --bench beir the --datasets names; where --data-dir
    is itself one BEIR set (it holds corpus.jsonl), that set alone, named by its folder (the 13 default names would
    each read the same files)."""
    if cfg.bench != "beir":
        return [cfg.bench]
    names = [n.strip() for n in cfg.datasets.split(",") if n.strip()]
    folder = Path(cfg.data_dir) if cfg.data_dir else None
    if folder is None or not (folder / "corpus.jsonl").exists():
        return names
    if cfg.datasets != default and names != [folder.name]:
        raise ValueError(f"--data-dir {folder} is one BEIR set (it holds corpus.jsonl), --datasets names "
                         f"{', '.join(names)}: pass the folder that holds one sub-folder per data set, or drop "
                         "--datasets")
    return [folder.name]


def data_dir_of(cfg, name: str) -> str | None:
    """The folder of data set `name` within --data-dir: its sub-folder for --bench beir, else --data-dir itself."""
    if not cfg.data_dir:
        return None
    if cfg.bench == "beir" and (Path(cfg.data_dir) / name).is_dir():
        return str(Path(cfg.data_dir) / name)
    return cfg.data_dir
