//! `--value-schema`: every key and value as Kafka Connect's JsonConverter writes them
//! with `schemas.enable=true`, with the schemas Debezium's PostgreSQL connector
//! declares; the payloads are what the same settings write without it; and a cache
//! built for such a topic (unwrapping, and computing each loaded row's key with its
//! schema, as its partition depends on those bytes) ends equal to the table.

use std::time::Duration;

use serde_json::{json, Value};
use tidemark_core::wire::debezium::Modes;
use tidemark_core::wire::partitioner::partition_of;
use tidemark_core::wire::ValueFormat;

use crate::support::*;

const COLUMNS: &str = "id int8 PRIMARY KEY, n numeric(5,2), nv numeric, d date, ts timestamp,
    tz timestamptz, by bytea, arr int4[], j jsonb, p point, bo bool, nn int4 NOT NULL, txt text";

const VALUES: &str = "12.5, 12.345, '2024-01-02', '2024-01-02 03:04:05.678901',
    '2024-01-02 03:04:05.5+02', '\\x00fbff', '{1,2}', '{\"a\": 1}', '(1,2)', true, 7, 'x'";

/// The `after` field schemas Debezium declares for the columns above (default modes).
fn expected_columns() -> Value {
    json!([
        {"type": "int64", "optional": true, "field": "id"},
        {"type": "bytes", "name": "org.apache.kafka.connect.data.Decimal", "version": 1,
         "parameters": {"scale": "2", "connect.decimal.precision": "5"}, "optional": true, "field": "n"},
        {"type": "struct", "name": "io.debezium.data.VariableScaleDecimal", "version": 1,
         "fields": [{"type": "int32", "optional": false, "field": "scale"},
                    {"type": "bytes", "optional": false, "field": "value"}],
         "doc": "Variable scaled decimal", "optional": true, "field": "nv"},
        {"type": "int32", "name": "io.debezium.time.Date", "version": 1, "optional": true, "field": "d"},
        {"type": "int64", "name": "io.debezium.time.MicroTimestamp", "version": 1, "optional": true, "field": "ts"},
        {"type": "string", "name": "io.debezium.time.ZonedTimestamp", "version": 1, "optional": true, "field": "tz"},
        {"type": "bytes", "optional": true, "field": "by"},
        {"type": "array", "items": {"type": "int32", "optional": true}, "optional": true, "field": "arr"},
        {"type": "string", "name": "io.debezium.data.Json", "version": 1, "optional": true, "field": "j"},
        {"type": "struct", "name": "io.debezium.data.geometry.Point", "version": 1,
         "fields": [{"type": "double", "optional": false, "field": "x"},
                    {"type": "double", "optional": false, "field": "y"},
                    {"type": "bytes", "optional": true, "field": "wkb"},
                    {"type": "int32", "optional": true, "field": "srid"}],
         "doc": "Geometry (POINT)", "optional": true, "field": "p"},
        {"type": "boolean", "optional": true, "field": "bo"},
        // NOT NULL, but pgoutput does not say so: every column is optional.
        {"type": "int32", "optional": true, "field": "nn"},
        {"type": "string", "optional": true, "field": "txt"},
    ])
}

fn field_names(schema: &Value) -> Vec<String> {
    schema["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .map(|f| f["field"].as_str().expect("field").to_owned())
        .collect()
}

/// What a record says, for comparing two bridges: key, op, before, after (the rest
/// differs by bridge: prefix, write time, the snapshot's position).
fn gist(key: &Value, value: Option<&Value>) -> String {
    match value {
        None => format!("{key} tombstone"),
        Some(v) => format!("{key} {} {} {}", v["op"], v["before"], v["after"]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_schema_wraps_keys_and_values_as_connects_json_converter() {
    let pg = pg().await;
    let name = unique("vschema");
    let table = format!("{name}_t");
    pg.batch_execute(&format!(
        "CREATE TABLE {table} ({COLUMNS});
         INSERT INTO {table} VALUES (1, {VALUES});"
    ))
    .await
    .unwrap();

    let wrapped_format = ValueFormat::Debezium(Modes {
        schemas: true,
        ..Modes::default()
    });
    let plain_format = ValueFormat::Debezium(Modes::default());
    let mut started = Vec::new();
    for (suffix, schema) in [("s", true), ("p", false)] {
        let mut args = BridgeArgs::new(&format!("{name}_{suffix}"), &[&format!("public.{table}")]);
        args.partitions = 3;
        args.extra = vec!["--value-format".into(), "debezium".into()];
        if schema {
            args.extra.push("--value-schema".into());
        }
        started.push(start_bridge_with(args).await);
    }
    let (wrapped_args, plain_args) = (&started[0].1, &started[1].1);
    // Row 1 reaches the caches through COPY, the others through the stream.
    let cache = wrapped_args
        .row_cache(&table)
        .value_format(plain_format)
        .value_schema(true)
        .build()
        .await
        .expect("cache of the wrapped topic");
    let plain_cache = plain_args
        .row_cache(&table)
        .value_format(plain_format)
        .build()
        .await
        .expect("cache of the plain topic");

    pg.batch_execute(&format!(
        "INSERT INTO {table} VALUES (2, {VALUES});
         INSERT INTO {table} VALUES (3, {VALUES});
         INSERT INTO {table} VALUES (4, {VALUES});
         UPDATE {table} SET txt = 'y', n = NULL WHERE id = 2;
         UPDATE {table} SET id = 5 WHERE id = 3;
         DELETE FROM {table} WHERE id = 4;"
    ))
    .await
    .unwrap();

    // r(1), c(2), c(3), c(4), u(2), d(3)+tombstone, c(5), d(4)+tombstone (the
    // helpers leave out the end-of-snapshot markers).
    let want = 10;
    let topic = wrapped_args.topic(&format!("public.{table}"));
    let recs = wait_for_records(&wrapped_args.kafka, &topic, want, Duration::from_secs(90)).await;
    let plain_topic = plain_args.topic(&format!("public.{table}"));
    let plain = wait_for_records(
        &plain_args.kafka,
        &plain_topic,
        want,
        Duration::from_secs(90),
    )
    .await;
    let rows: Vec<_> = recs
        .iter()
        .filter(|r| r.key.get("payload").is_some_and(|k| k.get("id").is_some()))
        .collect();
    assert_eq!(
        rows.len(),
        want,
        "every row record's key is wrapped: {recs:?}"
    );

    let base = format!("{}.public.{table}", wrapped_args.prefix);
    let key_schema = json!({"type": "struct",
        "fields": [{"type": "int64", "optional": false, "field": "id"}],
        "optional": false, "name": format!("{base}.Key")});
    let mut ops = Vec::new();
    for rec in &rows {
        assert_eq!(rec.key["schema"], key_schema, "key schema");
        assert_eq!(
            rec.key
                .as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>()),
            Some(vec!["schema".to_string(), "payload".to_string()])
        );
        // The partition is the hash of the key's bytes, schema included.
        let bytes = serde_json::to_vec(&rec.key).unwrap();
        assert_eq!(
            rec.partition,
            partition_of(&bytes, 3),
            "partition of {}",
            rec.key
        );
        assert_eq!(
            rec.headers
                .iter()
                .find(|(k, _)| k == "tidemark.format")
                .map(|(_, v)| v.as_str()),
            Some(wrapped_format.describe().as_str())
        );
        let Some(value) = &rec.value else {
            ops.push("tombstone".to_string());
            continue;
        };
        assert_eq!(
            value
                .as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>()),
            Some(vec!["schema".to_string(), "payload".to_string()])
        );
        let schema = &value["schema"];
        assert_eq!(schema["type"], "struct");
        assert_eq!(schema["name"], json!(format!("{base}.Envelope")));
        assert_eq!(schema["optional"], false);
        assert_eq!(
            field_names(schema),
            [
                "before",
                "after",
                "source",
                "op",
                "ts_ms",
                "ts_us",
                "ts_ns",
                "transaction",
                "unchanged_toast"
            ]
        );
        for (i, f) in ["before", "after"].iter().enumerate() {
            let row = &schema["fields"][i];
            assert_eq!(row["name"], json!(format!("{base}.Value")), "{f}");
            assert_eq!(row["optional"], true, "{f}");
            assert_eq!(row["type"], "struct", "{f}");
            assert_eq!(row["fields"], expected_columns(), "{f}");
        }
        let source = &schema["fields"][2];
        assert_eq!(source["name"], "io.debezium.connector.postgresql.Source");
        assert_eq!(source["optional"], false);
        let source_fields = field_names(source);
        for f in [
            "version",
            "connector",
            "name",
            "ts_ms",
            "snapshot",
            "db",
            "sequence",
            "ts_us",
            "ts_ns",
            "schema",
            "table",
            "txId",
            "lsn",
            "commit_lsn",
            "seq",
        ] {
            assert!(source_fields.iter().any(|s| s == f), "source.{f}");
        }
        // Every field the payload's source has is declared.
        for f in value["payload"]["source"]
            .as_object()
            .expect("source")
            .keys()
        {
            assert!(source_fields.contains(f), "source.{f} is declared");
        }
        assert_eq!(
            schema["fields"][3],
            json!({"type": "string", "optional": false, "field": "op"})
        );
        ops.push(
            value["payload"]["op"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    for op in ["r", "c", "u", "d", "tombstone"] {
        assert!(ops.iter().any(|o| o == op), "an {op} record among {ops:?}");
    }

    // The payloads are what the same settings write without --value-schema.
    let mut with: Vec<String> = rows
        .iter()
        .map(|r| gist(&r.key["payload"], r.value.as_ref().map(|v| &v["payload"])))
        .collect();
    let mut without: Vec<String> = plain
        .iter()
        .filter(|r| r.key.get("id").is_some())
        .map(|r| gist(&r.key, r.value.as_ref()))
        .collect();
    with.sort();
    without.sort();
    assert_eq!(with, without);
    // Byte for byte too, for the fields both bridges write alike.
    let create = |recs: &[&Rec]| -> Value {
        recs.iter()
            .find_map(|r| {
                let v = r.value.as_ref()?;
                let v = v.get("payload").unwrap_or(v);
                (v["op"] == "c" && v["after"]["id"] == 2).then(|| v.clone())
            })
            .expect("create of row 2")
    };
    let plain_refs: Vec<&Rec> = plain.iter().collect();
    let (a, b) = (create(&rows), create(&plain_refs));
    assert_eq!(
        serde_json::to_string(&a["after"]).unwrap(),
        serde_json::to_string(&b["after"]).unwrap()
    );
    assert_eq!(a["source"]["lsn"], b["source"]["lsn"]);
    assert_eq!(a["source"]["txId"], b["source"]["txId"]);

    // The cache ends equal to the table (and to the plain topic's cache).
    let ids: Vec<i64> = pg
        .query(&format!("SELECT id FROM {table} ORDER BY id"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, [1, 2, 5]);
    let got = wait_for(
        Duration::from_secs(60),
        "the cache to hold rows 1, 2, 5",
        || {
            let rows = rows_by_id(&cache);
            let plain_rows = rows_by_id(&plain_cache);
            let done = rows.keys().copied().eq(ids.iter().copied()) && rows == plain_rows;
            async move { done.then_some(rows) }
        },
    )
    .await;
    // Row 1 came through COPY, row 5 through the stream, with the same values.
    let (mut copied, mut streamed) = (got[&1].clone(), got[&5].clone());
    copied.remove("id");
    streamed.remove("id");
    assert_eq!(copied, streamed, "COPY and stream agree");
    assert_eq!(got[&2]["txt"], "y");
    assert!(got[&2]["n"].is_null());

    // A cache not told about the wrapping refuses the topic, naming the fix.
    let refused = tokio::time::timeout(
        Duration::from_secs(60),
        wrapped_args
            .row_cache(&table)
            .value_format(plain_format)
            .build(),
    )
    .await
    .expect("the mismatch is reported in time");
    let error = match refused {
        Ok(_) => panic!("a cache without value_schema refuses the topic"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("value_schema"), "{error}");

    cache.shutdown().await;
    plain_cache.shutdown().await;
    for (mut bridge, _) in started {
        bridge.sigterm(Duration::from_secs(30));
    }
}
