"""DSiRe features: batched QR + r×r ``svdvals`` (labkit) vs the official per-matrix ``torch.svd_lowrank`` route.

Synthetic LoRAs with LoRA-WiSE shapes (Stable Diffusion 1.5 UNet attention: 16 transformer blocks of width 320,
640 or 1280, each with attn1/attn2 ``to_q, to_k, to_v, to_out``; attn2's ``to_k``/``to_v`` read the 768-wide
text embedding: 128 layers, 384 voters) and at the mini-jungle's scale (8 layers of the digit denoiser, r = 8).
The direct path is the official one with its BA defect corrected (spec §3, §6): for every model and layer,
``svd_lowrank(M, q=r)`` on A, on B and on the explicit ``d_out × d_in`` product B·A, in a Python loop. The
labkit path is ``labkit.methods.dsire.dsire_features`` on all models at once. Both run in this process with
the same thread count; prints seconds per model, the ratio and the largest relative difference of the features.

    python benchmarks/bench_dsire.py [--quick] [--threads 2] [--models 2] [--ranks 16 32]
"""

from __future__ import annotations

import argparse
import time

import torch

from labkit.methods.dsire import dsire_features

SD15_BLOCKS = [320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320]  # down, mid, up
TEXT_WIDTH = 768


def sd15_shapes(n_blocks: int = 16) -> dict[str, tuple[int, int]]:
    """``{layer: (d_out, d_in)}`` of the SD1.5 UNet attention projections LoRA-WiSE adapts."""
    shapes = {}
    for b, d in enumerate(SD15_BLOCKS[:n_blocks]):
        for attn in ("attn1", "attn2"):
            for proj in ("to_q", "to_k", "to_v", "to_out"):
                d_in = TEXT_WIDTH if attn == "attn2" and proj in ("to_k", "to_v") else d
                shapes[f"block{b}.{attn}.{proj}"] = (d, d_in)
    return shapes


def mini_shapes() -> dict[str, tuple[int, int]]:
    """The digit denoiser's 8 adapted layers (width 256, 64-pixel input and output)."""
    return {"inp": (256, 64), **{f"blocks.{i}.fc{j}": (256, 256) for i in range(3) for j in (1, 2)}, "out": (64, 256)}


def make_loras(shapes: dict[str, tuple[int, int]], n_models: int, r: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    A = {k: torch.randn(n_models, r, d_in, generator=g) / d_in**0.5 for k, (d_out, d_in) in shapes.items()}
    B = {k: torch.randn(n_models, d_out, r, generator=g) * 1e-2 for k, (d_out, d_in) in shapes.items()}
    return A, B


def direct_features(A: dict[str, torch.Tensor], B: dict[str, torch.Tensor], r: int) -> dict[str, torch.Tensor]:
    """The official route, per model and per matrix: ``svd_lowrank(M.float(), q=r)[1][:r]`` (BA as a plain 2-D product)."""
    n = next(iter(A.values())).shape[0]
    sA, sB, sBA = {}, {}, {}
    for layer in A:
        rows_a, rows_b, rows_ba = [], [], []
        for m in range(n):
            a, b = A[layer][m].float(), B[layer][m].float()
            rows_a.append(torch.svd_lowrank(a, q=r)[1][:r])
            rows_b.append(torch.svd_lowrank(b, q=r)[1][:r])
            rows_ba.append(torch.svd_lowrank(b @ a, q=r)[1][:r])
        sA[f"{layer}.down"], sB[f"{layer}.up"], sBA[layer] = (torch.stack(x) for x in (rows_a, rows_b, rows_ba))
    return {**{k: v for pair in zip(sA.items(), sB.items()) for k, v in pair}, **sBA}


def bench(name: str, shapes, n_models: int, r: int) -> None:
    A, B = make_loras(shapes, n_models, r)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    ref = direct_features(A, B, r)
    t_direct = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = dsire_features(A, B)
    t_ours = time.perf_counter() - t0
    assert list(ours) == list(ref)
    rel = max(((ours[k] - ref[k]).abs() / ref[k].abs().clamp_min(1e-12)).max().item() for k in ref)
    print(f"{name:34s} r={r:2d} {len(shapes):3d} layers × {n_models:3d} models: direct svd_lowrank "
          f"{t_direct / n_models:7.3f} s/model, labkit {t_ours / n_models:7.4f} s/model, "
          f"ratio {t_direct / t_ours:6.1f}x, max rel. diff {rel:.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 SD blocks (32 layers), 1 model, mini scale 20 models")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", type=int, default=2, help="models at LoRA-WiSE scale")
    ap.add_argument("--mini-models", type=int, default=100)
    ap.add_argument("--ranks", type=int, nargs="+", default=[16, 32])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    blocks, models, mini = (4, 1, 20) if args.quick else (16, args.models, args.mini_models)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for r in args.ranks:
        bench(f"LoRA-WiSE SD1.5 ({blocks} blocks)", sd15_shapes(blocks), models, r)
    bench("mini-jungle digit denoiser", mini_shapes(), mini, 8)


if __name__ == "__main__":
    main()
