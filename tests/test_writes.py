"""Round three of the guards (docs/robustness.md): every write path, every convention that drops something, loader
fields of the wrong type, a resume through another path. Each test makes the case and checks the one-line message
or the right result, and that every earlier file is byte-identical afterwards."""
import json
import os

import pytest

import data
import distill
import evaluate as E
from runtime import metrics
from test_data import write_beir
from test_guards import _distill, _index, env, run_cli, snapshot  # noqa: F401 (env: the fixture)


# ---------------------------------------------------------------------------- 1. never write over what is not ours
def test_overwrite_never_empties_a_folder_the_project_did_not_make(env, capsys):
    """--overwrite on a Hugging Face model folder (config.json without "script"), through a symbolic link to an
    output folder, or onto a dangling link: one line naming the path, every file unchanged."""
    tmp, root = env
    model = tmp / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (model / "model.safetensors").write_bytes(b"weights")
    before = snapshot(model)
    err = run_cli(distill.main, _distill(tmp, root, "model", "--overwrite"), capsys)
    assert f"{model}: not an output folder of this project" in err and snapshot(model) == before
    evaluate = ["--bench", "virtualhome", "--data-dir", str(root), "--systems", "bm25", "--quiet"]
    E.main(evaluate + ["--output-dir", str(tmp / "ev")])
    (tmp / "link").symlink_to(tmp / "ev")
    before = snapshot(tmp / "ev")
    err = run_cli(E.main, evaluate + ["--output-dir", str(tmp / "link"), "--overwrite"], capsys)
    assert "a symbolic link to" in err and snapshot(tmp / "ev") == before
    (tmp / "dangling").symlink_to(tmp / "gone")
    err = run_cli(E.main, evaluate + ["--output-dir", str(tmp / "dangling")], capsys)
    assert f"{tmp / 'dangling'}: a symbolic link to {tmp / 'gone'}, which does not exist" in err
    assert not (tmp / "gone").exists()


def test_search_out_never_replaces_its_input_or_a_file(env, capsys):
    """search --out equal to its own --queries, onto an existing file or a dangling link without --overwrite, or onto
    a folder: refused before the model loads, every file unchanged; --queries without --out prints every query."""
    import student as S
    tmp, root = env
    _, beir = _index(tmp, root, capsys)
    queries = tmp / "queries.jsonl"
    queries.write_text(json.dumps({"_id": "a", "text": "walk to the kitchen"}) + "\n" +
                       json.dumps({"_id": "b", "text": "grab the cup"}) + "\n")
    search = ["search", "--index", str(tmp / "ix"), "--k", "2", "--quiet", "--queries", str(queries)]
    before = queries.read_bytes()
    assert "the same file as the input" in run_cli(S.main, search + ["--out", str(queries), "--overwrite"], capsys)
    assert queries.read_bytes() == before
    (tmp / "old.trec").write_text("keep me\n")
    assert "old.trec: exists; pass --overwrite" in run_cli(S.main, search + ["--out", str(tmp / "old.trec")], capsys)
    assert (tmp / "old.trec").read_text() == "keep me\n"
    (tmp / "dead.trec").symlink_to(tmp / "nowhere.trec")
    assert "dead.trec: exists" in run_cli(S.main, search + ["--out", str(tmp / "dead.trec")], capsys)
    assert "is a folder" in run_cli(S.main, search + ["--out", str(tmp / "ix"), "--overwrite"], capsys)
    S.main(search + ["--out", str(tmp / "old.trec"), "--overwrite"])
    assert {line.split()[0] for line in (tmp / "old.trec").read_text().splitlines()} == {"a", "b"}
    capsys.readouterr()
    S.main(search)
    out = capsys.readouterr().out
    assert "# a" in out and "# b" in out and len([x for x in out.splitlines() if x[:3].strip().isdigit()]) == 4


# ---------------------------------------------------------------------------- 2. nothing dropped or merged in silence
def test_ids_that_trec_would_merge_are_refused_up_front(tmp_path, capsys):
    """Document ids 'd 1' and 'd_1' would be one id in a TREC run: evaluate refuses before any compute; write_trec
    refuses as well."""
    folder = write_beir(tmp_path / "toy", corpus=[{"_id": "d 1", "text": "cats purr"}, {"_id": "d_1", "text": "dogs"}],
                        qrels="query-id\tcorpus-id\tscore\nq1\td 1\t1\n")
    err = run_cli(E.main, ["--bench", "toy", "--data-dir", str(folder), "--systems", "bm25", "--output-dir",
                           str(tmp_path / "out")], capsys)
    assert "'d 1' and 'd_1' are one id" in err and not (tmp_path / "out").exists()
    with pytest.raises(data.DataError, match="are one id"):
        metrics.write_trec(tmp_path / "x.trec", {"q": {"d 1": 1.0, "d_1": 0.5}}, "x")
    assert not (tmp_path / "x.trec").exists()


def test_ignore_identical_says_what_it_drops(tmp_path, capsys):
    """BEIR's --ignore-identical drops a gold document whose id is the query's: the count is printed and kept in
    results.json; --no-ignore-identical counts it."""
    folder = write_beir(tmp_path / "toy", corpus=[{"_id": "q1", "text": "purring cats"}, {"_id": "d2", "text": "dogs"}],
                        qrels="query-id\tcorpus-id\tscore\nq1\tq1\t1\nq2\td2\t1\n")
    base = ["--bench", "toy", "--data-dir", str(folder), "--systems", "bm25", "--quiet"]
    res = E.main(base + ["--output-dir", str(tmp_path / "a")])
    assert "1 of 2 queries have a relevant document with their own id" in capsys.readouterr().out
    assert res["ignore_identical"] == {"queries_whose_gold_is_dropped": 1, "examples": ["q1"]}
    res = E.main(base + ["--output-dir", str(tmp_path / "b"), "--no-ignore-identical"])
    assert "ignore_identical" not in res and res["systems"]["bm25"]["full_pool"]["R@1"] == 1.0


def test_flags_without_effect_are_refused(tmp_path, capsys):
    """--datasets with a bench that is not 'beir' would be ignored: refused."""
    err = run_cli(E.main, ["--bench", "virtualhome", "--datasets", "scifact", "--output-dir", str(tmp_path / "o")],
                  capsys)
    assert "--datasets applies to --bench beir only" in err and not (tmp_path / "o").exists()


def test_refresh_cache_recomputes_a_damaged_chunk_of_a_finished_run(env, capsys):
    """A finished run whose teacher-target chunk is damaged: --resume --refresh-cache computes it again, and the
    run's numbers and teacher_calls are those of the first run."""
    tmp, root = env
    first = distill.main(_distill(tmp, root, "run"))
    chunk = sorted((tmp / "run" / "pairs").glob("chunk-*.safetensors"))[0]
    raw = bytearray(chunk.read_bytes())
    raw[-8:] = bytes(8)
    chunk.write_bytes(bytes(raw))
    again = distill.main(_distill(tmp, root, "run", "--resume", "--refresh-cache"))
    assert again["teacher_calls"] == first["teacher_calls"] and again["systems"]["student"]["full_pool"] == \
        first["systems"]["student"]["full_pool"]
    assert "deleted, its pairs are recomputed" in capsys.readouterr().out


def test_teacher_of_another_bench_is_named(env, capsys, tmp_path):
    """A teacher whose sidecar says it was trained on another bench is named before distillation starts."""
    tmp, root = env
    distill.main(_distill(tmp, root, "run"))
    side = tmp / "teacher" / "teacher.safetensors.json"
    meta = json.loads(side.read_text())
    meta["config"]["bench"] = "esconv"
    side.write_text(json.dumps(meta))
    capsys.readouterr()
    distill.main(_distill(tmp, root, "run2"))
    out = capsys.readouterr().out
    assert "was trained on esconv (its sidecar says so)" in out
    assert out.index("trained on esconv") < out.index("[distill] round")


# ---------------------------------------------------------------------------- 3. valid or ordinary input never crashes
def test_loader_fields_of_the_wrong_type_and_layout(tmp_path):
    """No qrels folder; ESConv's annotation as a string; a byte-order mark before the qrels header: each named (or
    read) without a traceback."""
    folder = write_beir(tmp_path / "toy")
    for p in (folder / "qrels").iterdir():
        p.unlink()
    (folder / "qrels").rmdir()
    with pytest.raises(data.DataError, match=r"toy: no qrels/\*.tsv"):
        data.load_beir(folder)
    es = tmp_path / "es"
    es.mkdir()
    turns = [{"speaker": "seeker", "content": "hi"},
             {"speaker": "supporter", "content": "hello", "annotation": "Question"}]
    (es / "ESConv.json").write_text(json.dumps([{"dialog": turns}]))
    with pytest.raises(data.DataError, match=r"conversation 0, turn 1: field 'annotation' is str, not an object"):
        data.load_esconv(str(es))
    bom = write_beir(tmp_path / "bom")
    path = bom / "qrels" / "test.tsv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert data.load_beir(bom).qrels["test"] == {"q1": {"d1": 1}, "q2": {"d2": 2}}


# ---------------------------------------------------------------------------- 5. a resume through another path
def test_resume_through_another_path_is_the_same_run(env, monkeypatch):
    """--resume with the output folder given relative instead of absolute, or after the folder moved, and the teacher
    by another path, continues the run (same numbers)."""
    tmp, root = env
    first = distill.main(_distill(tmp, root, "run"))
    monkeypatch.chdir(tmp)
    args = _distill(tmp, root, "run", "--resume")
    args[args.index("--output-dir") + 1] = "run"
    args[args.index("--teacher") + 1] = os.path.join(".", "teacher")
    assert distill.main(args)["systems"]["student"]["full_pool"] == first["systems"]["student"]["full_pool"]
    os.rename(tmp / "run", tmp / "moved")
    args[args.index("--output-dir") + 1] = str(tmp / "moved")
    assert distill.main(args)["systems"]["student"]["full_pool"] == first["systems"]["student"]["full_pool"]
