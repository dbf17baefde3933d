//! A decoder for the pgoutput messages the bridge consumes (protocol version 1).
//!
//! `pgwire-replication` already splits off Begin and Commit; the rest arrive as raw
//! XLogData payloads, decoded here: Relation, Insert, Update, Delete and Truncate.
//! Type, Origin and logical decoding messages are recognised and ignored. The format
//! is documented in "Logical Replication Message Formats" of the PostgreSQL manual.
//! Own code rather than a general decoder: it is a few dozen lines, borrows the
//! payload instead of copying it, and keeps the three column states (`n` null,
//! `u` unchanged TOAST, `t` text) that the envelope needs.

use bytes::Bytes;

/// A pgoutput message the bridge acts on.
#[derive(Debug, PartialEq)]
pub enum Message {
    /// Describes a table; sent before the first change to it and after every schema change.
    Relation(Relation),
    /// A new row.
    Insert { rel: u32, new: Tuple },
    /// A changed row; `old` is the old key (`K`) or full old row (`O`) when sent.
    Update {
        rel: u32,
        old: Option<OldTuple>,
        new: Tuple,
    },
    /// A deleted row: its key (`K`) or full old row (`O`).
    Delete { rel: u32, old: OldTuple },
    /// TRUNCATE of one or more tables.
    Truncate { rels: Vec<u32> },
    /// Anything the bridge does not need (Type, Origin, Message, ...).
    Ignored(u8),
}

/// A table description.
#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    /// The table's OID.
    pub id: u32,
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub table: String,
    /// The table's replica identity when the change was written: `d` default (the
    /// primary key), `n` nothing, `f` full, `i` an index.
    pub replica_identity: u8,
    /// Column names and type OIDs, in attribute order.
    pub columns: Vec<RelColumn>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq)]
pub struct RelColumn {
    /// Column name.
    pub name: String,
    /// Type OID.
    pub type_oid: u32,
    /// Type modifier (`atttypmod`; -1 when the type has none): precision and scale of
    /// `numeric`, fractional digits of time types, which Debezium's encoding needs.
    pub typmod: i32,
    /// Whether the column is part of the replica identity's key (flag bit 1). With
    /// identity `d` these are the primary-key columns of the schema the change was
    /// written with; with `f` every column is flagged.
    pub key: bool,
}

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq)]
pub enum Datum {
    /// SQL NULL.
    Null,
    /// A TOASTed value that did not change and was not sent.
    UnchangedToast,
    /// The value's text representation.
    Text(Bytes),
}

/// A row's values, in attribute order.
pub type Tuple = Vec<Datum>;

/// The old row of an update or delete.
#[derive(Debug, Clone, PartialEq)]
pub struct OldTuple {
    /// True for the full old row (`REPLICA IDENTITY FULL`), false when only the key
    /// columns carry values.
    pub full: bool,
    /// The values; non-key columns are null when `full` is false.
    pub tuple: Tuple,
}

/// A malformed pgoutput message.
#[derive(Debug, thiserror::Error)]
#[error("malformed pgoutput message {tag:?}: {reason}")]
pub struct DecodeError {
    tag: char,
    reason: &'static str,
}

struct Reader {
    buf: Bytes,
    tag: u8,
}

impl Reader {
    fn fail<T>(&self, reason: &'static str) -> Result<T, DecodeError> {
        Err(DecodeError {
            tag: self.tag as char,
            reason,
        })
    }
    fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if self.buf.len() < n {
            return self.fail("message ends early");
        }
        Ok(self.buf.split_to(n))
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        let Some(end) = self.buf.iter().position(|&b| b == 0) else {
            return self.fail("unterminated string");
        };
        let s = self.take(end)?;
        self.take(1)?;
        // Names are UTF-8 but in a SQL_ASCII database, read as values are read there.
        Ok(tidemark_core::wire::codec::text_of(&s).into_owned())
    }
    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let n = self.u16()?;
        (0..n)
            .map(|_| match self.u8()? {
                b'n' => Ok(Datum::Null),
                b'u' => Ok(Datum::UnchangedToast),
                b't' => {
                    let len = self.u32()? as usize;
                    Ok(Datum::Text(self.take(len)?))
                }
                _ => self.fail("unknown column kind (binary mode is not supported)"),
            })
            .collect()
    }
}

/// Decodes one pgoutput message (an XLogData payload).
pub fn decode(payload: Bytes) -> Result<Message, DecodeError> {
    let Some(&tag) = payload.first() else {
        return Err(DecodeError {
            tag: '?',
            reason: "empty message",
        });
    };
    let mut r = Reader {
        buf: payload.slice(1..),
        tag,
    };
    Ok(match tag {
        b'R' => {
            let id = r.u32()?;
            let schema = r.string()?;
            let table = r.string()?;
            let replica_identity = r.u8()?;
            let n = r.u16()?;
            let mut columns = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let flags = r.u8()?;
                let name = r.string()?;
                let type_oid = r.u32()?;
                let typmod = r.u32()? as i32;
                columns.push(RelColumn {
                    name,
                    type_oid,
                    typmod,
                    key: flags & 1 == 1,
                });
            }
            Message::Relation(Relation {
                id,
                schema,
                table,
                replica_identity,
                columns,
            })
        }
        b'I' => {
            let rel = r.u32()?;
            if r.u8()? != b'N' {
                return r.fail("insert without new tuple");
            }
            Message::Insert {
                rel,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let rel = r.u32()?;
            let mut old = None;
            let mut kind = r.u8()?;
            if kind == b'K' || kind == b'O' {
                old = Some(OldTuple {
                    full: kind == b'O',
                    tuple: r.tuple()?,
                });
                kind = r.u8()?;
            }
            if kind != b'N' {
                return r.fail("update without new tuple");
            }
            Message::Update {
                rel,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let rel = r.u32()?;
            match r.u8()? {
                kind @ (b'K' | b'O') => Message::Delete {
                    rel,
                    old: OldTuple {
                        full: kind == b'O',
                        tuple: r.tuple()?,
                    },
                },
                _ => return r.fail("delete without old tuple"),
            }
        }
        b'T' => {
            let n = r.u32()?;
            let _options = r.u8()?;
            Message::Truncate {
                rels: (0..n).map(|_| r.u32()).collect::<Result<_, _>>()?,
            }
        }
        other => Message::Ignored(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Vec<u8> {
        let mut v = vec![b't'];
        v.extend((s.len() as u32).to_be_bytes());
        v.extend(s.as_bytes());
        v
    }

    #[test]
    fn relation_and_changes() {
        let mut rel = vec![b'R'];
        rel.extend(16384u32.to_be_bytes());
        rel.extend(b"public\0accounts\0d");
        rel.extend(2u16.to_be_bytes());
        rel.extend([1u8]);
        rel.extend(b"id\0");
        rel.extend(23u32.to_be_bytes());
        rel.extend((-1i32).to_be_bytes());
        rel.extend([0u8]);
        rel.extend(b"note\0");
        rel.extend(25u32.to_be_bytes());
        rel.extend((-1i32).to_be_bytes());
        let Message::Relation(r) = decode(Bytes::from(rel)).unwrap() else {
            panic!()
        };
        assert_eq!(
            (r.schema.as_str(), r.table.as_str(), r.columns.len()),
            ("public", "accounts", 2)
        );
        assert_eq!(
            r.columns[1],
            RelColumn {
                name: "note".into(),
                type_oid: 25,
                typmod: -1,
                key: false,
            }
        );
        assert!(r.columns[0].key);
        assert_eq!(r.replica_identity, b'd');

        let mut upd = vec![b'U'];
        upd.extend(16384u32.to_be_bytes());
        upd.extend(b"K");
        upd.extend(2u16.to_be_bytes());
        upd.extend(text("1"));
        upd.push(b'n');
        upd.extend(b"N");
        upd.extend(2u16.to_be_bytes());
        upd.extend(text("2"));
        upd.push(b'u');
        let msg = decode(Bytes::from(upd)).unwrap();
        assert_eq!(
            msg,
            Message::Update {
                rel: 16384,
                old: Some(OldTuple {
                    full: false,
                    tuple: vec![Datum::Text(Bytes::from_static(b"1")), Datum::Null]
                }),
                new: vec![Datum::Text(Bytes::from_static(b"2")), Datum::UnchangedToast],
            }
        );

        let mut tr = vec![b'T'];
        tr.extend(2u32.to_be_bytes());
        tr.push(0);
        tr.extend(1u32.to_be_bytes());
        tr.extend(2u32.to_be_bytes());
        assert_eq!(
            decode(Bytes::from(tr)).unwrap(),
            Message::Truncate { rels: vec![1, 2] }
        );
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        for bad in [&b"I\0\0"[..], b"R\0\0\0\x01public", b"D\0\0\0\x01X", b""] {
            assert!(decode(Bytes::copy_from_slice(bad)).is_err());
        }
        assert_eq!(
            decode(Bytes::from_static(b"Yxyz")).unwrap(),
            Message::Ignored(b'Y')
        );
    }
}
