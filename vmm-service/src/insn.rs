//! The instruction exits beyond CPUID, I/O, MSRs, CRs, HLT and VMCALL: what each does to a
//! guest that executes it, as the CPU Umbra describes in CPUID would do.
//!
//! - INVD, WBINVD: nothing to do. Guest RAM is ordinary write-back memory, and every device
//!   the guest has is emulated by the VMM through the same coherent mappings (no device does
//!   DMA around the caches), so writing back or invalidating caches changes nothing the guest
//!   can observe. Carrying out INVD for real would drop the host's dirty lines.
//! - PAUSE (only with PAUSE exiting): a hint; resume after it.
//! - XSETBV: the checks of the instruction (SDM vol. 2): #UD without XSAVE in CPUID or with
//!   CR4.OSXSAVE clear, #GP(0) at CPL > 0, with ECX ≠ 0, or for a value
//!   [`abi::xcr0::valid`] refuses against the guest's CPUID leaf 0xD; otherwise the value
//!   becomes the vCPU's XCR0 ([`abi::vmx::field::GUEST_XCR0`]).
//! - RDPMC: #GP(0): no performance counters are offered (the counter in ECX does not exist).
//! - MONITOR, MWAIT: #UD unless CPUID.1:ECX.MONITOR is offered; then MONITOR arms nothing
//!   and MWAIT returns at once (a wake-up MWAIT is allowed to have for any reason).
//! - VMX instructions, GETSEC: #UD (VMX and SMX are hidden from the guest, as KVM does
//!   without nested virtualisation).
//! - Task switch: not emulated; the VM stops with a report naming its source.

use abi::cpu::cr4;
use abi::vmx::{group, reason, ExitMessage, Gpr};

use crate::exception::{GP, UD};

/// What the model does for one of these exits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Resume after the instruction.
    Advance,
    /// Inject the exception (vector, error code) without advancing.
    Fault(u8, u32),
    /// XSETBV of this value: store it as the vCPU's XCR0, then advance.
    SetXcr0(u64),
    /// Stop the VM with this report text.
    Stop(&'static str),
}

/// VM exits of the VMX instructions and of GETSEC.
pub const UD_REASONS: [u32; 13] = [
    reason::GETSEC,
    19, // VMCLEAR
    20, // VMLAUNCH
    21, // VMPTRLD
    22, // VMPTRST
    23, // VMREAD
    24, // VMRESUME
    25, // VMWRITE
    26, // VMXOFF
    27, // VMXON
    50, // INVEPT
    53, // INVVPID
    59, // VMFUNC
];

/// The reasons [`handle`] answers (besides [`UD_REASONS`]).
pub const REASONS: [u32; 8] = [
    reason::INVD,
    reason::WBINVD,
    reason::PAUSE,
    reason::XSETBV,
    reason::RDPMC,
    reason::MONITOR,
    reason::MWAIT,
    reason::TASK_SWITCH,
];

/// The state groups [`handle`] needs for basic reason `basic` (0 for other reasons): CR0.PE
/// decides whether an exception has an error code; XSETBV checks CR4 and the CPL.
pub fn required_groups(basic: u32) -> u32 {
    match basic {
        reason::XSETBV => group::GPRS | group::CRS | group::SEGS,
        reason::RDPMC | reason::MONITOR | reason::MWAIT => group::CRS,
        // Not emulated: the VM stops with a full report.
        reason::TASK_SWITCH => group::ALL,
        r if UD_REASONS.contains(&r) => group::CRS,
        _ => 0,
    }
}

/// CPUID.1:ECX bits.
const ECX1_MONITOR: u32 = 1 << 3;
const ECX1_XSAVE: u32 = 1 << 26;

/// The action for exit `m` of basic reason `basic`, or `None` when it is not one of these;
/// `cpuid` answers as the guest's CPUID does.
pub fn handle(
    basic: u32,
    m: &ExitMessage,
    mut cpuid: impl FnMut(u32, u32) -> [u32; 4],
) -> Option<Action> {
    Some(match basic {
        reason::INVD | reason::WBINVD | reason::PAUSE => Action::Advance,
        reason::RDPMC => Action::Fault(GP, 0),
        reason::MONITOR | reason::MWAIT => {
            if cpuid(1, 0)[2] & ECX1_MONITOR != 0 {
                Action::Advance
            } else {
                Action::Fault(UD, 0)
            }
        }
        reason::XSETBV => xsetbv(m, cpuid),
        reason::TASK_SWITCH => Action::Stop(match (m.qualification >> 30) & 3 {
            0 => "task switch by CALL to a TSS or task gate: not emulated",
            1 => "task switch by IRET with NT set: not emulated",
            2 => "task switch by JMP to a TSS or task gate: not emulated",
            _ => "task switch through a task gate in the IDT: not emulated",
        }),
        r if UD_REASONS.contains(&r) => Action::Fault(UD, 0),
        _ => return None,
    })
}

fn xsetbv(m: &ExitMessage, mut cpuid: impl FnMut(u32, u32) -> [u32; 4]) -> Action {
    if cpuid(1, 0)[2] & ECX1_XSAVE == 0 || m.cr4_shadow & cr4::OSXSAVE == 0 {
        return Action::Fault(UD, 0);
    }
    // CPL: SS.DPL (access rights bits 6:5).
    let cpl = (m.segments[1].access_rights >> 5) & 3;
    let g = |r: Gpr| m.gprs[r as usize];
    if cpl != 0 || g(Gpr::Rcx) as u32 != 0 {
        return Action::Fault(GP, 0);
    }
    let value = (g(Gpr::Rdx) & 0xffff_ffff) << 32 | (g(Gpr::Rax) & 0xffff_ffff);
    let offered = if cpuid(0, 0)[0] >= 0xd {
        let d = cpuid(0xd, 0);
        u64::from(d[0]) | u64::from(d[3]) << 32
    } else {
        0
    };
    if abi::xcr0::valid(value, offered) {
        Action::SetXcr0(value)
    } else {
        Action::Fault(GP, 0)
    }
}

#[cfg(test)]
mod tests;
