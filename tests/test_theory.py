"""minibnn.theory: the latent <-> filter map, round trips, poles, responses and bad input."""
import math
from fractions import Fraction as Q

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minibnn import optim, theory
from minibnn.errors import MinibnnError

rates = st.fractions(0, 1, max_denominator=64).filter(lambda x: x > 0)
poles = st.fractions(0, 1, max_denominator=64).filter(lambda x: x < 1)


def test_decoupled_is_p2():
    eq = theory.latent_to_filter(0.1, 0.9, 5e-4, decoupled=True)
    assert eq.exact and eq.schedule_exact and eq.naive_is_exact
    assert eq.alpha == pytest.approx(5e-5, rel=1e-15) and eq.gamma == pytest.approx(0.1)
    assert eq.v_scale == pytest.approx(5e-4 * 0.1)
    assert eq.poles == (1 - eq.alpha, 0.9)


def test_no_momentum_is_p1_for_both_decays():
    for decoupled in (False, True):
        eq = theory.latent_to_filter(Q(1, 10), 0, Q(1, 2), decoupled)
        assert (eq.alpha, eq.gamma, eq.exact, eq.v_scale) == (Q(1, 20), 1, True, Q(1, 2))


@given(poles, poles, st.fractions(0, 10, max_denominator=16).filter(lambda x: x > 0))
def test_coupled_rational_poles_map_exactly(p1, p2, lam):
    mu, el = p1 * p2, (1 - p1) * (1 - p2)
    eq = theory.latent_to_filter(el / lam, mu, lam, decoupled=False)
    assert eq.exact and eq.schedule_exact == (mu == 0)
    assert isinstance(eq.alpha, Q) and isinstance(eq.gamma, Q)
    assert sorted([1 - eq.alpha, 1 - eq.gamma]) == sorted([p1, p2])
    assert (1 - eq.alpha) * (1 - eq.gamma) == mu and eq.alpha * eq.gamma == el
    assert eq.alpha <= eq.gamma  # documented assignment: gamma is the fast (larger) rate
    assert eq.naive_is_exact == (mu == 0)


def test_coupled_float_example_is_ten_times_the_naive_alpha():
    eq = theory.latent_to_filter(0.1, 0.9, 5e-4, decoupled=False)
    assert eq.exact and not eq.naive_is_exact
    assert eq.alpha * eq.gamma == pytest.approx(5e-5, rel=1e-12)
    assert (1 - eq.alpha) * (1 - eq.gamma) == pytest.approx(0.9, rel=1e-12)
    assert eq.alpha == pytest.approx(5.0227e-4, rel=1e-4)
    assert eq.naive == pytest.approx((5e-5, 0.1))


def test_double_root_on_the_boundary():
    # mu = 1/4: (1 - sqrt(mu))^2 = 1/4
    eq = theory.latent_to_filter(Q(1, 8), Q(1, 4), 2, decoupled=False)
    assert eq.exact and eq.alpha == eq.gamma == Q(1, 2)


def test_complex_poles_give_the_second_order_filter():
    eq = theory.latent_to_filter(Q(1, 2), Q(1, 4), Q(1, 2) + Q(1, 100), decoupled=False)
    assert not eq.exact and eq.alpha is None and eq.gamma is None
    assert "complex" in eq.reason and "P4" in eq.reason
    p, q = eq.poles
    assert p == q.conjugate() and abs(p) ** 2 == pytest.approx(0.25)
    assert (eq.a1, eq.a2, eq.c) == (1 + Q(1, 4) - eq.lr * eq.weight_decay, -Q(1, 4),
                                    eq.lr * eq.weight_decay)


def test_negative_real_poles_and_large_decay_are_not_emas():
    eq = theory.latent_to_filter(3, Q(1, 4), 1, decoupled=False)   # el = 3 > (1 + 1/2)^2
    assert not eq.exact and "negative" in eq.reason and all(p.real < 0 for p in eq.poles)
    eq = theory.latent_to_filter(2, 0.5, 1, decoupled=True)
    assert not eq.exact and "> 1" in eq.reason


def test_zero_weight_decay_has_no_alpha():
    eq = theory.latent_to_filter(0.1, 0.9, 0.0)
    assert not eq.exact and eq.alpha is None and "P6" in eq.reason
    assert eq.poles == (1, 0.9) and eq.time_constants[0] == math.inf


def test_time_constants():
    eq = theory.latent_to_filter(0.01, 0, 0.1, decoupled=True)
    tau_slow, tau_fast = eq.time_constants
    assert tau_fast == 0.0 and tau_slow == pytest.approx(1 / 0.001, rel=1e-3)


def test_time_constant_of_a_rate_whose_pole_rounds_to_one():
    eq = theory.latent_to_filter(1e-17, 0.9, 1.0, decoupled=True)
    assert eq.poles[0] == 1.0  # 1 - 1e-17 in float64, but weight decay is on: not an integrator
    assert eq.time_constants[0] == pytest.approx(1e17, rel=1e-12)
    assert theory.time_constant(-1.593) == math.inf and theory.time_constant(0) == 0.0


def test_product_overflow_and_underflow_are_refused():
    with pytest.raises(MinibnnError, match="overflows"):
        theory.latent_to_filter(1e308, 0.5, 1e308)
    with pytest.raises(MinibnnError, match="underflows"):
        theory.latent_to_filter(1e-300, 0.5, 1e-300, decoupled=True)


def test_negative_poles_stay_finite_and_accurate():
    eq = theory.latent_to_filter(1e200, 0.5, 1e100)  # s*s would overflow
    small, large = eq.poles
    assert large == pytest.approx(-1e300) and small * large == pytest.approx(0.5)
    eq = theory.latent_to_filter(3, 0.5, 1.0)  # the pole -1 lands exactly
    assert eq.poles == (-0.5, -1.0)
    eq = theory.latent_to_filter(3, Q(1, 4), 1)
    assert eq.poles[0] * eq.poles[1] == pytest.approx(0.25)
    assert eq.poles[1] == pytest.approx(-1.5930703308172536)


def test_impulse_responses_are_float64_arrays_of_n():
    for r in (theory.latent_impulse_response(0.1, 0.9, 0.5, False, 7),
              theory.filter_impulse_response(0.5, 0.5, 7),
              theory.second_order_impulse_response(0.5, -0.1, 1.0, 7)):
        assert r.dtype == np.float64 and r.shape == (7,)
    np.testing.assert_array_equal(theory.filter_impulse_response(1, 1, 3), [1, 0, 0])
    with pytest.raises(MinibnnError):
        theory.filter_impulse_response(0.5, 0.5, True)


@given(rates, rates, st.fractions(0, 10, max_denominator=16).filter(lambda x: x > 0))
def test_round_trip_decoupled(alpha, gamma, lr):
    back = theory.filter_to_latent(alpha, gamma, decoupled=True, lr=lr)
    assert back.lr == lr and back.lr * back.weight_decay == alpha
    eq = theory.latent_to_filter(back.lr, back.momentum, back.weight_decay, decoupled=True)
    assert (eq.alpha, eq.gamma) == (alpha, gamma)


@given(rates, rates, st.fractions(0, 10, max_denominator=16).filter(lambda x: x > 0))
def test_round_trip_coupled(alpha, gamma, wd):
    back = theory.filter_to_latent(alpha, gamma, decoupled=False, weight_decay=wd)
    assert back.momentum == (1 - alpha) * (1 - gamma)
    eq = theory.latent_to_filter(back.lr, back.momentum, wd, decoupled=False)
    assert sorted([eq.alpha, eq.gamma]) == sorted([alpha, gamma])


def test_filter_to_latent_identifies_only_the_product():
    back = theory.filter_to_latent(0.01, 0.1)
    assert back.lr is None and back.weight_decay is None
    assert back.lr_times_weight_decay == 0.01 and "only lr*weight_decay" in back.note
    with pytest.raises(MinibnnError, match="not both"):
        theory.filter_to_latent(0.01, 0.1, lr=0.1, weight_decay=0.1)


def test_matched_initial_states():
    w0 = np.array([1.0, -2.0, 0.0])
    m0, v0 = theory.matched_initial_state(w0, 0.1, 0.9, 0.5, decoupled=True)
    np.testing.assert_array_equal(m0, 0 * w0)
    np.testing.assert_allclose(v0, -0.5 * 0.1 * w0)
    m0, v0 = theory.matched_initial_state(w0, 0.1, 0.5, 0.5, decoupled=False)
    np.testing.assert_array_equal(m0, -0.5 * w0)
    np.testing.assert_array_equal(v0, -0.5 * w0)
    with pytest.raises(MinibnnError, match="weight_decay = 0"):
        theory.matched_initial_state(w0, 0.1, 0.9, 0.0, decoupled=True)
    with pytest.raises(MinibnnError, match="complex"):
        theory.matched_initial_state(w0, 1.0, 0.25, 0.6, decoupled=False)


@pytest.mark.parametrize("args", [(0.1, 0.9, 5e-4, True), (0.1, 0.9, 5e-4, False),
                                  (0.5, 0.0, 0.3, False), (0.02, 0.6, 1.0, False)])
def test_impulse_and_frequency_responses_agree(args):
    eq = theory.latent_to_filter(*args)
    latent = theory.latent_impulse_response(*args, 200)
    np.testing.assert_allclose(theory.filter_impulse_response(eq.alpha, eq.gamma, 200), latent,
                               rtol=1e-9, atol=1e-15 * np.max(np.abs(latent)))
    freqs = np.linspace(0, 0.5, 33)
    gain = theory.latent_frequency_response(*args, freqs)
    np.testing.assert_allclose(theory.filter_frequency_response(eq.alpha, eq.gamma, freqs), gain,
                               rtol=1e-9)
    assert gain[0] == pytest.approx(1.0)  # unit DC gain: v tracks a constant gradient


def test_second_order_response_reproduces_complex_case():
    args = (1.0, 0.25, 0.6, False)
    eq = theory.latent_to_filter(*args)
    np.testing.assert_allclose(theory.second_order_impulse_response(eq.a1, eq.a2, eq.c, 60),
                               theory.latent_impulse_response(*args, 60), atol=1e-14)


def _signs_agree(ws, bs, scale):
    for w, b, s in zip(ws, bs, scale):
        decided = np.abs(w) > 1e-9 * s
        assert np.array_equal(np.where(w > 0, 1.0, -1.0)[decided], b[decided])


@pytest.mark.parametrize("lr,mu,wd", [(0.05, 0.9, 0.01), (0.3, 0.5, 0.2), (0.1, 0.0, 0.5)])
def test_map_drives_the_real_optimisers(lr, mu, wd):
    """Coupled SGD (A) and CEMA under theory's map and state flip the same weights."""
    rng = np.random.default_rng(0)
    w0 = rng.uniform(-1, 1, 64)
    grads = rng.standard_normal((80, 64))
    eq = theory.latent_to_filter(lr, mu, wd, decoupled=False)
    m0, v0 = theory.matched_initial_state(w0, lr, mu, wd, decoupled=False)
    sgd, cema = optim.sgd(lr, mu, wd), optim.cema(eq.alpha, eq.gamma, {"m": {"w": m0},
                                                                       "v": {"w": v0}})
    pw, pb = {"w": w0.copy()}, {"w": np.sign(w0)}
    sw, sb = sgd.init(pw), cema.init(pb)
    ws, bs = [], []
    for g in grads:
        pw, sw = sgd.update({"w": g}, sw, pw)
        pb, sb = cema.update({"w": g}, sb, pb)
        ws.append(pw["w"])
        bs.append(pb["w"])
    scale = np.abs(w0).max() + np.cumsum(np.abs(grads).max(axis=1)) * lr * 10
    _signs_agree(ws, bs, scale)


def test_second_order_state_drives_the_real_optimiser():
    lr, mu, wd = 1.0, 0.25, 0.6   # complex poles
    rng = np.random.default_rng(1)
    w0, grads = rng.uniform(-1, 1, 32), rng.standard_normal((40, 32))
    eq = theory.latent_to_filter(lr, mu, wd)
    v1, v2 = theory.matched_second_order_state(w0, lr, mu, wd, decoupled=False)
    sgd = optim.sgd(lr, mu, wd)
    so = optim.second_order(eq.a1, eq.a2, eq.c, {"v1": {"w": v1}, "v2": {"w": v2}})
    pw, pb = {"w": w0.copy()}, {"w": np.sign(w0)}
    sw, sb = sgd.init(pw), so.init(pb)
    ws, bs = [], []
    for g in grads:
        pw, sw = sgd.update({"w": g}, sw, pw)
        pb, sb = so.update({"w": g}, sb, pb)
        ws.append(pw["w"])
        bs.append(pb["w"])
    _signs_agree(ws, bs, [np.max(np.abs(w)) for w in ws])


@pytest.mark.parametrize("call", [
    lambda: theory.latent_to_filter(0.1, 1.0, 0.1),
    lambda: theory.latent_to_filter(0.1, -0.1, 0.1),
    lambda: theory.latent_to_filter(-0.1, 0.9, 0.1),
    lambda: theory.latent_to_filter(0.0, 0.9, 0.1),
    lambda: theory.latent_to_filter(0.1, 0.9, -1e-4),
    lambda: theory.latent_to_filter(float("nan"), 0.9, 0.1),
    lambda: theory.latent_to_filter(0.1, 0.9, float("inf")),
    lambda: theory.latent_to_filter(True, 0.9, 0.1),
    lambda: theory.latent_to_filter("0.1", 0.9, 0.1),
    lambda: theory.latent_to_filter(lambda t: 0.1, 0.9, 0.1),
    lambda: theory.filter_to_latent(0.0, 0.5),
    lambda: theory.filter_to_latent(0.5, 1.5),
    lambda: theory.filter_to_latent(0.5, 0.5, lr=-1),
    lambda: theory.filter_to_latent(0.5, 0.5, weight_decay=0),
    lambda: theory.filter_impulse_response(0.5, 0.5, 0),
    lambda: theory.naive_map(0.1, 1.5, 0.1),
])
def test_bad_input_is_one_line(call):
    with pytest.raises(MinibnnError) as info:
        call()
    assert "\n" not in str(info.value) and str(info.value)


def _explain_args(*argv):
    import argparse

    from minibnn.commands import explain

    parser = argparse.ArgumentParser()
    explain.configure_parser(parser)
    return explain, parser.parse_args(list(argv))


def test_explain_prints_map_poles_and_naive_verdict(capsys, tmp_path):
    explain, args = _explain_args("--lr", "0.1", "--momentum", "0.9", "--weight-decay", "5e-4",
                                  "--plot", str(tmp_path / "ir.png"))
    assert explain.run(args) == 0
    out = capsys.readouterr().out
    assert "alpha = 0.000502272" in out and "gamma = 0.0995477" in out
    assert "poles: 0.999498, 0.900452" in out and "0.999498: memory 1990 steps" in out
    assert "docs/theory.md P7" in out and "THEORY" not in out
    assert "naive map" in out and "WRONG" in out
    assert (tmp_path / "ir.png").read_bytes()[:4] == b"\x89PNG"


def test_explain_decoupled_and_reverse(capsys):
    explain, args = _explain_args("--lr", "0.1", "--momentum", "0.9", "--weight-decay", "5e-4",
                                  "--decoupled")
    explain.run(args)
    assert "correct here" in capsys.readouterr().out
    explain, args = _explain_args("--alpha", "1e-4", "--gamma", "1e-3", "--decoupled")
    explain.run(args)
    out = capsys.readouterr().out
    assert "momentum = 0.999" in out and "lr * weight_decay = 0.0001" in out


@pytest.mark.parametrize("argv", [(), ("--alpha", "0.1"), ("--lr", "0.1", "--alpha", "0.1",
                                                            "--gamma", "0.1"),
                                  ("--lr", "0.1", "--momentum", "1.0"),
                                  ("--lr", "0.1", "--weight-decay", "0.1", "--plot",
                                   "/nonexistent-dir/x.png"),
                                  ("--lr", "0.1", "--weight-decay", "0.1", "--plot", "x.xyz"),
                                  ("--lr", "1e308", "--weight-decay", "1e308")])
def test_explain_errors_are_one_line(argv):
    explain, args = _explain_args(*argv)
    with pytest.raises(MinibnnError) as info:
        explain.run(args)
    assert "\n" not in str(info.value)


def test_verify_runs_the_checkout_suite(capsys):
    import argparse

    from minibnn.commands import explain

    parser = argparse.ArgumentParser()
    explain.configure_verify_parser(parser)
    assert explain.run_verify(parser.parse_args(["--only", "P5", "--examples", "5"])) == 0
    assert "P5" in capsys.readouterr().out


def test_explain_plots_five_slow_time_constants_by_default_not_a_hidden_cap() -> None:
    """The decoupled example's slow pole has a memory of 20,000 steps: the default plot shows
    five of them (it was silently cut at 5,000 steps, where almost nothing has decayed)."""
    from minibnn.commands.explain import MAX_DEFAULT_STEPS, _plot_steps

    eq = theory.latent_to_filter(0.1, 0.9, 5e-4, decoupled=True)
    slow = max(eq.time_constants)
    assert slow > 10_000
    assert _plot_steps(eq, None) == int(5 * slow) < MAX_DEFAULT_STEPS
    assert _plot_steps(eq, 300) == 300


# Scheduled responses and the initial state's weight (``minibnn explain RUN.h5``)

def _epochs_schedule(values, steps_per_epoch):
    """count -> the value of the epoch that step ``count`` (0-based) falls in."""
    return lambda count: values[min(count // steps_per_epoch, len(values) - 1)]


@pytest.mark.parametrize("decoupled", [False, True])
def test_scheduled_latent_response_is_the_optimiser_under_that_schedule(decoupled):
    lrs, spe, mu, wd, n = [0.3, 0.2, 0.05], 7, 0.5, 0.4, 30   # the last lr holds past step 21
    sgd = optim.sgd(_epochs_schedule(lrs, spe), mu, wd, decoupled=decoupled)
    p = {"w": np.zeros(1)}
    state = sgd.init(p)
    expected = []
    for t in range(n):
        p, state = sgd.update({"w": np.array([1.0 if t == 0 else 0.0])}, state, p)
        expected.append(p["w"][0])
    v_scale = theory.latent_to_filter(lrs[0], mu, wd, decoupled).v_scale
    got = theory.scheduled_latent_impulse_response([(lr, spe) for lr in lrs], mu, wd,
                                                   decoupled, n)
    np.testing.assert_allclose(got, -v_scale * np.array(expected), rtol=1e-12, atol=1e-15)


def test_scheduled_filter_response_is_cema_under_that_schedule():
    alphas, gamma, spe, n = [0.2, 0.1, 0.01], 0.3, 5, 25
    cema = optim.cema(_epochs_schedule(alphas, spe), gamma)
    p = {"w": np.ones(1)}
    state = cema.init(p)
    expected = []
    for t in range(n):
        p, state = cema.update({"w": np.array([1.0 if t == 0 else 0.0])}, state, p)
        expected.append(float(state["v"]["s"]["w"][0]))
    got = theory.scheduled_filter_impulse_response([(a, gamma, spe) for a in alphas], n)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_one_segment_schedules_are_the_constant_responses():
    np.testing.assert_array_equal(theory.scheduled_filter_impulse_response([(0.1, 0.5, 3)], 9),
                                  theory.filter_impulse_response(0.1, 0.5, 9))
    np.testing.assert_array_equal(
        theory.scheduled_latent_impulse_response([(0.1, 2)], 0.9, 5e-4, False, 9),
        theory.latent_impulse_response(0.1, 0.9, 5e-4, False, 9))


def test_initial_state_weight_is_the_product_of_the_dominant_poles():
    alphas, gamma, spe = [1e-2, 5e-3, 1e-9], 0.1, 100
    segments = [(theory.ema_log_decay(a, gamma), spe) for a in alphas]
    direct = 1.0
    for a in alphas:
        for _ in range(spe):
            direct *= max(1 - a, 1 - gamma)
    assert theory.initial_state_weight(segments) == pytest.approx(direct, rel=1e-9)
    # a rate so small that 1 - rate rounds to 1 still forgets
    assert theory.initial_state_weight([(theory.ema_log_decay(1e-17), 10 ** 17)]) \
        == pytest.approx(math.exp(-1), rel=1e-9)
    assert theory.initial_state_weight([(theory.ema_log_decay(1.0), 5)]) == 0.0
    eq = theory.latent_to_filter(0.1, 0.9)                        # integrator: never forgets
    assert eq.log_decay == 0.0 and theory.initial_state_weight([(eq.log_decay, 10 ** 6)]) == 1
    eq = theory.latent_to_filter(Q(1, 2), Q(1, 4), Q(51, 100))   # complex poles, |p|^2 = mu
    assert eq.log_decay == pytest.approx(math.log(0.5))
    assert theory.initial_state_weight([(eq.log_decay, 10)]) == pytest.approx(0.5 ** 10)
    assert theory.initial_state_weight([(math.log(2), 5000)]) == math.inf   # unstable


def test_log_decay_of_an_exact_filter_comes_from_its_rates():
    eq = theory.latent_to_filter(0.1, 0.9, 5e-4)
    assert eq.log_decay == math.log1p(-min(eq.alpha, eq.gamma))
    with pytest.raises(MinibnnError):
        theory.ema_log_decay(0.0)
    with pytest.raises(MinibnnError):
        theory.initial_state_weight([(-0.1, -1)])
