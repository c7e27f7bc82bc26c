//! A flow's story, bounded: the first entries (how it started: connect, handshake) always
//! stay; later ones are kept up to the bound, and what goes is the least telling first:
//! routine reports (data-retransmit and RTO reports: the flow keeps their totals) before
//! exceptions (RSTs, SYN retransmits, state changes), the newest report always kept; a state
//! line repeating the one before it is not kept at all. What was dropped is counted by kind
//! and shown where it was left out ([`Timeline::marker`]). The first entries live inline, so
//! a healthy flow's story (connect, established, end) costs no allocation.
use std::collections::VecDeque;

use probe_common::EventKind;

use crate::{
    event::rst_reason::ReasonNames,
    event::{kind_name, RepeatScope, TcpState},
};

/// What a timeline entry adds to its kind; plain data, rendered only when shown (a flow keeps
/// up to `timeline_len` of these, so no allocation per event).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Note {
    None,
    /// `sk_err` 0: none.
    Transition {
        from: TcpState,
        to: TcpState,
        sk_err: i32,
    },
    Srtt(u32),
    /// Retransmits and RTOs the flow counted up to this record (a report stands for all of
    /// them since the previous one).
    Retransmits {
        data: u32,
        rtos: u32,
    },
    Reason(Option<u32>),
    Err(i32),
    Repeat {
        scope: RepeatScope,
        count: u32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimelineEntry {
    /// Since the flow's start.
    pub offset_ns: u64,
    pub kind: EventKind,
    /// The state the hook reported, where it reports one.
    pub state: Option<TcpState>,
    pub note: Note,
}

impl TimelineEntry {
    pub fn kind_name(&self) -> &'static str {
        kind_name(self.kind)
    }

    /// Short human text, e.g. `SYN_SENT->ESTABLISHED` or `reason=TCP_STATE`.
    pub fn detail(&self, reasons: &ReasonNames) -> String {
        match self.note {
            Note::None => String::new(),
            Note::Transition {
                from,
                to,
                sk_err: 0,
            } => format!("{from}->{to}"),
            Note::Transition { from, to, sk_err } => format!("{from}->{to} sk_err={sk_err}"),
            Note::Srtt(us) => format!("srtt={us}us"),
            Note::Retransmits { data, rtos } => format!("data_retrans={data} rtos={rtos}"),
            Note::Reason(r) => {
                r.map_or_else(String::new, |r| format!("reason={}", reasons.name(r)))
            }
            Note::Err(e) => format!("err={e}"),
            Note::Repeat { scope, count } => format!("{scope:?} count={count}"),
        }
    }
}

/// Entries kept inline, never dropped.
const FIRST: usize = 3;

/// What a timeline left out, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Data-retransmit and RTO reports (each stands for the counts up to it).
    pub reports: u32,
    /// State lines the same as the line before them.
    pub repeats: u32,
    /// Other entries, oldest first, once no report was left to drop.
    pub other: u32,
}

impl Dropped {
    pub fn total(&self) -> u32 {
        self.reports
            .saturating_add(self.repeats)
            .saturating_add(self.other)
    }
}

impl TimelineEntry {
    /// A report that only restates counts the flow keeps (thinned first).
    fn is_routine(&self) -> bool {
        matches!(self.note, Note::Retransmits { .. } | Note::Srtt(_))
    }

    /// A line that says which state the flow moved to.
    fn is_state_line(&self) -> bool {
        matches!(self.note, Note::Transition { .. })
            || matches!(
                self.kind,
                EventKind::Connect | EventKind::ActiveEstablished | EventKind::PassiveEstablished
            )
    }
}

#[derive(Clone, Debug, Default)]
pub struct Timeline {
    first: [Option<TimelineEntry>; FIRST],
    /// Allocated only for flows with more to tell than the first entries: boxed, so a flow
    /// without more costs one pointer here, not an empty deque's four words.
    #[expect(
        clippy::box_collection,
        reason = "8 bytes instead of 32 in each of up to 65,536 flows; most never allocate it"
    )]
    rest: Option<Box<VecDeque<TimelineEntry>>>,
    /// What was left out.
    pub dropped: Dropped,
}

impl Timeline {
    /// Appends `entry`; beyond `cap` entries the oldest routine report after the first ones
    /// goes (never the newest), else the oldest entry after them.
    pub fn push(&mut self, entry: TimelineEntry, cap: usize) {
        if entry.is_state_line()
            && self.last().is_some_and(|l| {
                l.kind == entry.kind && l.state == entry.state && l.note == entry.note
            })
        {
            self.dropped.repeats = self.dropped.repeats.saturating_add(1);
            return;
        }
        if let Some(slot) = self.first.iter_mut().find(|s| s.is_none()) {
            *slot = Some(entry);
            return;
        }
        let rest = self.rest.get_or_insert_with(Box::default);
        rest.push_back(entry);
        if FIRST + rest.len() > cap.max(FIRST + 1) {
            let newest = rest.len() - 1;
            match rest.iter().take(newest).position(TimelineEntry::is_routine) {
                Some(i) => {
                    rest.remove(i);
                    self.dropped.reports = self.dropped.reports.saturating_add(1);
                }
                None => {
                    rest.pop_front();
                    self.dropped.other = self.dropped.other.saturating_add(1);
                }
            }
        }
    }

    fn last(&self) -> Option<&TimelineEntry> {
        self.rest
            .as_ref()
            .and_then(|r| r.back())
            .or_else(|| self.first.iter().flatten().last())
    }

    /// The first entries (how the flow started), never dropped.
    pub fn first_entries(&self) -> impl Iterator<Item = &TimelineEntry> + '_ {
        self.first.iter().flatten()
    }

    /// The entries after the first ones, as kept.
    pub fn later_entries(&self) -> impl Iterator<Item = &TimelineEntry> + '_ {
        self.rest.iter().flat_map(|r| r.iter())
    }

    /// What was left out, for a marker line after the first entries, e.g. `17 retransmit
    /// reports, 2 repeated state lines dropped`; `None` when nothing was.
    pub fn marker(&self) -> Option<String> {
        let d = self.dropped;
        if d.total() == 0 {
            return None;
        }
        let parts: Vec<String> = [
            (d.reports, "retransmit report", "retransmit reports"),
            (d.repeats, "repeated state line", "repeated state lines"),
            (d.other, "other entry", "other entries"),
        ]
        .iter()
        .filter(|(n, ..)| *n > 0)
        .map(|(n, one, many)| format!("{n} {}", if *n == 1 { one } else { many }))
        .collect();
        Some(format!("{} dropped", parts.join(", ")))
    }

    pub fn iter(&self) -> impl Iterator<Item = &TimelineEntry> + '_ {
        self.first_entries().chain(self.later_entries())
    }

    pub fn len(&self) -> usize {
        self.first.iter().flatten().count() + self.rest.as_ref().map_or(0, |r| r.len())
    }

    pub fn is_empty(&self) -> bool {
        self.first[0].is_none()
    }

    /// Whether an entry of `kind` is in it.
    pub fn has(&self, kind: EventKind) -> bool {
        self.iter().any(|e| e.kind == kind)
    }
}

impl<'a> IntoIterator for &'a Timeline {
    type Item = &'a TimelineEntry;
    type IntoIter = Box<dyn Iterator<Item = &'a TimelineEntry> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(offset_ms: u64, kind: EventKind, note: Note) -> TimelineEntry {
        TimelineEntry {
            offset_ns: offset_ms * 1_000_000,
            kind,
            state: None,
            note,
        }
    }

    fn report(offset_ms: u64, data: u32) -> TimelineEntry {
        TimelineEntry {
            state: Some(TcpState::ESTABLISHED),
            ..entry(
                offset_ms,
                EventKind::Retransmit,
                Note::Retransmits { data, rtos: 0 },
            )
        }
    }

    #[test]
    fn a_long_story_keeps_its_start_and_exceptions_and_says_what_it_dropped() {
        let mut t = Timeline::default();
        let cap = 32;
        t.push(entry(0, EventKind::Connect, Note::None), cap);
        t.push(entry(1, EventKind::ActiveEstablished, Note::None), cap);
        let established = Note::Transition {
            from: TcpState::SYN_SENT,
            to: TcpState::ESTABLISHED,
            sk_err: 0,
        };
        // The same state line twice in a row: one kept.
        t.push(entry(1, EventKind::StateChange, established), cap);
        t.push(entry(1, EventKind::StateChange, established), cap);
        // 38 s of data-retransmit reports, one a second, with two RSTs sent in between.
        for s in 1..=38u64 {
            t.push(report(s * 1000, s as u32), cap);
            if s == 10 || s == 30 {
                t.push(
                    entry(s * 1000 + 1, EventKind::RstSent, Note::Reason(Some(2))),
                    cap,
                );
            }
        }
        assert_eq!(t.len(), cap);
        let kinds: Vec<EventKind> = t.first_entries().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                EventKind::Connect,
                EventKind::ActiveEstablished,
                EventKind::StateChange
            ]
        );
        assert_eq!(
            t.iter().filter(|e| e.kind == EventKind::RstSent).count(),
            2,
            "exceptions stay"
        );
        // The newest report (the latest totals) stays.
        assert_eq!(
            t.iter().last().map(|e| e.note),
            Some(report(38_000, 38).note)
        );
        assert_eq!(
            t.dropped,
            Dropped {
                reports: 38 + 2 - (cap as u32 - 3),
                repeats: 1,
                other: 0
            }
        );
        assert_eq!(
            t.marker().as_deref(),
            Some("11 retransmit reports, 1 repeated state line dropped")
        );
    }

    #[test]
    fn with_only_exceptions_left_the_oldest_after_the_start_goes() {
        let mut t = Timeline::default();
        for i in 0..10u64 {
            t.push(
                entry(i, EventKind::RstSent, Note::Reason(Some(i as u32))),
                5,
            );
        }
        assert_eq!(t.len(), 5);
        let offsets: Vec<u64> = t.iter().map(|e| e.offset_ns / 1_000_000).collect();
        assert_eq!(offsets, [0, 1, 2, 8, 9]);
        assert_eq!(t.dropped.other, 5);
        assert_eq!(t.marker().as_deref(), Some("5 other entries dropped"));
        assert_eq!(Timeline::default().marker(), None);
    }
}
