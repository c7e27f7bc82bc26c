//! The event loop: one `select!` over the ring, the timers, the eBPF log, API queries and the
//! signals, each turn handed to [`LoopState`]; then [`finish`] after SIGINT/SIGTERM.
use std::time::Duration;

use aya_log::EbpfLogger;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
    time::{interval, Interval, MissedTickBehavior},
};

use crate::{
    api::ApiLoop,
    cli::ProbeArgs,
    clock::monotonic_ns,
    daemon::{
        error::RunError,
        printer::Printer,
        start::{attribution, ephemeral_ports, Started},
        state::LoopState,
    },
    kernel::reader::EventReader,
    pipeline::Pipeline,
};

/// Records taken from the ring per drain: signals, ticks and API queries get their turn
/// between batches, even under a storm. A turn drains at most twice (in the tick or query
/// arm, then after the `select!`), so at most 2 × `DRAIN_BATCH` records, and in time
/// `DRAIN_BUDGET` plus that of the arm (a query's drain has the longer `QUERY_DRAIN_BUDGET`);
/// each record is of bounded cost:
/// the pipeline's tables are O(1) per record and printing only queues (`printer`, `output`).
const DRAIN_BATCH: usize = 8192;

/// And at most this long per drain, so the turn's bound holds in time too: a record's cost
/// varies (debug builds, slow or busy CPUs), an API client's patience does not.
const DRAIN_BUDGET: Duration = Duration::from_millis(50);

/// A query first takes what the ring holds, so that what a user just did is in the answer
/// (`curl …; linkprobe flows`): up to a batch, for at most this long.
const QUERY_DRAIN_BUDGET: Duration = Duration::from_secs(1);

/// Runs until SIGINT/SIGTERM, then drains the ring and prints the final counters. With `api`
/// (the daemon), it also answers API queries and feeds live watchers.
pub async fn run(
    args: &ProbeArgs,
    started: Started,
    mut api: Option<ApiLoop>,
) -> Result<(), RunError> {
    let Started {
        mut loaded,
        config,
        existing,
        scoped_netns,
        exporter,
    } = started;
    let mut reader = EventReader::new(&mut loaded.ebpf)?;
    let mut logger = match EbpfLogger::init(&mut loaded.ebpf) {
        // SAFETY: the logger owns its ring fd for its whole lifetime inside the AsyncFd.
        Ok(l) => unsafe { AsyncFd::register(l) }.ok(),
        Err(e) => {
            log::warn!("eBPF log forwarding is off: {e}");
            None
        }
    };
    let mut sigint = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let mut drain_tick = every(Duration::from_millis(args.drain_interval_ms));
    let mut second = every(Duration::from_secs(1));
    let mut pipeline = Pipeline::new(&config, ephemeral_ports());
    pipeline.attrib = attribution(args, &config);
    pipeline.attrib.set_home_netns(scoped_netns);
    pipeline.requests =
        crate::pipeline::requests::Requests::start(&config.envoy, config.flows.retain_closed_secs);
    if let Some((netns, sockets)) = &existing {
        pipeline.seed_existing(*netns, sockets, monotonic_ns());
    }
    let mut queries = api.as_mut().and_then(ApiLoop::take_queries);
    let printer = Printer::new(args.output, !args.no_events);
    let mut state = LoopState::new(&loaded, pipeline, config, printer, api, exporter);
    state.publish();
    // A full batch means the ring holds more: come straight back, after whatever else is due.
    let mut backlog = false;
    loop {
        tokio::select! {
            r = reader.readable(), if !backlog => r.map_err(RunError::Poll)?,
            () = std::future::ready(()), if backlog => {}
            // Every drain tick: `--backup-probes auto` reacts to the first skipped run at once.
            _ = drain_tick.tick() => state.ensure_backups(),
            _ = second.tick() => {
                reader.drain(DRAIN_BATCH, DRAIN_BUDGET, |bytes| state.record(bytes));
                state.tick();
                state.publish();
            }
            Some(guard) = async {
                match logger.as_mut() {
                    Some(l) => l.readable_mut().await.ok(),
                    None => std::future::pending().await,
                }
            } => {
                let mut guard = guard;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            Some(q) = async {
                match queries.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                // Answer from fresh state: take what the ring holds first.
                reader.drain(DRAIN_BATCH, QUERY_DRAIN_BUDGET, |bytes| state.record(bytes));
                state.answer(q);
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
        backlog = reader
            .drain(DRAIN_BATCH, DRAIN_BUDGET, |bytes| state.record(bytes))
            .more;
    }
    finish(args, reader, state)?;
    drop(loaded);
    eprintln!("linkprobe: probes detached");
    Ok(())
}

/// Records submitted before the signal are still in the ring: take them (at most two rings'
/// worth, so a storm that keeps filling it cannot hold the exit), then the state's last words.
fn finish(
    args: &ProbeArgs,
    mut reader: EventReader,
    mut state: LoopState<'_>,
) -> Result<(), RunError> {
    let ring_records = args.ring_bytes as usize / probe_common::FLOW_RECORD_SIZE;
    reader.drain(2 * ring_records.max(DRAIN_BATCH), Duration::MAX, |bytes| {
        state.record(bytes)
    });
    state.finish(args.dump_flows)
}

fn every(period: Duration) -> Interval {
    let mut i = interval(period);
    i.set_missed_tick_behavior(MissedTickBehavior::Delay);
    i
}
