//! The bounded scope table: a slab of scope states, a map from scope to slot, an intrusive
//! recency list for eviction and the "hot" list of scopes to evaluate at the next window close.
//!
//! Scopes with an active anomaly are taken out of the recency list, so its tail is always the
//! least recently active evictable scope: lookup, touch and eviction are O(1).
use std::collections::HashMap;

use super::{anomaly::Scope, state::ScopeState};

const NIL: u32 = u32::MAX;

struct Slot {
    /// Bumped when the slot is freed, so stale hot-list entries are recognised.
    generation: u32,
    prev: u32,
    next: u32,
    linked: bool,
    /// In the hot list.
    hot: bool,
    state: Option<ScopeState>,
}

pub(super) struct ScopeTable {
    map: HashMap<Scope, u32>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Most recently active evictable scope.
    head: u32,
    /// Least recently active evictable scope.
    tail: u32,
    /// (slot, generation) of the scopes to evaluate at the next window close.
    hot: Vec<(u32, u32)>,
    cap: usize,
    evicted: u64,
    rejected: u64,
}

impl ScopeTable {
    pub fn new(cap: usize) -> ScopeTable {
        ScopeTable {
            map: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            hot: Vec::new(),
            cap: cap.clamp(1, NIL as usize - 1),
            evicted: 0,
            rejected: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    #[cfg(test)]
    pub fn contains(&self, scope: &Scope) -> bool {
        self.map.contains_key(scope)
    }

    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// The scope's slot, most recently active now; a new scope evicts the least recently
    /// active one without an active anomaly when the table is full. `None` when every scope
    /// has an active anomaly (counted).
    pub fn lookup(&mut self, scope: Scope, make: impl FnOnce() -> ScopeState) -> Option<u32> {
        if let Some(&i) = self.map.get(&scope) {
            if self.slot(i).is_some_and(|s| s.linked) {
                self.unlink(i);
                self.link_front(i);
            }
            return Some(i);
        }
        if self.map.len() >= self.cap && !self.evict_one() {
            self.rejected += 1;
            return None;
        }
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                let i = u32::try_from(self.slots.len()).ok()?;
                self.slots.push(Slot {
                    generation: 0,
                    prev: NIL,
                    next: NIL,
                    linked: false,
                    hot: false,
                    state: None,
                });
                i
            }
        };
        if let Some(slot) = self.slot_mut(i) {
            slot.state = Some(make());
        }
        self.map.insert(scope, i);
        self.link_front(i);
        Some(i)
    }

    pub fn state_mut(&mut self, i: u32) -> Option<&mut ScopeState> {
        self.slot_mut(i).and_then(|s| s.state.as_mut())
    }

    /// After a signal changed the scope: file it by its anomalies and queue it for the close.
    pub fn settle(&mut self, i: u32) {
        self.sync_link(i);
        let Some(slot) = self.slot_mut(i) else {
            return;
        };
        let quiet = slot.state.as_ref().is_none_or(|s| s.is_quiet());
        if !quiet && !slot.hot {
            slot.hot = true;
            let entry = (i, slot.generation);
            self.hot.push(entry);
        }
    }

    /// Empties the hot list for a window close; each entry must be passed to `after_close`
    /// when `current` still finds it.
    pub fn take_hot(&mut self) -> Vec<(u32, u32)> {
        std::mem::take(&mut self.hot)
    }

    pub fn hot_is_empty(&self) -> bool {
        self.hot.is_empty()
    }

    /// The state at a hot-list entry, unless the slot changed hands since.
    pub fn current(&mut self, i: u32, generation: u32) -> Option<&mut ScopeState> {
        self.slot_mut(i)
            .filter(|s| s.generation == generation)
            .and_then(|s| s.state.as_mut())
    }

    /// After a window close evaluated the scope: re-file it and keep it hot unless quiet.
    pub fn after_close(&mut self, i: u32, generation: u32) {
        self.sync_link(i);
        let Some(slot) = self.slot_mut(i) else {
            return;
        };
        if slot.state.as_ref().is_none_or(|s| s.is_quiet()) {
            slot.hot = false;
        } else {
            self.hot.push((i, generation));
        }
    }

    /// Scopes with an active anomaly leave the recency list; others are in it.
    fn sync_link(&mut self, i: u32) {
        let Some(slot) = self.slot(i) else {
            return;
        };
        let pinned = slot.state.as_ref().is_some_and(|s| s.has_active());
        if pinned && slot.linked {
            self.unlink(i);
        } else if !pinned && !slot.linked {
            self.link_front(i);
        }
    }

    fn evict_one(&mut self) -> bool {
        let i = self.tail;
        if i == NIL {
            return false;
        }
        self.unlink(i);
        let Some(slot) = self.slot_mut(i) else {
            return false;
        };
        let state = slot.state.take();
        slot.generation = slot.generation.wrapping_add(1);
        slot.hot = false;
        if let Some(state) = state {
            self.map.remove(&state.scope);
        }
        self.free.push(i);
        self.evicted += 1;
        true
    }

    fn slot(&self, i: u32) -> Option<&Slot> {
        self.slots.get(usize::try_from(i).ok()?)
    }

    fn slot_mut(&mut self, i: u32) -> Option<&mut Slot> {
        self.slots.get_mut(usize::try_from(i).ok()?)
    }

    fn link_front(&mut self, i: u32) {
        let old_head = self.head;
        let Some(slot) = self.slot_mut(i) else {
            return;
        };
        slot.prev = NIL;
        slot.next = old_head;
        slot.linked = true;
        match self.slot_mut(old_head) {
            Some(h) => h.prev = i,
            None => self.tail = i,
        }
        self.head = i;
    }

    fn unlink(&mut self, i: u32) {
        let Some(slot) = self.slot_mut(i) else {
            return;
        };
        if !slot.linked {
            return;
        }
        let (prev, next) = (slot.prev, slot.next);
        slot.linked = false;
        slot.prev = NIL;
        slot.next = NIL;
        match self.slot_mut(prev) {
            Some(p) => p.next = next,
            None => self.head = next,
        }
        match self.slot_mut(next) {
            Some(n) => n.prev = prev,
            None => self.tail = prev,
        }
    }
}
