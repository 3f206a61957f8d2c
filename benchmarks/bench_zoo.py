"""Models per minute for digit-trees children: batched (labkit.training.fit_batched) vs the one-at-a-time loop.

Both train the same children (same root weights, classes, hyper-parameters, batches and augmentation, sampled
exactly as the digit-trees recipe samples them) in this process; the loop uses ``torch.optim.AdamW`` on a plain
module (``fit_loop``). Prints models/min for each and their ratio (target ≥ 5× on 2 CPU cores), and the largest
weight difference between the two (they compute the same thing).

    python benchmarks/bench_zoo.py [--children 32] [--loop 8] [--threads 2] [--arch mlp]
"""

from __future__ import annotations

import argparse
import time

import torch

from labkit.data import load_digits_split
from labkit.training import fit_batched, fit_loop, init_states, stack_states
from labkit.zoo.recipes import digit_trees


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--children", type=int, default=32, help="children trained in one batch")
    ap.add_argument("--loop", type=int, default=8, help="how many of them the loop trains (it is slow)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--arch", default="mlp", choices=["mlp", "cnn"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    data = load_digits_split()
    X, y = data.X_train, data.y_train
    cfg = digit_trees.settings("workshop")
    make = lambda: digit_trees.make_architecture(args.arch)  # noqa: E731
    root = init_states(make, [0])[0]
    samples = [digit_trees._sample(cfg, f"bench-c{j:03d}", lora=False) for j in range(args.children)]
    hps = [s["hparams"] for s in samples]
    subsets = [torch.nonzero(torch.isin(y, torch.tensor(s["classes"]))).flatten() for s in samples]
    kw = {"epochs": [h["epochs"] for h in hps], "lr": [h["lr"] for h in hps],
          "weight_decay": [h["weight_decay"] for h in hps], "seeds": [h["seed"] for h in hps],
          "shift": [h["augment_shift"] for h in hps], "noise": [h["augment_noise"] for h in hps]}

    t0 = time.perf_counter()
    params, _ = fit_batched(make(), stack_states([root] * args.children), X, y, subsets,
                            batch_size=cfg.batch_size, **kw)
    batched_s = time.perf_counter() - t0

    n_loop = min(args.loop, args.children)
    t0 = time.perf_counter()
    err = 0.0
    for k in range(n_loop):
        ref = fit_loop(make(), root, X, y, subsets[k], batch_size=cfg.batch_size,
                       **{"seed" if n == "seeds" else n: v[k] for n, v in kw.items()})
        err = max(err, *((ref[n] - params[n][k]).abs().max().item() for n in ref))
    loop_s = time.perf_counter() - t0

    # the loop trained the first n_loop children; scale by their share of the total optimiser steps
    steps = [e * (len(s) // cfg.batch_size) for e, s in zip(kw["epochs"], subsets)]
    loop_per_model = loop_s / n_loop
    loop_all_s = loop_s * sum(steps) / sum(steps[:n_loop])
    batched_rate = 60 * args.children / batched_s
    loop_rate = 60 * args.children / loop_all_s
    print(f"digit-trees children ({args.arch}, {args.threads} threads): batched {args.children} models in "
          f"{batched_s:.2f} s = {batched_rate:.0f} models/min; loop {loop_per_model:.3f} s/model "
          f"= {loop_rate:.0f} models/min (step-weighted); ratio {batched_rate / loop_rate:.1f}x; "
          f"max |batched - loop| = {err:.1e}")


if __name__ == "__main__":
    main()
