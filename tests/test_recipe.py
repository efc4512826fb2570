"""The official recipe's pieces (minibnn.run.recipe): distillation from a teacher run, two-step
training (--weights real, then --init-from), cema's initial state from step 1's weights, and
their one-line errors."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from minibnn import optim
from minibnn.commands.cli import main
from minibnn.commands.sweep_spec import spec_id
from minibnn.errors import MinibnnError
from minibnn.nn.functional import distillation_kl
from minibnn.run import recipe
from minibnn.run.files import load_run
from minibnn.run.spec import spec_from_options
from minibnn.run.train import fit, model_from_spec, run_model


def _quiet(msg: str) -> None:
    pass


def _spec(**kw):
    base = dict(dataset="synthetic", hidden=[32, 32], epochs=1, batch_size=50,
                act_ste="clipped", shift=0, train_subset=500, dtype="float64")
    base.update(kw)
    return spec_from_options(base)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A real teacher (real weights and activations), a step 1 (real weights, binary
    activations) distilled from it, both float64 binary MLPs on the synthetic set."""
    folder = tmp_path_factory.mktemp("recipe")
    teacher, step1 = str(folder / "teacher.h5"), str(folder / "step1.h5")
    fit(_spec(weights="real", activations="real", optimizer="adam", lr=0.01), teacher,
        progress=False, log=_quiet)
    fit(_spec(weights="real", optimizer="adam", lr=0.01, teacher=teacher, distill=2.0), step1,
        progress=False, log=_quiet)
    return {"teacher": teacher, "step1": step1, "folder": folder}


def test_distillation_loss_is_kl_to_the_teachers_eval_logits(runs):
    spec, _, teacher = run_model(load_run(runs["teacher"]))
    ck = load_run(runs["teacher"]).checkpoint
    loss_fn, record = recipe.distillation_loss(runs["teacher"], 3.0, teacher.input_shape,
                                               teacher.num_classes, "synthetic", "cpu",
                                               np.float64)
    assert record["sha256"] == recipe.file_sha256(runs["teacher"]) and record["epoch"] == 1
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6,) + tuple(teacher.input_shape))
    logits = rng.normal(size=(6, teacher.num_classes))
    target, _, _ = teacher.forward(ck.params, ck.buffers, x, train=False)
    loss, grad = loss_fn(logits, x, np.zeros(6, np.int64))
    want_loss, want_grad = distillation_kl(logits, target, 3.0)
    assert float(loss) == float(want_loss) and np.array_equal(grad, want_grad)


def test_a_distilled_run_trains_on_the_teachers_loss(runs):
    """step 1 stored its teacher, and its training loss is the distillation loss (which the
    teacher's own cross-entropy-trained run does not reach), read back from the run file."""
    stored, _, _ = run_model(load_run(runs["step1"]))
    assert stored.loop.teacher == runs["teacher"] and stored.loop.distill == 2.0
    assert stored.model.weights == "real" and stored.model.activations == "binary"
    assert load_run(runs["step1"]).metrics["train_loss"][0] < 2.3   # KL, below CE at chance


@pytest.mark.parametrize("optimizer", ["cema", "adam"])
def test_init_from_starts_from_step_ones_weights(runs, optimizer):
    spec = _spec(optimizer=optimizer, init_from=runs["step1"])
    step1 = run_model(load_run(runs["step1"]))[2]
    model = model_from_spec(spec, step1.input_shape, step1.num_classes)
    params, buffers = model.init(np.random.default_rng(5), np.float64)
    start, start_buffers, state, record = recipe.init_from(spec, model, params, buffers)
    assert record["path"] == os.path.abspath(runs["step1"])
    old = load_run(runs["step1"]).checkpoint
    for name in params:
        if name in model.binary_names and optimizer == "cema":
            assert np.array_equal(start[name], np.where(old.params[name] >= 0, 1.0, -1.0))
        else:
            assert np.array_equal(start[name], old.params[name])
    assert all(np.array_equal(start_buffers[k], old.buffers[k]) for k in buffers)
    assert state == {}                       # no --init-weight-decay: zero filter state


def test_cemas_initial_state_is_the_decoupled_sgd_state_and_holds_each_sign():
    """v0 = -lam gamma w1, m0 = 0 (docs/theory.md P2); with no gradient the signs of w1 hold
    (v0 * b0 < 0 everywhere), and the first gradient step moves v exactly as decoupled SGD
    with momentum 1 - gamma moves -lam (1 - mu) w."""
    rng = np.random.default_rng(1)
    w1 = {"fc2.w": rng.normal(size=(5, 4)) * 0.1}
    cema = _spec(optimizer="cema", alpha=0.01, gamma=0.2, init_from="x.h5",
                 init_weight_decay=0.5).binary_optimizer
    state0 = recipe.cema_initial_state(cema, w1, 0.5)
    np.testing.assert_allclose(state0["v"]["fc2.w"], -0.5 * 0.2 * w1["fc2.w"], rtol=1e-15)
    assert not state0["m"]["fc2.w"].any()
    b0 = {"fc2.w": np.where(w1["fc2.w"] >= 0, 1.0, -1.0)}
    opt = optim.cema(alpha=0.01, gamma=0.2, init_state={k: dict(v) for k, v in state0.items()})
    state = opt.init(b0)
    b1, state = opt.update({"fc2.w": np.zeros((5, 4))}, state, b0)
    assert np.array_equal(b1["fc2.w"], b0["fc2.w"])
    # latent decoupled SGD (lr = alpha / lam, momentum 1 - gamma) from w1, one step with g:
    g = rng.normal(size=(5, 4))
    _, state = opt.update({"fc2.w": g}, state, b1)
    sgd = optim.sgd(lr=0.01 / 0.5, momentum=0.8, weight_decay=0.5, decoupled=True)
    w, s = dict(w1), sgd.init(w1)
    w, s = sgd.update({"fc2.w": np.zeros((5, 4))}, s, w)
    w, s = sgd.update({"fc2.w": g}, s, w)
    # P2: v = -lam (1 - mu) w, with the same gradients
    np.testing.assert_allclose(state["v"]["s"]["fc2.w"], -0.5 * 0.2 * w["fc2.w"], rtol=1e-12)


def test_a_two_step_run_resumes_bit_identically(runs):
    straight, split = str(runs["folder"] / "straight.h5"), str(runs["folder"] / "split.h5")
    spec = _spec(optimizer="cema", alpha=0.01, epochs=2, init_from=runs["step1"],
                 init_weight_decay=0.1, teacher=runs["teacher"])
    fit(spec, straight, progress=False, log=_quiet)
    fit(spec, split, progress=False, log=_quiet, stop_after=1)
    fit(None, split, resume=True, progress=False, log=_quiet)
    a, b = load_run(straight).checkpoint, load_run(split).checkpoint
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)


def test_the_recipe_options_enter_the_sweep_id_only_when_given():
    plain = _spec()
    assert spec_id(plain) == spec_id(spec_from_options({**plain.options(), "distill": 1.0}))
    assert spec_id(plain) != spec_id(_spec(teacher="t.h5"))
    assert spec_id(plain) != spec_id(_spec(init_from="s.h5"))


@pytest.mark.parametrize("argv, message", [
    (["--distill", "2"], "--distill sets the temperature of distilling from --teacher"),
    (["--init-weight-decay", "0.1"], "--init-weight-decay sizes cema's initial state"),
    (["--init-weight-decay", "0.1", "--init-from", "x.h5", "--optimizer", "sgd"],
     "--init-weight-decay sizes cema's initial state"),
    (["--teacher", "MISSING"], "MISSING"),
    (["--init-from", "MISSING"], "MISSING"),
    (["--distill", "0", "--teacher", "t.h5"], "--distill must be a temperature > 0"),
    (["--distill", "1e-30", "--teacher", "t.h5"], "--distill 1e-30: T^2 = 0 in float32"),
    (["--init-weight-decay", "1e60", "--init-from", "s.h5"],
     "--init-weight-decay 1e+60 overflows float32"),
])
def test_recipe_errors_are_one_line(tmp_path, capsys, argv, message):
    argv = [a.replace("MISSING", str(tmp_path / "missing.h5")) for a in argv]
    code = main(["train", "--dataset", "synthetic", "--epochs", "1", "--no-progress",
                 "--out", str(tmp_path / "out.h5")] + argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message.replace(
        "MISSING", str(tmp_path / "missing.h5")) in err


def test_a_teacher_or_start_for_other_inputs_is_refused(runs, tmp_path, capsys):
    """A start whose layers have other shapes is named in one line, and nothing is written."""
    other = str(tmp_path / "wide.h5")
    fit(_spec(hidden=[16, 16], optimizer="adam"), other, progress=False, log=_quiet)
    code = main(["train", "--dataset", "synthetic", "--epochs", "1", "--no-progress",
                 "--hidden", "32,32", "--init-from", other, "--out", str(tmp_path / "o.h5")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "parameter 'fc1.w' has shape (16, 784), the new model needs (32, 784)" in err
    assert not (tmp_path / "o.h5").exists()


def test_the_initial_state_reaches_training(runs):
    """With a large --init-weight-decay the state v0 = -lam gamma w1 outweighs an epoch of
    gradients, so no weight flips; with 0 (signs only, zero state) weights flip."""
    flips = {}
    for lam in (0.0, 1e3):
        out = str(runs["folder"] / f"lam{lam}.h5")
        metrics = fit(_spec(optimizer="cema", alpha=0.05, init_from=runs["step1"],
                            init_weight_decay=lam), out, progress=False, log=_quiet)
        flips[lam] = sum(v[0] for k, v in metrics.items() if k.startswith("flip_ratio:"))
    assert flips[0.0] > 0 and flips[1e3] == 0


def test_the_sessions_name_their_teacher_and_start(runs):
    """The run file's provenance names the teacher and the start it used (path, SHA-256)."""
    sessions = load_run(runs["step1"]).description["provenance"]
    assert sessions[0]["teacher"]["sha256"] == recipe.file_sha256(runs["teacher"])
    assert sessions[0]["teacher"]["path"] == os.path.abspath(runs["teacher"])


def test_an_unfinished_teacher_is_refused(tmp_path):
    half = str(tmp_path / "half.h5")
    fit(_spec(epochs=2, optimizer="adam"), half, progress=False, log=_quiet, stop_after=1)
    with pytest.raises(MinibnnError, match="has trained 1 of its 2 epochs: finish it first"):
        fit(_spec(teacher=half), str(tmp_path / "s.h5"), progress=False, log=_quiet)


def test_a_resume_refuses_a_teacher_that_changed(runs, tmp_path):
    """A student stopped after epoch 1 whose teacher file is then replaced by another run's
    does not go on distilling from the new one."""
    teacher = str(tmp_path / "teacher.h5")
    shutil.copy(runs["teacher"], teacher)
    student = str(tmp_path / "student.h5")
    fit(_spec(epochs=2, teacher=teacher), student, progress=False, log=_quiet, stop_after=1)
    os.remove(teacher)
    fit(_spec(weights="real", activations="real", optimizer="adam", lr=0.02), teacher,
        progress=False, log=_quiet)
    with pytest.raises(MinibnnError, match="is not the file this run started with"):
        fit(None, student, resume=True, progress=False, log=_quiet)


def test_a_run_without_binary_weights_says_so(runs, tmp_path, capsys):
    """A --weights real run trains no binary weights: its packed export is refused in one line
    (it used to print 'nanx smaller'), and its training line says what it trained."""
    code = main(["export", runs["step1"], "--out", str(tmp_path / "s.packed.h5")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "has no binary weights to pack" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s.packed.h5").exists()
    lines = []
    fit(_spec(weights="real"), str(tmp_path / "w.h5"), progress=False, log=lines.append)
    assert "no binary weights (--weights real)" in lines[0]
