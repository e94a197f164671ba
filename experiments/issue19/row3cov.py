"""coverage / purity / specialization for categories heads of a tag (as evaluate computes them)."""
import sys
import numpy as np
from lib19 import *
tag = sys.argv[1]
exp = "categories"
for variant in ("vanilla", "micro", "sparse"):
    rows = []
    for seed in (0, 1, 2):
        p = HERE / "heads" / tag / exp / f"{variant}-s{seed}"
        head = RewardHead.load(p)
        vw, vm, vmeta = outputs(head, exp, "validation")
        tw, tm, tmeta = outputs(head, exp, "test")
        vc = np.array(vmeta.column("category").to_pylist()); tc = np.array(tmeta.column("category").to_pylist())
        assigned = metrics.assign_categories(vw, vc, 50)
        cov = metrics.category_coverage(assigned, tc)
        pur, _ = metrics.expert_purity(tw, tc, assigned, 50)
        spec_, _ = metrics.category_specialization(tm, tc, assigned)
        rows.append(dict(coverage=cov, purity=pur, specialization=spec_, routing_entropy=metrics.routing_entropy(tw),
                         accuracy=metrics.accuracy(metrics.mixture_margin(tw, tm))))
    print(f"{tag:8} {variant:8} " + "  ".join(f"{k} {ms([r[k] for r in rows])}" for k in rows[0]))
