"""Optimisers against their defining recursions (and PyTorch where it is installed)."""
import numpy as np
import pytest

from minibnn import optim
from minibnn.errors import MinibnnError


def _stream(seed=0, steps=8, shape=(4, 3)):
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape), [rng.normal(size=shape) for _ in range(steps)]


def _run(opt, w, grads):
    params = {"w": w}
    state = opt.init(params)
    for g in grads:
        params, state = opt.update({"w": g}, state, params)
    return params["w"], state


def test_cema_matches_its_recursion_with_schedule():
    w0, grads = _stream()
    b = np.where(w0 >= 0, 1.0, -1.0)
    alpha = optim.linear(0.3, total_steps=len(grads))
    got, _ = _run(optim.cema(alpha, 0.6), b, grads)
    m = np.zeros_like(b)
    v = np.zeros_like(b)
    for t, g in enumerate(grads):
        a = 0.3 * (1 - t / len(grads))
        m = (1 - 0.6) * m + 0.6 * g
        v = (1 - a) * v + a * m
        b = np.where(v * b > 0, -b, b)
    np.testing.assert_array_equal(got, b)


def test_cema_tie_keeps_sign_and_positive_rule_sets_plus_one():
    b = np.array([-1.0, 1.0, -1.0])
    zero = np.zeros(3)
    kept, _ = _run(optim.cema(0.5, 1.0), b, [zero])
    np.testing.assert_array_equal(kept, b)
    positive, _ = _run(optim.cema(0.5, 1.0, tie="positive"), b, [zero])
    np.testing.assert_array_equal(positive, np.ones(3))


def test_cema_initial_state_is_used():
    b = np.array([1.0, 1.0])
    init = {"v": {"w": np.array([5.0, -5.0])}}
    got, _ = _run(optim.cema(0.1, 1.0, init_state=init), b, [np.zeros(2)])
    np.testing.assert_array_equal(got, [-1.0, 1.0])


def test_bop_threshold_and_equivalence_to_cema_at_zero_threshold():
    w0, grads = _stream(1)
    b = np.sign(w0)
    bop, _ = _run(optim.bop(0.0, 0.2), b, grads)
    cema, _ = _run(optim.cema(0.2, 1.0, tie="positive"), b, grads)
    np.testing.assert_array_equal(bop, cema)
    never, _ = _run(optim.bop(1e9, 0.2), b, grads)
    np.testing.assert_array_equal(never, b)


def test_second_order_reproduces_coupled_sgd_signs():
    eta, mu, lam = 0.05, 0.9, 0.5
    w0, grads = _stream(2, steps=20)
    w, _ = _run(optim.sgd(eta, mu, lam), w0, grads)
    # With v = -lam w, (A) reads v_t = (1+mu-eta lam) v_{t-1} - mu v_{t-2} + eta lam g_t from
    # the second step on; seed the filter with the latent history after one SGD step.
    params = {"w": w0}
    sgd = optim.sgd(eta, mu, lam)
    st = sgd.init(params)
    params, st = sgd.update({"w": grads[0]}, st, params)
    v1, v2 = -lam * params["w"], -lam * w0
    b = np.where(params["w"] >= 0, 1.0, -1.0)
    so = optim.second_order(1 + mu - eta * lam, -mu, eta * lam,
                            init_state={"v1": {"w": v1}, "v2": {"w": v2}})
    got, _ = _run(so, b, grads[1:])
    np.testing.assert_array_equal(got, np.where(w >= 0, 1.0, -1.0))


def test_partition_routes_groups():
    params = {"a.w": np.ones(2), "b.w": np.ones(2)}
    opt = optim.partition({"binary": optim.cema(1.0, 1.0), "real": optim.sgd(0.5, momentum=0.0)},
                          lambda n: "binary" if n.startswith("a") else "real")
    st = opt.init(params)
    new, _ = opt.update({"a.w": np.array([1.0, -1.0]), "b.w": np.array([1.0, -1.0])}, st, params)
    np.testing.assert_array_equal(new["a.w"], [-1.0, 1.0])
    np.testing.assert_array_equal(new["b.w"], [0.5, 1.5])


def test_partition_needs_its_groups_and_labels():
    """Partition's fields have no defaults: a label function must be given (no silent str)."""
    opt = optim.partition({"real": optim.sgd()}, {"b.w": "real"})
    assert opt.label_of("b.w") == "real" and set(opt.optimizers) == {"real"}
    with pytest.raises(TypeError, match="label_of"):
        optim.Partition(opt.init, opt.update, optimizers=opt.optimizers)


def test_trace_without_decay_is_the_identity_and_keeps_only_its_count():
    params = {"w": np.ones(3)}
    t = optim.trace(0.0)
    state = t.init(params)
    assert state == {"count": 0}
    out, state = t.update({"w": np.array([1.0, 2.0, 3.0])}, state, params)
    np.testing.assert_array_equal(out["w"], [1.0, 2.0, 3.0])
    assert set(state) == {"count"} and int(state["count"]) == 1
    assert set(optim.trace(0.5).init(params)) == {"count", "m"}


def test_schedules():
    assert optim.linear(1.0, 10)(5) == pytest.approx(0.5)
    assert optim.linear(1.0, 10, per_epoch_steps=4)(5) == pytest.approx(0.6)
    assert optim.cosine(1.0, 10)(10) == pytest.approx(0.0)
    assert optim.step_decay(1.0, 3, 0.1)(7) == pytest.approx(0.01)
    assert optim.constant(0.3)(100) == 0.3


def test_float32_state_stays_float32():
    w = np.ones(3, dtype=np.float32)
    got, state = _run(optim.adam(0.1), w, [np.ones(3, dtype=np.float32)])
    assert got.dtype == np.float32
    got, state = _run(optim.cema(0.1, 0.5), w, [np.ones(3, dtype=np.float32)])
    assert got.dtype == np.float32 and state["v"]["s"]["w"].dtype == np.float32


@pytest.mark.parametrize("make, match", [
    (lambda: optim.cema(0.0, 0.5), "alpha must be in"),
    (lambda: optim.cema(0.1, 1.5), "gamma must be in"),
    (lambda: optim.sgd(-0.1), "lr must be >= 0"),
    (lambda: optim.sgd(0.1, momentum=1.0), "momentum must be in"),
    (lambda: optim.bop(-1.0, 0.1), "threshold must be >= 0"),
    (lambda: optim.flip(0.0, tie="zero"), "unknown tie rule"),
    # the building blocks check their own (they were taken as given: ema(1.5) grows)
    (lambda: optim.ema(1.5), "ema: rate must be in"),
    (lambda: optim.ema("a"), "ema: rate must be in"),
    (lambda: optim.trace(float("nan")), "trace: decay must be in"),
    (lambda: optim.trace(0.9, dampening=2.0), "trace: dampening must be in"),
    (lambda: optim.scale_by_adam(b1=5), "scale_by_adam: b1 must be in"),
    (lambda: optim.normalize_by_rms(float("nan"), 0.1), "normalize_by_rms: gamma must be in"),
    (lambda: optim.iir2(float("nan"), 0.0, 1.0), "iir2: a1 must be a finite number"),
    (lambda: optim.add_decayed_weights(float("nan")), "add_decayed_weights: weight_decay"),
    (lambda: optim.scale_by_learning_rate(-1.0), "scale_by_learning_rate: lr must be >= 0"),
    (lambda: optim.chain(a=3), "chain stage 'a' must be a Transform"),
    (lambda: optim.partition({"a": 3}, lambda name: "a"), "partition's optimizer 'a' must be"),
    (lambda: optim.partition({}, lambda name: "a"), "optimizers must be a non-empty dict"),
    (lambda: optim.cema().init([np.ones(2)]), "init: parameters must be a dict"),
    (lambda: optim.partition({"a": optim.cema()}, lambda name: "a").init(None),
     "init: parameters must be a dict"),
])
def test_bad_hyperparameters_raise_one_line(make, match):
    with pytest.raises(MinibnnError, match=match) as info:
        make()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("dampening", [0.0, 0.3])
def test_sgd_matches_pytorch(decoupled, dampening):
    torch = pytest.importorskip("torch")
    w0, grads = _stream(3)
    got, _ = _run(optim.sgd(0.1, 0.9, 0.01, decoupled=decoupled, dampening=dampening), w0, grads)
    tw = torch.tensor(w0, requires_grad=True)
    opt = torch.optim.SGD([tw], lr=0.1, momentum=0.9, dampening=dampening,
                          weight_decay=0.0 if decoupled else 0.01)
    for g in grads:
        if decoupled:
            with torch.no_grad():
                tw.mul_(1 - 0.1 * 0.01)
        tw.grad = torch.tensor(g)
        opt.step()
    np.testing.assert_allclose(got, tw.detach().numpy(), rtol=0, atol=1e-12)


def test_adam_matches_pytorch():
    torch = pytest.importorskip("torch")
    w0, grads = _stream(4)
    got, _ = _run(optim.adam(0.01, weight_decay=0.01), w0, grads)
    tw = torch.tensor(w0, requires_grad=True)
    opt = torch.optim.Adam([tw], lr=0.01, weight_decay=0.01)
    for g in grads:
        tw.grad = torch.tensor(g)
        opt.step()
    np.testing.assert_allclose(got, tw.detach().numpy(), rtol=0, atol=1e-12)


def test_sgd_momentum_by_hand():
    w0, grads = _stream(5)
    got, _ = _run(optim.sgd(0.1, 0.5, 0.2), w0, grads)
    w, m = w0.copy(), np.zeros_like(w0)
    for g in grads:
        m = 0.5 * m + (g + 0.2 * w)
        w = w - 0.1 * m
    np.testing.assert_allclose(got, w, rtol=0, atol=1e-12)


def test_state_is_named_by_stage():
    params = {"w": np.ones(2)}
    assert _flat_keys(optim.cema().init(params)) == {"m/count", "m/s/w", "v/count", "v/s/w"}
    assert set(optim.cema().init(params)) == {"m", "v", "b"}
    assert set(optim.bop().init(params)) == {"m", "b"}
    assert set(optim.bop2nd().init(params)) == {"rms", "b"}
    assert set(optim.bop2nd().init(params)["rms"]) == {"count", "m", "v"}
    assert set(optim.second_order(1.0, 0.0, 1.0).init(params)) == {"v", "b"}
    assert list(optim.sgd(decoupled=True).init(params)) == ["momentum", "weight_decay", "lr", "w"]
    assert list(optim.sgd().init(params)) == ["weight_decay", "momentum", "lr", "w"]
    assert list(optim.adam(decoupled=True).init(params)) == ["adam", "weight_decay", "lr", "w"]
    assert list(optim.adam().init(params)) == ["weight_decay", "adam", "lr", "w"]


def _flat_keys(tree, prefix=""):
    out = set()
    for k, v in tree.items():
        if isinstance(v, dict):
            out |= _flat_keys(v, prefix + k + "/")
        else:
            out.add(prefix + k)
    return out


def test_chain_takes_named_stages_only():
    opt = optim.chain(lr=optim.scale_by_learning_rate(0.5), w=optim.apply_updates())
    new, state = opt.update({"w": np.array([2.0])}, opt.init({"w": np.zeros(1)}),
                            {"w": np.zeros(1)})
    np.testing.assert_array_equal(new["w"], [-1.0])
    assert list(state) == ["lr", "w"] and int(state["lr"]["count"]) == 1
    with pytest.raises(TypeError):
        optim.chain(optim.apply_updates())
    with pytest.raises(MinibnnError, match="at least one"):
        optim.chain()


def test_flip_positive_tie_is_larqs_rule_at_the_threshold():
    # larq: b = sign(-sign(b m - tau) b) with sign(0) = +1, so b m == tau gives b = +1.
    b = np.array([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    x = np.array([0.25, -0.25, 0.5, 0.5, 0.1, -0.1])
    new, _ = optim.flip(0.25, "positive").update({"w": x}, {}, {"w": b})
    np.testing.assert_array_equal(new["w"], [1.0, 1.0, -1.0, -1.0, 1.0, -1.0])
    kept, _ = optim.flip(0.25, "keep").update({"w": x}, {}, {"w": b})
    np.testing.assert_array_equal(kept["w"], [1.0, -1.0, -1.0, -1.0, 1.0, -1.0])


def test_bop_tie_at_threshold_sets_plus_one():
    # gamma = 1/2, g = +-1/2: m = +-1/4 = tau exactly after one step.
    b = np.array([1.0, -1.0, -1.0])
    got, _ = _run(optim.bop(threshold=0.25, gamma=0.5), b, [np.array([0.5, -0.5, 0.5])])
    np.testing.assert_array_equal(got, [1.0, 1.0, -1.0])


@pytest.mark.parametrize("corrected", [False, True])
def test_bop2nd_matches_its_recursion(corrected):
    w0, grads = _stream(6, steps=10)
    b = np.where(w0 >= 0, 1.0, -1.0)
    gamma, sigma, tau, eps = 0.3, 0.2, 0.4, 1e-10
    got, _ = _run(optim.bop2nd(tau, gamma, sigma, eps, bias_correction=corrected), b, grads)
    m = np.zeros_like(b)
    s = np.zeros_like(b)
    for t, g in enumerate(grads, start=1):
        m = (1 - gamma) * m + gamma * g
        s = (1 - sigma) * s + sigma * (g * g)
        if corrected:
            y = (m / (1 - (1 - gamma) ** t)) / (np.sqrt(s / (1 - (1 - sigma) ** t)) + eps)
        else:
            y = m / (np.sqrt(s) + eps)
        b = np.where(y * b > tau, -b, np.where(y * b == tau, 1.0, b))
    np.testing.assert_array_equal(got, b)


def test_bop2nd_bias_correction_changes_early_decisions():
    # Step 1: uncorrected y = gamma g / (sqrt(sigma) |g| + eps); corrected y = g / (|g| + eps).
    b = np.array([-1.0])
    g = [np.array([-1.0])]
    raw, _ = _run(optim.bop2nd(0.5, 0.1, 0.1), b, g)
    corrected, _ = _run(optim.bop2nd(0.5, 0.1, 0.1, bias_correction=True), b, g)
    np.testing.assert_array_equal(raw, [-1.0])          # 0.1 / sqrt(0.1) = 0.32 < 0.5
    np.testing.assert_array_equal(corrected, [1.0])     # 1 > 0.5


def test_defaults_are_the_constructors_keyword_defaults():
    assert optim.defaults("cema") == {"alpha": 1e-3, "gamma": 0.1, "init_state": None,
                                      "tie": "keep"}
    assert optim.defaults("bop") == {"threshold": 1e-8, "gamma": 1e-4}
    assert optim.defaults("bop2nd") == {"threshold": 1e-6, "gamma": 1e-6, "sigma": 1e-2,
                                        "eps": 1e-10, "bias_correction": False}
    assert optim.defaults("bop2nd_corrected") == {**optim.defaults("bop2nd"),
                                                  "bias_correction": True}
    assert optim.defaults("sgd")["lr"] == 0.01 and optim.defaults("sgd")["momentum"] == 0.0
    assert optim.defaults("adam")["lr"] == 1e-3 and optim.defaults("adam")["b2"] == 0.999
    with pytest.raises(MinibnnError, match="unknown optimizer"):
        optim.defaults("lamb")


def test_step_runs_the_chain_where_no_kernel_is_compiled():
    from minibnn import kernels

    params = {"w": np.array([1.0, -1.0])}
    opt = optim.cema(0.5, 1.0)
    calls = []
    fused = opt.fused._replace(step=lambda *a: calls.append(a) or opt.fused.step(*a))
    spy = optim.Transform(opt.init, opt.update, fused)
    with kernels.use_backend("numpy"):
        new = spy.step_in_place({"w": np.array([1.0, 1.0])}, spy.init(params), params)
    assert calls == [] and new["w"].tolist() == [-1.0, -1.0]
    assert optim.bop2nd().fused is None and optim.second_order(1.0, 0.0, 1.0).fused is None


def _assert_same_tree(got, want):
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys()
        for k in want:
            _assert_same_tree(got[k], want[k])
    else:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_partition_step_routes_to_each_groups_step(backend):
    from minibnn import kernels

    params = {"a.w": np.ones(2), "b.w": np.ones(2)}
    seen = []

    def spying(opt, label):
        return optim.Transform(opt.init, opt.update, optim.FusedStep(
            "cema_update", lambda g, s, p: seen.append(label) or opt.update(g, s, p)))

    opt = optim.partition({"binary": spying(optim.cema(1.0, 1.0), "binary"),
                           "real": optim.sgd(0.5, momentum=0.0)},
                          lambda n: "binary" if n.startswith("a") else "real")
    grads = {"a.w": np.array([1.0, -1.0]), "b.w": np.array([1.0, -1.0])}
    want, want_state = opt.update(grads, opt.init(params), params)
    with kernels.use_backend(backend):
        state = opt.init(params)
        new = opt.step_in_place(grads, state, params)     # params change in place
    _assert_same_tree(state, want_state)              # the new state, left in place

    assert seen == (["binary"] if backend == "numba" else [])
    for k in want:
        np.testing.assert_array_equal(new[k], want[k])
    assert set(state) == {"binary", "real"}
