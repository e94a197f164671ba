"""Row 1 (Table 13): span, home advantage, Hedge dynamics on users. usage: row1.py TAG SEEDS..."""
import sys, os, copy, json
import numpy as np, torch
from lib19 import *
from pipeline.personalize import PersonalizeConfig, split_groups
from pipeline.adaptation import AdaptConfig, adapt, hedge_log_targets, pair_accuracy
from sklearn.linear_model import LogisticRegression

tag = sys.argv[1]; seeds = [int(s) for s in sys.argv[2:]] or [0, 1, 2]
over = json.loads(open(HERE / f"tag-{tag}.json").read()) if (HERE / f"tag-{tag}.json").exists() else {}
exp = os.environ.get("EXP", "users")
x, meta = states(exp, "test")
labels = np.array(meta.column("user").to_pylist())
_pp = {k: v for k, v in PARAMS.get("personalize", {}).items() if k in ("sizes", "seeds", "eval_fraction", "split_seed", "split", "min_pairs")}
pc = PersonalizeConfig(**_pp)
N = pc.sizes[-1]
groups, skipped = split_groups(labels, pc)
res = {}
for variant in ("vanilla", "micro", "sparse"):
    for seed in seeds:
        head = train(exp, variant, seed, tag=tag, **over)
        with torch.no_grad():
            logw, marg = head.pair_outputs(x[:, 0], x[:, 1], x[:, 2])
        W, M = logw.exp().double().numpy(), marg.double().numpy()
        home = W.argmax(1)
        K = W.shape[1]
        # M1.3 home advantage over all test pairs: expert k's accuracy on prompts routed to it vs elsewhere
        adv = []
        for k in range(K):
            mine = home == k
            if mine.sum() >= 5 and (~mine).sum() >= 5:
                adv.append((M[mine, k] > 0).mean() - (M[~mine, k] > 0).mean())
        # per-expert accuracy over all test pairs
        for g, (group, (pool, ev)) in enumerate(groups.items()):
            before = metrics.accuracy(metrics.mixture_margin(W[ev], M[ev]))
            per_exp = (M[ev] > 0).mean(0)
            # fixed mixture upper bound: logistic regression on margins fit on eval pairs (no intercept,
            # both label orientations so the classes are balanced)
            Xe = np.concatenate([M[ev], -M[ev]]); ye = np.r_[np.ones(len(ev)), np.zeros(len(ev))]
            lr = LogisticRegression(C=1.0, fit_intercept=False, max_iter=2000).fit(Xe, ye)
            mix = ((M[ev] @ lr.coef_[0]) > 0).mean()
            # also: the mixture fit on the POOL (what an ideal fixed-weight adaptation could reach)
            Xp = np.concatenate([M[pool], -M[pool]]); yp = np.r_[np.ones(len(pool)), np.zeros(len(pool))]
            lrp = LogisticRegression(C=1.0, fit_intercept=False, max_iter=2000).fit(Xp, yp)
            mixp = ((M[ev] @ lrp.coef_[0]) > 0).mean()
            # Hedge n = 50, seeds 0..2 as personalize does; dynamics per epoch on seed 0 draw
            hedge = []
            for j in pc.seeds:
                rows = pool[np.random.default_rng([j, g, N]).choice(len(pool), size=N, replace=False)]
                ad = adapt(head, x[rows, 0], x[rows, 1], x[rows, 2], AdaptConfig(seed=j))
                hedge.append(pair_accuracy(ad, *x[ev].unbind(1))[0])
            r = res.setdefault((variant, group), [])
            r.append(dict(before=before, best_expert=per_exp.max(), mix_eval=mix, mix_pool=mixp,
                          hedge=float(np.mean(hedge)), home_adv=float(np.mean(adv)) if adv else float("nan"),
                          routing_entropy=metrics.routing_entropy(W), n_home=len(set(home.tolist()))))
print(f"tag {tag} seeds {seeds}")
keys = ["before", "hedge", "best_expert", "mix_pool", "mix_eval", "home_adv", "routing_entropy", "n_home"]
print("variant  " + "  ".join(f"{k:>16}" for k in keys))
for variant in ("vanilla", "micro", "sparse"):
    # mean over users per seed, then mean ± std over seeds
    rows = [res[(variant, g)] for g in groups]
    per_seed = {k: [np.mean([rows[u][s][k] for u in range(len(rows))]) for s in range(len(seeds))] for k in keys}
    print(f"{variant:8} " + "  ".join(f"{ms(per_seed[k]):>16}" for k in keys))
    gain = [h - b for h, b in zip(per_seed["hedge"], per_seed["before"])]
    print(f"{'':8} hedge gain {ms(gain)}")
