//! The durable local spool behind every [`Outbox`](super::Outbox).
//!
//! Records are single-line JSON payloads appended to segment files. A segment is named by the
//! byte position of its first record in the spool's endless logical log
//! (`00000000000000000000.log`, `00000000000004194380.log`, …), so a position alone says
//! which file holds it. `cursor` holds the position up to which records have been delivered;
//! it is replaced atomically (write, fsync, rename, fsync the directory).
//!
//! - **Durable:** `append` writes a batch and fsyncs before it returns.
//! - **Compacted as it drains:** once the cursor passes a segment, the segment is deleted;
//!   appends roll over to a new segment every `segment_bytes`, so a long backlog shrinks
//!   while it is being delivered, not only when it is empty.
//! - **Read incrementally:** `open` reads only the tail of the last segment (to repair a torn
//!   record) and counts lines in fixed-size chunks; `read_pending` reads a bounded chunk.
//! - **One process:** `open` takes an exclusive lock on `lock`, released when the spool is
//!   dropped or the process dies.
//!
//! Crash safety: a crash can leave only a torn last record (no trailing newline); `open`
//! truncates it, and that event's `record` never returned. A crash between a delivery and
//! the cursor update delivers some records again, which is harmless because every consumer
//! upserts by `event_id`. A crash between the cursor update and a segment's deletion leaves
//! a consumed segment, which `open` deletes.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{HistoryError, Result};

/// A pending record and the spool position just past it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolRecord {
    /// Position to pass to [`Spool::advance`] once this record is delivered.
    pub end: u64,
    /// The payload (without the newline).
    pub payload: Vec<u8>,
}

/// Default size at which appends roll over to a new segment.
pub const DEFAULT_SEGMENT_BYTES: u64 = 4 << 20;

/// The largest record `read_pending` accepts; events are a few hundred bytes.
const MAX_RECORD_BYTES: usize = 8 << 20;

const CURSOR: &str = "cursor";
const LOCK: &str = "lock";
/// The single-file spool of earlier versions; `open` adopts it as the first segment.
const LEGACY_LOG: &str = "spool.log";
const LEGACY_CURSOR: &str = "spool.cursor";

#[derive(Debug)]
struct Segment {
    start: u64,
    len: u64,
}

impl Segment {
    fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    /// Holds the exclusive lock for as long as the spool is open.
    _lock: File,
    /// Oldest first; never empty (the last one is the head that appends go to).
    segments: VecDeque<Segment>,
    head: File,
    cursor: u64,
    /// Records between the cursor and the end.
    pending_records: u64,
    segment_bytes: u64,
}

fn segment_name(start: u64) -> String {
    format!("{start:020}.log")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| HistoryError::io(dir, e))
}

/// Counts newlines in `file` from `from` on, reading fixed-size chunks.
fn count_lines(file: &mut File, from: u64, path: &Path) -> Result<u64> {
    file.seek(SeekFrom::Start(from))
        .map_err(|e| HistoryError::io(path, e))?;
    let mut buf = vec![0; 1 << 16];
    let mut n = 0;
    loop {
        let got = file.read(&mut buf).map_err(|e| HistoryError::io(path, e))?;
        if got == 0 {
            return Ok(n);
        }
        n += buf[..got].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

/// The length of `file` up to and including its last newline, reading backwards in chunks.
fn complete_len(file: &mut File, len: u64, path: &Path) -> Result<u64> {
    let mut buf = vec![0; 1 << 16];
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))
            .and_then(|_| file.read_exact(chunk))
            .map_err(|e| HistoryError::io(path, e))?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

impl Spool {
    /// Opens or creates the spool in `dir` with the default segment size.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        Self::open_with(dir, DEFAULT_SEGMENT_BYTES)
    }

    /// Opens or creates the spool in `dir`, repairing a torn tail and deleting consumed
    /// segments. Fails with [`HistoryError::SpoolLocked`] if another process has it open.
    pub fn open_with(dir: impl Into<PathBuf>, segment_bytes: u64) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| HistoryError::io(&dir, e))?;
        let lock_path = dir.join(LOCK);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| HistoryError::io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(HistoryError::SpoolLocked(dir));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(HistoryError::io(&lock_path, e)),
        }
        adopt_legacy(&dir)?;

        let mut starts = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| HistoryError::io(&dir, e))? {
            let entry = entry.map_err(|e| HistoryError::io(&dir, e))?;
            if let Some(start) = entry.file_name().to_str().and_then(parse_segment_name) {
                starts.push(start);
            }
        }
        starts.sort_unstable();
        let mut segments = VecDeque::new();
        for start in starts {
            let path = dir.join(segment_name(start));
            let len = std::fs::metadata(&path)
                .map_err(|e| HistoryError::io(&path, e))?
                .len();
            segments.push_back(Segment { start, len });
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

        // Only the last segment can have a torn tail: appends roll over only after a
        // successful, fsynced write.
        if let Some(last) = segments.back_mut() {
            let path = dir.join(segment_name(last.start));
            let mut f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| HistoryError::io(&path, e))?;
            let valid = complete_len(&mut f, last.len, &path)?;
            if valid < last.len {
                tracing::warn!(
                    path = %path.display(),
                    dropped_bytes = last.len - valid,
                    "spool has a torn last record (crash during append); dropping it"
                );
                f.set_len(valid)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| HistoryError::io(&path, e))?;
                last.len = valid;
            }
        }
        for pair in segments.iter().collect::<Vec<_>>().windows(2) {
            if pair[0].end() != pair[1].start {
                return Err(HistoryError::SpoolCorrupt {
                    path: dir.join(segment_name(pair[1].start)),
                    reason: format!(
                        "segment starts at {} but the one before ends at {}",
                        pair[1].start,
                        pair[0].end()
                    ),
                });
            }
        }
        let end = segments.back().map_or(cursor, Segment::end);
        if cursor > end {
            // The single-file spool of earlier versions truncated its log before resetting
            // its cursor; nothing lies past the end, so nothing is skipped.
            cursor = end;
        }
        if let Some(first) = segments.front() {
            if cursor < first.start {
                return Err(HistoryError::SpoolCorrupt {
                    path: cursor_path,
                    reason: format!(
                        "cursor {cursor} is before the oldest segment, which starts at {}",
                        first.start
                    ),
                });
            }
        }

        if segments.is_empty() {
            let path = dir.join(segment_name(end));
            File::create(&path).map_err(|e| HistoryError::io(&path, e))?;
            sync_dir(&dir)?;
            segments.push_back(Segment { start: end, len: 0 });
        }
        let head_path = dir.join(segment_name(segments.back().expect("pushed above").start));
        let head = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&head_path)
            .map_err(|e| HistoryError::io(&head_path, e))?;
        let mut spool = Self {
            dir,
            _lock: lock,
            segments,
            head,
            cursor,
            pending_records: 0,
            segment_bytes: segment_bytes.max(1),
        };
        spool.check_boundary()?;
        spool.write_cursor()?;
        spool.delete_consumed()?;
        spool.pending_records = spool.count_pending()?;
        Ok(spool)
    }

    fn segment_path(&self, start: u64) -> PathBuf {
        self.dir.join(segment_name(start))
    }

    /// The segment holding position `pos` (a segment's end belongs to the next one).
    fn segment_of(&self, pos: u64) -> Option<&Segment> {
        self.segments
            .iter()
            .find(|s| s.start <= pos && pos < s.end())
    }

    fn check_boundary(&self) -> Result<()> {
        let Some(seg) = self.segment_of(self.cursor) else {
            return Ok(());
        };
        if self.cursor == seg.start {
            return Ok(());
        }
        let path = self.segment_path(seg.start);
        let mut f = File::open(&path).map_err(|e| HistoryError::io(&path, e))?;
        let mut b = [0u8];
        f.seek(SeekFrom::Start(self.cursor - seg.start - 1))
            .and_then(|_| f.read_exact(&mut b))
            .map_err(|e| HistoryError::io(&path, e))?;
        if b[0] != b'\n' {
            return Err(HistoryError::SpoolCorrupt {
                path: self.dir.join(CURSOR),
                reason: format!("cursor {} is not at a record boundary", self.cursor),
            });
        }
        Ok(())
    }

    fn count_pending(&self) -> Result<u64> {
        let mut n = 0;
        for seg in self.segments.iter().filter(|s| s.end() > self.cursor) {
            let path = self.segment_path(seg.start);
            let mut f = File::open(&path).map_err(|e| HistoryError::io(&path, e))?;
            n += count_lines(&mut f, self.cursor.saturating_sub(seg.start), &path)?;
        }
        Ok(n)
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether every appended record has been delivered.
    pub fn is_empty(&self) -> bool {
        self.cursor == self.end()
    }

    fn end(&self) -> u64 {
        self.segments.back().map_or(self.cursor, Segment::end)
    }

    /// Bytes appended but not yet delivered.
    pub fn pending_bytes(&self) -> u64 {
        self.end() - self.cursor
    }

    /// Records appended but not yet delivered.
    pub fn pending_records(&self) -> u64 {
        self.pending_records
    }

    /// Bytes the segment files take on disk (pending records plus the delivered part of the
    /// oldest and newest segments).
    pub fn disk_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// How many segment files there are.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Appends payloads (which must not contain `\n`; JSON from serde never does) and fsyncs.
    pub fn append<'a>(&mut self, payloads: impl IntoIterator<Item = &'a [u8]>) -> Result<()> {
        let mut buf = Vec::new();
        let mut records = 0;
        for p in payloads {
            if p.contains(&b'\n') {
                return Err(HistoryError::InvalidEvent(
                    "spool payloads must be single-line JSON".into(),
                ));
            }
            buf.extend_from_slice(p);
            buf.push(b'\n');
            records += 1;
        }
        if buf.is_empty() {
            return Ok(());
        }
        if self
            .segments
            .back()
            .is_some_and(|s| s.len >= self.segment_bytes)
        {
            self.roll()?;
        }
        let head = self
            .segments
            .back_mut()
            .expect("a spool has a head segment");
        let path = self.dir.join(segment_name(head.start));
        let res = self
            .head
            .write_all(&buf)
            .and_then(|()| self.head.sync_data());
        if let Err(e) = res {
            // Drop whatever part of the batch landed, so the log stays line-aligned.
            let _ = self.head.set_len(head.len);
            return Err(HistoryError::io(path, e));
        }
        head.len += buf.len() as u64;
        self.pending_records += records;
        Ok(())
    }

    /// Starts a new head segment at the current end.
    fn roll(&mut self) -> Result<()> {
        let start = self.end();
        let path = self.segment_path(start);
        let head = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| HistoryError::io(&path, e))?;
        sync_dir(&self.dir)?;
        // Only now, together: a failure above leaves the old head in use.
        self.head = head;
        self.segments.push_back(Segment { start, len: 0 });
        Ok(())
    }

    /// Up to `max` pending records, oldest first, read from the segment the cursor is in.
    pub fn read_pending(&mut self, max: usize) -> Result<Vec<SpoolRecord>> {
        let Some(seg) = self.segment_of(self.cursor) else {
            return Ok(Vec::new());
        };
        let (start, seg_end) = (seg.start, seg.end());
        let path = self.segment_path(start);
        let want = (seg_end - self.cursor).min(MAX_RECORD_BYTES as u64) as usize;
        let mut buf = vec![0; want];
        let mut f = File::open(&path).map_err(|e| HistoryError::io(&path, e))?;
        f.seek(SeekFrom::Start(self.cursor - start))
            .and_then(|_| f.read_exact(&mut buf))
            .map_err(|e| HistoryError::io(&path, e))?;
        let mut out = Vec::new();
        let mut from = 0;
        for (i, &b) in buf.iter().enumerate() {
            if out.len() == max {
                break;
            }
            if b == b'\n' {
                out.push(SpoolRecord {
                    end: self.cursor + i as u64 + 1,
                    payload: buf[from..i].to_vec(),
                });
                from = i + 1;
            }
        }
        if out.is_empty() && want > 0 && max > 0 {
            return Err(HistoryError::SpoolCorrupt {
                path,
                reason: format!("a pending record is larger than {MAX_RECORD_BYTES} bytes"),
            });
        }
        Ok(out)
    }

    /// Marks `delivered` (the oldest pending records, as [`read_pending`](Self::read_pending)
    /// returned them) as delivered, durably, and deletes the segments that are now wholly
    /// delivered.
    pub fn advance(&mut self, delivered: &[SpoolRecord]) -> Result<()> {
        let Some(last) = delivered.last() else {
            return Ok(());
        };
        let end = last.end;
        if end <= self.cursor {
            return Ok(());
        }
        if end > self.end() {
            return Err(HistoryError::SpoolCorrupt {
                path: self.dir.join(CURSOR),
                reason: format!("advance to {end} past the end {}", self.end()),
            });
        }
        // The file first: if it cannot be written, the cursor stays where it was and those
        // records are offered again, rather than skipped by memory and replayed by disk.
        write_cursor(&self.dir, end)?;
        self.cursor = end;
        self.pending_records = self.pending_records.saturating_sub(delivered.len() as u64);
        // The cursor has moved; what follows only reclaims disk, and a failure leaves a
        // consumed segment that the next advance or open deletes.
        if self.is_empty() && self.segments.back().is_some_and(|s| s.len > 0) {
            // Nothing pending: start an empty head so the delivered one can go too.
            if let Err(e) = self.roll() {
                tracing::warn!(error = %e, "could not start a new spool segment");
            }
        }
        if let Err(e) = self.delete_consumed() {
            tracing::warn!(error = %e, "could not delete a delivered spool segment");
        }
        Ok(())
    }

    /// Deletes every segment but the head whose records have all been delivered.
    fn delete_consumed(&mut self) -> Result<()> {
        let mut deleted = false;
        while self.segments.len() > 1 && self.segments[0].end() <= self.cursor {
            let seg = self.segments.pop_front().expect("checked above");
            let path = self.segment_path(seg.start);
            match std::fs::remove_file(&path) {
                Ok(()) => deleted = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(HistoryError::io(&path, e)),
            }
        }
        if deleted {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn write_cursor(&self) -> Result<()> {
        write_cursor(&self.dir, self.cursor)
    }
}

/// Replaces `dir/cursor` with `position` atomically: write, fsync, rename, fsync the folder.
fn write_cursor(dir: &Path, position: u64) -> Result<()> {
    let path = dir.join(CURSOR);
    let tmp = dir.join("cursor.tmp");
    let res = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(position.to_string().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()
    })();
    res.map_err(|e| HistoryError::io(path, e))
}

/// Renames an earlier version's `spool.log` + `spool.cursor` into the first segment and the
/// cursor: both count positions from the start of that one file.
fn adopt_legacy(dir: &Path) -> Result<()> {
    let log = dir.join(LEGACY_LOG);
    if !log.exists() {
        return Ok(());
    }
    let first = dir.join(segment_name(0));
    if first.exists() {
        return Err(HistoryError::SpoolCorrupt {
            path: log,
            reason: "both an old spool.log and segment files are present".into(),
        });
    }
    let rename =
        |from: &Path, to: &Path| std::fs::rename(from, to).map_err(|e| HistoryError::io(from, e));
    let cursor = dir.join(LEGACY_CURSOR);
    if cursor.exists() {
        rename(&cursor, &dir.join(CURSOR))?;
    }
    rename(&log, &first)?;
    tracing::info!(dir = %dir.display(), "adopted a spool written by an earlier version");
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(dir: &Path) -> Vec<String> {
        let mut s = Spool::open(dir).unwrap();
        s.read_all()
    }

    impl Spool {
        fn read_all(&mut self) -> Vec<String> {
            // Reads across segments without advancing: walk a copy of the cursor.
            let saved = self.cursor;
            let mut out = Vec::new();
            loop {
                let recs = self.read_pending(usize::MAX).unwrap();
                let Some(last) = recs.last() else { break };
                self.cursor = last.end;
                out.extend(
                    recs.into_iter()
                        .map(|r| String::from_utf8(r.payload).unwrap()),
                );
            }
            self.cursor = saved;
            out
        }
    }

    fn segment_files(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_str()
                    .and_then(parse_segment_name)
                    .is_some()
            })
            .count()
    }

    #[test]
    fn append_read_advance_compact() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open(d.path()).unwrap();
        assert!(s.is_empty());
        s.append([&b"{\"a\":1}"[..], b"{\"a\":2}"]).unwrap();
        s.append([&b"{\"a\":3}"[..]]).unwrap();
        assert_eq!(s.pending_records(), 3);
        let recs = s.read_pending(2).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].payload, b"{\"a\":1}");
        s.advance(&recs).unwrap();
        assert_eq!(s.pending_records(), 1);
        drop(s);
        assert_eq!(pending(d.path()), vec!["{\"a\":3}"]);
        let mut s = Spool::open(d.path()).unwrap();
        assert_eq!(s.pending_records(), 1);
        let recs = s.read_pending(10).unwrap();
        s.advance(&recs).unwrap();
        assert!(s.is_empty());
        assert_eq!(
            s.disk_bytes(),
            0,
            "a drained spool keeps no records on disk"
        );
        assert!(s.read_pending(10).unwrap().is_empty());
    }

    #[test]
    fn segments_are_deleted_while_the_backlog_drains() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Spool::open_with(d.path(), 100).unwrap();
        let payload = [b'x'; 39]; // 40 bytes a record: three fill a segment past 100
        for _ in 0..30 {
            s.append([&payload[..]]).unwrap();
        }
        assert_eq!(s.pending_records(), 30);
        let full = s.disk_bytes();
        let files = segment_files(d.path());
        assert!(files >= 9, "{files} segments");
        // Deliver half: the disk shrinks although records are still pending.
        let mut delivered = 0;
        while delivered < 15 {
            let recs = s.read_pending(15 - delivered).unwrap();
            delivered += recs.len();
            s.advance(&recs).unwrap();
        }
        assert_eq!(s.pending_records(), 15);
        assert!(!s.is_empty());
        assert!(
            s.disk_bytes() < full * 2 / 3,
            "{} of {full}",
            s.disk_bytes()
        );
        assert!(segment_files(d.path()) < files);
        drop(s);
        let got = pending(d.path());
        assert_eq!(got.len(), 15);
    }

    #[test]
    fn state_survives_reopen_and_torn_tail_is_dropped() {
        let d = tempfile::tempdir().unwrap();
        {
            let mut s = Spool::open(d.path()).unwrap();
            s.append([&b"one"[..], b"two", b"three"]).unwrap();
            let r = s.read_pending(1).unwrap();
            s.advance(&r).unwrap();
        }
        // Simulate a crash in the middle of an append.
        let mut f = OpenOptions::new()
            .append(true)
            .open(d.path().join(segment_name(0)))
            .unwrap();
        f.write_all(b"{\"torn").unwrap();
        drop(f);
        let mut s = Spool::open(d.path()).unwrap();
        assert_eq!(s.pending_records(), 2);
        assert_eq!(s.read_all(), vec!["two", "three"]);
        s.append([&b"four"[..]]).unwrap();
        drop(s);
        assert_eq!(pending(d.path()), vec!["two", "three", "four"]);
    }

    #[test]
    fn a_second_process_is_locked_out() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        assert!(matches!(
            Spool::open(d.path()),
            Err(HistoryError::SpoolLocked(_))
        ));
        drop(s);
        Spool::open(d.path()).unwrap();
    }

    #[test]
    fn an_earlier_versions_spool_is_adopted() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(LEGACY_LOG), b"a\nb\nc\n").unwrap();
        std::fs::write(d.path().join(LEGACY_CURSOR), b"2").unwrap();
        assert_eq!(pending(d.path()), vec!["b", "c"]);
        // Its compaction could crash between truncating the log and resetting the cursor.
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(LEGACY_LOG), b"").unwrap();
        std::fs::write(d.path().join(LEGACY_CURSOR), b"120").unwrap();
        let mut s = Spool::open(d.path()).unwrap();
        assert!(s.is_empty());
        s.append([&b"next"[..]]).unwrap();
        drop(s);
        assert_eq!(pending(d.path()), vec!["next"]);
    }

    #[test]
    fn misaligned_cursor_is_corruption() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(segment_name(0)), b"abc\ndef\n").unwrap();
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
