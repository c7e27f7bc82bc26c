//! The daemon's stdout: one line per event, anomaly change or flow, in the `-o` format, with
//! the same renderers the CLI uses. A closed stdout (`| head`) stops printing, not the daemon.
use std::io;

use crate::{
    event::{rst_reason::ReasonNames, Event},
    render::{
        self,
        anomaly::{self, AnomalyRecord},
        event::{self as event_text, EventRecord},
        flow::{self, FlowRecord},
        table::Paint,
        Format,
    },
};

pub struct Printer {
    format: Format,
    /// Whether events are printed (`--no-events` prints anomalies and counters only).
    events: bool,
    paint: Paint,
    stdout: io::Stdout,
}

impl Printer {
    pub fn new(format: Format, events: bool) -> Printer {
        Printer {
            format,
            events,
            paint: Paint::detect(),
            stdout: io::stdout(),
        }
    }

    pub fn event(&mut self, ev: &Event, reasons: &ReasonNames) {
        if !self.events {
            return;
        }
        let line = match self.format {
            Format::None => return,
            Format::Text => event_text::line(&EventRecord::new(ev, reasons), self.paint),
            Format::Json => render::json_line(&EventRecord::new(ev, reasons)),
        };
        self.write(&line);
    }

    /// An anomaly change: on stdout in the `-o` format, and in the log unless stdout already
    /// shows it as text (the log is where people look then).
    pub fn anomaly(&mut self, record: &AnomalyRecord) {
        if self.format != Format::Text {
            log::warn!("{}", anomaly::line(record, Paint::OFF));
        }
        let line = match self.format {
            Format::None => return,
            Format::Text => anomaly::line(record, self.paint),
            Format::Json => render::json_line(record),
        };
        self.write(&line);
    }

    /// `--dump-flows`: the table `linkprobe flows --wide` shows, or one record per line.
    pub fn flows(&mut self, records: &[FlowRecord], now_ns: u64) {
        match self.format {
            Format::None => {}
            Format::Json => {
                for r in records {
                    self.write(&render::json_line(r));
                }
            }
            Format::Text => {
                let table = flow::table(records, now_ns, true, self.paint);
                self.write(table.trim_end());
            }
        }
    }

    /// The final counters line: on stdout with `-o json` (it is part of the stream), else on
    /// stderr.
    pub fn counters(&mut self, line: &str) {
        if self.format == Format::Json {
            self.write(line);
        } else {
            eprintln!("linkprobe: final counters {line}");
        }
    }

    fn write(&mut self, line: &str) {
        let mut out = self.stdout.lock();
        if render::emit_line(&mut out, line).is_err() {
            // stdout closed (e.g. `| head`): keep counting and detecting, stop printing.
            self.format = Format::None;
        }
    }
}
