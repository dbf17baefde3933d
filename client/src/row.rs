//! [`Row`]: a row of any table, as a schema-agnostic cache (`Cache<Row, Row>`) keeps
//! it, in about the memory of its JSON.
//!
//! A JSON object per row (`serde_json::Map`) costs a `String` per column name per row,
//! a 32-byte `Value` per column and an allocation per text value: about nine times the
//! row's JSON for a million rows of six columns. A `Row` holds the column names once
//! per table shape (shared through an `Arc`, interned per thread as rows are read)
//! and its values in one allocation: a tag byte per value, then 8 bytes for a number,
//! or a length and the UTF-8 bytes for a string; arrays and objects (JSON columns,
//! PostgreSQL arrays) keep their JSON text. Reading a value decodes it
//! ([`Row::get`]); strings are read in place ([`Row::get_str`]).
//!
//! A `Row` serialises and deserialises as the JSON object it stands for, so the wire
//! format, checkpoints and applications that serialise rows see no difference.

use std::cell::RefCell;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// The column names of one table shape, shared by its rows.
#[derive(PartialEq, Eq)]
struct Columns {
    names: Box<[Box<str>]>,
    /// The columns' positions in name order, when the names are not in it: rows with
    /// the same columns in another order are equal and hash alike, as JSON objects.
    by_name: Option<Box<[usize]>>,
}

impl Columns {
    fn new(names: &[String]) -> Columns {
        let mut order: Vec<usize> = (0..names.len()).collect();
        order.sort_by(|&a, &b| names[a].cmp(&names[b]));
        let sorted = order.iter().enumerate().all(|(i, &j)| i == j);
        Columns {
            names: names.iter().map(|n| n.as_str().into()).collect(),
            by_name: (!sorted).then(|| order.into_boxed_slice()),
        }
    }
}

/// A row of any table: column names shared per table shape, values in one
/// allocation. See the [module documentation](self).
#[derive(Clone)]
pub struct Row {
    columns: Arc<Columns>,
    cells: Box<[u8]>,
}

const NULL: u8 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const I64: u8 = 3;
const U64: u8 = 4;
const F64: u8 = 5;
const STR: u8 = 6;
/// An array or object, as its JSON text.
const JSON: u8 = 7;

/// One value of a row, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cell<'a> {
    Null,
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(&'a str),
    Json(&'a str),
}

impl Cell<'_> {
    fn to_value(self) -> Value {
        match self {
            Cell::Null => Value::Null,
            Cell::Bool(b) => Value::Bool(b),
            Cell::I64(n) => n.into(),
            Cell::U64(n) => n.into(),
            Cell::F64(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
            Cell::Str(s) => Value::String(s.to_owned()),
            Cell::Json(text) => parse_json(text),
        }
    }
}

/// A JSON cell's value. The text was written from a parsed value; without the parser's
/// depth limit it parses again, whatever its nesting (the codec bounds that).
fn parse_json(text: &str) -> Value {
    let mut de = serde_json::Deserializer::from_str(text);
    de.disable_recursion_limit();
    Value::deserialize(&mut de).unwrap_or(Value::Null)
}

impl Serialize for Cell<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Cell::Null => s.serialize_unit(),
            Cell::Bool(b) => s.serialize_bool(b),
            Cell::I64(n) => s.serialize_i64(n),
            Cell::U64(n) => s.serialize_u64(n),
            Cell::F64(f) => s.serialize_f64(f),
            Cell::Str(text) => s.serialize_str(text),
            Cell::Json(_) => self.to_value().serialize(s),
        }
    }
}

/// Appends `n` as a LEB128 varint.
fn put_len(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_str(out: &mut Vec<u8>, tag: u8, text: &str) {
    out.push(tag);
    put_len(out, text.len());
    out.extend_from_slice(text.as_bytes());
}

/// Appends `v` in the cell encoding.
fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Array(_) | Value::Object(_) => put_str(out, JSON, &v.to_string()),
        // A scalar as the decoder writes it; a `Value` deserialises without error.
        _ => {
            let _ = CellSeed(out).deserialize(v);
        }
    }
}

/// The cells of an encoded row, in column order.
struct Cells<'a>(&'a [u8]);

impl<'a> Iterator for Cells<'a> {
    type Item = Cell<'a>;

    fn next(&mut self) -> Option<Cell<'a>> {
        let (&tag, rest) = self.0.split_first()?;
        let fixed = |rest: &'a [u8]| -> Option<([u8; 8], &'a [u8])> {
            let (bytes, rest) = rest.split_first_chunk::<8>()?;
            Some((*bytes, rest))
        };
        let (cell, rest) = match tag {
            NULL => (Cell::Null, rest),
            FALSE => (Cell::Bool(false), rest),
            TRUE => (Cell::Bool(true), rest),
            I64 => fixed(rest).map(|(b, r)| (Cell::I64(i64::from_le_bytes(b)), r))?,
            U64 => fixed(rest).map(|(b, r)| (Cell::U64(u64::from_le_bytes(b)), r))?,
            F64 => fixed(rest).map(|(b, r)| (Cell::F64(f64::from_le_bytes(b)), r))?,
            STR | JSON => {
                let (mut len, mut shift, mut at) = (0usize, 0, 0);
                loop {
                    let byte = *rest.get(at)?;
                    len |= ((byte & 0x7f) as usize) << shift;
                    at += 1;
                    if byte < 0x80 {
                        break;
                    }
                    shift += 7;
                }
                let text = rest.get(at..at + len)?;
                // Written from a `&str` by `put_str`.
                let text = std::str::from_utf8(text).ok()?;
                let cell = if tag == STR {
                    Cell::Str(text)
                } else {
                    Cell::Json(text)
                };
                (cell, &rest[at + len..])
            }
            _ => return None,
        };
        self.0 = rest;
        Some(cell)
    }
}

thread_local! {
    /// Column sets met lately on this thread, newest first: rows of one table share
    /// one. A handful covers the tables one thread decodes in turn.
    static SHAPES: RefCell<Vec<Arc<Columns>>> = const { RefCell::new(Vec::new()) };
}

/// How many column sets each thread remembers.
const SHAPES_KEPT: usize = 16;

/// The shared column set equal to `names`.
fn intern(names: &[String]) -> Arc<Columns> {
    SHAPES.with(|shapes| {
        let mut shapes = shapes.borrow_mut();
        let found = shapes.iter().position(|c| {
            c.names.len() == names.len() && c.names.iter().zip(names).all(|(a, b)| **a == **b)
        });
        let columns = match found {
            Some(0) => return shapes[0].clone(),
            Some(i) => shapes.remove(i),
            None => Arc::new(Columns::new(names)),
        };
        shapes.insert(0, columns.clone());
        shapes.truncate(SHAPES_KEPT);
        columns
    })
}

impl Row {
    /// The number of columns.
    pub fn len(&self) -> usize {
        self.columns.names.len()
    }

    /// Whether the row has no column.
    pub fn is_empty(&self) -> bool {
        self.columns.names.is_empty()
    }

    /// The column names, in the row's order.
    pub fn columns(&self) -> impl Iterator<Item = &str> + '_ {
        self.columns.names.iter().map(|c| &**c)
    }

    fn cell(&self, column: &str) -> Option<Cell<'_>> {
        let i = self.columns.names.iter().position(|c| &**c == column)?;
        Cells(&self.cells).nth(i)
    }

    /// The value of `column` (decoded: a string is copied), or `None` when the row
    /// has no such column. SQL NULL is `Some(Value::Null)`.
    pub fn get(&self, column: &str) -> Option<Value> {
        self.cell(column).map(Cell::to_value)
    }

    /// The value of `column` when it is a string, borrowed from the row.
    pub fn get_str(&self, column: &str) -> Option<&str> {
        match self.cell(column)? {
            Cell::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value of `column` when it is an integer that fits an `i64`.
    pub fn get_i64(&self, column: &str) -> Option<i64> {
        match self.cell(column)? {
            Cell::I64(n) => Some(n),
            Cell::U64(n) => i64::try_from(n).ok(),
            _ => None,
        }
    }

    /// Every column and its value, in the row's order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Value)> + '_ {
        self.columns().zip(Cells(&self.cells).map(Cell::to_value))
    }

    /// The row as a JSON object.
    pub fn to_map(&self) -> Map<String, Value> {
        self.iter().map(|(c, v)| (c.to_owned(), v)).collect()
    }
}

impl From<&Map<String, Value>> for Row {
    fn from(map: &Map<String, Value>) -> Row {
        let names: Vec<String> = map.keys().cloned().collect();
        let mut cells = Vec::new();
        for v in map.values() {
            put_value(&mut cells, v);
        }
        Row {
            columns: intern(&names),
            cells: cells.into_boxed_slice(),
        }
    }
}

impl From<Map<String, Value>> for Row {
    fn from(map: Map<String, Value>) -> Row {
        Row::from(&map)
    }
}

impl FromIterator<(String, Value)> for Row {
    fn from_iter<I: IntoIterator<Item = (String, Value)>>(iter: I) -> Row {
        Row::from(iter.into_iter().collect::<Map<String, Value>>())
    }
}

/// The encoded bytes of each cell, in column order.
struct Spans<'a>(Cells<'a>);

impl<'a> Iterator for Spans<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let before = self.0 .0;
        self.0.next()?;
        Some(&before[..before.len() - self.0 .0.len()])
    }
}

/// Equal as JSON objects: the same columns with the same values, in any order.
impl PartialEq for Row {
    fn eq(&self, other: &Row) -> bool {
        if Arc::ptr_eq(&self.columns, &other.columns) || self.columns == other.columns {
            return self.cells == other.cells;
        }
        if self.len() != other.len() {
            return false;
        }
        let theirs: Vec<&[u8]> = Spans(Cells(&other.cells)).collect();
        self.columns()
            .zip(Spans(Cells(&self.cells)))
            .all(|(name, mine)| {
                other
                    .columns()
                    .position(|n| n == name)
                    .is_some_and(|j| theirs.get(j) == Some(&mine))
            })
    }
}

impl Eq for Row {}

/// Hashes the columns in name order, so that equal rows hash alike.
impl Hash for Row {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let names = &self.columns.names;
        state.write_usize(names.len());
        match &self.columns.by_name {
            None => {
                for (name, span) in names.iter().zip(Spans(Cells(&self.cells))) {
                    name.hash(state);
                    span.hash(state);
                }
            }
            Some(order) => {
                let spans: Vec<&[u8]> = Spans(Cells(&self.cells)).collect();
                for &i in order.iter() {
                    names[i].hash(state);
                    if let Some(span) = spans.get(i) {
                        span.hash(state);
                    }
                }
            }
        }
    }
}

impl fmt::Debug for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.columns().zip(Cells(&self.cells)))
            .finish()
    }
}

impl Serialize for Row {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.len()))?;
        for (column, cell) in self.columns().zip(Cells(&self.cells)) {
            map.serialize_entry(column, &cell)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Row {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Row, D::Error> {
        d.deserialize_map(RowVisitor)
    }
}

struct RowVisitor;

/// The largest cell buffer a thread keeps between rows.
const KEPT_BUFFER: usize = 64 * 1024;

impl<'de> Visitor<'de> for RowVisitor {
    type Value = Row;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a row as a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Row, A::Error> {
        // The names and cells go into this thread's reused buffers, so that a row of a
        // known shape allocates only its cells, once, at their exact size.
        thread_local! {
            static NAMES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
            static CELLS: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        let mut names = NAMES.with(|n| std::mem::take(&mut *n.borrow_mut()));
        let mut cells = CELLS.with(|c| std::mem::take(&mut *c.borrow_mut()));
        cells.clear();
        let mut n = 0;
        let result = loop {
            if names.len() == n {
                names.push(String::new());
            }
            match map.next_key_seed(NameSeed(&mut names[n])) {
                Ok(Some(())) => {}
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
            if let Err(e) = map.next_value_seed(CellSeed(&mut cells)) {
                break Err(e);
            }
            n += 1;
        };
        let row = result.map(|()| Row {
            columns: intern(&names[..n]),
            cells: Box::from(&cells[..]),
        });
        NAMES.with(|cell| *cell.borrow_mut() = names);
        // A rare huge row (a large jsonb, say) does not pin its size on the thread.
        if cells.capacity() <= KEPT_BUFFER {
            CELLS.with(|cell| *cell.borrow_mut() = cells);
        }
        row
    }
}

/// Reads a column name into a reused buffer.
struct NameSeed<'b>(&'b mut String);

impl<'de> DeserializeSeed<'de> for NameSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for NameSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a column name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<(), E> {
        self.0.clear();
        self.0.push_str(name);
        Ok(())
    }
}

/// Appends one value, in the cell encoding, to a row's cells.
struct CellSeed<'b>(&'b mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for CellSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CellSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.0.push(NULL);
        Ok(())
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<(), E> {
        self.0.push(if b { TRUE } else { FALSE });
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<(), E> {
        self.0.push(I64);
        self.0.extend_from_slice(&n.to_le_bytes());
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<(), E> {
        match i64::try_from(n) {
            Ok(i) => self.visit_i64(i),
            Err(_) => {
                self.0.push(U64);
                self.0.extend_from_slice(&n.to_le_bytes());
                Ok(())
            }
        }
    }

    fn visit_i128<E: de::Error>(self, n: i128) -> Result<(), E> {
        match i64::try_from(n) {
            Ok(i) => self.visit_i64(i),
            Err(_) => match u64::try_from(n) {
                Ok(u) => self.visit_u64(u),
                Err(_) => Err(E::custom(format!("{n} is out of a JSON number's range"))),
            },
        }
    }

    fn visit_u128<E: de::Error>(self, n: u128) -> Result<(), E> {
        match u64::try_from(n) {
            Ok(u) => self.visit_u64(u),
            Err(_) => Err(E::custom(format!("{n} is out of a JSON number's range"))),
        }
    }

    fn visit_f64<E: de::Error>(self, f: f64) -> Result<(), E> {
        // As `serde_json::Value` keeps it: a value JSON cannot hold is null.
        match f.is_finite() {
            true => {
                // + 0.0 turns -0.0 into 0.0, which JSON holds as equal.
                self.0.push(F64);
                self.0.extend_from_slice(&(f + 0.0).to_le_bytes());
            }
            false => self.0.push(NULL),
        }
        Ok(())
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        put_str(self.0, STR, s);
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        let v = Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
        put_value(self.0, &v);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let v = Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
        put_value(self.0, &v);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(v: Value) -> Row {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn round_trips_every_kind_of_value_as_the_same_json() {
        let v = json!({
            "id": 42, "big": u64::MAX, "neg": -7, "f": 1.5, "t": true, "no": false,
            "nothing": null, "name": "Zoë \"quoted\"\n", "long": "x".repeat(300),
            "arr": [1, "a", null], "obj": {"k": [true]}, "empty": ""
        });
        let r = row(v.clone());
        assert_eq!(serde_json::to_value(&r).unwrap(), v);
        assert_eq!(serde_json::to_string(&r).unwrap(), v.to_string());
        assert_eq!(Value::Object(r.to_map()), v);
        assert_eq!(Row::from(v.as_object().unwrap()), r);
        assert_eq!(r.len(), 12);
        assert_eq!(r.get("id"), Some(json!(42)));
        assert_eq!(r.get_i64("neg"), Some(-7));
        assert_eq!(r.get_i64("big"), None);
        assert_eq!(r.get_str("name"), Some("Zoë \"quoted\"\n"));
        assert_eq!(r.get_str("long").map(str::len), Some(300));
        assert_eq!(r.get("obj"), Some(json!({"k": [true]})));
        assert_eq!(r.get("nothing"), Some(Value::Null));
        assert_eq!(r.get("absent"), None);
        assert!(format!("{r:?}").starts_with("{\"id\": I64(42), \"big\""));
        // Read from bytes too (borrowed strings).
        let from_text: Row = serde_json::from_str(&v.to_string()).unwrap();
        assert_eq!(from_text, r);
    }

    #[test]
    fn rows_of_one_shape_share_their_names_and_compare_by_content() {
        let (a, b) = (
            row(json!({"id": 1, "v": "x"})),
            row(json!({"id": 2, "v": "y"})),
        );
        assert!(Arc::ptr_eq(&a.columns, &b.columns));
        let same = row(json!({"id": 1, "v": "x"}));
        assert_eq!(a, same);
        let hash = |r: &Row| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            r.hash(&mut h);
            h.finish()
        };
        assert_eq!(hash(&a), hash(&same));
        // As JSON objects: the columns' order does not matter (a typed key written to a
        // checkpoint in its fields' order finds the stream's key), values do.
        let reordered = row(json!({"v": "x", "id": 1}));
        assert_eq!(a, reordered);
        assert_eq!(hash(&a), hash(&reordered));
        assert_ne!(a, row(json!({"v": "y", "id": 1})));
        assert_ne!(a, row(json!({"id": 1, "w": "x"})));
        assert_ne!(a, row(json!({"id": 1})));
        assert_eq!(row(json!({"f": -0.0})), row(json!({"f": 0.0})));
        let key: std::collections::HashMap<Row, i32> = [(a.clone(), 1)].into();
        assert_eq!(key.get(&same), Some(&1));
    }

    #[test]
    fn deep_json_values_read_back() {
        let mut deep = json!(1);
        for _ in 0..200 {
            deep = json!([deep]);
        }
        let r = Row::from_iter([("j".to_owned(), deep.clone())]);
        assert_eq!(r.get("j"), Some(deep));
    }

    #[test]
    fn a_value_that_is_not_an_object_is_refused() {
        assert!(serde_json::from_value::<Row>(json!([1, 2])).is_err());
        assert!(serde_json::from_value::<Row>(json!("x")).is_err());
    }
}
