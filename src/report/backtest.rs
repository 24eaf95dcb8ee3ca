//! Backtests: a recorded rollout's windows fed through a policy on a simulated clock, through
//! the real state machine ([`step`]) and the runner's own judging ([`judge_window`]), and set
//! side by side with what really happened.
//!
//! The clock is the recording's: each simulated tick happens when the recorded one did, and a
//! traffic change the simulation makes at the same tick as the recording comes into force
//! when the recorded one did (the tick records' `since_s`); one the recording did not make
//! comes into force at once. So a recording replayed through its own policy reproduces every
//! recorded decision: same tick, same outcome, same e-values.
//!
//! A policy whose `analysis_interval` is a whole multiple of the recording's joins that many
//! consecutive recorded windows into one of its own ([`regroup`]); [`history`] builds the
//! windows from Prometheus's history instead of a decision log.
//!
//! What a backtest cannot know: traffic the policy under test would have moved differently.
//! Each window keeps the canary share that was in force when it was recorded (the judges use
//! it, so the statistics stay right), but a policy that would have advanced earlier would
//! have sent the canary more requests than the recording holds. Operator actions and manual
//! gates are not replayed, and there is no provider to read the weight in force back from.

pub mod history;
pub mod regroup;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::log::{LogMetric, LogRecord, Rollout};
use crate::analysis::{MetricJudge, Segment, Stats};
use crate::controller::machine::judging;
use crate::controller::record::{MetricRecord, SegmentRecord, rfc3339};
use crate::controller::runner::{Analysed, baseline_errors, judge_window};
use crate::controller::{Command, Decision, Event, Phase, WindowFacts, step};
use crate::metrics::Window;
use crate::metrics::replay::{ReplaySource, ReplayWindow};
use crate::policy::Policy;

/// Why a backtest cannot run.
#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    /// A tick of the recording carries no observations: written before coalmine recorded
    /// them.
    #[error(
        "{path}:{line}: this tick carries no recorded observations (`observed`, `since_s`): the log was written by a coalmine that did not record them, so it cannot be replayed"
    )]
    NotARecording {
        /// The file.
        path: String,
        /// The line.
        line: usize,
    },
    /// A recorded observation cannot be read back.
    #[error("{path}:{line}: metric `{metric}`: {message}")]
    BadObservation {
        /// The file.
        path: String,
        /// The line.
        line: usize,
        /// The metric.
        metric: String,
        /// What is wrong.
        message: String,
    },
    /// The recording has no analysis tick.
    #[error("{path}: the rollout has no analysis tick to replay")]
    NoTicks {
        /// The file.
        path: String,
    },
    /// A metric of the policy is not in the recording.
    #[error("metric `{metric}` of the policy is not in the recording (it has: {})", .recorded.join(", "))]
    UnknownMetric {
        /// The metric.
        metric: String,
        /// What the recording has.
        recorded: Vec<String>,
    },
    /// The policy's `analysis_interval` is not a whole multiple of the recording's.
    #[error(
        "the policy's analysis_interval ({policy}) is not a whole multiple of the recording's ({recorded}): recorded windows can be joined whole, never split"
    )]
    Interval {
        /// The policy's interval, formatted.
        policy: String,
        /// The recording's, formatted.
        recorded: String,
    },
    /// Recorded windows that cannot be joined into one.
    #[error("{path}:{line}: metric `{metric}`: {message}")]
    Join {
        /// The file.
        path: String,
        /// The line of the last window of the group.
        line: usize,
        /// The metric.
        metric: String,
        /// Why.
        message: String,
    },
    /// A time in the recording does not parse.
    #[error("{path}:{line}: window time `{value}` is not RFC 3339")]
    Time {
        /// The file.
        path: String,
        /// The line.
        line: usize,
        /// The value.
        value: String,
    },
}

/// A metric's state at a tick, as compared between the recording and the simulation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricState {
    /// Metric name.
    pub metric: String,
    /// `pass`, `fail`, `inconclusive`, `nodata`; `None` when the fetch failed.
    pub outcome: Option<String>,
    /// Natural log of the e-value (sequential judges).
    pub log_e: Option<f64>,
    /// Natural log of the threshold 1/α (sequential judges).
    pub log_threshold: Option<f64>,
}

/// One side of a tick: what was (or would have been) decided.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TickState {
    /// Step (1-based).
    pub step: Option<usize>,
    /// Canary weight in force, percent.
    pub weight: f64,
    /// `hold`, `advance`, `promote`, `rollback`, `pause` or `adopt`.
    pub action: String,
    /// The decision's reason.
    pub reason: String,
    /// Each metric.
    pub metrics: Vec<MetricState>,
}

/// A window's span, RFC 3339.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Span {
    /// Start.
    pub start: String,
    /// End.
    pub end: String,
}

/// What the judges were given for one metric in one window: its segments, or the fetch
/// error.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowData {
    /// The segments, as in a decision record's `observed`.
    Observed(Vec<SegmentRecord>),
    /// The fetch failed with this message.
    Error(String),
}

/// One row of the side-by-side comparison.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TickRow {
    /// 1-based tick.
    pub tick: usize,
    /// Seconds since the start.
    pub elapsed_s: f64,
    /// The window.
    pub window: Span,
    /// The recorded ticks joined into this one (first and last, 1-based), when the
    /// policy's interval is a multiple of the recording's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded_ticks: Option<[usize; 2]>,
    /// The recorded tick (none for a backtest on Prometheus's history).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded: Option<TickState>,
    /// The simulated tick (`None` once the simulation has ended).
    pub simulated: Option<TickState>,
    /// What the judges were given, by metric, when it is not verbatim in a decision log
    /// (joined windows, Prometheus's history).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, WindowData>,
}

/// How one side ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Side {
    /// `promoted`, `rolled-back`, `failed`, or `undecided` (no decision within the data).
    pub outcome: String,
    /// Why.
    pub reason: String,
    /// The deciding tick (1-based), if any.
    pub decided_tick: Option<usize>,
    /// Seconds from the start to the decision.
    pub seconds: Option<f64>,
    /// The end of the deciding window, RFC 3339.
    pub decided_at: Option<String>,
    /// Requests `[baseline, canary]` analysed up to the decision (or to the end).
    pub requests: [f64; 2],
    /// Each metric at the decision (or at the end).
    pub metrics: Vec<MetricState>,
}

/// The whole result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Backtest {
    /// The policy under test.
    pub policy: String,
    /// Where the windows came from.
    pub source: String,
    /// Windows available.
    pub windows: usize,
    /// What really happened (none for a backtest on Prometheus's history).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded: Option<Side>,
    /// What the policy would have decided.
    pub simulated: Side,
    /// Ticks where the two sides decided differently (with a recorded side).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub differing_ticks: Option<usize>,
    /// Tick by tick.
    pub ticks: Vec<TickRow>,
    /// Remarks.
    pub notes: Vec<String>,
}

/// One recorded tick: its clock, window and decision.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedTick {
    /// Line in the file.
    pub line: usize,
    /// The tick's time since the start.
    pub now: Duration,
    /// When its step's weight came into force.
    pub since: Duration,
    /// Window start.
    pub start: SystemTime,
    /// Window end.
    pub end: SystemTime,
    /// Nothing was recorded for this window (the recorded warm-up discarded it).
    pub discarded: bool,
    /// The simulation discards this window's data, for this reason (nothing is judged).
    pub discard: Option<String>,
    /// What was decided (none without a recording).
    pub state: Option<TickState>,
    /// Requests in the window.
    pub requests: Option<[f64; 2]>,
    /// The recorded ticks joined into this one (1-based), when regrouped.
    pub joined: Option<[usize; 2]>,
}

fn log_e(stats: &Stats) -> (Option<f64>, Option<f64>) {
    match stats {
        Stats::ErrorEvents(s) => (Some(s.log_e), Some(s.log_threshold)),
        Stats::SlowEvents(s) => (Some(s.log_e), Some(s.log_threshold)),
        _ => (None, None),
    }
}

/// Seconds as written in a record back to the duration (records hold nanosecond durations as
/// `as_secs_f64`, which comes back as the same nanoseconds).
fn duration(s: f64) -> Duration {
    if s.is_finite() && s > 0.0 {
        Duration::from_nanos((s * 1e9).round() as u64)
    } else {
        Duration::ZERO
    }
}

fn recorded_state(r: &LogRecord) -> TickState {
    TickState {
        step: r.step,
        weight: r.weight,
        action: r.action().unwrap_or("").to_string(),
        reason: r.decision_text(),
        metrics: r
            .metrics
            .iter()
            .map(|m| MetricState {
                metric: m.metric.clone(),
                outcome: m.outcome.clone(),
                log_e: m.stat("log_e"),
                log_threshold: m.stat("log_threshold"),
            })
            .collect(),
    }
}

/// The recorded windows of a rollout, one per tick, as a replay source, and each tick's
/// clock and decision.
///
/// # Errors
/// When a tick carries no recording, an observation cannot be read back, a window time does
/// not parse, or there are no ticks.
pub fn recording(r: &Rollout) -> Result<(ReplaySource, Vec<RecordedTick>), BacktestError> {
    let path = r.path.display().to_string();
    let mut windows = Vec::new();
    let mut ticks = Vec::new();
    for t in r.ticks() {
        let not_recording = || BacktestError::NotARecording {
            path: path.clone(),
            line: t.line,
        };
        let since = t.since_s.ok_or_else(not_recording)?;
        let w = t.window.clone().ok_or_else(not_recording)?;
        let time = |v: &str| {
            humantime::parse_rfc3339_weak(v).map_err(|_| BacktestError::Time {
                path: path.clone(),
                line: t.line,
                value: v.to_string(),
            })
        };
        let mut rw = ReplayWindow::default();
        for m in &t.metrics {
            // The scorecard over `mann-whitney` metrics is computed, not fetched.
            if m.metric == "score" && m.kind() == "score" {
                continue;
            }
            let v = if m.error.is_some() {
                Err(m.reason.clone())
            } else if m.observed.is_empty() && m.outcome.is_some() && m.kind() != "none" {
                // A judged metric without its observations: not a recording.
                return Err(not_recording());
            } else {
                Ok(observed(m, &path, t.line)?)
            };
            rw.metrics.insert(m.metric.clone(), v);
        }
        ticks.push(RecordedTick {
            line: t.line,
            now: duration(t.elapsed_s),
            since: duration(since),
            start: time(&w.start)?,
            end: time(&w.end)?,
            discarded: t.metrics.is_empty(),
            discard: None,
            state: Some(recorded_state(t)),
            requests: t.requests.as_ref().map(|q| q.window),
            joined: None,
        });
        windows.push(rw);
    }
    if ticks.is_empty() {
        return Err(BacktestError::NoTicks { path });
    }
    // What the controller read before the first traffic change (a log without it: none).
    let mut history = BTreeMap::new();
    for h in r
        .records
        .iter()
        .filter(|h| h.event.as_deref() == Some("baseline-history"))
    {
        for m in &h.metrics {
            history.insert(m.metric.clone(), observed(m, &path, h.line)?);
        }
    }
    Ok((ReplaySource::new(windows).with_history(history), ticks))
}

/// A recorded metric's observations, as the segments the judges were given.
fn observed(m: &LogMetric, path: &str, line: usize) -> Result<Vec<Segment>, BacktestError> {
    m.observed
        .iter()
        .map(Segment::try_from)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BacktestError::BadObservation {
            path: path.to_string(),
            line,
            metric: m.metric.clone(),
            message: e.to_string(),
        })
}

/// Checks that every metric of `policy` is in the recording.
///
/// # Errors
/// [`BacktestError::UnknownMetric`].
pub fn check_metrics(policy: &Policy, source: &ReplaySource) -> Result<(), BacktestError> {
    let recorded = source.metric_names();
    for m in &policy.metrics {
        if !recorded.contains(&m.name) {
            return Err(BacktestError::UnknownMetric {
                metric: m.name.clone(),
                recorded,
            });
        }
    }
    Ok(())
}

fn decision_parts(d: &Decision) -> (String, String) {
    let v = serde_json::to_value(d).unwrap_or_default();
    let r = LogRecord {
        decision: Some(v),
        ..LogRecord::default()
    };
    (r.action().unwrap_or("").to_string(), r.decision_text())
}

/// The simulation's state between ticks.
struct Sim<'a> {
    policy: &'a Policy,
    judges: Vec<MetricJudge>,
    last: Vec<MetricRecord>,
    phase: Phase,
    first_traffic: Option<Duration>,
    window_start: Duration,
}

impl Sim<'_> {
    /// Executes commands: a traffic change comes into force at `at` when given (the
    /// recording's change at the same tick), else after its delay.
    fn execute(&mut self, mut cmds: Vec<Command>, now: Duration, at: Option<Duration>) {
        let plan = &self.policy.rollout;
        while !cmds.is_empty() {
            let mut next = Vec::new();
            for c in cmds {
                if let Command::Apply { weight, delay } = c {
                    let t = at.unwrap_or(now + delay);
                    if self.first_traffic.is_none() && weight.bp() > 0 {
                        self.first_traffic = Some(t);
                    }
                    let (p, c) = step(self.phase.clone(), Event::Applied { weight, now: t }, plan);
                    if matches!(p, Phase::Progressing(_)) {
                        self.window_start = t;
                    }
                    self.phase = p;
                    next.extend(c);
                }
            }
            cmds = next;
        }
    }

    /// One tick, as the runner analyses it; `None` once the rollout is not progressing.
    fn tick(
        &mut self,
        source: &ReplaySource,
        seq: u64,
        t: &RecordedTick,
    ) -> Option<(TickState, Vec<Command>, Option<[f64; 2]>)> {
        let plan = &self.policy.rollout;
        let (step_index, applied) = match &self.phase {
            Phase::Progressing(p) => (p.step, p.weight),
            Phase::Paused(z) => (z.progress.step, z.progress.weight),
            _ => return None,
        };
        let window = Window {
            seq,
            start: t.start,
            end: t.end,
            weight: applied,
        };
        let fetches: Vec<_> = self
            .policy
            .metrics
            .iter()
            .map(|m| source.get(&m.name, seq))
            .collect();
        let mut facts = WindowFacts {
            baseline_errors: baseline_errors(&self.policy.metrics, &fetches),
            in_force: None,
            discarded: None,
        };
        let warming = self
            .first_traffic
            .is_some_and(|ft| self.window_start < ft + plan.warmup);
        let analysed = if warming || t.discard.is_some() {
            let since = t.now.saturating_sub(self.first_traffic.unwrap_or(t.now));
            facts.discarded = Some(t.discard.clone().unwrap_or_else(|| {
                format!(
                    "warming up: {:.0}s of {:.0}s, data discarded",
                    since.as_secs_f64(),
                    plan.warmup.as_secs_f64()
                )
            }));
            facts.baseline_errors = None;
            Analysed {
                statuses: Vec::new(),
                records: Vec::new(),
                requests: None,
            }
        } else {
            let j = judging(&self.phase, &facts, plan);
            judge_window(
                self.policy,
                &mut self.judges,
                &self.last,
                &window,
                fetches,
                &j,
            )
        };
        let (next, cmds) = step(
            self.phase.clone(),
            Event::Tick {
                now: t.now,
                metrics: analysed.statuses,
                requests: analysed.requests,
                facts,
            },
            plan,
        );
        let decision = cmds
            .iter()
            .find_map(|c| match c {
                Command::Record(d) => Some(d.clone()),
                _ => None,
            })
            .unwrap_or(Decision::Hold {
                reason: String::new(),
            });
        let (action, reason) = decision_parts(&decision);
        let state = TickState {
            step: Some(step_index + 1),
            weight: applied.percent(),
            action,
            reason,
            metrics: analysed
                .records
                .iter()
                .map(|m| {
                    let (log_e, log_threshold) = log_e(&m.stats);
                    MetricState {
                        metric: m.metric.clone(),
                        outcome: m.outcome.map(|o| o.as_str().to_string()),
                        log_e,
                        log_threshold,
                    }
                })
                .collect(),
        };
        if !analysed.records.is_empty() {
            self.last = analysed.records;
        }
        self.phase = next;
        self.window_start = t.now;
        Some((state, cmds, analysed.requests))
    }
}

fn side(
    outcome: &str,
    reason: String,
    decided: Option<(usize, &RecordedTick)>,
    requests: [f64; 2],
    metrics: Vec<MetricState>,
) -> Side {
    Side {
        outcome: outcome.to_string(),
        reason,
        decided_tick: decided.map(|d| d.0),
        seconds: decided.map(|d| d.1.now.as_secs_f64()),
        decided_at: decided.map(|d| rfc3339(d.1.end)),
        requests,
        metrics,
    }
}

/// What the judges were given in window `seq`, by metric, for the tick rows.
fn window_data(policy: &Policy, source: &ReplaySource, seq: usize) -> BTreeMap<String, WindowData> {
    let Some(w) = source.window(seq) else {
        return BTreeMap::new();
    };
    policy
        .metrics
        .iter()
        .filter_map(|m| {
            let d = match w.metrics.get(&m.name)? {
                Ok(segs) => WindowData::Observed(SegmentRecord::all(segs)),
                Err(e) => WindowData::Error(e.clone()),
            };
            Some((m.name.clone(), d))
        })
        .collect()
}

fn decisive(action: &str) -> bool {
    matches!(action, "promote" | "rollback")
}

/// Runs `policy` over the recorded ticks (hooks, notifications and the decision log of the
/// policy are not used; nothing outside the process is touched). With `show_data`, each row
/// carries what the judges were given.
#[must_use]
pub fn simulate(
    policy: &Policy,
    source: &ReplaySource,
    recorded: &[RecordedTick],
    show_data: bool,
) -> (Side, Vec<TickRow>) {
    let plan = &policy.rollout;
    let mut sim = Sim {
        policy,
        judges: policy
            .metrics
            .iter()
            .map(|m| MetricJudge::new(&m.judge))
            .collect(),
        last: Vec::new(),
        phase: Phase::Pending,
        first_traffic: None,
        window_start: Duration::ZERO,
    };
    // The baseline history, as the runner learns it before the first traffic change.
    if !policy.rollout.baseline_history.is_zero() {
        for (m, j) in policy.metrics.iter().zip(&mut sim.judges) {
            j.learn_history(source.history_of(&m.name).unwrap_or_default());
        }
    }
    let (p, c) = step(
        Phase::Pending,
        Event::Start {
            now: Duration::ZERO,
            pre_checks: false,
        },
        plan,
    );
    sim.phase = p;
    sim.execute(c, Duration::ZERO, recorded.first().map(|t| t.since));
    let mut rows = Vec::new();
    let mut requests = [0.0, 0.0];
    let mut decided = None;
    let mut last_metrics = Vec::new();
    for (k, t) in recorded.iter().enumerate() {
        let ticked = if decided.is_none() {
            sim.tick(source, k as u64, t)
        } else {
            None
        };
        let simulated = ticked.map(|(state, cmds, req)| {
            if let Some(r) = req {
                requests[0] += r[0];
                requests[1] += r[1];
            }
            if decisive(&state.action) {
                decided = Some((k + 1, t));
            }
            if !state.metrics.is_empty() {
                last_metrics.clone_from(&state.metrics);
            }
            // A change the recording made at this tick too comes into force when it did.
            let at = recorded.get(k + 1).map(|n| n.since).filter(|s| {
                *s > t.now && t.state.as_ref().is_some_and(|r| r.action == state.action)
            });
            sim.execute(cmds, t.now, at);
            state
        });
        rows.push(TickRow {
            tick: k + 1,
            elapsed_s: t.now.as_secs_f64(),
            window: Span {
                start: rfc3339(t.start),
                end: rfc3339(t.end),
            },
            recorded_ticks: t.joined,
            recorded: t.state.clone(),
            simulated,
            data: if show_data {
                window_data(policy, source, k)
            } else {
                BTreeMap::new()
            },
        });
    }
    let (outcome, reason) = match &sim.phase {
        Phase::Promoted => ("promoted", "all traffic to the canary".to_string()),
        Phase::RolledBack { reason } | Phase::RollingBack { reason, .. } => {
            ("rolled-back", reason.to_string())
        }
        Phase::Failed { reason } => ("failed", reason.clone()),
        _ => (
            "undecided",
            format!("no decision within the {} windows", recorded.len()),
        ),
    };
    (side(outcome, reason, decided, requests, last_metrics), rows)
}

/// What the recording says happened.
#[must_use]
pub fn recorded_side(r: &Rollout, ticks: &[RecordedTick]) -> Side {
    let s = super::Summary::of(r);
    let decided = ticks
        .iter()
        .position(|t| t.state.as_ref().is_some_and(|s| decisive(&s.action)));
    let upto = decided.map_or(ticks.len(), |d| d + 1);
    let mut requests = [0.0, 0.0];
    for t in &ticks[..upto] {
        if let Some(q) = t.requests {
            requests[0] += q[0];
            requests[1] += q[1];
        }
    }
    let metrics = ticks[..upto]
        .iter()
        .rev()
        .filter_map(|t| t.state.as_ref())
        .find(|s| !s.metrics.is_empty())
        .map(|s| s.metrics.clone())
        .unwrap_or_default();
    let outcome = if s.outcome == "unfinished" {
        "undecided"
    } else {
        &s.outcome
    };
    side(
        outcome,
        s.reason.clone(),
        decided.map(|d| (d + 1, &ticks[d])),
        requests,
        metrics,
    )
}

/// Ticks where the simulation did something else than the recording (or had ended).
fn differing(rows: &[TickRow]) -> usize {
    rows.iter()
        .filter(|t| match (&t.recorded, &t.simulated) {
            (Some(r), Some(s)) => s.action != r.action,
            (Some(_), None) => true,
            (None, _) => false,
        })
        .count()
}

/// Backtests `policy` on a recorded rollout. A policy whose `analysis_interval` is a whole
/// multiple of the recording's sees consecutive recorded windows joined ([`regroup`]).
///
/// # Errors
/// When the rollout is not a recording, the policy has a metric it did not record, its
/// interval is not a whole multiple of the recording's, or windows cannot be joined.
pub fn backtest(policy: &Policy, r: &Rollout) -> Result<Backtest, BacktestError> {
    let (source, ticks) = recording(r)?;
    check_metrics(policy, &source)?;
    let path = r.path.display().to_string();
    let factor = regroup::factor(policy.rollout.analysis_interval, &ticks)?;
    let (simulated, rows) = if factor > 1 {
        let (joined, groups) = regroup::regroup(&path, &source, &ticks, factor)?;
        simulate(policy, &joined, &groups, true)
    } else {
        simulate(policy, &source, &ticks, false)
    };
    let mut notes = Vec::new();
    let discarded = ticks.iter().filter(|t| t.discarded).count();
    if discarded > 0 {
        notes.push(format!(
            "{discarded} recorded windows were discarded by the recorded warm-up: they hold no data"
        ));
    }
    if factor > 1 {
        notes.push(format!(
            "the policy's analysis_interval ({}) is {factor} recorded windows: each of its ticks judges {factor} consecutive recorded windows joined (counts and buckets added, series concatenated){}",
            humantime::format_duration(policy.rollout.analysis_interval),
            match ticks.len() % factor {
                0 => String::new(),
                n => format!("; the last {n} recorded windows make no whole window and are left out"),
            }
        ));
    }
    Ok(Backtest {
        policy: policy.name.clone(),
        source: format!("{} ({})", r.path.display(), r.label()),
        windows: rows.len(),
        recorded: Some(recorded_side(r, &ticks)),
        simulated,
        differing_ticks: Some(differing(&rows)),
        ticks: rows,
        notes,
    })
}
