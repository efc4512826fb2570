"""``minibnn explain RUN.h5``: the filter a trained run used, checked against hand computations
on tiny runs (a CEMA run, a latent SGD run with momentum and weight decay, an Adam run), the
peak-normalised curves of ``--normalise``, and every bad input as one line."""
import math
import re

import numpy as np
import pytest

from minibnn import theory
from minibnn.commands import cli, explain
from minibnn.commands.explain_run import read_run_filter
from minibnn.run.files import load_run, save_run
from minibnn.run.spec import read_stored_config, spec_from_options
from minibnn.run.train import fit

#: 200 images in batches of 50: 4 steps per epoch, 2 epochs (alpha / lr halve in the second)
STEPS_PER_EPOCH, EPOCHS = 4, 2
TINY = dict(dataset="synthetic", hidden=[32, 32], epochs=EPOCHS, batch_size=50,
            train_subset=200, shift=0, act_ste="clipped")
CEMA = dict(optimizer="cema", alpha=0.05, gamma=0.3)
SGD = dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=0.01)   # coupled, real poles


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three tiny run files, trained once for the module."""
    folder = tmp_path_factory.mktemp("runs")
    paths = {}
    for name, options in (("cema", CEMA), ("sgd", SGD),
                          ("adam", dict(optimizer="adam", lr=0.01, epochs=1))):
        paths[name] = str(folder / f"{name}.h5")
        fit(spec_from_options({**TINY, **options}), paths[name], progress=False,
            log=lambda msg: None)
    return paths


def _ok(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def _error(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("minibnn: error: "), err
    return lines[0], out


def _memory(text, when):
    """(steps, epochs, steps per epoch) of the ``memory ~`` line's ``when`` epoch."""
    m = re.search(r"([0-9.,]+) steps = ([0-9.,]+) epochs of ([0-9,]+) steps in the "
                  + when + " epoch", text)
    assert m, (when, text)
    return tuple(float(g.replace(",", "")) for g in m.groups())


def _number_after(text, head):
    """The number printed right after ``head`` (``1 - x`` read as 1 - x)."""
    m = re.search(re.escape(head) + r" (1 - )?([0-9.eE+-]+)", text)
    assert m, (head, text)
    return 1 - float(m.group(2)) if m.group(1) else float(m.group(2))


# 1. CEMA: the spec's rates, the memory in epochs, the forgotten fraction

def test_cema_run_prints_the_specs_rates_and_schedule(runs, capsys):
    out = _ok(capsys, "explain", runs["cema"])
    spec, _ = read_stored_config(load_run(runs["cema"]).config_json)
    assert f"filter: CEMA alpha = {spec.binary_optimizer.alpha:.6g}, " \
           f"gamma = {spec.binary_optimizer.gamma:.6g}" in out
    alphas = load_run(runs["cema"]).metrics["alpha"]
    assert alphas == [0.05, 0.025]                  # linear, per epoch: alpha0 (1 - e/E)
    assert (f"alpha follows the linear schedule: {alphas[0]:.6g} in the first epoch, "
            f"{alphas[-1]:.6g} in the last trained epoch (the stored per-epoch rates)") in out
    assert f"{EPOCHS} of {EPOCHS} epochs trained = {EPOCHS * STEPS_PER_EPOCH} steps" in out


def test_cema_memory_in_epochs_is_the_slow_poles(runs, capsys):
    out = _ok(capsys, "explain", runs["cema"])
    for alpha, when in ((0.05, "first"), (0.025, "last")):
        tau = -1 / math.log(1 - min(alpha, CEMA["gamma"]))   # by hand: 19.5, 39.5 steps
        steps, epochs, per_epoch = _memory(out, when)
        assert per_epoch == STEPS_PER_EPOCH
        assert steps == pytest.approx(tau, rel=5e-3)
        assert epochs == pytest.approx(tau / STEPS_PER_EPOCH, rel=5e-3)


def test_cema_forgotten_fraction_is_the_product_over_its_schedule(runs, capsys):
    out = _ok(capsys, "explain", runs["cema"])
    left = 1.0
    for alpha in load_run(runs["cema"]).metrics["alpha"]:
        for _ in range(STEPS_PER_EPOCH):
            left *= max(1 - alpha, 1 - CEMA["gamma"])
    assert _number_after(out, "would keep") == pytest.approx(left, rel=1e-3)
    assert "partly forgotten" in out and "--init-scale (1) plays no part" in out


def test_rates_fall_back_to_the_specs_schedule(runs, tmp_path, capsys):
    run = load_run(runs["cema"])
    del run.metrics["alpha"]
    path = tmp_path / "no-rates.h5"
    save_run(str(path), run)
    out = _ok(capsys, "explain", path)
    assert "0.05 in the first epoch, 0.025 in the last trained epoch (the spec's schedule)" in out
    assert read_run_filter(str(path)).rates == read_run_filter(runs["cema"]).rates


# 2. latent SGD with momentum and weight decay: theory's map, memory, forgetting

def test_sgd_run_prints_theorys_map(runs, capsys):
    out = _ok(capsys, "explain", runs["sgd"])
    eq = theory.latent_to_filter(SGD["lr"], SGD["momentum"], SGD["weight_decay"], False)
    assert eq.exact and not eq.naive_is_exact
    assert f"equivalent filter: CEMA alpha = {eq.alpha:.6g}, gamma = {eq.gamma:.6g}" in out
    last = theory.latent_to_filter(SGD["lr"] / 2, SGD["momentum"], SGD["weight_decay"], False)
    assert f"in the last epoch (lr = 0.025): CEMA alpha = {last.alpha:.6g}" in out
    assert "approximate under the schedule" in out and "docs/theory.md P7" in out
    assert "initial state: latent w0 ~ U(-r, r)" in out and "(--init-scale 1)" in out


def test_sgd_memory_and_forgetting_from_the_poles(runs, capsys):
    out = _ok(capsys, "explain", runs["sgd"])
    mu, wd = SGD["momentum"], SGD["weight_decay"]
    left = 1.0
    for e, lr in enumerate(load_run(runs["sgd"]).metrics["lr"]):
        # (A): w_t = (1 + mu - lr wd) w_{t-1} - mu w_{t-2} - lr g_t
        poles = np.roots([1, -(1 + mu - lr * wd), mu])
        slow = max(abs(poles))
        tau = -1 / math.log(slow)
        steps, epochs, per_epoch = _memory(out, "first" if e == 0 else "last")
        assert per_epoch == STEPS_PER_EPOCH
        assert steps == pytest.approx(tau, rel=5e-3)
        assert epochs == pytest.approx(tau / STEPS_PER_EPOCH, rel=5e-3)
        left *= slow ** STEPS_PER_EPOCH
    assert _number_after(out, "the initial state keeps") == pytest.approx(left, rel=1e-3)


def test_adam_has_no_filter_and_says_why(runs, capsys):
    out = _ok(capsys, "explain", runs["adam"])
    assert "none exact" in out and "docs/theory.md P10" in out and "memory ~" not in out
    assert "forgetting" not in out
    msg, _ = _error(capsys, "explain", runs["adam"], "--plot", "x.png")
    assert "no linear filter to draw" in msg


# 3. plots: the run's response, and --normalise curves that peak at 1

def test_run_plot_is_its_scheduled_response(runs, tmp_path, capsys):
    rf = read_run_filter(runs["cema"])
    (y, _), = explain.run_impulse_responses(rf, 20)
    alphas = load_run(runs["cema"]).metrics["alpha"]
    m = v = 0.0
    expected = []
    for t in range(20):                           # CEMA by hand; alpha of the last epoch holds
        alpha = alphas[min(t // STEPS_PER_EPOCH, len(alphas) - 1)]
        m = (1 - CEMA["gamma"]) * m + CEMA["gamma"] * (t == 0)
        v = (1 - alpha) * v + alpha * m
        expected.append(v)
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    out = _ok(capsys, "explain", runs["sgd"], "--plot", tmp_path / "sgd.png", "--normalise")
    assert f"impulse response ({EPOCHS * STEPS_PER_EPOCH} steps) written to" in out
    assert (tmp_path / "sgd.png").read_bytes()[:4] == b"\x89PNG"


def test_normalised_curves_peak_at_one():
    eq = theory.latent_to_filter(0.1, 0.9, 5e-4)      # coupled: the naive CEMA is drawn too
    raw = explain.impulse_responses(eq, 3000)
    assert len(raw) == 3
    peaks = [np.max(np.abs(y)) for y, _ in raw]
    assert max(peaks) / min(peaks) > 5               # on one absolute scale they are far apart
    for (y, style), (z, same) in zip(raw, explain.peak_normalised(raw)):
        assert np.max(np.abs(z)) == pytest.approx(1.0, rel=1e-15) and same is style
        np.testing.assert_allclose(z * np.max(np.abs(y)), y, rtol=1e-12)


def test_normalised_run_curves_peak_at_one(runs):
    curves = explain.peak_normalised(explain.run_impulse_responses(read_run_filter(runs["sgd"]),
                                                                   100))
    assert len(curves) == 2                           # latent SGD and the CEMA of the map
    for y, _ in curves:
        assert np.max(np.abs(y)) == pytest.approx(1.0, rel=1e-15)


def test_normalise_writes_the_latent_plot_and_needs_plot(capsys, tmp_path):
    out = _ok(capsys, "explain", "--lr", "0.1", "--momentum", "0.9", "--weight-decay", "5e-4",
              "--plot", tmp_path / "n.png", "--steps", "50", "--normalise")
    assert "written to" in out and (tmp_path / "n.png").exists()
    msg, _ = _error(capsys, "explain", "--lr", "0.1", "--normalise")
    assert "--normalise" in msg and "--plot" in msg


# 4. bad input: one line each, nothing printed before it

@pytest.mark.parametrize("flags,named", [(("--lr", "0.1"), "--lr"),
                                         (("--alpha", "0.1", "--gamma", "0.1"), "--alpha, --gamma"),
                                         (("--decoupled",), "--decoupled"),
                                         (("--momentum", "0.9"), "--momentum")])
def test_run_file_with_configuration_flags_is_refused(runs, capsys, flags, named):
    msg, out = _error(capsys, "explain", runs["cema"], *flags)
    assert "is a run file" in msg and named in msg and out == ""


def test_missing_and_corrupt_run_files_are_one_line(capsys, tmp_path):
    msg, _ = _error(capsys, "explain", tmp_path / "missing.h5")
    assert "run file not found" in msg
    (tmp_path / "junk.h5").write_bytes(b"not an hdf5 file")
    msg, _ = _error(capsys, "explain", tmp_path / "junk.h5")
    assert "corrupt or unreadable" in msg


def test_run_file_without_a_checkpoint_is_refused(runs, capsys, tmp_path):
    run = load_run(runs["cema"])
    run.checkpoint = None
    run.metrics = {}
    save_run(str(tmp_path / "empty.h5"), run)
    msg, _ = _error(capsys, "explain", tmp_path / "empty.h5")
    assert "no finished epoch" in msg


@pytest.mark.parametrize("extra,words", [(("--steps", "5"), ["--steps", "--plot"]),
                                         (("--normalise",), ["--normalise", "--plot"]),
                                         (("--plot", "x.xyz"), ["unknown image format"])])
def test_run_plot_options_are_checked_up_front(runs, capsys, extra, words):
    msg, out = _error(capsys, "explain", runs["cema"], *extra)
    assert all(w in msg for w in words) and out == ""


def test_memory_and_forgetting_wording():
    assert explain.memory_text(3999.5, 4) == "4,000 steps = 1,000 epochs of 4 steps"   # no 1e+03
    assert explain.memory_text(19.49, 469) == "19.49 steps = 0.0416 epochs of 469 steps"
    assert explain.fraction_text(1 - 4e-6) == "1 - 4e-06" and explain.fraction_text(0.5) == "0.5"
    for weight, words in ((1.0, "never forgotten"), (0.95, "barely"), (0.5, "partly"),
                          (0.01, "mostly"), (1e-9, "less than 0.1%"), (1.5, "unstable")):
        assert words in explain.forgotten_words(weight)


@pytest.mark.parametrize("lam, says", [
    (0.0, "b0 = sign(w1) from --init-from {step1}, the buffers at 0"),
    (0.25, "b0 = sign(w1) and v0 = -0.25 * gamma * w1, m0 = 0 from the weights w1 of "
           "--init-from {step1}")])
def test_a_run_started_from_another_says_where_its_state_came_from(runs, tmp_path, capsys,
                                                                   lam, says):
    """--init-from (two-step training): the initial state is step 1's, not a zero state."""
    out_path = str(tmp_path / "step2.h5")
    fit(spec_from_options({**TINY, **CEMA, "epochs": 1, "init_from": runs["adam"],
                           "init_weight_decay": lam}), out_path, progress=False,
        log=lambda msg: None)
    out = _ok(capsys, "explain", out_path)
    assert says.format(step1=runs["adam"]) in out
    assert ("the initial state keeps" in out) == (lam > 0)
