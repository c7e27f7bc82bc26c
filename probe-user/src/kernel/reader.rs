//! Drains the ring buffer. Wake-ups are batched in the kernel, so the daemon also drains on a
//! short timer; a storm costs one wake-up per batch, not per record.
use std::{
    io,
    time::{Duration, Instant},
};

use aya::{
    maps::{MapData, RingBuf},
    Ebpf,
};
use tokio::io::unix::AsyncFd;

#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    #[error("ring buffer map EVENTS is missing from the eBPF object")]
    Missing,
    #[error("ring buffer map EVENTS: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("registering the ring buffer with the event loop: {0}")]
    Register(io::Error),
}

pub struct EventReader {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl EventReader {
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, ReaderError> {
        let map = ebpf.take_map("EVENTS").ok_or(ReaderError::Missing)?;
        let ring = RingBuf::try_from(map)?;
        // SAFETY: the ring owns its map fd, which stays open and unchanged until the AsyncFd
        // (and the ring inside it) is dropped.
        let ring =
            unsafe { AsyncFd::register(ring) }.map_err(|e| ReaderError::Register(e.into()))?;
        Ok(EventReader { ring })
    }

    /// Waits until the kernel signals data (a batch is ready).
    pub async fn readable(&mut self) -> io::Result<()> {
        let mut guard = self.ring.readable_mut().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Hands up to `limit` available records to `f`, stopping early once `budget` has passed
    /// (checked every [`BUDGET_CHECK_EVERY`] records), so a turn of the event loop is bounded
    /// in time whatever a record costs (a debug build, a slow CPU, a busy machine).
    pub fn drain(&mut self, limit: usize, budget: Duration, mut f: impl FnMut(&[u8])) -> Drained {
        let ring = self.ring.get_mut();
        let started = Instant::now();
        let mut records = 0;
        while records < limit {
            if records % BUDGET_CHECK_EVERY == BUDGET_CHECK_EVERY - 1 && started.elapsed() >= budget
            {
                return Drained {
                    records,
                    more: true,
                };
            }
            let Some(item) = ring.next() else {
                return Drained {
                    records,
                    more: false,
                };
            };
            f(&item);
            records += 1;
        }
        Drained {
            records,
            more: true,
        }
    }
}

/// How often [`EventReader::drain`] looks at the clock: often enough that a turn overshoots its
/// budget by little, rarely enough that reading the clock costs nothing next to the records.
const BUDGET_CHECK_EVERY: usize = 64;

/// What one [`EventReader::drain`] took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    pub records: usize,
    /// It stopped at its limit or budget: the ring may hold more.
    pub more: bool,
}
