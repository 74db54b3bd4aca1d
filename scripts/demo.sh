#!/usr/bin/env bash
# The demo: a Bayesian network classifying MNIST digits with uncertainty on an emulated
# Cortex-M4F (QEMU mps2-an386). Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo demo
