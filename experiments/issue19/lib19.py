"""Helpers of the issue-19 experiments (README: "Where our results differ from the paper, and why"): train heads in memory from the clone's split stores (data/stores/<dataset>, or built from data/features/<dataset> into a scratch folder), cached on disk."""
from __future__ import annotations
import copy, json, sys, tempfile
from dataclasses import asdict, replace
from pathlib import Path
import numpy as np, torch, yaml

ROOT = Path(__file__).resolve().parents[2]  # the repository (experiments/issue19/ -> ..)
sys.path.insert(0, str(ROOT))
from pipeline.cache import FeatureCache
from pipeline.split_store import SplitStores, build_stores
from pipeline.models import RewardHead, predict
from pipeline import metrics
from pipeline import train as T

HERE = Path(__file__).resolve().parent  # heads trained here are kept in heads/ (ignored by git)

import os
REAL = bool(os.environ.get("REAL"))
DATA_ROOT = ROOT / "real" if REAL else ROOT   # the real-data DVC project keeps its own data/ and params
PARAMS = yaml.safe_load((DATA_ROOT / "params.yaml").read_text())
SCR = Path(tempfile.mkdtemp(prefix="i19-"))
_stores: dict = {}  # dataset -> SplitStores, (dataset, split) -> SplitStore (keeps its moments)

def spec(exp):
    s = dict(PARAMS["experiments"][exp])
    lam = {k: s.get(k, PARAMS[k]) for k in ("lambda_ls", "lambda_gb", "lambda_div")}
    return s, lam

def cache(exp):
    return FeatureCache(DATA_ROOT / "data/features" / spec(exp)[0]["dataset"])

def stores(exp):
    """The experiment's split stores: the stage's DATA_ROOT/data/stores/<dataset> when it exists,
    else built once from the cache into SCR (seed 0, as the `stores` stage builds them)."""
    dataset = spec(exp)[0]["dataset"]
    if dataset not in _stores:
        built = DATA_ROOT / "data/stores" / dataset
        _stores[dataset] = SplitStores(built) if built.exists() else build_stores(cache(exp), SCR / dataset)
    return _stores[dataset]

def store(exp, split):
    key = (spec(exp)[0]["dataset"], split)
    if key not in _stores:
        _stores[key] = stores(exp).split(split)
    return _stores[key]

def tconfig(**over):
    base = {k: v for k, v in PARAMS["train"].items()}
    base.update(over)
    return T.TrainConfig(**base)

TAGS = {
    "const": dict(lr_schedule="constant"),
    "linear": dict(lr_schedule="linear"),
    "const-ls0": dict(lr_schedule="constant", lambdas={"lambda_ls": 0.0}),
    "const-gb0": dict(lr_schedule="constant", lambdas={"lambda_gb": 0.0}),
    "const-div0": dict(lr_schedule="constant", lambdas={"lambda_div": 0.0}),
    "const-nopstd": dict(lr_schedule="constant", no_prompt_std=True),
    "const-nostd": dict(lr_schedule="constant", no_std=True),
}


def train(exp, variant, seed=0, tag="base", lambdas=None, no_prompt_std=False, no_std=False, **over):
    spec_ = dict(TAGS.get(tag, {}))
    lambdas = lambdas or spec_.pop("lambdas", None)
    no_prompt_std = no_prompt_std or spec_.pop("no_prompt_std", False)
    no_std = no_std or spec_.pop("no_std", False)
    over = {**spec_, **over}
    out = HERE / "heads" / (("real-" if REAL else "") + tag) / exp / f"{variant}-s{seed}"
    if (out / "model.safetensors").exists():
        return RewardHead.load(out)
    original = RewardHead.set_input_stats
    if no_prompt_std or no_std:
        def patched(self, pm, ps, rm, rs):
            original(self, pm, ps, rm, rs)
            with torch.no_grad():
                self.prompt_mean.zero_(); self.prompt_scale.fill_(1.0)
                if no_std:
                    self.response_mean.zero_(); self.response_scale.fill_(1.0)
        RewardHead.set_input_stats = patched
    s, lam = spec(exp)
    if lambdas:
        lam = {**lam, **lambdas}
    cfg = tconfig(seed=seed, **over)
    st = stores(exp)
    v = T.make_variant(variant, hidden_size=st.hidden_size, num_experts=s["num_experts"], lambdas=lam, config=cfg,
                       provenance={"backbone": st.cache_manifest["backbone"], "template_hash": st.cache_manifest["template_hash"]})
    try:
        head, curves = T.train_variant(v, store(exp, "train"), store(exp, "validation"), cfg, show_progress=False)
    finally:
        RewardHead.set_input_stats = original
    head.save(out, variant=variant)
    return head

def outputs(head, exp, split):
    st = store(exp, split)
    w, m = predict(head, st)
    order = st.order_by_pair_id()
    meta = st.metadata.take(order) if hasattr(st.metadata, "take") else st.metadata
    return w[order], m[order], meta

def states(exp, split):
    st = store(exp, split)
    order = st.order_by_pair_id()
    x = torch.from_numpy(st.read(0, len(st))[order].astype(np.float32))
    meta = st.metadata.take(order)
    return x, meta

def ms(values):
    a = np.asarray(values, dtype=float)
    return f"{a.mean():.4f} ± {a.std(ddof=1) if len(a) > 1 else 0:.4f}"
