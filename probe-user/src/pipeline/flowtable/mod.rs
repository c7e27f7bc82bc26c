//! The flow table: one entry per TCP socket (keyed by netns cookie + socket cookie) from its
//! first event to its close, kept `retain_closed` after close. Hard-bounded; evictions counted.
//! An open flow whose close never arrives (a lost record, a skipped program, a socket seeded
//! from sock_diag) is expired once idle past its timeout and not confirmed by the kernel since
//! (counted apart: `expired_open`). Turns events into [`Signal`]s for the detectors.
mod flow;
mod signals;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_idle;
#[cfg(test)]
mod tests_table;
mod timeline;

use std::{collections::HashMap, net::SocketAddr, time::Duration};

pub use flow::{CloseCause, Flow, FlowKey};
pub use signals::scope;
pub use timeline::{Timeline, TimelineEntry};

use crate::{
    event::rst_reason::ReasonNames,
    event::{Event, TcpState},
    pipeline::lru::{self, Links, List, Slots, NIL},
    pipeline::signal::Signal,
};

#[derive(Clone, Debug)]
pub struct FlowConfig {
    pub max_flows: usize,
    pub retain_closed: Duration,
    pub timeline_len: usize,
    /// An established open flow idle this long is expired (unless the kernel confirms it).
    pub idle_open: Duration,
    /// The same for a flow in a handshake or in TIME_WAIT (these end on their own soon).
    pub idle_transient: Duration,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            max_flows: 65_536,
            retain_closed: Duration::from_secs(60),
            timeline_len: 32,
            idle_open: Duration::from_secs(3600),
            idle_transient: Duration::from_secs(180),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowTableStats {
    pub tracked: usize,
    pub evicted: u64,
    /// Closed flows dropped after `retain_closed`.
    pub expired: u64,
    /// Open flows dropped idle: their close was never seen.
    pub expired_open: u64,
    pub closed_in_table: usize,
}

/// Which list a flow is on: open flows by last activity, split by their idle timeout; closed
/// flows by close order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ListId {
    Open,
    Transient,
    Closed,
}

struct Slot {
    flow: Flow,
    links: Links<ListId>,
}

pub struct FlowTable {
    cfg: FlowConfig,
    slots: Vec<Slot>,
    /// Slots whose flow was evicted or expired, for reuse.
    free: Vec<u32>,
    /// Socket cookie → slot. Cookies are unique on a host, across namespaces, and assigned by
    /// the kernel (no peer picks them): a fast hash is safe here.
    index: HashMap<u64, u32, foldhash::fast::RandomState>,
    /// Established open flows by last activity (oldest first).
    open: List,
    /// Open flows in a handshake or TIME_WAIT by last activity (oldest first).
    transient: List,
    /// Closed flows by close order (oldest first): evicted before any open flow.
    closed: List,
    evicted: u64,
    expired: u64,
    expired_open: u64,
}

/// The slab as the lists see it.
struct SlabLinks<'a>(&'a mut [Slot]);

impl Slots for SlabLinks<'_> {
    type Tag = ListId;
    fn links(&mut self, slot: u32) -> &mut Links<ListId> {
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
            transient: List::EMPTY,
            closed: List::EMPTY,
            evicted: 0,
            expired: 0,
            expired_open: 0,
        }
    }

    fn list(&mut self, id: ListId) -> (&mut List, SlabLinks<'_>) {
        let list = match id {
            ListId::Open => &mut self.open,
            ListId::Transient => &mut self.transient,
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

    /// The least recently active open flow: the older of the two open lists' heads.
    fn oldest_open(&self) -> u32 {
        let seen = |slot: u32| self.slots[slot as usize].flow.last_seen_ns;
        match (self.open.head, self.transient.head) {
            (NIL, t) => t,
            (o, NIL) => o,
            (o, t) if seen(t) <= seen(o) => t,
            (o, _) => o,
        }
    }

    /// Makes room for one more flow at the bound: oldest closed first, then least recently
    /// active open flow.
    fn make_room(&mut self) {
        while self.index.len() >= self.cfg.max_flows.max(1) {
            let victim = if self.closed.head != NIL {
                self.closed.head
            } else {
                self.oldest_open()
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
        let id = idle_list(&flow);
        let links = Links::unlinked(id);
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
        self.push(id, slot);
        slot
    }

    fn slot_of(&self, key: &FlowKey) -> Option<u32> {
        let slot = *self.index.get(&key.cookie)?;
        (self.slots[slot as usize].flow.key == *key).then_some(slot)
    }

    /// The flow for `key`, created when new.
    fn find_or_insert(&mut self, key: FlowKey, ev: &Event) -> u32 {
        match self.slot_of(&key) {
            Some(slot) => slot,
            None => self.insert(Flow::new(key, ev.local, ev.remote, ev.ts_ns)),
        }
    }

    /// After a record of the flow in `slot`: an open flow is re-filed as most recently active
    /// on the list of its idle timeout; a flow that just closed moves to the closed list
    /// (closed flows keep their close order).
    fn refile(&mut self, slot: u32, just_closed: bool) {
        let flow = &self.slots[slot as usize].flow;
        let id = if just_closed {
            ListId::Closed
        } else if flow.close.is_none() {
            idle_list(flow)
        } else {
            return;
        };
        self.unlink(slot);
        self.push(id, slot);
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
        let slot = self.find_or_insert(key, ev);
        let flow = &mut self.slots[slot as usize].flow;
        let cause_before = flow.close;
        flow.apply(ev, timeline_len);
        let just_closed = cause_before.is_none() && flow.close.is_some();
        // A close cause decided (FIN) and then corrected (the RST came after CLOSE).
        let close_changed = just_closed || (cause_before.is_some() && flow.close != cause_before);
        signals::from_flow(flow, ev, reasons, close_changed, out);
        self.refile(slot, just_closed);
    }

    /// The flow of `ev` when it is an accepted socket without an owner (its listener predates
    /// the daemon, so the kernel had no owner to give it): its key and local port.
    pub fn needs_listener_owner(&self, ev: &Event) -> Option<(FlowKey, u16)> {
        let key = FlowKey {
            netns: ev.netns_cookie.unwrap_or(0),
            cookie: ev.cookie?,
        };
        let f = &self.slots[self.slot_of(&key)? as usize].flow;
        let wanted = f.role == Some(crate::event::Role::Server)
            && f.process.is_none()
            && !f.preexisting
            && f.local.port() != 0;
        wanted.then_some((key, f.local.port()))
    }

    /// The process owning the flow of `ev`, where known.
    pub fn process_of(&self, ev: &Event) -> Option<&crate::event::Process> {
        let key = FlowKey {
            netns: ev.netns_cookie.unwrap_or(0),
            cookie: ev.cookie?,
        };
        self.slots[self.slot_of(&key)? as usize]
            .flow
            .process
            .as_ref()
    }

    /// Gives the flow `key` its listener's owner (see [`FlowTable::needs_listener_owner`]).
    pub fn adopt_owner(&mut self, key: &FlowKey, process: crate::event::Process) {
        if let Some(slot) = self.slot_of(key) {
            self.slots[slot as usize]
                .flow
                .process
                .get_or_insert(process);
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

    /// Whether an open flow is idle past its timeout at `now_ns`: the daemon then asks the
    /// kernel which flows are still open before [`FlowTable::expire_idle`].
    pub fn idle_due(&self, now_ns: u64) -> bool {
        [ListId::Open, ListId::Transient].into_iter().any(|id| {
            let head = match id {
                ListId::Open => self.open.head,
                _ => self.transient.head,
            };
            head != NIL && self.idle_past(head, id, now_ns)
        })
    }

    fn idle_past(&self, slot: u32, id: ListId, now_ns: u64) -> bool {
        let timeout = match id {
            ListId::Transient => self.cfg.idle_transient,
            _ => self.cfg.idle_open,
        };
        let timeout = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        let seen = self.slots[slot as usize].flow.last_seen_ns;
        seen.saturating_add(timeout) <= now_ns
    }

    /// Drops open flows idle past their timeout. `kernel_pass`: when the kernel last listed
    /// its open flows (the open-flow iterator re-touches each one it still has), so only
    /// flows last seen before that pass go; `None` where the kernel cannot list them: the
    /// timeout alone decides. Returns how many.
    pub fn expire_idle(&mut self, now_ns: u64, kernel_pass: Option<u64>) -> usize {
        let mut n = 0;
        for id in [ListId::Open, ListId::Transient] {
            loop {
                let head = match id {
                    ListId::Open => self.open.head,
                    _ => self.transient.head,
                };
                if head == NIL || !self.idle_past(head, id, now_ns) {
                    break;
                }
                let seen = self.slots[head as usize].flow.last_seen_ns;
                if kernel_pass.is_some_and(|pass| seen >= pass) {
                    break;
                }
                self.remove(head);
                n += 1;
            }
        }
        self.expired_open += n as u64;
        n
    }

    /// Whether the table still holds the flow `key`.
    pub fn contains(&self, key: &FlowKey) -> bool {
        self.slot_of(key).is_some()
    }

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
            expired_open: self.expired_open,
            closed_in_table: self.closed.len,
        }
    }
}

/// The open list for a flow by its idle timeout: short in a handshake and in TIME_WAIT (and
/// in an unknown state before the handshake was seen), long otherwise.
fn idle_list(flow: &Flow) -> ListId {
    let transient = match flow.state {
        TcpState::SYN_SENT | TcpState::SYN_RECV | TcpState::NEW_SYN_RECV | TcpState::TIME_WAIT => {
            true
        }
        TcpState(0) => !flow.established,
        _ => false,
    };
    if transient {
        ListId::Transient
    } else {
        ListId::Open
    }
}
