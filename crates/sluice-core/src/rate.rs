//! Rates: `count/period` with an optional burst, in events or in bytes.
//!
//! An invalid rate cannot be built: the count, burst and period are non-zero
//! and the emission interval (period ÷ count) is at least one nanosecond.

use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;
use std::time::Duration;

use crate::time::Nanos;

/// What a rate counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    /// Events: requests, registrations, connections.
    Events,
    /// Bytes: bandwidth and media sizes (`10KiB/1s`).
    Bytes,
}

/// A rate limit: `count` per `period`, allowing `burst` at once from idle.
///
/// `"N/period"` means a bucket of N that refills evenly over the period: N at
/// once from idle, then one every period/N. `burst` changes the bucket size
/// but not the refill speed.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    count: NonZeroU64,
    period: Nanos,
    burst: NonZeroU64,
    unit: Unit,
}

/// Why a rate could not be built or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    /// The text is not `count/period`.
    #[error("expected `count/period` such as \"10/1m\" or \"10KiB/1s\", got {0:?}")]
    Syntax(String),
    /// The count part is not a number with an optional byte unit.
    #[error("bad count {0:?}: expected a positive integer, optionally with a byte unit (B, KB, KiB, MB, MiB, GB, GiB)")]
    Count(String),
    /// The period part is not a number followed by `ms`, `s`, `m`, `h` or `d`.
    #[error(
        "bad period {0:?}: expected a positive number followed by ms, s, m, h or d (\"30s\", \"6m\", \"1d\")"
    )]
    Period(String),
    /// Zero count, period or burst.
    #[error("count, period and burst must be greater than zero")]
    Zero,
    /// The rate is finer than one unit per nanosecond or the numbers overflow.
    #[error("rate out of range: at most one unit per nanosecond and periods up to 10 years")]
    Range,
}

const MAX_PERIOD: Nanos = 10 * 366 * 86_400 * 1_000_000_000;

impl Rate {
    /// `count` per `period`, with a burst of `count`.
    pub fn new(count: u64, period: Duration) -> Result<Self, RateError> {
        Self::with_unit(count, period, Unit::Events)
    }

    /// `count` of `unit` per `period`, with a burst of `count`.
    pub fn with_unit(count: u64, period: Duration, unit: Unit) -> Result<Self, RateError> {
        let count = NonZeroU64::new(count).ok_or(RateError::Zero)?;
        let period = crate::time::nanos(period);
        if period == 0 {
            return Err(RateError::Zero);
        }
        if period > MAX_PERIOD || period / count.get() == 0 {
            return Err(RateError::Range);
        }
        Ok(Self {
            count,
            period,
            burst: count,
            unit,
        })
    }

    /// The same rate with a different bucket size.
    pub fn with_burst(self, burst: u64) -> Result<Self, RateError> {
        let burst = NonZeroU64::new(burst).ok_or(RateError::Zero)?;
        // tau = burst * emission must fit comfortably in u64 nanoseconds.
        if u128::from(burst.get()) * u128::from(self.emission()) > u128::from(MAX_PERIOD) * 4 {
            return Err(RateError::Range);
        }
        Ok(Self { burst, ..self })
    }

    /// The rate multiplied by `factor` (count and burst scale, the period stays).
    ///
    /// Used by overrides ("this network gets 4× the limit"). The result is
    /// clamped to at least 1 and to the valid range.
    pub fn scaled(self, factor: f64) -> Self {
        let scale = |n: NonZeroU64| -> NonZeroU64 {
            let v = (n.get() as f64 * factor).round();
            let v = if v.is_finite() {
                v.clamp(1.0, 1e15) as u64
            } else {
                1
            };
            NonZeroU64::new(v).unwrap_or(NonZeroU64::MIN)
        };
        let count = scale(self.count);
        let count = if self.period / count.get() == 0 {
            NonZeroU64::new(self.period).unwrap_or(NonZeroU64::MIN)
        } else {
            count
        };
        let candidate = Self {
            count,
            burst: scale(self.burst),
            ..self
        };
        candidate.with_burst(candidate.burst.get()).unwrap_or(Self {
            burst: count,
            ..candidate
        })
    }

    /// How many units per period.
    pub fn count(&self) -> u64 {
        self.count.get()
    }

    /// The period in nanoseconds.
    pub fn period_nanos(&self) -> Nanos {
        self.period
    }

    /// The period.
    pub fn period(&self) -> Duration {
        Duration::from_nanos(self.period)
    }

    /// The bucket size: how many units may be taken at once from idle.
    pub fn burst(&self) -> u64 {
        self.burst.get()
    }

    /// Events or bytes.
    pub fn unit(&self) -> Unit {
        self.unit
    }

    /// Nanoseconds for one unit to refill (period ÷ count, rounded to nearest).
    pub fn emission(&self) -> Nanos {
        let c = self.count.get();
        (self.period + c / 2) / c
    }

    /// The GCRA parameters of this rate.
    pub fn gcra(&self) -> crate::gcra::Gcra {
        crate::gcra::Gcra::new(self.emission(), self.burst.get())
    }
}

fn parse_count(s: &str) -> Result<(u64, Unit), RateError> {
    let bad = || RateError::Count(s.to_owned());
    let s = s.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, suffix) = s.split_at(digits_end);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let (mult, unit) = match suffix.trim() {
        "" => (1, Unit::Events),
        "B" => (1, Unit::Bytes),
        "KB" | "kB" => (1_000, Unit::Bytes),
        "KiB" => (1 << 10, Unit::Bytes),
        "MB" => (1_000_000, Unit::Bytes),
        "MiB" => (1 << 20, Unit::Bytes),
        "GB" => (1_000_000_000, Unit::Bytes),
        "GiB" => (1 << 30, Unit::Bytes),
        _ => return Err(bad()),
    };
    n.checked_mul(mult).map(|n| (n, unit)).ok_or(RateError::Range)
}

/// Parses a duration written `30s`, `6m`, `1h`, `1d`, `500ms` (or bare `s`, `m`… meaning one).
pub fn parse_duration(s: &str) -> Result<Duration, RateError> {
    let bad = || RateError::Period(s.to_owned());
    let s = s.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits_end);
    let n: u64 = if num.is_empty() {
        1
    } else {
        num.parse().map_err(|_| bad())?
    };
    let unit_nanos: u64 = match unit {
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60 * 1_000_000_000,
        "h" => 3_600 * 1_000_000_000,
        "d" => 86_400 * 1_000_000_000,
        _ => return Err(bad()),
    };
    let total = n.checked_mul(unit_nanos).ok_or(RateError::Range)?;
    if total == 0 {
        return Err(RateError::Zero);
    }
    Ok(Duration::from_nanos(total))
}

/// Formats a duration the way the config writes it (`6m`, `1d`, `1500ms`).
pub fn format_duration(d: Duration) -> String {
    let n = crate::time::nanos(d);
    for (unit, size) in [
        ("d", 86_400_000_000_000u64),
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
    ] {
        if n >= size && n % size == 0 {
            return format!("{}{unit}", n / size);
        }
    }
    format!("{n}ns")
}

impl FromStr for Rate {
    type Err = RateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (count, period) = s.split_once('/').ok_or_else(|| RateError::Syntax(s.to_owned()))?;
        let (count, unit) = parse_count(count)?;
        let period = parse_duration(period)?;
        Rate::with_unit(count, period, unit)
    }
}

fn format_count(n: u64, unit: Unit) -> String {
    match unit {
        Unit::Events => n.to_string(),
        Unit::Bytes => {
            for (suffix, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
                if n >= size && n % size == 0 {
                    return format!("{}{suffix}", n / size);
                }
            }
            format!("{n}B")
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            format_count(self.count.get(), self.unit),
            format_duration(self.period())
        )?;
        if self.burst != self.count {
            write!(f, " burst {}", format_count(self.burst.get(), self.unit))?;
        }
        Ok(())
    }
}

impl fmt::Debug for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Rate({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_design_examples() {
        let r: Rate = "10/1m".parse().unwrap();
        assert_eq!(
            (r.count(), r.period(), r.burst()),
            (10, Duration::from_secs(60), 10)
        );
        assert_eq!(r.emission(), 6_000_000_000);
        let r: Rate = "1/6m".parse().unwrap();
        assert_eq!(r.period(), Duration::from_secs(360));
        let r: Rate = "100/1d".parse().unwrap();
        assert_eq!(r.period(), Duration::from_secs(86_400));
        let r: Rate = "10KiB/1s".parse().unwrap();
        assert_eq!((r.count(), r.unit()), (10_240, Unit::Bytes));
        let r: Rate = "100MiB/1h".parse().unwrap();
        assert_eq!(r.count(), 100 << 20);
        let r: Rate = "5/30s".parse().unwrap();
        assert_eq!(r.to_string(), "5/30s");
        assert_eq!("10/s".parse::<Rate>().unwrap().period(), Duration::from_secs(1));
    }

    #[test]
    fn invalid_rates_are_unrepresentable() {
        assert_eq!("0/1m".parse::<Rate>(), Err(RateError::Zero));
        assert_eq!("1/0s".parse::<Rate>(), Err(RateError::Zero));
        assert!(matches!("ten/1m".parse::<Rate>(), Err(RateError::Count(_))));
        assert!(matches!("10/1w".parse::<Rate>(), Err(RateError::Period(_))));
        assert!(matches!("10".parse::<Rate>(), Err(RateError::Syntax(_))));
        assert!(matches!("-1/1m".parse::<Rate>(), Err(RateError::Count(_))));
        assert_eq!("10GiB/1ms".parse::<Rate>(), Err(RateError::Range));
        assert_eq!(
            Rate::new(1, Duration::from_secs(1)).unwrap().with_burst(0),
            Err(RateError::Zero)
        );
        assert!("99999999999999999999/1s".parse::<Rate>().is_err());
    }

    #[test]
    fn display_round_trips() {
        for s in ["10/1m", "1/6m", "10KiB/1s", "100MiB/1h", "1000/1d", "3/500ms"] {
            assert_eq!(s.parse::<Rate>().unwrap().to_string(), s);
        }
        let r = "10/1m".parse::<Rate>().unwrap().with_burst(20).unwrap();
        assert_eq!(r.to_string(), "10/1m burst 20");
    }

    #[test]
    fn scaling_keeps_rates_valid() {
        let r: Rate = "10/1m".parse().unwrap();
        assert_eq!(r.scaled(4.0).count(), 40);
        assert_eq!(r.scaled(0.01).count(), 1);
        assert_eq!(r.scaled(f64::NAN).count(), 1);
        let tiny: Rate = "1000/1ms".parse().unwrap();
        assert!(tiny.scaled(1e9).emission() >= 1);
    }
}
