#!/usr/bin/env python3
"""Cut the HMP accelerometer set (../shared/data/hmp-adl/hmp.npz) for a new-wearer experiment:
one volunteer held out of training.

Writes, into OUT_DIR (never into the repository: the data's terms forbid redistribution):
- `train.npz`: every other volunteer's windows, x_train/y_train from the set's training split
  and x_test/y_test from its test split (the trainer's validation comes from x_train);
- `<volunteer>.npz`: the held-out volunteer's windows, x_train/y_train those of recordings in
  the set's training split (the pool `tinybayes adapt` draws its K labelled examples from) and
  x_test/y_test those of recordings in its test split (never adapted on: split by recording);
- `<volunteer>-rot180.npz`: the same windows as worn with the watch turned 180 degrees about
  its z axis (x and y negated): the sensor mounted differently.

Usage: scripts/hmp-holdout.py [--volunteer m1] [--data PATH] OUT_DIR
"""
import argparse
import os

import numpy as np


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--volunteer", default="m1")
    ap.add_argument(
        "--data", default=os.path.join(here, "..", "..", "shared", "data", "hmp-adl", "hmp.npz")
    )
    args = ap.parse_args()
    d = np.load(args.data)
    names = [str(n) for n in d["subject_names"]]
    if args.volunteer not in names:
        raise SystemExit(f"unknown volunteer {args.volunteer}: one of {', '.join(names)}")
    v = names.index(args.volunteer)
    os.makedirs(args.out_dir, exist_ok=True)
    out = {}
    mine = {}
    for split in ("train", "test"):
        x, y, s = d[f"x_{split}"], d[f"y_{split}"], d[f"subject_{split}"]
        out[f"x_{split}"], out[f"y_{split}"] = x[s != v], y[s != v]
        mine[f"x_{split}"], mine[f"y_{split}"] = x[s == v], y[s == v]
    np.savez(os.path.join(args.out_dir, "train.npz"), **out)
    np.savez(os.path.join(args.out_dir, f"{args.volunteer}.npz"), **mine)
    turned = dict(mine)
    for split in ("train", "test"):
        x = mine[f"x_{split}"].copy()
        x[:, :2, :] *= -1.0
        turned[f"x_{split}"] = x
    np.savez(os.path.join(args.out_dir, f"{args.volunteer}-rot180.npz"), **turned)
    for name, part in (("others", out), (args.volunteer, mine)):
        classes = sorted(set(part["y_train"].tolist()) | set(part["y_test"].tolist()))
        print(
            f"{name}: {len(part['y_train'])} + {len(part['y_test'])} windows, classes {classes}"
        )


if __name__ == "__main__":
    main()
