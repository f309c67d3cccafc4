use super::rtc::{a, b, c, index};
use super::*;
use crate::devices::pit::PIT_HZ;
use proptest::prelude::*;

fn get(c: &mut Cmos, i: u8) -> u8 {
    at(c, i, 0)
}

/// Register `i` read at tick `t` (the index written with the NMI-disable bit, ignored).
fn at(c: &mut Cmos, i: u8, t: u64) -> u8 {
    c.write(INDEX, i | NMI_DISABLE, t);
    c.read(DATA, t)
}

fn put(c: &mut Cmos, i: u8, v: u8, t: u64) {
    c.write(INDEX, i, t);
    c.write(DATA, v, t);
}

fn get16(c: &mut Cmos, lo: u8) -> u16 {
    u16::from_le_bytes([get(c, lo), get(c, lo + 1)])
}

/// Seconds, minutes, hours, weekday, day, month, year, century at tick `t`.
fn clock(c: &mut Cmos, t: u64) -> [u8; 8] {
    [0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32].map(|i| at(c, i, t))
}

fn secs(s: u64) -> u64 {
    s * PIT_HZ
}

#[test]
fn memory_sizes_for_32_mib() {
    let mut c = Cmos::new(32 * MIB, START);
    assert_eq!(get16(&mut c, 0x15), 640);
    assert_eq!(get16(&mut c, 0x17), 31 * 1024);
    assert_eq!(get16(&mut c, 0x30), 31 * 1024);
    assert_eq!(get16(&mut c, 0x34), 256);
    assert_eq!(get(&mut c, 0x0d), 0x80);
    assert!(
        c.nmi_disabled(),
        "the NMI-disable bit of the last index write is kept"
    );
    c.write(INDEX, 0x15, 0);
    assert!(!c.nmi_disabled());
    assert_eq!(c.read(INDEX, 0), 0xff);
}

#[test]
fn sizes_cap_and_small_ram() {
    let mut c = Cmos::new(8 << 30, START);
    assert_eq!(get16(&mut c, 0x17), 0xffff);
    assert_eq!(get16(&mut c, 0x34), 0xffff);
    let mut c = Cmos::new(512 * KIB, START);
    assert_eq!(get16(&mut c, 0x17), 0);
    assert_eq!(get16(&mut c, 0x34), 0);
}

#[test]
fn status_registers_and_plain_bytes() {
    let mut c = Cmos::new(MIB, START);
    assert_eq!(
        [0x0a, 0x0b, 0x0c, 0x0d].map(|i| get(&mut c, i)),
        [0x26, 0x02, 0, 0x80]
    );
    put(&mut c, 0x0d, 0, 0);
    put(&mut c, 0x0c, 0xff, 0);
    assert_eq!([0x0c, 0x0d].map(|i| get(&mut c, i)), [0, 0x80]);
    put(&mut c, 0x0a, 0xa6, 0); // UIP is read-only
    assert_eq!(get(&mut c, 0x0a), 0x26);
    put(&mut c, 0x40, 0x5a, 0);
    assert_eq!(get(&mut c, 0x40), 0x5a);
}

#[test]
fn the_clock_starts_at_the_given_date_and_counts_in_bcd() {
    let mut c = Cmos::new(MIB, START);
    assert_eq!(clock(&mut c, 0), [0, 0, 0, 2, 1, 1, 0x24, 0x20]);
    // One tick before 1 h 1 min 1 s; then at it.
    let t = secs(3661);
    assert_eq!(
        clock(&mut c, t - 1),
        [0x00, 0x01, 0x01, 2, 1, 1, 0x24, 0x20]
    );
    assert_eq!(clock(&mut c, t), [0x01, 0x01, 0x01, 2, 1, 1, 0x24, 0x20]);
    // 59 days later: 2024-02-29 (leap year), a Thursday (weekday 5).
    assert_eq!(
        clock(&mut c, secs(59 * 86_400)),
        [0, 0, 0, 5, 0x29, 0x02, 0x24, 0x20]
    );
}

#[test]
fn binary_and_twelve_hour_formats() {
    let mut c = Cmos::new(MIB, DateTime::new(2023, 12, 31, 0, 0, 0));
    put(&mut c, 0x0b, b::HOURS_24 | b::DM_BINARY, 0);
    assert_eq!(
        clock(&mut c, secs(13 * 3600 + 45)),
        [45, 0, 13, 1, 31, 12, 23, 20]
    );
    put(&mut c, 0x0b, 0, 0); // BCD, 12-hour
    assert_eq!(at(&mut c, 0x04, 0), 0x12, "midnight is 12 AM");
    assert_eq!(at(&mut c, 0x04, secs(3600)), 0x01);
    assert_eq!(at(&mut c, 0x04, secs(12 * 3600)), 0x92, "noon is 12 PM");
    assert_eq!(at(&mut c, 0x04, secs(23 * 3600)), 0x91);
    put(&mut c, 0x0b, b::DM_BINARY, 0); // binary, 12-hour
    assert_eq!(at(&mut c, 0x04, secs(23 * 3600)), 0x8b);
}

#[test]
fn uip_is_set_for_the_last_244_microseconds_of_each_second() {
    let mut c = Cmos::new(MIB, START);
    let uip = |c: &mut Cmos, t| at(c, 0x0a, t) & a::UIP != 0;
    assert!(!uip(&mut c, secs(5) - 400));
    assert!(uip(&mut c, secs(5) - 200));
    assert!(uip(&mut c, secs(5) - 1));
    assert!(!uip(&mut c, secs(5)));
    // While UIP is set the registers still show the old second.
    assert_eq!(at(&mut c, 0x00, secs(5) - 1), 0x04);
    // No updates while SET is set: no UIP.
    put(&mut c, 0x0b, b::SET | b::HOURS_24, 0);
    assert!(!uip(&mut c, secs(6) - 1));
}

#[test]
fn periodic_flag_at_the_rate_and_irq_only_with_pie() {
    let mut c = Cmos::new(MIB, START);
    // 1024 Hz: 32 cycles of 32.768 kHz.
    let period = |n: u64| (n * 32 * PIT_HZ).div_ceil(32_768);
    assert_eq!(at(&mut c, 0x0c, period(1) - 1), 0);
    assert!(!c.irq_level(period(1)));
    assert_eq!(c.next_event(0), None, "no interrupt enabled");
    assert_eq!(at(&mut c, 0x0c, period(1)), c::PF, "PF sets without PIE");
    assert_eq!(at(&mut c, 0x0c, period(1)), 0, "reading C cleared it");
    put(&mut c, 0x0b, b::PIE | b::HOURS_24, period(1));
    assert_eq!(c.next_event(period(1)), Some(period(2)));
    assert!(!c.irq_level(period(2) - 1));
    assert!(c.irq_level(period(2)));
    assert_eq!(
        c.next_event(period(2)),
        None,
        "the line stays up until C is read"
    );
    assert!(c.irq_level(period(50)));
    assert_eq!(at(&mut c, 0x0c, period(50)), c::IRQF | c::PF);
    assert!(!c.irq_level(period(50)));
    // Rate 0: no periodic flag.
    put(&mut c, 0x0a, 0x20, period(50));
    assert_eq!(c.next_event(period(50)), None);
    assert_eq!(at(&mut c, 0x0c, secs(3)) & c::PF, 0);
}

#[test]
fn update_ended_and_alarm_interrupts() {
    let mut c = Cmos::new(MIB, START);
    put(&mut c, 0x0b, b::UIE | b::HOURS_24, 10);
    assert_eq!(c.next_event(10), Some(secs(1)));
    assert!(c.irq_level(secs(1)));
    assert_eq!(at(&mut c, 0x0c, secs(1)), c::IRQF | c::UF | c::PF);
    // Alarm at 00:00:05 (BCD), update interrupts off.
    put(&mut c, 0x01, 0x05, secs(1));
    put(&mut c, 0x03, 0x00, secs(1));
    put(&mut c, 0x05, 0x00, secs(1));
    put(&mut c, 0x0b, b::AIE | b::HOURS_24, secs(1));
    assert_eq!(c.next_event(secs(1)), Some(secs(5)));
    assert!(!c.irq_level(secs(5) - 1));
    assert_eq!(at(&mut c, 0x0c, secs(5)), c::IRQF | c::AF | c::UF | c::PF);
    // Next match: a day later.
    assert_eq!(c.next_event(secs(5)), Some(secs(86_405)));
    // "Any" seconds (0xC0..): every second of minute 0 of any hour: next at 01:00:00.
    put(&mut c, 0x01, 0xc0, secs(100));
    put(&mut c, 0x05, 0xff, secs(100));
    assert_eq!(c.next_event(secs(100)), Some(secs(3600)));
    // An alarm value that is not BCD never matches.
    put(&mut c, 0x03, 0x6a, secs(100));
    assert_eq!(c.next_event(secs(100)), None);
    assert_eq!(at(&mut c, 0x0c, secs(7200)) & c::AF, 0);
}

#[test]
fn set_stops_the_clock_for_writing_and_clears_uie() {
    let mut c = Cmos::new(MIB, START);
    put(&mut c, 0x0b, b::SET | b::UIE | b::HOURS_24, secs(2));
    assert_eq!(get(&mut c, 0x0b), b::SET | b::HOURS_24);
    for (i, v) in [
        (0x00, 0x58),
        (0x02, 0x59),
        (0x04, 0x23),
        (0x07, 0x31),
        (0x08, 0x12),
        (0x09, 0x99),
        (0x32, 0x19),
    ] {
        put(&mut c, i, v, secs(3));
    }
    put(&mut c, 0x06, 0x06, secs(3)); // Friday
                                      // Held while SET is set.
    assert_eq!(
        clock(&mut c, secs(9)),
        [0x58, 0x59, 0x23, 6, 0x31, 0x12, 0x99, 0x19]
    );
    put(&mut c, 0x0b, b::HOURS_24, secs(10) + 5);
    // The next update is the divider's (at 11 s): 23:59:59, then the new year and century.
    assert_eq!(at(&mut c, 0x00, secs(11) - 1), 0x58);
    assert_eq!(at(&mut c, 0x00, secs(11)), 0x59);
    assert_eq!(clock(&mut c, secs(12)), [0, 0, 0, 7, 1, 1, 0, 0x20]);
}

#[test]
fn writes_that_are_not_numbers_or_dates_change_nothing() {
    let mut c = Cmos::new(MIB, START);
    put(&mut c, 0x00, 0x5a, 0); // not BCD
    put(&mut c, 0x06, 0x08, 0); // no such weekday
    put(&mut c, 0x04, 0x24, 0); // no hour 24
    put(&mut c, 0x08, 0x13, 0); // no month 13
    put(&mut c, 0x07, 0x00, 0); // no day 0
    assert_eq!(clock(&mut c, 0), [0, 0, 0, 2, 1, 1, 0x24, 0x20]);
    // 12-hour mode: hour 0 and 13 are not hours.
    put(&mut c, 0x0b, 0, 0);
    put(&mut c, 0x04, 0x13, 0);
    put(&mut c, 0x04, 0x00, 0);
    assert_eq!(at(&mut c, 0x04, 0), 0x12);
    put(&mut c, 0x04, 0x87, 0); // 7 PM
    put(&mut c, 0x0b, b::HOURS_24, 0);
    assert_eq!(at(&mut c, 0x04, 0), 0x19);
}

#[test]
fn fields_written_one_by_one_pass_through_a_date_that_does_not_exist() {
    // 2024-02-15; the guest writes day 31, then month 3, without SET.
    let mut c = Cmos::new(MIB, DateTime::new(2024, 2, 15, 0, 0, 0));
    put(&mut c, 0x07, 0x31, 0);
    // February 31 shows as written; the clock stands.
    assert_eq!(clock(&mut c, secs(5))[4..6], [0x31, 0x02]);
    assert_eq!(at(&mut c, 0x00, secs(5)), 0);
    put(&mut c, 0x08, 0x03, secs(5) + 7);
    // Counting again; the weekday register kept its Thursday.
    assert_eq!(clock(&mut c, secs(6))[..6], [0x01, 0, 0, 5, 0x31, 0x03]);
}

#[test]
fn weekday_counts_on_its_own_and_steps_at_midnight() {
    let mut c = Cmos::new(MIB, START);
    put(&mut c, 0x06, 0x07, 0);
    assert_eq!(at(&mut c, 0x06, secs(86_400) - 1), 7);
    assert_eq!(at(&mut c, 0x06, secs(86_400)), 1);
    // Setting the date keeps the written weekday counting from there.
    put(&mut c, 0x07, 0x15, secs(86_400));
    assert_eq!(at(&mut c, 0x06, secs(86_401)), 1);
}

#[test]
fn divider_reset_holds_and_the_first_update_is_half_a_second_later() {
    let mut c = Cmos::new(MIB, START);
    put(&mut c, 0x0b, b::UIE | b::PIE | b::HOURS_24, 0);
    put(&mut c, 0x0a, 0x76, secs(2) + 3);
    assert_eq!(at(&mut c, 0x0c, secs(2) + 3), c::IRQF | c::UF | c::PF);
    assert_eq!(c.next_event(secs(2) + 3), None);
    assert_eq!(at(&mut c, 0x0c, secs(20)), 0);
    assert_eq!(at(&mut c, 0x00, secs(20)), 0x02);
    put(&mut c, 0x0b, b::UIE | b::HOURS_24, secs(20));
    put(&mut c, 0x0a, 0x26, secs(20));
    assert_eq!(c.next_event(secs(20)), Some(secs(20) + PIT_HZ / 2));
    assert_eq!(at(&mut c, 0x00, secs(20) + PIT_HZ / 2), 0x03);
}

/// Any valid date and time.
fn any_date() -> impl Strategy<Value = DateTime> {
    (0u16..=9999, 1u8..=12, 1u8..=31, 0u8..24, 0u8..60, 0u8..60).prop_map(|(y, mo, d, h, mi, s)| {
        let d = d.min(date::month_days(i64::from(y), mo));
        DateTime::new(y, mo, d, h, mi, s)
    })
}

proptest! {
    #[test]
    fn dates_and_seconds_round_trip(t in any_date()) {
        let s = t.to_secs().unwrap();
        prop_assert_eq!(DateTime::from_secs(s), t);
        // The next day: the day after a month's last is the 1st of the next month.
        let next = DateTime::from_secs(s + date::DAY);
        let last = t.day == date::month_days(i64::from(t.year), t.month);
        prop_assert_eq!(next.day, if last { 1 } else { t.day + 1 });
        prop_assert_eq!(DateTime::new(t.year, t.month, 32, 0, 0, 0).to_secs(), None);
    }

    /// A date set under SET in any format reads back in that format, and after `elapsed`
    /// seconds reads as the date that many seconds later.
    #[test]
    fn set_and_read_in_every_format(t in any_date(), binary: bool, h24: bool, elapsed in 0u64..400 * 86_400) {
        prop_assume!(t.year < 9999);
        let mut c = Cmos::new(MIB, START);
        let mode = if binary { b::DM_BINARY } else { 0 } | if h24 { b::HOURS_24 } else { 0 };
        let enc = |v: u8| if binary { v } else { ((v / 10) << 4) | (v % 10) };
        let hour = |h: u8| if h24 { enc(h) } else { enc(if h.is_multiple_of(12) { 12 } else { h % 12 }) | if h >= 12 { 0x80 } else { 0 } };
        let regs = |t: &DateTime| [enc(t.second), enc(t.minute), hour(t.hour), enc(t.day), enc(t.month), enc((t.year % 100) as u8), enc((t.year / 100) as u8)];
        put(&mut c, index::B, b::SET | mode, 0);
        let idx = [0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x32];
        for (i, v) in idx.iter().zip(regs(&t)) {
            put(&mut c, *i, v, 0);
        }
        put(&mut c, index::B, mode, 0);
        prop_assert_eq!(idx.map(|i| at(&mut c, i, 0)), regs(&t));
        let later = DateTime::from_secs(t.to_secs().unwrap() + elapsed as i64);
        prop_assert_eq!(idx.map(|i| at(&mut c, i, secs(elapsed))), regs(&later));
    }

    /// For every rate, `next_event` is exactly the tick the periodic flag rises, and one
    /// second has 32768 >> (rate - 1) of them (256 and 128 Hz for rates 1 and 2).
    #[test]
    fn periodic_rate(rs in 1u8..=15, start in 0u64..10 * PIT_HZ) {
        let mut c = Cmos::new(MIB, START);
        put(&mut c, index::A, 0x20 | rs, start);
        put(&mut c, index::B, b::PIE | b::HOURS_24, start);
        at(&mut c, index::C, start);
        let hz = 32_768u64 >> (if rs < 3 { rs + 7 } else { rs } - 1);
        let (mut t, mut n) = (start, 0);
        while let Some(e) = c.next_event(t).filter(|&e| e <= start + PIT_HZ) {
            prop_assert!(e > t);
            prop_assert!(!c.irq_level(e - 1));
            prop_assert!(c.irq_level(e));
            prop_assert_eq!(at(&mut c, index::C, e) & !c::UF, c::IRQF | c::PF);
            t = e;
            n += 1;
        }
        prop_assert_eq!(n, hz, "flags in one second");
    }
}

/// An alarm register: "any" (0xC0..=0xFF) or a BCD value below `limit`.
fn alarm_reg(limit: u8) -> impl Strategy<Value = u8> {
    prop_oneof![
        0xc0u8..=0xff,
        (0..limit).prop_map(|v| ((v / 10) << 4) | (v % 10))
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// With AIE, `next_event` is the update whose new time is the first to match the alarm,
    /// found here by stepping through the seconds of the next day.
    #[test]
    fn alarm_time_matches_a_brute_force_search(
        s in alarm_reg(60), m in alarm_reg(60), h in alarm_reg(24), now in 0u64..2 * 86_400,
    ) {
        let mut c = Cmos::new(MIB, START);
        let t = secs(now) + 17;
        put(&mut c, index::SECONDS_ALARM, s, t);
        put(&mut c, index::MINUTES_ALARM, m, t);
        put(&mut c, index::HOURS_ALARM, h, t);
        put(&mut c, index::B, b::AIE | b::HOURS_24, t);
        at(&mut c, index::C, t); // the flags of the updates before t
        let field = |reg: u8, v: u8| reg >= 0xc0 || ((reg >> 4) * 10 + (reg & 0xf)) == v;
        let start = START.to_secs().unwrap() + now as i64;
        let want = (1..=86_400i64).find(|d| {
            let x = DateTime::from_secs(start + d);
            field(s, x.second) && field(m, x.minute) && field(h, x.hour)
        });
        let want = want.map(|d| secs(now + d as u64));
        prop_assert_eq!(c.next_event(t), want);
        if let Some(e) = want {
            prop_assert!(!c.irq_level(e - 1));
            prop_assert!(c.irq_level(e));
            prop_assert_eq!(at(&mut c, index::C, e) & (c::IRQF | c::AF), c::IRQF | c::AF);
        }
    }
}

#[test]
fn a_reset_keeps_the_memory_and_the_clock_and_disables_the_interrupts() {
    let mut c = Cmos::new(MIB, START);
    put(&mut c, 0x50, 0x5a, 0);
    put(&mut c, 0x01, 0x30, 0); // seconds alarm
    put(
        &mut c,
        0x0b,
        b::PIE | b::AIE | b::UIE | b::SQWE | b::HOURS_24 | b::DM_BINARY,
        0,
    );
    assert!(c.irq_level(secs(2)));
    let before = clock(&mut c, secs(2));
    c.write(INDEX, 0x50, secs(2));
    c.reset(secs(2));
    // The flags are gone, the interrupts off: the line is low and stays low.
    assert!(!c.irq_level(secs(2)));
    assert_eq!(c.next_event(secs(2)), None);
    assert_eq!(at(&mut c, 0x0c, secs(2)), 0);
    // The mode bits are kept (binary, 24-hour), and so are the clock and the alarm.
    assert_eq!(get(&mut c, 0x0b), b::HOURS_24 | b::DM_BINARY);
    assert_eq!(clock(&mut c, secs(2)), before);
    assert_eq!(
        at(&mut c, 0x00, secs(5)),
        5,
        "the clock kept counting (binary)"
    );
    assert_eq!(get(&mut c, 0x01), 0x30);
    // The memory: the guest's byte and the RAM sizes.
    assert_eq!(get(&mut c, 0x50), 0x5a);
    assert_eq!(get16(&mut c, 0x15), 640);
    // The index went back to 0: a data read without an index write reads the seconds.
    c.write(INDEX, 0x50, secs(5));
    c.reset(secs(5));
    assert_eq!(c.read(DATA, secs(5)), 5);
    // The periodic flag counts on (PF sets without PIE): only the interrupt was disabled.
    assert_eq!(at(&mut c, 0x0c, secs(6)) & c::PF, c::PF);
}
