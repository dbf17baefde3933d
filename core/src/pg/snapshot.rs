//! What the bulk load contains, in PostgreSQL's own terms: the MVCC snapshot of the
//! load transaction, and the WAL position read right after the load.
//!
//! A record on the topic carries the 32-bit id of the transaction that wrote it. The
//! snapshot `(xmin, xmax, xip[])` of the load says exactly which transactions' effects
//! the loaded rows contain (the rules of `XidInMVCCSnapshot` in PostgreSQL's
//! `snapmgr.c`): `xid < xmin` is visible, `xid >= xmax` is not, and in between an
//! xid is visible unless it is in `xip` (still running when the snapshot was taken).
//!
//! The snapshot comes from `pg_current_snapshot()` as `xid8`, 64-bit ids that carry
//! an epoch, while the stream carries the 32-bit `xid`. [`Snapshot::visible`] widens
//! the 32-bit id to the 64-bit id nearest to `xmax` under PostgreSQL's modulo-2³²
//! ordering (`TransactionIdPrecedes`: `(int32)(a - b) < 0`), which is exact for every
//! transaction within 2³¹ of the snapshot, i.e. every transaction the database still
//! remembers. The follower stops asking once a partition passes the insert LSN (see
//! `follow`), so an old snapshot never meets a wrapped-around id.
//!
//! See <https://www.postgresql.org/docs/current/functions-info.html#FUNCTIONS-PG-SNAPSHOT>.

use std::fmt;

/// A `pg_current_snapshot()` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Every transaction below this one had finished when the snapshot was taken.
    pub xmin: u64,
    /// Every transaction at or above this one had not yet finished.
    pub xmax: u64,
    /// Transactions in `xmin..xmax` that were still running, sorted.
    pub xip: Vec<u64>,
}

/// A `pg_snapshot` text that does not parse; names the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot parse the snapshot {0:?} (expected xmin:xmax:xip,...)")]
pub struct SnapshotParseError(pub String);

impl Snapshot {
    /// Parses the text form `xmin:xmax:xip1,xip2,...` (the list may be empty).
    pub fn parse(text: &str) -> Result<Self, SnapshotParseError> {
        let err = || SnapshotParseError(text.chars().take(200).collect());
        let mut parts = text.trim().splitn(3, ':');
        let xmin: u64 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(err)?;
        let xmax: u64 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(err)?;
        let list = parts.next().ok_or_else(err)?;
        let mut xip = if list.is_empty() {
            Vec::new()
        } else {
            list.split(',')
                .map(|s| s.parse::<u64>().map_err(|_| err()))
                .collect::<Result<Vec<_>, _>>()?
        };
        if xmin > xmax || xip.iter().any(|&x| x < xmin || x >= xmax) {
            return Err(err());
        }
        xip.sort_unstable();
        Ok(Snapshot { xmin, xmax, xip })
    }

    /// Widens a 32-bit xid from the stream to the 64-bit id nearest to `xmax`.
    pub fn widen(&self, xid: u32) -> u64 {
        // The signed distance from xmax's low 32 bits, as TransactionIdPrecedes sees it.
        let diff = i64::from(xid.wrapping_sub(self.xmax as u32) as i32);
        (self.xmax as i64).wrapping_add(diff).max(0) as u64
    }

    /// Whether the effects of transaction `xid` are in the snapshot (and so already in
    /// the loaded rows). The special ids below 3 (invalid, bootstrap, frozen) count as
    /// visible, as in PostgreSQL.
    pub fn visible(&self, xid: u32) -> bool {
        if xid < 3 {
            return true;
        }
        let x = self.widen(xid);
        if x < self.xmin {
            true
        } else if x >= self.xmax {
            false
        } else {
            self.xip.binary_search(&x).is_err()
        }
    }

    /// Whether every transaction visible in `other` is visible in this snapshot too,
    /// so rows read in `other` hold nothing this snapshot's rows lack. True when
    /// `other` was taken before this one; for two snapshots taken at nearly the same
    /// time it is decided exactly: an id visible in `other` is below `other.xmax` and
    /// not in its `xip`, so `other.xmax` must not exceed `self.xmax`, and an id still
    /// running for this snapshot below `other.xmax` must have been running for
    /// `other` too.
    pub fn contains(&self, other: &Snapshot) -> bool {
        other.xmax <= self.xmax
            && self
                .xip
                .iter()
                .take_while(|&&x| x < other.xmax)
                .all(|&x| other.xip.binary_search(&x).is_ok())
    }
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:", self.xmin, self.xmax)?;
        for (i, x) in self.xip.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_snapshot_text() {
        let s = Snapshot::parse("100:105:104,102").unwrap();
        assert_eq!(s.xmin, 100);
        assert_eq!(s.xmax, 105);
        assert_eq!(s.xip, vec![102, 104]);
        assert_eq!(s.to_string(), "100:105:102,104");
        assert_eq!(Snapshot::parse("7:7:").unwrap().xip, Vec::<u64>::new());
        for bad in ["", "1", "1:2", "a:2:", "5:3:", "1:5:9", "1:5:x", "1:5:2,"] {
            assert!(Snapshot::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn visibility_rules() {
        let s = Snapshot::parse("100:105:102,104").unwrap();
        assert!(s.visible(99));
        assert!(s.visible(1) && s.visible(2));
        assert!(s.visible(100));
        assert!(s.visible(101));
        assert!(!s.visible(102));
        assert!(s.visible(103));
        assert!(!s.visible(104));
        assert!(!s.visible(105));
        assert!(!s.visible(200));
    }

    #[test]
    fn visibility_across_the_32_bit_wrap() {
        // Epoch 3, low half near the top of the 32-bit range.
        let base = (3u64 << 32) + u64::from(u32::MAX) - 10;
        let s = Snapshot {
            xmin: base,
            xmax: base + 20, // wraps into epoch 4
            xip: vec![base + 5, base + 15],
        };
        let low = |x: u64| x as u32;
        assert!(s.visible(low(base - 1)));
        assert!(!s.visible(low(base + 5)));
        assert!(s.visible(low(base + 6)));
        assert!(s.visible(low(base + 12))); // after the wrap, small 32-bit value
        assert!(!s.visible(low(base + 15)));
        assert!(!s.visible(low(base + 20)));
        assert!(!s.visible(low(base + 1000)));
        assert_eq!(s.widen(low(base + 12)), base + 12);
        // Two billion behind is still "before", two billion ahead is still "after".
        assert!(s.visible(low(base - 2_000_000_000)));
        assert!(!s.visible(low(base + 2_000_000_000)));
    }

    #[test]
    fn containment() {
        let s = |t: &str| Snapshot::parse(t).unwrap();
        // Later snapshots contain earlier ones.
        assert!(s("100:105:102").contains(&s("90:100:95")));
        assert!(s("100:105:102").contains(&s("100:105:102")));
        assert!(!s("90:100:95").contains(&s("100:105:102")));
        // 102 ran when the newer one was taken but had finished for the older one:
        // impossible in PostgreSQL, and not containment.
        assert!(!s("100:105:102").contains(&s("103:104:")));
        // An id still running in both, or below the other's xmin, is fine.
        assert!(s("100:110:102,108").contains(&s("100:105:102")));
        assert!(!s("100:110:101").contains(&s("102:105:")));
        // 104 is visible in the other (104 < xmax 105, not in its xip) but running here.
        assert!(!s("100:110:104").contains(&s("100:105:102")));
    }

    #[test]
    fn widen_never_goes_below_zero() {
        let s = Snapshot::parse("3:10:").unwrap();
        assert!(s.visible(5));
        // "Just before" epoch 0 does not exist; it clamps to 0, which is in the past.
        assert!(s.visible(u32::MAX));
    }
}
