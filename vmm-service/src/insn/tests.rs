use super::*;
use abi::xcr0::{AVX, SSE, X87};

/// A CPU with MONITOR and XSAVE (x87, SSE, AVX) when `full`, with neither otherwise.
fn cpu(full: bool) -> impl FnMut(u32, u32) -> [u32; 4] {
    move |leaf, _| match (leaf, full) {
        (0, _) => [0xd, 0, 0, 0],
        (1, true) => [0, 0, ECX1_MONITOR | ECX1_XSAVE, 0],
        (0xd, true) => [(X87 | SSE | AVX) as u32, 0, 0, 0],
        _ => [0; 4],
    }
}

fn xsetbv_msg(ecx: u64, value: u64, cr4: u64, ss_dpl: u32) -> ExitMessage {
    let mut m = ExitMessage {
        reason: reason::XSETBV,
        mask: group::GPRS | group::CRS | group::SEGS,
        cr4_shadow: cr4,
        ..ExitMessage::default()
    };
    m.gprs[Gpr::Rcx as usize] = ecx;
    m.gprs[Gpr::Rax as usize] = value & 0xffff_ffff;
    m.gprs[Gpr::Rdx as usize] = value >> 32;
    m.segments[1].access_rights = 0x93 | ss_dpl << 5;
    m
}

#[test]
fn xsetbv_is_checked_like_hardware() {
    let x =
        |ecx, v, cr4, dpl, full| handle(reason::XSETBV, &xsetbv_msg(ecx, v, cr4, dpl), cpu(full));
    let os = cr4::OSXSAVE;
    assert_eq!(
        x(0, X87 | SSE, os, 0, true),
        Some(Action::SetXcr0(X87 | SSE))
    );
    assert_eq!(x(0, X87 | SSE | AVX, os, 0, true), Some(Action::SetXcr0(7)));
    // #UD: no XSAVE in CPUID, or CR4.OSXSAVE clear.
    assert_eq!(x(0, X87, os, 0, false), Some(Action::Fault(UD, 0)));
    assert_eq!(x(0, X87, 0, 0, true), Some(Action::Fault(UD, 0)));
    // #GP(0): CPL 3, ECX ≠ 0, x87 clear, AVX without SSE, a component CPUID does not offer,
    // a reserved bit in EDX.
    for (ecx, v, dpl) in [
        (0, X87, 3),
        (1, X87, 0),
        (0, SSE, 0),
        (0, X87 | AVX, 0),
        (0, X87 | 1 << 9, 0),
        (0, X87 | 1 << 40, 0),
    ] {
        assert_eq!(
            x(ecx, v, os, dpl, true),
            Some(Action::Fault(GP, 0)),
            "{ecx} {v:#x} {dpl}"
        );
    }
    // Only ECX's low half counts (as the instruction reads ECX).
    assert_eq!(x(1 << 32, X87, os, 0, true), Some(Action::SetXcr0(X87)));
}

#[test]
fn monitor_mwait_follow_cpuid() {
    let m = ExitMessage::default();
    for r in [reason::MONITOR, reason::MWAIT] {
        assert_eq!(handle(r, &m, cpu(true)), Some(Action::Advance));
        assert_eq!(handle(r, &m, cpu(false)), Some(Action::Fault(UD, 0)));
    }
}

#[test]
fn the_rest() {
    let m = ExitMessage::default();
    for r in [reason::INVD, reason::WBINVD, reason::PAUSE] {
        assert_eq!(handle(r, &m, cpu(true)), Some(Action::Advance));
    }
    assert_eq!(
        handle(reason::RDPMC, &m, cpu(true)),
        Some(Action::Fault(GP, 0))
    );
    for r in UD_REASONS {
        assert_eq!(handle(r, &m, cpu(true)), Some(Action::Fault(UD, 0)));
        assert_eq!(required_groups(r), group::CRS);
    }
    // A JMP task switch (qualification bits 31:30 = 2) stops with a report saying so.
    let ts = ExitMessage {
        qualification: 2 << 30 | 0x18,
        ..ExitMessage::default()
    };
    let Some(Action::Stop(what)) = handle(reason::TASK_SWITCH, &ts, cpu(true)) else {
        panic!()
    };
    assert!(what.contains("JMP"), "{what}");
    for r in [reason::CPUID, reason::HLT, reason::EPT_VIOLATION] {
        assert_eq!(handle(r, &m, cpu(true)), None);
        assert_eq!(required_groups(r), 0);
    }
}
