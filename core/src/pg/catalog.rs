//! What both halves ask PostgreSQL's catalog, asked the same way: a table's
//! primary-key columns in key order, and which types are arrays of what.

/// SQL that lists a table's primary-key columns in key order, for the table OID `$1`.
/// Keys are JSON objects in this order on both paths (`crate::wire::key`), so equal keys are equal bytes
/// (which partitioning and compaction rely on).
pub const PRIMARY_KEY_SQL: &str = "SELECT a.attname::text FROM pg_catalog.pg_index i \
     JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
     WHERE i.indrelid = $1::oid AND i.indisprimary \
     ORDER BY array_position(i.indkey::int2[], a.attnum)";

/// SQL that resolves type OIDs (`$1::oid[]`) to `(oid, array element oid or 0)`.
pub const TYPE_INFO_SQL: &str =
    "SELECT oid, CASE WHEN typcategory = 'A' THEN typelem ELSE 0::oid END \
     FROM pg_catalog.pg_type WHERE oid = ANY($1::oid[])";
