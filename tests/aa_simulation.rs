//! A/A simulation: the sequential error test, looked at every window through a 5 % → 25 %
//! rollout with per-request assignment, rolls back a canary no worse than the baseline in
//! fewer than α of 1000 seeded runs (statistics.md §2: Ville's inequality at any number of
//! looks), while a fixed-horizon test re-run at every window does not.

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
            if !(s.ci_ratio[0] <= 2.0 && 2.0 <= s.ci_ratio[1]) {
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
