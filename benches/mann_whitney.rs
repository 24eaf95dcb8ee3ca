//! Mann-Whitney U with the Hodges-Lehmann interval at 10², 10⁴ and 10⁶ samples per arm.
//!
//! The data are the same as `scripts/bench_scipy.py` times scipy on: exponential samples
//! from SplitMix64 streams (baseline seed 1, canary seed 2 scaled by 1.02), so the two
//! timings compare like with like. See docs/stats-speed.md for the numbers.

use std::hint::black_box;

use coalmine::analysis::hodges_lehmann;
use coalmine::analysis::mann_whitney::{
    Alternative, MannWhitneyConfig, Method, SortedSample, mann_whitney_sorted,
};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

/// `n` exponential(1) samples from the SplitMix64 stream `seed`, times `scale`.
fn samples(seed: u64, n: usize, scale: f64) -> Vec<f64> {
    (1..=n as u64)
        .map(|i| {
            let mut z = seed.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let u = (z >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
            -(1.0 - u).ln() * scale
        })
        .collect()
}

/// Everything from raw samples: sort each arm once, U and p-value, then the interval.
fn mann_whitney_with_interval(canary: &[f64], baseline: &[f64], method: Method) -> f64 {
    let c = SortedSample::new(canary);
    let b = SortedSample::new(baseline);
    let cfg = MannWhitneyConfig {
        method,
        ..MannWhitneyConfig::default()
    };
    let mw = mann_whitney_sorted(&c, &b, cfg).expect("non-empty arms");
    let shift = if mw.method == Method::Exact {
        hodges_lehmann::exact(&c, &b, 0.95, Alternative::TwoSided)
    } else {
        hodges_lehmann::asymptotic(&c, &b, 0.95, Alternative::TwoSided, true)
    }
    .expect("finite samples");
    mw.p_value + shift.estimate + shift.ci.0 + shift.ci.1
}

/// U and p-value only (what scipy.stats.mannwhitneyu computes).
fn mann_whitney_only(canary: &[f64], baseline: &[f64]) -> f64 {
    let c = SortedSample::new(canary);
    let b = SortedSample::new(baseline);
    let mw = mann_whitney_sorted(&c, &b, MannWhitneyConfig::default()).expect("non-empty");
    mw.p_value
}

fn bench(c: &mut Criterion) {
    for n in [100usize, 10_000, 1_000_000] {
        let baseline = samples(1, n, 1.0);
        let canary = samples(2, n, 1.02);
        let mut group = c.benchmark_group("mann_whitney");
        if n >= 1_000_000 {
            group.sample_size(10);
        }
        group.bench_with_input(BenchmarkId::new("u_and_hl_asymptotic", n), &n, |bch, _| {
            bch.iter(|| {
                mann_whitney_with_interval(
                    black_box(&canary),
                    black_box(&baseline),
                    Method::Asymptotic,
                )
            });
        });
        group.bench_with_input(BenchmarkId::new("u_only", n), &n, |bch, _| {
            bch.iter(|| mann_whitney_only(black_box(&canary), black_box(&baseline)));
        });
        group.bench_with_input(BenchmarkId::new("sort_only", n), &n, |bch, _| {
            bch.iter(|| {
                let a = SortedSample::new(black_box(&canary));
                let b = SortedSample::new(black_box(&baseline));
                a.len() + b.len()
            });
        });
        if n <= 100 {
            group.bench_with_input(BenchmarkId::new("u_and_hl_exact", n), &n, |bch, _| {
                bch.iter(|| {
                    mann_whitney_with_interval(
                        black_box(&canary),
                        black_box(&baseline),
                        Method::Exact,
                    )
                });
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
