//! The vector and MMX registers from user code, for the checks that every thread keeps its
//! own (part `fpu` of issue 17: the kernel saves and restores them per thread and per vCPU).
//!
//! Services are built without SSE, so no compiled code uses these registers: only the
//! assembly here writes and reads them.

/// XMM0..XMM15 (two quadwords each) and MM0..MM7, in the layout the assembly uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, align(16))]
pub struct Regs {
    pub xmm: [[u64; 2]; 16],
    pub mm: [u64; 8],
}

impl Regs {
    /// How many registers (XMM and MM) differ between `self` and `other`.
    pub fn differences(&self, other: &Regs) -> u32 {
        let x = self
            .xmm
            .iter()
            .zip(&other.xmm)
            .filter(|(a, b)| a != b)
            .count();
        let m = self
            .mm
            .iter()
            .zip(&other.mm)
            .filter(|(a, b)| a != b)
            .count();
        (x + m) as u32
    }

    /// A pattern in every register derived from `seed` (distinct per register and seed).
    pub fn pattern(seed: u64) -> Regs {
        let mix = |i: u64| {
            (seed ^ 0x9e37_79b9_7f4a_7c15)
                .wrapping_mul(i + 1)
                .rotate_left(i as u32 % 64)
        };
        let mut r = Regs::default();
        for (i, x) in r.xmm.iter_mut().enumerate() {
            *x = [mix(2 * i as u64), mix(2 * i as u64 + 1)];
        }
        for (i, m) in r.mm.iter_mut().enumerate() {
            *m = mix(100 + i as u64);
        }
        r
    }
}

/// Loads `want` into XMM0..15 and MM0..7; then, `rounds` times, spins `spin` iterations (time
/// for the timer to preempt the thread) and yields; returns what the registers hold at the end
/// (and leaves the x87 unit usable again with EMMS).
#[cfg(target_os = "none")]
pub fn hold_across_yields(want: &Regs, rounds: u64, spin: u64) -> Regs {
    let mut got = Regs::default();
    let rounds = rounds.max(1);
    // SAFETY: the assembly reads `want` and writes `got` (both live, aligned `Regs`), and
    // changes only the registers named as outputs, the XMM/MMX registers (which no compiled
    // code of a service uses: the target has no SSE) and the x87 tag word, which EMMS resets.
    // `syscall` (Yield) is the kernel entry `sys::syscall6` uses: rax, rdi, rsi, rdx and r8
    // carry results, rcx and r11 are clobbered.
    unsafe {
        core::arch::asm!(
            "movdqu xmm0, [r12]",
            "movdqu xmm1, [r12 + 16]",
            "movdqu xmm2, [r12 + 32]",
            "movdqu xmm3, [r12 + 48]",
            "movdqu xmm4, [r12 + 64]",
            "movdqu xmm5, [r12 + 80]",
            "movdqu xmm6, [r12 + 96]",
            "movdqu xmm7, [r12 + 112]",
            "movdqu xmm8, [r12 + 128]",
            "movdqu xmm9, [r12 + 144]",
            "movdqu xmm10, [r12 + 160]",
            "movdqu xmm11, [r12 + 176]",
            "movdqu xmm12, [r12 + 192]",
            "movdqu xmm13, [r12 + 208]",
            "movdqu xmm14, [r12 + 224]",
            "movdqu xmm15, [r12 + 240]",
            "movq mm0, [r12 + 256]",
            "movq mm1, [r12 + 264]",
            "movq mm2, [r12 + 272]",
            "movq mm3, [r12 + 280]",
            "movq mm4, [r12 + 288]",
            "movq mm5, [r12 + 296]",
            "movq mm6, [r12 + 304]",
            "movq mm7, [r12 + 312]",
            "2:",
            "mov rcx, r14",
            "3:",
            "dec rcx",
            "jnz 3b",
            "mov eax, {yield_nr}",
            "syscall",
            "dec r15",
            "jnz 2b",
            "movdqu [r13], xmm0",
            "movdqu [r13 + 16], xmm1",
            "movdqu [r13 + 32], xmm2",
            "movdqu [r13 + 48], xmm3",
            "movdqu [r13 + 64], xmm4",
            "movdqu [r13 + 80], xmm5",
            "movdqu [r13 + 96], xmm6",
            "movdqu [r13 + 112], xmm7",
            "movdqu [r13 + 128], xmm8",
            "movdqu [r13 + 144], xmm9",
            "movdqu [r13 + 160], xmm10",
            "movdqu [r13 + 176], xmm11",
            "movdqu [r13 + 192], xmm12",
            "movdqu [r13 + 208], xmm13",
            "movdqu [r13 + 224], xmm14",
            "movdqu [r13 + 240], xmm15",
            "movq [r13 + 256], mm0",
            "movq [r13 + 264], mm1",
            "movq [r13 + 272], mm2",
            "movq [r13 + 280], mm3",
            "movq [r13 + 288], mm4",
            "movq [r13 + 296], mm5",
            "movq [r13 + 304], mm6",
            "movq [r13 + 312], mm7",
            "emms",
            yield_nr = const abi::Sys::Yield as u64,
            in("r12") want as *const Regs,
            in("r13") &mut got as *mut Regs,
            in("r14") spin.max(1),
            inout("r15") rounds => _,
            out("rax") _,
            out("rcx") _,
            out("rdx") _,
            out("rsi") _,
            out("rdi") _,
            out("r8") _,
            out("r11") _,
            options(nostack),
        );
    }
    got
}

/// YMM0..YMM15 (four quadwords each).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, align(32))]
pub struct Ymm(pub [[u64; 4]; 16]);

impl Ymm {
    /// A pattern in every register derived from `seed`.
    pub fn pattern(seed: u64) -> Ymm {
        let a = Regs::pattern(seed);
        let b = Regs::pattern(!seed);
        let mut y = Ymm::default();
        for (i, r) in y.0.iter_mut().enumerate() {
            *r = [a.xmm[i][0], a.xmm[i][1], b.xmm[i][0], b.xmm[i][1]];
        }
        y
    }
}

/// Whether ring 3 may use AVX: CPUID.1:ECX.AVX and OSXSAVE, and XCR0 enables the SSE and AVX
/// state (XGETBV).
#[cfg(target_os = "none")]
pub fn avx_usable() -> bool {
    let ecx = core::arch::x86_64::__cpuid_count(1, 0).ecx;
    if ecx & (1 << 27) == 0 || ecx & (1 << 28) == 0 {
        return false;
    }
    let (lo, _hi): (u32, u32);
    // SAFETY: XGETBV of XCR0 is allowed at any CPL once CR4.OSXSAVE is set (CPUID.1:ECX[27]
    // says it is); it only reads XCR0.
    unsafe {
        core::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") _hi,
                         options(nostack, nomem, preserves_flags))
    };
    lo & 6 == 6
}

/// The host stand-in: no AVX is assumed (services on the host only build).
#[cfg(not(target_os = "none"))]
pub fn avx_usable() -> bool {
    false
}

/// As [`hold_across_yields`] for YMM0..YMM15 (all 256 bits): the caller checks
/// [`avx_usable`] first.
#[cfg(target_os = "none")]
pub fn hold_ymm_across_yields(want: &Ymm, rounds: u64, spin: u64) -> Ymm {
    let mut got = Ymm::default();
    let rounds = rounds.max(1);
    // SAFETY: as for `hold_across_yields`; VEX instructions are available ([`avx_usable`]),
    // and VZEROUPPER at the end leaves the upper halves clean for SSE code.
    unsafe {
        core::arch::asm!(
            "vmovdqu ymm0, [r12 + 0]",
            "vmovdqu ymm1, [r12 + 32]",
            "vmovdqu ymm2, [r12 + 64]",
            "vmovdqu ymm3, [r12 + 96]",
            "vmovdqu ymm4, [r12 + 128]",
            "vmovdqu ymm5, [r12 + 160]",
            "vmovdqu ymm6, [r12 + 192]",
            "vmovdqu ymm7, [r12 + 224]",
            "vmovdqu ymm8, [r12 + 256]",
            "vmovdqu ymm9, [r12 + 288]",
            "vmovdqu ymm10, [r12 + 320]",
            "vmovdqu ymm11, [r12 + 352]",
            "vmovdqu ymm12, [r12 + 384]",
            "vmovdqu ymm13, [r12 + 416]",
            "vmovdqu ymm14, [r12 + 448]",
            "vmovdqu ymm15, [r12 + 480]",
            "2:",
            "mov rcx, r14",
            "3:",
            "dec rcx",
            "jnz 3b",
            "mov eax, {yield_nr}",
            "syscall",
            "dec r15",
            "jnz 2b",
            "vmovdqu [r13 + 0], ymm0",
            "vmovdqu [r13 + 32], ymm1",
            "vmovdqu [r13 + 64], ymm2",
            "vmovdqu [r13 + 96], ymm3",
            "vmovdqu [r13 + 128], ymm4",
            "vmovdqu [r13 + 160], ymm5",
            "vmovdqu [r13 + 192], ymm6",
            "vmovdqu [r13 + 224], ymm7",
            "vmovdqu [r13 + 256], ymm8",
            "vmovdqu [r13 + 288], ymm9",
            "vmovdqu [r13 + 320], ymm10",
            "vmovdqu [r13 + 352], ymm11",
            "vmovdqu [r13 + 384], ymm12",
            "vmovdqu [r13 + 416], ymm13",
            "vmovdqu [r13 + 448], ymm14",
            "vmovdqu [r13 + 480], ymm15",
            "vzeroupper",
            yield_nr = const abi::Sys::Yield as u64,
            in("r12") want as *const Ymm,
            in("r13") &mut got as *mut Ymm,
            in("r14") spin.max(1),
            inout("r15") rounds => _,
            out("rax") _,
            out("rcx") _,
            out("rdx") _,
            out("rsi") _,
            out("rdi") _,
            out("r8") _,
            out("r11") _,
            options(nostack),
        );
    }
    got
}

/// The host stand-in for [`hold_ymm_across_yields`]: zeros (see [`hold_across_yields`]'s).
#[cfg(not(target_os = "none"))]
pub fn hold_ymm_across_yields(_want: &Ymm, _rounds: u64, _spin: u64) -> Ymm {
    Ymm::default()
}

/// The host stand-in for [`hold_across_yields`] (services build on the host for tests and
/// lints): there is no kernel to yield to, and no register is kept: it returns all zeros, so
/// a check built on it fails rather than passes.
#[cfg(not(target_os = "none"))]
pub fn hold_across_yields(_want: &Regs, _rounds: u64, _spin: u64) -> Regs {
    Regs::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_differ_per_register_and_seed() {
        let a = Regs::pattern(1);
        let b = Regs::pattern(2);
        assert_ne!(a, b);
        let mut words: std::vec::Vec<u64> = a.xmm.iter().flatten().copied().collect();
        words.extend(a.mm);
        let n = words.len();
        words.sort_unstable();
        words.dedup();
        assert_eq!(words.len(), n, "every register distinct");
    }
}
