"""Every number the kit compares against a paper, keyed by a stable name, with where it comes from.

Each entry of ``NUMBERS`` is a ``PaperNumber``: ``value`` (None where nobody could verify it), ``std``, ``source``,
``status`` and, for unverified entries, ``claimed`` / ``claimed_std`` (what our spec transcribed, kept as context
but never printed or recorded as "paper"). ``status`` is one of ``STATUSES``:

* ``"paper"``: the paper's own number, read in the abstract or the authors' README/code, or in a secondary
  transcription of the paper (``source`` says which);
* ``"rerun"``: a later rerun of the method by someone else (MVProbe's ProbeX rerun), not the paper;
* ``"unverified"``: the paper's table could not be read; ``value`` is None.

Audit: ``shared/reference/paper_numbers.md``. Its sources, as cited in ``source`` below: S2 = DSiRe abstract
(vision.huji.ac.il/dsire) and github.com/MoSalama98/DSiRe README (40738e1); S3 = sciencestack.ai/paper/2406.19395
(secondary); S5 = github.com/eliahuhorwitz/ProbeX README (3eb20d4); S6 = github.com/AI-hew-math/MVProbe README
(03cab9a); S7 = a third-party note on ProbeX (secondary, possibly AI-written); S9 = a third-party claims file
citing proceedings.mlr.press/v235/horwitz24a (secondary, likely the same summary our spec cites).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["NUMBERS", "STATUSES", "PaperNumber", "paper", "rerun"]

STATUSES = ("paper", "rerun", "unverified")


@dataclass(frozen=True)
class PaperNumber:
    value: float | None
    source: str
    status: str
    std: float | None = None
    claimed: float | None = None
    claimed_std: float | None = None
    note: str = ""


_P7 = "ProbeX paper via S7 (secondary transcription)"
_S6 = "MVProbe rerun of ProbeX (S6: seeds 1-5, lr 3e-4, 3000 epochs)"
_S6_ROW = "MVProbe README (S6); whether the ProbeX paper reports it is unverified"

NUMBERS: dict[str, PaperNumber] = {}

# ProbeX, Model-J discriminative, accuracy %: the paper (S7) and MVProbe's rerun (S6, at MVProbe's layers)
for _subset, _paper, _rerun, _std, _layer, _statnn, _probegen in (
        ("SupViT", 88.5, 88.08, 0.39, 59, 55.80, 78.48), ("ResNet", 84.2, 81.61, 1.29, 67, 55.20, 78.27),
        ("MAE", 76.5, 77.11, 0.14, 64, 54.83, 70.68), ("DINO", 70.5, 72.54, 0.18, 47, 55.69, 61.26)):
    NUMBERS[f"probex.{_subset}.probex"] = PaperNumber(_paper, _P7, "paper")
    NUMBERS[f"probex.{_subset}.probex.rerun"] = PaperNumber(_rerun, _S6, "rerun", std=_std)
    NUMBERS[f"probex.{_subset}.rerun_layer"] = PaperNumber(_layer, "MVProbe README (S6): the rerun's layer", "rerun")
    NUMBERS[f"probex.{_subset}.statnn"] = PaperNumber(None, _S6_ROW, "unverified", claimed=_statnn)
    NUMBERS[f"probex.{_subset}.probegen"] = PaperNumber(None, _S6_ROW, "unverified", claimed=_probegen)
# ProbeX, SD_200 (Stable Diffusion LoRAs), top-1 accuracy %
NUMBERS["probex.SD_200.seen"] = PaperNumber(97.3, _P7, "paper")
NUMBERS["probex.SD_200.seen.rerun"] = PaperNumber(98.48, _S6, "rerun", std=0.48)
NUMBERS["probex.SD_200.zero_shot"] = PaperNumber(89.8, _P7, "paper")
NUMBERS["probex.SD_200.zero_shot.rerun"] = PaperNumber(94.01, _S6, "rerun", std=0.77)

# DSiRe: the spec's transcription of Tables 2-4 (config: source, DSiRe, Frobenius-NN or None; metric: (mean, std)).
# Only two means could be checked (paper_numbers.md §4); the rest stay unverified, with the spec's value as `claimed`.
_T2 = "Table 2 (SD 1.5, rank 32)"
DSIRE_TABLES = {
    "low_8": ("Table 4 (rank 8)", {"mae": (0.43, 0.04), "mape": (14.8, 2.3), "accuracy": (66.0, 3.08)}, None),
    "low_16": ("Table 4 (rank 16)", {"mae": (0.42, 0.03), "mape": (12.4, 1.11), "accuracy": (67.7, 2.3)}, None),
    "low_32": (_T2, {"mae": (0.36, 0.04), "mape": (11.36, 1.55), "accuracy": (69.30, 3.83)},
               {"mae": (0.43, 0.04), "mape": (15.14, 2.12), "accuracy": (65.29, 2.42)}),
    "medium_16": ("Table 4 (rank 16)", {"mae": (1.67, 0.17), "mape": (4.32, 0.46), "accuracy": (84.04, 1.85)}, None),
    "medium_32": (_T2, {"mae": (1.48, 0.21), "mape": (3.97, 0.73), "accuracy": (86.10, 1.99)},
                  {"mae": (1.56, 0.19), "mape": (4.16, 0.75), "accuracy": (85.33, 1.81)}),
    "medium_32_2": ("Table 3 (SD 2, rank 32)", {"mae": (2.51, 0.22), "mape": (7.46, 0.95), "accuracy": (77.43, 1.70)},
                    {"mae": (2.95, 0.28), "mape": (11.99, 3.93), "accuracy": (73.90, 2.21)}),
    "high_32": (_T2, {"mae": (41.77, 6.61), "mape": (5.96, 1.46), "accuracy": (91.90, 1.28)},
                {"mae": (68.62, 5.53), "mape": (9.25, 1.21), "accuracy": (86.51, 1.12)}),
}
for _config, (_table, _dsire, _frob) in DSIRE_TABLES.items():
    for _method, _row in (("dsire", _dsire), ("frobenius_nn", _frob)):
        for _metric, (_mean, _sd) in (_row or {}).items():
            NUMBERS[f"dsire.{_config}.{_method}.{_metric}"] = PaperNumber(
                None, f"DSiRe {_table}, as transcribed by our spec (table not readable)", "unverified",
                claimed=_mean, claimed_std=_sd)
NUMBERS["dsire.low_32.dsire.mae"] = PaperNumber(
    0.36, "DSiRe abstract / README (S2); the config (low range, rank 32) is the spec's", "paper",
    claimed_std=0.04, note="± 0.04 unverified")
NUMBERS["dsire.high_32.dsire.mae"] = PaperNumber(
    41.77, "DSiRe high range via S3 (secondary: ~41.8)", "paper", claimed_std=6.61, note="± 6.61 unverified")
NUMBERS["dsire.defence.medium.mae"] = PaperNumber(None, "DSiRe Table 6 as transcribed by our spec (not readable)",
                                                  "unverified", claimed=4.62)
NUMBERS["dsire.medium.accuracy_one_train_set"] = PaperNumber(
    None, "DSiRe Fig. 5 as transcribed by our spec (not readable)", "unverified", claimed=80.0)

# Spectral DeTuning (all via S9, a secondary source that is likely not independent of our spec)
_S9 = "Spectral DeTuning paper via S9 (secondary)"
NUMBERS["detune.sd15.w_error"] = PaperNumber(-17.816, f"{_S9}: SD 1.5, 5 LoRAs", "paper")
NUMBERS["detune.sd15.mean_lora_w_error"] = PaperNumber(-7.540, f"{_S9}: SD 1.5, 5 LoRAs, Mean-LoRA", "paper")
NUMBERS["detune.sd15.converged_share"] = PaperNumber(0.95, f"{_S9}: '> 95 %' (a bound)", "paper")
NUMBERS["detune.sd15.converged_share_no_scheduler"] = PaperNumber(0.40, f"{_S9}: '< 40 %' (a bound)", "paper")
NUMBERS["detune.loss_werror_correlation"] = PaperNumber(0.994, f"{_S9}: ρ, type not stated", "paper")


def paper(key: str) -> float | None:
    """The paper's own value for ``key``, or None where it is a rerun's or nobody verified it."""
    n = NUMBERS[key]
    return n.value if n.status == "paper" else None


def rerun(key: str) -> float | None:
    """The value of a rerun (status ``"rerun"``) for ``key``, else None."""
    n = NUMBERS[key]
    return n.value if n.status == "rerun" else None
