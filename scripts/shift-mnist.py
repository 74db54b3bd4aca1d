#!/usr/bin/env python3
"""Shifted copies of an IDX image set (e.g. the MNIST test set), for measuring calibration and
uncertainty under distribution shift (issue 12). Standard library only; deterministic.

    python3 scripts/shift-mnist.py --images ../shared/data/mnist/t10k-images-idx3-ubyte.gz \
        --out-dir ../shifted

writes, for every shift, `<out-dir>/<shift>-images-idx3-ubyte.gz` (gzip IDX, same shape and
order as the input, so the input's label file labels it):

- noise:       pixel + N(0, 40^2) (grey levels), rounded and clipped to 0..255, seed 12
- blur:        3x3 Gaussian kernel (1 2 1 / 2 4 2 / 1 2 1) / 16, twice (edges: replicated)
- translate:   every image moved 3 pixels right and 3 down (new pixels 0)
- contrast:    0.4 * (pixel - mean of the image) + mean, rounded (contrast reduced to 40%)

Each figure in BENCHMARKS.md names the shift; `--shifts` picks a subset.
"""

import argparse
import gzip
import os
import random
import struct

SHIFTS = ("noise", "blur", "translate", "contrast")


def read_idx_images(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic, n, rows, cols = struct.unpack(">IIII", data[:16])
    if magic != 0x00000803:
        raise SystemExit(f"{path}: not an IDX image file (magic {magic:#x})")
    pixels = data[16:16 + n * rows * cols]
    if len(pixels) != n * rows * cols:
        raise SystemExit(f"{path}: truncated ({len(pixels)} of {n * rows * cols} pixels)")
    return n, rows, cols, pixels


def write_idx_images(path, n, rows, cols, pixels):
    # mtime 0: the same bytes on every run.
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(struct.pack(">IIII", 0x00000803, n, rows, cols))
        f.write(bytes(pixels))


def clip(v):
    return 0 if v < 0 else 255 if v > 255 else v


def noise(img, rows, cols, rng):
    return [clip(round(p + rng.gauss(0.0, 40.0))) for p in img]


def blur_once(img, rows, cols):
    out = [0] * (rows * cols)
    k = ((1, 2, 1), (2, 4, 2), (1, 2, 1))
    for r in range(rows):
        for c in range(cols):
            s = 0
            for dr in (-1, 0, 1):
                rr = min(max(r + dr, 0), rows - 1)
                for dc in (-1, 0, 1):
                    cc = min(max(c + dc, 0), cols - 1)
                    s += k[dr + 1][dc + 1] * img[rr * cols + cc]
            out[r * cols + c] = (s + 8) // 16
    return out


def blur(img, rows, cols, rng):
    return blur_once(blur_once(img, rows, cols), rows, cols)


def translate(img, rows, cols, rng, dr=3, dc=3):
    out = [0] * (rows * cols)
    for r in range(rows - dr):
        for c in range(cols - dc):
            out[(r + dr) * cols + c + dc] = img[r * cols + c]
    return out


def contrast(img, rows, cols, rng):
    mean = sum(img) / len(img)
    return [clip(round(0.4 * (p - mean) + mean)) for p in img]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", required=True, help="IDX image file (plain or gzip)")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--shifts", default=",".join(SHIFTS), help="comma-separated subset")
    args = ap.parse_args()
    shifts = [s for s in args.shifts.split(",") if s]
    for s in shifts:
        if s not in SHIFTS:
            raise SystemExit(f"unknown shift {s!r}: choose from {', '.join(SHIFTS)}")
    n, rows, cols, pixels = read_idx_images(args.images)
    os.makedirs(args.out_dir, exist_ok=True)
    size = rows * cols
    for name in shifts:
        rng = random.Random(12)
        f = globals()[name]
        out = []
        for i in range(n):
            out.extend(f(list(pixels[i * size:(i + 1) * size]), rows, cols, rng))
        path = os.path.join(args.out_dir, f"{name}-images-idx3-ubyte.gz")
        write_idx_images(path, n, rows, cols, out)
        print(f"wrote {path} ({n} images, {rows}x{cols})")


if __name__ == "__main__":
    main()
