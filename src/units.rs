//! Shared units and rules of configs and specs: weights in basis points, durations as
//! human strings, their serde forms, and the rule for names. A leaf: it imports nothing of
//! tidegate.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A config or spec field that is wrong: its path (`routes[0].versions[1].weight`) and what
/// is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error seen from `parent`: `name` becomes `routes[0].name`.
    pub fn under(self, parent: &str) -> FieldError {
        let field = if self.field.is_empty() {
            parent.to_string()
        } else {
            format!("{parent}.{}", self.field)
        };
        FieldError { field, ..self }
    }
}

/// Weights inside tidegate are basis points: 10000 = 100 %.
pub type WeightBps = u16;
pub const FULL_WEIGHT: WeightBps = 10_000;

/// Formats basis points as a percent with at most two decimals: 1250 -> "12.5".
pub fn format_percent(bps: u32) -> String {
    let whole = bps / 100;
    let frac = bps % 100;
    match frac {
        0 => whole.to_string(),
        f if f % 10 == 0 => format!("{whole}.{}", f / 10),
        f => format!("{whole}.{f:02}"),
    }
}

/// Names of listeners, routes and versions: 1-63 of letters, digits, `-`, `_`, `.`. They
/// appear in metrics labels, URLs and state file names.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Parses a percent with up to two decimals into basis points.
pub fn parse_weight(value: f64) -> Result<WeightBps, String> {
    if !(0.0..=100.0).contains(&value) {
        return Err(format!("weight `{value}` is outside 0..100"));
    }
    let bps = value * 100.0;
    if (bps - bps.round()).abs() > 1e-6 {
        return Err(format!("weight `{value}` has more than two decimals"));
    }
    Ok(bps.round() as WeightBps)
}

/// Parses `250ms`, `30s`, `5m`, `1h`, `1m30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(digits);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("`{text}` is not a duration (use e.g. 250ms, 30s, 5m, 1h)"))?;
        let secs = match unit {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            _ => {
                return Err(format!(
                    "`{text}` is not a duration (use e.g. 250ms, 30s, 5m, 1h)"
                ));
            }
        };
        total += Duration::from_secs_f64(secs);
        rest = next;
    }
    Ok(total)
}

/// Formats a duration the way configs write it: `250ms`, `30s`, `5m`, `1h30m`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms % 1000 != 0 {
        return format!("{ms}ms");
    }
    let (h, m, s) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

/// `#[serde(with = "serde_duration")]`: durations as human strings.
pub mod serde_duration {
    use super::*;
    use serde::Serializer;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        de_duration(d)
    }
}

/// `#[serde(with = "serde_opt_duration")]`: optional durations as human strings.
pub mod serde_opt_duration {
    use super::*;
    use serde::Serializer;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        de_opt_duration(d)
    }
}

/// `#[serde(with = "serde_weight")]`: percent with two decimals outside, basis points inside.
pub mod serde_weight {
    use super::*;
    use serde::Serializer;

    pub fn serialize<S: Serializer>(w: &WeightBps, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(f64::from(*w) / 100.0)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<WeightBps, D::Error> {
        de_weight(d)
    }
}

pub fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

pub fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    match Option::<String>::deserialize(d)? {
        Some(s) => parse_duration(&s)
            .map(Some)
            .map_err(serde::de::Error::custom),
        None => Ok(None),
    }
}

pub fn de_opt_weight<'de, D: Deserializer<'de>>(d: D) -> Result<Option<WeightBps>, D::Error> {
    de_weight(d).map(Some)
}

pub fn de_weight<'de, D: Deserializer<'de>>(d: D) -> Result<WeightBps, D::Error> {
    let v = f64::deserialize(d)?;
    parse_weight(v).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn percent_formatting() {
        assert_eq!(format_percent(1250), "12.5");
        assert_eq!(format_percent(1), "0.01");
        assert_eq!(format_percent(10000), "100");
    }
}
