//! `--provide-transaction-metadata`: each transaction that wrote change records gets a
//! BEGIN and an END event on `<prefix>.transaction`, and every change record carries
//! the transaction's id and its place in it, as Debezium's `provide.transaction.metadata`
//! writes them. Checked the way a consumer that assembles whole transactions uses them:
//! the END's counts equal the change records found on the table topics with that id,
//! per table, and the orders number them without gaps. Once with tidemark's format at
//! least once, and once in Debezium's format with `--value-schema` and
//! `--exactly-once`. A cache following such records ends equal to the table.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

/// The transactions below, in commit order: `(event_count, [(table suffix, count)])`.
/// A primary-key change is two change records (delete and create; its tombstone is
/// none), a TRUNCATE one per partition (3), and a transaction that touched only a
/// table the bridge does not follow has no events.
fn expected() -> Vec<(u64, Vec<(&'static str, u64)>)> {
    vec![
        (4, vec![("a", 3), ("b", 1)]),
        (2, vec![("a", 2)]),
        (1, vec![("b", 1)]),
        (3, vec![("a", 3)]),
        (50, vec![("b", 50)]),
    ]
}

/// The payload of a record key or value (unwrapped with `--value-schema`).
fn payload(v: &Value, wrapped: bool) -> &Value {
    if wrapped {
        &v["payload"]
    } else {
        v
    }
}

/// Checks one bridge's topics against [`expected`].
fn check(args: &BridgeArgs, tables: &[String; 2], wrapped: bool) {
    let events = read_topic(&args.kafka, &format!("{}.transaction", args.prefix));
    assert_eq!(events.len(), 2 * expected().len(), "{events:#?}");
    // Change records by transaction id: (table, total_order, data_collection_order).
    let mut changes: BTreeMap<String, Vec<(String, u64, u64)>> = BTreeMap::new();
    let mut ids_of_source: BTreeMap<String, i64> = BTreeMap::new();
    for table in tables {
        for rec in read_topic(&args.kafka, &args.topic(&format!("public.{table}"))) {
            let Some(value) = rec.value.as_ref().map(|v| payload(v, wrapped)) else {
                continue;
            };
            let op = value["op"].as_str().expect("op");
            let Some(block) = value.get("transaction").filter(|b| !b.is_null()) else {
                assert_eq!(op, "r", "only snapshot reads have no transaction: {value}");
                continue;
            };
            let source = &value["source"];
            let id = block["id"].as_str().expect("id").to_owned();
            assert_eq!(
                id,
                format!("{}:{}", source["txId"], source["commit_lsn"]),
                "the id is txId:commit_lsn"
            );
            ids_of_source.insert(id.clone(), source["ts_ms"].as_i64().expect("ts_ms"));
            let order = |f: &str| block[f].as_u64().unwrap_or_else(|| panic!("{f}: {block}"));
            changes.entry(id).or_default().push((
                format!("public.{table}"),
                order("total_order"),
                order("data_collection_order"),
            ));
        }
    }
    let mut ended = Vec::new();
    for pair in events.chunks(2) {
        let key = payload(&pair[0].key, wrapped);
        let (begin, end) = (
            payload(pair[0].value.as_ref().expect("BEGIN"), wrapped),
            payload(pair[1].value.as_ref().expect("END"), wrapped),
        );
        assert_eq!(begin["status"], "BEGIN", "events alternate: {pair:#?}");
        assert_eq!(end["status"], "END", "events alternate: {pair:#?}");
        let id = begin["id"].as_str().expect("id").to_owned();
        assert_eq!(end["id"], begin["id"]);
        assert_eq!(key, &json!({"id": id}));
        assert_eq!(
            (&begin["event_count"], &begin["data_collections"]),
            (&Value::Null, &Value::Null)
        );
        assert_eq!(begin["ts_ms"].as_i64(), ids_of_source.get(&id).copied());
        let records = changes
            .remove(&id)
            .unwrap_or_else(|| panic!("no change record of transaction {id}"));
        // total_order numbers the transaction's records 1..n, data_collection_order
        // each table's 1..k.
        let total: BTreeSet<u64> = records.iter().map(|r| r.1).collect();
        assert_eq!(total, (1..=records.len() as u64).collect(), "{records:?}");
        let mut per_table: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
        for (table, _, in_table) in &records {
            per_table
                .entry(table.clone())
                .or_default()
                .insert(*in_table);
        }
        for (table, orders) in &per_table {
            assert_eq!(orders, &(1..=orders.len() as u64).collect(), "{table}");
        }
        // The END counts what the table topics hold.
        assert_eq!(end["event_count"].as_u64(), Some(records.len() as u64));
        let counted: BTreeMap<String, u64> = end["data_collections"]
            .as_array()
            .expect("data_collections")
            .iter()
            .map(|c| {
                (
                    c["data_collection"].as_str().expect("name").to_owned(),
                    c["event_count"].as_u64().expect("count"),
                )
            })
            .collect();
        let found: BTreeMap<String, u64> = per_table
            .iter()
            .map(|(t, o)| (t.clone(), o.len() as u64))
            .collect();
        assert_eq!(counted, found, "transaction {id}");
        ended.push((
            records.len() as u64,
            end["data_collections"]
                .as_array()
                .expect("data_collections")
                .iter()
                .map(|c| c["data_collection"].as_str().expect("name").to_owned())
                .collect::<Vec<_>>(),
            counted,
        ));
    }
    assert!(
        changes.is_empty(),
        "change records of transactions without events: {changes:?}"
    );
    let want: Vec<_> = expected()
        .into_iter()
        .map(|(n, collections)| {
            let name = |suffix: &str| {
                let table = if suffix == "a" {
                    &tables[0]
                } else {
                    &tables[1]
                };
                format!("public.{table}")
            };
            (
                n,
                collections.iter().map(|(s, _)| name(s)).collect::<Vec<_>>(),
                collections.iter().map(|(s, c)| (name(s), *c)).collect(),
            )
        })
        .collect();
    assert_eq!(ended, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_events_count_every_change_record_of_their_transaction() {
    let pg = pg().await;
    let name = unique("txmeta");
    let tables = [format!("{name}_a"), format!("{name}_b")];
    let (a, b, other) = (&tables[0], &tables[1], format!("{name}_c"));
    for t in [a, b, &other] {
        pg.batch_execute(&format!(
            "CREATE TABLE {t} (id int PRIMARY KEY, v text NOT NULL)"
        ))
        .await
        .unwrap();
    }
    // Read by the initial snapshot: op r, no transaction.
    pg.batch_execute(&format!("INSERT INTO {a} VALUES (0, 'snapshot')"))
        .await
        .unwrap();
    let followed = [format!("public.{a}"), format!("public.{b}")];
    let followed: Vec<&str> = followed.iter().map(String::as_str).collect();
    let mut started = Vec::new();
    for (suffix, extra) in [
        ("t", vec!["--provide-transaction-metadata"]),
        (
            "d",
            vec![
                "--provide-transaction-metadata",
                "--value-format",
                "debezium",
                "--value-schema",
                "--exactly-once",
            ],
        ),
    ] {
        let mut args = BridgeArgs::new(&format!("{name}_{suffix}"), &followed);
        args.partitions = 3;
        args.extra = extra.into_iter().map(String::from).collect();
        started.push(start_bridge_with(args).await);
    }

    // A cache follows records that carry the transaction block.
    let cache = started[0].1.row_cache(b).build().await.expect("cache of b");

    // One transaction each (the statements of one simple query would share an
    // implicit transaction).
    for sql in [
        format!(
            "BEGIN;
             INSERT INTO {a} VALUES (1, 'x'), (2, 'y');
             INSERT INTO {b} VALUES (1, 'x');
             UPDATE {a} SET v = 'z' WHERE id = 2;
             COMMIT;"
        ),
        format!("INSERT INTO {other} VALUES (1, 'not followed')"),
        format!("UPDATE {a} SET id = 101 WHERE id = 1"),
        format!("DELETE FROM {b} WHERE id = 1"),
        format!("TRUNCATE {a}"),
        format!("INSERT INTO {b} SELECT g, 'copy' FROM generate_series(10, 59) g"),
    ] {
        pg.batch_execute(&sql).await.unwrap();
    }

    for (bridge, args) in &started {
        wait_for_records(
            &args.kafka,
            &format!("{}.transaction", args.prefix),
            2 * expected().len(),
            Duration::from_secs(90),
        )
        .await;
        let wrapped = args.extra.iter().any(|a| a == "--value-schema");
        check(args, &tables, wrapped);
        if wrapped {
            let events = read_topic(&args.kafka, &format!("{}.transaction", args.prefix));
            assert_eq!(
                events[0].key["schema"]["name"],
                "io.debezium.connector.common.TransactionMetadataKey"
            );
            assert_eq!(
                events[1].value.as_ref().expect("END")["schema"]["name"],
                "io.debezium.connector.common.TransactionMetadataValue"
            );
            let change = read_topic(&args.kafka, &args.topic(&format!("public.{b}")))
                .into_iter()
                .find_map(|r| r.value)
                .expect("a change of b");
            let fields = change["schema"]["fields"].as_array().expect("fields");
            let block = fields
                .iter()
                .find(|f| f["field"] == "transaction")
                .expect("the envelope schema has a transaction field");
            assert_eq!(block["name"], "event.block");
        }
        let log = bridge.log_text();
        assert!(!log.contains("ERROR"), "{log}");
    }
    let want = table_rows(&pg, b).await;
    wait_for_rows(&cache, &want, Duration::from_secs(60)).await;
}
