"""Row 3: accuracy cost of sparsity on categories. usage: row3.py TAG [VARIANTS...]"""
import sys
import numpy as np
from lib19 import *
tag = sys.argv[1]; variants = sys.argv[2:] or ["single", "vanilla", "micro", "sparse"]
exp = "categories"
for variant in variants:
    rows = []
    for seed in (0, 1, 2):
        head = train(exp, variant, seed, tag=tag)
        w, m, meta = outputs(head, exp, "test")
        trw, trm, _ = outputs(head, exp, "train")
        acc = metrics.accuracy(metrics.mixture_margin(w, m))
        tracc = metrics.accuracy(metrics.mixture_margin(trw, trm))
        home = w.argmax(1)
        # accuracy if each prompt used only its top expert (hard routing), and best expert alone
        hard = (m[np.arange(len(m)), home] > 0).mean()
        best = (m > 0).mean(0).max()
        rows.append(dict(test=acc, train=tracc, hard_top1=hard, best_expert=best,
                         routing_entropy=metrics.routing_entropy(w) if w.shape[1] > 1 else 0.0,
                         corr=metrics.expert_correlation(m) if m.shape[1] > 1 else float("nan")))
    print(f"{tag:14} {variant:8} " + "  ".join(f"{k} {ms([r[k] for r in rows])}" for k in rows[0]))
