"""The Python API validates like the CLI (issue 12, item 10).

Optimiser constructors refuse non-finite, non-numeric and out-of-range hyperparameters; an
optimiser's ``update``/``step`` refuses gradients and states that do not match the parameters
(names, shapes, dtypes: a float64 gradient never turns a float32 parameter into float64);
``model.init`` builds float32 or float64 only.  Every refusal is one of minibnn's own errors
with a one-line message naming the problem.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minibnn import kernels, optim
from minibnn.errors import DTypeError, MinibnnError, ShapeError
from minibnn.nn.containers import Sequential
from minibnn.nn.models import binary_cnn, binary_mlp, birealnet
from minibnn.nn.modules import Dense

NAN, INF = math.nan, math.inf

#: constructor -> (the keywords it needs, {option: (is the value allowed?, range in words)})
RANGES = {
    "sgd": ({}, {"lr": (lambda v: v >= 0, ">= 0 and finite"),
                 "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
                 "weight_decay": (lambda v: v >= 0, ">= 0 and finite"),
                 "dampening": (lambda v: 0 <= v <= 1, "in [0, 1]")}),
    "adam": ({}, {"lr": (lambda v: v >= 0, ">= 0 and finite"),
                  "b1": (lambda v: 0 <= v < 1, "in [0, 1)"),
                  "b2": (lambda v: 0 <= v < 1, "in [0, 1)"),
                  "eps": (lambda v: v >= 0, ">= 0 and finite"),
                  "weight_decay": (lambda v: v >= 0, ">= 0 and finite")}),
    "cema": ({}, {"alpha": (lambda v: 0 < v <= 1, "in (0, 1]"),
                  "gamma": (lambda v: 0 < v <= 1, "in (0, 1]")}),
    "bop": ({}, {"threshold": (lambda v: v >= 0, ">= 0 and finite"),
                 "gamma": (lambda v: 0 < v <= 1, "in (0, 1]")}),
    "bop2nd": ({}, {"threshold": (lambda v: v >= 0, ">= 0 and finite"),
                    "gamma": (lambda v: 0 < v <= 1, "in (0, 1]"),
                    "sigma": (lambda v: 0 < v <= 1, "in (0, 1]"),
                    "eps": (lambda v: v >= 0, ">= 0 and finite")}),
    "second_order": ({"a1": 1.0, "a2": 0.0, "c": 1.0},
                     {"a1": (lambda v: True, "a finite number"),
                      "a2": (lambda v: True, "a finite number"),
                      "c": (lambda v: v > 0, "> 0 and finite")}),
}
OPTIONS = [(name, option) for name, (_, ranges) in RANGES.items() for option in ranges]


def _make(name, **options):
    required, _ = RANGES[name]
    return getattr(optim, name)(**{**required, **options})


def _one_line(info):
    assert "\n" not in str(info.value)
    return str(info.value)


# --- hyperparameters ---------------------------------------------------------------------

@pytest.mark.parametrize("name, option", OPTIONS)
@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_non_finite_hyperparameters_are_refused_naming_option_and_value(name, option, value):
    with pytest.raises(MinibnnError) as info:
        _make(name, **{option: value})
    text = _one_line(info)
    assert text.startswith(f"{name}: {option} must be {RANGES[name][1][option][1]}, got ")
    assert text.endswith(f"got {value}")


@pytest.mark.parametrize("name, option", OPTIONS)
@settings(max_examples=40, deadline=None)
@given(value=st.floats(allow_nan=True, allow_infinity=True))
def test_a_hyperparameter_is_accepted_exactly_when_finite_and_in_range(name, option, value):
    allowed, words = RANGES[name][1][option]
    if math.isfinite(value) and allowed(value):
        _make(name, **{option: value})
        return
    with pytest.raises(MinibnnError, match=rf"^{name}: {option} must be ") as info:
        _make(name, **{option: value})
    assert words in _one_line(info)


@pytest.mark.parametrize("name, option", OPTIONS)
@pytest.mark.parametrize("value", ["0.1", True, None, 1j, [0.1]])
def test_non_numeric_hyperparameters_are_refused(name, option, value):
    with pytest.raises(MinibnnError, match=rf"^{name}: {option} must be .*, got ") as info:
        _make(name, **{option: value})
    assert repr(value) in _one_line(info)


@pytest.mark.parametrize("name, option", [("sgd", "lr"), ("adam", "lr"), ("cema", "alpha"),
                                          ("cema", "gamma"), ("bop", "gamma")])
def test_a_schedule_is_checked_at_its_first_value(name, option):
    with pytest.raises(MinibnnError) as info:
        _make(name, **{option: lambda count: NAN})
    assert _one_line(info) == (f"{name}: {option} must be {RANGES[name][1][option][1]}, "
                               f"got nan (the schedule's first value)")


@pytest.mark.parametrize("make, message", [
    (lambda: optim.constant(NAN), "constant: value must be a finite number, got nan"),
    (lambda: optim.linear(NAN, 10), "linear: init must be a finite number, got nan"),
    (lambda: optim.linear(0.1, 10, end=INF), "linear: end must be a finite number, got inf"),
    (lambda: optim.cosine(-INF, 10), "cosine: init must be a finite number, got -inf"),
    (lambda: optim.step_decay(0.1, 3, factor=NAN),
     "step_decay: factor must be a finite number, got nan"),
    (lambda: optim.flip(NAN), "flip: threshold must be >= 0 and finite, got nan"),
])
def test_schedules_and_flip_refuse_non_finite_values(make, message):
    with pytest.raises(MinibnnError) as info:
        make()
    assert _one_line(info) == message


# --- update / step arguments -------------------------------------------------------------

def _optimizers():
    """Every public optimiser (and a partition of two), each on float32 parameters."""
    return {
        "sgd": optim.sgd(0.1, momentum=0.9, weight_decay=1e-2),
        "adam": optim.adam(1e-2, weight_decay=1e-2, decoupled=True),
        "cema": optim.cema(0.1, 0.5),
        "bop": optim.bop(1e-3, 0.2),
        "bop2nd": optim.bop2nd(),
        "second_order": optim.second_order(1.0, -0.5, 0.1),
        "partition": optim.partition({"binary": optim.cema(), "real": optim.adam()},
                                     {"a.w": "binary", "b.w": "real"}),
    }


def _params(dtype=np.float32):
    return {"a.w": np.array([[1, -1, 1], [-1, 1, 1]], dtype), "b.w": np.ones(4, dtype)}


def _grads(dtype=np.float32):
    rng = np.random.default_rng(0)
    return {k: rng.normal(size=v.shape).astype(dtype) for k, v in _params().items()}


def _in_place(opt):
    """``step_in_place`` in ``update``'s shape: (new params, the state it updated)."""
    return lambda grads, state, params: (opt.step_in_place(grads, state, params), state)


#: the ways to run one update: the readable chain, and ``step_in_place`` on each CPU backend
CALLS = {"update": (lambda opt: opt.update, "numpy"),
         "step[numpy]": (_in_place, "numpy"),
         "step[numba]": (_in_place, "numba")}


def _call(how, opt, grads, state, params):
    method, backend = CALLS[how]
    with kernels.use_backend(backend):
        return method(opt)(grads, state, params)


@pytest.mark.parametrize("how", list(CALLS))
@pytest.mark.parametrize("name", list(_optimizers()))
def test_matching_float32_arguments_keep_every_parameter_and_its_dtype(name, how):
    opt, params = _optimizers()[name], _params()
    new, _ = _call(how, opt, _grads(), opt.init(params), params)
    assert set(new) == set(params)
    assert all(new[k].dtype == np.float32 and new[k].shape == params[k].shape for k in params)


@pytest.mark.parametrize("how", list(CALLS))
@pytest.mark.parametrize("name", list(_optimizers()))
@pytest.mark.parametrize("drop, add, words", [
    (["a.w", "b.w"], [], "missing ['a.w', 'b.w']"),
    (["b.w"], [], "missing ['b.w']"),
    ([], ["c.w"], "unexpected ['c.w']"),
    (["a.w"], ["a.W"], "missing ['a.w'], unexpected ['a.W']"),
])
def test_gradients_must_hold_the_parameters_names(name, how, drop, add, words):
    opt, params = _optimizers()[name], _params()
    grads = {k: v for k, v in _grads().items() if k not in drop}
    grads.update({k: np.ones(3, np.float32) for k in add})
    with pytest.raises(MinibnnError) as info:
        _call(how, opt, grads, opt.init(params), params)
    assert _one_line(info) == f"gradients must hold exactly the parameters' names: {words}"


@pytest.mark.parametrize("how", list(CALLS))
@pytest.mark.parametrize("name", list(_optimizers()))
@pytest.mark.parametrize("shape", [(1,), (4, 1), (2, 2)])
def test_a_gradient_of_another_shape_is_a_shape_error(name, how, shape):
    opt, params = _optimizers()[name], _params()
    grads = {**_grads(), "b.w": np.ones(shape, np.float32)}
    with pytest.raises(ShapeError) as info:
        _call(how, opt, grads, opt.init(params), params)
    assert _one_line(info) == (f"gradients['b.w'] has shape {shape}, the parameter has (4,)")


@pytest.mark.parametrize("how", list(CALLS))
@pytest.mark.parametrize("name", list(_optimizers()))
@pytest.mark.parametrize("param_dtype, grad_dtype", [(np.float32, np.float64),
                                                     (np.float64, np.float32),
                                                     (np.float32, np.float16)])
def test_a_gradient_of_another_dtype_is_a_dtype_error(name, how, param_dtype, grad_dtype):
    """PyTorch's rule ("assigned grad has data of a different type"): no silent promotion."""
    opt, params = _optimizers()[name], _params(param_dtype)
    grads = {**_grads(param_dtype), "a.w": _grads(grad_dtype)["a.w"]}
    with pytest.raises(DTypeError) as info:
        _call(how, opt, grads, opt.init(params), params)
    assert _one_line(info) == (f"gradients['a.w'] has dtype {np.dtype(grad_dtype)}, "
                               f"the parameter has {np.dtype(param_dtype)}")


@pytest.mark.parametrize("how", list(CALLS))
@pytest.mark.parametrize("name", list(_optimizers()))
def test_gradients_must_be_a_dict_of_arrays(name, how):
    opt, params = _optimizers()[name], _params()
    state = opt.init(params)
    with pytest.raises(MinibnnError, match=r"^gradients must be a dict name -> array, got list"):
        _call(how, opt, [1.0, 2.0], state, params)
    grads = {**_grads(), "b.w": [1.0, 1.0, 1.0, 1.0]}
    with pytest.raises(MinibnnError) as info:
        _call(how, opt, grads, state, params)
    assert _one_line(info) == "gradients['b.w'] must be an array, got list"


@pytest.mark.parametrize("how", list(CALLS))
@pytest.mark.parametrize("name", list(_optimizers()))
@pytest.mark.parametrize("state", [None, [], {}, {"m": {}}])
def test_a_state_not_from_init_is_refused(name, how, state):
    opt, params = _optimizers()[name], _params()
    with pytest.raises(MinibnnError, match=r"^optimizer state must ") as info:
        _call(how, opt, _grads(), state, params)
    _one_line(info)


@pytest.mark.parametrize("how", list(CALLS))
@pytest.mark.parametrize("name, other", [("cema", "sgd"), ("sgd", "adam"), ("adam", "cema"),
                                         ("bop", "bop2nd"), ("second_order", "bop")])
def test_another_optimizers_state_names_the_stages(name, other, how):
    opt, params = _optimizers()[name], _params()
    state = _optimizers()[other].init(params)
    with pytest.raises(MinibnnError) as info:
        _call(how, opt, _grads(), state, params)
    want = list(opt.init(params))
    assert _one_line(info) == (f"optimizer state must have the stages {want}, got "
                               f"{list(state)} (pass the state from this optimizer's init)")


@pytest.mark.parametrize("how", list(CALLS))
@pytest.mark.parametrize("name, buffer", [("sgd", "momentum/m"), ("adam", "adam/m"),
                                          ("cema", "m/s"), ("bop", "m/s"), ("bop2nd", "rms/m"),
                                          ("second_order", "v/v1")])
def test_a_state_of_other_parameters_names_the_buffer(name, buffer, how):
    opt, params = _optimizers()[name], _params()
    other = {"a.w": params["a.w"], "c.w": params["b.w"]}
    with pytest.raises(MinibnnError) as info:
        _call(how, opt, _grads(), opt.init(other), params)
    assert _one_line(info) == (f"optimizer state {buffer} must hold exactly the parameters' "
                               f"names: missing ['b.w'], unexpected ['c.w']")
    with pytest.raises(DTypeError, match=rf"^optimizer state {buffer}\['a.w'\] has dtype "
                                         "float64, the parameter has float32"):
        _call(how, opt, _grads(), opt.init(_params(np.float64)), params)


@pytest.mark.parametrize("how", list(CALLS))
def test_a_stage_without_its_count_is_refused(how):
    opt, params = _optimizers()["cema"], _params()
    state = opt.init(params)
    del state["m"]["count"]
    with pytest.raises(MinibnnError, match=r"^optimizer state has no step count") as info:
        _call(how, opt, _grads(), state, params)
    _one_line(info)


@pytest.mark.parametrize("how", list(CALLS))
def test_a_partition_state_needs_every_group(how):
    opt, params = _optimizers()["partition"], _params()
    state = opt.init(params)
    del state["real"]
    with pytest.raises(MinibnnError) as info:
        _call(how, opt, _grads(), state, params)
    assert _one_line(info) == ("optimizer state must have the groups ['binary', 'real'], got "
                               "['binary'] (pass the state from this optimizer's init)")


def test_a_partition_labels_mapping_must_label_every_parameter():
    opt = optim.partition({"real": optim.sgd()}, {"a.w": "real"})
    with pytest.raises(MinibnnError) as info:
        opt.init(_params())
    assert _one_line(info) == "parameter 'b.w' has no label (labelled: ['a.w'])"


@pytest.mark.parametrize("how", list(CALLS))
@pytest.mark.parametrize("make", [
    lambda: optim.sgd(np.float64(0.1), np.float64(0.9), np.float64(1e-2)),
    lambda: optim.sgd(lambda t: np.float64(0.1), momentum=0.9),
    lambda: optim.adam(np.float64(1e-2), np.float64(0.9), np.float64(0.99), np.float64(1e-8)),
    lambda: optim.adam(lambda t: np.float64(1e-2)),
    lambda: optim.cema(lambda t: np.float64(0.1), lambda t: np.float64(0.5)),
    lambda: optim.bop(np.float64(1e-3), lambda t: np.float64(0.2)),
    lambda: optim.bop2nd(np.float64(1e-3), np.float64(0.2), np.float64(0.1), np.float64(1e-8)),
    lambda: optim.second_order(np.float64(1.0), np.float64(-0.5), np.float64(0.1)),
])
def test_numpy_float64_hyperparameters_keep_float32_parameters_and_state(make, how):
    opt, params = make(), _params()
    state = opt.init(params)
    for _ in range(2):
        params, state = _call(how, opt, _grads(), state, params)
    assert all(p.dtype == np.float32 for p in params.values())
    leaves = [b for stage in state.values() for v in stage.values() if isinstance(v, dict)
              for b in v.values()]
    assert leaves and all(b.dtype == np.float32 for b in leaves)


# --- model dtype -------------------------------------------------------------------------

MODELS = {"binary_mlp": lambda: binary_mlp(hidden=(8, 8)),
          "binary_cnn": lambda: binary_cnn(width=2),
          "birealnet": lambda: birealnet(width=4, blocks_per_stage=(1, 1))}


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("dtype, shown", [(np.float16, "float16"), ("float16", "float16"),
                                          (np.int32, "int32"), (np.complex64, "complex64"),
                                          (bool, "bool"), ("half", "float16"),
                                          (None, "None"), ("nonsense", "'nonsense'")])
def test_model_init_builds_float32_or_float64_only(model, dtype, shown):
    with pytest.raises(DTypeError) as info:
        MODELS[model]().init(np.random.default_rng(0), dtype)
    assert _one_line(info) == f"model dtype must be float32 or float64, got {shown}"


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64, "float32", "float64"])
def test_model_init_keeps_a_float_dtype(model, dtype):
    params, buffers = MODELS[model]().init(np.random.default_rng(0), dtype)
    assert {v.dtype for v in [*params.values(), *buffers.values()]} == {np.dtype(dtype)}


def test_sequential_init_checks_the_dtype_too():
    net = Sequential([Dense("fc", 3, 2)])
    with pytest.raises(DTypeError, match="^model dtype must be float32 or float64, got int64$"):
        net.init(np.random.default_rng(0), np.int64)


@pytest.mark.parametrize("rng", [0, None, np.random.RandomState(0)])
def test_model_init_needs_a_generator(rng):
    with pytest.raises(MinibnnError) as info:
        binary_mlp(hidden=(8, 8)).init(rng, np.float32)
    assert _one_line(info).startswith("binary_mlp: rng must be a numpy.random.Generator")


def test_model_gradients_feed_the_trainers_optimizer_in_the_models_dtype():
    """The training path: a float32 model's gradients match its parameters exactly."""
    from minibnn.nn.functional import softmax_cross_entropy

    model = binary_mlp(input_shape=(1, 6, 6), hidden=(8, 8), num_classes=3)
    params, buffers = model.init(np.random.default_rng(0), np.float32)
    opt = optim.partition({"binary": optim.cema(), "real": optim.adam()}, model.param_label)
    x = np.random.default_rng(1).normal(size=(5, 1, 6, 6)).astype(np.float32)
    logits, _, cache = model.forward(params, buffers, x, train=True)
    _, dlogits = softmax_cross_entropy(logits, np.array([0, 1, 2, 0, 1]))
    new = opt.step_in_place(model.backward(dlogits, cache), opt.init(params), params)
    assert {k: (v.shape, v.dtype) for k, v in new.items()} == \
        {k: (v.shape, v.dtype) for k, v in params.items()}
