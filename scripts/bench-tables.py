#!/usr/bin/env python3
"""Device tables of BENCHMARKS.md, generated from the bench binaries' `bench:` lines.

Every bench binary in firmware/src/bin prints one line per measured case
(firmware/src/bench.rs has the format). The lines of every bench command are kept in
benches/device.txt, and the tables between `<!-- bench-table: NAME -->` and
`<!-- /bench-table -->` in BENCHMARKS.md are rendered from that file only, so the document
cannot drift from the code:

  scripts/bench-tables.py --run          run every bench command in QEMU (COMMANDS below),
                                         store their lines, rewrite the tables
  scripts/bench-tables.py --update LOG.. merge the bench lines of these logs into the store
                                         (same case: replaced), rewrite the tables
  scripts/bench-tables.py --check LOG..  fail if the tables differ from the store's rendering,
                                         or a line of these logs is not in the store or its
                                         figures differ from the stored ones (CI)

Counts are guest instructions under QEMU `-icount shift=0` (GUIDE section 4), not cycles.
"""
import argparse
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORE = os.path.join(ROOT, "benches", "device.txt")
DOC = os.path.join(ROOT, "BENCHMARKS.md")

# One dense int8 LeNet-300-100 pass with CMSIS-NN on mps2-an386 (GUIDE section 4): the
# yardstick every figure is reported against.
CMSIS_DENSE_INT8 = 519_960

M0_ON_MPS2 = ["--config", "firmware/boards/m0-on-mps2-an385.toml"]
# The commands whose lines fill the tables (cargo aliases: .cargo/config.toml).
COMMANDS = [
    ["bench-m4"],
    ["bench-fixed-m0"],
    ["bench-fixed-m3"],
    ["bench-fixed-m4"],
    ["bench-m7"],
    ["bench-fixed-m7"],
    ["bench-m33"],
    ["bench-fixed-m33"],
    ["early-exit-m4"],
    ["early-exit-fixed-m3"],
    ["early-exit-fixed-m4"],
    M0_ON_MPS2 + ["early-exit-fixed-m0"],
    M0_ON_MPS2 + ["run", "-p", "tinybayes-firmware", "--profile", "m0-on-mps2",
                  "--target", "thumbv6m-none-eabi", "--bin", "bench-fixed"],
]

KEY = ("model", "precision", "mode", "samples", "chunk", "depth", "core", "board")
NUMBERS = ("instructions", "ram_bytes", "flash_bytes", "macs")
LINE = re.compile(r"bench: (.*)$")


class BenchError(Exception):
    """A problem the script reports in one line and exits non-zero for."""


def parse(lines, source):
    """The bench records of some text lines, keyed by their case."""
    records = {}
    for n, line in enumerate(lines, 1):
        m = LINE.search(line.rstrip("\n"))
        if not m:
            continue
        fields = dict(f.split("=", 1) for f in m.group(1).split() if "=" in f)
        missing = [k for k in KEY + NUMBERS if k not in fields]
        if missing:
            raise BenchError(f"{source}:{n}: bench line without {', '.join(missing)}")
        try:
            for k in NUMBERS:
                fields[k] = int(fields[k])
        except ValueError:
            raise BenchError(f"{source}:{n}: a bench figure is not an integer: {line.strip()}")
        records[tuple(fields[k] for k in KEY)] = fields
    return records


def read_store():
    if not os.path.exists(STORE):
        return {}
    with open(STORE) as f:
        return parse(f, STORE)


def write_store(records):
    os.makedirs(os.path.dirname(STORE), exist_ok=True)
    with open(STORE, "w") as f:
        f.write("# bench lines of every command in scripts/bench-tables.py (COMMANDS); "
                "regenerate with `scripts/bench-tables.py --run`\n")
        for key in sorted(records):
            r = records[key]
            f.write("bench: " + " ".join(f"{k}={r[k]}" for k in
                                        ("model", "precision", "mode", "samples", "chunk",
                                         "depth", "instructions", "ram_bytes", "flash_bytes",
                                         "macs", "core", "board")) + "\n")


def n(x):
    return f"{x:,}"


def ratio(x):
    return f"{x / CMSIS_DENSE_INT8:.2f}x"


class Store:
    """Looks records up by case; a missing case is an error naming it."""

    def __init__(self, records):
        self.records = records

    def get(self, **want):
        want.setdefault("depth", "all")
        hits = [r for r in self.records.values()
                if all(str(r[k]) == str(v) for k, v in want.items())]
        if len(hits) != 1:
            what = " ".join(f"{k}={v}" for k, v in want.items())
            raise BenchError(f"{'no' if not hits else 'more than one'} bench line with {what}")
        return hits[0]


def table(header, rows):
    out = ["| " + " | ".join(h for h, _ in header) + " |",
           "|" + "|".join("---:" if right else "---" for _, right in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


M4 = dict(core="cortex-m4f", board="mps2-an386")
M3 = dict(core="cortex-m3", board="mps2-an385")
M0 = dict(core="cortex-m0", board="microbit")
M0_MPS2 = dict(core="cortex-m0", board="mps2-an385")
M7 = dict(core="cortex-m7", board="mps2-an500")
M33 = dict(core="cortex-m33", board="mps2-an505")


def lenet300_f32(s):
    rows = []
    for mode, m, chunk in [("mean", 1, 1), ("mc", 8, 8), ("mc", 32, 4), ("mc", 32, 8),
                           ("mc", 32, 32)]:
        r = s.get(model="lenet300", mode=mode, samples=m, chunk=chunk, **M4)
        rows.append(["mean weights" if mode == "mean" else "Monte Carlo", m, chunk,
                     n(r["instructions"]), ratio(r["instructions"]), n(r["ram_bytes"])])
    return table([("mode", False), ("M", True), ("samples per pass", True),
                  ("instructions", True), ("÷ CMSIS-NN dense int8", True),
                  ("RAM: workspace + engine + model + stack (B)", True)], rows)


def synthetic_f32(s):
    rows = []
    for model in ["synthetic-sparse", "synthetic-dense"]:
        for mode, m, chunk in [("mean", 1, 1), ("mc", 8, 8), ("mc", 32, 8), ("mc", 32, 32)]:
            r = s.get(model=model, mode=mode, samples=m, chunk=chunk, **M4)
            rows.append([model.split("-")[1], "mean weights" if mode == "mean" else
                         "Monte Carlo", m, chunk, n(r["instructions"]), n(r["flash_bytes"]),
                         n(r["ram_bytes"])])
    return table([("model", False), ("mode", False), ("M", True), ("samples per pass", True),
                  ("instructions", True), ("flash (model, B)", True),
                  ("RAM: workspace + engine + model + stack (B)", True)], rows)


def fixed_lenet(s):
    rows = []
    cases = [("Cortex-M0 (micro:bit)", M0, "lenet300-q8"), ("Cortex-M0 (micro:bit)", M0, "lenet300-q16"),
             ("Cortex-M3", M3, "lenet300-q8"), ("Cortex-M3", M3, "lenet300-q16"),
             ("Cortex-M4F", M4, "lenet300-q8"), ("Cortex-M4F", M4, "lenet300-q16"),
             ("Cortex-M0 (ARMv6-M code on mps2-an385)", M0_MPS2, "lenet5-q8"),
             ("Cortex-M3", M3, "lenet5-q8"), ("Cortex-M4F", M4, "lenet5-q8")]
    for core, where, model in cases:
        mean = s.get(model=model, mode="mean", **where)
        m8 = s.get(model=model, mode="mc", samples=8, **where)
        m32 = s.get(model=model, mode="mc", samples=32, **where)
        rows.append([core, model, n(mean["instructions"]), n(m8["instructions"]),
                     n(m32["instructions"]), ratio(m32["instructions"]), m32["chunk"],
                     n(m32["ram_bytes"]), n(m32["flash_bytes"])])
    f32 = [s.get(model="lenet300", mode="mean", chunk=1, **M4),
           s.get(model="lenet300", mode="mc", samples=8, chunk=8, **M4),
           s.get(model="lenet300", mode="mc", samples=32, chunk=8, **M4)]
    rows.append(["Cortex-M4F", "lenet300 (f32, for comparison)"] +
                [n(r["instructions"]) for r in f32] +
                [ratio(f32[2]["instructions"]), 8, n(f32[2]["ram_bytes"]), n(f32[2]["flash_bytes"])])
    return table([("core", False), ("model", False), ("mean weights", True), ("M = 8", True),
                  ("M = 32", True), ("M = 32 ÷ CMSIS-NN dense int8", True),
                  ("samples per pass", True), ("RAM at M = 32: workspace + engine + model + stack (B)", True),
                  ("flash (model, B)", True)], rows)


def cores(s):
    """LeNet-300-100 in f32 and q8 on every core with an FPU or DSP that QEMU emulates."""
    rows = []
    for label, where in [("Cortex-M4F (mps2-an386)", M4), ("Cortex-M7 (mps2-an500)", M7),
                         ("Cortex-M33 (mps2-an505)", M33)]:
        for model in ["lenet300", "lenet300-q8", "lenet300-q16"]:
            chunk = {"chunk": 8}
            mean = s.get(model=model, mode="mean", **({} if model != "lenet300" else
                                                      {"chunk": 1}), **where)
            m8 = s.get(model=model, mode="mc", samples=8, **chunk, **where)
            m32 = s.get(model=model, mode="mc", samples=32, **chunk, **where)
            val = s.get(model=model, mode="validate", **where)
            rows.append([label, model, n(val["instructions"]), n(mean["instructions"]),
                         n(m8["instructions"]), n(m32["instructions"]),
                         ratio(m32["instructions"])])
    return table([("core", False), ("model", False), ("validation", True),
                  ("mean weights", True), ("M = 8", True), ("M = 32 (8 per pass)", True),
                  ("M = 32 ÷ CMSIS-NN dense int8", True)], rows)


def validation(s):
    rows = []
    order = {"cortex-m0": 0, "cortex-m3": 1, "cortex-m4f": 2, "cortex-m7": 3, "cortex-m33": 4}
    seen = set()
    for r in sorted((r for r in s.records.values() if r["mode"] == "validate"),
                    key=lambda r: (r["model"], order.get(r["core"], 9), r["board"])):
        # The same ARMv6-M code validates the same bytes on both M0 boards: one row.
        if (r["model"], r["core"]) in seen:
            continue
        seen.add((r["model"], r["core"]))
        rows.append([r["model"], r["core"], n(r["flash_bytes"]), n(r["instructions"]),
                     ratio(r["instructions"]), n(r["ram_bytes"])])
    return table([("model", False), ("core", False), ("flash (B)", True),
                  ("validation (CRC-32 and every structural check), instructions", True),
                  ("÷ CMSIS-NN dense int8", True), ("stack (B)", True)], rows)


def resnet_f32(s):
    rows = []
    for depth in range(1, 5):
        mean = s.get(model="resnet-ee", mode="mean", depth=depth, **M4)
        mc = s.get(model="resnet-ee", mode="mc", samples=8, depth=depth, **M4)
        macs = mean["macs"]
        rows.append([depth, n(mean["instructions"]), n(mc["instructions"]), n(macs),
                     f"{mean['instructions'] / macs:.1f}",
                     f"{mc['instructions'] / (8 * macs):.1f}", n(mc["ram_bytes"])])
    chunk = s.get(model="resnet-ee", mode="mc", samples=8, depth=1, **M4)["chunk"]
    return table([("blocks run", True), ("mean weights", True),
                  (f"M = 8 ({chunk} per pass)", True), ("MACs per sample", True),
                  ("instructions per MAC, mean", True),
                  ("per MAC and sample, M = 8", True),
                  ("RAM: workspace + engine + model + stack (B)", True)], rows)


def resnet_q8(s):
    rows = []
    cores = [M0_MPS2, M3, M4]
    for depth in range(1, 5):
        row = [depth]
        for where in cores:
            row.append(n(s.get(model="resnet-ee-q8", mode="mean", depth=depth, **where)["instructions"]))
            row.append(n(s.get(model="resnet-ee-q8", mode="mc", samples=8, depth=depth, **where)["instructions"]))
        mc = s.get(model="resnet-ee-q8", mode="mc", samples=8, depth=depth, **M4)
        row += [n(mc["macs"]), f"{mc['instructions'] / (8 * mc['macs']):.1f}"]
        rows.append(row)
    ram = [n(s.get(model="resnet-ee-q8", mode="mc", samples=8, depth=4, **w)["ram_bytes"]) for w in cores]
    rows.append(["RAM (B)", ram[0], "", ram[1], "", ram[2], "", "", ""])
    return table([("blocks run", True), ("M0 mean weights", True), ("M0 M = 8", True),
                  ("M3 mean weights", True), ("M3 M = 8", True), ("M4F mean weights", True),
                  ("M4F M = 8", True), ("MACs per sample", True),
                  ("M4F per MAC and sample, M = 8", True)], rows)


def targets(s):
    rows = []

    def add(what, value, limit, shown=None):
        rows.append([what, n(limit) if isinstance(limit, int) else limit,
                     shown or n(value), ratio(value) if isinstance(limit, int) else "",
                     "yes" if value <= limit else "**no**"])

    f32_mean = s.get(model="lenet300", mode="mean", chunk=1, **M4)["instructions"]
    f32_m32 = min(s.get(model="lenet300", mode="mc", samples=32, chunk=c, **M4)["instructions"]
                  for c in (4, 8, 32))
    q8_mean = s.get(model="lenet300-q8", mode="mean", **M4)["instructions"]
    q8_m32 = s.get(model="lenet300-q8", mode="mc", samples=32, **M4)["instructions"]
    ee_mean = s.get(model="resnet-ee", mode="mean", depth=1, **M4)
    ee_mc = s.get(model="resnet-ee", mode="mc", samples=8, depth=1, **M4)
    q8_ee_mean = s.get(model="resnet-ee-q8", mode="mean", depth=1, **M4)
    q8_ee_mc = s.get(model="resnet-ee-q8", mode="mc", samples=8, depth=1, **M4)
    add("LeNet-300-100 f32, mean weights", f32_mean, 18_000)
    add("LeNet-300-100 f32, M = 32 (best samples per pass)", f32_m32, 260_000)
    add("LeNet-300-100 q8, mean weights", q8_mean, 20_000)
    add("LeNet-300-100 q8, M = 32", q8_m32, 240_000)
    for label, mean, mc in [("f32", ee_mean, ee_mc), ("q8", q8_ee_mean, q8_ee_mc)]:
        per_mac = mean["instructions"] / mean["macs"]
        add(f"ResNet {label} depth 1, mean weights: instructions per MAC (whole network)",
            per_mac, 2.0, f"{per_mac:.1f}")
        per_mac = mc["instructions"] / (8 * mc["macs"])
        add(f"ResNet {label} depth 1, M = 8: instructions per MAC and sample (whole network)",
            per_mac, 3.0, f"{per_mac:.1f}")
    add("ResNet f32 depth 1, mean weights", ee_mean["instructions"], 400_000)
    add("ResNet f32 depth 1, M = 8", ee_mc["instructions"], 5_000_000)
    add("LeNet-300-100 f32 start-up validation",
        s.get(model="lenet300", mode="validate", **M4)["instructions"], 150_000)
    return table([("Cortex-M4F, MNIST test image 0", False), ("target", True),
                  ("measured", True), ("÷ CMSIS-NN dense int8", True), ("met?", False)], rows)


def moments_f32(s):
    """Moment propagation against mean weights and Monte Carlo, f32 on the Cortex-M4F."""
    rows = []
    for model in ["lenet300", "synthetic-sparse", "synthetic-dense"]:
        mean = s.get(model=model, mode="mean", chunk=1, **M4)
        cases = [("mean weights", mean),
                 ("moments (probit)", s.get(model=model, mode="moments", chunk=2, **M4)),
                 ("moments, then 32 logit draws",
                  s.get(model=model, mode="moments-mc", samples=32, chunk=2, **M4)),
                 ("Monte Carlo, M = 32", s.get(model=model, mode="mc", samples=32, chunk=8, **M4))]
        for label, r in cases:
            rows.append([model, label, r["chunk"], n(r["instructions"]),
                         f"{r['instructions'] / mean['instructions']:.2f}", n(r["ram_bytes"])])
    return table([("model", False), ("mode", False), ("samples per pass", True),
                  ("instructions", True), ("÷ mean weights", True),
                  ("RAM: workspace + engine + model + stack (B)", True)], rows)


def mcdropout_q8(s):
    """The MC dropout LeNet-300-100 in q8 (dense rows, Bernoulli masks) on every MPS2 core."""
    rows = []
    for label, where in [("Cortex-M0 (ARMv6-M code on mps2-an385)", M0_MPS2), ("Cortex-M3", M3),
                         ("Cortex-M4F", M4), ("Cortex-M7", M7), ("Cortex-M33", M33)]:
        model = "lenet300-mcdropout-q8"
        v = s.get(model=model, mode="validate", **where)
        mean = s.get(model=model, mode="mean", **where)
        m8 = s.get(model=model, mode="mc", samples=8, **where)
        m32 = s.get(model=model, mode="mc", samples=32, **where)
        rows.append([label, n(v["instructions"]), n(mean["instructions"]), n(m8["instructions"]),
                     n(m32["instructions"]), ratio(m32["instructions"]), m32["chunk"],
                     n(m32["ram_bytes"]), n(m32["flash_bytes"])])
    return table([("core", False), ("validation", True), ("mean weights", True),
                  ("M = 8", True), ("M = 32", True), ("M = 32 ÷ CMSIS-NN dense int8", True),
                  ("samples per pass", True),
                  ("RAM at M = 32: workspace + engine + model + stack (B)", True),
                  ("flash (model, B)", True)], rows)


TABLES = {
    "mcdropout-q8": mcdropout_q8,
    "moments-f32": moments_f32,
    "lenet300-f32": lenet300_f32,
    "synthetic-f32": synthetic_f32,
    "fixed-lenet": fixed_lenet,
    "validation": validation,
    "cores": cores,
    "resnet-f32": resnet_f32,
    "resnet-q8": resnet_q8,
    "targets": targets,
}

BLOCK = re.compile(r"(<!-- bench-table: ([\w-]+) -->\n)(.*?)(<!-- /bench-table -->)", re.S)


def render(doc, records):
    store = Store(records)
    found = set()

    def fill(m):
        name = m.group(2)
        if name not in TABLES:
            raise BenchError(f"BENCHMARKS.md names an unknown bench table {name!r}")
        found.add(name)
        return m.group(1) + TABLES[name](store) + "\n" + m.group(4)

    out = BLOCK.sub(fill, doc)
    missing = set(TABLES) - found
    if missing:
        raise BenchError(f"BENCHMARKS.md has no block for {', '.join(sorted(missing))}")
    return out


def run_commands():
    records = {}
    for argv in COMMANDS:
        print("==> cargo " + " ".join(argv), file=sys.stderr)
        p = subprocess.run(["cargo"] + argv, cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        got = parse(p.stdout.splitlines(), "cargo " + " ".join(argv))
        if p.returncode != 0 or not got:
            sys.stderr.write(p.stdout[-3000:])
            raise BenchError(f"cargo {' '.join(argv)} failed or printed no bench line")
        records.update(got)
    return records


def read_logs(paths):
    records = {}
    for path in paths:
        try:
            with open(path, errors="replace") as f:
                records.update(parse(f, path))
        except OSError as e:
            raise BenchError(f"cannot read {path}: {e.strerror}")
    return records


def check(logs, tolerance):
    stored = read_store()
    problems = []
    with open(DOC) as f:
        doc = f.read()
    if render(doc, stored) != doc:
        problems.append("BENCHMARKS.md's tables differ from benches/device.txt: run "
                        "scripts/bench-tables.py --update with the new logs (or --run)")
    fresh = read_logs(logs)
    if not fresh:
        problems.append("the logs hold no bench line")
    for key, r in sorted(fresh.items()):
        case = " ".join(f"{k}={v}" for k, v in zip(KEY, key))
        old = stored.get(key)
        if old is None:
            problems.append(f"not in benches/device.txt: {case}")
            continue
        for k in NUMBERS:
            a, b = old[k], r[k]
            exact = k in ("flash_bytes", "macs")
            if (a != b) if exact else abs(a - b) > tolerance * max(a, 1):
                problems.append(f"{case}: {k} {b} measured, {a} in benches/device.txt")
    for p in problems:
        print("bench-tables: " + p, file=sys.stderr)
    print(f"bench-tables: {len(fresh)} bench lines checked against benches/device.txt, "
          f"{len(problems)} problems", file=sys.stderr)
    return 1 if problems else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--run", action="store_true", help="run every bench command, store, render")
    g.add_argument("--update", action="store_true", help="merge the logs' lines, render")
    g.add_argument("--check", action="store_true", help="check the logs and the tables")
    ap.add_argument("logs", nargs="*", help="cargo output holding bench: lines")
    ap.add_argument("--tolerance", type=float, default=0.01,
                    help="relative difference of instructions and RAM that --check allows")
    args = ap.parse_args()
    try:
        if args.check:
            return check(args.logs, args.tolerance)
        if args.run:
            records = run_commands()
        else:
            if not args.logs:
                raise BenchError("--update needs at least one log")
            records = read_store()
            records.update(read_logs(args.logs))
        with open(DOC) as f:
            doc = f.read()
        out = render(doc, records)
        write_store(records)
        with open(DOC, "w") as f:
            f.write(out)
        print(f"bench-tables: {len(records)} bench lines in benches/device.txt, "
              f"{len(TABLES)} tables rendered into BENCHMARKS.md", file=sys.stderr)
        return 0
    except BenchError as e:
        print(f"bench-tables: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
