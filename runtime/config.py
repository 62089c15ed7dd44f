"""The settings every script shares (data, device, precision, outputs, seed), as one dataclass the scripts' configs
extend: each script's own config then holds only what configures its method."""
from __future__ import annotations

from dataclasses import dataclass

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
