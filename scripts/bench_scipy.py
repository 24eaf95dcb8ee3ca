#!/usr/bin/env python3
"""Times scipy.stats.mannwhitneyu on the data benches/mann_whitney.rs uses.

Same generator as the Rust bench: exponential(1) samples from SplitMix64 streams (baseline
seed 1, canary seed 2 scaled by 1.02), 10^2, 10^4 and 10^6 per arm. scipy computes U and
the p-value only (no Hodges-Lehmann interval); method='auto' is asymptotic at these sizes.

Usage: python3 scripts/bench_scipy.py [--repeat N]
"""

import argparse
import time

import numpy as np
import scipy
from scipy import stats

GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def samples(seed, n, scale):
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + np.arange(1, n + 1, dtype=np.uint64) * GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) * (1.0 / float(1 << 53))
    return -np.log(1.0 - u) * scale


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=0, help="runs per size (default: adaptive)")
    args = ap.parse_args()
    print(f"scipy {scipy.__version__}, numpy {np.__version__}")
    print("n per arm | median time | runs | U | p-value")
    for n in [100, 10_000, 1_000_000]:
        baseline = samples(1, n, 1.0)
        canary = samples(2, n, 1.02)
        stats.mannwhitneyu(canary, baseline)  # warm-up
        runs = args.repeat or (200 if n <= 100 else 50 if n <= 10_000 else 7)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            r = stats.mannwhitneyu(canary, baseline)
            times.append(time.perf_counter() - t0)
        med = float(np.median(times))
        unit = f"{med * 1e3:.3f} ms" if med >= 1e-3 else f"{med * 1e6:.1f} µs"
        print(f"{n} | {unit} | {runs} | {r.statistic:.1f} | {r.pvalue:.6g}")


if __name__ == "__main__":
    main()
