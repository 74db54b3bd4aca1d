#!/usr/bin/env bash
# Every check: formatting, lints, host tests, no_std builds for four Cortex-M targets, the
# real-board build, on-target tests in QEMU on the Cortex-M4F, M3 and M0 (host/device
# parity, including all 10,000 MNIST test images in fixed point) and on the Cortex-M7
# (mps2-an500) and M33 (mps2-an505), f32 and fixed point, the no-float check of the
# fixed-point firmware, the demos and benchmarks in QEMU (benchmarks on the M7 and M33 too;
# bench lines checked against BENCHMARKS.md's generated tables), and the C API's example in
# QEMU against the Rust demos. Installs what it needs first. Exits non-zero on the first
# failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# Each step names the seconds since the start, so a slow step shows in CI's log.
step() { printf '\n==> [%d s] %s\n' "$SECONDS" "$*"; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT

step "cargo fmt --check"
cargo fmt --all -- --check

step "clippy (core, host tools, firmware for QEMU and for the nRF52840-DK), warnings are errors"
cargo clippy -p tinybayes -p tinybayes-host-tools -p tinybayes-c --all-targets -- -D warnings
cargo clippy -p tinybayes-firmware --target thumbv7em-none-eabihf --all-targets -- -D warnings
cargo clippy -p tinybayes-firmware --target thumbv7m-none-eabi --all-targets -- -D warnings
cargo clippy -p tinybayes-firmware --target thumbv6m-none-eabi --all-targets -- -D warnings
# The M33 lints in the profile its on-target tests build in, so that both share one run of the
# firmware's build script. (The M7 runs the M4F's thumbv7em code: linted above.)
cargo clippy -p tinybayes-firmware --release --target thumbv8m.main-none-eabihf --all-targets \
    -- -D warnings
cargo clippy -p tinybayes-firmware --target thumbv7em-none-eabihf --no-default-features \
    --features nrf52840dk --bins -- -D warnings

# The C API's static library for the Cortex-M4F (every format) and the Cortex-M0 (q8 alone,
# as examples/c builds it).
cargo clippy -p tinybayes-c --release --target thumbv7em-none-eabihf -- -D warnings
cargo clippy -p tinybayes-c --release --target thumbv6m-none-eabi --no-default-features \
    --features q8,chunk-4 -- -D warnings

step "rustdoc of the core and the host tools, warnings are errors (broken links included)"
# The core alone too, with its default features (as docs.rs builds it), then with the host
# tools' features.
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps -p tinybayes
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps -p tinybayes -p tinybayes-host-tools -p tinybayes-c

step "host tests (core, format, fuzzing, host tools, the C API from C and its header; doctests, the README's API snippet among them)"
cargo test 2>&1 | tee "$log"

step "no_std core builds for every Cortex-M target"
for target in thumbv6m-none-eabi thumbv7m-none-eabi thumbv7em-none-eabihf thumbv8m.main-none-eabihf; do
    cargo build -p tinybayes --release --target "$target"
done

step "real-board profile: nRF52840-DK (build only; flashing needs the board)"
cargo build-nrf52840dk

step "real-board flash command from the README, exactly as written, with a stand-in probe-rs"
fake=$(mktemp -d)
ln -s "$PWD/scripts/fake-probe-rs.sh" "$fake/probe-rs"
PATH="$fake:$PATH" cargo --config firmware/boards/nrf52840dk.toml run -p tinybayes-firmware --profile nrf52840dk \
    --target thumbv7em-none-eabihf --no-default-features --features nrf52840dk --bin demo
rm -rf "$fake"

step "on-target tests in QEMU Cortex-M4F (host/device parity)"
cargo test-m4 2>&1 | tee -a "$log"

step "fixed-point on-target tests in QEMU: Cortex-M0 (micro:bit), M3 (mps2-an385), M4F"
cargo test-m0 2>&1 | tee -a "$log"
cargo test-m3 2>&1 | tee -a "$log"
cargo test-fixed-m4 2>&1 | tee -a "$log"

step "on-target tests in QEMU on the Cortex-M7 (mps2-an500) and M33 (mps2-an505): f32 and fixed point"
# The M7 runs the M4F's test images as built above (the mps2-an500 has the mps2-an386's memory
# map and clock): only the emulated core changes. The `*-m7` aliases build images that name
# their board (`m7` profile, a build of its own: not repeated here).
m7=(--config 'target.thumbv7em-none-eabihf.runner = "scripts/qemu-run.sh mps2-an500 cortex-m7"')
cargo "${m7[@]}" test-m4 2>&1 | tee -a "$log"
cargo "${m7[@]}" test-fixed-m4 2>&1 | tee -a "$log"
cargo test-m33 2>&1 | tee -a "$log"
cargo test-fixed-m33 2>&1 | tee -a "$log"

step "no floating point in the fixed-point firmware for the Cortex-M0"
cargo build -p tinybayes-firmware --release --target thumbv6m-none-eabi --bin demo-fixed
bash scripts/check-no-float.sh target/thumbv6m-none-eabi/release/demo-fixed

step "host/device parity over the MNIST test images: f32 LeNet-300-100 on the Cortex-M4F, q8 LeNet-300-100 on the M0, q8 LeNet-5 on the M3"
cargo parity-m4
cargo parity-m0
cargo parity-m3

step "demos in QEMU: f32 on the M4F, q8 on the M0 and M3"
demo_m4=$(mktemp)
demo_m0=$(mktemp)
c_m4=$(mktemp)
c_m0=$(mktemp)
trap 'rm -f "$log" "$demo_m4" "$demo_m0" "$c_m4" "$c_m0"' EXIT
cargo demo 2>&1 | tee "$demo_m4"
cargo demo-m0 2>&1 | tee "$demo_m0"
cargo demo-m3
step "the sensor demo in QEMU: HMP activity windows (cut from ../shared at build time) on the M4F (f32 and q8), and the q8 model in the Cortex-M0's code; q8 answers checked against the host's"
cargo demo-hmp
cargo demo-hmp-m0
step "the adaptation demo in QEMU: the HMP model trained without volunteer m1 learns m1's rotated windows on the M4F (last-layer update, state saved to NOR flash emulated in RAM and loaded back)"
cargo demo-adapt

step "the C API: the C example (examples/c) in QEMU on the M4F and the micro:bit, its answers against the Rust demos' above, bit for bit"
make -s -C examples/c run BOARD=mps2-an386 | tee "$c_m4"
python3 scripts/compare-c-example.py --rust "$demo_m4" --c "$c_m4"
make -s -C examples/c run BOARD=microbit | tee "$c_m0"
python3 scripts/compare-c-example.py --rust "$demo_m0" --c "$c_m0"

step "benchmark harnesses in QEMU; their bench lines against benches/device.txt and BENCHMARKS.md"
benchlog=$(mktemp)
trap 'rm -f "$log" "$benchlog" "$demo_m4" "$demo_m0" "$c_m4" "$c_m0"' EXIT
cargo bench-m4 2>&1 | tee "$benchlog"
cargo bench-fixed-m0 2>&1 | tee -a "$benchlog"
cargo bench-fixed-m3 2>&1 | tee -a "$benchlog"
cargo bench-fixed-m4 2>&1 | tee -a "$benchlog"
cargo bench-m33 2>&1 | tee -a "$benchlog"
cargo bench-fixed-m33 2>&1 | tee -a "$benchlog"
cargo early-exit-m4 2>&1 | tee -a "$benchlog"
cargo early-exit-fixed-m3 2>&1 | tee -a "$benchlog"
python3 scripts/bench-tables.py --check "$benchlog"

step "all checks passed"
# One closing line over every test run above: cargo's "N passed; M failed" lines and
# defmt-test's "(i/N) running" lines (it stops at the first failure, so all N passed here).
host=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/' \
    | awk '{p += $1; f += $2} END {print p + 0, f + 0}')
device=$(grep -cE '^\([0-9]+/[0-9]+\) running' "$log" || true)
read -r host_passed host_failed <<<"$host"
echo "tests: $((host_passed + device)) passed, $host_failed failed"
