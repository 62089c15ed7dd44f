"""distill.py's settings checked, and the student's recipe filled in where the user left it unset.

RECIPES: --reading / --init / --lr by kind of set, chosen on dev (RESULTS.md, first section): sets that are a pool of
texts to retrieve from (VirtualHome, BEIR-format) and sets whose documents are a few labels (ESConv's 8 strategies,
PsyQA's 7; on ESConv's dev the first recipe was within noise and lower).
"""
from __future__ import annotations

from runtime.common import check_sizes, check_values

RECIPES = {"texts": {"reading": "mean", "init": "similarity", "lr": 1e-5},
           "labels": {"reading": "last", "init": "zero", "lr": 1e-3}}
LABEL_BENCHES = ("esconv", "psyqa")


def fill_recipe(cfg) -> None:
    """--reading auto, --init auto, --lr unset (None): the bench's RECIPES entry; what the user set is kept."""
    recipe = RECIPES["labels" if cfg.bench in LABEL_BENCHES else "texts"]
    cfg.reading = recipe["reading"] if cfg.reading == "auto" else cfg.reading
    cfg.init = recipe["init"] if cfg.init == "auto" else cfg.init
    cfg.lr = recipe["lr"] if cfg.lr is None else cfg.lr


def check_distill(cfg) -> None:
    """distill.py's settings, refused up front with the flags named: sizes, positive rates and temperatures, an
    objective with at least one term, a similarity start the predictor can take (ReLU, even width)."""
    check_values(cfg)
    check_sizes(cfg, ("rounds", "k", "epochs", "width", "batch_size", "rerank_k", "teacher_batch"), 1)
    check_sizes(cfg, ("max_train_queries", "max_test_queries", "teacher_k", "nce_queries"), 0)
    check_sizes(cfg, ("nce_negatives",), 1)
    if cfg.tau_s <= 0 or cfg.tau <= 0 or cfg.lmbda < 0 or cfg.lr <= 0 or cfg.listwise < 0 or cfg.nce < 0 \
            or cfg.nce_tau <= 0:
        raise ValueError(f"--tau-s {cfg.tau_s}, --tau {cfg.tau}, --lmbda {cfg.lmbda}, --lr {cfg.lr}, "
                         f"--listwise {cfg.listwise}, --nce {cfg.nce}, --nce-tau {cfg.nce_tau}: need tau_s > 0, "
                         "tau > 0, lmbda >= 0, lr > 0, listwise >= 0, nce >= 0, nce_tau > 0")
    if cfg.no_jepa and (cfg.no_rkl or cfg.lmbda == 0) and not cfg.listwise and not cfg.nce:
        raise ValueError("--no-jepa together with --no-rkl (or --lmbda 0) leaves no loss")
    if cfg.init == "similarity" and (cfg.act != "relu" or cfg.width % 2):
        raise ValueError(f"--init similarity needs --act relu and an even --width, not --act {cfg.act} "
                         f"--width {cfg.width} (pass --init zero to keep them)")
    if cfg.resume and cfg.overwrite:
        raise ValueError("--resume and --overwrite contradict each other: choose one")
