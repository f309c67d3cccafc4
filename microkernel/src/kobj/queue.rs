//! Thread queues: intrusive FIFO lists through the threads' `next`/`prev` links (a thread is
//! in at most one queue: a run queue, an endpoint's senders or receivers, a notification's
//! waiters), and the priority run queue over them.

pub use super::ids::ThreadId;

/// Links each thread carries for the queue it is in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Links {
    pub next: Option<ThreadId>,
    pub prev: Option<ThreadId>,
    pub queued: bool,
}

impl Links {
    pub const fn new() -> Self {
        Links {
            next: None,
            prev: None,
            queued: false,
        }
    }
}

/// A FIFO of threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Queue {
    pub head: Option<ThreadId>,
    pub tail: Option<ThreadId>,
}

/// Access to the links of every thread.
pub trait LinkArena {
    fn links(&mut self, t: ThreadId) -> &mut Links;
}

impl Queue {
    pub const fn new() -> Self {
        Queue {
            head: None,
            tail: None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.head.is_none()
    }

    #[inline(always)]
    pub fn push_back(&mut self, arena: &mut impl LinkArena, t: ThreadId) {
        debug_assert!(!arena.links(t).queued, "thread {t} is already queued");
        *arena.links(t) = Links {
            next: None,
            prev: self.tail,
            queued: true,
        };
        match self.tail {
            Some(tail) => arena.links(tail).next = Some(t),
            None => self.head = Some(t),
        }
        self.tail = Some(t);
    }

    /// Takes the first thread: [`Queue::remove`] of the head, which has no `prev`.
    #[inline(always)]
    pub fn pop_front(&mut self, arena: &mut impl LinkArena) -> Option<ThreadId> {
        let t = self.head?;
        let Links { next, prev, .. } = *arena.links(t);
        debug_assert!(prev.is_none(), "the head of a queue has no prev");
        self.head = next;
        match next {
            Some(n) => arena.links(n).prev = None,
            None => self.tail = None,
        }
        *arena.links(t) = Links::default();
        Some(t)
    }

    /// Removes `t`, which must be in this queue.
    #[inline(always)]
    pub fn remove(&mut self, arena: &mut impl LinkArena, t: ThreadId) {
        let Links { next, prev, .. } = *arena.links(t);
        match prev {
            Some(p) => arena.links(p).next = next,
            None => self.head = next,
        }
        match next {
            Some(n) => arena.links(n).prev = prev,
            None => self.tail = prev,
        }
        *arena.links(t) = Links::default();
    }
}

/// Number of priority levels; 0 is the lowest.
pub const PRIORITIES: usize = 32;

/// Ready threads by priority, round robin within a level.
#[derive(Clone, Debug)]
pub struct RunQueue {
    levels: [Queue; PRIORITIES],
    /// Bit `p` is set while level `p` is non-empty.
    bitmap: u32,
}

impl Default for RunQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl RunQueue {
    pub const fn new() -> Self {
        RunQueue {
            levels: [Queue::new(); PRIORITIES],
            bitmap: 0,
        }
    }

    pub fn push(&mut self, arena: &mut impl LinkArena, t: ThreadId, prio: u8) {
        let p = prio as usize % PRIORITIES;
        self.levels[p].push_back(arena, t);
        self.bitmap |= 1 << p;
    }

    /// Whether a thread of higher priority than `prio` is ready.
    #[inline(always)]
    pub fn outranks(&self, prio: u8) -> bool {
        // A bit above `prio` is set iff the bitmap shifted down by `prio` exceeds 1 (a 32-bit
        // shift, whose count `% PRIORITIES` the CPU's shift takes as it is).
        self.bitmap >> (u32::from(prio) % PRIORITIES as u32) > 1
    }

    /// The highest priority with a ready thread.
    pub fn highest(&self) -> Option<u8> {
        (self.bitmap != 0).then(|| 31 - self.bitmap.leading_zeros() as u8)
    }

    /// Takes the first thread of the highest non-empty level.
    pub fn pop(&mut self, arena: &mut impl LinkArena) -> Option<ThreadId> {
        let p = self.highest()? as usize;
        let t = self.levels[p].pop_front(arena);
        if self.levels[p].is_empty() {
            self.bitmap &= !(1 << p);
        }
        t
    }

    /// The queue of each priority level and whether the bitmap marks it non-empty (for the
    /// invariant checks of the tests).
    #[cfg(test)]
    pub(crate) fn levels(&self) -> impl Iterator<Item = (u8, Queue, bool)> + '_ {
        self.levels
            .iter()
            .enumerate()
            .map(|(p, q)| (p as u8, *q, self.bitmap & (1 << p) != 0))
    }

    /// Removes `t` (queued at `prio`).
    pub fn remove(&mut self, arena: &mut impl LinkArena, t: ThreadId, prio: u8) {
        let p = prio as usize % PRIORITIES;
        self.levels[p].remove(arena, t);
        if self.levels[p].is_empty() {
            self.bitmap &= !(1 << p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    struct Arena(Vec<Links>);
    impl LinkArena for Arena {
        fn links(&mut self, t: ThreadId) -> &mut Links {
            &mut self.0[t.index()]
        }
    }

    proptest! {
        /// The run queue behaves like one FIFO per priority, served highest first.
        #[test]
        fn run_queue_matches_a_model(ops in proptest::collection::vec((0u8..4, 0u16..16, 0u8..32), 0..200)) {
            let ops = ops.into_iter().map(|(op, t, p)| (op, ThreadId::new(t), p));
            let mut arena = Arena(vec![Links::default(); 16]);
            let mut rq = RunQueue::new();
            let mut model: Vec<VecDeque<ThreadId>> = vec![VecDeque::new(); PRIORITIES];
            let mut prio_of = [0u8; 16];
            for (op, t, p) in ops {
                match op {
                    0 | 1 => if !arena.0[t.index()].queued {
                        rq.push(&mut arena, t, p);
                        model[p as usize].push_back(t);
                        prio_of[t.index()] = p;
                    },
                    2 => if arena.0[t.index()].queued {
                        let p = prio_of[t.index()];
                        rq.remove(&mut arena, t, p);
                        model[p as usize].retain(|&x| x != t);
                    },
                    _ => {
                        let want = model.iter_mut().rev().find(|q| !q.is_empty()).and_then(|q| q.pop_front());
                        prop_assert_eq!(rq.pop(&mut arena), want);
                    }
                }
                let want_high = (0..PRIORITIES).rev().find(|&p| !model[p].is_empty()).map(|p| p as u8);
                prop_assert_eq!(rq.highest(), want_high);
            }
        }
    }
}
