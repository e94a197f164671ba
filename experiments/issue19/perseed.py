import sys
from lib19 import *
tag, exp = sys.argv[1], sys.argv[2]
for variant in sys.argv[3:]:
    vals = []
    for seed in (0, 1, 2):
        p = HERE / "heads" / tag / exp / f"{variant}-s{seed}"
        if not (p / "model.safetensors").exists():
            continue
        w, m, _ = outputs(RewardHead.load(p), exp, "test")
        vals.append(round(metrics.accuracy(metrics.mixture_margin(w, m)), 4))
    print(tag, variant, vals)
