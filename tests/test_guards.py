"""Nothing lost, nothing silently wrong: refused outputs leave earlier files byte-identical, damaged files are named,
prompts fit the window, bad values and data stop before any compute with `error: ...` and exit 2."""
import json
import os
import re
import stat
from pathlib import Path

import pytest
import torch

from runtime import common
import data
import distill
import evaluate as E
import student as S
import teacher as T
from conftest import make_lm, make_tokenizer, patch_llm, write_virtualhome
from test_data import ESCONV_LINE


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(main, argv, capsys) -> str:
    """common.cli(main, argv) must exit 2 with a one-line `error: ...` and no traceback; returns the message."""
    with pytest.raises(SystemExit) as e:
        common.cli(main, argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and "Traceback" not in err, err
    return err


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("RABTRIEVER_CACHE", str(tmp_path / "cache"))
    tok = make_tokenizer()
    patch_llm(monkeypatch, lambda *a, **k: (make_lm(tok), tok))
    return tmp_path, write_virtualhome(tmp_path, n_programs=10)


def _distill(tmp, root, out, *extra):
    return ["--data-dir", str(root), "--teacher", str(tmp / "teacher"), "--output-dir", str(tmp / out), "--rounds",
            "1", "--k", "2", "--epochs", "2", "--width", "8", "--max-train-queries", "8", "--max-test-queries", "8",
            "--rerank-k", "4", "--quiet", *extra]


# ---------------------------------------------------------------------------- 1. outputs are never overwritten silently
def test_folders_belong_to_their_script(env, capsys):
    """evaluate.py into a distill run's folder and teacher.py train into an existing teacher are refused; --overwrite
    empties only a folder the same script made: never a distill run or a teacher (their checkpoints), nor a folder
    that is not ours; every earlier file stays byte-identical."""
    tmp, root = env
    distill.main(_distill(tmp, root, "run"))
    before, teacher_before = snapshot(tmp / "run"), snapshot(tmp / "teacher")
    ev = ["--bench", "virtualhome", "--data-dir", str(root), "--systems", "bm25", "--output-dir"]
    err = run_cli(E.main, ev + [str(tmp / "run")], capsys)
    assert "is not empty" in err and "--overwrite" in err and "--resume" not in err  # evaluate.py has no --resume
    err = run_cli(T.main, ["train", "--data-dir", str(root), "--output-dir", str(tmp / "teacher"), "--quiet"], capsys)
    assert "is not empty" in err
    for folder, maker in (("run", "distill.py"), ("teacher", "teacher.py")):
        err = run_cli(E.main, ev + [str(tmp / folder), "--overwrite"], capsys)
        assert f"made by {maker}" in err and "--overwrite replaces only a folder made by evaluate.py" in err
    assert snapshot(tmp / "run") == before and snapshot(tmp / "teacher") == teacher_before
    (tmp / "run" / "config.json").write_text("{damaged")  # the checkpoint still says who made the folder
    before = snapshot(tmp / "run")
    err = run_cli(E.main, ev + [str(tmp / "run"), "--overwrite"], capsys)
    assert "made by distill.py" in err and snapshot(tmp / "run") == before
    err = run_cli(distill.main, _distill(tmp, root, "run", "--resume"), capsys)
    assert "config.json: not valid JSON" in err and "cannot be resumed" in err and snapshot(tmp / "run") == before
    E.main(ev + [str(tmp / "ev"), "--quiet"])
    res = E.main(ev + [str(tmp / "ev"), "--overwrite", "--quiet"])  # its own folder: replaced
    assert res["systems"]["bm25"]
    (tmp / "mine").mkdir()
    (tmp / "mine" / "notes.txt").write_text("keep me")
    err = run_cli(E.main, ev + [str(tmp / "mine"), "--overwrite"], capsys)
    assert "not an output folder of this project" in err and (tmp / "mine" / "notes.txt").read_text() == "keep me"


def test_teacher_flag_must_name_a_teacher(env, capsys):
    """distill.py --teacher pointing at a distill run (or any folder teacher.py did not make) is refused before
    anything is touched: that folder stays byte-identical and no output folder is made."""
    tmp, root = env
    distill.main(_distill(tmp, root, "run"))
    before = snapshot(tmp / "run")
    argv = _distill(tmp, root, "second")
    argv[argv.index("--teacher") + 1] = str(tmp / "run")
    err = run_cli(distill.main, argv, capsys)
    assert f"--teacher {tmp / 'run'}: made by distill.py, not a teacher folder" in err
    assert snapshot(tmp / "run") == before and not (tmp / "second").exists()
    argv[argv.index("--teacher") + 1] = str(tmp / "second")  # the output folder itself
    assert "the same folder" in run_cli(distill.main, argv, capsys)


def test_failed_start_leaves_nothing_and_resume_checks_settings(env, capsys, monkeypatch):
    """--device cuda without a GPU fails before the output folder exists, so the corrected rerun starts; --resume with
    settings that change results is refused and leaves the run byte-identical."""
    tmp, root = env
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = run_cli(distill.main, _distill(tmp, root, "run", "--device", "cuda"), capsys)
    assert "--device cuda" in err and not (tmp / "run").exists()
    distill.main(_distill(tmp, root, "run"))
    before = snapshot(tmp / "run")
    err = run_cli(distill.main, _distill(tmp, root, "run", "--resume", "--epochs", "3"), capsys)
    assert "config.json" in err and "epochs 2 -> 3" in err
    assert snapshot(tmp / "run") == before
    distill.main(_distill(tmp, root, "run", "--resume"))  # the same settings resume (here: a finished run re-evaluated)


def test_output_files_follow_the_umask(tmp_path):
    """Files written atomically get the umask's permissions (0644 under umask 022), not mkstemp's 0600."""
    old = os.umask(0o022)
    try:
        common.FILE_MODE = 0o666 & ~0o022
        common.write_json(tmp_path / "a.json", {"x": 1})
        common.save_tensors(tmp_path / "t.safetensors", {"x": torch.zeros(2)}, {})
    finally:
        os.umask(old)
        common.FILE_MODE = 0o666 & ~old
    for name in ("a.json", "t.safetensors", "t.safetensors.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


# ---------------------------------------------------------------------------- 2. one length policy
def test_prompts_fit_the_window_document_cut_first_then_query_start():
    """Over the window, the document is cut first, then the query loses its start (its end is kept); the count of cut
    items is kept; a window too small for the template is an error."""
    tok = make_tokenizer()
    base = T.Prompt(tok)
    fixed = len(base.pre) + len(base.mid) + len(base.post)
    p = T.Prompt(tok, max_doc_tokens=256, max_len=fixed + 6)
    d, q = "walk to the office and sit on the chair", "i feel sad"
    assert len(p.enc(" " + q)) == 3 and len(p.enc(" " + d)) > 3
    assert p.teacher(q, d) == p.pre + p.enc(" " + d)[:3] + p.mid + p.enc(" " + q) + p.post  # document cut first
    long_q = "one two walk find grab put switch turn cup water"  # 10 tokens: more than fits on its own
    assert p.teacher(long_q, "walk to the office") == p.pre + p.mid + p.enc(" " + long_q)[-6:] + p.post  # end kept
    assert p.cut_counts() == {"documents": 2, "queries": 1}
    with pytest.raises(ValueError, match="template and instruction alone are .* window of"):
        T.Prompt(tok, max_len=fixed)


# ---------------------------------------------------------------------------- 3. integrity
def test_damaged_and_truncated_tensor_files_are_named(env, tmp_path):
    """Zeros inside a document-cache shard or a teacher checkpoint, or a truncated file, stop with the file and what
    to do; --refresh-cache rebuilds the cache to the same values."""
    from runtime.index import encode_corpus
    from student import Student
    tmp, _ = env
    tok = make_tokenizer()
    s = Student(T.Teacher(make_lm(tok), tok), width=8)
    ids, texts = ["a", "b", "c"], ["walk", "find mouse", "grab cup"]
    h = encode_corpus(s, ids, texts, tmp / "c").clone()
    joined = tmp / "c" / "encodings.f16"
    raw = bytearray(joined.read_bytes())
    raw[-8:] = bytes(8)
    joined.write_bytes(bytes(raw))
    with pytest.raises(common.IntegrityError, match=r"encodings.f16: content does not match the digest.*"
                                                    r"--refresh-cache"):
        encode_corpus(s, ids, texts, tmp / "c")
    assert torch.equal(encode_corpus(s, ids, texts, tmp / "c", refresh=True), h)
    joined.write_bytes(joined.read_bytes()[:100])  # truncated
    with pytest.raises(common.IntegrityError, match="encodings.f16: .*(truncated|does not match)"):
        encode_corpus(s, ids, texts, tmp / "c")
    ckpt = tmp_path / "teacher.safetensors"
    common.save_tensors(ckpt, {"w": torch.ones(64)}, {"kind": "teacher"})
    ckpt.write_bytes(ckpt.read_bytes()[:-16] + bytes(16))
    with pytest.raises(common.IntegrityError, match=r"teacher.safetensors: content does not match.*run again"):
        common.load_tensors(ckpt)


# ---------------------------------------------------------------------------- 4. empty evaluation sets, up front
def test_empty_splits_stop_before_compute(tmp_path, capsys):
    """An empty qrels file, an empty ESConv test file, or too few programs for a test split stop at load time, naming
    the file or the split; through the CLI nothing is written."""
    from test_data import write_beir
    folder = write_beir(tmp_path / "toy", qrels="query-id\tcorpus-id\tscore\n")
    with pytest.raises(data.DataError, match=r"qrels/test.tsv: no judgement"):
        data.load_beir(folder)
    es = tmp_path / "es"
    es.mkdir()
    (es / "devWithStrategy_short.tsv").write_text(ESCONV_LINE)
    (es / "testWithStrategy_short.tsv").write_text("\n")
    with pytest.raises(data.DataError, match=r"testWithStrategy_short.tsv: no example line"):
        data.load_esconv(str(es))
    vh = write_virtualhome(tmp_path / "vh1", n_programs=1)
    err = run_cli(E.main, ["--bench", "virtualhome", "--data-dir", str(vh), "--systems", "bm25", "--output-dir",
                           str(tmp_path / "out")], capsys)
    assert "the splits train, dev and test need at least 3" in err and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- 5. values and data
@pytest.mark.parametrize("clip", ["-1", "0"])
def test_teacher_clip_must_be_positive(clip, capsys, tmp_path):
    """teacher.py train --clip -1 (every step uphill) and --clip 0 (a frozen teacher) are refused up front."""
    err = run_cli(T.main, ["train", "--clip", clip, "--output-dir", str(tmp_path / "t")], capsys)
    assert f"--clip {float(clip)}" in err and "> 0" in err and not (tmp_path / "t").exists()


def test_teacher_resume_of_a_finished_teacher_is_refused(capsys, tmp_path):
    """teacher.py train --resume where a finished teacher lies (teacher.safetensors, no SFT state) does not train it
    again: an error that says so, the checkpoint untouched."""
    out = tmp_path / "t"
    out.mkdir()
    (out / "teacher.safetensors").write_bytes(b"finished")
    err = run_cli(T.main, ["train", "--resume", "--output-dir", str(out)], capsys)
    assert "finished teacher" in err and "--overwrite" in err
    assert (out / "teacher.safetensors").read_bytes() == b"finished"


@pytest.mark.parametrize("argv,needle", [
    (["--max-test-queries", "-1"], "--max-test-queries is -1; it must be >= 0"),
    (["--max-train-queries", "-5", "--quick"], "--max-train-queries is -5"),
    (["--quick", "--k", "0"], "--k is 0; it must be >= 1"),
    (["--resume", "--overwrite"], "contradict"),
])
def test_bad_values_are_refused(argv, needle, capsys, tmp_path):
    """Negative sizes, k = 0 (also under --quick) and conflicting flags are one-line errors; no folder is made."""
    err = run_cli(distill.main, argv + ["--output-dir", str(tmp_path / "o")], capsys)
    assert needle in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind,needle", [
    ("dup_doc", r"corpus.jsonl:2: field '_id' 'd1' already used at .*corpus.jsonl:1 \(duplicate id\)"),
    ("dup_query", r"queries.jsonl:2: field '_id' 'q1' already used"),
    ("utf8", r"corpus.jsonl:2: bytes that are not UTF-8"),
    ("type", r"corpus.jsonl:1: field 'text' is int, not a string"),
    ("id_type", r"queries.jsonl:1: field '_id' is list, not a string"),
])
def test_bad_data_names_file_line_field(tmp_path, kind, needle):
    """Duplicate ids, bytes that are not UTF-8 and JSON values of the wrong type name the file, line and field."""
    from test_data import write_beir
    folder = write_beir(tmp_path / "toy")
    if kind == "dup_doc":
        (folder / "corpus.jsonl").write_text('{"_id": "d1", "text": "a"}\n{"_id": "d1", "text": "b"}\n'
                                             '{"_id": "d2", "text": "c"}\n')
    elif kind == "dup_query":
        (folder / "queries.jsonl").write_text('{"_id": "q1", "text": "a"}\n{"_id": "q1", "text": "b"}\n')
    elif kind == "utf8":
        (folder / "corpus.jsonl").write_bytes(b'{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": "\xff\xfe"}\n')
    elif kind == "type":
        (folder / "corpus.jsonl").write_text('{"_id": "d1", "text": 5}\n')
    else:
        (folder / "queries.jsonl").write_text('{"_id": ["q1"], "text": "a"}\n')
    with pytest.raises(data.DataError, match=needle):
        data.load_beir(folder)


def test_model_contradicting_checkpoint_is_an_error(env):
    """--model next to a --checkpoint trained from another model is refused, not ignored."""
    tmp, root = env
    T.main(["train", "--data-dir", str(root), "--output-dir", str(tmp / "t"), "--epochs", "1",
            "--max-train-queries", "4", "--max-dev-queries", "2", "--quiet"])
    meta = json.loads((tmp / "t" / "teacher.safetensors.json").read_text())
    assert "digest" in meta and meta["truncated"] == {"documents": 0, "queries": 0}
    with pytest.raises(ValueError, match="--model other-model contradicts the checkpoint"):
        T.load_teacher(tmp / "t", "other-model")


# ---------------------------------------------------------------------------- 6. nothing silently wrong
@pytest.mark.parametrize("second,needle", [("q1\td1\t1", "repeats line 2"), ("q1\td1\t0", "contradicts (score 1 there)")])
def test_duplicate_judgements_are_refused(tmp_path, second, needle):
    """The same (query, document) judged twice in qrels, with the same or another grade, names the file and both
    lines: the later line never silently wins."""
    from test_data import write_beir
    folder = write_beir(tmp_path / "toy", qrels=f"query-id\tcorpus-id\tscore\nq1\td1\t1\n{second}\nq2\td2\t1\n")
    with pytest.raises(data.DataError, match=rf"qrels/test.tsv:3: the judgement of query 'q1' for document 'd1' "
                                             rf"{re.escape(needle)}"):
        data.load_beir(folder)


def _index(tmp, root, capsys):
    """A distilled student, its corpus as a BEIR folder and an index built from it: (student dir, corpus dir)."""
    import student as S
    from data import load_virtualhome
    distill.main(_distill(tmp, root, "run"))
    corpus = load_virtualhome(root).corpus
    (tmp / "beir").mkdir()
    (tmp / "beir" / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "text": v["text"]}) + "\n"
                                                       for d, v in corpus.items()))
    S.main(["index", "--student", str(tmp / "run"), "--corpus", str(tmp / "beir"), "--out", str(tmp / "ix"),
            "--quiet"])
    capsys.readouterr()
    return tmp / "run", tmp / "beir"


def test_search_refuses_a_changed_corpus_and_blank_queries(env, capsys):
    """An index remembers each document's text: after the corpus is edited, search refuses (naming what changed)
    until --reindex rebuilds it, whose results then equal a fresh index's; a blank --query is refused; a missing
    index or a damaged ids.json is named as such."""
    import student as S
    tmp, root = env
    _, beir = _index(tmp, root, capsys)
    search = ["search", "--index", str(tmp / "ix"), "--k", "3", "--quiet"]
    assert "query is empty" in run_cli(S.main, search + ["--query", "   "], capsys)
    lines = (beir / "corpus.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    lines[0] = json.dumps(first | {"text": first["text"] + " quickly"})
    (beir / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    before = snapshot(tmp / "ix")
    err = run_cli(S.main, search + ["--query", "walk to the kitchen"], capsys)
    assert "the corpus changed since the index was built (1 edited" in err and repr(first["_id"]) in err
    assert snapshot(tmp / "ix") == before
    S.main(search + ["--query", "walk to the kitchen", "--reindex"])
    got = capsys.readouterr().out
    S.main(["index", "--student", str(tmp / "run"), "--corpus", str(beir), "--out", str(tmp / "ix2"), "--quiet"])
    capsys.readouterr()
    S.main(["search", "--index", str(tmp / "ix2"), "--k", "3", "--quiet", "--query", "walk to the kitchen"])
    assert capsys.readouterr().out.splitlines()[-3:] == got.splitlines()[-3:]
    assert "no index here" in run_cli(S.main, ["search", "--index", str(tmp / "nowhere"), "--query", "x"], capsys)
    (tmp / "ix" / "ids.json").write_text("[\"a\", ")
    assert "ids.json: not valid JSON" in run_cli(S.main, search + ["--query", "walk"], capsys)


def test_quick_caps_only_what_the_user_left_unset(capsys):
    """--quick lowers the sizes the user did not set, prints each change, and keeps a value given on the command
    line (--quick --k 3 runs with k = 3)."""
    import argparse
    p = argparse.ArgumentParser()
    common.add_dataclass_args(p, distill.DistillConfig)
    argv = ["--quick", "--k", "3"]
    cfg = common.config_from_args(distill.DistillConfig, p.parse_args(argv), argv)
    out = capsys.readouterr().out
    assert cfg.k == 3 and cfg.max_train_queries == 16 and cfg.rounds == 2 and cfg.rerank_k == 4
    assert "--quick: max_train_queries 128 -> 16" in out and "k 2" not in out


def test_long_texts_cut_are_reported(env, capsys):
    """A document longer than --max-doc-tokens is cut and the search run says so once, with the count."""
    import student as S
    tmp, root = env
    _, beir = _index(tmp, root, capsys)
    with open(beir / "corpus.jsonl", "a") as f:
        f.write(json.dumps({"_id": "long", "text": "walk to the kitchen " * 200}) + "\n")
    S.main(["index", "--student", str(tmp / "run"), "--corpus", str(beir), "--out", str(tmp / "ix3"), "--quiet"])
    assert "[index] cut to fit (the model's window / max_doc_tokens): 1 documents, 0 queries" in capsys.readouterr().out


# ---------------------------------------------------------------------------- 7. failures are one line, with the way out
def test_disk_full_and_ctrl_c_are_one_line_and_resume_recovers(env, capsys, monkeypatch):
    """ENOSPC while saving names the file and says to free space and rerun with --resume; Ctrl-C exits 130 with one
    line saying the same; the resumed runs end with the metrics of an uninterrupted run."""
    import errno
    tmp, root = env
    full = distill.main(_distill(tmp, root, "full"))
    orig = common.save_tensors

    def no_space(path, *a, **k):
        if Path(path).name == "predictor.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return orig(path, *a, **k)
    monkeypatch.setattr(distill, "save_tensors", no_space)
    monkeypatch.setattr("runtime.checkpoints.save_tensors", no_space)
    err = run_cli(distill.main, _distill(tmp, root, "cut"), capsys)
    assert "predictor.safetensors: no space left on the device; free space, then rerun the command" in err
    monkeypatch.undo()
    monkeypatch.setenv("RABTRIEVER_CACHE", str(tmp / "cache"))
    tok = make_tokenizer()
    patch_llm(monkeypatch, lambda *a, **k: (make_lm(tok), tok))
    assert not (tmp / "cut" / "results.json").exists()  # no results without the predictor
    res = distill.main(_distill(tmp, root, "cut", "--resume"))
    strip = lambda r: {k: {m: v for m, v in s.items() if m not in ("ms_per_query", "corpus_encode_s")}  # noqa: E731
                       for k, s in r["systems"].items()}
    assert strip(res) == strip(full)
    monkeypatch.setattr(distill, "step6_evaluate", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(SystemExit) as e:
        common.cli(distill.main, _distill(tmp, root, "int"), again="rerun with --resume")
    err = capsys.readouterr().err
    assert e.value.code == 130 and err.startswith("interrupted:") and "--resume" in err and "Traceback" not in err


def test_messages_name_the_file_or_flag(tmp_path, capsys, monkeypatch):
    """A disk that fills while writing (the system's error names no file) names the file being written and keeps its
    old version; a cache folder that runs through a file names $RABTRIEVER_CACHE; a --seed out of numpy's range
    names --seed, before any work starts."""
    import errno
    target = tmp_path / "results.json"
    common.write_json(target, {"old": 1})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(common.os, "fsync", full)
    with pytest.raises(OSError) as e:
        common.write_json(target, {"new": 2})
    assert common._os_message(e.value, "rerun") == f"{target}: no space left on the device; free space, then rerun"
    assert common.read_json(target) == {"old": 1} and [p.name for p in tmp_path.iterdir()] == ["results.json"]
    monkeypatch.undo()
    (tmp_path / "cache").write_text("")
    monkeypatch.setenv("RABTRIEVER_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=r"runs through a file there; move the file or set RABTRIEVER_CACHE"):
        common.cache_dir("docemb")
    for main, argv in ((distill.main, []), (T.main, ["train"]), (E.main, [])):
        err = run_cli(main, argv + ["--seed", "-1", "--output-dir", str(tmp_path / "out")], capsys)
        assert err.startswith("error: --seed is -1; it must be in 0 .. 2**32 - 1"), err
        assert not (tmp_path / "out").exists()


def test_a_killed_write_leaves_nothing_that_blocks(tmp_path):
    """A process killed inside an atomic write leaves NAME.xxxx.tmp beside NAME: the same command then runs (the
    folder is not 'not empty', not 'a foreign folder'), and a teacher folder holding only such a file is a new one."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json.x1y2z3.tmp").write_text("{")
    cfg = E.EvalConfig(systems="bm25", output_dir=str(out))
    assert common.prepare_output(out, cfg, script="evaluate") == out and common.folder_owner(out) == "evaluate"
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "teacher.safetensors.q9.tmp").write_text("")
    common.check_teacher_folder(str(tmp_path / "t"), str(out))


def test_cache_left_untouched_and_failed_start_leaves_nothing(env, capsys, monkeypatch):
    """A second run that finds everything cached writes nothing into the cache (so a read-only cache works); a start
    that fails on an OSError (here: a read-only file system while loading the model) is one line naming the path,
    and leaves no output folder behind."""
    import errno
    tmp, root = env
    argv = ["--bench", "virtualhome", "--data-dir", str(root), "--systems", "bm25,llm-biencoder", "--teacher",
            "zero-shot", "--quiet"]
    E.main(argv + ["--output-dir", str(tmp / "e1")])
    cache = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (tmp / "cache").rglob("*") if p.is_file()}
    E.main(argv + ["--output-dir", str(tmp / "e2")])
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (tmp / "cache").rglob("*") if p.is_file()} == cache

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp / "cache" / "models"))
    patch_llm(monkeypatch, read_only)
    err = run_cli(E.main, argv + ["--output-dir", str(tmp / "e3")], capsys)
    assert f"{tmp / 'cache' / 'models'}: Read-only file system (not writable)" in err and "$RABTRIEVER_CACHE" in err
    assert not (tmp / "e3").exists()


@pytest.mark.parametrize("argv,needle", [
    (["search", "--index", "x", "--query", "walk", "--batch-size", "0"], "--batch-size is 0; it must be >= 1"),
    (["index", "--student", "s", "--corpus", "c", "--out", "o", "--batch-size", "0"], "--batch-size is 0"),
])
def test_student_cli_numbers_checked_first(argv, needle, capsys):
    """student.py checks its numbers before reading anything or loading a model, naming the flag."""
    import student as S
    assert needle in run_cli(S.main, argv, capsys)


@pytest.mark.parametrize("flag,value", [("--lr", "nan"), ("--tau", "inf"), ("--nce", "-inf")])
def test_non_finite_values_refused(flag, value, capsys, tmp_path):
    """A float flag given nan or inf is refused up front with the flag named; no folder is made."""
    err = run_cli(distill.main, [f"{flag}={value}", "--output-dir", str(tmp_path / "o")], capsys)
    assert f"{flag} is {float(value)}" in err and "finite" in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("main,argv,needle", [
    (distill.main, ["--tau-s", "0.5"], "--tau-s has no effect with --sampling top"),
    (distill.main, ["--policy", "off", "--sampling", "softmax"], "--sampling has no effect with --policy off"),
    (distill.main, ["--nce", "0", "--nce-tau", "0.1"], "--nce-tau has no effect with --nce 0"),
    (distill.main, ["--no-rkl", "--kl", "forward"], "--kl has no effect without the KL term of (10)"),
    (distill.main, ["--no-eval-teacher", "--teacher-k", "4"], "--teacher-k has no effect with --no-eval-teacher"),
    (E.main, ["--systems", "bm25", "--teacher-k", "4"], "--teacher-k has no effect without 'teacher' in --systems"),
    (E.main, ["--systems", "bm25,teacher", "--compile"], "--compile has no effect without 'student' in --systems"),
    (T.main, ["train", "--mine-k", "4"], "--mine-k has no effect with --neg-self 0"),
])
def test_flags_without_effect_refused(main, argv, needle, capsys, tmp_path):
    """A flag the user sets that the other settings make inert is refused up front, naming both; no folder is made.
    The same flags pass where they act (--tau-s with --sampling softmax)."""
    err = run_cli(main, argv + ["--output-dir", str(tmp_path / "o")], capsys)
    assert err.startswith(f"error: {needle}"), err
    assert "drop it, or change the setting it depends on" in err and not (tmp_path / "o").exists()
    p = distill.parser()
    argv = ["--sampling", "softmax", "--tau-s", "0.5", "--no-rkl", "--listwise", "1", "--tau", "2"]
    assert common.config_from_args(distill.DistillConfig, p.parse_args(argv), argv).tau_s == 0.5


def test_unwritable_output_found_before_the_model_loads(env, capsys, monkeypatch):
    """student.py index --out under a file (not a folder) is refused before the student is loaded."""
    tmp, root = env
    _, beir = _index(tmp, root, capsys)
    (tmp / "afile").write_text("x")
    monkeypatch.setattr(S, "load_student", lambda *a, **k: pytest.fail("the model was loaded first"))
    err = run_cli(S.main, ["index", "--student", str(tmp / "run"), "--corpus", str(beir), "--out",
                           str(tmp / "afile" / "ix")], capsys)
    assert "--out" in err and "cannot write there" in err
