//! Syscall numbers and the register convention.
//!
//! A task enters the kernel with `syscall`: `rax` holds the number, the arguments are in
//! `rdi, rsi, rdx, r10, r8, r9` (the System V order with `r10` for `rcx`, which `syscall`
//! clobbers). On return `rax` holds an [`crate::Error`] code (0 = success) and the results are
//! in `rdi, rsi, rdx, r8` (`Ret.0..3` below). `rcx` and `r11` are clobbered; every other
//! register is preserved.

/// Syscall numbers. Each entry documents `args -> results`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Sys {
    /// `(ptr, len)`: writes bytes to the console, prefixed with the task's name.
    DebugWrite = 0,
    /// `(code)`: ends the calling task (all threads). Never returns.
    TaskExit = 1,
    /// `(ptr, len)`: reports a panic with its message; the task is stopped as if it faulted
    /// with vector [`crate::ipc::FAULT_PANIC`]. Never returns.
    Panic = 2,
    /// `()`: gives up the rest of the time slice.
    Yield = 3,
    /// `() -> (ticks, tick_hz, tsc_hz)`: timer ticks since boot, and the TSC's rate measured
    /// at boot (0 if unknown).
    Clock = 4,
    /// `(ticks)`: sleeps at least that many timer ticks.
    Sleep = 5,
    /// `(entry, stack_top, arg, priority) -> (thread id)`: starts a thread in the caller's task;
    /// `rdi` of the new thread holds `arg`. Priority is capped at the caller's.
    ThreadCreate = 6,
    /// `()`: ends the calling thread; the last thread ends the task with code 0.
    ThreadExit = 7,

    /// `(ep, buf, send_len, buf_cap, label, grant) -> (reply_len, reply_label, _, got_cap)`:
    /// sends `buf[..send_len]` on the endpoint and waits for the reply, which overwrites
    /// `buf[..buf_cap]`.
    Call = 16,
    /// `(ep, buf, send_len, label, grant)`: sends and waits until a receiver takes the message.
    Send = 17,
    /// `(ep, buf, buf_cap) -> (len, label, badge, got_cap)`: waits for a message.
    Recv = 18,
    /// `(buf, len, label, grant)`: answers the last `call` this thread received.
    Reply = 19,
    /// `(ep, buf, reply_len, buf_cap, label, grant) -> (len, label, badge, got_cap)`:
    /// [`Sys::Reply`] then [`Sys::Recv`] in one entry.
    ReplyRecv = 20,

    /// `() -> (cap)`: a new endpoint; the caller gets a capability with every right.
    EndpointCreate = 32,
    /// `() -> (cap)`: a new notification with every right.
    NotificationCreate = 33,
    /// `(ntfn, bits)`: ORs `bits` into the notification and wakes a waiter.
    Signal = 34,
    /// `(ntfn) -> (bits)`: waits until some bit is set, then takes (clears) all of them.
    Wait = 35,
    /// `(ntfn) -> (bits)`: takes the bits without waiting (0 if none).
    Poll = 36,

    /// `(pages) -> (cap)`: a new zeroed memory object of `pages` 4 KiB pages.
    MemAlloc = 48,
    /// `(mem, vaddr, rights)`: maps the whole object at `vaddr` (page aligned, user half) with
    /// `rights` ([`crate::Rights::READ`]/`WRITE`/`EXEC`), which the capability must hold.
    MemMap = 49,
    /// `(mem, vaddr)`: removes the mapping made by [`Sys::MemMap`] at `vaddr`.
    MemUnmap = 50,
    /// `(mem) -> (pages, phys_base)`.
    MemInfo = 51,

    /// `(cap, rights, badge) -> (new cap)`: a copy with rights reduced to `rights` and, for an
    /// unbadged endpoint capability, the given badge (0 keeps it unbadged).
    CapCopy = 64,
    /// `(cap)`: empties the slot.
    CapDelete = 65,
    /// `(cap)`: destroys the object; every other capability to it becomes stale
    /// ([`crate::Error::StaleCap`]). Needs [`crate::Rights::REVOKE`].
    CapRevoke = 66,
    /// `(cap) -> (kind, rights, badge)`.
    CapInfo = 67,

    /// `(module, generation, priority, fault_ep) -> (task cap)`: loads boot module `module`
    /// (an ELF) into a new, suspended task. Faults of its threads go to `fault_ep`.
    /// Needs the [`crate::CapKind::Spawn`] capability in `r8`.
    TaskSpawn = 80,
    /// `(task, cap, rights) -> (slot in the task)`: copies one of the caller's capabilities
    /// into the task (with reduced rights).
    TaskGrant = 81,
    /// `(task, arg)`: starts the task's first thread with `rdi = arg`.
    TaskStart = 82,
    /// `(task)`: stops and destroys the task; endpoints it served report
    /// [`crate::Error::ServerRestarted`] to waiting callers.
    TaskKill = 83,
    /// `(ep, task)`: names the task that serves the endpoint (sets the endpoint's
    /// generation to the task's and reopens it).
    EndpointBind = 84,
    /// `(ep)`: closes the endpoint: waiting and later callers get [`crate::Error::ServerGone`].
    EndpointClose = 85,
    /// `(index, buf, buf_cap, boot) -> (name_len, size, count)`: boot module `index`'s name
    /// (its command line) and size, and the number of modules. Needs the
    /// [`crate::CapKind::Boot`] capability `boot`.
    ModuleInfo = 86,
    /// `(machine, code)`: ends the scenario: prints `umbra: exit <code>` and powers off.
    /// Needs the [`crate::CapKind::Machine`] capability.
    MachineExit = 87,
    /// `(buf, buf_cap, boot) -> (len)`: the kernel command line. Needs the
    /// [`crate::CapKind::Boot`] capability `boot`.
    KernelCmdline = 88,
    /// `(index, offset, buf, len, boot) -> (copied)`: copies bytes of boot module `index` from
    /// `offset` (fewer at the end of the module). Needs the [`crate::CapKind::Boot`]
    /// capability `boot`.
    ModuleRead = 89,
    /// `(task, pages) -> (previous, in_use)`: sets how many pages of memory objects `task` may
    /// have allocated with [`Sys::MemAlloc`] and alive at once (its page budget; a new task
    /// has none). Needs the task capability with WRITE. Returns the previous budget and the
    /// pages the task holds now.
    TaskSetPages = 90,

    /// `(ram, flags, vmx) -> (vm cap)`: needs the [`crate::CapKind::Vmx`] capability `vmx`.
    /// A new VM whose guest-physical RAM is the memory object `ram`
    /// (at guest-physical 0). `flags` ([`crate::vmx::vm_flags`]) picks the MMU mode: EPT
    /// (nothing is mapped yet: see [`Sys::VmMapRam`]) or shadow paging (see
    /// [`Sys::VmSetShadow`]). [`crate::Error::NoVmx`] without VMX.
    VmCreate = 96,
    /// `(vm, gpa, pages, rights)`: maps guest RAM `[gpa, gpa + pages * 4 KiB)` into the VM's
    /// EPT at the same guest-physical address with `rights` (READ/WRITE/EXEC). Only the VM's
    /// own RAM can be mapped. Mapped pages are simply remapped.
    VmMapRam = 97,
    /// `(vm, gpa, pages)`: removes EPT mappings (absent pages are skipped).
    VmUnmap = 98,
    /// `(vm, id) -> (vcpu cap)`: a new vCPU in the VM, stopped, with no portals. `id` is
    /// reported in every exit message.
    VcpuCreate = 99,
    /// `(vcpu, reason, ep, mask)`: exits of basic reason `reason` go to endpoint `ep` as an
    /// [`crate::vmx::ExitMessage`] with the state groups in `mask`; `ep` = [`crate::NO_CAP`]
    /// removes the portal, [`crate::vmx::PORTAL_REFLECT`] has the kernel answer it.
    /// `reason` = [`crate::vmx::reason::MMIO`] sets the portal of the exits the MMU endpoint
    /// forwards ([`crate::vmx::reply::FORWARD`]; an endpoint or none, never the kernel).
    VcpuPortal = 100,
    /// `(vcpu, pairs, count, write)`: reads (`write` = 0) or writes `count` (field, value)
    /// pairs of u64 at `pairs` ([`crate::vmx::field`]). Stops at the first field that is out
    /// of reach, with `rdi` = its index. (One CPU runs everything, so a syscall never runs
    /// while the vCPU is in the guest: the state read is that of its last exit.)
    VcpuState = 101,
    /// `(vcpu) -> (stop, reason, qualification)`: runs the vCPU until it stops
    /// ([`crate::vmx::stop`]); the calling thread waits meanwhile.
    VcpuRun = 102,
    /// `(vm, pool, ep)`: makes the memory object `pool` (READ|WRITE) the shadow page pool of
    /// the shadow-paged VM `vm`, and endpoint `ep` the one whose exit replies may set a vCPU's
    /// shadow root ([`crate::vmx::reply::SET_SHADOW_CR3`]): a root must be a page of `pool`.
    /// Once set, it can be set again only with the same endpoint ([`crate::Error::Busy`]
    /// otherwise): a restarted MMU service registers its (new or zeroed) pool, and every vCPU
    /// of the VM goes back to the VM's empty root, so none enters the guest on a table the new
    /// instance did not build. [`crate::Error::InvalidArgument`] for an EPT VM.
    VmSetShadow = 103,
    /// `(trace, notification) -> (ring)`: needs the [`crate::CapKind::Trace`] capability
    /// `trace`. Binds `notification` (WRITE) as the one the kernel signals when the exit
    /// trace ring fills ([`crate::trace::WAKE_AT`]; a later attach replaces it) and returns a
    /// new read-only memory capability to the ring ([`crate::trace`] is its layout).
    TraceAttach = 104,
    /// `(trace, tail)`: the reader has consumed the ring's records up to `tail` (a `head`
    /// it read): their slots may be written again. `tail` must lie between the last
    /// acknowledged value and `head` ([`crate::Error::InvalidArgument`] otherwise).
    TraceAck = 105,
    /// `(vm, on) -> (trace id)`: switches the tracing of the VM's exits on (`on` = 1) or
    /// off (0); returns the VM's trace id, the `vm` field of its records.
    VmTrace = 106,
}

impl Sys {
    /// Every syscall, for tests that sweep them.
    pub const ALL: &'static [Sys] = &[
        Sys::DebugWrite,
        Sys::TaskExit,
        Sys::Panic,
        Sys::Yield,
        Sys::Clock,
        Sys::Sleep,
        Sys::ThreadCreate,
        Sys::ThreadExit,
        Sys::Call,
        Sys::Send,
        Sys::Recv,
        Sys::Reply,
        Sys::ReplyRecv,
        Sys::EndpointCreate,
        Sys::NotificationCreate,
        Sys::Signal,
        Sys::Wait,
        Sys::Poll,
        Sys::MemAlloc,
        Sys::MemMap,
        Sys::MemUnmap,
        Sys::MemInfo,
        Sys::CapCopy,
        Sys::CapDelete,
        Sys::CapRevoke,
        Sys::CapInfo,
        Sys::TaskSpawn,
        Sys::TaskGrant,
        Sys::TaskStart,
        Sys::TaskKill,
        Sys::EndpointBind,
        Sys::EndpointClose,
        Sys::ModuleInfo,
        Sys::MachineExit,
        Sys::KernelCmdline,
        Sys::ModuleRead,
        Sys::TaskSetPages,
        Sys::VmCreate,
        Sys::VmMapRam,
        Sys::VmUnmap,
        Sys::VcpuCreate,
        Sys::VcpuPortal,
        Sys::VcpuState,
        Sys::VcpuRun,
        Sys::VmSetShadow,
        Sys::TraceAttach,
        Sys::TraceAck,
        Sys::VmTrace,
    ];

    /// Decodes a syscall number (a jump table, not a search: this is on every syscall).
    pub fn from_u64(n: u64) -> Option<Sys> {
        Some(match n {
            0 => Sys::DebugWrite,
            1 => Sys::TaskExit,
            2 => Sys::Panic,
            3 => Sys::Yield,
            4 => Sys::Clock,
            5 => Sys::Sleep,
            6 => Sys::ThreadCreate,
            7 => Sys::ThreadExit,
            16 => Sys::Call,
            17 => Sys::Send,
            18 => Sys::Recv,
            19 => Sys::Reply,
            20 => Sys::ReplyRecv,
            32 => Sys::EndpointCreate,
            33 => Sys::NotificationCreate,
            34 => Sys::Signal,
            35 => Sys::Wait,
            36 => Sys::Poll,
            48 => Sys::MemAlloc,
            49 => Sys::MemMap,
            50 => Sys::MemUnmap,
            51 => Sys::MemInfo,
            64 => Sys::CapCopy,
            65 => Sys::CapDelete,
            66 => Sys::CapRevoke,
            67 => Sys::CapInfo,
            80 => Sys::TaskSpawn,
            81 => Sys::TaskGrant,
            82 => Sys::TaskStart,
            83 => Sys::TaskKill,
            84 => Sys::EndpointBind,
            85 => Sys::EndpointClose,
            86 => Sys::ModuleInfo,
            87 => Sys::MachineExit,
            88 => Sys::KernelCmdline,
            89 => Sys::ModuleRead,
            90 => Sys::TaskSetPages,
            96 => Sys::VmCreate,
            97 => Sys::VmMapRam,
            98 => Sys::VmUnmap,
            99 => Sys::VcpuCreate,
            100 => Sys::VcpuPortal,
            101 => Sys::VcpuState,
            102 => Sys::VcpuRun,
            103 => Sys::VmSetShadow,
            104 => Sys::TraceAttach,
            105 => Sys::TraceAck,
            106 => Sys::VmTrace,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_u64_decodes_every_number_and_only_those() {
        for &s in Sys::ALL {
            assert_eq!(Sys::from_u64(s as u64), Some(s));
        }
        let known: usize = (0..200).filter(|&n| Sys::from_u64(n).is_some()).count();
        assert_eq!(known, Sys::ALL.len());
        assert_eq!(Sys::from_u64(u64::MAX), None);
    }
}
