#!/usr/bin/env python3
"""What a valid one-sided latency test can reach on the accuracy benchmark's scenarios.

    python3 scripts/latency_limits.py

From the benchmark's latency model (benches/accuracy/sim.rs: log-normal body, median 50 ms,
sigma 0.5, a 2 % Pareto tail from the body's p98, 0.05 % timeouts at 30 s) and its buckets,
per canary request (docs/statistics.md section 2.5, "What it cannot do"):
- the oracle SPRT's KL(canary || baseline);
- the growth of the best monotone conditional bet (valid for every canary at most as slow
  as the baseline): weighted isotonic regression of the posterior canary share;
- the growth of each step bet (odds x rho above the bucket holding a baseline quantile).
Pure standard library, no fitting: numbers follow from the model.
"""

import math


def phi(z):
    return 0.5 * math.erfc(-z / math.sqrt(2))


MEDIAN, SIGMA, TAIL_W, TAIL_SHAPE, TIMEOUT_W, TIMEOUT = 0.05, 0.5, 0.02, 1.5, 0.0005, 30.0
TAIL_XM = MEDIAN * math.exp(SIGMA * 2.054)


def cdf(x):
    if x <= 0:
        return 0.0
    body = phi(math.log(x / MEDIAN) / SIGMA)
    tail = 0.0 if x < TAIL_XM else 1 - (TAIL_XM / x) ** TAIL_SHAPE
    return (1 - TAIL_W - TIMEOUT_W) * body + TAIL_W * tail + TIMEOUT_W * (x >= TIMEOUT)


def quantile(p):
    lo, hi = 1e-6, 100.0
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return hi


Q95 = quantile(0.95)


def canary_cdf(x, mode, m):
    if mode == "tail":
        if x < Q95:
            return cdf(x)
        return cdf(Q95) if x < Q95 * m else cdf(x / m)
    if mode == "shift":
        return cdf(x / m)
    return (1 - m) * cdf(x) + m * cdf(x - 0.2)  # bimodal: m of requests + 200 ms


def probs(bounds, f):
    out, prev = [], 0.0
    for b in bounds:
        c = 1.0 if math.isinf(b) else f(b)
        out.append(max(c - prev, 0.0))
        prev = max(c, prev)
    return out


FINE = [1e-4 * 2 ** (i / 8) for i in range(162)] + [math.inf]
DOUBLING = [0.005 * 2**i for i in range(14)] + [math.inf]
CASES = [("shift", 1.1), ("shift", 1.25), ("shift", 1.5), ("tail", 1.5), ("bimodal", 0.05)]


def pava(y, wt):
    blocks = []
    for yi, wi in zip(y, wt):
        blocks.append([yi * wi, wi, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, w, n = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += w
            blocks[-1][2] += n
    out = []
    for s, w, n in blocks:
        out += [s / w] * n
    return out


def growth(theta, pb, pc, w):
    """Expected log wealth per canary request of a bet theta per bucket."""
    g = 0.0
    for t, b, c in zip(theta, pb, pc):
        t = min(max(t, 1e-12), 1 - 1e-12)
        g += w * c * math.log(t / w) + (1 - w) * b * math.log((1 - t) / (1 - w))
    return g / w


def main():
    for w in (0.05, 0.25):
        print(f"share {w:.0%}: oracle KL / best monotone bet (nats per canary request)")
        for name, bounds in (("built-in", FINE), ("x2", DOUBLING)):
            pb = probs(bounds, cdf)
            for mode, m in CASES:
                pc = probs(bounds, lambda x: canary_cdf(x, mode, m))
                kl = sum(c * math.log(c / b) for c, b in zip(pc, pb) if c > 0 and b > 0)
                keep = [i for i in range(len(pb)) if pb[i] + pc[i] > 0]
                y = [w * pc[i] / (w * pc[i] + (1 - w) * pb[i]) for i in keep]
                wt = [w * pc[i] + (1 - w) * pb[i] for i in keep]
                best = growth(pava(y, wt), [pb[i] for i in keep], [pc[i] for i in keep], w)
                print(f"  {name:8} {mode:7} {m:<5} {kl:.4f} / {best:.4f} = {kl / best:.2f}x")
    w = 0.05
    print("step bets at share 5%: growth per canary request for rho 2 / 2.5 / 3.5 / 4 / 6")
    for name, bounds in (("built-in", FINE), ("x2", DOUBLING)):
        pb = probs(bounds, cdf)
        for mode, m in CASES[3:]:
            pc = probs(bounds, lambda x: canary_cdf(x, mode, m))
            print(f"  {name} {mode} {m}")
            for q in (0.9, 0.95, 0.97, 0.98, 0.985, 0.99, 0.995, 0.999):
                cum, i = 0.0, 0
                for i, p in enumerate(pb):
                    cum += p
                    if cum >= q:
                        break
                above_b, above_c = sum(pb[i + 1 :]), sum(pc[i + 1 :])
                gs = []
                for rho in (2.0, 2.5, 3.5, 4.0, 6.0):
                    t = w * rho / (1 - w + w * rho)
                    gs.append(
                        (w * above_c * math.log(t / w) + (1 - w) * above_b * math.log((1 - t) / (1 - w)))
                        / w
                    )
                print(f"    p{q * 100:g}: " + " / ".join(f"{g:.4f}" for g in gs))


if __name__ == "__main__":
    main()
