"""Row 1, follow-up diagnostics on users (n = 50, draws as personalize): (a) the Hedge targets vs the user's
best expert on the pool; (b) accuracy on the adaptation pairs themselves after Hedge (memorization);
(c) Hedge with only the router's output bias trained (an input-independent adaptation; diagnostic only).
usage: row1b.py TAG SEEDS"""
import sys, os, copy
import numpy as np, torch
from lib19 import *
from pipeline.personalize import PersonalizeConfig, split_groups
from pipeline.adaptation import AdaptConfig, adapt, hedge_log_targets, pair_accuracy, hedge_adapt

tag = sys.argv[1]; seeds = [int(s) for s in sys.argv[2:]] or [0, 1, 2]
exp = os.environ.get("EXP", "users")
x, meta = states(exp, "test")
labels = np.array(meta.column("user").to_pylist())
_pp = {k: v for k, v in PARAMS.get("personalize", {}).items() if k in ("sizes", "seeds", "eval_fraction", "split_seed", "split", "min_pairs")}
pc = PersonalizeConfig(**_pp)
N = pc.sizes[-1]
groups, _ = split_groups(labels, pc)

def bias_only(head, P, C, R, cfg):
    ad = copy.deepcopy(head).eval()
    for p in ad.parameters(): p.requires_grad_(False)
    out = ad.router.net[-1] if isinstance(ad.router.net, torch.nn.Sequential) else ad.router.net
    out.bias.requires_grad_(True)
    with torch.no_grad(): _, margins = ad.pair_outputs(P, C, R)
    opt = torch.optim.Adam([out.bias], lr=cfg.lr); gen = torch.Generator().manual_seed(cfg.seed)
    for _ in range(cfg.epochs):
        with torch.no_grad(): tg = hedge_log_targets(ad.log_weights(P), margins, cfg.tau).exp()
        for idx in torch.randperm(len(P), generator=gen).split(cfg.batch_size):
            loss = -(tg[idx] * ad.log_weights(P[idx])).sum(-1).mean()
            opt.zero_grad(); loss.backward(); opt.step()
    return ad

for variant in ("vanilla", "micro", "sparse"):
    rows = []
    for seed in seeds:
        head = train(exp, variant, seed, tag=tag)
        for g, (group, (pool, ev)) in enumerate(groups.items()):
            with torch.no_grad():
                _, mp = head.pair_outputs(x[pool, 0], x[pool, 1], x[pool, 2])
            best = int((mp > 0).float().mean(0).argmax())
            before = pair_accuracy(head, *x[ev].unbind(1))[0]
            for j in pc.seeds:
                r = pool[np.random.default_rng([j, g, N]).choice(len(pool), size=N, replace=False)]
                P, C, R = x[r, 0], x[r, 1], x[r, 2]
                with torch.no_grad():
                    lw, m = head.pair_outputs(P, C, R)
                    tg = hedge_log_targets(lw, m, 1e-3).exp().argmax(1)
                cfg = AdaptConfig(seed=j)
                ad = adapt(head, P, C, R, cfg)
                bo = bias_only(head, P, C, R, cfg)
                rows.append(dict(target_is_best=(tg == best).float().mean().item(),
                                 adapt_set_before=pair_accuracy(head, P, C, R)[0],
                                 adapt_set_after=pair_accuracy(ad, P, C, R)[0],
                                 eval_gain_hedge=pair_accuracy(ad, *x[ev].unbind(1))[0] - before,
                                 eval_gain_bias_only=pair_accuracy(bo, *x[ev].unbind(1))[0] - before,
                                 seed=seed))
    per_seed = {k: [np.mean([r[k] for r in rows if r["seed"] == s]) for s in seeds] for k in rows[0] if k != "seed"}
    print(f"{tag} {variant:8} " + "  ".join(f"{k} {ms(v)}" for k, v in per_seed.items()))
