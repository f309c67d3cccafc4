use super::ipi::{message_targets, targets, DeliveryMode, DestFormat, Message, Shorthand};
use super::regs::{offset as o, x2apic_msr};
use super::*;

fn bsp() -> Lapic {
    Lapic::new(Config::new(0, true))
}

/// An AP with `id`, software-enabled with spurious vector 0xff.
fn enabled(id: u32) -> Lapic {
    let mut l = Lapic::new(Config::new(id, id == 0));
    assert_eq!(l.mmio_write(o::SVR, 0x1ff, 0), None);
    l
}

fn x2(id: u32) -> Lapic {
    let mut l = enabled(id);
    let b = l.apic_base();
    l.set_apic_base(b | base::EXTD).unwrap();
    l
}

#[test]
fn power_up_state() {
    let mut l = bsp();
    assert_eq!(l.apic_base(), 0xfee0_0900);
    assert_eq!(l.mode(), ApicMode::XApic);
    assert_eq!(l.mmio_read(o::VERSION, 0), 0x0005_0014);
    assert_eq!(l.mmio_read(o::SVR, 0), 0xff);
    assert_eq!(l.mmio_read(o::DFR, 0), u32::MAX);
    assert_eq!(l.mmio_read(o::ID, 0), 0);
    for lvt in Lvt::ALL {
        let want = match lvt {
            Lvt::Lint0 => 0x700,
            _ => LVT_MASKED,
        };
        assert_eq!(l.lvt(lvt), want, "{lvt:?}");
    }
    assert!(l.lint0_extint(), "BSP starts in virtual-wire mode");
    assert_eq!(l.mp_state(), MpState::Running);

    let mut ap = Lapic::new(Config::new(3, false));
    assert_eq!(ap.apic_base(), 0xfee0_0800);
    assert_eq!(ap.mmio_read(o::ID, 0), 3 << 24);
    assert_eq!(ap.lvt(Lvt::Lint0), LVT_MASKED);
    assert!(!ap.lint0_extint());
    assert!(ap.waiting_for_sipi());
    // CMCI is reserved unless configured.
    assert_eq!(ap.mmio_read(0x2f0, 0), 0);
    assert_eq!(ap.mmio_read(o::ESR, 0), 0);
    ap.mmio_write(o::ESR, 0, 0);
    assert_eq!(ap.mmio_read(o::ESR, 0), esr::ILLEGAL_REGISTER);
    let mut c = Lapic::new(Config {
        cmci: true,
        ..Config::new(1, false)
    });
    assert_eq!(c.mmio_read(o::VERSION, 0), 0x0006_0014);
    assert_eq!(c.mmio_read(0x2f0, 0), LVT_MASKED);
}

#[test]
fn software_disable_masks_lvts_and_drops_interrupts() {
    let mut l = bsp();
    assert!(!l.accept(0x40, false), "software-disabled: not accepted");
    assert_eq!(l.pending(), None);
    // LVT writes while disabled keep the mask bit.
    l.mmio_write(Lvt::Timer.offset(), 0x30, 0);
    assert_eq!(l.lvt(Lvt::Timer), LVT_MASKED | 0x30);
    l.mmio_write(o::SVR, 0x1ff, 0);
    assert!(l.enabled());
    l.mmio_write(Lvt::Timer.offset(), 0x30, 0);
    assert_eq!(l.lvt(Lvt::Timer), 0x30);
    assert!(l.accept(0x40, false));
    assert_eq!(l.pending(), Some(0x40));
    // Disabling masks every LVT entry; the IRR is held but nothing is pending.
    l.mmio_write(o::SVR, 0xff, 0);
    assert!(Lvt::ALL.iter().all(|&e| l.lvt(e) & LVT_MASKED != 0));
    assert!(!l.lint0_extint());
    assert_eq!(l.pending(), None);
    assert!(l.irr().get(0x40));
    l.mmio_write(o::SVR, 0x1ff, 0);
    assert_eq!(l.pending(), Some(0x40));
}

#[test]
fn tpr_ppr_and_nested_service() {
    let mut l = enabled(0);
    l.accept(0x31, false);
    l.accept(0x52, true);
    l.mmio_write(o::TPR, 0x50, 0);
    assert_eq!(l.mmio_read(o::PPR, 0), 0x50);
    assert_eq!(l.pending(), None, "class 5 is not above TPR class 5");
    l.mmio_write(o::TPR, 0x4f, 0);
    assert_eq!(l.pending(), Some(0x52));
    assert_eq!(l.ack(0x52), 0x52);
    assert_eq!(l.mmio_read(o::ISR + 0x20, 0), 1 << (0x52 - 0x40));
    assert_eq!(l.mmio_read(o::TMR + 0x20, 0), 1 << (0x52 - 0x40));
    assert_eq!(l.mmio_read(o::PPR, 0), 0x50);
    assert_eq!(l.pending(), None, "0x31 is below the in-service class");
    // A higher class nests.
    l.accept(0x61, false);
    assert_eq!(l.pending(), Some(0x61));
    assert_eq!(l.ack(0x61), 0x61);
    assert_eq!(l.mmio_write(o::EOI, 0, 0), None, "0x61 was edge-triggered");
    assert_eq!(l.isr().highest(), Some(0x52));
    l.mmio_write(o::TPR, 0, 0);
    assert_eq!(l.pending(), None);
    assert_eq!(l.mmio_write(o::EOI, 0, 0), Some(Effect::LevelEoi(0x52)));
    assert_eq!(l.pending(), Some(0x31));
    assert_eq!(l.eoi(), None, "EOI with nothing in service");
}

#[test]
fn ack_of_a_masked_vector_is_spurious() {
    let mut l = enabled(0);
    l.mmio_write(o::SVR, 0x1e7, 0);
    l.accept(0x40, false);
    assert_eq!(l.pending(), Some(0x40));
    l.set_tpr(0x80); // raised between the pending check and the injection
    assert_eq!(l.ack(0x40), 0xe7);
    assert!(l.irr().get(0x40) && !l.isr().get(0x40));
    assert_eq!(l.ack(0x99), 0xe7, "not pending at all");
}

#[test]
fn apr_follows_tpr_and_requests() {
    let mut l = enabled(0);
    l.set_tpr(0x23);
    assert_eq!(l.mmio_read(o::APR, 0), 0x23);
    l.accept(0x45, false);
    assert_eq!(l.apr(), 0x40);
    l.ack(0x45);
    assert_eq!(l.apr(), 0x40);
}

#[test]
fn illegal_vectors_and_the_esr() {
    let mut l = enabled(0);
    l.mmio_write(Lvt::Error.offset(), 0xee, 0);
    assert!(!l.accept(5, false));
    assert_eq!(l.mmio_read(o::ESR, 0), 0, "ESR updates on write");
    assert_eq!(l.pending(), Some(0xee), "error interrupt");
    l.mmio_write(o::ESR, 0, 0);
    assert_eq!(l.mmio_read(o::ESR, 0), esr::RECEIVE_ILLEGAL_VECTOR);
    // A fixed IPI with an illegal vector is not sent.
    assert_eq!(l.mmio_write(o::ICR_LOW, 0x0000_0008, 0), None);
    l.mmio_write(o::ESR, 0, 0);
    assert_eq!(l.mmio_read(o::ESR, 0), esr::SEND_ILLEGAL_VECTOR);
    l.mmio_write(o::ESR, 0, 0);
    assert_eq!(l.mmio_read(o::ESR, 0), 0);
    // Reserved registers.
    assert_eq!(l.mmio_read(0x40, 0), 0);
    l.mmio_write(0x3f0, 0x40, 0); // SELF IPI does not exist in xAPIC mode
    l.mmio_write(o::ESR, 0, 0);
    assert_eq!(l.mmio_read(o::ESR, 0), esr::ILLEGAL_REGISTER);
    assert!(!l.irr().get(0x40));
}

#[test]
fn mmio_access_forms() {
    let mut l = Lapic::new(Config::new(0x12, false));
    assert_eq!(l.mmio_read(o::ID + 3, 0), 0x12);
    assert_eq!(l.mmio_read(o::ID + 4, 0), 0);
    assert_eq!(l.mmio_read_sized(o::ID + 2, 2, 0), 0x1200);
    assert_eq!(l.mmio_read_sized(o::VERSION, 8, 0), 0x0005_0014);
    // Narrow or unaligned writes are ignored.
    l.mmio_write(o::TPR + 4, 0x30, 0);
    assert_eq!(l.mmio_write_sized(o::TPR, 1, 0x30, 0), None);
    assert_eq!(l.tpr(), 0);
    l.mmio_write_sized(o::TPR, 4, 0x1_0030, 0);
    assert_eq!(l.tpr(), 0x30, "TPR keeps bits 7:0");
    // Writable masks.
    l.mmio_write(o::ID, 0xffff_ffff, 0);
    assert_eq!(l.mmio_read(o::ID, 0), 0xff00_0000);
    l.mmio_write(o::LDR, 0xffff_ffff, 0);
    assert_eq!(l.mmio_read(o::LDR, 0), 0xff00_0000);
    l.mmio_write(o::DFR, 0, 0);
    assert_eq!(l.mmio_read(o::DFR, 0), 0x0fff_ffff);
    l.mmio_write(o::SVR, 0xffff_ffff, 0);
    assert_eq!(l.mmio_read(o::SVR, 0), 0x3ff);
    l.mmio_write(Lvt::Lint0.offset(), 0xffff_ffff, 0);
    assert_eq!(l.lvt(Lvt::Lint0), 0x1_a7ff);
    l.mmio_write(Lvt::Timer.offset(), 0xffff_ffff, 0);
    assert_eq!(l.lvt(Lvt::Timer), 0x7_00ff);
    l.mmio_write(o::ICR_HIGH, 0xffff_ffff, 0);
    assert_eq!(l.mmio_read(o::ICR_HIGH, 0), 0xff00_0000);
    // Read-only registers ignore writes.
    l.mmio_write(o::VERSION, 0, 0);
    l.mmio_write(o::PPR, 0xff, 0);
    assert_eq!(l.mmio_read(o::VERSION, 0), 0x0005_0014);
    assert_eq!(l.mmio_read(o::PPR, 0), 0x30);
    assert_eq!(l.mmio_read(o::EOI, 0), 0);
    assert_eq!(l.mmio_read(o::PAGE, 0), u32::MAX);
}

#[test]
fn apic_base_transitions() {
    let mut l = enabled(7);
    let b = 0xfee0_0000;
    // Reserved bits: 7:0, 9, above MAXPHYADDR (36).
    for bad in [1, 1 << 9, 1 << 36] {
        assert_eq!(l.set_apic_base(b | base::EN | bad), Err(GpFault));
    }
    assert_eq!(
        l.set_apic_base(b | base::EXTD),
        Err(GpFault),
        "EXTD without EN"
    );
    // BSP is read-only.
    l.set_apic_base(b | base::EN | base::BSP).unwrap();
    assert_eq!(l.apic_base(), b | base::EN);
    // xAPIC -> x2APIC -> xAPIC is illegal; x2APIC -> disabled -> xAPIC is fine.
    l.set_apic_base(b | base::EN | base::EXTD).unwrap();
    assert_eq!(l.mode(), ApicMode::X2Apic);
    assert_eq!(l.mmio_read(o::ID, 0), u32::MAX, "no MMIO in x2APIC mode");
    assert_eq!(l.set_apic_base(b | base::EN), Err(GpFault));
    assert_eq!(
        l.mode(),
        ApicMode::X2Apic,
        "a refused write changes nothing"
    );
    assert!(l.enabled(), "x2APIC switch keeps the register state");
    l.set_apic_base(b).unwrap();
    assert_eq!(l.mode(), ApicMode::Disabled);
    assert!(l.lint0_extint(), "disabled APIC: LINT0 is INTR");
    assert_eq!(l.set_apic_base(b | base::EN | base::EXTD), Err(GpFault));
    l.set_apic_base(0x1234_5000 | base::EN).unwrap();
    assert_eq!(l.base(), 0x1234_5000);
    assert_eq!(
        l.mmio_read(o::SVR, 0),
        0xff,
        "disabling reset the registers"
    );
    assert_eq!(l.mmio_read(o::ID, 0), 7 << 24);
}

#[test]
fn x2apic_registers_and_gp_cases() {
    let mut l = x2(0x23);
    let m = x2apic_msr;
    assert_eq!(l.msr_read(m(o::ID), 0), Ok(0x23));
    assert_eq!(l.msr_read(m(o::LDR), 0), Ok((2 << 16) | (1 << 3)));
    assert_eq!(l.msr_read(m(o::VERSION), 0), Ok(0x0005_0014));
    assert_eq!(l.msr_read(m(o::SVR), 0), Ok(0x1ff));
    for gp_read in [
        o::APR,
        o::RRD,
        o::DFR,
        o::ICR_HIGH,
        o::EOI,
        o::SELF_IPI,
        0x40,
    ] {
        assert_eq!(l.msr_read(m(gp_read), 0), Err(GpFault), "read {gp_read:#x}");
    }
    for gp_write in [
        o::ID,
        o::VERSION,
        o::PPR,
        o::LDR,
        o::DFR,
        o::ISR,
        o::IRR,
        o::TIMER_CURRENT,
    ] {
        assert_eq!(
            l.msr_write(m(gp_write), 0, 0),
            Err(GpFault),
            "write {gp_write:#x}"
        );
    }
    assert_eq!(l.msr_write(m(o::EOI), 1, 0), Err(GpFault));
    assert_eq!(l.msr_write(m(o::ESR), 1, 0), Err(GpFault));
    assert_eq!(l.msr_write(m(o::TPR), 1 << 32, 0), Err(GpFault));
    assert_eq!(l.msr_read(0x7ff, 0), Err(GpFault));
    assert_eq!(super::regs::X2APIC_MSRS, 0x800..=0x8ff);
    assert_eq!(l.msr_read(0x900, 0), Err(GpFault));
    assert_eq!(l.msr_write(m(o::TPR), 0x20, 0), Ok(None));
    assert_eq!(l.tpr(), 0x20);
    // SELF IPI is delivered here.
    assert_eq!(l.msr_write(m(o::SELF_IPI), 0x41, 0), Ok(None));
    assert_eq!(l.pending(), Some(0x41));
    assert_eq!(l.ack(0x41), 0x41);
    assert_eq!(l.msr_write(m(o::EOI), 0, 0), Ok(None));
    // The ICR is one 64-bit register with a 32-bit destination.
    let icr = (0x1_0005u64 << 32) | 0x4000 | 0x0800 | 0x45;
    let Ok(Some(Effect::Ipi(ipi))) = l.msr_write(m(o::ICR_LOW), icr, 0) else {
        panic!("no IPI");
    };
    assert_eq!(ipi.message.dest, 0x1_0005);
    assert_eq!(ipi.message.format, DestFormat::X2Apic);
    assert!(ipi.message.logical);
    assert_eq!(ipi.source, 0x23);
    assert_eq!(l.msr_read(m(o::ICR_LOW), 0), Ok(icr));
    assert_eq!(l.msr_write(m(o::ICR_LOW), 1 << 13 | 0x45, 0), Err(GpFault));
    // Not in x2APIC mode: every x2APIC MSR faults.
    let mut xa = enabled(1);
    assert_eq!(xa.msr_read(m(o::ID), 0), Err(GpFault));
    assert_eq!(xa.msr_write(m(o::TPR), 0, 0), Err(GpFault));
}

#[test]
fn icr_fields_in_xapic_mode() {
    let mut l = enabled(2);
    l.mmio_write(o::ICR_HIGH, 0x0500_0000, 0);
    let Some(Effect::Ipi(ipi)) = l.mmio_write(o::ICR_LOW, 0x000c_cd30, 0) else {
        panic!("no IPI");
    };
    assert_eq!(ipi.shorthand, Shorthand::AllExcludingSelf);
    assert_eq!(ipi.message.mode, DeliveryMode::Init);
    assert_eq!(ipi.message.dest, 5);
    assert!(ipi.message.level && ipi.message.level_triggered && ipi.message.logical);
    assert_eq!(ipi.message.vector, 0x30);
    assert_eq!(ipi.source, 2);
    assert_eq!(
        l.mmio_read(o::ICR_LOW, 0),
        0x000c_cd30,
        "delivery status reads idle"
    );
    // Self shorthand.
    let Some(Effect::Ipi(ipi)) = l.mmio_write(o::ICR_LOW, 0x0004_0040, 0) else {
        panic!("no IPI");
    };
    assert_eq!(ipi.shorthand, Shorthand::SelfOnly);
    let ls = [enabled(0), l.clone(), enabled(3)];
    assert_eq!(targets(&ls, &ipi), 0b010);
}

fn fixed(dest: u32, logical: bool) -> Message {
    Message {
        dest,
        format: DestFormat::XApic,
        logical,
        mode: DeliveryMode::Fixed,
        vector: 0x40,
        level: true,
        level_triggered: false,
    }
}

#[test]
fn destinations_physical_and_logical() {
    let mut ls: Vec<Lapic> = (0..4).map(enabled).collect();
    assert_eq!(message_targets(&ls, &fixed(2, false)), 0b0100);
    assert_eq!(message_targets(&ls, &fixed(0xff, false)), 0b1111);
    assert_eq!(message_targets(&ls, &fixed(9, false)), 0);
    // Flat model: LDR bit per CPU.
    for (i, l) in ls.iter_mut().enumerate() {
        l.mmio_write(o::LDR, 1 << (24 + i), 0);
    }
    assert_eq!(message_targets(&ls, &fixed(0b1010, true)), 0b1010);
    // Cluster model: cluster 1 members 1 and 2, cluster 2 member 1.
    for (l, ldr) in ls.iter_mut().zip([0x11, 0x12, 0x21, 0x14]) {
        l.mmio_write(o::DFR, 0x0fff_ffff, 0);
        l.mmio_write(o::LDR, ldr << 24, 0);
    }
    assert_eq!(message_targets(&ls, &fixed(0x13, true)), 0b0011);
    assert_eq!(message_targets(&ls, &fixed(0x21, true)), 0b0100);
    assert_eq!(message_targets(&ls, &fixed(0xff, true)), 0b1111);
    // x2APIC logical: cluster id >> 4, bit id & 15.
    let xs: Vec<Lapic> = [0x0, 0x1, 0x11].into_iter().map(x2).collect();
    let m = Message {
        format: DestFormat::X2Apic,
        ..fixed(0x0000_0003, true)
    };
    assert_eq!(message_targets(&xs, &m), 0b011);
    let m = Message {
        dest: 0x0001_0002,
        ..m
    };
    assert_eq!(message_targets(&xs, &m), 0b100);
    let m = Message {
        dest: u32::MAX,
        logical: false,
        ..m
    };
    assert_eq!(message_targets(&xs, &m), 0b111);
    // A hardware-disabled APIC receives nothing.
    let mut off = enabled(1);
    off.set_apic_base(DEFAULT_BASE).unwrap();
    assert!(!off.matches(&fixed(0xff, false)));
}

#[test]
fn lowest_priority_picks_the_lowest_apr() {
    let mut ls: Vec<Lapic> = (0..3).map(enabled).collect();
    ls[0].set_tpr(0x40);
    ls[1].set_tpr(0x20);
    ls[2].set_tpr(0x30);
    let m = Message {
        mode: DeliveryMode::LowestPriority,
        ..fixed(0xff, false)
    };
    assert_eq!(message_targets(&ls, &m), 0b010);
    ls[1].set_tpr(0x40);
    assert_eq!(message_targets(&ls, &m), 0b100);
}

#[test]
fn init_sipi_nmi() {
    let mut ap = Lapic::new(Config::new(1, false));
    let msg = |mode, vector, level| Message {
        mode,
        vector,
        level,
        level_triggered: true,
        ..fixed(1, false)
    };
    // Waiting for SIPI: fixed interrupts are not for a stopped CPU's software-disabled APIC.
    ap.receive(&msg(DeliveryMode::Sipi, 0x9a, true));
    assert_eq!(ap.mp_state(), MpState::SipiReceived(0x9a));
    assert_eq!(ap.take_sipi(), Some(0x9a));
    assert_eq!(ap.mp_state(), MpState::Running);
    ap.receive(&msg(DeliveryMode::Sipi, 0x10, true));
    assert_eq!(ap.take_sipi(), None, "a running CPU ignores SIPI");
    // INIT keeps the ID and the mode, resets the rest.
    ap.mmio_write(o::ID, 0x0900_0000, 0);
    ap.mmio_write(o::SVR, 0x1ff, 0);
    ap.accept(0x50, false);
    ap.receive(&msg(DeliveryMode::Init, 0, false));
    assert!(ap.enabled(), "INIT level de-assert is ignored");
    ap.receive(&msg(DeliveryMode::Init, 0, true));
    assert!(ap.take_init());
    assert!(!ap.take_init());
    assert!(ap.waiting_for_sipi());
    assert!(!ap.enabled());
    assert!(!ap.irr().get(0x50));
    assert_eq!(ap.apic_id(), 9);
    ap.receive(&msg(DeliveryMode::Nmi, 0, true));
    assert!(ap.take_nmi());
    assert!(!ap.take_nmi());
    // The BSP restarts instead of waiting.
    let mut b = enabled(0);
    b.init();
    assert_eq!(b.mp_state(), MpState::Running);
    assert!(b.lint0_extint());
}

#[test]
fn level_fixed_message_deassert_is_ignored() {
    let mut l = enabled(0);
    l.receive(&Message {
        level: false,
        level_triggered: true,
        ..fixed(0, false)
    });
    assert_eq!(l.pending(), None);
    l.receive(&Message {
        level_triggered: true,
        ..fixed(0, false)
    });
    assert_eq!(l.pending(), Some(0x40));
    assert!(l.tmr().get(0x40));
}

#[test]
fn lint_pins() {
    let mut l = enabled(1);
    l.mmio_write(Lvt::Lint1.offset(), 0x400, 0); // NMI
    l.raise_lint(1);
    assert!(l.take_nmi());
    l.mmio_write(Lvt::Lint0.offset(), 0x8035, 0); // fixed, level
    l.raise_lint(0);
    assert_eq!(l.pending(), Some(0x35));
    assert!(l.tmr().get(0x35));
    l.mmio_write(Lvt::Lint0.offset(), 0x700, 0);
    assert!(l.lint0_extint());
    l.mmio_write(Lvt::Lint0.offset(), LVT_MASKED | 0x700, 0);
    assert!(!l.lint0_extint());
}

#[test]
fn timer_one_shot_through_registers() {
    let mut l = enabled(0);
    l.mmio_write(o::TIMER_DIVIDE, 0b1011, 0); // by 1
    l.mmio_write(Lvt::Timer.offset(), 0x20, 0);
    assert_eq!(l.next_event(0), None, "not started");
    l.mmio_write(o::TIMER_INITIAL, 1000, 500);
    assert_eq!(l.mmio_read(o::TIMER_INITIAL, 600), 1000);
    assert_eq!(l.mmio_read(o::TIMER_CURRENT, 600), 900);
    assert_eq!(l.next_event(600), Some(1500));
    l.poll(1499);
    assert_eq!(l.pending(), None);
    l.poll(1500);
    assert_eq!(l.pending(), Some(0x20));
    assert_eq!(l.next_event(1500), None);
    assert_eq!(l.mmio_read(o::TIMER_CURRENT, 2000), 0);
    // Reading the current count after the expiry delivers it even without a poll.
    let mut l2 = enabled(0);
    l2.mmio_write(Lvt::Timer.offset(), 0x21, 0);
    l2.mmio_write(o::TIMER_INITIAL, 10, 0); // divide by 2: 20 TSC
    assert_eq!(l2.mmio_read(o::TIMER_CURRENT, 25), 0);
    assert_eq!(l2.pending(), Some(0x21));
}

#[test]
fn timer_masked_and_periodic() {
    let mut l = enabled(0);
    l.mmio_write(Lvt::Timer.offset(), LVT_MASKED | 1 << 17 | 0x22, 0);
    l.mmio_write(o::TIMER_INITIAL, 50, 0); // period 100
    assert_eq!(l.next_event(0), None, "masked: no event");
    l.poll(150);
    assert_eq!(l.pending(), None);
    assert_eq!(l.mmio_read(o::TIMER_CURRENT, 150), 25);
    l.mmio_write(Lvt::Timer.offset(), 1 << 17 | 0x22, 150);
    assert_eq!(l.next_event(150), Some(200));
    l.poll(420);
    assert_eq!(l.pending(), Some(0x22));
    assert_eq!(
        l.timer().missed,
        2,
        "expiries at 200, 300 and 400 gave one interrupt"
    );
    assert_eq!(l.next_event(420), Some(500));
    // A mode change disarms.
    l.mmio_write(Lvt::Timer.offset(), 0x22, 430);
    assert_eq!(l.mmio_read(o::TIMER_INITIAL, 430), 0);
    assert_eq!(l.next_event(430), None);
}

#[test]
fn timer_tsc_deadline() {
    let mut l = x2(0);
    let lvt = x2apic_msr(Lvt::Timer.offset());
    l.set_tsc_deadline(1000, 0);
    assert_eq!(l.tsc_deadline(), 0, "ignored outside deadline mode");
    l.msr_write(lvt, 2 << 17 | 0x23, 0).unwrap();
    l.msr_write(x2apic_msr(o::TIMER_INITIAL), 77, 0).unwrap();
    assert_eq!(l.msr_read(x2apic_msr(o::TIMER_INITIAL), 0), Ok(0));
    l.set_tsc_deadline(1000, 10);
    assert_eq!((l.tsc_deadline(), l.next_event(10)), (1000, Some(1000)));
    l.poll(999);
    assert_eq!(l.pending(), None);
    l.poll(1000);
    assert_eq!(l.pending(), Some(0x23));
    assert_eq!(l.tsc_deadline(), 0);
    assert_eq!(l.next_event(1000), None);
    // A deadline in the past expires at the next poll; 0 disarms.
    l.set_tsc_deadline(5, 2000);
    l.set_tsc_deadline(0, 2000);
    assert_eq!(l.next_event(2000), None);
}

#[test]
fn bits256_highest() {
    let mut b = Bits256::default();
    assert_eq!(b.highest(), None);
    for v in [0u8, 31, 32, 200, 255] {
        b.set(v, true);
        assert_eq!(b.highest(), Some(v));
    }
    b.set(255, false);
    assert_eq!(b.highest(), Some(200));
}
