"""ProbeGen: learn from a network by its outputs on probes from a deep *linear* generator (lab 03).

Kahana, Horwitz, Shuval & Hoshen, *Deep Linear Probe Generators for Weight Space Learning*, ICLR 2025
(arXiv 2410.10811), §3-§4; reference/probegen.md. Taught in ``notebooks/03_probegen.ipynb``.

Each network ``f_b`` of a zoo is a black box: only its forward pass is used. ``T`` probes are generated from
per-probe latent codes by a shared generator ``G`` without activations between its layers, the networks answer,
and an MLP head reads the concatenated answers::

    P = G(Z)                         Z: [T, z_dim] (learned),  P: [T, *input_shape]   (once per step)
    F_b = vec(f_b(P))                [T · c_out], probe-major                       (all networks at once)
    ŷ_b = MLP(F_b)                   6 Linear layers, 256 wide, ReLU between

and ``Z``, ``G`` and the head train end to end (Adam 3e-4, cosine schedule, batch 32). Because ``G`` is a product
of affine maps (the CNN generator ends in one ``tanh``), its output is an affine function of ``z`` whose
over-parameterisation biases the probes towards low-rank, smooth structure (§3.2). ``gen_depth = 0`` is vanilla
probing (the probes are the parameters); ``fixed_probes`` gives the synthetic baseline (probes never optimised,
responses computed once, head only).

Tasks (``Task``): ``"inr"`` — SIRENs mapping coordinates ``[T, 2]`` to one grey value, 10-way digit classification,
metric accuracy; ``"cnn"`` — image classifiers on ``[T, 1, 8, 8]`` probes (10 logits each), regression of their
test accuracy, metric Kendall's τ. The mini-jungle's CNNs see 8×8 digits, so the transposed-convolution generator
grows 1×1 → 4×4 → 8×8 (the paper's ``deep_linear_6`` grows to 32×32 with the same kernel pattern).

Speed (DESIGN §10): ``Networks`` keeps each same-architecture group of the zoo as stacked parameters
``{name: [n, ...]}`` with one template module, and ``Networks.responses`` runs a whole group on the probes with
``torch.func.vmap(functional_call)``. The official code's Python loop over networks is kept as
``responses_loop``, the reference for the tests and ``benchmarks/bench_probegen.py``.

Entry points (what a command-line wrapper over the public zoos calls)::

    nets = Networks([NetGroup(template_module, stacked_params)])      # or several groups; order = concatenation
    task = TASKS["inr"]                           # or "cnn" (8×8 mini-jungle), "cifar10-gs", "wild-park" (32×32)
    run  = train_probegen(task, nets_train, y_train, nets_val, y_val,
                          n_probes=128, gen_depth=2)                   # ProbeGen (INR: linear_2_no_acts)
    run  = train_probegen(task, ..., gen_depth=0)                      # vanilla probing
    run  = train_probegen(task, ..., fixed_probes=uniform_coordinates(128))   # synthetic probes, head only
    score = task_metric(run.model, task, nets_test, y_test)            # accuracy (INR) or Kendall's τ (CNN)
    tau  = statnn_baseline(statnn_param_features(params_train), y_train,
                           statnn_param_features(params_test), y_test)  # weight statistics + boosted trees
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call, vmap

from labkit.methods.checks import require_finite

__all__ = [
    "TASKS",
    "NetGroup",
    "Networks",
    "ProbeGen",
    "ProbeGenRun",
    "Task",
    "collapse_linear",
    "dead_leaves",
    "deep_linear",
    "kendall_tau",
    "make_generator",
    "make_head",
    "responses_loop",
    "siren_probe_responses",
    "statnn_baseline",
    "statnn_param_features",
    "task_metric",
    "train_probegen",
    "uniform_coordinates",
]


# --------------------------------------------------------------------------------------------------------
# tasks and zoos
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """What the zoo networks take and give, and what is predicted from them (reference/probegen.md §2, §4)."""

    name: str
    input_shape: tuple[int, ...]  # one probe
    c_out: int  # outputs per probe
    d_out: int  # head outputs: classes, or 1 for regression
    metric: str  # "accuracy" | "kendall_tau"
    final_tanh: bool  # the CNN generators end in tanh; the INR ones do not

    @property
    def classification(self) -> bool:
        return self.metric == "accuracy"


TASKS = {
    "inr": Task("inr", (2,), 1, 10, "accuracy", False),  # MNIST/FMNIST INRs and the mini-jungle's inr zoo
    "cnn": Task("cnn", (1, 8, 8), 10, 1, "kendall_tau", True),  # the mini-jungle's cnn-zoo (8×8 digits)
    "cifar10-gs": Task("cifar10-gs", (1, 32, 32), 10, 1, "kendall_tau", True),  # Small CNN Zoo, grey-scale
    "wild-park": Task("wild-park", (3, 32, 32), 10, 1, "kendall_tau", True),  # CNN Wild Park, RGB
}


@dataclass
class NetGroup:
    """Networks of one architecture: a template module (only its forward is used) and stacked ``{name: [n, ...]}``."""

    model: nn.Module
    params: dict[str, torch.Tensor]

    def __post_init__(self):
        sizes = {v.shape[0] for v in self.params.values()}
        if len(sizes) != 1:
            raise ValueError(f"stacked parameters disagree on the number of networks: {sorted(sizes)}")
        expected = {k: tuple(v.shape) for k, v in self.model.named_parameters()}
        got = {k: tuple(v.shape[1:]) for k, v in self.params.items()}
        if expected != got:
            raise ValueError(f"parameters {got} do not fit the template module {expected}")
        bad = [k for k, v in self.params.items() if not torch.isfinite(v).all()]
        if bad:
            raise ValueError(f"non-finite weights in {bad}; drop those networks first")

    def __len__(self) -> int:
        return next(iter(self.params.values())).shape[0]


class Networks:
    """A zoo as groups of same-architecture networks; network ``i`` is the ``i``-th in group order."""

    def __init__(self, groups: Sequence[NetGroup]):
        if not groups:
            raise ValueError("Networks needs at least one group of networks")
        self.groups = list(groups)
        sizes = torch.tensor([len(g) for g in self.groups])
        self.group_of = torch.repeat_interleave(torch.arange(len(self.groups)), sizes)
        self.offset = torch.cumsum(sizes, 0) - sizes

    def __len__(self) -> int:
        return len(self.group_of)

    def subset(self, index) -> Networks:
        """The networks at ``index`` (in that order within each group; empty groups dropped)."""
        index = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        groups = []
        for g, group in enumerate(self.groups):
            rows = index[self.group_of[index] == g] - self.offset[g]
            if len(rows):
                groups.append(NetGroup(group.model, {k: v[rows] for k, v in group.params.items()}))
        order = torch.cat([index[self.group_of[index] == g] for g in range(len(self.groups))])
        if not torch.equal(order, index):
            raise ValueError("subset keeps networks grouped by architecture: sort the index by group first")
        return Networks(groups)

    def responses(self, probes: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Outputs of networks ``index`` (all by default) on ``probes: [T, *input_shape]`` → ``[len(index), T, c_out]``.

        One ``vmap(functional_call)`` per architecture group present in ``index``; gradients flow to ``probes``.
        """
        index = torch.arange(len(self)) if index is None else torch.as_tensor(index, dtype=torch.long)
        groups = self.group_of[index]
        out = None
        for g in torch.unique(groups).tolist():
            pos = torch.nonzero(groups == g).flatten()
            group = self.groups[g]
            rows = (index[pos] - self.offset[g]).to(next(iter(group.params.values())).device)
            params = {k: v[rows] for k, v in group.params.items()}
            y = vmap(lambda p, m=group.model: functional_call(m, p, (probes,)))(params)
            y = y.reshape(len(pos), probes.shape[0], -1)
            if out is None:
                out = y.new_zeros(len(index), *y.shape[1:])
            out = out.index_copy(0, pos.to(y.device), y)
        return out


def responses_loop(models: Sequence[nn.Module], probes: torch.Tensor) -> torch.Tensor:
    """The official code's forward: one ``nn.Module`` per network, a Python loop → ``[B, T, c_out]`` (reference only)."""
    return torch.stack([m(probes).reshape(probes.shape[0], -1) for m in models])


def siren_probe_responses(W0, b0, W1, b1, W2, b2, coords, w0: float = 30.0) -> torch.Tensor:
    """Batched SIREN on shared probes by batched matmul (exercise 03.probe_features).

    ``W0: [B, h, 2]``, ``b0: [B, h]``, ``W1: [B, h, h]``, ``b1: [B, h]``, ``W2: [B, 1, h]``, ``b2: [B, 1]``,
    ``coords: [T, 2]`` → features ``[B, T]`` (probe-major; c_out = 1), ``f(c) = W2 sin(w0(W1 sin(w0(W0 c+b0))+b1))+b2+0.5``.
    """
    h = torch.sin(w0 * (coords @ W0.transpose(1, 2) + b0[:, None]))
    h = torch.sin(w0 * (h @ W1.transpose(1, 2) + b1[:, None]))
    return (h @ W2.transpose(1, 2) + b2[:, None]).squeeze(-1) + 0.5


# --------------------------------------------------------------------------------------------------------
# generators, probes and the head (§2 "Generators", "Head")
# --------------------------------------------------------------------------------------------------------


def deep_linear(Z: torch.Tensor, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]) -> torch.Tensor:
    """A deep linear generator: affine layers with no activation in between (exercise 03.deep_linear).

    ``Z: [T, z_dim]``, ``weights[i]: [d_{i+1}, d_i]``, ``biases[i]: [d_{i+1}]`` → ``[T, d_last]``.
    """
    h = Z
    for W, b in zip(weights, biases, strict=True):
        h = h @ W.T + b
    return h


def collapse_linear(weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The single affine map ``(W, b)`` a deep linear generator computes: ``deep_linear(Z, …) = Z @ W.T + b``."""
    W, b = weights[0], biases[0]
    for Wi, bi in zip(weights[1:], biases[1:], strict=True):
        W, b = Wi @ W, Wi @ b + bi
    return W, b


def make_generator(task: Task, gen_depth: int, z_dim: int = 32, gen_width: int = 32, width_mult: int = 16) -> nn.Module:
    """The probe generator ``G`` (no activations; ``tanh`` after it for CNN tasks is applied by ``ProbeGen``).

    INR (``linear_{d}_no_acts``): ``d`` Linear layers ``z_dim → gen_width → … → 2``; the paper's ProbeGen is d = 2.
    CNN, 8×8 output (the mini-jungle): ConvTranspose2d chain from ``[z_dim, 1, 1]``: channels ``8w, 4w, 2w, 2w, w``
    (first d−1 of them, w = ``width_mult``) then ``c_in``; the first layer (k4, s1, p0) grows 1→4 px, the second
    (k4, s2, p1) 4→8 px, the others (k3, s1, p1) keep 8 px; d = 1 is one k8 layer.
    CNN, 32×32 output (the public zoos): the paper's ``deep_linear_6`` (CIFAR10-GS) and ``deep_linear_5`` (Wild Park)
    exactly, reference/probegen.md §2; only depths 5 and 6.
    ``gen_depth = 0`` is the identity (vanilla probing).
    """
    if gen_depth < 0:
        raise ValueError(f"gen_depth must be >= 0, got {gen_depth}")
    if gen_depth == 0:
        return nn.Identity()
    if len(task.input_shape) == 1:
        dims = [z_dim] + [gen_width] * (gen_depth - 1) + [task.input_shape[0]]
        return nn.Sequential(*[nn.Linear(a, b) for a, b in itertools.pairwise(dims)])
    c_in, size = task.input_shape[0], task.input_shape[-1]
    w = width_mult
    if size == 32:
        if gen_depth not in (5, 6):
            raise ValueError(f"the 32×32 generators are the paper's deep_linear_5 and deep_linear_6, got depth {gen_depth}")
        layers = [(z_dim, 8 * w, 4, 1, 0), (8 * w, 4 * w, 4, 2, 1), (4 * w, 2 * w, 4, 2, 1)]
        layers += [(2 * w, 2 * w, 3, 1, 1)] if gen_depth == 6 else []
        layers += [(2 * w, w, 4, 2, 1), (w, c_in, 3, 1, 1)]
        return nn.Sequential(*[nn.ConvTranspose2d(*spec) for spec in layers])
    if size != 8:
        raise ValueError(f"CNN generators make 8×8 or 32×32 probes, the task wants {task.input_shape}")
    hidden = [8 * width_mult, 4 * width_mult, 2 * width_mult, 2 * width_mult, width_mult]
    if gen_depth > len(hidden) + 1:
        raise ValueError(f"gen_depth for CNN probes is at most {len(hidden) + 1}, got {gen_depth}")
    chans = [z_dim, *hidden[:gen_depth - 1], c_in]
    if gen_depth == 1:
        return nn.ConvTranspose2d(z_dim, c_in, 8, 1, 0)
    shapes = [(4, 1, 0), (4, 2, 1)] + [(3, 1, 1)] * (gen_depth - 2)
    return nn.Sequential(*[nn.ConvTranspose2d(a, b, k, s, p) for a, b, (k, s, p) in zip(chans[:-1], chans[1:], shapes)])


def make_head(d_in: int, d_out: int, d_hid: int = 256, n_layers: int = 6) -> nn.Sequential:
    """The paper's head: ``n_layers`` Linear layers, ``d_hid`` wide, ReLU between, no dropout or normalisation."""
    dims = [d_in] + [d_hid] * (n_layers - 1) + [d_out]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(dims)):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < n_layers - 1 else [])
    return nn.Sequential(*layers)


def uniform_coordinates(n_probes: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Synthetic INR probes: ``[n_probes, 2]`` fixed U(−1, 1)² coordinates (``uniform_coords__no_opt``)."""
    return torch.rand(n_probes, 2, generator=generator) * 2 - 1


def dead_leaves(n_probes: int, size: int = 8, n_leaves: int = 40, generator: torch.Generator | None = None) -> torch.Tensor:
    """Synthetic CNN probes: ``[n_probes, 1, size, size]`` dead-leaves images in [0, 1].

    Occluding discs with power-law radii and uniform grey levels, drawn back to front (Lee, Mumford & Huang 2001) —
    an offline stand-in for the MIT dead-leaves textures the paper samples (reference/probegen.md §2).
    """
    g = generator
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    centres = torch.rand(n_probes, n_leaves, 2, generator=g) * size
    radii = (0.5 * size) * torch.rand(n_probes, n_leaves, generator=g).pow(2) + 0.5  # many small, few large
    grey = torch.rand(n_probes, n_leaves, generator=g)
    inside = ((yy - centres[..., 0, None, None]) ** 2 + (xx - centres[..., 1, None, None]) ** 2) <= radii[..., None, None] ** 2
    # the last leaf that covers a pixel is on top; uncovered pixels take the first leaf's grey
    order = torch.arange(n_leaves).view(1, -1, 1, 1)
    top = torch.where(inside, order, torch.zeros_like(order)).amax(1)
    return grey.gather(1, top.reshape(n_probes, -1)).reshape(n_probes, 1, size, size)


class ProbeGen(nn.Module):
    """Latents + generator + head (reference/probegen.md §2); ``fixed_probes`` makes the synthetic baseline.

    ``probes()`` → ``[T, *task.input_shape]``; ``forward(responses: [B, T, c_out])`` → ``[B, d_out]``.
    """

    def __init__(self, task: Task, n_probes: int = 128, gen_depth: int = 2, z_dim: int = 32, gen_width: int = 32,
                 width_mult: int = 16, d_hid: int = 256, n_layers: int = 6, fixed_probes: torch.Tensor | None = None):
        super().__init__()
        self.task, self.gen_depth = task, gen_depth
        if fixed_probes is not None:
            if tuple(fixed_probes.shape[1:]) != task.input_shape:
                raise ValueError(f"fixed probes must be [T, {', '.join(map(str, task.input_shape))}], "
                                 f"got {list(fixed_probes.shape)}")
            n_probes = fixed_probes.shape[0]
            self.register_buffer("fixed", fixed_probes.clone())
            self.latents, self.generator = None, None
        else:
            self.fixed = None
            shape = task.input_shape if gen_depth == 0 else ((z_dim,) if len(task.input_shape) == 1 else (z_dim, 1, 1))
            self.latents = nn.Parameter(torch.randn(n_probes, *shape))
            self.generator = make_generator(task, gen_depth, z_dim, gen_width, width_mult)
        self.n_probes = n_probes
        self.head = make_head(n_probes * task.c_out, task.d_out, d_hid, n_layers)

    def probes(self) -> torch.Tensor:
        if self.fixed is not None:
            return self.fixed
        P = self.generator(self.latents)
        return torch.tanh(P) if self.task.final_tanh else P

    def forward(self, responses: torch.Tensor) -> torch.Tensor:
        return self.head(responses.reshape(responses.shape[0], -1))

    def predict(self, nets: Networks, index: torch.Tensor | None = None) -> torch.Tensor:
        """Head outputs for networks ``index`` of ``nets`` → ``[B, d_out]``."""
        return self(nets.responses(self.probes(), index))


# --------------------------------------------------------------------------------------------------------
# training and evaluation (§2 "Defaults", §3)
# --------------------------------------------------------------------------------------------------------


def kendall_tau(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Kendall's τ-b between two ``[n]`` vectors (ties handled as ``scipy.stats.kendalltau``; exercise 03.kendall_tau).

    ``τ_b = (C − D) / sqrt((N − T_pred)(N − T_true))`` over the ``N = n(n−1)/2`` pairs; C/D count concordant /
    discordant pairs, ``T_*`` the pairs tied in that vector.
    """
    pred, true = torch.as_tensor(pred, dtype=torch.float64).flatten(), torch.as_tensor(true, dtype=torch.float64).flatten()
    if pred.shape != true.shape or len(pred) < 2:
        raise ValueError(f"kendall_tau needs two vectors of one length >= 2, got {list(pred.shape)} and {list(true.shape)}")
    i, j = torch.triu_indices(len(pred), len(pred), 1)
    s = torch.sign(pred[i] - pred[j]) * torch.sign(true[i] - true[j])
    n_pairs = len(i)
    tied_pred = (pred[i] == pred[j]).sum()
    tied_true = (true[i] == true[j]).sum()
    return s.sum() / torch.sqrt((n_pairs - tied_pred) * (n_pairs - tied_true).to(torch.float64))


def _metric(task: Task, out: torch.Tensor, y: torch.Tensor) -> float:
    if task.classification:
        return float((out.argmax(-1).cpu() == y.cpu()).double().mean())
    from scipy.stats import kendalltau

    return float(kendalltau(out.squeeze(-1).detach().cpu().numpy(), y.cpu().numpy()).statistic)


@torch.no_grad()
def task_metric(model: ProbeGen, task: Task, nets: Networks, y: torch.Tensor, batch_size: int = 256) -> float:
    """The task's metric of a trained model on ``nets`` (``y: [n]`` labels or accuracies): accuracy (INR
    classification) or Kendall's τ (scipy; CNN regression). Reference/probegen.md §3."""
    model.eval()
    P = model.probes()
    out = torch.cat([model(nets.responses(P, torch.arange(s, min(s + batch_size, len(nets)))))
                     for s in range(0, len(nets), batch_size)])
    return _metric(task, out, y)


@dataclass
class ProbeGenRun:
    """A trained model (at its best validation score) and its trace."""

    model: ProbeGen
    best_val: float
    best_step: int
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, val metric)
    test: float | None = None

    @property
    def probes(self) -> torch.Tensor:
        return self.model.probes().detach()


def train_probegen(task: Task | str, train: Networks, y_train: torch.Tensor, val: Networks, y_val: torch.Tensor, *,
                   n_probes: int = 128, gen_depth: int = 2, fixed_probes: torch.Tensor | None = None,
                   z_dim: int = 32, gen_width: int = 32, width_mult: int = 16, d_hid: int = 256, n_layers: int = 6,
                   epochs: int = 30, batch_size: int = 32, lr: float = 3e-4, eval_every: int = 500, seed: int = 1,
                   test: Networks | None = None, y_test: torch.Tensor | None = None, progress: str | None = None
                   ) -> ProbeGenRun:
    """Train latents, generator and head end to end through the frozen networks (reference/probegen.md §3).

    ``y_train, y_val``: int64 class labels ``[n]`` (INR) or float test accuracies ``[n]`` (CNN). Adam(lr), cosine
    annealing over all steps, CE or MSE loss. Every ``eval_every`` steps and at the end the validation metric is
    computed; the model with the best one is kept (and scored on ``test`` if given: the test metric at the best
    validation point). With ``fixed_probes`` the responses are computed once and only the head trains.
    """
    task = TASKS[task] if isinstance(task, str) else task
    for name, nets, y in (("train", train, y_train), ("val", val, y_val)):
        if len(nets) != len(y):
            raise ValueError(f"{name}: {len(nets)} networks but {len(y)} labels")
        if len(nets) < 2:
            raise ValueError(f"{name}: need at least 2 networks, got {len(nets)}")
    if not task.classification:
        require_finite(torch.as_tensor(y_train), "y_train has NaN or inf targets")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    model = ProbeGen(task, n_probes, gen_depth, z_dim, gen_width, width_mult, d_hid, n_layers, fixed_probes)
    device = next(iter(train.groups[0].params.values())).device
    model.to(device)
    y_train = y_train.to(device) if task.classification else y_train.to(device, torch.float32)
    cached = None
    if fixed_probes is not None:  # synthetic probes: run every network once (main__real_data.py)
        with torch.no_grad():  # in chunks: all of CIFAR10-GS at once would need tens of GB
            P = model.probes()
            cached = torch.cat([train.responses(P, chunk) for chunk in torch.arange(len(train)).split(256)])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    g = torch.Generator().manual_seed(seed)
    best, best_step, best_state, history = -math.inf, 0, None, []
    step = 0
    bar = tqdm(total=total, desc=progress, leave=False, disable=progress is None)
    for _ in range(epochs):
        for batch in torch.randperm(len(train), generator=g).split(batch_size):
            model.train()
            R = cached[batch] if cached is not None else train.responses(model.probes(), batch)
            out = model(R)
            if task.classification:
                loss = nn.functional.cross_entropy(out, y_train[batch])
            else:
                loss = nn.functional.mse_loss(out.squeeze(-1), y_train[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            bar.update()
            if step % eval_every == 0 or step == total:
                score = task_metric(model, task, val, y_val)
                history.append((step, score))
                score = -math.inf if math.isnan(score) else score  # τ is NaN for constant predictions
                if best_state is None or score > best:
                    best, best_step, best_state = score, step, copy.deepcopy(model.state_dict())
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    run = ProbeGenRun(model, best, best_step, history)
    if test is not None:
        run.test = task_metric(model, task, test, y_test)
    return run


# --------------------------------------------------------------------------------------------------------
# StatNN: the weight-statistics baseline (Unterthiner et al. 2020)
# --------------------------------------------------------------------------------------------------------


def statnn_param_features(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """StatNN's statistics of whole networks (Unterthiner et al. 2020; reference/probegen.md §8): per
    tensor the mean, the std (population) and the 0/25/50/75/100 % quantiles of its entries → ``[n, 7 · n_tensors]``
    float32 (ProbeX's ``statnn_layer_features`` reads one layer, with the variance).

    ``params: {name: [n, ...]}`` stacked; tensors are taken in sorted name order so groups of different widths give
    features in the same columns.
    """
    cols = []
    for name in sorted(params):
        w = params[name].reshape(params[name].shape[0], -1).double()
        q = torch.quantile(w, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64), dim=1).T
        cols += [w.mean(1, keepdim=True), w.std(1, keepdim=True, correction=0), q]
    return torch.cat(cols, 1).float()


def statnn_baseline(features_train: torch.Tensor, y_train: torch.Tensor, features_test: torch.Tensor,
                    y_test: torch.Tensor, seed: int = 0) -> float:
    """Kendall's τ of gradient-boosted trees on ``statnn_param_features`` (``[n, d]``) predicting test accuracy."""
    from scipy.stats import kendalltau
    from sklearn.ensemble import GradientBoostingRegressor

    reg = GradientBoostingRegressor(random_state=seed).fit(features_train.numpy(), y_train.numpy())
    return float(kendalltau(reg.predict(features_test.numpy()), y_test.numpy()).statistic)
