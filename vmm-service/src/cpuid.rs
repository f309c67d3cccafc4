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
