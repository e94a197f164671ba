"""Row 2 (Fig. 7): where do undesired flips come from? attributes. usage: row2.py TAG SEEDS"""
import sys, os
import numpy as np, torch
from lib19 import *
from pipeline.steer import SteerConfig, steer_attributes, summarize, random_baseline

tag = sys.argv[1]; seeds = [int(s) for s in sys.argv[2:]] or [0, 1, 2]
exp = os.environ.get("EXP", "attributes")
cfg = SteerConfig()
out = {}
for variant in ("vanilla", "micro", "sparse"):
    for seed in seeds:
        head = train(exp, variant, seed, tag=tag)
        vw, vm, vmeta = outputs(head, exp, "validation")
        tw, tm, tmeta = outputs(head, exp, "test")
        vl = np.array(vmeta.column("attribute").to_pylist()); tl = np.array(tmeta.column("attribute").to_pylist())
        names, counts = np.unique(tl, return_counts=True)
        keep = ~np.isin(tl, [a for a, n in zip(names, counts) if n < cfg.min_pairs])
        tw, tm, tl = tw[keep], tm[keep], tl[keep]
        targets = metrics.target_experts(vw, vl, cfg.top_n)
        attrs = sorted(targets)
        # oracle target: the expert most accurate alone on the attribute's VALIDATION pairs
        oracle = {a: int(np.argmax((vm[vl == a] > 0).mean(0))) for a in attrs}
        base = summarize(steer_attributes(tw, tm, tl, targets, cfg.weights), cfg.weights)
        orc = summarize(steer_attributes(tw, tm, tl, oracle, cfg.weights), cfg.weights)
        rnd = summarize(random_baseline(tw, tm, tl, cfg), cfg.weights)
        # target expert's accuracy alone on the attribute's test pairs; best expert's
        tacc = np.mean([(tm[tl == a, targets[a]] > 0).mean() for a in attrs])
        oacc = np.mean([(tm[tl == a, oracle[a]] > 0).mean() for a in attrs])
        best = np.mean([(tm[tl == a] > 0).mean(0).max() for a in attrs])
        allexp = np.mean([(tm[tl == a] > 0).mean() for a in attrs])
        same = np.mean([targets[a] == oracle[a] for a in attrs])
        share = np.mean([np.mean(vl[metrics.top_examples(vw, targets[a], cfg.top_n)] == a) for a in attrs])
        n_distinct = len(set(targets.values()))
        # mass of the target expert on the attribute's bare test prompts; unsteered accuracy
        mass = np.mean([tw[tl == a, targets[a]].mean() for a in attrs])
        acc0 = metrics.accuracy(metrics.mixture_margin(tw, tm))
        # at w = 0 and w = 1: the removed-model accuracy
        rem = np.mean([(metrics.mixture_margin(metrics.steered_weights(tw[tl == a], targets[a], 0.0), tm[tl == a]) > 0).mean() for a in attrs])
        # UFR at w=1 decomposed: P(target wrong | removed right)
        r = out.setdefault(variant, [])
        r.append(dict(FR=base["flip_rate"], UFR=base["undesired_flip_rate"], UFR_w1=base["undesired_flip_rate_by_weight"]["1.0"],
                      FR_oracle=orc["flip_rate"], UFR_oracle=orc["undesired_flip_rate"],
                      FR_rand=rnd["flip_rate"], UFR_rand=rnd["undesired_flip_rate"],
                      target_acc=tacc, oracle_acc=oacc, best_acc=best, mean_expert_acc=allexp, target_is_oracle=same,
                      top100_share=share, distinct_targets=n_distinct, target_mass=mass, acc_unsteered=acc0, acc_removed=rem))
keys = list(out["sparse"][0])
print(f"tag {tag} seeds {seeds}")
for k in keys:
    print(f"{k:18}" + "".join(f"{v:>10}: {ms([r[k] for r in out[v]]):18}" for v in out))
