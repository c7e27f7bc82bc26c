//! The daemon's stdout off the event loop: lines go through a bounded queue to a writer
//! thread, so a reader that is slow or gone quiet (a pipe nobody reads, a paused terminal)
//! never blocks the loop. A line the queue cannot take is dropped and counted; counts and
//! detection never wait for stdout.
use std::{
    io::{self, Write},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// Lines queued for the writer at most (a few MB of text): bursts pass, a stall drops.
const QUEUE_LINES: usize = 16_384;

/// What the writer thread tells the loop.
#[derive(Debug, Default)]
struct Shared {
    /// Lines written.
    written: AtomicU64,
    /// stdout refused a write (closed: `| head`); nothing more is written.
    closed: AtomicBool,
}

/// What happened to a line handed to [`Output::line`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    Queued,
    /// The queue was full: dropped and counted.
    Dropped,
    /// stdout is closed: printing is over (not counted as drops).
    Closed,
}

pub struct Output {
    queue: Option<SyncSender<String>>,
    writer: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    queued: u64,
    dropped: u64,
}

impl Output {
    /// A writer thread on stdout.
    pub fn stdout() -> Output {
        Output::start(QUEUE_LINES, io::stdout)
    }

    /// A writer thread writing to what `open` returns (in its own thread), `capacity` lines
    /// queued at most.
    fn start<W: Write>(capacity: usize, open: impl FnOnce() -> W + Send + 'static) -> Output {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let shared = Arc::new(Shared::default());
        let theirs = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("linkprobe-out".into())
            .spawn(move || write_lines(&rx, &mut open(), &theirs));
        let writer = match writer {
            Ok(w) => Some(w),
            Err(e) => {
                log::error!("no output thread ({e}): events are not printed");
                shared.closed.store(true, Ordering::Relaxed);
                None
            }
        };
        Output {
            queue: writer.as_ref().map(|_| tx),
            writer,
            shared,
            queued: 0,
            dropped: 0,
        }
    }

    /// Queues one line (without its newline); never blocks.
    pub fn line(&mut self, line: String) -> Delivery {
        let Some(queue) = &self.queue else {
            return Delivery::Closed;
        };
        if self.shared.closed.load(Ordering::Relaxed) {
            return Delivery::Closed;
        }
        match queue.try_send(line) {
            Ok(()) => {
                self.queued += 1;
                Delivery::Queued
            }
            Err(TrySendError::Full(_)) => {
                self.dropped += 1;
                Delivery::Dropped
            }
            Err(TrySendError::Disconnected(_)) => Delivery::Closed,
        }
    }

    /// Lines dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Lets the writer empty the queue for at most `within`; returns the lines it did not
    /// write (stdout stalled: the writer is left behind, the process exits without it).
    pub fn finish(&mut self, within: Duration) -> u64 {
        self.queue = None;
        let deadline = Instant::now() + within;
        if let Some(writer) = self.writer.take() {
            while !writer.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if writer.is_finished() {
                let _ = writer.join();
            }
        }
        if self.shared.closed.load(Ordering::Relaxed) {
            return 0;
        }
        self.queued
            .saturating_sub(self.shared.written.load(Ordering::Relaxed))
    }
}

/// The writer thread: each batch the queue holds is written, then flushed once.
fn write_lines(rx: &Receiver<String>, out: &mut impl Write, shared: &Shared) {
    while let Ok(first) = rx.recv() {
        let mut n = 0u64;
        let mut result = writeln!(out, "{first}");
        if result.is_ok() {
            n += 1;
        }
        while result.is_ok() {
            let Ok(line) = rx.try_recv() else { break };
            result = writeln!(out, "{line}");
            if result.is_ok() {
                n += 1;
            }
        }
        let result = result.and_then(|()| out.flush());
        if result.is_err() {
            // Closed (EPIPE): printing stops, the daemon goes on.
            shared.closed.store(true, Ordering::Relaxed);
            return;
        }
        shared.written.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Condvar, Mutex};

    use super::*;

    /// Whether the gate is open, and what passed it.
    #[derive(Default)]
    struct Passed {
        open: bool,
        bytes: Vec<u8>,
    }

    /// A sink that blocks every write until opened: a reader that went quiet.
    #[derive(Clone, Default)]
    struct Gate(Arc<(Mutex<Passed>, Condvar)>);

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let (lock, cv) = &*self.0;
            let mut g = lock.lock().unwrap();
            while !g.open {
                g = cv.wait(g).unwrap();
            }
            g.bytes.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Gate {
        fn open(&self) {
            let (lock, cv) = &*self.0;
            lock.lock().unwrap().open = true;
            cv.notify_all();
        }
        fn text(&self) -> String {
            String::from_utf8(self.0 .0.lock().unwrap().bytes.clone()).unwrap()
        }
    }

    #[test]
    fn a_stalled_reader_drops_and_counts_instead_of_blocking() {
        let gate = Gate::default();
        let sink = gate.clone();
        let mut out = Output::start(4, move || sink);
        let sent: Vec<Delivery> = (0..100).map(|i| out.line(format!("line {i}"))).collect();
        // The writer holds one line in a blocked write, the queue four; the rest drop.
        let queued = sent.iter().filter(|d| **d == Delivery::Queued).count();
        assert!((4..=5).contains(&queued), "{queued}");
        assert_eq!(out.dropped(), 100 - queued as u64);
        // Nobody reads: finishing gives up after its bound and says what was not written.
        assert_eq!(out.finish(Duration::from_millis(50)), queued as u64);
        gate.open();
    }

    #[test]
    fn a_reader_that_keeps_up_gets_every_line_in_order() {
        let gate = Gate::default();
        gate.open();
        let sink = gate.clone();
        let mut out = Output::start(1024, move || sink);
        for i in 0..500 {
            assert_eq!(out.line(format!("{i}")), Delivery::Queued);
        }
        assert_eq!(out.finish(Duration::from_secs(30)), 0);
        let expected: String = (0..500).map(|i| format!("{i}\n")).collect();
        assert_eq!(gate.text(), expected);
        assert_eq!(out.dropped(), 0);
    }

    #[test]
    fn a_closed_stdout_stops_printing_without_counting_drops() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut out = Output::start(8, || Closed);
        out.line("first".into());
        let deadline = Instant::now() + Duration::from_secs(30);
        while out.line("more".into()) != Delivery::Closed && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(out.line("after".into()), Delivery::Closed);
        assert_eq!(out.finish(Duration::from_secs(1)), 0);
    }
}
