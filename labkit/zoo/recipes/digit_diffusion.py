"""Recipe ``digit-diffusion``: a tiny diffusion root on 8×8 digits and three LoRA zoos of it (DESIGN §3).

The Stable Diffusion analogue of the mini-jungle (settings: reference/mini_jungle_notes.md):

* ``root`` — the ε-prediction ``Denoiser`` trained on the digits outside a held-out concept pool (60 images per
  class); its EMA weights are saved with ``save_model`` and 64 samples as ``root_samples.png`` in the zoo folder.
* ``zoo: "size"`` — the DSiRe dataset-size zoo shaped like LoRA-WiSE: sets (digit × pick, nested random subsets
  of the digit's pool) × n in the low range {1..6} and the medium range {1, 10, …, 50}; one fixed recipe.
* ``zoo: "concept"`` — the ProbeX zero-shot zoo: concepts digit × style with the description
  "a {style} handwritten {digit}", several LoRAs per concept; a fixed set of concepts is held out
  (``heldout: true``, split ``"heldout"``) such that every digit and every style stays among the seen ones.
* ``zoo: "detune"`` — LoRA fine-tunes of the same root on random concepts, for Spectral DeTuning.

Manifest rows of LoRAs carry ``zoo``, ``digit``, ``n``, ``split``, ``labels``, ``hparams`` (with the seed),
``images`` (indices into ``digit_pool(...)[1][digit]``, before the style transform), ``train_loss``, ``eval_loss``
on its own images with fixed noise, the root's ``root_eval_loss`` on the same draws, and ``flagged`` when the LoRA
did not beat the root there (such a model is kept, never dropped).

Every LoRA is a real peft adapter (r = 8 on the 8 layers of ``LORA_TARGETS``), trained K at a time with
``labkit.lora.BatchedLoRA``. A LoRA's init and data stream come from its own seed (a hash of its id); chunks of
LoRAs trained together are fixed by the recipe, and a chunk with any model missing from the store is retrained
whole, so a resumed build writes byte-identical files.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from labkit.diffusion import Schedule, cosine_schedule, diffusion_loss, from_unit, sample, to_unit
from labkit.lora import BatchedLoRA
from labkit.models.denoiser import LORA_TARGETS, Denoiser
from labkit.safe_io import write_atomic
from labkit.seeds import stable_seed
from labkit.training import fit_stacked, lora_parameters
from labkit.zoo.settings import from_record

__all__ = [
    "BASE_MODEL_NAME",
    "ROOT_ID",
    "SAMPLES_PNG",
    "STYLES",
    "ConceptZoo",
    "DetuneZoo",
    "DigitDiffusionSettings",
    "LoraShape",
    "RootTraining",
    "SizeZoo",
    "apply_style",
    "build",
    "digit_pool",
    "heldout_concepts",
    "load_root",
    "settings",
]

ROOT_ID = "root"
BASE_MODEL_NAME = "labkit/digit-diffusion-root"  # portable name written into every adapter_config.json
SAMPLES_PNG = "root_samples.png"
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
STYLES = ["plain", "thick", "thin", "mirrored", "upside-down", "shifted left", "shifted right", "rotated 90°",
          "inverted"]


@dataclass(frozen=True)
class RootTraining:
    """The root denoiser (``width``, ``blocks``): AdamW one-cycle to ``lr`` over ``steps`` batches of ``batch``,
    EMA of the weights with decay ``ema``."""

    steps: int = 6000
    batch: int = 128
    lr: float = 2e-3
    ema: float = 0.995
    width: int = 256
    blocks: int = 3


@dataclass(frozen=True)
class LoraShape:
    """Every LoRA: rank ``r``, ``alpha``, the adapted layers, ``batch`` images per step."""

    r: int = 8
    alpha: int = 8
    targets: tuple[str, ...] = tuple(LORA_TARGETS)
    batch: int = 8


@dataclass(frozen=True)
class SizeZoo:
    """DSiRe: per digit ``picks`` nested image sets, one LoRA per size in ``low`` and ``medium``."""

    digits: tuple[int, ...] = tuple(range(10))
    picks: int = 5
    low: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
    medium: tuple[int, ...] = (1, 10, 20, 30, 40, 50)
    steps: int = 300
    lr: float = 1e-3


@dataclass(frozen=True)
class ConceptZoo:
    """ProbeX zero-shot: ``per_concept`` LoRAs of ``n`` images per digit × style, ``heldout`` concepts held out."""

    digits: tuple[int, ...] = tuple(range(10))
    styles: tuple[str, ...] = tuple(STYLES)
    per_concept: int = 8
    n: int = 20
    heldout: int = 18
    steps: int = 300
    lr: float = 1e-3


@dataclass(frozen=True)
class DetuneZoo:
    """Spectral DeTuning: ``count`` LoRAs of ``n`` images of random concepts."""

    count: int = 20
    n: int = 20
    steps: int = 500
    lr: float = 2e-3


@dataclass(frozen=True)
class DigitDiffusionSettings:
    """What a digit-diffusion zoo is built from (defaults: the workshop profile). ``T`` diffusion steps;
    ``pool_per_class`` held-out images per digit; LoRAs train ``chunk`` at a time; ``eval_draws`` fixed noise
    draws score each LoRA."""

    seed: int = 0
    T: int = 100
    pool_per_class: int = 60
    chunk: int = 120
    eval_draws: int = 64
    root: RootTraining = field(default_factory=RootTraining)
    lora: LoraShape = field(default_factory=LoraShape)
    size: SizeZoo = field(default_factory=SizeZoo)
    concept: ConceptZoo = field(default_factory=ConceptZoo)
    detune: DetuneZoo = field(default_factory=DetuneZoo)


def settings(profile: str) -> DigitDiffusionSettings:
    """Recipe settings by profile (their ``asdict`` is recorded and hashed into the zoo folder's name)."""
    if profile == "smoke":
        return DigitDiffusionSettings(
            root=RootTraining(steps=500, ema=0.99),
            size=SizeZoo(digits=(0, 1, 2), picks=1, steps=60),
            concept=ConceptZoo(digits=(0, 1, 2, 3), styles=tuple(STYLES[:4]), per_concept=2, heldout=3, steps=60),
            detune=DetuneZoo(count=5, steps=60))
    return DigitDiffusionSettings()


# ------------------------------------------------------------------------------------------------- data


def _seed(base: int, name: str) -> int:
    """A model's seed: a hash of the recipe seed and the model's id (never of how many were built before)."""
    return stable_seed(f"{base}/{name}", bits=32) % (2**31)


def digit_pool(pool_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(root_X [N, 64], pool [10, pool_per_class, 64], root_y [N])`` of ``load_digits`` in [0, 1].

    The pool (held-out images per class) is where every LoRA's personalisation images come from.
    """
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.from_numpy((X / 16.0).astype(np.float32))
    y = torch.from_numpy(y).long()
    g = torch.Generator().manual_seed(seed)
    pool, rest = [], []
    for c in range(10):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        pool.append(X[idx[:pool_per_class]])
        rest.append(idx[pool_per_class:])
    rest_idx = torch.cat(rest).sort().values
    return X[rest_idx], torch.stack(pool), y[rest_idx]


def _shift(img: torch.Tensor, dx: int = 0, dy: int = 0) -> torch.Tensor:
    """Shift ``[N, 8, 8]`` images by (dx, dy) pixels, filling with zeros."""
    out = torch.zeros_like(img)
    H, W = img.shape[-2:]
    ys, yd = (slice(0, H - dy), slice(dy, H)) if dy >= 0 else (slice(-dy, H), slice(0, H + dy))
    xs, xd = (slice(0, W - dx), slice(dx, W)) if dx >= 0 else (slice(-dx, W), slice(0, W + dx))
    out[:, yd, xd] = img[:, ys, xs]
    return out


def apply_style(x01: torch.Tensor, style: str) -> torch.Tensor:
    """One concept style as an image transform: ``x01: [N, 64]`` in [0, 1] → ``[N, 64]`` in [0, 1]."""
    img = x01.reshape(-1, 8, 8)
    if style == "plain":
        out = img
    elif style == "thick":  # dilate with a 2×2 square
        out = torch.maximum(torch.maximum(img, _shift(img, dx=1)), torch.maximum(_shift(img, dy=1),
                                                                                  _shift(img, dx=1, dy=1)))
    elif style == "thin":  # keep only the stroke cores
        out = ((img - 0.5) * 2).clamp(min=0)
    elif style == "mirrored":
        out = img.flip(-1)
    elif style == "upside-down":
        out = img.flip(-2)
    elif style == "shifted left":
        out = _shift(img, dx=-2)
    elif style == "shifted right":
        out = _shift(img, dx=2)
    elif style == "rotated 90°":
        out = img.rot90(1, dims=(-2, -1))
    elif style == "inverted":
        out = 1 - img
    else:
        raise ValueError(f"unknown style {style!r}; styles are {STYLES}")
    return out.reshape(-1, 64).contiguous()


def heldout_concepts(digits: Sequence[int], styles: Sequence[str], count: int) -> list[tuple[int, str]]:
    """A fixed set of ``count`` held-out (digit, style) concepts: at most 2 per digit and at most 3 per style,
    spread diagonally, so every digit and every style still appears among the seen concepts."""
    out: list[tuple[int, str]] = []
    for j in range(2):
        for i, d in enumerate(digits):
            concept = (d, styles[(i + 3 * j) % len(styles)])
            if len(out) < count and concept not in out:
                out.append(concept)
    if len(out) < count:
        raise ValueError(f"cannot hold out {count} concepts from {len(digits)} digits × {len(styles)} styles")
    return out


def _description(digit: int, style: str) -> str:
    return f"a {style} handwritten {DIGIT_NAMES[digit]}"


# ------------------------------------------------------------------------------------------------- root


def _make_denoiser(s: DigitDiffusionSettings) -> Denoiser:
    return Denoiser(width=s.root.width, n_blocks=s.root.blocks)


def load_root(store) -> Denoiser:
    """The root denoiser (EMA weights) of a built ``digit-diffusion`` zoo, in eval mode on the CPU."""
    model = _make_denoiser(from_record(DigitDiffusionSettings, store.info["settings"]))
    tensors, _ = store.load_model(ROOT_ID)
    model.load_state_dict(tensors)
    return model.eval()


def _fixed_eval(x: torch.Tensor, draws: int, T: int, seed: int):
    """Fixed evaluation draws ``(x0 [draws, 64], t [draws], eps [draws, 64])`` from images ``x: [n, 64]``."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(x), (draws,), generator=g)
    return x[idx], torch.randint(0, T, (draws,), generator=g), torch.randn(draws, 64, generator=g)


def _train_root(s: DigitDiffusionSettings, X: torch.Tensor, sched: Schedule, device) -> tuple[Denoiser, dict]:
    """AdamW with a one-cycle schedule and an EMA of the weights; ``X: [N, 64]`` in [−1, 1].

    One unstacked model with a learning-rate schedule and weight averaging every step: its own loop, not
    ``labkit.training.fit_stacked``.
    """
    from tqdm.auto import tqdm

    r = s.root
    torch.manual_seed(s.seed)
    model = _make_denoiser(s).to(device)
    params = list(model.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(model.parameters(), lr=r.lr)
    sched_lr = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=r.lr, total_steps=r.steps)
    g = torch.Generator().manual_seed(_seed(s.seed, ROOT_ID))
    X = X.to(device)
    losses = []
    for _ in tqdm(range(r.steps), desc="digit-diffusion root", leave=False):
        idx = torch.randint(0, len(X), (r.batch,), generator=g)
        t = torch.randint(0, sched.T, (r.batch,), generator=g)
        eps = torch.randn(r.batch, 64, generator=g)
        loss = diffusion_loss(model, X[idx.to(device)], t.to(device), eps.to(device), sched).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched_lr.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1 - r.ema)  # ema ← ema + (1 − decay)(θ − ema)
        losses.append(loss.item())
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    return model.eval(), {"final_train_loss": float(np.mean(losses[-max(1, len(losses) // 20):]))}


@torch.no_grad()
def _eval_loss(model, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, sched: Schedule) -> float:
    dev = next(model.parameters()).device
    return diffusion_loss(model, x0.to(dev), t.to(dev), eps.to(dev), sched).mean().item()


def _save_grid(x01: torch.Tensor, path: Path, scale: int = 4) -> None:
    """A PNG grid of ``x01: [64, 64]`` images (8 per row), written atomically and byte-reproducibly."""
    from PIL import Image

    n = len(x01)
    cols = 8
    rows = (n + cols - 1) // cols
    grid = np.ones((rows * 9 + 1, cols * 9 + 1), dtype=np.float32)
    for i, img in enumerate(x01.reshape(-1, 8, 8).cpu().numpy()):
        r, c = divmod(i, cols)
        grid[1 + r * 9:1 + r * 9 + 8, 1 + c * 9:1 + c * 9 + 8] = 1 - img  # dark ink on white
    pixels = (grid * 255).round().astype(np.uint8).repeat(scale, 0).repeat(scale, 1)
    png = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(png, format="PNG")
    write_atomic(path, png.getvalue())


# ------------------------------------------------------------------------------------------------- LoRA jobs


def _jobs(s: DigitDiffusionSettings, pool: torch.Tensor) -> list[dict]:
    """Every LoRA of the three zoos, in a fixed order: id, zoo, images ``[n, 64]`` in [0, 1], manifest row."""
    jobs = []
    seed = s.seed
    z = s.size
    for d in z.digits:
        for p in range(z.picks):
            order = torch.randperm(pool.shape[1], generator=torch.Generator().manual_seed(_seed(seed, f"set-{d}-{p}")))
            split = "train" if d < 7 else ("val" if d == 7 else "test")  # whole digits held out (by concept)
            for rng, sizes in (("low", z.low), ("medium", z.medium)):
                for n in sizes:
                    pick = order[:n]  # nested subsets: a set's n images include its smaller sets' images
                    jobs.append({"id": f"size-{rng}-d{d}-p{p}-n{n}", "zoo": "size", "images": pool[d, pick],
                                 "row": {"zoo": "size", "range": rng, "n": n, "digit": d, "set": f"d{d}-p{p}",
                                         "pick": p, "images": pick.tolist(), "split": split,
                                         "labels": {"n": n, "digit": d}}})
    c = s.concept
    held = heldout_concepts(c.digits, c.styles, c.heldout)
    for d in c.digits:
        for style in c.styles:
            is_held = (d, style) in held
            for p in range(c.per_concept):
                mid = f"concept-d{d}-{style.replace(' ', '_').replace('°', '')}-p{p}"
                pick = torch.randperm(pool.shape[1], generator=torch.Generator().manual_seed(_seed(seed, mid)))[:c.n]
                split = "heldout" if is_held else ("test" if p == c.per_concept - 1 else
                                                   "val" if p == c.per_concept - 2 and c.per_concept > 2
                                                   else "train")
                jobs.append({"id": mid, "zoo": "concept", "images": apply_style(pool[d, pick], style),
                             "row": {"zoo": "concept", "digit": d, "style": style, "concept": f"{d}/{style}",
                                     "description": _description(d, style), "heldout": is_held, "pick": p,
                                     "n": c.n, "images": pick.tolist(), "split": split,
                                     "labels": {"description": _description(d, style), "digit": d, "style": style}}})
    t = s.detune
    for i in range(t.count):
        mid = f"detune-{i:02d}"
        g = torch.Generator().manual_seed(_seed(seed, mid))
        d = int(torch.randint(0, 10, (1,), generator=g))
        style = STYLES[int(torch.randint(0, len(STYLES), (1,), generator=g))]
        pick = torch.randperm(pool.shape[1], generator=g)[:t.n]
        jobs.append({"id": mid, "zoo": "detune", "images": apply_style(pool[d, pick], style),
                     "row": {"zoo": "detune", "digit": d, "style": style, "description": _description(d, style),
                             "n": t.n, "images": pick.tolist(), "split": "attack",
                             "labels": {"description": _description(d, style)}}})
    return jobs


def _train_chunk(root: Denoiser, chunk: list[dict], s: DigitDiffusionSettings, zs: SizeZoo | ConceptZoo | DetuneZoo,
                 sched: Schedule, device):
    """Train one fixed chunk of LoRAs together (Adam over the stacked factors, ``labkit.training.fit_stacked``);
    returns the BatchedLoRA, seeds, loss history ``[steps, K]`` and eval losses before / after ``[K]``."""
    L = s.lora
    seeds = [_seed(s.seed, j["id"]) for j in chunk]
    K, steps, b = len(chunk), zs.steps, L.batch
    n_max = max(len(j["images"]) for j in chunk)
    data = torch.zeros(K, n_max, 64)
    idx = torch.empty(K, steps, b, dtype=torch.long)
    ts = torch.empty(K, steps, b, dtype=torch.long)
    eps = torch.empty(K, steps, b, 64)
    evals = []
    for k, (j, sd) in enumerate(zip(chunk, seeds)):
        x = to_unit(j["images"])
        data[k, :len(x)] = x
        g = torch.Generator().manual_seed(sd + 1)  # the data stream; +0 seeds the LoRA init
        idx[k] = torch.randint(0, len(x), (steps, b), generator=g)  # batch of b images drawn with replacement
        ts[k] = torch.randint(0, sched.T, (steps, b), generator=g)
        eps[k] = torch.randn(steps, b, 64, generator=g)
        evals.append(_fixed_eval(x, s.eval_draws, sched.T, sd + 2))
    data, idx, ts, eps = data.to(device), idx.to(device), ts.to(device), eps.to(device)
    ex0, et, eeps = (torch.stack([e[i] for e in evals]).to(device) for i in range(3))
    rows = torch.arange(K, device=device)[:, None]

    lora = BatchedLoRA(root, L.targets, seeds, r=L.r, alpha=L.alpha)
    with torch.no_grad():
        before = diffusion_loss(lora, ex0, et, eeps, sched).mean(1).cpu()

    def loss_fn(step: int) -> torch.Tensor:
        x0 = data[rows, idx[:, step]]  # [K, b, 64]
        return diffusion_loss(lora, x0, ts[:, step], eps[:, step], sched).mean(1)

    params = lora_parameters(lora)
    history = fit_stacked(params, loss_fn, steps, torch.optim.Adam(params.values(), lr=zs.lr))
    with torch.no_grad():
        after = diffusion_loss(lora, ex0, et, eeps, sched).mean(1).cpu()
    return lora, seeds, history, before, after


def build(store, s: DigitDiffusionSettings, device) -> dict:
    """Write the root, its sample grid and every LoRA not yet in ``store``; return counts and timings."""
    from tqdm.auto import tqdm

    device = torch.device(device)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    sched = cosine_schedule(s.T).to(device)
    X_root, pool, _ = digit_pool(s.pool_per_class, s.seed)

    if ROOT_ID in store:
        root = load_root(store).to(device)
    else:
        root, stats = _train_root(s, to_unit(X_root), sched, device)
        ev = _fixed_eval(to_unit(pool.reshape(-1, 64)), 1024, sched.T, _seed(s.seed, "root-eval"))
        tr = _fixed_eval(to_unit(X_root), 1024, sched.T, _seed(s.seed, "root-train-eval"))
        hp = {"T": s.T, "schedule": "cosine", **asdict(s.root), "optimizer": "AdamW one-cycle",
              "objective": "epsilon-mse"}
        row = {"tree": "digit-diffusion", "parent": None, "zoo": "root", "split": "root", "labels": {},
               "hparams": hp, "n_train": len(X_root), "train_loss": _eval_loss(root, *tr, sched),
               "test_loss": _eval_loss(root, *ev, sched), **stats}
        store.save_model(ROOT_ID, {k: v.detach().cpu() for k, v in root.state_dict().items()}, row,
                         metadata={"hparams": hp, "dataset": "sklearn load_digits minus the concept pool",
                                   "n_train": len(X_root)})
    times["root_s"] = round(time.perf_counter() - t0, 1)
    png = store.root / SAMPLES_PNG
    if not png.is_file():
        with torch.no_grad():
            x = sample(root, (64, 64), sched, torch.Generator().manual_seed(_seed(s.seed, "root-samples")),
                       device)
        _save_grid(from_unit(x), png)

    jobs = _jobs(s, pool)
    todo = sum(j["id"] not in store for j in jobs)
    bar = tqdm(total=len(jobs), initial=len(jobs) - todo, desc="digit-diffusion LoRAs")
    flagged = 0
    L = s.lora
    for zoo, zs in (("size", s.size), ("concept", s.concept), ("detune", s.detune)):
        t1 = time.perf_counter()
        zjobs = [j for j in jobs if j["zoo"] == zoo]
        for start in range(0, len(zjobs), s.chunk):
            chunk = zjobs[start:start + s.chunk]
            if all(j["id"] in store for j in chunk):
                continue
            lora, seeds, history, before, after = _train_chunk(root, chunk, s, zs, sched, device)
            peft_model = lora.peft_model()
            tail = max(1, zs.steps // 10)
            for k, (j, sd) in enumerate(zip(chunk, seeds)):
                if j["id"] in store:
                    continue
                train_loss = history[-tail:, k].mean().item()
                bad = []
                if not (np.isfinite(train_loss) and np.isfinite(after[k].item())):
                    bad.append("non-finite loss")
                elif after[k] >= before[k]:
                    bad.append("eval loss did not fall below the root's")
                hp = {"r": L.r, "lora_alpha": L.alpha, "target_modules": list(L.targets), "steps": zs.steps,
                      "lr": zs.lr, "batch": L.batch, "optimizer": "Adam", "seed": sd}
                row = {"tree": "digit-diffusion", "parent": ROOT_ID, **j["row"], "hparams": hp,
                       "train_loss": train_loss, "eval_loss": after[k].item(), "root_eval_loss": before[k].item(),
                       "flagged": bool(bad), "flag_reasons": bad}
                flagged += bool(bad)
                store.save_adapter(j["id"], lora.export_adapter(k, peft_model), row, base_model=BASE_MODEL_NAME)
                bar.update(1)
        times[f"{zoo}_s"] = round(time.perf_counter() - t1, 1)
    bar.close()
    counts = {zoo: sum(j["zoo"] == zoo for j in jobs) for zoo in ("size", "concept", "detune")}
    return {"counts": {"root": 1, **counts}, "flagged": flagged, "timings": times}
