//! Readers of PostgreSQL's text output that both value encodings need: `bytea` and
//! `money`. Kept apart so that the tidemark codec ([`crate::wire::codec`]) and the
//! Debezium encoding ([`crate::wire::debezium`]) share them without depending on
//! each other's internals.

/// `bytea` text output: hex (`\x0a0b`) or the legacy escape format.
pub(crate) fn decode_bytea(text: &str) -> Result<Vec<u8>, String> {
    if let Some(hex) = text.strip_prefix("\\x") {
        if !hex.is_ascii() || hex.len() % 2 != 0 {
            return Err("odd number of hex digits".into());
        }
        return (0..hex.len())
            .step_by(2)
            .map(|i| {
                // `get`, not indexing: a pair that splits a character is not hex.
                let pair = hex.get(i..i + 2).ok_or("not a hex digit")?;
                u8::from_str_radix(pair, 16).map_err(|e| e.to_string())
            })
            .collect();
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if bytes.get(i + 1) == Some(&b'\\') {
                out.push(b'\\');
                i += 2;
            } else {
                let oct = text.get(i + 1..i + 4).ok_or("truncated escape")?;
                out.push(u8::from_str_radix(oct, 8).map_err(|e| e.to_string())?);
                i += 4;
            }
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// `money` as `lc_monetary=C` prints it (`$1,234.56`, `-$1,234.56`) to an exact
/// decimal (`1234.56`, `-1234.56`).
pub(crate) fn money_to_decimal(text: &str) -> Result<String, String> {
    let (negative, rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text),
    };
    let digits = rest.strip_prefix('$').unwrap_or(rest);
    let mut out = String::with_capacity(text.len());
    if negative {
        out.push('-');
    }
    for c in digits.chars() {
        match c {
            '0'..='9' | '.' => out.push(c),
            ',' => {}
            _ => return Err(format!("unexpected {c:?} in money (is lc_monetary not C?)")),
        }
    }
    Ok(out)
}
