//! What the reconciler acts through: the store (persist, fence), the decision log and
//! notifications (record, note, transition), the hooks, gates and pre-rollout checks, the
//! traffic provider (apply, in_force) and one analysis tick (judge).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::{
    Analysed, CHECK_CANARY, CHECK_PROVIDER, CHECK_SOURCE, DryRun, Durable, Loop, Observer,
    OperatorAction, judge_window,
};
use crate::analysis::observation::Shape;
use crate::analysis::{MetricJudge, Observation, Stats};
use crate::controller::health::ErrorCounts;
use crate::controller::hooks::{Notifier, run_hook};
use crate::controller::machine::{Command, Event, Judging, Phase, step};
use crate::controller::readiness::CanaryProbe;
use crate::controller::record::{
    MetricRecord, Record, RecordKind, RecordLog, SegmentRecord, rfc3339,
};
use crate::controller::store::{FORMAT, Judges, RolloutState, Store, StoreError};
use crate::metrics::{Fetched, MetricsError, MetricsSource, Window};
use crate::model::Weight;
use crate::policy::hooks::HookWhen;
use crate::policy::{BuiltinSignal, DataSpec, MetricConfig, Policy};
use crate::traffic::TrafficProvider;

pub(super) struct Shell<'a, T, M, S> {
    pub(super) policy: &'a Policy,
    pub(super) traffic: &'a T,
    pub(super) source: &'a M,
    pub(super) log: Option<RecordLog>,
    pub(super) observer: &'a mut dyn Observer,
    pub(super) durable: Option<Durable<'a, S>>,
    pub(super) rollout_id: String,
    pub(super) policy_sha256: Option<String>,
    pub(super) decisions: Option<PathBuf>,
    pub(super) operator_actions: u64,
    /// The controller's clock when this process took the rollout over (zero for a fresh
    /// start): `now()` continues from the stored offset.
    pub(super) base: Duration,
    pub(super) start: Instant,
    pub(super) wall0: SystemTime,
    pub(super) weight: Weight,
    pub(super) judges: Vec<MetricJudge>,
    pub(super) last: Vec<MetricRecord>,
    pub(super) ticks: u64,
    /// A window after the switch to 100 % was judged (post_promotion): a promotion after
    /// it was analysed even when no step below 100 % was.
    pub(super) watched: bool,
    pub(super) steps_reached: usize,
    pub(super) log_failed: Option<String>,
    /// Records made since the last save, for a store that keeps them
    /// ([`Store::keeps_records`]): written with the next save, in the same write.
    pub(super) pending: Vec<String>,
    pub(super) notifier: Option<Notifier>,
    pub(super) readiness: Option<CanaryProbe>,
    /// Set when the store refused a write or a fence check (this controller no longer owns
    /// the rollout, or cannot prove it does): from then on nothing is acted on.
    pub(super) deposed: Option<String>,
    /// A dry run: the provider is never set.
    pub(super) dry_run: Option<DryRun>,
    /// A dry run's verdict, once reached.
    pub(super) would: Option<String>,
}

/// Whether a metric's data are error counts (for baseline health).
fn counts_errors(m: &MetricConfig) -> bool {
    m.shape == Shape::Counts
        && !m.dry_run
        && matches!(
            m.data,
            DataSpec::Builtin(BuiltinSignal::Errors) | DataSpec::Counts { .. }
        )
}

/// The baseline's error counts of the window: of the metrics counting errors, the one with
/// the highest baseline rate.
#[must_use]
pub fn baseline_errors(
    metrics: &[MetricConfig],
    fetches: &[Result<Fetched, MetricsError>],
) -> Option<ErrorCounts> {
    let mut worst: Option<ErrorCounts> = None;
    for (m, f) in metrics.iter().zip(fetches) {
        let Ok(f) = f else { continue };
        if !counts_errors(m) {
            continue;
        }
        let (mut errors, mut requests, mut any) = (0.0, 0.0, false);
        for seg in &f.segments {
            if let Observation::Counts(c) = &seg.baseline
                && c.events.is_finite()
                && c.trials.is_finite()
            {
                errors += c.events.max(0.0);
                requests += c.trials.max(0.0);
                any = true;
            }
        }
        if !any || requests <= 0.0 {
            continue;
        }
        let rate = errors / requests;
        let better = worst
            .as_ref()
            .is_none_or(|w| rate > w.errors / w.requests.max(f64::MIN_POSITIVE));
        if better {
            worst = Some(ErrorCounts {
                metric: m.name.clone(),
                errors,
                requests,
            });
        }
    }
    worst
}

impl<T: TrafficProvider, M: MetricsSource, S: Store> Shell<'_, T, M, S> {
    /// Whether any window was judged (see [`RunReport::analysed`]).
    pub(super) fn analysed(&self) -> bool {
        self.ticks > 0 && (!self.policy.rollout.blind() || self.watched)
    }

    pub(super) fn now(&self) -> Duration {
        self.base + Instant::now().saturating_duration_since(self.start)
    }

    /// Writes the rollout's record to the store (when the run is durable). Called before
    /// every command is carried out, so the store never lags behind what was acted on.
    pub(super) async fn persist(&mut self, phase: &Phase, l: &Loop, last: Option<String>) {
        let Some(d) = &self.durable else { return };
        let state = RolloutState {
            format: FORMAT,
            rollout: self.policy.name.clone(),
            rollout_id: self.rollout_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            revision: d.revision,
            policy: d.policy.clone(),
            phase: phase.clone(),
            steps: self.policy.rollout.steps.len(),
            elapsed: self.now(),
            saved_at: SystemTime::now(),
            started_at: self.wall0,
            weight: self.weight,
            seq: l.seq,
            ticks: self.ticks,
            steps_reached: self.steps_reached,
            first_traffic: l.first_traffic,
            judges: Judges(self.judges.clone()),
            decisions: self.decisions.clone(),
            control: if phase.is_terminal() {
                None
            } else {
                d.control.clone()
            },
            last,
            operator_actions: self.operator_actions,
        };
        match d
            .store
            .save_with_records(&state, d.revision, &self.pending)
            .await
        {
            Ok(rev) => {
                self.pending.clear();
                if let Some(d) = &mut self.durable {
                    d.revision = rev;
                }
            }
            Err(e @ (StoreError::Fenced { .. } | StoreError::Etcd { .. })) => {
                // Not ours any more (or not provably): stop without acting; the owner
                // continues from the last record that was written.
                tracing::warn!(error = %e, "rollout record refused: stopping without acting");
                self.deposed = Some(e.to_string());
            }
            Err(e) => {
                if self.log_failed.is_none() && !phase.is_terminal() {
                    self.log_failed = Some(format!("rollout record unwritable: {e}"));
                }
                tracing::error!(error = %e, "rollout record unwritable");
            }
        }
    }

    pub(super) fn wall(&self, offset: Duration) -> SystemTime {
        self.wall0 + offset
    }

    pub(super) fn step_of(phase: &Phase) -> Option<usize> {
        match phase {
            Phase::Shifting { step, .. } | Phase::Confirming { step, .. } => Some(step + 1),
            Phase::Progressing(p) => Some(p.step + 1),
            Phase::Paused(z) => Some(z.progress.step + 1),
            _ => None,
        }
    }

    /// Asks `gates` in order (up to the first no), each yes recorded (`gate-passed`);
    /// returns the first no and what it said. `target` is the step they guard (`None`: a
    /// rollback or blue-retired gate, told and never waited for).
    pub(super) async fn ask_gates(
        &mut self,
        gates: Vec<crate::policy::gates::Gate>,
        target: Option<usize>,
        phase: &Phase,
    ) -> Option<(String, String)> {
        let plan = &self.policy.rollout;
        for gate in gates {
            let weight = match target {
                Some(i) => plan.steps.get(i).copied().unwrap_or(Weight::FULL),
                None if gate.kind == crate::policy::gates::GateKind::BlueRetired => Weight::FULL,
                None => Weight::ZERO,
            };
            let reason = match phase {
                Phase::RolledBack { reason } => Some(reason.to_string()),
                _ => None,
            };
            let body = serde_json::json!({
                "rollout": self.policy.name,
                "rollout_id": self.rollout_id,
                "gate": gate.name,
                "type": gate.kind.as_str(),
                "phase": phase.name(),
                "step": target.map(|i| i + 1),
                "steps": plan.steps.len(),
                "weight": weight.percent(),
                "weight_in_force": self.weight.percent(),
                "elapsed_s": self.now().as_secs_f64(),
                "reason": reason,
            })
            .to_string();
            let env: Vec<(String, String)> = [
                ("COALMINE_ROLLOUT", self.policy.name.clone()),
                ("COALMINE_GATE", gate.name.clone()),
                ("COALMINE_GATE_TYPE", gate.kind.as_str().to_string()),
                (
                    "COALMINE_STEP",
                    target.map_or(String::new(), |i| (i + 1).to_string()),
                ),
                ("COALMINE_WEIGHT", format!("{}", weight.percent())),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            match crate::controller::gates::ask(&gate, &body, &env).await {
                Ok(said) => self.transition(
                    phase,
                    phase,
                    "gate-passed",
                    Some(format!("{} ({}): {said}", gate.name, gate.kind.as_str())),
                ),
                Err(e) => {
                    if target.is_none() {
                        // A rollback or blue-retired gate is told, never waited for.
                        self.transition(
                            phase,
                            phase,
                            "gate-refused",
                            Some(format!("{} ({}): {e}", gate.name, gate.kind.as_str())),
                        );
                        continue;
                    }
                    return Some((gate.name.clone(), e));
                }
            }
        }
        None
    }

    pub(super) fn record(&mut self, r: &Record) {
        if let Some(log) = &mut self.log
            && let Err(e) = log.write(r)
            && self.log_failed.is_none()
        {
            self.log_failed = Some(format!(
                "decision log {} unwritable: {e}",
                log.path().display()
            ));
        }
        if let Some(d) = &self.durable
            && d.store.keeps_records()
        {
            match serde_json::to_string(r) {
                // Redacted as the file log's lines are.
                Ok(line) => self.pending.push(crate::redact::text(&line).into_owned()),
                Err(e) => tracing::error!(error = %e, "decision record unserializable"),
            }
        }
        self.observer.on_record(r);
        if let Some(n) = &mut self.notifier {
            n.send(r);
        }
    }

    pub(super) fn transition(
        &mut self,
        before: &Phase,
        after: &Phase,
        event: &str,
        detail: Option<String>,
    ) {
        let kind = if after.is_terminal() {
            RecordKind::Final
        } else {
            RecordKind::Transition
        };
        self.note(kind, before, after, event, detail, None);
    }

    /// Writes a record of `kind` (a transition, the takeover of a stored rollout, an
    /// operator's action with its actor).
    pub(super) fn note(
        &mut self,
        kind: RecordKind,
        before: &Phase,
        after: &Phase,
        event: &str,
        detail: Option<String>,
        actor: Option<String>,
    ) {
        let r = self.record_of(kind, before, after, event, detail, actor);
        self.record(&r);
    }

    /// The record [`Self::note`] writes, for a caller that adds to it.
    pub(super) fn record_of(
        &self,
        kind: RecordKind,
        before: &Phase,
        after: &Phase,
        event: &str,
        detail: Option<String>,
        actor: Option<String>,
    ) -> Record {
        let now = self.now();
        Record {
            kind,
            rollout: self.policy.name.clone(),
            rollout_id: self.rollout_id.clone(),
            version: env!("CARGO_PKG_VERSION"),
            policy_sha256: self.policy_sha256.clone(),
            actor,
            time: rfc3339(self.wall(now)),
            elapsed_s: now.as_secs_f64(),
            phase: before.name(),
            next_phase: after.name(),
            step: Self::step_of(after).or(Self::step_of(before)),
            steps: self.policy.rollout.steps.len(),
            weight: self.weight,
            window: None,
            since_s: None,
            requests: None,
            baseline: None,
            metrics: Vec::new(),
            decision: None,
            event: Some(event.to_string()),
            detail,
        }
    }

    /// Runs the hooks for `when` in order, recording each; returns the first failure.
    pub(super) async fn run_hooks(
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

    /// Everything that must answer before traffic moves: the provider, the metrics source,
    /// the canary (built-in proxy), then the policy's pre-rollout hooks. Each is recorded;
    /// returns the first failure.
    pub(super) async fn pre_checks(&mut self, phase: &Phase) -> Option<(String, String)> {
        let limit = self.policy.rollout.apply_timeout;
        let provider = match tokio::time::timeout(limit, self.traffic.preflight()).await {
            Ok(Ok(())) => Ok(format!("provider `{}` answers", self.traffic.name())),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "provider `{}`: no answer within {}",
                self.traffic.name(),
                humantime::format_duration(limit)
            )),
        };
        // The source's own timeouts apply; this is a backstop.
        let source_limit = Duration::from_secs(30);
        let source = match tokio::time::timeout(source_limit, self.source.preflight()).await {
            Ok(Ok(())) => Ok(format!("source `{}` answers", self.source.name())),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "source `{}`: no answer within {}",
                self.source.name(),
                humantime::format_duration(source_limit)
            )),
        };
        for (name, result) in [(CHECK_PROVIDER, provider), (CHECK_SOURCE, source)] {
            if let Some(failed) = self.check_recorded(phase, name, result) {
                return Some(failed);
            }
        }
        if let Some(probe) = self.readiness.clone() {
            let result = probe.check().await;
            if let Some(failed) = self.check_recorded(phase, CHECK_CANARY, result) {
                return Some(failed);
            }
        }
        let failed = self.run_hooks(HookWhen::PreRollout, phase, "pending").await;
        if failed.is_none() {
            self.read_history(phase).await;
        }
        failed
    }

    /// Reads the baseline's latency over `[rollout] baseline_history` before the first
    /// traffic change, for the judges that bet with it (statistics.md §2.5, "History"), and
    /// records what was read, segments included (a backtest replays them). Never stops the
    /// rollout: without it the first window bets with the data-free prior.
    pub(super) async fn read_history(&mut self, phase: &Phase) {
        let span = self.policy.rollout.baseline_history;
        if span.is_zero() {
            return;
        }
        let end = self.wall(self.now());
        let window = Window {
            seq: 0,
            start: end.checked_sub(span).unwrap_or(end),
            end,
            weight: Weight::ZERO,
        };
        let shown = humantime::format_duration(span);
        // The source's own timeouts apply; this is a backstop.
        let limit = Duration::from_secs(30);
        for (i, m) in self.policy.metrics.iter().enumerate() {
            if !self.judges[i].learns_history() {
                continue;
            }
            let read = tokio::time::timeout(limit, self.source.history(m, &window)).await;
            let (detail, fetched) = match read {
                Ok(Ok(Some(f))) => {
                    let requests: f64 = f
                        .segments
                        .iter()
                        .filter_map(|s| match &s.baseline {
                            Observation::Histogram(h) if s.share == 0.0 => Some(h.total()),
                            _ => None,
                        })
                        .sum();
                    self.judges[i].learn_history(&f.segments);
                    let detail = format!(
                        "`{}`: {requests:.0} baseline requests in the {shown} before the first traffic change; the latency bets use them from the first window on (never as evidence)",
                        m.name
                    );
                    (detail, Some(f))
                }
                Ok(Ok(None)) => (
                    format!(
                        "`{}`: source `{}` cannot look back; the first window bets with the data-free prior",
                        m.name,
                        self.source.name()
                    ),
                    None,
                ),
                Ok(Err(e)) => (
                    format!(
                        "`{}`: not read ({e}); the first window bets with the data-free prior",
                        m.name
                    ),
                    None,
                ),
                Err(_) => (
                    format!(
                        "`{}`: no answer within {}; the first window bets with the data-free prior",
                        m.name,
                        humantime::format_duration(limit)
                    ),
                    None,
                ),
            };
            let mut r = self.record_of(
                RecordKind::Transition,
                phase,
                phase,
                "baseline-history",
                Some(detail),
                None,
            );
            if let Some(f) = fetched {
                r.metrics.push(MetricRecord {
                    metric: m.name.clone(),
                    judge: m.judge.name(),
                    outcome: None,
                    reason: "baseline history".to_string(),
                    stats: Stats::None,
                    dry_run: m.dry_run,
                    error: None,
                    observed: SegmentRecord::all(&f.segments),
                    queries: f.queries,
                });
            }
            self.record(&r);
        }
    }

    pub(super) fn check_recorded(
        &mut self,
        phase: &Phase,
        name: &str,
        result: Result<String, String>,
    ) -> Option<(String, String)> {
        match result {
            Ok(said) => {
                self.transition(
                    phase,
                    phase,
                    "check-passed",
                    Some(format!("{name}: {said}")),
                );
                None
            }
            Err(e) => {
                self.transition(phase, phase, "check-failed", Some(format!("{name}: {e}")));
                Some((name.to_string(), e))
            }
        }
    }

    /// Records an operator's action (before acting on it) and turns it into the machine's
    /// event; `None` when it is refused (an approval naming another step than the current
    /// one), which is recorded too.
    pub(super) fn operator(
        &mut self,
        phase: &Phase,
        action: &OperatorAction,
        actor: String,
        reason: &str,
    ) -> Option<Event> {
        self.operator_actions += 1;
        let now = self.now();
        let current = Self::step_of(phase);
        let why = if reason.is_empty() {
            String::new()
        } else {
            format!(": {reason}")
        };
        let after_switch = matches!(phase, Phase::Watching(_) | Phase::KeepingBlue(_));
        let (event, detail) = match action {
            OperatorAction::Promote { full: true, .. } if after_switch => (
                Event::PromoteNow { now },
                if let Phase::Watching(_) = phase {
                    format!("post-promotion window ended now, the promotion stands{why}")
                } else {
                    format!("blue retired now, keep_blue ended{why}")
                },
            ),
            OperatorAction::Promote { step, .. } if current != Some(*step) => {
                let why = format!(
                    "promote names step {step}, the rollout is {}",
                    current.map_or_else(
                        || format!("in phase {}", phase.name()),
                        |c| format!("at step {c}")
                    )
                );
                self.refuse(phase, action, actor, &why);
                return None;
            }
            OperatorAction::Promote { step, full: true } => (
                Event::PromoteNow { now },
                format!(
                    "promote to 100% now from step {step}, skipping the remaining steps and analysis{why}"
                ),
            ),
            OperatorAction::Promote { step, .. } => (
                Event::Release { now },
                format!(
                    "step {step} released{why} (it moves on at the next tick unless a metric fails or evidence is missing)"
                ),
            ),
            OperatorAction::Pause => (
                Event::Pause {
                    why: format!("by {actor}{why}"),
                    now,
                },
                format!("pause{why}"),
            ),
            OperatorAction::Resume => (Event::Resume { now }, format!("resume{why}")),
            OperatorAction::Abort => (
                Event::Abort {
                    why: format!("aborted by {actor}{why}"),
                    now,
                },
                format!("abort{why}"),
            ),
        };
        // A lever the rollout cannot take where it is (a promote while traffic is being
        // shifted, say) is recorded as refused, never as done.
        let ignored = !matches!(event, Event::Abort { .. }) && {
            let (next, cmds) = step(phase.clone(), event.clone(), &self.policy.rollout);
            next == *phase && cmds.is_empty()
        };
        if ignored {
            let why = format!(
                "{} has no effect while the rollout is {}; nothing was done",
                action.name(),
                phase.name()
            );
            self.refuse(phase, action, actor, &why);
            return None;
        }
        self.note(
            RecordKind::Operator,
            phase,
            phase,
            action.name(),
            Some(detail),
            Some(actor),
        );
        Some(event)
    }

    /// Records an operator's action that was refused (`refused: WHY`); nothing is done.
    pub(super) fn refuse(
        &mut self,
        phase: &Phase,
        action: &OperatorAction,
        actor: String,
        why: &str,
    ) {
        self.note(
            RecordKind::Operator,
            phase,
            phase,
            action.name(),
            Some(format!("refused: {why}")),
            Some(actor),
        );
    }

    /// Feeds an abort to the machine, records it, and returns the commands.
    pub(super) fn abort(&mut self, phase: &mut Phase, why: String) -> Vec<Command> {
        let event = Event::Abort {
            why: why.clone(),
            now: self.now(),
        };
        let (next, cmds) = step(phase.clone(), event, &self.policy.rollout);
        self.transition(phase, &next, "aborted", Some(why));
        *phase = next;
        cmds
    }

    /// Checks with the store, right before a traffic change, that this controller still
    /// owns the rollout; `Some(bound)` is how long the ownership is guaranteed, `Err(())`
    /// (with [`Shell::deposed`] set) when it is not.
    pub(super) async fn fence(&mut self) -> Result<Option<Duration>, ()> {
        let Some(d) = &self.durable else {
            return Ok(None);
        };
        match d.store.fence(&self.policy.name).await {
            Ok(bound) => Ok(bound),
            Err(e) => {
                tracing::warn!(error = %e, "fence check failed: stopping without acting");
                self.deposed = Some(e.to_string());
                Err(())
            }
        }
    }

    /// Sets `weight` and reads it back, both within `limit` (at most `apply_timeout`).
    pub(super) async fn apply(&mut self, weight: Weight, limit: Duration) -> Event {
        if self.dry_run.is_some() {
            return self.shadow_apply(weight, limit).await;
        }
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
        let before = self.weight;
        match tokio::time::timeout(limit, self.traffic.current()).await {
            Ok(Ok(cur)) => {
                self.weight = cur;
                if self.within_resolution(cur, weight) {
                    Event::Applied {
                        weight,
                        now: self.now(),
                    }
                } else if !self.within_resolution(cur, before) {
                    // Neither ours nor the old weight (which a slow provider may still
                    // show): someone else set it just now.
                    Event::Preempted {
                        weight,
                        found: cur,
                        now: self.now(),
                    }
                } else {
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

    /// A dry run's [`Self::apply`]: the provider is only read. The weight in force is the
    /// step's (`Applied`); the promotion and the rollback count as applied without being
    /// set (the machine ends there, the record says `would-…`); any other weight found is
    /// someone else's change.
    pub(super) async fn shadow_apply(&mut self, weight: Weight, limit: Duration) -> Event {
        match tokio::time::timeout(limit, self.traffic.current()).await {
            Ok(Ok(cur)) => {
                self.weight = cur;
                let now = self.now();
                if self.within_resolution(cur, weight)
                    || weight == Weight::ZERO
                    || weight == Weight::FULL
                {
                    Event::Applied { weight, now }
                } else {
                    Event::Preempted {
                        weight,
                        found: cur,
                        now,
                    }
                }
            }
            Ok(Err(e)) => Event::ApplyFailed {
                weight,
                error: format!("reading the weight in force: {e}"),
                transient: e.is_transient(),
                now: self.now(),
            },
            Err(_) => Event::ApplyFailed {
                weight,
                error: format!(
                    "provider `{}`: reading the weight in force took longer than {}",
                    self.traffic.name(),
                    humantime::format_duration(limit)
                ),
                transient: true,
                now: self.now(),
            },
        }
    }

    pub(super) fn within_resolution(&self, found: Weight, applied: Weight) -> bool {
        let tol = i32::from(self.traffic.resolution());
        (i32::from(found.bp()) - i32::from(applied.bp())).abs() <= tol
    }

    /// Reads the weight in force back; within the provider's resolution of `applied` it
    /// counts as `applied`. `None` when the provider does not answer in time (nothing is
    /// concluded from silence).
    pub(super) async fn in_force(&mut self, applied: Weight) -> Option<Weight> {
        let limit = self.policy.rollout.apply_timeout;
        match tokio::time::timeout(limit, self.traffic.current()).await {
            Ok(Ok(cur)) => {
                self.weight = cur;
                Some(if self.within_resolution(cur, applied) {
                    applied
                } else {
                    cur
                })
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading the weight in force failed");
                None
            }
            Err(_) => {
                tracing::warn!("reading the weight in force timed out");
                None
            }
        }
    }

    /// Feeds the judges the fetched window (see [`judge_window`]).
    pub(super) fn judge(
        &mut self,
        window: &Window,
        fetches: Vec<Result<Fetched, MetricsError>>,
        judging: &Judging,
    ) -> Analysed {
        judge_window(
            self.policy,
            &mut self.judges,
            &self.last,
            window,
            fetches,
            judging,
        )
    }
}
