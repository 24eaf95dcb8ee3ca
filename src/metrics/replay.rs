//! A replay source: a recorded rollout's windows served back in order, for backtests.
//!
//! A decision log whose ticks carry their observations ([`crate::controller::record`]) is a
//! complete recording: window `i` of a replay returns, for each metric, exactly the segments
//! the controller fetched at the recording's `i`-th tick, or the error that fetch failed with.
//!
//! This is what `coalmine backtest` feeds the judges from ([`crate::report::backtest`]):
//! windows from a decision log, joined windows of one, or windows fetched beforehand from
//! Prometheus's history. It is not a `[metrics] type` of its own: `coalmine run` would
//! replay on the wall clock against a fake provider, while a backtest runs the same state
//! machine and judging ([`crate::controller::runner::judge_window`]) on the recording's
//! clock in no time, and sets the outcome beside the recorded one.

use std::collections::BTreeMap;

use super::{Fetched, MetricsError, MetricsSource, Window};
use crate::analysis::Segment;
use crate::policy::MetricConfig;

/// One recorded window: each metric's segments, or the error its fetch failed with.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplayWindow {
    /// By metric name.
    pub metrics: BTreeMap<String, Result<Vec<Segment>, String>>,
}

/// Serves recorded windows by their index in the recording.
#[derive(Clone, Debug, Default)]
pub struct ReplaySource {
    windows: Vec<ReplayWindow>,
    /// Each metric's baseline history read before the first traffic change.
    history: BTreeMap<String, Vec<Segment>>,
}

impl ReplaySource {
    /// A source over `windows`; window `seq` of the replay is `windows[seq]`.
    #[must_use]
    pub fn new(windows: Vec<ReplayWindow>) -> Self {
        ReplaySource {
            windows,
            history: BTreeMap::new(),
        }
    }

    /// The same, with each metric's recorded baseline history (`[rollout]
    /// baseline_history`: what the controller read before the first traffic change).
    #[must_use]
    pub fn with_history(mut self, history: BTreeMap<String, Vec<Segment>>) -> Self {
        self.history = history;
        self
    }

    /// The recorded baseline history of `metric`, if any.
    #[must_use]
    pub fn history_of(&self, metric: &str) -> Option<&[Segment]> {
        self.history.get(metric).map(Vec::as_slice)
    }

    /// Number of windows.
    #[must_use]
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// Window `seq`, if the recording has it.
    #[must_use]
    pub fn window(&self, seq: usize) -> Option<&ReplayWindow> {
        self.windows.get(seq)
    }

    /// The names of the metrics recorded in any window, in order of first appearance.
    #[must_use]
    pub fn metric_names(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for w in &self.windows {
            for name in w.metrics.keys() {
                if !out.contains(name) {
                    out.push(name.clone());
                }
            }
        }
        out
    }

    /// What the recording holds for `metric` in window `seq`, as a fetch would return it: a
    /// metric not recorded in that window (a warm-up window) has no data.
    ///
    /// # Errors
    /// The recorded fetch error, or [`MetricsError::Unsupported`] past the recording's end.
    pub fn get(&self, metric: &str, seq: u64) -> Result<Fetched, MetricsError> {
        let w = usize::try_from(seq)
            .ok()
            .and_then(|i| self.windows.get(i))
            .ok_or_else(|| MetricsError::Unsupported {
                source_name: "replay",
                metric: metric.to_string(),
                message: format!(
                    "the recording has {} windows, window {seq} was asked for",
                    self.windows.len()
                ),
            })?;
        match w.metrics.get(metric) {
            None => Ok(Fetched::default()),
            Some(Ok(segments)) => Ok(Fetched {
                segments: segments.clone(),
                queries: Vec::new(),
            }),
            Some(Err(message)) => Err(MetricsError::Replayed {
                message: message.clone(),
            }),
        }
    }
}

impl MetricsSource for ReplaySource {
    fn name(&self) -> &'static str {
        "replay"
    }

    async fn fetch(&self, metric: &MetricConfig, window: &Window) -> Result<Fetched, MetricsError> {
        self.get(&metric.name, window.seq)
    }

    async fn history(
        &self,
        metric: &MetricConfig,
        _window: &Window,
    ) -> Result<Option<Fetched>, MetricsError> {
        Ok(self.history_of(&metric.name).map(|s| Fetched {
            segments: s.to_vec(),
            queries: Vec::new(),
        }))
    }
}
