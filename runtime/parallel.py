"""Scale-out under `torchrun`: the paper's setting (a 7B teacher fully fine-tuned on 8 GPUs, corpora of millions of
documents) spread over processes with PyTorch's own torch.distributed. One process (`python script.py`) stays the
default and runs exactly as before; every helper here is a no-op there.

    torchrun --nproc_per_node 2 distill.py --quick                                   # CPU, gloo (tested in CI)
    torchrun --nproc_per_node 8 teacher.py train --device cuda --train-layers 0 --model Qwen/Qwen2-7B-Instruct ...
    torchrun --nnodes 2 --node-rank R --rdzv-backend c10d --rdzv-endpoint HOST:29500 --nproc_per_node 8 distill.py ...

What runs where (every rank runs the same script on the same data, in the same order):
- encodings (h_d (6), h_q (5), teacher targets h_T (1), the teacher's evaluation row): `llm.last_hidden` gives batch
  b to rank b % N and sums the zero-filled results over ranks, so every rank ends with the rows one process computes,
  from the same batches (bitwise equal on CPU);
- teacher SFT (4): the pairs are owned round-robin (pair i by rank i % N, its frozen-bottom states computed there
  only); each optimiser step's global batch is the one of one process, each rank running the pairs it owns; top
  blocks (`--train-layers N > 0`) with DistributedDataParallel, the full fine-tune (`--train-layers 0`) with FSDP2
  (`fully_shard`, one unit per decoder block, bf16 parameters with fp32 gradient reduction on GPU); the checkpoint is
  gathered to rank 0 (full state dict) and written in the one-process format;
- predictor training (Step 5): replicated, every rank trains the same predictor on the same gathered pairs with the same
  seed (it is small: a rank-0-only step would leave the others idle and need a broadcast anyway); rank 0's predictor
  is broadcast after each round, so floating-point differences between GPUs cannot make the ranks drift apart;
- picking documents (Step 3): rank 0 picks and broadcasts; metrics are computed on every rank from the same gathered
  scores;
- files (results, TREC runs, caches, checkpoints) are written by rank 0 only (`common.atomic_write`), progress bars
  and log lines shown on rank 0 only (errors on stderr from every rank; RABTRIEVER_LOG_ALL_RANKS=1 shows all logs).
Host memory: every rank loads the model itself (`from_pretrained`): N copies in host RAM while loading (Qwen2-7B in
bf16: ~15 GB per rank), then each moves its copy to its GPU.
"""
from __future__ import annotations

import builtins
import os
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist


# ---------------------------------------------------------------------------- the process group
def init(device: str = "auto") -> None:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): NCCL for CUDA, gloo for the CPU.
    Idempotent; a no-op for one process."""
    if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    if dist.get_rank() != 0 and not os.environ.get("RABTRIEVER_LOG_ALL_RANKS"):
        builtins.print = _stdout_silenced(builtins.print)


def _stdout_silenced(builtin_print):
    """print for ranks > 0: log lines (stdout) are rank 0's alone, since every rank computes the same numbers;
    errors and warnings written to stderr still show from every rank. RABTRIEVER_LOG_ALL_RANKS=1 keeps them all."""
    def rank_print(*args, file=None, **kwargs):
        if file is not None and file is not sys.stdout:
            builtin_print(*args, file=file, **kwargs)
    return rank_print


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def planned_world() -> int:
    """The number of processes of this run, known before the process group starts (torchrun's WORLD_SIZE)."""
    return max(world(), int(os.environ.get("WORLD_SIZE", "1")))


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world() > 1:
        dist.barrier()


def local_device() -> torch.device:
    """This rank's GPU under torchrun (LOCAL_RANK), else cuda:0."""
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


# ---------------------------------------------------------------------------- sharding and gathering
def shard(n: int) -> list[int]:
    """The items 0..n-1 this rank owns: i with i % world == rank (all of them for one process)."""
    return list(range(rank(), n, world()))


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def sum_ranks(t: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of `t` over ranks (for zero-filled disjoint rows: the rows of every rank, exactly)."""
    if world() == 1:
        return t
    x = t.to(_comm_device())
    dist.all_reduce(x)
    return x.to(t.device)


def broadcast(obj):
    """Rank 0's `obj` on every rank (any picklable object)."""
    if world() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=_comm_device() if dist.get_backend() == "nccl" else None)
    return box[0]


def check_shared(folder) -> None:
    """Under torchrun on more than one node, `folder` (outputs, the cache) must be one filesystem every rank sees:
    rank 0 writes a file there and every rank must find it; else a clear error before any work."""
    if world() == 1 or int(os.environ.get("LOCAL_WORLD_SIZE", world())) == world():
        return  # one node: every rank sees the same disk
    probe = Path(folder) / f".shared-{broadcast(uuid.uuid4().hex)}"
    if is_main():
        probe.write_text("")
    barrier()
    seen = all_gather(probe.exists())
    barrier()
    if is_main():
        probe.unlink(missing_ok=True)
    if not all(seen):
        missing = [r for r, ok in enumerate(seen) if not ok]
        raise RuntimeError(f"{folder}: ranks {missing} do not see the files rank 0 writes there; outputs and "
                           "$RABTRIEVER_CACHE must be on a filesystem shared by every node (NFS, Lustre, ...)")


def all_gather(obj) -> list:
    """Every rank's `obj` (any picklable object), in rank order, on every rank."""
    if world() == 1:
        return [obj]
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def broadcast_module(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers copied into `module` on every rank."""
    if world() == 1:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        x = t.data.to(_comm_device())
        dist.broadcast(x, src=0)
        t.data.copy_(x)


@contextmanager
def main_first():
    """Rank 0 runs the body first (for example a one-off model conversion), then the others."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()
