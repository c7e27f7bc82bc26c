//! Intrusive recency lists over a slab (the flow table's open and closed flows, `top`'s
//! scopes): touching, moving, evicting and expiring an entry are O(1), with 8 bytes of links
//! per entry (plus the list's tag) and no per-entry allocation.

/// "No slot": the end of a list.
pub const NIL: u32 = u32::MAX;

/// One list's ends, oldest (`head`) to newest (`tail`).
#[derive(Clone, Copy, Debug)]
pub struct List {
    pub head: u32,
    pub tail: u32,
    pub len: usize,
}

impl List {
    pub const EMPTY: List = List {
        head: NIL,
        tail: NIL,
        len: 0,
    };
}

/// A slab entry's links and the tag of the list it is on (`()` where there is one list).
#[derive(Clone, Copy, Debug)]
pub struct Links<L> {
    pub prev: u32,
    pub next: u32,
    pub list: L,
}

impl<L> Links<L> {
    /// Not on a list yet.
    pub fn unlinked(list: L) -> Links<L> {
        Links {
            prev: NIL,
            next: NIL,
            list,
        }
    }
}

/// Slab slots addressed by index, each on one list; `links` gives a slot's links.
pub trait Slots {
    type Tag: Copy;
    fn links(&mut self, slot: u32) -> &mut Links<Self::Tag>;
}

/// Appends `slot` as the newest of `list` (tagged `id`).
pub fn push_back<S: Slots>(slots: &mut S, list: &mut List, id: S::Tag, slot: u32) {
    let tail = list.tail;
    *slots.links(slot) = Links {
        prev: tail,
        next: NIL,
        list: id,
    };
    if tail == NIL {
        list.head = slot;
    } else {
        slots.links(tail).next = slot;
    }
    list.tail = slot;
    list.len += 1;
}

/// Takes `slot` off `list`.
pub fn unlink<S: Slots>(slots: &mut S, list: &mut List, slot: u32) {
    let Links { prev, next, .. } = *slots.links(slot);
    if prev == NIL {
        list.head = next;
    } else {
        slots.links(prev).next = next;
    }
    if next == NIL {
        list.tail = prev;
    } else {
        slots.links(next).prev = prev;
    }
    list.len -= 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    struct V(Vec<Links<()>>);

    impl Slots for V {
        type Tag = ();
        fn links(&mut self, slot: u32) -> &mut Links<()> {
            &mut self.0[slot as usize]
        }
    }

    fn order(v: &mut V, list: &List) -> Vec<u32> {
        let mut out = Vec::new();
        let mut at = list.head;
        while at != NIL {
            out.push(at);
            at = v.links(at).next;
        }
        out
    }

    #[test]
    fn links_stay_consistent_through_pushes_and_unlinks() {
        let mut v = V(vec![Links::unlinked(()); 5]);
        let mut l = List::EMPTY;
        for s in 0..5 {
            push_back(&mut v, &mut l, (), s);
        }
        unlink(&mut v, &mut l, 0);
        unlink(&mut v, &mut l, 2);
        unlink(&mut v, &mut l, 4);
        assert_eq!(order(&mut v, &l), [1, 3]);
        push_back(&mut v, &mut l, (), 2);
        assert_eq!(order(&mut v, &l), [1, 3, 2]);
        assert_eq!((l.head, l.tail, l.len), (1, 2, 3));
    }
}
