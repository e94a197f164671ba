"""Row 2, post hoc: the target expert's accuracy on its attribute's TRAIN rows vs TEST rows (fit vs generalize)."""
import sys, os
import numpy as np
from lib19 import *
from pipeline.steer import SteerConfig
tag = sys.argv[1]; seeds = [int(s) for s in sys.argv[2:]] or [0, 1, 2]
exp = os.environ.get("EXP", "attributes")
for variant in ("vanilla", "sparse"):
    rows = []
    for seed in seeds:
        head = train(exp, variant, seed, tag=tag)
        vw, vm, vmeta = outputs(head, exp, "validation")
        trw, trm, trmeta = outputs(head, exp, "train")
        tw, tm, tmeta = outputs(head, exp, "test")
        vl = np.array(vmeta.column("attribute").to_pylist()); trl = np.array(trmeta.column("attribute").to_pylist())
        tl = np.array(tmeta.column("attribute").to_pylist())
        targets = metrics.target_experts(vw, vl, 100)
        rows.append(dict(
            n_train_rows=np.mean([(trl == a).sum() for a in targets]),
            target_train=np.mean([(trm[trl == a, k] > 0).mean() for a, k in targets.items()]),
            target_val=np.mean([(vm[vl == a, k] > 0).mean() for a, k in targets.items()]),
            target_test=np.mean([(tm[tl == a, k] > 0).mean() for a, k in targets.items()]),
            mixture_train=np.mean([(metrics.mixture_margin(trw, trm)[trl == a] > 0).mean() for a in targets]),
            mixture_val=np.mean([(metrics.mixture_margin(vw, vm)[vl == a] > 0).mean() for a in targets])))
    print(f"{tag} {variant:8} " + "  ".join(f"{k} {ms([r[k] for r in rows])}" for k in rows[0]))
