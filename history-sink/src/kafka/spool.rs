//! The durable local spool of the Kafka sink.
//!
//! `spool.log` is append-only: one JSON payload per line, fsynced before `append` returns.
//! `spool.cursor` holds the byte offset up to which lines have been acknowledged by the
//! broker; it is replaced atomically (write, fsync, rename, fsync the directory). When the
//! cursor reaches the end, the log is truncated and the cursor reset.
//!
//! Crash safety: a crash can leave only a torn last line (no trailing newline); `open`
//! truncates it, and that event's `record` never returned `Ok`. A crash between a send
//! and the cursor update replays some lines, which is harmless because every consumer
//! upserts by `event_id`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{HistoryError, Result};

/// A pending line and the log offset just past it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolRecord {
    /// Offset to pass to [`Spool::advance`] once this record is delivered.
    pub end: u64,
    /// The payload (without the newline).
    pub payload: Vec<u8>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    log: File,
    len: u64,
    cursor: u64,
}

const LOG: &str = "spool.log";
const CURSOR: &str = "spool.cursor";

impl Spool {
    /// Opens or creates the spool in `dir`, repairing a torn tail.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| HistoryError::io(&dir, e))?;
        let log_path = dir.join(LOG);
        let mut log = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&log_path)
            .map_err(|e| HistoryError::io(&log_path, e))?;
        let mut data = Vec::new();
        log.read_to_end(&mut data)
            .map_err(|e| HistoryError::io(&log_path, e))?;
        let valid = data
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i as u64 + 1);
        if valid < data.len() as u64 {
            tracing::warn!(
                path = %log_path.display(),
                dropped_bytes = data.len() as u64 - valid,
                "spool has a torn last record (crash during append); dropping it"
            );
            log.set_len(valid)
                .and_then(|()| log.sync_all())
                .map_err(|e| HistoryError::io(&log_path, e))?;
        }
        let cursor_path = dir.join(CURSOR);
        let mut cursor = match std::fs::read_to_string(&cursor_path) {
            Ok(s) => s
                .trim()
                .parse::<u64>()
                .map_err(|e| HistoryError::SpoolCorrupt {
                    path: cursor_path.clone(),
                    reason: format!("bad cursor {s:?}: {e}"),
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(HistoryError::io(&cursor_path, e)),
        };
        if cursor > valid {
            // The log was truncated after a full drain but the cursor reset did not land.
            cursor = 0;
        }
        if cursor > 0 && data[cursor as usize - 1] != b'\n' {
            return Err(HistoryError::SpoolCorrupt {
                path: cursor_path,
                reason: format!("cursor {cursor} is not at a record boundary"),
            });
        }
        let mut spool = Self {
            dir,
            log,
            len: valid,
            cursor,
        };
        if spool.cursor == spool.len && spool.len > 0 {
            spool.compact()?;
        }
        Ok(spool)
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether every appended record has been acknowledged.
    pub fn is_empty(&self) -> bool {
        self.cursor == self.len
    }

    /// Bytes appended but not yet acknowledged.
    pub fn pending_bytes(&self) -> u64 {
        self.len - self.cursor
    }

    /// Appends payloads (which must not contain `\n`; JSON from serde never does) and fsyncs.
    pub fn append<'a>(&mut self, payloads: impl IntoIterator<Item = &'a [u8]>) -> Result<()> {
        let mut buf = Vec::new();
        for p in payloads {
            if p.contains(&b'\n') {
                return Err(HistoryError::InvalidEvent(
                    "spool payloads must be single-line JSON".into(),
                ));
            }
            buf.extend_from_slice(p);
            buf.push(b'\n');
        }
        if buf.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(LOG);
        let res = self.log.write_all(&buf).and_then(|()| self.log.sync_data());
        if let Err(e) = res {
            // Drop whatever part of the batch landed, so the log stays line-aligned.
            let _ = self.log.set_len(self.len);
            return Err(HistoryError::io(path, e));
        }
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Up to `max` pending records, oldest first.
    pub fn read_pending(&mut self, max: usize) -> Result<Vec<SpoolRecord>> {
        let path = self.dir.join(LOG);
        let want = (self.len - self.cursor).min(8 << 20) as usize;
        let mut buf = vec![0; want];
        self.log
            .seek(SeekFrom::Start(self.cursor))
            .and_then(|_| self.log.read_exact(&mut buf))
            .map_err(|e| HistoryError::io(&path, e))?;
        let mut out = Vec::new();
        let mut start = 0;
        for (i, &b) in buf.iter().enumerate() {
            if out.len() == max {
                break;
            }
            if b == b'\n' {
                out.push(SpoolRecord {
                    end: self.cursor + i as u64 + 1,
                    payload: buf[start..i].to_vec(),
                });
                start = i + 1;
            }
        }
        if out.is_empty() && want > 0 {
            return Err(HistoryError::SpoolCorrupt {
                path,
                reason: "a pending record is larger than 8 MiB".into(),
            });
        }
        Ok(out)
    }

    /// Marks everything before `end` (a [`SpoolRecord::end`]) as delivered, durably.
    /// Compacts the log when nothing is pending any more.
    pub fn advance(&mut self, end: u64) -> Result<()> {
        if end <= self.cursor {
            return Ok(());
        }
        if end > self.len {
            return Err(HistoryError::SpoolCorrupt {
                path: self.dir.join(CURSOR),
                reason: format!("advance to {end} past the end {}", self.len),
            });
        }
        self.cursor = end;
        if self.cursor == self.len {
            self.compact()
        } else {
            self.write_cursor()
        }
    }

    fn compact(&mut self) -> Result<()> {
        let path = self.dir.join(LOG);
        // Truncate first: a crash before the cursor reset leaves cursor > len, read as 0.
        self.log
            .set_len(0)
            .and_then(|()| self.log.sync_all())
            .map_err(|e| HistoryError::io(&path, e))?;
        self.len = 0;
        self.cursor = 0;
        self.write_cursor()
    }

    fn write_cursor(&self) -> Result<()> {
        let path = self.dir.join(CURSOR);
        let tmp = self.dir.join("spool.cursor.tmp");
        let res = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(self.cursor.to_string().as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        })();
        res.map_err(|e| HistoryError::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payloads(s: &Spool) -> Vec<String> {
        let mut s2 = Spool::open(s.dir()).unwrap();
        s2.read_pending(usize::MAX)
            .unwrap()
            .into_iter()
            .map(|r| String::from_utf8(r.payload).unwrap())
            .collect()
    }

    #[test]
    fn append_read_advance_compact() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(d.path()).unwrap();
        assert!(s.is_empty());
        s.append([&b"{\"a\":1}"[..], b"{\"a\":2}"]).unwrap();
        s.append([&b"{\"a\":3}"[..]]).unwrap();
        assert!(!s.is_empty());
        let recs = s.read_pending(2).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].payload, b"{\"a\":1}");
        s.advance(recs[1].end).unwrap();
        assert_eq!(payloads(&s), vec!["{\"a\":3}"]);
        let recs = s.read_pending(10).unwrap();
        s.advance(recs[0].end).unwrap();
        assert!(s.is_empty());
        assert_eq!(std::fs::metadata(d.path().join(LOG)).unwrap().len(), 0);
        assert!(s.read_pending(10).unwrap().is_empty());
    }

    #[test]
    fn state_survives_reopen_and_torn_tail_is_dropped() {
        let d = tempfile::tempdir().unwrap();
        {
            let mut s = Spool::open(d.path()).unwrap();
            s.append([&b"one"[..], b"two", b"three"]).unwrap();
            let r = s.read_pending(1).unwrap();
            s.advance(r[0].end).unwrap();
        }
        // Simulate a crash in the middle of an append.
        let mut f = OpenOptions::new()
            .append(true)
            .open(d.path().join(LOG))
            .unwrap();
        f.write_all(b"{\"torn").unwrap();
        drop(f);
        let mut s = Spool::open(d.path()).unwrap();
        let got: Vec<_> = s
            .read_pending(10)
            .unwrap()
            .into_iter()
            .map(|r| r.payload)
            .collect();
        assert_eq!(got, vec![b"two".to_vec(), b"three".to_vec()]);
        s.append([&b"four"[..]]).unwrap();
        assert_eq!(payloads(&s), vec!["two", "three", "four"]);
    }

    #[test]
    fn cursor_past_end_after_compaction_crash_is_reset() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(LOG), b"").unwrap();
        std::fs::write(d.path().join(CURSOR), b"120").unwrap();
        let s = Spool::open(d.path()).unwrap();
        assert!(s.is_empty());
    }

    #[test]
    fn misaligned_cursor_is_corruption() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(LOG), b"abc\ndef\n").unwrap();
        std::fs::write(d.path().join(CURSOR), b"2").unwrap();
        assert!(matches!(
            Spool::open(d.path()),
            Err(HistoryError::SpoolCorrupt { .. })
        ));
    }

    #[test]
    fn newlines_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(d.path()).unwrap();
        assert!(s.append([&b"a\nb"[..]]).is_err());
        assert!(s.is_empty());
    }
}
