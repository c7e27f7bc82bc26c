//! The daemon's stdout: one line per event, anomaly change or flow, in the `-o` format, with
//! the same renderers the CLI uses, written by [`Output`]'s thread (never blocking the loop;
//! lines it cannot take are counted). A closed stdout (`| head`) stops printing, not the daemon.
use std::time::Duration;

use crate::{
    daemon::output::{Delivery, Output},
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
    out: Output,
}

/// How long the exit waits for stdout to take what is queued.
const EXIT_FLUSH: Duration = Duration::from_millis(250);

impl Printer {
    pub fn new(format: Format, events: bool) -> Printer {
        Printer {
            format,
            events,
            paint: Paint::detect(),
            out: Output::stdout(),
        }
    }

    /// Lines dropped because stdout did not keep up.
    pub fn dropped(&self) -> u64 {
        self.out.dropped()
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
        self.write(line);
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
        self.write(line);
    }

    /// `--dump-flows`: the table `linkprobe flows --wide` shows, or one record per line.
    pub fn flows(&mut self, records: &[FlowRecord], now_ns: u64) {
        match self.format {
            Format::None => {}
            Format::Json => {
                for r in records {
                    self.write(render::json_line(r));
                }
            }
            Format::Text => {
                let table = flow::table(records, now_ns, true, self.paint);
                self.write(table.trim_end().to_owned());
            }
        }
    }

    /// The final counters line: on stdout with `-o json` (it is part of the stream), else on
    /// stderr. Then stdout gets a bounded time to take what is queued; what it did not is
    /// said on stderr.
    pub fn counters(&mut self, line: String) {
        if self.format == Format::Json {
            self.write(line);
        } else {
            eprintln!("linkprobe: final counters {line}");
        }
        let unwritten = self.out.finish(EXIT_FLUSH);
        if unwritten > 0 {
            eprintln!(
                "linkprobe: {unwritten} output lines not written: stdout took none within {} ms",
                EXIT_FLUSH.as_millis()
            );
        }
    }

    fn write(&mut self, line: String) {
        if self.out.line(line) == Delivery::Closed {
            // stdout closed (e.g. `| head`): keep counting and detecting, stop printing.
            self.format = Format::None;
        }
    }
}
