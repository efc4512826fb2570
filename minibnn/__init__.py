"""minibnn: a readable, framework-free engine for training binary neural networks.

Layers are explicit forward/backward pairs (``minibnn.nn.functional``), optimisers are chains
of small gradient filters (``minibnn.optim``), and ``minibnn.theory`` maps latent-weight
hyperparameters to the two-stage EMA filter of Quist, Li & van Gemert (ICLR 2023).
"""

__version__ = "0.1.0"
