"""The teacher's SFT runtime: everything a training run needs beyond the loop of teacher.py and the loss (4). The
frozen bottom blocks run once (`--train-layers N`), DDP / FSDP2 under torchrun, AdamW on fp32 master weights of
bf16 parameters, gradient accumulation and clipping, the LR schedule, a resumable state every `--save-every` steps,
and the dev metric before and after training. teacher.py reaches all of it through `SFT` (prepare, `backward`,
`step`, `finish`) and `DevSet`.

One optimiser step = a global batch of batch_size x grad_accum pairs in a seeded order, whatever the number of
processes: under torchrun pair i is owned by rank (i // G) % N, G = 1 or the size of a listwise group (4b) (its
frozen-bottom states computed there only), each rank runs its pairs of the step in micro-batches of batch_size, and
the gradient is the mean over the global batch (local sum / global count, x N because DDP and FSDP2 average over
ranks).
"""
from __future__ import annotations

import math
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import get_cosine_schedule_with_warmup

from runtime import parallel
from runtime.checkpoints import save_teacher, teacher_identity
from runtime.common import (check_sizes, check_values, entries, field, load_tensors, progress, read_json, save_tensors,
                            subset, write_json)
from runtime.config import RunConfig
from runtime.llm import can_split, exact, forget_fingerprint, last_logits, top_last, trunk_states
from runtime.metrics import candidate_sets, describe_protocol, evaluate_run, gold_hubs, label_prior, ranked, to_run

SFT_STATE = "sft_state"  # the resumable state of an SFT run, inside its output folder, removed once it is saved


@dataclass
class SFTRunConfig(RunConfig):
    """What a teacher SFT run needs beyond the method's settings (teacher.TrainConfig): batching, resuming, the dev
    metric."""
    batch_size: int = field(8, "pairs per forward (a micro-batch, per process; with --listwise whole groups: rounded "
                               "down to a multiple of the group size, at least one group)")
    grad_accum: int = field(1, "micro-batches per optimiser step: a global batch of batch_size x grad_accum pairs")
    grad_checkpoint: bool = field(False, "activation checkpointing in the trained blocks (less memory, ~1/3 slower)")
    save_every: int = field(50, "save a resumable SFT state every N optimiser steps (0 = never)")
    resume: bool = field(False, "continue an SFT run killed in output_dir from its last saved state")
    max_dev_queries: int = field(64, "dev-split queries for the dev metric (0 = all)")
    rerank_k: int = field(8, "dev metric: size of C(q), the whole pool when smaller (metrics.candidate_sets); "
                             "as large as the pool: the teacher ranks the whole pool")
    dev_every: int = field(0, "the dev metric every N optimiser steps too, a learning curve in dev_curve.json "
                              "(0 = before and after only)")


def set_trainable(lm, train_layers: int) -> list[torch.nn.Parameter]:
    """Freeze all, then unfreeze the last `train_layers` blocks and the final norm (all weights when 0)."""
    for p in lm.parameters():
        p.requires_grad_(train_layers == 0)
    if train_layers > 0:
        for module in list(lm.model.layers[-train_layers:]) + [lm.model.norm]:
            for p in module.parameters():
                p.requires_grad_(True)
    return [p for p in lm.parameters() if p.requires_grad]


def split_point(lm, train_layers: int) -> int:
    """First trained block when the frozen bottom can be run once and its states reused; 0 = run the whole model."""
    return len(lm.model.layers) - train_layers if train_layers and can_split(lm) else 0


class LastLogits(torch.nn.Module):
    """The trained part of SFT as one module, what DistributedDataParallel wraps: the logits z (B, V) (2) at each
    pair's last prompt token, from stored frozen-bottom states (start > 0: only the top blocks run) or from the token
    ids (start = 0: the whole model, through lm.forward so that FSDP2's hooks run)."""

    def __init__(self, lm, start: int, pad_id: int):
        super().__init__()
        self.lm, self.start, self.pad_id = lm, start, pad_id

    def forward(self, batch: list) -> torch.Tensor:
        if self.start:
            return self.lm.lm_head(top_last(self.lm, batch, self.start))  # (B, H) -> (B, V)
        return last_logits(self.lm, batch, self.pad_id)


def parallelize(lm, head: LastLogits, train_layers: int, device: torch.device):
    """Under torchrun: the top blocks with DDP (`--train-layers N > 0`), or the whole model with FSDP2
    (`--train-layers 0`: one `fully_shard` unit per decoder block, then the root; on GPU bf16 compute with fp32
    gradient reduction). Returns the module to call. One process: `head` itself."""
    if parallel.world() == 1:
        return head
    if train_layers > 0:
        from torch.nn.parallel import DistributedDataParallel as DDP  # under torchrun only
        return DDP(head, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard  # under torchrun only
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if device.type == "cuda" \
        else MixedPrecisionPolicy()
    for block in lm.model.layers:
        fully_shard(block, mp_policy=mp)
    fully_shard(lm, mp_policy=mp)
    return head


class SFT:
    """One SFT run of `teacher` on the token sequences `seqs` (prepare): the frozen bottom run once, the trained
    blocks unfrozen and wrapped for torchrun, AdamW with fp32 masters, warmup + cosine schedule, and the state of a
    killed run put back with `cfg.resume`. The loop calls `batches`, `backward` and `step`; `finish` ends it."""

    def __init__(self, teacher, seqs: list[list[int]], cfg, group: int = 1, dev: "DevSet | None" = None):
        if len(seqs) < parallel.world() * group:
            raise ValueError(f"teacher SFT: {len(seqs)} pairs for {parallel.world()} processes")
        self.cfg, self.t0, self.n_pairs = cfg, time.time(), len(seqs)
        lm, world = teacher.lm, parallel.world()
        self.lm, self.world, self.group = lm, world, group
        # pair i belongs to group i // group (a listwise group of (4b) stays on one rank): rank r owns the groups g
        # with g % world == r
        self.owned = {i for g in parallel.shard(len(seqs) // group) for i in range(g * group, (g + 1) * group)}
        self.start = split_point(lm, cfg.train_layers)
        self.inputs = trunk_states(lm, seqs, self.start, cfg.batch_size, teacher.pad_id,
                                   "teacher SFT: frozen blocks (once)", cfg.quiet, keep=sorted(self.owned)) \
            if self.start else seqs
        forget_fingerprint(lm)  # the weights change from here on
        set_trainable(lm, cfg.train_layers)
        if cfg.grad_checkpoint:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model = parallelize(lm, LastLogits(lm, self.start, teacher.pad_id), cfg.train_layers,
                                 next(lm.parameters()).device)
        params = [p for p in lm.parameters() if p.requires_grad]  # FSDP2 replaced them with sharded ones
        self.opt = MasterWeights(params, lr=cfg.lr, weight_decay=cfg.weight_decay)  # fp32 masters of bf16 weights
        self.micro = max(1, cfg.batch_size // group) * group  # whole groups: batch_size rounded down (at least one)
        self.per_step = self.micro * cfg.grad_accum
        self.total = math.ceil(len(seqs) / self.per_step) * cfg.epochs
        self.sched = get_cosine_schedule_with_warmup(self.opt.opt, int(cfg.warmup * self.total), self.total)
        self.fsdp = world > 1 and cfg.train_layers == 0
        self.folder = Path(cfg.output_dir) / SFT_STATE
        self.losses: list[float] = load_sft_state(self.folder, lm, self.opt, self.sched, self.fsdp) \
            if cfg.resume else []
        if self.losses:
            print(f"[teacher] resuming SFT after step {len(self.losses)} of {self.total}")
        lm.train()
        print(f"[teacher] SFT: {len(seqs)} pairs, {self.total} steps; global batch {self.per_step} pairs per step "
              f"(micro-batches of {self.micro}" + (f", whole listwise groups of {group}" if group > 1 else "") +
              f"; --batch-size {cfg.batch_size} x --grad-accum {cfg.grad_accum}) over {world} process(es): about "
              f"{self.per_step / world:.0f} pairs per process per step")
        self.bar = progress(total=self.total, initial=len(self.losses), desc="teacher SFT", quiet=cfg.quiet)
        self.steps_seen = 0
        self.teacher, self.dev, self.curve_path = teacher, dev, Path(cfg.output_dir) / "dev_curve.json"
        self.curve = DevSet.points_before(self, self.curve_path) if dev is not None else []

    def batches(self, order: list[int]):
        """The global batches of one epoch's `order`, skipping the steps a resumed run has already taken."""
        for k in range(0, len(order), self.per_step):
            self.steps_seen += 1
            if self.steps_seen > len(self.losses):
                yield order[k:k + self.per_step]

    def backward(self, batch: list[int], loss_fn) -> float:
        """Gradients of the global batch's mean loss: each rank runs the pairs of `batch` it owns in micro-batches
        (as many as the busiest rank, FSDP2 gathers weights in each; an empty one is a no-op that joins the
        reduction); loss_fn(z (B, V), pair indices) is the mean loss of a micro-batch. Returns the global mean."""
        world = self.world
        own = [i for i in batch if i in self.owned]
        most = max(sum(1 for i in batch if i // self.group % world == r) for r in range(world))
        micro = [own[j:j + self.micro] for j in range(0, max(most, 1), self.micro)]
        total = torch.zeros(())
        for m, idx in enumerate(micro):
            with sync_grads(self.model, m == len(micro) - 1):
                rows = idx or sorted(self.owned)[:self.group]  # a rank with no pair still joins the reduction
                z = self.model([self.inputs[i] for i in rows])
                loss = loss_fn(z, rows) * len(rows) * (1 if idx else 0)
                (loss * world / len(batch)).backward()
            total += loss.detach().float().cpu()
        mean = parallel.sum_ranks(total).item() / len(batch)  # the global batch's mean loss
        if not math.isfinite(mean):
            raise FloatingPointError(f"teacher SFT: loss {mean} at step {len(self.losses)}")
        return mean

    def step(self, loss: float) -> None:
        """Clip the gradient norm, step AdamW (on the fp32 masters) and the schedule, log; every --save-every steps
        the resumable state is saved (`save_sft_state`), every --dev-every steps a point of the dev curve measured."""
        torch.nn.utils.clip_grad_norm_(self.opt.gather_grads(), self.cfg.clip)
        self.opt.step(), self.sched.step(), self.opt.zero_grad()
        self.losses.append(loss)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{sum(self.losses[-20:]) / len(self.losses[-20:]):.4f}")
        every = self.cfg.save_every
        if every and len(self.losses) % every == 0 and len(self.losses) < self.total:
            save_sft_state(self.folder, self.lm, self.opt, self.sched, self.losses, self.fsdp)
        if self.dev is not None and self.cfg.dev_every and len(self.losses) % self.cfg.dev_every == 0:
            self.dev.curve(self.teacher, self, self.curve, self.curve_path)

    def finish(self) -> dict:
        """The model back in eval mode, frozen; the loss history."""
        self.bar.close()
        if self.cfg.grad_checkpoint:
            self.lm.gradient_checkpointing_disable()
        self.lm.eval().requires_grad_(False)
        return {"losses": self.losses, "steps": len(self.losses), "pairs": self.n_pairs, "curve": self.curve,
                "seconds": time.time() - self.t0, "fsdp": self.fsdp, "optimizer": self.opt}


# ---------------------------------------------------------------------------- resumable state, fp32 masters
def _named(lm, opt: "MasterWeights") -> list[tuple[str, torch.nn.Parameter, torch.Tensor]]:
    names = {id(p): n for n, p in lm.named_parameters()}
    return [(names[id(p)], p, m) for p, m in zip(opt.params, opt.master)]


def save_sft_state(folder: Path, lm, opt: "MasterWeights", sched, losses: list[float], fsdp: bool) -> None:
    """Everything a killed SFT run needs to continue with the same losses: the trained weights, their fp32 masters,
    AdamW's moments, the schedule and the losses so far. One process or DDP (every rank holds the same state): one
    safetensors file written by rank 0. FSDP2 (sharded): torch.distributed.checkpoint, each rank writing its shards,
    so no full copy is ever gathered. The sidecar is written last and names the complete state."""
    meta = {"kind": "sft-state", "step": len(losses), "losses": losses, "sched": sched.state_dict()}
    if fsdp:
        import torch.distributed.checkpoint as dcp  # FSDP2 (torchrun) only
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict  # FSDP2
        where = folder / f"dcp-{len(losses):07d}"
        dcp.save({"model": get_model_state_dict(lm), "optim": get_optimizer_state_dict(lm, opt.opt)},
                 checkpoint_id=str(where))
        parallel.barrier()
        write_json(folder / "state.json", meta | {"dcp": where.name})
        if parallel.is_main():
            for old in folder.glob("dcp-*"):
                if old.name != where.name:
                    shutil.rmtree(old, ignore_errors=True)
        return
    tensors = {}
    for name, p, m in _named(lm, opt):
        tensors[f"param/{name}"] = p.detach()
        if m is not p:
            tensors[f"master/{name}"] = m.detach()
        for key, value in opt.opt.state.get(m, {}).items():
            if key != "step":
                tensors[f"{key}/{name}"] = value
    adam_step = next((float(st["step"]) for st in opt.opt.state.values() if "step" in st), 0.0)
    save_tensors(folder / "state.safetensors", tensors, meta | {"adam_step": adam_step})
    parallel.barrier()


def load_sft_state(folder: Path, lm, opt: "MasterWeights", sched, fsdp: bool) -> list[float]:
    """The losses so far of the state `save_sft_state` left in `folder`, with the weights, masters, moments and
    schedule put back; [] when there is none (the run starts from the beginning)."""
    if fsdp:
        if not (folder / "state.json").exists():
            return []
        import torch.distributed.checkpoint as dcp  # FSDP2 (torchrun) only
        from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,  # FSDP2
                                                             set_model_state_dict, set_optimizer_state_dict)
        meta = read_json(folder / "state.json", "rerun with --overwrite")
        state = {"model": get_model_state_dict(lm), "optim": get_optimizer_state_dict(lm, opt.opt)}
        dcp.load(state, checkpoint_id=str(folder / meta["dcp"]))
        set_model_state_dict(lm, state["model"])
        set_optimizer_state_dict(lm, opt.opt, state["optim"])
    else:
        if not (folder / "state.safetensors").exists():
            return []
        tensors, meta = load_tensors(folder / "state.safetensors", {"kind": "sft-state"},
                                     fix="rerun with --overwrite to start the SFT again")
        with torch.no_grad():
            for name, p, m in _named(lm, opt):
                p.copy_(tensors[f"param/{name}"])
                if m is not p:
                    m.copy_(tensors[f"master/{name}"])
                moments = {k: tensors[f"{k}/{name}"] for k in ("exp_avg", "exp_avg_sq") if f"{k}/{name}" in tensors}
                if moments:
                    opt.opt.state[m] = {"step": torch.tensor(meta["adam_step"]), **moments}
    sched.load_state_dict(meta["sched"])
    for group, lr in zip(opt.opt.param_groups, sched.get_last_lr()):  # the schedule's state does not set the lr
        group["lr"] = lr
    return list(meta["losses"])


class MasterWeights:
    """AdamW with float32 master copies of low-precision (bfloat16 / float16) trainable parameters: the optimizer
    steps the float32 copy, and each model parameter then takes its copy rounded to its own dtype. An update far
    below bfloat16's resolution (AdamW moves a weight by about lr per step: LaHoRe's lr 1e-6 against a resolution of
    ~1e-4 at |w| = 0.02) accumulates in the master instead of vanishing. float32 parameters (CPU, FSDP2's sharded
    fp32 parameters) are stepped directly, with no copy. `opt` is the torch optimizer (for the LR schedule)."""

    def __init__(self, params: list[torch.nn.Parameter], **adamw):
        self.params = list(params)
        self.master = [p if p.dtype == torch.float32 else p.detach().float().clone().requires_grad_(True)
                       for p in self.params]
        self.opt = torch.optim.AdamW(self.master, **adamw)

    def gather_grads(self) -> list[torch.Tensor]:
        """Copy each low-precision gradient into its master as float32; returns the masters (to clip)."""
        for p, m in zip(self.params, self.master):
            if m is not p:
                m.grad = None if p.grad is None else p.grad.float()
        return self.master

    def step(self) -> None:
        """One AdamW step of the masters from the gradients `gather_grads` put there (and the caller clipped), then
        each model parameter takes its master rounded to its own dtype."""
        self.opt.step()
        with torch.no_grad():
            for p, m in zip(self.params, self.master):
                if m is not p:
                    p.copy_(m)

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        for p in self.params:
            p.grad = None


@contextmanager
def sync_grads(model, sync: bool):
    """Gradient accumulation: DDP and FSDP2 reduce gradients only on the last micro-batch of a step."""
    if hasattr(model, "no_sync") and not sync:  # DDP
        with model.no_sync():
            yield
        return
    fsdp = getattr(getattr(model, "lm", None), "set_requires_gradient_sync", None)
    if fsdp is not None:
        fsdp(sync)
    yield


# ---------------------------------------------------------------------------- the dev metric
class DevSet:
    """The dev pairs (query, document in C(q)) of `metrics.candidate_sets`, scored before and after training. With a
    frozen bottom (start > 0) their states are computed once here and both metrics run only the top blocks; under
    torchrun each rank keeps and scores the pairs it owns, and the scores are summed over ranks."""

    def __init__(self, teacher, data, split: str, bm25, cfg, start: int, train_split: str):
        self.data, self.split, self.start = data, split, start
        self.majority_from = train_split
        self.queries, qrels = data.split(split)
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        qids = subset(list(self.queries), cfg.max_dev_queries, gen)
        self.cands = candidate_sets(qids, self.queries, qrels, list(data.corpus), bm25, cfg.rerank_k, gen)
        self.qrels = {q: qrels[q] for q in self.cands}
        self.protocol = describe_protocol(len(data.corpus), cfg.rerank_k)
        self.flat = [(q, d) for q, ds in self.cands.items() for d in ds]
        self.states = None
        if start:
            seqs = [teacher.prompt.teacher(self.queries[q], data.doc_text(d)) for q, d in self.flat]
            with exact():  # the teacher's scores, computed as `Teacher.score` computes them
                self.states = trunk_states(teacher.lm, seqs, start, teacher.batch_size, teacher.pad_id,
                                           "dev: frozen blocks (once)", teacher.quiet, keep=parallel.shard(len(seqs)))

    def metric(self, teacher, desc: str) -> dict:
        if self.states is None:
            run = teacher.rerank(self.queries, self.cands, self.data.doc_text, desc)
        else:
            order = sorted(parallel.shard(len(self.flat)), key=lambda i: len(self.states[i]))
            h = torch.zeros(len(self.flat), teacher.lm.config.hidden_size)
            with torch.inference_mode(), exact():
                for k in range(0, len(order), teacher.batch_size):
                    idx = order[k:k + teacher.batch_size]
                    h[idx] = top_last(teacher.lm, [self.states[i] for i in idx], self.start).float().cpu()
            run = to_run(self.flat, parallel.sum_ranks(h) @ teacher.u)
        m = evaluate_run(run, self.qrels)
        return {"R@1": m["R@1"], "MRR@10": m["MRR@10"], "n_queries": len(self.cands), "protocol": self.protocol,
                "split": self.split, "majority_R@1": majority_r1(self.data, self.majority_from, self.qrels)}


    def before(self, teacher, path: Path, resume: bool) -> dict:
        """The dev metric of the untrained teacher, kept in `path` (dev_before.json) and read back on --resume."""
        before = read_json(path) if resume and path.exists() else self.metric(teacher, "dev (zero-shot)")
        write_json(path, before)
        print(f"[teacher] zero-shot {self.split}: R@1 {before['R@1']:.4f} MRR@10 {before['MRR@10']:.4f} "
              f"({before['n_queries']} queries, {before['protocol']}; majority R@1 {before['majority_R@1']:.4f})")
        return before

    @staticmethod
    def points_before(sft: "SFT", path: Path) -> list[dict]:
        """The learning curve's points a resumed run measured before it was killed (none for a fresh run)."""
        if not sft.losses or not path.exists():
            return []
        return [p for p in read_json(path)["points"] if p["step"] <= len(sft.losses)]

    def curve(self, teacher, sft: "SFT", points: list[dict], path: Path) -> None:
        """One point of the learning curve: the dev metric after `sft`'s steps so far, appended to `points` and
        written to `path` (each point as soon as it is measured)."""
        teacher.lm.eval()
        m = self.metric(teacher, f"dev after step {len(sft.losses)}")
        teacher.lm.train()
        points.append({"step": len(sft.losses), "pairs_seen": len(sft.losses) * sft.per_step,
                       "loss": sum(sft.losses[-20:]) / len(sft.losses[-20:]), "R@1": m["R@1"],
                       "MRR@10": m["MRR@10"]})
        write_json(path, {"protocol": m["protocol"], "n_queries": m["n_queries"], "points": points})
        print(f"[teacher] step {len(sft.losses)}: dev R@1 {m['R@1']:.4f} MRR@10 {m['MRR@10']:.4f}")


def majority_r1(data, split: str, qrels: dict) -> float:
    """R@1 on `qrels` of always ranking first the document most often gold in `split`, the training split
    (ESConv: "Questions"); a query whose gold is another document counts as a miss."""
    counts = label_prior(data, split)
    top = max(counts, key=counts.get)
    return sum(qrels[q].get(top, 0) > 0 for q in qrels) / max(len(qrels), 1)


def resume_or_restart(folder: str | Path) -> dict:
    """How a teacher run starts in `folder`: {} when empty or new, {"resume": True} when it holds an unfinished SFT
    run's saved state, {"overwrite": True} when a run stopped there before its first saved state."""
    folder = Path(folder)
    if not (folder.exists() and any(entries(folder))):
        return {}
    if (folder / SFT_STATE).exists():
        print(f"[distill] Step 0: {folder} holds an unfinished teacher run: resuming its SFT")
        return {"resume": True}
    print(f"[distill] Step 0: {folder} holds a teacher run stopped before its first saved state: starting it again")
    return {"overwrite": True}


# ---------------------------------------------------------------------------- the trained teacher: saved, measured
def sft_dtype(cfg, device: torch.device) -> str:
    """The precision the base model is loaded in for SFT: float32 master weights for a full fine-tune under FSDP2 on
    GPUs (--dtype auto), else --dtype."""
    fsdp_gpu = cfg.train_layers == 0 and parallel.world() > 1 and device.type == "cuda"
    return "float32" if fsdp_gpu and cfg.dtype == "auto" else cfg.dtype


def save_trained(teacher, cfg, base_fp: str, before: dict, hist: dict) -> tuple[Path, dict]:
    """Save the checkpoint (`checkpoints.save_teacher`) and drop the resumable state: (path, sidecar fields). The
    saved teacher's model takes the checkpoint's identity (fingerprint), as a loaded one would have."""
    meta = {"step": hist["steps"], "train_split": "train", "dev_before": before, "train_seconds": hist["seconds"],
            "loss_first": hist["losses"][0], "loss_last": hist["losses"][-1], "truncated": teacher.prompt.cut_counts()}
    path, digest = save_teacher(teacher, cfg.output_dir, cfg, base_fp, meta, hist["fsdp"])
    parallel.barrier()
    if parallel.is_main():  # the checkpoint is complete: the resumable state is not needed any more
        shutil.rmtree(Path(cfg.output_dir) / SFT_STATE, ignore_errors=True)
    if not hist["fsdp"]:
        teacher.lm.rab_fingerprint = teacher_identity(base_fp, digest)
    return path, meta


def report_trained(path: Path, cfg, meta: dict, after: dict, hist: dict) -> dict:
    """Print the trained teacher's dev metric, add it to the checkpoint's sidecar and write teacher_metrics.json."""
    print(f"[teacher] trained   dev: R@1 {after['R@1']:.4f} MRR@10 {after['MRR@10']:.4f} ({hist['pairs']} SFT pairs on "
          f"train, {hist['steps']} steps, {hist['seconds']:.0f}s)")
    print(f"[teacher] cut to fit (--max-doc-tokens / the model's window): {meta['truncated']}")
    meta["dev_after"] = after
    sidecar = read_json(str(path) + ".json") if parallel.is_main() else {}
    write_json(str(path) + ".json", sidecar | {"dev_after": after})  # the same tensors: the sidecar gains a field
    write_json(Path(cfg.output_dir) / "teacher_metrics.json", meta | {"losses": hist["losses"],
                                                                     "dev_curve": hist.get("curve", [])})
    parallel.barrier()
    print(f"[teacher] saved {path}")
    return meta


def listwise_group_size(cfg, data, split: str) -> int:
    """Pairs per group of (4b): a gold document and the query's --neg-bm25 + --neg-frequent + --neg-random
    negatives, fewer where the pool is smaller (PsyQA's 7 strategies), the same for every group."""
    most = max(sum(g > 0 for g in r.values()) for r in data.split(split)[1].values())
    return max(2, min(1 + cfg.neg_bm25 + cfg.neg_random + cfg.neg_frequent, len(data.corpus) - most + 1))


def merge_passes(first: dict, second: dict) -> dict:
    """The history of two SFT passes (--neg-self) as one: the second's fields, losses, steps and seconds of both."""
    return second | {"losses": first["losses"] + second["losses"], "steps": first["steps"] + second["steps"],
                     "seconds": first["seconds"] + second["seconds"]}


# ---------------------------------------------------------------------------- --neg-self
def mine_negatives(teacher, data, split: str, cfg, bm25,
                   pairs: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """Self-mined negatives [ours]: for each query of `pairs`, the teacher trained so far scores a first stage (BM25's
    top --mine-k and the --mine-k documents most often gold in the training split, the hubs a retriever meets), and
    its --neg-self best-scored documents that are neither gold nor already paired with the query become new
    negatives: the mistakes it would make when reranking a pool."""
    queries, qrels = data.split(split)
    gold_of: dict[str, set[str]] = {}  # by query text: queries with the same text share their gold documents
    for q, t in queries.items():
        gold_of.setdefault(t, set()).update(d for d, g in qrels[q].items() if g > 0)
    frequent = gold_hubs(data, split)[:cfg.mine_k]
    used: dict[str, set[str]] = {}
    for q, d, _ in pairs:
        used.setdefault(q, set()).add(d)
    cands = {}
    for q, seen in used.items():
        first = dict.fromkeys(bm25.top(q, cfg.mine_k) + frequent)
        cands[q] = [d for d in first if d not in gold_of[q] and d not in seen]
    run = teacher.rerank({q: q for q in cands}, {q: c for q, c in cands.items() if c}, data.doc_text,
                         "teacher SFT: mining negatives")
    return [(q, d, 0) for q in cands for d in ranked(run.get(q, {}))[:cfg.neg_self]]


# ---------------------------------------------------------------------------- teacher.TrainConfig's checks
def check_train_config(cfg) -> None:
    """Every value of a teacher.TrainConfig checked before anything runs: sizes, finite numbers, contradictions."""
    check_values(cfg)
    cfg.one_set()
    check_sizes(cfg, ("epochs", "batch_size", "grad_accum", "rerank_k", "max_doc_tokens", "mine_k"), 1)
    check_sizes(cfg, ("train_layers", "neg_bm25", "neg_random", "neg_frequent", "neg_self", "max_train_queries",
                       "max_dev_queries", "save_every", "dev_every"), 0)
    if cfg.resume and cfg.overwrite:
        raise ValueError("--resume and --overwrite contradict each other: choose one")
    if cfg.neg_self and parallel.planned_world() > 1:
        raise ValueError("--neg-self runs in one process (its second pass would wrap the model for DDP / FSDP2 "
                         "twice): run `python teacher.py train ...` without torchrun")
    if cfg.resume and cfg.neg_self:
        raise ValueError("--resume does not cover --neg-self's second pass yet: rerun with --overwrite")
    if cfg.listwise < 0 or cfg.listwise and cfg.neg_self:
        raise ValueError(f"--listwise {cfg.listwise}: needs listwise >= 0, and --listwise 0 with --neg-self "
                         "(its second pass adds negatives outside the groups)")
    if not 0 <= cfg.warmup < 1 or cfg.lr <= 0:
        raise ValueError(f"--warmup {cfg.warmup}, --lr {cfg.lr}: need 0 <= warmup < 1 and lr > 0")
    if cfg.clip <= 0:  # a negative norm clips every step to a step uphill; 0 would freeze the teacher
        raise ValueError(f"--clip {cfg.clip}: the gradient norm clip must be > 0 (a large value, e.g. 1e9, to clip "
                         "nothing)")
