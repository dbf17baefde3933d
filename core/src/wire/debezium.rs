//! Debezium's value encoding: PostgreSQL text values to the JSON that Debezium's
//! PostgreSQL connector writes through Kafka Connect's JsonConverter.
//!
//! With `--value-format debezium` the bridge encodes every `before`/`after` value (and
//! key) with [`encode`], and a client configured the same way encodes its `COPY` rows
//! with it too ([`crate::wire::ValueKind::Debezium`]), so a cache holds the same value
//! whichever path a row took. The three knobs are Debezium's
//! (`decimal.handling.mode`, `time.precision.mode`, `binary.handling.mode`), with its
//! defaults; `docs/value-formats.md` lists every type per mode. [`field_schema`] gives
//! the Kafka Connect schema of a column, for `--value-schema`.
//!
//! What this encoding follows, from Debezium's "Data type mappings" of the PostgreSQL
//! connector: `numeric` with a declared scale is `Decimal` (the unscaled value as a
//! big-endian two's-complement integer, base64 in JSON), without one
//! `VariableScaleDecimal` (`{"scale", "value"}`); `date` is days since the epoch;
//! `time` and `timestamp` are milli- or microseconds by the column's precision and the
//! precision mode; `timestamptz` and `timetz` are ISO 8601 strings in UTC; `interval`
//! is `MicroDuration` (a month is 365.25 / 12 days); `bit(1)` is a boolean and longer
//! bit strings are little-endian bytes; `point` is the `Point` struct with its WKB;
//! `hstore` is a JSON document as a string.

use base64::Engine as _;
use serde_json::{json, Map, Number, Value};

use crate::wire::pgtext::{decode_bytea, money_to_decimal};

/// How `numeric` and `money` values are written (Debezium's `decimal.handling.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DecimalMode {
    /// `Decimal`: the unscaled integer's big-endian two's-complement bytes, base64.
    #[default]
    Precise,
    /// A JSON number (`f64`), which may round.
    Double,
    /// The exact decimal as a string.
    String,
}

/// How `date`, `time` and `timestamp` values are written (Debezium's `time.precision.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TimePrecisionMode {
    /// Milliseconds for precision 0 to 3, microseconds for 4 to 6.
    #[default]
    Adaptive,
    /// As `Adaptive`, but every `time` in microseconds.
    AdaptiveTimeMicroseconds,
    /// Kafka Connect's own types, always milliseconds.
    Connect,
}

/// How `bytea` values are written (Debezium's `binary.handling.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BinaryMode {
    /// Connect `bytes` (base64 in JSON).
    #[default]
    Bytes,
    /// A base64 string.
    Base64,
    /// A URL-safe base64 string (`-` and `_`, padded).
    Base64UrlSafe,
    /// A lower-case hexadecimal string.
    Hex,
}

/// Debezium's three value knobs, and whether records carry their schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Modes {
    /// `decimal.handling.mode`.
    pub decimal: DecimalMode,
    /// `time.precision.mode`.
    pub time: TimePrecisionMode,
    /// `binary.handling.mode`.
    pub binary: BinaryMode,
    /// Whether every key and value is wrapped as `{"schema": …, "payload": …}`, as
    /// Kafka Connect's JsonConverter writes them with `schemas.enable=true`
    /// (`--value-schema`; `wire::connect`). It changes no value.
    pub schemas: bool,
}

/// The encoding of the values in `before`, `after` and the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ValueFormat {
    /// tidemark's own codec ([`crate::wire::codec`]), the default.
    #[default]
    Tidemark,
    /// Debezium's, with its knobs.
    Debezium(Modes),
}

/// The record header that names the value format of a record the bridge wrote in a
/// format other than tidemark's: [`ValueFormat::describe`]'s text. Records without it
/// are tidemark's format (or another writer's).
pub const FORMAT_HEADER: &str = "tidemark.format";

/// What [`ValueFormat::describe`] appends to the [`FORMAT_HEADER`] text when records
/// carry their Kafka Connect schema ([`Modes::schemas`]).
pub const SCHEMA_SUFFIX: &str = ";schemas.enable=true";

/// A mode's name could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{value:?} is not one of {allowed}")]
pub struct ModeError {
    value: String,
    allowed: &'static str,
}

macro_rules! names {
    ($ty:ty, $allowed:literal, $($variant:ident = $name:literal),+) => {
        impl $ty {
            /// The mode's name, as Debezium spells it.
            pub fn name(self) -> &'static str {
                match self { $(Self::$variant => $name),+ }
            }
        }
        impl std::str::FromStr for $ty {
            type Err = ModeError;
            fn from_str(s: &str) -> Result<Self, ModeError> {
                match s { $($name => Ok(Self::$variant),)+ _ => Err(ModeError { value: s.to_owned(), allowed: $allowed }) }
            }
        }
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

names!(
    DecimalMode,
    "precise, double, string",
    Precise = "precise",
    Double = "double",
    String = "string"
);
names!(
    TimePrecisionMode,
    "adaptive, adaptive_time_microseconds, connect",
    Adaptive = "adaptive",
    AdaptiveTimeMicroseconds = "adaptive_time_microseconds",
    Connect = "connect"
);
names!(
    BinaryMode,
    "bytes, base64, base64-url-safe, hex",
    Bytes = "bytes",
    Base64 = "base64",
    Base64UrlSafe = "base64-url-safe",
    Hex = "hex"
);

impl ValueFormat {
    /// `tidemark`, or `debezium;decimal=…;time=…;binary=…` (followed by
    /// [`SCHEMA_SUFFIX`] with [`Modes::schemas`]): the text of
    /// [`FORMAT_HEADER`], and how errors name a format.
    pub fn describe(&self) -> String {
        match self {
            ValueFormat::Tidemark => "tidemark".into(),
            ValueFormat::Debezium(m) => format!(
                "debezium;decimal={};time={};binary={}{}",
                m.decimal,
                m.time,
                m.binary,
                if m.schemas { SCHEMA_SUFFIX } else { "" }
            ),
        }
    }

    /// Whether keys and values carry their Kafka Connect schema ([`Modes::schemas`]).
    pub fn schemas(&self) -> bool {
        matches!(self, ValueFormat::Debezium(m) if m.schemas)
    }
}

/// A column's type as the encoding needs it: domains resolved to their base type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PgType {
    /// The base type's OID (for an array, the element's; see [`crate::wire::ValueKind::for_format`]).
    pub oid: u32,
    /// The type modifier (`atttypmod`): precision and scale of `numeric`, the
    /// fractional digits of `time`/`timestamp`, the length of `bit`; -1 when none.
    pub typmod: i32,
    /// The type's name (`typname`), which tells extension types such as `hstore` apart.
    pub name: String,
}

const MICROS_PER_DAY: i64 = 86_400_000_000;
/// Debezium's average month, 365.25 / 12 days, in microseconds (exactly 2,629,800 s).
const MICROS_PER_MONTH: i64 = 2_629_800_000_000;

impl PgType {
    /// `numeric`'s declared scale, if any.
    fn numeric_scale(&self) -> Option<u32> {
        (self.typmod >= 4).then(|| ((self.typmod - 4) & 0xffff) as u32)
    }

    /// The fractional-second digits of a time type: the declared ones, else 6.
    fn time_precision(&self) -> i32 {
        if self.typmod >= 0 {
            self.typmod
        } else {
            6
        }
    }

    /// Whether a `time`/`timestamp` value is written in milliseconds (else micros).
    fn millis(&self, modes: &Modes, is_time: bool) -> bool {
        match modes.time {
            TimePrecisionMode::Connect => true,
            TimePrecisionMode::AdaptiveTimeMicroseconds if is_time => false,
            _ => self.time_precision() <= 3,
        }
    }
}

/// Encodes one non-NULL PostgreSQL text value of a scalar column as Debezium does.
pub fn encode(ty: &PgType, modes: &Modes, text: &str) -> Result<Value, String> {
    Ok(match ty.oid {
        16 => Value::Bool(match text {
            "t" | "true" => true,
            "f" | "false" => false,
            _ => return Err("not t or f".into()),
        }),
        21 | 23 | 20 | 26 => Value::Number(
            text.parse::<i64>()
                .map(Number::from)
                .map_err(|e| e.to_string())?,
        ),
        700 | 701 => match text {
            "NaN" | "Infinity" | "-Infinity" => Value::String(text.to_owned()),
            _ => float(
                text.parse()
                    .map_err(|e: std::num::ParseFloatError| e.to_string())?,
            )?,
        },
        1560 if ty.typmod == 1 => Value::Bool(text == "1"),
        1560 | 1562 => base64_std(&bits_le(text)?),
        1700 => decimal(text, ty.numeric_scale(), modes.decimal, true)?,
        790 => decimal(&money_to_decimal(text)?, Some(2), modes.decimal, false)?,
        1082 => Value::from(days(text)?),
        1083 => {
            let micros = time_of_day(text)?;
            Value::from(if ty.millis(modes, true) {
                micros / 1000
            } else {
                micros
            })
        }
        1114 => {
            let micros = timestamp_micros(text)?;
            Value::from(if ty.millis(modes, false) {
                micros.div_euclid(1000)
            } else {
                micros
            })
        }
        1184 => Value::String(zoned_timestamp(text, ty.time_precision())?),
        1266 => Value::String(zoned_time(text)?),
        1186 => Value::from(interval_micros(text)?),
        17 => binary(&decode_bytea(text)?, modes.binary),
        600 => point(text)?,
        _ if ty.name == "hstore" => Value::String(hstore_json(text)?),
        _ => Value::String(text.to_owned()),
    })
}

fn float(f: f64) -> Result<Value, String> {
    Number::from_f64(f)
        .map(Value::Number)
        .ok_or_else(|| "not finite".into())
}

fn base64_std(bytes: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn binary(bytes: &[u8], mode: BinaryMode) -> Value {
    match mode {
        BinaryMode::Bytes | BinaryMode::Base64 => base64_std(bytes),
        BinaryMode::Base64UrlSafe => {
            Value::String(base64::engine::general_purpose::URL_SAFE.encode(bytes))
        }
        BinaryMode::Hex => Value::String(bytes.iter().map(|b| format!("{b:02x}")).collect()),
    }
}

/// A bit string (`101`) as little-endian bytes: bit 0 is the rightmost digit.
fn bits_le(text: &str) -> Result<Vec<u8>, String> {
    let mut out = vec![0u8; text.len().div_ceil(8)];
    for (i, c) in text.bytes().rev().enumerate() {
        match c {
            b'1' => out[i / 8] |= 1 << (i % 8),
            b'0' => {}
            _ => return Err(format!("{:?} is not a bit", c as char)),
        }
    }
    Ok(out)
}

/// A decimal string's sign, integer digits and fraction digits.
fn split_decimal(text: &str) -> Result<(bool, &str, &str), String> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return Err("not a decimal number".into());
    }
    Ok((negative, int, frac))
}

/// `numeric` or `money` text per decimal mode; `scale` is the column's declared
/// scale. A `numeric` without one is `VariableScaleDecimal` in precise mode.
/// `NaN` and the infinities have no `Decimal`: `null` in precise mode.
fn decimal(
    text: &str,
    scale: Option<u32>,
    mode: DecimalMode,
    numeric: bool,
) -> Result<Value, String> {
    let special = matches!(text, "NaN" | "Infinity" | "-Infinity");
    match mode {
        DecimalMode::String => Ok(Value::String(text.to_owned())),
        DecimalMode::Double if special => Ok(Value::String(text.to_owned())),
        DecimalMode::Double => float(
            text.parse()
                .map_err(|e: std::num::ParseFloatError| e.to_string())?,
        ),
        DecimalMode::Precise if special => Ok(Value::Null),
        DecimalMode::Precise => {
            let (negative, int, frac) = split_decimal(text)?;
            let scale_used = scale.unwrap_or(frac.len() as u32) as usize;
            let mut digits = String::with_capacity(int.len() + scale_used);
            digits.push_str(int);
            if frac.len() >= scale_used {
                digits.push_str(&frac[..scale_used]);
            } else {
                digits.push_str(frac);
                digits.extend(std::iter::repeat_n('0', scale_used - frac.len()));
            }
            let value = base64_std(&twos_complement(negative, &digits));
            Ok(match scale {
                Some(_) => value,
                None if numeric => json!({"scale": scale_used, "value": value}),
                None => value,
            })
        }
    }
}

/// A decimal integer (sign and digits) as the minimal big-endian two's-complement
/// bytes, as Java's `BigInteger.toByteArray` gives them.
fn twos_complement(negative: bool, digits: &str) -> Vec<u8> {
    // Magnitude, little-endian base 256.
    let mut mag: Vec<u8> = Vec::new();
    for d in digits.bytes() {
        let mut carry = u32::from(d - b'0');
        for byte in mag.iter_mut() {
            let v = u32::from(*byte) * 10 + carry;
            *byte = (v & 0xff) as u8;
            carry = v >> 8;
        }
        while carry > 0 {
            mag.push((carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    while mag.last() == Some(&0) {
        mag.pop();
    }
    let zero = mag.is_empty();
    if negative && !zero {
        // Two's complement: invert and add one.
        let mut carry = 1u16;
        for byte in mag.iter_mut() {
            let v = u16::from(!*byte) + carry;
            *byte = (v & 0xff) as u8;
            carry = v >> 8;
        }
        if mag.last().is_some_and(|b| b & 0x80 == 0) {
            mag.push(0xff);
        }
        // Drop redundant sign bytes.
        while mag.len() > 1 && mag[mag.len() - 1] == 0xff && mag[mag.len() - 2] & 0x80 != 0 {
            mag.pop();
        }
    } else if mag.last().is_none_or(|b| b & 0x80 != 0) {
        mag.push(0);
    }
    mag.reverse();
    mag
}

fn epoch_date() -> chrono::NaiveDate {
    chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default()
}

/// `2024-01-02` to days since 1970-01-01.
fn days(text: &str) -> Result<i64, String> {
    let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|e| e.to_string())?;
    Ok((date - epoch_date()).num_days())
}

/// `HH:MM:SS[.ffffff]` (hours up to 24) to microseconds since midnight.
fn time_of_day(text: &str) -> Result<i64, String> {
    let mut parts = text.splitn(3, ':');
    let mut next = || parts.next().ok_or_else(|| "not HH:MM:SS".to_string());
    let (h, m, s) = (next()?, next()?, next()?);
    let parse = |t: &str| t.parse::<i64>().map_err(|e| e.to_string());
    let (sec, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err("bad fraction".into());
    }
    let micros = if frac.is_empty() {
        0
    } else {
        parse(&format!("{frac:0<6}"))?
    };
    Ok(((parse(h)? * 60 + parse(m)?) * 60 + parse(sec)?) * 1_000_000 + micros)
}

/// `2024-01-02 03:04:05[.ffffff]` to microseconds since the epoch.
fn timestamp_micros(text: &str) -> Result<i64, String> {
    let (date, time) = text.split_once(' ').ok_or("not a timestamp")?;
    Ok(days(date)? * MICROS_PER_DAY + time_of_day(time)?)
}

/// An offset `+05`, `-03:30` or `+05:30:15` in seconds.
fn offset_seconds(text: &str) -> Result<i64, String> {
    let (sign, rest) = match text.as_bytes().first() {
        Some(b'+') => (1, &text[1..]),
        Some(b'-') => (-1, &text[1..]),
        _ => return Err("no UTC offset".into()),
    };
    let mut secs = 0;
    for (i, part) in rest.split(':').enumerate() {
        let n: i64 = part
            .parse()
            .map_err(|e: std::num::ParseIntError| e.to_string())?;
        secs += n * [3600, 60, 1].get(i).ok_or("bad UTC offset")?;
    }
    Ok(sign * secs)
}

/// Splits `…+05:30` / `…-03` into the local part and the offset in seconds.
fn split_offset(text: &str) -> Result<(&str, i64), String> {
    let at = text.rfind(['+', '-']).ok_or("no UTC offset")?;
    Ok((&text[..at], offset_seconds(&text[at..])?))
}

/// `HH:MM:SS` and the microseconds as `HH:MM:SS[.f]`, with `digits` fraction digits
/// (`None`: as many as needed, no trailing zeros).
fn clock(micros_of_day: i64, digits: Option<usize>) -> String {
    let secs = micros_of_day / 1_000_000;
    let frac = micros_of_day % 1_000_000;
    let mut out = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    let six = format!("{frac:06}");
    let shown = match digits {
        Some(d) => six[..d.min(6)].to_owned() + &"0".repeat(d.saturating_sub(6)),
        None => six.trim_end_matches('0').to_owned(),
    };
    if !shown.is_empty() {
        out.push('.');
        out.push_str(&shown);
    }
    out
}

/// `timestamptz` text (any offset) to `ZonedTimestamp`: ISO 8601 in UTC, `Z`, with
/// the column's fractional digits.
fn zoned_timestamp(text: &str, precision: i32) -> Result<String, String> {
    let (local, offset) = split_offset(text)?;
    let micros = timestamp_micros(local)? - offset * 1_000_000;
    let (day, of_day) = (
        micros.div_euclid(MICROS_PER_DAY),
        micros.rem_euclid(MICROS_PER_DAY),
    );
    let date = epoch_date() + chrono::Duration::days(day);
    Ok(format!(
        "{}T{}Z",
        date.format("%Y-%m-%d"),
        clock(of_day, Some(precision.max(0) as usize))
    ))
}

/// `timetz` text to `ZonedTime`: the time in UTC, `Z`.
fn zoned_time(text: &str) -> Result<String, String> {
    let (local, offset) = split_offset(text)?;
    let micros = (time_of_day(local)? - offset * 1_000_000).rem_euclid(MICROS_PER_DAY);
    Ok(format!("{}Z", clock(micros, None)))
}

/// An ISO 8601 interval as PostgreSQL prints it with `IntervalStyle=iso_8601`
/// (`P1Y2M3DT4H5M6.5S`, each part signed) to `MicroDuration` microseconds.
fn interval_micros(text: &str) -> Result<i64, String> {
    let body = text.strip_prefix('P').ok_or("not an ISO 8601 interval")?;
    let (date, time) = body.split_once('T').unwrap_or((body, ""));
    let mut total: i64 = 0;
    for (part, in_time) in [(date, false), (time, true)] {
        let mut number = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() || c == '-' || c == '.' {
                number.push(c);
                continue;
            }
            let micros = match (c, in_time) {
                ('S', true) => {
                    let (negative, int, frac) = split_decimal(&number)?;
                    let int: i64 = if int.is_empty() {
                        0
                    } else {
                        int.parse()
                            .map_err(|e: std::num::ParseIntError| e.to_string())?
                    };
                    let frac: i64 = if frac.is_empty() {
                        0
                    } else {
                        format!("{:0<6}", &frac[..frac.len().min(6)])
                            .parse()
                            .map_err(|e: std::num::ParseIntError| e.to_string())?
                    };
                    let v = int * 1_000_000 + frac;
                    if negative {
                        -v
                    } else {
                        v
                    }
                }
                _ => {
                    let n: i64 = number
                        .parse()
                        .map_err(|e: std::num::ParseIntError| e.to_string())?;
                    n * match (c, in_time) {
                        ('Y', false) => 12 * MICROS_PER_MONTH,
                        ('M', false) => MICROS_PER_MONTH,
                        ('W', false) => 7 * MICROS_PER_DAY,
                        ('D', false) => MICROS_PER_DAY,
                        ('H', true) => 3_600_000_000,
                        ('M', true) => 60_000_000,
                        _ => return Err(format!("unexpected {c:?} in interval")),
                    }
                }
            };
            total = total
                .checked_add(micros)
                .ok_or("interval overflows i64 microseconds")?;
            number.clear();
        }
        if !number.is_empty() {
            return Err("interval ends in a number".into());
        }
    }
    Ok(total)
}

/// `(x,y)` to Debezium's `Point` struct: `x`, `y`, the point's WKB (little-endian,
/// type 1) and `srid` (`null`).
fn point(text: &str) -> Result<Value, String> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or("not (x,y)")?;
    let (x, y) = inner.split_once(',').ok_or("not (x,y)")?;
    let parse = |t: &str| t.trim().parse::<f64>().map_err(|e| e.to_string());
    let (x, y) = (parse(x)?, parse(y)?);
    let mut wkb = vec![1u8];
    wkb.extend(1u32.to_le_bytes());
    wkb.extend(x.to_le_bytes());
    wkb.extend(y.to_le_bytes());
    let mut m = Map::new();
    m.insert("x".into(), float(x)?);
    m.insert("y".into(), float(y)?);
    m.insert("wkb".into(), base64_std(&wkb));
    m.insert("srid".into(), Value::Null);
    Ok(Value::Object(m))
}

/// `hstore` text (`"a"=>"1", "b"=>NULL`) to a JSON object's text (`{"a":"1","b":null}`).
fn hstore_json(text: &str) -> Result<String, String> {
    let mut map = Map::new();
    let mut chars = text.chars().peekable();
    let quoted =
        |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| -> Result<Option<String>, String> {
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.peek() != Some(&'"') {
                let word: String =
                    std::iter::from_fn(|| chars.next_if(|c| c.is_ascii_alphabetic())).collect();
                return if word.eq_ignore_ascii_case("null") {
                    Ok(None)
                } else {
                    Err("hstore value is not quoted".into())
                };
            }
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next().ok_or("unterminated hstore string")? {
                    '\\' => s.push(chars.next().ok_or("unterminated hstore escape")?),
                    '"' => return Ok(Some(s)),
                    c => s.push(c),
                }
            }
        };
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let key = quoted(&mut chars)?.ok_or("hstore key is NULL")?;
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if (chars.next(), chars.next()) != (Some('='), Some('>')) {
            return Err("hstore pair without =>".into());
        }
        let value = quoted(&mut chars)?;
        map.insert(key, value.map_or(Value::Null, Value::String));
    }
    Ok(Value::Object(map).to_string())
}

/// The Kafka Connect schema of a column's values (`optional` says whether it may be
/// `null`), as Debezium declares it; arrays are `{"type":"array","items":…}` of their
/// element's schema.
pub fn field_schema(ty: &PgType, array: bool, modes: &Modes, optional: bool) -> Value {
    let scalar = scalar_schema(ty, modes);
    let mut schema = if array {
        let mut items = scalar;
        items.insert("optional".into(), Value::Bool(true));
        let mut m = Map::new();
        m.insert("type".into(), "array".into());
        m.insert("items".into(), Value::Object(items));
        m
    } else {
        scalar
    };
    schema.insert("optional".into(), Value::Bool(optional));
    Value::Object(schema)
}

fn scalar_schema(ty: &PgType, modes: &Modes) -> Map<String, Value> {
    let named = |t: &str, name: &str| {
        let mut m = Map::new();
        m.insert("type".into(), t.into());
        m.insert("name".into(), name.into());
        m.insert("version".into(), 1.into());
        m
    };
    let plain = |t: &str| {
        let mut m = Map::new();
        m.insert("type".into(), t.into());
        m
    };
    let decimal_schema = |scale: Option<u32>, precision: Option<u32>| match modes.decimal {
        DecimalMode::Double => plain("double"),
        DecimalMode::String => plain("string"),
        DecimalMode::Precise => match scale {
            Some(s) => {
                let mut m = plain("bytes");
                m.insert(
                    "name".into(),
                    "org.apache.kafka.connect.data.Decimal".into(),
                );
                m.insert("version".into(), 1.into());
                let mut p = Map::new();
                p.insert("scale".into(), s.to_string().into());
                if let Some(pr) = precision {
                    p.insert("connect.decimal.precision".into(), pr.to_string().into());
                }
                m.insert("parameters".into(), Value::Object(p));
                m
            }
            None => {
                let mut m = named("struct", "io.debezium.data.VariableScaleDecimal");
                m.insert(
                    "fields".into(),
                    json!([{"type": "int32", "optional": false, "field": "scale"},
                           {"type": "bytes", "optional": false, "field": "value"}]),
                );
                m.insert("doc".into(), "Variable scaled decimal".into());
                m
            }
        },
    };
    match ty.oid {
        16 => plain("boolean"),
        1560 if ty.typmod == 1 => plain("boolean"),
        1560 | 1562 => {
            let mut m = named("bytes", "io.debezium.data.Bits");
            let length = if ty.typmod > 0 { ty.typmod } else { i32::MAX };
            m.insert("parameters".into(), json!({"length": length.to_string()}));
            m
        }
        21 => plain("int16"),
        23 => plain("int32"),
        20 | 26 => plain("int64"),
        700 => plain("float"),
        701 => plain("double"),
        1700 => {
            let precision = (ty.typmod >= 4).then(|| (((ty.typmod - 4) >> 16) & 0xffff) as u32);
            decimal_schema(ty.numeric_scale(), precision)
        }
        790 => decimal_schema(Some(2), None),
        1082 if modes.time == TimePrecisionMode::Connect => {
            named("int32", "org.apache.kafka.connect.data.Date")
        }
        1082 => named("int32", "io.debezium.time.Date"),
        1083 => match (modes.time, ty.millis(modes, true)) {
            (TimePrecisionMode::Connect, _) => named("int32", "org.apache.kafka.connect.data.Time"),
            (_, true) => named("int32", "io.debezium.time.Time"),
            (_, false) => named("int64", "io.debezium.time.MicroTime"),
        },
        1114 => match (modes.time, ty.millis(modes, false)) {
            (TimePrecisionMode::Connect, _) => {
                named("int64", "org.apache.kafka.connect.data.Timestamp")
            }
            (_, true) => named("int64", "io.debezium.time.Timestamp"),
            (_, false) => named("int64", "io.debezium.time.MicroTimestamp"),
        },
        1184 => named("string", "io.debezium.time.ZonedTimestamp"),
        1266 => named("string", "io.debezium.time.ZonedTime"),
        1186 => named("int64", "io.debezium.time.MicroDuration"),
        17 => match modes.binary {
            BinaryMode::Bytes => plain("bytes"),
            _ => plain("string"),
        },
        114 | 3802 => named("string", "io.debezium.data.Json"),
        142 => named("string", "io.debezium.data.Xml"),
        2950 => named("string", "io.debezium.data.Uuid"),
        600 => {
            let mut m = named("struct", "io.debezium.data.geometry.Point");
            m.insert(
                "fields".into(),
                json!([{"type": "double", "optional": false, "field": "x"},
                       {"type": "double", "optional": false, "field": "y"},
                       {"type": "bytes", "optional": true, "field": "wkb"},
                       {"type": "int32", "optional": true, "field": "srid"}]),
            );
            m.insert("doc".into(), "Geometry (POINT)".into());
            m
        }
        _ if ty.name == "hstore" => named("string", "io.debezium.data.Json"),
        _ if ty.name == "ltree" => named("string", "io.debezium.data.Ltree"),
        _ => plain("string"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(oid: u32, typmod: i32) -> PgType {
        PgType {
            oid,
            typmod,
            name: String::new(),
        }
    }

    fn enc(oid: u32, typmod: i32, modes: Modes, text: &str) -> Value {
        encode(&ty(oid, typmod), &modes, text).unwrap()
    }

    /// `numeric(p,s)`'s typmod.
    fn numeric(p: i32, s: i32) -> i32 {
        ((p << 16) | s) + 4
    }

    const DEFAULT: Modes = Modes {
        decimal: DecimalMode::Precise,
        time: TimePrecisionMode::Adaptive,
        binary: BinaryMode::Bytes,
        schemas: false,
    };

    fn with_decimal(decimal: DecimalMode) -> Modes {
        Modes { decimal, ..DEFAULT }
    }

    fn with_time(time: TimePrecisionMode) -> Modes {
        Modes { time, ..DEFAULT }
    }

    fn with_binary(binary: BinaryMode) -> Modes {
        Modes { binary, ..DEFAULT }
    }

    #[test]
    fn numeric_precise_is_the_unscaled_twos_complement() {
        // 1.5 in numeric(5,2) is 150: 0x00 0x96.
        assert_eq!(enc(1700, numeric(5, 2), DEFAULT, "1.50"), json!("AJY="));
        assert_eq!(enc(1700, numeric(5, 2), DEFAULT, "1.5"), json!("AJY="));
        assert_eq!(enc(1700, numeric(5, 2), DEFAULT, "-1.50"), json!("/2o="));
        assert_eq!(enc(1700, numeric(5, 0), DEFAULT, "0"), json!("AA=="));
        assert_eq!(enc(1700, numeric(5, 0), DEFAULT, "-1"), json!("/w=="));
        assert_eq!(enc(1700, numeric(5, 0), DEFAULT, "127"), json!("fw=="));
        assert_eq!(enc(1700, numeric(5, 0), DEFAULT, "-128"), json!("gA=="));
        assert_eq!(enc(1700, numeric(5, 0), DEFAULT, "-129"), json!("/38="));
        assert_eq!(enc(1700, numeric(5, 0), DEFAULT, "256"), json!("AQA="));
        assert_eq!(enc(1700, numeric(5, 2), DEFAULT, "NaN"), Value::Null);
        // Without a typmod: VariableScaleDecimal.
        assert_eq!(
            enc(1700, -1, DEFAULT, "12.345"),
            json!({"scale": 3, "value": "MDk="})
        );
        assert_eq!(
            enc(
                1700,
                numeric(5, 2),
                with_decimal(DecimalMode::Double),
                "1.50"
            ),
            json!(1.5)
        );
        assert_eq!(
            enc(
                1700,
                numeric(5, 2),
                with_decimal(DecimalMode::String),
                "1.50"
            ),
            json!("1.50")
        );
        assert_eq!(
            enc(1700, -1, with_decimal(DecimalMode::Double), "NaN"),
            json!("NaN")
        );
    }

    #[test]
    fn money_has_scale_two() {
        assert_eq!(enc(790, -1, DEFAULT, "$1.50"), json!("AJY="));
        assert_eq!(enc(790, -1, DEFAULT, "-$1,234.56"), json!("/h3A"));
        assert_eq!(
            enc(790, -1, with_decimal(DecimalMode::Double), "$1,234.56"),
            json!(1234.56)
        );
        assert_eq!(
            enc(790, -1, with_decimal(DecimalMode::String), "$1,234.56"),
            json!("1234.56")
        );
    }

    #[test]
    fn dates_and_times_per_precision_mode() {
        assert_eq!(enc(1082, -1, DEFAULT, "2024-01-02"), json!(19724));
        assert_eq!(enc(1082, -1, DEFAULT, "1969-12-31"), json!(-1));
        // time(3): Time in millis; time (6): MicroTime.
        assert_eq!(enc(1083, 3, DEFAULT, "01:02:03.456"), json!(3_723_456));
        assert_eq!(
            enc(1083, -1, DEFAULT, "01:02:03.456789"),
            json!(3_723_456_789i64)
        );
        assert_eq!(
            enc(
                1083,
                3,
                with_time(TimePrecisionMode::AdaptiveTimeMicroseconds),
                "01:02:03.456"
            ),
            json!(3_723_456_000i64)
        );
        assert_eq!(
            enc(
                1083,
                -1,
                with_time(TimePrecisionMode::Connect),
                "01:02:03.456789"
            ),
            json!(3_723_456)
        );
        assert_eq!(enc(1083, -1, DEFAULT, "24:00:00"), json!(86_400_000_000i64));
        // timestamp(3): Timestamp millis; timestamp: MicroTimestamp.
        assert_eq!(
            enc(1114, 3, DEFAULT, "2024-01-02 03:04:05.678"),
            json!(1_704_164_645_678i64)
        );
        assert_eq!(
            enc(1114, -1, DEFAULT, "2024-01-02 03:04:05.678901"),
            json!(1_704_164_645_678_901i64)
        );
        assert_eq!(
            enc(
                1114,
                -1,
                with_time(TimePrecisionMode::Connect),
                "2024-01-02 03:04:05.678901"
            ),
            json!(1_704_164_645_678i64)
        );
        assert_eq!(
            enc(
                1114,
                -1,
                with_time(TimePrecisionMode::Connect),
                "1969-12-31 23:59:59.9995"
            ),
            json!(-1i64)
        );
    }

    #[test]
    fn zoned_types_are_utc_strings() {
        assert_eq!(
            enc(1184, -1, DEFAULT, "2024-01-02 03:04:05.5+02"),
            json!("2024-01-02T01:04:05.500000Z")
        );
        assert_eq!(
            enc(1184, 0, DEFAULT, "2024-01-02 00:30:00-01:30"),
            json!("2024-01-02T02:00:00Z")
        );
        assert_eq!(
            enc(1184, 3, DEFAULT, "2024-01-01 00:00:00+01"),
            json!("2023-12-31T23:00:00.000Z")
        );
        assert_eq!(
            enc(1266, -1, DEFAULT, "03:04:05.25+02"),
            json!("01:04:05.25Z")
        );
        assert_eq!(enc(1266, -1, DEFAULT, "00:30:00+01"), json!("23:30:00Z"));
    }

    #[test]
    fn intervals_are_micro_durations() {
        assert_eq!(enc(1186, -1, DEFAULT, "P1D"), json!(86_400_000_000i64));
        assert_eq!(
            enc(1186, -1, DEFAULT, "PT1H2M3.5S"),
            json!(3_723_500_000i64)
        );
        assert_eq!(enc(1186, -1, DEFAULT, "P1M"), json!(2_629_800_000_000i64));
        assert_eq!(
            enc(1186, -1, DEFAULT, "P1Y-1M"),
            json!(11 * 2_629_800_000_000i64)
        );
        assert_eq!(enc(1186, -1, DEFAULT, "PT-1.5S"), json!(-1_500_000));
        assert_eq!(enc(1186, -1, DEFAULT, "PT0S"), json!(0));
    }

    #[test]
    fn binary_per_mode_and_bits_little_endian() {
        assert_eq!(enc(17, -1, DEFAULT, "\\x00fbff"), json!("APv/"));
        assert_eq!(
            enc(17, -1, with_binary(BinaryMode::Base64), "\\x00fbff"),
            json!("APv/")
        );
        assert_eq!(
            enc(17, -1, with_binary(BinaryMode::Base64UrlSafe), "\\x00fbff"),
            json!("APv_")
        );
        assert_eq!(
            enc(17, -1, with_binary(BinaryMode::Hex), "\\x00fbff"),
            json!("00fbff")
        );
        assert_eq!(enc(1560, 1, DEFAULT, "1"), json!(true));
        assert_eq!(enc(1560, 3, DEFAULT, "101"), json!("BQ=="));
        // 0b1_0000_0001 = 0x0101, little-endian.
        assert_eq!(enc(1562, -1, DEFAULT, "100000001"), json!("AQE="));
    }

    #[test]
    fn points_hstore_and_strings() {
        assert_eq!(
            enc(600, -1, DEFAULT, "(1,2)"),
            json!({"x": 1.0, "y": 2.0, "wkb": "AQEAAAAAAAAAAADwPwAAAAAAAABA", "srid": null})
        );
        let hstore = PgType {
            oid: 99999,
            typmod: -1,
            name: "hstore".into(),
        };
        assert_eq!(
            encode(&hstore, &DEFAULT, r#""a"=>"1", "b\"q"=>NULL"#).unwrap(),
            json!(r#"{"a":"1","b\"q":null}"#)
        );
        assert_eq!(enc(3802, -1, DEFAULT, r#"{"a": 1}"#), json!(r#"{"a": 1}"#));
        assert_eq!(
            enc(2950, -1, DEFAULT, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        );
        assert_eq!(enc(23, -1, DEFAULT, "-7"), json!(-7));
        assert_eq!(enc(701, -1, DEFAULT, "1.25"), json!(1.25));
        assert_eq!(enc(16, -1, DEFAULT, "t"), json!(true));
    }

    #[test]
    fn schemas_name_the_logical_types() {
        let s = field_schema(&ty(1700, numeric(5, 2)), false, &DEFAULT, true);
        assert_eq!(s["name"], "org.apache.kafka.connect.data.Decimal");
        assert_eq!(s["parameters"]["scale"], "2");
        assert_eq!(
            field_schema(&ty(1082, -1), false, &DEFAULT, true)["name"],
            "io.debezium.time.Date"
        );
        assert_eq!(
            field_schema(&ty(1114, -1), false, &DEFAULT, true)["name"],
            "io.debezium.time.MicroTimestamp"
        );
        assert_eq!(
            field_schema(&ty(23, -1), true, &DEFAULT, false),
            json!({"type": "array", "items": {"type": "int32", "optional": true}, "optional": false})
        );
    }

    #[test]
    fn modes_parse_and_describe() {
        let m = Modes {
            decimal: "string".parse().unwrap(),
            time: "adaptive_time_microseconds".parse().unwrap(),
            binary: "base64-url-safe".parse().unwrap(),
            schemas: false,
        };
        assert_eq!(
            ValueFormat::Debezium(m).describe(),
            "debezium;decimal=string;time=adaptive_time_microseconds;binary=base64-url-safe"
        );
        let wrapped = ValueFormat::Debezium(Modes { schemas: true, ..m });
        assert_eq!(
            wrapped.describe(),
            "debezium;decimal=string;time=adaptive_time_microseconds;binary=base64-url-safe;schemas.enable=true"
        );
        assert!(wrapped.schemas() && !ValueFormat::Debezium(m).schemas());
        assert!("exact".parse::<DecimalMode>().is_err());
        assert_eq!(ValueFormat::Tidemark.describe(), "tidemark");
    }
}
