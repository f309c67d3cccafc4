//! `abi`: the values that cross the kernel boundary, shared by the kernel and `userlib`.
//!
//! Syscall numbers and the register convention ([`syscall`]), error codes ([`error`]),
//! capability slots, kinds and rights ([`cap`]), the IPC limits and the fault notice ([`ipc`]),
//! the `kernel-tests` task's start argument ([`ktests`]), and what the boot scenarios and the
//! test harness agree on.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod cap;
pub mod cpu;
pub mod error;
pub mod hypercall;
pub mod ipc;
pub mod ktests;
pub mod syscall;
pub mod trace;
pub mod vmx;
pub mod xcr0;

pub use cap::{CapKind, CapSlot, Rights, NO_CAP};
pub use error::Error;
pub use syscall::Sys;

/// I/O port of QEMU's `isa-debug-exit` device (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`).
/// Writing `code` ends QEMU with status [`qemu_debug_exit_status`]`(code)`.
pub const QEMU_DEBUG_EXIT_PORT: u16 = 0xf4;

/// The status QEMU's `isa-debug-exit` reports for a write of `value` to its port:
/// `(value << 1) | 1`, so never 0. The one definition: the kernel's [`ExitCode::qemu_status`],
/// the harness and the VMM's model of the port (a guest's `VmResult::DebugExit { code }`) use it.
pub const fn qemu_debug_exit_status(value: u32) -> u64 {
    ((value as u64) << 1) | 1
}

/// I/O port of Bochs' power-management "shutdown" hack: writing the bytes of `Shutdown` ends Bochs.
pub const BOCHS_SHUTDOWN_PORT: u16 = 0x8900;

/// I/O port of the debug console (Bochs `port_e9_hack`, QEMU `-debugcon`); reading it returns 0xe9
/// when the device is present.
pub const DEBUGCON_PORT: u16 = 0xe9;

/// Longest boot-module command line (a boot manifest line) the kernel keeps, in bytes; the
/// supervisor reads them into buffers of this size.
pub const MODULE_CMDLINE_MAX: usize = 160;

/// Boot scenarios: the names the kernel command line selects with `scenario=NAME`, shared by
/// the kernel (which runs them) and the harness (which boots and judges them).
pub mod scenario {
    pub const KERNEL: &str = "kernel";
    pub const FAULT_SELFTEST: &str = "fault-selftest";
    pub const IPC: &str = "ipc";
    pub const BENCH_IPC: &str = "bench-ipc";
    pub const DEMO: &str = "demo";
    pub const VMM: &str = "vmm";
    pub const BENCH_VMM: &str = "bench-vmm";
    pub const SHADOW: &str = "shadow";
    pub const BENCH_MMU: &str = "bench-mmu";
    pub const ISOLATION: &str = "isolation";
    pub const FUZZ: &str = "fuzz";
    pub const MMU_RESTART: &str = "mmu-restart";
    pub const FUZZ_VM: &str = "fuzz-vm";
    pub const TRACE: &str = "trace";
    /// A user's own kernel (`make run GUEST=...`), from the boot module and the `guest.*`
    /// words of the kernel command line (see `GUEST_*` below).
    pub const GUEST: &str = "guest";

    /// The kernel command-line words of the `guest` scenario: the boot module holding the
    /// image (its file name), RAM in MiB, `ept` or `shadow`, `multiboot`, `flat` or `linux`,
    /// a Linux guest's initramfs module, and the guest's command line, which runs to the end
    /// of the kernel's.
    pub const GUEST_MODULE: &str = "guest.module=";
    pub const GUEST_RAM: &str = "guest.ram=";
    pub const GUEST_MMU: &str = "guest.mmu=";
    pub const GUEST_ENTRY: &str = "guest.entry=";
    pub const GUEST_INITRD: &str = "guest.initrd=";
    /// Shadow page pool pages (absent: the VMM's default).
    pub const GUEST_POOL: &str = "guest.pool=";
    /// Previous roots a shadow-paged vCPU caches (absent: the VMM's default).
    pub const GUEST_PREV_ROOTS: &str = "guest.prev-roots=";
    /// A word alone: shadow paging with KVM's policy (per-vCPU PAE roots never cached).
    pub const GUEST_KVM_POLICY: &str = "guest.kvm-policy";
    /// vCPUs (`VCPUS=n`; absent: 1).
    pub const GUEST_VCPUS: &str = "guest.vcpus=";
    pub const GUEST_CMDLINE: &str = "guest.cmdline=";

    /// The scenario run when the command line names none.
    pub const DEFAULT: &str = DEMO;

    /// Every scenario the kernel knows, with a one-line description.
    pub const ALL: &[(&str, &str)] = &[
        (KERNEL, "in-kernel self-tests"),
        (
            FAULT_SELFTEST,
            "deliberate page fault: prints the exception report, exits with code 3",
        ),
        (
            IPC,
            "IPC protocol suite: user tasks, capabilities, supervisor restarts",
        ),
        (
            BENCH_IPC,
            "IPC call+reply round trip in cycles for 0, 64 and 512-byte payloads",
        ),
        (
            DEMO,
            "the VMM service boots the multiboot demo guest (needs VMX: Bochs or KVM)",
        ),
        (
            VMM,
            "VMX/VMM suite: every test guest, bad configurations, stopped guests",
        ),
        (
            BENCH_VMM,
            "VM exit round trips (CPUID, VMCALL, OUT) via the VMM and the in-kernel floor",
        ),
        (
            SHADOW,
            "shadow paging: the multi-address-space guests on the MMU service's shadow tables, audited",
        ),
        (
            BENCH_MMU,
            "shadow MMU in cycles: first touch, CR3 hit and miss, hit rates over 2..16 spaces (needs VMX)",
        ),
        (
            ISOLATION,
            "VM isolation: a guest probes its whole 4 GiB guest-physical space beside a live neighbour VM, EPT and shadow",
        ),
        (
            FUZZ,
            "fuzzing: malformed messages to every service, random syscalls from a hostile task",
        ),
        (
            MMU_RESTART,
            "MMU service crashed 100 times per MMU mode under running guests, which must not notice",
        ),
        (
            FUZZ_VM,
            "VM fuzzing: random exit replies from a hostile handler, guests running random code and random page tables",
        ),
        (
            TRACE,
            "exit tracing: per-reason latency tables of an EPT and a shadow guest, counts checked against the VMM and MMU service, a trace-service restart",
        ),
        (
            GUEST,
            "a user's own kernel (make run GUEST=path): its console, its result, the exit summary",
        ),
    ];

    /// The description of a scenario, if the kernel knows it.
    pub fn title(name: &str) -> Option<&'static str> {
        ALL.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
    }
}

/// The code the kernel ends a scenario with. The harness reads it from the serial line
/// `umbra: exit <code>` (every emulator) and from QEMU's exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    /// Every check of the scenario passed.
    Success = 0,
    /// At least one check failed.
    Failure = 1,
    /// The command line named no scenario this kernel knows.
    UnknownScenario = 2,
    /// A CPU exception or a kernel panic stopped the machine.
    Crash = 3,
}

impl ExitCode {
    /// The process status QEMU's `isa-debug-exit` produces for this code.
    pub const fn qemu_status(self) -> i32 {
        qemu_debug_exit_status(self as u32) as i32
    }

    /// The exit code a `MachineExit` syscall's `code` asks for: one of the codes above, and
    /// any other value a failure.
    pub const fn from_raw(code: u64) -> ExitCode {
        match code {
            0 => ExitCode::Success,
            2 => ExitCode::UnknownScenario,
            3 => ExitCode::Crash,
            _ => ExitCode::Failure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_status_is_shifted_and_odd() {
        assert_eq!(ExitCode::Success.qemu_status(), 1);
        assert_eq!(ExitCode::Failure.qemu_status(), 3);
        assert_eq!(ExitCode::Crash.qemu_status(), 7);
        assert_eq!(qemu_debug_exit_status(0x10), 0x21);
        assert_eq!(qemu_debug_exit_status(u32::MAX), 0x1_ffff_ffff);
    }

    #[test]
    fn raw_codes_map_to_their_exit_code_and_the_rest_to_failure() {
        for c in [
            ExitCode::Success,
            ExitCode::Failure,
            ExitCode::UnknownScenario,
            ExitCode::Crash,
        ] {
            assert_eq!(ExitCode::from_raw(c as u64), c);
        }
        assert_eq!(ExitCode::from_raw(4), ExitCode::Failure);
        assert_eq!(ExitCode::from_raw(u64::MAX), ExitCode::Failure);
    }
}
