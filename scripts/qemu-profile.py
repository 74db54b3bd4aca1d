#!/usr/bin/env python3
"""Instruction profile of a firmware run under QEMU, by function.

Runs the ELF with `-d in_asm,exec,nochain` (every executed translation block is logged),
weights each block execution by its instruction count and sums per symbol. Counts are guest
instructions, like the SysTick figures of the bench (GUIDE section 4).

usage: scripts/qemu-profile.py ELF [--machine mps2-an386] [--cpu cortex-m4] [--top 25]
"""
import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("elf")
    ap.add_argument("--machine", default="mps2-an386")
    ap.add_argument("--cpu", default="cortex-m4")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--blocks", type=int, default=0, help="also list the N hottest blocks")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "trace.log")
        cmd = [
            "qemu-system-arm", "-machine", args.machine, "-cpu", args.cpu, "-nographic",
            "-monitor", "none", "-semihosting-config", "enable=on,target=native",
            "-icount", "shift=0,align=off,sleep=off", "-d", "in_asm,exec,nochain",
            "-D", log, "-kernel", args.elf,
        ]
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
        sizes = {}  # block start pc -> (symbol, instruction count)
        counts = collections.Counter()
        trace = re.compile(r"^Trace \d+: \S+ \[[0-9a-f]+/([0-9a-f]+)/")
        block_pc, block_sym, block_len = None, None, 0
        with open(log, errors="replace") as f:
            for line in f:
                if line.startswith("IN:"):
                    block_sym, block_pc, block_len = line[3:].strip() or "?", None, 0
                elif line.startswith("0x") and block_sym is not None:
                    if block_pc is None:
                        block_pc = int(line.split(":")[0], 16)
                    block_len += 1
                elif block_sym is not None and block_pc is not None and not line.strip():
                    sizes[block_pc] = (block_sym, block_len)
                    block_sym, block_pc = None, None
                else:
                    m = trace.match(line)
                    if m:
                        counts[int(m.group(1), 16)] += 1
    per_symbol = collections.Counter()
    for pc, n in counts.items():
        sym, length = sizes.get(pc, ("?", 1))
        per_symbol[sym] += n * length
    total = sum(per_symbol.values())
    print(f"{total} guest instructions in traced blocks")
    for sym, n in per_symbol.most_common(args.top):
        print(f"{n:>12} {100.0 * n / total:6.2f}%  {sym}")
    if args.blocks:
        print("hottest blocks (start address, instructions, executions):")
        weighted = {pc: n * sizes.get(pc, ("?", 1))[1] for pc, n in counts.items()}
        for pc, n in sorted(weighted.items(), key=lambda kv: -kv[1])[: args.blocks]:
            sym, length = sizes.get(pc, ("?", 1))
            print(f"{n:>12} 0x{pc:08x} {length:>4} x {counts[pc]:>8}  {sym}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
