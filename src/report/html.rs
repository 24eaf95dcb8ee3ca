//! One rollout as a self-contained HTML page: styles inline, no scripts, plots as inline SVG,
//! and a `Content-Security-Policy` that forbids every fetch, so the file opens the same way
//! offline, in a mail attachment or from an artefact store, and prints on paper.

use std::fmt::Write as _;

use super::log::{LogMetric, LogRecord, Rollout, pair};
use super::svg::{Band, HLine, Plot, Scale, Series, VLine, esc};
use super::{Summary, human_duration, num};
use crate::controller::record::{ObservationRecord, SegmentRecord};

const STYLE: &str = r"
:root{--baseline:#1f5fbf;--canary:#e0401a;--ok:#1b7f3b;--bad:#c0261b;--warn:#a66a00;--muted:#666;--line:#ddd}
*{box-sizing:border-box}
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;max-width:1240px;padding:16px 20px;color:#1a1a1a;background:#fff}
h1{font-size:22px;margin:0 0 6px}h2{font-size:17px;margin:22px 0 8px;border-bottom:1px solid var(--line);padding-bottom:3px}
h3{font-size:15px;margin:14px 0 4px}
.badge{display:inline-block;padding:2px 10px;border-radius:12px;color:#fff;font-size:14px;vertical-align:middle;margin-left:8px}
.promoted{background:var(--ok)}.rolled-back,.failed{background:var(--bad)}.unfinished{background:var(--warn)}
.reason{font-size:15px;margin:4px 0 10px}
dl.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:4px 18px;margin:0}
dl.facts div{border-left:3px solid var(--line);padding-left:8px}dt{color:var(--muted);font-size:12px}dd{margin:0;font-variant-numeric:tabular-nums;word-break:break-all}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:6px 14px}
svg.plot{width:100%;height:auto;max-width:560px;display:block}
svg .ptitle{font-size:12px;font-weight:600}svg .unit,svg .tick,svg .legend,svg .hlabel{font-size:10px;fill:#444}
svg .frame{fill:none;stroke:#bbb}svg .grid{stroke:#eee}
svg .series{fill:none;stroke-width:1.6}svg .dashed{stroke-dasharray:4 3;stroke-width:1.2}
svg .band{stroke:none;opacity:.18}svg .lband{opacity:.25}
svg .hline{stroke-width:1.2;stroke-dasharray:6 3}svg .vline{stroke:#999;stroke-dasharray:2 3}svg .vline.decision{stroke:#222;stroke-width:1.4;stroke-dasharray:none}
svg .baseline{stroke:var(--baseline);fill:var(--baseline)}svg .canary{stroke:var(--canary);fill:var(--canary)}
svg .weight{stroke:#6b3fa0;fill:#6b3fa0}svg .evidence{stroke:#117a8b;fill:#117a8b}
svg .limit{stroke:var(--bad);fill:var(--bad)}svg .pass{stroke:var(--ok);fill:var(--ok)}
svg path.series{fill:none}svg .dot{stroke:none}
.metric{border:1px solid var(--line);border-radius:6px;padding:4px 12px 10px;margin:10px 0;break-inside:avoid}
.metric p{margin:2px 0 6px;color:#333}
.o{display:inline-block;padding:0 6px;border-radius:8px;font-size:12px;color:#fff}
.o-pass{background:var(--ok)}.o-fail{background:var(--bad)}.o-inconclusive{background:#888}.o-nodata{background:var(--warn)}.o-error{background:#5a2d82}
table{border-collapse:collapse;width:100%;font-size:12px;font-variant-numeric:tabular-nums}
th,td{border-bottom:1px solid #eee;padding:2px 6px;text-align:left;vertical-align:top}th{position:sticky;top:0;background:#fafafa}
td.n{text-align:right;white-space:nowrap}tr.act td{background:#fff6e0}tr.act.rollback td{background:#fde8e6}tr.act.promote td{background:#e6f5ea}
td.o-pass,td.o-fail,td.o-inconclusive,td.o-nodata,td.o-error{color:#fff;text-align:center}
footer{margin-top:24px;color:var(--muted);font-size:12px}
@media print{
 @page{size:A4 landscape;margin:10mm}
 body{max-width:none;padding:0;font-size:10pt}
 .plots{grid-template-columns:1fr 1fr}
 svg.plot,.metric,tr{break-inside:avoid}
 th{position:static}
 .badge,.o,td.o-pass,td.o-fail,tr.act td{-webkit-print-color-adjust:exact;print-color-adjust:exact}
}
";

/// The ticks of one metric: `(elapsed seconds, the record)`.
struct Track<'a> {
    name: String,
    judge: String,
    dry_run: bool,
    points: Vec<(f64, &'a LogMetric)>,
}

impl Track<'_> {
    fn last(&self) -> Option<&LogMetric> {
        self.points.last().map(|p| p.1)
    }

    /// The kind of stats the judge reports (the last tick's that has any).
    fn kind(&self) -> &str {
        self.points
            .iter()
            .rev()
            .map(|p| p.1.kind())
            .find(|k| *k != "none")
            .unwrap_or("none")
    }

    fn stat(&self, key: &str) -> Vec<(f64, f64)> {
        self.points
            .iter()
            .map(|(t, m)| (*t, m.stat(key).unwrap_or(f64::NAN)))
            .collect()
    }

    fn band(&self, key: &str) -> Vec<(f64, f64, f64)> {
        self.points
            .iter()
            .filter_map(|(t, m)| {
                let (lo, hi) = m.pair(key)?;
                Some((*t, lo.unwrap_or(f64::NAN), hi.unwrap_or(f64::INFINITY)))
            })
            .collect()
    }

    /// The last finite value of a stat.
    fn last_stat(&self, key: &str) -> Option<f64> {
        self.points.iter().rev().find_map(|p| p.1.stat(key))
    }
}

fn tracks(r: &Rollout) -> Vec<Track<'_>> {
    let mut out: Vec<Track<'_>> = Vec::new();
    for t in r.ticks() {
        for m in &t.metrics {
            let i = match out.iter().position(|x| x.name == m.metric) {
                Some(i) => i,
                None => {
                    out.push(Track {
                        name: m.metric.clone(),
                        judge: m.judge.clone(),
                        dry_run: m.dry_run,
                        points: Vec::new(),
                    });
                    out.len() - 1
                }
            };
            out[i].points.push((t.elapsed_s, m));
        }
    }
    out
}

/// Per-window event counts of both arms, summed over the window's segments.
fn window_counts(observed: &[SegmentRecord]) -> Option<[[f64; 2]; 2]> {
    let mut sum = [[0.0; 2]; 2];
    let mut any = false;
    for s in observed {
        for (i, o) in [&s.baseline, &s.canary].into_iter().enumerate() {
            if let ObservationRecord::Counts([e, t]) = o {
                sum[i][0] += e.0;
                sum[i][1] += t.0;
                any = true;
            }
        }
    }
    any.then_some(sum)
}

fn rate(c: [f64; 2]) -> f64 {
    if c[1] > 0.0 {
        100.0 * c[0] / c[1]
    } else {
        f64::NAN
    }
}

fn series(name: &str, class: &'static str, points: Vec<(f64, f64)>) -> Series {
    Series {
        name: name.to_string(),
        class,
        points,
        step: false,
        dashed: false,
    }
}

fn outcome_class(m: &LogMetric) -> &'static str {
    if m.error.is_some() || m.outcome.is_none() {
        return "o-error";
    }
    match m.outcome.as_deref() {
        Some("pass") => "o-pass",
        Some("fail") => "o-fail",
        Some("nodata") => "o-nodata",
        _ => "o-inconclusive",
    }
}

fn outcome_word(m: &LogMetric) -> &str {
    if m.outcome.is_none() {
        "error"
    } else {
        m.outcome.as_deref().unwrap_or("")
    }
}

/// Vertical markers shared by every time plot: step changes and the decision.
fn markers(r: &Rollout) -> Vec<VLine> {
    let mut v = Vec::new();
    for x in &r.records {
        if x.event.as_deref() == Some("weight-applied") {
            v.push(VLine {
                label: format!("weight {}%", x.weight),
                x: x.elapsed_s,
                class: "",
            });
        }
        if x.is_tick() && matches!(x.action(), Some("rollback" | "promote")) {
            v.push(VLine {
                label: x.decision_text(),
                x: x.elapsed_s,
                class: "decision",
            });
        }
    }
    v
}

/// The plots of one metric, by the kind of numbers its judge reports.
fn metric_plots(t: &Track<'_>, x_range: (f64, f64), marks: &[VLine]) -> Vec<Plot> {
    let mut plots = Vec::new();
    let mk = |title: String, unit: &str| {
        let mut p = Plot::new(title, unit, x_range);
        p.vlines = marks.to_vec();
        p
    };
    let evidence = |plots: &mut Vec<Plot>| {
        let mut p = mk(format!("{}: evidence", t.name), "ln e-value");
        p.series.push(series("ln e", "evidence", t.stat("log_e")));
        if let Some(th) = t.last_stat("log_threshold") {
            p.hlines.push(HLine {
                label: format!("ln(1/α) = {}", num(Some(th))),
                y: th,
                class: "limit",
            });
        }
        p.include_zero = true;
        plots.push(p);
    };
    match t.kind() {
        "error-events" => {
            let mut p = mk(format!("{}: error rate per arm", t.name), "%");
            let per_window: Vec<(f64, Option<[[f64; 2]; 2]>)> = t
                .points
                .iter()
                .map(|(x, m)| (*x, window_counts(&m.observed)))
                .collect();
            if per_window.iter().any(|p| p.1.is_some()) {
                for (i, (name, class)) in [("baseline", "baseline"), ("canary", "canary")]
                    .into_iter()
                    .enumerate()
                {
                    p.series.push(Series {
                        dashed: true,
                        ..series(
                            &format!("{name} per window"),
                            class,
                            per_window
                                .iter()
                                .map(|(x, c)| (*x, c.map_or(f64::NAN, |c| rate(c[i]))))
                                .collect(),
                        )
                    });
                }
            }
            for (key, name, class) in [
                ("baseline_rate", "baseline so far", "baseline"),
                ("canary_rate", "canary so far", "canary"),
            ] {
                let pts = t
                    .stat(key)
                    .into_iter()
                    .map(|(x, y)| (x, 100.0 * y))
                    .collect();
                p.series.push(series(name, class, pts));
            }
            p.include_zero = true;
            plots.push(p);
            let mut p = mk(format!("{}: rate ratio canary / baseline", t.name), "×");
            p.scale = Scale::Log;
            p.bands.push(Band {
                name: "confidence sequence".to_string(),
                class: "canary",
                points: t.band("ci_ratio"),
            });
            p.series.push(series("ratio", "canary", t.stat("ratio")));
            if let Some(a) = t.last_stat("allowed_ratio") {
                p.hlines.push(HLine {
                    label: format!("allowed {}×", num(Some(a))),
                    y: a,
                    class: "limit",
                });
            }
            plots.push(p);
            evidence(&mut plots);
        }
        "slow-events" => {
            let qs: Vec<f64> = t
                .last()
                .and_then(|m| m.stats.get("quantiles"))
                .and_then(serde_json::Value::as_array)
                .map(|a| a.iter().filter_map(|q| q.get("q")?.as_f64()).collect())
                .unwrap_or_default();
            for q in qs {
                let mut p = mk(
                    format!(
                        "{}: p{} per arm, time-uniform bounds",
                        t.name,
                        num(Some(q * 100.0)).trim_end_matches(".00")
                    ),
                    "ms",
                );
                let pick = |m: &LogMetric, key: &str| -> Option<serde_json::Value> {
                    m.stats
                        .get("quantiles")?
                        .as_array()?
                        .iter()
                        .find(|x| x.get("q").and_then(serde_json::Value::as_f64) == Some(q))?
                        .get(key)
                        .cloned()
                };
                for arm in ["baseline", "canary"] {
                    let class = if arm == "baseline" {
                        "baseline"
                    } else {
                        "canary"
                    };
                    let ci_key = format!("{arm}_ci");
                    p.bands.push(Band {
                        name: format!("{arm} bounds"),
                        class,
                        points: t
                            .points
                            .iter()
                            .filter_map(|(x, m)| {
                                let (lo, hi) = pair(&pick(m, &ci_key)?)?;
                                Some((
                                    *x,
                                    lo.map_or(f64::NAN, |v| v * 1e3),
                                    hi.map_or(f64::INFINITY, |v| v * 1e3),
                                ))
                            })
                            .collect(),
                    });
                    p.series.push(series(
                        arm,
                        class,
                        t.points
                            .iter()
                            .map(|(x, m)| {
                                let v = pick(m, arm).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
                                (*x, v * 1e3)
                            })
                            .collect(),
                    ));
                }
                p.include_zero = true;
                plots.push(p);
            }
            evidence(&mut plots);
        }
        "threshold" => {
            let measure = t
                .last()
                .and_then(|m| m.stats.get("measure"))
                .and_then(serde_json::Value::as_str)
                .unwrap_or("value")
                .to_string();
            let (scale, unit) = measure_unit(&measure);
            let mut p = mk(
                format!("{}: canary {measure} against its bounds", t.name),
                unit,
            );
            p.series.push(series(
                &format!("canary {measure}"),
                "canary",
                t.stat("value")
                    .into_iter()
                    .map(|(x, y)| (x, y * scale))
                    .collect(),
            ));
            for (key, label) in [("max", "max"), ("min", "min")] {
                if let Some(v) = t.last_stat(key) {
                    p.hlines.push(HLine {
                        label: format!("{label} {}", num(Some(v * scale))),
                        y: v * scale,
                        class: "limit",
                    });
                }
            }
            p.include_zero = true;
            plots.push(p);
        }
        "mann-whitney" => {
            let mut p = mk(
                format!("{}: Hodges-Lehmann shift canary − baseline", t.name),
                "",
            );
            p.bands.push(Band {
                name: "confidence interval".to_string(),
                class: "canary",
                points: t.band("ci"),
            });
            p.series
                .push(series("estimate", "canary", t.stat("estimate")));
            p.hlines.push(HLine {
                label: "no shift".to_string(),
                y: 0.0,
                class: "pass",
            });
            plots.push(p);
        }
        "score" => {
            let mut p = mk(format!("{}: Kayenta score", t.name), "0–100");
            p.series.push(series("score", "evidence", t.stat("score")));
            for (key, class) in [("pass", "pass"), ("marginal", "limit")] {
                if let Some(v) = t.last_stat(key) {
                    p.hlines.push(HLine {
                        label: format!("{key} {}", num(Some(v))),
                        y: v,
                        class,
                    });
                }
            }
            p.include_zero = true;
            plots.push(p);
        }
        _ => {}
    }
    plots
}

/// The traffic plots: canary weight and requests per window per arm.
fn traffic_plots(r: &Rollout, x_range: (f64, f64), marks: &[VLine]) -> Vec<Plot> {
    let mut w = Plot::new("canary weight", "%", x_range);
    w.vlines = marks.to_vec();
    w.series.push(Series {
        step: true,
        ..series(
            "weight",
            "weight",
            r.records.iter().map(|x| (x.elapsed_s, x.weight)).collect(),
        )
    });
    w.include_zero = true;
    let mut q = Plot::new("requests per window", "requests", x_range);
    q.vlines = marks.to_vec();
    for (i, (name, class)) in [("baseline", "baseline"), ("canary", "canary")]
        .into_iter()
        .enumerate()
    {
        q.series.push(series(
            name,
            class,
            r.ticks()
                .map(|t| {
                    (
                        t.elapsed_s,
                        t.requests.as_ref().map_or(f64::NAN, |q| q.window[i]),
                    )
                })
                .collect(),
        ));
    }
    q.include_zero = true;
    vec![w, q]
}

/// How a threshold judge's measure is shown: rates in percent, quantiles in milliseconds.
fn measure_unit(measure: &str) -> (f64, &'static str) {
    match measure {
        "rate" => (100.0, "%"),
        m if m.starts_with('p') => (1e3, " ms"),
        _ => (1.0, ""),
    }
}

/// The headline statistic of a metric's last tick, for tables.
#[must_use]
pub fn headline(m: &LogMetric) -> (String, String) {
    match m.kind() {
        "error-events" => {
            let ci = m.pair("ci_ratio").map_or(String::new(), |(lo, hi)| {
                format!(
                    "ratio CS [{}, {}]",
                    num(lo),
                    hi.map_or("∞".to_string(), |h| num(Some(h)))
                )
            });
            (
                format!(
                    "baseline {}%, canary {}%; ln e {} of {}",
                    num(m.stat("baseline_rate").map(|v| v * 100.0)),
                    num(m.stat("canary_rate").map(|v| v * 100.0)),
                    num(m.stat("log_e")),
                    num(m.stat("log_threshold"))
                ),
                ci,
            )
        }
        "slow-events" => {
            let q = m
                .stats
                .get("quantiles")
                .and_then(serde_json::Value::as_array)
                .and_then(|a| a.last().cloned());
            let qtext = q.map_or(String::new(), |q| {
                let g = |k: &str| q.get(k).and_then(serde_json::Value::as_f64);
                format!(
                    "p{} baseline {} ms, canary {} ms",
                    num(g("q").map(|v| v * 100.0)).trim_end_matches(".00"),
                    num(g("baseline").map(|v| v * 1e3)),
                    num(g("canary").map(|v| v * 1e3))
                )
            });
            (
                format!(
                    "{qtext}; ln e {} of {}",
                    num(m.stat("log_e")),
                    num(m.stat("log_threshold"))
                ),
                String::new(),
            )
        }
        "threshold" => {
            let measure = m
                .stats
                .get("measure")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("value");
            let (scale, unit) = measure_unit(measure);
            let v = |k: &str| num(m.stat(k).map(|x| x * scale));
            (
                format!(
                    "{measure} {}{unit}; {} of {} failing windows",
                    v("value"),
                    num(m.stat("failures")),
                    num(m.stat("failure_limit"))
                ),
                format!("bounds [{}, {}]{unit}", v("min"), v("max")),
            )
        }
        "mann-whitney" => (
            format!("shift {}", num(m.stat("estimate"))),
            m.pair("ci").map_or(String::new(), |(lo, hi)| {
                format!("CI [{}, {}]", num(lo), num(hi))
            }),
        ),
        "score" => (format!("score {}", num(m.stat("score"))), String::new()),
        _ => (String::new(), String::new()),
    }
}

fn fact(out: &mut String, name: &str, value: &str) {
    let _ = write!(
        out,
        "<div><dt>{}</dt><dd>{}</dd></div>",
        esc(name),
        esc(value)
    );
}

/// Renders one rollout as a complete HTML document.
#[must_use]
pub fn render(r: &Rollout) -> String {
    let s = Summary::of(r);
    let x_range = (0.0, s.duration_s.max(1.0));
    let marks = markers(r);
    let tracks = tracks(r);
    let mut plots_total = 0usize;
    let mut out = String::with_capacity(64 * 1024);
    let _ = write!(
        out,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'"><meta name="viewport" content="width=device-width,initial-scale=1"><title>coalmine: {} {}</title><style>{STYLE}</style></head><body>"#,
        esc(&s.label),
        s.outcome_text()
    );
    // Header.
    let _ = write!(
        out,
        r#"<header><h1>Rollout <code>{}</code><span class="badge {}">{}</span></h1><p class="reason">{}</p><dl class="facts">"#,
        esc(&s.label),
        esc(&s.outcome),
        s.outcome_text(),
        esc(if s.reason.is_empty() {
            "no final record: the rollout had not ended when the log was read"
        } else {
            &s.reason
        })
    );
    fact(&mut out, "policy", &s.name);
    if let Some(h) = &s.policy_hash {
        fact(&mut out, "policy hash", h);
    }
    if let Some(id) = &s.id {
        fact(&mut out, "rollout id", id);
    }
    fact(&mut out, "started", &s.started);
    fact(&mut out, "duration", &human_duration(s.duration_s));
    fact(
        &mut out,
        "exit code",
        &s.exit_code
            .map_or("– (unfinished)".to_string(), |c| c.to_string()),
    );
    fact(&mut out, "analysis ticks", &s.ticks.to_string());
    fact(
        &mut out,
        "steps reached",
        &format!("{} of {}", s.steps_reached, s.steps),
    );
    fact(&mut out, "final weight", &format!("{}%", s.final_weight));
    if let Some(v) = &s.version {
        fact(&mut out, "coalmine", v);
    }
    fact(
        &mut out,
        "records",
        &format!("{} lines {}–{}", r.path.display(), s.lines.0, s.lines.1),
    );
    out.push_str("</dl></header>");

    // Timeline.
    out.push_str(r#"<section id="timeline"><h2>Timeline</h2><div class="plots">"#);
    for p in traffic_plots(r, x_range, &marks) {
        out.push_str(&p.render());
        plots_total += 1;
    }
    out.push_str("</div><table><thead><tr><th>time</th><th>after</th><th>event</th><th>phase</th><th>weight</th><th>detail</th></tr></thead><tbody>");
    for x in r.records.iter().filter(|x| !x.is_tick()) {
        let _ = write!(
            out,
            r#"<tr><td class="n">{}</td><td class="n">{}</td><td>{}</td><td>{} → {}</td><td class="n">{}%</td><td>{}</td></tr>"#,
            esc(clock(&x.time)),
            human_duration(x.elapsed_s),
            esc(x.event.as_deref().unwrap_or(&x.kind)),
            esc(&x.phase),
            esc(&x.next_phase),
            x.weight,
            esc(&event_detail(x))
        );
    }
    out.push_str("</tbody></table></section>");

    // Metrics.
    out.push_str(r#"<section id="metrics"><h2>Metrics</h2>"#);
    if tracks.is_empty() {
        out.push_str("<p>No analysis tick was recorded.</p>");
    }
    for t in &tracks {
        let Some(last) = t.last() else { continue };
        let (stat, interval) = headline(last);
        let _ = write!(
            out,
            r#"<div class="metric" data-metric="{}"><h3>{} <span class="o {}">{}</span> <small>{} judge{}</small></h3><p>{}</p>"#,
            esc(&t.name),
            esc(&t.name),
            outcome_class(last),
            esc(outcome_word(last)),
            esc(&t.judge),
            if t.dry_run { ", dry run" } else { "" },
            esc(&last.reason)
        );
        if !stat.is_empty() {
            let _ = write!(out, "<p><b>{}</b> {}</p>", esc(&stat), esc(&interval));
        }
        out.push_str(r#"<div class="plots">"#);
        for p in metric_plots(t, x_range, &marks) {
            out.push_str(&p.render());
            plots_total += 1;
        }
        out.push_str("</div></div>");
    }
    out.push_str("</section>");

    // Decisions.
    out.push_str(r#"<section id="decisions"><h2>Decisions</h2><table><thead><tr><th>#</th><th>after</th><th>step</th><th>weight</th><th>requests b / c</th><th>decision</th>"#);
    for t in &tracks {
        let _ = write!(out, "<th>{}</th>", esc(&t.name));
    }
    out.push_str("<th>reason</th></tr></thead><tbody>");
    for (i, x) in r.ticks().enumerate() {
        decision_row(&mut out, i, x, &tracks);
    }
    out.push_str("</tbody></table></section>");
    let _ = write!(
        out,
        r#"<footer data-plots="{plots_total}">Generated by coalmine {} from {} ({} records). Times are seconds after the rollout started; rates and bounds as the judges reported them at each tick.</footer></body></html>"#,
        env!("CARGO_PKG_VERSION"),
        esc(&r.path.display().to_string()),
        r.records.len()
    );
    out
}

/// A timeline entry's detail, with who acted for operator records and takeovers.
#[must_use]
pub fn event_detail(x: &LogRecord) -> String {
    let detail = x.detail.as_deref().unwrap_or("");
    match (&x.actor, x.kind.as_str()) {
        (Some(a), _) if detail.is_empty() => format!("by {a}"),
        (Some(a), _) => format!("by {a}: {detail}"),
        (None, "resumed") if detail.is_empty() => "taken over from the stored record".to_string(),
        _ => detail.to_string(),
    }
}

fn clock(rfc3339: &str) -> &str {
    // `2026-11-22T09:12:03.004Z` → `09:12:03.004`.
    rfc3339
        .split_once('T')
        .map_or(rfc3339, |(_, t)| t.trim_end_matches('Z'))
}

fn decision_row(out: &mut String, i: usize, x: &LogRecord, tracks: &[Track<'_>]) {
    let action = x.action().unwrap_or("");
    let class = if action == "hold" || action.is_empty() {
        String::new()
    } else {
        format!(r#" class="act {action}""#)
    };
    let req = x.requests.as_ref().map_or("–".to_string(), |q| {
        format!("{} / {}", num(Some(q.window[0])), num(Some(q.window[1])))
    });
    let _ = write!(
        out,
        r#"<tr{class}><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}%</td><td class="n">{}</td><td>{}</td>"#,
        i + 1,
        human_duration(x.elapsed_s),
        x.step.map_or("–".to_string(), |s| s.to_string()),
        x.weight,
        req,
        esc(action)
    );
    for t in tracks {
        match x.metrics.iter().find(|m| m.metric == t.name) {
            Some(m) => {
                let _ = write!(
                    out,
                    r#"<td class="{}">{}</td>"#,
                    outcome_class(m),
                    esc(outcome_word(m))
                );
            }
            None => out.push_str("<td></td>"),
        }
    }
    let _ = write!(out, "<td>{}</td></tr>", esc(&x.decision_text()));
}
