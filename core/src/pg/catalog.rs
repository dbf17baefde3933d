//! What both halves ask PostgreSQL's catalog, asked the same way: a table's
//! primary-key columns in key order, and which types are arrays of what.

/// SQL that lists a table's primary-key columns in key order, for the table OID `$1`.
/// Keys are JSON objects in this order on both paths (`crate::wire::key`), so equal keys are equal bytes
/// (which partitioning and compaction rely on).
pub const PRIMARY_KEY_SQL: &str = "SELECT a.attname::text FROM pg_catalog.pg_index i \
     JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
     WHERE i.indrelid = $1::oid AND i.indisprimary \
     ORDER BY array_position(i.indkey::int2[], a.attnum)";

/// SQL that resolves type OIDs (`$1::oid[]`) to `(oid, base type oid, array element
/// oid or 0, name of the element type for an array, else of the base type)`. Domains are followed to their base type, for the type itself and for an
/// array's element (`CREATE DOMAIN d AS int4` is `int4`; `d[]` is an array of
/// `int4`), so a value reads as its base type. `int2vector` and `oidvector` are in
/// the array category but print as space-separated lists, so they are not arrays here.
pub const TYPE_INFO_SQL: &str = "WITH RECURSIVE walk(root, is_elem, cur) AS ( \
         SELECT oid, false, oid FROM pg_catalog.pg_type WHERE oid = ANY($1::oid[]) \
       UNION ALL \
         SELECT w.root, w.is_elem OR t.typtype <> 'd', \
                CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.typelem END \
         FROM walk w JOIN pg_catalog.pg_type t ON t.oid = w.cur \
         WHERE t.typtype = 'd' OR (NOT w.is_elem AND t.typcategory = 'A' \
               AND t.typelem <> 0 AND t.oid NOT IN (22, 30))) \
     , info(root, base, elem) AS ( \
     SELECT w.root, \
            max(w.cur) FILTER (WHERE NOT w.is_elem AND t.typtype <> 'd'), \
            coalesce(max(w.cur) FILTER (WHERE w.is_elem AND t.typtype <> 'd'), 0::oid) \
     FROM walk w JOIN pg_catalog.pg_type t ON t.oid = w.cur GROUP BY w.root) \
     SELECT i.root, i.base, i.elem, n.typname::text FROM info i \
     LEFT JOIN pg_catalog.pg_type n \
       ON n.oid = CASE WHEN i.elem <> 0 THEN i.elem ELSE coalesce(i.base, i.root) END";
