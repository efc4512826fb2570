"""minibnn's filter optimisers for PyTorch models: ``pip install 'minibnn[torch]'``.

    from minibnn.torch import CEMA, split_binary
    binary, real = split_binary(model)                  # +-1 weights, everything else
    opts = [CEMA(binary, alpha=1e-3, gamma=0.1), torch.optim.Adam(real, 1e-3)]

``optim`` holds the optimisers (CEMA, Bop, Bop2nd, SecondOrder: the stages of
``minibnn.optim``, bit for bit) and the converters to and from a minibnn optimiser state;
``latent`` latent sgd's twin, ``SGD``: PyTorch's own ``torch.optim.SGD`` with minibnn's
schedules and decoupled decay (close to minibnn's bits, not equal: its header);
``params`` the split of a module's parameters; ``build`` rebuilds an exported run
(``minibnn export RUN.h5 --format torch``, ``model``) and ``optimizers`` its optimisers with
their state (``resume``), so the run trains on in PyTorch.
``import minibnn`` never imports PyTorch; this package needs it. A known limit: a rate given as
a minibnn schedule (a closure) lives in the param group, so ``torch.save(opt.state_dict())``
of such an optimiser fails to pickle it; give numbers, or rebuild the optimiser from the run
(``optimizers``) and load only its state.
"""
from minibnn.errors import MinibnnError

try:
    import torch  # noqa: F401  (PyTorch itself, not this package: imports are absolute)
except ImportError:
    raise MinibnnError("minibnn.torch needs PyTorch: pip install 'minibnn[torch]'") from None

from minibnn.torch.latent import SGD
from minibnn.torch.optim import (CEMA, NAMED, Bop, Bop2nd, SecondOrder, from_name,
                                 load_minibnn_state, minibnn_state)
from minibnn.torch.params import Split, split_binary
from minibnn.torch.model import build
from minibnn.torch.resume import optimizers

__all__ = ["CEMA", "Bop", "Bop2nd", "SecondOrder", "SGD", "NAMED", "from_name", "load_minibnn_state",
           "minibnn_state", "Split", "split_binary", "build", "optimizers"]
