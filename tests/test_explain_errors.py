"""``minibnn explain`` / ``minibnn verify``: every bad input is one line, exit 2, refused up front.

Project issue 12: unknown plot formats and missing folders, sizes that cannot fit in memory,
overflowing hyperparameters, an unstable pole called an integrator, an empty ``--only``, and
citations of the theory document.
"""
import shutil

import pytest

from minibnn import theory
from minibnn.commands import cli
from minibnn.commands import explain

GIB = 2 ** 30


def _error(capsys, *argv):
    """Run ``minibnn argv``; assert exit 2 and one stderr line; return (message, stdout)."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("minibnn: error: "), err
    return lines[0], out


def _ok(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


LATENT = ("explain", "--lr", "0.1", "--momentum", "0.9", "--weight-decay", "5e-4")


# 1. plot path: unknown or missing extension, missing folder, a folder, pgf without LaTeX

def test_unknown_plot_extension_lists_the_supported_formats(capsys, tmp_path):
    msg, out = _error(capsys, *LATENT, "--plot", tmp_path / "x.xyz")
    assert "unknown image format .xyz" in msg
    for ext in ("png", "pdf", "svg"):
        assert ext in msg
    assert out == "" and not (tmp_path / "x.xyz").exists()


def test_supported_formats_come_from_matplotlib():
    from matplotlib.figure import Figure

    from minibnn.commands.figures import supported_plot_formats

    assert supported_plot_formats() == Figure().canvas.get_supported_filetypes()


def test_plot_without_extension_is_refused(capsys, tmp_path):
    # matplotlib would silently write tmp_path/out.png while we report tmp_path/out
    msg, out = _error(capsys, *LATENT, "--plot", tmp_path / "out")
    assert "no extension" in msg and "png" in msg and out == ""
    assert list(tmp_path.iterdir()) == []


def test_plot_extension_is_case_insensitive(capsys, tmp_path):
    out = _ok(capsys, *LATENT, "--plot", tmp_path / "X.PNG", "--steps", "20")
    assert "written to" in out and (tmp_path / "X.PNG").read_bytes()[:4] == b"\x89PNG"


def test_missing_plot_folder_is_refused_before_any_output(capsys, tmp_path):
    msg, out = _error(capsys, *LATENT, "--plot", tmp_path / "missing" / "x.png")
    assert "folder" in msg and "does not exist" in msg and str(tmp_path / "missing") in msg
    assert out == ""


def test_plot_path_that_is_a_folder_is_refused(capsys, tmp_path):
    (tmp_path / "d.png").mkdir()
    msg, out = _error(capsys, *LATENT, "--plot", tmp_path / "d.png")
    assert "is a folder" in msg and out == ""


def test_plot_folder_that_is_a_file_is_refused(capsys, tmp_path):
    (tmp_path / "f").write_text("")
    msg, out = _error(capsys, *LATENT, "--plot", tmp_path / "f" / "x.png")
    assert "not a folder" in msg and out == ""


@pytest.mark.skipif(shutil.which("xelatex") is not None, reason="xelatex installed")
def test_pgf_without_latex_is_refused(capsys, tmp_path):
    msg, out = _error(capsys, *LATENT, "--plot", tmp_path / "x.pgf")
    assert "xelatex" in msg and out == ""


# 2. memory: refused up front with an estimate; MemoryError as a last resort

def test_steps_that_cannot_fit_are_refused_with_an_estimate(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(explain, "physical_memory", lambda: 24 * GIB, raising=False)
    msg, out = _error(capsys, *LATENT, "--plot", tmp_path / "x.png", "--steps", 10 ** 15)
    assert f"--steps {10 ** 15} (the responses and their plot) needs ~" in msg
    assert "this machine has 24.0 GiB: pass at most --steps" in msg and out == ""
    assert not (tmp_path / "x.png").exists()


def test_memory_estimate_counts_the_arrays(monkeypatch):
    monkeypatch.setattr(explain, "physical_memory", lambda: 24 * GIB)
    # x axis + per line (its float64 response + matplotlib's vertex arrays)
    per_step = 8 + 3 * (8 + explain.MPL_BYTES_PER_POINT)
    assert explain.plot_bytes(10 ** 9, 3) == 10 ** 9 * per_step
    with pytest.raises(explain.MinibnnError) as info:
        explain.check_plot_memory(10 ** 9, 3)
    gib = 10 ** 9 * per_step / GIB
    assert str(info.value).startswith(f"--steps 1000000000 (the responses and their plot) "
                                      f"needs ~{gib:.1f} GiB")
    assert "this machine has 24.0 GiB" in str(info.value)
    explain.check_plot_memory(10 ** 6, 3)  # 176 MB fits


def test_physical_memory_is_the_machines():
    import os

    have = explain.physical_memory()
    assert have == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def test_memory_error_is_a_one_line_error(capsys, tmp_path, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(theory, "latent_impulse_response", out_of_memory)
    msg, _ = _error(capsys, *LATENT, "--plot", tmp_path / "x.png", "--steps", "1000")
    assert "out of memory" in msg and "--steps" in msg


def test_steps_without_plot_is_refused(capsys):
    msg, _ = _error(capsys, *LATENT, "--steps", "100")
    assert "--steps" in msg and "--plot" in msg


def test_unstable_response_overflow_is_refused_before_any_output(capsys, tmp_path):
    msg, out = _error(capsys, "explain", "--lr", "1e8", "--weight-decay", "1", "--plot",
                      tmp_path / "x.png")
    assert "overflows float64 after 38 steps" in msg and "unstable" in msg
    assert "--steps 38" in msg and out == ""
    assert "written to" in _ok(capsys, "explain", "--lr", "1e8", "--weight-decay", "1",
                               "--plot", tmp_path / "x.png", "--steps", "38")


# 3. pole wording

@pytest.mark.parametrize("pole,words,not_words", [
    (-1.593, ["unstable", "|pole| > 1", "diverges"], ["integrator", "forever"]),
    (3.0, ["unstable", "diverges"], ["integrator"]),
    (2 + 1j, ["unstable", "diverges"], ["integrator"]),
    (-1.0, ["|pole| = 1", "oscillates", "without decaying"], ["integrator", "unstable"]),
    (1j, ["|pole| = 1", "without decaying"], ["integrator", "unstable"]),
    (1.0, ["integrator", "forever"], ["unstable", "oscillat"]),
    (1, ["integrator"], ["unstable"]),
    (0.9, ["memory 9.491 steps"], ["integrator", "unstable", "oscillat", "alternat"]),
    (-0.5, ["memory 1.443 steps", "alternating in sign"], ["integrator", "unstable"]),
    (0.3 + 0.4j, ["memory 1.443 steps", "oscillating with period"], ["integrator"]),
    (0, ["memory 0 steps"], ["integrator", "unstable"]),
])
def test_pole_wording(pole, words, not_words):
    text = explain.pole_memory(pole)
    for w in words:
        assert w in text, text
    for w in not_words:
        assert w not in text, text


def test_unstable_pole_is_not_called_an_integrator(capsys):
    out = _ok(capsys, "explain", "--lr", "3", "--momentum", "0.25", "--weight-decay", "1")
    assert "-1.59307: unstable: |pole| > 1, the filter diverges" in out
    assert "integrator" not in out and "-0.15693: memory" in out


def test_pole_minus_one_oscillates_without_decay(capsys):
    out = _ok(capsys, "explain", "--lr", "2", "--weight-decay", "1")
    assert "-1: no decay" in out and "without decaying" in out and "integrator" not in out


def test_only_weight_decay_zero_is_an_integrator(capsys):
    out = _ok(capsys, "explain", "--lr", "0.1", "--momentum", "0.9")
    assert "1: memory forever (integrator" in out
    # a pole that rounds to 1 in float64 still has a finite memory (~1/(lr*wd) steps)
    out = _ok(capsys, "explain", "--lr", "1e-17", "--weight-decay", "1", "--decoupled")
    assert "integrator" not in out and "memory 1e+17 steps" in out


# 4. non-finite inputs and results

@pytest.mark.parametrize("argv,words", [
    (("--lr", "1e308", "--weight-decay", "1e308"), ["--lr", "--weight-decay", "overflows"]),
    (("--lr", "1e308", "--weight-decay", "1e308", "--momentum", "0.5"),
     ["--lr", "--weight-decay", "overflows"]),
    (("--lr", "1e308", "--weight-decay", "1e308", "--momentum", "0.5", "--decoupled"),
     ["--lr", "--weight-decay", "overflows"]),
    (("--lr", "1e-300", "--weight-decay", "1e-300"), ["--lr", "--weight-decay", "underflows"]),
    (("--lr", "inf"), ["--lr", "finite", "inf"]),
    (("--lr", "nan", "--weight-decay", "0.1"), ["--lr", "finite", "nan"]),
    (("--lr", "0.1", "--momentum", "nan"), ["--momentum", "finite"]),
    (("--lr", "0.1", "--weight-decay=-inf"), ["--weight-decay", "finite"]),
    (("--alpha", "nan", "--gamma", "0.1"), ["--alpha", "finite"]),
    (("--alpha", "0.1", "--gamma", "inf"), ["--gamma", "finite"]),
    (("--alpha", "1e-200", "--gamma", "1e-200"), ["--alpha", "--gamma", "underflows"]),
    (("--lr", "-1"), ["--lr", "> 0"]),
    (("--lr", "0.1", "--momentum", "1"), ["--momentum", "[0, 1)"]),
    (("--alpha", "2", "--gamma", "0.5"), ["--alpha", "(0, 1]"]),
])
def test_non_finite_and_out_of_range_numbers_name_the_option(capsys, argv, words):
    msg, out = _error(capsys, "explain", *argv)
    for w in words:
        assert w in msg, msg
    assert out == "" and "nan, nan" not in msg


def test_huge_finite_product_gives_finite_poles():
    eq = theory.latent_to_filter(1e200, 0.5, 1e100)
    assert all(abs(complex(p)) < float("inf") for p in eq.poles)
    assert eq.poles[1] == pytest.approx(-1e300) and eq.poles[0] == pytest.approx(-5e-301)


def test_latent_options_are_refused_with_alpha_gamma(capsys, tmp_path):
    msg, _ = _error(capsys, "explain", "--alpha", "0.1", "--gamma", "0.1", "--plot",
                    tmp_path / "x.png")
    assert "--plot" in msg and "--alpha/--gamma" in msg
    msg, _ = _error(capsys, "explain", "--alpha", "0.1", "--gamma", "0.1", "--momentum", "0.9")
    assert "--momentum" in msg


# 5. verify: empty or unknown selection, every error through MinibnnError

@pytest.mark.parametrize("only", ["", ",", " , "])
def test_verify_empty_selection_is_an_error(capsys, only):
    msg, out = _error(capsys, "verify", "--only", only)
    assert "selects no property" in msg and "P1" in msg and "P10" in msg
    assert "all properties hold" not in out


def test_verify_unknown_property_lists_the_valid_ones(capsys):
    msg, _ = _error(capsys, "verify", "--only", "P42,P1")
    assert "unknown property P42" in msg and "P1, P2, P3" in msg and "P10" in msg


@pytest.mark.parametrize("examples", ["0", "-3"])
def test_verify_bad_examples_has_the_prefix(capsys, examples):
    msg, _ = _error(capsys, "verify", "--examples", examples)
    assert "--examples must be a positive integer" in msg


def test_python_dash_m_verification_errors_are_one_line(capsys):
    from verification import main

    assert main(["--only", ""]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m verification: error: ")
    assert "selects no property" in lines[0]


# 6. citations: the project's theory document is docs/theory.md

def test_explain_cites_docs_theory_md(capsys):
    out = _ok(capsys, *LATENT)
    assert "THEORY" not in out
    assert "docs/theory.md (A)" in out and "docs/theory.md P7" in out
    assert "docs/theory.md P5" in out
    out = _ok(capsys, "explain", "--lr", "0.1", "--momentum", "0.9")
    assert "THEORY" not in out and "docs/theory.md P6" in out
    out = _ok(capsys, "explain", "--alpha", "0.01", "--gamma", "0.1")
    assert "THEORY" not in out and "docs/theory.md P7" in out


def test_verify_help_cites_docs_theory_md(capsys):
    with pytest.raises(SystemExit):
        cli.main(["verify", "--help"])
    out = capsys.readouterr().out
    assert "docs/theory.md" in out and "THEORY" not in out
    from verification.runner import build_parser

    assert "docs/theory.md" in build_parser().format_help()


def test_docs_theory_md_states_every_property():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "theory.md").read_text()
    for k in range(1, 11):
        assert f"**P{k} (" in text
