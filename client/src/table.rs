//! What the cache knows about its table: the columns, their codec kinds, the primary
//! key, and how to turn PostgreSQL's COPY text into the same JSON rows and keys the
//! bridge writes.
//!
//! The bridge decodes pgoutput text with [`tidemark_core::wire::codec`]; this module decodes
//! `COPY ... TO STDOUT` text with the same codec, after undoing COPY's escaping, so a
//! row reads identically from both paths. Keys are built in primary-key order
//! ([`PRIMARY_KEY_SQL`]) so equal keys are equal bytes, which the partition
//! computation relies on.

use serde_json::Value;
use tokio_postgres::GenericClient;

use crate::error::{Error, Result};
use tidemark_core::pg::catalog::{PRIMARY_KEY_SQL, TYPE_INFO_SQL};
use tidemark_core::wire::envelope::quote_ident;
use tidemark_core::wire::{Row, TableName, ValueFormat, ValueKind};

/// The columns of a table, in `attnum` order, with whether each can be TOASTed.
/// Generated columns are left out: pgoutput does not send them (up to PostgreSQL 17,
/// and from 18 only to a publication with `publish_generated_columns`, which the
/// bridge does not set), so the load leaves them out too and a row has the same
/// columns whichever path it took.
const COLUMNS_SQL: &str = "SELECT c.oid, a.attname::text, a.atttypid, \
       format_type(a.atttypid, a.atttypmod), (a.attlen = -1 AND a.attstorage <> 'p'), \
       a.atttypmod \
     FROM pg_catalog.pg_class c \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
       AND a.attgenerated = '' \
     WHERE n.nspname = $1 AND c.relname = $2 \
     ORDER BY a.attnum";

/// One column of the table.
#[derive(Debug, Clone)]
pub(crate) struct Column {
    pub name: String,
    pub kind: ValueKind,
    /// The SQL type as `format_type` spells it, for casts in the re-read query.
    pub sql_type: String,
    /// Which of its values pgoutput may leave out as "unchanged TOAST", so that the
    /// cache keeps a copy of them next to the typed row. See [`ToastCopy`].
    pub toast: ToastCopy,
    /// Whether `octet_length` reads the column's raw size without detoasting it
    /// (`text`, `varchar`, `bpchar`, `bytea`), so the bulk load can ask PostgreSQL
    /// which values are stored out of line (see [`TableInfo::bulk_copy_sql`]).
    pub has_octet_length: bool,
}

/// Which values of a column the cache keeps for `unchanged_toast` merges.
///
/// pgoutput leaves a value out of an update only when it is stored out of line in
/// the TOAST table, and PostgreSQL moves a value out of line only when its stored
/// size exceeds a TOAST pointer (`MAXALIGN(TOAST_POINTER_SIZE)`, 24 bytes; see
/// `toast_tuple_find_biggest_attribute` in PostgreSQL's `toast_helper.c`). For the
/// types whose stored size is at most their text length plus the 4-byte varlena
/// header (`text`, `varchar`, `bpchar`, `xml`, `json`, `bytea` in hex, and `numeric`,
/// whose 25-byte binary form needs more than 30 digits), a value of 20 bytes of text
/// or less can never be out of line, so the cache keeps no copy of it. That spares
/// the copy for the short strings that make up most rows. For every other
/// variable-length type the text says nothing reliable about the stored size, and
/// every value is kept. Should a value the rule skipped ever arrive as unchanged
/// TOAST, the follower re-reads the row, as it does when it has no copy at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ToastCopy {
    /// Fixed-length or `PLAIN` storage: never out of line.
    Never,
    /// Values whose text is longer than this many bytes.
    LongerThan(usize),
    /// Every non-NULL value.
    Always,
}

impl ToastCopy {
    /// Types whose raw size `octet_length` reads from the varlena header.
    const OCTET_LENGTH: [u32; 4] = [25, 1043, 1042, 17];
    /// Text-like types whose stored size is bounded by their text length.
    const BOUNDED_BY_TEXT: [u32; 7] = [25, 1043, 1042, 142, 114, 17, 1700];
    /// The longest text such a value can have while still being stored inline.
    const INLINE_TEXT_MAX: usize = 20;

    fn for_column(type_oid: u32, toastable: bool) -> Self {
        if !toastable {
            ToastCopy::Never
        } else if Self::BOUNDED_BY_TEXT.contains(&type_oid) {
            ToastCopy::LongerThan(Self::INLINE_TEXT_MAX)
        } else {
            ToastCopy::Always
        }
    }

    /// Whether to keep a copy of a value whose text (or JSON string) is `text`;
    /// `None` for a value that is not a string.
    pub fn keeps(self, text: Option<&str>) -> bool {
        match (self, text) {
            (ToastCopy::Never, _) => false,
            (ToastCopy::LongerThan(n), Some(t)) => t.len() > n,
            _ => true,
        }
    }
}

/// The table's shape, read from the catalog.
#[derive(Debug, Clone)]
pub(crate) struct TableInfo {
    pub name: TableName,
    pub columns: Vec<Column>,
    /// Indexes into `columns` of the primary key, in key order.
    pub key: Vec<usize>,
    /// With `--value-schema`, the key's Kafka Connect schema, serialised: a key's bytes
    /// (and so its partition) include it ([`TableInfo::set_key_schema`]).
    pub key_schema: Option<std::sync::Arc<Vec<u8>>>,
}

impl TableInfo {
    /// Sets [`TableInfo::key_schema`] as the bridge computes it for `format` and the
    /// topic prefix `prefix`: from the key columns' names and kinds, in key order.
    pub fn set_key_schema(&mut self, format: &ValueFormat, prefix: &str) -> Result<()> {
        self.key_schema = if format.schemas() {
            let cols = self
                .key
                .iter()
                .filter_map(|&i| self.columns.get(i))
                .map(|c| (c.name.as_str(), &c.kind));
            let schema = tidemark_core::wire::connect::key_schema(prefix, &self.name, cols)
                .map_err(|e| Error::Config {
                    field: "value_schema",
                    problem: e.to_string(),
                })?;
            Some(std::sync::Arc::new(tidemark_core::wire::connect::compact(
                &schema,
            )))
        } else {
            None
        };
        Ok(())
    }

    /// Reads the table's columns, types and primary key; the columns' kinds are those
    /// of `format`, the encoding of the topic's values.
    pub async fn read(
        client: &impl GenericClient,
        name: &TableName,
        format: &ValueFormat,
    ) -> Result<Self> {
        let rows = client
            .query(COLUMNS_SQL, &[&name.schema, &name.table])
            .await
            .map_err(Error::postgres("reading the table's columns"))?;
        let Some(first) = rows.first() else {
            return Err(Self::missing(name));
        };
        let oid: u32 = first.get(0);
        Self::check_readable(client, name, oid).await?;
        let type_oids: Vec<u32> = rows.iter().map(|r| r.get(2)).collect();
        // type oid -> (base type oid, array element oid or 0, type name), domains resolved.
        let mut bases = std::collections::HashMap::new();
        for r in client
            .query(TYPE_INFO_SQL, &[&type_oids])
            .await
            .map_err(Error::postgres("resolving column types"))?
        {
            let oid: u32 = r.get(0);
            let base: Option<u32> = r.get(1);
            let type_name: Option<String> = r.get(3);
            bases.insert(
                oid,
                (
                    base.unwrap_or(oid),
                    r.get::<_, u32>(2),
                    type_name.unwrap_or_default(),
                ),
            );
        }
        let columns: Vec<Column> = rows
            .iter()
            .map(|r| {
                let type_oid: u32 = r.get(2);
                let (base, elem, type_name) =
                    bases
                        .get(&type_oid)
                        .cloned()
                        .unwrap_or((type_oid, 0, String::new()));
                Column {
                    name: r.get(1),
                    kind: ValueKind::for_format(format, base, elem, r.get(5), &type_name),
                    sql_type: r.get(3),
                    toast: ToastCopy::for_column(base, r.get(4)),
                    has_octet_length: ToastCopy::OCTET_LENGTH.contains(&base),
                }
            })
            .collect();
        let key_names: Vec<String> = client
            .query(PRIMARY_KEY_SQL, &[&oid])
            .await
            .map_err(Error::postgres("reading the primary key"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if key_names.is_empty() {
            return Err(Error::Table {
                table: name.to_string(),
                problem: "it has no primary key".into(),
                fix: format!(
                    "add one (ALTER TABLE {} ADD PRIMARY KEY (...)); the cache and the topic are keyed by it",
                    name.quoted()
                ),
            });
        }
        let key = key_names
            .iter()
            .filter_map(|k| columns.iter().position(|c| &c.name == k))
            .collect();
        Ok(TableInfo {
            name: name.clone(),
            columns,
            key,
            key_schema: None,
        })
    }

    /// Refuses a table whose rows a `COPY ... FROM ONLY` cannot read exactly: a
    /// partitioned table (its rows and its changes belong to its partitions), and a
    /// table whose row-level security applies to this role (some rows would be hidden
    /// from the load but not from the stream).
    async fn check_readable(client: &impl GenericClient, name: &TableName, oid: u32) -> Result<()> {
        let row = client
            .query_one(
                "SELECT c.relkind::text, c.relrowsecurity \
                   AND NOT (SELECT r.rolsuper OR r.rolbypassrls FROM pg_catalog.pg_roles r \
                            WHERE r.rolname = current_user) \
                   AND (c.relforcerowsecurity OR NOT pg_catalog.pg_has_role(c.relowner, 'USAGE')) \
                 FROM pg_catalog.pg_class c WHERE c.oid = $1",
                &[&oid],
            )
            .await
            .map_err(Error::postgres("reading the table's kind and row security"))?;
        let (kind, hidden): (String, bool) = (row.get(0), row.get(1));
        if kind == "p" {
            return Err(Error::Table {
                table: name.to_string(),
                problem: "it is partitioned: its rows and changes belong to its partitions".into(),
                fix: "cache each partition as a table (the bridge follows each as its own topic)"
                    .into(),
            });
        }
        if hidden {
            return Err(Error::Table {
                table: name.to_string(),
                problem: "row-level security applies to this role, so the load would miss rows that the stream carries".into(),
                fix: "connect as a role with BYPASSRLS (ALTER ROLE ... BYPASSRLS), or the table's owner without FORCE ROW LEVEL SECURITY".into(),
            });
        }
        Ok(())
    }

    /// The error for a table that does not exist.
    pub fn missing(name: &TableName) -> Error {
        Error::Table {
            table: name.to_string(),
            problem: "it does not exist".into(),
            fix: "create it, or check the spelling (schema.table, as in the catalog)".into(),
        }
    }

    /// The index of the column `name`.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// The statement that streams the table's rows that pass `filter` (a `WHERE`
    /// clause with a leading space, or empty for every row) for the bulk load, and
    /// the columns it flags. After the table's columns, each line carries one boolean per flagged
    /// column: `pg_column_size(c) <= octet_length(c)`, true when the value is stored
    /// out of line or compressed. Neither function detoasts: `pg_column_size` reads
    /// the stored size (for an out-of-line value, the size in the TOAST table) and
    /// `octet_length` the raw size, and an inline uncompressed value always has a
    /// header byte more than its raw size. Only a value stored out of line can come
    /// back as unchanged TOAST (pgoutput sends it so only when the update carried the
    /// old out-of-line value over), so the load keeps TOAST copies only of flagged
    /// values, and most rows need none. With `out_of_line` false (no value the load's
    /// snapshot shows is stored out of line, see `load`), nothing is flagged.
    pub fn bulk_copy_sql(&self, filter: &str, out_of_line: bool) -> (String, Vec<usize>) {
        let flagged: Vec<usize> = (0..self.columns.len())
            .filter(|&i| {
                out_of_line
                    && self.columns[i].toast != ToastCopy::Never
                    && self.columns[i].has_octet_length
            })
            .collect();
        let flags: String = flagged
            .iter()
            .map(|&i| {
                let c = quote_ident(&self.columns[i].name);
                format!(", pg_column_size({c}) <= octet_length({c})")
            })
            .collect();
        (
            format!(
                "COPY (SELECT {}{flags} FROM ONLY {}{filter}) TO STDOUT",
                self.column_list(),
                self.name.quoted()
            ),
            flagged,
        )
    }

    fn column_list(&self) -> String {
        let names: Vec<String> = self.columns.iter().map(|c| quote_ident(&c.name)).collect();
        names.join(", ")
    }

    /// The columns whose values may be left out as unchanged TOAST, with their rule.
    pub fn toast_columns(&self) -> Vec<(String, ToastCopy)> {
        self.columns
            .iter()
            .filter(|c| c.toast != ToastCopy::Never)
            .map(|c| (c.name.clone(), c.toast))
            .collect()
    }

    /// The statement that re-reads the row with `key`, or `None` when a key value
    /// cannot be written back as a literal.
    pub fn reread_sql(&self, key: &Row) -> Option<String> {
        let mut conds = Vec::with_capacity(self.key.len());
        for &i in &self.key {
            let col = &self.columns[i];
            let literal = match (key.get(&col.name)?, &col.kind) {
                (Value::String(s), ValueKind::Bytea) => {
                    format!("decode({}, 'base64')", quote_literal(s))
                }
                (Value::String(s), _) => format!("{}::{}", quote_literal(s), col.sql_type),
                (Value::Null, _) => return None,
                (other, _) => format!("{}::{}", quote_literal(&other.to_string()), col.sql_type),
            };
            conds.push(format!("{} = {literal}", quote_ident(&col.name)));
        }
        Some(format!(
            "COPY (SELECT {} FROM ONLY {} WHERE {}) TO STDOUT",
            self.column_list(),
            self.name.quoted(),
            conds.join(" AND ")
        ))
    }
}

/// An SQL string literal (standard_conforming_strings, PostgreSQL's default).
fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_schema_is_the_bridges() {
        use tidemark_core::wire::debezium::Modes;
        let format = ValueFormat::Debezium(Modes {
            schemas: true,
            ..Modes::default()
        });
        let kind = |oid| ValueKind::for_format(&format, oid, 0, -1, "");
        let mut table = sample();
        table.columns[0].kind = kind(20);
        table.columns[1].kind = kind(25);
        table.key = vec![1, 0];
        table.set_key_schema(&format, "app").unwrap();
        let key: serde_json::Value =
            serde_json::from_slice(table.key_schema.as_deref().unwrap()).unwrap();
        assert_eq!(
            key,
            json!({"type": "struct", "fields": [
                {"type": "string", "optional": false, "field": "name"},
                {"type": "int64", "optional": false, "field": "id"}],
                "optional": false, "name": "app.public.t.Key"})
        );
        table
            .set_key_schema(&ValueFormat::Debezium(Modes::default()), "app")
            .unwrap();
        assert!(table.key_schema.is_none());
    }

    /// `public.t (id int8 PK, name text, doc jsonb, tags text[])`.
    pub(crate) fn sample() -> TableInfo {
        let col = |name: &str, kind, sql_type: &str, toastable| Column {
            name: name.into(),
            kind,
            sql_type: sql_type.into(),
            toast: if toastable {
                ToastCopy::LongerThan(2)
            } else {
                ToastCopy::Never
            },
            has_octet_length: sql_type == "text",
        };
        TableInfo {
            name: TableName::parse("public.t").unwrap(),
            columns: vec![
                col("id", ValueKind::from_type(20, 0), "bigint", false),
                col("name", ValueKind::from_type(25, 0), "text", true),
                col("doc", ValueKind::from_type(3802, 0), "jsonb", true),
                col("tags", ValueKind::from_type(1009, 25), "text[]", true),
            ],
            key: vec![0],
            key_schema: None,
        }
    }

    #[test]
    fn decodes_copy_lines_like_the_stream() {
        let t = sample();
        let row = t
            .decode_copy_line(b"42\tA\\tda\\n\t{\"a\": [1, \"x\"]}\t{x,\"y z\",NULL}")
            .unwrap();
        assert_eq!(
            serde_json::Value::Object(row.clone()),
            json!({"id": 42, "name": "A\tda\n", "doc": {"a": [1, "x"]}, "tags": ["x", "y z", null]})
        );
        let nulls = t.decode_copy_line(b"1\t\\N\t\\N\t\\N").unwrap();
        assert_eq!(nulls["name"], Value::Null);
        assert!(t.decode_copy_line(b"1\tx").is_err());
        assert!(t.decode_copy_line(b"1\tx\t{}\t{}\textra").is_err());
        // A value the codec cannot read is its text, as in the bridge.
        assert_eq!(
            t.decode_copy_line(b"x\ty\t{}\t{}").unwrap()["id"],
            json!("x")
        );
        let toast: Vec<String> = t.toast_columns().into_iter().map(|c| c.0).collect();
        assert_eq!(toast, ["name", "doc", "tags"]);
    }

    #[test]
    fn bulk_copy_flags_values_stored_out_of_line() {
        let (sql, flagged) = sample().bulk_copy_sql("", true);
        assert_eq!(flagged, [1]);
        assert_eq!(
            sql,
            "COPY (SELECT \"id\", \"name\", \"doc\", \"tags\", \
             pg_column_size(\"name\") <= octet_length(\"name\") FROM ONLY \"public\".\"t\") TO STDOUT"
        );
        // A table without values out of line: no flags.
        let (sql, flagged) = sample().bulk_copy_sql(" WHERE true", false);
        assert!(flagged.is_empty());
        assert_eq!(
            sql,
            "COPY (SELECT \"id\", \"name\", \"doc\", \"tags\" FROM ONLY \"public\".\"t\" WHERE true) TO STDOUT"
        );
    }

    #[test]
    fn reread_sql_quotes_literals() {
        let mut t = sample();
        t.key = vec![0, 1];
        let key: Row = serde_json::from_value(json!({"id": 7, "name": "O'Neil"})).unwrap();
        assert_eq!(
            t.reread_sql(&key).unwrap(),
            "COPY (SELECT \"id\", \"name\", \"doc\", \"tags\" FROM ONLY \"public\".\"t\" \
             WHERE \"id\" = '7'::bigint AND \"name\" = 'O''Neil'::text) TO STDOUT"
        );
        let null_key: Row = serde_json::from_value(json!({"id": null, "name": "x"})).unwrap();
        assert!(t.reread_sql(&null_key).is_none());
    }
}
