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
