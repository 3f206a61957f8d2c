"""The course map: the labs, their notebooks and how long each takes per profile (README, notebook 00)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LABS", "LabInfo", "lab_info"]


@dataclass(frozen=True)
class LabInfo:
    """One lab: its number, notebook stem, title and expected run time per profile."""

    number: str
    stem: str  # notebook file name without .ipynb
    title: str
    cpu_minutes: dict[str, float]  # expected minutes on a 2-core CPU, by profile
    gpu_minutes: dict[str, float]  # expected minutes on one GPU, by profile

    def minutes(self, profile: str, device_type: str = "cpu") -> float:
        """Expected minutes for ``profile`` on ``device_type`` (cuda and mps use the GPU table)."""
        table = self.gpu_minutes if device_type in ("cuda", "mps") else self.cpu_minutes
        return table[profile]


LABS: dict[str, LabInfo] = {
    lab.number: lab
    for lab in [
        LabInfo("00", "00_start_here", "Start here",
                {"smoke": 0.5, "workshop": 1, "full": 1}, {"smoke": 0.5, "workshop": 1, "full": 1}),
        LabInfo("01", "01_model_trees", "Model trees and MoTHer",
                {"smoke": 1, "workshop": 4, "full": 60}, {"smoke": 1, "workshop": 2, "full": 30}),
        LabInfo("02", "02_probex", "ProbeX",
                {"smoke": 1, "workshop": 3, "full": 120}, {"smoke": 1, "workshop": 2, "full": 60}),
        LabInfo("03", "03_probegen", "ProbeGen",
                {"smoke": 1, "workshop": 3, "full": 120}, {"smoke": 1, "workshop": 2, "full": 60}),
        LabInfo("04", "04_dsire", "DSiRe",
                {"smoke": 1, "workshop": 3, "full": 60}, {"smoke": 1, "workshop": 2, "full": 30}),
        LabInfo("05", "05_spectral_detuning", "Spectral DeTuning",
                {"smoke": 1, "workshop": 3, "full": 120}, {"smoke": 1, "workshop": 2, "full": 60}),
    ]
}


def lab_info(lab: str) -> LabInfo:
    """The ``LabInfo`` of lab number ``lab`` ("00" … "05"); ``ValueError`` naming the labs otherwise."""
    try:
        return LABS[lab]
    except KeyError:
        raise ValueError(f"unknown lab {lab!r}; labs are {', '.join(LABS)}") from None


def lab_of_stem(stem: str) -> LabInfo | None:
    """The lab whose notebook is ``stem`` (student/instructor copies keep the same stem), or None."""
    return next((lab for lab in LABS.values() if lab.stem == stem), None)
