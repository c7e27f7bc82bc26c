//! The flow table: one entry per TCP socket (keyed by netns cookie + socket cookie) from its
//! first event to its close, kept `retain_closed` after close. Hard-bounded; evictions counted.
//! Turns events into [`Signal`]s for the detectors.
mod flow;
mod lru;
mod signals;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_table;
mod timeline;

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use lru::{Links, List, ListId, Slots, NIL};

pub use flow::{CloseCause, Flow, FlowKey};
pub use timeline::{Timeline, TimelineEntry};

use crate::{
    event::rst_reason::ReasonNames,
    event::{Event, TcpState},
    pipeline::signal::Signal,
};

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
    links: Links,
}

pub struct FlowTable {
    cfg: FlowConfig,
    slots: Vec<Slot>,
    /// Slots whose flow was evicted or expired, for reuse.
    free: Vec<u32>,
    /// Socket cookie → slot. Cookies are unique on a host, across namespaces, and assigned by
    /// the kernel (no peer picks them): a fast hash is safe here.
    index: HashMap<u64, u32, foldhash::fast::RandomState>,
    /// Open flows by last activity (oldest first).
    open: List,
    /// Closed flows by close order (oldest first): evicted before any open flow.
    closed: List,
    evicted: u64,
    expired: u64,
}

/// The slab as the lists see it.
struct SlabLinks<'a>(&'a mut [Slot]);

impl Slots for SlabLinks<'_> {
    fn links(&mut self, slot: u32) -> &mut Links {
        &mut self.0[slot as usize].links
    }
}

impl FlowTable {
    pub fn new(cfg: FlowConfig) -> Self {
        FlowTable {
            cfg,
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::default(),
            open: List::EMPTY,
            closed: List::EMPTY,
            evicted: 0,
            expired: 0,
        }
    }

    fn list(&mut self, id: ListId) -> (&mut List, SlabLinks<'_>) {
        let list = match id {
            ListId::Open => &mut self.open,
            ListId::Closed => &mut self.closed,
        };
        (list, SlabLinks(&mut self.slots))
    }

    fn unlink(&mut self, slot: u32) {
        let id = self.slots[slot as usize].links.list;
        let (list, mut slots) = self.list(id);
        lru::unlink(&mut slots, list, slot);
    }

    fn push(&mut self, id: ListId, slot: u32) {
        let (list, mut slots) = self.list(id);
        lru::push_back(&mut slots, list, id, slot);
    }

    /// Drops the flow in `slot` (evicted or expired); its slot is reused.
    fn remove(&mut self, slot: u32) {
        self.unlink(slot);
        let cookie = self.slots[slot as usize].flow.key.cookie;
        self.index.remove(&cookie);
        // Release what the flow holds beyond its slot now, not when the slot is reused.
        self.slots[slot as usize].flow.timeline = Timeline::default();
        self.free.push(slot);
    }

    /// Makes room for one more flow at the bound: oldest closed first, then least recently
    /// active open flow.
    fn make_room(&mut self) {
        while self.index.len() >= self.cfg.max_flows.max(1) {
            let victim = if self.closed.head != NIL {
                self.closed.head
            } else {
                self.open.head
            };
            if victim == NIL {
                return;
            }
            self.remove(victim);
            self.evicted += 1;
        }
    }

    /// A new open flow in a free or new slot.
    fn insert(&mut self, flow: Flow) -> u32 {
        self.make_room();
        let cookie = flow.key.cookie;
        let links = Links {
            prev: NIL,
            next: NIL,
            list: ListId::Open,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Slot { flow, links };
                slot
            }
            None => {
                self.slots.push(Slot { flow, links });
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(cookie, slot);
        self.push(ListId::Open, slot);
        slot
    }

    fn slot_of(&self, key: &FlowKey) -> Option<u32> {
        let slot = *self.index.get(&key.cookie)?;
        (self.slots[slot as usize].flow.key == *key).then_some(slot)
    }

    /// The flow for `key`, created when new; an open flow is re-filed as most recently active
    /// (closed flows keep their close order).
    fn touch(&mut self, key: FlowKey, ev: &Event) -> u32 {
        match self.slot_of(&key) {
            Some(slot) => {
                if self.slots[slot as usize].links.list == ListId::Open {
                    self.unlink(slot);
                    self.push(ListId::Open, slot);
                }
                slot
            }
            None => self.insert(Flow::new(key, ev.local, ev.remote, ev.ts_ns)),
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
        if ev.flow.is_none() && self.slot_of(&key).is_none() {
            signals::socketless(ev, reasons, out);
            return;
        }
        let timeline_len = self.cfg.timeline_len;
        let slot = self.touch(key, ev);
        let flow = &mut self.slots[slot as usize].flow;
        let cause_before = flow.close;
        flow.apply(ev, timeline_len);
        let just_closed = cause_before.is_none() && flow.close.is_some();
        // A close cause decided (FIN) and then corrected (the RST came after CLOSE).
        let close_changed = just_closed || (cause_before.is_some() && flow.close != cause_before);
        signals::from_flow(flow, ev, reasons, close_changed, out);
        if just_closed {
            self.unlink(slot);
            self.push(ListId::Closed, slot);
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
        if self.slot_of(&key).is_some() {
            return;
        }
        let mut flow = Flow::new(key, local, remote, now_ns);
        flow.preexisting = true;
        flow.state = state;
        self.insert(flow);
    }

    /// Drops closed flows older than `retain_closed`. Returns how many.
    pub fn expire(&mut self, now_ns: u64) -> usize {
        let retain = u64::try_from(self.cfg.retain_closed.as_nanos()).unwrap_or(u64::MAX);
        let mut n = 0;
        while self.closed.head != NIL {
            let slot = self.closed.head;
            let closed_ns = self.slots[slot as usize]
                .flow
                .closed_ns
                .map_or(0, std::num::NonZeroU64::get);
            if closed_ns.saturating_add(retain) > now_ns {
                break;
            }
            self.remove(slot);
            n += 1;
        }
        self.expired += n as u64;
        n
    }

    #[cfg(test)]
    pub fn get(&self, key: &FlowKey) -> Option<&Flow> {
        self.slot_of(key).map(|s| &self.slots[s as usize].flow)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Flow> {
        self.index.values().map(|&s| &self.slots[s as usize].flow)
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    #[cfg(test)]
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    pub fn stats(&self) -> FlowTableStats {
        FlowTableStats {
            tracked: self.index.len(),
            evicted: self.evicted,
            expired: self.expired,
            closed_in_table: self.closed.len,
        }
    }
}
