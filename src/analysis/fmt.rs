//! Number formatting for verdict reasons: short, unambiguous, and the same everywhere.

/// A proportion as a percentage with three significant digits: `0.52%`, `12.3%`.
#[must_use]
pub fn pct(x: f64) -> String {
    if x.is_nan() {
        return "n/a".to_string();
    }
    let p = x * 100.0;
    if p == 0.0 {
        "0%".to_string()
    } else if p.abs() >= 10.0 {
        format!("{p:.1}%")
    } else if p.abs() >= 1.0 {
        format!("{p:.2}%")
    } else {
        format!("{p:.3}%")
    }
}

/// A positive number with three significant digits, `∞` for infinity.
#[must_use]
pub fn num(x: f64) -> String {
    if x.is_nan() {
        "n/a".to_string()
    } else if x.is_infinite() {
        if x > 0.0 {
            "∞".to_string()
        } else {
            "-∞".to_string()
        }
    } else if x == 0.0 {
        "0".to_string()
    } else if x.abs() >= 1e5 || x.abs() < 1e-3 {
        format!("{x:.2e}")
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

/// [`num`] rounded toward zero instead of to the nearest digit, for lower bounds: "the test
/// rejects every ratio ≤ 1.233" must stay true of the printed number.
#[must_use]
pub fn num_down(x: f64) -> String {
    let decimals = if !x.is_finite() || x == 0.0 || x.abs() >= 1e5 || x.abs() < 1e-3 {
        return num(x);
    } else if x.abs() >= 100.0 {
        0
    } else if x.abs() >= 10.0 {
        1
    } else {
        3
    };
    let scale = 10f64.powi(decimals);
    // A hair of slack so that exact values (2.5) are not pushed down by representation error.
    let v = ((x * scale) * (1.0 + 1e-12)).trunc() / scale;
    format!("{v:.prec$}", prec = decimals as usize)
}

/// A ratio or margin with at most three significant digits and no trailing zeros, keeping
/// one decimal: `1.0`, `1.1`, `1.19`, `2.5`, `∞`.
#[must_use]
pub fn num_short(x: f64) -> String {
    if !x.is_finite() {
        return num(x);
    }
    let s = format!("{x:.3}");
    let s = s.trim_end_matches('0');
    if s.ends_with('.') {
        format!("{s}0")
    } else {
        s.to_string()
    }
}

/// A count: whole numbers as integers, fractional ones (PromQL `increase()` extrapolates)
/// with one decimal.
#[must_use]
pub fn count(x: f64) -> String {
    if x.is_finite() && (x - x.round()).abs() < 1e-6 {
        format!("{:.0}", x.round())
    } else if x.is_finite() {
        format!("{x:.1}")
    } else {
        num(x)
    }
}

/// An interval `[lo, hi]` with [`num`].
#[must_use]
pub fn interval(lo: f64, hi: f64) -> String {
    format!("[{}, {}]", num(lo), num(hi))
}

/// Seconds as a human latency: `850µs`, `12.3ms`, `1.25s`.
#[must_use]
pub fn secs(s: f64) -> String {
    if s.is_nan() {
        "n/a".to_string()
    } else if s.is_infinite() {
        if s > 0.0 {
            "∞".to_string()
        } else {
            "-∞".to_string()
        }
    } else if s < 1e-3 {
        format!("{:.0}µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.1}ms", s * 1e3)
    } else {
        format!("{s:.2}s")
    }
}

/// An e-value from its natural log, e.g. `e=1.2e3`.
#[must_use]
pub fn evalue(log_e: f64) -> String {
    num(log_e.exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(pct(0.0052), "0.520%");
        assert_eq!(pct(0.0491), "4.91%");
        assert_eq!(pct(0.123), "12.3%");
        assert_eq!(num(2.7571), "2.757");
        assert_eq!(num(f64::INFINITY), "∞");
        assert_eq!(num(1234.0), "1234");
        assert_eq!(secs(0.0123), "12.3ms");
        assert_eq!(secs(0.000_85), "850µs");
        assert_eq!(interval(0.5, 2.0), "[0.500, 2.000]");
        assert_eq!(count(7.448_499_999_999_999), "7.4");
        assert_eq!(count(12.0), "12");
        assert_eq!(num_down(1.000_6), "1.000");
        assert_eq!(num_down(2.5), "2.500");
        assert_eq!(num_down(28.57), "28.5");
        assert_eq!(num_short(1.0), "1.0");
        assert_eq!(num_short(2.0), "2.0");
        assert_eq!(num_short(1.1), "1.1");
        assert_eq!(num_short(1.189_207), "1.189");
    }
}
