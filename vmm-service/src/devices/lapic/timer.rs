//! The local APIC timer (SDM vol. 3, 11.5.4): one-shot, periodic and TSC-deadline modes.
//!
//! Input clock: the guest's TSC. The counter decrements once every `divisor` TSC ticks, where
//! `divisor` (1..=128) comes from the divide configuration register: the timer's base clock
//! is the TSC frequency (what CPUID leaf 0x15/0x16 should report as the core-crystal /
//! bus clock). Time is the caller's `now` (guest TSC), never read here.
//!
//! The count is derived from time, not stored: counting restarts at `initial` at TSC `start`,
//! and expiry `k` (k >= 1) happens at `start + k * initial * divisor`. One-shot mode expires
//! once; periodic mode expires every period. [`Timer::poll`] reports whether an expiry not yet
//! reported has happened; several missed periods give one interrupt and add to
//! [`Timer::missed`] instead of a flood.

/// The timer mode (LVT timer bits 18:17).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TimerMode {
    #[default]
    OneShot,
    Periodic,
    TscDeadline,
    /// Encoding 3: the timer never expires.
    Reserved,
}

impl TimerMode {
    /// Decodes the mode field of an LVT timer value.
    pub fn from_lvt(lvt: u32) -> TimerMode {
        match (lvt >> 17) & 3 {
            0 => TimerMode::OneShot,
            1 => TimerMode::Periodic,
            2 => TimerMode::TscDeadline,
            _ => TimerMode::Reserved,
        }
    }
}

/// Writable bits of the divide configuration register (bits 0, 1 and 3).
pub const DIVIDE_MASK: u32 = 0xb;

/// The divisor selected by a divide configuration value: 2, 4, ..., 128, or 1 for 0b1011.
pub fn divisor(divide: u32) -> u64 {
    let code = (divide & 3) | ((divide >> 1) & 4);
    if code == 7 {
        1
    } else {
        2 << code
    }
}

/// Timer state; see the module comment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timer {
    mode: TimerMode,
    initial: u32,
    divide: u32,
    start: u64,
    /// Expiries already reported by `poll` since `start`.
    delivered: u64,
    /// IA32_TSC_DEADLINE (0: disarmed).
    deadline: u64,
    /// Periods that expired without an interrupt of their own (coalesced by a late poll).
    pub missed: u64,
}

impl Timer {
    /// Power-up state (the statistics are kept).
    pub fn reset(&mut self) {
        *self = Timer {
            missed: self.missed,
            ..Timer::default()
        };
    }

    pub fn mode(&self) -> TimerMode {
        self.mode
    }

    /// The initial-count register.
    pub fn initial(&self) -> u32 {
        self.initial
    }

    /// The divide configuration register.
    pub fn divide(&self) -> u32 {
        self.divide
    }

    fn div(&self) -> u64 {
        divisor(self.divide)
    }

    /// Counter decrements since `start`.
    fn counts(&self, now: u64) -> u64 {
        now.wrapping_sub(self.start) / self.div()
    }

    /// The current-count register at `now` (0 in TSC-deadline mode and when stopped).
    pub fn current(&self, now: u64) -> u32 {
        let initial = self.initial as u64;
        if initial == 0 {
            return 0;
        }
        let c = self.counts(now);
        match self.mode {
            TimerMode::OneShot => initial.saturating_sub(c) as u32,
            TimerMode::Periodic => (initial - c % initial) as u32,
            _ => 0,
        }
    }

    /// Expiries at or before `now` since the last (re)start.
    fn due(&self, now: u64) -> u64 {
        let initial = self.initial as u64;
        match self.mode {
            TimerMode::OneShot if initial != 0 => (self.counts(now) / initial).min(1),
            TimerMode::Periodic if initial != 0 => self.counts(now) / initial,
            TimerMode::TscDeadline if self.deadline != 0 && now >= self.deadline => 1,
            _ => 0,
        }
    }

    /// The TSC of the earliest expiry not yet reported by [`Timer::poll`] (it may be in the
    /// past if `poll` has not run since), or `None` if the timer is disarmed.
    pub fn next_event(&self) -> Option<u64> {
        let period = (self.initial as u64).wrapping_mul(self.div());
        match self.mode {
            TimerMode::OneShot if self.initial != 0 && self.delivered == 0 => {
                Some(self.start.wrapping_add(period))
            }
            TimerMode::Periodic if self.initial != 0 => Some(
                self.start
                    .wrapping_add(period.wrapping_mul(self.delivered.wrapping_add(1))),
            ),
            TimerMode::TscDeadline if self.deadline != 0 => Some(self.deadline),
            _ => None,
        }
    }

    /// Whether the timer expired (once or more) since the last call; re-arms periodic mode
    /// and disarms the other modes (TSC-deadline mode clears the deadline, as hardware does).
    pub fn poll(&mut self, now: u64) -> bool {
        let due = self.due(now);
        if self.mode == TimerMode::TscDeadline {
            if due != 0 {
                self.deadline = 0;
                return true;
            }
            return false;
        }
        if due > self.delivered {
            self.missed += due - self.delivered - 1;
            self.delivered = due;
            return true;
        }
        false
    }

    /// A write of the initial-count register: restarts counting (ignored in TSC-deadline
    /// mode; 0 stops the timer).
    pub fn set_initial(&mut self, value: u32, now: u64) {
        if matches!(self.mode, TimerMode::TscDeadline | TimerMode::Reserved) {
            return;
        }
        self.initial = value;
        self.start = now;
        self.delivered = 0;
    }

    /// A write of the divide configuration register. The count keeps its current value and
    /// goes on at the new rate from `now`. Call [`Timer::poll`] first (as the local APIC does
    /// before every timer register access) so no expiry is pending.
    pub fn set_divide(&mut self, value: u32, now: u64) {
        let value = value & DIVIDE_MASK;
        let cur = self.current(now) as u64;
        let fired = self.mode == TimerMode::OneShot && self.delivered != 0;
        self.divide = value;
        let done = (self.initial as u64).saturating_sub(cur);
        self.start = now.wrapping_sub(done.wrapping_mul(self.div()));
        self.delivered = fired as u64;
    }

    /// The LVT timer's mode field was written: a change of mode disarms the timer (initial
    /// count and deadline read 0).
    pub fn set_mode(&mut self, mode: TimerMode) {
        if mode != self.mode {
            self.mode = mode;
            self.initial = 0;
            self.deadline = 0;
            self.delivered = 0;
        }
    }

    /// IA32_TSC_DEADLINE as read: the armed deadline in TSC-deadline mode, 0 otherwise.
    pub fn deadline(&self) -> u64 {
        if self.mode == TimerMode::TscDeadline {
            self.deadline
        } else {
            0
        }
    }

    /// A write of IA32_TSC_DEADLINE: arms (or with 0 disarms) the timer in TSC-deadline
    /// mode; ignored in the other modes. A deadline in the past expires at the next poll.
    pub fn set_deadline(&mut self, value: u64) {
        if self.mode == TimerMode::TscDeadline {
            self.deadline = value;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn divisors() {
        let table = [
            (0b0000, 2),
            (0b0001, 4),
            (0b0010, 8),
            (0b0011, 16),
            (0b1000, 32),
            (0b1001, 64),
            (0b1010, 128),
            (0b1011, 1),
        ];
        for (reg, div) in table {
            assert_eq!(divisor(reg), div, "divide {reg:#x}");
            // Bit 2 is not part of the encoding.
            assert_eq!(divisor(reg | 4), div, "divide {reg:#x} | 4");
        }
    }

    fn oneshot(initial: u32, divide: u32, now: u64) -> Timer {
        let mut t = Timer::default();
        t.set_divide(divide, now);
        t.set_initial(initial, now);
        t
    }

    #[test]
    fn one_shot_counts_down_and_fires_once() {
        let mut t = oneshot(100, 0b1011, 1000); // divide by 1
        assert_eq!(t.current(1000), 100);
        assert_eq!(t.current(1099), 1);
        assert_eq!(t.next_event(), Some(1100));
        assert!(!t.poll(1099));
        assert_eq!(t.current(1100), 0);
        assert!(t.poll(1100));
        assert!(!t.poll(5000));
        assert_eq!(t.next_event(), None);
        assert_eq!(t.current(5000), 0);
        // A new initial count re-arms.
        t.set_initial(10, 6000);
        assert_eq!(t.next_event(), Some(6010));
    }

    #[test]
    fn periodic_reloads_and_counts_missed_periods() {
        let mut t = Timer::default();
        t.set_mode(TimerMode::Periodic);
        t.set_divide(0, 0); // divide by 2
        t.set_initial(50, 0); // period 100 TSC ticks
        assert_eq!(t.next_event(), Some(100));
        assert_eq!(t.current(99), 1);
        assert_eq!(t.current(100), 50);
        assert!(t.poll(100));
        assert_eq!(t.next_event(), Some(200));
        // Five periods later: one interrupt, four missed.
        assert!(t.poll(650));
        assert_eq!(t.missed, 4);
        assert_eq!(t.next_event(), Some(700));
        assert!(!t.poll(699));
    }

    #[test]
    fn mode_change_disarms_and_deadline_mode_ignores_counts() {
        let mut t = oneshot(100, 0b1011, 0);
        t.set_mode(TimerMode::TscDeadline);
        assert_eq!((t.initial(), t.next_event()), (0, None));
        t.set_initial(5, 0);
        assert_eq!(t.initial(), 0);
        t.set_deadline(500);
        assert_eq!(t.deadline(), 500);
        assert_eq!(t.current(10), 0);
        assert!(!t.poll(499));
        assert!(t.poll(500));
        assert_eq!(t.deadline(), 0, "expiry clears the deadline");
        assert!(!t.poll(10_000));
        t.set_mode(TimerMode::OneShot);
        t.set_deadline(7);
        assert_eq!(t.deadline(), 0, "writes ignored outside deadline mode");
    }

    #[test]
    fn divide_change_keeps_the_count() {
        let mut t = oneshot(100, 0b1011, 0); // by 1
        assert_eq!(t.current(40), 60);
        t.set_divide(0b0001, 40); // by 4
        assert_eq!(t.current(40), 60);
        assert_eq!(t.current(44), 59);
        assert_eq!(t.next_event(), Some(40 + 60 * 4));
    }

    /// Reference: simulate the counter one TSC tick at a time.
    fn reference(initial: u32, div: u64, periodic: bool, ticks: u64) -> (u32, u64) {
        let mut count = initial as u64;
        let mut sub = 0;
        let mut expiries = 0;
        for _ in 0..ticks {
            if count == 0 {
                break;
            }
            sub += 1;
            if sub == div {
                sub = 0;
                count -= 1;
                if count == 0 {
                    expiries += 1;
                    if periodic {
                        count = initial as u64;
                    }
                }
            }
        }
        (count as u32, expiries)
    }

    /// Reference with divide changes: `changes` are (tick, divisor) pairs; a change restarts
    /// the divider's prescaler (the next decrement is a full new period away).
    fn reference_with_changes(initial: u32, div0: u64, changes: &[(u64, u64)], ticks: u64) -> u32 {
        let (mut count, mut div, mut sub) = (initial as u64, div0, 0);
        for t in 0..ticks {
            if let Some(&(_, d)) = changes.iter().find(|&&(at, _)| at == t) {
                div = d;
                sub = 0;
            }
            if count == 0 {
                break;
            }
            sub += 1;
            if sub == div {
                sub = 0;
                count -= 1;
            }
        }
        count as u32
    }

    proptest! {
        #[test]
        fn divide_changes_match_the_reference(
            initial in 1u32..300,
            divides in prop::collection::vec(
                (1u64..400, prop::sample::select(vec![0u32, 1, 2, 3, 8, 11])),
                0..4,
            ),
            at in 0u64..2000,
        ) {
            let mut t = Timer::default();
            t.set_divide(0b1011, 0);
            t.set_initial(initial, 0);
            let mut now = 0;
            let mut changes = Vec::new();
            for (gap, d) in divides {
                now += gap;
                t.poll(now);
                t.set_divide(d, now);
                changes.push((now, divisor(d)));
            }
            let end = now + at;
            prop_assert_eq!(t.current(end), reference_with_changes(initial, 1, &changes, end));
            // One expiry in all (one-shot), reported exactly when the count reaches 0.
            t.poll(end);
            prop_assert_eq!(t.delivered != 0, t.current(end) == 0);
        }

        #[test]
        fn count_and_expiries_match_a_tick_by_tick_reference(
            initial in 1u32..200,
            divide in prop::sample::select(vec![0u32, 1, 2, 3, 8, 9, 10, 11]),
            periodic: bool,
            start in 0u64..1_000_000,
            polls in prop::collection::vec(0u64..3000, 1..6),
        ) {
            let mut t = Timer::default();
            if periodic {
                t.set_mode(TimerMode::Periodic);
            }
            t.set_divide(divide, start);
            t.set_initial(initial, start);
            let mut now = start;
            let mut fired = 0u64;
            for step in polls {
                now += step;
                let next = t.next_event();
                let (count, expiries) = reference(initial, divisor(divide), periodic, now - start);
                prop_assert_eq!(t.current(now), count);
                if t.poll(now) {
                    fired += 1;
                    // The reported event was due.
                    prop_assert!(next.is_some_and(|n| n <= now));
                } else {
                    prop_assert!(next.is_none_or(|n| n > now));
                }
                // Every expiry is an interrupt or a counted miss.
                prop_assert_eq!(fired + t.missed, expiries);
            }
        }
    }
}
