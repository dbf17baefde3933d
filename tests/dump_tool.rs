//! The `dump` example, the schema-agnostic way to read a table through a cache:
//! every row once, sorted by key, each line `{"key": {...}, "value": {...}}` as the
//! cache holds it; for an integer key (over several chunks of output, negative keys
//! included) and for a composite key of text and integer.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

/// Runs `dump --follow 0` on `table` and parses its lines.
fn dump(table: &str, args: &BridgeArgs) -> Vec<Value> {
    let out = std::process::Command::new(dump_bin())
        .args(["--postgres", &pg_url(), "--kafka", &args.kafka])
        .args(["--table", &format!("public.{table}")])
        .args(["--topic-prefix", &args.prefix, "--follow", "0"])
        .output()
        .expect("running dump");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    String::from_utf8(out.stdout)
        .expect("dump prints UTF-8")
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_prints_every_row_once_sorted_by_key() {
    let pg = pg().await;
    let name = unique("dumpsort");
    let (ints, pairs) = (format!("{name}_i"), format!("{name}_p"));
    pg.batch_execute(&format!(
        "CREATE TABLE {ints} (id int8 PRIMARY KEY, v text, n int4);
         INSERT INTO {ints} SELECT g, 'v' || g, g % 7 FROM generate_series(-6000, 6000) g ORDER BY random();
         CREATE TABLE {pairs} (a text, b int4, v text, PRIMARY KEY (a, b));
         INSERT INTO {pairs} SELECT 'k' || (g % 37), g - 1500, 'x' || g FROM generate_series(1, 3000) g ORDER BY random();"
    ))
    .await
    .expect("creating the tables");
    let tables = [format!("public.{ints}"), format!("public.{pairs}")];
    let (mut bridge, args) = start_bridge(&name, &[&tables[0], &tables[1]]).await;

    let mut expected: Vec<(i64, Value)> = pg
        .query(&format!("SELECT id, v, n FROM {ints}"), &[])
        .await
        .expect("reading the table")
        .iter()
        .map(|r| {
            let (id, v, n): (i64, String, i32) = (r.get(0), r.get(1), r.get(2));
            (
                id,
                json!({"key": {"id": id}, "value": {"id": id, "v": v, "n": n}}),
            )
        })
        .collect();
    expected.sort_by_key(|(id, _)| *id);
    let expected: Vec<Value> = expected.into_iter().map(|(_, line)| line).collect();
    let got = dump(&ints, &args);
    assert_eq!(got.len(), expected.len(), "one line per row");
    if let Some(i) = (0..got.len()).find(|&i| got[i] != expected[i]) {
        panic!("line {i}: {} where {} belongs", got[i], expected[i]);
    }

    let mut expected: Vec<(String, i32, Value)> = pg
        .query(&format!("SELECT a, b, v FROM {pairs}"), &[])
        .await
        .expect("reading the table")
        .iter()
        .map(|r| {
            let (a, b, v): (String, i32, String) = (r.get(0), r.get(1), r.get(2));
            let line = json!({"key": {"a": a, "b": b}, "value": {"a": a, "b": b, "v": v}});
            (a, b, line)
        })
        .collect();
    // Text by its bytes, then the integer by value.
    expected.sort_by(|x, y| x.0.cmp(&y.0).then(x.1.cmp(&y.1)));
    let got = dump(&pairs, &args);
    assert_eq!(got.len(), expected.len(), "one line per row");
    for (i, (line, (_, _, want))) in got.iter().zip(&expected).enumerate() {
        assert_eq!(line, want, "line {i}");
    }
    assert!(bridge.sigterm(Duration::from_secs(30)).success());
}
