//! The watermark strategy's `ts` column: a value that orders versions of a row.

use std::cmp::Ordering;

use serde_json::Value;

/// A value of the watermark strategy's `ts` column, ordered the way the column is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Ts {
    Int(i64),
    Float(f64),
    /// Microseconds since the epoch (timestamps with or without time zone).
    Micros(i64),
    Text(Box<str>),
}

impl Ts {
    /// Reads a codec value; `None` for SQL NULL or a value with no order.
    pub fn from_value(v: &Value) -> Option<Ts> {
        match v {
            Value::Number(n) => n
                .as_i64()
                .map(Ts::Int)
                .or_else(|| n.as_f64().map(Ts::Float)),
            Value::String(s) => {
                Some(parse_time(s).map_or_else(|| Ts::Text(s.as_str().into()), Ts::Micros))
            }
            _ => None,
        }
    }

    /// Whether `self` is at least as new as `other`. Values of different kinds (a
    /// column whose type changed) count as newer.
    pub fn at_least(&self, other: &Ts) -> bool {
        let ord = match (self, other) {
            (Ts::Int(a), Ts::Int(b)) => a.partial_cmp(b),
            (Ts::Float(a), Ts::Float(b)) => a.partial_cmp(b),
            (Ts::Int(a), Ts::Float(b)) => (*a as f64).partial_cmp(b),
            (Ts::Float(a), Ts::Int(b)) => a.partial_cmp(&(*b as f64)),
            (Ts::Micros(a), Ts::Micros(b)) => a.partial_cmp(b),
            (Ts::Text(a), Ts::Text(b)) => a.partial_cmp(b),
            _ => None,
        };
        ord != Some(Ordering::Less)
    }

    /// Whether `self` is strictly newer than `other` (different kinds count as newer).
    pub fn newer_than(&self, other: &Ts) -> bool {
        self.at_least(other) && self != other
    }

    /// Milliseconds since the epoch, when the value is a time.
    pub fn as_millis(&self) -> Option<i64> {
        match self {
            Ts::Micros(us) => Some(us.div_euclid(1000)),
            _ => None,
        }
    }
}

/// RFC 3339 (`timestamptz` from the codec) or ISO `timestamp` text to microseconds.
fn parse_time(s: &str) -> Option<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_micros());
    }
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc().timestamp_micros())
}
