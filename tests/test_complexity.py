"""complexity.py: the FLOP model against a hand count; the harness on a tiny random model writes its files."""
import json

import pytest

import complexity as C


def test_flops_hand_count(tiny):
    """H=32, 4 heads of 8, 2 KV heads, I=64, T=10: linear = 2*10*(32*32 + 2*32*16 + 32*32 + 3*32*64) = 163840,
    attention = 4*10^2*32 = 12800 per layer; crossover at 18432/128 = 144 tokens."""
    lm, _ = tiny
    lin, att = C.layer_flops(lm.config, 10)
    assert lin == 2 * 10 * (32 * 32 + 2 * 32 * 16 + 32 * 32 + 3 * 32 * 64) == 184320
    assert att == 4 * 100 * 32 == 12800
    assert C.crossover_length(lm.config) == pytest.approx(18432 / 128)
    th = C.theory(lm.config, l_d=16, l_q=4, template=2, n=3, width=8)
    assert th["teacher"][0] == 3 * 2 * C.layer_flops(lm.config, 22)[0]


def test_slope():
    """slope() recovers exponents of exact power laws."""
    xs = [16, 32, 64, 128]
    assert C.slope(xs, [x ** 2 for x in xs]) == pytest.approx(2)
    assert C.slope(xs, [5.0] * 4) == pytest.approx(0, abs=1e-12)


def test_harness_writes_schema(tiny, tmp_path, monkeypatch):
    """A run on a tiny model writes complexity.csv, summary.json (slopes, speedup), the markdown table and a plot."""
    lm, tok = tiny
    monkeypatch.setattr(C, "load_llm", lambda *a, **k: (lm, tok))
    monkeypatch.setattr(C, "real_tokens", lambda tok, n: [tok.convert_tokens_to_ids("walk")] * n)
    s = C.main(["--max-len", "64", "--n", "2", "--repeats", "1", "--output-dir", str(tmp_path), "--quiet"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["slopes"]) == {"teacher", "student_online", "student_offline"}
    assert set(summary["speedup"]) == {"16", "32", "64"} and s["speedup"][64] > 0
    assert set(summary["teacher_local_slopes"]) == {"32", "64"}  # one per doubling
    rows = (tmp_path / "complexity.csv").read_text().splitlines()
    assert rows[0].startswith("L_d,series,median_s") and len(rows) == 1 + 3 * 3
    assert (tmp_path / "complexity.md").exists()
    pytest.importorskip("matplotlib")
    assert (tmp_path / "complexity.png").stat().st_size > 1000
