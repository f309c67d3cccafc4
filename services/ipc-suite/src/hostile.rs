//! Bad arguments to every syscall that takes a pointer, a length, a capability or a right:
//! each gets its error code, and the suite (and the kernel) carry on.

use abi::{Error, Sys, NO_CAP};
use userlib::sys::{self, NEVER_MAPPED};

use crate::{echo, Suite};

const KERNEL_VA: u64 = 0xffff_8000_0000_0000;
const OWN_EP: u64 = userlib::wiring::OWN_ENDPOINT;

pub fn bad_arguments(t: &mut Suite) {
    let unmapped = NEVER_MAPPED.start;
    let mem = sys::mem_alloc(1).unwrap_or(NO_CAP);
    let cases: &[(&str, Sys, [u64; 6], Error)] = &[
        (
            "DebugWrite, unmapped buffer",
            Sys::DebugWrite,
            [unmapped, 10, 0, 0, 0, 0],
            Error::BadPointer,
        ),
        (
            "DebugWrite, kernel address",
            Sys::DebugWrite,
            [KERNEL_VA, 10, 0, 0, 0, 0],
            Error::BadPointer,
        ),
        (
            "DebugWrite, null pointer",
            Sys::DebugWrite,
            [0, 10, 0, 0, 0, 0],
            Error::BadPointer,
        ),
        (
            "DebugWrite, length 8192",
            Sys::DebugWrite,
            [0, 8192, 0, 0, 0, 0],
            Error::BadLength,
        ),
        (
            "Call, unmapped buffer",
            Sys::Call,
            [echo(), unmapped, 10, 512, 0, NO_CAP],
            Error::BadPointer,
        ),
        (
            "Call, kernel buffer",
            Sys::Call,
            [echo(), KERNEL_VA, 10, 512, 0, NO_CAP],
            Error::BadPointer,
        ),
        (
            "Call, non-canonical buffer",
            Sys::Call,
            [echo(), 0x8000_0000_0000_0000 - 0x10, 10, 512, 0, NO_CAP],
            Error::BadPointer,
        ),
        (
            "Call, length 600",
            Sys::Call,
            [echo(), unmapped, 600, 512, 0, NO_CAP],
            Error::BadLength,
        ),
        (
            "Call, granting an empty slot",
            Sys::Call,
            [echo(), 0, 0, 0, 0, 50],
            Error::InvalidCap,
        ),
        (
            "Send, unmapped buffer",
            Sys::Send,
            [echo(), unmapped, 10, 0, NO_CAP, 0],
            Error::BadPointer,
        ),
        (
            "Send, length 513",
            Sys::Send,
            [echo(), unmapped, 513, 0, NO_CAP, 0],
            Error::BadLength,
        ),
        (
            "Recv, unmapped buffer",
            Sys::Recv,
            [OWN_EP, unmapped, 512, 0, 0, 0],
            Error::BadPointer,
        ),
        (
            "Recv, kernel buffer",
            Sys::Recv,
            [OWN_EP, KERNEL_VA, 512, 0, 0, 0],
            Error::BadPointer,
        ),
        (
            "Recv, no receive right",
            Sys::Recv,
            [echo(), unmapped, 512, 0, 0, 0],
            Error::NoRights,
        ),
        (
            "Reply, nobody to answer",
            Sys::Reply,
            [unmapped, 10, 0, NO_CAP, 0, 0],
            Error::NoCaller,
        ),
        (
            "ReplyRecv, unmapped buffer",
            Sys::ReplyRecv,
            [OWN_EP, unmapped, 0, 512, 0, NO_CAP],
            Error::BadPointer,
        ),
        // This suite holds no boot capability: the boot modules and the command line are
        // not its to read (slot 0 is empty in every task but the first).
        (
            "ModuleInfo without the boot capability",
            Sys::ModuleInfo,
            [0, unmapped, 100, 0, 0, 0],
            Error::InvalidCap,
        ),
        (
            "ModuleRead without the boot capability",
            Sys::ModuleRead,
            [0, 0, unmapped, 16, 0, 0],
            Error::InvalidCap,
        ),
        (
            "KernelCmdline without the boot capability",
            Sys::KernelCmdline,
            [KERNEL_VA, 256, 0, 0, 0, 0],
            Error::InvalidCap,
        ),
        (
            "ModuleInfo with an endpoint for the boot capability",
            Sys::ModuleInfo,
            [0, unmapped, 100, OWN_EP, 0, 0],
            Error::WrongCapKind,
        ),
        (
            "MemMap, kernel address",
            Sys::MemMap,
            [mem, KERNEL_VA, 1, 0, 0, 0],
            Error::InvalidArgument,
        ),
        (
            "MemMap, below the user range",
            Sys::MemMap,
            [mem, 0x1000, 1, 0, 0, 0],
            Error::InvalidArgument,
        ),
        (
            "MemMap, unaligned",
            Sys::MemMap,
            [mem, unmapped + 1, 1, 0, 0, 0],
            Error::InvalidArgument,
        ),
        (
            "MemMap, writable and executable",
            Sys::MemMap,
            [mem, unmapped, 7, 0, 0, 0],
            Error::InvalidArgument,
        ),
        (
            "MemAlloc, zero pages",
            Sys::MemAlloc,
            [0, 0, 0, 0, 0, 0],
            Error::BadLength,
        ),
        (
            "MemAlloc, 2^64-1 pages",
            Sys::MemAlloc,
            [u64::MAX, 0, 0, 0, 0, 0],
            Error::BadLength,
        ),
        (
            "MemUnmap, nothing mapped there",
            Sys::MemUnmap,
            [mem, unmapped, 0, 0, 0, 0],
            Error::InvalidArgument,
        ),
        (
            "ThreadCreate, kernel entry",
            Sys::ThreadCreate,
            [KERNEL_VA, unmapped, 0, 1, 0, 0],
            Error::InvalidArgument,
        ),
        (
            "ThreadCreate, priority above the task's",
            Sys::ThreadCreate,
            [unmapped, unmapped, 0, 31, 0, 0],
            Error::InvalidArgument,
        ),
        (
            "TaskSpawn, without the spawn capability",
            Sys::TaskSpawn,
            [0, 1, 1, NO_CAP, echo(), 0],
            Error::WrongCapKind,
        ),
        (
            "TaskGrant, on an endpoint",
            Sys::TaskGrant,
            [echo(), echo(), 0, 0, 0, 0],
            Error::WrongCapKind,
        ),
        (
            "TaskKill, empty slot",
            Sys::TaskKill,
            [45, 0, 0, 0, 0, 0],
            Error::InvalidCap,
        ),
        (
            "EndpointBind, without the revoke right",
            Sys::EndpointBind,
            [echo(), echo(), 0, 0, 0, 0],
            Error::NoRights,
        ),
        (
            "EndpointClose, without the revoke right",
            Sys::EndpointClose,
            [echo(), 0, 0, 0, 0, 0],
            Error::NoRights,
        ),
        (
            "MachineExit, without the machine capability",
            Sys::MachineExit,
            [echo(), 0, 0, 0, 0, 0],
            Error::WrongCapKind,
        ),
        (
            "Signal, empty slot",
            Sys::Signal,
            [40, 1, 0, 0, 0, 0],
            Error::InvalidCap,
        ),
        (
            "Wait, on an endpoint",
            Sys::Wait,
            [echo(), 0, 0, 0, 0, 0],
            Error::WrongCapKind,
        ),
        (
            "CapCopy, slot 2^64-1",
            Sys::CapCopy,
            [u64::MAX, 0, 0, 0, 0, 0],
            Error::InvalidCap,
        ),
        (
            "CapRevoke, without the revoke right",
            Sys::CapRevoke,
            [echo(), 0, 0, 0, 0, 0],
            Error::NoRights,
        ),
        (
            "CapInfo, slot 64",
            Sys::CapInfo,
            [64, 0, 0, 0, 0, 0],
            Error::InvalidCap,
        ),
    ];
    for (name, sys_nr, args, want) in cases {
        let got = sys::hostile_syscall(*sys_nr as u64, *args).map(|(rax, _)| Error::check(rax));
        t.check(
            name,
            got == Some(Err(*want)),
            format_args!("got {got:?}, want {want:?}"),
        );
    }
    let got = sys::hostile_syscall(200, [0; 6]).map(|(rax, _)| Error::check(rax));
    t.check(
        "unknown syscall number: UnknownSyscall",
        got == Some(Err(Error::UnknownSyscall)),
        format_args!("{got:?}"),
    );
    let _ = sys::cap_delete(mem);
}

/// A service takes memory from its page budget (the manifest's `pages=`, 1024 pages for this
/// suite): it cannot take the machine's frames from the supervisor and the other services.
pub fn page_budget(t: &mut Suite) {
    let budget = userlib::manifest::DEFAULT_PAGES;
    let mut held = [NO_CAP; 64];
    let mut pages = 0;
    let mut refused = None;
    for slot in held.iter_mut() {
        match sys::mem_alloc(64) {
            Ok(mem) => {
                *slot = mem;
                pages += 64;
            }
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    t.check(
        "MemAlloc past the page budget: NoMemory, and at most the budget was given",
        refused == Some(Error::NoMemory) && pages <= budget && pages + 64 > budget - 64,
        format_args!("{pages} pages given of a budget of {budget}, then {refused:?}"),
    );
    for mem in held.iter().filter(|m| **m != NO_CAP) {
        let _ = sys::cap_delete(*mem);
    }
    let again = sys::mem_alloc(64);
    t.check(
        "deleting the objects gives the budget back",
        again.is_ok(),
        format_args!("{again:?}"),
    );
    if let Ok(mem) = again {
        let _ = sys::cap_delete(mem);
    }
}
