"""Model zoos: the on-disk store and the recipes of the mini-jungle (DESIGN §3, §5).

``labkit.zoo.build(recipe, cfg)`` returns a ``ZooStore`` for the recipe at the session's profile, building it
first if needed (resuming a build that was interrupted) and serving it from the cache otherwise.

A recipe is a module in ``labkit.zoo.recipes`` with two functions::

    settings(profile: str) -> Settings                       # a frozen dataclass (labkit.zoo.settings)
    build(store: ZooStore, settings: Settings, device) -> dict  # writes every model not yet in the store;
                                                             # returns a summary (counts, timings)

``zoo.json`` records ``dataclasses.asdict(settings)`` and its hash names the zoo folder; ``recorded_settings(store)``
gives the dataclass back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import time

from labkit.safe_io import CorruptFileError
from labkit.zoo.settings import from_record, with_overrides
from labkit.zoo.store import ZooError, ZooStore, zoo_key

__all__ = ["BUILD_THREADS", "RECIPES", "CorruptFileError", "ZooError", "ZooStore", "build", "build_threads",
           "recipe_module", "recorded_settings", "zoo_key"]

# torch threads every build runs with (the reference platform has 2 cores); see build_threads
BUILD_THREADS = 2

# recipe name -> module under labkit.zoo.recipes (filled in as the mini-jungle grows)
RECIPES: dict[str, str] = {
    "digit-trees": "digit_trees",
    "digit-diffusion": "digit_diffusion",
    "inr": "inr",
    "cnn-zoo": "cnn_zoo",
    "minilm-lora": "minilm_lora",
}


def recipe_module(name: str):
    if name not in RECIPES:
        known = ", ".join(sorted(RECIPES)) or "none yet"
        raise ZooError(f"unknown zoo recipe {name!r}; available recipes: {known}")
    return importlib.import_module(f"labkit.zoo.recipes.{RECIPES[name]}")


def recorded_settings(store: ZooStore):
    """The settings dataclass a zoo was built with, from its ``zoo.json``."""
    info = store.info
    template = recipe_module(info["recipe"]).settings(info["profile"])
    return from_record(type(template), info["settings"])


@contextlib.contextmanager
def build_threads(n: int = BUILD_THREADS):
    """Run with exactly ``n`` torch threads, then restore: CPU kernels may sum in a thread-count-dependent order,
    so pinning the count makes a zoo's bytes the same on a 2-core laptop and a 16-core workstation."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def build(recipe: str, cfg=None, *, profile: str | None = None, home=None, **overrides) -> ZooStore:
    """Build (or reuse) a zoo. ``cfg`` is what ``labkit.setup`` returned; ``overrides`` change settings
    (``labkit.zoo.settings.with_overrides``: a nested dict changes nested settings).

    A zoo marked complete is served as it is only if its manifest lists every model the build promised and each
    listed file exists with its recorded size; otherwise the build takes the lock, repairs, rebuilds what is
    missing or fails its sha256, and marks it complete again."""
    from labkit.session import pick_device, resolve_profile

    module = recipe_module(recipe)
    profile = cfg.profile if cfg is not None else resolve_profile(profile)
    device = cfg.device if cfg is not None else pick_device()
    settings = with_overrides(module.settings(profile), overrides)
    store = ZooStore.open(recipe, profile, dataclasses.asdict(settings), home=home)
    if store.complete and not store.problems(full=False):
        return store
    with store.lock():  # repairs what an interrupted build (or damage) left; see ZooStore._repair
        if not store.complete or store.problems(full=False):
            store.mark_incomplete()
            t0 = time.perf_counter()
            with build_threads():
                summary = module.build(store, settings, device) or {}
            summary.setdefault("seconds", round(time.perf_counter() - t0, 1))
            summary.setdefault("models", len(store))
            store.mark_complete(summary)
    return store
