//! The loop's state, one owner: the pipeline and the totals it feeds, the printer, the API's
//! loop side and the exporter. Each step the loop takes is one method here.
use crate::{
    api::{self, answer::Lent, proto::Query, ApiLoop, Live, LoopQuery},
    clock::monotonic_ns,
    config::Config,
    daemon::{
        auto_backups::AutoBackups, error::RunError, exporter::Exporter, open_flows::OpenFlows,
        printer::Printer, snapshot,
    },
    event::{decode::decode, totals::Totals},
    kernel::{counters, loader::Loaded, progstats},
    pipeline::Pipeline,
    render::{
        anomaly::{name_pods, AnomalyRecord},
        flow::FlowRecord,
    },
};

pub struct LoopState<'a> {
    pub loaded: &'a Loaded,
    pipeline: Pipeline,
    totals: Totals,
    config: Config,
    printer: Printer,
    /// The API's loop side (daemon only): live items for watchers.
    api: Option<ApiLoop>,
    exporter: Option<Exporter>,
    auto_backups: AutoBackups,
    open_flows: OpenFlows,
}

impl<'a> LoopState<'a> {
    pub fn new(
        loaded: &'a Loaded,
        pipeline: Pipeline,
        config: Config,
        printer: Printer,
        api: Option<ApiLoop>,
        exporter: Option<Exporter>,
    ) -> Self {
        LoopState {
            loaded,
            pipeline,
            totals: Totals::start(),
            config,
            printer,
            api,
            exporter,
            auto_backups: AutoBackups::default(),
            open_flows: OpenFlows::default(),
        }
    }

    /// One ring record: decoded, counted, fed to the pipeline, sent to watchers, printed.
    pub fn record(&mut self, bytes: &[u8]) {
        let ev = match decode(bytes) {
            Ok(ev) => ev,
            Err(e) => {
                self.totals.undecodable();
                log::error!("{e}");
                return;
            }
        };
        self.totals.decoded(&ev);
        self.pipeline.on_event(&ev, &self.loaded.reason_names);
        if let Some(api) = self.api.as_ref().filter(|a| a.watched()) {
            api.publish(Live::Event(ev.clone()));
        }
        self.printer.event(&ev, &self.loaded.reason_names);
    }

    /// Closes detector windows and expires flows; anomaly changes go to watchers and out.
    pub fn tick(&mut self) {
        // Requests join at this tick: their open connections must be in the table, and a
        // quiet one is known only from the kernel's open-flow list.
        if self.pipeline.requests.has_pending() {
            self.refresh_open_flows();
        }
        let now = monotonic_ns();
        let kernel_pass =
            self.open_flows
                .before_expiry(self.loaded, &mut self.pipeline, &mut self.totals, now);
        let changes = self.pipeline.tick(now, kernel_pass);
        let mut records: Vec<AnomalyRecord> = changes
            .iter()
            .map(|c| AnomalyRecord::of_change(c, now))
            .collect();
        name_pods(&mut records, &self.pipeline.flows, &self.pipeline.attrib);
        crate::render::anomaly::name_processes(&mut records, &self.pipeline.flows);
        crate::render::netns::name_anomalies(&mut records, &self.pipeline.attrib);
        for record in records {
            self.printer.anomaly(&record);
            if let Some(api) = self.api.as_ref().filter(|a| a.watched()) {
                api.publish(Live::Anomaly(record));
            }
        }
    }

    /// Hands the exporter a fresh snapshot.
    pub fn publish(&mut self) {
        self.totals.output_dropped_lines = self.printer.dropped();
        let Some(exporter) = &self.exporter else {
            return;
        };
        if let Some(s) = snapshot::take(self.loaded, &self.pipeline, &self.totals, &self.config) {
            exporter.publish(s);
        }
    }

    /// `--backup-probes auto`.
    pub fn ensure_backups(&mut self) {
        self.auto_backups.check(self.loaded);
    }

    /// Answers one API query from the loop's state.
    pub fn answer(&mut self, q: LoopQuery) {
        self.totals.output_dropped_lines = self.printer.dropped();
        if matches!(q.query, Query::Flows { .. } | Query::Flow { .. }) {
            self.refresh_open_flows();
        }
        let lent = Lent {
            pipeline: &self.pipeline,
            loaded: self.loaded,
            totals: &self.totals,
            config: &self.config,
        };
        // The client may have given up (timeout): nothing to do then.
        let _ = q.reply.send(api::answer::answer(&q.query, &lent));
    }

    fn refresh_open_flows(&mut self) {
        self.open_flows
            .refresh(self.loaded, &mut self.pipeline, &mut self.totals);
    }

    /// After the last drain: the last anomaly changes, `--dump-flows`, the final counters.
    pub fn finish(mut self, dump_flows: bool) -> Result<(), RunError> {
        self.tick();
        if dump_flows {
            self.refresh_open_flows();
            let records: Vec<FlowRecord> = self
                .pipeline
                .flows
                .iter()
                .map(|f| {
                    FlowRecord::new(f, &self.loaded.reason_names)
                        .attributed(f, &self.pipeline.attrib)
                })
                .collect();
            self.printer.flows(&records, monotonic_ns());
        }
        self.totals.output_dropped_lines = self.printer.dropped();
        let kernel = counters::read(&self.loaded.ebpf, &self.loaded.reason_names)?;
        let misses = progstats::unrecovered(
            &progstats::recursion_misses(&self.loaded.ebpf, &self.loaded.probes),
            &kernel.backup_runs,
        );
        let line = crate::render::counters_json(
            &kernel,
            &self.totals,
            &misses,
            &self.pipeline.flows.stats(),
            &self.pipeline.detectors.stats(),
        );
        self.printer.counters(line);
        Ok(())
    }
}
