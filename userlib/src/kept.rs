//! Capabilities a service keeps with the supervisor across its own restarts.
//!
//! A service that holds state worth recovering (the MMU service: its VMs, their RAM, shadow
//! pools and vCPUs) hands a copy of each capability to the supervisor under a key of its
//! choosing (`Request::Keep`), fetches them again when it starts as a new generation
//! (`Request::Fetch`), and forgets them when the state goes (`Request::Forget`). Keys belong
//! to the service (its name, not its generation): another service cannot read them. When
//! the supervisor gives up on a service, it deletes what the service kept. This is the
//! supervisor's table of them; the capability slots are the supervisor's.
#![forbid(unsafe_code)]

use abi::CapSlot;
use heapless::Vec;

/// Capabilities the supervisor keeps for all services together.
pub const MAX_KEPT: usize = 32;
/// Capabilities one service may keep.
pub const MAX_KEPT_PER_SERVICE: usize = 24;

/// Why a capability was not kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepError {
    /// The service keeps [`MAX_KEPT_PER_SERVICE`] already, or the table is full.
    Full,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    service: u16,
    key: u32,
    cap: CapSlot,
}

/// The kept capabilities, by (service index, key).
#[derive(Debug, Default)]
pub struct KeptCaps {
    entries: Vec<Entry, MAX_KEPT>,
}

impl KeptCaps {
    pub const fn new() -> Self {
        KeptCaps {
            entries: Vec::new(),
        }
    }

    /// Keeps `cap` for `service` under `key`. Returns the capability it replaces (the caller
    /// deletes it); on error nothing changed and the caller still owns `cap`.
    pub fn keep(
        &mut self,
        service: u16,
        key: u32,
        cap: CapSlot,
    ) -> Result<Option<CapSlot>, KeepError> {
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.service == service && e.key == key)
        {
            return Ok(Some(core::mem::replace(&mut e.cap, cap)));
        }
        if self.count(service) >= MAX_KEPT_PER_SERVICE {
            return Err(KeepError::Full);
        }
        self.entries
            .push(Entry { service, key, cap })
            .map_err(|_| KeepError::Full)?;
        Ok(None)
    }

    /// The capability `service` kept under `key`.
    pub fn fetch(&self, service: u16, key: u32) -> Option<CapSlot> {
        self.entries
            .iter()
            .find(|e| e.service == service && e.key == key)
            .map(|e| e.cap)
    }

    /// Forgets `key`; returns its capability (the caller deletes it).
    pub fn forget(&mut self, service: u16, key: u32) -> Option<CapSlot> {
        let i = self
            .entries
            .iter()
            .position(|e| e.service == service && e.key == key)?;
        Some(self.entries.swap_remove(i).cap)
    }

    /// Forgets everything `service` kept; returns the capabilities (the caller deletes them).
    pub fn forget_all(&mut self, service: u16) -> Vec<CapSlot, MAX_KEPT> {
        let mut out = Vec::new();
        self.entries.retain(|e| {
            if e.service == service {
                let _ = out.push(e.cap);
                false
            } else {
                true
            }
        });
        out
    }

    /// How many capabilities `service` keeps.
    pub fn count(&self, service: u16) -> usize {
        self.entries.iter().filter(|e| e.service == service).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_belong_to_their_service() {
        let mut k = KeptCaps::new();
        assert_eq!(k.keep(1, 7, 40), Ok(None));
        assert_eq!(k.keep(2, 7, 41), Ok(None));
        assert_eq!(k.fetch(1, 7), Some(40));
        assert_eq!(k.fetch(2, 7), Some(41));
        assert_eq!(k.fetch(3, 7), None);
        // Keeping a key again replaces it and hands back the old capability.
        assert_eq!(k.keep(1, 7, 42), Ok(Some(40)));
        assert_eq!(k.fetch(1, 7), Some(42));
        assert_eq!(k.forget(1, 7), Some(42));
        assert_eq!(k.forget(1, 7), None);
        assert_eq!(k.fetch(2, 7), Some(41));
    }

    #[test]
    fn one_service_cannot_fill_the_table() {
        let mut k = KeptCaps::new();
        for key in 0..MAX_KEPT_PER_SERVICE as u32 {
            assert_eq!(k.keep(1, key, 100 + u64::from(key)), Ok(None));
        }
        assert_eq!(k.keep(1, 999, 5), Err(KeepError::Full));
        assert_eq!(k.count(1), MAX_KEPT_PER_SERVICE);
        // Replacing stays possible at the limit.
        assert_eq!(k.keep(1, 0, 6), Ok(Some(100)));
        for key in 0..(MAX_KEPT - MAX_KEPT_PER_SERVICE) as u32 {
            assert_eq!(k.keep(2, key, 200), Ok(None));
        }
        assert_eq!(k.keep(3, 0, 300), Err(KeepError::Full));
        assert_eq!(k.forget_all(1).len(), MAX_KEPT_PER_SERVICE);
        assert_eq!(k.count(1), 0);
        assert_eq!(k.keep(3, 0, 300), Ok(None));
    }
}
