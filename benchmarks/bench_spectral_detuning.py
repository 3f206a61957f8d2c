"""Spectral DeTuning: batched labkit.methods.spectral_detuning vs the official-style per-layer loop.

Synthetic LoWRA-style layers ``W'_i = W_P + B_i A_i`` (Gaussian·0.02 factors, float32, noise-free) recovered
in this process by (a) ``spectral_detuning_layers`` on all layers at once (default: the low-rank subspace
path), (b) the same with ``subspace=False`` (batched SVDs only) and (c) ``spectral_detuning_loop`` (one
``svd_lowrank`` per LoRA in Python, as the official code). The loop and (b) run on the first ``--loop-layers``
layers (the loop costs ~10 s per 768² layer) and are compared per layer. Threads are pinned identically.
Prints seconds per layer, the ratios, and W-Error (mean log10 MSE) of each and of the Mean-LoRA baseline.

    python benchmarks/bench_spectral_detuning.py [--quick] [--threads 2] [--layers 4] [--loop-layers 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from labkit.methods import spectral_detuning as sd


def make_layers(n_layers: int, d: int, n_loras: int, rank: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    W_P = torch.randn(n_layers, d, d, generator=g) * 0.02
    B = torch.randn(n_layers, n_loras, d, rank, generator=g) * 0.02
    A = torch.randn(n_layers, n_loras, rank, d, generator=g) * 0.02
    return W_P, W_P.unsqueeze(1) + B @ A


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="256x256 layers, 100 iterations")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--loras", type=int, default=5)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--layers", type=int, default=4, help="layers the batched version recovers at once")
    ap.add_argument("--loop-layers", type=int, default=1, help="layers the loop (and plain batched) recover")
    args = ap.parse_args()
    if args.quick:
        args.d, args.iters, args.layers = 256, 100, 2
    torch.set_num_threads(args.threads)
    n_loop = min(args.loop_layers, args.layers)
    W_P, merged = make_layers(args.layers, args.d, args.loras, args.rank)
    kw = {"end_rank": args.rank, "n_iters": args.iters}

    torch.manual_seed(0)
    t0 = time.perf_counter()
    fast = sd.spectral_detuning_layers(merged, **kw)
    fast_s = (time.perf_counter() - t0) / args.layers

    torch.manual_seed(0)
    t0 = time.perf_counter()
    plain = sd.spectral_detuning_layers(merged[:n_loop], subspace=False, **kw)
    plain_s = (time.perf_counter() - t0) / n_loop

    torch.manual_seed(0)
    t0 = time.perf_counter()
    loop = torch.stack([sd.spectral_detuning_loop(merged[k], **kw).W_star for k in range(n_loop)])
    loop_s = (time.perf_counter() - t0) / n_loop

    print(f"Spectral DeTuning, {args.d}x{args.d} layers, {args.loras} LoRAs of rank {args.rank}, "
          f"{args.iters} iterations, {args.threads} threads; batched on {args.layers} layers, "
          f"plain batched and loop on {n_loop}")
    print(f"  batched (subspace={fast.subspace}): {fast_s:.2f} s/layer   W-Error {sd.w_error(fast.W_star, W_P):.3f}"
          f"  converged {sd.converged_share(fast.W_star, W_P):.0%}")
    print(f"  batched (subspace=False): {plain_s:.2f} s/layer   W-Error {sd.w_error(plain.W_star, W_P[:n_loop]):.3f}")
    print(f"  loop (official-style):    {loop_s:.2f} s/layer   W-Error {sd.w_error(loop, W_P[:n_loop]):.3f}")
    print(f"  Mean LoRA baseline:                        W-Error {sd.w_error(sd.mean_lora(merged), W_P):.3f}")
    print(f"  ratio loop / batched: {loop_s / fast_s:.1f}x   (loop / plain batched: {loop_s / plain_s:.1f}x)")


if __name__ == "__main__":
    main()
