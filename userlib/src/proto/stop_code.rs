//! The stop codes an exit handler puts in a stopping reply (`abi::vmx::ExitReply::stop`): one
//! number space shared by the VMM and the MMU service, so a code says who stopped the VM and
//! why. This is their one definition; `vmm_service::vm::stop_code` re-exports it.
//!
//! A stop code is `kind | detail`: the kind in bits 24..32, a detail in bits 0..24. It fits in
//! 32 bits, so the kernel hands it back unchanged in the run's stop value as
//! `abi::vmx::stop::HANDLER | code`. The kinds are taken as follows (a kind of 0 is a stop with
//! no kind: a handler that could not take a message, the fuzzer's own stop):
//!
//! | kinds | decided by |
//! | --- | --- |
//! | `0x01..=0x09`, `0x10`, `0x11` | the VMM service (its VM model) |
//! | `0x0a..=0x0c` | the MMU service |
//!
//! The other numbers that say why something stopped live apart, and do not overlap these:
//!
//! - the kernel's stop value of a vCPU run (`VcpuRun`'s result, [`crate::sys::VcpuStop`]'s
//!   `stop`): `abi::vmx::stop`, its kind in bits 32..64, so it never collides with a handler's
//!   code in bits 0..32;
//! - a guest's debug-exit value, `VmResult::DebugExit { code }`: what QEMU's isa-debug-exit
//!   would report for the value written to port 0xf4, `(value << 1) | 1`; the test guests'
//!   verdicts are [`super::vmm::GUEST_PASS`] and [`super::vmm::GUEST_FAIL`];
//! - the machine's exit code, `abi::ExitCode` (`umbra: exit N` on the console, QEMU status
//!   `(N << 1) | 1`), which the harness judges; a suite asks for it with the supervisor's
//!   `Shutdown { code }`.
#![forbid(unsafe_code)]

/// Hypercall exit: detail = the guest's code (RBX), truncated.
pub const EXITED: u64 = 1 << 24;
/// Debug-exit port: detail = `(v << 1) | 1`, truncated.
pub const DEBUG_EXIT: u64 = 2 << 24;
/// Triple fault: detail 0.
pub const TRIPLE_FAULT: u64 = 3 << 24;
/// VM entry failed (invalid guest state, MSR loading, machine check): detail = full exit
/// reason & DETAIL_MASK.
pub const ENTRY_FAILED: u64 = 4 << 24;
/// An exit the model does not handle: detail = basic exit reason.
pub const UNHANDLED: u64 = 5 << 24;
/// A malformed exit message (missing state groups): detail = basic exit reason.
pub const BAD_EXIT: u64 = 6 << 24;
/// HLT with interrupts disabled (nothing can wake the vCPU): detail 0.
pub const HALTED: u64 = 7 << 24;
/// ACPI S5 through PM1a_CNT: detail 0.
pub const POWERED_OFF: u64 = 8 << 24;
/// A reset through a port: detail = the port.
pub const RESET: u64 = 9 << 24;
/// The MMU service (or the VMM, for an access no device takes): an access outside RAM;
/// detail = the guest-physical page number (gpa >> 12), truncated ([`outside_ram`]).
pub const OUTSIDE_RAM: u64 = 0x0a << 24;
/// The MMU service: an exit it cannot take (malformed, unknown VM, wrong reason, the shadow
/// MMU out of pool pages or failing). Detail 0.
pub const MMU_ERROR: u64 = 0x0b << 24;
/// The MMU service: a write to a guest page table that could not be emulated. Detail 0.
pub const UNEMULATED: u64 = 0x0c << 24;
/// An application processor received INIT: its vCPU stops and waits for a SIPI (the VM goes
/// on). Detail 0.
pub const PARKED: u64 = 0x10 << 24;
/// Another vCPU's stop ended the VM (multi-vCPU VMs). Detail 0.
pub const VM_ENDED: u64 = 0x11 << 24;

/// The kind part of a stop code.
pub const KIND_MASK: u64 = 0xff << 24;
/// The detail part of a stop code.
pub const DETAIL_MASK: u64 = 0xff_ffff;

/// The stop code for an access at `gpa` outside RAM.
pub const fn outside_ram(gpa: u64) -> u64 {
    OUTSIDE_RAM | ((gpa >> 12) & DETAIL_MASK)
}

/// The guest-physical page address an [`outside_ram`] code names, or `None` for another code.
pub const fn outside_ram_gpa(code: u64) -> Option<u64> {
    if code & KIND_MASK == OUTSIDE_RAM {
        Some((code & DETAIL_MASK) << 12)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_distinct_and_fit_in_32_bits() {
        let kinds = [
            EXITED,
            DEBUG_EXIT,
            TRIPLE_FAULT,
            ENTRY_FAILED,
            UNHANDLED,
            BAD_EXIT,
            HALTED,
            POWERED_OFF,
            RESET,
            OUTSIDE_RAM,
            MMU_ERROR,
            UNEMULATED,
            PARKED,
            VM_ENDED,
        ];
        for (i, a) in kinds.iter().enumerate() {
            assert_eq!(a & !KIND_MASK, 0, "{a:#x}");
            assert_ne!(*a, 0);
            assert!(kinds[i + 1..].iter().all(|b| a != b), "{a:#x}");
        }
        assert_eq!(KIND_MASK | DETAIL_MASK, u64::from(u32::MAX));
        // The kernel's kinds start above bit 32: a handler's code never looks like one.
        assert_eq!(abi::vmx::stop::KIND_MASK & (KIND_MASK | DETAIL_MASK), 0);
    }

    #[test]
    fn guest_verdicts_are_what_the_guests_write_to_port_0xf4() {
        // `finish32`/`finish64` write 0x10 (pass) or 0x11 (fail).
        assert_eq!(crate::proto::vmm::GUEST_PASS, 0x21);
        assert_eq!(crate::proto::vmm::GUEST_FAIL, 0x23);
    }

    #[test]
    fn outside_ram_round_trips_the_page() {
        assert_eq!(outside_ram(0x1234_5678), 0x0a01_2345);
        assert_eq!(outside_ram_gpa(outside_ram(0x1234_5678)), Some(0x1234_5000));
        assert_eq!(outside_ram_gpa(MMU_ERROR), None);
    }
}
