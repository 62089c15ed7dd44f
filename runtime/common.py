"""Small shared helpers: seeding, atomic writes, the cache folder, dataclass configs as CLI flags, progress bars.

Nothing here is specific to the paper; every script imports what it needs from this one place.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import hashlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from tqdm.auto import tqdm

from runtime import parallel
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
    """'auto' -> cuda when present, else cpu; 'cuda' without a GPU is an error, not a silent fallback. Under torchrun
    this joins the process group (parallel.init) and gives each rank its own GPU (LOCAL_RANK)."""
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA GPU (torch %s)" % torch.__version__)
    parallel.init(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return parallel.local_device() if device == "cuda" else torch.device(device)


def cache_dir(*parts: str) -> Path:
    """$RABTRIEVER_CACHE (default ~/.cache/rabtriever), joined with parts and created; a path in the way that is a
    file names the variable to set."""
    root = Path(os.environ.get("RABTRIEVER_CACHE", Path.home() / ".cache" / "rabtriever"))
    path = root.joinpath(*parts)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        raise ValueError(f"{e.filename or path}: the cache folder ($RABTRIEVER_CACHE, now {root}) runs through a "
                         "file there; move the file or set RABTRIEVER_CACHE to a folder") from e
    return path


# ---------------------------------------------------------------------------- atomic writes
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give: the user's umask, not mkstemp's 0600


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a reader never sees half a file.
    The file gets the user's normal permissions (umask), like a plain open() would. Under torchrun only rank 0 writes
    (every rank holds the same results)."""
    if not parallel.is_main():
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno is not None and not e.filename:  # a full disk names no file: name it
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def entries(folder: Path) -> list[Path]:
    """What a folder holds, less the temporary files (NAME.xxxx.tmp) of an `atomic_write` whose process was killed:
    never read, they make no folder busy."""
    return [p for p in folder.iterdir() if not p.name.endswith(".tmp")]


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


class IntegrityError(ValueError):
    """A tensor file that does not match the digest in its sidecar, or cannot be read: damaged or truncated."""


def read_json(path: str | Path, fix: str = "delete it and run again"):
    """A JSON file the project wrote (sidecar, config, ids, cache key); unreadable or damaged -> IntegrityError
    naming the file and `fix`, what to do."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise IntegrityError(f"{path}: not valid JSON ({e}); the file is damaged: {fix}") from e


def digest(data: bytes) -> str:
    """blake2b (16 bytes) of a file's content: what a sidecar records, and `file_digest` computes from the file."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def file_digest(path: str | Path) -> str:
    """blake2b digest of a file's bytes, read once per (path, size, modification time) and remembered under
    $RABTRIEVER_CACHE/digests, so a large file (a 7B model's weights, a corpus's encodings) is hashed once, then only
    stat-ed. Where the memo cannot be written (a read-only cache) the digest is computed again next time."""
    path = Path(path)
    st = path.stat()
    key = hashlib.blake2b(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode(), digest_size=12).hexdigest()
    root = Path(os.environ.get("RABTRIEVER_CACHE", Path.home() / ".cache" / "rabtriever")) / "digests"
    memo = root / key
    if memo.exists():
        return memo.read_text().strip()
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    try:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write(memo, h.hexdigest())
    except OSError as e:  # only the memo is lost: the digest itself was computed
        print(f"[common] note: could not remember the digest of {path} ({e.strerror}); it is computed each time")
    return h.hexdigest()


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> str:
    """One checkpoint = `path` (safetensors) + `path.json` (sidecar with config, step, metrics, fingerprints and the
    blake2b digest of the tensor file). Both written atomically; the sidecar last, so a sidecar always describes a
    complete tensor file. Returns the digest."""
    path = Path(path)
    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    atomic_write(path, data)
    d = digest(data)
    write_json(str(path) + ".json", {**meta, "digest": d})
    return d


def check_tensors(path: str | Path, expect: dict[str, Any] | None = None,
                  fix: str = "delete it and run again") -> dict:
    """The sidecar of a checkpoint written by save_tensors, once the file is known to match the digest in it (else
    IntegrityError naming the file and `fix`, what to do) and every key in `expect` equals the sidecar's value. The
    file is hashed in blocks, never held whole, and once per version of it (`file_digest`)."""
    path = Path(path)
    side = Path(str(path) + ".json")
    if not path.exists() or not side.exists():
        raise FileNotFoundError(f"{path}: checkpoint or its sidecar {side.name} is missing")
    meta = read_json(side, fix)
    for key, want in (expect or {}).items():
        if meta.get(key) != want:
            raise ValueError(f"{side}: field '{key}' is {meta.get(key)!r} but this run has {want!r}; "
                             "the checkpoint was made for something else")
    if "digest" not in meta:
        print(f"[common] warning: {side} has no digest (written by an older version): {path.name} is not checked")
    elif file_digest(path) != meta["digest"]:
        raise IntegrityError(f"{path}: content does not match the digest in {side.name} (damaged or truncated, "
                             f"{path.stat().st_size} bytes); {fix}")
    return meta


def load_tensors(path: str | Path, expect: dict[str, Any] | None = None,
                 fix: str = "delete it and run again") -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, sidecar) of a checkpoint written by save_tensors, checked by `check_tensors`."""
    meta = check_tensors(path, expect, fix)
    try:
        return load_file(str(path)), meta
    except SafetensorError as e:
        raise IntegrityError(f"{path}: not a readable safetensors file ({e}); {fix}") from e


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


def given_flags(cls, argv: list[str]) -> set[str]:
    """The fields of `cls` whose flag appears in `argv` (`--name`, `--name=v`, `--no-name`): set by the user."""
    out = set()
    for f in dataclasses.fields(cls):
        flag = f.name.replace("_", "-")
        if any(a in (f"--{flag}", f"--no-{flag}") or a.startswith(f"--{flag}=") for a in argv):
            out.add(f.name)
    return out


def config_from_args(cls, args: argparse.Namespace, argv: list[str] | None = None):
    """The config of parsed flags. With `--quick`, each field of the class's QUICK caps ({field: cap}; 0 = all counts
    as over the cap) is lowered to its cap unless the user set it (`argv`), and what changed is printed. A flag the
    user set that has no effect under the other settings (the config's `idle()`: {field: why}) is refused."""
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
    caps = getattr(cls, "QUICK", {})
    given = given_flags(cls, sys.argv[1:] if argv is None else argv)
    if kw.get("quick") and caps:
        changed = []
        for name, cap in caps.items():
            if name not in given and (kw[name] == 0 or kw[name] > cap):
                changed.append(f"{name} {kw[name]} -> {cap}")
                kw[name] = cap
        if changed:
            print(f"[{cls.__name__}] --quick: {', '.join(changed)} (set a flag to keep its value)")
    cfg = cls(**kw)
    idle = {name: why for name, why in (cfg.idle() if hasattr(cfg, "idle") else {}).items() if name in given}
    if idle:
        raise ValueError("; ".join(f"--{name.replace('_', '-')} has no effect {why}" for name, why in idle.items())
                         + ": drop it, or change the setting it depends on")
    return cfg


def field(default, help: str, **kw):
    """A dataclass field whose help text becomes the CLI help."""
    return dataclasses.field(default=default, metadata={"help": help, **kw})


# What each script leaves in its output folder that only it may replace (its checkpoints).
CHECKPOINTS = {"distill": ("predictor.safetensors", "state.safetensors"), "teacher": ("teacher.safetensors",),
               "index": ("index.safetensors",)}
PATH_FIELDS = ("teacher", "data_dir", "student")  # config fields that name a folder: compared resolved by --resume
_created: list[Path] = []  # output folders this process made, removed again if the run fails before writing more


def write_run_config(out_dir: str | Path, cfg, script: str) -> None:
    """The resolved config, the exact command line and the script that owns the folder, written next to the outputs
    before any work starts."""
    conf = dataclasses.asdict(cfg)
    resolved = {k: str(Path(conf[k]).resolve()) for k in PATH_FIELDS if conf.get(k)}  # --resume by another path
    write_json(Path(out_dir) / "config.json", {"script": script, "config": conf, "resolved": resolved,
                                               "argv": sys.argv, "torch": torch.__version__, "citation": CITATION})


def folder_owner(folder: str | Path) -> str | None:
    """The script that made an output folder: the one config.json names, else (folders of older versions, or a
    damaged config.json) the kind of checkpoint it holds; None for neither."""
    folder = Path(folder)
    if (folder / "config.json").exists():
        try:
            owner = read_json(folder / "config.json").get("script")
        except IntegrityError:
            owner = None  # damaged: judged by the checkpoints it holds, as a folder of an older version
        if owner:
            return owner
    return next((s for s, files in CHECKPOINTS.items() if any((folder / f).exists() for f in files)), None)


def prepare_output(out_dir: str | Path, cfg, resume: bool = False, overwrite: bool = False,
                   same: tuple[str, ...] = ("resume", "overwrite", "quiet", "refresh_cache"), *,
                   script: str, can_resume: bool = False) -> Path:
    """The output folder of `script`, called once inputs and config are validated (nothing is written before). A
    non-empty folder is refused unless `resume` (its config.json must then equal `cfg` in every field not in `same`:
    the fields that do not change results) or `overwrite`, which empties only a folder this script made and that
    holds no checkpoint of another script. A folder made here is removed again if the run fails right away
    (`cleanup_failed_start`)."""
    out = Path(out_dir)
    if out.is_symlink() and not out.exists():
        raise FileExistsError(f"{out}: a symbolic link to {os.readlink(out)}, which does not exist: pass another "
                              "--output-dir")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder")
    busy = out.exists() and any(entries(out))
    if busy and resume:
        check_resume(out, cfg, same)
    elif busy and overwrite:
        owner = folder_owner(out)
        foreign = [f for s, files in CHECKPOINTS.items() if s != script for f in files if (out / f).exists()]
        if owner is None:
            raise FileExistsError(f"{out}: not an output folder of this project (no config.json naming one of its "
                                  "scripts); refusing to empty it: pass another --output-dir")
        if owner != script or foreign:
            raise FileExistsError(f"{out}: made by {owner}.py{f' (it holds {foreign[0]})' if foreign else ''}; "
                                  f"--overwrite replaces only a folder made by {script}.py: pass another --output-dir")
        if out.is_symlink():
            raise FileExistsError(f"{out}: a symbolic link to {out.resolve()}; --overwrite empties only the folder "
                                  "itself: pass that path as --output-dir")
    elif busy:
        raise FileExistsError(f"{out} is not empty: pass " + ("--resume to continue it, " if can_resume else "") +
                              "--overwrite to replace it, or --output-dir for a new run")
    parallel.barrier()  # every rank has checked before rank 0 changes anything
    if parallel.is_main():
        if busy and overwrite:
            shutil.rmtree(out)
        fresh = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        if fresh:
            _created.append(out)
        if not (busy and resume):
            write_run_config(out, cfg, script)
    parallel.barrier()
    parallel.check_shared(out)
    parallel.check_shared(cache_dir())
    return out


def writable_folder(path: Path, flag: str) -> None:
    """Checked before a model loads: `path` (a folder, made if absent) accepts a file."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"{flag} {path}: cannot write there ({e.strerror}); choose a writable folder") from e


def check_output_file(path: str | Path, flag: str, overwrite: bool, reads: tuple = ()) -> Path:
    """A single file a script writes (`flag`): never one of the files the same command reads (`reads`), never a
    folder, and an existing file (or a symbolic link, even a dangling one) only with --overwrite; its folder must be
    writable. Checked before any compute."""
    path = Path(path)
    for r in reads:
        if r and path.resolve() == Path(r).resolve():
            raise FileExistsError(f"{flag} {path}: the same file as the input {r}; write the output elsewhere")
    if path.is_dir():
        raise FileExistsError(f"{flag} {path}: is a folder; give a file path")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise FileExistsError(f"{flag} {path}: exists; pass --overwrite to replace it, or another path")
    writable_folder(path.resolve().parent, flag)
    return path


def check_result_file(path: str | Path, flag: str, key: str) -> Path:
    """A benchmark's JSON output (`flag`): written anew by every run, so an existing file is replaced only when it is
    one of this benchmark's (JSON whose rows, or itself, hold `key`); anything else there is refused."""
    path = Path(path)
    ours = False
    if path.is_file():
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
            rows = obj if isinstance(obj, list) else [obj]
            ours = bool(rows) and all(isinstance(r, dict) and key in r for r in rows)
        except (ValueError, OSError):
            ours = False
    return check_output_file(path, flag, ours)


def cleanup_failed_start() -> None:
    """Remove the output folders this process made that hold nothing but their config.json: a start that failed
    (unwritable cache, bad model) leaves nothing behind, so the corrected command runs as it is."""
    for out in _created:
        if out.is_dir() and {p.name for p in entries(out)} <= {"config.json"}:
            shutil.rmtree(out, ignore_errors=True)
    _created.clear()


def check_teacher_folder(teacher: str, output_dir: str) -> None:
    """distill.py's --teacher must be a folder made by teacher.py (finished, or an unfinished run to replace), an empty folder or
    a new path: never another script's output, which Step 0 would otherwise empty to train a teacher in it."""
    folder = Path(teacher)
    if Path(output_dir).resolve() == folder.resolve():
        raise ValueError(f"--teacher and --output-dir are the same folder {folder}: the teacher needs its own")
    if not folder.exists() or (folder.is_dir() and not any(entries(folder))):
        return
    if not folder.is_dir():
        raise FileExistsError(f"--teacher {folder}: exists and is not a folder")
    owner = folder_owner(folder)
    if owner != "teacher":
        made = f"made by {owner}.py" if owner else "not an output folder of this project"
        raise FileExistsError(f"--teacher {folder}: {made}, not a teacher folder; pass a folder made by "
                              "`python teacher.py train`, or a new path to train a teacher in")


def check_resume(out: Path, cfg, same: tuple[str, ...]) -> None:
    """--resume continues only the run that was started: every result-changing field must be the one in config.json."""
    path = out / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing, so {out} cannot be resumed; use --overwrite or a new --output-dir")
    old = read_json(path, "it holds the run's settings, so the run cannot be resumed: restore it, or start again "
                          "with --overwrite or a new --output-dir").get("config", {})
    new = dataclasses.asdict(cfg)
    where = read_json(path).get("resolved", {})

    def moved(k, v):  # the same folder through another path: relative / absolute, or the output folder itself moved
        return k == "output_dir" or k in PATH_FIELDS and v and Path(v).resolve() == Path(where.get(k, "\0"))
    diff = [f"{k} {old.get(k)!r} -> {v!r}" for k, v in new.items()
            if k not in same and old.get(k) != v and not moved(k, v)]
    if diff:
        raise ValueError(f"{path}: --resume with settings that change results: {'; '.join(diff)}; resume with the "
                         "run's own settings, or start a new run")


def check_values(cfg) -> None:
    """Every float field of a config is a finite number (`--lr nan` or `--tau inf` are refused up front), and the
    seed is one numpy and torch both accept."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"--{f.name.replace('_', '-')} is {v}; it must be a finite number")
    seed = getattr(cfg, "seed", 0)
    if not 0 <= seed < 2 ** 32:
        raise ValueError(f"--seed is {seed}; it must be in 0 .. 2**32 - 1 (the range numpy's generator accepts)")


def check_sizes(cfg, names: tuple[str, ...], minimum: int = 0) -> None:
    """Each named field must be an integer >= minimum (0 means 'all' where the help says so)."""
    for name in names:
        v = getattr(cfg, name)
        if v < minimum:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} is {v}; it must be >= {minimum}" + (" (0 = all)" if minimum == 0 else ""))


def _os_message(e: OSError, again: str) -> str:
    """One line for an OSError: ours already read as a sentence; the system's name the path and the way out."""
    if e.errno is None:
        return str(e.args[0] if e.args else e)
    where = f"{e.filename}: " if e.filename else ""
    if e.errno == errno.ENOSPC:
        return f"{where}no space left on the device; free space, then {again}"
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (f"{where}{e.strerror} (not writable): point $RABTRIEVER_CACHE or --output-dir at a writable folder, "
                f"then {again}")
    return f"{where}{e.strerror}; {again}"


def cli(main, argv: list[str] | None = None, again: str = "rerun the command"):
    """Run a script's main(argv) so that every failure a user can cause is one line, with the way out: an input error
    (bad files, flags, values, folders) or an OSError (disk full, a read-only cache, permissions) prints `error: ...`
    on stderr and exits 2; Ctrl-C prints `interrupted: ...` and exits 130; `again` says how to continue (distill.py:
    "rerun with --resume"). A folder this run made that holds only its config.json is removed. `--debug` shows the
    traceback as well."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    tail = "" if debug else "  (--debug shows the traceback)"
    try:
        return main(argv)
    except KeyboardInterrupt:
        cleanup_failed_start()
        if debug:
            traceback.print_exc()
        print(f"interrupted: every file written so far is complete (atomic writes); {again}", file=sys.stderr)
        sys.exit(130)
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        cleanup_failed_start()
        if debug:
            traceback.print_exc()
        if isinstance(e, OSError):
            msg = _os_message(e, again)
        else:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}{tail}", file=sys.stderr)
        sys.exit(2)


def subset(items: list, k: int, gen: torch.Generator) -> list:
    """A seeded random subset of size k (all when k == 0 or k >= len), kept in the original order."""
    if k <= 0 or k >= len(items):
        return items
    keep = sorted(torch.randperm(len(items), generator=gen)[:k].tolist())
    return [items[i] for i in keep]


def progress(iterable=None, desc: str = "", quiet: bool = False, **kw):
    """tqdm with a description; `quiet` turns every bar off; under torchrun only rank 0 shows bars."""
    return tqdm(iterable, desc=desc, disable=quiet or not parallel.is_main(), dynamic_ncols=True, **kw)
