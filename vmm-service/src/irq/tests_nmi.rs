//! NMI delivery: an NMI goes before an external interrupt, waits for the NMI window while
//! the guest blocks NMIs, is latched once, wakes a halted vCPU and waits for a SIPI.

use super::*;
use crate::devices::lapic::ipi::{DeliveryMode, DestFormat, Ipi, Shorthand};
use abi::vmx::group;

const IF: u64 = 0x202;

/// A clock with no device armed.
fn clock() -> Clock {
    Clock {
        tsc: 1000,
        tsc_hz: 1_000_000_000,
        ticks: 0,
    }
}

/// The 8259 pair as Linux programs it (vectors 0x20/0x28), line 0 unmasked; no timer runs.
fn bus() -> PortBus {
    let mut b = PortBus::new(1 << 20);
    crate::devices::pic::init_like_linux(&mut b.pic, (0xfe, 0xff));
    b
}

/// Exit `reason` with RFLAGS.IF set and interruptibility state `blocking`.
fn exit(reason: u32, blocking: u32) -> ExitMessage {
    ExitMessage {
        reason,
        mask: group::RIP,
        rflags: IF,
        interruptibility: blocking,
        instruction_len: 2,
        ..ExitMessage::default()
    }
}

/// An NMI IPI from vCPU `from` to the APIC ID `to` (physical destination), as an ICR write
/// sends it.
fn nmi_ipi(irq: &mut Interrupts, from: u32, to: u32) {
    irq.apply(Effect::Ipi(Ipi {
        message: Message {
            dest: to,
            format: DestFormat::X2Apic,
            logical: false,
            mode: DeliveryMode::Nmi,
            vector: 0,
            level: true,
            level_triggered: false,
        },
        shorthand: Shorthand::None,
        source: from,
    }));
}

/// Runs `finish` for exit `m` on reply `r`; returns the reply.
fn finish(irq: &mut Interrupts, b: &mut PortBus, m: &ExitMessage, mut r: ExitReply) -> ExitReply {
    irq.finish(m, &mut r, b, &clock());
    r
}

#[test]
fn an_nmi_goes_before_an_extint_which_waits_for_its_window() {
    let mut b = bus();
    let mut irq = Interrupts::default();
    b.pic.set_irq(0, true); // the 8259 asks through LINT0 (ExtINT, virtual wire)
    nmi_ipi(&mut irq, 0, 0);
    let r = finish(
        &mut irq,
        &mut b,
        &exit(reason::INTERRUPT_WINDOW, 0),
        ExitReply::resume(),
    );
    assert_eq!(r.flags & reply::INJECT, reply::INJECT);
    assert_eq!(r.inject, NMI_EVENT);
    assert_eq!(r.inject, 0x8000_0202, "type 2, vector 2, no error code");
    assert_ne!(r.flags & reply::INTR_WINDOW, 0, "the interrupt waits");
    assert_eq!(r.flags & reply::NMI_WINDOW, 0);
    assert!(!irq.lapic().nmi_pending());
    assert_eq!(b.pic.pending(), Some(0x20), "not acknowledged yet");
    assert_eq!((irq.nmis, irq.injected), (1, 0));
    // The window opens: the 8259's vector now.
    let r = finish(
        &mut irq,
        &mut b,
        &exit(reason::INTERRUPT_WINDOW, 0),
        ExitReply::resume(),
    );
    assert_eq!(r.inject, EXTERNAL_INTERRUPT | 0x20);
    assert_eq!(r.flags & (reply::NMI_WINDOW | reply::INTR_WINDOW), 0);
}

#[test]
fn a_blocked_nmi_asks_for_the_nmi_window_and_its_exit_injects_it() {
    for blocking in [
        interruptibility::NMI,
        interruptibility::MOV_SS,
        interruptibility::STI,
        interruptibility::NMI | interruptibility::STI,
    ] {
        let mut b = bus();
        let mut irq = Interrupts::default();
        nmi_ipi(&mut irq, 0, 0);
        // Resumed at the same instruction: every blocking stands.
        let r = finish(
            &mut irq,
            &mut b,
            &exit(reason::EPT_VIOLATION, blocking),
            ExitReply::resume(),
        );
        assert_eq!(r.flags & reply::INJECT, 0, "{blocking:#x}");
        assert_ne!(r.flags & reply::NMI_WINDOW, 0, "{blocking:#x}");
        assert!(irq.lapic().nmi_pending(), "kept for the window");
        let r = finish(
            &mut irq,
            &mut b,
            &exit(reason::NMI_WINDOW, 0),
            ExitReply::resume(),
        );
        assert_eq!(r.inject, NMI_EVENT, "{blocking:#x}");
        assert_eq!(r.flags & reply::NMI_WINDOW, 0);
        assert_eq!((irq.nmis, irq.nmi_windows), (1, 1));
    }
}

#[test]
fn advancing_rip_ends_sti_and_mov_ss_blocking_but_not_nmi_blocking() {
    for (blocking, injected) in [
        (interruptibility::STI, true),
        (interruptibility::MOV_SS, true),
        (interruptibility::NMI, false),
    ] {
        let mut b = bus();
        let mut irq = Interrupts::default();
        nmi_ipi(&mut irq, 0, 0);
        let r = finish(
            &mut irq,
            &mut b,
            &exit(reason::WRMSR, blocking),
            ExitReply::advance(),
        );
        assert_eq!(r.flags & reply::INJECT != 0, injected, "{blocking:#x}");
        assert_eq!(r.flags & reply::NMI_WINDOW == 0, injected, "{blocking:#x}");
    }
}

#[test]
fn without_the_interruptibility_state_the_nmi_waits_for_its_window() {
    let mut b = bus();
    let mut irq = Interrupts::default();
    nmi_ipi(&mut irq, 0, 0);
    let m = ExitMessage {
        reason: reason::CPUID,
        mask: group::GPRS,
        ..ExitMessage::default()
    };
    let r = finish(&mut irq, &mut b, &m, ExitReply::advance());
    assert_eq!(r.flags & reply::INJECT, 0);
    assert_ne!(r.flags & reply::NMI_WINDOW, 0);
}

/// NMIs sent while the guest's NMI handler runs (NMI blocking) are one: delivered once,
/// after the handler's IRET opens the NMI window.
#[test]
fn nmis_sent_while_one_is_blocked_are_latched_as_one() {
    let mut b = bus();
    let mut irq = Interrupts::default();
    nmi_ipi(&mut irq, 0, 0);
    let r = finish(
        &mut irq,
        &mut b,
        &exit(reason::WRMSR, 0),
        ExitReply::advance(),
    );
    assert_eq!(r.inject, NMI_EVENT, "the first NMI");
    // In the handler: two more NMIs, each from an ICR write.
    for _ in 0..2 {
        nmi_ipi(&mut irq, 0, 0);
        let m = exit(reason::WRMSR, interruptibility::NMI);
        let r = finish(&mut irq, &mut b, &m, ExitReply::advance());
        assert_eq!(r.flags & reply::INJECT, 0);
        assert_ne!(r.flags & reply::NMI_WINDOW, 0);
    }
    // The handler's IRET: the window's exit delivers one NMI.
    let r = finish(
        &mut irq,
        &mut b,
        &exit(reason::NMI_WINDOW, 0),
        ExitReply::resume(),
    );
    assert_eq!(r.inject, NMI_EVENT);
    // Its IRET: nothing more.
    let r = finish(
        &mut irq,
        &mut b,
        &exit(reason::HLT, 0),
        ExitReply::advance(),
    );
    assert_eq!(r.flags & (reply::INJECT | reply::NMI_WINDOW), 0);
    assert_eq!(irq.nmis, 2);
}

#[test]
fn an_exception_the_model_injects_goes_first_and_the_nmi_asks_for_its_window() {
    let mut b = bus();
    let mut irq = Interrupts::default();
    nmi_ipi(&mut irq, 0, 0);
    let ud = ExitReply {
        flags: reply::INJECT,
        inject: 0x8000_0306,
        ..ExitReply::default()
    };
    let r = finish(&mut irq, &mut b, &exit(reason::RDPMC, 0), ud);
    assert_eq!(r.inject, 0x8000_0306);
    assert_ne!(r.flags & reply::NMI_WINDOW, 0);
    assert!(irq.lapic().nmi_pending());
}

/// An NMI wakes a halted vCPU: a HLT may wait for it, and the kick's exit (the deadline)
/// injects it, which leaves the HLT state.
#[test]
fn an_nmi_wakes_a_halted_vcpu_of_another_handler_through_a_kick() {
    let mut b = bus();
    let mut irq = Interrupts::new(2);
    irq.lapics[1].receive(&Message {
        dest: 1,
        format: DestFormat::X2Apic,
        logical: false,
        mode: DeliveryMode::Sipi,
        vector: 0x10,
        level: true,
        level_triggered: false,
    });
    assert_eq!(irq.lapics[1].take_sipi(), Some(0x10));
    irq.select(1);
    irq.restarted(1);
    let hlt = ExitReply {
        flags: reply::ADVANCE_RIP | reply::HALT,
        ..ExitReply::default()
    };
    let r = finish(&mut irq, &mut b, &exit(reason::HLT, 0), hlt);
    assert_eq!(r.flags & reply::INJECT, 0);
    assert!(irq.halted());
    // vCPU 0 sends vCPU 1 an NMI: vCPU 1 is kicked.
    irq.select(0);
    nmi_ipi(&mut irq, 0, 1);
    assert_eq!(irq.take_kicks(), 0b10);
    irq.kicked(1);
    irq.select(1);
    assert!(irq.can_wake(&mut b, &clock()));
    let r = finish(
        &mut irq,
        &mut b,
        &exit(reason::PREEMPTION_TIMER, 0),
        ExitReply::resume(),
    );
    assert_eq!(r.inject, NMI_EVENT);
    assert!(!irq.halted(), "the NMI woke it");
}

#[test]
fn a_vcpu_waiting_for_its_sipi_keeps_its_nmi_pending() {
    let mut b = bus();
    let mut irq = Interrupts::new(2);
    nmi_ipi(&mut irq, 0, 1);
    irq.select(1);
    let r = finish(
        &mut irq,
        &mut b,
        &exit(reason::PREEMPTION_TIMER, 0),
        ExitReply::resume(),
    );
    assert_eq!(r.flags & (reply::INJECT | reply::NMI_WINDOW), 0);
    assert!(irq.lapics[1].nmi_pending(), "kept until the SIPI");
}
