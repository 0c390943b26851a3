//! The metering spool: usage events that did not fit in memory while
//! metering was unreachable, kept on disk until metering has taken them.
//!
//! A spool is one directory (one per edge, held with a lock file) of
//! segments `segment-<N>.bin`, N rising. A segment is the 8-byte magic
//! [`MAGIC`] and then records, each a protobuf `UsageEvent` behind its
//! varint length (prost's length-delimited encoding, as
//! `writeDelimitedTo`). Records are appended to the one open segment; past
//! `spool_segment_bytes` it is closed (fsync'd) and the next begins. The
//! shipper drains closed segments oldest first and deletes one only after
//! metering acknowledged every event in it; an edge that dies mid-segment
//! sends that segment again at its next start, which metering's idempotency
//! by request id makes harmless. A record cut short by a crash ends its
//! segment: what precedes it is replayed, the tail is logged and skipped.
//!
//! Everything here is blocking file I/O: appends are one small `write`
//! (only while metering is failing); fsync, reading a segment and opening
//! the spool go through `spawn_blocking` in the shipper.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use llmgw_proto::UsageEvent;
use prost::Message as _;

/// The first bytes of every segment: format and version.
pub(super) const MAGIC: &[u8; 8] = b"LGWMTR1\n";

/// A closed segment, waiting to be sent.
#[derive(Debug, Clone)]
pub(super) struct Segment {
    pub seq: u64,
    pub path: PathBuf,
    pub bytes: u64,
}

struct OpenSegment {
    segment: Segment,
    file: File,
}

/// Why an event could not be spooled.
#[derive(Debug)]
pub(super) enum Refused {
    /// The spool holds `spool_max_bytes` already.
    Full,
    /// The disk said no.
    Io(io::Error),
}

pub(super) struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    /// Closed segments, oldest first.
    closed: VecDeque<Segment>,
    open: Option<OpenSegment>,
    next_seq: u64,
    /// Bytes on disk, closed and open segments together.
    bytes: u64,
    /// Held (locked) while this spool is in use.
    _lock: File,
}

impl Spool {
    /// Opens (creating) the spool in `dir` and finds the segments a previous
    /// run left, which come first when draining.
    pub fn open(dir: &Path, max_bytes: u64, segment_bytes: u64) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))?;
        lock.try_lock().map_err(|e| match e {
            fs::TryLockError::WouldBlock => {
                io::Error::other(format!("spool {} is in use by another edge", dir.display()))
            }
            fs::TryLockError::Error(e) => e,
        })?;
        let mut closed = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(seq) = name
                .to_str()
                .and_then(|n| n.strip_prefix("segment-"))
                .and_then(|n| n.strip_suffix(".bin"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            closed.push(Segment {
                seq,
                path: entry.path(),
                bytes: entry.metadata()?.len(),
            });
        }
        closed.sort_by_key(|s| s.seq);
        let next_seq = closed.last().map_or(0, |s| s.seq + 1);
        let bytes = closed.iter().map(|s| s.bytes).sum();
        Ok(Self {
            dir: dir.to_owned(),
            max_bytes,
            segment_bytes,
            closed: closed.into(),
            open: None,
            next_seq,
            bytes,
            _lock: lock,
        })
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether no event waits on disk.
    pub fn is_empty(&self) -> bool {
        self.closed.is_empty() && self.open.is_none()
    }

    /// Appends `event` to the open segment. When that closes the segment,
    /// its file comes back to be fsync'd off the async threads.
    pub fn append(&mut self, event: &UsageEvent) -> Result<Option<File>, Refused> {
        let record = event.encode_length_delimited_to_vec();
        let header = if self.open.is_none() { MAGIC.len() } else { 0 };
        let need = (record.len() + header) as u64;
        if self.bytes + need > self.max_bytes {
            return Err(Refused::Full);
        }
        let open = match &mut self.open {
            Some(open) => open,
            None => {
                let seq = self.next_seq;
                let path = self.dir.join(format!("segment-{seq:016}.bin"));
                let mut file = OpenOptions::new()
                    .create_new(true)
                    .append(true)
                    .open(&path)
                    .map_err(Refused::Io)?;
                file.write_all(MAGIC).map_err(Refused::Io)?;
                self.next_seq += 1;
                self.bytes += MAGIC.len() as u64;
                self.open.insert(OpenSegment {
                    segment: Segment {
                        seq,
                        path,
                        bytes: MAGIC.len() as u64,
                    },
                    file,
                })
            }
        };
        if let Err(e) = open.file.write_all(&record) {
            // Part of the record may be on disk: it ends this segment (the
            // reader stops there), and the next event begins a new one.
            open.segment.bytes += record.len() as u64;
            self.bytes += record.len() as u64;
            self.close_open();
            return Err(Refused::Io(e));
        }
        open.segment.bytes += record.len() as u64;
        self.bytes += record.len() as u64;
        if open.segment.bytes >= self.segment_bytes {
            Ok(self.close_open())
        } else {
            Ok(None)
        }
    }

    /// Closes the open segment, if any, so it can be drained; its file comes
    /// back to be fsync'd.
    pub fn close_open(&mut self) -> Option<File> {
        let open = self.open.take()?;
        self.closed.push_back(open.segment);
        Some(open.file)
    }

    /// The oldest closed segment.
    pub fn oldest(&self) -> Option<&Segment> {
        self.closed.front()
    }

    /// Deletes the oldest closed segment: metering has every event in it, or
    /// it could not be read (then it is kept aside as `.bad`).
    pub fn remove_oldest(&mut self, keep_as_bad: bool) -> io::Result<()> {
        let Some(segment) = self.closed.pop_front() else {
            return Ok(());
        };
        self.bytes = self.bytes.saturating_sub(segment.bytes);
        if keep_as_bad {
            fs::rename(&segment.path, segment.path.with_extension("bin.bad"))
        } else {
            fs::remove_file(&segment.path)
        }
    }
}

/// Reads a segment: its events, and how many bytes at its end were cut
/// short (a crash mid-append) and skipped.
pub(super) fn read_segment(path: &Path) -> io::Result<(Vec<UsageEvent>, usize)> {
    let data = fs::read(path)?;
    if data.is_empty() {
        // Created, then the edge died before the magic reached the disk.
        return Ok((Vec::new(), 0));
    }
    let Some(mut rest) = data.strip_prefix(MAGIC.as_slice()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a metering spool segment",
        ));
    };
    let mut events = Vec::new();
    while !rest.is_empty() {
        let left = rest.len();
        match UsageEvent::decode_length_delimited(&mut rest) {
            Ok(event) => events.push(event),
            Err(_) => return Ok((events, left)),
        }
    }
    Ok((events, 0))
}
