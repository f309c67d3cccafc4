//! The CPUID policy: host values with VMX (and SMX) hidden and the hypervisor bit set, plus
//! Umbra's hypervisor leaves 0x4000_0000..=0x4000_00ff.

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

/// The guest's CPUID result `[eax, ebx, ecx, edx]` for `leaf`/`subleaf`; `host` gives the
/// host's values for leaves passed through. Leaves in the hypervisor range are never passed
/// through (so an outer hypervisor's leaves do not leak).
/// CPUID.(7,0):ECX: protection keys, OS support for them, 5-level paging.
pub const ECX7_PKU: u32 = 1 << 3;
pub const ECX7_OSPKE: u32 = 1 << 4;
pub const ECX7_LA57: u32 = 1 << 16;
/// CPUID.80000001H:EDX: 1 GiB pages.
pub const EDX_EXT_GBPAGES: u32 = 1 << 26;

/// Clears in `r`, the answer to `leaf`/`subleaf` from [`cpuid`], what a shadow-paged VM does
/// not have: the shadow MMU implements neither protection keys nor 5-level paging (Linux KVM
/// hides PKU from shadow-paged guests too).
#[inline]
pub fn hide_from_shadow(leaf: u32, subleaf: u32, r: &mut [u32; 4]) {
    if leaf == 7 && subleaf == 0 {
        r[2] &= !(ECX7_PKU | ECX7_OSPKE | ECX7_LA57);
    }
}

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

pub fn cpuid(leaf: u32, subleaf: u32, host: impl FnOnce(u32, u32) -> [u32; 4]) -> [u32; 4] {
    match leaf {
        HV_BASE => {
            let w = |i: usize| {
                u32::from_le_bytes([
                    SIGNATURE[i],
                    SIGNATURE[i + 1],
                    SIGNATURE[i + 2],
                    SIGNATURE[i + 3],
                ])
            };
            [HV_MAX, w(0), w(4), w(8)]
        }
        0x4000_0001..=0x4000_00ff => [0; 4],
        1 => {
            let mut r = host(leaf, subleaf);
            r[2] = (r[2] & !(ECX_VMX | ECX_SMX)) | ECX_HYPERVISOR;
            r
        }
        _ => host(leaf, subleaf),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(leaf: u32, sub: u32) -> [u32; 4] {
        [leaf, sub, 0x7fff_ffff, 0xdead]
    }

    #[test]
    fn leaf_1_hides_vmx_and_sets_hypervisor() {
        let r = cpuid(1, 0, host);
        assert_eq!(r[2] & ECX_VMX, 0);
        assert_eq!(r[2] & ECX_SMX, 0);
        assert_ne!(r[2] & ECX_HYPERVISOR, 0);
        assert_eq!(r[2], 0xffff_ff9f);
        assert_eq!((r[0], r[3]), (1, 0xdead));
    }

    /// What a shadow-paged VM's CPUID answers.
    fn cpuid_shadow(leaf: u32, sub: u32, host: impl FnOnce(u32, u32) -> [u32; 4]) -> [u32; 4] {
        let mut r = cpuid(leaf, sub, host);
        hide_from_shadow(leaf, sub, &mut r);
        r
    }

    #[test]
    fn shadow_vms_see_neither_protection_keys_nor_5_level_paging() {
        let all = |_, _| [u32::MAX; 4];
        let r = cpuid_shadow(7, 0, all);
        assert_eq!(r[2] & (ECX7_PKU | ECX7_OSPKE | ECX7_LA57), 0);
        assert_eq!(r[2] | ECX7_PKU | ECX7_OSPKE | ECX7_LA57, u32::MAX);
        assert_eq!(cpuid_shadow(7, 1, all), [u32::MAX; 4]);
        assert_eq!(cpuid_shadow(1, 0, host), cpuid(1, 0, host));
    }

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

    #[test]
    fn hypervisor_leaves() {
        let r = cpuid(0x4000_0000, 0, host);
        assert_eq!(r[0], 0x4000_0001);
        let mut sig = [0u8; 12];
        sig[0..4].copy_from_slice(&r[1].to_le_bytes());
        sig[4..8].copy_from_slice(&r[2].to_le_bytes());
        sig[8..12].copy_from_slice(&r[3].to_le_bytes());
        assert_eq!(&sig, b"UmbraUmbraUm");
        assert_eq!(cpuid(0x4000_0001, 0, host), [0; 4]);
        assert_eq!(cpuid(0x4000_0010, 0, host), [0; 4]);
        assert_eq!(cpuid(7, 1, host), [7, 1, 0x7fff_ffff, 0xdead]);
    }
}
