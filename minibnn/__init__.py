"""minibnn: a readable, framework-free engine for training binary neural networks.

Layers are explicit forward/backward pairs (``minibnn.nn.functional``), optimisers are chains
of small gradient filters (``minibnn.optim``), and ``minibnn.theory`` maps latent-weight
hyperparameters to the two-stage EMA filter of Quist, Li & van Gemert (ICLR 2023).
"""

from __future__ import annotations

from minibnn._version import __version__  # noqa: F401  (minibnn.__version__)


from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from minibnn.deploy.trained import TrainedModel


def load(path: str) -> "TrainedModel":
    """The trained model in a run file or packed file: ``.logits(x)``, ``.predict(x)``,
    ``.summary()``, ``.params`` (``minibnn.deploy.trained``). Imports the engine on first call."""
    from minibnn.deploy.trained import load as _load

    return _load(path)
