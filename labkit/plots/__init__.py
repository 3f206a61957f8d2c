"""Matplotlib figures for the labs. Each function returns a ``Figure`` and never calls ``show``.

One module per subject: ``images`` (weight matrices, image grids), ``diagrams`` (each lab's data-flow diagram and the
LoRA primer), ``trees`` (lab 01), ``probex`` (lab 02), ``probegen`` (lab 03), ``dsire`` (lab 04) and ``detuning``
(lab 05). Every public name is re-exported here, so ``labkit.plots.<name>`` works for all of them.
"""

from labkit.plots import detuning, diagrams, dsire, images, probegen, probex, trees
from labkit.plots.detuning import *  # noqa: F403
from labkit.plots.diagrams import *  # noqa: F403
from labkit.plots.dsire import *  # noqa: F403
from labkit.plots.images import *  # noqa: F403
from labkit.plots.probegen import *  # noqa: F403
from labkit.plots.probex import *  # noqa: F403
from labkit.plots.trees import *  # noqa: F403

__all__ = [name for module in (detuning, diagrams, dsire, images, probegen, probex, trees) for name in module.__all__]
