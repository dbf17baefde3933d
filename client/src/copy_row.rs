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

use serde::de::value::StrDeserializer;
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::Deserializer;
use serde_json::Value;

use crate::table::TableInfo;
use crate::wire::codec::unescape_copy_field;
use crate::wire::{Row, ValueKind};

/// A COPY text line split into fields, one per column of the table.
pub(crate) struct CopyRow<'a> {
    table: &'a TableInfo,
    /// Unescaped field text; `None` is SQL NULL.
    fields: Vec<Option<Cow<'a, str>>>,
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
        let mut fields = Vec::with_capacity(n);
        for (i, field) in line.split(|&b| b == b'\t').enumerate() {
            if i == n {
                return Err(format!("the line has more than {n} fields"));
            }
            fields.push(unescape_copy_field(field).map_err(|e| {
                let name = table.columns.get(i).map_or("(flag)", |c| c.name.as_str());
                format!("column {name} is not UTF-8: {e}")
            })?);
        }
        if fields.len() < n {
            return Err(format!("the line has fewer than {n} fields"));
        }
        Ok(CopyRow { table, fields })
    }

    /// The text of column `col`; `None` is SQL NULL.
    pub fn text(&self, col: usize) -> Option<&str> {
        self.fields[col].as_deref()
    }

    /// Column `col` through the codec.
    pub fn value(&self, col: usize) -> Result<Value, String> {
        let column = &self.table.columns[col];
        column
            .kind
            .decode_opt(self.text(col))
            .map_err(|e| format!("column {}: {e}", column.name))
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
            push_json_member(out, &self.table.columns[i].name, &self.value(i)?);
        }
        out.push(b'}');
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

/// Appends `"name":value` to the JSON object being written in `out`, opening it
/// with `{` when `out` is empty; the caller closes it with `}`.
pub(crate) fn push_json_member(out: &mut Vec<u8>, name: &str, value: &impl serde::Serialize) {
    out.push(if out.is_empty() { b'{' } else { b',' });
    // Writing a string or a codec value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, name);
    out.push(b':');
    let _ = serde_json::to_writer(&mut *out, value);
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
    fn rejects_lines_of_the_wrong_width() {
        let t = sample();
        assert!(CopyRow::parse(&t, b"1\tx").is_err());
        assert!(CopyRow::parse(&t, b"1\tx\t{}\t{}\textra").is_err());
        assert!(CopyRow::parse(&t, b"1\t\xff\t{}\t{}").is_err());
    }
}
