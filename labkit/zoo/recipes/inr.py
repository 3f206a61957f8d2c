"""inr: one SIREN per digit image, label = the digit (ProbeGen's MNIST-INR zoo analogue; reference/probegen.md §4.1).

Each network ``f: [-1, 1]² → grey value`` (2→32→32→1, ``sin(30·x)`` after the first two layers, +0.5 on the output;
``labkit.models.siren``) is fitted to one 8×8 image by full-batch Adam on the 64 pixels. Images are fitted in
fixed chunks of ``chunk`` networks in one batched computation (``labkit.training.fit_full_batch``).

Splits follow the image: images from the digits test split are ``test``; the others are ``train`` or ``val``
(``val_share`` of them, chosen by a hash of the id). State-dict keys are the DWSNets ones (``seq.0.weight`` …),
metadata holds ``label`` and the fit settings. A fit whose final MSE exceeds ``bad_above`` is kept and flagged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from labkit.data import load_digits_split
from labkit.models import make_siren, pixel_coordinates
from labkit.seeds import stable_seed
from labkit.training import fit_full_batch, init_states, stack_states, unstack_state
from labkit.zoo.settings import from_record
from labkit.zoo.store import ZooStore

__all__ = ["InrSettings", "build", "image_ids", "load_model", "settings"]


@dataclass(frozen=True)
class InrSettings:
    """What an inr zoo is built from (defaults: the workshop profile, 60 images per digit = 600 SIRENs).

    Each SIREN (``hidden`` units, frequency ``w0``) is fitted by full-batch Adam (``steps``, ``lr``), ``chunk`` at a
    time; ``test_share`` of each digit's images come from the test split, ``val_share`` of the others are ``val``.
    A fit whose final MSE exceeds ``bad_above`` is flagged.
    """

    seed: int = 0
    per_class: int = 60
    steps: int = 150
    lr: float = 1e-3
    hidden: int = 32
    w0: float = 30.0
    chunk: int = 100
    val_share: float = 0.125
    test_share: float = 0.25
    bad_above: float = 1e-3


def settings(profile: str) -> InrSettings:
    """Workshop: 60 images per digit (600 SIRENs); smoke: 4 per digit."""
    return InrSettings(per_class=4) if profile == "smoke" else InrSettings()


def _hash(cfg: InrSettings, key: str) -> int:
    return stable_seed(f"inr:{cfg.seed}:{key}", bits=48)


def image_ids(cfg: InrSettings, labels_train: torch.Tensor, labels_test: torch.Tensor) -> list[tuple[str, str, int, int]]:
    """``(id, source, row, label)`` for the chosen images: per digit, a ``test_share`` of them from the test split."""
    n_test = max(1, round(cfg.per_class * cfg.test_share))
    picks = []
    for digit in range(10):
        for source, labels, n in (("train", labels_train, cfg.per_class - n_test), ("test", labels_test, n_test)):
            rows = torch.nonzero(labels == digit).flatten()[:n].tolist()
            picks += [(f"inr-{source}-{r:04d}", source, r, digit) for r in rows]
    return picks


def load_model(store: ZooStore, model_id: str) -> torch.nn.Module:
    """The stored SIREN as an ``nn.Module`` (``model(pixel_coordinates())`` → ``[64, 1]``)."""
    cfg = from_record(InrSettings, store.info["settings"])
    model = make_siren(cfg.hidden, cfg.w0)
    model.load_state_dict(store.load_model(model_id)[0])
    return model.eval()


def build(store: ZooStore, cfg: InrSettings, device) -> dict:
    """Fit and store every SIREN not yet in ``store``."""
    from tqdm.auto import tqdm

    device = torch.device(device)
    data = load_digits_split()
    picks = image_ids(cfg, data.y_train, data.y_test)
    coords = pixel_coordinates().to(device)
    make = lambda: make_siren(cfg.hidden, cfg.w0)  # noqa: E731
    bar = tqdm(total=len(picks), desc="inr SIRENs", initial=sum(p[0] in store for p in picks))
    bad = 0
    for start in range(0, len(picks), cfg.chunk):
        chunk = picks[start:start + cfg.chunk]
        if all(p[0] in store for p in chunk):
            continue
        seeds = [_hash(cfg, p[0]) % 2**31 for p in chunk]
        images = torch.stack([(data.X_train if src == "train" else data.X_test)[r] for _, src, r, _ in chunk])
        params = {k: v.to(device) for k, v in stack_states(init_states(make, seeds)).items()}
        params, loss = fit_full_batch(make().to(device), params, coords, images.to(device)[:, :, None],
                                      steps=cfg.steps, lr=cfg.lr, progress="SIREN steps")
        for k, ((model_id, src, r, digit), seed) in enumerate(zip(chunk, seeds)):
            if model_id in store:
                continue
            split = "test" if src == "test" else ("val" if _hash(cfg, model_id + ":split") % 1000
                                                  < 1000 * cfg.val_share else "train")
            final = float(loss[k])
            flag = "ok" if final <= cfg.bad_above else "bad"
            bad += flag == "bad"
            hp = {"steps": cfg.steps, "lr": cfg.lr, "w0": cfg.w0, "hidden": cfg.hidden, "seed": seed}
            row = {"tree": None, "parent": None, "split": split, "labels": [digit], "label": digit,
                   "image": {"source": src, "row": r}, "hparams": hp, "final_loss": final, "flag": flag}
            meta = {"label": str(digit), "split": split, "final_loss": repr(final)} | {k2: str(v) for k2, v in hp.items()}
            store.save_model(model_id, unstack_state(params, k), row, meta)
            bar.update()
    bar.close()
    return {"sirens": len(picks), "bad": bad}
