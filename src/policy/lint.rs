//! Warnings about valid policies that will not do what they seem to say: printed by
//! `validate` and `run`, never fatal (`validate` exits 0 when there are only warnings).
//!
//! Adding a warning is one `ctx.warn(places.key(..), "...")` in [`lint`] (or next to the
//! check in `validate.rs` that has the value's span at hand).

use std::ops::Range;

use toml::Spanned;
use toml::de::DeValue;

use super::Policy;
use super::diag::Ctx;
use crate::model::Weight;

/// Where the policy's sections are, to point a warning at a key.
#[derive(Debug)]
pub(crate) struct Places<'a, 'i> {
    /// The whole file.
    pub(crate) root: Range<usize>,
    /// `[rollout]`, if written.
    pub(crate) rollout: Option<&'a Spanned<DeValue<'i>>>,
    /// The `[[metric]]` array, if written.
    pub(crate) metric: Option<&'a Spanned<DeValue<'i>>>,
}

impl Places<'_, '_> {
    /// The span of `key` in `[rollout]`; else `[rollout]` itself; else the file's start.
    pub(crate) fn rollout_key(&self, key: &str) -> Range<usize> {
        let Some(v) = self.rollout else {
            return self.root.start..self.root.start;
        };
        if let DeValue::Table(t) = v.get_ref()
            && let Some((k, _)) = t.iter().find(|(k, _)| k.get_ref().as_ref() == key)
        {
            return k.span();
        }
        v.span().start..v.span().start
    }

    /// The span of the `[[metric]]` array (its first table).
    pub(crate) fn metrics(&self) -> Range<usize> {
        self.metric.map_or(self.root.end..self.root.end, |m| {
            m.span().start..m.span().start
        })
    }
}

/// Checks a valid policy for settings that defeat its purpose.
pub(crate) fn lint(ctx: &mut Ctx, p: &Policy, places: &Places<'_, '_>) {
    if p.rollout.blue_green() && p.rollout.post_promotion.is_zero() {
        ctx.warn(
            places.rollout_key("strategy"),
            "blue-green without post_promotion: nothing is analysed after the switch (green is \
             checked only by the pre-rollout hooks and gates before it); add post_promotion = \
             \"30m\" and a threshold guard",
        );
    } else if p.rollout.blind() && !p.rollout.blue_green() {
        let key = if p.rollout.plan.is_empty() {
            "steps"
        } else {
            "step"
        };
        let what = if p.rollout.steps.iter().all(|w| *w >= Weight::FULL) {
            "all traffic goes to the canary at once"
        } else {
            "every step below 100 has analysis = false"
        };
        ctx.warn(
            places.rollout_key(key),
            format!(
                "a blind cutover: nothing is analysed ({what}, so nothing is compared before \
                 promotion); add smaller analysed steps first, e.g. steps = [5, 25, 100]"
            ),
        );
    }
    let guards = p
        .metrics
        .iter()
        .any(|m| !m.dry_run && matches!(m.judge, crate::analysis::JudgeSpec::Threshold(_)));
    if !p.rollout.post_promotion.is_zero() && !guards {
        ctx.warn(
            places.rollout_key("post_promotion"),
            "post_promotion judges only threshold guards (after the switch there is no \
             concurrent baseline to compare with), and no metric is one: nothing is judged in \
             the window; add a `judge = \"threshold\"` metric (e.g. max = 0.1 errors)",
        );
    }
    if !p.metrics.is_empty() && p.metrics.iter().all(|m| m.dry_run) {
        ctx.warn(
            places.metrics(),
            "every metric is dry_run: nothing can fail, so the rollout promotes whatever the \
             canary does",
        );
    }
}
