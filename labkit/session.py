"""Session setup: profiles, device, seeds, threads, paths and the lab's metrics run (DESIGN §4).

Every notebook starts with a literals-only ``parameters`` cell (``profile = "workshop"``) followed by::

    cfg = labkit.setup(profile, lab="04")

which resolves the profile (the environment variable ``LABKIT_PROFILE`` wins over the notebook's value, since
nbval cannot inject parameters), picks the device (cuda → mps → cpu), seeds torch / numpy / random, sets the
torch thread count, resolves the kit's folders, starts recording the lab's metrics (``labkit.report.start``;
``record=False`` opts out) and prints one banner line that says all of it, including where the metrics go.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from labkit import report
from labkit.course import LABS, lab_info
from labkit.paths import kit_folder

__all__ = ["PROFILES", "Config", "Profile", "ProfileError", "kit_home", "pick_device", "resolve_profile", "setup"]


class ProfileError(ValueError):
    """An unknown profile name."""


@dataclass(frozen=True)
class Profile:
    """A named size of every lab: how big the zoos are and how long a notebook may take."""

    name: str
    purpose: str
    budget_cpu_s: float  # per-notebook budget on a 2-core CPU
    budget_gpu_s: float  # per-notebook budget on one GPU


PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", "CI and tests: tiny zoos, sanity-level numbers", 90, 60),
    "workshop": Profile("workshop", "people: the paper's effect, clearly, in minutes", 600, 120),
    "full": Profile("full", "replication on a GPU: paper-scale settings, public benchmarks", 4 * 3600, 3600),
}


@dataclass
class Config:
    """What ``setup`` resolved. Labs read sizes from ``profile`` and put tensors on ``device``."""

    profile: str
    device: torch.device
    seed: int
    threads: int
    home: Path
    lab: str | None = None
    expected_minutes: float | None = None
    record: bool = False  # whether setup started a metrics run (labkit.report.start) for this session
    metrics_file: Path | None = None  # where that run is written ($LABKIT_METRICS); None: in memory only

    @property
    def smoke(self) -> bool:
        return self.profile == "smoke"

    def pick(self, smoke, workshop, full=None):
        """Choose a value by profile: ``cfg.pick(smoke=8, workshop=64, full=512)`` (full defaults to workshop)."""
        return {"smoke": smoke, "workshop": workshop, "full": workshop if full is None else full}[self.profile]

    def banner(self) -> str:
        what = f"lab {self.lab}" if self.lab else "labkit"
        eta = f"~{self.expected_minutes:g} min expected" if self.expected_minutes is not None else "time unknown"
        if not self.record:
            metrics = "metrics not recorded"
        elif self.metrics_file is not None:
            metrics = f"recording metrics to {self.metrics_file}"
        else:
            metrics = f"recording metrics in memory (${report.METRICS_ENV} unset)"
        return (
            f"{what} | profile={self.profile} | device={self.device} ({self.threads} threads) | "
            f"{eta} | seed={self.seed} | zoos in {self.home} | {metrics}"
        )


def resolve_profile(profile: str | None) -> str:
    """Return the profile to use: ``$LABKIT_PROFILE`` if set, else ``profile``; reject unknown names."""
    name = os.environ.get("LABKIT_PROFILE") or profile or "workshop"
    name = name.strip().lower()
    if name not in PROFILES:
        raise ProfileError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return name


def pick_device(device: str = "auto") -> torch.device:
    """``"auto"`` → cuda if available, else mps, else cpu; anything else is passed to ``torch.device``."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def kit_home() -> Path:
    """The folder that holds zoos and caches: ``$LABKIT_HOME``, else ``.labkit`` in the checkout, else ``./.labkit``."""
    return kit_folder("LABKIT_HOME", ".labkit")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (learners use the legacy global RNG too)
    torch.manual_seed(seed)


def setup(
    profile: str | None = "workshop",
    *,
    lab: str | None = None,
    seed: int = 0,
    device: str = "auto",
    threads: int | None = None,
    record: bool = True,
    quiet: bool = False,
) -> Config:
    """Resolve a session for one notebook and print its banner line (DESIGN §4).

    ``lab`` is the notebook's two-digit number ("00".."05"); it selects the expected time shown in the banner.
    With ``record=True`` (the default) setup also starts a fresh metrics run for ``lab`` (``labkit.report.start``:
    earlier metrics of this process are forgotten); what the notebook then records with ``labkit.report.record``
    and ``labkit.exercises.check`` is written to ``$LABKIT_METRICS`` (``labkit run`` sets it to
    ``runs/<profile>/<stem>/metrics.json``) or, without it, kept in memory. The banner says which;
    ``record=False`` leaves the metrics alone (for commands and scripts that are not a lab).
    """
    name = resolve_profile(profile)
    if lab is not None and lab not in LABS:
        raise ValueError(f"unknown lab {lab!r}; labs are {', '.join(LABS)}")
    dev = pick_device(os.environ.get("LABKIT_DEVICE", device))
    n_threads = threads or min(os.cpu_count() or 1, 8)
    torch.set_num_threads(n_threads)
    seed_everything(seed)
    home = kit_home()
    expected = lab_info(lab).minutes(name, dev.type) if lab is not None else None
    cfg = Config(name, dev, seed, n_threads, home, lab, expected, record=record,
                 metrics_file=report.metrics_file() if record else None)
    if record:
        report.start(cfg)
    if not quiet:
        print(cfg.banner())
    return cfg
