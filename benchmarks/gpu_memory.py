"""Memory per GPU of the paper's full fine-tune of the teacher under FSDP2 (the table of docs/scaling.md), from a
model's config: no GPU is needed to compute it.

    python -m benchmarks.gpu_memory [--model-config config.json] [--tokens 512]       # GiB per GPU for 1-8 GPUs
"""
from __future__ import annotations

import argparse
import json

from runtime.common import cli


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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-config", default="", help="a config.json (default: Qwen2-7B-Instruct's numbers)")
    p.add_argument("--tokens", type=int, default=512, help="tokens per sequence")
    p.add_argument("--batch", type=int, default=1, help="sequences per GPU per micro-batch")
    p.add_argument("--gpu-gb", type=float, default=80.0)
    return p


def main(argv=None) -> None:
    args = parser().parse_args(argv)
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
    cli(main)
