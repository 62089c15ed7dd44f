"""Reading and fetching the files of data sets: UTF-8 lines with their numbers, typed fields that name file, line
and field when they are wrong, atomic downloads and BEIR zips. Nothing here knows a data set; data.py does.
"""
from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from common import cache_dir


class DataError(ValueError):
    """Bad input: the message names the file, the line and the field."""


def read_lines(path: str | Path):
    """(line number, text) of a UTF-8 text file; bytes that are not UTF-8 are a DataError naming file and line."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                yield n, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{n}: bytes that are not UTF-8 ({e.reason} at byte {e.start} of the line)") \
                    from e


def read_text(path: str | Path) -> str:
    """A whole UTF-8 file; a byte that is not UTF-8 is a DataError naming file and line."""
    return "".join(line for _, line in read_lines(path))


def need(value, where: str, name: str) -> str:
    if value is None:
        raise DataError(f"{where}: missing field '{name}'")
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field '{name}' is empty or not text")
    return value


def typed(obj: dict, name: str, kind, where: str):
    if not isinstance(obj, dict) or name not in obj:
        raise DataError(f"{where}: missing field '{name}'")
    value = obj[name]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise DataError(f"{where}: field '{name}' is {type(value).__name__}, not {getattr(kind, '__name__', kind)}")
    return value


def read_jsonl(path: Path, fields: tuple[str, ...]) -> dict[str, dict]:
    """{_id: {field: value, "_where": "file:line"}}; a field that is not text, or an _id seen twice, is an error."""
    rows = {}
    for n, line in read_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: malformed JSON ({e.msg})") from e
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        if "_id" not in obj:
            raise DataError(f"{where}: missing field '_id'")
        if not isinstance(obj["_id"], (str, int)) or isinstance(obj["_id"], bool):
            raise DataError(f"{where}: field '_id' is {type(obj['_id']).__name__}, not a string")
        for k in fields:
            if obj.get(k) is not None and not isinstance(obj[k], str):
                raise DataError(f"{where}: field '{k}' is {type(obj[k]).__name__}, not a string")
        key = str(obj["_id"])
        if key in rows:
            raise DataError(f"{where}: field '_id' {key!r} already used at {rows[key]['_where']} (duplicate id)")
        rows[key] = {k: obj.get(k) for k in fields} | {"_where": where}
    return rows


# ---------------------------------------------------------------------------- downloads
def download(url: str, target: Path) -> Path:
    """Fetch url to target atomically; no network -> an error naming the URL and --data-dir."""
    if target.exists():
        return target
    tmp = target.with_name(target.name + f".part{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
    except (urllib.error.URLError, OSError) as e:
        tmp.unlink(missing_ok=True)
        raise ConnectionError(f"could not download {url} ({e}); without network, fetch it elsewhere and pass "
                              "--data-dir pointing at the unpacked copy") from e
    os.replace(tmp, target)
    return target


def fetch_beir(name: str, url: str) -> Path:
    """Official BEIR zip -> $RABTRIEVER_CACHE/beir/{name}/ (unpacked atomically, reused later)."""
    root = cache_dir("beir")
    folder = root / name
    if (folder / "corpus.jsonl").exists():
        return folder
    archive = download(url, root / f"{name}.zip")
    tmp = root / f".{name}.unpack{os.getpid()}"
    try:
        with zipfile.ZipFile(archive) as z:
            bad = z.testzip()
            if bad:
                raise DataError(f"{archive}: member '{bad}' is corrupt")
            z.extractall(tmp)
    except zipfile.BadZipFile as e:
        archive.unlink()
        raise DataError(f"{archive}: not a complete zip file ({e}); it was deleted, run again to re-download") from e
    inner = tmp / name if (tmp / name / "corpus.jsonl").exists() else tmp
    if not (inner / "corpus.jsonl").exists():
        shutil.rmtree(tmp)
        raise DataError(f"{archive}: no corpus.jsonl inside")
    os.replace(inner, folder)
    shutil.rmtree(tmp, ignore_errors=True)
    return folder
