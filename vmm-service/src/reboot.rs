//! What a guest's reset does: the VM restarts, as a PC reboots, up to
//! [`VmConfig::max_resets`](userlib::proto::vmm::VmConfig) times; the reset after those ends
//! it (QEMU's `-no-reboot` is `max_resets = 0`).
//!
//! A reset is a write to one of the reset ports ([`crate::devices::reset`]: port 0x92 bit 0,
//! the keyboard controller's pulse, the Reset Control Register at 0xCF9, which is also the
//! FADT's reset register) or a triple fault (the processor's shutdown, which a PC chipset
//! turns into a reset). The service carries the restart out (`setup::run_vm`): the VM and
//! its vCPUs are made again on the same RAM (every vCPU at the kernel's power-on state, the
//! MMU service's state new: EPT tables or shadow pages, none left from the last boot), the
//! image and the boot information are loaded again, and the model is reset
//! ([`crate::vm::VmModel::reset`]: devices at power-on, the CMOS kept).

use userlib::proto::vmm::VmResult;

/// Whether `result` is the machine resetting itself (a port or a triple fault).
pub fn is_reset(result: &VmResult) -> bool {
    matches!(result, VmResult::Reset { .. } | VmResult::TripleFault)
}

/// Whether a VM that stopped with `result`, after `resets` restarts, restarts again when
/// `max_resets` are allowed.
pub fn restarts(result: &VmResult, resets: u32, max_resets: u8) -> bool {
    is_reset(result) && resets < u32::from(max_resets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_resets_restart_and_only_up_to_the_limit() {
        let ports = [0x92, 0x64, 0xcf9].map(|port| VmResult::Reset { port });
        for r in ports.iter().chain([&VmResult::TripleFault]) {
            assert!(is_reset(r));
            // 0: the first reset ends the VM, as today (QEMU's -no-reboot).
            assert!(!restarts(r, 0, 0));
            assert!(restarts(r, 0, 1));
            assert!(!restarts(r, 1, 1));
            assert!(restarts(r, 7, 8));
            assert!(!restarts(r, 8, 8));
            assert!(restarts(r, 254, u8::MAX));
            assert!(!restarts(r, 255, u8::MAX));
            assert!(!restarts(r, u32::MAX, u8::MAX));
        }
        for r in [
            VmResult::PoweredOff,
            VmResult::DebugExit { code: 0x21 },
            VmResult::HypercallExit { code: 0 },
            VmResult::Halted { rip: 0 },
            VmResult::TimeLimit,
            VmResult::OutsideRam { gpa: 0 },
            VmResult::EntryFailed {
                reason: 0x8000_0021,
                error: 0,
            },
            VmResult::Unhandled { reason: 10 },
            VmResult::Stopped { stop: 0 },
            VmResult::BadExit { reason: 0 },
            VmResult::MmuGone { reason: 48 },
        ] {
            assert!(!is_reset(&r), "{r:?}");
            assert!(!restarts(&r, 0, u8::MAX), "{r:?}");
        }
    }
}
