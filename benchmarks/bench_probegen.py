"""ProbeGen: batched probe responses (torch.func.vmap) vs the official per-network loop, and FLOPs per network.

Random zoo networks (SIRENs 2→32→32→1 as in MNIST-INR; 3-conv CNNs of width 16 on 8×8 inputs as in the cnn-zoo)
answer ``T`` probes, in this process, (a) with ``Networks.responses`` (one ``vmap(functional_call)`` per
architecture group), (b) for SIRENs also with ``siren_probe_responses`` (three batched matmuls), and (c) with
``responses_loop`` (one ``nn.Module`` call per network, as the official code). Each is timed forward + backward to
the probes (one training step's zoo work) and forward only (evaluation, synthetic-probe caching), on a training
batch of 32 networks and on a whole zoo of ``--zoo`` networks. Threads are pinned identically. Prints the ratios
loop / batched.

Measured on an idle 2-core CPU (``--quick``: 256 networks, 128 probes), loop / batched: SIRENs 5.1× (vmap) and
6.7× (bmm) for a training batch of 32 forward + backward, 9.0× / 10.1× for 256 SIRENs forward + backward, 3.8× /
8.6× and 6.6× / 6.7× forward only; CNNs 3.6× (batch of 32, forward + backward), 3.0× for 256, and 1.8–2.1×
forward only, where vmap becomes one grouped convolution (one group per network), which is slow on a CPU (an
unfold + bmm version was slower still). The 10× target is therefore reached on a CPU only for SIRENs at zoo
scale: once a few dozen networks are batched, the arithmetic (the sines, the convolutions) and not the Python loop
dominates. The loop's cost is per-call overhead, much larger on a GPU (kernel launches); a GPU measurement is
still missing (this task had no GPU).
FLOPs per network match reference §6: 0.88 MFLOP per INR (T = 128), 57.8 MFLOP per CIFAR10-GS CNN; 2,400–17,000× less than the
graph/equivariant metanetworks' per-INR figures (which use resized ~6 M-parameter configs, so the ratio overstates
the paper's 30–1000×).

FLOPs (``torch.utils.flop_counter``: 2 × multiply-adds of matmuls and convolutions; sin/tanh not counted) per
classified network: the probes through the network plus the 6-layer head, for our zoos and for the paper's
CIFAR10-GS CNN (32×32 inputs), next to the per-INR cost of graph/equivariant metanetworks quoted in
reference/probegen.md §6 (NFN 2.58, NFT 10.6, NG-GNN 2.13, NG-T 14.82 GFLOP; resized ~6 M-parameter configs).

    python benchmarks/bench_probegen.py [--quick] [--threads 2] [--probes 128] [--zoo 1024]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from labkit.methods import probegen as pg
from labkit.models import make_cnn, make_siren
from labkit.training import init_states, stack_states

GRAPH_GFLOP_PER_INR = {"NFN": 2.58, "NFT": 10.6, "NG-GNN": 2.13, "NG-T": 14.82}


def _zoo(make, n):
    states = init_states(make, range(n))
    modules = []
    for s in states:
        m = make()
        m.load_state_dict(s)
        modules.append(m.eval())
    return pg.Networks([pg.NetGroup(make().eval(), stack_states(states))]), modules


def _time(fn, probes, repeats, backward=True):
    best = float("inf")
    for _ in range(repeats):
        P = probes.detach().clone().requires_grad_(backward)
        t0 = time.perf_counter()
        with torch.set_grad_enabled(backward):
            y = fn(P)
            if backward:
                y.square().sum().backward()
        best = min(best, time.perf_counter() - t0)
    return best


def _flops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


class _PaperCNN(nn.Module):
    """The CIFAR10-GS network: 3 convs 1→16→16→16 (k3, s2, p1) on 32×32, pooling, fc 16→10 (for FLOPs only)."""

    def __init__(self):
        super().__init__()
        self.convs = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU(),
                                   nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU())
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.convs(x).mean((2, 3)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a zoo of 256 networks, fewer repeats")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--probes", type=int, default=128)
    ap.add_argument("--zoo", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if args.quick:
        args.zoo, args.repeats = 256, 2
    torch.set_num_threads(args.threads)
    T = args.probes
    print(f"ProbeGen probe responses (forward, or forward + backward to the probes), {T} probes, {args.threads} threads "
          f"(best of {args.repeats})")

    sirens, siren_modules = _zoo(make_siren, args.zoo)
    cnns, cnn_modules = _zoo(lambda: make_cnn(16, 3, "relu"), args.zoo)
    P_inr = pg.uniform_coordinates(T)
    P_img = torch.rand(T, 1, 8, 8) * 2 - 1
    params = sirens.groups[0].params
    stacked = [params[f"seq.{i}.{k}"] for i in range(3) for k in ("weight", "bias")]
    for B, backward in ((32, True), (32, False), (args.zoo, True), (args.zoo, False)):
        what = f"x{B:<5d} {'fwd+bwd' if backward else 'fwd    '}"
        idx = torch.arange(B)
        sub = [p[:B] for p in stacked]
        loop = _time(lambda P, B=B: pg.responses_loop(siren_modules[:B], P), P_inr, args.repeats, backward)
        vm = _time(lambda P, idx=idx: sirens.responses(P, idx), P_inr, args.repeats, backward)
        mm = _time(lambda P, sub=sub: pg.siren_probe_responses(*sub, P), P_inr, args.repeats, backward)
        print(f"  SIREN {what}: loop {loop * 1e3:8.1f} ms   vmap {vm * 1e3:7.1f} ms ({loop / vm:5.1f}x)   "
              f"bmm {mm * 1e3:7.1f} ms ({loop / mm:5.1f}x)")
        loop = _time(lambda P, B=B: pg.responses_loop(cnn_modules[:B], P), P_img, args.repeats, backward)
        vm = _time(lambda P, idx=idx: cnns.responses(P, idx), P_img, args.repeats, backward)
        print(f"  CNN   {what}: loop {loop * 1e3:8.1f} ms   vmap {vm * 1e3:7.1f} ms ({loop / vm:5.1f}x)")

    print("FLOPs per classified network (probes through the network + 6-layer head; generator amortised):")
    rows = []
    for name, net, probes, c_out in (("INR (MNIST-INR SIREN)", siren_modules[0], P_inr, 1),
                                     ("cnn-zoo CNN, 8x8", cnn_modules[0], P_img, 10),
                                     ("CIFAR10-GS CNN, 32x32", _PaperCNN(), torch.rand(T, 1, 32, 32), 10)):
        head = pg.make_head(T * c_out, 10 if c_out == 1 else 1)
        with torch.no_grad():
            f_net = _flops(lambda net=net, probes=probes: net(probes))
            f_head = _flops(lambda head=head, c_out=c_out: head(torch.zeros(1, T * c_out)))
        rows.append((name, f_net + f_head))
        print(f"  {name:24s} network {f_net / 1e6:7.2f} MFLOP + head {f_head / 1e6:5.2f} MFLOP "
              f"= {(f_net + f_head) / 1e6:7.2f} MFLOP")
    inr_flops = rows[0][1]
    print("  graph/equivariant metanetworks per MNIST INR (reference §6): " + ", ".join(
        f"{k} {v:g} GFLOP ({v * 1e9 / inr_flops:,.0f}x ProbeGen)" for k, v in GRAPH_GFLOP_PER_INR.items()))


if __name__ == "__main__":
    main()
