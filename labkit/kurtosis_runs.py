"""How fine-tuning moves a model's weight kurtosis: the direction signal of MoTHer (Horwitz et al., ICLR 2025,
§4.2) watched epoch by epoch (lab 01, ``01_model_trees``).

:func:`kurtosis_trajectory` fine-tunes copies of one model on subsets of a data set and returns κ
(``labkit.methods.mother.kurtosis``) before training and after every epoch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from labkit.forests import square_layers
from labkit.methods.mother import kurtosis
from labkit.training import fit_classifier

__all__ = ["kurtosis_trajectory"]


def kurtosis_trajectory(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor,
                        subsets: Sequence[torch.Tensor], lrs: Sequence[float], epochs: int = 10,
                        batch_size: int = 32, layer_names: Sequence[str] | None = None,
                        seed: int = 0) -> torch.Tensor:
    """Fine-tune copies of ``model`` (one per ``subsets[k]``, row indices of ``X``, with ``lrs[k]``; AdamW) and
    return κ (:func:`labkit.methods.mother.kurtosis`, summed over ``layer_names``, default: the square
    weights) before training and after every epoch: ``[runs, epochs + 1]``. Each run is
    ``labkit.training.fit_classifier`` with AdamW (weight decay 0.01) on its own shuffled mini-batches."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    names = list(layer_names) if layer_names is not None else square_layers(state)
    out = torch.zeros(len(subsets), epochs + 1, dtype=torch.float64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batches of 32 through a tiny model: extra threads only add overhead
    try:
        _trajectories(model, state, names, X, y, subsets, lrs, epochs, batch_size, seed, out)
    finally:
        torch.set_num_threads(threads)
    return out


def _trajectories(model, state, names, X, y, subsets, lrs, epochs, batch_size, seed, out) -> None:
    import copy

    for k, (rows, lr) in enumerate(zip(subsets, lrs)):
        net = copy.deepcopy(model)
        snapshots = [{n: state[n].cpu().clone() for n in names}]

        def snapshot(epoch: int, net=net, snapshots=snapshots) -> None:
            sd = net.state_dict()
            snapshots.append({n: sd[n].detach().cpu().clone() for n in names})

        fit_classifier(net, X[rows], y[rows], epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=0.01,
                       decoupled=True, seed=seed + k, after_epoch=snapshot)
        out[k] = kurtosis({n: torch.stack([s[n] for s in snapshots]) for n in names})
