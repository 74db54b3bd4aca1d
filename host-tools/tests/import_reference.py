#!/usr/bin/env python3
"""Reference networks for the `tinybayes import` test (host-tools/tests/cli_import.rs).

Writes, into the folder given as the only argument, for each case:
  <case>_sigma.npz   weights as PyTorch names them, variances as <name>.log_sigma2
  <case>_alpha.npz   the same network with <name>.log_alpha instead
  <case>.toml        its [[layers]] list
  <case>.json        the import flags, a few inputs and the mean-weights probabilities this
                     script computes (weights with log alpha > 3 pruned to 0, as the exporter
                     prunes), which the imported model must reproduce to 1e-5.
Only numpy is needed.
"""

import json
import os
import sys

import numpy as np

THRESHOLD = 3.0
EPS = 1e-8
rng = np.random.default_rng(1234)


def posterior(shape, zeros=2):
    """A posterior mean (float32, a few exact zeros) and log alphas (float32) kept away from
    the threshold, so float rounding cannot move a weight across it."""
    theta = (rng.standard_normal(shape) * 0.5).astype(np.float32)
    flat = theta.reshape(-1)
    flat[rng.choice(flat.size, size=zeros, replace=False)] = 0.0
    log_alpha = rng.uniform(-6.0, 6.0, size=shape)
    near = np.abs(log_alpha - THRESHOLD) < 0.05
    log_alpha[near] -= 0.5
    return theta, log_alpha.astype(np.float32)


def log_sigma2_of(theta, log_alpha):
    t = theta.astype(np.float64)
    return (log_alpha.astype(np.float64) + np.log(t * t + EPS)).astype(np.float32)


def pruned(theta, log_alpha):
    """The mean weights the exporter keeps: log alpha (clipped to [-8, 8]) > threshold -> 0."""
    la = np.clip(log_alpha.astype(np.float64), -8.0, 8.0)
    return np.where(la > THRESHOLD, 0.0, theta.astype(np.float64))


def conv2d(x, w, b, stride, padding):
    """Cross-correlation of x [C, H, W] with w [O, C, kh, kw], zero padding on every side."""
    c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.zeros((c, h + 2 * padding, wd + 2 * padding))
    xp[:, padding:padding + h, padding:padding + wd] = x
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (wd + 2 * padding - kw) // stride + 1
    y = np.empty((o, ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, i * stride:i * stride + kh, j * stride:j * stride + kw]
            y[:, i, j] = np.tensordot(w, patch, axes=([1, 2, 3], [0, 1, 2])) + b
    return y


def max_pool(x, window, stride):
    c, h, w = x.shape
    ho, wo = (h - window[0]) // stride + 1, (w - window[1]) // stride + 1
    y = np.empty((c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            y[:, i, j] = x[:, i * stride:i * stride + window[0],
                           j * stride:j * stride + window[1]].max(axis=(1, 2))
    return y


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


relu = lambda v: np.maximum(v, 0.0)


def case_conv1d():
    """A 1-D convolution over [3, 16] time series (PyTorch Conv1d weight [out, in, k]), max
    pooling over time, an MC dropout layer and a head without bias."""
    toml = """
[[layers]]
kind = "conv"
name = "conv1"
outputs = 4
kernel = 3

[[layers]]
kind = "pool"
kernel = 2

[[layers]]
kind = "linear"
name = "fc1"
outputs = 8
posterior = "dropout"
p = 0.25

[[layers]]
kind = "linear"
name = "head"
"""
    w1, a1 = posterior((4, 3, 3))
    b1 = rng.standard_normal(4).astype(np.float32) * 0.1
    w2 = (rng.standard_normal((8, 28)) * 0.3).astype(np.float32)
    b2 = rng.standard_normal(8).astype(np.float32) * 0.1
    w3, a3 = posterior((3, 8))
    vd = {"conv1": (w1, a1), "head": (w3, a3)}
    plain = {"conv1.bias": b1, "fc1.weight": w2, "fc1.bias": b2}

    def forward(x):
        h = relu(conv2d(x[:, :, None], pruned(w1, a1)[..., None], b1, 1, 0))
        h = max_pool(h, (2, 1), 2).reshape(-1)
        h = relu(w2.astype(np.float64) @ h + b2)
        return softmax(pruned(w3, a3) @ h)

    inputs = [rng.standard_normal((3, 16)).astype(np.float32) for _ in range(5)]
    return toml, vd, plain, forward, inputs, ["--input-shape", "3,16", "--classes", "3"]


def case_conv2d():
    """2-D convolutions (a padded vd one with a [3, 2] kernel, a strided deterministic one),
    flatten and a vd head; every tensor in float64, default layer names."""
    toml = """
[[layers]]
kind = "conv"
outputs = 3
kernel = [3, 2]
padding = 1

[[layers]]
kind = "conv"
outputs = 4
kernel = 3
stride = 2
posterior = "deterministic"

[[layers]]
kind = "flatten"

[[layers]]
kind = "linear"
"""
    w1, a1 = posterior((3, 2, 3, 2))
    b1 = rng.standard_normal(3) * 0.1
    w2 = rng.standard_normal((4, 3, 3, 3)) * 0.3
    b2 = rng.standard_normal(4) * 0.1
    w4, a4 = posterior((4, 36))
    b4 = rng.standard_normal(4) * 0.1
    vd = {"layers.0": (w1.astype(np.float64), a1), "layers.3": (w4.astype(np.float64), a4)}
    plain = {"layers.0.bias": b1, "layers.1.weight": w2, "layers.1.bias": b2,
             "layers.3.bias": b4}
    # The engine computes in f32: the reference uses the f32 values the importer reads.
    f32 = lambda a: a.astype(np.float32).astype(np.float64)

    def forward(x):
        h = relu(conv2d(x, pruned(w1, a1), f32(b1), 1, 1))
        h = relu(conv2d(h, f32(w2), f32(b2), 2, 0)).reshape(-1)
        return softmax(pruned(w4, a4) @ h + f32(b4))

    inputs = [rng.standard_normal((2, 7, 6)).astype(np.float32) for _ in range(5)]
    return toml, vd, plain, forward, inputs, ["--input-shape", "2,7,6", "--classes", "4"]


def case_mlp():
    """Two vd linear layers over 10-feature vectors; the shape and classes in the config."""
    toml = """
input_shape = [1, 1, 10]
classes = 3

[[layers]]
kind = "linear"
name = "fc1"
outputs = 6

[[layers]]
kind = "linear"
name = "fc2"
"""
    w1, a1 = posterior((6, 10))
    b1 = rng.standard_normal(6).astype(np.float32) * 0.1
    w2, a2 = posterior((3, 6))
    b2 = rng.standard_normal(3).astype(np.float32) * 0.1
    vd = {"fc1": (w1, a1), "fc2": (w2, a2)}
    plain = {"fc1.bias": b1, "fc2.bias": b2}

    def forward(x):
        h = relu(pruned(w1, a1) @ x.reshape(-1) + b1)
        return softmax(pruned(w2, a2) @ h + b2)

    inputs = [rng.standard_normal(10).astype(np.float32) for _ in range(5)]
    return toml, vd, plain, forward, inputs, []


def case_gap():
    """A vd convolution, a global average pool (each channel's mean) and a vd head."""
    toml = """
[[layers]]
kind = "conv"
name = "conv"
outputs = 4
kernel = 3
padding = 1

[[layers]]
kind = "gap"

[[layers]]
kind = "linear"
name = "head"
"""
    w1, a1 = posterior((4, 2, 3, 3))
    b1 = rng.standard_normal(4).astype(np.float32) * 0.1
    w2, a2 = posterior((3, 4))
    b2 = rng.standard_normal(3).astype(np.float32) * 0.1
    vd = {"conv": (w1, a1), "head": (w2, a2)}
    plain = {"conv.bias": b1, "head.bias": b2}

    def forward(x):
        h = relu(conv2d(x, pruned(w1, a1), b1, 1, 1)).mean(axis=(1, 2))
        return softmax(pruned(w2, a2) @ h + b2)

    inputs = [rng.standard_normal((2, 5, 6)).astype(np.float32) for _ in range(5)]
    return toml, vd, plain, forward, inputs, ["--input-shape", "2,5,6", "--classes", "3"]


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    cases = [("conv1d", case_conv1d), ("conv2d", case_conv2d), ("mlp", case_mlp),
             ("gap", case_gap)]
    for name, make in cases:
        toml, vd, plain, forward, inputs, args = make()
        for variant in ("sigma", "alpha"):
            arrays = dict(plain)
            for layer, (theta, log_alpha) in vd.items():
                arrays[layer + ".weight"] = theta
                if variant == "sigma":
                    variances = log_sigma2_of(theta.astype(np.float32), log_alpha)
                    arrays[layer + ".log_sigma2"] = variances.astype(theta.dtype)
                else:
                    arrays[layer + ".log_alpha"] = log_alpha.astype(theta.dtype)
            np.savez(os.path.join(out, f"{name}_{variant}.npz"), **arrays)
        with open(os.path.join(out, f"{name}.toml"), "w") as f:
            f.write(toml)
        expected = [forward(x.astype(np.float64)).tolist() for x in inputs]
        with open(os.path.join(out, f"{name}.json"), "w") as f:
            json.dump({
                "args": args,
                "inputs": [x.reshape(-1).astype(np.float64).tolist() for x in inputs],
                "expected": expected,
            }, f)


if __name__ == "__main__":
    main()
