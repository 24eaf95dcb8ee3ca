//! Backtests on Prometheus's history: the policy's PromQL templates evaluated at past times,
//! for a canary that ran before coalmine did.
//!
//! Windows lie on the policy's `analysis_interval` grid from `--from`: window k is
//! `[from + k·I, from + (k+1)·I]`, fetched through the source `coalmine run` uses
//! ([`PrometheusSource`], with its exact counts for `increase()`): instant queries at the
//! window's end, range queries over it for series. The windows are fetched first and then
//! fed, as a recording, through [`super::simulate`]: tick k happens at (k+1)·I on the
//! simulated clock, and the policy's traffic changes come into force after their delay.
//!
//! The history's traffic is what it was: the policy's steps cannot move it. Each window's
//! canary share is fixed (`--share W`), or observed: the canary's part of the requests of
//! the *earlier* windows (the trials of the policy's first counts or histogram metric), never
//! the window's own (statistics.md §2.1); windows with requests before enough of them are
//! discarded, windows without requests before then hold no data.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use futures_util::future::join_all;

use super::{Backtest, RecordedTick, simulate};
use crate::analysis::share::MIN_OBSERVED_REQUESTS;
use crate::analysis::{MetricJudge, Segment, Shape};
use crate::controller::record::rfc3339;
use crate::metrics::prometheus::PrometheusSource;
use crate::metrics::replay::{ReplaySource, ReplayWindow};
use crate::metrics::{MetricsError, MetricsSource, Window};
use crate::model::Weight;
use crate::policy::{Policy, SourceConfig};

/// At most this many windows are fetched.
pub const MAX_WINDOWS: u64 = 20_000;

/// Windows fetched at once.
const CONCURRENT: usize = 4;

/// The canary's share of the history's requests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Share {
    /// A fixed canary weight in every window.
    Fixed(Weight),
    /// The canary's part of the requests in earlier windows.
    Observed,
}

impl Share {
    /// `observed`, or a percentage in (0, 100), with or without `%`.
    ///
    /// # Errors
    /// A message naming the value.
    pub fn parse(s: &str) -> Result<Share, String> {
        let t = s.trim();
        if t == "observed" {
            return Ok(Share::Observed);
        }
        let pct = t.strip_suffix('%').unwrap_or(t).trim();
        match pct.parse::<f64>() {
            Ok(p) if p > 0.0 && p < 100.0 => Weight::try_from_percent(p)
                .map(Share::Fixed)
                .map_err(|e| e.to_string()),
            _ => Err(format!(
                "--share `{s}`: expected the canary's weight in percent, above 0 and below 100 (e.g. 5 or 12.5%), or `observed`"
            )),
        }
    }
}

/// Where and when to read the history.
#[derive(Clone, Debug, PartialEq)]
pub struct History {
    /// The Prometheus HTTP API (replaces the policy's `[metrics] url`).
    pub url: String,
    /// The first window's start.
    pub from: SystemTime,
    /// No window ends after this.
    pub to: SystemTime,
    /// The canary's share.
    pub share: Share,
}

/// `TIME` of `--from`/`--to`: RFC 3339 (`2024-05-01T10:00:00Z`, `…+02:00`, or without an
/// offset for UTC), `now`, or `now` less a duration: `-2h`, `now-90m`, `-1h30m`.
///
/// # Errors
/// A message naming the value and the accepted forms.
pub fn parse_time(s: &str, now: SystemTime) -> Result<SystemTime, String> {
    let bad = || {
        format!(
            "`{s}` is not a time: use RFC 3339 (2024-05-01T10:00:00Z), `now`, or a time before now such as -2h or now-90m"
        )
    };
    let t = s.trim();
    if t == "now" {
        return Ok(now);
    }
    if let Some(ago) = t.strip_prefix("now-").or_else(|| t.strip_prefix('-')) {
        let d = humantime::parse_duration(ago.trim()).map_err(|_| bad())?;
        return now.checked_sub(d).ok_or_else(bad);
    }
    // An explicit offset (±HH:MM at the end) is taken off; humantime reads the rest as UTC.
    // Every byte looked at is ASCII, so the slices below fall on character boundaries.
    let b = t.as_bytes();
    let digits =
        |i: usize, j: usize| -> u64 { u64::from(b[i] - b'0') * 10 + u64::from(b[j] - b'0') };
    let (base, offset) = match b.len().checked_sub(6) {
        Some(i)
            if i > 0
                && matches!(b[i], b'+' | b'-')
                && b[i + 3] == b':'
                && [1, 2, 4, 5].iter().all(|&j| b[i + j].is_ascii_digit()) =>
        {
            let (h, m) = (digits(i + 1, i + 2), digits(i + 4, i + 5));
            if h >= 24 || m >= 60 {
                return Err(bad());
            }
            (
                &t[..i],
                Some((b[i] == b'+', Duration::from_secs(h * 3600 + m * 60))),
            )
        }
        _ => (t, None),
    };
    let utc = humantime::parse_rfc3339_weak(base).map_err(|_| bad())?;
    match offset {
        // Local time ahead of UTC: UTC is earlier.
        Some((true, d)) => utc.checked_sub(d).ok_or_else(bad),
        Some((false, d)) => utc.checked_add(d).ok_or_else(bad),
        None => Ok(utc),
    }
}

/// Why a backtest on the history cannot run.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The policy has no PromQL.
    #[error(
        "the policy's metrics come from `[metrics] type = \"{0}\"`: a backtest on Prometheus's history runs the policy's PromQL templates, so it needs type = \"prometheus\""
    )]
    NotPrometheus(&'static str),
    /// `--from` not before `--to`.
    #[error("--from ({from}) must be before --to ({to})")]
    Order {
        /// `--from`, RFC 3339.
        from: String,
        /// `--to`, RFC 3339.
        to: String,
    },
    /// `--to` after now.
    #[error("--to ({to}) is in the future (now is {now}): Prometheus has no history there")]
    Future {
        /// `--to`, RFC 3339.
        to: String,
        /// Now, RFC 3339.
        now: String,
    },
    /// Not one whole window in the range.
    #[error("from {from} to {to} there is no whole analysis_interval ({interval}) of the policy")]
    Short {
        /// `--from`.
        from: String,
        /// `--to`.
        to: String,
        /// The interval.
        interval: String,
    },
    /// Too many windows.
    #[error(
        "from {from} to {to} are {windows} windows of the policy's analysis_interval ({interval}); at most {MAX_WINDOWS} are fetched: shorten the range or lengthen the interval"
    )]
    TooMany {
        /// `--from`.
        from: String,
        /// `--to`.
        to: String,
        /// How many.
        windows: u64,
        /// The interval.
        interval: String,
    },
    /// `--share observed` without request counts.
    #[error(
        "--share observed estimates the canary's share from request counts: the policy needs a metric with `events`/`trials` or a `histogram`"
    )]
    NoTrials,
    /// Prometheus cannot be used: unreachable, or it refuses the policy's queries.
    #[error("{0}")]
    Source(MetricsError),
}

impl HistoryError {
    /// An operational failure (Prometheus unreachable or too slow), not bad input.
    #[must_use]
    pub fn is_operational(&self) -> bool {
        matches!(self, HistoryError::Source(e) if e.is_transient())
    }
}

/// A fetch error that makes the whole history unusable: Prometheus unreachable or too slow,
/// a query it rejects, a client that cannot be set up. Others (several series, decreasing
/// buckets) belong to one window, as in a live rollout.
fn fatal(e: &MetricsError) -> bool {
    e.is_transient()
        || matches!(
            e,
            MetricsError::Query { .. }
                | MetricsError::Setup { .. }
                | MetricsError::Unsupported { .. }
        )
}

/// Every metric of `policy` over `window`.
async fn fetch_window(
    source: &PrometheusSource,
    policy: &Policy,
    window: Window,
) -> Result<ReplayWindow, MetricsError> {
    let fetched = join_all(policy.metrics.iter().map(|m| source.fetch(m, &window))).await;
    let mut w = ReplayWindow::default();
    for (m, f) in policy.metrics.iter().zip(fetched) {
        let v = match f {
            Ok(f) => Ok(f.segments),
            Err(e) if fatal(&e) => return Err(e),
            Err(e) => Err(e.to_string()),
        };
        w.metrics.insert(m.name.clone(), v);
    }
    Ok(w)
}

/// What the controller would have read before the first traffic change at `from`: each
/// latency metric's `[rollout] baseline_history` before it, at weight 0 (statistics.md §2.5,
/// "History"). A metric whose read fails has none, as in a live rollout.
async fn baseline_history(
    source: &PrometheusSource,
    policy: &Policy,
    from: SystemTime,
) -> Result<BTreeMap<String, Vec<Segment>>, HistoryError> {
    let span = policy.rollout.baseline_history;
    let mut out = BTreeMap::new();
    if span.is_zero() {
        return Ok(out);
    }
    let window = Window {
        seq: 0,
        start: from.checked_sub(span).unwrap_or(from),
        end: from,
        weight: Weight::ZERO,
    };
    for m in &policy.metrics {
        if !MetricJudge::new(&m.judge).learns_history() {
            continue;
        }
        match source.history(m, &window).await {
            Ok(Some(f)) => {
                out.insert(m.name.clone(), f.segments);
            }
            Err(e) if fatal(&e) => return Err(HistoryError::Source(e)),
            // No history or a failed read: the backtest bets with the data-free prior, as a
            // rollout would.
            Ok(None) | Err(_) => {}
        }
    }
    Ok(out)
}

/// Requests `[baseline, canary]` of a window, from the first counts or histogram metric (as
/// the runner counts them).
fn requests(policy: &Policy, w: &ReplayWindow) -> Option<[f64; 2]> {
    let m = policy
        .metrics
        .iter()
        .find(|m| matches!(m.shape, Shape::Counts | Shape::Histogram))?;
    let segs = w.metrics.get(&m.name)?.as_ref().ok()?;
    let mut sum = None;
    for (b, c) in segs.iter().filter_map(crate::analysis::Segment::trials) {
        let s = sum.get_or_insert([0.0, 0.0]);
        s[0] += b;
        s[1] += c;
    }
    sum
}

/// `--share observed`: each window's segments get the canary's part of the earlier windows'
/// requests; a window before [`MIN_OBSERVED_REQUESTS`] of them is discarded.
fn observe_share(
    policy: &Policy,
    windows: &mut [ReplayWindow],
    ticks: &mut [RecordedTick],
) -> Result<(), HistoryError> {
    if !policy
        .metrics
        .iter()
        .any(|m| matches!(m.shape, Shape::Counts | Shape::Histogram))
    {
        return Err(HistoryError::NoTrials);
    }
    let mut seen = [0.0_f64, 0.0];
    for (w, t) in windows.iter_mut().zip(ticks.iter_mut()) {
        let total = seen[0] + seen[1];
        if total >= MIN_OBSERVED_REQUESTS {
            let share = (seen[1] / total).clamp(1e-4, 1.0 - 1e-4);
            for segs in w.metrics.values_mut().flatten() {
                for s in segs {
                    s.share = share;
                }
            }
        } else if t.requests.is_some_and(|r| r[0] + r[1] > 0.0) {
            t.discard = Some(format!(
                "canary share not known yet: {total} requests in the windows before, {MIN_OBSERVED_REQUESTS} needed (--share observed), data discarded"
            ));
        } else {
            // No requests counted: no data, whatever else the window holds (its share is
            // unknown), so the policy's no-data rules and deadline apply as in a live run.
            for segs in w.metrics.values_mut().flatten() {
                segs.clear();
            }
        }
        if let Some(r) = t.requests {
            seen[0] += r[0];
            seen[1] += r[1];
        }
    }
    Ok(())
}

fn interval_text(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// The windows of the history, fetched, with each tick's simulated clock.
///
/// # Errors
/// [`HistoryError`]: a policy without PromQL, a bad range, Prometheus unreachable or
/// rejecting a query.
pub async fn windows(
    policy: &Policy,
    h: &History,
    now: SystemTime,
) -> Result<(ReplaySource, Vec<RecordedTick>), HistoryError> {
    let cfg = match &policy.source {
        SourceConfig::Prometheus(c) => {
            let mut c = c.clone();
            c.url.clone_from(&h.url);
            c
        }
        other => return Err(HistoryError::NotPrometheus(other.kind())),
    };
    let interval = policy.rollout.analysis_interval;
    let (from, to) = (rfc3339(h.from), rfc3339(h.to));
    let span =
        h.to.duration_since(h.from)
            .map_err(|_| HistoryError::Order {
                from: from.clone(),
                to: to.clone(),
            })?;
    if span.is_zero() {
        return Err(HistoryError::Order { from, to });
    }
    if h.to > now {
        return Err(HistoryError::Future {
            to,
            now: rfc3339(now),
        });
    }
    let n = (span.as_nanos() / interval.as_nanos().max(1)) as u64;
    if n == 0 {
        return Err(HistoryError::Short {
            from,
            to,
            interval: interval_text(interval),
        });
    }
    if n > MAX_WINDOWS {
        return Err(HistoryError::TooMany {
            from,
            to,
            windows: n,
            interval: interval_text(interval),
        });
    }
    let source = PrometheusSource::new(&cfg).map_err(HistoryError::Source)?;
    source.preflight().await.map_err(HistoryError::Source)?;
    let weight = match h.share {
        Share::Fixed(w) => w,
        // Replaced by the estimate once the windows are in.
        Share::Observed => Weight::ZERO,
    };
    let at = |k: u64| h.from + interval * u32::try_from(k).unwrap_or(u32::MAX);
    let mut fetched = Vec::with_capacity(n as usize);
    let all: Vec<u64> = (0..n).collect();
    for chunk in all.chunks(CONCURRENT) {
        let got = join_all(chunk.iter().map(|&k| {
            let w = Window {
                seq: k,
                start: at(k),
                end: at(k + 1),
                weight,
            };
            fetch_window(&source, policy, w)
        }))
        .await;
        for w in got {
            fetched.push(w.map_err(HistoryError::Source)?);
        }
    }
    let mut ticks: Vec<RecordedTick> = fetched
        .iter()
        .enumerate()
        .map(|(k, w)| RecordedTick {
            line: 0,
            now: interval * (k as u32 + 1),
            since: Duration::ZERO,
            start: at(k as u64),
            end: at(k as u64 + 1),
            discarded: false,
            discard: None,
            state: None,
            requests: requests(policy, w),
            joined: None,
        })
        .collect();
    if h.share == Share::Observed {
        observe_share(policy, &mut fetched, &mut ticks)?;
    }
    let history = baseline_history(&source, policy, h.from).await?;
    Ok((ReplaySource::new(fetched).with_history(history), ticks))
}

/// Backtests `policy` on Prometheus's history; `now` bounds `--to`.
///
/// # Errors
/// As [`windows`].
pub async fn backtest_history(
    policy: &Policy,
    h: &History,
    now: SystemTime,
) -> Result<Backtest, HistoryError> {
    let (source, ticks) = windows(policy, h, now).await?;
    let (simulated, rows) = simulate(policy, &source, &ticks, true);
    let interval = interval_text(policy.rollout.analysis_interval);
    let share = match h.share {
        Share::Fixed(w) => format!(
            "every window's canary share is {}% (--share); the history's traffic is what it was, so the weights shown are the policy's steps, not what the windows hold",
            w.percent()
        ),
        Share::Observed => format!(
            "each window's canary share is the canary's part of the requests in the windows before it (--share observed); windows before {MIN_OBSERVED_REQUESTS} requests are discarded"
        ),
    };
    let notes = vec![
        share,
        "hooks, manual gates, operator actions and the provider are not replayed; a window's queries run at its end time, in the order of the grid".to_string(),
    ];
    Ok(Backtest {
        policy: policy.name.clone(),
        source: format!(
            "Prometheus {} from {} to {}, every {interval}",
            crate::redact::url(&h.url),
            rfc3339(h.from),
            rfc3339(h.to)
        ),
        windows: rows.len(),
        recorded: None,
        simulated,
        differing_ticks: None,
        ticks: rows,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn times_parse_in_every_accepted_form() {
        let now = utc("2024-05-01T12:00:00Z");
        assert_eq!(parse_time("now", now), Ok(now));
        assert_eq!(parse_time("-2h", now), Ok(utc("2024-05-01T10:00:00Z")));
        assert_eq!(parse_time("now-90m", now), Ok(utc("2024-05-01T10:30:00Z")));
        assert_eq!(parse_time("-1h30m", now), Ok(utc("2024-05-01T10:30:00Z")));
        assert_eq!(
            parse_time("2024-05-01T10:00:00Z", now),
            Ok(utc("2024-05-01T10:00:00Z"))
        );
        assert_eq!(
            parse_time("2024-05-01T12:00:00+02:00", now),
            Ok(utc("2024-05-01T10:00:00Z"))
        );
        assert_eq!(
            parse_time("2024-05-01T08:30:00.5-01:30", now),
            Ok(utc("2024-05-01T10:00:00.5Z"))
        );
        assert_eq!(
            parse_time("2024-05-01T10:00:00", now),
            Ok(utc("2024-05-01T10:00:00Z"))
        );
        for bad in [
            "",
            "yesterday",
            "-2x",
            "2024-13-01T00:00:00Z",
            "now+1h",
            "-",
            "+02:00",
        ] {
            let e = parse_time(bad, now).unwrap_err();
            assert!(e.contains("is not a time"), "{bad}: {e}");
        }
    }

    #[test]
    fn observed_share_comes_from_earlier_windows_and_never_invents_data() {
        use crate::analysis::{Counts, Observation, Segment};
        let policy = crate::policy::parse(
            "name = \"h\"\n[traffic]\ntype = \"proxy\"\nlisten = \"127.0.0.1:0\"\nbaseline = \"http://127.0.0.1:9\"\ncanary = \"http://127.0.0.1:9\"\n[metrics]\ntype = \"prometheus\"\nurl = \"http://127.0.0.1:9\"\n[[metric]]\nname = \"errors\"\nevents = 'e{{arm}}'\ntrials = 't{{arm}}'\n",
            "h.toml",
        )
        .unwrap();
        let counts = |e: f64, t: f64| {
            Observation::Counts(Counts {
                events: e,
                trials: t,
            })
        };
        let window = |b: f64, c: f64| {
            let mut w = ReplayWindow::default();
            let segs = if b + c > 0.0 {
                vec![Segment {
                    share: 0.0,
                    baseline: counts(1.0, b),
                    canary: counts(1.0, c),
                }]
            } else {
                vec![Segment {
                    share: 0.0,
                    baseline: Observation::Missing,
                    canary: Observation::Missing,
                }]
            };
            w.metrics.insert("errors".to_string(), Ok(segs));
            w
        };
        // No requests, 150 (too few to go by), 90 + 10, then 300 + 100.
        let mut windows = vec![
            window(0.0, 0.0),
            window(140.0, 10.0),
            window(90.0, 10.0),
            window(300.0, 100.0),
        ];
        let mut ticks: Vec<RecordedTick> = windows
            .iter()
            .map(|w| RecordedTick {
                line: 0,
                now: Duration::ZERO,
                since: Duration::ZERO,
                start: SystemTime::UNIX_EPOCH,
                end: SystemTime::UNIX_EPOCH,
                discarded: false,
                discard: None,
                state: None,
                requests: requests(&policy, w),
                joined: None,
            })
            .collect();
        observe_share(&policy, &mut windows, &mut ticks).unwrap();
        let segs = |i: usize| windows[i].metrics["errors"].clone().unwrap();
        // Window 0: no requests, no data (not a discarded window: no-data rules apply).
        assert!(ticks[0].discard.is_none() && segs(0).is_empty());
        // Windows 1 and 2: requests, but fewer than 200 before them: discarded.
        assert!(
            ticks[1]
                .discard
                .as_deref()
                .unwrap()
                .contains("0 requests in the windows before")
        );
        assert!(
            ticks[2]
                .discard
                .as_deref()
                .unwrap()
                .contains("150 requests")
        );
        // Window 3: the share of windows 1 and 2 (20 of 250), not its own (100 of 400).
        assert!(ticks[3].discard.is_none());
        assert_eq!(segs(3)[0].share, 20.0 / 250.0);
    }

    #[test]
    fn shares_parse_as_percent_or_observed() {
        assert_eq!(Share::parse("observed"), Ok(Share::Observed));
        assert_eq!(
            Share::parse("5"),
            Ok(Share::Fixed(Weight::try_from_percent(5.0).unwrap()))
        );
        assert_eq!(
            Share::parse("12.5%"),
            Ok(Share::Fixed(Weight::try_from_percent(12.5).unwrap()))
        );
        for bad in ["0", "100", "-3", "abc", "", "NaN", "inf"] {
            assert!(Share::parse(bad).unwrap_err().contains("--share"), "{bad}");
        }
    }
}
