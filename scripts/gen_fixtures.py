#!/usr/bin/env python3
"""Generates the reference fixtures in tests/fixtures/ that tests/statistics.rs checks.

Reference implementations:
- scipy 1.17.1: mannwhitneyu (U and p-value), fisher_exact, ttest_ind(equal_var=False);
  scipy's own exact U distribution (scipy.stats._mannwhitneyu._MWU) for R's qwilcox.
- scipy.optimize.isotonic_regression: weighted non-decreasing fits (the all-buckets
  latency test's plug-in), including zero weights, which scipy rejects: those cases drop
  the zero-weight points for scipy and expect each such point to take the previous fitted
  value (the next one at the start), as coalmine documents.
- scipy.special (log_expit, logsumexp, betaln) and scipy.optimize.brentq: the sequential
  error test's mixture e-value, its lower bound and confidence sequence, and the fixed-share
  Beta mixture, each from its definition in docs/statistics.md §2.1.
- numpy: the exact Hodges-Lehmann estimate and interval from all n1*n2 differences.
- A direct transcription of R's wilcox.test asymptotic interval code (stats/R/wilcox.test.R,
  with R's zeroin2 from src/library/stats/src/zeroin.c) on scipy.stats.rankdata ranks, for
  the asymptotic Hodges-Lehmann estimate and interval (no R on this machine). It is an
  independent implementation of the same algorithm, not R itself.

Usage: python3 scripts/gen_fixtures.py   (writes tests/fixtures/*.json; deterministic)
"""

import json
import math
import os
import sys

import numpy as np
import scipy
from scipy import stats
from scipy.stats._mannwhitneyu import _MWU

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
EPS = np.finfo(float).eps


def enc(x):
    """JSON has no infinities or NaN: encode them as strings."""
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


# ---------------------------------------------------------------- Mann-Whitney

def arm(rng, n, kind, shift):
    if kind == "normal":
        return rng.normal(shift, 1.0, n)
    if kind == "lognormal":
        return rng.lognormal(shift, 1.0, n)
    if kind == "integers":  # heavy ties
        return np.round(rng.normal(shift * 3, 3.0, n))
    if kind == "few":  # very heavy ties
        return rng.integers(0, 3, n).astype(float) + (1.0 if shift > 0.3 else 0.0)
    raise ValueError(kind)


def qwilcox(p, m, n):
    """R's qwilcox(p, m, n) for p <= 1/2, from scipy's exact distribution."""
    d = _MWU(m, n)
    target = p - 10 * EPS
    k = np.arange(0, m * n // 2 + 1)
    cdf = d.cdf(k)
    return int(np.argmax(cdf >= target)) if np.any(cdf >= target) else m * n // 2


def pwilcox(q, m, n):
    if q < 0:
        return 0.0
    return float(_MWU(m, n).cdf(np.array([q]))[0])


def hl_exact(x, y, conf, alternative):
    """R's exact wilcox.test(x, y, conf.int = TRUE) estimate and interval."""
    m, n = len(x), len(y)
    diffs = np.sort(np.subtract.outer(x, y).ravel())
    alpha = 1 - conf
    if alternative == "two-sided":
        qu = max(qwilcox(alpha / 2, m, n), 1)
        ql = m * n - qu
        ci = (diffs[qu - 1], diffs[ql])
        achieved = 1 - 2 * pwilcox(qu - 1, m, n)
    elif alternative == "greater":
        qu = max(qwilcox(alpha, m, n), 1)
        ci = (diffs[qu - 1], math.inf)
        achieved = 1 - pwilcox(qu - 1, m, n)
    else:
        qu = max(qwilcox(alpha, m, n), 1)
        ci = (-math.inf, diffs[m * n - qu])
        achieved = 1 - pwilcox(qu - 1, m, n)
    return {"estimate": enc(np.median(diffs)), "ci": [enc(ci[0]), enc(ci[1])],
            "achieved_confidence": achieved}


def mann_whitney_cases(rng):
    cases = []
    sizes = []
    for _ in range(150):
        sizes.append((int(rng.integers(1, 11)), int(rng.integers(1, 61))))
    for _ in range(80):
        sizes.append((int(rng.integers(9, 61)), int(rng.integers(9, 61))))
    for n1, n2 in [(3, 2000), (8, 1500), (5, 800), (400, 700), (1000, 1000),
                   (2500, 1800), (60, 60), (50, 55), (120, 90), (2, 3000)]:
        sizes.append((n1, n2))
    for i, (n1, n2) in enumerate(sizes):
        if rng.random() < 0.5:
            n1, n2 = n2, n1
        kind = ["normal", "lognormal", "integers", "few"][i % 4]
        shift = float(rng.choice([0.0, 0.2, 0.5, 1.0, 2.0]))
        x = arm(rng, n1, kind, shift)
        y = arm(rng, n2, kind, 0.0)
        alternative = ["two-sided", "greater", "less"][int(rng.integers(0, 3))]
        m = min(n1, n2)
        exact_ok = m * (n1 * n2 // 2) <= 5_000_000
        methods = ["auto", "asymptotic"] + (["exact"] if exact_ok else [])
        method = methods[int(rng.integers(0, len(methods)))]
        if n1 * n2 > 1e6 and method != "asymptotic" and not exact_ok:
            method = "asymptotic"
        continuity = bool(rng.random() < 0.7)
        r = stats.mannwhitneyu(x, y, alternative=alternative, method=method,
                               use_continuity=continuity)
        case = {"canary": x.tolist(), "baseline": y.tolist(), "alternative": alternative,
                "method": method, "continuity": continuity,
                "u": float(r.statistic), "p_value": float(r.pvalue)}
        if n1 * n2 <= 20_000 and n1 * n2 // 2 * m <= 2_000_000:
            case["hl_exact"] = hl_exact(x, y, 0.95, alternative)
        cases.append(case)
    return cases


# ------------------------------------------- R's asymptotic interval, transcribed

def zeroin(f, ax, bx, fa, fb, tol=1e-4, maxit=1000):
    """R's zeroin2 (src/library/stats/src/zeroin.c), line by line."""
    a, b = ax, bx
    c, fc = a, fa
    if fa == 0:
        return a
    if fb == 0:
        return b
    it = maxit + 1
    while it > 0:
        it -= 1
        prev_step = b - a
        if abs(fc) < abs(fb):
            a, b, c = b, c, b
            fa, fb, fc = fb, fc, fb
        tol_act = 2 * EPS * abs(b) + tol / 2
        new_step = (c - b) / 2
        if abs(new_step) <= tol_act or fb == 0:
            return b
        if abs(prev_step) >= tol_act and abs(fa) > abs(fb):
            cb = c - b
            if a == c:
                t1 = fb / fa
                p = cb * t1
                q = 1.0 - t1
            else:
                q = fa / fc
                t1 = fb / fc
                t2 = fb / fa
                p = t2 * (cb * q * (q - t1) - (b - a) * (t1 - 1.0))
                q = (q - 1.0) * (t1 - 1.0) * (t2 - 1.0)
            if p > 0:
                q = -q
            else:
                p = -p
            if p < (0.75 * cb * q - abs(tol_act * q) / 2) and p < abs(prev_step * q / 2):
                new_step = p / q
        if abs(new_step) < tol_act:
            new_step = tol_act if new_step > 0 else -tol_act
        a, fa = b, fb
        b += new_step
        fb = f(b)
        if (fb > 0 and fc > 0) or (fb < 0 and fc < 0):
            c, fc = a, fa
    return b


def r_hl_asymptotic(x, y, conf, alternative, correct):
    """wilcox.test(x, y, conf.int=TRUE, exact=FALSE, correct=correct) interval and estimate."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    nx, ny = len(x), len(y)
    alpha = 1 - conf
    mumin = x.min() - y.max()
    mumax = x.max() - y.min()

    def W(d, corr_on):
        dr = stats.rankdata(np.concatenate([x - d, y]))
        _, t = np.unique(dr, return_counts=True)
        dz = dr[:nx].sum() - nx * (nx + 1) / 2 - nx * ny / 2
        corr = 0.0
        if corr_on:
            corr = {"two-sided": np.sign(dz) * 0.5, "greater": 0.5, "less": -0.5}[alternative]
        sigma = math.sqrt((nx * ny / 12) * ((nx + ny + 1)
                                            - np.sum(t ** 3 - t) / ((nx + ny) * (nx + ny - 1))))
        return (dz - corr) / sigma

    wmin, wmax = W(mumin, correct), W(mumax, correct)

    def root(zq):
        fl = wmin - zq
        if fl <= 0:
            return mumin
        fu = wmax - zq
        if fu >= 0:
            return mumax
        return zeroin(lambda d: W(d, correct) - zq, mumin, mumax, fl, fu)

    if alternative == "two-sided":
        ci = (root(stats.norm.isf(alpha / 2)), root(stats.norm.ppf(alpha / 2)))
    elif alternative == "greater":
        ci = (root(stats.norm.isf(alpha)), math.inf)
    else:
        ci = (-math.inf, root(stats.norm.ppf(alpha)))
    est = zeroin(lambda d: W(d, False), mumin, mumax, W(mumin, False), W(mumax, False))
    return {"estimate": enc(est), "ci": [enc(ci[0]), enc(ci[1])]}


def hl_asymptotic_cases(rng):
    cases = []
    # The R example and the Kayenta vector first.
    fixed = [
        ([0.80, 0.83, 1.89, 1.04, 1.45, 1.38, 1.91, 1.64, 0.73, 1.46],
         [1.15, 0.88, 0.90, 0.74, 1.21]),
        ([10.0, 20.0, 30.0, 40.0], [1.0, 2.0, 3.0, 4.0]),
        ([1.0] * 25 + [2.0], [0.0] * 21 + [1.0] * 9 + [2.0]),
    ]
    for x, y in fixed:
        cases.append((np.array(x), np.array(y), 0.95, "two-sided", True))
    for i in range(90):
        n1, n2 = int(rng.integers(2, 50)), int(rng.integers(2, 50))
        kind = ["normal", "lognormal", "integers", "few"][i % 4]
        shift = float(rng.choice([0.0, 0.3, 1.0]))
        x, y = arm(rng, n1, kind, shift), arm(rng, n2, kind, 0.0)
        if len(set(x)) == 1 and len(set(y)) == 1:
            continue
        conf = float(rng.choice([0.9, 0.95, 0.98]))
        alternative = ["two-sided", "two-sided", "greater", "less"][int(rng.integers(0, 4))]
        cases.append((x, y, conf, alternative, bool(rng.random() < 0.8)))
    out = []
    for x, y, conf, alternative, correct in cases:
        r = r_hl_asymptotic(x, y, conf, alternative, correct)
        out.append({"canary": x.tolist(), "baseline": y.tolist(), "confidence": conf,
                    "alternative": alternative, "continuity": correct, **r})
    return out


# ---------------------------------------------------------------- Fisher, Welch

def fisher_cases(rng):
    cases = []
    tables = []
    for _ in range(70):
        tables.append([int(v) for v in rng.integers(0, 40, 4)])
    for _ in range(30):
        nc, nb = int(rng.integers(100, 100_000)), int(rng.integers(100, 100_000))
        pb = float(rng.uniform(0.001, 0.05))
        pc = pb * float(rng.choice([0.5, 1.0, 1.0, 1.5, 3.0]))
        ce, be = int(rng.binomial(nc, min(pc, 1))), int(rng.binomial(nb, pb))
        tables.append([ce, nc - ce, be, nb - be])
    # Symmetric margins, zeros, empty rows and columns, the §3.3 data.
    tables += [[12, 988, 30, 970], [30, 970, 12, 988], [5, 5, 5, 5], [0, 10, 0, 10],
               [0, 0, 3, 4], [3, 0, 0, 4], [7, 0, 3, 0], [0, 5, 3, 0], [1, 0, 0, 1],
               [6, 2, 1, 4], [20, 20, 10, 30], [100, 100, 100, 100]]
    for a, b, c, d in tables:
        row = {"canary_errors": a, "canary_ok": b, "baseline_errors": c, "baseline_ok": d}
        for alt in ["two-sided", "greater", "less"]:
            r = stats.fisher_exact([[a, b], [c, d]], alternative=alt)
            row[alt] = float(r.pvalue)
            row["odds_ratio"] = enc(r.statistic)
        cases.append(row)
    return cases


def welch_cases(rng):
    cases = []
    for i in range(40):
        n1, n2 = int(rng.integers(2, 80)), int(rng.integers(2, 80))
        x = rng.normal(float(rng.choice([0.0, 0.3, 1.0])), float(rng.uniform(0.5, 3)), n1)
        y = rng.normal(0.0, float(rng.uniform(0.5, 3)), n2)
        alt = ["two-sided", "greater", "less"][i % 3]
        r = stats.ttest_ind(x, y, equal_var=False, alternative=alt)
        cases.append({"canary": x.tolist(), "baseline": y.tolist(), "alternative": alt,
                      "t": float(r.statistic), "df": float(r.df), "p_value": float(r.pvalue)})
    return cases


def isotonic_cases(rng):
    from scipy.optimize import isotonic_regression
    cases = []
    for i in range(40):
        n = int(rng.integers(1, 60))
        y = rng.normal(0.0, 1.0, n) + (np.linspace(0, 2, n) if i % 2 else 0.0)
        w = rng.uniform(0.1, 5.0, n)
        if i % 4 == 3:  # some buckets without data
            w[rng.random(n) < 0.3] = 0.0
        keep = w > 0
        fitted = np.full(n, np.nan)
        if keep.any():
            fitted[keep] = isotonic_regression(y[keep], weights=w[keep], increasing=True).x
            first = fitted[keep][0]
            prev = first
            for j in range(n):
                if keep[j]:
                    prev = fitted[j]
                else:
                    fitted[j] = prev
        cases.append({"y": y.tolist(), "weights": w.tolist(),
                      "fitted": [enc(v) for v in fitted]})
    return cases


# ---------------------------------------------------------------- sequential event tests

def log_expit(x):
    from scipy.special import log_expit as le
    return float(le(x))


def event_log_e(prior, ln_r0, windows, two_sided=False):
    """ln of the mixture e-value of statistics.md §2.1 (b), from its definition: a grid of
    log ratio offsets with equal weights; each event is canary with probability
    expit(logit w + ln r), against the null boundary ln r0."""
    from scipy.special import logsumexp
    lo, hi, n = prior
    a, b = math.log(lo), math.log(hi)
    deltas = [a] if n == 1 else [a * (b / a) ** (i / (n - 1)) for i in range(n)]
    weights = [-math.log(n)] * n
    if two_sided:
        deltas = [s * d for d in deltas for s in (1.0, -1.0)]
        weights = [w - math.log(2.0) for w in weights for _ in (1, -1)]
    terms = []
    for d, lw in zip(deltas, weights):
        t = lw
        for w, c, bb in windows:
            x0 = ln_r0 + math.log(w / (1.0 - w))
            t += c * (log_expit(x0 + d) - log_expit(x0)) + bb * (log_expit(-x0 - d) - log_expit(-x0))
        terms.append(t)
    return float(logsumexp(terms))


def event_test_cases():
    """EventTest (the default error judge): the log e-value after every window, the lower
    confidence bound implied by the test (the largest r' >= r0 the test rejects, running
    maximum) and the two-sided confidence sequence (running intersection), each found here
    with scipy's brentq on the definitions, not with coalmine's bisection."""
    from scipy.optimize import brentq
    rng = np.random.default_rng(20_261_204)
    priors = [(1.2, 10.0, 7), (1.05, 5.0, 10), (1.5, 1.5, 1), (1.1, 3.0, 4)]
    cases = []
    for i in range(40):
        prior = priors[i % len(priors)]
        r0 = [1.0, 1.2, 2.0, 0.8][(i // 4) % 4]
        alpha = [0.05, 0.01, 0.2][i % 3]
        ratio = [1.0, 1.5, 3.0, 0.5, 8.0][i % 5]
        windows = []
        for _ in range(int(rng.integers(1, 12))):
            w = float(rng.choice([0.01, 0.05, 0.25, 0.5, 0.9]))
            n = float(rng.poisson(rng.choice([0.5, 5.0, 40.0])))
            theta = w * ratio / (1.0 - w + w * ratio)
            c = float(rng.binomial(int(n), theta))
            bb = n - c
            if i % 7 == 6:  # PromQL's increase() gives fractional counts
                c, bb = c * 0.93, bb * 1.07
            windows.append([w, c, bb])
        ln_r0 = math.log(r0)
        thr = -math.log(alpha)
        log_e, lower, cs = [], [], []
        low, cs_lo, cs_hi = 0.0, 0.0, math.inf
        for k in range(len(windows)):
            seen = windows[: k + 1]
            e = event_log_e(prior, ln_r0, seen)
            log_e.append(e)
            if e >= thr:
                f = lambda d: event_log_e(prior, ln_r0 + d, seen) - thr
                r = r0 * math.exp(40.0) if f(40.0) >= 0 else r0 * math.exp(brentq(f, 0.0, 40.0, xtol=1e-13))
                low = max(low, r)
            lower.append(low)
            nc = sum(x[1] for x in seen)
            nb = sum(x[2] for x in seen)
            if nc + nb > 0:
                if nc == 0:
                    centre = -15.0
                elif nb == 0:
                    centre = 15.0
                else:
                    score = lambda d: sum(x[1] - (x[1] + x[2]) / (1.0 + math.exp(-(d + math.log(x[0] / (1.0 - x[0]))))) for x in seen)
                    centre = min(15.0, max(-15.0, brentq(score, -40.0, 40.0, xtol=1e-12)))
                g = lambda d: event_log_e(prior, d, seen, two_sided=True) - thr
                lo = 0.0 if g(-15.0) < 0 else math.exp(brentq(g, -15.0, centre, xtol=1e-12))
                hi = math.inf if g(15.0) < 0 else math.exp(brentq(g, centre, 15.0, xtol=1e-12))
                nlo, nhi = max(cs_lo, lo), min(cs_hi, hi)
                cs_lo, cs_hi = (nlo, nhi) if nlo <= nhi else (lo, hi)
            cs.append([enc(cs_lo), enc(cs_hi)])
        cases.append({"prior": list(prior), "allowed_ratio": r0, "alpha": alpha,
                      "windows": windows, "log_e": log_e, "lower": [enc(v) for v in lower],
                      "cs": cs})
    return cases


def beta_mixture_cases():
    """The fixed-share Beta(k w, k (1 - w)) mixture (statistics.md §2.1 (a)): its Bayes
    factor from scipy's betaln and its confidence interval for r from brentq."""
    from scipy.optimize import brentq
    from scipy.special import betaln, xlogy
    rng = np.random.default_rng(20_261_205)
    cases = []
    for i in range(40):
        w = float(rng.choice([0.01, 0.05, 0.25, 0.5]))
        k = float(rng.choice([1.0, 10.0, 100.0]))
        alpha = [0.05, 0.01][i % 2]
        n = int(rng.integers(0, 400))
        ratio = [1.0, 2.0, 0.5, 5.0][i % 4]
        theta = w * ratio / (1.0 - w + w * ratio)
        nc = float(rng.binomial(n, theta))
        nb = n - nc
        a0, b0 = k * w, k * (1.0 - w)
        marg = betaln(a0 + nc, b0 + nb) - betaln(a0, b0)
        log_e = marg - xlogy(nc, w) - xlogy(nb, 1.0 - w)
        target = math.log(alpha) + marg
        ll = lambda t: xlogy(nc, t) + xlogy(nb, 1.0 - t) - target
        th = nc / n if n > 0 else w
        e = 1e-15
        lo = 0.0 if nc == 0 else brentq(ll, e, min(max(th, e), 1 - e), xtol=1e-15)
        hi = 1.0 if nb == 0 else brentq(ll, min(max(th, e), 1 - e), 1 - e, xtol=1e-15)
        to_r = lambda t: math.inf if t >= 1.0 else t / (1.0 - t) * (1.0 - w) / w
        cases.append({"nb": nb, "nc": nc, "w": w, "k": k, "alpha": alpha,
                      "log_e": float(log_e), "p_value": float(min(1.0, math.exp(-log_e))),
                      "ci_ratio": [enc(to_r(lo)), enc(to_r(hi))]})
    return cases


def main():
    if scipy.__version__ != "1.17.1":
        print(f"warning: fixtures were made with scipy 1.17.1, this is {scipy.__version__}",
              file=sys.stderr)
    rng = np.random.default_rng(20_261_122)
    os.makedirs(OUT, exist_ok=True)
    meta = {"generator": "scripts/gen_fixtures.py", "scipy": scipy.__version__,
            "numpy": np.__version__}
    for name, cases in [("mann_whitney", mann_whitney_cases(rng)),
                        ("hl_asymptotic", hl_asymptotic_cases(rng)),
                        ("fisher", fisher_cases(rng)),
                        ("welch", welch_cases(rng)),
                        ("isotonic", isotonic_cases(rng)),
                        ("event_test", event_test_cases()),
                        ("beta_mixture", beta_mixture_cases())]:
        with open(os.path.join(OUT, f"{name}.json"), "w") as f:
            json.dump({"meta": meta, "cases": cases}, f, separators=(",", ":"))
            f.write("\n")
        print(f"{name}: {len(cases)} cases")


if __name__ == "__main__":
    main()
