//! The store: atomic records with revisions, the owner lock, exact judge state, and
//! decoding that never panics.

use proptest::prelude::*;

use super::*;
use crate::analysis::errors::EventJudgeSpec;
use crate::analysis::histogram::{Histogram, log_bounds};
use crate::analysis::kayenta::KayentaConfig;
use crate::analysis::latency::LatencyJudgeSpec;
use crate::analysis::mw_judge::MannWhitneySpec;
use crate::analysis::threshold::ThresholdSpec;
use crate::analysis::{Counts, JudgeSpec, Observation, Segment};
use crate::controller::machine::{Progress, Reason};

fn specs() -> Vec<JudgeSpec> {
    vec![
        JudgeSpec::Events(EventJudgeSpec::new(0.05)),
        JudgeSpec::Latency(LatencyJudgeSpec::new(0.05)),
        JudgeSpec::Threshold(ThresholdSpec {
            max: Some(0.05),
            ..ThresholdSpec::default()
        }),
        JudgeSpec::MannWhitney(MannWhitneySpec {
            cfg: KayentaConfig::default(),
            group: "g".to_string(),
            muted: false,
        }),
    ]
}

pub(crate) fn sample_state(name: &str) -> RolloutState {
    let w = Weight::try_from_percent(25.0).unwrap();
    let mut p = Progress::new(1, w, Duration::from_millis(1500), Duration::ZERO);
    p.requests = [1234.5, 0.1 + 0.2];
    p.baseline_recent = vec![[1.0, 3.0], [f64::MIN_POSITIVE, 1e300]];
    RolloutState {
        format: FORMAT,
        rollout: name.to_string(),
        rollout_id: new_rollout_id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        revision: 0,
        policy: PolicyRef {
            path: Some("p.toml".to_string()),
            sha256: policy_sha256(b"name = 'x'"),
            text: None,
        },
        phase: Phase::Progressing(p),
        steps: 3,
        elapsed: Duration::from_nanos(12_345_678_901),
        saved_at: SystemTime::now(),
        started_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        weight: w,
        seq: 7,
        ticks: 7,
        steps_reached: 2,
        first_traffic: Some(Duration::from_millis(10)),
        judges: Judges(specs().iter().map(MetricJudge::new).collect()),
        decisions: None,
        control: None,
        last: Some("hold".to_string()),
        operator_actions: 0,
    }
}

#[test]
fn a_record_round_trips_with_its_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path());
    assert!(store.load_blocking("web").unwrap().is_none());
    let s = sample_state("web");
    assert_eq!(store.save_blocking(&s, 0).unwrap(), 1);
    let back = store.load_blocking("web").unwrap().unwrap();
    assert_eq!(back.revision, 1);
    assert_eq!(back.phase, s.phase);
    assert_eq!(back.elapsed, s.elapsed);
    assert_eq!(back.weight, s.weight);
    assert_eq!(back.saved_at, s.saved_at);
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path().join("rollouts"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["web.json".to_string()], "{names:?}");
    assert_eq!(store.list_blocking().unwrap().len(), 1);
}

#[test]
fn a_stale_revision_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path());
    let s = sample_state("web");
    assert_eq!(store.save_blocking(&s, 0).unwrap(), 1);
    assert_eq!(store.save_blocking(&s, 1).unwrap(), 2);
    // A writer that last saw revision 1 (a deposed owner) cannot overwrite revision 2.
    let e = store.save_blocking(&s, 1).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Conflict {
                found: 2,
                expected: 1,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(store.load_blocking("web").unwrap().unwrap().revision, 2);
}

#[test]
fn names_that_could_escape_the_directory_are_refused() {
    let store = FileStore::new("/nonexistent");
    for bad in ["../x", "a/b", "", ".hidden", "a b"] {
        assert!(
            matches!(store.load_blocking(bad), Err(StoreError::BadName(_))),
            "{bad}"
        );
    }
}

#[test]
fn a_second_owner_is_refused_with_the_holder_named_and_a_released_lock_is_free() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path());
    let lock = store.acquire_blocking("web").unwrap();
    // flock is per open file: a second open, even in this process, is refused.
    let e = store.acquire_blocking("web").unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, StoreError::Locked { .. }), "{text}");
    assert!(
        text.contains(&format!("pid {}", std::process::id())),
        "{text}"
    );
    // Another rollout is not affected.
    let _other = store.acquire_blocking("api").unwrap();
    drop(lock);
    let _again = store.acquire_blocking("web").unwrap();
}

#[test]
fn start_plan_resumes_refuses_and_restarts() {
    let mut s = sample_state("web");
    let sum = s.policy.sha256.clone();
    assert_eq!(
        start_plan(None, &sum, false),
        StartPlan::Fresh { restart: None }
    );
    assert_eq!(start_plan(Some(&s), &sum, false), StartPlan::Resume);
    assert!(matches!(
        start_plan(Some(&s), "other", false),
        StartPlan::PolicyChanged { .. }
    ));
    assert!(matches!(
        start_plan(Some(&s), "other", true),
        StartPlan::Fresh { restart: Some(_) }
    ));
    s.phase = Phase::RolledBack {
        reason: Reason::Aborted { why: "x".into() },
    };
    assert_eq!(
        start_plan(Some(&s), &sum, false),
        StartPlan::Finished {
            phase: "rolled-back"
        }
    );
    assert!(matches!(
        start_plan(Some(&s), &sum, true),
        StartPlan::Fresh { restart: Some(_) }
    ));
}

fn wild() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(0.0),
        Just(-0.0),
        0.0..1e6f64,
    ]
}

/// Windows a judge could see: mostly plausible counts, histograms and series.
fn window() -> impl Strategy<Value = Segment> {
    let counts =
        (0.0..1e4f64, 0.0..0.2f64, 0.0..1e4f64, 0.0..0.3f64).prop_map(|(nb, rb, nc, rc)| {
            (
                Observation::Counts(Counts {
                    events: (nb * rb).floor(),
                    trials: nb.floor(),
                }),
                Observation::Counts(Counts {
                    events: (nc * rc).floor(),
                    trials: nc.floor(),
                }),
            )
        });
    let hist = (
        proptest::collection::vec(0.0..50.0f64, 163),
        proptest::collection::vec(0.0..50.0f64, 163),
    )
        .prop_map(|(b, c)| {
            (
                Observation::Histogram(Histogram::try_new(log_bounds(), b).unwrap()),
                Observation::Histogram(Histogram::try_new(log_bounds(), c).unwrap()),
            )
        });
    let series = (
        proptest::collection::vec(wild(), 0..6),
        proptest::collection::vec(wild(), 0..6),
    )
        .prop_map(|(b, c)| (Observation::Series(b), Observation::Series(c)));
    let missing = Just((Observation::Missing, Observation::Missing));
    (
        prop_oneof![Just(0.05), Just(0.25), 0.0..1.0f64],
        prop_oneof![4 => counts, 2 => hist, 2 => series, 1 => missing],
    )
        .prop_map(|(share, (baseline, canary))| Segment {
            share,
            baseline,
            canary,
        })
}

fn through_the_store(judges: &[MetricJudge]) -> Vec<MetricJudge> {
    let mut s = sample_state("r");
    s.judges = Judges(judges.to_vec());
    decode(&encode(&s).unwrap()).unwrap().judges.0
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// A judge restored from its stored state, fed the same windows as the original,
    /// reaches the same verdicts with the same numbers, bit for bit.
    #[test]
    fn a_restored_judge_reaches_the_same_verdicts_bit_for_bit(
        before in proptest::collection::vec(window(), 0..12),
        after in proptest::collection::vec(window(), 1..12),
    ) {
        for spec in specs() {
            let mut original = MetricJudge::new(&spec);
            for seg in &before {
                let _ = original.observe("m", seg);
            }
            let mut restored = through_the_store(std::slice::from_ref(&original)).remove(0);
            for seg in &after {
                let a = original.observe("m", seg);
                let b = restored.observe("m", seg);
                // Debug prints every f64 exactly (shortest round-trip form, sign of zero).
                prop_assert_eq!(format!("{a:?}"), format!("{b:?}"));
            }
            if let (Some(a), Some(b)) = (original.scored("m", 3), restored.scored("m", 3)) {
                prop_assert_eq!(format!("{a:?}"), format!("{b:?}"));
            }
        }
    }

    /// Arbitrary bytes never panic the decoder.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode(&bytes);
    }

    /// A stored record with bytes flipped, cut or inserted is refused (the checksum), never
    /// half-read, and never panics.
    #[test]
    fn mutated_records_are_refused_without_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let good = encode(&sample_state("web")).unwrap();
        let mut bytes = good.clone();
        for (at, byte, how) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            match how {
                0 => bytes[i] = byte,
                1 => bytes.truncate(i),
                _ => bytes.insert(i, byte),
            }
        }
        let r = decode(&bytes);
        if bytes != good {
            prop_assert!(r.is_err());
        }
    }

    /// The judges' blob alone, damaged, never panics the decoder either (the checksum is
    /// recomputed so the damage reaches the CBOR and the judges' own checks).
    #[test]
    fn damaged_judge_state_never_panics(flip in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let s = sample_state("web");
        let mut cbor = Vec::new();
        ciborium::into_writer(&s.judges.0, &mut cbor).unwrap();
        let i = flip.index(cbor.len());
        cbor[i] = byte;
        let _ = ciborium::from_reader::<Vec<MetricJudge>, _>(cbor.as_slice());
    }
}
