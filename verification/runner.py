"""Run the properties, print the report table, and the command line of ``python -m verification``."""
from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Callable, Iterable, Sequence, TextIO

from minibnn.errors import MinibnnError, closed_pipe_exit
from verification.closed_loop import check_p9
from verification.core import PropertyResult, set_derandomize
from verification.counterexamples import check_p10
from verification.properties import (check_p1, check_p2, check_p3, check_p4, check_p5,
                                     check_p6, check_p7, check_p8)

PROPERTIES: dict[str, Callable[..., PropertyResult]] = {
    "P1": check_p1, "P2": check_p2, "P3": check_p3, "P4": check_p4, "P5": check_p5,
    "P6": check_p6, "P7": check_p7, "P8": check_p8, "P9": check_p9, "P10": check_p10,
}


#: where the properties are stated and proved
DOC = "docs/theory.md"


def select(only: str | Iterable[str] | None) -> list[str]:
    """Property ids from ``"P3"``, ``"p3,P10"`` or a list; all of them for None.

    An empty selection (``""``, ``","``, ``[]``) or an unknown id raises ``MinibnnError``
    naming the valid ids: checking nothing would report "all properties hold".
    """
    if only is None:
        return list(PROPERTIES)
    valid = ", ".join(PROPERTIES)
    items = only.split(",") if isinstance(only, str) else list(only)
    ids = [str(x).strip().upper() for x in items if str(x).strip()]
    if not ids:
        raise MinibnnError(f"--only {only!r} selects no property; give one or more of {valid} "
                           f"(comma-separated, {DOC})")
    unknown = [x for x in ids if x not in PROPERTIES]
    if unknown:
        raise MinibnnError(f"unknown property {', '.join(unknown)} in --only; valid: {valid} "
                           f"({DOC})")
    return list(dict.fromkeys(ids))  # each property once, in the order given


def run(examples: int | None = None, only: str | Iterable[str] | None = None,
        derandomize: bool | None = None) -> list[PropertyResult]:
    """Check the selected properties; ``examples`` overrides each one's default count.

    ``derandomize`` None follows the loaded hypothesis profile.
    """
    ids = select(only)
    set_derandomize(derandomize)
    try:
        return [PROPERTIES[i](examples) if examples else PROPERTIES[i]() for i in ids]
    finally:
        set_derandomize(None)


_COLUMNS = (("property", 8), ("statement", 38), ("examples", 8), ("result", 14),
            ("arithmetic", 22), ("implementations", 24), ("margin / error", 34))


def _table_rows(results: Sequence[PropertyResult]) -> list[str]:
    def row(cells: Sequence[str]) -> list[str]:
        wrapped = [textwrap.wrap(c, w) or [""] for c, (_, w) in zip(cells, _COLUMNS)]
        height = max(len(x) for x in wrapped)
        return ["  ".join((x[i] if i < len(x) else "").ljust(w)
                          for x, (_, w) in zip(wrapped, _COLUMNS)).rstrip()
                for i in range(height)]

    lines = row([name for name, _ in _COLUMNS])
    lines.append("  ".join("-" * w for _, w in _COLUMNS))
    for r in results:
        lines += row([r.pid, r.statement, str(r.examples), r.verdict, r.arithmetic,
                      r.implementations, r.margin])
    return lines


def format_report(results: Sequence[PropertyResult]) -> str:
    """The table, skipped implementations, counterexamples of failed properties, P10's findings."""
    lines = _table_rows(results)
    skipped: dict[str, list[str]] = {}
    for r in results:
        for impl, why in r.skipped.items():
            skipped.setdefault(f"{impl}: {why}", []).append(r.pid)
    if skipped:
        lines += ["", "Skipped implementations (not available on this machine):"]
        for text, pids in skipped.items():
            lines += textwrap.wrap(f"- {text} ({', '.join(pids)})", 100,
                                   subsequent_indent="    ", break_on_hyphens=False)
    failed = [r for r in results if not r.holds]
    if failed:
        lines += ["", "Counterexamples to properties that should hold:"]
        for r in failed:
            lines += textwrap.wrap(f"{r.pid}: {r.counterexample}", 100,
                                   subsequent_indent="    ", break_on_hyphens=False)
    for r in results:
        if r.details:
            lines += ["", f"{r.pid} minimal counterexamples (latent view vs its would-be filter):"]
            for name, text in r.details:
                lines += textwrap.wrap(f"- {name}: {text}", 100, subsequent_indent="    ",
                                       break_on_hyphens=False)
    total = sum(r.seconds for r in results)
    verdict = "all properties hold" if not failed else f"{len(failed)} FAILED"
    lines += ["", f"{verdict} ({len(results)} checked, {total:.1f} s)"]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m verification",
        description=f"Prove the latent <-> filter equivalences of {DOC} (P1-P10).")
    configure_parser(parser)
    return parser


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``python -m verification`` and ``minibnn verify``."""
    parser.add_argument("--examples", type=int, default=None, metavar="N",
                        help="hypothesis examples per property (default: each property's own)")
    parser.add_argument("--only", default=None, metavar="P3[,P10]",
                        help="comma-separated property ids to check (P1 ... P10)")
    parser.add_argument("--random", action="store_true",
                        help="draw fresh random examples (default: derandomised, reproducible)")


def run_from_args(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run with parsed options, print the report, return the exit status (0 all hold, 1 not).

    Bad options raise ``MinibnnError`` (one line): ``minibnn verify`` prints it as
    ``minibnn: error: ...``, ``main`` below as ``python -m verification: error: ...``; both
    exit with status 2.
    """
    out = out or sys.stdout
    if args.examples is not None and args.examples < 1:
        raise MinibnnError(f"--examples must be a positive integer, got {args.examples}")
    ids = select(args.only)
    results = run(args.examples, ids, derandomize=not args.random)
    print(format_report(results), file=out)
    return 0 if all(r.holds for r in results) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m verification``: 0 when every property holds, 1 otherwise, 2 on bad usage.

    A bad option is one line on stderr, ``python -m verification: error: <message>``, the
    form argparse uses for its own errors (and ``minibnn verify`` for the same ones).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = run_from_args(args)
        sys.stdout.flush()          # a closed pipe shows here, inside the try
        return code
    except BrokenPipeError:
        return closed_pipe_exit()
    except MinibnnError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
