#!/usr/bin/env bash
# E5's sweeps in order (each step starts from, or distils from, the one before; then the
# controls); run from the repository root. Every sweep resumes where it stopped, so the script
# can be run again.
set -euo pipefail
data=${1:-../shared/datasets/cifar10-jpeg.tar.gz}
for step in teacher step1 cema adam cema_state cema_scratch adam_scratch; do
    python3 -m minibnn sweep "experiments/e5_$step.toml" --out "experiments/out/e5_$step" \
        --workers 1 --data-dir "$data" --no-progress
done
