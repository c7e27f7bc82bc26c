//! Following one log file like `tail -F`: read what was appended since the last poll, line by
//! line; a rename (rotation: the path now names another inode) first drains the old file to
//! its end, then reads the new one from its start; a file shorter than what was read
//! (truncation, `copytruncate`) is read again from its start. Lines are bounded: one longer
//! than `max_line` is skipped up to its newline and counted. Opening never blocks (`O_NONBLOCK`,
//! then only regular files are read: a FIFO put in place of a log must not hang the reader).
use std::{
    fs::File,
    io::{Read, Seek, SeekFrom},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

/// Bytes read from one file per poll: a huge backlog is taken over several polls.
const READ_BUDGET: usize = 4 << 20;
const CHUNK: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not a regular file")]
    NotAFile(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a poll saw, beyond lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PollStats {
    pub bytes: u64,
    pub rotations: u64,
    pub truncations: u64,
    pub overlong: u64,
}

pub struct Tail {
    path: PathBuf,
    open: Option<Open>,
    max_line: usize,
    /// A line not yet ended by a newline (bounded by `max_line`).
    partial: Vec<u8>,
    /// Inside a line that passed `max_line`: skip to its newline.
    skipping: bool,
    /// The path disappeared after its file was read to the end (renamed away): the file
    /// that appears there next is a rotation.
    moved_away: bool,
}

struct Open {
    file: File,
    id: (u64, u64),
    offset: u64,
}

impl Tail {
    /// Follows `path`; `from_end`: skip what the file holds now (a file present when the
    /// daemon starts: its requests predate the flows we saw).
    pub fn new(path: PathBuf, max_line: usize, from_end: bool) -> Result<Tail, FollowError> {
        let mut t = Tail {
            path,
            open: None,
            max_line,
            partial: Vec::new(),
            skipping: false,
            moved_away: false,
        };
        let mut open = t.open_path()?;
        if from_end {
            open.offset = open.file.metadata().map_or(0, |m| m.len());
        }
        t.open = Some(open);
        Ok(t)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open_path(&self) -> Result<Open, FollowError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&self.path)
            .map_err(|source| FollowError::Open {
                path: self.path.clone(),
                source,
            })?;
        let meta = file.metadata().map_err(|source| FollowError::Read {
            path: self.path.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(FollowError::NotAFile(self.path.clone()));
        }
        Ok(Open {
            file,
            id: (meta.dev(), meta.ino()),
            offset: 0,
        })
    }

    /// Reads what is new; each complete line goes to `line`. An error leaves the tail
    /// usable: the next poll tries again (a path that came back is reopened).
    pub fn poll(&mut self, line: &mut dyn FnMut(&[u8])) -> Result<PollStats, FollowError> {
        let mut stats = PollStats::default();
        let now = std::fs::metadata(&self.path);
        let renamed = match (&self.open, &now) {
            (Some(o), Ok(m)) => (m.dev(), m.ino()) != o.id,
            (Some(_), Err(_)) => true,
            (None, _) => false,
        };
        if renamed {
            // Rotation: what was appended to the old file before the rename is still ours.
            if let Some(mut old) = self.open.take() {
                self.read_open(&mut old, &mut stats, line)?;
                self.end_file(line);
            }
            if now.is_ok() {
                stats.rotations += 1;
            } else {
                self.moved_away = true;
            }
        }
        if self.open.is_none() {
            // Gone (and not back yet): the caller reports it; nothing to read.
            now.map_err(|source| FollowError::Open {
                path: self.path.clone(),
                source,
            })?;
            self.open = Some(self.open_path()?);
            if std::mem::take(&mut self.moved_away) {
                stats.rotations += 1;
            }
        }
        let Some(mut open) = self.open.take() else {
            return Ok(stats);
        };
        let len = open.file.metadata().map_or(open.offset, |m| m.len());
        if len < open.offset {
            stats.truncations += 1;
            open.offset = 0;
            self.partial.clear();
            self.skipping = false;
        }
        let r = self.read_open(&mut open, &mut stats, line);
        self.open = Some(open);
        r.map(|()| stats)
    }

    /// The old file of a rotation ended: a last line without a newline is still a line.
    fn end_file(&mut self, line: &mut dyn FnMut(&[u8])) {
        if !self.partial.is_empty() && !self.skipping {
            line(&self.partial);
        }
        self.partial.clear();
        self.skipping = false;
    }

    fn read_open(
        &mut self,
        open: &mut Open,
        stats: &mut PollStats,
        line: &mut dyn FnMut(&[u8]),
    ) -> Result<(), FollowError> {
        let path = self.path.clone();
        let err = |source| FollowError::Read {
            path: path.clone(),
            source,
        };
        open.file.seek(SeekFrom::Start(open.offset)).map_err(err)?;
        let mut buf = vec![0u8; CHUNK];
        let mut budget = READ_BUDGET;
        while budget > 0 {
            let n = match open.file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(err(e)),
            };
            open.offset += n as u64;
            stats.bytes += n as u64;
            budget = budget.saturating_sub(n);
            self.split(&buf[..n], stats, line);
        }
        Ok(())
    }

    fn split(&mut self, mut data: &[u8], stats: &mut PollStats, line: &mut dyn FnMut(&[u8])) {
        while !data.is_empty() {
            let (piece, ended) = match data.iter().position(|b| *b == b'\n') {
                Some(i) => (&data[..i], Some(i + 1)),
                None => (data, None),
            };
            if !self.skipping {
                if self.partial.len() + piece.len() > self.max_line {
                    self.skipping = true;
                    self.partial.clear();
                    stats.overlong += 1;
                } else if ended.is_some() && self.partial.is_empty() {
                    // The common case: a whole line in the buffer, no copy.
                    line(strip_cr(piece));
                } else {
                    self.partial.extend_from_slice(piece);
                    if ended.is_some() {
                        line(strip_cr(&self.partial));
                        self.partial.clear();
                    }
                }
            }
            match ended {
                Some(i) => {
                    self.skipping = false;
                    data = &data[i..];
                }
                None => break,
            }
        }
    }
}

fn strip_cr(l: &[u8]) -> &[u8] {
    l.strip_suffix(b"\r").unwrap_or(l)
}
