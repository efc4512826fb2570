"""Run every hostile-user case of issue 12 through the real CLI and print a Markdown table of
what each one answers (first stderr line, exit status).

    python scripts/reliability_table.py > /tmp/table.md

Each case runs ``python -m minibnn ...`` in a fresh temporary folder holding a small trained
run file (``run.h5``), its packed file (``run.packed.h5``) and damaged copies of both.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import h5py

SMALL = "--dataset synthetic --shift 0 --hidden 32,32 --train-subset 500 --no-progress"


def run(cmd: str, cwd: str) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "minibnn", *cmd.split()], cwd=cwd,
                          capture_output=True, text=True)
    lines = done.stderr.strip().splitlines() or done.stdout.strip().splitlines()[-1:]
    return done.returncode, (lines[0] if lines else "") + (
        f" (+{len(lines) - 1} more stderr lines)" if len(lines) > 1 else "")


def flip_array_byte(path: str, dataset: str) -> None:
    with h5py.File(path, "r") as f:
        offset = f[dataset].id.get_offset()
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 1]))


def lost_scheduler(d: str) -> tuple[str, int]:
    """A sweep on a one-process Dask cluster that is killed once a point has started."""
    with open(os.path.join(d, "slow.toml"), "w") as f:
        f.write('[base]\ndataset = "synthetic"\nepochs = 6\n[grid]\nseed = [0, 1, 2]\n')
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dask_cluster.py")
    cluster = subprocess.Popen([sys.executable, script], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, cwd=d)
    address = cluster.stdout.readline().strip()
    sweep = subprocess.Popen([sys.executable, "-m", "minibnn", "sweep", "slow.toml", "--out",
                              "lost", "--scheduler", address, "--no-progress"], cwd=d,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    runs = os.path.join(d, "lost", "runs")
    while not (os.path.isdir(runs) and any(n.endswith(".h5") for n in os.listdir(runs))):
        time.sleep(0.1)
    cluster.kill()
    cluster.wait()
    _, err = sweep.communicate()
    return err.strip().splitlines()[0], sweep.returncode


def main() -> None:
    d = tempfile.mkdtemp()
    try:
        subprocess.run([sys.executable, "-m", "minibnn", "train", *SMALL.split(), "--epochs",
                        "1", "--out", "run.h5"], cwd=d, check=True, capture_output=True)
        subprocess.run([sys.executable, "-m", "minibnn", "export", "run.h5", "--packed"],
                       cwd=d, check=True, capture_output=True)
        shutil.copy(os.path.join(d, "run.h5"), os.path.join(d, "flip.h5"))
        flip_array_byte(os.path.join(d, "flip.h5"), "checkpoint/params/head.w")
        shutil.copy(os.path.join(d, "run.packed.h5"), os.path.join(d, "flip.packed.h5"))
        flip_array_byte(os.path.join(d, "flip.packed.h5"), "packed/fc2.w/bits")
        data = open(os.path.join(d, "run.h5"), "rb").read()
        open(os.path.join(d, "cut.h5"), "wb").write(data[: len(data) // 2])
        shutil.copy(os.path.join(d, "run.h5"), os.path.join(d, "tagged.h5"))
        with h5py.File(os.path.join(d, "tagged.h5"), "a") as f:
            del f["checkpoint"]
            f["checkpoint"] = 1.0
        shutil.copy(os.path.join(d, "run.h5"), os.path.join(d, "nan.h5"))
        with h5py.File(os.path.join(d, "nan.h5"), "a") as f:
            f["checkpoint/params/fc1.w"][0, 0] = float("nan")
            from minibnn.run import integrity
            integrity.seal(f)
        open(os.path.join(d, "empty.toml"), "w").close()
        with open(os.path.join(d, "grid.toml"), "w") as f:
            f.write('[base]\ndataset = "synthetic"\n[grid]\nseed = [0]\n')
        with open(os.path.join(d, "random.toml"), "w") as f:
            f.write('[base]\ndataset = "synthetic"\noptimizer = "sgd"\n[random]\ntrials = 4\n'
                    'lr = {log-uniform = [1.0, 0.001]}\n')
        cases = [
            ("sweep of an empty spec", "sweep empty.toml --out sw"),
            ("sweep --scheduler tcp://nonsense", "sweep grid.toml --out sw --scheduler "
             "tcp://nonsense"),
            ("sweep [random] with lo > hi", "sweep random.toml --out sw"),
            ("export over an existing file", "export run.h5 --out flip.h5"),
            ("export onto its own input", "export run.h5 --out run.h5 --overwrite"),
            ("run file with one flipped bit (head.w)", "eval flip.h5"),
            ("packed file with one flipped bit", "eval flip.packed.h5"),
            ("run file truncated to half", "eval cut.h5"),
            ("tagged file: checkpoint is a scalar", "eval tagged.h5"),
            ("checkpoint holding NaN: eval", "eval nan.h5"),
            ("checkpoint holding NaN: resume", "train --resume nan.h5"),
            ("--hidden 100000000,10", f"train {SMALL} --hidden 100000000,10 --out m.h5"),
            ("--width 100000", "train --dataset synthetic --model binary_cnn --width 100000 "
             "--out m.h5"),
            ("explain --steps 1000000000", "explain --lr 0.1 --weight-decay 1e-4 --plot x.png "
             "--steps 1000000000"),
            ("explain --plot x.xyz", "explain --lr 0.1 --weight-decay 1e-4 --plot x.xyz"),
            ("--lr 1e308 (float32)", f"train {SMALL} --optimizer sgd --lr 1e308 --out o.h5"),
            ("--init-scale 1e300", f"train {SMALL} --optimizer sgd --init-scale 1e300 "
             "--out o.h5"),
            ("--real-lr 1e10 (finite, exploding loss)", f"train {SMALL} --real-lr 1e10 "
             "--out o.h5"),
            ("--real-lr 1e37 (NaN at a step)", f"train {SMALL} --real-lr 1e37 --out o.h5"),
            ("--shift 40 on 28x28 images", f"train {SMALL} --shift 40 --out o.h5"),
            ("--data-dir that does not exist (MNIST)", "train --dataset mnist --data-dir /nope"),
            ("--data-dir that does not exist (synthetic)", f"train {SMALL} --data-dir /nope "
             "--out o.h5"),
            ("--out ''", None),
            ("--resume on a packed file", "train --resume run.packed.h5"),
            ("verify --only ''", None),
            ("verify --only P42", "verify --only P42"),
            ("explain --lr 1e308 --weight-decay 1e308", "explain --lr 1e308 --weight-decay 1e308"),
        ]
        rows = []
        for name, cmd in cases:
            if cmd is None:      # an empty argument cannot go through str.split
                argv = (["train", *SMALL.split(), "--out", ""] if "out" in name
                        else ["verify", "--only", ""])
                done = subprocess.run([sys.executable, "-m", "minibnn", *argv], cwd=d,
                                      capture_output=True, text=True)
                code, line = done.returncode, done.stderr.strip().splitlines()[0]
            else:
                code, line = run(cmd, d)
            rows.append((name, line, code))
        # a second writer while a training holds the lock
        proc = subprocess.Popen([sys.executable, "-m", "minibnn", "train", *SMALL.split(),
                                 "--epochs", "400", "--out", "busy.h5"], cwd=d,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not os.path.exists(os.path.join(d, "busy.h5")):
            time.sleep(0.1)
        rows.append(("second training on the same --out", *reversed(run(
            f"train {SMALL} --out busy.h5 --overwrite", d))))
        rows.append(("--resume of a file being trained", *reversed(run("train --resume busy.h5",
                                                                       d))))
        proc.kill()
        proc.wait()
        # SIGTERM during a training: like Ctrl-C, then exit 143
        proc = subprocess.Popen([sys.executable, "-m", "minibnn", "train", *SMALL.split(),
                                 "--epochs", "400", "--out", "term.h5"], cwd=d,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while not os.path.exists(os.path.join(d, "term.h5")):
            time.sleep(0.1)
        proc.terminate()
        _, err = proc.communicate()
        rows.append(("SIGTERM during a training", err.strip().splitlines()[0], proc.returncode))
        rows.append(("Dask scheduler killed (kill -9) mid-sweep", *lost_scheduler(d)))
        print("| case | message (first stderr line) | exit |")
        print("|---|---|---|")
        for name, line, code in rows:
            print(f"| {name} | `{line.replace(d + '/', '').replace(d, '.')}` | {code} |")
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
