//! Whole rollouts through the runner under paused time (mock provider and source): a
//! baseline that dies, a weight changed by hand, a policy of series metrics only.

use std::time::Duration;

use crate::analysis::Observation;
use crate::controller::machine::Reason;
use crate::controller::runner::{FinalOutcome, Lever, Quiet, RunOptions, RunReport, run};
use crate::metrics::mock::{Answer, MockSource};
use crate::model::Weight;
use crate::policy;
use crate::traffic::mock::MockTrafficProvider;

use super::{TIMING, policy_with, w};

const ERRORS: &str = "[[metric]]\nname = \"errors\"\nbuiltin = \"errors\"\n\
                      [[metric]]\nname = \"ceiling\"\nbuiltin = \"errors\"\njudge = \"threshold\"\nmax = 0.2\n";

fn rates(baseline: f64, canary: f64) -> Answer {
    Answer::Rates {
        baseline,
        canary,
        requests: 2000.0,
    }
}

/// The same script for both metrics (they read the same counts).
fn source(script: Vec<Answer>) -> MockSource {
    let s = MockSource::new();
    s.script("errors", script.clone());
    s.script("ceiling", script);
    s
}

fn records(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn run_logged(
    policy: &policy::Policy,
    traffic: &MockTrafficProvider,
    source: &MockSource,
    levers: Option<tokio::sync::mpsc::UnboundedReceiver<Lever>>,
) -> (RunReport, Vec<serde_json::Value>) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("d.jsonl");
    let opts = RunOptions {
        decisions: Some(log.clone()),
        levers,
        ..RunOptions::default()
    };
    let report = run(policy, traffic, source, opts, &mut Quiet)
        .await
        .expect("the run starts");
    (report, records(&log))
}

#[tokio::test(start_paused = true)]
async fn a_baseline_that_dies_mid_rollout_is_never_promoted_against() {
    // Healthy for three windows, then every baseline request fails; the canary stays fine.
    let policy = policy_with(TIMING, ERRORS);
    let traffic = MockTrafficProvider::new();
    let mut script = vec![rates(0.01, 0.01); 3];
    script.push(rates(1.0, 0.01));
    let (report, recs) = run_logged(&policy, &traffic, &source(script), None).await;
    let FinalOutcome::RolledBack {
        reason: Reason::Deadline { waiting, .. },
    } = &report.outcome
    else {
        panic!("{:?}", report.outcome)
    };
    assert!(
        waiting.contains("baseline unhealthy: 100% errors"),
        "{waiting}"
    );
    assert_eq!(
        traffic.calls(),
        vec![w(5.0), Weight::ZERO],
        "never advanced"
    );
    assert!(recs.iter().all(|r| r["decision"]["action"] != "promote"));
    let notified: Vec<&serde_json::Value> = recs
        .iter()
        .filter(|r| r["event"] == "baseline-unhealthy")
        .collect();
    assert_eq!(notified.len(), 1, "notified once");
    let tick = recs
        .iter()
        .find(|r| r["kind"] == "tick" && r["baseline"]["state"] == "unhealthy")
        .expect("ticks record the baseline's health");
    assert_eq!(tick["metrics"][0]["outcome"], "inconclusive");
    assert!(
        tick["metrics"][0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("not judged this window: baseline unhealthy"),
        "{tick}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dead_baseline_does_not_blind_the_judge_after_it_recovers() {
    // Dead for five windows (the canary looks far better than a dead baseline), then the
    // baseline recovers and the canary is really 10× worse. Had the dead windows been fed
    // to the e-process, its evidence for "canary worse" would have been crushed and the bad
    // canary would hold until the deadline; left out, it fails within a few windows.
    let policy = policy_with(
        TIMING,
        "[[metric]]\nname = \"errors\"\nbuiltin = \"errors\"\n",
    );
    let traffic = MockTrafficProvider::new();
    let mut script = vec![rates(1.0, 0.01); 5];
    script.push(rates(0.01, 0.1));
    let s = MockSource::new();
    s.script("errors", script);
    let (report, _) = run_logged(&policy, &traffic, &s, None).await;
    assert!(
        matches!(&report.outcome, FinalOutcome::RolledBack { reason: Reason::MetricFailed { metric, .. } } if metric == "errors"),
        "{:?}",
        report.outcome
    );
    assert!(report.duration_s < 200.0, "{}", report.duration_s);
}

#[tokio::test(start_paused = true)]
async fn both_arms_dead_is_never_promoted() {
    let policy = policy_with(TIMING, ERRORS.replace("max = 0.2", "max = 1.0").as_str());
    let traffic = MockTrafficProvider::new();
    let (report, recs) = run_logged(&policy, &traffic, &source(vec![rates(1.0, 1.0)]), None).await;
    assert!(
        matches!(
            report.outcome,
            FinalOutcome::RolledBack {
                reason: Reason::Deadline { .. }
            }
        ),
        "{:?}",
        report.outcome
    );
    assert_eq!(traffic.calls(), vec![w(5.0), Weight::ZERO]);
    assert!(recs.iter().all(|r| r["decision"]["action"] != "advance"));
}

#[tokio::test(start_paused = true)]
async fn a_weight_set_by_hand_is_never_overwritten_and_resume_puts_the_plan_back() {
    let policy = policy_with(TIMING, ERRORS);
    let traffic = MockTrafficProvider::new();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let human = traffic.clone();
    tokio::spawn(async move {
        // In the 25 % step, someone sets 0 % by hand; 20 minutes later (past the 10 minute
        // deadline) an operator resumes.
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if human.weight() == w(25.0) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(15)).await;
        human.force(Weight::ZERO);
        tokio::time::sleep(Duration::from_secs(1200)).await;
        assert_eq!(
            human.weight(),
            Weight::ZERO,
            "never overwritten while paused"
        );
        tx.send(Lever::Resume).unwrap();
    });
    let (report, recs) = run_logged(
        &policy,
        &traffic,
        &source(vec![rates(0.01, 0.01)]),
        Some(rx),
    )
    .await;
    assert_eq!(report.outcome, FinalOutcome::Promoted, "{recs:#?}");
    // 5 %, 25 %, then nothing until the resume put 25 % back, then 100 %.
    assert_eq!(
        traffic.calls(),
        vec![w(5.0), w(25.0), w(25.0), Weight::FULL]
    );
    let paused = recs
        .iter()
        .find(|r| r["event"] == "paused")
        .expect("a paused record");
    let detail = paused["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("weight 0% in force, 25% applied at 20"),
        "{detail}"
    );
    let holds = recs
        .iter()
        .filter(|r| r["kind"] == "tick" && r["phase"] == "paused")
        .count();
    assert!(holds > 100, "ticks go on while paused: {holds}");
    assert!(recs.iter().any(|r| r["event"] == "resumed"));
}

#[tokio::test(start_paused = true)]
async fn a_policy_of_series_metrics_only_can_promote() {
    // Kayenta-style: mann-whitney metrics report no request counts; the scorecard's
    // min_points governs instead of min_requests.
    let metrics = "[[metric]]\nname = \"errors\"\nbuiltin = \"errors\"\njudge = \"mann-whitney\"\n\
                   direction = \"increase\"\n[scoring]\nmin_points = 3\n";
    let policy = policy_with(&format!("{TIMING}\nadvance = \"pass\""), metrics);
    let s = MockSource::new();
    s.script(
        "errors",
        (0..40)
            .map(|i| {
                let x = 0.01 + f64::from(i % 7) * 0.001;
                Answer::Data(Observation::Series(vec![x]), Observation::Series(vec![x]))
            })
            .collect(),
    );
    let traffic = MockTrafficProvider::new();
    let (report, _) = run_logged(&policy, &traffic, &s, None).await;
    assert_eq!(report.outcome, FinalOutcome::Promoted);
    assert_eq!(traffic.calls(), vec![w(5.0), w(25.0), Weight::FULL]);
}

/// A feature-flag service: `PUT /flag` with `{"rollout": N}` sets the percentage, `GET /flag`
/// returns it; a person can set it by hand through `pct`. PUTs are logged.
struct Flags {
    fake: crate::traffic::fake_http::FakeHttp,
    pct: std::sync::Arc<std::sync::Mutex<f64>>,
}

async fn flags() -> Flags {
    let pct = std::sync::Arc::new(std::sync::Mutex::new(0.0_f64));
    let p = pct.clone();
    let fake = crate::traffic::fake_http::FakeHttp::start(move |r| match r.method.as_str() {
        "PUT" => {
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
            *p.lock().unwrap() = v["rollout"].as_f64().unwrap_or(-1.0);
            (204, String::new())
        }
        _ => (200, format!(r#"{{"rollout":{}}}"#, p.lock().unwrap())),
    })
    .await;
    Flags { fake, pct }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_provider_a_flag_set_to_zero_by_hand_is_never_overwritten() {
    let f = flags().await;
    let text = format!(
        "name = \"flag\"\n[rollout]\nsteps = [10, 25, 100]\nstep_duration = \"2s\"\n\
         analysis_interval = \"150ms\"\nmin_requests = 10\ndeadline = \"5s\"\n\
         [traffic]\ntype = \"http\"\nmethod = \"PUT\"\nurl = \"{url}\"\n\
         body = '{{\"rollout\": {{{{percent}}}}}}'\nresolution = 1\nread_url = \"{url}\"\n\
         read_pointer = \"/rollout\"\n[metrics]\ntype = \"prometheus\"\nurl = \"http://127.0.0.1:1\"\n\
         [[metric]]\nname = \"errors\"\nevents = 'e{{track=\"{{{{arm}}}}\"}}'\n\
         trials = 't{{track=\"{{{{arm}}}}\"}}'\n",
        url = f.fake.url("/flag")
    );
    let policy = policy::parse(&text, "flag.toml").unwrap_or_else(|d| panic!("{d}"));
    let built = crate::traffic::build(&policy.traffic).await.unwrap();
    let s = MockSource::new();
    s.script("errors", vec![rates(0.01, 0.01)]);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("d.jsonl");
    let opts = RunOptions {
        decisions: Some(log.clone()),
        levers: Some(rx),
        ..RunOptions::default()
    };
    let rollout = tokio::spawn(async move {
        run(&policy, &built.provider, &s, opts, &mut Quiet)
            .await
            .unwrap()
    });
    // Wait for the 25 % step, then set the flag to 0 % by hand.
    let waited = tokio::time::Instant::now();
    while (*f.pct.lock().unwrap() - 25.0).abs() > 1e-9 {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "never reached 25%"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    *f.pct.lock().unwrap() = 0.0;
    let puts_before = f.fake.take().iter().filter(|r| r.method == "PUT").count();
    assert_eq!(puts_before, 2, "10 % then 25 %");
    // (The step lasts 2 s: the change lands long before the step could end.) Past the 5 s
    // deadline and several steps' worth of time: nothing is written.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(*f.pct.lock().unwrap(), 0.0, "the hand-set 0% stays");
    let puts: Vec<String> = f
        .fake
        .take()
        .into_iter()
        .filter(|r| r.method == "PUT")
        .map(|r| r.body)
        .collect();
    assert!(puts.is_empty(), "overwritten: {puts:?}");
    assert!(
        !rollout.is_finished(),
        "no rollback behind the operator's back"
    );
    let recs = records(&log);
    let paused = recs
        .iter()
        .find(|r| r["event"] == "paused")
        .expect("paused and said so");
    assert!(
        paused["detail"]
            .as_str()
            .unwrap()
            .starts_with("weight 0% in force, 25% applied at "),
        "{paused}"
    );
    // The operator resumes: the plan goes on and promotes within its own time.
    tx.send(Lever::Resume).unwrap();
    let report = tokio::time::timeout(Duration::from_secs(15), rollout)
        .await
        .expect("finishes")
        .unwrap();
    assert_eq!(report.outcome, FinalOutcome::Promoted);
    assert_eq!(*f.pct.lock().unwrap(), 100.0);
}

#[tokio::test(start_paused = true)]
async fn a_change_right_after_coalmines_own_is_not_retried_over() {
    // coalmine sets 25 %, and before its read-back someone sets 0 %: a retry would override
    // them. It pauses instead, and nothing is set again until the deadline has long passed.
    let policy = policy_with(TIMING, ERRORS);
    let traffic = MockTrafficProvider::new();
    traffic.script([
        crate::traffic::mock::Behaviour::Ok,
        crate::traffic::mock::Behaviour::Overridden(Weight::ZERO),
    ]);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let t = traffic.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(t.weight(), Weight::ZERO, "never overwritten");
        tx.send(Lever::Resume).unwrap();
    });
    let (report, recs) = run_logged(
        &policy,
        &traffic,
        &source(vec![rates(0.01, 0.01)]),
        Some(rx),
    )
    .await;
    assert_eq!(report.outcome, FinalOutcome::Promoted, "after the resume");
    assert_eq!(
        traffic.calls(),
        vec![w(5.0), w(25.0), w(25.0), Weight::FULL]
    );
    assert!(recs.iter().any(|r| r["event"] == "preempted"), "{recs:#?}");
    assert!(recs.iter().any(|r| r["event"] == "paused"));
}

/// The runner's loop is a resumable step: one task drives two rollouts, waking each at its
/// own tick, and each ends as a `run` of the same inputs does (issue 12's daemon shape).
#[tokio::test(start_paused = true)]
async fn one_loop_drives_two_rollouts_through_reconcile_steps_as_run_does() {
    use crate::controller::runner::{Reconciler, Wake};
    use crate::controller::store::FileStore;
    let policy = policy_with(TIMING, ERRORS);
    let inputs = || {
        let good = source(vec![rates(0.01, 0.01)]);
        let bad = source(vec![rates(0.01, 0.01), rates(0.01, 0.01), rates(0.01, 0.3)]);
        (good, bad)
    };
    // Alone, through `run`.
    let (good, bad) = inputs();
    let (tg, tb) = (MockTrafficProvider::new(), MockTrafficProvider::new());
    let (alone_good, _) = run_logged(&policy, &tg, &good, None).await;
    let (alone_bad, _) = run_logged(&policy, &tb, &bad, None).await;
    assert_eq!(alone_good.outcome, FinalOutcome::Promoted);
    assert!(matches!(alone_bad.outcome, FinalOutcome::RolledBack { .. }));
    // Together, in one loop.
    let (good, bad) = inputs();
    let (ug, ub) = (MockTrafficProvider::new(), MockTrafficProvider::new());
    let (mut qg, mut qb) = (Quiet, Quiet);
    let start = |t, s, q| {
        Reconciler::<_, _, FileStore>::start(&policy, t, s, None, RunOptions::default(), q)
    };
    let mut g = start(&ug, &good, &mut qg).await.unwrap();
    let mut b = start(&ub, &bad, &mut qb).await.unwrap();
    let mut steps = 0;
    while !(g.finished() && b.finished()) {
        let next = [&g, &b]
            .iter()
            .filter(|r| !r.finished())
            .map(|r| r.wake_at())
            .min()
            .unwrap();
        tokio::time::sleep_until(next).await;
        for r in [&mut g, &mut b] {
            if !r.finished() && r.wake_at() <= tokio::time::Instant::now() {
                r.reconcile(Wake::Tick).await;
                steps += 1;
            }
        }
    }
    assert!(steps > 10, "{steps} reconcile steps");
    let (together_good, together_bad) = (g.finish().await, b.finish().await);
    assert_eq!(together_good.outcome, alone_good.outcome);
    assert_eq!(together_bad.outcome, alone_bad.outcome);
    assert_eq!(ug.calls(), tg.calls());
    assert_eq!(ub.calls(), tb.calls());
    assert_eq!(together_good.ticks, alone_good.ticks);
    assert_eq!(together_bad.ticks, alone_bad.ticks);
}

// ---- the baseline's history before the first traffic change ----

const LATENCY: &str =
    "[[metric]]\nname = \"latency\"\nbuiltin = \"latency\"\njudge = \"sequential\"\n";

/// `n` requests spread evenly over 20 built-in buckets from bucket `from` (5 buckets up is
/// about ×1.5 slower).
fn latency(n: f64, from: usize) -> Observation {
    let bounds = crate::analysis::histogram::log_bounds();
    let counts = (0..bounds.len())
        .map(|i| {
            if (from..from + 20).contains(&i) {
                n / 20.0
            } else {
                0.0
            }
        })
        .collect();
    Observation::Histogram(crate::analysis::Histogram::try_new(bounds, counts).unwrap())
}

/// Windows of 190 baseline and 10 canary requests, the canary `shift` buckets slower; the
/// history read answers `history` (none: the source cannot look back).
fn latency_source(shift: usize, history: Option<Answer>) -> MockSource {
    let s = MockSource::new();
    s.script(
        "latency",
        vec![Answer::Data(latency(190.0, 60), latency(10.0, 60 + shift))],
    );
    if let Some(h) = history {
        s.script_history("latency", h);
    }
    s
}

fn history_record(records: &[serde_json::Value]) -> (usize, &serde_json::Value) {
    records
        .iter()
        .enumerate()
        .find(|(_, r)| r["event"] == "baseline-history")
        .expect("a baseline-history record")
}

#[tokio::test(start_paused = true)]
async fn the_baseline_history_is_recorded_before_any_traffic_and_speeds_the_first_bets() {
    // A ×1.3 slower canary (3 buckets up), 10 of its requests per window.
    let policy = policy_with(TIMING, LATENCY);
    let history = Answer::Data(latency(20_000.0, 60), Observation::Missing);
    let (with, recs) = run_logged(
        &policy,
        &MockTrafficProvider::new(),
        &latency_source(3, Some(history)),
        None,
    )
    .await;
    let (without, recs_without) = run_logged(
        &policy,
        &MockTrafficProvider::new(),
        &latency_source(3, None),
        None,
    )
    .await;
    for r in [&with, &without] {
        assert!(
            matches!(&r.outcome, FinalOutcome::RolledBack { reason: Reason::MetricFailed { metric, .. } } if metric == "latency"),
            "{:?}",
            r.outcome
        );
    }
    assert!(
        with.ticks < without.ticks,
        "with the history {} ticks, without {}",
        with.ticks,
        without.ticks
    );
    // Recorded before the first traffic change, with what was read (a backtest replays it).
    let (at, h) = history_record(&recs);
    let first_traffic = recs
        .iter()
        .position(|r| r["weight"].as_f64().is_some_and(|w| w > 0.0))
        .expect("traffic was shifted");
    assert!(at < first_traffic, "{h}");
    let detail = h["detail"].as_str().unwrap();
    assert!(
        detail.contains("20000 baseline requests in the 5m"),
        "{detail}"
    );
    assert_eq!(h["metrics"][0]["metric"], "latency");
    assert!(!h["metrics"][0]["observed"].as_array().unwrap().is_empty());
    let (_, h) = history_record(&recs_without);
    let detail = h["detail"].as_str().unwrap();
    assert!(detail.contains("cannot look back"), "{detail}");
    assert!(h["metrics"].as_array().is_none_or(Vec::is_empty), "{h}");
}

#[tokio::test(start_paused = true)]
async fn a_failed_history_read_is_recorded_and_the_rollout_goes_on() {
    let policy = policy_with(TIMING, LATENCY);
    let (report, recs) = run_logged(
        &policy,
        &MockTrafficProvider::new(),
        &latency_source(0, Some(Answer::Unreachable)),
        None,
    )
    .await;
    assert_eq!(report.outcome, FinalOutcome::Promoted);
    let (_, h) = history_record(&recs);
    let detail = h["detail"].as_str().unwrap();
    assert!(
        detail.contains("not read") && detail.contains("data-free prior"),
        "{detail}"
    );
    // Not read at all when the policy says so.
    let policy = policy_with(&format!("{TIMING}\nbaseline_history = \"0s\""), LATENCY);
    let history = Answer::Data(latency(20_000.0, 60), Observation::Missing);
    let (report, recs) = run_logged(
        &policy,
        &MockTrafficProvider::new(),
        &latency_source(0, Some(history)),
        None,
    )
    .await;
    assert_eq!(report.outcome, FinalOutcome::Promoted);
    assert!(recs.iter().all(|r| r["event"] != "baseline-history"));
}

/// A controller that takes over a rollout still in its pre-checks runs them again, history
/// read included; the judges then hold that read once, not twice (the record can have been
/// written after the first read: a SIGTERM's checkpoint during the second metric's read).
#[tokio::test(start_paused = true)]
async fn a_takeover_in_the_pre_checks_learns_the_history_once_not_twice() {
    use crate::controller::machine::Phase;
    let policy = policy_with(TIMING, LATENCY);
    let history = Answer::Data(latency(20_000.0, 60), Observation::Missing);
    let f = super::Fixture::new(policy, latency_source(3, Some(history)));
    drop(f.start(None).await);
    let once = f.stored().await;
    assert!(
        !matches!(once.phase, Phase::Pending | Phase::PreChecks),
        "{:?}",
        once.phase
    );
    let judges =
        |s: &crate::controller::store::RolloutState| serde_json::to_string(&s.judges.0).unwrap();
    // The same record as if written in the pre-checks, after the history was read.
    let mut at_checks = once.clone();
    at_checks.phase = Phase::PreChecks;
    drop(f.start(Some(at_checks)).await);
    let again = f.stored().await;
    assert!(
        !matches!(again.phase, Phase::PreChecks),
        "{:?}",
        again.phase
    );
    assert_eq!(judges(&again), judges(&once));
}
