"""On-policy distillation of the teacher into the JEPA student: the project's main job (METHOD.md, "On-policy
distillation", Steps 0-7, equations (8)-(11)).

    python distill.py                                   # embedded SmolLM2-135M on VirtualHome, offline, CPU
    python distill.py --quick                           # a smaller CPU run of the same pipeline
    python distill.py --bench esconv --data-dir DIR
    python distill.py --model Qwen/Qwen2-7B-Instruct --bench esconv --max-train-queries 0 --max-test-queries 0  # GPU

Steps (METHOD.md names them Step 0..Step 7; equations are (1)..(11)):
    Step 0  teacher: load runs/teacher-{bench}/ or train it (teacher.py, (4))
    Step 1  student: frozen teacher + predictor; encode and cache the corpus (6) and the training queries (5)
    rounds r = 0..R-1:
      Step 2  score every document for every training query: the student (7) (round 0: --round0, BM25 by default)
      Step 3  pick k documents per query not sent to the teacher yet, plus the gold ones: the k best-ranked
              (--sampling top) or k drawn from softmax(s_S / tau_s) (--sampling softmax); --policy off: fixed
              BM25 + random negatives, the same number of teacher calls
      Step 4  teacher targets h_T (1) for pairs not seen yet (cached by pair; z_T = W h_T (2) once per round)
      Step 5  train the predictor E epochs on all pairs so far with L_JEPA + lmbda * L_RKL (10)
              [+ mu * the listwise KL (10b)] [+ nu * the pool term (11) over more training queries: ours]
    Step 6  evaluate on the held-out split: over the whole pool (the paper's protocol: prior, bm25, llm-biencoder,
            student, and teacher@k reranking a first stage) and on C(q) (fidelity to the teacher) (metrics.py)
    Step 7  save the predictor (safetensors + JSON sidecar) and the results

Choices not fixed by the paper: the whole procedure above (rounds, k, the round-0 policy, top-k picks, the pair
cache), the pool term (11) and its queries, a fresh AdamW per round, every random draw seeded from (seed, round).
`--resume` continues from the last finished round and from every finished chunk of teacher targets, and ends with
the same numbers.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import parallel
from common import (IntegrityError, add_dataclass_args, atomic_write, cache_dir, check_finite, check_sizes, cli,
                    config_from_args, field, folder_owner, load_tensors, prepare_output, progress, resolve_device,
                    save_tensors, set_seed, subset, write_json)
from llm import ATTENTION, DEFAULT_MODEL, fingerprint
from losses import pool_nce, total_loss
from metrics import BM25, candidate_sets, describe_protocol
from student import Student, encode_corpus, ids_digest, save_predictor

CHUNK = 64  # teacher targets are computed and saved in chunks of at least this many pairs (2 batches per rank)
Z_T_BYTES = 1 << 30  # z_T of all pairs is computed once per round when it fits in this many bytes


@dataclass
class DistillConfig:
    bench: str = field("virtualhome", "virtualhome | esconv | psyqa | saycan | msmarco | BEIR name")
    data_dir: str = field("", "local copy of the data set (default: embedded or official download)")
    model: str = field(DEFAULT_MODEL, "embedded name, Hugging Face id or local folder (for a new teacher)")
    device: str = field("auto", "auto | cpu | cuda", choices=["auto", "cpu", "cuda"])
    attn_implementation: str = field("sdpa", "attention kernel of the LLM", choices=list(ATTENTION))
    teacher: str = field("", "teacher checkpoint folder (default runs/teacher-{bench}[-quick]; trained if absent)")
    instruction: str = field("task", "the prompt's question (teacher.py --instruction): task (ours), generic or a text")
    rounds: int = field(2, "on-policy rounds R")
    k: int = field(2, "documents sampled per training query per round (plus the gold ones)")
    tau_s: float = field(1.0, "temperature of the student's sampling policy softmax(s_S / tau_s)")
    lmbda: float = field(1.0, "weight of the reverse KL in (10)")
    tau: float = field(1.0, "temperature of the KL distributions (9)")
    kl_support: str = field("full", "full vocabulary or only the answer tokens", choices=["full", "answer"])
    listwise: float = field(0.0, "weight mu of the listwise KL (10b) over each query's documents, batched by query "
                                 "(ours, beyond the paper; 0 = off)")
    policy: str = field("on", "on: documents picked by the student; off: fixed BM25 + random negatives",
                        choices=["on", "off"])
    sampling: str = field("top", "on-policy pick (ours): top = the student's k best-ranked documents not scored yet; "
                                 "softmax = k drawn from softmax(s_S / tau_s)", choices=["top", "softmax"])
    round0: str = field("bm25", "round 0's policy, where the untrained student ranks every document the same (ours)",
                        choices=["bm25", "biencoder", "uniform"])
    nce: float = field(1.0, "weight nu of the pool term (11), InfoNCE of the student's scores of the gold against "
                            "pool documents (ours, beyond the paper; 0 = off)")
    nce_queries: int = field(1024, "training queries of the pool term (11); they cost the query pass (5), no teacher "
                                   "call (0 = all)")
    nce_negatives: int = field(1024, "pool documents per step as negatives of (11) (the whole pool when smaller)")
    nce_tau: float = field(1.0, "temperature of (11)")
    no_jepa: bool = field(False, "ablation: drop L_JEPA")
    no_rkl: bool = field(False, "ablation: drop L_RKL (same as --lmbda 0)")
    width: int = field(256, "predictor width P")
    epochs: int = field(30, "predictor epochs E per round over all pairs so far")
    lr: float = field(1e-3, "AdamW learning rate of the predictor")
    batch_size: int = field(32, "pairs per predictor step")
    seed: int = field(0, "seed of every random draw")
    max_train_queries: int = field(128, "training queries (0 = all)")
    max_test_queries: int = field(128, "held-out queries evaluated (0 = all)")
    rerank_k: int = field(8, "size of C(q), the candidates every system ranks in Step 6 (the whole pool when smaller)")
    teacher_k: int = field(8, "teacher@k in Step 6: the teacher reranks the union of BM25's and the student's top k "
                              "over the whole pool (0 = the whole pool, long)")
    teacher_batch: int = field(8, "pairs per teacher / encoder forward")
    compile: bool = field(False, "score the pool through torch.compile's fused kernel (jepa.fused_scores): faster "
                                 "on CPU after a ~15 s compile")
    hub_correction: str = field("none", "Step 6 diagnostic (ours): also the student with each document's score "
                                        "offset over the training queries removed (12)",
                                choices=["none", "center", "csls"])
    eval_teacher: bool = field(True, "score the teacher in Step 6 (ablations can skip it: it does not change)")
    output_dir: str = field("", "outputs (default runs/distill-{bench}[-quick])")
    resume: bool = field(False, "continue a killed run in output_dir (with the same settings)")
    overwrite: bool = field(False, "replace the run in output_dir (the folder is emptied first)")
    refresh_cache: bool = field(False, "rebuild the document cache (and recompute damaged teacher-target chunks)")
    quick: bool = field(False, "small CPU run: fewer queries, rounds and epochs")
    quiet: bool = field(False, "no progress bars")

    # --quick (common.config_from_args): these caps, on every field the user did not set; the teacher is trained on
    # fewer queries too (step0_teacher)
    QUICK = {"max_train_queries": 16, "max_test_queries": 16, "rounds": 2, "k": 1, "epochs": 20, "rerank_k": 4,
             "nce_queries": 128, "teacher_k": 4}

    def __post_init__(self):
        check_finite(self)
        check_sizes(self, ("rounds", "k", "epochs", "width", "batch_size", "rerank_k", "teacher_batch"), 1)
        check_sizes(self, ("max_train_queries", "max_test_queries", "teacher_k", "nce_queries"), 0)
        check_sizes(self, ("nce_negatives",), 1)
        if self.tau_s <= 0 or self.tau <= 0 or self.lmbda < 0 or self.lr <= 0 or self.listwise < 0 or self.nce < 0 \
                or self.nce_tau <= 0:
            raise ValueError(f"--tau-s {self.tau_s}, --tau {self.tau}, --lmbda {self.lmbda}, --lr {self.lr}, "
                             f"--listwise {self.listwise}, --nce {self.nce}, --nce-tau {self.nce_tau}: need tau_s > 0, "
                             "tau > 0, lmbda >= 0, lr > 0, listwise >= 0, nce >= 0, nce_tau > 0")
        if self.no_jepa and (self.no_rkl or self.lmbda == 0) and not self.listwise and not self.nce:
            raise ValueError("--no-jepa together with --no-rkl (or --lmbda 0) leaves no loss")
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite contradict each other: choose one")
        suffix = ("" if self.model == DEFAULT_MODEL else "-" + self.model.strip("/").replace("/", "_")) + (
            "-quick" if self.quick else "")
        self.teacher = self.teacher or f"runs/teacher-{self.bench}{suffix}"
        self.output_dir = self.output_dir or f"runs/distill-{self.bench}{suffix}"

    @property
    def lmbda_eff(self) -> float:
        return 0.0 if self.no_rkl else self.lmbda


# ---------------------------------------------------------------------------- Step 0: teacher
def step0_teacher(cfg: DistillConfig):
    from teacher import SFT_STATE, TrainConfig, cmd_train, instruction_for, load_teacher

    if not Path(cfg.teacher, "teacher.safetensors").exists():
        print(f"[distill] Step 0: no teacher at {cfg.teacher}: training one")
        tcfg = TrainConfig(bench=cfg.bench, data_dir=cfg.data_dir, model=cfg.model, device=cfg.device,
                           output_dir=cfg.teacher, seed=cfg.seed, quiet=cfg.quiet, batch_size=cfg.teacher_batch,
                           instruction=cfg.instruction, attn_implementation=cfg.attn_implementation)
        if cfg.quick:
            tcfg.max_train_queries, tcfg.epochs, tcfg.max_dev_queries, tcfg.rerank_k = 16, 2, 8, 4
        if Path(cfg.teacher).exists() and any(Path(cfg.teacher).iterdir()):  # teacher.py's (check_teacher_folder)
            if (Path(cfg.teacher) / SFT_STATE).exists():
                print(f"[distill] Step 0: {cfg.teacher} holds an unfinished teacher run: resuming its SFT")
                tcfg.resume = True
            else:
                print(f"[distill] Step 0: {cfg.teacher} holds a teacher run stopped before its first saved state: "
                      "starting it again")
                tcfg.overwrite = True
        cmd_train(tcfg)
    teacher, meta = load_teacher(cfg.teacher, device=cfg.device, batch_size=cfg.teacher_batch, quiet=cfg.quiet,
                                 attn=cfg.attn_implementation,
                                 instruction=instruction_for(cfg.instruction, cfg.bench))
    if meta.get("base_model") != cfg.model:
        raise ValueError(f"{cfg.teacher}: teacher was trained from '{meta.get('base_model')}', but --model is "
                         f"'{cfg.model}'; pass --teacher DIR for a new one")
    return teacher, meta


def check_teacher_folder(cfg: DistillConfig) -> None:
    """--teacher must be a folder made by teacher.py (finished, or an unfinished run to replace), an empty folder or
    a new path: never another script's output, which Step 0 would otherwise empty to train a teacher in it."""
    folder = Path(cfg.teacher)
    if Path(cfg.output_dir).resolve() == folder.resolve():
        raise ValueError(f"--teacher and --output-dir are the same folder {folder}: the teacher needs its own")
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return
    if not folder.is_dir():
        raise FileExistsError(f"--teacher {folder}: exists and is not a folder")
    owner = folder_owner(folder)
    if owner != "teacher":
        made = f"made by {owner}.py" if owner else "not an output folder of this project"
        raise FileExistsError(f"--teacher {folder}: {made}, not a teacher folder; pass a folder made by "
                              "`python teacher.py train`, or a new path to train a teacher in")


# ---------------------------------------------------------------------------- Step 3: sampling
def sample_policy(scores: torch.Tensor, exclude: list[set[int]], k: int, tau_s: float,
                  gen: torch.Generator) -> list[list[int]]:
    """k documents per query without replacement from softmax(s_S / tau_s) over the documents not excluded (the
    gold ones and those already sent to the teacher), so every round costs the same number of teacher calls."""
    out = []
    for row, g in zip(scores, exclude):
        logits = row / tau_s
        logits[list(g)] = -math.inf
        probs = torch.softmax(logits.double(), 0)
        kk = min(k, int((probs > 0).sum()))
        out.append(torch.multinomial(probs, kk, replacement=False, generator=gen).tolist())
    return out


def sample_top(scores: torch.Tensor, exclude: list[set[int]], k: int) -> list[list[int]]:
    """[ours] The k best-ranked documents of each query that are not excluded (gold, or already sent to the
    teacher): the student's own hard negatives, refreshed every round (as ANCE mines them); ties in topk's order."""
    out = []
    for row, g in zip(scores, exclude):
        row = row.double().clone()
        row[list(g)] = -math.inf
        kk = min(k, len(row) - len(g))
        out.append(row.topk(kk).indices.tolist() if kk > 0 else [])
    return out


def pick_top(cfg: DistillConfig, r: int, student: Student, h_q: torch.Tensor, h_d: torch.Tensor, bm25,
             texts: list[str], exclude: list[set[int]]) -> list[list[int]]:
    """Steps 2-3 with --sampling top: each training query's k best-ranked documents not in `exclude`. The student's
    own (7) from round 1 on, over an index of the pool, its top k + |exclude| kept a block of documents at a time; in
    round 0, where the untrained student scores every document the same, the --round0 policy [ours]: BM25 (one
    query's scores at a time) or the frozen bi-encoder (cosine of h_q (5) and h_d (6), blocked). Never a queries x
    pool matrix."""
    from metrics import topk_blocked
    from student import Index

    if r == 0 and cfg.round0 == "bm25":
        return [sample_top(torch.from_numpy(bm25.scores(t))[None], [e], cfg.k)[0] for t, e in zip(texts, exclude)]
    n = min(h_d.shape[0], cfg.k + max(map(len, exclude)))
    if r == 0:
        q = torch.nn.functional.normalize(h_q.float(), dim=-1)
        _, top = topk_blocked(lambda i, j: q @ torch.nn.functional.normalize(h_d[i:j].float(), dim=-1).T,
                              h_d.shape[0], h_q.shape[0], n)
    else:
        _, top = Index.from_h_d(student, [str(i) for i in range(h_d.shape[0])], h_d, "float32").topk(student, h_q, n)
    return [[d for d in row if d not in e][:cfg.k] for row, e in zip(top.tolist(), exclude)]


def softmax_scores(cfg: DistillConfig, r: int, student: Student, h_q: torch.Tensor, h_d: torch.Tensor, bm25,
                   texts: list[str]) -> torch.Tensor:
    """Step 2 for --sampling softmax, which draws from a distribution over every document: the (Q, n) scores, the
    student's own (7) from round 1 on (and in round 0 with --round0 uniform), else the round-0 policy's (BM25 or the
    frozen bi-encoder's cosine). A full row per query: meant for pools of up to a few hundred thousand documents."""
    if r > 0 or cfg.round0 == "uniform":
        return student.score_all(h_q, h_d)
    if cfg.round0 == "bm25":
        return torch.stack([torch.from_numpy(bm25.scores(t)) for t in texts])
    q = torch.nn.functional.normalize(h_q.float(), dim=-1)
    return q @ torch.nn.functional.normalize(h_d.float(), dim=-1).T


def pool_queries(cfg: DistillConfig, student: Student, train_q: dict[str, str], train_rel: dict, qids: list[str],
                 h_q: torch.Tensor, doc_index: dict[str, int]) -> tuple[torch.Tensor, list[set[int]]]:
    """The queries of the pool term (11): the teacher's training queries (all of them), then more training queries
    up to --nce-queries (a seeded subset; they cost the query pass (5) only, no teacher call, and are cached under
    $RABTRIEVER_CACHE/queryemb for every run of the same teacher), with their gold rows."""
    rest = [q for q in train_q if q not in set(qids)]
    n_extra = len(rest) if cfg.nce_queries == 0 else max(0, cfg.nce_queries - len(qids))
    extra = subset(rest, n_extra, torch.Generator().manual_seed(cfg.seed + 1)) if n_extra else []
    folder = cache_dir("queryemb", f"{cfg.bench}-{fingerprint(student.lm)}-{ids_digest(extra)}-f16")  # shared by runs
    h_extra = encode_corpus(student, extra, [train_q[q] for q in extra], folder, kind="queries") if extra else h_q[:0]
    gold = [{doc_index[d] for d, g in train_rel[q].items() if g > 0} for q in qids + extra]
    return torch.cat([h_q, h_extra]), gold


def sample_fixed(bm25_top: list[list[int]], gold: list[set[int]], n_docs: int, k: int, r: int,
                 gen: torch.Generator) -> list[list[int]]:
    """Policy off: round r takes the next k of a fixed list alternating BM25 hard negatives and random ones."""
    out = []
    for top, g in zip(bm25_top, gold):
        rand = [d for d in torch.randperm(n_docs, generator=gen).tolist() if d not in g]
        hard = [d for d in top if d not in g]
        mixed, seen = [], set()
        for pair in zip(hard, rand):
            for d in pair:
                if d not in seen:
                    seen.add(d)
                    mixed.append(d)
        out.append(mixed[r * k:(r + 1) * k])
    return out


# ---------------------------------------------------------------------------- Step 4: teacher targets
class PairCache:
    """h_T by (query id, doc id), persisted as one safetensors file per finished chunk."""

    def __init__(self, folder: Path, teacher_fp: str, refresh: bool = False):
        """Loads every finished chunk; a damaged one stops the run, or with `refresh` is deleted (its pairs are
        computed again)."""
        self.folder, self.fp = folder, teacher_fp
        self.h: dict[tuple[str, str], torch.Tensor] = {}
        folder.mkdir(parents=True, exist_ok=True)
        for path in sorted(folder.glob("chunk-*.safetensors")):
            try:
                t, meta = load_tensors(path, {"teacher_fingerprint": teacher_fp},
                                       fix="pass --refresh-cache to compute its pairs again")
            except IntegrityError as e:
                if not refresh:
                    raise
                print(f"[distill] {e}: deleted, its pairs are recomputed")
                if parallel.is_main():
                    path.unlink(missing_ok=True)
                    Path(str(path) + ".json").unlink(missing_ok=True)
                continue
            for key, row in zip(meta["pairs"], t["h_T"]):
                self.h[tuple(key)] = row

    def fill(self, pairs: list[tuple[str, str]], teacher, queries: dict[str, str], doc_text, tag: str, quiet: bool):
        todo = [p for p in dict.fromkeys(pairs) if p not in self.h]
        size = max(CHUNK, 2 * parallel.world() * teacher.batch_size)  # every rank gets two batches per chunk
        chunks = [todo[i:i + size] for i in range(0, len(todo), size)]
        for c, chunk in enumerate(progress(chunks, desc=f"Step 4: teacher targets {tag}", quiet=quiet)):
            h = teacher.encode_pairs([queries[q] for q, _ in chunk], [doc_text(d) for _, d in chunk], desc="teacher")
            save_tensors(self.folder / f"chunk-{tag}-{c:05d}.safetensors", {"h_T": h},
                         {"teacher_fingerprint": self.fp, "pairs": [list(p) for p in chunk]})
            for p, row in zip(chunk, h):
                self.h[p] = row
        return len(todo)


# ---------------------------------------------------------------------------- Step 5: predictor training
def batches(qi: torch.Tensor, batch_size: int, gen: torch.Generator, by_query: bool) -> list[torch.Tensor]:
    """One epoch's batches of pair indices in a random order. by_query (the listwise KL (10b) needs a query's
    documents together): whole queries, in random order, are packed until a batch holds at least batch_size pairs."""
    order = torch.randperm(len(qi), generator=gen)
    if not by_query:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    groups: dict[int, list[int]] = {}
    for j in order.tolist():  # queries in order of first appearance: a random order
        groups.setdefault(int(qi[j]), []).append(j)
    out, cur = [], []
    for members in groups.values():
        cur += members
        if len(cur) >= batch_size:
            out.append(torch.tensor(cur))
            cur = []
    return out + ([torch.tensor(cur)] if cur else [])


class PoolBatches:
    """The queries of the pool term (11), cycled in a seeded order, `size` per step, with their negatives: every
    document of the pool (`negatives` = 0) or `negatives` documents drawn from it per step (shared by the step's
    queries, as in-batch negatives), plus each query's gold. One gold per query and step, drawn at random."""

    def __init__(self, h_q: torch.Tensor, gold: list[set[int]], n_docs: int, size: int, negatives: int,
                 gen: torch.Generator):
        self.h_q, self.gold, self.n_docs, self.size, self.negatives, self.gen = h_q, gold, n_docs, size, negatives, gen
        self.order: list[int] = []

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(h_q (B, H), document rows (n,), target (B,) column of each query's chosen gold, exclude (B, n))."""
        while len(self.order) < self.size:
            self.order += torch.randperm(len(self.gold), generator=self.gen).tolist()
        idx, self.order = self.order[:self.size], self.order[self.size:]
        golds = [sorted(self.gold[i]) for i in idx]
        chosen = [g[int(torch.randint(len(g), (1,), generator=self.gen))] for g in golds]
        if self.negatives and self.negatives < self.n_docs:
            drawn = torch.randperm(self.n_docs, generator=self.gen)[:self.negatives].tolist()
            docs = list(dict.fromkeys(chosen + drawn))
        else:
            docs = list(range(self.n_docs))
        col = {d: j for j, d in enumerate(docs)}
        exclude = torch.zeros(len(idx), len(docs), dtype=torch.bool)
        for row, g in enumerate(golds):
            exclude[row, [col[d] for d in g if d in col]] = True
        return self.h_q[idx].float(), torch.tensor(docs), torch.tensor([col[c] for c in chosen]), exclude


def train_predictor(student: Student, pairs: list[tuple[int, int, tuple[str, str]]], h_q: torch.Tensor,
                    h_d: torch.Tensor, cache: PairCache, cfg: DistillConfig, r: int, log: list[dict],
                    pool: tuple[torch.Tensor, list[set[int]]] | None = None) -> None:
    """Step 5: E epochs of (10) over all pairs so far, plus nu * (11) over `pool` = (h_q, gold document rows) of
    the pool term's queries, one batch of them per step, when --nce > 0; a fresh AdamW per round; NaN/inf stops
    the run."""
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + r)
    dev = student.u.device
    qi = torch.tensor([p[0] for p in pairs])
    di = torch.tensor([p[1] for p in pairs])
    h_T = torch.stack([cache.h[p[2]] for p in pairs])
    # (2) z_T = W h_T, exact: the head is the teacher's, frozen, so it is the same every epoch: computed once per
    # round for all pairs when it fits in Z_T_BYTES, else per batch
    head = student.head
    z_T = h_T.to(dev) @ head.T if len(pairs) * head.shape[0] * 4 <= Z_T_BYTES else None
    support = (student.y_pos, student.y_neg) if cfg.kl_support == "answer" else None
    opt = torch.optim.AdamW(student.predictor.parameters(), lr=cfg.lr)
    student.predictor.train()
    step = 0
    answer = (student.y_pos, student.y_neg)
    nce = PoolBatches(pool[0], pool[1], h_d.shape[0], cfg.batch_size, cfg.nce_negatives,
                      torch.Generator().manual_seed(cfg.seed * 1000 + r + 500)) if cfg.nce and pool else None
    for epoch in progress(range(cfg.epochs), desc=f"Step 5: predictor, round {r}", quiet=cfg.quiet):
        parts_sum = {"jepa": 0.0, "kl": 0.0, "list": 0.0, "pool": 0.0, "total": 0.0}
        for b in batches(qi, cfg.batch_size, gen, cfg.listwise > 0):
            hq, hd, ht = h_q[qi[b]].to(dev).float(), h_d[di[b]].to(dev).float(), h_T[b].to(dev)
            h_hat, z_s, _ = student.forward(hq, hd, head)
            z_t = z_T[b.to(dev)] if z_T is not None else ht @ head.T
            loss, parts = total_loss(h_hat, ht, z_s, z_t, cfg.lmbda_eff, cfg.tau, support, not cfg.no_jepa,
                                     mu=cfg.listwise, groups=qi[b].to(dev), answer=answer)
            parts["pool"] = 0.0
            if nce is not None:
                pq, docs, target, exclude = nce.next()
                pred = student.predictor
                s_pool = pred.scores(pq.to(dev), pred.doc_side(h_d[docs].to(dev).float()), student.u)  # (B, n), grad
                l_pool = pool_nce(s_pool, target.to(dev), exclude.to(dev), cfg.nce_tau)
                loss = loss + cfg.nce * l_pool
                parts["pool"], parts["total"] = l_pool.item(), loss.item()
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


def write_log(path: Path, log: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(log[0]))
    w.writeheader()
    w.writerows(log)
    atomic_write(path, buf.getvalue())


# ---------------------------------------------------------------------------- the loop
def run(cfg: DistillConfig) -> dict:
    from data import check_split, load_bench, train_test_splits

    t_start = time.time()
    resolve_device(cfg.device)  # inputs and settings are checked before anything is written
    with parallel.main_first():  # a download or unpacking happens once
        data = load_bench(cfg.bench, cfg.data_dir or None)
    train_split, test_split = train_test_splits(data)
    check_split(data, train_split, "training")
    check_split(data, test_split, "test")
    check_teacher_folder(cfg)
    out = prepare_output(cfg.output_dir, cfg, cfg.resume, cfg.overwrite, script="distill", can_resume=True)
    set_seed(cfg.seed)
    timings: dict[str, float] = {}

    train_q, train_rel = data.split(train_split)
    qids = subset(list(train_q), cfg.max_train_queries, torch.Generator().manual_seed(cfg.seed))
    doc_ids = list(data.corpus)
    doc_index = {d: i for i, d in enumerate(doc_ids)}
    gold = [{doc_index[d] for d, g in train_rel[q].items() if g > 0} for q in qids]

    t0 = time.time()
    teacher, tmeta = step0_teacher(cfg)
    timings["0_teacher"] = time.time() - t0
    teacher_fp = fingerprint(teacher.lm)

    t0 = time.time()
    student = Student(teacher, cfg.width)
    student.predictor.compiled = cfg.compile
    h_d = encode_corpus(student, doc_ids, [data.doc_text(d) for d in doc_ids],
                        cache_dir("docemb", f"{cfg.bench}-{teacher_fp}-f16"), cfg.refresh_cache)
    timings["1_encode_docs"] = time.time() - t0
    t0 = time.time()
    h_q = encode_corpus(student, qids, [train_q[q] for q in qids], out / "train_queries", kind="queries")
    timings["1_encode_train_queries"] = time.time() - t0

    cache = PairCache(out / "pairs", teacher_fp, cfg.refresh_cache)
    state = out / "state.safetensors"
    first_round, log, pairs = 0, [], []
    if cfg.resume and state.exists():
        tensors, meta = load_tensors(state, {"teacher_fingerprint": teacher_fp},
                                     fix="the round cannot be recovered: start again with --overwrite")
        student.predictor.load_state_dict(tensors)
        first_round, log = meta["round"] + 1, meta["log"]
        pairs = [(a, b, tuple(c)) for a, b, c in meta["pairs"]]
        print(f"[distill] resuming after round {meta['round']}")
    need_bm25 = cfg.policy == "off" or (cfg.round0 == "bm25" and first_round == 0)
    bm25 = BM25({d: data.doc_text(d) for d in doc_ids}) if need_bm25 else None
    bm25_top = [[doc_index[d] for d in bm25.top(train_q[q], 4 * cfg.k * cfg.rounds + 8)] for q in qids] \
        if cfg.policy == "off" else None
    t0 = time.time()
    pool = pool_queries(cfg, student, train_q, train_rel, qids, h_q, doc_index) if cfg.nce else None
    timings["1_encode_pool_queries"] = time.time() - t0
    for r in range(first_round, cfg.rounds):
        t0 = time.time()
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + r)
        # Step 2: score every document for every training query; Step 3: pick k per query (plus the gold ones)
        if cfg.policy == "on":
            seen = [set(g) for g in gold]
            for i, d, _ in pairs:
                seen[i].add(d)
            if cfg.sampling == "top" and not (r == 0 and cfg.round0 == "uniform"):
                pick = pick_top(cfg, r, student, h_q, h_d, bm25, [train_q[q] for q in qids], seen)
            else:  # softmax over every document: full rows of scores (the round-0 policy's in round 0)
                pick = sample_policy(softmax_scores(cfg, r, student, h_q, h_d, bm25, [train_q[q] for q in qids]),
                                     seen, cfg.k, cfg.tau_s, gen)
            picks = parallel.broadcast(pick)  # rank 0 decides
        else:
            fixed = torch.Generator().manual_seed(cfg.seed)  # the same lists every round; round r takes slice r
            picks = sample_fixed(bm25_top, gold, len(doc_ids), cfg.k, r, fixed)
        new = [(i, d) for i, (p, g) in enumerate(zip(picks, gold)) for d in sorted(g) + p]
        known = {p[:2] for p in pairs}
        pairs += [(i, d, (qids[i], doc_ids[d])) for i, d in new if (i, d) not in known]
        # Step 4: teacher targets for new pairs only
        cache.fill([p[2] for p in pairs], teacher, train_q, data.doc_text, f"r{r}", cfg.quiet)
        # Step 5: train the predictor on all pairs so far
        train_predictor(student, pairs, h_q, h_d, cache, cfg, r, log, pool)
        parallel.broadcast_module(student.predictor)  # replicated training; rank 0's copy is the one kept
        last = log[-1]
        print(f"[distill] round {r}: {len(pairs)} pairs, teacher calls so far {len(cache.h)}, "
              f"loss {last['total']:.4f} (jepa {last['jepa']:.4f}, kl {last['kl']:.4f}, pool {last['pool']:.4f}), "
              f"{time.time() - t0:.0f}s")
        save_tensors(state, student.predictor.state_dict(),
                     {"round": r, "log": log, "pairs": [[a, b, list(c)] for a, b, c in pairs],
                      "teacher_fingerprint": teacher_fp})
        write_log(out / "metrics.csv", log)
        timings[f"round_{r}"] = time.time() - t0

    # Step 7 (first half): the predictor is final; saved before the evaluation, so that no results exist without it
    meta = {"teacher_checkpoint": str(Path(cfg.teacher) / "teacher.safetensors"),
            "teacher_checkpoint_abs": str((Path(cfg.teacher) / "teacher.safetensors").resolve()),
            "base_model": tmeta.get("base_model"),
            "teacher_fingerprint": teacher_fp, "config": dataclasses.asdict(cfg), "rounds": cfg.rounds,
            "pairs": len(pairs), "teacher_calls": len(cache.h)}
    save_predictor(student, out / "predictor.safetensors", meta)
    # Step 6: evaluate on the held-out split
    t0 = time.time()
    res = evaluate_all(cfg, data, test_split, teacher, student, h_d, timings["1_encode_docs"],
                       pool[0] if pool is not None else h_q)
    timings["6_evaluate"] = time.time() - t0
    # Step 7: the student's metrics join its sidecar; results.json is written last
    save_predictor(student, out / "predictor.safetensors", meta | {"metrics": res["systems"]["student"]})
    timings["total"] = time.time() - t_start
    res["timings_s"] = timings
    res["teacher_calls"] = len(cache.h)
    write_json(out / "results.json", res)
    print(f"[distill] cut to fit (--max-doc-tokens / the model's window): {res['truncated']}")
    print(f"[distill] done in {timings['total']:.0f}s; outputs in {out}")
    return res


def evaluate_all(cfg: DistillConfig, data, split: str, teacher, student: Student, h_d: torch.Tensor,
                 d_seconds: float, h_train: torch.Tensor) -> dict:
    """Step 6: prior, bm25, llm-biencoder, student and teacher@k over the whole pool, and every system on the same
    C(q), on the held-out split; with --hub-correction also the corrected student (12), its offsets taken over the
    training queries h_train."""
    from data import train_test_splits
    from evaluate import eval_queries, report, run_systems, teacher_scores_cache, timed

    queries, qrels = data.split(split)
    qids = eval_queries(queries, cfg.max_test_queries, cfg.seed)
    queries, qrels = {q: queries[q] for q in qids}, {q: qrels[q] for q in qids}
    doc_ids = list(data.corpus)
    bm25, bm25_seconds = timed(BM25, {d: data.doc_text(d) for d in doc_ids})
    cands = candidate_sets(qids, queries, qrels, doc_ids, bm25, cfg.rerank_k,
                           torch.Generator().manual_seed(cfg.seed + 11))
    names = ["prior", "bm25", "llm-biencoder"] + (["teacher"] if cfg.eval_teacher else []) + ["student"]
    results = run_systems(names, data, queries, cands, bm25, bm25_seconds, train_test_splits(data)[0], teacher,
                          student, h_d, d_seconds, quiet=cfg.quiet, teacher_k=cfg.teacher_k,
                          scores=teacher_scores_cache(teacher, cfg.bench) if cfg.eval_teacher else None,
                          hub=(cfg.hub_correction, h_train) if cfg.hub_correction != "none" else None)
    header = f"{len(qids)} of {len(data.split(split)[0])} {split} queries, {len(doc_ids)} documents"
    return report(cfg.output_dir, cfg.bench, split, qrels, results, describe_protocol(len(doc_ids), cfg.rerank_k),
                  header, extra={"truncated": teacher.prompt.cut_counts()}, seed=cfg.seed, pool_size=len(doc_ids))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_args(p, DistillConfig)
    return run(config_from_args(DistillConfig, p.parse_args(argv), argv))


if __name__ == "__main__":
    cli(main, again="rerun the same command with --resume to continue where it stopped")
