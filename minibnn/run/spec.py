"""Run spec: what a training run *is*, as one typed, nested, checkable record.

    RunSpec(model=BinaryMlp(hidden=(1024, 1024), ...),     # one variant per model
            binary_optimizer=Cema(alpha=1e-3, gamma=0.1, schedule="linear"),  # per optimiser
            real_optimizer=RealAdam(lr=1e-3, weight_decay=0.0, schedule="linear"),
            data=Data(name="mnist", shift=2, val_split=0, train_subset=None),
            loop=Loop(epochs=10, batch_size=100, seed=0, dtype="float32", ...))

Each variant holds only its own options, so an option that does not apply to the chosen model
or optimiser cannot be stored; ``spec_from_options`` (the one builder, used by ``minibnn
train``, sweeps and old run files) turns flat option names (the CLI's long options, ``lr``,
``real_lr``, ``dataset``, ...) into a spec and refuses an irrelevant one with a one-line error.

Defaults have one source each: the model builders' keyword defaults (``models.defaults``), the
optimiser constructors' (``optim.defaults``), and the field defaults of ``Data`` and ``Loop``
below.  Every record checks its values when it is made (``__post_init__``), so a spec that
exists is valid.

Machine-local settings (device, kernel backend, data folder, threads, what is logged: step
metrics, TensorBoard) say where and how this machine computes the run, not what the run is:
they live in ``Local``, outside the spec.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Union

from minibnn import kernels, optim
from minibnn.data.augment import FILLS
from minibnn.backend import FLOAT_DTYPES
from minibnn.data import DATASET_NAMES
from minibnn.nn.containers import LAYOUTS
from minibnn.kernels.threads import check_threads
from minibnn.errors import MinibnnError
from minibnn.nn import models
from minibnn.nn.functional import STE_NAMES
from minibnn.optim.schedules import SCHEDULE_NAMES

if TYPE_CHECKING:
    from minibnn.nn.models import Model
    from minibnn.run.files import RunFile

MODEL_NAMES = tuple(models.MODEL_BUILDERS)
DTYPE_NAMES = tuple(FLOAT_DTYPES)
BACKEND_NAMES = kernels.BACKENDS
DEVICE_NAMES = ("cpu", "gpu")
#: the compiled kernel backend that runs on each device ("auto" and "numpy" run anywhere)
BACKEND_DEVICE = {"numba": "cpu", "cuda": "gpu"}
#: the decay applied to alpha / lr once per epoch unless --schedule says otherwise
DEFAULT_SCHEDULE = "linear"


# --- value checks: each raises a one-line MinibnnError naming the option as a flag ---------

def flag(name: str) -> str:
    """``real_lr`` -> ``--real-lr``: how options are named in every message."""
    return "--" + name.replace("_", "-")


def one_of(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise MinibnnError(f"unknown {flag(name)[2:]} {value!r}; expected one of "
                           f"{', '.join(allowed)}")


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MinibnnError(f"{flag(name)} must be a finite number, got {value!r}")
    return float(value)


#: the largest count an integer option may hold (epochs, sizes, widths; a run file stores
#: counts as 64-bit integers, and steps = epochs * batches must fit too)
MAX_COUNT = 2 ** 31 - 1


def _integer(name: str, value: Any, minimum: int, why: str = "",
             maximum: int | None = MAX_COUNT) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MinibnnError(f"{flag(name)} must be an integer, got {value!r}")
    if value < minimum:
        raise MinibnnError(f"{flag(name)} must be >= {minimum}{why}, got {value}")
    if maximum is not None and value > maximum:
        raise MinibnnError(f"{flag(name)} must be at most {maximum:,}, got {value:,}")
    return value


def int_list(name: str, text: str) -> tuple[int, ...]:
    """Comma-separated integers (``"64,64"``), the command line's form of a list option."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise MinibnnError(f"{flag(name)} must be comma-separated integers, got {text!r}") from None


def _boolean(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise MinibnnError(f"{flag(name)} must be true or false, got {value!r}")


def _rate(name: str, value: Any) -> None:
    """An EMA rate: in (0, 1]."""
    if not 0.0 < _number(name, value) <= 1.0:
        raise MinibnnError(f"{flag(name)} must be in (0, 1], got {value}")


def _nonnegative(name: str, value: Any) -> None:
    if _number(name, value) < 0:
        raise MinibnnError(f"{flag(name)} must be >= 0, got {value}")


def _checked_fields(record: Any, checks: Mapping[str, Any]) -> None:
    for name, check in checks.items():
        check(name, getattr(record, name))


# --- models: one variant per builder, fields = the builder's options ----------------------

def _ste(name: str, value: Any) -> None:
    one_of(name, value, STE_NAMES)


def _init_scale(name: str, value: Any) -> None:
    if _number(name, value) <= 0:
        raise MinibnnError(f"{flag(name)} must be > 0, got {value}")


def _layout(name: str, value: Any) -> None:
    one_of(name, value, LAYOUTS)


def _precision(name: str, value: Any) -> None:
    models.check_precision(name, value)


_COMMON_MODEL_CHECKS = {"act_ste": _ste, "weight_ste": _ste, "scale": _boolean,
                        "init_scale": _init_scale, "layout": _layout, "weights": _precision,
                        "activations": _precision}

#: fields added after run files and sweep ids existed, by section, with the value every
#: earlier run had: a stored spec without them reads as that value, and a sweep id leaves them
#: out at it (``sweep_spec.spec_id``), so earlier sweep folders keep their ids
LATER_FIELDS: dict[str, dict[str, Any]] = {
    "model": {"layout": "nhwc", "weights": "binary", "activations": "binary"},
    "loop": {"teacher": None, "distill": 1.0, "init_from": None, "init_weight_decay": 0.0},
}


@dataclass(frozen=True)
class BinaryMlp:
    """``models.binary_mlp``: a real first layer, binary hidden layers, a real last layer."""
    name: ClassVar[str] = "binary_mlp"
    hidden: tuple[int, ...]
    act_ste: str
    weight_ste: str
    scale: bool
    init_scale: float
    layout: str
    weights: str
    activations: str

    def __post_init__(self) -> None:
        if isinstance(self.hidden, str):            # the CLI's spelling, "1024,1024"
            object.__setattr__(self, "hidden", int_list("hidden", self.hidden))
        object.__setattr__(self, "hidden", tuple(self.hidden))
        if len(self.hidden) < 2 or any(isinstance(h, bool) or not isinstance(h, int) or h < 1
                                       for h in self.hidden):
            raise MinibnnError(f"--hidden needs at least two positive integer widths (the "
                               f"first layer is real-valued, the next ones binary), got "
                               f"{list(self.hidden)}")
        _checked_fields(self, _COMMON_MODEL_CHECKS)


@dataclass(frozen=True)
class _ConvNet:
    """The options of the convolutional builders: a base width and the binary-layer options."""
    width: int
    act_ste: str
    weight_ste: str
    scale: bool
    init_scale: float
    layout: str
    weights: str
    activations: str

    def __post_init__(self) -> None:
        _integer("width", self.width, 1)
        _checked_fields(self, _COMMON_MODEL_CHECKS)


@dataclass(frozen=True)
class BinaryCnn(_ConvNet):
    """``models.binary_cnn``: VGG-small-like, six convs (the first real), max-pools."""
    name: ClassVar[str] = "binary_cnn"


@dataclass(frozen=True)
class BiRealNet(_ConvNet):
    """``models.birealnet``: a small Bi-Real ResNet (real stem and head)."""
    name: ClassVar[str] = "birealnet"


@dataclass(frozen=True)
class ReActNet(_ConvNet):
    """``models.reactnet``: a small ReActNet-A-like network (RSign, RPReLU, real stem and head)."""
    name: ClassVar[str] = "reactnet"


ModelSpec = Union[BinaryMlp, BinaryCnn, BiRealNet, ReActNet]
MODEL_VARIANTS: dict[str, type] = {v.name: v for v in (BinaryMlp, BinaryCnn, BiRealNet,
                                                       ReActNet)}


# --- binary-weight optimisers: one variant per optimiser ----------------------------------

def _schedule_name(name: str, value: Any) -> None:
    one_of(name, value, SCHEDULE_NAMES)


@dataclass(frozen=True)
class Cema:
    """The paper's filter optimiser on +-1 weights; ``alpha`` decays by ``schedule``."""
    name: ClassVar[str] = "cema"
    alpha: float
    gamma: float
    schedule: str = DEFAULT_SCHEDULE

    def __post_init__(self) -> None:
        _checked_fields(self, {"alpha": _rate, "gamma": _rate, "schedule": _schedule_name})


@dataclass(frozen=True)
class Bop:
    """Bop (Helwegen et al. 2019) on +-1 weights: constant threshold and rate."""
    name: ClassVar[str] = "bop"
    threshold: float
    gamma: float

    def __post_init__(self) -> None:
        _checked_fields(self, {"threshold": _nonnegative, "gamma": _rate})


@dataclass(frozen=True)
class Bop2nd:
    """Bop on the second-moment-normalised gradient (Suarez-Ramirez et al. 2021)."""
    name: ClassVar[str] = "bop2nd"
    threshold: float
    gamma: float
    sigma: float

    def __post_init__(self) -> None:
        _checked_fields(self, {"threshold": _nonnegative, "gamma": _rate, "sigma": _rate})


@dataclass(frozen=True)
class Bop2ndCorrected(Bop2nd):
    """``Bop2nd`` with Adam-style bias correction of both moments."""
    name: ClassVar[str] = "bop2nd_corrected"


def _momentum(name: str, value: Any) -> None:
    if not 0.0 <= _number(name, value) < 1.0:
        raise MinibnnError(f"{flag(name)} must be in [0, 1), got {value}")


@dataclass(frozen=True)
class Sgd:
    """SGD on latent real weights (PyTorch's); ``lr`` decays by ``schedule``."""
    name: ClassVar[str] = "sgd"
    lr: float
    momentum: float
    weight_decay: float
    decoupled: bool
    schedule: str = DEFAULT_SCHEDULE

    def __post_init__(self) -> None:
        _checked_fields(self, {"lr": _nonnegative, "momentum": _momentum,
                               "weight_decay": _nonnegative, "decoupled": _boolean,
                               "schedule": _schedule_name})


@dataclass(frozen=True)
class Adam:
    """Adam / AdamW on latent real weights; ``lr`` decays by ``schedule``."""
    name: ClassVar[str] = "adam"
    lr: float
    weight_decay: float
    decoupled: bool
    schedule: str = DEFAULT_SCHEDULE

    def __post_init__(self) -> None:
        _checked_fields(self, {"lr": _nonnegative, "weight_decay": _nonnegative,
                               "decoupled": _boolean, "schedule": _schedule_name})


BinaryOptimizerSpec = Union[Cema, Bop, Bop2nd, Bop2ndCorrected, Sgd, Adam]
OPTIMIZER_VARIANTS: dict[str, type] = {v.name: v for v in (Cema, Bop, Bop2nd, Bop2ndCorrected,
                                                          Sgd, Adam)}
OPTIMIZER_NAMES = tuple(OPTIMIZER_VARIANTS)
#: filter optimisers store +-1 weights, latent ones store reals
FILTER_OPTIMIZERS = ("cema", "bop", "bop2nd", "bop2nd_corrected")
LATENT_OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class RealAdam:
    """Adam on the real-valued parameters (first/last layer, BatchNorm), as the paper's code."""
    lr: float
    weight_decay: float
    schedule: str = DEFAULT_SCHEDULE

    def __post_init__(self) -> None:
        _nonnegative("real_lr", self.lr)
        _nonnegative("real_weight_decay", self.weight_decay)
        _schedule_name("real_schedule", self.schedule)


# --- data and loop ------------------------------------------------------------------------

#: each data set's augmentation where a spec gives none, over ``Data``'s defaults (a 2-pixel
#: shift into the batch minimum, the MNIST family's background): CIFAR-10 trains with the
#: standard recipe, torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip
DATA_RECIPES: dict[str, dict[str, Any]] = {"cifar10": {"shift": 4, "fill": "zero", "flip": True}}


@dataclass(frozen=True)
class Data:
    """The data set and what is done to it: augmentation, held-out validation, subset.

    Built from options by ``spec_from_options``, an augmentation option not given takes the
    data set's recipe (``DATA_RECIPES``) before these defaults."""
    name: str = "mnist"
    shift: int = 2                    # random translation of training images by <= shift pixels
    fill: str = "min"                 # shift's border: the batch minimum, or 0 (zero padding)
    flip: bool = False                # mirror each training image left-right with p = 1/2
    val_split: int = 0                # hold out N training images (stratified, seeded) as val
    train_subset: int | None = None   # use only the first N training images (quick runs)

    def __post_init__(self) -> None:
        one_of("dataset", self.name, DATASET_NAMES)
        _integer("shift", self.shift, 0)
        one_of("fill", self.fill, FILLS)
        _boolean("flip", self.flip)
        _integer("val_split", self.val_split, 0, " images")
        if self.train_subset is not None:
            _integer("train_subset", self.train_subset, 2, " (BatchNorm needs two samples)")


@dataclass(frozen=True)
class Loop:
    """How long and in what arithmetic the run trains."""
    epochs: int = 10
    batch_size: int = 100
    seed: int = 0
    dtype: str = "float32"
    label_smoothing: float = 0.0
    test_every_epoch: bool = False    # with a validation split: test every epoch too
    #: a trained run whose logits the loss matches instead of the labels (``run.recipe``)
    teacher: str | None = None
    #: the distillation temperature T (with ``teacher``)
    distill: float = 1.0
    #: a run whose checkpoint starts this one (two-step training, ``run.recipe``)
    init_from: str | None = None
    #: cema with ``init_from``: the latent weight decay that sizes the initial state
    #: ``v0 = -init_weight_decay * gamma * w1`` (0: only the signs carry over)
    init_weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _integer("epochs", self.epochs, 1)
        _integer("batch_size", self.batch_size, 2, " (BatchNorm needs two samples)")
        _integer("seed", self.seed, 0, maximum=None)    # NumPy seeds take any size
        one_of("dtype", self.dtype, DTYPE_NAMES)
        if not 0.0 <= _number("label_smoothing", self.label_smoothing) < 1.0:
            raise MinibnnError(f"--label-smoothing must be in [0, 1), got "
                               f"{self.label_smoothing}")
        _boolean("test_every_epoch", self.test_every_epoch)
        for name in ("teacher", "init_from"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise MinibnnError(f"{flag(name)} must be the path of a run file, got {value!r}")
        if not _number("distill", self.distill) > 0:
            raise MinibnnError(f"--distill must be a temperature > 0, got {self.distill}")
        if self.distill != 1.0 and self.teacher is None:
            raise MinibnnError("--distill sets the temperature of distilling from --teacher; "
                               "give --teacher RUN.h5")
        _nonnegative("init_weight_decay", self.init_weight_decay)


def _fits_dtype(record: Any, section: str, dtype: str) -> None:
    """Every real-valued option of ``record`` must survive the cast to the run's ``dtype``
    (NumPy casts a Python float to the arrays' dtype): 1e308 overflows float32 to inf, 1e-50
    underflows it to 0."""
    import numpy as np

    for field in dataclasses.fields(record):
        value = getattr(record, field.name)
        if field.type not in ("float", float) or isinstance(value, bool) or value == 0:
            continue                  # only real-valued options (an int from TOML included)
        with np.errstate(over="ignore", under="ignore"):
            cast = float(np.asarray(value, dtype=dtype))
        prefix = "real_" if section == "real_optimizer" else ""
        if not math.isfinite(cast):
            raise MinibnnError(f"{flag(prefix + field.name)} {value:g} overflows {dtype} "
                               f"(largest {float(np.finfo(dtype).max):.3g}); use a smaller "
                               "value or --dtype float64")
        if cast == 0:
            raise MinibnnError(f"{flag(prefix + field.name)} {value:g} underflows {dtype} to "
                               f"0; use a larger value or --dtype float64")


@dataclass(frozen=True)
class RunSpec:
    """Everything a run's result depends on (and nothing machine-local)."""
    model: ModelSpec
    binary_optimizer: BinaryOptimizerSpec
    real_optimizer: RealAdam
    data: Data
    loop: Loop

    def __post_init__(self) -> None:
        if self.model.scale and self.binary_storage == "binary":
            raise MinibnnError(f"--scale needs latent weights; optimizer "
                               f"{self.binary_optimizer.name!r} stores +-1 weights (use "
                               "--optimizer sgd or adam)")
        if self.loop.init_weight_decay and (self.loop.init_from is None
                                            or not isinstance(self.binary_optimizer, Cema)):
            raise MinibnnError("--init-weight-decay sizes cema's initial state from "
                               "--init-from's weights: it needs --optimizer cema and "
                               "--init-from RUN.h5")
        if self.loop.test_every_epoch and not self.data.val_split:
            raise MinibnnError("--test-every-epoch only applies with --val-split (without a "
                               "validation split the test set is evaluated every epoch)")
        for section in ("model", "binary_optimizer", "real_optimizer", "loop"):
            _fits_dtype(getattr(self, section), section, self.loop.dtype)
        if self.loop.teacher is not None:
            import numpy as np

            # the loss is scaled by T^2 and the gradient by T: both must be numbers in dtype
            with np.errstate(over="ignore", under="ignore"):
                t2 = float(np.asarray(self.loop.distill, dtype=self.loop.dtype) ** 2)
            if not math.isfinite(t2) or t2 == 0:
                raise MinibnnError(f"--distill {self.loop.distill:g}: T^2 = {t2:g} in "
                                   f"{self.loop.dtype}; use a temperature nearer 1")

    @property
    def binary_storage(self) -> str:
        """``"binary"``: +-1 weights (filter optimisers); ``"latent"``: real latent weights."""
        return "binary" if self.binary_optimizer.name in FILTER_OPTIMIZERS else "latent"

    def default_out(self) -> str:
        return f"runs/{self.model.name}-{self.data.name}-{self.binary_optimizer.name}.h5"

    def to_dict(self) -> dict[str, Any]:
        """Nested plain data (what the run file stores): each section with its ``name``."""
        out: dict[str, Any] = {}
        for section in SECTIONS:
            record = getattr(self, section)
            values = dataclasses.asdict(record)
            if hasattr(type(record), "name") and "name" not in values:
                values = {"name": record.name, **values}
            out[section] = {k: list(v) if isinstance(v, tuple) else v
                            for k, v in values.items()}
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def options(self) -> dict[str, Any]:
        """The flat options (CLI names without dashes) that rebuild this spec."""
        flat: dict[str, Any] = {}
        for section, values in self.to_dict().items():
            for key, value in values.items():
                flat[OPTION_OF[(section, key)]] = value
        return flat

    def replace(self, **options: Any) -> "RunSpec":
        """A copy with some flat options changed (e.g. ``epochs=20``), checked as new."""
        return spec_from_options({**self.options(), **options})


SECTIONS = ("model", "binary_optimizer", "real_optimizer", "data", "loop")

#: flat option name (a CLI long option without dashes) -> (section, field)
OPTION_SECTIONS: dict[str, tuple[str, str]] = {
    "model": ("model", "name"), "hidden": ("model", "hidden"), "width": ("model", "width"),
    "act_ste": ("model", "act_ste"), "weight_ste": ("model", "weight_ste"),
    "scale": ("model", "scale"), "init_scale": ("model", "init_scale"),
    "layout": ("model", "layout"), "weights": ("model", "weights"),
    "activations": ("model", "activations"),
    "optimizer": ("binary_optimizer", "name"),
    **{f: ("binary_optimizer", f) for f in ("alpha", "gamma", "threshold", "sigma", "lr",
                                            "momentum", "weight_decay", "decoupled",
                                            "schedule")},
    "real_lr": ("real_optimizer", "lr"), "real_weight_decay": ("real_optimizer", "weight_decay"),
    "real_schedule": ("real_optimizer", "schedule"),
    "dataset": ("data", "name"), "shift": ("data", "shift"), "fill": ("data", "fill"),
    "flip": ("data", "flip"), "val_split": ("data", "val_split"),
    "train_subset": ("data", "train_subset"),
    **{f: ("loop", f) for f in ("epochs", "batch_size", "seed", "dtype", "label_smoothing",
                                "test_every_epoch", "teacher", "distill", "init_from",
                                "init_weight_decay")},
}
OPTION_OF = {where: option for option, where in OPTION_SECTIONS.items()}
OPTION_NAMES = tuple(OPTION_SECTIONS)


def variant_options(variant: type) -> tuple[str, ...]:
    """The option fields of a model or optimiser variant (without ``name``)."""
    return tuple(f.name for f in dataclasses.fields(variant))


def _builder_defaults(section: str, name: str) -> dict[str, Any]:
    """The variant's defaults, read from the function it configures (one source)."""
    if section == "model":
        return models.defaults(name)
    return optim.defaults(name)


def _variant(section: str, name: str, given: dict[str, Any]) -> Any:
    """The ``section`` variant ``name`` from the given options; irrelevant ones are errors."""
    variants = MODEL_VARIANTS if section == "model" else OPTIMIZER_VARIANTS
    kind = "model" if section == "model" else "optimizer"
    one_of(kind, name, tuple(variants))
    variant = variants[name]
    fields = variant_options(variant)
    for option in given:
        if option not in fields:
            takes = ", ".join(flag(OPTION_OF[(section, f)]) for f in fields)
            raise MinibnnError(f"{flag(OPTION_OF[(section, option)])} does not apply to "
                               f"--{kind} {name} (its options: {takes})")
    defaults = _builder_defaults(section, name)
    values = {f: given[f] if f in given else defaults[f]
              for f in fields if f in given or f in defaults}
    return variant(**values)


def spec_from_options(options: Mapping[str, Any]) -> RunSpec:
    """The spec given by flat options (only those given; the rest take their defaults).

    An unknown option, or one that the chosen model or optimiser does not take, is a one-line
    ``MinibnnError``; ``real_schedule`` defaults to the binary optimiser's ``schedule``.
    """
    given: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    for option, value in options.items():
        if option not in OPTION_SECTIONS:
            raise MinibnnError(f"unknown option {flag(option)}")
        section, key = OPTION_SECTIONS[option]
        given[section][key] = value
    model = _variant("model", given["model"].pop("name", MODEL_NAMES[0]), given["model"])
    binary = _variant("binary_optimizer", given["binary_optimizer"].pop("name", "cema"),
                      given["binary_optimizer"])
    real_defaults = optim.defaults("adam")
    real = given["real_optimizer"]
    real_optimizer = RealAdam(lr=real.get("lr", real_defaults["lr"]),
                              weight_decay=real.get("weight_decay",
                                                    real_defaults["weight_decay"]),
                              schedule=real.get("schedule", getattr(binary, "schedule",
                                                                    DEFAULT_SCHEDULE)))
    data = given["data"]
    recipe = DATA_RECIPES.get(data.get("name", Data.name), {})
    data = {**recipe, **data}                  # what is given wins over the data set's recipe
    return RunSpec(model, binary, real_optimizer, Data(**data), Loop(**given["loop"]))


def spec_from_dict(data: Any) -> RunSpec:
    """A stored spec (``RunSpec.to_dict`` form) rebuilt and checked; a stored spec must name
    every field (no silent new defaults)."""
    if not isinstance(data, dict) or set(data) != set(SECTIONS) \
            or not all(isinstance(data[s], dict) for s in SECTIONS):
        raise MinibnnError(f"stored spec must have exactly the sections {', '.join(SECTIONS)}")
    # written before these were choices: those runs had the value every run then had
    data = {**data, **{section: {**fields, **data[section]}
                       for section, fields in LATER_FIELDS.items()}}
    options = {OPTION_OF[(s, k)]: v for s in SECTIONS for k, v in data[s].items()
               if (s, k) in OPTION_OF}
    unknown = sorted(f"{s}.{k}" for s in SECTIONS for k in data[s] if (s, k) not in OPTION_OF)
    if unknown:
        raise MinibnnError(f"stored spec has unknown fields {unknown}")
    spec = spec_from_options(options)
    missing = sorted(f"{s}.{k}" for s, values in spec.to_dict().items() for k in values
                     if k not in data[s])
    if missing:
        raise MinibnnError(f"stored spec lacks the fields {missing}")
    return spec


@dataclass(frozen=True)
class Local:
    """Machine-local settings: where and how this machine computes a run (not part of it)."""
    device: str = "cpu"
    backend: str = "auto"             # kernels: auto (numba on CPU, cuda on GPU) | numpy | ...
    data_dir: str | None = None
    threads: int | None = None        # None: the machine's cores (results do not depend on it)
    #: record step metrics every this many optimiser steps (0: none); the bits do not depend
    #: on it
    log_every: int = 50
    #: folder of TensorBoard event files (None or "": none)
    tensorboard: str | None = None

    def __post_init__(self) -> None:
        one_of("device", self.device, DEVICE_NAMES)
        if self.threads is not None:
            check_threads(self.threads)
        if (not isinstance(self.log_every, int) or isinstance(self.log_every, bool)
                or self.log_every < 0):
            raise MinibnnError(f"--log-every must be an integer >= 0 (0: no step metrics), "
                               f"got {self.log_every!r}")
        if self.tensorboard == "":
            object.__setattr__(self, "tensorboard", None)
        if self.tensorboard is not None and not isinstance(self.tensorboard, str):
            raise MinibnnError(f"--tensorboard must be a folder, got {self.tensorboard!r}")
        one_of("backend", self.backend, BACKEND_NAMES)
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise MinibnnError(f"--data-dir must be a path, got {self.data_dir!r}")
        wanted = BACKEND_DEVICE.get(self.backend, self.device)
        if wanted != self.device:
            raise MinibnnError(f"--backend {self.backend} runs on the {wanted.upper()}, not "
                               f"with --device {self.device} (use auto or numpy)")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


LOCAL_FIELDS = tuple(f.name for f in dataclasses.fields(Local))


def local_from_json(text: str | None) -> Local:
    if not text:
        return Local()
    try:
        values = json.loads(text)
        return Local(**{k: values[k] for k in LOCAL_FIELDS if k in values})
    except (ValueError, TypeError, AttributeError) as exc:
        raise MinibnnError(f"stored machine-local settings are not readable ({exc})") from None


#: flat run-file configs (format versions before the nested spec) hold every option, with
#: None for those the model or optimiser did not take; these were added over time, and their
#: absence means the run could not use them (so this is their exact setting)
_FLAT_ADDED = {"val_split": 0, "test_every_epoch": False, "real_schedule": None}


def read_stored_config(text: str) -> tuple[RunSpec, Local]:
    """The spec and machine-local settings of a run or packed file's ``config`` attribute:
    ``{"spec": ..., "local": ...}`` or (older files) the flat config of every option."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise MinibnnError(f"stored config is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise MinibnnError("stored config is not a JSON object")
    if "spec" in data:
        try:
            local = Local(**data.get("local", {}))
        except TypeError as exc:
            raise MinibnnError(f"stored machine-local settings are not readable "
                               f"({exc})") from None
        return spec_from_dict(data["spec"]), local
    return _spec_from_flat(data)


def _spec_from_flat(data: dict[str, Any]) -> tuple[RunSpec, Local]:
    """An older flat config: drop the options its model/optimiser did not take (stored as
    None, or the schedule of an optimiser that has none) and split off the local ones."""
    values = {**_FLAT_ADDED, **data}
    local = Local(**{k: values.pop(k) for k in LOCAL_FIELDS if k in values})
    unknown = sorted(set(values) - set(OPTION_NAMES))
    if unknown:
        raise MinibnnError(f"stored config has unknown keys {unknown}")
    if values.get("real_schedule") is None:            # None meant "the run's --schedule"
        values["real_schedule"] = values.get("schedule", DEFAULT_SCHEDULE)
    options = {k: v for k, v in values.items() if v is not None}
    if "schedule" not in variant_options(OPTIMIZER_VARIANTS.get(options.get("optimizer"), Cema)):
        options.pop("schedule", None)
    if "hidden" in options and isinstance(options["hidden"], list):
        options["hidden"] = tuple(options["hidden"])
    return spec_from_options(options), local


def config_json(spec: RunSpec, local: Local) -> str:
    """What a run file stores in its ``config`` attribute."""
    return json.dumps({"spec": spec.to_dict(), "local": dataclasses.asdict(local)},
                      sort_keys=True)


def model_from_spec(spec: RunSpec, input_shape: tuple[int, ...], num_classes: int) -> "Model":
    """Build the spec's model for a dataset's shape and class count."""
    options = {name: getattr(spec.model, name) for name in variant_options(type(spec.model))}
    return models.build_model(spec.model.name, input_shape=input_shape, num_classes=num_classes,
                       binary_storage=spec.binary_storage, **options)


def run_model(run: "RunFile") -> tuple[RunSpec, Local, "Model"]:
    """The spec, machine-local settings and model of a run file, with no data loaded: the
    input shape and class count come from the stored description, or for older files from
    the dataset's name."""
    from minibnn.data import image_shape

    spec, local = read_stored_config(run.config_json)
    if run.description is not None:
        shape, classes = tuple(run.description["input_shape"]), run.description["num_classes"]
    else:
        shape, classes = image_shape(spec.data.name)
    return spec, local, model_from_spec(spec, shape, classes)
