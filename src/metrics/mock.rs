//! A scripted [`MetricsSource`] for tests: each fetch returns the next scripted result for
//! that metric (the last one repeats), with the window's weight as the share.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Fetched, MetricsError, MetricsSource, Window};
use crate::analysis::{Counts, Observation, Segment};
use crate::policy::MetricConfig;

/// One scripted answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// These observations (baseline, canary) at the window's weight.
    Data(Observation, Observation),
    /// Counts at the window's weight: (baseline errors, baseline requests, canary errors,
    /// canary requests) per window *for a 50/50 split*; they are scaled by the share so that
    /// the canary's requests follow the weight in force.
    Rates {
        /// Baseline error probability.
        baseline: f64,
        /// Canary error probability.
        canary: f64,
        /// Total requests per window.
        requests: f64,
    },
    /// Nothing for this window.
    Missing,
    /// A transient error.
    Unreachable,
}

#[derive(Debug, Default)]
struct Inner {
    scripts: HashMap<String, Vec<Answer>>,
    history: HashMap<String, Answer>,
    fetches: HashMap<String, usize>,
    windows: Vec<Window>,
}

/// A scripted source.
#[derive(Clone, Debug, Default)]
pub struct MockSource {
    inner: Arc<Mutex<Inner>>,
}

impl MockSource {
    /// An empty source (every metric Missing).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Answers for `metric`, one per fetch; the last one repeats.
    pub fn script(&self, metric: &str, answers: Vec<Answer>) {
        self.lock().scripts.insert(metric.to_string(), answers);
    }

    /// The answer to a history read of `metric` (none by default: the source cannot look
    /// back). Served at share 0 whatever the window says.
    pub fn script_history(&self, metric: &str, answer: Answer) {
        self.lock().history.insert(metric.to_string(), answer);
    }

    /// Windows fetched so far (one entry per fetch).
    #[must_use]
    pub fn windows(&self) -> Vec<Window> {
        self.lock().windows.clone()
    }
}

impl MetricsSource for MockSource {
    fn name(&self) -> &'static str {
        "mock"
    }

    async fn fetch(&self, metric: &MetricConfig, window: &Window) -> Result<Fetched, MetricsError> {
        let answer = {
            let mut g = self.lock();
            g.windows.push(window.clone());
            let n = *g.fetches.entry(metric.name.clone()).or_insert(0);
            g.fetches.insert(metric.name.clone(), n + 1);
            g.scripts
                .get(&metric.name)
                .and_then(|s| s.get(n).or_else(|| s.last()))
                .cloned()
                .unwrap_or(Answer::Missing)
        };
        let segment = segment(answer, window.weight.fraction())?;
        Ok(Fetched {
            segments: vec![segment],
            queries: Vec::new(),
        })
    }

    async fn history(
        &self,
        metric: &MetricConfig,
        window: &Window,
    ) -> Result<Option<Fetched>, MetricsError> {
        let _ = window;
        let Some(answer) = self.lock().history.get(&metric.name).cloned() else {
            return Ok(None);
        };
        Ok(Some(Fetched {
            segments: vec![segment(answer, 0.0)?],
            queries: Vec::new(),
        }))
    }
}

/// A scripted answer as the segment it stands for at canary share `share`.
fn segment(answer: Answer, share: f64) -> Result<Segment, MetricsError> {
    let seg = |baseline, canary| Segment {
        share,
        baseline,
        canary,
    };
    Ok(match answer {
        Answer::Data(b, c) => seg(b, c),
        Answer::Rates {
            baseline,
            canary,
            requests,
        } => {
            let (nb, nc) = (requests * (1.0 - share), requests * share);
            seg(
                Observation::Counts(Counts {
                    events: (nb * baseline).round(),
                    trials: nb.round(),
                }),
                Observation::Counts(Counts {
                    events: (nc * canary).round(),
                    trials: nc.round(),
                }),
            )
        }
        Answer::Missing => seg(Observation::Missing, Observation::Missing),
        Answer::Unreachable => {
            return Err(MetricsError::Unreachable {
                source_name: "mock",
                message: "scripted outage".to_string(),
            });
        }
    })
}
