"""A BEIR-format retrieval set of real text from the official ESConv split files: each query is a dialogue context
(the last turns before a supporter turn, as `--bench esconv` renders it), its one relevant document the supporter's
actual reply; the corpus is every distinct supporter reply of the files read (the replies of other conversations are
the distractors). Splits as `--bench esconv`: train and dev (10% of its conversations) from the official dev file,
test the official test file, so no conversation is in two splits. Replies shorter than --min-words words ("Hello",
"You're welcome") are kept in the corpus but not used as golds: nothing in a context singles them out.

    python -m benchmarks.esconv_responses --data-dir ESCONV --out DIR     # then: distill.py --bench beir --data-dir DIR

The files are ESConv's ("for academic research use only"): the folder written is for local experiments, not to share.
"""
import argparse
import json
import re
from pathlib import Path

from data import load_esconv
from runtime.files import DataError, Retrieval, read_lines, write_beir


def replies(path: Path, split: str) -> dict[str, str]:
    """Query id (as `load_esconv_tsv` names it: f"{split}-{line}") -> the text of the line's last (supporter) turn."""
    out = {}
    for n, line in read_lines(path):
        if line.strip():
            last = line.rstrip("\n").split(" EOS ")[-1].strip().split(" ", 3)[-1]
            out[f"{split}-{n}"] = " ".join(re.sub(r"^\[[^\]]+\]\s*", "", last).split())
    return out


def build(data_dir: str, min_words: int = 5) -> Retrieval:
    strategies = load_esconv(data_dir)
    reply = {}
    for split in ("dev", "test"):
        path = Path(data_dir) / f"{split}WithStrategy_short.tsv"
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing (the official ESConv split files: github.com/thu-coai/"
                                    "Emotional-Support-Conversation, codes/dataset/)")
        reply |= replies(path, split)
    doc_of = {}
    for text in sorted(set(reply.values())):
        doc_of[text] = f"r{len(doc_of)}"
    data = Retrieval("esconv-responses", {d: {"title": "", "text": t} for t, d in doc_of.items()})
    for split, queries in strategies.queries.items():
        keep = {q: t for q, t in queries.items() if len(reply[q].split()) >= min_words}
        data.queries[split] = keep
        data.qrels[split] = {q: {doc_of[reply[q]]: 1} for q in keep}
        data.origin[split] = f"{strategies.origin.get(split, split)}, replies of >= {min_words} words as golds"
        if not keep:
            raise DataError(f"{data_dir}: split '{split}' has no reply of >= {min_words} words")
    return data


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True, help="folder of devWithStrategy_short.tsv and testWithStrategy_short.tsv")
    ap.add_argument("--out", required=True, help="the BEIR folder to write (corpus.jsonl, queries.jsonl, qrels/)")
    ap.add_argument("--min-words", type=int, default=5)
    return ap


def main(argv=None) -> None:
    a = parser().parse_args(argv)
    data = build(a.data_dir, a.min_words)
    write_beir(data, a.out)
    print(json.dumps(data.stats("all")))


if __name__ == "__main__":
    main()
