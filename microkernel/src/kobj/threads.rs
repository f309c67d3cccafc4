//! The thread table: thread slots and the queue links of each ([`LinkArena`]), apart from
//! the threads so that a queue operation reaches a link without checking for a thread.

use super::ids::ThreadId;
use super::objects::{Thread, MAX_THREADS};
use super::queue::{LinkArena, Links};

/// Thread slots, and the queue links of each slot (one more: a spare for any id past the
/// table), as the queues see them.
pub struct Threads(
    pub(crate) [Option<Thread>; MAX_THREADS],
    [Links; MAX_THREADS + 1],
);

impl Threads {
    pub(crate) const fn new() -> Self {
        Threads(
            [const { None }; MAX_THREADS],
            [const { Links::new() }; MAX_THREADS + 1],
        )
    }

    /// Fills slot `i` with a thread in no queue.
    pub(crate) fn fill(&mut self, i: usize, th: Thread) {
        if let (Some(s), Some(l)) = (self.0.get_mut(i), self.1.get_mut(i)) {
            *s = Some(th);
            *l = Links::new();
        }
    }

    /// The queue links of slot `t` (for the invariant checks of the tests).
    #[cfg(test)]
    pub(crate) fn links_of(&self, t: ThreadId) -> Links {
        self.1[t.index().min(MAX_THREADS)]
    }

    /// The live thread in slot `t`.
    #[inline(always)]
    pub fn get(&self, t: ThreadId) -> Option<&Thread> {
        self.0.get(t.index()).and_then(Option::as_ref)
    }

    #[inline(always)]
    pub(crate) fn get_mut(&mut self, t: ThreadId) -> Option<&mut Thread> {
        self.0.get_mut(t.index()).and_then(Option::as_mut)
    }

    /// Empties slot `t` (and its links).
    pub(crate) fn clear(&mut self, t: ThreadId) {
        if let (Some(s), Some(l)) = (self.0.get_mut(t.index()), self.1.get_mut(t.index())) {
            *s = None;
            *l = Links::new();
        }
    }
}

impl LinkArena for Threads {
    /// The queues hold only live threads (`Kernel::detach` takes a thread out of its queue
    /// before its slot empties); an id past the table (none is made) would get the spare
    /// entry: a queue could lose its way, the kernel does not stop.
    #[inline(always)]
    fn links(&mut self, t: ThreadId) -> &mut Links {
        &mut self.1[t.index().min(MAX_THREADS)]
    }
}
