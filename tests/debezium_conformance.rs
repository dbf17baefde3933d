//! `--value-format debezium`: the topic reads as Debezium's PostgreSQL connector
//! writes it (JsonConverter, `schemas.enable=false`), per mode, with the values
//! Debezium documents for each type; and a cache following such a topic holds the
//! same values for rows from `COPY` and from the stream.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use tidemark_core::wire::debezium::{BinaryMode, DecimalMode, Modes, TimePrecisionMode};
use tidemark_core::wire::{Row, ValueFormat};

use crate::support::*;

const COLUMNS: &str = "id int8 PRIMARY KEY, n numeric(5,2), nv numeric, m money, d date,
    t3 time(3), t6 time, ts3 timestamp(3), ts timestamp, tz timestamptz, ttz timetz,
    iv interval, j jsonb, x xml, u uuid, e tidemark_dbz_mood, by bytea, b1 bit(1), b3 bit(3),
    vb varbit, p point, ip inet, mac macaddr, arr int4[], narr numeric(5,2)[], f8 float8,
    bo bool, txt text";

const VALUES: &str = "1.5, 12.345, '1.50', '2024-01-02', '01:02:03.456', '01:02:03.456789',
    '2024-01-02 03:04:05.678', '2024-01-02 03:04:05.678901', '2024-01-02 03:04:05.5+02',
    '03:04:05.25+02', '1 day 01:00:00', '{\"a\": 1}', '<a/>',
    'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'b', '\\x00fbff', B'1', B'101', B'100000001',
    '(1,2)', '10.0.0.1/8', '08:00:2b:01:02:03', '{1,2}', '{1.5,2}', 1.25, true, 'x'";

/// The values Debezium documents for the row above, with its default modes
/// (precise, adaptive, bytes).
fn expected_default() -> Value {
    json!({
        "n": "AJY=",
        "nv": {"scale": 3, "value": "MDk="},
        "m": "AJY=",
        "d": 19724,
        "t3": 3_723_456,
        "t6": 3_723_456_789i64,
        "ts3": 1_704_164_645_678i64,
        "ts": 1_704_164_645_678_901i64,
        "tz": "2024-01-02T01:04:05.500000Z",
        "ttz": "01:04:05.25Z",
        "iv": 90_000_000_000i64,
        "j": "{\"a\": 1}",
        "x": "<a/>",
        "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "e": "b",
        "by": "APv/",
        "b1": true,
        "b3": "BQ==",
        "vb": "AQE=",
        "p": {"x": 1.0, "y": 2.0, "wkb": "AQEAAAAAAAAAAADwPwAAAAAAAABA", "srid": null},
        "ip": "10.0.0.1/8",
        "mac": "08:00:2b:01:02:03",
        "arr": [1, 2],
        "narr": ["AJY=", "AMg="],
        "f8": 1.25,
        "bo": true,
        "txt": "x",
    })
}

/// The columns that change with string / connect / hex.
fn expected_string_connect_hex() -> Value {
    json!({
        "n": "1.50", "nv": "12.345", "m": "1.50", "d": 19724, "t3": 3_723_456,
        "t6": 3_723_456, "ts3": 1_704_164_645_678i64, "ts": 1_704_164_645_678i64,
        "by": "00fbff", "narr": ["1.50", "2.00"],
    })
}

/// The columns that change with double / adaptive_time_microseconds / base64-url-safe.
fn expected_double_micros_urlsafe() -> Value {
    json!({
        "n": 1.5, "nv": 12.345, "m": 1.5, "t3": 3_723_456_000i64, "t6": 3_723_456_789i64,
        "ts3": 1_704_164_645_678i64, "by": "APv_", "narr": [1.5, 2.0],
    })
}

fn modes(decimal: DecimalMode, time: TimePrecisionMode, binary: BinaryMode) -> Modes {
    Modes {
        decimal,
        time,
        binary,
        schemas: false,
    }
}

fn flags(m: &Modes) -> Vec<String> {
    [
        "--value-format",
        "debezium",
        "--decimal-handling-mode",
        m.decimal.name(),
        "--time-precision-mode",
        m.time.name(),
        "--binary-handling-mode",
        m.binary.name(),
    ]
    .map(String::from)
    .to_vec()
}

fn check_columns(got: &Value, want: &Value, what: &str) {
    for (column, value) in want.as_object().expect("object") {
        assert_eq!(&got[column], value, "{what}, column {column}");
    }
}

fn header<'a>(rec: &'a Rec, name: &str) -> Option<&'a str> {
    rec.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_format_matches_debeziums_documented_values_per_mode() {
    let pg = pg().await;
    let name = unique("dbz");
    let table = format!("{name}_t");
    pg.batch_execute(&format!(
        "DO $$ BEGIN CREATE TYPE tidemark_dbz_mood AS ENUM ('a', 'b');
         EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         CREATE TABLE {table} ({COLUMNS});
         INSERT INTO {table} VALUES (1, {VALUES});"
    ))
    .await
    .unwrap();

    let runs = [
        (
            modes(
                DecimalMode::Precise,
                TimePrecisionMode::Adaptive,
                BinaryMode::Bytes,
            ),
            expected_default(),
            "per-partition",
        ),
        (
            modes(
                DecimalMode::String,
                TimePrecisionMode::Connect,
                BinaryMode::Hex,
            ),
            expected_string_connect_hex(),
            "skip",
        ),
        (
            modes(
                DecimalMode::Double,
                TimePrecisionMode::AdaptiveTimeMicroseconds,
                BinaryMode::Base64UrlSafe,
            ),
            expected_double_micros_urlsafe(),
            "per-partition",
        ),
    ];
    let mut bridges = Vec::new();
    let mut caches = Vec::new();
    for (i, (m, _, truncate)) in runs.iter().enumerate() {
        let mut args = BridgeArgs::new(&format!("{name}_{i}"), &[&format!("public.{table}")]);
        args.extra = flags(m);
        args.extra
            .extend(["--truncate".into(), truncate.to_string()]);
        let (bridge, args) = start_bridge_with(args).await;
        // Row 1 reaches the cache through COPY, the others through the stream.
        let cache = args
            .row_cache(&table)
            .value_format(ValueFormat::Debezium(*m))
            .build()
            .await
            .expect("cache");
        bridges.push((bridge, args));
        caches.push(cache);
    }

    pg.batch_execute(&format!(
        "INSERT INTO {table} VALUES (2, {VALUES});
         UPDATE {table} SET txt = 'y' WHERE id = 2;
         UPDATE {table} SET id = 3 WHERE id = 2;
         INSERT INTO {table} VALUES (4, {VALUES});
         DELETE FROM {table} WHERE id = 4;"
    ))
    .await
    .unwrap();

    for (i, (m, want, _)) in runs.iter().enumerate() {
        let (_, args) = &bridges[i];
        let topic = args.topic(&format!("public.{table}"));
        // c(2), u(2), d(2)+tombstone, c(3), c(4), d(4)+tombstone.
        let recs = wait_for_records(&args.kafka, &topic, 8, Duration::from_secs(90)).await;
        let what = format!("mode {}", ValueFormat::Debezium(*m).describe());
        for rec in &recs {
            assert_eq!(
                header(rec, "tidemark.format"),
                Some(ValueFormat::Debezium(*m).describe().as_str()),
                "{what}: every record names its format"
            );
        }
        let create = recs
            .iter()
            .find(|r| r.key == json!({"id": 2}) && r.value.as_ref().is_some_and(|v| v["op"] == "c"))
            .and_then(|r| r.value.clone())
            .expect("create of row 2");
        check_columns(&create["after"], want, &what);
        // Row 1 was there before the slot: the initial snapshot wrote it as op r, with
        // the values the stream writes and Debezium's snapshot envelope.
        let read = recs
            .iter()
            .find(|r| r.key == json!({"id": 1}))
            .and_then(|r| r.value.clone())
            .expect("the r record of row 1");
        assert_eq!(read["op"], "r", "{what}");
        assert!(read["before"].is_null(), "{what}: before of op r");
        check_columns(&read["after"], want, &format!("{what}, op r"));
        assert!(
            [
                "first",
                "true",
                "last",
                "first_in_data_collection",
                "last_in_data_collection"
            ]
            .contains(&read["source"]["snapshot"].as_str().unwrap_or_default()),
            "{what}: source.snapshot {}",
            read["source"]["snapshot"]
        );
        assert_eq!(read["source"]["name"], json!(args.prefix));
        // Debezium's envelope fields.
        let source = &create["source"];
        assert_eq!(source["name"], json!(args.prefix), "{what}: source.name");
        assert_eq!(source["version"], json!(env!("CARGO_PKG_VERSION")));
        let sequence: Vec<Value> =
            serde_json::from_str(source["sequence"].as_str().expect("sequence")).unwrap();
        assert_eq!(sequence.len(), 2, "{what}: sequence");
        assert_eq!(
            sequence[1],
            json!(source["lsn"].as_u64().unwrap().to_string())
        );
        assert!(create["ts_us"].is_i64() && create["ts_ns"].is_i64() && source["ts_us"].is_i64());
        assert_eq!(
            source["ts_us"].as_i64().unwrap() / 1000,
            source["ts_ms"].as_i64().unwrap()
        );

        // The key change: delete of {id:2} names the new key, create of {id:3} the old.
        let delete2 = recs
            .iter()
            .find(|r| r.key == json!({"id": 2}) && r.value.as_ref().is_some_and(|v| v["op"] == "d"))
            .expect("delete of row 2");
        let new_key: Value =
            serde_json::from_str(header(delete2, "__debezium.newkey").expect("newkey")).unwrap();
        assert_eq!(new_key, json!({"id": 3}));
        let create3 = recs
            .iter()
            .find(|r| r.key == json!({"id": 3}))
            .expect("create of row 3");
        let old_key: Value =
            serde_json::from_str(header(create3, "__debezium.oldkey").expect("oldkey")).unwrap();
        assert_eq!(old_key, json!({"id": 2}));
        // Deletes are followed by tombstones.
        for key in [json!({"id": 2}), json!({"id": 4})] {
            let at = recs
                .iter()
                .position(|r| r.key == key && r.value.as_ref().is_some_and(|v| v["op"] == "d"))
                .expect("delete");
            assert!(
                recs[at + 1].key == key && recs[at + 1].value.is_none(),
                "{what}: a tombstone follows the delete of {key}"
            );
        }
    }

    // The caches: row 1 from COPY and row 3 from the stream hold the same values.
    for (i, cache) in caches.iter().enumerate() {
        let rows: BTreeMap<i64, Row> = wait_for(
            Duration::from_secs(60),
            "the cache to hold rows 1 and 3 and not 2 or 4",
            || {
                let rows: BTreeMap<i64, Row> = rows_by_id(cache);
                let done = rows.len() == 2 && rows.contains_key(&1) && rows.contains_key(&3);
                async move { done.then_some(rows) }
            },
        )
        .await;
        let (mut copied, mut streamed) = (rows[&1].clone(), rows[&3].clone());
        copied.remove("id");
        streamed.remove("id");
        streamed.insert("txt".into(), json!("x"));
        assert_eq!(copied, streamed, "run {i}: COPY and stream agree");
        check_columns(
            &Value::Object(copied),
            &runs[i].1,
            &format!("run {i}, cache"),
        );
    }

    // A cache built for tidemark's format refuses the topic, naming the fix.
    let refused = tokio::time::timeout(
        Duration::from_secs(60),
        bridges[0].1.row_cache(&table).build(),
    )
    .await
    .expect("the mismatch is reported in time");
    let error = match refused {
        Ok(_) => panic!("a tidemark-format cache refuses the topic"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("value_format") && error.contains("debezium"),
        "{error}"
    );

    // TRUNCATE: one "t" record per partition, or nothing with --truncate skip.
    pg.batch_execute(&format!("TRUNCATE {table}"))
        .await
        .unwrap();
    let topic0 = bridges[0].1.topic(&format!("public.{table}"));
    // The op r record of row 1, the 8 changes, and the truncate.
    let recs = wait_for_records(&bridges[0].1.kafka, &topic0, 10, Duration::from_secs(60)).await;
    assert!(recs
        .iter()
        .any(|r| r.value.as_ref().is_some_and(|v| v["op"] == "t")));
    let skip = &bridges[1].0;
    skip.wait_for_log("TRUNCATE skipped", Duration::from_secs(60))
        .await;
    let topic1 = bridges[1].1.topic(&format!("public.{table}"));
    let recs = read_topic(&bridges[1].1.kafka, &topic1);
    assert!(!recs
        .iter()
        .any(|r| r.value.as_ref().is_some_and(|v| v["op"] == "t")));
    assert!(
        skip.log_text().contains("--truncate skip"),
        "the startup warning"
    );

    for cache in caches {
        cache.shutdown().await;
    }
    for (mut bridge, _) in bridges {
        bridge.sigterm(Duration::from_secs(30));
    }
}
