#!/usr/bin/env python3
"""Checks that the C example (examples/c) answers exactly as the Rust demo: same images,
labels and classes, and the same bits of every printed value.

    python3 scripts/compare-c-example.py --rust RUST_DEMO_OUTPUT --c C_EXAMPLE_OUTPUT

The f32 demo (`cargo demo`) prints each value in Rust's shortest round-trip decimal, which
names exactly one f32; the C example prints the f32's bits, and the check is that those bits
are the f32 nearest to the decimal (exact rational arithmetic, ties to even). The fixed-point
demo (`cargo demo-m0`) prints the unsigned Q16 integers themselves, compared as integers.
Exits 1 with one line per difference, 0 when every line agrees.
"""

import argparse
import re
import struct
import sys
from fractions import Fraction

NUMBER = r"([0-9.eE+-]+)"

# The Rust demos' lines.
RUST_F32_MC = re.compile(
    r"image (\d+): label (\d+) -> predicted (\d+) \(p = " + NUMBER + r"\), entropy " + NUMBER
    + r" nats, expected entropy " + NUMBER + r", mutual information " + NUMBER + r" nats"
)
RUST_F32_MOMENTS = re.compile(
    r"by moment propagation: predicted (\d+) \(p = " + NUMBER + r"\), entropy " + NUMBER
    + r" nats, mutual information " + NUMBER + r" nats"
)
RUST_FIXED = re.compile(
    r"image (\d+): label (\d+) -> predicted (\d+) .*\[UQ16 p (\d+) H (\d+) EH (\d+) MI (\d+)\]"
)

# The C example's lines: " p=0.9999 (f32 0x3f7fff9a)" or " p=0.9999 (uq16 65530)".
C_VALUE = r"=[0-9.]+ \((f32 0x[0-9a-f]{8}|uq16 \d+)\)"
C_MC = re.compile(
    r"^image (\d+): label (\d+) -> predicted (\d+) p" + C_VALUE + " H" + C_VALUE + " EH"
    + C_VALUE + " MI" + C_VALUE
)
C_MOMENTS = re.compile(
    r"^  by moment propagation: predicted (\d+) p" + C_VALUE + " H" + C_VALUE + " MI" + C_VALUE
)


def f32_value(bits):
    """The exact value of an f32 given by its bits (finite values only)."""
    return Fraction(struct.unpack("<f", struct.pack("<I", bits))[0])


def nearest_f32_is(decimal, bits):
    """Whether `bits` is the f32 nearest to the decimal string (ties to the even one)."""
    target = Fraction(decimal)
    here = abs(f32_value(bits) - target)
    for neighbour in (bits - 1, bits + 1):
        if neighbour < 0 or (neighbour & 0x7F800000) == 0x7F800000:
            continue
        there = abs(f32_value(neighbour) - target)
        if there < here or (there == here and neighbour % 2 == 0):
            return False
    return True


def parse_c_value(text):
    kind, value = text.split(" ")
    return kind, int(value, 16) if kind == "f32" else int(value)


def read_rust(path):
    """Per image: (label, class, [values]) for the Monte Carlo line, and the moments line."""
    mc, moments = [], []
    for line in open(path, encoding="utf-8", errors="replace"):
        if m := RUST_FIXED.search(line):
            mc.append((int(m[1]), int(m[2]), int(m[3]), ("uq16", [int(v) for v in m.groups()[3:]])))
        elif m := RUST_F32_MC.search(line):
            mc.append((int(m[1]), int(m[2]), int(m[3]), ("f32", list(m.groups()[3:]))))
        elif m := RUST_F32_MOMENTS.search(line):
            moments.append((int(m[1]), ("f32", list(m.groups()[1:]))))
    return mc, moments


def read_c(path):
    mc, moments = [], []
    for line in open(path, encoding="utf-8", errors="replace"):
        if m := C_MC.search(line):
            values = [parse_c_value(v) for v in m.groups()[3:]]
            mc.append((int(m[1]), int(m[2]), int(m[3]), values))
        elif m := C_MOMENTS.search(line):
            moments.append((int(m[1]), [parse_c_value(v) for v in m.groups()[1:]]))
    return mc, moments


def same_values(rust, c):
    """Whether the Rust demo's printed values and the C example's bits agree exactly."""
    kind, values = rust
    if len(values) != len(c):
        return False
    for r, (c_kind, c_bits) in zip(values, c):
        if c_kind != kind:
            return False
        if kind == "uq16" and r != c_bits:
            return False
        if kind == "f32" and not nearest_f32_is(r, c_bits):
            return False
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rust", required=True, help="the Rust demo's output (defmt-print text)")
    parser.add_argument("--c", required=True, help="the C example's output")
    args = parser.parse_args()
    rust_mc, rust_moments = read_rust(args.rust)
    c_mc, c_moments = read_c(args.c)
    problems = []
    if not rust_mc:
        problems.append(f"no prediction lines in {args.rust}")
    if len(rust_mc) != len(c_mc) or len(rust_moments) != len(c_moments):
        problems.append(
            f"line counts differ: Rust {len(rust_mc)} + {len(rust_moments)} moments, "
            f"C {len(c_mc)} + {len(c_moments)} moments"
        )
    for r, c in zip(rust_mc, c_mc):
        if r[:3] != c[:3] or not same_values(r[3], c[3]):
            problems.append(f"image {r[0]}: Rust {r} but C {c}")
    for i, (r, c) in enumerate(zip(rust_moments, c_moments)):
        if r[0] != c[0] or not same_values(r[1], c[1]):
            problems.append(f"image {i}, moment propagation: Rust {r} but C {c}")
    for p in problems:
        print(f"compare-c-example: {p}", file=sys.stderr)
    if problems:
        return 1
    values = sum(len(r[3][1]) for r in rust_mc) + sum(len(r[1][1]) for r in rust_moments)
    print(
        f"compare-c-example: {len(rust_mc)} images ({len(rust_moments)} moment lines), "
        f"{values} values: the C example's bits equal the Rust demo's"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
