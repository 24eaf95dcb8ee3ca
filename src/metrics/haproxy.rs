//! The `haproxy` source: per-server response counters from HAProxy's runtime API
//! (`show stat`), for the `[traffic] type = "haproxy"` backend's two servers.
//!
//! It serves `builtin = "errors"`: events are 5xx responses plus responses that never came
//! (`hrsp_5xx + eresp`), trials are all responses plus those failures. HAProxy's counters
//! are cumulative since it started, so each window is the difference between the snapshot
//! at its end and the one at the previous window's end (the first window starts when the
//! source is created); a counter that went down (HAProxy restarted) restarts from zero.
//! The canary share of a window is the servers' effective weights (`weight` column, 0 in
//! maintenance) at its end: a window that straddles a weight change is counted at the new
//! share (the controller starts a new window right after each change, so at most the
//! requests of one command's duration are affected). HAProxy keeps no latency histogram per
//! server, so latency is not served (the validator says so).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use super::{Fetched, MetricsError, MetricsSource, RenderedQuery, Window};
use crate::analysis::observation::{Counts, Observation, Segment, Shape};
use crate::model::Arm;
use crate::policy::{BuiltinSignal, DataSpec, HaproxyConfig, MetricConfig};
use crate::traffic::haproxy::{RuntimeApi, RuntimeError, ServerCounters, parse_show_stat};

const NAME: &str = "haproxy";

/// Both servers' counters at one moment (baseline, canary).
type Snapshot = [ServerCounters; 2];

/// Reads HAProxy's per-server counters.
#[derive(Debug)]
pub struct HaproxySource {
    cfg: HaproxyConfig,
    api: RuntimeApi,
    origin: Arc<OnceCell<Snapshot>>,
    ends: Mutex<BTreeMap<u64, Snapshot>>,
}

async fn snapshot(api: &RuntimeApi, cfg: &HaproxyConfig) -> Result<Snapshot, MetricsError> {
    let answer = api.command("show stat").await.map_err(|e| match e {
        RuntimeError::Timeout { after, .. } => MetricsError::Timeout {
            source_name: NAME,
            after,
        },
        RuntimeError::Io { .. } => MetricsError::Unreachable {
            source_name: NAME,
            message: crate::traffic::error_chain(&e),
        },
    })?;
    let mut out = [ServerCounters::default(); 2];
    for (slot, server) in [&cfg.baseline, &cfg.canary].into_iter().enumerate() {
        out[slot] = parse_show_stat(&answer, &cfg.backend, server)
            .map_err(|m| MetricsError::Invalid {
                query: "show stat".to_string(),
                message: format!("runtime API answered: {m}"),
            })?
            .ok_or_else(|| MetricsError::Invalid {
                query: "show stat".to_string(),
                message: format!("no server `{}/{server}` in the statistics", cfg.backend),
            })?;
    }
    Ok(out)
}

/// Counts between two snapshots of one server; a decrease means HAProxy restarted.
fn delta(end: &ServerCounters, start: &ServerCounters) -> Counts {
    let (requests, errors) = if end.requests < start.requests || end.errors < start.errors {
        (end.requests, end.errors)
    } else {
        (end.requests - start.requests, end.errors - start.errors)
    };
    Counts {
        events: errors as f64,
        trials: requests as f64,
    }
}

impl HaproxySource {
    /// A source for the servers of `cfg`. Inside a tokio runtime it takes the first
    /// snapshot (the start of window 0) right away in the background; otherwise at the
    /// first fetch.
    #[must_use]
    pub fn new(cfg: &HaproxyConfig) -> Self {
        let api = RuntimeApi::new(cfg.socket.clone(), cfg.timeout);
        let origin = Arc::new(OnceCell::new());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (cell, api, cfg) = (origin.clone(), api.clone(), cfg.clone());
            rt.spawn(async move {
                let _ = cell.get_or_try_init(|| snapshot(&api, &cfg)).await;
            });
        }
        HaproxySource {
            cfg: cfg.clone(),
            api,
            origin,
            ends: Mutex::new(BTreeMap::new()),
        }
    }

    /// Snapshots at the start and end of window `seq`.
    async fn bounds(&self, seq: u64) -> Result<(Snapshot, Snapshot), MetricsError> {
        let origin = *self
            .origin
            .get_or_try_init(|| snapshot(&self.api, &self.cfg))
            .await?;
        let known = self
            .ends
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&seq)
            .copied();
        let end = match known {
            Some(e) => e,
            None => snapshot(&self.api, &self.cfg).await?,
        };
        let mut ends = self
            .ends
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let end = *ends.entry(seq).or_insert(end);
        let start = seq
            .checked_sub(1)
            .and_then(|p| ends.get(&p).copied())
            .unwrap_or(origin);
        ends.retain(|k, _| *k + 1 >= seq);
        Ok((start, end))
    }
}

impl MetricsSource for HaproxySource {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn fetch(&self, metric: &MetricConfig, window: &Window) -> Result<Fetched, MetricsError> {
        if metric.data != DataSpec::Builtin(BuiltinSignal::Errors) || metric.shape != Shape::Counts
        {
            return Err(MetricsError::Unsupported {
                source_name: NAME,
                metric: metric.name.clone(),
                message: "the haproxy source serves only builtin = \"errors\" as counts"
                    .to_string(),
            });
        }
        let (start, end) = self.bounds(window.seq).await?;
        let total = end[0].weight + end[1].weight;
        let share = if total == 0 {
            window.weight.fraction()
        } else {
            end[1].weight as f64 / total as f64
        };
        let queries = Arm::BOTH
            .iter()
            .map(|arm| RenderedQuery {
                arm: *arm,
                role: "errors",
                query: format!(
                    "haproxy:show stat {}/{}",
                    self.cfg.backend,
                    if *arm == Arm::Baseline {
                        &self.cfg.baseline
                    } else {
                        &self.cfg.canary
                    }
                ),
            })
            .collect();
        Ok(Fetched {
            segments: vec![Segment {
                share,
                baseline: Observation::Counts(delta(&end[0], &start[0])),
                canary: Observation::Counts(delta(&end[1], &start[1])),
            }],
            queries,
        })
    }

    async fn preflight(&self) -> Result<(), MetricsError> {
        snapshot(&self.api, &self.cfg).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::analysis::JudgeSpec;
    use crate::analysis::errors::EventJudgeSpec;
    use crate::model::Weight;
    use crate::traffic::haproxy::tests::FakeHaproxy;

    fn metric() -> MetricConfig {
        MetricConfig {
            name: "errors".into(),
            description: None,
            data: DataSpec::Builtin(BuiltinSignal::Errors),
            shape: Shape::Counts,
            judge: JudgeSpec::Events(EventJudgeSpec::new(0.05)),
            dry_run: false,
        }
    }

    fn window(seq: u64) -> Window {
        Window {
            seq,
            start: SystemTime::UNIX_EPOCH,
            end: SystemTime::UNIX_EPOCH,
            weight: Weight::try_from_percent(25.0).unwrap(),
        }
    }

    #[tokio::test]
    async fn windows_are_deltas_with_the_share_in_force() {
        let fake = FakeHaproxy::start();
        fake.set_counters("stable", 100, 1, 192);
        fake.set_counters("canary", 10, 0, 64);
        let src = HaproxySource::new(&fake.config());
        src.preflight().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        fake.set_counters("stable", 400, 2, 192);
        fake.set_counters("canary", 110, 30, 64);
        let f = src.fetch(&metric(), &window(0)).await.unwrap();
        assert_eq!(f.segments.len(), 1);
        assert_eq!(f.segments[0].share, 0.25);
        assert_eq!(
            f.segments[0].baseline,
            Observation::Counts(Counts {
                events: 1.0,
                trials: 300.0
            })
        );
        assert_eq!(
            f.segments[0].canary,
            Observation::Counts(Counts {
                events: 30.0,
                trials: 100.0
            })
        );
        // The same window again gives the same data (several metrics per tick).
        fake.set_counters("canary", 150, 30, 64);
        assert_eq!(
            src.fetch(&metric(), &window(0)).await.unwrap().segments,
            f.segments
        );
        // Next window; then HAProxy restarts (counters drop).
        let f = src.fetch(&metric(), &window(1)).await.unwrap();
        assert_eq!(
            f.segments[0].canary,
            Observation::Counts(Counts {
                events: 0.0,
                trials: 40.0
            })
        );
        fake.set_counters("stable", 5, 0, 256);
        fake.set_counters("canary", 1, 1, 0);
        let f = src.fetch(&metric(), &window(2)).await.unwrap();
        assert_eq!(f.segments[0].share, 0.0);
        assert_eq!(
            f.segments[0].canary,
            Observation::Counts(Counts {
                events: 1.0,
                trials: 1.0
            })
        );
        assert_eq!(f.queries[1].query, "haproxy:show stat checkout/canary");
    }

    #[tokio::test]
    async fn errors_are_reported() {
        let fake = FakeHaproxy::start();
        fake.set_counters("stable", 1, 0, 256);
        fake.set_counters("canary", 1, 0, 0);
        let mut cfg = fake.config();
        cfg.canary = "nope".into();
        let e = HaproxySource::new(&cfg)
            .fetch(&metric(), &window(0))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no server `checkout/nope`"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        cfg.socket = crate::policy::HaproxySocket::Unix(dir.path().join("none"));
        let e = HaproxySource::new(&cfg)
            .fetch(&metric(), &window(0))
            .await
            .unwrap_err();
        assert!(e.is_transient(), "{e}");
    }
}
