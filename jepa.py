"""The JEPA predictor g_phi between the frozen trunk and the frozen head, METHOD.md equation (7).

    h_hat = h_q + W2 act(A h_q + B h_d + b1) + b2          W2 = 0, b2 = 0 at init (h_hat = h_q), or the start (7c)
    A and B read each input standardised per dimension, (h - mean) / std (7b, ours; --no-standardize: as they are)
    z_S = W h_hat,  s_S = z_S[y+] - z_S[y-] = u . h_hat     with u = W[y+] - W[y-]

Exact factorised scoring of n cached documents for a query (v = W2^T u, (B h_d) cached once per corpus):
    s_S(q, d) = u . (h_q + b2) + v . act(A h_q + b1 + B h_d)
which costs n x P per query instead of n x (P H + H) for the naive per-pair predictor + head.

Shapes: B queries, n documents, H hidden, P predictor width.

Choices not fixed by the paper:
- residual on h_q with a zero-initialised output layer (the paper says "two-layer MLP", "document embedding as latent"),
  or started as a distance between the two inputs (7c, `similarity_init`: distill.py's default, chosen on dev);
- act (`--act`): ReLU (the default, chosen on dev: as good as GELU there and 4x faster to score), GELU (erf form),
  SiLU or GELU's tanh approximation; width P = 256 (`--width`);
- A and B are one Linear on [h_q; h_d] split in two, so the factorisation is exact, not an approximation;
- the standardisation (7b) (distill.py `--standardize`, on by default, chosen on dev): an LLM's last hidden state
  has a few dimensions tens of times larger than the rest (SmolLM2: mean |h| 21 on one, 0.74 the median), which the
  MLP's inputs otherwise carry as they are. It is an affine map of each input, so B h_d is still computed once per
  corpus and the factorisation stays exact; the shifts and scales are buffers of the checkpoint (identity in
  checkpoints made before them).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

BLOCK_BYTES = 1 << 20  # activations alive at once while scoring a corpus: small enough to stay in the L2 cache


# the predictor's activation (`--act`, ours): out of place (training), in place (the blocked scorer)
ACTS = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}
ACTS_INPLACE = {"gelu": torch._C._nn.gelu_, "relu": torch.relu_, "silu": lambda x: F.silu(x, inplace=True),
                "gelu_tanh": lambda x: torch._C._nn.gelu_(x, approximate="tanh")}


def fused_scores(a: torch.Tensor, side: torch.Tensor, v: torch.Tensor, act: str = "relu") -> torch.Tensor:
    """v . act(a + B h_d) for queries a (B, P) and documents side (n, P): (n, B). Written as one expression so that
    torch.compile turns it into a single fused loop (add, activation, dot), never an (n, B, P) tensor in memory.
    Documents are the outer loop: each row of B h_d is read from memory once and scored against every query."""
    return (ACTS[act](side.float()[:, None] + a[None]) * v).sum(-1)


_compiled: dict = {}


def compiled_scores(a: torch.Tensor, side: torch.Tensor, v: torch.Tensor, act: str = "relu") -> torch.Tensor:
    """`fused_scores` through torch.compile, built on first use per activation (about 15 s on a CPU; needs a C++
    compiler there). The numbers of documents and of queries are symbolic: one kernel serves every corpus and batch
    (plus the specialisations for one query or one document, and one per dtype of B h_d), with no padding."""
    if act not in _compiled:
        import torch._dynamo.config as dynamo  # on first use: torch._dynamo takes seconds to import
        # the activations share one code object: up to 12 kernels each (one or more queries, one or more documents,
        # 3 dtypes of B h_d); past the limit dynamo would run fused_scores eagerly, an (n, B, P) tensor in memory
        dynamo.recompile_limit = max(dynamo.recompile_limit, 12 * len(ACTS))
        _compiled[act] = torch.compile(lambda a, side, v: fused_scores(a, side, v, act))
    torch._dynamo.maybe_mark_dynamic(side, 0)
    torch._dynamo.maybe_mark_dynamic(a, 0)
    return _compiled[act](a, side, v)


IDENTITY = {"q_shift": 0.0, "q_scale": 1.0, "d_shift": 0.0, "d_scale": 1.0}  # the buffers of (7b), unset
READINGS = ("last", "mean")  # what h_q and h_d are: the state at the last token (5)/(6), or the mean (6m) (ours)
INITS = ("zero", "similarity")  # (7)'s start: h_hat = h_q, or (7c) a negative L1 distance (ours)


class Predictor(nn.Module):
    """g_phi (7): a two-layer MLP on the query embedding with the document embedding as latent. `compiled = True`
    scores corpora through torch.compile's fused kernel (`compiled_scores`) instead of the blocked eager loop: the
    same numbers (float32 rounding apart); with ReLU 3-5x faster, and faster than a dot product over h_d (RESULTS.md)."""

    compiled = False

    def __init__(self, hidden: int, width: int = 256, act: str = "relu"):
        super().__init__()
        if act not in ACTS:
            raise ValueError(f"activation {act!r}: choose from {', '.join(ACTS)}")
        self.act_name = act
        self.A = nn.Linear(hidden, width)               # A h_q + b1
        self.B = nn.Linear(hidden, width, bias=False)   # B h_d
        self.W2 = nn.Linear(width, hidden)              # W2 (.) + b2
        nn.init.zeros_(self.W2.weight)
        nn.init.zeros_(self.W2.bias)
        for name, value in IDENTITY.items():  # (7b): identity until `standardize` sets them
            self.register_buffer(name, torch.full((hidden,), value))

    def standardize(self, h_q: torch.Tensor, h_d: torch.Tensor, max_rows: int = 65536, seed: int = 0) -> None:
        """(7b) The inputs of A and B standardised per dimension from the training queries h_q (B, H) and the corpus
        h_d (n, H) (a seeded sample of at most max_rows rows of each, read in float64): h -> (h - mean) / std."""
        gen = torch.Generator().manual_seed(seed)
        for side, h in (("q", h_q), ("d", h_d)):
            if h.shape[0] > max_rows:
                h = h[torch.randperm(h.shape[0], generator=gen)[:max_rows].sort().values]
            x = h.double()
            std = x.std(0, unbiased=False) if x.shape[0] > 1 else torch.ones_like(x[0])
            getattr(self, f"{side}_shift").copy_(x.mean(0))
            getattr(self, f"{side}_scale").copy_(1 / std.clamp_min(1e-6))

    def similarity_init(self, u: torch.Tensor, seed: int = 0) -> None:
        """(7c) Start (7) as a similarity of its two inputs instead of h_hat = h_q: with ReLU, act(x) + act(-x) = |x|,
        so A = [M; -M], B = [-M; M], b1 = 0, b2 = 0 and W2 = -u 1^T / |u|^2 (v = W2^T u = -1) give
        s_S(q, d) = u . h_q - |M (x_q - x_d)|_1, x the inputs as A and B read them (7b), M a seeded Gaussian
        (P/2 x H, entries of variance 1/H). u . h_q is the same for every document of a query: the ranking is by
        the L1 distance of the projections. Needs an even width and ReLU."""
        if self.act_name != "relu" or self.A.out_features % 2:
            raise ValueError(f"similarity init (7c) needs --act relu and an even --width, not {self.act_name} / "
                             f"{self.A.out_features}")
        hidden, width = self.A.in_features, self.A.out_features
        dev = self.A.weight.device
        m = (torch.randn(width // 2, hidden, generator=torch.Generator().manual_seed(seed + 1)) /
             hidden ** 0.5).to(dev)
        u = u.to(dev).float()
        with torch.no_grad():
            self.A.weight.copy_(torch.cat([m, -m])), self.A.bias.zero_()
            self.B.weight.copy_(torch.cat([-m, m]))
            self.W2.weight.copy_(-u[:, None].expand(hidden, width) / (u @ u)), self.W2.bias.zero_()

    def q_in(self, h_q: torch.Tensor) -> torch.Tensor:
        """(7b) h_q as A reads it."""
        return (h_q - self.q_shift) * self.q_scale

    def d_in(self, h_d: torch.Tensor) -> torch.Tensor:
        """(7b) h_d as B reads it."""
        return (h_d - self.d_shift) * self.d_scale

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        """A checkpoint made before (7b) has no shift / scale buffers: it loads with the identity."""
        hidden = self.A.in_features
        state = {k: torch.full((hidden,), v) for k, v in IDENTITY.items()} | dict(state)
        return super().load_state_dict(state, strict, assign)

    def act(self, x: torch.Tensor) -> torch.Tensor:
        return ACTS[self.act_name](x)

    def forward(self, h_q: torch.Tensor, h_d: torch.Tensor) -> torch.Tensor:
        """(7) h_hat for paired h_q (N, H), h_d (N, H) -> (N, H)."""
        return h_q + self.W2(self.act(self.A(self.q_in(h_q)) + self.B(self.d_in(h_d))))

    def doc_side(self, h_d: torch.Tensor) -> torch.Tensor:
        """B h_d for a corpus, (n, H) -> (n, P): computed once, reused by every query."""
        return self.B(self.d_in(h_d))

    def scores(self, h_q: torch.Tensor, doc_side: torch.Tensor, u: torch.Tensor,
               block_bytes: int = BLOCK_BYTES) -> torch.Tensor:
        """Factorised s_S for every (query, document): h_q (B, H), doc_side (n, P) in any float dtype (float16 in an
        index), u (H,) -> (B, n) float32. Blocked over documents: one block of (B x chunk x P) float32 activations,
        about `block_bytes` so that it stays in the CPU cache, gets the add, the activation (in place) and the dot
        with v before the next block, so the (B x n x P) tensor is never materialised. With autograd on (training,
        tests of gradients) the same sums run out of place."""
        v = self.W2.weight.T @ u                       # (P,)
        base = (h_q + self.W2.bias) @ u                # (B,)
        a = self.A(self.q_in(h_q))                     # (B, P)
        n, width = doc_side.shape
        if self.compiled and not torch.is_grad_enabled():
            return base[:, None] + compiled_scores(a, doc_side, v, self.act_name).T
        chunk = max(1, min(n, block_bytes // (4 * max(1, a.shape[0]) * width)))
        if torch.is_grad_enabled():
            out = [self.act(a[:, None, :] + doc_side[None, i:i + chunk, :].to(a.dtype)) @ v for i in range(0, n, chunk)]
            return base[:, None] + torch.cat(out, dim=1)
        out = torch.empty(n, a.shape[0], dtype=a.dtype, device=a.device)  # (n, B): each block's rows contiguous
        buf = torch.empty(chunk, a.shape[0], width, dtype=a.dtype, device=a.device)
        for i in range(0, n, chunk):
            x = buf[:min(chunk, n - i)]                                          # (chunk, B, P)
            torch.add(doc_side[i:i + chunk, None, :], a[None], out=x)
            ACTS_INPLACE[self.act_name](x)                                       # = self.act, in place
            torch.matmul(x, v, out=out[i:i + chunk])                             # (chunk, B)
        return base[:, None] + out.T


def naive_scores(predictor: Predictor, h_q: torch.Tensor, h_d: torch.Tensor, head: torch.Tensor,
                 y_pos: int, y_neg: int) -> torch.Tensor:
    """Reference for `Predictor.scores`: every pair through the predictor and the full head, (B, n)."""
    b, n = h_q.shape[0], h_d.shape[0]
    h_hat = predictor(h_q[:, None, :].expand(b, n, -1), h_d[None, :, :].expand(b, n, -1))  # (B, n, H)
    z = h_hat @ head.T                                                                      # (B, n, V)
    return z[..., y_pos] - z[..., y_neg]
