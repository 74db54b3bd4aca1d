#!/usr/bin/env bash
# The last-layer adaptation experiment of BENCHMARKS.md ("The device keeps learning"): a new
# wearer (volunteer m1, held out of training: models/hmp-conv1d-m1out.tbm), as is and with the
# watch turned 180 degrees, learnt from K of m1's labelled windows by `tinybayes adapt`, and
# evaluated on m1's windows of other recordings; five draws of the K examples (seeds 0-4).
# Prints the Markdown tables BENCHMARKS.md shows. Usage: scripts/adapt-hmp.sh [WORK_DIR]
# (default ../runs/adapt-bench); the data is cut there from ../shared, never into the repository.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$root/../runs/adapt-bench}"
mkdir -p "$work"
cargo build --release -q -p tinybayes-host-tools --manifest-path "$root/Cargo.toml"
bin="$root/target/release/tinybayes"
python3 "$root/scripts/hmp-holdout.py" --volunteer m1 "$work" > /dev/null
model="$root/models/hmp-conv1d-m1out.tbm"
run() { # name data likelihood prior-scale bias-variance
    local name=$1 data=$2 likelihood=$3 scale=$4 bias=$5
    for seed in 0 1 2 3 4; do
        "$bin" -q adapt --model "$model" --data "$work/$data" --count 200 --seed "$seed" \
            --likelihood "$likelihood" --prior-scale "$scale" --bias-variance "$bias" \
            --out "$work/$name-$seed.tbm" --report "$work/$name-$seed" --force > /dev/null
    done
}
run wearer m1.npz bound 30 0
run turned m1-rot180.npz label 300 1
python3 - "$work" <<'PY'
import json, statistics, sys
work = sys.argv[1]
for name, title in (("wearer", "new wearer (m1), `--likelihood bound --prior-scale 30`"),
                    ("turned", "new wearer, watch turned 180 degrees, `--likelihood label --prior-scale 300 --bias-variance 1`")):
    runs = [json.load(open(f"{work}/{name}-{s}/adapt.json")) for s in range(5)]
    print(f"\n{title}: {runs[0]['eval_count']} held-out windows, {runs[0]['mode']}, mean ± sd over seeds 0-4\n")
    print("| K | accuracy | NLL | ECE | mean mutual information |")
    print("|---:|---:|---:|---:|---:|")
    for i, point in enumerate(runs[0]["curve"]):
        cols = []
        for key, scale, fmt in (("accuracy", 100, "{:.1f}% ± {:.1f}"), ("nll", 1, "{:.3f} ± {:.3f}"),
                                ("ece", 1, "{:.3f} ± {:.3f}"), ("mutual_information", 1, "{:.3f} ± {:.3f}")):
            v = [scale * r["curve"][i][key] for r in runs]
            cols.append(fmt.format(statistics.mean(v), statistics.stdev(v)))
        print(f"| {point['count']} | " + " | ".join(cols) + " |")
PY
