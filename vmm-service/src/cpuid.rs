//! CPUID constants and what the shadow MMU reads from the host's CPUID. The guest's answers
//! come from the table of [`crate::cpuid_policy`].

/// Leaf 1 ECX: VMX.
pub const ECX_VMX: u32 = 1 << 5;
/// Leaf 1 ECX: SMX (GETSEC), hidden with VMX.
pub const ECX_SMX: u32 = 1 << 6;
/// Leaf 1 ECX: running under a hypervisor.
pub const ECX_HYPERVISOR: u32 = 1 << 31;
/// First hypervisor leaf.
pub const HV_BASE: u32 = 0x4000_0000;
/// Highest hypervisor leaf Umbra defines.
pub const HV_MAX: u32 = 0x4000_0001;
/// The vendor signature in EBX, ECX, EDX of leaf 0x4000_0000.
pub const SIGNATURE: &[u8; 12] = b"UmbraUmbraUm";

/// CPUID.(7,0):ECX: protection keys, OS support for them, 5-level paging.
pub const ECX7_PKU: u32 = 1 << 3;
pub const ECX7_OSPKE: u32 = 1 << 4;
pub const ECX7_LA57: u32 = 1 << 16;
/// CPUID.80000001H:EDX: 1 GiB pages.
pub const EDX_EXT_GBPAGES: u32 = 1 << 26;

/// What the guest's CPUID says about its page tables, which the shadow MMU must read the same
/// way: MAXPHYADDR (80000008H:EAX[7:0], 36 when the leaf is absent) and 1 GiB pages.
pub fn paging_features(mut host: impl FnMut(u32, u32) -> [u32; 4]) -> (u8, bool) {
    let max_ext = host(0x8000_0000, 0)[0];
    let maxphyaddr = if max_ext >= 0x8000_0008 {
        (host(0x8000_0008, 0)[0] & 0xff) as u8
    } else {
        36
    };
    let gbpages = max_ext >= 0x8000_0001 && host(0x8000_0001, 0)[3] & EDX_EXT_GBPAGES != 0;
    (maxphyaddr, gbpages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_features_follow_the_extended_leaves() {
        let cpu = |max: u32, bits: u32, gb: bool| {
            move |l: u32, _| match l {
                0x8000_0000 => [max, 0, 0, 0],
                0x8000_0001 => [0, 0, 0, if gb { EDX_EXT_GBPAGES } else { 0 }],
                0x8000_0008 => [0x3000 | bits, 0, 0, 0],
                _ => [0; 4],
            }
        };
        assert_eq!(paging_features(cpu(0x8000_0008, 40, true)), (40, true));
        assert_eq!(paging_features(cpu(0x8000_0008, 46, false)), (46, false));
        assert_eq!(paging_features(cpu(0x8000_0001, 46, true)), (36, true));
        assert_eq!(paging_features(cpu(0x8000_0000, 46, true)), (36, false));
    }
}
