//! Kafka Connect's JSON wrapping (`--value-schema`): every record key and value as
//! `{"schema": …, "payload": …}`, as Connect's `JsonConverter` writes them with
//! `schemas.enable=true`, with the schemas Debezium's PostgreSQL connector declares.
//!
//! The payload is byte for byte what the bridge writes without the wrapping. The
//! schemas depend only on the table's columns, so the bridge serialises them once per
//! Relation message ([`TableSchemas`]) and wraps each record by concatenation
//! ([`wrap`]). The client computes the key's schema the same way ([`key_schema`]),
//! because the partition of a key is the hash of the key's bytes, schema included.
//!
//! Only Debezium's value format has schemas here: tidemark's own format embeds
//! `json`/`jsonb` values as JSON, which no Connect schema describes, so the bridge
//! refuses `--value-schema` without `--value-format debezium`.

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::wire::codec::ValueKind;
use crate::wire::debezium::field_schema;
use crate::wire::TableName;

pub use crate::wire::debezium::SCHEMA_SUFFIX;

/// A column kind that has no Connect schema (tidemark's own format).
#[derive(Debug, thiserror::Error)]
#[error("column {column:?} is in tidemark's value format, which has no Kafka Connect schema; --value-schema needs --value-format debezium")]
pub struct NoSchema {
    /// The column.
    pub column: String,
}

/// The Connect schema of a column of `kind` (a kind of Debezium's value format), as
/// a struct field; `None` for tidemark's kinds.
pub fn column_schema(kind: &ValueKind, optional: bool) -> Option<Value> {
    Some(match kind {
        ValueKind::Debezium(b) => field_schema(&b.0, false, &b.1, optional),
        ValueKind::Array(inner) => match inner.as_ref() {
            ValueKind::Debezium(b) => field_schema(&b.0, true, &b.1, optional),
            _ => return None,
        },
        // Elements as their text.
        ValueKind::BoxArray => {
            json!({"type": "array", "items": {"type": "string", "optional": true}, "optional": optional})
        }
        // `int2vector` and `oidvector`: arrays of integers.
        ValueKind::Vector => {
            json!({"type": "array", "items": {"type": "int64", "optional": true}, "optional": optional})
        }
        _ => return None,
    })
}

/// A struct schema of `(name, kind)` columns named `name`; every field optional when
/// `optional_fields` (the row), none when not (the key).
fn row_schema<'a>(
    name: String,
    columns: impl IntoIterator<Item = (&'a str, &'a ValueKind)>,
    optional_fields: bool,
    optional: bool,
) -> Result<Value, NoSchema> {
    let fields = columns
        .into_iter()
        .map(|(column, kind)| {
            let mut s = column_schema(kind, optional_fields).ok_or_else(|| NoSchema {
                column: column.to_owned(),
            })?;
            if let Value::Object(m) = &mut s {
                m.insert("field".into(), column.into());
            }
            Ok(s)
        })
        .collect::<Result<Vec<Value>, NoSchema>>()?;
    Ok(json!({"type": "struct", "fields": fields, "optional": optional, "name": name}))
}

/// The schema name prefix of `table`'s records: `<prefix>.<schema>.<table>`, spelt as
/// the topic is ([`TableName::topic`]).
fn base_name(prefix: &str, table: &TableName) -> String {
    table.topic(prefix)
}

/// The key's schema: a struct `<prefix>.<schema>.<table>.Key` of the key columns, in
/// key order, none optional (primary-key columns are `NOT NULL`).
pub fn key_schema<'a>(
    prefix: &str,
    table: &TableName,
    key_columns: impl IntoIterator<Item = (&'a str, &'a ValueKind)>,
) -> Result<Value, NoSchema> {
    row_schema(
        format!("{}.Key", base_name(prefix, table)),
        key_columns,
        false,
        false,
    )
}

fn field(ty: &str, optional: bool, name: &str) -> Value {
    json!({"type": ty, "optional": optional, "field": name})
}

/// `io.debezium.connector.postgresql.Source` with the fields the bridge writes:
/// Debezium's, then tidemark's own `commit_lsn` and `seq`.
fn source_schema() -> Value {
    json!({
        "type": "struct",
        "fields": [
            field("string", false, "version"),
            field("string", false, "connector"),
            field("string", false, "name"),
            field("int64", false, "ts_ms"),
            {"type": "string", "optional": true, "name": "io.debezium.data.Enum", "version": 1,
             "parameters": {"allowed": "true,first,first_in_data_collection,last_in_data_collection,last,false,incremental"},
             "default": "false", "field": "snapshot"},
            field("string", false, "db"),
            field("string", true, "sequence"),
            field("int64", true, "ts_us"),
            field("int64", true, "ts_ns"),
            field("string", false, "schema"),
            field("string", false, "table"),
            field("int64", true, "txId"),
            field("int64", true, "lsn"),
            field("int64", true, "commit_lsn"),
            field("int64", true, "seq"),
        ],
        "optional": false,
        "name": "io.debezium.connector.postgresql.Source",
        "field": "source"
    })
}

/// The value's schema: the struct `<prefix>.<schema>.<table>.Envelope` of `before`
/// and `after` (`<…>.Value`, every column optional: the bridge learns columns from
/// Relation messages, which do not say which are `NOT NULL`), `source`, `op`,
/// `ts_ms`/`ts_us`/`ts_ns`, the optional `transaction` block ([`transaction_block_schema`])
/// and tidemark's `unchanged_toast`.
pub fn value_schema<'a>(
    prefix: &str,
    table: &TableName,
    columns: impl IntoIterator<Item = (&'a str, &'a ValueKind)> + Clone,
) -> Result<Value, NoSchema> {
    let base = base_name(prefix, table);
    let row = |field: &str| -> Result<Value, NoSchema> {
        let mut s = row_schema(format!("{base}.Value"), columns.clone(), true, true)?;
        if let Value::Object(m) = &mut s {
            m.insert("field".into(), field.into());
        }
        Ok(s)
    };
    Ok(json!({
        "type": "struct",
        "fields": [
            row("before")?,
            row("after")?,
            source_schema(),
            field("string", false, "op"),
            field("int64", true, "ts_ms"),
            field("int64", true, "ts_us"),
            field("int64", true, "ts_ns"),
            transaction_block_schema(),
            {"type": "array", "items": {"type": "string", "optional": false}, "optional": true, "field": "unchanged_toast"},
        ],
        "optional": false,
        "name": format!("{base}.Envelope"),
        "version": 1
    }))
}

/// The envelope's optional `transaction` field: Debezium's struct `event.block`.
fn transaction_block_schema() -> Value {
    json!({
        "type": "struct",
        "fields": [
            field("string", false, "id"),
            field("int64", false, "total_order"),
            field("int64", false, "data_collection_order"),
        ],
        "optional": true,
        "name": "event.block",
        "version": 1,
        "field": "transaction"
    })
}

/// The key schema of the transaction topic's records (`{"id": …}`), as Debezium
/// names it.
pub fn transaction_key_schema() -> Value {
    json!({"type": "struct", "fields": [field("string", false, "id")], "optional": false,
           "name": "io.debezium.connector.common.TransactionMetadataKey"})
}

/// The value schema of the transaction topic's records
/// ([`crate::wire::transaction::TransactionEvent`]), as Debezium names it.
pub fn transaction_value_schema() -> Value {
    json!({
        "type": "struct",
        "fields": [
            field("string", false, "status"),
            field("string", false, "id"),
            field("int64", false, "ts_ms"),
            field("int64", true, "event_count"),
            {"type": "array", "items": {"type": "struct", "fields": [
                field("string", false, "data_collection"),
                field("int64", false, "event_count"),
             ], "optional": false, "name": "event.collection", "version": 1},
             "optional": true, "field": "data_collections"},
        ],
        "optional": false,
        "name": "io.debezium.connector.common.TransactionMetadataValue",
        "version": 1
    })
}

/// The schema of keys that are not a row's (the TRUNCATE key `{}`, the end-of-snapshot
/// markers' `{"tidemark.snapshot": …}`): a struct `<prefix>.<schema>.<table>.Key` of
/// the given string fields.
pub fn marker_key_schema(prefix: &str, table: &TableName, fields: &[&str]) -> Value {
    let fields: Vec<Value> = fields.iter().map(|f| field("string", false, f)).collect();
    json!({"type": "struct", "fields": fields, "optional": false,
           "name": format!("{}.Key", base_name(prefix, table))})
}

/// One table's serialised key and value schemas, computed once per Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSchemas {
    /// The key's schema, compact JSON.
    pub key: Vec<u8>,
    /// The value's schema, compact JSON.
    pub value: Vec<u8>,
    /// The TRUNCATE key's schema (an empty struct), compact JSON.
    pub truncate_key: Vec<u8>,
    /// The end-of-snapshot marker key's schema, compact JSON.
    pub snapshot_key: Vec<u8>,
}

impl TableSchemas {
    /// The schemas of `table` with `columns` (name, kind) and `key` (indexes into
    /// `columns`, in key order).
    pub fn new(
        prefix: &str,
        table: &TableName,
        columns: &[(String, ValueKind)],
        key: &[usize],
    ) -> Result<Self, NoSchema> {
        let all = columns.iter().map(|(n, k)| (n.as_str(), k));
        let keyed = key
            .iter()
            .filter_map(|&i| columns.get(i))
            .map(|(n, k)| (n.as_str(), k));
        Ok(TableSchemas {
            key: compact(&key_schema(prefix, table, keyed)?),
            value: compact(&value_schema(prefix, table, all)?),
            truncate_key: compact(&marker_key_schema(prefix, table, &[])),
            snapshot_key: compact(&marker_key_schema(prefix, table, &["tidemark.snapshot"])),
        })
    }
}

/// Compact JSON of a schema (writing a `Value` into a `Vec` cannot fail).
pub fn compact(schema: &Value) -> Vec<u8> {
    serde_json::to_vec(schema).unwrap_or_default()
}

/// `{"schema":<schema>,"payload":<payload>}`, from both already serialised.
pub fn wrap(schema: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(schema.len() + payload.len() + 24);
    out.extend_from_slice(b"{\"schema\":");
    out.extend_from_slice(schema);
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(payload);
    out.push(b'}');
    out
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wrapped<T> {
    #[allow(dead_code)]
    schema: IgnoredAny,
    payload: T,
}

/// Reads a `T` from `bytes`: the `payload` of a `{"schema":…,"payload":…}` wrapping
/// when `wrapped`, else the whole of `bytes`.
pub fn read<T: DeserializeOwned>(bytes: &[u8], wrapped: bool) -> serde_json::Result<T> {
    if wrapped {
        serde_json::from_slice::<Wrapped<T>>(bytes).map(|w| w.payload)
    } else {
        serde_json::from_slice(bytes)
    }
}

/// Whether a `tidemark.format` header's text says that records carry their schema.
pub fn header_says_wrapped(header: &str) -> bool {
    header.ends_with(SCHEMA_SUFFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::debezium::{Modes, PgType};
    use crate::wire::Envelope;
    use serde_json::Map;

    fn dbz(oid: u32, typmod: i32) -> ValueKind {
        ValueKind::Debezium(Box::new((
            PgType {
                oid,
                typmod,
                name: String::new(),
            },
            Modes::default(),
        )))
    }

    fn t() -> TableName {
        TableName::parse("public.items").unwrap()
    }

    #[test]
    fn column_kinds_have_debeziums_schemas() {
        let numeric = (10 << 16 | 2) + 4;
        let cases = [
            (dbz(16, -1), json!({"type": "boolean", "optional": true})),
            (dbz(23, -1), json!({"type": "int32", "optional": true})),
            (dbz(20, -1), json!({"type": "int64", "optional": true})),
            (dbz(701, -1), json!({"type": "double", "optional": true})),
            (dbz(25, -1), json!({"type": "string", "optional": true})),
            (
                dbz(1082, -1),
                json!({"type": "int32", "name": "io.debezium.time.Date", "version": 1, "optional": true}),
            ),
            (
                dbz(1700, numeric),
                json!({"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "version": 1,
                       "parameters": {"scale": "2", "connect.decimal.precision": "10"}, "optional": true}),
            ),
            (
                ValueKind::Array(Box::new(dbz(23, -1))),
                json!({"type": "array", "items": {"type": "int32", "optional": true}, "optional": true}),
            ),
            (
                ValueKind::BoxArray,
                json!({"type": "array", "items": {"type": "string", "optional": true}, "optional": true}),
            ),
            (
                ValueKind::Vector,
                json!({"type": "array", "items": {"type": "int64", "optional": true}, "optional": true}),
            ),
        ];
        for (kind, want) in cases {
            assert_eq!(column_schema(&kind, true), Some(want), "{kind:?}");
        }
        for kind in [ValueKind::Integer, ValueKind::Json, ValueKind::Text] {
            assert_eq!(column_schema(&kind, true), None);
        }
        assert_eq!(
            column_schema(&dbz(23, -1), false),
            Some(json!({"type": "int32", "optional": false}))
        );
    }

    #[test]
    fn key_and_envelope_schemas_are_debeziums_structs() {
        let columns = [
            ("id".to_string(), dbz(23, -1)),
            ("name".to_string(), dbz(25, -1)),
        ];
        let key = key_schema("srv", &t(), [("id", &columns[0].1)]).unwrap();
        assert_eq!(
            key,
            json!({"type": "struct", "fields": [{"type": "int32", "optional": false, "field": "id"}],
                   "optional": false, "name": "srv.public.items.Key"})
        );
        let value =
            value_schema("srv", &t(), columns.iter().map(|(n, k)| (n.as_str(), k))).unwrap();
        assert_eq!(value["name"], "srv.public.items.Envelope");
        assert_eq!(value["fields"][0]["field"], "before");
        assert_eq!(value["fields"][7]["name"], "event.block");
        assert_eq!(value["fields"][8]["field"], "unchanged_toast");
        let after = &value["fields"][1];
        assert_eq!(after["name"], "srv.public.items.Value");
        assert_eq!(after["optional"], true);
        assert_eq!(
            after["fields"][1],
            json!({"type": "string", "optional": true, "field": "name"})
        );
        assert_eq!(
            value["fields"][2]["name"],
            "io.debezium.connector.postgresql.Source"
        );
        let tidemark = [("j".to_string(), ValueKind::Json)];
        let err = TableSchemas::new("srv", &t(), &tidemark, &[0]).unwrap_err();
        assert!(err.to_string().contains("--value-format debezium"), "{err}");
    }

    #[test]
    fn wrapping_round_trips() {
        let columns = [("id".to_string(), dbz(23, -1))];
        let s = TableSchemas::new("srv", &t(), &columns, &[0]).unwrap();
        let key = wrap(&s.key, br#"{"id":7}"#);
        let parsed: Value = serde_json::from_slice(&key).unwrap();
        assert_eq!(parsed["payload"], json!({"id": 7}));
        assert_eq!(parsed["schema"]["name"], "srv.public.items.Key");
        let row: Map<String, Value> = read(&key, true).unwrap();
        assert_eq!(Value::Object(row), json!({"id": 7}));
        // Unwrapped bytes are read as they are; a wrapping is not a payload.
        let plain: Map<String, Value> = read(br#"{"id":7}"#, false).unwrap();
        assert_eq!(plain.len(), 1);
        assert!(read::<Map<String, Value>>(br#"{"id":7}"#, true).is_err());
        let env = br#"{"before":null,"after":{"id":1},"op":"c","ts_ms":1,"source":{"schema":"public","table":"items"}}"#;
        let wrapped = wrap(&s.value, env);
        let e: Envelope = read(&wrapped, true).unwrap();
        assert_eq!(e.after.unwrap()["id"], 1);
        let trunc: Value = serde_json::from_slice(&wrap(&s.truncate_key, b"{}")).unwrap();
        assert_eq!(trunc["schema"]["fields"], json!([]));
    }
}
