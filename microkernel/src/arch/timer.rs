//! The timer: the 8259 PICs remapped to vectors 32..47 with every line but IRQ 0 masked, and
//! PIT channel 0 as a rate generator at [`HZ`]. A few port writes, by hand.

use super::cpu::{inb, outb};
use core::sync::atomic::{AtomicU64, Ordering};

/// Timer interrupts per second.
pub const HZ: u64 = 100;
/// The vector of PIC line 0; lines 0..15 use vectors 32..47.
pub const IRQ_BASE: u8 = 32;
/// The timer's vector (PIC line 0).
pub const TIMER_VECTOR: u8 = IRQ_BASE;

const PIC1_CMD: u16 = 0x20;
const PIC1_DATA: u16 = 0x21;
const PIC2_CMD: u16 = 0xa0;
const PIC2_DATA: u16 = 0xa1;
const PIC_EOI: u8 = 0x20;
/// OCW3: the next read of the command port returns the in-service register.
const PIC_READ_ISR: u8 = 0x0b;

const PIT_CH0: u16 = 0x40;
const PIT_CMD: u16 = 0x43;
const PIT_INPUT_HZ: u64 = 1_193_182;

static TICKS: AtomicU64 = AtomicU64::new(0);
/// The TSC's rate, measured against the PIT at [`init`] (0: the measurement failed).
static TSC_HZ: AtomicU64 = AtomicU64::new(0);

/// Port B of the system control (speaker gate = PIT channel 2's gate, bit 0; speaker data,
/// bit 1; channel 2's OUT, bit 5).
const PORT_B: u16 = 0x61;
const PIT_CH2: u16 = 0x42;
/// The calibration's length in PIT periods (10 ms).
const CALIBRATION_PERIODS: u64 = PIT_INPUT_HZ / 100;
/// Polls of channel 2's OUT before the calibration gives up (a PIT that never counts).
const CALIBRATION_POLLS: u64 = 50_000_000;

/// The TSC's rate in Hz, measured at boot against the PIT (0 if that failed).
pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

/// Measures the TSC's rate with PIT channel 2 in mode 0 (terminal count after
/// [`CALIBRATION_PERIODS`]), polling its OUT through port B, as Linux's `pit_calibrate_tsc`.
fn calibrate_tsc() {
    let b = inb(PORT_B);
    // Gate on, speaker off.
    outb(PORT_B, (b & !0x02) | 0x01);
    outb(PIT_CMD, 0xb0); // channel 2, lobyte/hibyte, mode 0
    outb(PIT_CH2, CALIBRATION_PERIODS as u8);
    outb(PIT_CH2, (CALIBRATION_PERIODS >> 8) as u8);
    let start = super::cpu::rdtsc();
    let mut polls = 0;
    while inb(PORT_B) & 0x20 == 0 && polls < CALIBRATION_POLLS {
        polls += 1;
    }
    let end = super::cpu::rdtsc();
    if polls < CALIBRATION_POLLS {
        let hz = (end - start) as u128 * PIT_INPUT_HZ as u128 / CALIBRATION_PERIODS as u128;
        TSC_HZ.store(hz as u64, Ordering::Relaxed);
    }
    outb(PORT_B, b & !0x03);
}

/// Timer ticks since [`init`].
pub fn ticks() -> u64 {
    TICKS.load(Ordering::Relaxed)
}

/// A write to an unused port: the classic delay between PIC initialisation words.
fn io_wait() {
    outb(0x80, 0);
}

/// Remaps the PICs to 32..47, masks every line but IRQ 0, and starts PIT channel 0 at [`HZ`].
/// Interrupts stay disabled (IF = 0) until ring 3 or [`super::user::idle_wait`].
pub fn init() {
    // ICW1: edge triggered, cascade, ICW4 follows.
    outb(PIC1_CMD, 0x11);
    io_wait();
    outb(PIC2_CMD, 0x11);
    io_wait();
    // ICW2: vector bases.
    outb(PIC1_DATA, IRQ_BASE);
    io_wait();
    outb(PIC2_DATA, IRQ_BASE + 8);
    io_wait();
    // ICW3: the slave is on line 2 of the master.
    outb(PIC1_DATA, 1 << 2);
    io_wait();
    outb(PIC2_DATA, 2);
    io_wait();
    // ICW4: 8086 mode.
    outb(PIC1_DATA, 0x01);
    io_wait();
    outb(PIC2_DATA, 0x01);
    io_wait();
    // OCW1: only IRQ 0 unmasked.
    outb(PIC1_DATA, !1);
    outb(PIC2_DATA, 0xff);

    calibrate_tsc();
    // Channel 0, lobyte/hibyte, mode 2 (rate generator), binary.
    let divisor = (PIT_INPUT_HZ + HZ / 2) / HZ;
    outb(PIT_CMD, 0x34);
    outb(PIT_CH0, divisor as u8);
    outb(PIT_CH0, (divisor >> 8) as u8);
}

fn in_service(cmd_port: u16) -> u8 {
    outb(cmd_port, PIC_READ_ISR);
    inb(cmd_port)
}

/// Acknowledges PIC vector `vector`: counts a timer tick and sends the EOI. Returns `false` for
/// a spurious IRQ 7 or 15 (not in service: no EOI to that PIC; for 15 the master still gets
/// one, for the cascade line), which the caller then ignores.
pub(super) fn acknowledge(vector: u8) -> bool {
    let irq = vector.wrapping_sub(IRQ_BASE);
    if irq == 7 && in_service(PIC1_CMD) & (1 << 7) == 0 {
        return false;
    }
    if irq == 15 && in_service(PIC2_CMD) & (1 << 7) == 0 {
        outb(PIC1_CMD, PIC_EOI);
        return false;
    }
    if vector == TIMER_VECTOR {
        TICKS.fetch_add(1, Ordering::Relaxed);
    }
    if irq >= 8 {
        outb(PIC2_CMD, PIC_EOI);
    }
    outb(PIC1_CMD, PIC_EOI);
    true
}
