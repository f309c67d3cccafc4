//! Tracing a VM's exits with the trace service (`proto::trace`): started before the first
//! entry, stopped when the run ends ([`Tracing`] stops it on drop, whatever the outcome). The
//! trace service switches tracing on with the VM capability sent along and keeps no copy;
//! the VMM, which owns the VM, switches it off.

use abi::CapSlot;
use userlib::proto::trace::{self, Trace};
use userlib::proto::vmm::VmmError;

/// A VM the trace service traces; stops the tracing when dropped.
pub struct Tracing {
    /// The VM's trace id.
    pub vm: u32,
    /// The VM's capability (the VMM's).
    cap: CapSlot,
}

/// Asks the trace service to trace `vm` (the capability goes with the call) under `name`.
pub fn start(name: &str, vm: CapSlot) -> Result<Tracing, VmmError> {
    let ep = crate::trace_service().ok_or_else(|| {
        userlib::println!(
            "vmm: {name}: tracing asked for, and no trace service is wired (needs=trace)"
        );
        VmmError::Trace
    })?;
    let mut client = userlib::ipc::client::<Trace>(ep);
    let name = heapless::String::try_from(name).map_err(|_| VmmError::Trace)?;
    match client.call_with_cap(&trace::Request::Start { name }, Some(vm)) {
        Ok(r) => match r.response {
            trace::Response::Started { vm: id } => Ok(Tracing { vm: id, cap: vm }),
            other => {
                userlib::println!("vmm: the trace service refused the VM: {other:?}");
                Err(VmmError::Trace)
            }
        },
        Err(e) => {
            userlib::println!("vmm: the trace service is unreachable: {e:?}");
            Err(VmmError::Trace)
        }
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        if let Err(e) = userlib::sys::vm_trace(self.cap, false) {
            userlib::println!("vmm: switching the trace of VM {} off: {e:?}", self.vm);
        }
        let Some(ep) = crate::trace_service() else {
            return;
        };
        let mut client = userlib::ipc::client::<Trace>(ep);
        match client.call(&trace::Request::Stop { vm: self.vm }) {
            Ok(trace::Response::Done) => {}
            other => userlib::println!("vmm: stopping the trace of VM {}: {other:?}", self.vm),
        }
    }
}
