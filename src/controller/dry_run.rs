//! `coalmine run --dry-run`: a shadow rollout. The traffic provider is only read; the split
//! in force (an existing canary at 10 %, say) is analysed as it is, by the same machine and
//! judges as a real rollout, and what the rollout would have done is recorded and printed
//! (`would-rollback at 42 s: …`, `would-promote at …`) instead of done.
//!
//! The shadow plan is one analysed step at the weight in force, as long as the policy's
//! analysed steps below 100 % together (their `step_duration`s), needing the largest of their
//! `min_requests`, under the policy's deadline; then the promotion (never carried out).
//! Gates, approvals and planned pauses ask or wait for someone: a dry run asks and waits for
//! nobody, and runs no hook (hooks act on the world); each is named in the records as not
//! run. A weight changed by someone else during the dry run is adopted (analysed from then
//! on), never fought.

use std::time::Duration;

use crate::model::Weight;
use crate::policy::{Approval, OnExternalChange, Policy, Rollout, StepSpec};

/// The plan a dry run follows at the weight `in_force` (strictly between 0 and 100 %).
#[must_use]
pub fn shadow_plan(plan: &Rollout, in_force: Weight) -> Rollout {
    let analysed: Vec<usize> = (0..plan.steps.len())
        .filter(|&i| plan.steps[i] < Weight::FULL && plan.analysed(i))
        .collect();
    let duration = analysed
        .iter()
        .map(|&i| plan.duration_of(i))
        .fold(Duration::ZERO, Duration::saturating_add)
        .max(plan.analysis_interval);
    let min_requests = analysed
        .iter()
        .map(|&i| plan.min_requests_of(i))
        .max()
        .unwrap_or(plan.min_requests);
    let mut shadow = plan.clone();
    shadow.steps = vec![in_force, Weight::FULL];
    shadow.plan = vec![StepSpec {
        duration: Some(duration),
        min_requests: Some(min_requests),
        ..StepSpec::default()
    }];
    shadow.gates = Vec::new();
    shadow.approval = Approval::None;
    shadow.on_external_change = OnExternalChange::Adopt;
    // 100 % is never reached: there is nothing to watch after it, and no blue to keep (a
    // blue-green policy's dry run analyses the split in force as a canary step).
    shadow.post_promotion = Duration::ZERO;
    shadow.strategy = crate::policy::Strategy::Canary;
    shadow.keep_blue = Duration::ZERO;
    shadow
}

/// The policy a dry run follows at the weight `in_force`: the [`shadow_plan`], no hooks and
/// no notify webhook (they act on the world; [`not_run`] names them).
#[must_use]
pub fn shadow_policy(policy: &Policy, in_force: Weight) -> Policy {
    let mut shadow = policy.clone();
    shadow.rollout = shadow_plan(&policy.rollout, in_force);
    shadow.hooks = Vec::new();
    shadow.notify = None;
    shadow
}

/// What the dry run does not run or wait for, one line each (hooks, gates, approvals,
/// planned pauses, the notify webhook).
#[must_use]
pub fn not_run(policy: &Policy) -> Vec<String> {
    let mut out: Vec<String> = policy
        .hooks
        .iter()
        .map(|h| format!("hook `{}` ({})", h.name, h.when.as_str()))
        .collect();
    let step_gates = policy.rollout.plan.iter().flat_map(|s| s.gates.iter());
    out.extend(
        policy
            .rollout
            .gates
            .iter()
            .chain(step_gates)
            .map(|g| format!("gate `{}` ({})", g.name, g.kind.as_str())),
    );
    if policy.rollout.approval != Approval::None {
        out.push("the operator's approvals ([rollout] approval)".to_string());
    }
    if policy.rollout.plan.iter().any(|s| s.pause.is_some()) {
        out.push("the planned pauses ([[rollout.step]] pause)".to_string());
    }
    if policy.notify.is_some() {
        out.push("the notify webhook".to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PlannedPause;

    #[test]
    fn the_shadow_plan_analyses_the_split_in_force_as_long_as_the_analysed_steps_together() {
        let mut plan = Rollout::with_steps(vec![
            Weight::try_from_percent(5.0).unwrap(),
            Weight::try_from_percent(25.0).unwrap(),
            Weight::try_from_percent(50.0).unwrap(),
            Weight::FULL,
        ]);
        plan.step_duration = Duration::from_secs(60);
        plan.plan = vec![
            StepSpec {
                duration: Some(Duration::from_secs(30)),
                min_requests: Some(500),
                ..StepSpec::default()
            },
            StepSpec {
                unanalysed: true,
                ..StepSpec::default()
            },
            StepSpec {
                pause: Some(PlannedPause::UntilPromoted),
                ..StepSpec::default()
            },
        ];
        plan.approval = Approval::EveryStep;
        let w = Weight::try_from_percent(10.0).unwrap();
        let s = shadow_plan(&plan, w);
        assert_eq!(s.steps, vec![w, Weight::FULL]);
        // 30 s (step 1) + 60 s (step 3); step 2 is not analysed.
        assert_eq!(s.duration_of(0), Duration::from_secs(90));
        assert_eq!(s.min_requests_of(0), 500);
        assert_eq!(s.spec(0).pause, None);
        assert_eq!(s.approval, Approval::None);
        assert!(s.gates_before(0).is_empty() && s.gates_before(1).is_empty());
        assert_eq!(s.on_external_change, OnExternalChange::Adopt);
    }
}
