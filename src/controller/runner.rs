//! The async shell around the pure state machine: it applies weights through the traffic
//! provider, fetches metrics every analysis interval, feeds the judges, records every
//! decision before acting on it, and reports progress to an [`Observer`].
//!
//! Time comes only from tokio's clock, so tests run with paused time. Wall-clock times (for
//! records and for sources that query by time) are derived from it: `start_wall + elapsed`.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use futures_util::future::join_all;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use super::hooks::{Notifier, run_hook};
use super::machine::{Command, Decision, Event, MetricStatus, Phase, Reason, step};
use super::record::{
    MetricRecord, Record, RecordKind, RecordLog, RequestsRecord, WindowRecord, rfc3339,
};
use crate::analysis::mw_judge::score_verdict;
use crate::analysis::observation::Shape;
use crate::analysis::{MetricJudge, Observation, Segment, Stats};
use crate::metrics::{MetricsSource, Window};
use crate::model::Weight;
use crate::policy::Policy;
use crate::policy::hooks::HookWhen;
use crate::traffic::TrafficProvider;

/// Receives every record as it is written (progress display, tests).
pub trait Observer: Send {
    /// Called after each record is written to the decision log.
    fn on_record(&mut self, _record: &Record) {}
}

/// An observer that ignores everything.
#[derive(Debug, Default)]
pub struct Quiet;

impl Observer for Quiet {}

/// Options of one run.
#[derive(Debug, Default)]
pub struct RunOptions {
    /// Decision log path (overrides the policy's `decisions`).
    pub decisions: Option<PathBuf>,
    /// Set to `Some(reason)` to abort the rollout (it rolls back).
    pub abort: Option<watch::Receiver<Option<String>>>,
    /// Each change approves leaving the current step (see `[rollout] approval`).
    pub approve: Option<watch::Receiver<u64>>,
}

/// What ended a wait between ticks.
enum Wake {
    Tick,
    Abort(String),
    Approve,
}

/// Waits for the next tick, an abort or an approval. A closed channel stops counting.
async fn wait(
    next_tick: Instant,
    abort: &mut Option<watch::Receiver<Option<String>>>,
    approve: &mut Option<watch::Receiver<u64>>,
) -> Wake {
    let aborted = async {
        match abort.as_mut() {
            Some(rx) => match rx.changed().await {
                Ok(()) => rx.borrow().clone(),
                Err(_) => {
                    *abort = None;
                    None
                }
            },
            None => std::future::pending().await,
        }
    };
    let approved = async {
        match approve.as_mut() {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    *approve = None;
                    return false;
                }
                true
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = tokio::time::sleep_until(next_tick) => Wake::Tick,
        why = aborted => why.map_or(Wake::Tick, Wake::Abort),
        ok = approved => if ok { Wake::Approve } else { Wake::Tick },
    }
}

/// How a rollout ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum FinalOutcome {
    /// The canary has all traffic.
    Promoted,
    /// The canary has no traffic.
    RolledBack {
        /// Why.
        reason: Reason,
    },
    /// The controller could not reach a safe state.
    Failed {
        /// What happened.
        reason: String,
    },
}

/// What a run did, for the summary.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunReport {
    /// Rollout name.
    pub rollout: String,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: FinalOutcome,
    /// Process exit code for this outcome.
    pub exit_code: u8,
    /// Seconds from start to end.
    pub duration_s: f64,
    /// Analysis ticks.
    pub ticks: u64,
    /// Highest step reached (1-based).
    pub steps_reached: usize,
    /// Steps in the plan.
    pub steps: usize,
    /// Canary weight in force at the end, percent.
    pub final_weight: Weight,
    /// Each metric's last state.
    pub metrics: Vec<MetricRecord>,
    /// Where the decision records went.
    pub decisions: Option<PathBuf>,
}

impl FinalOutcome {
    /// 0 promoted, 1 rolled back, 3 failed.
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            FinalOutcome::Promoted => 0,
            FinalOutcome::RolledBack { .. } => 1,
            FinalOutcome::Failed { .. } => 3,
        }
    }
}

/// Errors that stop a run before it starts.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The decision log cannot be opened.
    #[error("cannot open decision log {path}")]
    DecisionLog {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

struct Shell<'a, T, M> {
    policy: &'a Policy,
    traffic: &'a T,
    source: &'a M,
    log: Option<RecordLog>,
    observer: &'a mut dyn Observer,
    start: Instant,
    wall0: SystemTime,
    weight: Weight,
    judges: Vec<MetricJudge>,
    last: Vec<MetricRecord>,
    ticks: u64,
    steps_reached: usize,
    log_failed: Option<String>,
    notifier: Option<Notifier>,
}

impl<T: TrafficProvider, M: MetricsSource> Shell<'_, T, M> {
    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.start)
    }

    fn wall(&self, offset: Duration) -> SystemTime {
        self.wall0 + offset
    }

    fn step_of(phase: &Phase) -> Option<usize> {
        match phase {
            Phase::Shifting { step, .. } => Some(step + 1),
            Phase::Progressing(p) => Some(p.step + 1),
            _ => None,
        }
    }

    fn record(&mut self, r: &Record) {
        if let Some(log) = &mut self.log
            && let Err(e) = log.write(r)
            && self.log_failed.is_none()
        {
            self.log_failed = Some(format!(
                "decision log {} unwritable: {e}",
                log.path().display()
            ));
        }
        self.observer.on_record(r);
        if let Some(n) = &mut self.notifier {
            n.send(r);
        }
    }

    fn transition(&mut self, before: &Phase, after: &Phase, event: &str, detail: Option<String>) {
        let now = self.now();
        let r = Record {
            kind: if after.is_terminal() {
                RecordKind::Final
            } else {
                RecordKind::Transition
            },
            rollout: self.policy.name.clone(),
            time: rfc3339(self.wall(now)),
            elapsed_s: now.as_secs_f64(),
            phase: before.name(),
            next_phase: after.name(),
            step: Self::step_of(after).or(Self::step_of(before)),
            steps: self.policy.rollout.steps.len(),
            weight: self.weight,
            window: None,
            requests: None,
            metrics: Vec::new(),
            decision: None,
            event: Some(event.to_string()),
            detail,
        };
        self.record(&r);
    }

    /// Runs the hooks for `when` in order, recording each; returns the first failure.
    async fn run_hooks(
        &mut self,
        when: HookWhen,
        phase: &Phase,
        outcome: &str,
    ) -> Option<(String, String)> {
        let reason = match phase {
            Phase::RolledBack { reason } | Phase::RollingBack { reason, .. } => reason.to_string(),
            _ => String::new(),
        };
        let env: Vec<(String, String)> = [
            ("COALMINE_ROLLOUT", self.policy.name.clone()),
            ("COALMINE_HOOK_WHEN", when.as_str().to_string()),
            ("COALMINE_OUTCOME", outcome.to_string()),
            ("COALMINE_REASON", reason),
            ("COALMINE_WEIGHT", format!("{}", self.weight.percent())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let hooks: Vec<_> = self
            .policy
            .hooks
            .iter()
            .filter(|h| h.when == when)
            .cloned()
            .collect();
        let mut failed = None;
        for hook in hooks {
            let result = run_hook(&hook, &env).await;
            let (event, detail) = match &result {
                Ok(said) => (
                    "hook-ran",
                    format!("{} ({}): {said}", hook.name, when.as_str()),
                ),
                Err(e) => (
                    "hook-failed",
                    format!("{} ({}): {e}", hook.name, when.as_str()),
                ),
            };
            self.transition(phase, phase, event, Some(detail));
            if let Err(e) = result {
                failed = Some((hook.name.clone(), e));
                if when == HookWhen::PreRollout {
                    break;
                }
            }
        }
        failed
    }

    /// Feeds an abort to the machine, records it, and returns the commands.
    fn abort(&mut self, phase: &mut Phase, why: String) -> Vec<Command> {
        let event = Event::Abort {
            why: why.clone(),
            now: self.now(),
        };
        let (next, cmds) = step(phase.clone(), event, &self.policy.rollout);
        self.transition(phase, &next, "aborted", Some(why));
        *phase = next;
        cmds
    }

    async fn apply(&mut self, weight: Weight) -> Event {
        let limit = self.policy.rollout.apply_timeout;
        let res = tokio::time::timeout(limit, self.traffic.set_weight(weight)).await;
        let failed = |error: String, transient: bool, now: Duration| Event::ApplyFailed {
            weight,
            error,
            transient,
            now,
        };
        match res {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return failed(e.to_string(), e.is_transient(), self.now()),
            Err(_) => {
                return failed(
                    format!(
                        "provider `{}`: setting {weight} took longer than {}",
                        self.traffic.name(),
                        humantime::format_duration(limit)
                    ),
                    true,
                    self.now(),
                );
            }
        }
        // Read back what is really in force.
        match tokio::time::timeout(limit, self.traffic.current()).await {
            Ok(Ok(cur)) => {
                let tol = i32::from(self.traffic.resolution());
                if (i32::from(cur.bp()) - i32::from(weight.bp())).abs() <= tol {
                    self.weight = cur;
                    Event::Applied {
                        weight,
                        now: self.now(),
                    }
                } else {
                    self.weight = cur;
                    failed(
                        format!(
                            "provider `{}`: set {weight} but {cur} is in force",
                            self.traffic.name()
                        ),
                        true,
                        self.now(),
                    )
                }
            }
            Ok(Err(e)) => failed(
                format!("read-back after setting {weight}: {e}"),
                e.is_transient(),
                self.now(),
            ),
            Err(_) => failed(
                format!(
                    "provider `{}`: read-back took longer than {}",
                    self.traffic.name(),
                    humantime::format_duration(limit)
                ),
                true,
                self.now(),
            ),
        }
    }

    /// Fetches every metric for the window, feeds the judges, and builds the tick event.
    async fn analyse(
        &mut self,
        window: &Window,
        judge_it: bool,
    ) -> (Vec<MetricStatus>, Vec<MetricRecord>, Option<[f64; 2]>) {
        let source = self.source;
        let fetches = join_all(self.policy.metrics.iter().map(|m| source.fetch(m, window))).await;
        if !judge_it {
            // Warming up: the window is fetched (sources keep their windows contiguous)
            // and its data discarded.
            return (Vec::new(), Vec::new(), None);
        }
        let mut statuses = Vec::new();
        let mut records = Vec::new();
        let mut requests: Option<[f64; 2]> = None;
        for ((m, judge), res) in self
            .policy
            .metrics
            .iter()
            .zip(self.judges.iter_mut())
            .zip(fetches)
        {
            match res {
                Ok(f) => {
                    if requests.is_none() && matches!(m.shape, Shape::Counts | Shape::Histogram) {
                        let mut sum = [0.0, 0.0];
                        let mut any = false;
                        for seg in &f.segments {
                            if let Some((b, c)) = seg.trials() {
                                sum[0] += b;
                                sum[1] += c;
                                any = true;
                            }
                        }
                        if any {
                            requests = Some(sum);
                        }
                    }
                    let mut verdict = None;
                    for seg in &f.segments {
                        verdict = Some(judge.observe(&m.name, seg));
                    }
                    let v = verdict.unwrap_or_else(|| {
                        judge.observe(
                            &m.name,
                            &Segment {
                                share: window.weight.fraction(),
                                baseline: Observation::Missing,
                                canary: Observation::Missing,
                            },
                        )
                    });
                    // A `mann-whitney` metric is advisory on its own: the scorecard over all of
                    // them (below) is what the controller acts on, as in Kayenta.
                    let scored = matches!(m.judge, crate::analysis::JudgeSpec::MannWhitney(_));
                    statuses.push(MetricStatus {
                        metric: m.name.clone(),
                        outcome: Some(v.outcome),
                        reason: v.reason.clone(),
                        dry_run: m.dry_run || scored,
                    });
                    records.push(MetricRecord {
                        metric: m.name.clone(),
                        judge: v.judge,
                        outcome: Some(v.outcome),
                        reason: v.reason,
                        stats: v.stats,
                        dry_run: m.dry_run,
                        queries: f.queries,
                        error: None,
                    });
                }
                Err(e) => {
                    statuses.push(MetricStatus {
                        metric: m.name.clone(),
                        outcome: None,
                        reason: e.to_string(),
                        dry_run: m.dry_run,
                    });
                    // Keep the last numbers visible while the source is failing.
                    let stats = self
                        .last
                        .iter()
                        .find(|r| r.metric == m.name)
                        .map_or(Stats::None, |r| r.stats.clone());
                    records.push(MetricRecord {
                        metric: m.name.clone(),
                        judge: m.judge.name(),
                        outcome: None,
                        reason: e.to_string(),
                        stats,
                        dry_run: m.dry_run,
                        queries: Vec::new(),
                        error: Some(format!("{}: {e}", e.kind())),
                    });
                }
            }
        }
        if let Some(scoring) = &self.policy.scoring {
            let scored: Vec<_> = self
                .policy
                .metrics
                .iter()
                .zip(&self.judges)
                .filter(|(m, _)| !m.dry_run)
                .filter_map(|(m, j)| j.scored(&m.name, scoring.min_points))
                .collect();
            let v = score_verdict(&scored, scoring);
            statuses.push(MetricStatus {
                metric: v.metric.clone(),
                outcome: Some(v.outcome),
                reason: v.reason.clone(),
                dry_run: false,
            });
            records.push(MetricRecord {
                metric: v.metric,
                judge: v.judge,
                outcome: Some(v.outcome),
                reason: v.reason,
                stats: v.stats,
                dry_run: false,
                queries: Vec::new(),
                error: None,
            });
        }
        (statuses, records, requests)
    }
}

/// Runs one rollout to the end.
///
/// # Errors
/// Only when the run cannot start (the decision log cannot be opened); everything that
/// happens during the rollout ends in a [`RunReport`].
pub async fn run<T: TrafficProvider, M: MetricsSource>(
    policy: &Policy,
    traffic: &T,
    source: &M,
    opts: RunOptions,
    observer: &mut dyn Observer,
) -> Result<RunReport, Error> {
    let path = opts.decisions.clone().or_else(|| policy.decisions.clone());
    let log = match &path {
        Some(p) => Some(RecordLog::open(p).map_err(|source| Error::DecisionLog {
            path: p.clone(),
            source,
        })?),
        None => None,
    };
    let plan = &policy.rollout;
    let mut shell = Shell {
        policy,
        traffic,
        source,
        log,
        observer,
        start: Instant::now(),
        wall0: SystemTime::now(),
        weight: traffic.current().await.unwrap_or(Weight::ZERO),
        judges: policy
            .metrics
            .iter()
            .map(|m| MetricJudge::new(&m.judge))
            .collect(),
        last: Vec::new(),
        ticks: 0,
        steps_reached: 0,
        log_failed: None,
        notifier: policy.notify.clone().map(Notifier::new),
    };
    let mut abort = opts.abort;
    let mut approve = opts.approve;
    let mut phase = Phase::Pending;
    let pre_checks = policy.hooks.iter().any(|h| h.when == HookWhen::PreRollout);
    let (next, cmds) = step(
        phase.clone(),
        Event::Start {
            now: shell.now(),
            pre_checks,
        },
        plan,
    );
    shell.transition(&phase, &next, "started", None);
    phase = next;
    let mut queue: VecDeque<Command> = cmds.into();
    let mut seq: u64 = 0;
    let mut first_traffic: Option<Duration> = None;
    let mut next_tick = Instant::now();
    let mut window_start = Duration::ZERO;

    'outer: loop {
        while let Some(cmd) = queue.pop_front() {
            match cmd {
                Command::Apply { weight, delay } => {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let event = shell.apply(weight).await;
                    if first_traffic.is_none()
                        && matches!(event, Event::Applied { weight, .. } if weight.bp() > 0)
                    {
                        first_traffic = Some(shell.now());
                    }
                    let (label, detail) = match &event {
                        Event::Applied { .. } => ("weight-applied", None),
                        Event::ApplyFailed { error, .. } => ("apply-failed", Some(error.clone())),
                        _ => ("event", None),
                    };
                    let (n, c) = step(phase.clone(), event, plan);
                    if matches!(n, Phase::Promoted) {
                        shell.steps_reached = plan.steps.len();
                    }
                    if let Phase::Progressing(p) = &n {
                        shell.steps_reached = shell.steps_reached.max(p.step + 1);
                        // A new step: the next window starts now.
                        next_tick = Instant::now() + plan.analysis_interval;
                        window_start = shell.now();
                    }
                    let detail = match (&n, detail) {
                        (Phase::RolledBack { reason }, None) => Some(reason.to_string()),
                        (Phase::Failed { reason }, _) => Some(reason.clone()),
                        (_, d) => d,
                    };
                    let label = match &n {
                        Phase::Promoted => "promoted",
                        Phase::RolledBack { .. } => "rolled-back",
                        Phase::Failed { .. } => "failed",
                        _ => label,
                    };
                    shell.transition(&phase, &n, label, detail);
                    phase = n;
                    queue.extend(c);
                }
                Command::Finish => break 'outer,
                Command::Record(_) => {}
                Command::RunPreChecks => {
                    let failed = shell
                        .run_hooks(HookWhen::PreRollout, &phase, "pending")
                        .await;
                    let event = Event::PreChecksDone {
                        failed,
                        now: shell.now(),
                    };
                    let (n, c) = step(phase.clone(), event, plan);
                    if !matches!(n, Phase::PreChecks) && !matches!(n, Phase::RollingBack { .. }) {
                        shell.transition(&phase, &n, "checks-passed", None);
                    }
                    phase = n;
                    queue.extend(c);
                }
            }
        }
        if phase.is_terminal() {
            break;
        }
        if let Some(why) = shell.log_failed.take() {
            queue.extend(shell.abort(&mut phase, why));
            continue;
        }
        let Phase::Progressing(progress) = &phase else {
            // Nothing to wait for (a rejected event left the phase unchanged): stop safely.
            let why = format!("controller stuck in phase {}", phase.name());
            queue.extend(shell.abort(&mut phase, why));
            continue;
        };
        let step_before = progress.step;
        let step_requests_before = progress.requests;
        // Wait for the next tick, an abort or an approval.
        match wait(next_tick, &mut abort, &mut approve).await {
            Wake::Abort(why) => {
                queue.extend(shell.abort(&mut phase, why));
                continue;
            }
            Wake::Approve => {
                let (n, c) = step(phase.clone(), Event::Approve { now: shell.now() }, plan);
                shell.transition(&phase, &n, "approved", None);
                phase = n;
                queue.extend(c);
                continue;
            }
            Wake::Tick => {}
        }
        if Instant::now() < next_tick {
            continue;
        }
        // Analyse the window that just ended.
        let now = shell.now();
        let window = Window {
            seq,
            start: shell.wall(window_start),
            end: shell.wall(now),
            weight: shell.weight,
        };
        seq += 1;
        shell.ticks += 1;
        // A window that starts inside the warm-up is discarded whole.
        let warming = first_traffic.is_some_and(|t| window_start < t + plan.warmup);
        let (statuses, records, requests) = shell.analyse(&window, !warming).await;
        let now = shell.now();
        let (n, c) = if warming {
            // Nothing judged: the phase stays, with its reason on record.
            let since = now.saturating_sub(first_traffic.unwrap_or(now));
            let hold = Decision::Hold {
                reason: format!(
                    "warming up: {:.0}s of {:.0}s, data discarded",
                    since.as_secs_f64(),
                    plan.warmup.as_secs_f64()
                ),
            };
            (phase.clone(), vec![Command::Record(hold)])
        } else {
            step(
                phase.clone(),
                Event::Tick {
                    now,
                    metrics: statuses,
                    requests,
                },
                plan,
            )
        };
        let decision = c.iter().find_map(|c| match c {
            Command::Record(d) => Some(d.clone()),
            _ => None,
        });
        let step_requests = match &n {
            Phase::Progressing(p) => p.requests,
            _ => {
                let r = requests.unwrap_or([0.0, 0.0]);
                [
                    step_requests_before[0] + r[0],
                    step_requests_before[1] + r[1],
                ]
            }
        };
        let r = Record {
            kind: RecordKind::Tick,
            rollout: policy.name.clone(),
            time: rfc3339(shell.wall(now)),
            elapsed_s: now.as_secs_f64(),
            phase: phase.name(),
            next_phase: n.name(),
            step: Some(step_before + 1),
            steps: plan.steps.len(),
            weight: shell.weight,
            window: Some(WindowRecord {
                seq: window.seq,
                start: rfc3339(window.start),
                end: rfc3339(window.end),
            }),
            requests: requests.map(|w| RequestsRecord {
                window: w,
                step: step_requests,
            }),
            metrics: records.clone(),
            decision: decision.clone().or(Some(Decision::Hold {
                reason: String::new(),
            })),
            event: None,
            detail: None,
        };
        // Written before acting on it.
        shell.record(&r);
        shell.last = records;
        phase = n;
        queue.extend(c);
        next_tick += plan.analysis_interval;
        if next_tick < Instant::now() {
            next_tick = Instant::now() + plan.analysis_interval;
        }
        window_start = now;
    }

    match &phase {
        Phase::Promoted => {
            shell
                .run_hooks(HookWhen::Promoted, &phase, "promoted")
                .await;
        }
        Phase::RolledBack { .. } => {
            shell
                .run_hooks(HookWhen::RolledBack, &phase, "rolled-back")
                .await;
        }
        _ => {}
    }
    if let Some(n) = &mut shell.notifier {
        n.flush().await;
    }
    let outcome = match &phase {
        Phase::Promoted => FinalOutcome::Promoted,
        Phase::RolledBack { reason } => FinalOutcome::RolledBack {
            reason: reason.clone(),
        },
        Phase::Failed { reason } => FinalOutcome::Failed {
            reason: reason.clone(),
        },
        other => FinalOutcome::Failed {
            reason: format!("controller stopped in phase {}", other.name()),
        },
    };
    Ok(RunReport {
        rollout: policy.name.clone(),
        exit_code: outcome.exit_code(),
        outcome,
        duration_s: shell.now().as_secs_f64(),
        ticks: shell.ticks,
        steps_reached: shell.steps_reached,
        steps: plan.steps.len(),
        final_weight: shell.weight,
        metrics: shell.last,
        decisions: path,
    })
}
