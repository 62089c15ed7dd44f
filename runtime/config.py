"""The settings every script shares (data, device, precision, outputs, seed), as one dataclass the scripts' configs
extend: each script's own config then holds only what configures its method."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from runtime.common import field
from runtime.llm import ATTENTION, DEFAULT_MODEL, DTYPE_HELP, DTYPES


@dataclass
class RunConfig:
    bench: str = field("virtualhome", "virtualhome | esconv | psyqa | saycan | msmarco | a BEIR name (evaluate.py: "
                                      "also beir, the 13 public sets)")
    model: str = field(DEFAULT_MODEL, "the base LLM: embedded name, Hugging Face id or local folder (a teacher "
                                      "checkpoint brings its own)")
    data_dir: str = field("", "local copy of the data set (default: embedded or official download; for --bench beir "
                              "a folder holding one sub-folder per data set, or the set)")
    device: str = field("auto", "auto | cpu | cuda", choices=["auto", "cpu", "cuda"])
    dtype: str = field("auto", DTYPE_HELP, choices=["auto", *DTYPES])
    attn_implementation: str = field("sdpa", "attention kernel of the LLM", choices=list(ATTENTION))
    output_dir: str = field("", "outputs (default runs/{script}-{bench}[-quick])")
    overwrite: bool = field(False, "replace the outputs in output_dir (only a folder this script made; emptied first)")
    seed: int = field(0, "seed of every random draw (subsets, sampling, shuffling)")
    quiet: bool = field(False, "no progress bars")

    def one_set(self) -> None:
        """teacher.py train and distill.py train on one data set. `--bench beir --data-dir SET` (a BEIR folder holding
        corpus.jsonl) is renamed to SET's folder name, so its default folders (runs/teacher-SET, runs/distill-SET,
        where evaluate.py looks for them) and its caches are its own, never another BEIR set's."""
        if self.bench != "beir":
            return
        folder = Path(self.data_dir) if self.data_dir else None
        if folder is None or not (folder / "corpus.jsonl").exists():
            raise ValueError(f"--bench beir --data-dir {self.data_dir or '(none)'}: training reads one BEIR set, so "
                             "--data-dir must be the folder holding its corpus.jsonl (or pass --bench NAME for a "
                             "public set, downloaded)")
        name = folder.resolve().name
        if name in ("beir", "virtualhome", "esconv", "psyqa", "saycan"):
            raise ValueError(f"--data-dir {folder}: a BEIR set in a folder named '{name}' would be read as the bench "
                             f"'{name}': rename the folder")
        self.bench = name

    def idle(self) -> dict[str, str]:
        """The flags that change nothing under the other settings, {field: why}; `common.config_from_args` refuses
        them when the user sets them. One table for every script: a rule applies to a config that has its fields."""
        c, has = self, lambda *names: all(hasattr(self, n) for n in names)
        kl_off = has("no_rkl", "lmbda") and (c.no_rkl or c.lmbda == 0)
        rules = [  # (fields made inert, when, why)
            (("sampling", "tau_s", "round0"), has("policy") and c.policy == "off",
             "with --policy off (fixed BM25 + random negatives)"),
            (("tau_s",), has("policy", "sampling") and c.policy == "on" and c.sampling == "top",
             "with --sampling top (it is the temperature of --sampling softmax)"),
            (("nce_queries", "nce_negatives", "nce_tau"), has("nce") and c.nce == 0,
             "with --nce 0 (the pool term (11) off)"),
            (("kl", "kl_support"), kl_off, "without the KL term of (10) (--no-rkl or --lmbda 0)"),
            (("tau",), kl_off and not c.listwise,
             "without a KL term ((10) off by --no-rkl / --lmbda 0, and --listwise 0)"),
            (("teacher_k",), has("eval_teacher") and not c.eval_teacher, "with --no-eval-teacher (teacher@k not run)"),
            (("teacher_k", "first_stage", "teacher_center"), has("system_list") and "teacher" not in c.system_list,
             "without 'teacher' in --systems"),
            (("index_dtype", "compile"), has("system_list") and "student" not in c.system_list,
             "without 'student' in --systems"),
            (("mine_k",), has("neg_self") and not c.neg_self,
             "with --neg-self 0 (it sizes the documents the teacher's own negatives are mined from)"),
        ]
        return {name: why for names, when, why in rules if when for name in names}
