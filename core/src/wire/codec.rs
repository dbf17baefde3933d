//! The value codec: PostgreSQL text values to JSON.
//!
//! One codec serves both paths into a cache: the bridge decodes pgoutput's text
//! values with it, and the client decodes `COPY ... TO STDOUT` text values with it.
//! PostgreSQL renders a value with the type's output function in both cases (COPY
//! adds only its own escaping, which [`unescape_copy_field`] removes), so a row reads
//! the same whichever path it took. Both connections pin every setting that changes
//! how a value is printed (see [`SESSION_OPTIONS`]), so a role's or database's own
//! settings (`ALTER ROLE ... SET IntervalStyle`, `extra_float_digits`, `lc_monetary`)
//! cannot make the two paths disagree; the codec still converts any UTC offset.
//!
//! Domains are resolved to their base type before a kind is chosen (the catalog query
//! [`crate::pg::catalog::TYPE_INFO_SQL`]), so a domain over `int4` is a number.
//!
//! **No value PostgreSQL accepts stops the stream.** Where JSON cannot hold a value
//! as its type suggests, the value is carried as a JSON string of PostgreSQL's exact
//! text instead: a `json`/`jsonb` document with a number beyond `f64` (`1e400`),
//! nesting deeper than 128 levels, or a lone surrogate escape; a timestamp beyond
//! chrono's range. Text that is not UTF-8 (possible only in a `SQL_ASCII` database)
//! keeps its valid UTF-8 runs and turns each other byte into the Latin-1 character of
//! that value ([`text_of`]), so no byte is dropped. [`ValueKind::decode_lenient`]
//! applies the same fallback (the text as a string) to anything else the codec
//! cannot read, so both paths still agree, and reports it.
//!
//! | PostgreSQL | JSON |
//! |---|---|
//! | `bool` | `true` / `false` |
//! | `int2`, `int4`, `int8`, `oid` | number |
//! | `float4`, `float8` | number (shortest exact form, `extra_float_digits=3`); `"NaN"`, `"Infinity"`, `"-Infinity"` as strings |
//! | `numeric` | string (exact) |
//! | `money` | string, exact decimal without currency symbol or separators (`"-1234.56"`; `lc_monetary=C`) |
//! | `int2vector`, `oidvector` | array of numbers |
//! | `interval` | ISO 8601 string (`IntervalStyle=iso_8601`: `"P1Y2M3DT4H5M6S"`) |
//! | `json`, `jsonb` | the embedded JSON (a string of its text where JSON cannot hold it, above) |
//! | `bytea` | base64 string |
//! | `timestamptz` | RFC 3339 string in UTC |
//! | `timestamp`, `date`, `time` | PostgreSQL's ISO text |
//! | arrays of the above | JSON arrays (nested for several dimensions; `box[]` splits on `;`) |
//! | a domain | as its base type |
//! | anything else (`uuid`, `text`, enums, `inet`, ...) | string |
//! | SQL `NULL` | `null` |

use base64::Engine as _;
use serde_json::{Number, Value};

use crate::wire::debezium::{self, Modes, PgType, ValueFormat};
use crate::wire::pgtext::{decode_bytea, money_to_decimal};

/// Startup options for every PostgreSQL connection whose values reach the codec: every
/// setting that changes a value's text, pinned, so that a setting on the role or the
/// database cannot change what either path reads.
pub const SESSION_OPTIONS: &str = "-c DateStyle=ISO -c TimeZone=UTC -c bytea_output=hex \
     -c IntervalStyle=iso_8601 -c extra_float_digits=3 -c lc_monetary=C";

/// A value the codec could not decode; names the type and the offending text.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode {kind:?} value {text:?}: {reason}")]
pub struct CodecError {
    /// The kind the value was decoded as.
    pub kind: ValueKind,
    /// The text PostgreSQL sent (truncated to 100 characters).
    pub text: String,
    /// What was wrong with it.
    pub reason: String,
}

/// How a column's text values map to JSON; resolved once per column from its type OID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueKind {
    /// `bool`.
    Bool,
    /// `int2`, `int4`, `int8`, `oid`.
    Integer,
    /// `float4`, `float8`.
    Float,
    /// `numeric`, kept exact as a string.
    Numeric,
    /// `json`, `jsonb`, embedded as JSON.
    Json,
    /// `bytea`, as base64.
    Bytea,
    /// `timestamptz`, as RFC 3339 in UTC.
    TimestampTz,
    /// `money`, as an exact decimal string (`lc_monetary=C` prints `-$1,234.56`).
    Money,
    /// `int2vector`, `oidvector`: space-separated integers, as an array of numbers.
    Vector,
    /// Everything else, as the PostgreSQL text.
    Text,
    /// An array whose elements have the given kind.
    Array(Box<ValueKind>),
    /// An array of `box`, whose elements are separated by `;`; elements as text.
    BoxArray,
    /// A scalar in Debezium's encoding ([`debezium::encode`]), with the column's type
    /// and the modes.
    Debezium(Box<(PgType, Modes)>),
}

/// `box`, the only built-in type whose array delimiter (`typdelim`) is `;`, not `,`:
/// a box prints as `(1,1),(0,0)`.
const BOX_OID: u32 = 603;

impl ValueKind {
    /// The kind for a type OID; `elem_oid` is the element type for arrays, 0 otherwise.
    /// Both are base types: [`crate::pg::catalog::TYPE_INFO_SQL`] resolves domains.
    pub fn from_type(oid: u32, elem_oid: u32) -> Self {
        if elem_oid != 0 {
            return if elem_oid == BOX_OID {
                ValueKind::BoxArray
            } else {
                ValueKind::Array(Box::new(Self::from_type(elem_oid, 0)))
            };
        }
        match oid {
            16 => ValueKind::Bool,
            20 | 21 | 23 | 26 => ValueKind::Integer,
            700 | 701 => ValueKind::Float,
            1700 => ValueKind::Numeric,
            790 => ValueKind::Money,
            22 | 30 => ValueKind::Vector,
            114 | 3802 => ValueKind::Json,
            17 => ValueKind::Bytea,
            1184 => ValueKind::TimestampTz,
            _ => ValueKind::Text,
        }
    }

    /// The kind of a column in `format`: `base` is the type (domains resolved), `elem`
    /// the element type of an array (0 otherwise), `typmod` the column's type
    /// modifier and `name` the type's name (the element's for an array). In the
    /// tidemark format only the OIDs matter ([`ValueKind::from_type`]).
    pub fn for_format(format: &ValueFormat, base: u32, elem: u32, typmod: i32, name: &str) -> Self {
        let ValueFormat::Debezium(modes) = format else {
            return Self::from_type(base, elem);
        };
        let scalar = |oid: u32| {
            ValueKind::Debezium(Box::new((
                PgType {
                    oid,
                    typmod,
                    name: name.to_owned(),
                },
                *modes,
            )))
        };
        match (base, elem) {
            (_, BOX_OID) => ValueKind::BoxArray,
            (_, 0) if matches!(base, 22 | 30) => ValueKind::Vector,
            (_, 0) => scalar(base),
            (_, elem) => ValueKind::Array(Box::new(scalar(elem))),
        }
    }

    /// Decodes one non-NULL text value; where the codec cannot read it, the text itself
    /// as a JSON string, and the reason. Both paths into a cache use this, so they
    /// agree even on a value the codec does not understand.
    pub fn decode_lenient(&self, text: &str) -> (Value, Option<CodecError>) {
        match self.decode(text) {
            Ok(v) => (v, None),
            Err(e) => (Value::String(text.to_owned()), Some(e)),
        }
    }

    /// Decodes one non-NULL text value.
    pub fn decode(&self, text: &str) -> Result<Value, CodecError> {
        let fail = |reason: String| CodecError {
            kind: self.clone(),
            text: text.chars().take(100).collect(),
            reason,
        };
        Ok(match self {
            ValueKind::Bool => match text {
                "t" | "true" => Value::Bool(true),
                "f" | "false" => Value::Bool(false),
                _ => return Err(fail("not t or f".into())),
            },
            ValueKind::Integer => {
                if let Ok(i) = text.parse::<i64>() {
                    Value::Number(i.into())
                } else {
                    Value::Number(text.parse::<u64>().map_err(|e| fail(e.to_string()))?.into())
                }
            }
            ValueKind::Float => match text {
                "NaN" | "Infinity" | "-Infinity" => Value::String(text.to_owned()),
                _ => {
                    let f: f64 = text
                        .parse()
                        .map_err(|e: std::num::ParseFloatError| fail(e.to_string()))?;
                    Number::from_f64(f)
                        .map(Value::Number)
                        .ok_or_else(|| fail("not finite".into()))?
                }
            },
            // PostgreSQL has validated the document, so serde_json fails only where JSON
            // in memory cannot hold it (a number beyond f64, nesting beyond 128): the
            // exact text then travels as a string.
            ValueKind::Json => match serde_json::from_str(text) {
                Ok(v) if numbers_fit_f64(text) => v,
                _ => Value::String(text.to_owned()),
            },
            ValueKind::Bytea => Value::String(
                base64::engine::general_purpose::STANDARD.encode(decode_bytea(text).map_err(fail)?),
            ),
            ValueKind::TimestampTz => Value::String(timestamptz_to_rfc3339(text)),
            ValueKind::Numeric | ValueKind::Text => Value::String(text.to_owned()),
            ValueKind::Money => Value::String(money_to_decimal(text).map_err(fail)?),
            ValueKind::Vector => Value::Array(
                text.split_ascii_whitespace()
                    .map(|n| ValueKind::Integer.decode(n))
                    .collect::<Result<_, _>>()
                    .map_err(|e| fail(e.reason))?,
            ),
            ValueKind::Array(elem) => parse_array(text, elem, ',').map_err(fail)?,
            ValueKind::BoxArray => parse_array(text, &ValueKind::Text, ';').map_err(fail)?,
            ValueKind::Debezium(column) => {
                let (ty, modes) = &**column;
                debezium::encode(ty, modes, text).map_err(fail)?
            }
        })
    }

    /// Decodes a value that may be SQL NULL, as [`ValueKind::decode_lenient`] does.
    pub fn decode_opt(&self, text: Option<&str>) -> (Value, Option<CodecError>) {
        match text {
            None => (Value::Null, None),
            Some(t) => self.decode_lenient(t),
        }
    }
}

/// `2026-11-26 07:16:50.123+00` (any offset) to `2026-11-26T07:16:50.123Z`.
/// `infinity`, BC dates and years beyond chrono's range (PostgreSQL goes to 294276)
/// keep PostgreSQL's text, which the pinned `TimeZone=UTC` already makes UTC.
fn timestamptz_to_rfc3339(text: &str) -> String {
    if let Some(fast) = utc_timestamptz_to_rfc3339(text) {
        return fast;
    }
    match chrono::DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z") {
        Ok(parsed) if !text.ends_with(" BC") => parsed
            .with_timezone(&chrono::Utc)
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        _ => text.to_owned(),
    }
}

/// Whether every number in the JSON text `text` reads back exactly from what
/// serde_json makes of it: an integer that fits `i64` or `u64`, or a number of at most
/// 15 significant digits (which an `f64` holds exactly). `jsonb` keeps numbers as
/// `numeric`, so `12345678901234567890` or `0.1234567890123456789` are valid and would
/// otherwise be rounded silently.
fn numbers_fit_f64(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < b.len() && matches!(b[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let token = &text[start..i];
                let integer = !token.contains(['.', 'e', 'E']);
                let fits = if integer {
                    token.parse::<i64>().is_ok() || token.parse::<u64>().is_ok()
                } else {
                    let mantissa = token.split(['e', 'E']).next().unwrap_or("");
                    mantissa
                        .bytes()
                        .filter(u8::is_ascii_digit)
                        .skip_while(|&d| d == b'0')
                        .count()
                        <= 15
                };
                if !fits {
                    return false;
                }
            }
            _ => i += 1,
        }
    }
    true
}

/// A value's bytes as text. Valid UTF-8 is borrowed as it is. Only a `SQL_ASCII`
/// database can hold anything else (PostgreSQL then checks no encoding): each byte of
/// an invalid sequence becomes the Latin-1 character of that byte value (U+0080 to
/// U+00FF), so no byte is lost and the result is the same on every path.
pub fn text_of(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => {
            let mut out = String::with_capacity(bytes.len() + bytes.len() / 2);
            for chunk in bytes.utf8_chunks() {
                out.push_str(chunk.valid());
                out.extend(chunk.invalid().iter().map(|&b| char::from(b)));
            }
            std::borrow::Cow::Owned(out)
        }
    }
}

/// The common case without parsing: a UTC session prints `YYYY-MM-DD HH:MM:SS[.f]+00`,
/// which only needs a `T`, a `Z` and the fraction padded to 3 or 6 digits (chrono's
/// `SecondsFormat::AutoSi`). `None` for anything else, which takes the general path.
fn utc_timestamptz_to_rfc3339(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let shape = b.len() >= 22
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b' '
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && text.ends_with("+00");
    if !shape {
        return None;
    }
    let frac = match &text[19..text.len() - 3] {
        "" => "",
        f if f.len() <= 7 && f.starts_with('.') && digits(20..19 + f.len()) => &f[1..],
        _ => return None,
    };
    let mut out = String::with_capacity(27);
    out.push_str(&text[..10]);
    out.push('T');
    out.push_str(&text[11..19]);
    let mut micros = [b'0'; 6];
    micros[..frac.len()].copy_from_slice(frac.as_bytes());
    let keep = if micros == [b'0'; 6] {
        0
    } else if micros[3..] == [b'0'; 3] {
        3
    } else {
        6
    };
    if keep > 0 {
        out.push('.');
        out.push_str(std::str::from_utf8(&micros[..keep]).ok()?);
    }
    out.push('Z');
    Some(out)
}

/// Parses an array literal such as `{1,2,NULL}`, `{{a,"b c"},{d,e}}` or `[0:1]={x,y}`.
fn parse_array(text: &str, elem: &ValueKind, delim: char) -> Result<Value, String> {
    let body = match text.find('=') {
        Some(eq) if text.starts_with('[') => &text[eq + 1..],
        _ => text,
    };
    let mut chars = body.char_indices().peekable();
    let value = parse_array_level(body, &mut chars, elem, delim, 1)?;
    if chars.next().is_some() {
        return Err("trailing characters after array".into());
    }
    Ok(value)
}

/// How deep [`parse_array_level`] nests. PostgreSQL prints at most 6 dimensions
/// (`MAXDIM`); the bound only keeps a malformed value from exhausting the stack.
const MAX_ARRAY_DEPTH: usize = 64;

fn parse_array_level(
    src: &str,
    chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>,
    elem: &ValueKind,
    delim: char,
    depth: usize,
) -> Result<Value, String> {
    if depth > MAX_ARRAY_DEPTH {
        return Err(format!("array nested deeper than {MAX_ARRAY_DEPTH} levels"));
    }
    if chars.next().map(|(_, c)| c) != Some('{') {
        return Err("array does not start with '{'".into());
    }
    let mut items = Vec::new();
    if chars.peek().map(|&(_, c)| c) == Some('}') {
        chars.next();
        return Ok(Value::Array(items));
    }
    loop {
        match chars.peek().map(|&(_, c)| c) {
            Some('{') => items.push(parse_array_level(src, chars, elem, delim, depth + 1)?),
            Some('"') => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\\')) => s.push(chars.next().ok_or("truncated escape")?.1),
                        Some((_, '"')) => break,
                        Some((_, c)) => s.push(c),
                        None => return Err("unterminated quoted element".into()),
                    }
                }
                items.push(elem.decode(&s).map_err(|e| e.to_string())?);
            }
            Some(_) => {
                let start = chars.peek().map(|&(i, _)| i).unwrap_or(src.len());
                let mut end = start;
                while let Some(&(i, c)) = chars.peek() {
                    if c == delim || c == '}' {
                        break;
                    }
                    end = i + c.len_utf8();
                    chars.next();
                }
                let raw = src[start..end].trim();
                items.push(if raw.eq_ignore_ascii_case("NULL") {
                    Value::Null
                } else {
                    elem.decode(raw).map_err(|e| e.to_string())?
                });
            }
            None => return Err("unterminated array".into()),
        }
        match chars.next().map(|(_, c)| c) {
            Some(c) if c == delim => continue,
            Some('}') => return Ok(Value::Array(items)),
            _ => return Err(format!("expected {delim:?} or '}}' in array")),
        }
    }
}

/// Removes COPY text-format escaping from one field; `None` is SQL NULL (`\N`).
/// Bytes that are not UTF-8 are read as [`text_of`] reads them.
pub fn unescape_copy_field(field: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
    if field == b"\\N" {
        return None;
    }
    if !field.contains(&b'\\') {
        return Some(text_of(field));
    }
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let b = field[i];
        if b != b'\\' || i + 1 == field.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let next = field[i + 1];
        i += 2;
        match next {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(next - b'0');
                for _ in 0..2 {
                    match field.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            b'x' => {
                let mut v = 0u32;
                let mut n = 0;
                while n < 2 {
                    match field.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            i += 1;
                            n += 1;
                        }
                        None => break,
                    }
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    Some(std::borrow::Cow::Owned(match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => text_of(e.as_bytes()).into_owned(),
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_timestamps_take_the_fast_path_with_the_same_result() {
        for text in [
            "2026-11-26 07:16:50+00",
            "2026-11-26 07:16:50.1+00",
            "2026-11-26 07:16:50.12+00",
            "2026-11-26 07:16:50.123+00",
            "2026-11-26 07:16:50.1234+00",
            "2026-11-26 07:16:50.000001+00",
            "1999-01-01 00:00:00.5+00",
        ] {
            let fast = super::utc_timestamptz_to_rfc3339(text).unwrap();
            let parsed = chrono::DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z")
                .unwrap()
                .with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
            assert_eq!(fast, parsed, "{text}");
        }
        for other in [
            "2026-11-26 07:16:50+02",
            "2026-11-26 07:16:50.1234567+00",
            "12026-11-26 07:16:50+00",
            "2026-11-26 07:16:50 BC",
            "infinity",
        ] {
            assert!(
                super::utc_timestamptz_to_rfc3339(other).is_none(),
                "{other}"
            );
        }
    }

    use super::*;
    use serde_json::json;

    fn kind(oid: u32) -> ValueKind {
        ValueKind::from_type(oid, 0)
    }

    #[test]
    fn scalars() {
        assert_eq!(kind(16).decode("t").unwrap(), json!(true));
        assert_eq!(
            kind(20).decode("-9223372036854775808").unwrap(),
            json!(i64::MIN)
        );
        assert_eq!(kind(701).decode("1.5").unwrap(), json!(1.5));
        assert_eq!(kind(700).decode("NaN").unwrap(), json!("NaN"));
        assert_eq!(kind(701).decode("-Infinity").unwrap(), json!("-Infinity"));
        assert_eq!(kind(1700).decode("10.50").unwrap(), json!("10.50"));
        assert_eq!(
            kind(3802).decode(r#"{"b": 1, "a": [true]}"#).unwrap(),
            json!({"b": 1, "a": [true]})
        );
        assert_eq!(kind(17).decode("\\x68690a").unwrap(), json!("aGkK"));
        assert_eq!(kind(17).decode("hi\\012\\\\").unwrap(), json!("aGkKXA=="));
        assert_eq!(
            kind(2950)
                .decode("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
                .unwrap(),
            json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        );
        assert!(kind(23).decode("x").is_err());
        assert!(kind(16).decode("yes").is_err());
    }

    #[test]
    fn timestamptz_is_utc_rfc3339_whatever_the_offset() {
        let k = kind(1184);
        assert_eq!(
            k.decode("2026-11-26 07:16:50.123+00").unwrap(),
            json!("2026-11-26T07:16:50.123Z")
        );
        assert_eq!(
            k.decode("2026-11-26 12:46:50.123+05:30").unwrap(),
            json!("2026-11-26T07:16:50.123Z")
        );
        assert_eq!(
            k.decode("2026-11-26 07:16:50+00").unwrap(),
            json!("2026-11-26T07:16:50Z")
        );
        assert_eq!(k.decode("infinity").unwrap(), json!("infinity"));
    }

    #[test]
    fn values_json_cannot_hold_as_typed_keep_their_text() {
        let json = kind(3802);
        assert_eq!(
            json.decode(r#"{"a": 1e400}"#).unwrap(),
            json!(r#"{"a": 1e400}"#)
        );
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_eq!(json.decode(&deep).unwrap(), json!(deep));
        assert_eq!(
            kind(114).decode(r#""\ud800""#).unwrap(),
            json!(r#""\ud800""#)
        );
        for exact in [
            r#"{"a": 123456789012345678901}"#,
            r#"[0.1234567890123456789]"#,
        ] {
            assert_eq!(json.decode(exact).unwrap(), json!(exact), "{exact}");
        }
        assert_eq!(
            json.decode(r#"{"n": -9223372036854775808, "f": 0.1, "s": "12345678901234567890"}"#)
                .unwrap(),
            json!({"n": i64::MIN, "f": 0.1, "s": "12345678901234567890"})
        );
        assert!(kind(17).decode("\\xa\u{e9}b").is_err());
        let ts = kind(1184);
        assert_eq!(
            ts.decode("294276-12-31 23:59:59.999999+00").unwrap(),
            json!("294276-12-31 23:59:59.999999+00")
        );
        assert_eq!(
            ts.decode("4713-01-01 00:00:00+00 BC").unwrap(),
            json!("4713-01-01 00:00:00+00 BC")
        );
        assert_eq!(kind(23).decode_lenient("x").0, json!("x"));
        assert_eq!(text_of(b"a\xff\xc3\xa9"), "a\u{ff}\u{e9}");
    }

    #[test]
    fn money_vectors_and_box_arrays() {
        assert_eq!(kind(790).decode("-$1,234.56").unwrap(), json!("-1234.56"));
        assert_eq!(kind(790).decode("$0.07").unwrap(), json!("0.07"));
        assert!(kind(790).decode("1.234,56 EUR").is_err());
        assert_eq!(kind(22).decode("1 2 3").unwrap(), json!([1, 2, 3]));
        assert_eq!(kind(30).decode("").unwrap(), json!([]));
        assert_eq!(
            ValueKind::from_type(1006, 22)
                .decode(r#"{"1 2","3"}"#)
                .unwrap(),
            json!([[1, 2], [3]])
        );
        assert_eq!(
            ValueKind::from_type(1020, 603)
                .decode("{(1,1),(0,0);(3,3),(2,2)}")
                .unwrap(),
            json!(["(1,1),(0,0)", "(3,3),(2,2)"])
        );
    }

    #[test]
    fn arrays() {
        let ints = ValueKind::from_type(1007, 23);
        assert_eq!(ints.decode("{1,2,NULL}").unwrap(), json!([1, 2, null]));
        assert_eq!(
            ints.decode("{{1,2},{3,4}}").unwrap(),
            json!([[1, 2], [3, 4]])
        );
        assert_eq!(ints.decode("[0:1]={7,8}").unwrap(), json!([7, 8]));
        assert_eq!(ints.decode("{}").unwrap(), json!([]));
        let texts = ValueKind::from_type(1009, 25);
        assert_eq!(
            texts.decode(r#"{a,"b c","q\"x","NULL",NULL}"#).unwrap(),
            json!(["a", "b c", "q\"x", "NULL", null])
        );
        assert!(ints.decode("{1,2").is_err());
    }

    #[test]
    fn bytea_hex_that_splits_a_character_is_an_error_not_a_panic() {
        // Found by the copy_line fuzz target: the COPY field `\\x343\xb45Ma`, whose
        // byte 0xb4 becomes U+00B4 (two bytes in UTF-8), panicked slicing hex pairs.
        let field = unescape_copy_field(b"\\\\x343\xb45Ma").unwrap();
        assert_eq!(field, "\\x343\u{b4}5Ma");
        assert!(kind(17).decode(&field).is_err());
        assert!(kind(17).decode("\\x0\u{e9}0").is_err());
        assert_eq!(
            kind(17).decode_lenient("\\x0\u{e9}0").0,
            json!("\\x0\u{e9}0")
        );
        assert!(ValueKind::from_type(1001, 17)
            .decode("{\"\\\\x0\u{e9}0\"}")
            .is_err());
    }

    #[test]
    fn deeply_nested_array_is_an_error_not_a_stack_overflow() {
        // 100,000 `{` (beyond the fuzzer's default 4096-byte inputs) overflowed the
        // stack of the value_codec fuzz target, one recursion per level.
        let ints = ValueKind::from_type(1007, 23);
        assert!(ints.decode(&"{".repeat(100_000)).is_err());
        let deep = format!("{}1{}", "{".repeat(64), "}".repeat(64));
        assert!(ints.decode(&deep).is_ok());
        assert!(ints.decode(&format!("{{{deep}}}")).is_err());
        assert_eq!(ints.decode("{{{{{{1}}}}}}").unwrap(), json!([[[[[[1]]]]]]));
    }

    #[test]
    fn copy_unescape() {
        assert_eq!(unescape_copy_field(b"\\N"), None);
        assert_eq!(unescape_copy_field(b"a\\tb\\nc\\\\").unwrap(), "a\tb\nc\\");
        assert_eq!(unescape_copy_field(b"\\\\x0a").unwrap(), "\\x0a");
        assert_eq!(unescape_copy_field(b"plain").unwrap(), "plain");
        // SQL_ASCII: an escaped and a raw byte that are not UTF-8, beside UTF-8.
        assert_eq!(
            unescape_copy_field(b"caf\\351 \xe9 \xc3\xa9").unwrap(),
            "caf\u{e9} \u{e9} \u{e9}"
        );
    }
}
