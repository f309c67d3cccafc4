//! A service's capabilities by name.
//!
//! The supervisor starts every service with two capabilities in fixed slots (its own endpoint
//! and the supervisor's), then one per `needs=` name of its manifest line, in manifest order.
//! A service never counts on that order: at start it asks the supervisor where each name
//! landed ([`Request::Wiring`]) and takes each capability by name, checking its kind
//! ([`Wiring::endpoint`], [`Wiring::boot`]). Reordering the manifest changes nothing; a name
//! missing from it, or a slot holding another kind, is a clear error at start.
#![forbid(unsafe_code)]

use abi::cap::slot::FIRST_GRANTED;
use abi::{CapKind, CapSlot};
use core::fmt;
use heapless::Vec;

use crate::proto::supervisor::{Request, Response, Wire, MAX_WIRES};

/// The service's own endpoint (receive right): the first slot the supervisor grants.
pub const OWN_ENDPOINT: CapSlot = FIRST_GRANTED;
/// The supervisor's endpoint (send right, badged with the service): the second.
pub const SUPERVISOR: CapSlot = FIRST_GRANTED + 1;
/// The `needs=` name of the read-only boot capability (boot modules, kernel command line).
pub const BOOT: &str = "boot";
/// The `needs=` name of a copy of the spawn capability (a service that runs tasks of its own).
pub const SPAWN: &str = "spawn";
/// The `needs=` name of the VMX capability (a service that creates VMs).
pub const VMX: &str = "vmx";
/// The `needs=` name of the exit trace ring's capability (the trace service).
pub const TRACE_RING: &str = "trace-ring";

/// Why a service cannot have the capability it asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WiringError {
    /// The supervisor did not answer the wiring request, or answered something else.
    NoAnswer,
    /// The manifest line does not name it in `needs=`.
    NotGiven,
    /// The slot holds another kind of capability (or none).
    WrongKind {
        slot: CapSlot,
        found: Option<CapKind>,
    },
}

impl fmt::Display for WiringError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WiringError::NoAnswer => f.write_str("the supervisor gave no wiring"),
            WiringError::NotGiven => f.write_str("not in the manifest's needs= list"),
            WiringError::WrongKind { slot, found } => {
                write!(f, "slot {slot} holds {found:?}, not the kind asked for")
            }
        }
    }
}

/// Where each `needs=` capability of this service is.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Wiring {
    wires: Vec<Wire, MAX_WIRES>,
}

impl Wiring {
    /// The wiring the supervisor sent.
    pub fn from_wires(wires: Vec<Wire, MAX_WIRES>) -> Self {
        Wiring { wires }
    }

    /// Asks the supervisor (through `call`, one request) for this service's wiring.
    pub fn request(call: impl FnOnce(&Request) -> Option<Response>) -> Result<Wiring, WiringError> {
        match call(&Request::Wiring) {
            Some(Response::Wiring(wires)) => Ok(Wiring::from_wires(wires)),
            _ => Err(WiringError::NoAnswer),
        }
    }

    /// The slot of `name`, if its capability's kind (as `kind_of` reports it) is `kind`.
    pub fn slot(
        &self,
        name: &str,
        kind: CapKind,
        kind_of: impl FnOnce(CapSlot) -> Option<CapKind>,
    ) -> Result<CapSlot, WiringError> {
        let wire = self
            .wires
            .iter()
            .find(|w| w.name == name)
            .ok_or(WiringError::NotGiven)?;
        let slot = CapSlot::from(wire.slot);
        match kind_of(slot) {
            Some(k) if k == kind => Ok(slot),
            found => Err(WiringError::WrongKind { slot, found }),
        }
    }
}

impl Wiring {
    /// Asks the supervisor for this service's wiring (call it once, at start).
    pub fn fetch() -> Result<Wiring, WiringError> {
        let mut sup = crate::ipc::client::<crate::proto::supervisor::Supervisor>(SUPERVISOR);
        Wiring::request(|req| sup.call(req).ok())
    }

    /// The endpoint of the service (or `supervisor`) named `name`.
    pub fn endpoint(&self, name: &str) -> Result<CapSlot, WiringError> {
        self.slot(name, CapKind::Endpoint, kind_of)
    }

    /// The boot capability (`needs=boot`).
    pub fn boot(&self) -> Result<CapSlot, WiringError> {
        self.slot(BOOT, CapKind::Boot, kind_of)
    }

    /// The spawn capability (`needs=spawn`).
    pub fn spawn(&self) -> Result<CapSlot, WiringError> {
        self.slot(SPAWN, CapKind::Spawn, kind_of)
    }

    /// The VMX capability (`needs=vmx`).
    pub fn vmx(&self) -> Result<CapSlot, WiringError> {
        self.slot(VMX, CapKind::Vmx, kind_of)
    }

    /// The exit trace ring's capability (`needs=trace-ring`).
    pub fn trace_ring(&self) -> Result<CapSlot, WiringError> {
        self.slot(TRACE_RING, CapKind::Trace, kind_of)
    }
}

fn kind_of(slot: CapSlot) -> Option<CapKind> {
    crate::sys::cap_info(slot).ok().and_then(|i| i.kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::supervisor::ServiceName;

    fn wire(name: &str, slot: u32) -> Wire {
        Wire {
            name: ServiceName::try_from(name).unwrap(),
            slot,
        }
    }

    #[test]
    fn a_capability_is_found_by_name_whatever_the_order() {
        let a = Wiring::from_wires(Vec::from_iter([wire("echo", 4), wire("boot", 5)]));
        let b = Wiring::from_wires(Vec::from_iter([wire("boot", 4), wire("echo", 5)]));
        let kinds = |s: CapSlot| match s {
            4 | 5 => Some(CapKind::Endpoint),
            _ => None,
        };
        assert_eq!(a.slot("echo", CapKind::Endpoint, kinds), Ok(4));
        assert_eq!(b.slot("echo", CapKind::Endpoint, kinds), Ok(5));
    }

    #[test]
    fn a_missing_name_or_a_wrong_kind_is_an_error() {
        let w = Wiring::from_wires(Vec::from_iter([wire("echo", 4)]));
        assert_eq!(
            w.slot("mmu-service", CapKind::Endpoint, |_| Some(
                CapKind::Endpoint
            )),
            Err(WiringError::NotGiven)
        );
        assert_eq!(
            w.slot("echo", CapKind::Endpoint, |_| Some(CapKind::Boot)),
            Err(WiringError::WrongKind {
                slot: 4,
                found: Some(CapKind::Boot)
            })
        );
        assert_eq!(
            w.slot("echo", CapKind::Boot, |_| None),
            Err(WiringError::WrongKind {
                slot: 4,
                found: None
            })
        );
    }

    #[test]
    fn no_wiring_answer_is_an_error() {
        assert_eq!(Wiring::request(|_| None), Err(WiringError::NoAnswer));
        assert_eq!(
            Wiring::request(|_| Some(Response::ShuttingDown)),
            Err(WiringError::NoAnswer)
        );
        let w = Wiring::request(|r| {
            assert_eq!(*r, Request::Wiring);
            Some(Response::Wiring(Vec::from_iter([wire("boot", 6)])))
        });
        assert_eq!(
            w.unwrap()
                .slot("boot", CapKind::Boot, |_| Some(CapKind::Boot)),
            Ok(6)
        );
    }
}
