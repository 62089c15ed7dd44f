"""The JEPA predictor g_phi between the frozen trunk and the frozen head, METHOD.md equation (7).

    h_hat = h_q + W2 act(A h_q + B h_d + b1) + b2          W2 = 0, b2 = 0 at init, so h_hat = h_q before training
    z_S = W h_hat,  s_S = z_S[y+] - z_S[y-] = u . h_hat     with u = W[y+] - W[y-]

Exact factorised scoring of n cached documents for a query (v = W2^T u, (B h_d) cached once per corpus):
    s_S(q, d) = u . (h_q + b2) + v . act(A h_q + b1 + B h_d)
which costs n x P per query instead of n x (P H + H) for the naive per-pair predictor + head.

Shapes: B queries, n documents, H hidden, P predictor width.

Choices not fixed by the paper:
- residual on h_q with a zero-initialised output layer (the paper says "two-layer MLP", "document embedding as latent");
- act = GELU (tanh-free), width P = 256 by default (`--width`);
- A and B are one Linear on [h_q; h_d] split in two, so the factorisation is exact, not an approximation.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Predictor(nn.Module):
    """g_phi (7): a two-layer MLP on the query embedding with the document embedding as latent."""

    def __init__(self, hidden: int, width: int = 256):
        super().__init__()
        self.A = nn.Linear(hidden, width)               # A h_q + b1
        self.B = nn.Linear(hidden, width, bias=False)   # B h_d
        self.W2 = nn.Linear(width, hidden)              # W2 (.) + b2
        nn.init.zeros_(self.W2.weight)
        nn.init.zeros_(self.W2.bias)

    @staticmethod
    def act(x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x)

    def forward(self, h_q: torch.Tensor, h_d: torch.Tensor) -> torch.Tensor:
        """(7) h_hat for paired h_q (N, H), h_d (N, H) -> (N, H)."""
        return h_q + self.W2(self.act(self.A(h_q) + self.B(h_d)))

    def doc_side(self, h_d: torch.Tensor) -> torch.Tensor:
        """B h_d for a corpus, (n, H) -> (n, P): computed once, reused by every query."""
        return self.B(h_d)

    def scores(self, h_q: torch.Tensor, doc_side: torch.Tensor, u: torch.Tensor,
               max_elems: int = 1 << 24) -> torch.Tensor:
        """Factorised s_S for every (query, document): h_q (B, H), doc_side (n, P), u (H,) -> (B, n).
        Chunked over documents so that at most `max_elems` activations (B x chunk x P) are alive at once."""
        v = self.W2.weight.T @ u                       # (P,)
        base = (h_q + self.W2.bias) @ u                # (B,)
        a = self.A(h_q)                                # (B, P)
        n, width = doc_side.shape
        chunk = max(1, max_elems // max(1, a.shape[0] * width))
        out = []
        for i in range(0, n, chunk):
            act = self.act(a[:, None, :] + doc_side[None, i:i + chunk, :])  # (B, chunk, P)
            out.append(act @ v)                                             # (B, chunk)
        return base[:, None] + torch.cat(out, dim=1)


def naive_scores(predictor: Predictor, h_q: torch.Tensor, h_d: torch.Tensor, head: torch.Tensor,
                 y_pos: int, y_neg: int) -> torch.Tensor:
    """Reference for `Predictor.scores`: every pair through the predictor and the full head, (B, n)."""
    b, n = h_q.shape[0], h_d.shape[0]
    h_hat = predictor(h_q[:, None, :].expand(b, n, -1), h_d[None, :, :].expand(b, n, -1))  # (B, n, H)
    z = h_hat @ head.T                                                                      # (B, n, V)
    return z[..., y_pos] - z[..., y_neg]


# ---------------------------------------------------------------------------- benchmark: python jepa.py bench
def matmul_rate(size: int = 1024, repeats: int = 5) -> float:
    """Measured multiply-adds per second of a float32 (size x size) @ (size x size) matmul on this machine."""
    import time
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return repeats * size ** 3 / (time.perf_counter() - t0)


def bench(hidden: int = 576, width: int = 256, sizes=(10_000, 100_000, 1_000_000), naive_max: int = 100_000,
          output: str = "results/predictor_throughput.json") -> list[dict]:
    """Candidates scored per second for one query: factorised (7) vs the naive per-pair predictor (A h_q + B h_d,
    W2, then u . h_hat), next to the roofline n x P multiply-adds at the measured matmul rate."""
    import time

    from common import write_json

    torch.manual_seed(0)
    p = Predictor(hidden, width)
    with torch.no_grad():
        p.W2.weight.normal_(0, 0.02)
    u, h_q = torch.randn(hidden), torch.randn(1, hidden)
    macs = matmul_rate()
    rows = []
    for n in sizes:
        h_d = torch.randn(n, hidden)
        with torch.no_grad():
            side = p.doc_side(h_d)                      # offline, once per corpus
            p.scores(h_q, side[:1000], u)               # warm-up
            t0 = time.perf_counter()
            p.scores(h_q, side, u)
            fast = time.perf_counter() - t0
            slow = None
            if n <= naive_max:
                t0 = time.perf_counter()
                for i in range(0, n, 65536):
                    (p(h_q.expand(min(65536, n - i), -1), h_d[i:i + 65536]) @ u)
                slow = time.perf_counter() - t0
        rows.append({"n": n, "hidden": hidden, "width": width, "threads": torch.get_num_threads(),
                     "factorised_cand_per_s": n / fast, "naive_cand_per_s": n / slow if slow else None,
                     "roofline_cand_per_s": macs / width, "matmul_macs_per_s": macs})
        print(rows[-1])
    write_json(output, rows)
    return rows


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="python jepa.py bench: factorised scoring throughput")
    ap.add_argument("cmd", choices=["bench"])
    ap.add_argument("--hidden", type=int, default=576, help="H (576 = SmolLM2-135M, 3584 = Qwen2-7B)")
    ap.add_argument("--width", type=int, default=256, help="predictor width P")
    ap.add_argument("--naive-max", type=int, default=100_000, help="largest n timed for the naive predictor")
    ap.add_argument("--output", default="results/predictor_throughput.json")
    a = ap.parse_args()
    bench(a.hidden, a.width, naive_max=a.naive_max, output=a.output)
