//! Time-uniform confidence sequences (Howard & Ramdas; statistics.md §2.2–2.3).

/// Half-width ε_t of the Howard–Ramdas confidence band for a CDF, valid for all t ≥ 1 and
/// all x simultaneously at level `alpha`:
/// ε_t = 0.85·sqrt((ln ln(e·t) + 0.8·ln(1612/α)) / t).
///
/// Returns 1 (an uninformative band) for `t < 1` or `alpha` outside (0, 1).
#[must_use]
pub fn cdf_band_epsilon(t: f64, alpha: f64) -> f64 {
    if !(t >= 1.0) || !(alpha > 0.0 && alpha < 1.0) {
        return 1.0;
    }
    let e = std::f64::consts::E;
    (0.85 * (((e * t).ln().ln() + 0.8 * (1612.0 / alpha).ln()) / t).sqrt()).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_band_vectors() {
        // statistics.md §2.2 at α = 0.05.
        assert!((cdf_band_epsilon(100.0, 0.05) - 0.2692).abs() < 5e-5);
        assert!((cdf_band_epsilon(1000.0, 0.05) - 0.0866).abs() < 5e-5);
        assert!((cdf_band_epsilon(1e4, 0.05) - 0.0277).abs() < 5e-5);
        assert_eq!(cdf_band_epsilon(0.0, 0.05), 1.0);
        assert_eq!(cdf_band_epsilon(f64::NAN, 0.05), 1.0);
    }
}
