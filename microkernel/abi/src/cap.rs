//! Capabilities as user code names them: a slot index in the task's capability table,
//! the kind of object it names, and its rights.

use bitflags::bitflags;

/// A slot in a task's capability table.
pub type CapSlot = u64;

/// "No capability" in argument and result registers (e.g. nothing to grant).
pub const NO_CAP: CapSlot = u64::MAX;

/// Slots every task starts with (filled by the kernel or the spawner).
pub mod slot {
    use super::CapSlot;
    /// The supervisor's right to spawn tasks (only the first task holds it).
    pub const SPAWN: CapSlot = 0;
    /// The right to end the scenario (`MachineExit`).
    pub const MACHINE: CapSlot = 1;
    /// First slot the spawner fills with [`crate::Sys::TaskGrant`] in a new task.
    pub const FIRST_GRANTED: CapSlot = 2;
    /// The first task's [`crate::CapKind::Boot`] capability (its first granted slot).
    pub const BOOT: CapSlot = FIRST_GRANTED;
    /// The first task's [`crate::CapKind::Vmx`] capability (its second granted slot).
    pub const VMX: CapSlot = FIRST_GRANTED + 1;
    /// The first task's [`crate::CapKind::Trace`] capability (its third granted slot).
    pub const TRACE: CapSlot = FIRST_GRANTED + 2;
}

/// Number of slots in every task's table.
pub const CAP_SLOTS: usize = 64;

/// What a capability names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum CapKind {
    Endpoint = 1,
    Notification = 2,
    Memory = 3,
    Task = 4,
    Spawn = 5,
    Machine = 6,
    Vm = 7,
    Vcpu = 8,
    /// Reads the boot modules and the kernel command line (`ModuleInfo`, `ModuleRead`,
    /// `KernelCmdline`). The kernel gives it to the first task; it can be granted.
    Boot = 9,
    /// Creates VMs (`VmCreate`): the kernel gives it to the first task, which grants it to
    /// the services that run guests. VM and vCPU slots are global; without it any task
    /// could take them all.
    Vmx = 10,
    /// Reads the exit trace rings ([`crate::Sys::TraceAttach`], [`crate::Sys::TraceAck`]):
    /// the kernel gives it to the first task, which grants it to the trace service.
    Trace = 11,
}

impl CapKind {
    pub fn from_u64(v: u64) -> Option<CapKind> {
        [
            CapKind::Endpoint,
            CapKind::Notification,
            CapKind::Memory,
            CapKind::Task,
            CapKind::Spawn,
            CapKind::Machine,
            CapKind::Vm,
            CapKind::Vcpu,
            CapKind::Boot,
            CapKind::Vmx,
            CapKind::Trace,
        ]
        .into_iter()
        .find(|k| *k as u64 == v)
    }
}

bitflags! {
    /// Rights a capability carries. A copy or grant can only drop rights.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Rights: u64 {
        /// Memory: map readable. Endpoint: receive. Notification: wait/poll.
        const READ = 1 << 0;
        /// Memory: map writable. Endpoint: send/call. Notification: signal.
        const WRITE = 1 << 1;
        /// Memory: map executable.
        const EXEC = 1 << 2;
        /// Endpoint: capabilities may be granted through it.
        const GRANT = 1 << 3;
        /// Destroy the object ([`crate::Sys::CapRevoke`]).
        const REVOKE = 1 << 4;
    }
}

impl Rights {
    /// Endpoint: receive.
    pub const RECV: Rights = Rights::READ;
    /// Endpoint: send and call.
    pub const SEND: Rights = Rights::WRITE;
}
