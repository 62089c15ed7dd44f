"""Scale-out under `torchrun`: the paper's setting (a 7B teacher fully fine-tuned on 8 GPUs, corpora of millions of
documents) spread over processes with PyTorch's own torch.distributed. One process (`python script.py`) stays the
default and runs exactly as before; every helper here is a no-op there.

    torchrun --nproc_per_node 2 distill.py --quick                                   # CPU, gloo (tested in CI)
    torchrun --nproc_per_node 8 teacher.py train --device cuda --train-layers 0 --model Qwen/Qwen2-7B-Instruct ...
    torchrun --nnodes 2 --node-rank R --rdzv-backend c10d --rdzv-endpoint HOST:29500 --nproc_per_node 8 distill.py ...
    python parallel.py memory [--model-config config.json] [--tokens 512]           # the README's memory table (GiB)

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

import argparse
import builtins
import os
import sys
from contextlib import contextmanager

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
    import uuid
    from pathlib import Path

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


# ---------------------------------------------------------------------------- memory per GPU: python parallel.py memory
QWEN2_7B = {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
            "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False}  # Qwen2-7B-Instruct


def param_count(c: dict) -> int:
    """Parameters of a Llama / Qwen2 decoder from its config (q/k/v with biases as in Qwen2, gated MLP, norms)."""
    h, i, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    kv = c["num_key_value_heads"] * h // c["num_attention_heads"]
    attn = h * h + 2 * h * kv + h * h + (h + 2 * kv)   # q, k, v, o (+ q/k/v biases)
    mlp = 3 * h * i
    block = attn + mlp + 2 * h                          # two RMSNorms
    emb = c["vocab_size"] * h
    return layers * block + emb * (1 if c.get("tie_word_embeddings") else 2) + h


def memory_table(c: dict, tokens: int = 512, batch: int = 1, gpus=(1, 2, 4, 8), gpu_gb: float = 80.0) -> list[dict]:
    """GiB per GPU of a full fine-tune with FSDP2 (everything sharded over N GPUs): fp32 parameters (4 B), fp32
    gradients (4 B), AdamW moments (8 B) = 16 B per parameter / N; plus the bf16 all-gathered copy of the largest unit
    (a decoder block, or the root unit: the embeddings and, untied as in Qwen2, the lm_head) and activations for
    `batch` sequences of `tokens` tokens on each GPU:
    without checkpointing ~ tokens * batch * (34 h + 5 heads * tokens) bytes per block (Korthikanti et al. 2022, 16-bit
    activations; a Llama MLP is wider than GPT's 4h, so this is a lower estimate), with checkpointing the block inputs
    (2 * tokens * batch * h bytes per block) plus one block's activations being recomputed."""
    p = param_count(c)
    h, layers, heads = c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"]
    block_params = (p - c["vocab_size"] * h * (1 if c.get("tie_word_embeddings") else 2)) / layers
    root = c["vocab_size"] * h * (1 if c.get("tie_word_embeddings") else 2)  # embeddings + an untied lm_head
    unit = 2 * max(block_params, root)                                   # bf16 bytes of the largest gathered unit
    act_block = tokens * batch * (34 * h + 5 * heads * tokens)
    act_full, act_ckpt = layers * act_block, layers * 2 * tokens * batch * h + act_block
    logits = 4 * tokens * batch * c["vocab_size"]                        # fp32 logits of the last layer
    rows = []
    for n in gpus:
        states = 16 * p / n
        full, ckpt = states + unit + act_full + logits, states + unit + act_ckpt + logits
        rows.append({"gpus": n, "params_B": p / 1e9, "weights_GiB": 4 * p / n / 2 ** 30,
                     "grads_GiB": 4 * p / n / 2 ** 30,
                     "adam_GiB": 8 * p / n / 2 ** 30, "gathered_unit_GiB": unit / 2 ** 30,
                     "activations_GiB": act_full / 2 ** 30, "activations_ckpt_GiB": act_ckpt / 2 ** 30,
                     "total_GiB": full / 2 ** 30, "total_ckpt_GiB": ckpt / 2 ** 30,
                     "fits": (full / 2 ** 30) < gpu_gb, "fits_ckpt": (ckpt / 2 ** 30) < gpu_gb})
    return rows


def main(argv=None) -> None:
    import json

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("memory", help="GiB per GPU of a full fine-tune under FSDP2, from a model config")
    m.add_argument("--model-config", default="", help="a config.json (default: Qwen2-7B-Instruct's numbers)")
    m.add_argument("--tokens", type=int, default=512, help="tokens per sequence")
    m.add_argument("--batch", type=int, default=1, help="sequences per GPU per micro-batch")
    m.add_argument("--gpu-gb", type=float, default=80.0)
    args = p.parse_args(argv)
    cfg = json.loads(open(args.model_config).read()) if args.model_config else QWEN2_7B
    rows = memory_table(cfg, args.tokens, args.batch, gpu_gb=args.gpu_gb)
    print(f"{rows[0]['params_B']:.2f}B parameters, {args.tokens} tokens x {args.batch} per GPU, "
          f"{args.gpu_gb:.0f} GB GPUs")
    print("| GPUs | weights fp32 | grads fp32 | AdamW | gathered block bf16 | activations (ckpt) | total (ckpt) "
          "| fits |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['gpus']} | {r['weights_GiB']:.1f} | {r['grads_GiB']:.1f} | {r['adam_GiB']:.1f} | "
              f"{r['gathered_unit_GiB']:.2f} | {r['activations_GiB']:.1f} ({r['activations_ckpt_GiB']:.2f}) | "
              f"{r['total_GiB']:.1f} ({r['total_ckpt_GiB']:.1f}) | {'yes' if r['fits'] else 'no'} "
              f"({'yes' if r['fits_ckpt'] else 'no'}) |")


if __name__ == "__main__":
    main()
