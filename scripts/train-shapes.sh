#!/usr/bin/env bash
# Reproduces models/shapes from a seed, on the CPU: the shapes-world dataset (Rust, exact
# renders) -> frozen text encoders -> VAE -> cached latents -> transformer -> model directory.
# Resumable: after an interruption, run the same command again. Not part of CI.
#
#   scripts/train-shapes.sh                 # seed 0, 40,000 cases at 96x96, writes models/shapes
#   SEED=1 OUT=/tmp/shapes-1 scripts/train-shapes.sh --flux-steps 6000
#
# Extra arguments go to training/shapes/train.py (--help lists them).
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=${SEED:-0}
CASES=${CASES:-40000}
SIZE=${SIZE:-96}
WORK=${WORK:-target/shapes-train/seed$SEED}
OUT=${OUT:-models/shapes}
VENV=${VENV:-.venv-parity}

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -r training/shapes/requirements.txt
fi
cargo build --release --locked -p kontext-shapes --bin kontext-shapes
if [ ! -f "$WORK/data/meta.json" ]; then
    rm -rf "$WORK/data.partial"
    target/release/kontext-shapes dataset --out "$WORK/data.partial" --seed "$SEED" --count "$CASES" --size "$SIZE"
    mv "$WORK/data.partial" "$WORK/data"
fi
"$VENV/bin/python" training/shapes/train.py --data "$WORK/data" --work "$WORK" --out "$OUT" \
    --seed "$SEED" "$@"
