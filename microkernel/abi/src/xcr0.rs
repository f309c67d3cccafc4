//! XCR0, the extended control register XSETBV writes: its components and the rules a value
//! must follow (SDM vol. 1, 13.3 "Enabling the XSAVE feature set and XSAVE-enabled
//! features"; vol. 2, XSETBV). Shared by the VMM (which checks a guest's XSETBV like the CPU)
//! and the kernel (which refuses a `GUEST_XCR0` the CPU could not load).

/// x87 state: always set.
pub const X87: u64 = 1 << 0;
pub const SSE: u64 = 1 << 1;
pub const AVX: u64 = 1 << 2;
pub const BNDREGS: u64 = 1 << 3;
pub const BNDCSR: u64 = 1 << 4;
pub const OPMASK: u64 = 1 << 5;
pub const ZMM_HI256: u64 = 1 << 6;
pub const HI16_ZMM: u64 = 1 << 7;
/// The value after reset: x87 only.
pub const INIT: u64 = X87;
/// The three AVX-512 components: all set or all clear.
pub const AVX512: u64 = OPMASK | ZMM_HI256 | HI16_ZMM;
pub const PKRU: u64 = 1 << 9;
pub const TILECFG: u64 = 1 << 17;
pub const TILEDATA: u64 = 1 << 18;
/// AMX: both set or both clear.
pub const AMX: u64 = TILECFG | TILEDATA;

/// Whether XSETBV may load `value` into XCR0 on a CPU whose CPUID.(EAX=0DH,ECX=0):EDX:EAX is
/// `supported` (bits not offered there are reserved): x87 set, AVX needs SSE, AVX-512 all or
/// nothing and needs AVX, MPX both or neither, AMX both or neither.
pub fn valid(value: u64, supported: u64) -> bool {
    let all_or_none = |m: u64| value & m == 0 || value & m == m;
    value & !supported == 0
        && value & X87 != 0
        && (value & AVX == 0 || value & SSE != 0)
        && all_or_none(AVX512)
        && (value & AVX512 == 0 || value & AVX != 0)
        && all_or_none(BNDREGS | BNDCSR)
        && all_or_none(AMX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sdm_rules() {
        let cpu = X87 | SSE | AVX | AVX512 | BNDREGS | BNDCSR | PKRU;
        for ok in [
            X87,
            X87 | SSE,
            X87 | SSE | AVX,
            X87 | SSE | AVX | AVX512,
            X87 | PKRU,
        ] {
            assert!(valid(ok, cpu), "{ok:#x}");
        }
        for bad in [
            0,                        // x87 clear
            SSE,                      // x87 clear
            X87 | AVX,                // AVX without SSE
            X87 | SSE | AVX | OPMASK, // part of AVX-512
            X87 | SSE | AVX512,       // AVX-512 without AVX
            X87 | BNDREGS,            // half of MPX
            X87 | 1 << 8,             // not offered by the CPU
            X87 | 1 << 63,            // reserved
        ] {
            assert!(!valid(bad, cpu), "{bad:#x}");
        }
        // A component the CPU does not offer is refused even where the rules would allow it.
        assert!(!valid(X87 | SSE | AVX, X87 | SSE));
        assert!(valid(X87 | AMX, X87 | AMX));
        assert!(!valid(X87 | TILEDATA, X87 | AMX));
    }
}
