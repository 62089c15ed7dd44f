"""data.py: every loader on fixtures written here, the real VirtualHome package, the BEIR download path, bad input."""
import functools
import http.server
import json
import os
import re
import threading
import zipfile

import pytest

import data
from conftest import write_virtualhome
from data import DataError, load_bench
from runtime.files import write_beir as export_beir


def write_beir(folder, corpus=None, queries=None, qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\n"):
    folder.mkdir(parents=True, exist_ok=True)
    corpus = corpus if corpus is not None else [{"_id": "d1", "title": "Cats", "text": "cats purr"},
                                                {"_id": "d2", "title": "", "text": "dogs bark loudly"}]
    queries = queries if queries is not None else [{"_id": "q1", "text": "purring cats"},
                                                   {"_id": "q2", "text": "barking dogs"}]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(c) + "\n" for c in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (folder / "qrels").mkdir(exist_ok=True)
    (folder / "qrels" / "test.tsv").write_text(qrels)
    return folder


def test_beir_folder(tmp_path):
    """A BEIR folder loads corpus, queries and graded qrels; titles are prefixed to the text."""
    d = data.load_beir(write_beir(tmp_path / "toy"))
    q, r = d.split("test")
    assert q == {"q1": "purring cats", "q2": "barking dogs"} and r == {"q1": {"d1": 1}, "q2": {"d2": 2}}
    assert d.doc_text("d1") == "Cats. cats purr" and d.doc_text("d2") == "dogs bark loudly"
    assert d.stats("test") == {"bench": "toy", "split": "test", "queries": 2, "documents": 2, "qrels": 2,
                               "splits": {"test": 2}, "origin": {"test": "qrels/test.tsv"}}


@pytest.mark.parametrize("kind,needle", [
    ("json", "corpus.jsonl:2: malformed JSON"),
    ("field", "corpus.jsonl:2: missing field 'text'"),
    ("empty", "corpus.jsonl:2: field 'text' is empty"),
    ("qdoc", "test.tsv:2: field 'corpus-id' names unknown document 'd9'"),
    ("qquery", "test.tsv:3: field 'query-id' names unknown query 'q7'"),
])
def test_beir_bad_input(tmp_path, kind, needle):
    """Each kind of bad BEIR input raises an error naming the file, the line and the field."""
    folder = write_beir(tmp_path / "toy")
    if kind == "json":
        (folder / "corpus.jsonl").write_text('{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": \n')
    elif kind == "field":
        (folder / "corpus.jsonl").write_text('{"_id": "d1", "text": "a"}\n{"_id": "d2", "title": "x"}\n')
    elif kind == "empty":
        (folder / "corpus.jsonl").write_text('{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": " "}\n')
    elif kind == "qdoc":
        (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td9\t1\n")
    else:
        (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq7\td1\t1\n")
    with pytest.raises(data.DataError, match=needle.replace("'", ".")):
        data.load_beir(folder)


def test_missing_split(tmp_path):
    """Asking for a split that does not exist names the splits that do."""
    with pytest.raises(KeyError, match="split 'dev' does not exist"):
        data.load_beir(write_beir(tmp_path / "toy"), splits=("dev",))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


def _serve(folder):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_beir_download_and_truncated_zip(tmp_path, monkeypatch):
    """The official-zip path downloads from a local HTTP server, unpacks into the cache, reuses it; a truncated zip
    is a clear error and is deleted."""
    monkeypatch.setenv("RABTRIEVER_CACHE", str(tmp_path / "cache"))
    src = write_beir(tmp_path / "src" / "toy")
    www = tmp_path / "www"
    www.mkdir()
    with zipfile.ZipFile(www / "toy.zip", "w") as z:
        for p in src.rglob("*"):
            z.write(p, p.relative_to(src.parent))
    (www / "bad.zip").write_bytes((www / "toy.zip").read_bytes()[:60])
    server = _serve(www)
    try:
        url = f"http://127.0.0.1:{server.server_port}/" + "{name}.zip"
        monkeypatch.setattr(data, "BEIR_URL", url)
        d = data.load_bench("toy")
        assert len(d.corpus) == 2 and (tmp_path / "cache" / "beir" / "toy" / "corpus.jsonl").exists()
        server.shutdown()
        assert len(data.load_bench("toy").corpus) == 2  # reused from the cache, no server needed
        server = _serve(www)
        monkeypatch.setattr(data, "BEIR_URL", f"http://127.0.0.1:{server.server_port}/" + "{name}.zip")
        with pytest.raises(data.DataError, match="bad.zip: not a complete zip"):
            data.fetch_beir("bad", data.BEIR_URL.format(name="bad"))
        assert not (tmp_path / "cache" / "beir" / "bad.zip").exists()
    finally:
        server.shutdown()


def test_no_network_message(tmp_path, monkeypatch):
    """Without network and without --data-dir the error names the URL and --data-dir; for a name that is no known set,
    it lists the known ones."""
    monkeypatch.setenv("RABTRIEVER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "BEIR_URL", "http://127.0.0.1:9/{name}.zip")
    with pytest.raises(ConnectionError, match=r"http://127.0.0.1:9/scifact.zip.*--data-dir") as e:
        data.load_bench("scifact")
    assert "neither a bench" not in str(e.value)
    with pytest.raises(ConnectionError, match=r"'scifacts' is neither a bench of this project .*scifact.*--data-dir"):
        data.load_bench("scifacts")  # a misspelt name: the benches and public sets are listed


ESCONV_LINE = ("1.0 0 0 I feel so alone lately  EOS 1.0 1 1 [Questions] Why do you feel that way? EOS "
               "0.0 0 2 My friends moved away  EOS 1.0 1 3 [Reflection of feelings] That sounds lonely.\n")


def test_esconv_tsv(tmp_path):
    """Split files: one query per line, earlier strategy labels stripped, the last turn's strategy is relevant."""
    (tmp_path / "devWithStrategy_short.tsv").write_text(ESCONV_LINE)
    (tmp_path / "testWithStrategy_short.tsv").write_text(ESCONV_LINE.replace("[Reflection of feelings]", "[Other]"))
    d = data.load_esconv(str(tmp_path))
    q, r = d.split("train")  # the official dev file trains (there is no train file); one conversation: no dev carved
    assert q == {"dev-1": "Seeker: I feel so alone lately\nSupporter: Why do you feel that way?\n"
                          "Seeker: My friends moved away"}
    assert r == {"dev-1": {"Reflection of feelings": 1}} and d.split("test")[1] == {"test-1": {"Other": 1}}
    assert len(d.corpus) == 8 and set(d.queries) == {"train", "test"} and "official dev file" in d.origin["train"]


def test_esconv_tsv_bad_line(tmp_path):
    """A line whose last turn has no strategy, or an unknown strategy, names file, line and field."""
    (tmp_path / "testWithStrategy_short.tsv").write_text(ESCONV_LINE + "1.0 0 0 hi EOS 1.0 0 1 hello\n")
    with pytest.raises(data.DataError, match=r"testWithStrategy_short.tsv:2: utterance 2: field 'strategy'"):
        data.load_esconv(str(tmp_path))
    (tmp_path / "testWithStrategy_short.tsv").write_text(ESCONV_LINE.replace("Reflection of feelings", "Magic"))
    with pytest.raises(data.DataError, match=r":1: utterance 4: field 'strategy' has unknown value 'Magic'"):
        data.load_esconv(str(tmp_path))


def write_esconv_json(folder, turns: list[tuple[str, str, str | None]], n: int = 10) -> list[dict]:
    """ESConv.json of n conversations, each the (speaker, content, strategy or None) turns; returns the conversations."""
    convs = [{"dialog": [{"speaker": who, "content": f"{text} {c}", "annotation": {"strategy": st} if st else {}}
                         for who, text, st in turns]} for c in range(n)]
    (folder / "ESConv.json").write_text(json.dumps(convs))
    return convs


def test_esconv_json(tmp_path):
    """ESConv.json: one query per supporter turn with a strategy and some context; split by conversation."""
    convs = write_esconv_json(tmp_path, [("seeker", "hello", None), ("supporter", "hi", "Others"),
                                         ("seeker", "sad", None), ("supporter", "why?", "Question")])
    d = data.load_esconv(str(tmp_path))
    assert sum(len(v) for v in d.queries.values()) == 20
    conv_split = {}
    for s, qs in d.queries.items():
        for qid in qs:
            assert conv_split.setdefault(qid.split("-")[0], s) == s  # a conversation lives in one split
    assert d.qrels["train"][f"{next(iter(d.queries['train'])).split('-')[0]}-t1"] == {"Other": 1}
    convs[3]["dialog"][1].pop("content")
    (tmp_path / "ESConv.json").write_text(json.dumps(convs))
    with pytest.raises(data.DataError, match="conversation 3, turn 1: missing field 'content'"):
        data.load_esconv(str(tmp_path))


def test_esconv_real_json():
    """The real FailedESConv.json (older spellings included) loads, when the shared copy is present."""
    path = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "esconv", "FailedESConv.json")
    if not os.path.exists(path):
        pytest.skip("shared ESConv copy not present")
    d = data.load_esconv_json(path)
    assert d.stats("all")["queries"] == 2306 and len(d.corpus) == 8


def test_saycan(tmp_path):
    """SayCan plan file: query = instruction + steps so far, documents = distinct steps, split by instruction."""
    lines = ["INPUT\tOUTPUT"] + [
        f"Can you bring me item {i}?\t1. find a item {i}, 2. pick up the item {i}, 3. bring it to you, "
        f"4. put down the item {i}, 5. done." for i in range(10)]
    (tmp_path / "saycan_plan_v0_l.tsv").write_text("\n".join(lines) + "\n")
    d = data.load_saycan(tmp_path / "saycan_plan_v0_l.tsv")
    assert d.stats("all")["queries"] == 50 and len(d.corpus) == 10 * 3 + 2
    assert {s: len(q) for s, q in d.queries.items()} == {"train": 30, "dev": 10, "test": 10}
    q, r = d.split("train")
    k = next(k for k in q if k.endswith("#2"))
    n = q[k].split("item ")[1].split("?")[0]
    assert q[k] == f"Task: Can you bring me item {n}?\nSteps done so far: 1. find a item {n}; 2. pick up the item {n}"
    assert r[k] == {"bring it to you": 1}
    (tmp_path / "bad.tsv").write_text("INPUT\tOUTPUT\nonly one field\n")
    with pytest.raises(data.DataError, match="bad.tsv:2: expected 2 tab-separated fields"):
        data.load_saycan(tmp_path / "bad.tsv")
    for output in ("find a coke, pick it up", "1. find a coke, 3. pick it up", "2. find a coke", "1. find, 2. , 3. x"):
        (tmp_path / "bad.tsv").write_text(f"INPUT\tOUTPUT\nbring me a coke\t1. done.\nbring me a cup\t{output}\n")
        with pytest.raises(data.DataError, match=r"bad.tsv:3: field 'OUTPUT' is not numbered steps"):
            data.load_saycan(tmp_path / "bad.tsv")


def test_virtualhome_title_or_description_that_is_a_step(tmp_path):
    """A program whose title or description line is a step (a line missing above it) names file, line and field
    instead of reading one step fewer."""
    root = write_virtualhome(tmp_path)
    path = next(root.rglob("*.txt"))
    lines = path.read_text().split("\n")
    path.write_text("\n".join([lines[0]] + lines[4:]))  # no description line
    with pytest.raises(data.DataError, match=rf"{path.name}:2: field 'description' is a step"):
        data.load_virtualhome(str(root))
    path.write_text("\n".join(lines[4:]))
    with pytest.raises(data.DataError, match=rf"{path.name}:1: field 'title' is a step"):
        data.load_virtualhome(str(root))


def test_esconv_json_odd_turns_are_reported(tmp_path, capsys):
    """Supporter turns without a strategy and seeker turns with one are counted and named, not skipped silently;
    a file with no usable turn is refused."""
    convs = write_esconv_json(tmp_path, [("seeker", "hello", "Question"), ("supporter", "hi", None),
                                         ("supporter", "why?", "Question")])
    d = data.load_esconv(str(tmp_path))
    assert sum(len(v) for v in d.queries.values()) == 10
    out = capsys.readouterr().out
    assert "10 supporter turn(s) without 'annotation.strategy', not used as queries (first: conversation 0, turn 1)" \
        in out and "10 seeker turn(s) with a strategy" in out
    for conv in convs:
        conv["dialog"][2]["annotation"] = {}
    (tmp_path / "ESConv.json").write_text(json.dumps(convs))
    with pytest.raises(data.DataError, match="ESConv.json: no supporter turn with a strategy"):
        data.load_esconv(str(tmp_path))


def test_virtualhome_fixture(tmp_path):
    """VirtualHome layout: steps rendered as text skills, the next step is relevant, 70/10/20 split by program group
    (the fixture's programs p and p + 7 have the same steps: 7 groups, 1 in test, 1 in dev)."""
    d = data.load_virtualhome(str(write_virtualhome(tmp_path)))
    assert d.stats("all")["queries"] == 40 and {s: len(q) // 4 for s, q in d.queries.items()} == \
        {"train": 7, "dev": 2, "test": 1}
    q, r = d.split("train")
    k = next(k for k in q if k.endswith("#3"))
    assert "3. grab" in q[k] and list(r[k])[0].startswith("put ") and " on " in list(r[k])[0]
    bad = tmp_path / "dataset" / "programs" / "executable_programs" / "Scene1" / "results" / "file99_1.txt"
    bad.write_text("Title\ndesc\n\n[WALK] computer\n")
    with pytest.raises(data.DataError, match="file99_1.txt:4: field 'step'"):
        data.load_virtualhome(str(tmp_path / "dataset"))


def test_virtualhome_real_package():
    """The installed eai-eval package: 518 programs, 4707 steps, 592 skills; three splits, and no program, title
    (26 in all), task text or sequence of steps in two of them: no test task is seen in training."""
    d = data.load_virtualhome()
    s = d.stats("all")
    assert (s["queries"], s["documents"]) == (4707, 592)
    progs = {sp: {q.split("#")[0] for q in d.queries[sp]} for sp in ("train", "dev", "test")}
    assert sum(map(len, progs.values())) == 518
    task = {sp: {q.split("\n")[0] for q in d.queries[sp].values()} for sp in progs}
    title = {sp: {d.key(sp, q).split("\n")[0] for q in d.queries[sp]} for sp in progs}
    assert sum(map(len, title.values())) == 26 and all(title.values())
    steps = {sp: {tuple(s for q, r in sorted(d.qrels[sp].items()) if q.split("#")[0] == p for s in r)
                  for p in progs[sp]} for sp in progs}
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
        assert not progs[a] & progs[b] and not task[a] & task[b] and not steps[a] & steps[b]
        assert not title[a] & title[b]
    assert 0.05 < len(d.queries["dev"]) / s["queries"] < 0.2 and 0.15 < len(d.queries["test"]) / s["queries"] < 0.25


def test_next_step_split_groups_by_title(tmp_path):
    """Programs with one title (case and punctuation aside) but other descriptions and steps land in one split, and
    each query's lookup key is its title and history."""
    lines = ["INPUT\tOUTPUT"] + [f"{'Bring me a COKE!' if i % 2 else 'bring me a coke'}\t1. find item {i}, 2. done"
                                  for i in range(8)] + [f"Task {i}\t1. go to {i}, 2. done" for i in range(8)]
    (tmp_path / "s.tsv").write_text("\n".join(lines) + "\n")
    d = data.load_saycan(tmp_path / "s.tsv")
    where = {s for s, q in d.queries.items() for k in q if d.key(s, k).startswith("bring me a coke\n")}
    assert len(where) == 1 and sum(len(q) for s, q in d.queries.items() if s in where) >= 16
    split = next(iter(where))
    assert d.key(split, "l3#1") == "bring me a coke\n1. find item 1" and d.key(split, "l3#0") == "bring me a coke\nnone"


def test_stats_cli(tmp_path, capsys):
    """`python data.py stats` prints one JSON line with the counts."""
    data.main(["stats", "--bench", "virtualhome", "--data-dir", str(write_virtualhome(tmp_path)), "--split", "test"])
    out = json.loads(capsys.readouterr().out)
    assert out["bench"] == "virtualhome" and out["queries"] == 4 and out["documents"] == 28


def test_psyqa_official_format(tmp_path):
    """PsyQA: the 7 strategies are the documents; one query per labelled span, holding the question, the description
    and the answer's spans before it; unannotated answers are skipped; questions split 80/10/10 by question."""
    from conftest import PSYQA_TYPES, write_psyqa
    data = load_bench("psyqa", str(write_psyqa(tmp_path / "p", 20)))
    assert sorted(data.corpus) == sorted(PSYQA_TYPES) and set(data.queries) == {"train", "dev", "test"}
    assert {s: len(q) for s, q in data.queries.items()} == {"train": 48, "dev": 6, "test": 6}
    every = {q: t for qs in data.queries.values() for q, t in qs.items()}
    rel = {q: r for rs in data.qrels.values() for q, r in rs.items()}
    assert every["q4003-a0-s0"].endswith("Answer so far: (nothing yet)") and rel["q4003-a0-s0"] == {PSYQA_TYPES[3]: 1}
    assert "Question: why do i feel lonely 3 ?\nDescription: my friends do not help me" in every["q4003-a0-s2"]
    assert every["q4003-a0-s2"].endswith("Answer so far: i feel sad 3 . what is it like ?")
    assert rel["q4003-a0-s2"] == {PSYQA_TYPES[5]: 1} and not any("-a1-" in q for q in every)


@pytest.mark.parametrize("change,needle", [
    (lambda it: it[2]["answers"][0]["labels_sequence"][1].update(type="Question"), "question 2, answer 0, span 1: "
     "field 'type' has unknown value 'Question'"),
    (lambda it: it[1]["answers"][0]["labels_sequence"][0].update(end=10 ** 6), "question 1, answer 0, span 0: fields"),
    (lambda it: it[0].pop("question"), "question 0: missing field 'question'"),
    (lambda it: it[3].update(questionID=4000), "question 3: field 'questionID' '4000' already used by question 0"),
    (lambda it: it[4]["answers"][0].update(has_label="yes"), "question 4, answer 0: field 'has_label' is str"),
])
def test_psyqa_bad_input(tmp_path, change, needle):
    """A bad PsyQA file stops with the file, question, answer, span and field named."""
    from conftest import write_psyqa
    folder = write_psyqa(tmp_path / "p", 8)
    path = folder / "PsyQA_example.json"
    items = json.loads(path.read_text(encoding="utf-8"))
    change(items)
    path.write_text(json.dumps(items), encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(needle)):
        load_bench("psyqa", str(folder))


# ---------------------------------------------------------------------------- dev splits
def test_assign_groups_disjoint_seeded_stable():
    """Each group goes to one split; the shares hold; the same groups in another order give the same splits; another
    seed gives others; too few groups is an error."""
    groups = [f"g{i}" for i in range(100)]
    a = data.assign_groups(groups, 0, {"test": 0.2, "dev": 0.1})
    assert set(a) == set(groups) and [sum(v == s for v in a.values()) for s in ("train", "dev", "test")] == [70, 10, 20]
    assert data.assign_groups(list(reversed(groups)) + groups[:5], 0, {"test": 0.2, "dev": 0.1}) == a
    assert data.assign_groups(groups, 1, {"test": 0.2, "dev": 0.1}) != a
    assert set(data.assign_groups(["a", "b", "c"], 0, {"test": 0.2, "dev": 0.1}).values()) == {"train", "dev", "test"}
    with pytest.raises(data.DataError, match="2 group"):
        data.assign_groups(["a", "b"], 0, {"test": 0.2, "dev": 0.1})


def _esconv_conversation(c: int, turns: int) -> list[str]:
    """The split files' lines of one conversation: each a context ending in a supporter turn, turn index growing."""
    lines, context = [], []
    for t in range(turns):
        context.append(f"1.0 0 {2 * t} seeker line {c}.{t} ")
        lines.append(" EOS ".join(context + [f"1.0 1 {2 * t + 1} [Questions] why {c}.{t}?"]) + "\n")
        context.append(f"1.0 1 {2 * t + 1} [Questions] why {c}.{t}?")
    return lines


def test_esconv_dev_carved_by_conversation(tmp_path):
    """Without a train file, the official dev file trains, less a dev split of whole conversations (10% of 20)."""
    (tmp_path / "devWithStrategy_short.tsv").write_text("".join(
        line for c in range(20) for line in _esconv_conversation(c, 3)))
    (tmp_path / "testWithStrategy_short.tsv").write_text("".join(_esconv_conversation(99, 2)))
    d = data.load_esconv(str(tmp_path))
    assert {s: len(q) for s, q in d.queries.items()} == {"train": 54, "dev": 6, "test": 2}
    conv = {s: {q.split("seeker line ")[1].split(".")[0] for q in d.queries[s].values()} for s in ("train", "dev")}
    assert len(conv["dev"]) == 2 and not conv["dev"] & conv["train"]  # whole conversations, on one side
    assert d.origin["train"].startswith("devWithStrategy_short.tsv") and d.origin["dev"].startswith("10% of the groups")
    again = data.load_esconv(str(tmp_path))
    assert again.queries == d.queries  # seeded: the same dev split every time


def test_esconv_real_dev_split():
    """The shared copy of the official files: dev carved from the dev file (which trains), test untouched."""
    folder = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "esconv")
    if not os.path.exists(os.path.join(folder, "testWithStrategy_short.tsv")):
        pytest.skip("the shared ESConv copy is absent")
    d = data.load_esconv(folder)
    n = {s: len(q) for s, q in d.queries.items()}
    assert n["train"] + n["dev"] == 2985 and n["test"] == 2775 and 0.05 < n["dev"] / 2985 < 0.15
    assert not set(d.queries["train"]) & set(d.queries["dev"])


def test_beir_dev_split(tmp_path):
    """A BEIR set: qrels/dev.tsv when there is one; else 10% of the train queries carved as dev; MS MARCO's official
    dev queries are the evaluated split ("test")."""
    queries = [{"_id": f"q{i}", "text": f"query {i}"} for i in range(30)]
    train = "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{1 + i % 2}\t1\n" for i in range(20))
    folder = write_beir(tmp_path / "toy", queries=queries,
                        qrels="query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td1\t1\n" for i in range(20, 30)))
    (folder / "qrels" / "train.tsv").write_text(train)
    d = data.load_beir_by_name("toy", str(folder))
    assert {s: len(q) for s, q in d.queries.items()} == {"test": 10, "train": 18, "dev": 2}
    assert not set(d.queries["dev"]) & set(d.queries["train"]) and d.origin["train"] == "qrels/train.tsv, less dev"
    (folder / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td1\t1\n")
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"q{i}\td1\t1\n" for i in range(1, 20)))
    d = data.load_beir_by_name("toy", str(folder))
    assert {s: len(q) for s, q in d.queries.items()} == {"dev": 1, "test": 10, "train": 19}
    (folder / "qrels" / "test.tsv").unlink()
    m = data.load_msmarco(str(folder))
    assert {s: len(q) for s, q in m.queries.items()} == {"train": 17, "test": 1, "dev": 2}
    assert m.origin["test"].startswith("qrels/dev.tsv")


def test_write_beir_is_load_beirs_inverse(tmp_path):
    """`write_beir` writes a Retrieval (every split, titles, grades) that `load_beir` reads back as it was; a query id
    with two texts in two splits cannot share one queries.jsonl and is refused."""
    d = data.Retrieval("toy", {"d1": {"title": "Cats", "text": "cats purr"}, "d2": {"title": "", "text": "dogs bark"}},
                       {"train": {"q1": "purring"}, "dev": {"q2": "barking"}, "test": {"q3": "pets"}},
                       {"train": {"q1": {"d1": 1}}, "dev": {"q2": {"d2": 2}}, "test": {"q3": {"d1": 1, "d2": 0}}})
    back = data.load_beir(export_beir(d, tmp_path / "toy"))
    assert (back.corpus, back.queries, back.qrels) == (d.corpus, d.queries, d.qrels)
    d.queries["test"]["q1"] = "another text"
    with pytest.raises(DataError, match="query id 'q1' has two texts"):
        export_beir(d, tmp_path / "bad")


def test_esconv_responses_set(tmp_path):
    """benchmarks/esconv_responses.py: a BEIR set whose queries are `--bench esconv`'s contexts (the same splits, by
    conversation) and whose one gold each is the supporter's actual reply; replies too short to single out are
    distractors only."""
    from benchmarks import esconv_responses
    (tmp_path / "devWithStrategy_short.tsv").write_text("".join(
        line for c in range(20) for line in _esconv_conversation(c, 3)))
    (tmp_path / "testWithStrategy_short.tsv").write_text("".join(_esconv_conversation(99, 2)) +
                                                        "1.0 0 0 hi there EOS 1.0 1 1 [Others] Yes.\n")
    esconv_responses.main(["--data-dir", str(tmp_path), "--out", str(tmp_path / "beir"), "--min-words", "2"])
    d, strategies = data.load_beir(tmp_path / "beir"), data.load_esconv(str(tmp_path))
    assert {s: set(q) for s, q in d.queries.items()} == {"train": set(strategies.queries["train"]),
                                                         "dev": set(strategies.queries["dev"]),
                                                         "test": {"test-1", "test-2"}}  # the 1-word reply: no gold
    assert d.queries["dev"] == strategies.queries["dev"]
    gold = {q: d.corpus[next(iter(r))]["text"] for q, r in d.qrels["test"].items()}
    assert gold == {"test-1": "why 99.0?", "test-2": "why 99.1?"}
    assert "Yes." in {r["text"] for r in d.corpus.values()} and len(d.corpus) == 20 * 3 + 2 + 1
