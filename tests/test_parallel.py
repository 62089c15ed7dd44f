"""Scale-out (runtime/parallel.py):
2 processes on the CPU with gloo, spawned here, give what one process gives: SFT with DDP
and FSDP2, sharded encodings and teacher targets, a distillation end to end, and a run killed under 2 ranks resumed
under 1. Tolerances: 1e-5 absolute for losses and weights (float reduction order), metrics equal."""
import json
import os
import socket
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from runtime import checkpoints
import distill
from runtime import parallel
import teacher as T
from runtime import training
from conftest import killed_after, make_lm, make_tokenizer, patch_llm, write_virtualhome
from test_teacher import _toy_data


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, fn, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    fn(*args)
    if dist.is_initialized():
        dist.barrier()  # no rank tears the group down while another still talks
        dist.destroy_process_group()


def spawn(fn, *args, world=2):
    """Run fn(*args) in `world` processes joined by gloo (as torchrun would start them)."""
    mp.start_processes(_entry, args=(world, _free_port(), fn, args), nprocs=world, start_method="spawn")


def _run_sft(train_layers: int, kill_at: int = 0, **cfg) -> tuple[list[float], dict]:
    """One SFT run of the tiny model under the current ranks, dying after `kill_at` steps (0: never): its losses and
    its full (gathered) weights."""
    from runtime.metrics import BM25
    parallel.init("cpu")
    tok = make_tokenizer()
    lm = make_lm(tok, layers=3)
    t = T.Teacher(lm, tok, batch_size=3)
    d = _toy_data()
    cfg = T.TrainConfig(bench="toy", train_layers=train_layers, lr=3e-3, epochs=2, batch_size=3, grad_accum=2,
                        neg_bm25=1, neg_random=1, neg_frequent=0,  # listwise groups of 3, whole on one rank
                        max_train_queries=0, quiet=True, **cfg)
    with killed_after(kill_at, RuntimeError) if kill_at else nullcontext():  # spawn swallows KeyboardInterrupt
        hist = T.train(t, d, "train", cfg, BM25({k: d.doc_text(k) for k in d.corpus}))
    if hist["fsdp"]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        sd = get_model_state_dict(lm, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        sd = {k: v.clone() for k, v in lm.state_dict().items()}
    return hist["losses"], sd


def _sft(train_layers: int, out: str | None):
    """One SFT run on the tiny model; with `out`, rank 0 saves losses and the gathered weights there."""
    losses, sd = _run_sft(train_layers, warmup=0.0, output_dir="unused")
    if out and parallel.is_main():
        torch.save({"losses": losses, "sd": sd}, out)
    return losses, sd


@pytest.mark.slow
@pytest.mark.parametrize("train_layers", [1, 0], ids=["ddp-top-block", "fsdp2-full"])
def test_sft_two_ranks_equals_one(tmp_path, train_layers):
    """One SFT run (2 epochs, global batch 6 = 3 x grad_accum 2) under 2 ranks, DDP for the top block or FSDP2 for the
    full fine-tune, gives the losses and (gathered) weights of one process, within 1e-5."""
    losses, sd = _sft(train_layers, None)
    spawn(_sft, train_layers, str(tmp_path / "two.pt"))
    two = torch.load(tmp_path / "two.pt")
    assert len(two["losses"]) == len(losses) == 12  # 36 pairs, 6 per step, 2 epochs
    assert two["losses"] == pytest.approx(losses, abs=1e-5)
    for k, v in sd.items():
        assert torch.allclose(two["sd"][k].float(), v.float(), atol=1e-5), k


def _encode(out: str):
    from student import Student
    parallel.init("cpu")
    tok = make_tokenizer()
    t = T.Teacher(make_lm(tok), tok, batch_size=2)
    s = Student(t, width=8)
    qs = ["i feel sad", "how you write an email to my office", "walk", "what is this cup of water", "help"] * 2
    ds = ["ask a question", "share", "walk to computer and sit on the chair", "drink water", "suggest help"] * 2
    res = {"h_T": t.encode_pairs(qs, ds), "h_q": s.encode_queries(qs), "h_d": s.encode_docs(ds)}
    if parallel.is_main():
        torch.save(res, out)
    return res


def test_sharded_encodings_equal_one_process(tmp_path):
    """Teacher targets (1), query (5) and document (6) encodings sharded over 2 ranks equal one process's, row for
    row (same batches on every rank count)."""
    one = _encode(str(tmp_path / "unused"))
    spawn(_encode, str(tmp_path / "two.pt"))
    two = torch.load(tmp_path / "two.pt")
    for k in one:
        assert torch.allclose(two[k], one[k], atol=1e-6), k


def _distill(tmp: str, out: str, root: str, cache: str):
    os.environ["RABTRIEVER_CACHE"] = cache
    tok = make_tokenizer()
    checkpoints.load_llm = T.load_llm = lambda *a, **k: (make_lm(tok), tok)
    distill.main(_args(tmp, out, root))


def _args(tmp, out, root, *extra):
    return ["--data-dir", str(root), "--teacher", str(Path(tmp) / f"teacher-{out}"), "--output-dir",
            str(Path(tmp) / out), "--rounds", "2", "--k", "2", "--epochs", "5", "--width", "8", "--batch-size", "8",
            "--max-train-queries", "0", "--max-test-queries", "0", "--rerank-k", "4", "--quiet", *extra]


def _losses(folder: Path) -> list[float]:
    rows = (folder / "metrics.csv").read_text().splitlines()[1:]
    return [float(x) for row in rows for x in row.split(",")]


def _metrics(folder: Path) -> dict:
    res = json.loads((folder / "results.json").read_text())
    return {name: {m: v for m, v in s.items() if m not in ("ms_per_query", "corpus_encode_s")}
            for name, s in res["systems"].items()}


@pytest.fixture
def vh(tmp_path, monkeypatch):
    monkeypatch.setenv("RABTRIEVER_CACHE", str(tmp_path / "cache"))
    tok = make_tokenizer()
    patch_llm(monkeypatch, lambda *a, **k: (make_lm(tok), tok))
    return write_virtualhome(tmp_path, n_programs=10)


@pytest.mark.slow
def test_distill_two_ranks_equals_one_and_resumes_under_one(tmp_path, vh):
    """A tiny distillation (teacher SFT with DDP, sharded caches, rank-0 sampling) under 2 ranks writes the
    results.json metrics of one process; a run killed in round 1 under 2 ranks resumes under 1 process to the same
    numbers."""
    distill.main(_args(tmp_path, "one", vh))
    spawn(_distill, str(tmp_path), "two", str(vh), str(tmp_path / "cache2"))
    assert _metrics(tmp_path / "two") == _metrics(tmp_path / "one")
    # the losses: equal up to float reduction order
    assert _losses(tmp_path / "two") == pytest.approx(_losses(tmp_path / "one"), rel=1e-3, abs=1e-6)
    with pytest.raises(mp.ProcessRaisedException, match="killed in round 1"):
        spawn(_distill_dies, str(tmp_path), str(vh), str(tmp_path / "cache3"))
    assert (tmp_path / "cut" / "state.safetensors").exists() and not (tmp_path / "cut" / "results.json").exists()
    distill.main(_args(tmp_path, "cut", vh, "--resume"))
    assert _metrics(tmp_path / "cut") == _metrics(tmp_path / "one")


def _distill_dies(tmp: str, root: str, cache: str):
    os.environ["RABTRIEVER_CACHE"] = cache
    tok = make_tokenizer()
    checkpoints.load_llm = T.load_llm = lambda *a, **k: (make_lm(tok), tok)
    orig = distill.step5_train_predictor

    def dies(student, pairs, h_q, h_d, cache_, cfg, r, *rest):
        if r == 1:
            raise RuntimeError("killed in round 1")  # as if the job died (spawn swallows KeyboardInterrupt)
        return orig(student, pairs, h_q, h_d, cache_, cfg, r, *rest)
    distill.step5_train_predictor = dies
    distill.main(_args(tmp, "cut", root))


def _prints(out: str):
    import io
    import sys
    parallel.init("cpu")
    sys.stdout, sys.stderr = io.StringIO(), io.StringIO()
    print("log line")
    print("error line", file=sys.stderr)
    Path(f"{out}.{parallel.rank()}").write_text(json.dumps([sys.stdout.getvalue(), sys.stderr.getvalue()]))


def test_log_lines_on_rank0_only(tmp_path):
    """Under 2 ranks a log line (stdout) shows once, from rank 0; a line on stderr shows from every rank."""
    spawn(_prints, str(tmp_path / "p"))
    assert json.loads((tmp_path / "p.0").read_text()) == ["log line\n", "error line\n"]
    assert json.loads((tmp_path / "p.1").read_text()) == ["", "error line\n"]


def _sft_qwen2(out: str):
    """FSDP2 full fine-tune of a tiny Qwen2 (untied head) under 2 ranks; the gathered checkpoint written to `out`."""
    from conftest import make_qwen2
    from runtime.llm import fingerprint
    from runtime.metrics import BM25
    parallel.init("cpu")
    tok = make_tokenizer()
    base_fp = fingerprint(make_qwen2(tok))
    t = T.Teacher(make_qwen2(tok), tok, batch_size=3)
    d = _toy_data()
    cfg = T.TrainConfig(bench="toy", train_layers=0, lr=3e-3, epochs=1, batch_size=3, grad_accum=2, warmup=0.0,
                        neg_bm25=1, neg_random=1, neg_frequent=0,
                        max_train_queries=0, quiet=True, output_dir=out)
    hist = T.train(t, d, "train", cfg, BM25({k: d.doc_text(k) for k in d.corpus}))
    checkpoints.save_teacher(t, out, cfg, base_fp, {"step": hist["steps"]}, hist["fsdp"])
    return t


def test_fsdp2_qwen2_untied_head_saves_and_reloads(tmp_path, monkeypatch):
    """Under 2 gloo ranks, FSDP2 (the root unit holds the embeddings and the untied lm_head) trains a tiny Qwen2 like
    one process does, and the gathered checkpoint, untied head included, loads in one process to the same scores."""
    from conftest import make_qwen2
    one = _sft_qwen2(str(tmp_path / "one"))
    spawn(_sft_qwen2, str(tmp_path / "two"))
    from safetensors.torch import load_file
    a, b = load_file(tmp_path / "one" / "teacher.safetensors"), load_file(tmp_path / "two" / "teacher.safetensors")
    assert set(a) == set(b) and "lm_head.weight" in b
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    tok = make_tokenizer()
    patch_llm(monkeypatch, lambda *args, **kw: (make_qwen2(tok), tok))
    loaded, _ = T.load_teacher(tmp_path / "two")
    qs, ds = ["task 1 write"] * 2, ["walk to computer", "find mouse"]
    assert torch.allclose(loaded.score(qs, ds), one.score(qs, ds), atol=1e-4)


def _sft_resumable(train_layers: int, out: str, kill_at: int, resume: bool):
    """SFT on the tiny model saving its state every 2 steps; dies after `kill_at` steps (0: never); rank 0 writes the
    losses and the (gathered) weights to out/result.pt."""
    losses, sd = _run_sft(train_layers, kill_at, warmup=0.2, save_every=2, output_dir=out, resume=resume)
    if parallel.is_main():
        torch.save({"losses": losses, "sd": sd}, Path(out) / "result.pt")


@pytest.mark.slow
@pytest.mark.parametrize("train_layers", [1, 0], ids=["ddp-top-block", "fsdp2-dcp"])
def test_sft_killed_under_two_ranks_resumes(tmp_path, train_layers):
    """An SFT run under 2 ranks killed after step 3 (state saved at step 2: one file for DDP, sharded
    torch.distributed.checkpoint for FSDP2) and resumed under 2 ranks ends with the losses and weights of an
    uninterrupted one-process run."""
    _sft_resumable(train_layers, str(tmp_path / "one"), 0, False)
    ref = torch.load(tmp_path / "one" / "result.pt")
    with pytest.raises(mp.ProcessRaisedException, match="killed"):
        spawn(_sft_resumable, train_layers, str(tmp_path / "two"), 3, False)
    state = tmp_path / "two" / training.SFT_STATE
    assert (state / "state.json").exists() if train_layers == 0 else (state / "state.safetensors").exists()
    spawn(_sft_resumable, train_layers, str(tmp_path / "two"), 0, True)
    got = torch.load(tmp_path / "two" / "result.pt")
    assert got["losses"] == pytest.approx(ref["losses"], abs=1e-5) and len(got["losses"]) == 12
    for k, v in ref["sd"].items():
        assert torch.allclose(got["sd"][k].float(), v.float(), atol=1e-5), k


def _topk(out: str):
    from runtime.metrics import topk_blocked
    parallel.init("cpu")
    m = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    res = topk_blocked(lambda i, j: m[:, i:j], 50, 6, 9, block=7)
    if parallel.is_main():
        torch.save(res, out)


def test_topk_blocked_two_ranks_equals_one(tmp_path):
    """Under 2 ranks each scores every other block of documents and the merged top k equals one process's."""
    from runtime.metrics import topk_blocked
    m = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    one = topk_blocked(lambda i, j: m[:, i:j], 50, 6, 9, block=7)
    spawn(_topk, str(tmp_path / "two.pt"))
    two = torch.load(tmp_path / "two.pt")
    assert torch.equal(two[0], one[0]) and torch.equal(two[1], one[1])


def _shared(folder: str, local: str):
    os.environ["LOCAL_WORLD_SIZE"] = local  # as torchrun sets it: 1 process per node = two nodes
    parallel.init("cpu")
    seen = Path(folder) / f"rank{parallel.rank()}"
    seen.mkdir(parents=True, exist_ok=True)
    try:
        parallel.check_shared(seen if local == "1" else folder)  # per-rank folders: as if each node had its own disk
    except RuntimeError as e:
        Path(folder, f"error{parallel.rank()}").write_text(str(e))


def test_multi_node_needs_a_shared_filesystem(tmp_path):
    """With one process per node, a folder rank 1 cannot see (here: each rank its own) is an error naming the ranks
    and the fix; on one node nothing is checked."""
    spawn(_shared, str(tmp_path), "1")
    err = (tmp_path / "error0").read_text()
    assert "ranks [1] do not see the files rank 0 writes there" in err and "shared by every node" in err
    spawn(_shared, str(tmp_path / "one-node"), "2")
    assert not (tmp_path / "one-node" / "error0").exists()
