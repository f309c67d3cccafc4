use super::*;
use abi::vmx::group;
use proptest::prelude::*;

/// A 1 GHz TSC.
const HZ: u64 = 1_000_000_000;

fn clock(tsc: u64) -> Clock {
    Clock {
        tsc,
        tsc_hz: HZ,
        ticks: Clock::ticks_at(tsc, HZ),
    }
}

/// PICs as Linux programs them (vectors 0x20/0x28) with line 0 unmasked, and PIT channel 0
/// as a rate generator of `period` PIT periods, programmed at `tsc`.
fn bus(period: u16, tsc: u64) -> PortBus {
    let mut b = PortBus::new(1 << 20);
    crate::devices::pic::init_like_linux(&mut b.pic, (0xfa, 0xff));
    let t = clock(tsc).ticks;
    b.pit.write(0x43, 0x34, t);
    let [lo, hi] = period.to_le_bytes();
    b.pit.write(0x40, lo, t);
    b.pit.write(0x40, hi, t);
    b
}

fn msg(reason: u32, rflags: u64) -> ExitMessage {
    ExitMessage {
        reason,
        mask: group::RIP,
        rflags,
        ..ExitMessage::default()
    }
}

const IF: u64 = 0x202;

#[test]
fn the_deadline_is_the_next_pit_edge_and_is_sent_when_it_changes() {
    let mut b = bus(1193, 0);
    let mut irq = Interrupts::default();
    let mut r = ExitReply::advance();
    irq.finish(&msg(reason::CPUID, IF), &mut r, &mut b, &clock(1000));
    assert_ne!(r.flags & reply::SET_DEADLINE, 0);
    // 1193 PIT periods at 1.193182 MHz: just under 1 ms.
    let expect = clock(1000).tsc_at(1193).unwrap();
    assert_eq!(r.deadline, expect);
    assert!((999_000..1_001_000).contains(&expect));
    let mut again = ExitReply::advance();
    irq.finish(&msg(reason::CPUID, IF), &mut again, &mut b, &clock(2000));
    assert_eq!(again.flags, reply::ADVANCE_RIP, "unchanged: not sent again");
}

#[test]
fn a_halted_guest_gets_the_tick_at_its_deadline_and_waits_again() {
    let mut b = bus(1193, 0);
    let mut irq = Interrupts::default();
    let mut r = ExitReply {
        flags: reply::ADVANCE_RIP | reply::HALT,
        ..ExitReply::default()
    };
    irq.finish(&msg(reason::HLT, IF), &mut r, &mut b, &clock(10));
    assert!(irq.halted());
    assert_eq!(r.flags & reply::INJECT, 0, "nothing yet");
    let deadline = r.deadline;
    // The deadline exit: the edge has come; the halted guest takes vector 0x20 at once.
    let mut r = ExitReply::resume();
    irq.finish(
        &msg(reason::PREEMPTION_TIMER, IF),
        &mut r,
        &mut b,
        &clock(deadline),
    );
    assert_eq!(r.flags & reply::INJECT, reply::INJECT);
    assert_eq!(r.inject, 0x8000_0020);
    assert!(!irq.halted());
    assert_eq!(b.pic.master.isr(), 1, "acknowledged: in service");
    assert_ne!(r.flags & reply::SET_DEADLINE, 0, "the next period's edge");
    assert!(r.deadline > deadline);
    assert_eq!(irq.injected, 1);
}

#[test]
fn a_running_guest_is_asked_for_its_interrupt_window() {
    let mut b = bus(1193, 0);
    let mut irq = Interrupts::default();
    let late = clock(2_000_000); // two periods: one edge latched, one lost
    let mut r = ExitReply::resume(); // not past an instruction (say an EPT violation)
    irq.finish(&msg(reason::EPT_VIOLATION, IF), &mut r, &mut b, &late);
    assert_eq!(
        r.flags & (reply::INTR_WINDOW | reply::INJECT),
        reply::INTR_WINDOW
    );
    assert_eq!(irq.lost_ticks, 1);
    let mut r = ExitReply::resume();
    irq.finish(&msg(reason::INTERRUPT_WINDOW, IF), &mut r, &mut b, &late);
    assert_eq!(r.inject, 0x8000_0020);
    // Past an instruction with IF set: at once; with IF clear: the window.
    b.pic.write(0x20, 0x20);
    let next = clock(3_000_000);
    let mut r = ExitReply::advance();
    irq.finish(&msg(reason::CPUID, IF), &mut r, &mut b, &next);
    assert_eq!(r.flags & reply::INJECT, reply::INJECT);
    b.pic.write(0x20, 0x20);
    let mut r = ExitReply::advance();
    irq.finish(&msg(reason::CPUID, 0x2), &mut r, &mut b, &clock(4_000_000));
    assert_eq!(
        r.flags & (reply::INTR_WINDOW | reply::INJECT),
        reply::INTR_WINDOW
    );
}

#[test]
fn a_stop_or_an_exception_leaves_the_request_in_the_pic() {
    let mut b = bus(1193, 0);
    let mut irq = Interrupts::default();
    let mut r = ExitReply::stop(1);
    irq.finish(&msg(reason::CPUID, IF), &mut r, &mut b, &clock(5_000_000));
    assert_eq!(r, ExitReply::stop(1));
    let mut r = ExitReply {
        flags: reply::INJECT,
        inject: 0x8000_0b0d,
        ..ExitReply::default()
    };
    irq.finish(&msg(reason::CPUID, IF), &mut r, &mut b, &clock(5_000_000));
    assert_eq!(r.inject, 0x8000_0b0d, "the exception goes first");
    assert_eq!(b.pic.pending(), Some(0x20), "still requested");
}

#[test]
fn masked_lines_are_not_delivered_and_nothing_armed_means_no_deadline() {
    let mut b = bus(1193, 0);
    b.pic.write(0x21, 0xff);
    let mut irq = Interrupts::default();
    let mut r = ExitReply::advance();
    irq.finish(&msg(reason::CPUID, IF), &mut r, &mut b, &clock(5_000_000));
    assert_eq!(r.flags & (reply::INJECT | reply::INTR_WINDOW), 0);
    let mut quiet = PortBus::new(1 << 20);
    let mut irq = Interrupts::default();
    assert!(!irq.can_wake(&mut quiet, &clock(5)));
    let mut r = ExitReply::advance();
    irq.finish(&msg(reason::CPUID, IF), &mut r, &mut quiet, &clock(5));
    assert_eq!(r, ExitReply::advance(), "no timer: no deadline");
}

#[test]
fn an_unknown_tsc_rate_sets_no_deadline() {
    let c = Clock {
        tsc: 5,
        tsc_hz: 0,
        ticks: 7,
    };
    assert_eq!(c.tsc_at(100), None);
}

proptest! {
    /// A deadline computed for PIT time `t` is never early: at that TSC, `t` has passed.
    #[test]
    fn a_deadline_is_never_early(
        tsc in 0u64..1 << 50,
        ahead in 0u64..1 << 24,
        hz in 1_000_000u64..10_000_000_000,
    ) {
        let c = Clock { tsc, tsc_hz: hz, ticks: Clock::ticks_at(tsc, hz) };
        let target = c.ticks + ahead;
        let at = c.tsc_at(target).unwrap();
        prop_assert!(Clock::ticks_at(at, hz) >= target);
        // And not more than one TSC tick per PIT period late.
        prop_assert!(at == 0 || Clock::ticks_at(at - 1, hz) <= target);
    }
}

/// The xAPIC page and the IOAPIC through [`PlatformMmio`]: a timer interrupt ended by an EOI
/// written to the page, then the PIT's line 0 through the IOAPIC (GSI 2) with the 8259s
/// masked.
#[test]
fn the_pit_reaches_the_local_apic_through_the_ioapic() {
    let mut b = bus(1193, 0);
    b.pic.write(0x21, 0xff);
    let mut irq = Interrupts::default();
    let mut mmio = crate::devices::mmio::MmioBus::new();
    let lapic = 0xfee0_0000;
    let ioapic = u64::from(crate::acpi::IOAPIC_BASE);
    {
        let mut p = PlatformMmio {
            bus: &mut mmio,
            irq: &mut irq,
            now: 100,
        };
        assert!(p.write(lapic + 0xf0, 4, 0x1ff));
        assert_eq!(p.read(lapic + 0xf0, 4), Some(0x1ff));
        p.irq.lapic_mut().accept(0x40, false);
        let v = p.irq.lapic_mut().pending().unwrap();
        assert_eq!(p.irq.lapic_mut().ack(v), 0x40);
        assert!(p.write(lapic + 0xb0, 4, 0), "EOI");
        assert_eq!(p.irq.lapic_mut().pending(), None);
        assert!(p.write(ioapic, 4, 0x14));
        assert!(p.write(ioapic + 0x10, 4, 0x31));
        assert!(p.write(ioapic, 4, 0x14));
        assert_eq!(p.read(ioapic + 0x10, 4), Some(0x31));
    }
    let mut r = ExitReply::resume();
    irq.finish(
        &msg(reason::PREEMPTION_TIMER, IF),
        &mut r,
        &mut b,
        &clock(1_000_000),
    );
    assert_eq!(
        r.flags & (reply::INJECT | reply::INTR_WINDOW),
        reply::INTR_WINDOW
    );
    let mut r = ExitReply::resume();
    irq.finish(
        &msg(reason::INTERRUPT_WINDOW, IF),
        &mut r,
        &mut b,
        &clock(1_000_100),
    );
    assert_eq!(r.inject, 0x8000_0031, "through the IOAPIC");
}

#[test]
fn quiet_exits_skip_the_devices_only_while_nothing_can_have_changed() {
    let mut b = bus(1193, 0);
    let mut irq = Interrupts::default();
    let cpuid = msg(reason::CPUID, IF);
    assert!(!irq.settled(&cpuid, 10), "nothing looked at yet");
    let mut r = ExitReply::advance();
    irq.finish(&cpuid, &mut r, &mut b, &clock(10));
    let deadline = r.deadline;
    assert!(irq.settled(&cpuid, deadline - 1));
    assert!(!irq.settled(&cpuid, deadline), "the next tick is due");
    assert!(!irq.settled(&msg(reason::IO, IF), 20), "a device access");
    // A tick requested but not deliverable (IF clear): the window is asked for, and the
    // next exits look again until it is delivered.
    let mut r = ExitReply::advance();
    irq.finish(&msg(reason::CPUID, 0x2), &mut r, &mut b, &clock(deadline));
    assert_ne!(r.flags & reply::INTR_WINDOW, 0);
    assert!(!irq.settled(&cpuid, deadline + 1));
}

#[test]
fn clock_conversions_match_the_128_bit_arithmetic() {
    let samples = [
        0u64,
        1,
        999,
        1_193_181,
        1_193_182,
        3_000_000_000,
        1 << 40,
        1 << 53,
        u64::MAX / 3,
        u64::MAX,
    ];
    for &hz in &[1u64, 1_193_182, 2_000_000_000, 3_600_000_000, u64::MAX] {
        let c = Clock {
            tsc: 0,
            tsc_hz: hz,
            ticks: 0,
        };
        for &x in &samples {
            let ticks = (x as u128 * PIT_HZ as u128 / hz as u128) as u64;
            assert_eq!(Clock::ticks_at(x, hz), ticks, "ticks_at({x}, {hz})");
            let tsc = (x as u128 * hz as u128).div_ceil(PIT_HZ as u128);
            let tsc = u64::try_from(tsc).unwrap_or(u64::MAX);
            assert_eq!(c.tsc_at(x), Some(tsc), "tsc_at({x}) at {hz}");
        }
    }
}
