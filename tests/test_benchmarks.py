"""The benchmark scripts (benchmarks/): each runs on a small synthetic input and writes its figures; nothing about
speed is asserted."""
import json

from benchmarks import gpu_memory, scale, throughput


def test_scale_benchmark_writes_its_figures(tmp_path):
    """benchmarks/scale.py runs every whole-pool stage on a small synthetic pool and writes time and peak memory per
    stage."""
    out = tmp_path / "scale.json"
    res = scale.main(["--docs", "3000", "--hidden", "16", "--width", "8", "--queries", "4", "--doc-words", "6",
                      "--output", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    stages = {s["stage"].split(":")[0]: s for s in res["stages"]}
    assert len(res["stages"]) == 7 and all(s["seconds"] >= 0 and s["peak_rss_GiB"] > 0 for s in res["stages"])
    assert stages["Steps 2-3"]["picked"] == 8
    bm25 = next(s for s in res["stages"] if s["stage"].startswith("BM25 index"))
    assert 3000 <= bm25["postings"] <= 3000 * 6 and bm25["terms"] > 1


def test_predictor_bench_writes_figures_with_their_bound(tmp_path, capsys):
    """`python -m benchmarks.throughput predictor` writes each activation's candidates/s beside the dot product's and
    the memory bound
    measured in the same run, and prints each as a share of that bound."""
    out = tmp_path / "p.json"
    rows = throughput.main(["predictor", "--sizes", "3000", "--queries", "1,2", "--hidden", "16", "--width", "8",
                      "--acts", "gelu,relu", "--no-compile", "--read-mb", "64", "--output", str(out)])
    assert json.loads(out.read_text()) == rows and len(rows) == 2
    for r in rows:
        assert {"dot_cand_per_s", "gelu_cand_per_s", "relu_cand_per_s", "bandwidth_bound_cand_per_s"} <= set(r)
        assert all(v > 0 for k, v in r.items() if k.endswith("_per_s"))
    assert "of bound" in capsys.readouterr().out


def test_gpu_memory_table_by_hand(capsys):
    """Qwen2-7B's parameter count (7.62B) and the FSDP2 table: 16 bytes per parameter sharded over the GPUs."""
    p = gpu_memory.param_count(gpu_memory.QWEN2_7B)
    assert abs(p / 1e9 - 7.62) < 0.01
    rows = gpu_memory.memory_table(gpu_memory.QWEN2_7B, 512, 1, gpus=(1, 8))
    assert abs(rows[0]["weights_GiB"] - 4 * p / 2 ** 30) < 1e-6
    assert abs(rows[1]["adam_GiB"] - 8 * p / 8 / 2 ** 30) < 1e-6
    gpu_memory.main([])
    assert "| 8 |" in capsys.readouterr().out


def test_frozen_features_by_hand_and_end_to_end(tmp_path, monkeypatch, tiny):
    """benchmarks/frozen_features: the `mean` reading is the mean of the trunk's states over the span given, the
    `last` one the state at the last token (each row as encoded alone); the script runs on a small set, writes one row
    per epoch for each of the four predictors and its table, and the same seed gives the same numbers."""
    import torch

    import teacher as teacher_mod
    from benchmarks import frozen_features
    from conftest import patch_llm, write_virtualhome

    lm, tok = tiny
    t = teacher_mod.Teacher(lm, tok, batch_size=3, quiet=True)
    seqs = [t.prompt.doc_prefix(d) for d in ("the cup", "walk to the chair and sit", "plate")]
    spans = [(len(t.prompt.pre), len(s)) for s in seqs]
    got = frozen_features.encode(t, seqs, spans, "docs")
    for i, (s, (a, b)) in enumerate(zip(seqs, spans)):
        with torch.no_grad():
            h = lm.model(input_ids=torch.tensor([s])).last_hidden_state[0]
        torch.testing.assert_close(got["last"][i], h[-1], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got["mean"][i], h[a:b].mean(0), rtol=1e-4, atol=1e-5)

    patch_llm(monkeypatch, lambda *a, **k: (lm, tok))
    root = write_virtualhome(tmp_path / "vh", n_programs=12)
    args = ["--bench", "virtualhome", "--data-dir", str(root), "--model", "tiny", "--split", "test", "--epochs", "2",
            "--max-queries", "4", "--quiet"]
    frozen_features.main([*args, "--out", str(tmp_path / "a.json")])
    frozen_features.main([*args, "--out", str(tmp_path / "b.json")])
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert {k: v for k, v in a.items() if k not in ("seconds", "config")} == \
           {k: v for k, v in b.items() if k not in ("seconds", "config")}
    assert set(a["trained"]) == {f"{r}, {k}" for r in ("last", "mean")
                                 for k in ("raw", "standardised (7b)", "standardised (7b), similarity init")}
    for name, rows in a["trained"].items():
        init = [0] if "similarity" in name else []
        assert [r["epoch"] for r in rows] == init + [1, 2]
        assert all(0 <= r["train_R@1"] <= 1 for r in rows if r["epoch"])
    assert all(0 <= a["bm25"][m] <= 1 for m in frozen_features.REPORTED) and a["eval_queries"] == 4
    assert a["outsized"]["last"]["documents"]["ratio"] >= 1
    assert "| bm25 |" in (tmp_path / "a.md").read_text()
