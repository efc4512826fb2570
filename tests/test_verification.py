"""The equivalence suite (verification/): every property holds, and planted errors are caught."""
import subprocess
import sys
from fractions import Fraction as Q
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st

from verification import PROPERTIES, format_report, main, run
from verification import counterexamples as cx
from verification import properties as props
from verification import engine, on_engine
from verification import reference as ref
from verification.closed_loop import closed_loop_pair, trainer_pair
from verification.core import Mismatch

ROOT = Path(__file__).resolve().parents[1]

#: examples per property in this file (the ci profile decides randomness, not the count).
EXAMPLES = {"P1": 60, "P2": 60, "P3": 60, "P4": 60, "P5": 60, "P6": 45, "P7": 60,
            "P8": 30, "P9": None, "P10": None}


@pytest.fixture(autouse=True, scope="module")
def ci_profile():
    """Run the suite under the ``ci`` hypothesis profile (derandomised), then restore."""
    previous = settings.get_current_profile_name()
    settings.load_profile("ci")
    yield
    settings.load_profile(previous)


@pytest.fixture(scope="module")
def p10(ci_profile):
    """P10 searches take a few seconds: run them once for the tests that read them."""
    return PROPERTIES["P10"](EXAMPLES["P10"])


@pytest.mark.parametrize("pid", [p for p in PROPERTIES if p != "P10"])
def test_property_holds(pid):
    result = PROPERTIES[pid](EXAMPLES[pid])
    assert result.holds, result.counterexample
    assert result.pid == pid and result.examples > 0 and result.statement and result.margin
    # every property ran minibnn's own optimisers: the chain and the fused reference kernels
    assert "chain" in result.implementations
    assert "fused[numpy" in result.implementations
    if pid == "P9":
        assert "trainer step" in result.implementations
    for backend in ("numba", "cuda"):
        if backend not in engine.fused_backends():
            assert f"fused[{backend}]" in result.skipped
    # the PyTorch twins (the filter optimisers', and PyTorch's SGD for latent sgd: P5's only)
    if engine.torch_missing() is None:
        assert _lists_torch(result.implementations), result.implementations
    else:
        assert "pip install 'minibnn[torch]'" in result.skipped["torch"]


def test_p10_prints_a_minimal_counterexample_for_each_non_equivalence(p10):
    result = p10
    assert result.holds, result.counterexample
    names = [name for name, _ in result.details]
    assert len(names) == 7 and "naive map for (A)" in names and "PyTorch dampening" in names
    assert all("latent b" in text for _, text in result.details)
    report = format_report([result])
    assert "minimal counterexamples" in report and "naive map for (A)" in report


@pytest.mark.parametrize("pid", ["P1", "P2", "P3", "P4", "P5", "P6", "P7"])
def test_engine_stage_reports_the_cases_it_ran(pid):
    """P1-P7 say how many cases the engine ran; the number follows from the report itself."""
    import re

    result = PROPERTIES[pid](30)
    found = re.search(r"engine: (\d+) cases", result.margin)
    assert found and int(found.group(1)) > 0, result.margin


def test_a_property_whose_engine_stage_runs_no_case_does_not_hold():
    """A map that works on exact cases but gives no float rates leaves the engine unexercised:
    P3 must fail instead of holding on the reference alone."""
    def exact_only(lr, momentum, weight_decay):
        return props.theory_p3_map(lr, momentum, weight_decay) if isinstance(lr, Q) else None

    result = props.check_p3(examples=30, map_fn=exact_only)
    assert not result.holds
    assert "engine stage ran no case" in result.counterexample
    assert "engine: 0 cases" in result.margin


def test_coverage_counts_engine_cases_apart():
    cov = engine.Coverage()
    for ran in (True, False, True):
        cov.count(ran)
    assert (cov.cases, cov.not_applicable) == (2, 1)
    assert cov.cases_text() == "engine: 2 cases (1 more drawn outside its rates, not counted)"


def test_planted_error_naive_map_for_coupled_decay_is_caught():
    result = props.check_p3(examples=50, map_fn=props.naive_p3_map)
    assert not result.holds
    assert result.counterexample and "alpha=" in result.counterexample
    assert "COUNTEREXAMPLE" in format_report([result])


def test_planted_error_wrong_rate_is_caught_in_closed_loop():
    from minibnn import optim
    from minibnn.nn import models

    def mlp(**kw):
        return models.binary_mlp(in_features=12, hidden=(16, 16, 16), num_classes=3, **kw)

    good = closed_loop_pair(mlp, "mlp", 30, optim.linear(0.5, 30), 0.9, 0.05, init_scale=0.1)
    bad = closed_loop_pair(mlp, "mlp", 30, optim.linear(0.5, 30), 0.9, 0.05, init_scale=0.1,
                           alpha_factor=1.05)
    assert good.first_difference is None and good.steps == 30 and good.flips > 0
    assert bad.first_difference is not None


def test_search_reports_a_missing_counterexample():
    finding = cx.search("never", st.integers(0, 3), lambda case: None, budget=20)
    assert not finding.found and "no counterexample" in finding.text


def test_exact_references_tie_rule():
    # gamma = alpha = 1: v_t = g_t; a zero gradient is an exact tie and keeps b.
    run_ = ref.cema([Q(1), Q(0), Q(-1), Q(0)], 1, 1, b0=1)
    assert run_.b == [1, -1, -1, 1, 1]
    latent = ref.latent_sgd([Q(1), Q(-1)], 1, 0, 1, True, Q(0), b0=-1)
    assert latent.state == [0, -1, 1] and latent.b == [-1, -1, 1]


def test_runner_cli(capsys):
    assert main(["--only", "p5", "--examples", "10"]) == 0
    out = capsys.readouterr().out
    assert "P5" in out and "holds" in out and "statement" in out
    assert main(["--only", "P42"]) == 2
    assert "python -m verification: error: unknown property P42" in capsys.readouterr().err
    assert main(["--examples", "0"]) == 2
    assert main(["--only", ""]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(x.startswith("python -m verification: error: ") for x in err)
    assert "selects no property" in err[1] and "P1, P2" in err[1]


@pytest.mark.parametrize("only", ["", ",", [], [" "]])
def test_select_refuses_an_empty_selection(only):
    from minibnn.errors import MinibnnError
    from verification.runner import select

    with pytest.raises(MinibnnError, match="selects no property"):
        select(only)


def test_select_lists_the_valid_ids_and_keeps_each_once():
    from minibnn.errors import MinibnnError
    from verification.runner import select

    with pytest.raises(MinibnnError, match="P1, P2, P3, P4, P5, P6, P7, P8, P9, P10"):
        select("P3,P11")
    assert select("p3, P1,P3") == ["P3", "P1"]


def test_runner_exits_nonzero_on_failure(monkeypatch, capsys):
    monkeypatch.setitem(PROPERTIES, "P3",
                        lambda n=None: props.check_p3(20, map_fn=props.naive_p3_map))
    assert main(["--only", "P3"]) == 1
    assert "COUNTEREXAMPLE" in capsys.readouterr().out


def test_run_selects_properties():
    results = run(examples=5, only="P1,P5", derandomize=True)
    assert [r.pid for r in results] == ["P1", "P5"] and all(r.holds for r in results)


def test_python_dash_m_from_a_checkout():
    proc = subprocess.run([sys.executable, "-m", "verification", "--only", "P1", "--examples",
                           "5"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "all properties hold" in proc.stdout


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("mu,tau", [(0.9, 0.0), (0.5, 0.5), (0.0, 0.5)])
def test_reference_sgd_matches_the_real_optimiser(decoupled, mu, tau):
    """The reference recursion (incl. PyTorch's undamped first step) is minibnn's optim.sgd."""
    import numpy as np

    from minibnn import optim

    rng = np.random.default_rng(3)
    grads, w0 = rng.standard_normal(30), 0.3
    lr = [0.1 * 0.9 ** t for t in range(30)]
    reference = ref.latent_sgd(list(grads), lr, mu, 0.2, decoupled, w0, dampening=tau)
    opt = optim.sgd(lambda t: lr[t], mu, 0.2, decoupled=decoupled, dampening=tau)
    p = {"w": np.array([w0])}
    state = opt.init(p)
    for t, g in enumerate(grads, start=1):
        p, state = opt.update({"w": np.array([g])}, state, p)
        assert p["w"][0] == pytest.approx(reference.state[t], rel=1e-12, abs=1e-15)


def test_report_shows_implementations_and_skipped_backends():
    result = PROPERTIES["P8"](5)
    result.skipped = {"fused[cuda]": "ModuleNotFoundError: No module named 'cupy'"}
    report = format_report([result])
    assert "implementations" in report and "fused[numpy" in report
    assert "fused[cuda]: ModuleNotFoundError" in report and "(P8)" in report


@pytest.mark.parametrize("impl", ["fused[numpy]", "chain"])
def test_planted_error_in_an_engine_optimiser_is_caught(monkeypatch, impl):
    """A CEMA whose chain (or fused step) breaks the tie rule fails the bitwise engine check."""
    from minibnn import optim

    real = optim.cema

    def planted(alpha, gamma, init_state=None, tie="keep"):
        good, bad = real(alpha, gamma, init_state, tie), real(alpha, gamma, init_state, "positive")
        if impl == "chain":
            return optim.Transform(good.init, bad.update, good.fused)
        return optim.Transform(good.init, good.update, bad.fused)

    monkeypatch.setattr(optim, "cema", planted)
    with pytest.raises(Mismatch, match=impl.replace("[", r"\[").replace("]", r"\]")):
        on_engine.engine_cema(engine.Coverage(), "planted", [1.0, 0.0, -1.0, 0.0], 1.0, 1.0,
                              0.0, 0.0, -1)


def test_planted_error_wrong_engine_rate_is_caught():
    """The engine's latent SGD against a CEMA with half the P1 rate: a decided sign differs."""
    grads, lam, lr, w0 = [0.5, -2.0, 0.5, 3.0, -1.0], 0.5, 0.8, 0.3   # step 1 decides
    scale = engine.magnitude_bound(grads, lr, 0.0, lam, True, w0)
    latent = on_engine.engine_sgd(engine.Coverage(), "x", grads, lr, 0.0, lam, True, w0, 1, scale)
    good = on_engine.engine_cema(engine.Coverage(), "x", grads, lr * lam, 1.0, 0.0, -lam * w0, 1)
    engine.latent_matches_binary(latent[0].params, good.params, scale, "P1 map")
    bad = on_engine.engine_cema(engine.Coverage(), "x", grads, lr * lam / 2, 1.0, 0.0,
                                -lam * w0, 1)
    with pytest.raises(Mismatch, match="latent w"):
        engine.latent_matches_binary(latent[0].params, bad.params, scale, "half rate")


def test_trainer_pair_hits_exact_ties_and_agrees():
    run = trainer_pair(epochs=2, steps_per_epoch=5)
    assert run.first_difference is None and run.steps == 10 and run.flips > 0
    assert run.ties >= 2 * 32 * 10          # two rows of fc2, every step: v == 0 exactly


def test_closed_loop_tracker_catches_a_tie_rule_mismatch():
    """A latent w = 0 (sign(0) = +1) against a filter that kept b = -1 is a difference."""
    import numpy as np

    from verification.closed_loop import PairRun, _Tracker

    run = PairRun("x", 0, 0, 0, 0.0, [], None)
    tracker = _Tracker(run, ["fc2.w"], 1.0)
    minus = -np.ones((2, 2))
    assert not tracker.step(0, {"fc2.w": np.zeros((2, 2))}, {"fc2.w": minus},
                            {"fc2.w": minus}, {"fc2.w": np.zeros((2, 2))})
    assert "4 binary weights of fc2.w differ" in run.first_difference


def _lists_torch(implementations):
    """Does the report's implementations entry name the PyTorch twins?"""
    import re

    return re.search(r"(^|, )torch\b", implementations) is not None


@pytest.mark.parametrize("pid", ["P1", "P4", "P5", "P8", "P9"])
def test_without_torch_the_torch_column_is_skipped_with_the_reason(without_torch, pid):
    result = PROPERTIES[pid](5)
    assert result.holds, result.counterexample
    assert not _lists_torch(result.implementations), result.implementations
    assert "pip install 'minibnn[torch]'" in result.skipped["torch"]
    report = format_report([result])
    assert "- torch: minibnn.torch needs PyTorch" in report and f"({pid})" in report


def test_the_torch_column_runs_where_torch_is_installed():
    pytest.importorskip("torch", reason="the torch column needs PyTorch (the torch extra)")
    result = PROPERTIES["P2"](10)
    assert result.holds and _lists_torch(result.implementations), result.implementations
    assert "torch" not in result.skipped


def test_planted_error_in_the_torch_twin_is_caught(monkeypatch):
    """A PyTorch CEMA that breaks the keep tie rule fails the bitwise check, named "torch"."""
    pytest.importorskip("torch", reason="the torch column needs PyTorch (the torch extra)")
    from minibnn.torch import optim as topt

    real_flip = topt.flip_
    monkeypatch.setattr(topt, "flip_", lambda b, x, threshold, tie: real_flip(b, x, threshold,
                                                                              "positive"))
    with pytest.raises(Mismatch, match="torch cema"):
        on_engine.engine_cema(engine.Coverage(), "planted", [1.0, 0.0, -1.0, 0.0], 1.0, 1.0,
                              0.0, 0.0, -1)


def test_planted_error_wrong_rate_is_caught_in_the_torch_closed_loop():
    pytest.importorskip("torch", reason="the torch closed loop needs PyTorch (the torch extra)")
    from minibnn import optim
    from verification.closed_loop_torch import one_thread, torch_pair

    with one_thread():
        good = torch_pair("mlp", 30, optim.linear(0.5, 30), 0.9, 0.05, init_scale=0.1)
        bad = torch_pair("mlp", 30, optim.linear(0.5, 30), 0.9, 0.05, init_scale=0.1,
                         alpha_factor=1.05)
    assert good.first_difference is None and good.steps == 30 and good.flips > 0
    assert bad.first_difference is not None


#: a P5 case on which SGDW's decay matters: (B), lam * eta = 1/8 per step, c = 2
P5_CASE = dict(c=2.0, lr=[0.5, 0.5, 0.25], mu=0.5, lam=0.25, decoupled=True, w0=0.3,
               grads=[1.0, -0.5, 0.25])


def test_planted_error_in_the_torch_sgd_twin_is_caught(monkeypatch):
    """PyTorch's SGD with SGDW's decay written without the rate, ``w <- (1 - lam) w`` (AdamW's
    confusion), is not scale invariant: P5 catches it, named "torch sgd"; so do P2's signs."""
    pytest.importorskip("torch", reason="the torch column needs PyTorch (the torch extra)")
    from minibnn.torch import latent

    # P2: w_t = 0.825, 0.65, 0.48, 0.33, 0.19, 0.066, -0.042, ...; planted: 0.7, 0.45, 0.25,
    # 0.094, -0.027, ... (SGDW's (B), lam power of two, 1 - mu = 1/2: the bitwise case)
    p2_case = dict(grads=[0.1] * 8, lam=0.25, mu=0.5, gamma=0.5, lr=[0.5] * 8, w0=1.0, b0=1)
    assert on_engine.check_p5(P5_CASE, engine.Coverage())          # the twin as it is
    assert on_engine.check_first_order(p2_case, engine.Coverage())
    monkeypatch.setattr(latent.SGD, "decoupled_decay_",
                        staticmethod(lambda p, eta, lam: p.mul_(1.0 - lam)))
    with pytest.raises(Mismatch, match="torch sgd"):
        on_engine.check_p5(P5_CASE, engine.Coverage())
    with pytest.raises(Mismatch, match=r"torch sgd\(B\)"):
        on_engine.check_first_order(p2_case, engine.Coverage())
    result = PROPERTIES["P5"](30)
    assert not result.holds and "torch sgd" in result.counterexample, result


def test_planted_error_in_the_torch_sgd_coupled_decay_is_caught(monkeypatch):
    """PyTorch's SGD that drops coupled (A) weight decay: its signs leave the reference's."""
    pytest.importorskip("torch", reason="the torch column needs PyTorch (the torch extra)")
    from minibnn.torch import latent

    # w1 = w0 - eta (g + lam w0) = 1 - (0.3 + 1) < 0; without the decay 1 - 0.3 > 0
    grads, lr, lam, w0 = [0.3] * 4, 1.0, 1.0, 1.0
    scale = engine.magnitude_bound(grads, lr, 0.0, lam, False, w0)
    runs = on_engine.engine_sgd(engine.Coverage(), "x", grads, lr, 0.0, lam, False, w0, 1, scale)
    assert len(runs) == len(engine.implementations(on_engine.sgd_recipe(lr, 0.0, lam, False)))
    real_add = latent.SGD.add_param_group

    def planted(self, group):
        real_add(self, group)
        self.param_groups[-1]["weight_decay"] = 0.0

    monkeypatch.setattr(latent.SGD, "add_param_group", planted)
    with pytest.raises(Mismatch, match=r"torch sgd\(A\)"):
        on_engine.engine_sgd(engine.Coverage(), "x", grads, lr, 0.0, lam, False, w0, 1, scale)
