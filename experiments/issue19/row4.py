"""Row 4: description fidelity per variant; how much of an expert's top-20 it owns.
usage: row4.py TAG EXPERIMENT JUDGESPEC SEEDS...   (JUDGESPEC keywords | hf)"""
import sys
import numpy as np
from lib19 import *
from pipeline import pairs as P
from pipeline.interpret import InterpretConfig, make_backends, describe_from_weights, fidelity, _distinct, top_prompts

tag, exp, spec_ = sys.argv[1], sys.argv[2], sys.argv[3]; seeds = [int(s) for s in sys.argv[4:]] or [0, 1, 2]
backend = "keywords" if spec_ == "keywords" else "hf:" + str(ROOT / "data/backbone")
import os
cfg = InterpretConfig(describer=backend, judge=backend, device="cpu", top_n=int(os.environ.get("TOPN", "20")))
describer, judge = make_backends(cfg)
val, test = store(exp, "validation"), store(exp, "test")
texts = P.prompt_texts(ROOT / "data/prepared" / spec(exp)[0]["dataset"] / "pairs.parquet", set(val.pair_ids) | set(test.pair_ids))
res = {}
for variant in ("vanilla", "micro", "sparse"):
    for seed in seeds:
        head = train(exp, variant, seed, tag=tag)
        vw, _ = predict(head, val)
        desc, tops = describe_from_weights(vw, val.pair_ids, texts, describer, cfg.top_n)
        # owned share: of each expert's top-20 distinct val prompts, how many route to it by argmax
        vrows = _distinct(val.pair_ids, texts)
        own_of = {texts[val.pair_ids[i]]: int(vw[i].argmax()) for i in vrows}
        owned = np.mean([np.mean([own_of[t["text"]] == k for t in top]) for k, top in enumerate(tops)])
        n_val = len(vrows)
        tw, _ = predict(head, test)
        rows = _distinct(test.pair_ids, texts)
        fid = fidelity(tw[rows], [texts[test.pair_ids[i]] for i in rows], desc, judge, cfg)
        yes = np.mean([np.mean(z) for z in fid.judgments])
        res.setdefault(variant, []).append(dict(DF=fid.overall, DF_random=fid.random_overall, owned_top20=owned,
                                                yes_rate=yes, n_val_prompts=n_val, n_test_prompts=len(rows)))
        if seed == seeds[0]:
            print(variant, seed, [d[:60] for d in desc])
print(f"tag {tag} exp {exp} judge {spec_} seeds {seeds}")
for k in res["sparse"][0]:
    print(f"{k:15}" + "".join(f"{v:>9}: {ms([r[k] for r in res[v]]):18}" for v in res))
