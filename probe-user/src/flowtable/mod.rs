//! The flow table: one entry per TCP socket (keyed by netns cookie + socket cookie) from its
//! first event to its close, kept `retain_closed` after close. Hard-bounded; evictions counted.
//! Turns events into [`Signal`]s for the detectors.
mod flow;
mod signals;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    time::Duration,
};

pub use flow::{CloseCause, Flow, Note, TimelineEntry};

use crate::{
    event::{Event, TcpState},
    rst_reason::ReasonNames,
    signal::Signal,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Netns cookie (0 when unknown).
    pub netns: u64,
    pub cookie: u64,
}

#[derive(Clone, Debug)]
pub struct FlowConfig {
    pub max_flows: usize,
    pub retain_closed: Duration,
    pub timeline_len: usize,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            max_flows: 65_536,
            retain_closed: Duration::from_secs(60),
            timeline_len: 32,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowTableStats {
    pub tracked: usize,
    pub evicted: u64,
    pub expired: u64,
    pub closed_in_table: usize,
}

struct Slot {
    flow: Flow,
    /// Position in `open` or `closed` (by recency).
    seq: u64,
}

pub struct FlowTable {
    cfg: FlowConfig,
    flows: HashMap<FlowKey, Slot>,
    /// Open flows by last activity (oldest first).
    open: BTreeMap<u64, FlowKey>,
    /// Closed flows by close order (oldest first): evicted before any open flow.
    closed: BTreeMap<u64, FlowKey>,
    next_seq: u64,
    evicted: u64,
    expired: u64,
}

impl FlowTable {
    pub fn new(cfg: FlowConfig) -> Self {
        FlowTable {
            cfg,
            flows: HashMap::new(),
            open: BTreeMap::new(),
            closed: BTreeMap::new(),
            next_seq: 0,
            evicted: 0,
            expired: 0,
        }
    }

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Makes room for one more flow at the bound: oldest closed first, then least recently
    /// active open flow.
    fn make_room(&mut self) {
        while self.flows.len() >= self.cfg.max_flows.max(1) {
            let victim = self
                .closed
                .pop_first()
                .or_else(|| self.open.pop_first())
                .map(|(_, k)| k);
            let Some(key) = victim else { return };
            self.flows.remove(&key);
            self.evicted += 1;
        }
    }

    /// The flow for `key`, created when new; an open flow is re-filed as most recently active
    /// (closed flows keep their close order).
    fn touch(&mut self, key: FlowKey, ev: &Event) -> &mut Flow {
        let seq = self.seq();
        if !self.flows.contains_key(&key) {
            self.make_room();
            self.open.insert(seq, key);
        }
        let open = &mut self.open;
        let slot = self.flows.entry(key).or_insert_with(|| Slot {
            flow: Flow::new(key, ev.local, ev.remote, ev.ts_ns),
            seq,
        });
        if slot.seq != seq && slot.flow.close.is_none() {
            open.remove(&slot.seq);
            open.insert(seq, key);
            slot.seq = seq;
        }
        &mut slot.flow
    }

    /// Moves a flow that just closed from the open index to the closed one.
    fn file_closed(&mut self, key: FlowKey) {
        let seq = self.seq();
        if let Some(slot) = self.flows.get_mut(&key) {
            if self.open.remove(&slot.seq).is_some() {
                self.closed.insert(seq, key);
                slot.seq = seq;
            }
        }
    }

    /// Applies one record; appends the signals it implies to `out`.
    pub fn apply(&mut self, ev: &Event, reasons: &ReasonNames, out: &mut Vec<Signal>) {
        let Some(cookie) = ev.cookie else {
            // No socket (RST for a closed port): no flow, but still a signal.
            signals::socketless(ev, reasons, out);
            return;
        };
        let key = FlowKey {
            netns: ev.netns_cookie.unwrap_or(0),
            cookie,
        };
        // A record without flow state (a time-wait or request socket, a SYN-ACK retransmit)
        // only updates a flow the table already has.
        if ev.flow.is_none() && !self.flows.contains_key(&key) {
            signals::socketless(ev, reasons, out);
            return;
        }
        let timeline_len = self.cfg.timeline_len;
        let flow = self.touch(key, ev);
        let cause_before = flow.close;
        flow.apply(ev, timeline_len);
        let just_closed = cause_before.is_none() && flow.close.is_some();
        // A close cause decided (FIN) and then corrected (the RST came after CLOSE).
        let close_changed = just_closed || (cause_before.is_some() && flow.close != cause_before);
        signals::from_flow(flow, ev, reasons, close_changed, out);
        if just_closed {
            self.file_closed(key);
        }
    }

    /// A socket that existed before the daemon started.
    pub fn insert_existing(
        &mut self,
        key: FlowKey,
        local: SocketAddr,
        remote: SocketAddr,
        state: TcpState,
        now_ns: u64,
    ) {
        if self.flows.contains_key(&key) {
            return;
        }
        self.make_room();
        let seq = self.seq();
        let mut flow = Flow::new(key, local, remote, now_ns);
        flow.preexisting = true;
        flow.state = state;
        self.open.insert(seq, key);
        self.flows.insert(key, Slot { flow, seq });
    }

    /// Drops closed flows older than `retain_closed`. Returns how many.
    pub fn expire(&mut self, now_ns: u64) -> usize {
        let retain = u64::try_from(self.cfg.retain_closed.as_nanos()).unwrap_or(u64::MAX);
        let mut n = 0;
        while let Some((&seq, &key)) = self.closed.first_key_value() {
            let closed_ns = self
                .flows
                .get(&key)
                .and_then(|s| s.flow.closed_ns)
                .unwrap_or(0);
            if closed_ns.saturating_add(retain) > now_ns {
                break;
            }
            self.closed.remove(&seq);
            self.flows.remove(&key);
            n += 1;
        }
        self.expired += n as u64;
        n
    }

    pub fn get(&self, key: &FlowKey) -> Option<&Flow> {
        self.flows.get(key).map(|s| &s.flow)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Flow> {
        self.flows.values().map(|s| &s.flow)
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    pub fn stats(&self) -> FlowTableStats {
        FlowTableStats {
            tracked: self.flows.len(),
            evicted: self.evicted,
            expired: self.expired,
            closed_in_table: self.closed.len(),
        }
    }
}
