//! A flow's story, bounded: the first entries (how it started) always stay, later ones are a
//! ring that drops its oldest when full, and the drops are counted. The first entries live
//! inline, so a healthy flow's story (connect, established, end) costs no allocation.
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
    /// Entries dropped at the bound (the oldest after the first ones).
    pub dropped: u32,
}

impl Timeline {
    /// Appends `entry`; beyond `cap` entries the oldest after the first ones goes.
    pub fn push(&mut self, entry: TimelineEntry, cap: usize) {
        if let Some(slot) = self.first.iter_mut().find(|s| s.is_none()) {
            *slot = Some(entry);
            return;
        }
        let rest = self.rest.get_or_insert_with(Box::default);
        rest.push_back(entry);
        if FIRST + rest.len() > cap.max(FIRST + 1) {
            rest.pop_front();
            self.dropped = self.dropped.saturating_add(1);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &TimelineEntry> + '_ {
        self.first
            .iter()
            .flatten()
            .chain(self.rest.iter().flat_map(|r| r.iter()))
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
