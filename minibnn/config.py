"""Run configuration: every choice a training run depends on, in one flat, checkable record.

The configuration is stored in the run file as JSON, so ``--resume`` and ``minibnn eval``
rebuild exactly the same model, data and optimiser.

Defaults have one source each: the model builders' keyword defaults (``models.defaults``) and
the optimiser constructors' (``optim.defaults``).  A model or optimiser option left at ``None``
means "the chosen model's / optimiser's default"; ``validate()`` fills it in (so the run file
stores the values actually used), refuses an option the chosen model or optimiser does not
take, and turns every impossible value into a one-line ``MinibnnError``.

``device``, ``backend`` and ``data_dir`` are machine-local (``LOCAL_FIELDS``): they say where
and how this machine computes the run, not what the run is, so ``--resume`` may change them.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from minibnn import kernels, optim
from minibnn.backend import FLOAT_DTYPES
from minibnn.data import DATASET_NAMES
from minibnn.errors import MinibnnError
from minibnn.nn import models
from minibnn.nn.functional import STE_NAMES
from minibnn.optim.schedules import SCHEDULE_NAMES

# Every list of names comes from the module that owns it, so the CLI cannot drift from the code.
MODEL_NAMES = tuple(models.MODEL_BUILDERS)
#: binary-weight optimisers; filter optimisers store +-1 weights, latent ones store reals.
FILTER_OPTIMIZERS = ("cema", "bop", "bop2nd", "bop2nd_corrected")
LATENT_OPTIMIZERS = ("sgd", "adam")
OPTIMIZER_NAMES = FILTER_OPTIMIZERS + LATENT_OPTIMIZERS
DTYPE_NAMES = tuple(FLOAT_DTYPES)
BACKEND_NAMES = kernels.BACKENDS
DEVICE_NAMES = ("cpu", "gpu")
#: the compiled kernel backend that runs on each device ("auto" and "numpy" run anywhere)
BACKEND_DEVICE = {"numba": "cpu", "cuda": "gpu"}

#: model options: config field = builder keyword; default = the chosen builder's default
MODEL_FIELDS = ("hidden", "width", "act_ste", "weight_ste", "scale", "init_scale")
#: binary-optimiser options: config field = constructor keyword; default = its default
OPTIMIZER_FIELDS = ("alpha", "gamma", "threshold", "sigma", "lr", "momentum", "weight_decay",
                    "decoupled")
#: real-parameter (Adam) options: config field -> ``optim.adam`` keyword
REAL_FIELDS = {"real_lr": "lr", "real_weight_decay": "weight_decay"}
#: machine-local settings (``--resume`` may change them)
LOCAL_FIELDS = ("device", "backend", "data_dir")
FLOAT_FIELDS = ("init_scale", "alpha", "gamma", "threshold", "sigma", "lr", "momentum",
                "weight_decay", "real_lr", "real_weight_decay", "label_smoothing")


def model_options(model: str) -> dict[str, Any]:
    """The config's model fields that builder ``model`` takes, with the builder's defaults."""
    found = models.defaults(model)
    return {f: _plain(found[f]) for f in MODEL_FIELDS if f in found}


def optimizer_options(optimizer: str) -> dict[str, Any]:
    """The config's optimiser fields that ``optimizer`` takes, with its constructor's defaults."""
    found = optim.defaults(optimizer)
    return {f: _plain(found[f]) for f in OPTIMIZER_FIELDS if f in found}


def real_options() -> dict[str, Any]:
    """Defaults of the real-parameter fields, read from ``optim.adam``."""
    found = optim.defaults("adam")
    return {field: _plain(found[key]) for field, key in REAL_FIELDS.items()}


def _plain(value: Any) -> Any:
    """Tuples become lists, as JSON stores them (``hidden``)."""
    return list(value) if isinstance(value, tuple) else value


@dataclass
class TrainConfig:
    """Everything a run depends on.  Defaults train the default model well on MNIST.

    ``None`` = the chosen model's or optimiser's own default (filled in by ``validate``).
    """

    # what to train (defaults: models.defaults(model))
    model: str = "binary_mlp"
    dataset: str = "mnist"
    hidden: list[int] | None = None         # binary_mlp widths
    width: int | None = None                # binary_cnn / birealnet base width
    act_ste: str | None = None
    weight_ste: str | None = None
    scale: bool | None = None
    init_scale: float | None = None
    # binary weights: a filter optimiser (+-1 weights) or a latent one (optim.defaults(optimizer))
    optimizer: str = "cema"
    alpha: float | None = None              # cema
    gamma: float | None = None              # cema / bop / bop2nd
    threshold: float | None = None          # bop / bop2nd
    sigma: float | None = None              # bop2nd
    lr: float | None = None                 # sgd / adam on latent binary weights
    momentum: float | None = None           # sgd
    weight_decay: float | None = None       # sgd / adam
    decoupled: bool | None = None           # sgd / adam
    # real-valued parameters (first/last layer, BatchNorm): Adam, as in the paper's code
    real_lr: float | None = None
    real_weight_decay: float | None = None
    schedule: str = "linear"         # applied to alpha / lr, once per epoch
    real_schedule: str | None = None  # the real parameters' lr schedule (None: --schedule's)
    # loop
    epochs: int = 10
    batch_size: int = 100
    label_smoothing: float = 0.0
    shift: int = 2                    # random translation of training images by <= shift pixels
    seed: int = 0
    dtype: str = "float32"
    val_split: int = 0                # hold out N training images (stratified, seeded) as val
    test_every_epoch: bool = False    # with val_split: also evaluate the test set every epoch
    # machine-local (LOCAL_FIELDS)
    device: str = "cpu"
    backend: str = "auto"             # kernels: auto (numba on CPU, cuda on GPU) | numpy | ...
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
        for name, absent_means in ADDED_FIELDS.items():
            data.setdefault(name, absent_means)
        if set(data) != known:
            unknown, missing = sorted(set(data) - known), sorted(known - set(data))
            raise MinibnnError(f"run file config does not match this minibnn version "
                               f"(unknown keys {unknown}, missing keys {missing})")
        try:
            return cls(**data).validate()
        except TypeError as exc:
            raise MinibnnError(f"run file config has a value of the wrong type ({exc})") from None

    def validate(self) -> "TrainConfig":
        """Fill every ``None`` option with its default (in place), check every value; ``self``."""
        _one_of("model", self.model, MODEL_NAMES)
        _one_of("dataset", self.dataset, DATASET_NAMES)
        _one_of("optimizer", self.optimizer, OPTIMIZER_NAMES)
        _one_of("schedule", self.schedule, SCHEDULE_NAMES)
        if self.real_schedule is None:
            self.real_schedule = self.schedule
        _one_of("real-schedule", self.real_schedule, SCHEDULE_NAMES)
        _one_of("dtype", self.dtype, DTYPE_NAMES)
        _one_of("device", self.device, DEVICE_NAMES)
        _one_of("backend", self.backend, BACKEND_NAMES)
        self._resolve("model", self.model, MODEL_FIELDS, model_options(self.model))
        self._resolve("optimizer", self.optimizer, OPTIMIZER_FIELDS,
                      optimizer_options(self.optimizer))
        for name, default in real_options().items():
            if getattr(self, name) is None:
                setattr(self, name, default)
        self._check_values()
        return self

    def _resolve(self, kind: str, choice: str, fields: tuple[str, ...],
                 options: dict[str, Any]) -> None:
        """Defaults for the options ``choice`` takes; an option it does not take must be None."""
        for name in fields:
            value = getattr(self, name)
            if name in options:
                if value is None:
                    setattr(self, name, options[name])
            elif value is not None:
                takes = ", ".join(_flag(o) for o in options) or "none"
                raise MinibnnError(f"{_flag(name)} does not apply to --{kind} {choice} "
                                   f"(its options: {takes})")

    def _check_values(self) -> None:
        if self.act_ste is not None:
            _one_of("act-ste", self.act_ste, STE_NAMES)
        if self.weight_ste is not None:
            _one_of("weight-ste", self.weight_ste, STE_NAMES)
        wanted = BACKEND_DEVICE.get(self.backend, self.device)
        if wanted != self.device:
            raise MinibnnError(f"--backend {self.backend} runs on the {wanted.upper()}, not with "
                               f"--device {self.device} (use auto or numpy)")
        for name in FLOAT_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise MinibnnError(f"{_flag(name)} must be a finite number, got {value!r}")
        for name in ("alpha", "gamma", "sigma"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value <= 1.0:
                raise MinibnnError(f"--{name} must be in (0, 1], got {value}")
        for name in ("lr", "real_lr", "weight_decay", "real_weight_decay", "threshold"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise MinibnnError(f"{_flag(name)} must be >= 0, got {value}")
        if self.momentum is not None and not 0.0 <= self.momentum < 1.0:
            raise MinibnnError(f"--momentum must be in [0, 1), got {self.momentum}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise MinibnnError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        for name in ("epochs", "width"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise MinibnnError(f"{_flag(name)} must be >= 1, got {value}")
        if self.batch_size < 2:
            raise MinibnnError(f"--batch-size must be >= 2 (BatchNorm needs two samples), "
                               f"got {self.batch_size}")
        if self.seed < 0:
            raise MinibnnError(f"--seed must be >= 0, got {self.seed}")
        if self.hidden is not None and (len(self.hidden) < 2 or min(self.hidden) < 1):
            raise MinibnnError(f"--hidden needs at least two positive widths (the first layer is "
                               f"real-valued, the next ones binary), got {self.hidden}")
        if self.shift < 0:
            raise MinibnnError(f"--shift must be >= 0, got {self.shift}")
        if self.train_subset is not None and self.train_subset < 2:
            raise MinibnnError(f"--train-subset must be >= 2 (BatchNorm needs two samples), "
                               f"got {self.train_subset}")
        if self.val_split < 0:
            raise MinibnnError(f"--val-split must be >= 0 images, got {self.val_split}")
        if self.test_every_epoch and not self.val_split:
            raise MinibnnError("--test-every-epoch only applies with --val-split (without a "
                               "validation split the test set is evaluated every epoch)")
        if self.init_scale is not None and self.init_scale <= 0:
            raise MinibnnError(f"--init-scale must be > 0, got {self.init_scale}")
        if self.scale and self.binary_storage == "binary":
            raise MinibnnError(f"--scale needs latent weights; optimizer {self.optimizer!r} "
                               "stores +-1 weights (use --optimizer sgd or adam)")


#: fields added after run files were first written, and what their absence means: those runs
#: could not use the feature, so this is their exact setting (not a new default)
ADDED_FIELDS: dict[str, Any] = {"val_split": 0, "test_every_epoch": False,
                                "real_schedule": None}   # None: the run's --schedule


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _one_of(flag: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise MinibnnError(f"unknown {flag} {value!r}; expected one of {', '.join(allowed)}")
