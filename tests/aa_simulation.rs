//! A/A simulation: the sequential error test, looked at every window through a 5 % → 25 %
//! rollout with per-request assignment, rolls back a canary no worse than the baseline in
//! fewer than α of 1000 seeded runs (statistics.md §2: Ville's inequality at any number of
//! looks), while a fixed-horizon test re-run at every window does not. The latency judge
//! does the same on coarse (×2) buckets with an allowed ratio they cannot represent and at
//! the boundary of its null, and no verdict ever reports a bound that contradicts it.

use coalmine::analysis::errors::{EventJudge, EventJudgeSpec};
use coalmine::analysis::fisher::{ErrorTable, fisher_exact};
use coalmine::analysis::mann_whitney::Alternative;
use coalmine::analysis::{Counts, Observation, Outcome, Segment};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Binomial, Distribution, Poisson};

const RUNS: u64 = 1000;
const ALPHA: f64 = 0.05;
/// 60 windows of 10 s: 30 at 5 %, 30 at 25 %.
const WINDOWS: usize = 60;

struct Window {
    share: f64,
    requests: [u64; 2],
    errors: [u64; 2],
    /// The true error rate of both arms in this window.
    p: f64,
}

/// One run's windows: 100 req/s with a shared burst factor, a 0.5 % error rate on both arms.
fn windows(seed: u64) -> Vec<Window> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..WINDOWS)
        .map(|i| {
            let share = if i < WINDOWS / 2 { 0.05 } else { 0.25 };
            let load = 1000.0 * (0.5 + rng.random::<f64>());
            let n = Poisson::new(load).map_or(0.0, |d| d.sample(&mut rng)) as u64;
            let nc = Binomial::new(n, share).map_or(0, |d| d.sample(&mut rng));
            let nb = n - nc;
            // The error rate drifts with load, on both arms alike.
            let p = 0.005 * load / 1000.0;
            let eb = Binomial::new(nb, p).map_or(0, |d| d.sample(&mut rng));
            let ec = Binomial::new(nc, p).map_or(0, |d| d.sample(&mut rng));
            Window {
                share,
                requests: [nb, nc],
                errors: [eb, ec],
                p,
            }
        })
        .collect()
}

fn segment(w: &Window) -> Segment {
    let counts = |arm: usize| {
        Observation::Counts(Counts {
            events: w.errors[arm] as f64,
            trials: w.requests[arm] as f64,
        })
    };
    Segment {
        share: w.share,
        baseline: counts(0),
        canary: counts(1),
    }
}

#[test]
fn sequential_error_test_false_rollbacks_stay_under_alpha() {
    let mut rollbacks = 0;
    for seed in 0..RUNS {
        let mut spec = EventJudgeSpec::new(ALPHA);
        spec.intervals = false;
        let mut judge = EventJudge::new(spec);
        let failed = windows(seed)
            .iter()
            .any(|w| judge.observe("errors", &segment(w)).outcome == Outcome::Fail);
        rollbacks += u64::from(failed);
    }
    let rate = rollbacks as f64 / RUNS as f64;
    eprintln!("sequential A/A: {rollbacks} false rollbacks in {RUNS} runs");
    assert!(
        rate < ALPHA,
        "false rollbacks {rollbacks} of {RUNS} = {rate}"
    );
    // It is a real test: a twice-as-bad canary is caught in the same setting.
    let mut caught = 0;
    for seed in 0..100 {
        let mut judge = EventJudge::new(EventJudgeSpec::new(ALPHA));
        let failed = windows(10_000 + seed).iter().any(|w| {
            let mut w2 = Window {
                share: w.share,
                requests: w.requests,
                errors: w.errors,
                p: w.p,
            };
            // Double the canary's errors.
            w2.errors[1] *= 2;
            judge.observe("errors", &segment(&w2)).outcome == Outcome::Fail
        });
        caught += u64::from(failed);
    }
    eprintln!("sequential: caught {caught} of 100 doubled error rates");
    assert!(caught >= 90, "caught {caught} of 100 doubled error rates");
}

#[test]
fn a_fixed_horizon_test_looked_at_every_window_is_not_valid() {
    // The same A/A data, Fisher's exact test on the cumulative counts at every window:
    // the reason the default judge is sequential.
    let mut rollbacks = 0;
    for seed in 0..200 {
        let mut e = [0u64; 2];
        let mut n = [0u64; 2];
        let failed = windows(seed).iter().any(|w| {
            for arm in 0..2 {
                e[arm] += w.errors[arm];
                n[arm] += w.requests[arm];
            }
            let t = ErrorTable::from_totals(e[1], n[1], e[0], n[0]).expect("counts");
            fisher_exact(t, Alternative::Greater).p_value < ALPHA
        });
        rollbacks += u64::from(failed);
    }
    eprintln!("fixed horizon, every window: {rollbacks} false rollbacks in 200 runs");
    assert!(
        rollbacks as f64 / 200.0 > ALPHA,
        "repeated fixed-horizon looks: {rollbacks} of 200"
    );
}

#[test]
fn the_confidence_sequence_covers_the_true_ratio() {
    // A canary at twice the baseline's error rate, through the same 5 % → 25 % rollout:
    // the running-intersection interval for the rate ratio, computed at every window,
    // contains 2 at every window in at least 1 − α of runs (time-uniform coverage).
    let runs = 300;
    let mut covered = 0;
    for seed in 0..runs {
        let mut spec = EventJudgeSpec::new(ALPHA);
        spec.pass_ratio = f64::INFINITY;
        let mut judge = EventJudge::new(spec);
        let mut rng = SmallRng::seed_from_u64(50_000 + seed);
        let mut always = true;
        for w in windows(seed) {
            // Re-draw the canary's errors at twice the true rate.
            let ec = Binomial::new(w.requests[1], (2.0 * w.p).min(1.0))
                .map_or(0, |d| d.sample(&mut rng));
            let w2 = Window {
                share: w.share,
                requests: w.requests,
                errors: [w.errors[0], ec],
                p: w.p,
            };
            let v = judge.observe("errors", &segment(&w2));
            let coalmine::analysis::Stats::ErrorEvents(s) = v.stats else {
                panic!("error stats")
            };
            // The two-sided interval, and the lower bound the test itself implies.
            if !(s.ci_ratio[0] <= 2.0 && 2.0 <= s.ci_ratio[1]) || s.lower_bound >= 2.0 {
                always = false;
            }
        }
        covered += u64::from(always);
    }
    eprintln!("the interval covered the true ratio throughout in {covered} of {runs} runs");
    assert!(
        covered as f64 >= (1.0 - ALPHA) * runs as f64,
        "{covered} of {runs}"
    );
}

// ---------------------------------------------------------------------------------------
// Latency: the sequential judge on histograms.

use coalmine::analysis::Histogram;
use coalmine::analysis::Stats;
use coalmine::analysis::histogram::{log_bounds, log_bucket_index};
use coalmine::analysis::latency::{LatencyJudge, LatencyJudgeSpec, LatencyTest};
use rand_distr::LogNormal;

/// Classic Prometheus buckets doubling at each bound: 5 ms … 40.96 s, then `+∞`.
fn doubling_bounds() -> Vec<f64> {
    let mut b: Vec<f64> = (0..14).map(|i| 0.005 * 2f64.powi(i)).collect();
    b.push(f64::INFINITY);
    b
}

#[derive(Clone, Copy)]
enum Buckets {
    /// The built-in proxy's, 9 % apart.
    Fine,
    /// ×2 apart.
    Doubling,
}

impl Buckets {
    fn bounds(self) -> Vec<f64> {
        match self {
            Buckets::Fine => log_bounds(),
            Buckets::Doubling => doubling_bounds(),
        }
    }

    fn index(self, bounds: &[f64], x: f64) -> usize {
        match self {
            Buckets::Fine => log_bucket_index(x),
            Buckets::Doubling => bounds.partition_point(|b| *b < x).min(bounds.len() - 1),
        }
    }
}

/// One window of latency histograms: `n` requests (both arms) at canary share `w`, a
/// log-normal body (σ 0.5) with median `median` shared by both arms, the canary `slowdown`
/// times slower.
fn latency_segment(
    rng: &mut SmallRng,
    buckets: Buckets,
    n: u64,
    w: f64,
    median: f64,
    slowdown: f64,
) -> Segment {
    latency_segment_with(rng, buckets, n, w, median, &|x| x * slowdown)
}

/// [`latency_segment`] with the canary's latency `canary(x)` for a baseline-distributed x.
fn latency_segment_with(
    rng: &mut SmallRng,
    buckets: Buckets,
    n: u64,
    w: f64,
    median: f64,
    canary_of: &dyn Fn(f64) -> f64,
) -> Segment {
    let bounds = buckets.bounds();
    let mut counts = [vec![0.0; bounds.len()], vec![0.0; bounds.len()]];
    let body = LogNormal::new(median.ln(), 0.5).expect("log-normal");
    let total = Poisson::new(n as f64).map_or(0.0, |d| d.sample(rng)) as u64;
    for _ in 0..total {
        let canary = rng.random::<f64>() < w;
        let x = body.sample(rng);
        let x = if canary { canary_of(x) } else { x };
        counts[usize::from(canary)][buckets.index(&bounds, x)] += 1.0;
    }
    let [b, c] = counts;
    Segment {
        share: w,
        baseline: Observation::Histogram(Histogram::try_new(bounds.clone(), b).expect("hist")),
        canary: Observation::Histogram(Histogram::try_new(bounds, c).expect("hist")),
    }
}

/// Runs one latency rollout (30 windows at 5 %, 30 at 25 %, load and the shared median
/// drifting over time; even seeds read a baseline history first) and returns whether it
/// failed.
fn latency_run(seed: u64, buckets: Buckets, spec: &LatencyJudgeSpec, slowdown: f64) -> bool {
    latency_run_with(seed, buckets, spec, &|x| x * slowdown)
}

/// [`latency_run`] with the canary's latency `canary(x)` for a baseline-distributed x.
fn latency_run_with(
    seed: u64,
    buckets: Buckets,
    spec: &LatencyJudgeSpec,
    canary: &dyn Fn(f64) -> f64,
) -> bool {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut judge = LatencyJudge::new(spec.clone());
    if seed.is_multiple_of(2) {
        // Half the runs first read the baseline's history, as the default policy does
        // (`baseline_history`), and from a quieter time than the rollout's (median 30 %
        // lower): the bets it sets are off, and the test must stay valid all the same.
        let history = latency_segment_with(&mut rng, buckets, 10_000, 0.0, 0.021, &|x| x);
        judge.learn_history(std::slice::from_ref(&history));
    }
    (0..WINDOWS).any(|i| {
        let w = if i < WINDOWS / 2 { 0.05 } else { 0.25 };
        let load = 500.0 * (0.5 + rng.random::<f64>());
        // Both arms slow down and speed up together (a shared dependency): drift cancels.
        let median = 0.03 * (1.0 + 0.5 * (i as f64 / 10.0).sin());
        let seg = latency_segment_with(&mut rng, buckets, load as u64, w, median, canary);
        judge.observe("latency", &seg).outcome == Outcome::Fail
    })
}

/// Both latency tests with these settings.
fn both_tests(alpha: f64, allowed: f64) -> [LatencyJudgeSpec; 2] {
    [LatencyTest::Buckets, LatencyTest::SlowThresholds].map(|t| {
        let mut s = LatencyJudgeSpec::new(alpha);
        s.test = t;
        s.allowed_ratio = allowed;
        s
    })
}

/// How many of the runs with these seeds fail.
fn latency_rollbacks(
    seeds: std::ops::Range<u64>,
    buckets: Buckets,
    spec: &LatencyJudgeSpec,
    slowdown: f64,
) -> u64 {
    seeds
        .map(|seed| u64::from(latency_run(seed, buckets, spec, slowdown)))
        .sum()
}

#[test]
fn latency_false_rollbacks_stay_under_alpha_with_coarse_buckets() {
    // allowed_ratio 1.1 on ×2 buckets is judged at ×1.0 (never looser than the policy), so
    // same-latency canaries are the boundary of the null it tests: still at most α.
    let runs = 500;
    for spec in both_tests(ALPHA, 1.1) {
        let rollbacks = latency_rollbacks(0..runs, Buckets::Doubling, &spec, 1.0);
        eprintln!(
            "{:?} A/A, ×2 buckets: {rollbacks} false rollbacks in {runs} runs",
            spec.test
        );
        assert!(
            (rollbacks as f64) < ALPHA * runs as f64,
            "{:?}: false rollbacks {rollbacks} of {runs}",
            spec.test
        );
        // And it is a real test at that resolution: 1.5× slower canaries are caught.
        let caught = latency_rollbacks(20_000..20_100, Buckets::Doubling, &spec, 1.5);
        eprintln!(
            "{:?} ×1.5 under allowed_ratio 1.1, ×2 buckets: caught {caught} of 100",
            spec.test
        );
        assert!(caught >= 90, "{:?}: caught {caught} of 100", spec.test);
    }
}

#[test]
fn latency_false_rollbacks_stay_under_alpha_on_fine_buckets() {
    let runs = 500;
    for spec in both_tests(ALPHA, 1.0) {
        let rollbacks = latency_rollbacks(100_000..100_000 + runs, Buckets::Fine, &spec, 1.0);
        eprintln!(
            "{:?} A/A, built-in buckets: {rollbacks} false rollbacks in {runs} runs",
            spec.test
        );
        assert!(
            (rollbacks as f64) < ALPHA * runs as f64,
            "{:?}: {rollbacks} of {runs}",
            spec.test
        );
    }
}

#[test]
fn latency_canaries_faster_somewhere_are_in_the_null() {
    // The null is composite: every canary at most as slow as the baseline in the stochastic
    // order, not only equal ones. Faster everywhere (×0.8), or faster only above the p90 or
    // the p99 and piled up just there (a non-monotone bet would punish that pile-up), or
    // faster only in its fastest half: each rolls back at most α of the time.
    let q90 = 0.03 * (0.5 * 1.2816f64).exp();
    let q99 = 0.03 * (0.5 * 2.3263f64).exp();
    let q50 = 0.03;
    let cases: [(&str, &dyn Fn(f64) -> f64); 4] = [
        ("×0.8 everywhere", &|x| 0.8 * x),
        ("tail above p90 ×0.7", &move |x| {
            if x > q90 { q90.max(0.7 * x) } else { x }
        }),
        // Piled up at the p99, between the tail step bets' thresholds (p98.5, p99, p99.5).
        ("tail above p99 ×0.7", &move |x| {
            if x > q99 { q99.max(0.7 * x) } else { x }
        }),
        ("fastest half ×0.7", &move |x| {
            if x < q50 { 0.7 * x } else { x }
        }),
    ];
    let runs = 300;
    for spec in both_tests(ALPHA, 1.0) {
        for (k, (what, canary)) in cases.iter().enumerate() {
            let base = 200_000 + 1000 * k as u64;
            let rollbacks = (base..base + runs)
                .filter(|s| latency_run_with(*s, Buckets::Fine, &spec, canary))
                .count();
            eprintln!("{:?} {what}: {rollbacks} rollbacks in {runs}", spec.test);
            assert!(
                (rollbacks as f64) < ALPHA * runs as f64,
                "{:?} {what}: {rollbacks} of {runs}",
                spec.test
            );
        }
    }
}

#[test]
fn latency_allowed_slowdown_at_the_boundary_stays_under_alpha() {
    // A canary exactly as slow as allowed (×2 on ×2 buckets, the largest slowdown of the
    // null) rolls back at most α of the time.
    let runs = 300;
    for spec in both_tests(ALPHA, 2.0) {
        let rollbacks = latency_rollbacks(40_000..40_000 + runs, Buckets::Doubling, &spec, 2.0);
        eprintln!(
            "{:?} at the allowed ×2, ×2 buckets: {rollbacks} rollbacks in {runs} runs",
            spec.test
        );
        assert!(
            (rollbacks as f64) < ALPHA * runs as f64,
            "{:?}: rollbacks {rollbacks} of {runs}",
            spec.test
        );
    }
}

/// The invariant of issue 10, item 6, over many simulated rollouts of every kind (healthy,
/// improved, regressed; errors and latency; fine and coarse buckets): no verdict contradicts
/// its own numbers. Fail ⇒ the bound it reports excludes the allowed ratio; Pass ⇒ the
/// upper bound it reports is below the pass ratio.
#[test]
fn fail_and_pass_bounds_never_contradict_the_verdict() {
    let (mut fails, mut passes) = (0, 0);
    // Errors: rate ratios from an improvement to a clear regression, allowed 1 or 1.5.
    for (k, &(ratio, allowed)) in [(0.5, 1.0), (1.0, 1.0), (1.3, 1.0), (2.0, 1.0), (3.0, 1.5)]
        .iter()
        .enumerate()
    {
        for seed in 0..40 {
            let mut spec = EventJudgeSpec::new(0.01);
            spec.allowed_ratio = allowed;
            spec.pass_ratio = allowed * 1.5;
            let mut judge = EventJudge::new(spec);
            let mut rng = SmallRng::seed_from_u64(60_000 + 100 * k as u64 + seed);
            for w in windows(seed) {
                let p = (w.p * ratio).min(1.0);
                let ec = Binomial::new(w.requests[1], p).map_or(0, |d| d.sample(&mut rng));
                let w2 = Window {
                    share: w.share,
                    requests: w.requests,
                    errors: [w.errors[0], ec],
                    p: w.p,
                };
                let v = judge.observe("errors", &segment(&w2));
                let Stats::ErrorEvents(s) = v.stats else {
                    panic!("error stats")
                };
                match v.outcome {
                    Outcome::Fail => {
                        fails += 1;
                        assert!(
                            s.lower_bound > allowed && s.ci_ratio[0] > allowed,
                            "Fail with bound {} / interval {:?} for allowed {allowed}: {}",
                            s.lower_bound,
                            s.ci_ratio,
                            v.reason
                        );
                        break;
                    }
                    Outcome::Pass => {
                        passes += 1;
                        assert!(s.ci_ratio[1] < allowed * 1.5, "{}", v.reason);
                    }
                    _ => {}
                }
            }
        }
    }
    // Latency: (buckets, allowed, slowdown); 2 on ×2 buckets and 1 are representable.
    let cases = [
        (Buckets::Fine, 1.0, 1.0),
        (Buckets::Fine, 1.0, 0.9),
        (Buckets::Fine, 1.0, 1.3),
        (Buckets::Fine, 1.1, 1.5),
        (Buckets::Doubling, 2.0, 3.0),
        (Buckets::Doubling, 1.1, 1.5),
        (Buckets::Doubling, 1.0, 1.0),
    ];
    for (k, &(buckets, allowed, slowdown)) in cases.iter().enumerate() {
        for seed in 0..30 {
            let mut spec = both_tests(0.01, allowed)[(seed % 2) as usize].clone();
            spec.pass_ratio = 1.25 * allowed;
            let mut judge = LatencyJudge::new(spec);
            let mut rng = SmallRng::seed_from_u64(70_000 + 100 * k as u64 + seed);
            for i in 0..40 {
                // Heavy traffic at 50 % late on, so that Passes happen too.
                let (n, w) = if i < 20 { (2_000, 0.05) } else { (20_000, 0.5) };
                let seg = latency_segment(&mut rng, buckets, n, w, 0.03, slowdown);
                let v = judge.observe("latency", &seg);
                let Stats::SlowEvents(s) = v.stats else {
                    panic!("latency stats")
                };
                match v.outcome {
                    Outcome::Fail => {
                        fails += 1;
                        let lower = s.slowdown_lower.expect("a Fail reports its bound");
                        // The test rejects every slowdown up to `lower`; it is at least the
                        // margin judged at, which is the allowed ratio wherever the buckets
                        // represent it, and the reason says so where they do not.
                        assert!(lower >= s.effective_ratio, "{}", v.reason);
                        if s.effective_ratio < allowed {
                            assert!(v.reason.contains("is finer than the histogram's buckets"));
                        } else {
                            assert!(lower >= allowed, "{}", v.reason);
                        }
                        break;
                    }
                    Outcome::Pass => {
                        passes += 1;
                        let u = s.slowdown_upper.expect("a Pass reports its bound");
                        assert!(u < 1.25 * allowed, "{}", v.reason);
                    }
                    _ => {}
                }
            }
        }
    }
    eprintln!("{fails} Fail and {passes} Pass verdicts checked");
    assert!(fails > 50 && passes > 50, "{fails} fails, {passes} passes");
}

#[test]
fn latency_pass_is_rare_for_a_canary_as_slow_as_the_pass_ratio() {
    // The pass side's guarantee: a canary exactly pass_ratio (1.25) times slower passes in
    // at most α of rollouts (fine buckets, where 1.25 falls between bounds), while a
    // same-latency canary passes in most of them.
    let runs = 300;
    let mut spec = LatencyJudgeSpec::new(ALPHA);
    spec.allowed_ratio = 3.0; // out of the way: only the pass side is under test
    spec.pass_ratio = 1.25;
    // The pass side is shared by both tests: run it with the default one.
    let passes = |slowdown: f64, base: u64| {
        (0..runs)
            .filter(|seed| {
                let mut rng = SmallRng::seed_from_u64(base + seed);
                let mut judge = LatencyJudge::new(spec.clone());
                (0..WINDOWS).any(|i| {
                    let w = if i < WINDOWS / 2 { 0.05 } else { 0.25 };
                    let load = 2000.0 * (0.5 + rng.random::<f64>());
                    let seg =
                        latency_segment(&mut rng, Buckets::Fine, load as u64, w, 0.03, slowdown);
                    judge.observe("latency", &seg).outcome == Outcome::Pass
                })
            })
            .count()
    };
    let bad = passes(1.25, 80_000);
    let good = passes(1.0, 90_000);
    eprintln!("passes: ×1.25 canary {bad} of {runs}, same-latency canary {good} of {runs}");
    assert!((bad as f64) < ALPHA * runs as f64, "{bad} of {runs}");
    assert!(good as f64 > 0.5 * runs as f64, "{good} of {runs}");
}
