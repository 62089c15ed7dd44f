"""Reading and fetching the files of data sets: the in-memory `Retrieval` type, UTF-8 lines with their numbers,
typed fields that name file, line and field when they are wrong, the BEIR layout (corpus.jsonl, queries.jsonl,
qrels/*.tsv) that every other format is turned into, atomic downloads and BEIR zips. data.py knows the data sets.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from runtime.common import atomic_write, cache_dir


class DataError(ValueError):
    """Bad input: the message names the file, the line and the field."""


def read_lines(path: str | Path):
    """(line number, text) of a UTF-8 text file, without a byte-order mark before its first line; bytes that are not
    UTF-8 are a DataError naming file and line."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                yield n, raw.decode("utf-8-sig" if n == 1 else "utf-8")
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


@dataclass
class Retrieval:
    """corpus: doc id -> {"title", "text"}; per split: queries qid -> text and qrels qid -> {doc id: grade}; origin:
    per split, where its queries come from; keys: each query's lookup key where the loader gives one. Splits are named by their role: "train" (distilled on), "dev" (every
    choice is made on it), "test" (evaluated once per reported run)."""
    name: str
    corpus: dict[str, dict[str, str]]
    queries: dict[str, dict[str, str]] = field(default_factory=dict)
    qrels: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # qid -> lookup key, where the loader gives one

    def key(self, split: str, qid: str) -> str:
        """What the `lookup` baseline matches exactly: the loader's key (next-step tasks: title + history), else the
        query text."""
        return self.keys.get(qid, self.queries[split][qid])

    def split(self, split: str) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
        if split not in self.queries:
            raise KeyError(f"{self.name}: split '{split}' does not exist (have: {', '.join(sorted(self.queries))})")
        return self.queries[split], self.qrels[split]

    def doc_text(self, doc_id: str) -> str:
        return doc_text(self.corpus[doc_id])

    def stats(self, split: str) -> dict:
        splits = sorted(self.queries) if split == "all" else [split]
        n_q = n_r = 0
        for s in splits:
            q, r = self.split(s)
            n_q += len(q)
            n_r += sum(len(v) for v in r.values())
        return {"bench": self.name, "split": split, "queries": n_q, "documents": len(self.corpus), "qrels": n_r,
                "splits": {s: len(self.queries[s]) for s in sorted(self.queries)}, "origin": self.origin}


def doc_text(d: dict[str, str]) -> str:
    """A document's text as every model reads it: "title. text" when it has a title."""
    return f"{d['title']}. {d['text']}" if d.get("title") else d["text"]


def check_qrels(data: Retrieval) -> Retrieval:
    """Every judged query and document must exist."""
    for split, qrels in data.qrels.items():
        for qid, docs in qrels.items():
            if qid not in data.queries[split]:
                raise DataError(f"{data.name}/{split}: qrels name unknown query '{qid}'")
            for did in docs:
                if did not in data.corpus:
                    raise DataError(f"{data.name}/{split}: qrels of query '{qid}' name unknown document '{did}'")
    return data


def check_split(data: Retrieval, split: str, role: str) -> None:
    """A split a script trains, chooses or evaluates on must exist and hold a query with a relevant document; checked
    before any compute."""
    if split not in data.queries:
        raise DataError(f"{data.name}: no '{split}' split for the {role} queries (has: {', '.join(data.queries)})")
    queries, qrels = data.split(split)
    if not any(any(g > 0 for g in qrels.get(q, {}).values()) for q in queries):
        raise DataError(f"{data.name}: {role} split '{split}' has no query with a relevant document "
                        f"({len(queries)} queries): nothing to {'train on' if role == 'training' else 'evaluate'}")


def load_corpus(path: str | Path) -> dict[str, dict[str, str]]:
    """A BEIR corpus.jsonl ({_id, title, text} per line), or the BEIR folder holding it: doc id -> {title, text}."""
    path = Path(path)
    path = path / "corpus.jsonl" if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such corpus file (expected a BEIR corpus.jsonl or its folder)")
    corpus = {}
    for did, row in read_jsonl(path, ("title", "text")).items():
        if row["text"] is None:
            raise DataError(f"{row['_where']}: missing field 'text'")
        title, text = row.get("title") or "", row["text"]
        if not (title + text).strip():
            raise DataError(f"{row['_where']}: field 'text' is empty (and no title)")
        corpus[did] = {"title": title, "text": text}
    if not corpus:
        raise DataError(f"{path}: no document")
    return corpus


def load_queries(path: str | Path) -> dict[str, str]:
    """A BEIR queries.jsonl ({_id, text} per line): query id -> text."""
    return {qid: need(r["text"], r["_where"], "text") for qid, r in read_jsonl(Path(path), ("text",)).items()}


def load_beir(folder: str | Path, name: str | None = None, splits: tuple[str, ...] | None = None) -> Retrieval:
    """A BEIR folder: corpus.jsonl ({_id, title, text}), queries.jsonl ({_id, text}), qrels/{split}.tsv."""
    folder = Path(folder)
    name = name or folder.name
    if not (folder / "corpus.jsonl").exists():
        raise FileNotFoundError(f"{folder}: no corpus.jsonl (expected a BEIR folder)")
    corpus = load_corpus(folder / "corpus.jsonl")
    all_queries = load_queries(folder / "queries.jsonl")
    available = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
    if not available:
        raise DataError(f"{folder}: no qrels/*.tsv (a BEIR folder holds qrels/test.tsv, and qrels/train.tsv / "
                        "qrels/dev.tsv where the set has them)")
    data = Retrieval(name, corpus)
    for split in splits or available:
        path = folder / "qrels" / f"{split}.tsv"
        if not path.exists():
            raise KeyError(f"{folder}: split '{split}' does not exist (have: {', '.join(available)})")
        qrels: dict[str, dict[str, int]] = {}
        where: dict[tuple[str, str], tuple[int, int]] = {}
        for n, line in read_lines(path):
            parts = line.rstrip("\r\n").split("\t")
            if n == 1 and parts[0] == "query-id" or not line.strip():
                continue
            if len(parts) != 3:
                raise DataError(f"{path}:{n}: expected 3 tab-separated fields query-id, corpus-id, score")
            try:
                grade = int(parts[2])
            except ValueError as e:
                raise DataError(f"{path}:{n}: field 'score' is not an integer: {parts[2]!r}") from e
            if parts[0] not in all_queries:
                raise DataError(f"{path}:{n}: field 'query-id' names unknown query '{parts[0]}'")
            if parts[1] not in corpus:
                raise DataError(f"{path}:{n}: field 'corpus-id' names unknown document '{parts[1]}'")
            seen = where.get((parts[0], parts[1]))
            if seen:
                kind = "repeats" if seen[1] == grade else f"contradicts (score {seen[1]} there)"
                raise DataError(f"{path}:{n}: the judgement of query '{parts[0]}' for document '{parts[1]}' {kind} "
                                f"line {seen[0]}: keep one line per (query-id, corpus-id)")
            where[parts[0], parts[1]] = (n, grade)
            qrels.setdefault(parts[0], {})[parts[1]] = grade
        if not any(g > 0 for rel in qrels.values() for g in rel.values()):
            raise DataError(f"{path}: no judgement with a score > 0: split '{split}' has nothing to evaluate")
        data.queries[split] = {q: all_queries[q] for q in qrels}
        data.qrels[split] = qrels
        data.origin[split] = f"qrels/{split}.tsv"
    return data


# ---------------------------------------------------------------------------- splits by group
DEV_SHARE = 0.1  # the share of a training split's groups carved as dev where a set has no dev split


def write_beir(data: Retrieval, folder: str | Path) -> Path:
    """The inverse of `load_beir`: corpus.jsonl, queries.jsonl (every split's queries) and qrels/{split}.tsv, each
    file written atomically. Query ids must be unique across splits (a BEIR folder has one queries.jsonl)."""
    folder = Path(folder)
    queries: dict[str, str] = {}
    for split, qs in data.queries.items():
        for qid, text in qs.items():
            if queries.get(qid, text) != text:
                raise DataError(f"{data.name}: query id '{qid}' has two texts (split '{split}' and another)")
            queries[qid] = text
    atomic_write(folder / "corpus.jsonl", "".join(json.dumps({"_id": d, "title": r.get("title", ""), "text": r["text"]},
                                                             ensure_ascii=False) + "\n" for d, r in data.corpus.items()))
    atomic_write(folder / "queries.jsonl", "".join(json.dumps({"_id": q, "text": t}, ensure_ascii=False) + "\n"
                                                   for q, t in queries.items()))
    for split, qrels in data.qrels.items():
        atomic_write(folder / "qrels" / f"{split}.tsv", "query-id\tcorpus-id\tscore\n" + "".join(
            f"{q}\t{d}\t{g}\n" for q, rel in qrels.items() for d, g in rel.items()))
    return folder


def carve_dev(data: Retrieval, group_of: dict[str, str] | None = None, seed: int = 0) -> Retrieval:
    """A set without a dev split gets one: a seeded DEV_SHARE of the training split's groups (`group_of`: query id
    -> group, e.g. its conversation; default each query alone) moves from train to dev. A training split of one group
    stays whole (no dev split; a script that needs one says so)."""
    if "dev" in data.queries or "train" not in data.queries:
        return data
    queries, qrels = data.queries["train"], data.qrels["train"]
    group_of = group_of or {q: q for q in queries}
    if len(set(group_of.values())) < 2:
        return data
    split_of = assign_groups(group_of.values(), seed, {"dev": DEV_SHARE})
    for split in ("dev", "train"):
        data.queries[split] = {q: t for q, t in queries.items() if split_of[group_of[q]] == split}
        data.qrels[split] = {q: r for q, r in qrels.items() if split_of[group_of[q]] == split}
    data.origin["dev"] = f"{DEV_SHARE:.0%} of the groups of {data.origin.get('train', 'train')}, seed {seed}"
    data.origin["train"] = f"{data.origin.get('train', 'train')}, less dev"
    return data


def task_title(title: str) -> str:
    """The key next-step programs are grouped by: the title, lower-cased, punctuation and runs of spaces folded."""
    return " ".join(re.sub(r"[^\w\s]", " ", title.lower()).split())


def union_groups(keys: list[tuple]) -> list[int]:
    """Items that share any key are one group (union-find over `keys[i]`, item i's keys): each item's group as the
    index of one of its members."""
    parent = list(range(len(keys)))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict = {}
    for i, item_keys in enumerate(keys):
        for key in item_keys:
            parent[root(i)] = root(first.setdefault(key, i))
    return [root(i) for i in range(len(keys))]


def assign_groups(groups, seed: int, shares: dict[str, float]) -> dict[str, str]:
    """Each distinct group -> its split: the groups, sorted (so file order does not matter) and shuffled with `seed`,
    go `shares[s]` of them (at least one) to each split s in turn, the rest to "train"."""
    order = sorted(set(groups))
    if len(order) < len(shares) + 1:
        raise DataError(f"{len(order)} group(s) cannot make the splits train, {', '.join(shares)}: at least "
                        f"{len(shares) + 1} are needed")
    random.Random(seed).shuffle(order)
    out, k = {}, 0
    for split, share in shares.items():
        n = max(1, round(share * len(order)))
        out |= {g: split for g in order[k:k + n]}
        k += n
    return out | {g: "train" for g in order[k:]}
