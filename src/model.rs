//! The shared vocabulary: arms and canary weights.
//!
//! These types are pure data and are used by every other module, including the pure
//! `analysis` and `policy` modules.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One side of the comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arm {
    /// The version already in production.
    Baseline,
    /// The new version under test.
    Canary,
}

impl Arm {
    /// Both arms, baseline first.
    pub const BOTH: [Arm; 2] = [Arm::Baseline, Arm::Canary];

    /// Lowercase name, as used in templates (`{{arm}}`) and labels.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Arm::Baseline => "baseline",
            Arm::Canary => "canary",
        }
    }

    /// Index into two-element arrays: baseline 0, canary 1.
    #[must_use]
    pub fn index(self) -> usize {
        match self {
            Arm::Baseline => 0,
            Arm::Canary => 1,
        }
    }
}

impl fmt::Display for Arm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Share of requests routed to the canary, in basis points (0..=10 000).
///
/// The field is private: every value in circulation has been range-checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Weight(u16);

/// A weight outside 0..=100 percent.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("canary weight {0} is outside 0..=100 percent")]
pub struct InvalidWeight(pub String);

impl Weight {
    /// No traffic to the canary.
    pub const ZERO: Weight = Weight(0);
    /// All traffic to the canary.
    pub const FULL: Weight = Weight(10_000);

    /// From basis points.
    ///
    /// # Errors
    /// [`InvalidWeight`] when `bp > 10_000`.
    pub fn try_from_bp(bp: u32) -> Result<Self, InvalidWeight> {
        u16::try_from(bp)
            .ok()
            .filter(|&v| v <= 10_000)
            .map(Weight)
            .ok_or_else(|| InvalidWeight(format!("{bp} bp")))
    }

    /// From a percentage, rounded to the nearest basis point.
    ///
    /// # Errors
    /// [`InvalidWeight`] when `pct` is not a finite number in 0..=100.
    pub fn try_from_percent(pct: f64) -> Result<Self, InvalidWeight> {
        if pct.is_finite() && (0.0..=100.0).contains(&pct) {
            Ok(Weight((pct * 100.0).round() as u16))
        } else {
            Err(InvalidWeight(format!("{pct}")))
        }
    }

    /// Basis points (0..=10 000).
    #[must_use]
    pub fn bp(self) -> u16 {
        self.0
    }

    /// Percent (0.0..=100.0).
    #[must_use]
    pub fn percent(self) -> f64 {
        f64::from(self.0) / 100.0
    }

    /// Probability that a request goes to the canary (0.0..=1.0).
    #[must_use]
    pub fn fraction(self) -> f64 {
        f64::from(self.0) / 10_000.0
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(100) {
            write!(f, "{}%", self.0 / 100)
        } else {
            write!(f, "{:.2}%", self.percent())
        }
    }
}

impl<'de> Deserialize<'de> for Weight {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let pct = f64::deserialize(d)?;
        Weight::try_from_percent(pct).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Weight {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.percent())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_bounds() {
        assert_eq!(Weight::try_from_percent(5.0).unwrap().bp(), 500);
        assert_eq!(Weight::try_from_percent(0.25).unwrap().bp(), 25);
        assert!(Weight::try_from_percent(100.5).is_err());
        assert!(Weight::try_from_percent(-1.0).is_err());
        assert!(Weight::try_from_percent(f64::NAN).is_err());
        assert!(Weight::try_from_bp(10_001).is_err());
        assert_eq!(Weight::try_from_bp(2500).unwrap().to_string(), "25%");
        assert_eq!(Weight::try_from_bp(250).unwrap().to_string(), "2.50%");
    }
}
