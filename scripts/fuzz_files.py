"""Flip random single bits of a fresh run file and its packed file; count how each load ends.

    python scripts/fuzz_files.py [--flips 1000] [--seed 0]

Every flip must end "detected" (a one-line DataFileError) or "harmless" (the file reads back
exactly the original contents); anything else ("silent": different contents, or another
exception) is printed.  Used for the integrity numbers in the issue notes; tests/test_integrity.py
runs the same check under hypothesis.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from test_integrity import READERS, _same  # noqa: E402

from minibnn.errors import DataFileError  # noqa: E402
from minibnn.deploy.inference import export_packed  # noqa: E402
from minibnn.run.spec import spec_from_options  # noqa: E402
from minibnn.run.train import fit  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flips", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as d:
        run, packed, damaged = (os.path.join(d, n) for n in ("run.h5", "p.h5", "x.h5"))
        fit(spec_from_options(dict(dataset="synthetic", hidden=[32, 32], epochs=1, shift=0,
                                   train_subset=200)), run, progress=False, log=lambda m: None)
        export_packed(run, packed)
        for kind, path in (("run", run), ("packed", packed)):
            data, original = open(path, "rb").read(), READERS[kind](path)
            counts = {"detected": 0, "harmless": 0, "silent": 0}
            for _ in range(args.flips):
                flipped = bytearray(data)
                at = int(rng.integers(len(data)))
                flipped[at] ^= 1 << int(rng.integers(8))
                with open(damaged, "wb") as f:
                    f.write(flipped)
                try:
                    same = _same(READERS[kind](damaged), original)
                    outcome = "harmless" if same else "silent"
                except DataFileError:
                    outcome = "detected"
                except Exception as exc:  # noqa: BLE001 - what the fuzz is looking for
                    outcome = "silent"
                    print(f"{kind} byte {at}: {type(exc).__name__}: {exc}")
                counts[outcome] += 1
            print(f"{kind} file ({len(data)} bytes), {args.flips} random bit flips: {counts}")


if __name__ == "__main__":
    main()
