"""Row 1 M1.2: Hedge dynamics per epoch (n = 50, draw seed 0), users. usage: row1_dyn.py TAG SEEDS"""
import sys, copy, json
import numpy as np, torch
from lib19 import *
from pipeline.personalize import PersonalizeConfig, split_groups
from pipeline.adaptation import AdaptConfig, hedge_log_targets, pair_accuracy

tag = sys.argv[1]; seeds = [int(s) for s in sys.argv[2:]] or [0, 1, 2]
exp = "users"
x, meta = states(exp, "test")
labels = np.array(meta.column("user").to_pylist())
groups, _ = split_groups(labels, PersonalizeConfig())
cfg = AdaptConfig()
for variant in ("vanilla", "sparse"):
    agg = {}
    for seed in seeds:
        head = train(exp, variant, seed, tag=tag)
        for g, (group, (pool, ev)) in enumerate(groups.items()):
            rows = pool[np.random.default_rng([0, g, 50]).choice(len(pool), size=50, replace=False)]
            ad = copy.deepcopy(head).eval()
            for p in ad.parameters(): p.requires_grad_(False)
            for p in ad.router.parameters(): p.requires_grad_(True)
            P, C, R = x[rows, 0], x[rows, 1], x[rows, 2]
            with torch.no_grad():
                _, margins = ad.pair_outputs(P, C, R)
                w0 = ad.log_weights(x[ev, 0]).exp()
            opt = torch.optim.Adam(ad.router.parameters(), lr=cfg.lr)
            gen = torch.Generator().manual_seed(0)
            for epoch in range(cfg.epochs):
                with torch.no_grad():
                    lw = ad.log_weights(P)
                    tgt = hedge_log_targets(lw, margins, cfg.tau).exp()
                    agree = (tgt.argmax(1) == lw.argmax(1)).float().mean().item()
                    tmax = tgt.max(1).values.mean().item()
                    # is the target's expert right on the pair? (a per-pair oracle)
                    tgt_right = (margins.gather(1, tgt.argmax(1, keepdim=True)) > 0).float().mean().item()
                gn = []
                for idx in torch.randperm(50, generator=gen).split(cfg.batch_size):
                    loss = -(tgt[idx] * ad.log_weights(P[idx])).sum(-1).mean()
                    opt.zero_grad(); loss.backward()
                    gn.append(torch.sqrt(sum((p.grad ** 2).sum() for p in ad.router.parameters())).item())
                    opt.step()
                with torch.no_grad():
                    w = ad.log_weights(x[ev, 0]).exp()
                acc = pair_accuracy(ad, *x[ev].unbind(1))[0]
                d = agg.setdefault(epoch, [])
                d.append(dict(agree=agree, tmax=tmax, tgt_right=tgt_right, grad=np.mean(gn),
                              dpi=(w - w0).abs().sum(1).mean().item() / 2,
                              home_kept=(w.argmax(1) == w0.argmax(1)).float().mean().item(), acc=acc))
            d0 = agg.setdefault("before", [])
            d0.append(dict(acc=pair_accuracy(head, *x[ev].unbind(1))[0]))
    print(f"== {variant} (tag {tag}, seeds {seeds}; mean over seeds x users)")
    print("  before acc %.4f" % np.mean([d["acc"] for d in agg["before"]]))
    for epoch in range(cfg.epochs):
        d = agg[epoch]
        print("  epoch %d: target==router argmax %.2f, target max %.3f, target expert right %.2f, grad %.3f, "
              "TV(pi,pi0) %.3f, home kept %.2f, acc %.4f" % (epoch + 1, *[np.mean([r[k] for r in d]) for k in
              ("agree", "tmax", "tgt_right", "grad", "dpi", "home_kept", "acc")]))
