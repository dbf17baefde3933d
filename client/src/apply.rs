//! The apply rules: how a row, a delete or a truncate changes the map.
//!
//! Every path into the map goes through [`Applier`], so the bulk load and the stream
//! treat rows the same way:
//! * a row becomes the user's types with serde (`K` from the key object, `V` from
//!   the whole row) and is stored with the partition that owns its key and the values
//!   of its TOAST-able columns, which a later `unchanged_toast` record needs;
//! * [`merge_toast`] fills the columns a record left out as unchanged TOAST from the
//!   cached row (the follower re-reads the row from PostgreSQL when it has none);
//! * a delete removes the key; a truncate read from partition `p` removes exactly the
//!   keys partition `p` owns, so it stays in order with that partition's records;
//! * for the watermark strategy, a change older than the cached one by the `ts`
//!   column (last writer wins) is skipped.

use std::hash::Hash;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::state::{Change, Entry, Origin, Shared};
use crate::table::ToastCopy;
use crate::ts::Ts;
use tidemark_core::wire::Row;

/// Deserialises a key object; a single-column key also deserialises from the bare
/// column value.
pub(crate) fn typed_key<K: DeserializeOwned>(key: &Row) -> Result<K, serde_json::Error> {
    match serde_json::from_value(Value::Object(key.clone())) {
        Ok(k) => Ok(k),
        Err(e) => match key.values().next() {
            Some(v) if key.len() == 1 => serde_json::from_value(v.clone()).map_err(|_| e),
            _ => Err(e),
        },
    }
}

/// Fills the `unchanged` columns of `after` from `cached`. Returns the columns that
/// `cached` does not have (all of them when there is no cached row).
pub(crate) fn merge_toast(
    after: &mut Row,
    unchanged: &[String],
    cached: Option<&Row>,
) -> Vec<String> {
    let mut missing = Vec::new();
    for col in unchanged {
        match cached.and_then(|c| c.get(col)) {
            Some(v) => {
                after.insert(col.clone(), v.clone());
            }
            None => missing.push(col.clone()),
        }
    }
    missing
}

/// Writes an entry's TOAST copy as a JSON object, one kept column at a time.
#[derive(Default)]
pub(crate) struct ToastCopyWriter(Vec<u8>);

impl ToastCopyWriter {
    /// Adds column `col` with `value` (anything that serialises as the codec value).
    pub fn push(&mut self, col: &str, value: &impl serde::Serialize) {
        tidemark_core::wire::key::push_member(&mut self.0, col, value);
    }

    /// The object, or `None` when no column was kept.
    pub fn finish(mut self) -> Option<Box<str>> {
        if self.0.is_empty() {
            return None;
        }
        self.0.push(b'}');
        String::from_utf8(self.0).ok().map(String::into_boxed_str)
    }
}

/// Why a row was not applied.
#[derive(Debug)]
pub(crate) enum Rejected {
    /// The key or row does not fit `K` or `V`.
    Type {
        what: &'static str,
        error: serde_json::Error,
    },
    /// Older than the cached row by the `ts` column (watermark strategy).
    Stale,
}

/// Applies rows, deletes and truncates to the shared map.
pub(crate) struct Applier<K, V> {
    pub shared: Arc<Shared<K, V>>,
    /// Columns whose values are kept for `unchanged_toast` merges, with their rule.
    pub toast_columns: Vec<(String, ToastCopy)>,
    /// The owner column and this instance's id as it appears there.
    pub owner: Option<(String, String)>,
    /// The watermark strategy's `ts` column.
    pub ts_column: Option<String>,
    /// The current warm start.
    pub generation: u32,
}

// Not derived: a derive would ask for `K: Clone, V: Clone`, and only the `Arc` is shared.
impl<K, V> Clone for Applier<K, V> {
    fn clone(&self) -> Self {
        Applier {
            shared: self.shared.clone(),
            toast_columns: self.toast_columns.clone(),
            owner: self.owner.clone(),
            ts_column: self.ts_column.clone(),
            generation: self.generation,
        }
    }
}

impl<K, V> Applier<K, V>
where
    K: DeserializeOwned + Hash + Eq + Clone,
    V: DeserializeOwned,
{
    /// The origin of a row that did not come from a bulk load.
    pub fn origin_of(&self, row: &Row) -> Origin {
        self.origin_by(|col| row.get(col).and_then(Value::as_str))
    }

    /// [`Applier::origin_of`], with `text` giving a column's text.
    pub fn origin_by<'r>(&self, text: impl FnOnce(&str) -> Option<&'r str>) -> Origin {
        match &self.owner {
            Some((col, id)) if text(col) == Some(id.as_str()) => Origin::OwnWrite,
            _ => Origin::Stream,
        }
    }

    /// The cached TOAST-able values of `key`.
    pub fn cached_toast(&self, key: &K) -> Option<Row> {
        let entry = self.shared.map.get(key)?;
        match entry.toast() {
            Some(text) => serde_json::from_str(text).ok(),
            None => Some(Row::new()),
        }
    }

    /// The copy of a row's TOAST-able values to keep, from its codec values.
    pub fn toast_copy(&self, row: &Row) -> Option<Box<str>> {
        let mut copy = ToastCopyWriter::default();
        for (col, rule) in &self.toast_columns {
            match row.get(col) {
                Some(v) if !v.is_null() && rule.keeps(v.as_str()) => copy.push(col, v),
                _ => {}
            }
        }
        copy.finish()
    }

    /// The watermark strategy's `ts` value of a row.
    pub fn ts_of(&self, value: impl FnOnce(&str) -> Option<Value>) -> Option<Ts> {
        self.ts_column
            .as_deref()
            .and_then(value)
            .as_ref()
            .and_then(Ts::from_value)
    }

    /// Stores `row` under `key`. Last-writer-wins applies unless `origin` is a bulk
    /// load (a newer snapshot is always right).
    pub fn upsert(&self, key: K, row: Row, partition: i32, origin: Origin) -> Result<(), Rejected> {
        let ts = self.ts_of(|c| row.get(c).cloned());
        if self.is_stale(&key, ts.as_ref(), origin) {
            return Err(Rejected::Stale);
        }
        let toast = self.toast_copy(&row);
        let value: V = serde_json::from_value(Value::Object(row))
            .map_err(|error| Rejected::Type { what: "row", error })?;
        self.put(key, value, partition, toast, ts, origin);
        Ok(())
    }

    /// Whether a change with `ts` is not newer than the cached row (watermark
    /// strategy; a bulk load is never stale).
    pub fn is_stale(&self, key: &K, ts: Option<&Ts>, origin: Origin) -> bool {
        if origin == Origin::BulkLoad {
            return false;
        }
        // An equal `ts` is the version already held: a replay, not a change.
        match (ts, self.shared.map.get(key)) {
            (Some(new), Some(e)) => e.ts().is_some_and(|old| !new.newer_than(old)),
            _ => false,
        }
    }

    /// Stores a typed row; the caller has applied [`Applier::is_stale`].
    pub fn put(
        &self,
        key: K,
        value: V,
        partition: i32,
        toast: Option<Box<str>>,
        ts: Option<Ts>,
        origin: Origin,
    ) {
        let value = Arc::new(value);
        // A second reference only for subscribers: an unwatched load of a million rows
        // would otherwise pay a million atomic decrements.
        let Some(watched) = self.shared.watched().then(|| value.clone()) else {
            self.shared
                .map
                .insert(key, self.entry(value, partition, toast, ts));
            return;
        };
        self.shared
            .map
            .insert(key.clone(), self.entry(value, partition, toast, ts));
        self.shared.notify(|| Change {
            key,
            value: Some(watched),
            origin,
            partition,
        });
    }

    fn entry(
        &self,
        value: Arc<V>,
        partition: i32,
        toast: Option<Box<str>>,
        ts: Option<Ts>,
    ) -> Entry<V> {
        Entry::new(value, partition, self.generation, toast, ts)
    }

    /// Removes `key`. For the watermark strategy, `before` (the old row, when the
    /// topic carries it) guards against a replayed delete of an older version.
    pub fn delete(&self, key: K, before: Option<&Row>, origin: Origin) -> Result<(), Rejected> {
        let before_ts = self
            .ts_column
            .as_ref()
            .and_then(|c| before?.get(c))
            .and_then(Ts::from_value);
        if let (Some(old_ts), Some(e)) = (&before_ts, self.shared.map.get(&key)) {
            if e.ts().is_some_and(|cached| !old_ts.at_least(cached)) {
                return Err(Rejected::Stale);
            }
        }
        if let Some((key, e)) = self.shared.map.remove(&key) {
            self.shared.notify(|| Change {
                key,
                value: None,
                origin,
                partition: e.partition,
            });
        }
        Ok(())
    }

    /// Removes every key that partition `partition` owns.
    pub fn truncate(&self, partition: i32, origin: Origin) -> usize {
        let doomed: Vec<K> = self
            .shared
            .map
            .iter()
            .filter(|e| e.partition == partition)
            .map(|e| e.key().clone())
            .collect();
        let n = doomed.len();
        for key in doomed {
            // Re-check under the shard lock: only this task writes, but be exact.
            if let Some((key, _)) = self
                .shared
                .map
                .remove_if(&key, |_, e| e.partition == partition)
            {
                self.shared.notify(|| Change {
                    key,
                    value: None,
                    origin,
                    partition,
                });
            }
        }
        n
    }

    /// After a warm start's load: removes the keys the new snapshot no longer has.
    pub fn sweep(&self) -> usize {
        let current = self.generation;
        self.remove_where(|g| g != current, Origin::BulkLoad)
    }

    /// Removes every entry that warm start `generation` wrote (a checkpoint refused
    /// while it was being read), telling subscribers.
    pub fn remove_generation(&self, generation: u32) -> usize {
        self.remove_where(|g| g == generation, Origin::Checkpoint)
    }

    /// Removes the entries whose generation `doomed` picks, telling subscribers.
    fn remove_where(&self, doomed: impl Fn(u32) -> bool, origin: Origin) -> usize {
        let old: Vec<(K, i32)> = self
            .shared
            .map
            .iter()
            .filter(|e| doomed(e.generation))
            .map(|e| (e.key().clone(), e.partition))
            .collect();
        let n = old.len();
        for (key, partition) in old {
            if self.shared.map.remove(&key).is_some() {
                self.shared.notify(|| Change {
                    key,
                    value: None,
                    origin,
                    partition,
                });
            }
        }
        n
    }

    /// Counts an applied stream change and remembers its commit time.
    pub fn count_applied(&self, commit_ms: i64) {
        self.shared.counters.counts.applied.add(1);
        if commit_ms > 0 {
            self.shared
                .counters
                .last_commit_ms
                .store(commit_ms, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize, PartialEq, Clone)]
    struct Acc {
        id: i64,
        name: String,
        note: Option<String>,
        v: i64,
    }

    fn row(v: serde_json::Value) -> Row {
        serde_json::from_value(v).unwrap()
    }

    fn applier(ts_column: Option<&str>) -> Applier<i64, Acc> {
        Applier {
            shared: Arc::new(Shared::new(
                uuid::Uuid::now_v7(),
                "public.t".into(),
                "t".into(),
                64,
            )),
            toast_columns: vec![
                ("name".into(), ToastCopy::LongerThan(3)),
                ("note".into(), ToastCopy::Always),
            ],
            owner: Some(("note".into(), "me".into())),
            ts_column: ts_column.map(Into::into),
            generation: 1,
        }
    }

    #[test]
    fn keys_deserialise_from_the_object_or_the_single_value() {
        #[derive(Deserialize, PartialEq, Debug)]
        struct Id {
            id: i64,
        }
        #[derive(Deserialize, PartialEq, Debug, Hash, Eq)]
        struct AccountId(i64);
        let k = row(json!({"id": 42}));
        assert_eq!(typed_key::<Id>(&k).unwrap(), Id { id: 42 });
        assert_eq!(typed_key::<i64>(&k).unwrap(), 42);
        assert_eq!(typed_key::<AccountId>(&k).unwrap(), AccountId(42));
        assert!(typed_key::<i64>(&row(json!({"a": 1, "b": 2}))).is_err());
        assert!(typed_key::<(i64, String)>(&row(json!({"a": 1}))).is_err());
    }

    #[test]
    fn toast_merge_takes_cached_values_and_names_missing_ones() {
        let cached = row(json!({"name": "Ada", "note": "long"}));
        let mut after = row(json!({"id": 1, "v": 2}));
        let missing = merge_toast(&mut after, &["name".into(), "note".into()], Some(&cached));
        assert!(missing.is_empty());
        assert_eq!(after["name"], json!("Ada"));
        let mut after = row(json!({"id": 1, "v": 2}));
        let missing = merge_toast(&mut after, &["name".into(), "gone".into()], Some(&cached));
        assert_eq!(missing, ["gone"]);
        let mut after = row(json!({"id": 1}));
        assert_eq!(merge_toast(&mut after, &["name".into()], None), ["name"]);
    }

    #[test]
    fn upsert_keeps_toast_values_and_reports_origin() {
        let a = applier(None);
        let mut rx = a.shared.subscribe();
        let r = row(json!({"id": 1, "name": "Ada Lovelace", "note": null, "v": 1}));
        assert_eq!(a.origin_of(&r), Origin::Stream);
        a.upsert(1, r, 0, Origin::Stream).unwrap();
        assert_eq!(a.shared.map.get(&1).unwrap().value.name, "Ada Lovelace");
        assert_eq!(
            a.cached_toast(&1).unwrap(),
            row(json!({"name": "Ada Lovelace"}))
        );
        // Values too short to be stored out of line are not copied.
        let short = row(json!({"id": 5, "name": "Ada", "note": "x", "v": 1}));
        a.upsert(5, short, 0, Origin::Stream).unwrap();
        assert_eq!(a.cached_toast(&5).unwrap(), row(json!({"note": "x"})));
        assert!(a.cached_toast(&6).is_none());
        let change = rx.try_recv().unwrap();
        assert_eq!((change.key, change.origin), (1, Origin::Stream));
        let mine = row(json!({"id": 2, "name": "B", "note": "me", "v": 1}));
        assert_eq!(a.origin_of(&mine), Origin::OwnWrite);
        // A row that does not fit V is rejected and leaves the map alone.
        let bad = row(json!({"id": 3, "name": 5, "v": 1}));
        assert!(matches!(
            a.upsert(3, bad, 0, Origin::Stream),
            Err(Rejected::Type { what: "row", .. })
        ));
        assert!(!a.shared.map.contains_key(&3));
    }

    #[test]
    fn delete_and_truncate_per_partition() {
        let a = applier(None);
        for id in 0..10 {
            let r = row(json!({"id": id, "name": "n", "v": 1}));
            a.upsert(id, r, (id % 3) as i32, Origin::BulkLoad).unwrap();
        }
        a.delete(4, None, Origin::Stream).unwrap();
        assert!(!a.shared.map.contains_key(&4));
        a.delete(4, None, Origin::Stream).unwrap(); // deleting again is harmless
        let mut rx = a.shared.subscribe();
        assert_eq!(a.truncate(1, Origin::Stream), 2); // 1, 7 (4 is gone)
        let mut keys: Vec<i64> = a.shared.map.iter().map(|e| *e.key()).collect();
        keys.sort();
        assert_eq!(keys, [0, 2, 3, 5, 6, 8, 9]);
        let mut removed = vec![rx.try_recv().unwrap().key, rx.try_recv().unwrap().key];
        removed.sort();
        assert_eq!(removed, [1, 7]);
    }

    #[test]
    fn sweep_removes_rows_of_older_generations() {
        let mut a = applier(None);
        for id in 0..4 {
            a.upsert(
                id,
                row(json!({"id": id, "name": "n", "v": 1})),
                0,
                Origin::BulkLoad,
            )
            .unwrap();
        }
        a.generation = 2;
        a.upsert(
            1,
            row(json!({"id": 1, "name": "n", "v": 2})),
            0,
            Origin::BulkLoad,
        )
        .unwrap();
        assert_eq!(a.sweep(), 3);
        assert_eq!(a.shared.map.len(), 1);
        assert_eq!(a.shared.map.get(&1).unwrap().value.v, 2);
    }

    #[test]
    fn watermark_last_writer_wins() {
        let a = applier(Some("v"));
        let at = |v: i64| row(json!({"id": 1, "name": "n", "v": v}));
        a.upsert(1, at(5), 0, Origin::Stream).unwrap();
        assert!(matches!(
            a.upsert(1, at(4), 0, Origin::Stream),
            Err(Rejected::Stale)
        ));
        // An equal `ts` is the version already held: a replay.
        assert!(matches!(
            a.upsert(1, at(5), 0, Origin::Stream),
            Err(Rejected::Stale)
        ));
        a.upsert(1, at(6), 0, Origin::Stream).unwrap();
        assert_eq!(a.shared.map.get(&1).unwrap().value.v, 6);
        // A bulk load always wins; a delete of an older version does not.
        a.upsert(1, at(3), 0, Origin::BulkLoad).unwrap();
        a.upsert(1, at(6), 0, Origin::Stream).unwrap();
        assert!(matches!(
            a.delete(1, Some(&at(2)), Origin::Stream),
            Err(Rejected::Stale)
        ));
        a.delete(1, Some(&at(6)), Origin::Stream).unwrap();
        assert!(a.shared.map.is_empty());
    }

    #[test]
    fn ts_ordering() {
        let t = |v: serde_json::Value| Ts::from_value(&v).unwrap();
        assert!(t(json!("2026-01-01T00:00:00.5Z")).at_least(&t(json!("2026-01-01T00:00:00Z"))));
        assert!(!t(json!("2026-01-01T00:00:00Z")).at_least(&t(json!("2026-01-01T00:00:00.5Z"))));
        assert!(t(json!("2026-01-01 00:00:01")).at_least(&t(json!("2026-01-01 00:00:00.999"))));
        assert!(t(json!(10)).at_least(&t(json!(9.5))));
        assert!(!t(json!("a")).at_least(&t(json!("b"))));
        assert!(t(json!(10)).at_least(&t(json!(10))));
        assert!(!t(json!(10)).newer_than(&t(json!(10))));
        assert!(t(json!(11)).newer_than(&t(json!(10))));
        assert_eq!(t(json!("1970-01-01T00:00:01Z")).as_millis(), Some(1000));
        assert!(Ts::from_value(&json!(null)).is_none());
    }
}
