//! A task's capability table: fixed slots, each naming a kernel object by (kind, index,
//! generation) with rights and a badge. An object's generation changes when it is destroyed,
//! so a capability that outlived its object is detected as stale instead of reaching a new one.

use abi::cap::{slot, CAP_SLOTS};
use abi::{CapKind, CapSlot, Error, Rights};

use super::ids::Id;

/// A reference to a kernel object slot at one generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjRef {
    pub kind: CapKind,
    pub index: u16,
    pub generation: u32,
}

impl ObjRef {
    /// A reference to slot `id` of kind `kind` at `generation`.
    #[inline]
    pub fn new(kind: CapKind, id: impl Id, generation: u32) -> Self {
        ObjRef {
            kind,
            index: id.index() as u16,
            generation,
        }
    }

    /// The slot it names, as the id type of its table (the caller knows the kind).
    #[inline(always)]
    pub fn id<I: Id>(self) -> I {
        I::from_index(self.index as usize)
    }
}

/// One capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap {
    pub obj: ObjRef,
    pub rights: Rights,
    /// Delivered to the receiver of messages sent through an endpoint capability.
    pub badge: u64,
}

/// A task's capability slots.
#[derive(Clone, Debug)]
pub struct CapTable {
    slots: [Option<Cap>; CAP_SLOTS],
}

impl Default for CapTable {
    fn default() -> Self {
        Self::new()
    }
}

impl CapTable {
    pub const fn new() -> Self {
        CapTable {
            slots: [None; CAP_SLOTS],
        }
    }

    /// The capability in `slot`, if the slot is in range and full.
    pub fn get(&self, slot: CapSlot) -> Result<Cap, Error> {
        usize::try_from(slot)
            .ok()
            .and_then(|i| self.slots.get(i).copied().flatten())
            .ok_or(Error::InvalidCap)
    }

    /// The capability in `slot`, checked for kind and rights (liveness is the caller's check).
    pub fn lookup(&self, slot: CapSlot, kind: CapKind, rights: Rights) -> Result<Cap, Error> {
        let cap = self.get(slot)?;
        if cap.obj.kind != kind {
            return Err(Error::WrongCapKind);
        }
        if !cap.rights.contains(rights) {
            return Err(Error::NoRights);
        }
        Ok(cap)
    }

    /// Puts `cap` in the lowest free slot from [`slot::FIRST_GRANTED`] on.
    pub fn insert(&mut self, cap: Cap) -> Result<CapSlot, Error> {
        let first = slot::FIRST_GRANTED as usize;
        let i = (first..CAP_SLOTS)
            .find(|&i| self.slots[i].is_none())
            .ok_or(Error::NoMemory)?;
        self.slots[i] = Some(cap);
        Ok(i as CapSlot)
    }

    /// Puts `cap` in a given slot (the kernel's fixed slots of the first task).
    pub fn insert_at(&mut self, slot: CapSlot, cap: Cap) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            *s = Some(cap);
        }
    }

    /// Empties `slot`, returning what it held.
    pub fn remove(&mut self, slot: CapSlot) -> Result<Cap, Error> {
        let cap = self.get(slot)?;
        self.slots[slot as usize] = None;
        Ok(cap)
    }

    /// Empties every slot, returning the capabilities (for releasing their objects).
    pub fn drain(&mut self) -> impl Iterator<Item = Cap> + '_ {
        self.slots.iter_mut().filter_map(Option::take)
    }

    /// Whether [`CapTable::insert`] would find a slot.
    pub fn has_free_slot(&self) -> bool {
        self.slots[slot::FIRST_GRANTED as usize..]
            .iter()
            .any(Option::is_none)
    }

    /// Number of full slots.
    pub fn count(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(index: u16) -> Cap {
        Cap {
            obj: ObjRef {
                kind: CapKind::Endpoint,
                index,
                generation: 1,
            },
            rights: Rights::SEND,
            badge: 7,
        }
    }

    #[test]
    fn insert_lookup_remove() {
        let mut t = CapTable::new();
        let s = t.insert(ep(3)).unwrap();
        assert_eq!(s, slot::FIRST_GRANTED);
        assert_eq!(t.lookup(s, CapKind::Endpoint, Rights::SEND).unwrap(), ep(3));
        assert_eq!(
            t.lookup(s, CapKind::Memory, Rights::empty()),
            Err(Error::WrongCapKind)
        );
        assert_eq!(
            t.lookup(s, CapKind::Endpoint, Rights::RECV),
            Err(Error::NoRights)
        );
        assert_eq!(t.remove(s).unwrap(), ep(3));
        assert_eq!(t.get(s), Err(Error::InvalidCap));
        assert_eq!(t.get(u64::MAX), Err(Error::InvalidCap));
        assert_eq!(t.get(CAP_SLOTS as u64), Err(Error::InvalidCap));
    }

    #[test]
    fn fills_up_with_an_error() {
        let mut t = CapTable::new();
        for _ in slot::FIRST_GRANTED as usize..CAP_SLOTS {
            t.insert(ep(1)).unwrap();
        }
        assert_eq!(t.insert(ep(1)), Err(Error::NoMemory));
        assert_eq!(t.drain().count(), CAP_SLOTS - slot::FIRST_GRANTED as usize);
        assert_eq!(t.count(), 0);
    }
}
