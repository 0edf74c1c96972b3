#!/usr/bin/env bash
# Makes .venv-bench/: the project plus lightly, for the peers' rows of
# `python -m benchmarks.peers` (issue 23). Run from anywhere:
#
#     bash benchmarks/make_bench_env.sh
#
# lightly pulls torchvision, and an unpinned torchvision pulls the newest CUDA build of
# torch, so they stay out of the project's environment (.venv) and out of its extras. Here
# torch is pinned to the project environment's release (2.13.0 by default; PEP 440 lets
# a local 2.13.0+cpu wheel satisfy torch==2.13.0, so a CPU build found by pip, on disk or
# on an index, is kept) and torchvision to the release built for it (0.28.0 for 2.13).
# PyPI's torchvision is built against the CUDA torch: with a CPU torch its compiled ops do
# not load, which benchmarks/peers_lightly.py works around (its transforms are PIL and
# tensor code). Override with TORCH=, TORCHVISION=, LIGHTLY= or PYTHON= in the environment.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [[ -z "${TORCH:-}" && -x .venv/bin/python ]]; then
    TORCH=$(.venv/bin/python -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
fi
TORCH=${TORCH:-2.13.0}
minor=$(echo "$TORCH" | cut -d. -f2)
TORCHVISION=${TORCHVISION:-0.$((minor + 15)).0}   # torchvision 0.N+15 goes with torch 2.N
LIGHTLY=${LIGHTLY:-1.6.0}

"$PYTHON" -m venv .venv-bench
.venv-bench/bin/python -m pip install --quiet "torch==$TORCH"
.venv-bench/bin/python -m pip install --quiet "torch==$TORCH" "torchvision==$TORCHVISION" \
    "lightly==$LIGHTLY" -e ".[bench]"
.venv-bench/bin/python -m benchmarks.peers_lightly --check
echo "made .venv-bench: torch $TORCH, torchvision $TORCHVISION, lightly $LIGHTLY"
