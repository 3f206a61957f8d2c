"""The course map: the labs, their notebooks and how long each takes per profile (README, notebook 00)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LABS", "LabInfo", "course_table", "lab_info"]


@dataclass(frozen=True)
class LabInfo:
    number: str
    stem: str  # notebook file name without .ipynb
    title: str
    idea: str
    cpu_minutes: dict[str, float]  # expected minutes on a 2-core CPU, by profile
    gpu_minutes: dict[str, float]  # expected minutes on one GPU, by profile

    def minutes(self, profile: str, device_type: str = "cpu") -> float:
        table = self.gpu_minutes if device_type in ("cuda", "mps") else self.cpu_minutes
        return table[profile]


LABS: dict[str, LabInfo] = {
    lab.number: lab
    for lab in [
        LabInfo("00", "00_start_here", "Start here",
                "how the kit works: profiles, device, exercises, widgets, papermill",
                {"smoke": 0.5, "workshop": 1, "full": 1}, {"smoke": 0.5, "workshop": 1, "full": 1}),
        LabInfo("01", "01_model_trees", "Model trees and MoTHer",
                "recover a model tree's edges and their direction from weights alone",
                {"smoke": 1, "workshop": 4, "full": 60}, {"smoke": 1, "workshop": 2, "full": 30}),
        LabInfo("02", "02_probex", "ProbeX",
                "learn from one layer's weights; align to text for zero-shot model classification",
                {"smoke": 1, "workshop": 3, "full": 120}, {"smoke": 1, "workshop": 2, "full": 60}),
        LabInfo("03", "03_probegen", "ProbeGen",
                "represent a network by its outputs on probes from a deep linear generator",
                {"smoke": 1, "workshop": 3, "full": 120}, {"smoke": 1, "workshop": 2, "full": 60}),
        LabInfo("04", "04_dsire", "DSiRe",
                "recover a LoRA's fine-tuning dataset size from its singular values",
                {"smoke": 1, "workshop": 3, "full": 60}, {"smoke": 1, "workshop": 2, "full": 30}),
        LabInfo("05", "05_spectral_detuning", "Spectral DeTuning",
                "recover the exact pre-fine-tuning weights from a few LoRA fine-tunes",
                {"smoke": 1, "workshop": 3, "full": 120}, {"smoke": 1, "workshop": 2, "full": 60}),
    ]
}


def lab_info(lab: str) -> LabInfo:
    try:
        return LABS[lab]
    except KeyError:
        raise ValueError(f"unknown lab {lab!r}; labs are {', '.join(LABS)}") from None


def lab_of_stem(stem: str) -> LabInfo | None:
    """The lab whose notebook is ``stem`` (student/instructor copies keep the same stem), or None."""
    return next((lab for lab in LABS.values() if lab.stem == stem), None)


def course_table(profile: str = "workshop") -> str:
    """A markdown table of the course with expected CPU minutes for ``profile``."""
    rows = ["| lab | notebook | what you leave with | CPU minutes |", "|---|---|---|---|"]
    for lab in LABS.values():
        rows.append(f"| {lab.number} {lab.title} | `{lab.stem}.ipynb` | {lab.idea} | {lab.cpu_minutes[profile]:g} |")
    return "\n".join(rows)
