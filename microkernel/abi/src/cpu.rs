//! Architectural register bits that cross the kernel boundary: a guest's CR0, CR4 and EFER as
//! `VcpuState` and the exit messages carry them, and the RFLAGS bits their handlers test.
//! Defined once here for the kernel and the services.

/// CR0.
pub mod cr0 {
    pub const PE: u64 = 1 << 0;
    pub const MP: u64 = 1 << 1;
    pub const EM: u64 = 1 << 2;
    pub const TS: u64 = 1 << 3;
    pub const ET: u64 = 1 << 4;
    pub const NE: u64 = 1 << 5;
    pub const WP: u64 = 1 << 16;
    pub const AM: u64 = 1 << 18;
    pub const NW: u64 = 1 << 29;
    pub const CD: u64 = 1 << 30;
    pub const PG: u64 = 1 << 31;
}

/// CR4.
pub mod cr4 {
    /// Debugging extensions: DR4/DR5 are reserved (#UD) instead of aliasing DR6/DR7.
    pub const DE: u64 = 1 << 3;
    pub const PSE: u64 = 1 << 4;
    pub const PAE: u64 = 1 << 5;
    pub const PGE: u64 = 1 << 7;
    pub const OSFXSR: u64 = 1 << 9;
    pub const OSXMMEXCPT: u64 = 1 << 10;
    pub const LA57: u64 = 1 << 12;
    pub const VMXE: u64 = 1 << 13;
    pub const SMXE: u64 = 1 << 14;
    pub const FSGSBASE: u64 = 1 << 16;
    pub const PCIDE: u64 = 1 << 17;
    pub const OSXSAVE: u64 = 1 << 18;
    pub const SMEP: u64 = 1 << 20;
    pub const SMAP: u64 = 1 << 21;
    pub const PKE: u64 = 1 << 22;
}

/// IA32_EFER.
pub mod efer {
    pub const SCE: u64 = 1 << 0;
    pub const LME: u64 = 1 << 8;
    pub const LMA: u64 = 1 << 10;
    pub const NXE: u64 = 1 << 11;
}

/// RFLAGS.
pub mod rflags {
    /// Bit 1 is reserved and reads as 1.
    pub const FIXED_1: u64 = 1 << 1;
    /// Resume flag: the next instruction's instruction breakpoints are ignored.
    pub const RF: u64 = 1 << 16;
    /// Alignment check / SMAP override (`stac`).
    pub const AC: u64 = 1 << 18;
}

// ----- Part `fpu` (issue 17): debug registers and XCR0 -----

/// DR6 (SDM vol. 3, 18.2.3).
pub mod dr6 {
    /// Bits that read as 1 whatever is written (4-11, 16-31: no RTM, no bus-lock detection).
    pub const FIXED_1: u64 = 0xffff_0ff0;
    /// Bits software may write: B0-B3, BD, BS, BT.
    pub const WRITABLE: u64 = 0xe00f;
    /// BD: the debug exception came from a MOV DR with DR7.GD set.
    pub const BD: u64 = 1 << 13;
    /// The value after reset.
    pub const INIT: u64 = FIXED_1;
    /// What DR6 holds after a write of `value` (bits 63:32 are #GP, checked before).
    pub const fn normalize(value: u64) -> u64 {
        (value & WRITABLE) | FIXED_1
    }
}

/// DR7 (SDM vol. 3, 18.2.4).
pub mod dr7 {
    /// Bit 10 reads as 1.
    pub const FIXED_1: u64 = 0x400;
    /// Bits software may write: L0-G3, LE, GE, GD, R/W and LEN fields (not RTM, bit 11).
    pub const WRITABLE: u64 = 0xffff_23ff;
    /// GD: MOV DR raises #DB while set.
    pub const GD: u64 = 1 << 13;
    /// The value after reset.
    pub const INIT: u64 = FIXED_1;
    /// What DR7 holds after a write of `value` (bits 63:32 are #GP, checked before).
    pub const fn normalize(value: u64) -> u64 {
        (value & WRITABLE) | FIXED_1
    }
}

/// XCR0, the extended-state components XSAVE manages (SDM vol. 1, 13.3).
/// XCR0's components and the XSETBV rules: [`crate::xcr0`] (one definition).
pub use crate::xcr0;

#[cfg(test)]
mod dr_tests {
    use super::*;

    #[test]
    fn debug_register_fixed_bits() {
        assert_eq!(dr6::normalize(0), 0xffff_0ff0);
        assert_eq!(dr6::normalize(0xffff_ffff), 0xffff_eff0 | 0xf);
        assert_eq!(dr6::normalize(dr6::BD | 1), 0xffff_2ff1);
        assert_eq!(dr7::normalize(0), 0x400);
        assert_eq!(dr7::normalize(0xffff_ffff), 0xffff_27ff);
        assert_eq!(dr7::normalize(0x3), 0x403);
    }
}
