"""Run configuration: every choice a training run depends on, in one flat, checkable record.

The configuration is stored in the run file as JSON, so ``--resume`` and ``minibnn eval``
rebuild exactly the same model, data and optimiser.  ``validate()`` turns every impossible
value into a one-line ``MinibnnError``.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from minibnn.backend import FLOAT_DTYPES
from minibnn.data import DATASET_NAMES
from minibnn.errors import MinibnnError
from minibnn.kernels import CPU_BACKENDS
from minibnn.nn.functional import STE_NAMES
from minibnn.nn.models import MODEL_BUILDERS
from minibnn.optim.schedules import SCHEDULE_NAMES

# Every list of names comes from the module that owns it, so the CLI cannot drift from the code.
MODEL_NAMES = tuple(MODEL_BUILDERS)
#: binary-weight optimisers; filter optimisers store +-1 weights, latent ones store reals.
FILTER_OPTIMIZERS = ("cema", "bop", "bop2nd")
LATENT_OPTIMIZERS = ("sgd", "adam")
OPTIMIZER_NAMES = FILTER_OPTIMIZERS + LATENT_OPTIMIZERS
DTYPE_NAMES = tuple(FLOAT_DTYPES)
BACKEND_NAMES = CPU_BACKENDS
FLOAT_FIELDS = ("init_scale", "alpha", "gamma", "threshold", "sigma", "lr", "momentum",
                "weight_decay", "real_lr", "real_weight_decay", "label_smoothing")


@dataclass
class TrainConfig:
    """Everything a run depends on.  Defaults train the default model well on MNIST."""

    # what to train
    model: str = "binary_mlp"
    dataset: str = "mnist"
    hidden: list[int] = field(default_factory=lambda: [1024, 1024])   # binary_mlp widths
    width: int = 32                                                   # binary_cnn / birealnet
    act_ste: str = "approx"          # Bi-Real polynomial STE for activations
    weight_ste: str = "identity"
    scale: bool = False
    init_scale: float = 1.0
    # binary weights: the filter optimiser (CEMA) or a latent optimiser
    optimizer: str = "cema"
    alpha: float = 1e-3
    gamma: float = 1e-1
    threshold: float = 1e-6          # bop / bop2nd
    sigma: float = 1e-3              # bop2nd
    lr: float = 0.01                 # latent sgd/adam on binary weights
    momentum: float = 0.9
    weight_decay: float = 0.0
    decoupled: bool = False
    # real-valued parameters (first/last layer, BatchNorm): Adam, as in the paper's code
    real_lr: float = 1e-3
    real_weight_decay: float = 0.0
    schedule: str = "linear"         # applied to alpha / lr and to real_lr, once per epoch
    # loop
    epochs: int = 10
    batch_size: int = 100
    label_smoothing: float = 0.0
    shift: int = 2                    # random translation of training images by <= shift pixels
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    backend: str = "numba"            # CPU kernels: "numba" (fast) or "numpy" (the reference)
    data_dir: str | None = None
    train_subset: int | None = None   # use only the first N training images (quick runs)

    @property
    def binary_storage(self) -> str:
        return "binary" if self.optimizer in FILTER_OPTIMIZERS else "latent"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        """Rebuild a stored config; every field must be present (no silent new defaults)."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise MinibnnError(f"run file config is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise MinibnnError("run file config is not a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        if set(data) != known:
            unknown, missing = sorted(set(data) - known), sorted(known - set(data))
            raise MinibnnError(f"run file config does not match this minibnn version "
                               f"(unknown keys {unknown}, missing keys {missing})")
        try:
            return cls(**data).validate()
        except TypeError as exc:
            raise MinibnnError(f"run file config has a value of the wrong type ({exc})") from None

    def validate(self) -> "TrainConfig":
        _one_of("model", self.model, MODEL_NAMES)
        _one_of("dataset", self.dataset, DATASET_NAMES)
        _one_of("optimizer", self.optimizer, OPTIMIZER_NAMES)
        _one_of("schedule", self.schedule, SCHEDULE_NAMES)
        _one_of("dtype", self.dtype, DTYPE_NAMES)
        _one_of("device", self.device, ("cpu", "gpu"))
        _one_of("backend", self.backend, BACKEND_NAMES)
        _one_of("act-ste", self.act_ste, STE_NAMES)
        _one_of("weight-ste", self.weight_ste, STE_NAMES)
        for name in ("alpha", "gamma", "sigma"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise MinibnnError(f"--{name} must be in (0, 1], got {value}")
        for name in FLOAT_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise MinibnnError(f"--{name.replace('_', '-')} must be a finite number, got {value!r}")
        for name in ("lr", "real_lr", "weight_decay", "real_weight_decay", "threshold"):
            if getattr(self, name) < 0:
                raise MinibnnError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.momentum < 1.0:
            raise MinibnnError(f"--momentum must be in [0, 1), got {self.momentum}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise MinibnnError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        for name in ("epochs", "width"):
            if getattr(self, name) < 1:
                raise MinibnnError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise MinibnnError(f"--batch-size must be >= 2 (BatchNorm needs two samples), "
                               f"got {self.batch_size}")
        if self.seed < 0:
            raise MinibnnError(f"--seed must be >= 0, got {self.seed}")
        if len(self.hidden) < 2 or min(self.hidden) < 1:
            raise MinibnnError(f"--hidden needs at least two positive widths (the first layer is "
                               f"real-valued, the next ones binary), got {self.hidden}")
        if self.shift < 0:
            raise MinibnnError(f"--shift must be >= 0, got {self.shift}")
        if self.train_subset is not None and self.train_subset < 1:
            raise MinibnnError(f"--train-subset must be >= 1, got {self.train_subset}")
        if self.init_scale <= 0:
            raise MinibnnError(f"--init-scale must be > 0, got {self.init_scale}")
        if self.scale and self.binary_storage == "binary":
            raise MinibnnError(f"--scale needs latent weights; optimizer {self.optimizer!r} "
                               "stores +-1 weights (use --optimizer sgd or adam)")
        return self


def _one_of(flag: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise MinibnnError(f"unknown {flag} {value!r}; expected one of {', '.join(allowed)}")
