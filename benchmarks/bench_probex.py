"""ProbeX: training on a pre-extracted layer tensor vs reading one file per model per step (spec §6).

Writes ``--models`` synthetic checkpoints (``model.safetensors``, ``--layers`` matrices of ``--d``×``--d`` each,
like one model of a tree) to a temporary folder, then trains the same ProbeX (same seed, same batches) twice in
this process:

(a) **per-file**, as the official loader does: every step opens the file of every model in the batch and reads
    the one tensor (``safetensors.safe_open(...).get_tensor``, memory-mapped);
(b) **pre-extracted**: read the layer of every model once into ``X [N, d, d]`` (timed too), then index it.

Both runs end with the same weights (checked). Prints seconds for each and the ratio. The files sit in the page
cache after the first epoch, so this is the *best case* for (a); on a cold disk with 350 MB ViT checkpoints the
gap is far larger. Timings on a shared CPU are noisy: compare the ratio, not the seconds.

Measured on an idle 2-core CPU (defaults): 1.6–1.7 s per-file against 0.66 s pre-extracted (2.5×), identical
weights; ``--quick``: 0.25 s against 0.10 s (2.5×). With warm, small files the per-step file opens cost about
0.1 ms each and the ProbeX compute dominates; the gain grows with file size, cold storage and the number of epochs
(the official 500 epochs × ~700 models reopen 350 k files per layer).

    python benchmarks/bench_probex.py [--quick] [--threads 2] [--models 256] [--d 128] [--layers 8] [--epochs 20]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.nn import functional as F

from labkit.methods import probex as px


def write_zoo(root: Path, n: int, d: int, layers: int, seed: int = 0) -> tuple[list[Path], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    paths, Y = [], torch.zeros(n, 10)
    for i in range(n):
        Y[i, torch.randperm(10, generator=g)[:5]] = 1
        tensors = {f"layer.{j}.weight": torch.randn(d, d, generator=g) for j in range(layers)}
        path = root / f"model_{i:04d}" / "model.safetensors"
        path.parent.mkdir(parents=True)
        save_file(tensors, str(path))
        paths.append(path)
    return paths, Y


def read_layer(path: Path, name: str) -> torch.Tensor:
    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(name)


def train(get_batch, n: int, Y: torch.Tensor, d: int, epochs: int, batch_size: int, seed: int = 0):
    torch.manual_seed(seed)
    model = px.ProbeXClassifier(d, d, Y.shape[1], n_probes=32, proj_dim=32, rep_dim=64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=g).split(batch_size):
            loss = F.binary_cross_entropy_with_logits(model(get_batch(idx)), Y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="64 models, 5 epochs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", type=int, default=256)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--layers", type=int, default=8, help="matrices per checkpoint (the file holds all of them)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()
    if args.quick:
        args.models, args.epochs = 64, 5
    torch.set_num_threads(args.threads)
    name = f"layer.{args.layers // 2}.weight"
    with tempfile.TemporaryDirectory() as tmp:
        paths, Y = write_zoo(Path(tmp), args.models, args.d, args.layers)
        warm = torch.stack([read_layer(p, name) for p in paths])
        train(lambda idx: warm[idx], args.models, Y, args.d, 1, args.batch_size)  # warm-up, untimed

        t0 = time.perf_counter()
        slow = train(lambda idx: torch.stack([read_layer(paths[i], name) for i in idx.tolist()]), args.models, Y,
                     args.d, args.epochs, args.batch_size)
        per_file_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        X = torch.stack([read_layer(p, name) for p in paths])  # pre-extract once
        extract_s = time.perf_counter() - t0
        fast = train(lambda idx: X[idx], args.models, Y, args.d, args.epochs, args.batch_size)
        pre_s = time.perf_counter() - t0

    same = all(torch.equal(a, b) for a, b in zip(slow.state_dict().values(), fast.state_dict().values()))
    print(f"{args.models} models × {args.layers} layers of {args.d}×{args.d}, {args.epochs} epochs, "
          f"batch {args.batch_size}, {args.threads} threads")
    print(f"one file per model per step: {per_file_s:7.2f} s")
    print(f"pre-extracted [N, d_H, d_W]: {pre_s:7.2f} s (of which extraction {extract_s:.2f} s)")
    print(f"ratio (per-file / pre-extracted): {per_file_s / pre_s:.1f}×   identical final weights: {same}")


if __name__ == "__main__":
    main()
