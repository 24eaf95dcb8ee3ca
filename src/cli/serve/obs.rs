//! The daemon's own measurements for `/metrics`: rollouts finished by outcome, the time of
//! each analysis tick, and the store's write latency (through
//! [`crate::controller::store::Timed`], fed into `Obs::writes`).

use std::fmt::Write as _;
use std::sync::Mutex;

/// A Prometheus histogram with fixed bucket bounds (seconds).
#[derive(Debug)]
pub(crate) struct Histogram {
    bounds: &'static [f64],
    inner: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    /// Observations at most each bound (not cumulative; summed when written).
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            inner: Mutex::new(Counts {
                buckets: vec![0; bounds.len()],
                ..Counts::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one observation of `secs`.
    pub(crate) fn observe(&self, secs: f64) {
        let mut c = self.lock();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            c.buckets[i] += 1;
        }
        c.sum += secs;
        c.count += 1;
    }

    /// How many observations so far.
    #[cfg(test)]
    pub(crate) fn count(&self) -> u64 {
        self.lock().count
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let c = self.lock();
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, n) in self.bounds.iter().zip(&c.buckets) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", c.count);
        let _ = writeln!(out, "{name}_sum {}", c.sum);
        let _ = writeln!(out, "{name}_count {}", c.count);
    }
}

/// How a rollout ended, as `coalmine_rollouts_total{outcome}` counts it.
pub(crate) const OUTCOMES: [&str; 4] = ["promoted", "rolled-back", "not-started", "failed"];

/// The daemon's counters and histograms.
#[derive(Debug)]
pub(crate) struct Obs {
    /// Time of each analysis tick (fetch, judge, decide, persist, act).
    pub(crate) ticks: Histogram,
    /// How late each analysis tick started (due time to wake-up): a rollout's ticks
    /// keep their interval while this stays small.
    pub(crate) lateness: Histogram,
    /// Time of each store write.
    pub(crate) writes: Histogram,
    outcomes: Mutex<[u64; OUTCOMES.len()]>,
}

impl Default for Obs {
    fn default() -> Self {
        Obs {
            ticks: Histogram::new(&[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            lateness: Histogram::new(&[
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            writes: Histogram::new(&[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
            outcomes: Mutex::default(),
        }
    }
}

impl Obs {
    /// Counts a rollout that ended with phase `phase` (a terminal phase's name).
    pub(crate) fn finished(&self, phase: &str) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == phase) {
            let mut o = self
                .outcomes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            o[i] += 1;
        }
    }

    /// The daemon's own series: build info, leadership, outcomes, the histograms.
    pub(crate) fn write(&self, out: &mut String, leader: bool) {
        let _ = writeln!(
            out,
            "# HELP coalmine_build_info The running coalmine's version (always 1).\n\
             # TYPE coalmine_build_info gauge\n\
             coalmine_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let _ = writeln!(
            out,
            "# HELP coalmine_leader 1 while this replica acts on rollouts (always, with the embedded store).\n\
             # TYPE coalmine_leader gauge\n\
             coalmine_leader {}",
            u8::from(leader)
        );
        let counts = *self
            .outcomes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = writeln!(
            out,
            "# HELP coalmine_rollouts_total Rollouts this daemon saw end, by outcome.\n\
             # TYPE coalmine_rollouts_total counter"
        );
        for (o, n) in OUTCOMES.iter().zip(counts) {
            let _ = writeln!(out, "coalmine_rollouts_total{{outcome=\"{o}\"}} {n}");
        }
        self.ticks.write(
            out,
            "coalmine_tick_duration_seconds",
            "Time of one analysis tick of one rollout: fetch, judge, decide, persist, act.",
        );
        self.lateness.write(
            out,
            "coalmine_tick_lateness_seconds",
            "How late one analysis tick of one rollout started after it was due.",
        );
        self.writes.write(
            out,
            "coalmine_store_write_duration_seconds",
            "Time of one write of a rollout record to the store (durable when it returns).",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_end_at_the_count() {
        let h = Histogram::new(&[0.1, 1.0]);
        for s in [0.05, 0.5, 0.7, 3.0] {
            h.observe(s);
        }
        let mut out = String::new();
        h.write(&mut out, "x_seconds", "x.");
        assert!(out.contains("x_seconds_bucket{le=\"0.1\"} 1\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"1\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_seconds_sum 4.25\n"), "{out}");
        assert!(out.contains("x_seconds_count 4\n"), "{out}");
    }

    #[test]
    fn outcomes_are_counted_and_unknown_phases_ignored() {
        let o = Obs::default();
        o.finished("promoted");
        o.finished("promoted");
        o.finished("rolled-back");
        o.finished("progressing");
        let mut out = String::new();
        o.write(&mut out, true);
        assert!(out.contains("coalmine_rollouts_total{outcome=\"promoted\"} 2\n"));
        assert!(out.contains("coalmine_rollouts_total{outcome=\"rolled-back\"} 1\n"));
        assert!(out.contains("coalmine_rollouts_total{outcome=\"failed\"} 0\n"));
        assert!(out.contains("coalmine_leader 1\n"));
    }
}
