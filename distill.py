"""On-policy distillation of the teacher into the JEPA student: the project's main job (METHOD.md, "On-policy
distillation", Steps 0-7, equations (8)-(11)).

    python distill.py                                   # embedded SmolLM2-135M on VirtualHome, offline, CPU
    python distill.py --quick                           # a smaller CPU run of the same pipeline
    python distill.py --bench esconv --data-dir DIR
    python distill.py --bench beir --data-dir DIR/scifact  # a BEIR set, from its qrels/train.tsv: runs/*-scifact
    python distill.py --model Qwen/Qwen2-7B-Instruct --bench esconv --max-train-queries 0 --max-test-queries 0  # GPU

    Step 0  teacher: load runs/teacher-{bench}/ or train it (teacher.py, (4))
    Step 1  student: frozen teacher + predictor; encode and cache the corpus (6) and the training queries (5)
    rounds r = 0..R-1:
      Step 2  score every document for every training query: the student (7) (round 0: --round0) (policy.py)
      Step 3  pick k documents per query not sent to the teacher yet, plus the gold ones (policy.py)
      Step 4  teacher targets h_T (1) for pairs not seen yet (cached by pair; z_T = W h_T (2) once per round)
      Step 5  train the predictor E epochs on all pairs so far with the objective (10): L_JEPA + lmbda L_RKL
              [+ mu the listwise KL (10b)] [+ nu the pool term (11) over more training queries: ours]
    Step 6  evaluate on test (--eval-split dev to choose): the whole pool (the paper's protocol) and C(q)
    Step 7  save the predictor (safetensors + JSON sidecar) and the results

Shapes: N pairs, B queries, n documents, H hidden, V vocabulary, P predictor width.

Choices not fixed by the paper: the whole procedure above (rounds, k, the round-0 policy, top-k picks, the pair
cache), the pool term (11), mean-pooled states (6m) and the similarity start (7c) at lr 1e-5 on pools of texts
(chosen on dev; runtime/recipes.py), a fresh AdamW per round, seeded draws. `--resume` ends with the same numbers.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from data import load_bench
from evaluate import evaluate_distilled
from jepa import ACTS, INITS, READINGS
from losses import Weights, total_loss
from policy import pick_top, sample_fixed, sample_softmax, policy_scores
from runtime import parallel
from runtime.batching import PoolBatches, batches, pool_queries
from runtime.caches import PairCache
from runtime.checkpoints import save_predictor
from runtime.common import (add_dataclass_args, cache_dir, cli, config_from_args, field, progress, resolve_device,
                            save_tensors, subset, write_json)
from runtime.config import RunConfig
from runtime.index import encode_corpus
from runtime.llm import DEFAULT_MODEL, fingerprint
from runtime.metrics import BM25
from runtime.recipes import check_distill, fill_recipe
from runtime.reporting import write_log
from runtime.runs import resume_distill, start_distill
from runtime.training import resume_or_restart
from student import Student
from teacher import TrainConfig, instruction_for, load_teacher, train_teacher

Z_T_BYTES = 1 << 30  # z_T of all pairs is computed once per round when it fits in this many bytes


@dataclass
class DistillConfig(RunConfig):
    # the paper's: the objective (10) and its ablations, on- or off-policy
    lmbda: float = field(1.0, "weight of the reverse KL in (10)")
    tau: float = field(1.0, "temperature of the KL distributions (9)")
    no_jepa: bool = field(False, "ablation: drop L_JEPA (8)")
    no_rkl: bool = field(False, "ablation: drop L_RKL (9) (same as --lmbda 0)")
    policy: str = field("on", "on: documents picked by the student; off: fixed BM25 + random negatives",
                        choices=["on", "off"])
    # ours: everything the paper leaves open (METHOD.md, "Choices that are ours")
    instruction: str = field("task", "the prompt's question (teacher.py --instruction): task (ours), generic or a text")
    rounds: int = field(2, "on-policy rounds R")
    k: int = field(2, "documents sampled per training query per round (plus the gold ones)")
    sampling: str = field("top", "on-policy pick (ours): top = the student's k best-ranked documents not scored yet; "
                                 "softmax = k drawn from softmax(s_S / tau_s)", choices=["top", "softmax"])
    tau_s: float = field(1.0, "temperature of the student's sampling policy softmax(s_S / tau_s)")
    round0: str = field("bm25", "round 0's policy, where the untrained student ranks every document the same (ours)",
                        choices=["bm25", "biencoder", "uniform"])
    kl_support: str = field("full", "full vocabulary or only the answer tokens", choices=["full", "answer"])
    kl: str = field("reverse", "direction of the KL in (10): reverse (9), or forward (an ablation)",
                    choices=["reverse", "forward"])
    listwise: float = field(0.0, "weight mu of the listwise KL (10b) over each query's documents (ours; 0 = off)")
    nce: float = field(1.0, "weight nu of the pool term (11): InfoNCE of the gold against pool documents (ours)")
    nce_queries: int = field(1024, "training queries of (11): a query pass (5) each, no teacher call (0 = all)")
    nce_negatives: int = field(1024, "pool documents per step as negatives of (11) (the whole pool when smaller)")
    nce_tau: float = field(1.0, "temperature of (11)")
    width: int = field(256, "predictor width P")
    standardize: bool = field(True, "the predictor's inputs standardised per dimension (7b), from the training "
                                    "queries and the corpus (ours; chosen on dev)")
    act: str = field("relu", "the predictor's activation (7), ours: relu chosen on dev", choices=list(ACTS))
    reading: str = field("auto", "h_q, h_d: mean = the mean of the states over the text's tokens (6m, ours), last = "
                                 "the state at the last token (5)/(6); auto = runtime.recipes.RECIPES (chosen on dev)",
                         choices=["auto", *READINGS])
    init: str = field("auto", "the predictor's start: similarity = a negative L1 distance of its inputs (7c, ours; "
                              "needs --act relu), zero = h_hat = h_q (7); auto = RECIPES",
                      choices=["auto", *INITS])
    epochs: int = field(30, "predictor epochs E per round over all pairs so far")
    lr: float = field(None, "AdamW learning rate of the predictor (default: RECIPES)")
    batch_size: int = field(32, "pairs per predictor step")
    # the run: data, models, devices, evaluation, outputs
    teacher: str = field("", "teacher checkpoint folder (default runs/teacher-{bench}[-quick]; trained if absent)")
    max_train_queries: int = field(128, "training queries (0 = all)")
    eval_split: str = field("test", "the split Step 6 evaluates: test for a reported run, dev to choose a recipe",
                            choices=["test", "dev"])
    max_test_queries: int = field(128, "queries of the evaluated split (0 = all)")
    rerank_k: int = field(8, "size of C(q), the candidates every system ranks in Step 6 (the whole pool when smaller)")
    teacher_k: int = field(8, "teacher@k in Step 6: reranks the union of BM25's and the student's top k (0 = all)")
    teacher_batch: int = field(8, "pairs per teacher / encoder forward")
    compile: bool = field(False, "score the pool through torch.compile's fused kernel (jepa.fused_scores)")
    hub_correction: str = field("none", "Step 6 diagnostic (ours): also the student with hub offsets removed (12)",
                                choices=["none", "center", "csls"])
    eval_teacher: bool = field(True, "score the teacher in Step 6 (ablations can skip it: it does not change)")
    resume: bool = field(False, "continue a killed run in output_dir (with the same settings)")
    refresh_cache: bool = field(False, "rebuild the document cache (and recompute damaged teacher-target chunks)")
    quick: bool = field(False, "small CPU run: fewer queries, rounds and epochs (QUICK; the teacher: TrainConfig's)")

    # --quick (common.config_from_args): these caps, on every field the user did not set
    QUICK = {"max_train_queries": 16, "max_test_queries": 16, "rounds": 2, "k": 1, "epochs": 20, "rerank_k": 4,
             "nce_queries": 128, "teacher_k": 4}

    def __post_init__(self):
        fill_recipe(self)  # --reading / --init / --lr left unset: the bench's RECIPES entry (chosen on dev)
        check_distill(self)
        self.one_set()
        suffix = ("" if self.model == DEFAULT_MODEL else "-" + self.model.strip("/").replace("/", "_")) + (
            "-quick" if self.quick else "")
        self.teacher = self.teacher or f"runs/teacher-{self.bench}{suffix}"
        self.output_dir = self.output_dir or f"runs/distill-{self.bench}{suffix}"

    @property
    def weights(self) -> Weights:
        """The weights of the objective (10); an ablation sets one to 0."""
        return Weights(jepa=0.0 if self.no_jepa else 1.0, lmbda=0.0 if self.no_rkl else self.lmbda, mu=self.listwise,
                       nu=self.nce)


# ---------------------------------------------------------------------------- Step 0: teacher
def step0_teacher(cfg: DistillConfig):
    """Step 0: the teacher of --teacher, trained there first by SFT (4) when it holds no checkpoint (an unfinished
    SFT run there is resumed); its base model must be --model."""
    if not Path(cfg.teacher, "teacher.safetensors").exists():
        print(f"[distill] Step 0: no teacher at {cfg.teacher}: training one")
        same = {k: getattr(cfg, k) for k in ("bench", "data_dir", "model", "device", "dtype", "seed", "quiet",
                                             "instruction", "attn_implementation")}
        train_teacher(TrainConfig(**same, output_dir=cfg.teacher, batch_size=cfg.teacher_batch,
                                  **(TrainConfig.QUICK | {"quick": True} if cfg.quick else {}),
                                  **resume_or_restart(cfg.teacher)))
    teacher, meta = load_teacher(cfg.teacher, device=cfg.device, batch_size=cfg.teacher_batch, quiet=cfg.quiet,
                                 attn=cfg.attn_implementation, dtype=cfg.dtype,
                                 instruction=instruction_for(cfg.instruction, cfg.bench))
    if meta.get("base_model") != cfg.model:
        raise ValueError(f"{cfg.teacher}: teacher was trained from '{meta.get('base_model')}', but --model is "
                         f"'{cfg.model}'; pass --teacher DIR for a new one")
    return teacher, meta


# ---------------------------------------------------------------------------- Step 1: student
def step1_student(cfg: DistillConfig, data, teacher, train_q: dict[str, str], qids: list[str], out: Path,
                  timings: dict) -> tuple[Student, torch.Tensor, torch.Tensor]:
    """Step 1: the student (the frozen teacher + a fresh predictor), the corpus encoded by (6) and the training
    queries by (5), each cached on disk (index.encode_corpus): (student, h_d (n, H), h_q (B, H))."""
    t0 = time.time()
    student = Student(teacher, cfg.width, cfg.act, cfg.reading)
    student.predictor.compiled = cfg.compile
    doc_ids = list(data.corpus)
    h_d = encode_corpus(student, doc_ids, [data.doc_text(d) for d in doc_ids],
                        cache_dir("docemb", f"{cfg.bench}-{fingerprint(teacher.lm)}{student.tag}-f16"),
                        cfg.refresh_cache)
    timings["1_encode_docs"] = time.time() - t0
    t0 = time.time()
    h_q = encode_corpus(student, qids, [train_q[q] for q in qids], out / "train_queries", kind="queries")
    timings["1_encode_train_queries"] = time.time() - t0
    return student, h_d, h_q


# ---------------------------------------------------------------------------- Steps 2-3: score and pick (policy.py)
def step3_pick(cfg: DistillConfig, r: int, student: Student, h_q: torch.Tensor, h_d: torch.Tensor, bm25,
               texts: list[str], gold: list[set[int]], pairs: list, bm25_top) -> list[list[int]]:
    """Step 3 of round r, with the scores of Step 2: each training query's k new documents. On-policy, the policy
    scores every document (Step 2: `pick_top` / `policy_scores`) and k documents not sent to the teacher yet are
    picked (the k best-ranked with --sampling top, `top_k_unscored`; k drawn with --sampling softmax, `sample_softmax`);
    rank 0 picks for every rank. Off-policy (--policy off): the next k of a fixed BM25 + random list."""
    if cfg.policy == "off":
        fixed = torch.Generator().manual_seed(cfg.seed)  # the same lists every round; round r takes slice r
        return sample_fixed(bm25_top, gold, h_d.shape[0], cfg.k, r, fixed)
    seen = [set(g) for g in gold]
    for i, d, _ in pairs:
        seen[i].add(d)
    if cfg.sampling == "top" and not (r == 0 and cfg.round0 == "uniform"):
        pick = pick_top(cfg, r, student, h_q, h_d, bm25, texts, seen)
    else:  # softmax over every document: full rows of scores (the round-0 policy's in round 0)
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + r)
        pick = sample_softmax(policy_scores(cfg, r, student, h_q, h_d, bm25, texts), seen, cfg.k, cfg.tau_s, gen)
    return parallel.broadcast(pick)


# ---------------------------------------------------------------------------- Step 4: teacher targets
def step4_teacher_targets(cache: PairCache, pairs: list, teacher, train_q: dict[str, str], doc_text, r: int,
                          quiet: bool) -> None:
    """Step 4: h_T (1) of every pair not computed yet, by the teacher, kept on disk by pair (`caches.PairCache`)."""
    cache.fill([p[2] for p in pairs], teacher, train_q, doc_text, f"r{r}", quiet)


# ---------------------------------------------------------------------------- Step 5: predictor training
def step5_train_predictor(student: Student, pairs: list[tuple[int, int, tuple[str, str]]], h_q: torch.Tensor,
                          h_d: torch.Tensor, cache: PairCache, cfg: DistillConfig, r: int, log: list[dict],
                          pool: tuple[torch.Tensor, list[set[int]]] | None = None) -> None:
    """Step 5: E epochs of the objective (10) over all pairs so far, a fresh AdamW per round; with --nce > 0 the pool
    term (11) over `pool` = (h_q, gold document rows) of its queries, one batch of them per step. NaN/inf stops the
    run."""
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + r)
    teacher, dev = student.teacher, student.u.device
    qi = torch.tensor([p[0] for p in pairs])
    di = torch.tensor([p[1] for p in pairs])
    h_T = torch.stack([cache.h[p[2]] for p in pairs])
    # (2) z_T = W h_T, exact: the head is the teacher's, frozen, so it is the same every epoch: computed once per
    # round for all pairs when it fits in Z_T_BYTES, else per batch
    z_T = teacher.logits(h_T) if len(pairs) * teacher.head.shape[0] * 4 <= Z_T_BYTES else None
    support = (student.y_pos, student.y_neg) if cfg.kl_support == "answer" else None
    opt = torch.optim.AdamW(student.predictor.parameters(), lr=cfg.lr)
    student.predictor.train()
    step, w = 0, cfg.weights
    nce = PoolBatches(pool[0], pool[1], h_d.shape[0], cfg.batch_size, cfg.nce_negatives,
                      torch.Generator().manual_seed(cfg.seed * 1000 + r + 500)) if w.nu and pool else None
    for epoch in progress(range(cfg.epochs), desc=f"Step 5: predictor, round {r}", quiet=cfg.quiet):
        parts_sum = {"jepa": 0.0, "kl": 0.0, "list": 0.0, "pool": 0.0, "total": 0.0}
        for b in batches(qi, cfg.batch_size, gen, cfg.listwise > 0):
            h_hat, z_S, _ = student.forward(h_q[qi[b]].to(dev).float(), h_d[di[b]].to(dev).float())  # (7)
            z_t = z_T[b.to(dev)] if z_T is not None else teacher.logits(h_T[b].to(dev))
            pool_in = None
            if nce is not None:  # (11): the student's scores of a batch of pool queries against pool documents
                pq, docs, target, exclude = nce.next()
                pred = student.predictor
                s_pool = pred.scores(pq.to(dev), pred.doc_side(h_d[docs].to(dev).float()), student.u)  # (B, n)
                pool_in = (s_pool, target.to(dev), exclude.to(dev), cfg.nce_tau)
            loss, parts = total_loss(h_hat, h_T[b].to(dev), z_S, z_t, w, cfg.tau, support, cfg.kl,
                                     groups=qi[b].to(dev), answer=(student.y_pos, student.y_neg), pool=pool_in)
            if not math.isfinite(parts["total"]):
                raise FloatingPointError(f"round {r} epoch {epoch} step {step}: loss is {parts['total']} "
                                         f"(jepa {parts['jepa']}, kl {parts['kl']}, pool {parts['pool']})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            for k in parts_sum:
                parts_sum[k] += parts[k] * len(b)
        log.append({"round": r, "epoch": epoch, "step": step, "pairs": len(pairs),
                    **{k: v / len(pairs) for k, v in parts_sum.items()}})
    student.predictor.eval()


# ---------------------------------------------------------------------------- Steps 6-7: evaluate, save
def step6_evaluate(cfg: DistillConfig, data, split: str, teacher, student: Student, h_d: torch.Tensor,
                   d_seconds: float, h_train: torch.Tensor) -> dict:
    """Step 6: prior, lookup, bm25, llm-biencoder, student and teacher@k over the whole pool, and every system on the same
    C(q), on the held-out split (`evaluate.evaluate_distilled`); with --hub-correction also the corrected student
    (12), its offsets taken over the training queries h_train."""
    return evaluate_distilled(cfg, data, split, teacher, student, h_d, d_seconds, h_train)


def step7_save(student: Student, out: Path, meta: dict, res: dict | None = None) -> None:
    """Step 7: the predictor (safetensors + JSON sidecar with the teacher's fingerprint), saved before the
    evaluation so that no results exist without it; then its metrics join the sidecar and results.json is written
    last."""
    metrics = {"metrics": res["systems"]["student"]} if res else {}
    save_predictor(student, out / "predictor.safetensors", meta | metrics)
    if res is not None:
        write_json(out / "results.json", res)


# ---------------------------------------------------------------------------- the loop
def distill(cfg: DistillConfig) -> dict:
    """The loop: Step 0, Step 1, then rounds of Steps 2-5, then Steps 6-7; returns the results."""
    t_start, timings = time.time(), {}
    resolve_device(cfg.device)  # inputs and settings are checked before anything is written
    with parallel.main_first():  # a download or unpacking happens once
        data = load_bench(cfg.bench, cfg.data_dir or None)
    out = start_distill(cfg, data)  # splits, ids and the teacher's folder checked, then the output folder
    train_q, train_rel = data.split("train")
    qids = subset(list(train_q), cfg.max_train_queries, torch.Generator().manual_seed(cfg.seed))
    doc_ids = list(data.corpus)
    doc_index = {d: i for i, d in enumerate(doc_ids)}
    gold = [{doc_index[d] for d, g in train_rel[q].items() if g > 0} for q in qids]
    t0 = time.time()
    teacher, tmeta = step0_teacher(cfg)
    timings["0_teacher"] = time.time() - t0
    student, h_d, h_q = step1_student(cfg, data, teacher, train_q, qids, out, timings)
    cache = PairCache(out / "pairs", fingerprint(teacher.lm), cfg.refresh_cache)
    first_round, log, pairs = resume_distill(cfg, out, student)  # --resume: after the last round
    if pairs:  # every pair so far has its target (a chunk --refresh-cache deleted as damaged is computed again)
        step4_teacher_targets(cache, pairs, teacher, train_q, data.doc_text, first_round - 1, cfg.quiet)
    need_bm25 = cfg.policy == "off" or (cfg.round0 == "bm25" and first_round == 0)
    bm25 = BM25({d: data.doc_text(d) for d in doc_ids}) if need_bm25 else None
    bm25_top = [[doc_index[d] for d in bm25.top(train_q[q], 4 * cfg.k * cfg.rounds + 8)] for q in qids] \
        if cfg.policy == "off" else None
    t0 = time.time()
    pool = pool_queries(cfg, student, train_q, train_rel, qids, h_q, doc_index) if cfg.nce else None
    timings["1_encode_pool_queries"] = time.time() - t0
    if cfg.standardize:  # (7b): fixed before training, from the queries the predictor trains on and the corpus
        student.predictor.standardize(pool[0] if pool is not None else h_q, h_d, seed=cfg.seed)
    if cfg.init == "similarity" and first_round == 0:  # (7c); a resumed run has its trained predictor already
        student.predictor.similarity_init(student.u, cfg.seed)
    for r in range(first_round, cfg.rounds):
        t0 = time.time()
        picks = step3_pick(cfg, r, student, h_q, h_d, bm25, [train_q[q] for q in qids], gold, pairs, bm25_top)
        known = {p[:2] for p in pairs}
        new = [(i, d) for i, (p, g) in enumerate(zip(picks, gold)) for d in sorted(g) + p]
        pairs += [(i, d, (qids[i], doc_ids[d])) for i, d in new if (i, d) not in known]
        step4_teacher_targets(cache, pairs, teacher, train_q, data.doc_text, r, cfg.quiet)
        step5_train_predictor(student, pairs, h_q, h_d, cache, cfg, r, log, pool)
        parallel.broadcast_module(student.predictor)  # replicated training; rank 0's copy is the one kept
        last = log[-1]
        print(f"[distill] round {r}: {len(pairs)} pairs, teacher calls so far {len(cache.h)}, "
              f"loss {last['total']:.4f} (jepa {last['jepa']:.4f}, kl {last['kl']:.4f}, pool {last['pool']:.4f}), "
              f"{time.time() - t0:.0f}s")
        save_tensors(out / "state.safetensors", student.predictor.state_dict(),
                     {"round": r, "log": log, "pairs": [[a, b, list(c)] for a, b, c in pairs],
                      "teacher_fingerprint": fingerprint(teacher.lm)})
        write_log(out / "metrics.csv", log)
        timings[f"round_{r}"] = time.time() - t0
    meta = {"teacher_checkpoint": str(Path(cfg.teacher) / "teacher.safetensors"),
            "teacher_checkpoint_abs": str((Path(cfg.teacher) / "teacher.safetensors").resolve()),
            "base_model": tmeta.get("base_model"), "teacher_fingerprint": fingerprint(teacher.lm),
            "config": dataclasses.asdict(cfg), "rounds": cfg.rounds, "pairs": len(pairs), "teacher_calls": len(cache.h)}
    step7_save(student, out, meta)
    t0 = time.time()
    res = step6_evaluate(cfg, data, cfg.eval_split, teacher, student, h_d, timings["1_encode_docs"],
                         pool[0] if pool is not None else h_q)
    timings |= {"6_evaluate": time.time() - t0, "total": time.time() - t_start}
    res |= {"timings_s": timings, "teacher_calls": len(cache.h)}
    step7_save(student, out, meta, res)
    print(f"[distill] cut to fit (--max-doc-tokens / the model's window): {res['truncated']}")
    print(f"[distill] done in {timings['total']:.0f}s; outputs in {out}")
    return res


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(p, DistillConfig)
    return p


def main(argv=None) -> dict:
    return distill(config_from_args(DistillConfig, parser().parse_args(argv), argv))


if __name__ == "__main__":
    cli(main, again="rerun the same command with --resume to continue where it stopped")
