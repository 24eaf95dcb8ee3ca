//! Plots as inline SVG, drawn by hand: line and step series, shaded bands, reference lines
//! and step boundaries on a shared time axis, with "nice" axis ticks and a legend.
//!
//! Hand-written rather than through a plotting crate: the output must be a self-contained
//! file that opens without network access or font files, print well and stay small for a
//! day-long rollout. Text is left to the browser's default sans-serif font, and long series
//! are thinned to the extremes of each pixel column, so a plot costs O(width) bytes
//! whatever the number of ticks.

use std::fmt::Write as _;

/// Width of every plot's drawing area, in SVG user units (CSS pixels at 100%).
pub const WIDTH: f64 = 560.0;
/// Height of every plot.
pub const HEIGHT: f64 = 190.0;
const LEFT: f64 = 52.0;
const RIGHT: f64 = 10.0;
const TOP: f64 = 26.0;
const BOTTOM: f64 = 24.0;
/// Series with at most this many points get a dot at each.
const DOTS: usize = 40;

/// A line through points (x = seconds since the rollout started).
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// CSS class giving the colour (`baseline`, `canary`, `c0`..`c5`, `limit`).
    pub class: &'static str,
    /// Points; non-finite y values break the line.
    pub points: Vec<(f64, f64)>,
    /// Draw as a step function (value holds until the next point).
    pub step: bool,
    /// Dashed.
    pub dashed: bool,
}

/// A shaded region between a lower and an upper line.
#[derive(Clone, Debug, PartialEq)]
pub struct Band {
    /// Legend text.
    pub name: String,
    /// CSS class giving the colour.
    pub class: &'static str,
    /// `(x, lo, hi)`; non-finite ends are clipped to the plot.
    pub points: Vec<(f64, f64, f64)>,
}

/// A horizontal reference line.
#[derive(Clone, Debug, PartialEq)]
pub struct HLine {
    /// Label drawn at its right end.
    pub label: String,
    /// Its y.
    pub y: f64,
    /// CSS class.
    pub class: &'static str,
}

/// A vertical marker (a step change, the decision).
#[derive(Clone, Debug, PartialEq)]
pub struct VLine {
    /// Label drawn at its top.
    pub label: String,
    /// Its x.
    pub x: f64,
    /// CSS class.
    pub class: &'static str,
}

/// How the y axis maps values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scale {
    /// Linear.
    Linear,
    /// Logarithmic (positive values only).
    Log,
}

/// One plot.
#[derive(Clone, Debug, PartialEq)]
pub struct Plot {
    /// Title above the plot.
    pub title: String,
    /// Unit of the y axis, drawn beside the title.
    pub unit: String,
    /// Time range shown.
    pub x_range: (f64, f64),
    /// Y scale.
    pub scale: Scale,
    /// Lines.
    pub series: Vec<Series>,
    /// Bands (drawn below the lines).
    pub bands: Vec<Band>,
    /// Horizontal reference lines.
    pub hlines: Vec<HLine>,
    /// Vertical markers.
    pub vlines: Vec<VLine>,
    /// Force zero into the y range (rates, counts).
    pub include_zero: bool,
}

impl Plot {
    /// An empty plot over `x_range`.
    #[must_use]
    pub fn new(title: impl Into<String>, unit: impl Into<String>, x_range: (f64, f64)) -> Self {
        Plot {
            title: title.into(),
            unit: unit.into(),
            x_range,
            scale: Scale::Linear,
            series: Vec::new(),
            bands: Vec::new(),
            hlines: Vec::new(),
            vlines: Vec::new(),
            include_zero: false,
        }
    }

    fn usable(&self, y: f64) -> bool {
        y.is_finite() && (self.scale == Scale::Linear || y > 0.0)
    }

    /// The y range covering every finite value, padded.
    fn y_range(&self) -> (f64, f64) {
        let mut lo = f64::INFINITY;
        let mut hi = f64::NEG_INFINITY;
        let mut see = |y: f64| {
            if self.usable(y) {
                lo = lo.min(y);
                hi = hi.max(y);
            }
        };
        for s in &self.series {
            for p in &s.points {
                see(p.1);
            }
        }
        for b in &self.bands {
            for p in &b.points {
                see(p.1);
                see(p.2);
            }
        }
        for h in &self.hlines {
            see(h.y);
        }
        if self.include_zero && self.scale == Scale::Linear {
            see(0.0);
        }
        if !lo.is_finite() {
            return match self.scale {
                Scale::Linear => (0.0, 1.0),
                Scale::Log => (0.1, 10.0),
            };
        }
        match self.scale {
            Scale::Linear => {
                if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
                    (lo - 1.0, hi + 1.0)
                } else {
                    let pad = (hi - lo) * 0.06;
                    let lo2 = if lo >= 0.0 && lo - pad < 0.0 {
                        0.0
                    } else {
                        lo - pad
                    };
                    (lo2, hi + pad)
                }
            }
            Scale::Log => {
                let (a, b) = (lo.log10(), hi.log10());
                if b - a < 0.3 {
                    let m = 0.5 * (a + b);
                    (10f64.powf(m - 0.3), 10f64.powf(m + 0.3))
                } else {
                    (10f64.powf(a - 0.05), 10f64.powf(b + 0.05))
                }
            }
        }
    }

    /// The plot as an `<svg>` element with `class="plot"` and one element of class
    /// `series` per line (and `band` per band), each with its `data-name`.
    #[must_use]
    pub fn render(&self) -> String {
        let (x0, x1) = if self.x_range.1 > self.x_range.0 {
            self.x_range
        } else {
            (self.x_range.0, self.x_range.0 + 1.0)
        };
        let (y0, y1) = self.y_range();
        let w = WIDTH - LEFT - RIGHT;
        let h = HEIGHT - TOP - BOTTOM;
        let fy = |y: f64| -> f64 {
            let t = match self.scale {
                Scale::Linear => (y - y0) / (y1 - y0),
                Scale::Log => (y.max(y0 * 1e-3).log10() - y0.log10()) / (y1.log10() - y0.log10()),
            };
            TOP + h * (1.0 - t.clamp(-0.02, 1.02))
        };
        let fx = |x: f64| LEFT + w * ((x - x0) / (x1 - x0)).clamp(0.0, 1.0);
        let mut out = String::with_capacity(4096);
        let _ = write!(
            out,
            r#"<svg class="plot" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" data-series="{}" data-bands="{}" xmlns="http://www.w3.org/2000/svg"><title>{}</title>"#,
            self.series.len(),
            self.bands.len(),
            esc(&self.title)
        );
        let _ = write!(
            out,
            r#"<text class="ptitle" x="{LEFT}" y="14">{}</text>"#,
            esc(&self.title)
        );
        if !self.unit.is_empty() {
            let _ = write!(
                out,
                r#"<text class="unit" x="{}" y="14" text-anchor="end">{}</text>"#,
                WIDTH - RIGHT,
                esc(&self.unit)
            );
        }
        // Frame and grid.
        let _ = write!(
            out,
            r#"<rect class="frame" x="{LEFT}" y="{TOP}" width="{w}" height="{h}"/>"#
        );
        for t in y_ticks(y0, y1, self.scale) {
            let y = fy(t);
            let _ = write!(
                out,
                r#"<line class="grid" x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}"/><text class="tick" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
                LEFT + w,
                LEFT - 4.0,
                y + 3.5,
                tick_label(t)
            );
        }
        for t in nice_ticks(x0, x1, 6) {
            let x = fx(t);
            let _ = write!(
                out,
                r#"<line class="grid" x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{}"/><text class="tick" x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
                TOP + h,
                TOP + h + 14.0,
                duration_label(t)
            );
        }
        for v in &self.vlines {
            let x = fx(v.x);
            let _ = write!(
                out,
                r#"<line class="vline {}" x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{}"><title>{}</title></line>"#,
                v.class,
                TOP + h,
                esc(&v.label)
            );
        }
        for b in &self.bands {
            let pts = thin_band(&b.points, x0, x1, w);
            let mut d = String::new();
            for (x, lo, hi) in &pts {
                let hi = if hi.is_finite() { fy(*hi) } else { TOP };
                let _ = write!(d, "{:.1},{:.1} ", fx(*x), hi.max(TOP));
                let _ = lo;
            }
            for (x, lo, _) in pts.iter().rev() {
                let lo = if self.usable(*lo) { fy(*lo) } else { TOP + h };
                let _ = write!(d, "{:.1},{:.1} ", fx(*x), lo.min(TOP + h));
            }
            let _ = write!(
                out,
                r#"<polygon class="band {}" data-name="{}" points="{}"/>"#,
                b.class,
                esc(&b.name),
                d.trim_end()
            );
        }
        for hl in &self.hlines {
            if !self.usable(hl.y) {
                continue;
            }
            let y = fy(hl.y);
            let _ = write!(
                out,
                r#"<line class="hline {}" x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}"/><text class="hlabel" x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
                hl.class,
                LEFT + w,
                LEFT + w - 2.0,
                y - 3.0,
                esc(&hl.label)
            );
        }
        for s in &self.series {
            let mut d = String::new();
            let mut pen = false;
            let mut prev_y: Option<f64> = None;
            for (x, y) in thin(&s.points, x0, x1, w, s.step) {
                if !self.usable(y) {
                    pen = false;
                    prev_y = None;
                    continue;
                }
                let (px, py) = (fx(x), fy(y));
                if pen {
                    if s.step
                        && let Some(p) = prev_y
                    {
                        let _ = write!(d, "L{px:.1},{p:.1}");
                    }
                    let _ = write!(d, "L{px:.1},{py:.1}");
                } else {
                    let _ = write!(d, "M{px:.1},{py:.1}");
                    pen = true;
                }
                prev_y = Some(py);
            }
            let usable: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|p| self.usable(p.1) && p.0.is_finite())
                .collect();
            let _ = write!(
                out,
                r#"<path class="series {}{}" data-name="{}" data-points="{}" d="{}"/>"#,
                s.class,
                if s.dashed { " dashed" } else { "" },
                esc(&s.name),
                usable.len(),
                d
            );
            // Few points (a short rollout): a dot at each, so a lone value is seen too.
            if usable.len() <= DOTS && !s.step {
                for (x, y) in usable {
                    let _ = write!(
                        out,
                        r#"<circle class="dot {}" cx="{:.1}" cy="{:.1}" r="2.2"/>"#,
                        s.class,
                        fx(x),
                        fy(y)
                    );
                }
            }
        }
        // Legend, right-aligned under the title line.
        let mut lx = LEFT + 4.0;
        for (name, class, band) in self
            .series
            .iter()
            .map(|s| (&s.name, s.class, false))
            .chain(self.bands.iter().map(|b| (&b.name, b.class, true)))
        {
            let kind = if band { "lband" } else { "lline" };
            let _ = write!(
                out,
                r#"<rect class="{kind} {class}" x="{lx:.1}" y="{}" width="10" height="{}"/><text class="legend" x="{:.1}" y="{}">{}</text>"#,
                TOP + 5.0,
                if band { 8 } else { 3 },
                lx + 13.0,
                TOP + 12.0,
                esc(name)
            );
            lx += 22.0 + 5.6 * name.chars().count() as f64;
        }
        out.push_str("</svg>");
        out
    }
}

/// Keeps at most about two points per pixel column: the first, the minimum, the maximum
/// and the last of each column, in time order (steps keep every change's first point).
fn thin(points: &[(f64, f64)], x0: f64, x1: f64, w: f64, step: bool) -> Vec<(f64, f64)> {
    let cols = w.max(1.0) as usize;
    if points.len() <= 2 * cols || step && points.len() <= 4 * cols {
        return points.to_vec();
    }
    let mut out = Vec::with_capacity(4 * cols);
    let col = |x: f64| (((x - x0) / (x1 - x0)) * cols as f64).floor() as i64;
    let mut i = 0;
    while i < points.len() {
        let c = col(points[i].0);
        let mut j = i;
        let (mut lo, mut hi) = (i, i);
        let mut broken = false;
        while j < points.len() && col(points[j].0) == c {
            let y = points[j].1;
            if y.is_finite() {
                if !(points[lo].1 <= y) {
                    lo = j;
                }
                if !(points[hi].1 >= y) {
                    hi = j;
                }
            } else {
                broken = true;
            }
            j += 1;
        }
        let mut keep = vec![i, lo, hi, j - 1];
        keep.sort_unstable();
        keep.dedup();
        for k in keep {
            out.push(points[k]);
        }
        if broken {
            out.push((points[j - 1].0, f64::NAN));
        }
        i = j;
    }
    out
}

/// Thins a band to one `(x, min lo, max hi)` per pixel column.
fn thin_band(points: &[(f64, f64, f64)], x0: f64, x1: f64, w: f64) -> Vec<(f64, f64, f64)> {
    let cols = w.max(1.0) as usize;
    if points.len() <= 2 * cols {
        return points.to_vec();
    }
    let mut out: Vec<(f64, f64, f64)> = Vec::with_capacity(cols + 1);
    let col = |x: f64| (((x - x0) / (x1 - x0)) * cols as f64).floor() as i64;
    let mut last = i64::MIN;
    for &(x, lo, hi) in points {
        let c = col(x);
        match out.last_mut() {
            Some(p) if c == last => {
                p.0 = x;
                p.1 = if lo.is_finite() && p.1.is_finite() {
                    p.1.min(lo)
                } else {
                    f64::NAN
                };
                p.2 = if hi.is_finite() && p.2.is_finite() {
                    p.2.max(hi)
                } else {
                    f64::INFINITY
                };
            }
            _ => out.push((x, lo, hi)),
        }
        last = c;
    }
    out
}

/// About `n` round tick values (1, 2 or 5 × 10^k apart) covering `[lo, hi]`.
#[must_use]
pub fn nice_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if !(hi > lo) || !lo.is_finite() || !hi.is_finite() {
        return vec![lo];
    }
    let raw = (hi - lo) / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() * step;
    let mut out = Vec::new();
    let mut t = first;
    while t <= hi + step * 1e-9 && out.len() < 50 {
        // Snap tiny float noise around zero.
        out.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    out
}

fn y_ticks(lo: f64, hi: f64, scale: Scale) -> Vec<f64> {
    match scale {
        Scale::Linear => nice_ticks(lo, hi, 4),
        Scale::Log => {
            let (a, b) = (lo.log10().ceil() as i32, hi.log10().floor() as i32);
            let mut v: Vec<f64> = (a..=b).map(|k| 10f64.powi(k)).collect();
            if v.len() < 2 {
                v = nice_ticks(lo, hi, 3)
                    .into_iter()
                    .filter(|t| *t > 0.0)
                    .collect();
            }
            v
        }
    }
}

/// A tick value in few characters: `0.005`, `25`, `1.2k`, `3M`.
#[must_use]
pub fn tick_label(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".to_string()
    } else if a >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if a >= 1e4 {
        format!("{}k", trim(v / 1e3))
    } else if a >= 1.0 {
        trim(v)
    } else {
        let s = format!("{v:.6}");
        s.trim_end_matches('0').to_string()
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Seconds as `45s`, `12m`, `1h30m`.
#[must_use]
pub fn duration_label(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 if s.is_multiple_of(60) => format!("{}m", s / 60),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// Escapes text for HTML and SVG content and attributes.
#[must_use]
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        assert_eq!(nice_ticks(0.0, 45.0, 6), vec![0.0, 10.0, 20.0, 30.0, 40.0]);
        assert_eq!(nice_ticks(0.0, 1.0, 4), vec![0.0, 0.5, 1.0]);
        assert_eq!(tick_label(0.005), "0.005");
        assert_eq!(tick_label(12_000.0), "12k");
        assert_eq!(duration_label(5400.0), "1h30m");
        assert_eq!(duration_label(90.0), "1m30s");
    }

    #[test]
    fn series_and_bands_are_counted_and_escaped() {
        let mut p = Plot::new("a <b>", "%", (0.0, 10.0));
        p.series.push(Series {
            name: "x\"y".into(),
            class: "canary",
            points: vec![(0.0, 1.0), (5.0, f64::NAN), (10.0, 2.0)],
            step: false,
            dashed: false,
        });
        p.bands.push(Band {
            name: "ci".into(),
            class: "canary",
            points: vec![(0.0, 0.5, f64::INFINITY), (10.0, 1.0, 3.0)],
        });
        let svg = p.render();
        assert!(svg.starts_with(r#"<svg class="plot""#));
        assert!(svg.contains(r#"data-series="1" data-bands="1""#));
        assert!(svg.contains("<title>a &lt;b&gt;</title>"));
        assert!(svg.contains(r#"data-name="x&quot;y" data-points="2""#));
        // The NaN breaks the line: two moves.
        assert_eq!(svg.matches('M').count(), 2);
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
    }

    #[test]
    fn long_series_are_thinned_but_keep_extremes() {
        let pts: Vec<(f64, f64)> = (0..100_000)
            .map(|i| {
                (
                    f64::from(i),
                    if i == 54_321 { 1e6 } else { f64::from(i % 7) },
                )
            })
            .collect();
        let t = thin(&pts, 0.0, 100_000.0, 500.0, false);
        assert!(t.len() <= 4 * 500 + 4, "{}", t.len());
        assert!(t.iter().any(|p| p.1 == 1e6));
        assert!(t.windows(2).all(|w| w[0].0 <= w[1].0));
    }
}
