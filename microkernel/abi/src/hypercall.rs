//! Umbra's hypercalls: the VMCALL interface between a guest and the VMM service.
//!
//! A VMCALL is Umbra's when EAX holds [`SIGNATURE`] in bits 31:8 (the bytes "UMB") and the
//! hypercall number in bits 7:0. Bits 63:32 of RAX are ignored, as KVM ignores them outside
//! 64-bit mode: a 32-bit guest cannot clear them (and a result written to RAX sets them).
//! No other hypervisor's guests put such a value in RAX: KVM's and Xen's
//! hypercall numbers are small integers, Hyper-V takes its call code in RCX, VMware's backdoor
//! is an I/O port with 0x564D5868 ("VMXh") in EAX. Any other VMCALL is not an error of the VM:
//! it returns [`ENOSYS`] in RAX (as KVM returns `-KVM_ENOSYS`) and the guest goes on.
//!
//! Arguments are RBX, RCX, RDX, RSI; the result is in RAX ([`OK`], [`ERROR`] or [`ENOSYS`]).

/// RAX bits 31:8 of an Umbra hypercall ("UMB").
pub const SIGNATURE: u64 = 0x554d_4200;
/// The bits of RAX that must equal [`SIGNATURE`].
pub const SIGNATURE_MASK: u64 = 0xffff_ff00;

/// Stop the VM: RBX = exit code.
pub const EXIT: u64 = SIGNATURE;
/// Print RCX (≤ [`PRINT_MAX`]) bytes at guest-physical RBX to the console.
pub const PRINT: u64 = SIGNATURE | 1;
/// Do nothing (for measuring the exit round trip).
pub const NOP: u64 = SIGNATURE | 2;
/// Benchmark only: have the kernel answer exits of basic reason RBX (CPUID, VMCALL or I/O)
/// itself, the floor an exit round trip is measured against.
pub const REFLECT: u64 = SIGNATURE | 3;
/// Benchmark only: give every reflected reason back to the VMM service. While VMCALL is
/// reflected, CPUID leaf [`UNREFLECT_LEAF`] does the same.
pub const UNREFLECT: u64 = SIGNATURE | 4;
/// The CPUID leaf that acts as [`UNREFLECT`] (it reads as zeros).
pub const UNREFLECT_LEAF: u32 = 0x4000_00ff;
/// Most bytes one [`PRINT`] takes.
pub const PRINT_MAX: usize = 256;

/// RAX after success.
pub const OK: u64 = 0;
/// RAX after an Umbra hypercall with a bad argument.
pub const ERROR: u64 = u64::MAX;
/// RAX after a VMCALL that is not an Umbra hypercall, or an unknown Umbra number: -1000,
/// KVM's `-KVM_ENOSYS`.
pub const ENOSYS: u64 = (-1000i64) as u64;

/// The Umbra hypercall number (bits 7:0) of a VMCALL with `rax`, if it carries the signature.
pub fn number(rax: u64) -> Option<u8> {
    (rax & SIGNATURE_MASK == SIGNATURE).then_some(rax as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_signed_values_are_umbras() {
        assert_eq!(number(NOP), Some(2));
        assert_eq!(number(EXIT), Some(0));
        assert_eq!(number(0x554d_42ff), Some(0xff));
        // Other hypervisors' conventions, and Umbra's old plain numbers.
        for other in [
            0,
            1,
            2,
            3,
            4,
            9,
            0x564d_5868,
            0x4d42_0002,
            0x554d_4302,
            u64::MAX,
        ] {
            assert_eq!(number(other), None, "{other:#x}");
        }
        // Bits 63:32 do not count (left over from a result, in a 32-bit guest).
        assert_eq!(number(0xffff_ffff_554d_4202), Some(2));
        assert_eq!(ENOSYS as i64, -1000);
    }
}
