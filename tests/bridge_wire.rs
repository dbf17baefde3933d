//! The bridge writes the documented envelopes (`docs/design.md`, the wire format): keys, ops,
//! before/after, every codec type, tombstones, truncates, commit time, xid and LSNs,
//! one topic per table, transaction order kept.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_becomes_the_documented_envelope() {
    let pg = pg().await;
    let name = unique("wire");
    let (t1, t2) = (format!("{name}_all"), format!("{name}_pair"));
    pg.batch_execute(&format!(
        "DO $$ BEGIN CREATE TYPE tidemark_mood AS ENUM ('sad', 'happy'); EXCEPTION WHEN duplicate_object THEN NULL; END $$;
         CREATE TABLE {t1} (id int8 PRIMARY KEY, b bool, i2 int2, i4 int4, o oid, f4 float4, f8 float8,
             n numeric, j json, jb jsonb, by bytea, tz timestamptz, ts timestamp, d date, tm time,
             ia int4[], ta text[], u uuid, tx text, e tidemark_mood, ip inet, nul text);
         CREATE TABLE {t2} (id int4, region text, val text, PRIMARY KEY (region, id));"
    ))
    .await
    .unwrap();
    let (mut bridge, args) =
        start_bridge(&name, &[&format!("public.{t1}"), &format!("public.{t2}")]).await;

    // One transaction with three changes, bracketed by server clock and WAL readings.
    let t0: i64 = pg
        .query_one(
            "SELECT (extract(epoch from clock_timestamp()) * 1000)::int8",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    pg.batch_execute("BEGIN").await.unwrap();
    let xid: i64 = pg
        .query_one("SELECT pg_current_xact_id()::text::int8", &[])
        .await
        .unwrap()
        .get(0);
    pg.batch_execute(&format!(
        r#"INSERT INTO {t1} VALUES (1, true, -2, 2147483647, 4000000000, 1.5, 'NaN', 10.50, '{{"b":1,"a":2}}',
              '{{"x":[1,2]}}', '\x0001ff', '2026-01-02 03:04:05.678+02', '2026-01-02 03:04:05', '2026-01-02',
              '03:04:05', '{{1,NULL,3}}', '{{"a b",c}}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', E'tab\there',
              'happy', '10.0.0.1/8', NULL);
           INSERT INTO {t1} (id, tx) VALUES (2, 'second');
           UPDATE {t1} SET f8 = '-Infinity', tx = 'changed' WHERE id = 1;"#
    ))
    .await
    .unwrap();
    let lsn_before_commit = current_lsn(&pg).await;
    pg.batch_execute("COMMIT").await.unwrap();
    let lsn_after_commit = current_lsn(&pg).await;
    let t_after: i64 = pg
        .query_one(
            "SELECT (extract(epoch from clock_timestamp()) * 1000)::int8",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    pg.batch_execute(&format!(
        "DELETE FROM {t1} WHERE id = 2;
         INSERT INTO {t2} VALUES (7, 'eu', 'x');
         UPDATE {t2} SET id = 8 WHERE id = 7;
         TRUNCATE {t1};"
    ))
    .await
    .unwrap();

    let recs = wait_for_records(
        &kafka(),
        &args.topic(&format!("public.{t1}")),
        6,
        Duration::from_secs(60),
    )
    .await;
    let ops: Vec<Value> = recs
        .iter()
        .map(|r| r.value.as_ref().map_or(Value::Null, |v| v["op"].clone()))
        .collect();
    assert_eq!(
        ops,
        vec![
            json!("c"),
            json!("c"),
            json!("u"),
            json!("d"),
            Value::Null,
            json!("t")
        ],
        "{recs:#?}"
    );
    let keys: Vec<&Value> = recs.iter().map(|r| &r.key).collect();
    assert_eq!(
        keys,
        vec![
            &json!({"id": 1}),
            &json!({"id": 2}),
            &json!({"id": 1}),
            &json!({"id": 2}),
            &json!({"id": 2}),
            &json!({})
        ]
    );

    let insert = recs[0].value.as_ref().unwrap();
    assert_eq!(insert["before"], Value::Null);
    assert_eq!(
        insert["after"],
        json!({"id": 1, "b": true, "i2": -2, "i4": 2147483647, "o": 4000000000u64, "f4": 1.5, "f8": "NaN",
               "n": "10.50", "j": {"b": 1, "a": 2}, "jb": {"x": [1, 2]}, "by": "AAH/",
               "tz": "2026-01-02T01:04:05.678Z", "ts": "2026-01-02 03:04:05", "d": "2026-01-02", "tm": "03:04:05",
               "ia": [1, null, 3], "ta": ["a b", "c"], "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
               "tx": "tab\there", "e": "happy", "ip": "10.0.0.1/8", "nul": null})
    );
    // Object key order is part of the contract: compare the serialised text too.
    assert!(serde_json::to_string(&insert["after"]["j"]).unwrap() == r#"{"b":1,"a":2}"#);

    // The transaction's three records share xid, commit LSN and commit time, in order.
    for r in &recs[0..3] {
        let v = r.value.as_ref().unwrap();
        let s = &v["source"];
        assert_eq!(
            s["txId"].as_i64().unwrap(),
            xid % (1 << 32),
            "txId is the 32-bit xid"
        );
        let commit_lsn = s["commit_lsn"].as_u64().unwrap();
        assert!(
            commit_lsn >= lsn_before_commit && commit_lsn < lsn_after_commit,
            "commit_lsn {commit_lsn} outside the commit"
        );
        assert!(s["lsn"].as_u64().unwrap() < commit_lsn);
        assert_eq!(
            r.timestamp_ms,
            s["ts_ms"].as_i64(),
            "record timestamp = commit time"
        );
        let ts = r.timestamp_ms.unwrap();
        assert!(
            ts >= t0 && ts <= t_after,
            "commit time {ts} outside [{t0}, {t_after}]"
        );
        assert_eq!(
            (s["schema"].as_str(), s["table"].as_str()),
            (Some("public"), Some(t1.as_str()))
        );
        assert_eq!(s["connector"], "postgresql");
        assert_eq!(s["db"], "test");
    }
    let lsns: Vec<u64> = recs[0..3]
        .iter()
        .map(|r| r.value.as_ref().unwrap()["source"]["lsn"].as_u64().unwrap())
        .collect();
    assert!(
        lsns.windows(2).all(|w| w[0] < w[1]),
        "changes keep their order: {lsns:?}"
    );

    let update = recs[2].value.as_ref().unwrap();
    assert_eq!(
        update["before"],
        Value::Null,
        "no old row without REPLICA IDENTITY FULL"
    );
    assert_eq!(update["after"]["f8"], "-Infinity");
    assert_eq!(update["after"]["tx"], "changed");
    assert_eq!(
        recs[3].value.as_ref().unwrap()["before"],
        json!({"id": 2}),
        "a delete carries the key"
    );
    assert_eq!(recs[3].value.as_ref().unwrap()["after"], Value::Null);
    assert!(recs[4].value.is_none(), "a tombstone follows the delete");

    // The second table has its own topic; its key follows the primary key's order,
    // and a key change becomes delete + tombstone + create.
    let recs2 = wait_for_records(
        &kafka(),
        &args.topic(&format!("public.{t2}")),
        4,
        Duration::from_secs(60),
    )
    .await;
    let summary: Vec<(String, Option<Value>)> = recs2
        .iter()
        .map(|r| (r.key.to_string(), r.value.as_ref().map(|v| v["op"].clone())))
        .collect();
    assert_eq!(
        summary,
        vec![
            (r#"{"region":"eu","id":7}"#.into(), Some(json!("c"))),
            (r#"{"region":"eu","id":7}"#.into(), Some(json!("d"))),
            (r#"{"region":"eu","id":7}"#.into(), None),
            (r#"{"region":"eu","id":8}"#.into(), Some(json!("c"))),
        ]
    );

    // The delete and the create of a key change come from one change: same LSN, and
    // `seq` orders them so a reader's replay check does not drop the create.
    let (del, create) = (
        &recs2[1].value.as_ref().unwrap()["source"],
        &recs2[3].value.as_ref().unwrap()["source"],
    );
    assert_eq!(del["lsn"], create["lsn"]);
    assert!(del.get("seq").is_none());
    assert_eq!(create["seq"], 1);

    let status = bridge.sigterm(Duration::from_secs(60));
    assert!(
        status.success(),
        "clean exit: {status:?}\n{}",
        bridge.log_text()
    );
}

/// The cache computes the partition of every bulk-loaded row itself
/// (`tidemark_core::wire::partitioner`); it must be the partition librdkafka's
/// `murmur2_random` partitioner, which the bridge's producer uses, picks for the same
/// key bytes. Keys of several shapes go to a 7-partition topic through a producer
/// with that partitioner, and each delivery's partition is compared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_partitioner_matches_librdkafkas_murmur2_random() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::ClientConfig;
    use tidemark_core::wire::{key, partitioner::partition_of};

    let topic = unique("tidemark_partitioner");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .create()
        .unwrap();
    let created = admin
        .create_topics(
            &[NewTopic::new(&topic, 7, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka())
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    let mut keys: Vec<Vec<u8>> = (0..200)
        .map(|i: i64| key::encode([("id", &json!(i * 7919 - 50_000))]))
        .collect();
    for s in ["", "a", "ab", "abc", "abcd", "ünïcödé ✓", "quote \" and \\"] {
        keys.push(key::encode([("name", &json!(s)), ("n", &json!(1.5))]));
    }
    for k in &keys {
        let delivery = producer
            .send(
                FutureRecord::<[u8], str>::to(&topic).key(k).payload("x"),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("delivery");
        assert_eq!(
            delivery.partition,
            partition_of(k, 7),
            "key {}",
            String::from_utf8_lossy(k)
        );
    }
}
