"""Row 4 M4.1: does the hf judge (SmolLM2 instruct at data/backbone) separate the known categories?"""
import sys, json, collections
import numpy as np, pyarrow.parquet as pq
from lib19 import ROOT
from pipeline.describers import make_backend

rows = pq.read_table(ROOT / "data/prepared/categories/pairs.parquet").to_pylist()
by = {}
for r in rows:
    if r["split"] == "test":
        text = r["prompt"][-1]["content"] if isinstance(r["prompt"], list) else r["prompt"]
        by.setdefault(text, r["category"])
texts = sorted(by); cats = np.array([by[t] for t in texts])
rng = np.random.default_rng(0)
pick = np.sort(rng.choice(len(texts), size=min(int(os.environ.get("NPROMPTS", "120")), len(texts)), replace=False))
texts = [texts[i] for i in pick]; cats = cats[pick]
DESC = {"Academic": "asks about an academic topic in science, history or philosophy",
        "Professional": "asks for advice on a legal, medical, workplace or financial problem",
        "Cooking": "asks about cooking, baking or a recipe",
        "Fiction": "asks about a fictional story, book, film or series"}
judge = make_backend("hf:" + str(ROOT / "data/backbone"), max_new_tokens=48, device="cpu")
print("YES rate: rows = description, columns = true category (n per column)")
names = sorted(DESC)
print(" " * 14 + "".join(f"{c:>14}" for c in names))
print(" " * 14 + "".join(f"{int((cats == c).sum()):>14}" for c in names))
aucs = []
for d in names:
    s = judge.judge_scores(DESC[d], texts)
    z = s > 0
    print(f"{d:14}" + "".join(f"{z[cats == c].mean():14.2f}" for c in names))
    # score separation independent of the 0 threshold: AUC of the logit difference for the matching category
    pos, neg = s[cats == d], s[cats != d]
    auc = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    corr = np.corrcoef(z.astype(float), (cats == d).astype(float))[0, 1] if z.std() > 0 else 0.0
    aucs.append(auc)
    print(f"{'':14} AUC(logit YES-NO, matching) {auc:.3f}; corr(z, match) {corr:.3f}")
print("mean AUC", np.mean(aucs))
