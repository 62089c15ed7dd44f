"""Small shared helpers: seeding, atomic writes, the cache folder, dataclass configs as CLI flags, progress bars.

Nothing here is specific to the paper; every script imports what it needs from this one place.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

CITATION = ("Chen et al., Efficient Rationale-based Retrieval: On-policy Distillation from Generative Rerankers "
            "based on JEPA (Rabtriever), arXiv 2604.23336, ICMR 2026")


# ---------------------------------------------------------------------------- seeding and devices
def set_seed(seed: int) -> None:
    """Seed python, numpy and torch. Sampling and shuffling additionally use explicit torch.Generator objects.
    Nondeterministic on GPU: cuBLAS reductions and SDPA kernels may change the last bits between runs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when present, else cpu; 'cuda' without a GPU is an error, not a silent fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA GPU (torch %s)" % torch.__version__)
    return torch.device(device)


def cache_dir(*parts: str) -> Path:
    """$RABTRIEVER_CACHE (default ~/.cache/rabtriever), joined with parts and created."""
    root = Path(os.environ.get("RABTRIEVER_CACHE", Path.home() / ".cache" / "rabtriever"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------- atomic writes
def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """One checkpoint = `path` (safetensors) + `path.json` (sidecar with config, step, metrics, fingerprints).
    Both written atomically; the sidecar last, so a sidecar always describes a complete tensor file."""
    from safetensors.torch import save

    path = Path(path)
    atomic_write(path, save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}))
    write_json(str(path) + ".json", meta)


def load_tensors(path: str | Path, expect: dict[str, Any] | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a checkpoint written by save_tensors; every key in `expect` must equal the sidecar's value."""
    from safetensors.torch import load_file

    path = Path(path)
    side = Path(str(path) + ".json")
    if not path.exists() or not side.exists():
        raise FileNotFoundError(f"{path}: checkpoint or its sidecar {side.name} is missing")
    meta = json.loads(side.read_text())
    for key, want in (expect or {}).items():
        if meta.get(key) != want:
            raise ValueError(f"{side}: field '{key}' is {meta.get(key)!r} but this run has {want!r}; "
                             "the checkpoint was made for something else")
    return load_file(str(path)), meta


# ---------------------------------------------------------------------------- configs
def add_dataclass_args(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per dataclass field (`--field-name`), typed and documented from the field's `help` metadata."""
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore
        help_ = f.metadata.get("help", "") + f" (default: {default})"
        if f.type in ("bool", bool) and not default:
            parser.add_argument(flag, action="store_true", help=help_)   # --no-jepa must mean no_jepa = True
        elif f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_)
        else:
            typ = {"int": int, "float": float, "str": str}.get(f.type if isinstance(f.type, str) else f.type.__name__, str)
            parser.add_argument(flag, type=typ, default=default, help=help_, choices=f.metadata.get("choices"))


def config_from_args(cls, args: argparse.Namespace):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def field(default, help: str, **kw):
    """A dataclass field whose help text becomes the CLI help."""
    return dataclasses.field(default=default, metadata={"help": help, **kw})


def write_run_config(out_dir: str | Path, cfg) -> None:
    """The resolved config and the exact command line, written next to the outputs before any work starts."""
    write_json(Path(out_dir) / "config.json", {"config": dataclasses.asdict(cfg), "argv": sys.argv,
                                               "torch": torch.__version__, "citation": CITATION})


def subset(items: list, k: int, gen: torch.Generator) -> list:
    """A seeded random subset of size k (all when k == 0 or k >= len), kept in the original order."""
    if k <= 0 or k >= len(items):
        return items
    keep = sorted(torch.randperm(len(items), generator=gen)[:k].tolist())
    return [items[i] for i in keep]


def progress(iterable=None, desc: str = "", quiet: bool = False, **kw):
    """tqdm with a description; `quiet` turns every bar off."""
    return tqdm(iterable, desc=desc, disable=quiet, dynamic_ncols=True, **kw)
