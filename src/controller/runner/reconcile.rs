//! The resumable step over one rollout: load, decide, persist, act.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use futures_util::future::join_all;
use tokio::time::Instant;

use super::shell::{Shell, baseline_errors};
use super::{
    Analysed, Durable, Error, FinalOutcome, Lever, Loop, Observer, RunOptions, RunReport, Wake,
    not_started_text, paused_total,
};
use crate::analysis::MetricJudge;
use crate::controller::health::Health;
use crate::controller::hooks::Notifier;
use crate::controller::machine::{
    Command, Decision, Event, NO_PREVIEW_SHARE, Phase, WindowFacts, judging, step,
};
use crate::controller::record::{
    Record, RecordKind, RecordLog, RequestsRecord, WindowRecord, rfc3339,
};
use crate::controller::store::{Store, new_rollout_id};
use crate::metrics::{MetricsSource, Window};
use crate::model::Weight;
use crate::policy::hooks::HookWhen;
use crate::policy::{Policy, Rollout, bounds};
use crate::traffic::TrafficProvider;

/// One rollout in a controller's hands, as a resumable step over its state: load (a
/// fresh start or the stored record) → decide ([`step`], the only place of decisions) →
/// persist (the store, before acting) → act (the traffic change, the hooks, the checks).
/// [`run`](super::run) and [`run_durable`](super::run_durable) drive one rollout to its end; a daemon driving many rollouts
/// wakes each one at [`Reconciler::wake_at`] (or on an abort or a lever) and calls
/// [`Reconciler::reconcile`], until [`Reconciler::finished`].
pub struct Reconciler<'a, T, M, S> {
    shell: Shell<'a, T, M, S>,
    l: Loop,
    phase: Phase,
    done: bool,
}

impl<'a, T: TrafficProvider, M: MetricsSource, S: Store> Reconciler<'a, T, M, S> {
    /// Loads the rollout (resumes `durable.resume`, else starts it), decides its first
    /// move, persists it and acts on it: the checks, then the first step's weight, or what a
    /// resumed record says was in progress. `opts.abort` and `opts.levers` are the
    /// caller's to watch (see [`Wake`]).
    ///
    /// # Errors
    /// When the run cannot start (the decision log cannot be opened, the stored record
    /// does not fit the policy).
    #[allow(clippy::too_many_lines)] // the set-up of one rollout, read top to bottom
    pub async fn start(
        policy: &'a Policy,
        traffic: &'a T,
        source: &'a M,
        mut durable: Option<Durable<'a, S>>,
        opts: RunOptions,
        observer: &'a mut dyn Observer,
    ) -> Result<Self, Error> {
        let resume = durable.as_mut().and_then(|d| d.resume.take());
        let path = opts
            .decisions
            .clone()
            .or_else(|| resume.as_ref().and_then(|r| r.decisions.clone()))
            .or_else(|| policy.decisions.clone());
        let log = match &path {
            Some(p) => Some(RecordLog::open(p).map_err(|source| Error::DecisionLog {
                path: p.clone(),
                source,
            })?),
            None => None,
        };
        let plan = &policy.rollout;
        let fresh_judges = || -> Vec<MetricJudge> {
            policy
                .metrics
                .iter()
                .map(|m| MetricJudge::new(&m.judge))
                .collect()
        };
        let judges = match &resume {
            Some(r) if r.judges.0.len() == policy.metrics.len() => r.judges.0.clone(),
            Some(r) => {
                return Err(Error::Unresumable {
                    rollout: policy.name.clone(),
                    why: format!(
                        "it holds {} judges, the policy has {} metrics",
                        r.judges.0.len(),
                        policy.metrics.len()
                    ),
                });
            }
            None => fresh_judges(),
        };
        let rollout_id = match (&durable, &resume) {
            (_, Some(r)) => r.rollout_id.clone(),
            (Some(d), None) => d.rollout_id.clone(),
            (None, None) => new_rollout_id(),
        };
        let policy_sha256 = durable
            .as_ref()
            .map(|d| d.policy.sha256.clone())
            .or(opts.policy_sha256.clone());
        // Time nobody watched the rollout: from the record's last write to now.
        let downtime = resume.as_ref().map_or(Duration::ZERO, |r| {
            SystemTime::now()
                .duration_since(r.saved_at)
                .unwrap_or_default()
        });
        let restart = durable.as_mut().and_then(|d| d.restart.take());
        let mut shell = Shell {
            policy,
            traffic,
            source,
            log,
            observer,
            durable,
            rollout_id,
            policy_sha256,
            decisions: path.clone(),
            operator_actions: resume.as_ref().map_or(0, |r| r.operator_actions),
            base: resume
                .as_ref()
                .map_or(Duration::ZERO, |r| r.elapsed + downtime),
            start: Instant::now(),
            wall0: resume
                .as_ref()
                .map_or_else(SystemTime::now, |r| r.started_at),
            weight: traffic.current().await.unwrap_or(Weight::ZERO),
            judges,
            last: Vec::new(),
            ticks: resume.as_ref().map_or(0, |r| r.ticks),
            watched: false,
            steps_reached: resume.as_ref().map_or(0, |r| r.steps_reached),
            log_failed: None,
            pending: Vec::new(),
            notifier: policy.notify.clone().map(Notifier::new),
            readiness: opts.readiness,
            deposed: None,
            dry_run: opts.dry_run,
            would: None,
        };
        let mut l = Loop {
            queue: VecDeque::new(),
            seq: resume.as_ref().map_or(0, |r| r.seq),
            first_traffic: resume.as_ref().and_then(|r| r.first_traffic),
            next_tick: Instant::now(),
            window_start: shell.now(),
            saved: None,
            paused_for: Duration::ZERO,
        };
        let mut phase = Phase::Pending;
        if let Some(r) = resume {
            // Take the rollout over: read back what is in force and let the machine decide.
            let limit = plan.apply_timeout;
            let found = match tokio::time::timeout(limit, traffic.current()).await {
                Ok(Ok(w)) => Some(w),
                _ => None,
            };
            let now = shell.now();
            let before = r.phase.clone();
            let (next, cmds) = step(
                r.phase,
                Event::Restored {
                    found,
                    applied: r.weight,
                    downtime,
                    now,
                },
                plan,
            );
            let detail = format!(
                "run {} taken over from its record in phase {}{}: weight recorded {}, in force {}; nobody watched for {:.1}s (counted toward the deadline, not toward the step's time)",
                shell.rollout_id,
                before.name(),
                Shell::<T, M, S>::step_of(&before)
                    .map_or(String::new(), |s| format!(" at step {s}")),
                r.weight,
                found.map_or_else(|| "unknown (no answer)".to_string(), |w| w.to_string()),
                downtime.as_secs_f64(),
            );
            shell.note(
                RecordKind::Resumed,
                &before,
                &next,
                "resumed",
                Some(detail),
                None,
            );
            phase = next;
            l.queue.extend(cmds);
            l.next_tick = Instant::now() + plan.analysis_interval;
        } else {
            // Always: the provider and the source must answer before any traffic moves.
            let (next, cmds) = step(
                phase.clone(),
                Event::Start {
                    now: shell.now(),
                    pre_checks: true,
                },
                plan,
            );
            shell.transition(&phase, &next, "started", restart);
            if plan.blue_green() && shell.dry_run.is_none() {
                let detail = format!(
                    "blue-green: green is checked at 0% before one switch to 100%; {NO_PREVIEW_SHARE}"
                );
                shell.transition(&phase, &next, "blue-green", Some(detail));
            }
            if let Some(d) = &shell.dry_run {
                let detail = format!(
                    "dry run: the traffic provider is only read, no weight is set; {}",
                    if d.not_run.is_empty() {
                        "no hook or gate to skip".to_string()
                    } else {
                        format!("not run: {}", d.not_run.join(", "))
                    }
                );
                shell.transition(&phase, &next, "dry-run", Some(detail));
            }
            phase = next;
            l.queue.extend(cmds);
        }

        let mut r = Reconciler {
            shell,
            l,
            phase,
            done: false,
        };
        r.settle().await;
        Ok(r)
    }

    /// Whether the rollout has ended (nothing more to reconcile: see [`Self::finish`]).
    #[must_use]
    pub fn finished(&self) -> bool {
        self.done
    }

    /// Why this controller stopped acting on the rollout, if it did: the store refused a
    /// write or the fence check before a traffic change (another replica leads, or etcd
    /// could not confirm this one does). A deposed rollout is never finished; drop it
    /// (its owner resumes it from the store).
    #[must_use]
    pub fn deposed(&self) -> Option<&str> {
        self.shell.deposed.as_deref()
    }

    /// When the rollout's next analysis tick is due ([`Wake::Tick`]).
    #[must_use]
    pub fn wake_at(&self) -> Instant {
        self.l.next_tick
    }

    /// Where the rollout is.
    #[must_use]
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// Writes the rollout's record now, as it stands (the judges' state included), for a
    /// controller that stops with the rollout unfinished: the next one resumes from here.
    /// `release` clears the record's control API (no controller runs the rollout any more).
    pub async fn checkpoint(&mut self, release: bool) {
        if release && let Some(d) = &mut self.shell.durable {
            d.control = None;
        }
        let last = Some(self.phase.name().to_string());
        self.shell.persist(&self.phase, &self.l, last).await;
        self.l.saved = Some(self.phase.clone());
    }

    /// One reconcile step: feeds `wake` to the machine (a tick analyses the window that
    /// ended; an early tick does nothing), persists what it decided, then acts on it until
    /// the rollout waits again or has ended.
    pub async fn reconcile(&mut self, wake: Wake) {
        if self.done || self.shell.deposed.is_some() {
            return;
        }
        self.decide(wake).await;
        self.settle().await;
    }

    /// Carries out the queued commands, persisting the state before each one; `true` once
    /// the machine said the rollout is finished.
    #[allow(clippy::too_many_lines)] // one match over the commands
    async fn act(&mut self) -> bool {
        let Reconciler {
            shell, l, phase, ..
        } = self;
        let policy = shell.policy;
        let plan = &policy.rollout;
        loop {
            // Persist before acting: the store always knows what is about to be done
            // (and keeps the records that led here, when it keeps records).
            if l.saved.as_ref() != Some(&*phase) || !shell.pending.is_empty() {
                shell
                    .persist(phase, l, Some(phase.name().to_string()))
                    .await;
                l.saved = Some(phase.clone());
            }
            if shell.deposed.is_some() {
                l.queue.clear();
                return false;
            }
            let Some(cmd) = l.queue.pop_front() else {
                return false;
            };
            if let Some(p) = paused_total(&*phase, shell.now()) {
                l.paused_for = p;
            }
            match cmd {
                Command::Apply { weight, delay } => {
                    // Forward moves must end by the deadline, a rollback one apply_timeout
                    // after it (time paused is added, as the deadline's own rule does).
                    let rolling_back = matches!(phase, Phase::RollingBack { .. });
                    // A rollback may come from the post-promotion window or keep_blue, after
                    // the deadline.
                    let end = bounds::plus(
                        bounds::plus(plan.deadline, l.paused_for),
                        if rolling_back {
                            bounds::plus(
                                plan.apply_timeout,
                                bounds::plus(plan.post_promotion, plan.keep_blue),
                            )
                        } else {
                            Duration::ZERO
                        },
                    );
                    let left = end.saturating_sub(shell.now());
                    if !delay.is_zero() {
                        tokio::time::sleep(delay.min(left)).await;
                    }
                    let mut left = end.saturating_sub(shell.now());
                    if matches!(phase, Phase::RollingBack { attempt: 0, .. }) {
                        // A rollback always gets one full attempt, whenever it starts.
                        left = left.max(plan.apply_timeout);
                    }
                    let event = if left.is_zero() {
                        Event::OutOfTime {
                            weight,
                            now: shell.now(),
                        }
                    } else {
                        // The fence, right before the provider call, which it also bounds:
                        // the call is given up before the ownership could lapse.
                        let Ok(bound) = shell.fence().await else {
                            l.queue.clear();
                            return false;
                        };
                        let limit = left.min(plan.apply_timeout);
                        shell
                            .apply(weight, bound.map_or(limit, |b| limit.min(b)))
                            .await
                    };
                    if l.first_traffic.is_none()
                        && matches!(event, Event::Applied { weight, .. } if weight.bp() > 0)
                    {
                        l.first_traffic = Some(shell.now());
                    }
                    let (label, detail) = match &event {
                        Event::Applied { .. } => ("weight-applied", None),
                        Event::ApplyFailed { error, .. } => ("apply-failed", Some(error.clone())),
                        Event::OutOfTime { weight, .. } => {
                            ("out-of-time", Some(format!("no time left to set {weight}")))
                        }
                        Event::Preempted { weight, found, .. } => (
                            "preempted",
                            Some(format!(
                                "set {weight}, then {found} was in force: changed outside coalmine"
                            )),
                        ),
                        _ => ("event", None),
                    };
                    let (n, c) = step(phase.clone(), event, plan);
                    if matches!(
                        n,
                        Phase::Promoted | Phase::Watching(_) | Phase::KeepingBlue(_)
                    ) {
                        shell.steps_reached = plan.steps.len();
                    }
                    if let Phase::Watching(_) | Phase::KeepingBlue(_) = &n {
                        l.next_tick = Instant::now() + plan.analysis_interval;
                        l.window_start = shell.now();
                    }
                    if let Phase::Progressing(p) = &n {
                        shell.steps_reached = shell.steps_reached.max(p.step + 1);
                        // A new step: the next window starts now.
                        l.next_tick = Instant::now() + plan.analysis_interval;
                        l.window_start = shell.now();
                    }
                    let detail = match (&n, detail) {
                        (Phase::Watching(_), None) => Some(format!(
                            "100% in force; judging it for post_promotion {} with the threshold guards (comparisons are not judged: no concurrent baseline), rolling back on a Fail",
                            humantime::format_duration(plan.post_promotion)
                        )),
                        (Phase::KeepingBlue(_), None) => Some(keeping_blue_text(plan)),
                        (Phase::Promoted, None) if !shell.analysed() => Some(
                            "without analysis: a blind cutover, nothing was analysed".to_string(),
                        ),
                        (Phase::RolledBack { reason }, None) => Some(reason.to_string()),
                        (Phase::Failed { reason }, _) => Some(reason.clone()),
                        (_, d) => d,
                    };
                    let label = match &n {
                        Phase::Promoted if shell.dry_run.is_some() => "would-promote",
                        Phase::RolledBack { .. } if shell.dry_run.is_some() => "would-rollback",
                        Phase::Promoted => "promoted",
                        Phase::RolledBack { .. } => "rolled-back",
                        Phase::Failed { .. } => "failed",
                        Phase::Progressing(_) if shell.dry_run.is_some() => "weight-in-force",
                        Phase::Watching(_) => "post-promotion",
                        Phase::KeepingBlue(_) => "keeping-blue",
                        _ => label,
                    };
                    let detail = match label {
                        "would-promote" | "would-rollback" => {
                            let why = detail.unwrap_or_else(|| {
                                format!(
                                    "the evidence was complete at the weight in force {}",
                                    shell.weight
                                )
                            });
                            let would =
                                format!("{label} at {:.0} s: {why}", shell.now().as_secs_f64());
                            shell.would = Some(would.clone());
                            Some(format!("{would}; nothing was changed (dry run)"))
                        }
                        _ => detail,
                    };
                    shell.transition(&*phase, &n, label, detail);
                    *phase = n;
                    l.queue.extend(c);
                }
                Command::Finish => return true,
                Command::Record(_) => {}
                Command::Notify(note) => {
                    let wall0 = shell.wall0;
                    let at = move |d: Duration| rfc3339(wall0 + d);
                    let detail = note.detail(&at);
                    shell.transition(&*phase, &*phase, note.event(), Some(detail));
                }
                Command::RunGates { step: target } => {
                    let gates = plan.gates_before(target).into_iter().cloned().collect();
                    let refused = shell.ask_gates(gates, Some(target), &*phase).await;
                    if refused.is_some() && matches!(phase, Phase::Confirming { .. }) {
                        // Asked again at the next tick.
                        l.next_tick = Instant::now() + plan.analysis_interval;
                    }
                    let event = Event::GatesDone {
                        step: target,
                        refused,
                        now: shell.now(),
                    };
                    let (n, c) = step(phase.clone(), event, plan);
                    *phase = n;
                    l.queue.extend(c);
                }
                Command::RunPreChecks => {
                    let failed = shell.pre_checks(&*phase).await;
                    let event = Event::PreChecksDone {
                        failed,
                        now: shell.now(),
                    };
                    let (n, c) = step(phase.clone(), event, plan);
                    match &n {
                        Phase::NotStarted { reason } => {
                            shell.transition(
                                &*phase,
                                &n,
                                "not-started",
                                Some(not_started_text(reason)),
                            );
                        }
                        Phase::PreChecks => {}
                        _ => shell.transition(&*phase, &n, "checks-passed", None),
                    }
                    *phase = n;
                    l.queue.extend(c);
                }
            }
        }
    }

    /// Acts until the rollout waits for its next wake-up or has ended; a decision log or a
    /// store that stopped taking records, or a phase with nothing to wait for, rolls back.
    async fn settle(&mut self) {
        loop {
            let ended = self.act().await;
            if self.shell.deposed.is_some() {
                return;
            }
            if ended || self.phase.is_terminal() {
                self.done = true;
                return;
            }
            if let Some(why) = self.shell.log_failed.take() {
                let c = self.shell.abort(&mut self.phase, why);
                self.l.queue.extend(c);
                continue;
            }
            if !matches!(
                self.phase,
                Phase::Progressing(_)
                    | Phase::Paused(_)
                    | Phase::Confirming { .. }
                    | Phase::Watching(_)
                    | Phase::KeepingBlue(_)
            ) {
                // Nothing to wait for (a rejected event left the phase unchanged): stop safely.
                let why = format!("controller stuck in phase {}", self.phase.name());
                let c = self.shell.abort(&mut self.phase, why);
                self.l.queue.extend(c);
                continue;
            }
            return;
        }
    }

    /// Feeds one wake-up to the machine and queues the commands it decided (the tick's
    /// record is written before any of them is carried out).
    #[allow(clippy::too_many_lines)] // the analysis of one window, read top to bottom
    async fn decide(&mut self, wake: Wake) {
        let Reconciler {
            shell, l, phase, ..
        } = self;
        let policy = shell.policy;
        let source = shell.source;
        let plan = &policy.rollout;
        match wake {
            Wake::Abort(why) => {
                l.queue.extend(shell.abort(phase, why));
                return;
            }
            Wake::Lever(lever) => {
                let now = shell.now();
                if let Some(p) = paused_total(&*phase, now) {
                    l.paused_for = p;
                }
                let (event, label) = match lever {
                    Lever::Approve => (Event::Approve { now }, "approved"),
                    Lever::Pause { why } => (Event::Pause { why, now }, "pause-requested"),
                    Lever::Resume => (Event::Resume { now }, "resume-requested"),
                    Lever::Refused { action, actor, why } => {
                        shell.operator_actions += 1;
                        shell.refuse(phase, &action, actor, &format!("{why}; nothing was done"));
                        return;
                    }
                    Lever::Operator {
                        action,
                        actor,
                        reason,
                    } => {
                        let Some(event) = shell.operator(&*phase, &action, actor, &reason) else {
                            return;
                        };
                        if let Event::Abort { why, .. } = event {
                            l.queue.extend(shell.abort(phase, why));
                            return;
                        }
                        (event, action.name())
                    }
                };
                let (n, c) = step(phase.clone(), event, plan);
                shell.transition(&*phase, &n, label, None);
                *phase = n;
                l.queue.extend(c);
                return;
            }
            Wake::Tick => {}
        }
        if Instant::now() < l.next_tick {
            return;
        }
        if let Phase::Confirming { .. } = &*phase {
            // No traffic has moved: nothing to analyse, the gates are asked again.
            let event = Event::Tick {
                now: shell.now(),
                metrics: Vec::new(),
                requests: None,
                facts: WindowFacts::default(),
            };
            let (n, c) = step(phase.clone(), event, plan);
            if let Phase::NotStarted { reason } = &n {
                shell.transition(&*phase, &n, "not-started", Some(reason.to_string()));
            }
            *phase = n;
            l.queue.extend(c);
            l.next_tick = Instant::now() + plan.analysis_interval;
            return;
        }
        if let Phase::KeepingBlue(_) = &*phase {
            // Nothing is judged: only the weight in force is read (never overridden).
            let in_force = shell.in_force(Weight::FULL).await;
            let event = Event::Tick {
                now: shell.now(),
                metrics: Vec::new(),
                requests: None,
                facts: WindowFacts {
                    in_force,
                    ..WindowFacts::default()
                },
            };
            let (n, c) = step(phase.clone(), event, plan);
            if let Phase::Promoted = &n {
                let detail = format!(
                    "keep_blue of {} ended: blue is retired (the blue-retired gates are told), green keeps 100%",
                    humantime::format_duration(plan.keep_blue)
                );
                shell.transition(&*phase, &n, "promoted", Some(detail));
            }
            *phase = n;
            l.queue.extend(c);
            l.next_tick = Instant::now() + plan.analysis_interval;
            l.window_start = shell.now();
            return;
        }
        let (step_before, step_requests_before, applied, step_since) = match &*phase {
            Phase::Progressing(p) => (p.step, p.requests, p.weight, Some(p.since)),
            Phase::Paused(z) => (
                z.progress.step,
                z.progress.requests,
                z.progress.weight,
                Some(z.progress.since),
            ),
            Phase::Watching(w) => {
                shell.watched = true;
                (
                    plan.steps.len().saturating_sub(1),
                    [0.0, 0.0],
                    Weight::FULL,
                    Some(w.since),
                )
            }
            // settle() leaves no other phase waiting for a tick.
            _ => return,
        };
        // Analyse the window that just ended.
        let now = shell.now();
        let window = Window {
            seq: l.seq,
            start: shell.wall(l.window_start),
            end: shell.wall(now),
            weight: applied,
        };
        l.seq += 1;
        shell.ticks += 1;
        let fetches = join_all(policy.metrics.iter().map(|m| source.fetch(m, &window))).await;
        // What weight is in force, read as late as possible before deciding: a change by
        // someone else between this read and the next traffic change cannot be seen (that
        // would need compare-and-set from the provider), so the gap is kept to the decision
        // and its record.
        let in_force = shell.in_force(applied).await;
        // A window that starts inside the warm-up is discarded whole (it was still fetched:
        // sources keep their windows contiguous).
        let warming = l
            .first_traffic
            .is_some_and(|t| l.window_start < t + plan.warmup);
        let unanalysed = !plan.analysed(step_before);
        let mut facts = WindowFacts {
            baseline_errors: baseline_errors(&policy.metrics, &fetches),
            in_force,
            discarded: None,
        };
        let now = shell.now();
        let (analysed, health) = if warming || unanalysed {
            let since = now.saturating_sub(l.first_traffic.unwrap_or(now));
            facts.discarded = Some(if unanalysed {
                format!(
                    "step {} has analysis = false: data discarded, nothing judged",
                    step_before + 1
                )
            } else {
                format!(
                    "warming up: {:.0}s of {:.0}s, data discarded",
                    since.as_secs_f64(),
                    plan.warmup.as_secs_f64()
                )
            });
            facts.baseline_errors = None;
            let empty = Analysed {
                statuses: Vec::new(),
                records: Vec::new(),
                requests: None,
            };
            (empty, Health::Unknown)
        } else {
            let j = judging(&*phase, &facts, plan);
            (shell.judge(&window, fetches, &j), j.health)
        };
        let (n, c) = step(
            phase.clone(),
            Event::Tick {
                now,
                metrics: analysed.statuses,
                requests: analysed.requests,
                facts,
            },
            plan,
        );
        let decision = c.iter().find_map(|c| match c {
            Command::Record(d) => Some(d.clone()),
            _ => None,
        });
        let step_requests = match &n {
            Phase::Progressing(p) => p.requests,
            Phase::Paused(z) => z.progress.requests,
            _ => {
                let r = analysed.requests.unwrap_or([0.0, 0.0]);
                [
                    step_requests_before[0] + r[0],
                    step_requests_before[1] + r[1],
                ]
            }
        };
        let r = Record {
            kind: RecordKind::Tick,
            rollout: policy.name.clone(),
            rollout_id: shell.rollout_id.clone(),
            version: env!("CARGO_PKG_VERSION"),
            policy_sha256: shell.policy_sha256.clone(),
            actor: None,
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
            since_s: step_since.map(|d| d.as_secs_f64()),
            requests: analysed.requests.map(|w| RequestsRecord {
                window: w,
                step: step_requests,
            }),
            baseline: (health != Health::Unknown).then_some(health),
            metrics: analysed.records.clone(),
            decision: decision.clone().or(Some(Decision::Hold {
                reason: String::new(),
            })),
            event: None,
            detail: None,
        };
        // Written before acting on it.
        shell.record(&r);
        match (&*phase, &n) {
            (Phase::Watching(_), Phase::Promoted) => {
                let detail = format!(
                    "the post-promotion window of {} ended without a Fail: 100% stays on the canary",
                    humantime::format_duration(plan.post_promotion)
                );
                shell.transition(&*phase, &n, "promoted", Some(detail));
            }
            (Phase::Watching(_), Phase::KeepingBlue(_)) => {
                let detail = format!(
                    "the post-promotion window of {} ended without a Fail; {}",
                    humantime::format_duration(plan.post_promotion),
                    keeping_blue_text(plan)
                );
                shell.transition(&*phase, &n, "keeping-blue", Some(detail));
            }
            _ => {}
        }
        if !analysed.records.is_empty() {
            shell.last = analysed.records;
        }
        *phase = n;
        l.queue.extend(c);
        l.next_tick += plan.analysis_interval;
        if l.next_tick < Instant::now() {
            l.next_tick = Instant::now() + plan.analysis_interval;
        }
        l.window_start = now;
    }

    /// Runs the outcome's hooks and returns the report (the record was persisted when the
    /// machine ended the rollout; once more here if it was not).
    pub async fn finish(self) -> RunReport {
        let Reconciler {
            mut shell,
            l,
            phase,
            ..
        } = self;
        let policy = shell.policy;
        let plan = &policy.rollout;
        if l.saved.as_ref() != Some(&phase) || !shell.pending.is_empty() {
            shell
                .persist(&phase, &l, Some(phase.name().to_string()))
                .await;
        }
        match &phase {
            // A dry run acts on nothing (its shadow policy has no hooks or gates anyway).
            _ if shell.dry_run.is_some() => {}
            Phase::Promoted => {
                shell
                    .run_hooks(HookWhen::Promoted, &phase, "promoted")
                    .await;
                if plan.blue_green() {
                    let told: Vec<_> = plan
                        .gates
                        .iter()
                        .filter(|g| g.kind == crate::policy::gates::GateKind::BlueRetired)
                        .cloned()
                        .collect();
                    shell.ask_gates(told, None, &phase).await;
                }
            }
            Phase::RolledBack { .. } => {
                shell
                    .run_hooks(HookWhen::RolledBack, &phase, "rolled-back")
                    .await;
                let told: Vec<_> = plan
                    .gates
                    .iter()
                    .filter(|g| g.kind == crate::policy::gates::GateKind::Rollback)
                    .cloned()
                    .collect();
                shell.ask_gates(told, None, &phase).await;
            }
            _ => {}
        }
        // The hooks' and gates' records, for a store that keeps them.
        if !shell.pending.is_empty() && shell.deposed.is_none() {
            shell
                .persist(&phase, &l, Some(phase.name().to_string()))
                .await;
        }
        if let Some(n) = &mut shell.notifier {
            n.flush().await;
        }
        let outcome = match &phase {
            Phase::Promoted => FinalOutcome::Promoted,
            Phase::RolledBack { reason } => FinalOutcome::RolledBack {
                reason: reason.clone(),
            },
            Phase::NotStarted { reason } => FinalOutcome::NotStarted {
                reason: reason.clone(),
            },
            Phase::Failed { reason } => FinalOutcome::Failed {
                reason: reason.clone(),
            },
            other => FinalOutcome::Failed {
                reason: format!("controller stopped in phase {}", other.name()),
            },
        };
        let exit_code = match (&shell.dry_run, &outcome) {
            // A dry run that reached a verdict did what it was asked.
            (Some(_), FinalOutcome::Promoted | FinalOutcome::RolledBack { .. }) => 0,
            _ => outcome.exit_code(),
        };
        RunReport {
            rollout: policy.name.clone(),
            exit_code,
            outcome,
            duration_s: shell.now().as_secs_f64(),
            ticks: shell.ticks,
            analysed: shell.analysed(),
            steps_reached: shell.steps_reached,
            steps: plan.steps.len(),
            final_weight: shell.weight,
            metrics: shell.last,
            decisions: shell.decisions.clone(),
            would: shell.would.clone(),
            not_run: shell.dry_run.map(|d| d.not_run).unwrap_or_default(),
        }
    }
}

/// What keep_blue means, for the records.
fn keeping_blue_text(plan: &Rollout) -> String {
    format!(
        "100% on green; blue stays deployed for keep_blue {} (nothing is judged; `coalmine rollback` switches back to blue meanwhile), then the blue-retired gates are told",
        humantime::format_duration(plan.keep_blue)
    )
}
