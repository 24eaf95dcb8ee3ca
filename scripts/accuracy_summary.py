#!/usr/bin/env python3
"""Condensed accuracy table for the README, from the benchmark's JSON.

    cargo bench --bench accuracy            # writes target/coalmine-bench/accuracy.json
    python3 scripts/accuracy_summary.py     # prints the Markdown summary

Only formats numbers the benchmark measured; the full table is accuracy.md.
"""

import json
import sys

PATH = sys.argv[1] if len(sys.argv) > 1 else "target/coalmine-bench/accuracy.json"

# (scenario, variant, effect, rate, p0): the rows shown in the README.
ROWS = [
    ("aa", "", 1.0, 100, 0.005),
    ("aa", "", 1.0, 1000, 0.001),
    ("aa", "diurnal+bursts", 1.0, 1000, 0.005),
    ("aa", "gaps-30%", 1.0, 100, 0.005),
    ("aa", "late-20%", 1.0, 100, 0.005),
    ("aa", "duplicated-10%", 1.0, 100, 0.005),
    ("improvement", "errors", 0.5, 1000, 0.005),
    ("improvement", "latency", 0.9, 100, 0.005),
    ("errors", "", 1.25, 1000, 0.005),
    ("errors", "", 1.5, 1000, 0.005),
    ("errors", "", 2.0, 100, 0.005),
    ("errors", "", 2.0, 1000, 0.005),
    ("errors", "", 5.0, 1000, 0.005),
    ("errors", "diurnal+bursts", 2.0, 1000, 0.005),
    ("errors", "burst-60s", 10.0, 1000, 0.005),
    ("latency", "", 1.05, 100, 0.005),
    ("latency", "", 1.25, 100, 0.005),
    ("latency-tail", "", 1.5, 100, 0.005),
    ("latency", "bimodal", 0.05, 100, 0.005),
    ("latency", "warm-up", 1.3, 100, 0.005),
    ("missing-data", "canary-absent", 1.0, 100, 0.005),
]
JUDGES = ["sequential", "kayenta", "flagger", "fixed-horizon", "oracle-sprt"]
NO_REGRESSION = {"aa", "improvement"}


def effect(scenario, variant, e):
    if scenario in ("aa", "missing-data"):
        return "–"
    if variant == "bimodal":
        return f"{e * 100:.0f}% +200 ms"
    return f"×{e:g}"


def cell(c, scenario, variant):
    pct = c["rollback_rate"] * 100
    if scenario == "missing-data":
        return f"{pct:.0f}% / promoted {c['promote_rate'] * 100:.0f}%"
    if scenario in NO_REGRESSION or variant == "warm-up":
        return f"{pct:.1f}%"
    if pct == 0:
        return "0%"
    return f"{pct:.0f}% in {c['median_decision_seconds']:.0f} s"


def main():
    cells = json.load(open(PATH))["cells"]
    out = [
        "| scenario | effect | req/s, p0 | " + " | ".join(JUDGES) + " |",
        "|---|---|---|" + "---|" * len(JUDGES),
    ]
    for scenario, variant, e, rate, p0 in ROWS:
        found = {
            c["judge"]: c
            for c in cells
            if c["scenario"] == scenario
            and c["variant"] == variant
            and abs(c["effect"] - e) < 1e-9
            and c["rate"] == rate
            and abs(c["p0"] - p0) < 1e-12
        }
        if not found:
            sys.exit(f"no cells for {scenario}/{variant} {e} {rate} {p0} in {PATH}")
        name = f"{scenario} ({variant})" if variant else scenario
        vals = [cell(found[j], scenario, variant) if j in found else "–" for j in JUDGES]
        out.append(
            f"| {name} | {effect(scenario, variant, e)} | {rate}, {p0:g} | " + " | ".join(vals) + " |"
        )
    print("\n".join(out))


if __name__ == "__main__":
    main()
