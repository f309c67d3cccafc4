//! Interrupt delivery between the vCPUs of one VM: IPIs and IOAPIC messages reach the local
//! APIC they name, the other vCPU is kicked, and its own exit delivers.

use super::*;
use crate::devices::lapic::ipi::{DeliveryMode, DestFormat, Ipi, Shorthand};
use crate::devices::lapic::MpState;
use abi::vmx::group;

/// SVR: APIC software enable, spurious vector 0xff.
const SVR_ENABLED: u64 = 0x1ff;
const SVR: u32 = 0xf0;

fn two_vcpus() -> Interrupts {
    let mut irq = Interrupts::new(2);
    for l in irq.lapics.iter_mut() {
        l.mmio_write_sized(SVR, 4, SVR_ENABLED, 0);
    }
    irq
}

fn ipi(dest: u32, mode: DeliveryMode, vector: u8, shorthand: Shorthand, source: u32) -> Effect {
    Effect::Ipi(Ipi {
        message: Message {
            dest,
            format: DestFormat::XApic,
            logical: false,
            mode,
            vector,
            level: true,
            level_triggered: false,
        },
        shorthand,
        source,
    })
}

fn exit(reason: u32) -> ExitMessage {
    ExitMessage {
        reason,
        mask: group::RIP,
        rflags: 0x202,
        ..ExitMessage::default()
    }
}

fn clock(tsc: u64) -> Clock {
    Clock {
        tsc,
        tsc_hz: 1_000_000_000,
        ticks: Clock::ticks_at(tsc, 1_000_000_000),
    }
}

#[test]
fn each_vcpu_has_its_own_local_apic_and_only_the_first_is_the_bsp() {
    let irq = Interrupts::new(3);
    assert_eq!(irq.vcpus(), 3);
    for (i, l) in irq.lapics.iter().enumerate() {
        assert_eq!(l.apic_id(), i as u32);
        assert_eq!(l.apic_base() & (1 << 8) != 0, i == 0, "BSP flag of {i}");
        assert_eq!(l.waiting_for_sipi(), i != 0);
    }
    assert_eq!(Interrupts::new(0).vcpus(), 1);
    assert_eq!(Interrupts::new(99).vcpus(), MAX_VCPUS);
}

#[test]
fn a_fixed_ipi_reaches_its_target_which_is_kicked_and_woken_by_its_own_exit() {
    let mut irq = two_vcpus();
    let mut bus = PortBus::new(1 << 20);
    // vCPU 1 waits in HLT (another vCPU may wake it, so it may wait with nothing armed).
    irq.select(1);
    assert!(irq.can_wake(&mut bus, &clock(10)));
    let mut r = ExitReply {
        flags: reply::ADVANCE_RIP | reply::HALT,
        ..ExitReply::default()
    };
    irq.finish(&exit(reason::HLT), &mut r, &mut bus, &clock(10));
    assert!(irq.halted());
    // vCPU 0 sends vector 0x40 to APIC ID 1.
    irq.select(0);
    assert!(!irq.halted(), "the halt is vCPU 1's");
    irq.apply(ipi(1, DeliveryMode::Fixed, 0x40, Shorthand::None, 0));
    assert!(irq.lapics[1].irr().get(0x40));
    assert!(!irq.lapics[0].irr().get(0x40));
    assert_eq!(irq.take_kicks(), 0b10);
    assert_eq!(irq.take_kicks(), 0, "taken");
    irq.kicked(1);
    // vCPU 1's deadline exit (the kick) injects it into the halted guest.
    irq.select(1);
    let mut r = ExitReply::resume();
    irq.finish(
        &exit(reason::PREEMPTION_TIMER),
        &mut r,
        &mut bus,
        &clock(20),
    );
    assert_eq!(r.flags & reply::INJECT, reply::INJECT);
    assert_eq!(r.inject, 0x8000_0040);
    assert!(!irq.halted());
    assert!(irq.lapics[1].isr().get(0x40));
    assert_eq!(
        r.flags & reply::SET_DEADLINE,
        0,
        "the kernel cleared the kick"
    );
}

#[test]
fn a_self_ipi_kicks_nobody_and_a_broadcast_kicks_the_others() {
    let mut irq = Interrupts::new(3);
    for l in irq.lapics.iter_mut() {
        l.mmio_write_sized(SVR, 4, SVR_ENABLED, 0);
    }
    irq.select(1);
    irq.apply(ipi(0, DeliveryMode::Fixed, 0x50, Shorthand::SelfOnly, 1));
    assert!(irq.lapics[1].irr().get(0x50));
    assert_eq!(irq.take_kicks(), 0);
    irq.apply(ipi(
        0,
        DeliveryMode::Fixed,
        0x51,
        Shorthand::AllExcludingSelf,
        1,
    ));
    assert_eq!(irq.take_kicks(), 0b101);
    assert!(!irq.lapics[1].irr().get(0x51));
    assert!(irq.lapics[0].irr().get(0x51) && irq.lapics[2].irr().get(0x51));
}

#[test]
fn init_then_sipi_gives_the_ap_its_start_vector() {
    let mut irq = two_vcpus();
    irq.apply(ipi(1, DeliveryMode::Sipi, 0x08, Shorthand::None, 0));
    // Already waiting for a SIPI at power-up: the first SIPI counts.
    assert_eq!(irq.lapics[1].mp_state(), MpState::SipiReceived(0x08));
    assert_eq!(irq.lapics[1].take_sipi(), Some(0x08));
    assert_eq!(irq.lapics[1].mp_state(), MpState::Running);
    // A second SIPI to a running AP is ignored; INIT puts it back to waiting.
    irq.apply(ipi(1, DeliveryMode::Sipi, 0x09, Shorthand::None, 0));
    assert_eq!(irq.lapics[1].take_sipi(), None);
    irq.apply(ipi(1, DeliveryMode::Init, 0, Shorthand::None, 0));
    assert!(irq.lapics[1].take_init());
    assert!(irq.lapics[1].waiting_for_sipi());
    assert!(!irq.lapics[0].take_init(), "the BSP was not named");
    assert_eq!(irq.take_kicks(), 0b10);
}

#[test]
fn an_ioapic_message_reaches_the_lapic_it_names() {
    let mut irq = two_vcpus();
    let msg = Message {
        dest: 1,
        format: DestFormat::XApic,
        logical: false,
        mode: DeliveryMode::Fixed,
        vector: 0x61,
        level: true,
        level_triggered: false,
    };
    irq.deliver(&msg);
    assert!(irq.lapics[1].irr().get(0x61));
    assert!(!irq.lapics[0].irr().get(0x61));
    assert_eq!(irq.take_kicks(), 0b10);
}

#[test]
fn a_halt_waits_for_another_vcpu_only_once_that_one_runs() {
    let mut irq = two_vcpus();
    let mut bus = PortBus::new(1 << 20);
    // The AP waits for its SIPI: nothing could wake the BSP.
    assert!(!irq.can_wake(&mut bus, &clock(5)));
    irq.apply(ipi(1, DeliveryMode::Sipi, 0x70, Shorthand::None, 0));
    assert_eq!(irq.lapics[1].take_sipi(), Some(0x70));
    assert!(
        irq.can_wake(&mut bus, &clock(5)),
        "the AP runs: it may send an IPI"
    );
}
