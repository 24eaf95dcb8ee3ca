#!/usr/bin/env python3
"""Does following the leader among the step bets beat their mixture? (statistics.md §2.5)

    python3 scripts/step_leader_sim.py        # about a minute

Simulates only the buckets test's 24 step bets (odds x2/3.5/6 above the baseline's
p90 ... p99.9, thresholds at the true quantiles, as after a baseline-history read) on the
accuracy benchmark's latency model (scripts/latency_limits.py): 5 s windows of 500 requests,
5 % to the canary. Prints the median requests until the wealth crosses ln 100 (the latency
metric's alpha 0.01) for: the mixture with prior mass 0.3 on the grid (what the test does; the
rest of the mass does not bet here), and the same 0.3 split between the grid and a
follow-the-leader bet (each window, the step bet with the most wealth so far, or nothing while
none is above the given margin). Pure standard library, seeded.
"""

import bisect
import math
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import latency_limits as L  # noqa: E402

QS = [0.9, 0.95, 0.97, 0.98, 0.985, 0.99, 0.995, 0.999]
RHOS = [2.0, 3.5, 6.0]


def intervals(bounds, mode, m):
    """Probabilities of the intervals between the step thresholds, baseline and canary."""
    pb = L.probs(bounds, L.cdf)
    pc = L.probs(bounds, lambda x: L.canary_cdf(x, mode, m))
    th = []
    for q in QS:
        cum = 0.0
        for i, p in enumerate(pb):
            cum += p
            if cum >= q:
                break
        th.append(i)
    cuts = sorted(set(th))

    def split(p):
        out, prev = [], 0
        for c in cuts:
            out.append(sum(p[prev : c + 1]))
            prev = c + 1
        out.append(sum(p[prev:]))
        return out

    return [cuts.index(t) + 1 for t in th], split(pb), split(pc)


def draw(rng, n, probs):
    cum, acc = [], 0.0
    for p in probs:
        acc += p
        cum.append(acc)
    out = [0] * len(probs)
    for _ in range(n):
        out[min(bisect.bisect(cum, rng.random() * acc), len(probs) - 1)] += 1
    return out


def lse(xs):
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs))


def median_requests(bounds, mode, m, grid_mass, leader_mass, margin, runs=300, w=0.05):
    rng = random.Random(1)
    pos, ib, ic = intervals(bounds, mode, m)
    experts = [(q, r) for q in range(len(QS)) for r in RHOS]
    per, out = 500, []
    for _ in range(runs):
        wealth, leader, crossed = [0.0] * len(experts), 0.0, 10**9
        for t in range(60):
            nc = sum(1 for _ in range(per) if rng.random() < w)
            b, c = draw(rng, per - nc, ib), draw(rng, nc, ic)
            f = []
            for q, r in experts:
                x = w * r / (1 - w + w * r)
                f.append(sum(c[pos[q] :]) * math.log(x / w) + sum(b[pos[q] :]) * math.log((1 - x) / (1 - w)))
            best = max(range(len(wealth)), key=lambda i: wealth[i])
            if wealth[best] > margin:
                leader += f[best]
            wealth = [a + x for a, x in zip(wealth, f)]
            terms = [math.log(1 - grid_mass - leader_mass)]
            if grid_mass > 0:
                terms += [math.log(grid_mass / len(wealth)) + x for x in wealth]
            if leader_mass > 0:
                terms.append(math.log(leader_mass) + leader)
            if lse(terms) >= math.log(100):
                crossed = (t + 1) * per
                break
        out.append(crossed)
    out.sort()
    return out[len(out) // 2]


def main():
    configs = [
        ("mixture 0.3", 0.3, 0.0, 0.0),
        ("0.15 + leader 0.15", 0.15, 0.15, 0.0),
        ("0.05 + leader 0.25", 0.05, 0.25, 0.0),
        ("0.15 + leader 0.15, margin 1", 0.15, 0.15, 1.0),
        ("0.15 + leader 0.15, margin 2", 0.15, 0.15, 2.0),
    ]
    for name, bounds in (("built-in", L.FINE), ("x2", L.DOUBLING)):
        for mode, m in (("tail", 1.5), ("bimodal", 0.05)):
            cells = [f"{label}: {median_requests(bounds, mode, m, g, f, mg)}" for label, g, f, mg in configs]
            print(f"{name} {mode}: " + "; ".join(cells), flush=True)


if __name__ == "__main__":
    main()
