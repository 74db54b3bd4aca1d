#!/usr/bin/env bash
# Cargo runner for the emulated boards (.cargo/config.toml): runs the ELF in QEMU and decodes
# its defmt frames. `-icount shift=0` makes one guest instruction one nanosecond of virtual
# time, so SysTick counts instructions deterministically (BENCHMARKS.md). `pipefail` keeps
# QEMU's exit code (the firmware's semihosting exit status).
# Usage: qemu-run.sh MACHINE [CPU] ELF [ARGS...] (CPU is "-" for the machine's default).
set -euo pipefail
machine=$1
cpu=$2
elf=$3
cpu_args=()
if [ "$cpu" != "-" ]; then cpu_args=(-cpu "$cpu"); fi
qemu-system-arm -machine "$machine" "${cpu_args[@]}" -nographic -monitor none \
    -semihosting-config enable=on,target=native -icount shift=0,align=off,sleep=off \
    -kernel "$elf" | defmt-print -e "$elf"
