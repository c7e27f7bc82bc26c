//! The event loop's consumer: decodes records, feeds the flow table and detectors, writes
//! events and anomalies out, answers API queries, publishes metrics, and attaches the backup
//! programs when the kernel starts skipping probe runs.
use std::{
    collections::BTreeMap,
    io,
    time::{Duration, Instant},
};

use crate::{
    api::{self, answer::LoopState, proto::Query, ApiLoop, Live, LoopQuery},
    cli::ProbeArgs,
    clock::monotonic_ns,
    config::Config,
    daemon::exporter::{Exporter, Snapshot},
    event::decode::{decode, decode_record},
    event::kind_name,
    kernel::backups::BackupMode,
    kernel::counters,
    kernel::loader::{Loaded, OpenFlowsError},
    kernel::probes::ProbeState,
    kernel::progstats,
    pipeline::metrics::Health,
    pipeline::Pipeline,
    render::anomaly::{self, AnomalyRecord},
    render::event::{self, EventRecord},
    render::flow::{self, FlowRecord},
    render::table::Paint,
    render::{self, Format},
};

/// How often a query may rerun the open-flow iterator (a pass over every TCP socket of the
/// host); queries in between answer from the last pass.
const OPEN_FLOWS_MIN_GAP: Duration = Duration::from_secs(1);

/// Decodes records, feeds the flow table and detectors, and writes events and anomalies out;
/// keeps per-kind record counts for the summary.
pub(crate) struct Sink<'a> {
    format: Format,
    print_events: bool,
    pub(crate) loaded: &'a Loaded,
    pub(crate) pipeline: Pipeline,
    /// When the open-flow iterator last ran.
    open_flows_at: Option<Instant>,
    /// The API's loop side (daemon only): live items for watchers.
    api: Option<ApiLoop>,
    config: Config,
    started: Instant,
    pub(crate) records: BTreeMap<&'static str, u64>,
    pub(crate) decode_errors: u64,
    /// Whether `--backup-probes auto` has tried to attach the backups.
    backups_tried: bool,
    stdout: io::Stdout,
    pub(crate) exporter: Option<Exporter>,
    kernel_release: String,
}

impl<'a> Sink<'a> {
    pub(crate) fn new(
        args: &ProbeArgs,
        loaded: &'a Loaded,
        pipeline: Pipeline,
        config: Config,
        api: Option<ApiLoop>,
    ) -> Self {
        Sink {
            format: args.output,
            print_events: !args.no_events,
            loaded,
            pipeline,
            open_flows_at: None,
            api,
            config,
            started: Instant::now(),
            records: BTreeMap::new(),
            decode_errors: 0,
            backups_tried: false,
            stdout: io::stdout(),
            exporter: None,
            kernel_release: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|r| r.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
        }
    }

    /// `--backup-probes auto`: attaches the backup programs once the kernel has skipped one of
    /// the probes (tried once; hits skipped before are counted as unrecovered).
    pub(crate) fn ensure_backups(&mut self) {
        let backups = &self.loaded.backups;
        // No backup loaded (none can, before 5.11): nothing to attach, and the skipped runs are
        // exported as they are.
        if self.backups_tried
            || backups.mode != BackupMode::Auto
            || backups.probes().next().is_none()
        {
            return;
        }
        let misses = progstats::recursion_misses(&self.loaded.ebpf, &self.loaded.probes);
        let skipped: u64 = misses.values().sum();
        if skipped == 0 {
            return;
        }
        self.backups_tried = true;
        match backups.attach(&self.loaded.ebpf) {
            Ok(()) => log::warn!(
                "the kernel skipped {skipped} runs of linkprobe's probes (already running on \
                 that CPU: preempted or interrupted inside them); backup programs attached, so \
                 later skips are handled (see linkprobe_probe_recursion_misses_total)"
            ),
            Err(e) => log::error!(
                "the kernel skipped {skipped} runs of linkprobe's probes and the backup \
                 programs could not be attached ({e}): those hits are lost, counted in \
                 linkprobe_probe_recursion_misses_total"
            ),
        }
    }

    /// Hands the exporter a fresh snapshot: traffic metrics, anomalies and self-health with
    /// the kernel's counters read now (after a drain, so the sums match them).
    pub(crate) fn publish(&self) {
        let Some(exporter) = &self.exporter else {
            return;
        };
        let kernel = match counters::read(&self.loaded.ebpf, &self.loaded.reason_names) {
            Ok(k) => k,
            Err(e) => {
                // No snapshot: /readyz turns stale and says so.
                log::error!("metrics not published: {e}");
                return;
            }
        };
        let detect = self.pipeline.detectors.stats();
        let recursion_misses = progstats::unrecovered(
            &progstats::recursion_misses(&self.loaded.ebpf, &self.loaded.probes),
            &kernel.backup_runs,
        );
        let health = Health {
            kernel: &kernel,
            records: &self.records,
            decode_errors: self.decode_errors,
            flows: self.pipeline.flows.stats(),
            max_flows: self.config.flows.max_flows,
            detect: &detect,
            probes: &self.loaded.probes,
            recursion_misses: &recursion_misses,
            version: env!("CARGO_PKG_VERSION"),
            kernel_release: &self.kernel_release,
        };
        let families = self
            .pipeline
            .metrics
            .families(&health, self.pipeline.detectors.active());
        let probes_down = self
            .loaded
            .probes
            .iter()
            .filter_map(|p| match &p.state {
                ProbeState::Off(why) => Some(format!("{}: {why}", p.spec.program)),
                ProbeState::Attached | ProbeState::Skipped(_) => None,
            })
            .collect();
        exporter.publish(Snapshot {
            families,
            published_ns: monotonic_ns(),
            probes_total: self.loaded.probes.len(),
            probes_down,
        });
    }

    fn write(&mut self, line: &str) {
        let mut out = self.stdout.lock();
        if render::emit_line(&mut out, line).is_err() {
            // stdout closed (e.g. `| head`): keep counting and detecting, stop printing.
            self.format = Format::None;
        }
    }

    /// Closes detector windows; reports anomaly changes on stdout and in the log.
    pub(crate) fn tick(&mut self) {
        let now = monotonic_ns();
        for change in self.pipeline.tick(now) {
            let record = AnomalyRecord::of_change(&change, now);
            // Text output already shows it on stdout; otherwise the log is where people look.
            if self.format != Format::Text {
                log::warn!("{}", anomaly::line(&record, Paint::OFF));
            }
            let line = match self.format {
                Format::None => None,
                Format::Text => Some(anomaly::line(&record, Paint::OFF)),
                Format::Json => Some(render::json_line(&record)),
            };
            if let Some(api) = self.api.as_ref().filter(|a| a.watched()) {
                api.publish(Live::Anomaly(record));
            }
            let Some(line) = line else {
                continue;
            };
            self.write(&line);
        }
    }

    /// Open flows as the kernel holds them now (the event path only reports flows that end or
    /// misbehave): fed through the pipeline like records, at most once per
    /// [`OPEN_FLOWS_MIN_GAP`].
    pub(crate) fn refresh_open_flows(&mut self) {
        if self
            .open_flows_at
            .is_some_and(|at| at.elapsed() < OPEN_FLOWS_MIN_GAP)
        {
            return;
        }
        self.open_flows_at = Some(Instant::now());
        match self.loaded.open_flows() {
            Ok(records) => {
                log::debug!("open-flow iterator: {} flows", records.len());
                for raw in &records {
                    match decode_record(raw) {
                        Ok(ev) => self.pipeline.on_event(&ev, &self.loaded.reason_names),
                        Err(e) => {
                            self.decode_errors += 1;
                            log::error!("open flow: {e}");
                        }
                    }
                }
            }
            Err(OpenFlowsError::Unavailable) => log::debug!("open flows unavailable"),
            Err(e) => log::warn!("{e}"),
        }
    }

    /// Answers one API query from the loop's state.
    pub(crate) fn answer(&mut self, q: LoopQuery) {
        if matches!(q.query, Query::Flows { .. } | Query::Flow { .. }) {
            self.refresh_open_flows();
        }
        let st = LoopState {
            pipeline: &self.pipeline,
            loaded: self.loaded,
            records: &self.records,
            decode_errors: self.decode_errors,
            config: &self.config,
            started: self.started,
            kernel_release: &self.kernel_release,
        };
        // The client may have given up (timeout): nothing to do then.
        let _ = q.reply.send(api::answer::answer(&q.query, &st));
    }

    pub(crate) fn dump_flows(&mut self) {
        let records = self
            .pipeline
            .flows
            .iter()
            .map(|f| FlowRecord::new(f, &self.loaded.reason_names));
        let lines: Vec<String> = match self.format {
            Format::None => return,
            Format::Json => records.map(|r| render::json_line(&r)).collect(),
            // The table `linkprobe flows --wide` shows.
            Format::Text => {
                let records: Vec<FlowRecord> = records.collect();
                vec![flow::table(&records, monotonic_ns(), true, Paint::OFF)
                    .trim_end()
                    .to_owned()]
            }
        };
        for l in lines {
            self.write(&l);
        }
    }

    pub(crate) fn record(&mut self, bytes: &[u8]) {
        let ev = match decode(bytes) {
            Ok(ev) => ev,
            Err(e) => {
                self.decode_errors += 1;
                log::error!("{e}");
                return;
            }
        };
        *self.records.entry(kind_name(ev.detail.kind())).or_default() += 1;
        self.pipeline.on_event(&ev, &self.loaded.reason_names);
        if let Some(api) = self.api.as_ref().filter(|a| a.watched()) {
            api.publish(Live::Event(ev.clone()));
        }
        if !self.print_events {
            return;
        }
        let line = match self.format {
            Format::None => return,
            Format::Text => event::line(
                &EventRecord::new(&ev, &self.loaded.reason_names),
                Paint::OFF,
            ),
            Format::Json => render::json_line(&EventRecord::new(&ev, &self.loaded.reason_names)),
        };
        self.write(&line);
    }
}
