//! Drains the ring buffer. Wake-ups are batched in the kernel, so the daemon also drains on a
//! short timer; a storm costs one wake-up per batch, not per record.
use std::io;

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

    /// Hands up to `limit` available records to `f`; returns how many there were (`limit`:
    /// there may be more).
    pub fn drain(&mut self, limit: usize, mut f: impl FnMut(&[u8])) -> usize {
        let ring = self.ring.get_mut();
        let mut n = 0;
        while n < limit {
            let Some(item) = ring.next() else { break };
            f(&item);
            n += 1;
        }
        n
    }
}
