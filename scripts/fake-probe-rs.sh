#!/usr/bin/env bash
# Stand-in for probe-rs in scripts/test.sh: checks that cargo hands it an ARM ELF for the
# nRF52840 (`run --chip nRF52840_xxAA FILE`) and exits 0 without a board.
set -euo pipefail
[ "${1:-}" = run ] || { echo "fake probe-rs: expected 'run', got: $*" >&2; exit 1; }
case " $* " in *" --chip nRF52840_xxAA "*) ;; *) echo "fake probe-rs: no --chip nRF52840_xxAA in: $*" >&2; exit 1;; esac
elf=${!#}
[ -f "$elf" ] || { echo "fake probe-rs: no file $elf" >&2; exit 1; }
file "$elf" | grep -q 'ELF 32-bit LSB executable, ARM' || { echo "fake probe-rs: not an ARM ELF: $(file "$elf")" >&2; exit 1; }
case "$elf" in */nrf52840dk/*) ;; *) echo "fake probe-rs: $elf is not in the board's target dir" >&2; exit 1;; esac
echo "fake probe-rs: would flash $elf to nRF52840_xxAA"
