//! One line of `COPY ... TO STDOUT` text, deserialised straight into the user's types.
//!
//! The bulk load is the hot path of a warm start: a million rows must become `(K, V)`
//! pairs at close to the speed PostgreSQL sends them. Building a `serde_json` row
//! first costs an allocation for every column name and every value before serde even
//! sees `V`, and then a second pass to turn it into `V`. [`CopyRow`] splits a line
//! into its fields once and is itself a `serde::Deserializer`: a map from column name
//! to field. Text and numeric fields reach `V` as borrowed strings, and every other
//! kind goes through the shared codec's [`Value`] for that one field, so a row reads
//! exactly as the same row from the stream does: the same codec value, handed to
//! serde through the same calls.

use std::borrow::Cow;
use std::ops::Range;

use serde::de::value::StrDeserializer;
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::Deserializer;
use serde_json::Value;
use smallvec::SmallVec;

use crate::table::TableInfo;
use tidemark_core::wire::codec::unescape_copy_field;
use tidemark_core::wire::key;
use tidemark_core::wire::{Row, ValueKind};

/// Fields a [`CopyRow`] holds without allocating: a line of a table with more
/// columns allocates its list of fields, one allocation per row of the load.
const INLINE_FIELDS: usize = 16;

/// A COPY text line split into fields, one per column of the table.
pub(crate) struct CopyRow<'a> {
    table: &'a TableInfo,
    /// Unescaped field text; `None` is SQL NULL.
    fields: SmallVec<[Option<Cow<'a, str>>; INLINE_FIELDS]>,
}

impl<'a> CopyRow<'a> {
    /// Splits and unescapes one line (without its newline).
    pub fn parse(table: &'a TableInfo, line: &'a [u8]) -> Result<Self, String> {
        Self::parse_with_extra(table, line, 0)
    }

    /// [`CopyRow::parse`] for a line that carries `extra` more fields after the
    /// table's columns (see [`TableInfo::bulk_copy_sql`]); [`CopyRow::text`] reads
    /// them at indexes from the number of columns on.
    pub fn parse_with_extra(
        table: &'a TableInfo,
        line: &'a [u8],
        extra: usize,
    ) -> Result<Self, String> {
        let n = table.columns.len() + extra;
        let mut fields = SmallVec::with_capacity(n);
        // A line of UTF-8 (every line, unless the database's encoding is SQL_ASCII)
        // is checked once and its fields borrowed as they are, but for a field with
        // an escape (or `\N`); another line is read field by field, as `text_of` reads
        // bytes that are not UTF-8.
        match std::str::from_utf8(line) {
            Ok(text) if memchr::memchr(b'\\', line).is_none() => fill(
                &mut fields,
                n,
                split_at(line, b'\t').map(|at| Some(Cow::Borrowed(&text[at]))),
            ),
            Ok(text) => fill(
                &mut fields,
                n,
                split_at(line, b'\t').map(|at| match text[at.clone()].contains('\\') {
                    false => Some(Cow::Borrowed(&text[at])),
                    true => unescape_copy_field(&line[at]),
                }),
            ),
            Err(_) => fill(
                &mut fields,
                n,
                line.split(|&b| b == b'\t').map(unescape_copy_field),
            ),
        }?;
        Ok(CopyRow { table, fields })
    }

    /// The text of column `col`; `None` is SQL NULL.
    pub fn text(&self, col: usize) -> Option<&str> {
        self.fields[col].as_deref()
    }

    /// Column `col` through the codec.
    pub fn value(&self, col: usize) -> Result<Value, String> {
        let (kind, text) = (&self.table.columns[col].kind, self.text(col));
        // The codec's value of an integer that fits `i64` (most keys), without its
        // dispatch: the key of every row is read three times.
        if let (ValueKind::Integer, Some(Ok(i))) = (kind, text.map(str::parse::<i64>)) {
            return Ok(Value::from(i));
        }
        // A value the codec cannot read is its text, as on the bridge's side.
        Ok(kind.decode_opt(text).0)
    }

    /// The named columns through the codec, as a row in the given order.
    pub fn object(&self, cols: &[usize]) -> Result<Row, String> {
        cols.iter()
            .map(|&i| Ok((self.table.columns[i].name.clone(), self.value(i)?)))
            .collect()
    }

    /// Writes the named columns as a compact JSON object into `out` (cleared first),
    /// byte for byte what serialising [`CopyRow::object`] gives, without building it.
    pub fn write_object(&self, cols: &[usize], out: &mut Vec<u8>) -> Result<(), String> {
        out.clear();
        for &i in cols {
            key::push_member(out, &self.table.columns[i].name, &self.value(i)?);
        }
        key::close_object(out);
        Ok(())
    }

    /// The whole row through the codec.
    pub fn row(&self) -> Result<Row, String> {
        let all: Vec<usize> = (0..self.table.columns.len()).collect();
        self.object(&all)
    }

    /// Deserialises the columns `cols` as a map (column name → value) into `T`.
    pub fn deserialize<T: de::DeserializeOwned>(&self, cols: &[usize]) -> serde_json::Result<T> {
        T::deserialize(Columns { row: self, cols })
    }

    /// Deserialises the bare value of column `col` into `T`.
    pub fn deserialize_field<T: de::DeserializeOwned>(&self, col: usize) -> serde_json::Result<T> {
        T::deserialize(self.field(col)?)
    }

    fn field(&self, col: usize) -> serde_json::Result<Field<'_>> {
        let column = &self.table.columns[col];
        Ok(match (self.text(col), &column.kind) {
            (Some(text), ValueKind::Text | ValueKind::Numeric) => Field::Text(text),
            _ => Field::Value(self.value(col).map_err(de::Error::custom)?),
        })
    }
}

/// Where the pieces of `text` between each `sep` lie (the separators found with
/// `memchr`, many bytes at a time): the fields of a line, or the lines of a batch.
pub(crate) fn split_at(text: &[u8], sep: u8) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut start = 0;
    memchr::memchr_iter(sep, text)
        .chain(std::iter::once(text.len()))
        .map(move |end| {
            let piece = start..end;
            start = end + 1;
            piece
        })
}

/// Collects exactly `n` fields of a line into `fields`.
fn fill<'a>(
    fields: &mut SmallVec<[Option<Cow<'a, str>>; INLINE_FIELDS]>,
    n: usize,
    split: impl Iterator<Item = Option<Cow<'a, str>>>,
) -> Result<(), String> {
    for (i, field) in split.enumerate() {
        if i == n {
            return Err(format!("the line has more than {n} fields"));
        }
        fields.push(field);
    }
    if fields.len() < n {
        return Err(format!("the line has fewer than {n} fields"));
    }
    Ok(())
}

/// Some columns of a [`CopyRow`], deserialised as a map.
struct Columns<'r, 'a> {
    row: &'r CopyRow<'a>,
    cols: &'r [usize],
}

impl<'de> Deserializer<'de> for Columns<'_, '_> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> serde_json::Result<V::Value> {
        visitor.visit_map(ColumnsAccess {
            row: self.row,
            cols: self.cols.iter(),
            next: None,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

struct ColumnsAccess<'r, 'a> {
    row: &'r CopyRow<'a>,
    cols: std::slice::Iter<'r, usize>,
    next: Option<usize>,
}

impl<'de> MapAccess<'de> for ColumnsAccess<'_, '_> {
    type Error = serde_json::Error;

    fn next_key_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> serde_json::Result<Option<S::Value>> {
        let Some(&col) = self.cols.next() else {
            return Ok(None);
        };
        self.next = Some(col);
        let name: &str = &self.row.table.columns[col].name;
        seed.deserialize(name.into_deserializer()).map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> serde_json::Result<S::Value> {
        let col = self
            .next
            .take()
            .ok_or_else(|| de::Error::custom("a value was asked for before its key"))?;
        seed.deserialize(self.row.field(col)?)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.cols.len())
    }
}

/// One field: text borrowed from the line, or the codec's value for the other kinds.
enum Field<'r> {
    Text(&'r str),
    Value(Value),
}

/// Forwards a deserializer method to the field's inner deserializer. A text field
/// behaves as `Value::String` does, without the allocation.
macro_rules! forward_field {
    ($($method:ident ( $($arg:ident : $ty:ty),* ))*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> serde_json::Result<V::Value> {
            match self {
                Field::Text(text) => StrDeserializer::<serde_json::Error>::new(text)
                    .$method($($arg,)* visitor),
                Field::Value(value) => value.$method($($arg,)* visitor),
            }
        }
    )*};
}

impl<'de> Deserializer<'de> for Field<'_> {
    type Error = serde_json::Error;

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> serde_json::Result<V::Value> {
        match self {
            Field::Text(_) => visitor.visit_some(self),
            Field::Value(value) => value.deserialize_option(visitor),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> serde_json::Result<V::Value> {
        match self {
            Field::Text(_) => visitor.visit_newtype_struct(self),
            Field::Value(value) => value.deserialize_newtype_struct(name, visitor),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> serde_json::Result<V::Value> {
        visitor.visit_unit()
    }

    forward_field! {
        deserialize_any()
        deserialize_bool() deserialize_i8() deserialize_i16() deserialize_i32() deserialize_i64()
        deserialize_i128() deserialize_u8() deserialize_u16() deserialize_u32() deserialize_u64()
        deserialize_u128() deserialize_f32() deserialize_f64() deserialize_char()
        deserialize_str() deserialize_string() deserialize_bytes() deserialize_byte_buf()
        deserialize_unit() deserialize_unit_struct(name: &'static str)
        deserialize_seq() deserialize_tuple(len: usize)
        deserialize_tuple_struct(name: &'static str, len: usize) deserialize_map()
        deserialize_struct(name: &'static str, fields: &'static [&'static str])
        deserialize_enum(name: &'static str, variants: &'static [&'static str])
        deserialize_identifier()
    }
}

/// Rows from COPY text, for the table's own lines.
impl TableInfo {
    /// Decodes one COPY text line (without its newline) into a row.
    pub fn decode_copy_line(&self, line: &[u8]) -> Result<Row, String> {
        CopyRow::parse(self, line)?.row()
    }

    /// Re-reads the current row with `key` from PostgreSQL, through COPY and the codec
    /// like the bulk load. `None` when the row no longer exists.
    pub async fn reread(
        &self,
        client: &tokio_postgres::Client,
        key: &Row,
    ) -> crate::error::Result<Option<Row>> {
        use crate::error::Error;
        use futures::TryStreamExt;
        let sql = self.reread_sql(key).ok_or_else(|| Error::Decode {
            table: self.name.to_string(),
            problem: format!("key {key:?} cannot be looked up"),
        })?;
        let stream = client
            .copy_out(sql.as_str())
            .await
            .map_err(Error::postgres("re-reading a row"))?;
        let chunks: Vec<bytes::Bytes> = stream
            .try_collect()
            .await
            .map_err(Error::postgres("re-reading a row"))?;
        let data: Vec<u8> = chunks.concat();
        match data.split(|&b| b == b'\n').find(|l| !l.is_empty()) {
            None => Ok(None),
            Some(line) => self
                .decode_copy_line(line)
                .map(Some)
                .map_err(|problem| Error::Decode {
                    table: self.name.to_string(),
                    problem,
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::tests::sample;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Typed {
        id: i64,
        name: Option<String>,
        doc: Option<serde_json::Value>,
        tags: Option<Vec<Option<String>>>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Id(i64);

    #[derive(Debug, Deserialize, PartialEq)]
    struct Key {
        id: Id,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "lowercase")]
    enum Name {
        Alpha,
        Beta,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Partial {
        name: Name,
    }

    /// Whatever `T` is, the line deserialises to what the codec's row deserialises to.
    fn same_as_codec<T>(line: &[u8])
    where
        T: de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let t = sample();
        let row = CopyRow::parse(&t, line).unwrap();
        let all: Vec<usize> = (0..t.columns.len()).collect();
        let direct = row.deserialize::<T>(&all).map_err(|e| e.to_string());
        let via_value = serde_json::from_value::<T>(Value::Object(row.row().unwrap()))
            .map_err(|e| e.to_string());
        assert_eq!(
            direct,
            via_value,
            "line {:?}",
            String::from_utf8_lossy(line)
        );
    }

    #[test]
    fn reads_like_the_codec_row() {
        let lines: [&[u8]; 4] = [
            b"42\tA\\tda\\n\t{\"a\": [1, \"x\"]}\t{x,\"y z\",NULL}",
            b"1\t\\N\t\\N\t\\N",
            b"7\talpha\t[1,2]\t{}",
            b"8\tbeta\tnull\t{}",
        ];
        for line in lines {
            same_as_codec::<Typed>(line);
            same_as_codec::<Value>(line);
            same_as_codec::<BTreeMap<String, Value>>(line);
            same_as_codec::<Key>(line);
            same_as_codec::<Partial>(line);
            same_as_codec::<(i64, String)>(line);
        }
    }

    #[test]
    fn keys_and_bare_fields() {
        let t = sample();
        let row = CopyRow::parse(&t, b"42\tbeta\t{}\t{}").unwrap();
        assert_eq!(row.deserialize::<Key>(&t.key).unwrap(), Key { id: Id(42) });
        assert_eq!(row.deserialize_field::<i64>(0).unwrap(), 42);
        assert_eq!(row.deserialize_field::<Name>(1).unwrap(), Name::Beta);
        assert_eq!(
            serde_json::to_string(&row.object(&t.key).unwrap()).unwrap(),
            r#"{"id":42}"#
        );
        assert!(row.deserialize_field::<String>(0).is_err());
        let mut out = b"stale".to_vec();
        for cols in [vec![0], vec![0, 1], vec![2, 0, 3]] {
            row.write_object(&cols, &mut out).unwrap();
            assert_eq!(
                out,
                serde_json::to_vec(&row.object(&cols).unwrap()).unwrap()
            );
        }
    }

    #[test]
    fn integers_read_as_the_codec_reads_them() {
        let t = sample();
        for text in [
            "0",
            "-5",
            "42",
            "9223372036854775807",
            "-9223372036854775808",
            "18446744073709551615",
            "12x",
        ] {
            let line = format!("{text}\tx\t{{}}\t{{}}");
            let row = CopyRow::parse(&t, line.as_bytes()).unwrap();
            assert_eq!(
                row.value(0).unwrap(),
                t.columns[0].kind.decode_opt(Some(text)).0,
                "{text}"
            );
        }
    }

    #[test]
    fn rejects_lines_of_the_wrong_width() {
        let t = sample();
        assert!(CopyRow::parse(&t, b"1\tx").is_err());
        assert!(CopyRow::parse(&t, b"1\tx\t{}\t{}\textra").is_err());
        // Not UTF-8 (a SQL_ASCII database): each such byte is its Latin-1 character.
        let latin = CopyRow::parse(&t, b"1\t\xff\t{}\t{}").unwrap();
        assert_eq!(latin.text(1), Some("\u{ff}"));
    }

    /// COPY text of a value: backslash, tab, newline and carriage return escaped, as
    /// `COPY ... TO STDOUT` writes them.
    fn copy_escaped(raw: &str) -> String {
        raw.replace('\\', "\\\\")
            .replace('\t', "\\t")
            .replace('\n', "\\n")
            .replace('\r', "\\r")
    }

    /// The two key paths give the same bytes for every value kind: the bridge's
    /// (pgoutput sends the raw text; it decodes it with the codec and writes the key
    /// with `key::encode`) and the bulk load's (COPY text, escaped, through
    /// [`CopyRow::write_object`]). Partitioning and per-partition TRUNCATE rely on it.
    #[test]
    fn the_bulk_load_writes_keys_byte_for_byte_as_the_bridge_does() {
        let cases: &[(u32, u32, &str, &[&str])] = &[
            (16, 0, "boolean", &["t", "f"]),
            (
                20,
                0,
                "bigint",
                &["42", "-9223372036854775808", "9223372036854775807"],
            ),
            (23, 0, "integer", &["0", "-7"]),
            (700, 0, "real", &["1.5", "NaN", "-Infinity"]),
            (701, 0, "double precision", &["0.1", "1e+300", "Infinity"]),
            (
                1700,
                0,
                "numeric",
                &["10.50", "-0.000001", "123456789012345678901234567890"],
            ),
            (3802, 0, "jsonb", &[r#"{"a": [1, "x\ty"]}"#, "null"]),
            (17, 0, "bytea", &["\\x00ff10"]),
            (
                1184,
                0,
                "timestamp with time zone",
                &["2026-11-26 07:16:50.123+00"],
            ),
            (1114, 0, "timestamp", &["2026-11-26 07:16:50.5"]),
            (1082, 0, "date", &["2026-11-26"]),
            (2950, 0, "uuid", &["0192f1c4-5b6e-7a3d-8c2b-1f0e9d8c7b6a"]),
            (
                25,
                0,
                "text",
                &[
                    "plain",
                    "tab\there",
                    "line\nbreak",
                    "back\\slash",
                    "quote \" é ✓",
                    "",
                ],
            ),
            (1009, 25, "text[]", &["{a,\"b c\",NULL}"]),
            (1007, 23, "integer[]", &["{1,2,3}"]),
        ];
        for &(oid, elem, sql_type, values) in cases {
            let kind = ValueKind::from_type(oid, elem);
            let table = TableInfo {
                name: tidemark_core::wire::TableName::parse("public.k").unwrap(),
                columns: vec![crate::table::Column {
                    name: "k".into(),
                    kind: kind.clone(),
                    sql_type: sql_type.into(),
                    toast: crate::table::ToastCopy::Never,
                    has_octet_length: false,
                }],
                key: vec![0],
                key_schema: None,
            };
            for raw in values {
                let bridge = key::encode([("k", &kind.decode(raw).unwrap())]);
                let line = copy_escaped(raw);
                let mut bulk = Vec::new();
                CopyRow::parse(&table, line.as_bytes())
                    .unwrap()
                    .write_object(&[0], &mut bulk)
                    .unwrap();
                assert_eq!(
                    String::from_utf8_lossy(&bulk),
                    String::from_utf8_lossy(&bridge),
                    "{sql_type} {raw:?}"
                );
            }
        }
    }
}
