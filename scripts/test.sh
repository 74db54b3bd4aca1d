#!/usr/bin/env bash
# Every check: formatting, lints, host tests, no_std builds for four Cortex-M targets, the
# real-board build, on-target tests in QEMU (host/device parity) and the demo and benchmark
# in QEMU. Installs what it needs first. Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

step() { printf '\n==> %s\n' "$*"; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT

step "cargo fmt --check"
cargo fmt --all -- --check

step "clippy (core, host tools, firmware for QEMU and for the nRF52840-DK), warnings are errors"
cargo clippy -p tinybayes -p tinybayes-host-tools --all-targets -- -D warnings
cargo clippy -p tinybayes-firmware --target thumbv7em-none-eabihf --all-targets -- -D warnings
cargo clippy -p tinybayes-firmware --target thumbv7em-none-eabihf --no-default-features \
    --features nrf52840dk --bins -- -D warnings

step "host tests (core, format, fuzzing, host tools)"
cargo test 2>&1 | tee "$log"

step "no_std core builds for every Cortex-M target"
for target in thumbv6m-none-eabi thumbv7m-none-eabi thumbv7em-none-eabihf thumbv8m.main-none-eabihf; do
    cargo build -p tinybayes --release --target "$target"
done

step "real-board profile: nRF52840-DK (build only; flashing needs the board)"
cargo build-nrf52840dk

step "on-target tests in QEMU Cortex-M4F (host/device parity)"
cargo test-m4 2>&1 | tee -a "$log"

step "demo in QEMU"
cargo demo

step "benchmark harness in QEMU"
cargo bench-m4

step "all checks passed"
# One closing line over every test run above: cargo's "N passed; M failed" lines and
# defmt-test's "(i/N) running" lines (it stops at the first failure, so all N passed here).
host=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/' \
    | awk '{p += $1; f += $2} END {print p + 0, f + 0}')
device=$(grep -cE '^\([0-9]+/[0-9]+\) running' "$log" || true)
read -r host_passed host_failed <<<"$host"
echo "tests: $((host_passed + device)) passed, $host_failed failed"
