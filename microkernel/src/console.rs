//! The kernel console: COM1 (16550 UART, 115200 8N1) plus a mirror to the debug port 0xe9
//! when an emulator provides one (Bochs `port_e9_hack`, QEMU `-debugcon`), which makes Bochs'
//! console live on its stdout while its COM1 file is only complete at exit.
//!
//! COM1 is buffered: a line goes into a ring and [`pump`] moves it into the UART's transmit
//! FIFO whenever the FIFO is empty, from every return to a task or a guest and from the idle
//! loop. At 115200 baud a character takes 87 us; waiting for each would stall the CPU for
//! about 0.8 ms a line (and in Bochs, where time follows the instruction count, it is that
//! many instructions of polling). When the ring is full a print waits for room; [`drain`]
//! (before the machine stops) and the crash path send everything first.
//!
//! Written here rather than with the `uart_16550` crate: the driver is a dozen port writes, and
//! the kernel needs the unlocked crash path and the 0xe9 mirror around it anyway.
//!
//! When the loader hands over a framebuffer ([`attach_framebuffer`]), every line also appears on
//! the screen (`microkernel::fbtext`): real machines often have no serial port.

use crate::arch::cpu::{inb, outb};
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use heapless::Deque;
use microkernel::fbtext::{FbError, Geometry, TextConsole};
use spin::Mutex;

const COM1: u16 = 0x3f8;
/// Line status register bit: transmitter holding register empty.
const LSR_THR_EMPTY: u8 = 1 << 5;
/// Line status register bit: transmitter empty (holding and shift registers both drained).
const LSR_TX_IDLE: u8 = 1 << 6;

static MIRROR_E9: AtomicBool = AtomicBool::new(false);
/// Bytes the UART takes at once when its transmit FIFO is empty (16 on a 16550A, else 1).
static FIFO_DEPTH: AtomicUsize = AtomicUsize::new(1);
/// What COM1 has still to send.
static TX: Mutex<Deque<u8, TX_BYTES>> = Mutex::new(Deque::new());
/// Whether the ring may hold bytes: [`pump`], called at every return to ring 3 or a guest,
/// looks at nothing else while it is clear.
static PENDING: AtomicBool = AtomicBool::new(false);
/// Pumps left out after one found the UART still sending ([`PUMP_BACKOFF`]): a byte takes
/// about 87 µs at 115200 baud, a return to ring 3 a few, so looking at every return while
/// a line drains only costs each of them the lock and a port read.
static PUMP_SKIPS: AtomicUsize = AtomicUsize::new(0);
const PUMP_BACKOFF: usize = 16;
const TX_BYTES: usize = 256 * 1024;

/// The screen console: the text state and the framebuffer's pixels (through the direct map).
struct Screen {
    text: TextConsole,
    pixels: Option<&'static mut [u8]>,
}

static SCREEN: Mutex<Screen> = Mutex::new(Screen {
    text: TextConsole::new(),
    pixels: None,
});

/// Mirrors the console onto a framebuffer from now on (clearing it first). `pixels` must stay
/// mapped at the same address for the kernel's lifetime (the direct map, which the kernel's own
/// page tables keep where the loader put it).
pub fn attach_framebuffer(geometry: Geometry, pixels: &'static mut [u8]) -> Result<(), FbError> {
    let mut screen = SCREEN.lock();
    screen.text.attach(geometry, pixels)?;
    screen.pixels = Some(pixels);
    Ok(())
}

/// Columns and rows of the screen console, if one is attached.
pub fn screen_size() -> Option<(usize, usize)> {
    let screen = SCREEN.lock();
    screen.pixels.as_ref().map(|_| screen.text.size())
}

fn put_screen(s: &str) {
    // `try_lock`: the crash path may interrupt a screen update; it then reaches serial only.
    if let Some(mut screen) = SCREEN.try_lock() {
        let Screen { text, pixels } = &mut *screen;
        if let Some(pixels) = pixels {
            text.write_str(pixels, s);
        }
    }
}

/// Programs COM1 (8N1, 115200 baud, FIFOs on) and detects the 0xe9 debug port.
pub fn init() {
    outb(COM1 + 1, 0x00); // no interrupts
    outb(COM1 + 3, 0x80); // DLAB on
    outb(COM1, 0x01); // divisor 1: 115200 baud
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03); // 8 data bits, no parity, 1 stop bit; DLAB off
    outb(COM1 + 2, 0xc7); // FIFOs on and cleared
    outb(COM1 + 4, 0x03); // DTR, RTS
                          // IIR bits 7:6 read 11 when the FIFOs are on (a 16550A).
    let depth = if inb(COM1 + 2) & 0xc0 == 0xc0 { 16 } else { 1 };
    FIFO_DEPTH.store(depth, Ordering::Relaxed);
    MIRROR_E9.store(inb(abi::DEBUGCON_PORT) == 0xe9, Ordering::Relaxed);
}

/// Waits (bounded: a missing UART reads as 0xff, ready) until the transmit FIFO is empty.
fn wait_fifo_empty() {
    for _ in 0..100_000 {
        if inb(COM1 + 5) & LSR_THR_EMPTY != 0 {
            return;
        }
        core::hint::spin_loop();
    }
}

/// Moves up to a FIFO's worth of the ring into the UART (whose FIFO the caller saw empty).
fn burst(tx: &mut Deque<u8, TX_BYTES>) {
    for _ in 0..FIFO_DEPTH.load(Ordering::Relaxed) {
        match tx.pop_front() {
            Some(b) => outb(COM1, b),
            None => break,
        }
    }
}

/// Moves what the ring holds into the UART as far as its FIFO is empty now; never waits.
/// Inlined into every return to user mode or a guest: nothing pending, or a pump put off
/// while the UART sends, costs a few instructions there.
#[inline(always)]
pub fn pump() {
    if !PENDING.load(Ordering::Relaxed) {
        return;
    }
    let skips = PUMP_SKIPS.load(Ordering::Relaxed);
    if skips > 0 {
        PUMP_SKIPS.store(skips - 1, Ordering::Relaxed);
        return;
    }
    pump_now();
}

/// [`pump`] when it is due.
#[inline(never)]
fn pump_now() {
    let Some(mut tx) = TX.try_lock() else {
        return; // a print is under way and pumps itself
    };
    if !tx.is_empty() {
        if inb(COM1 + 5) & LSR_THR_EMPTY != 0 {
            burst(&mut tx);
        } else {
            PUMP_SKIPS.store(PUMP_BACKOFF, Ordering::Relaxed);
        }
    }
    PENDING.store(!tx.is_empty(), Ordering::Relaxed);
}

/// Sends everything the ring holds, waiting for the UART.
fn flush(tx: &mut Deque<u8, TX_BYTES>) {
    while !tx.is_empty() {
        wait_fifo_empty();
        burst(tx);
    }
    PENDING.store(false, Ordering::Relaxed);
}

/// Sends everything buffered, waiting for the UART: for the idle loop, where the CPU has
/// nothing better to do.
pub fn flush_pending() {
    if let Some(mut tx) = TX.try_lock() {
        flush(&mut tx);
    }
}

/// Sends everything buffered, then waits (bounded) until COM1 has sent every byte: call
/// before stopping the machine, or the emulator may drop the last characters.
pub fn drain() {
    if let Some(mut tx) = TX.try_lock() {
        flush(&mut tx);
    }
    for _ in 0..1_000_000 {
        if inb(COM1 + 5) & LSR_TX_IDLE != 0 {
            return;
        }
        core::hint::spin_loop();
    }
}

/// Writes straight to the ports, after what is buffered if the buffer is free: for the crash
/// path, which may run while the interrupted code holds the buffer.
pub struct RawConsole;

fn put_raw(byte: u8) {
    wait_fifo_empty();
    outb(COM1, byte);
    if MIRROR_E9.load(Ordering::Relaxed) {
        outb(abi::DEBUGCON_PORT, byte);
    }
}

impl Write for RawConsole {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if let Some(mut tx) = TX.try_lock() {
            flush(&mut tx);
        }
        for b in s.bytes() {
            if b == b'\n' {
                put_raw(b'\r');
            }
            put_raw(b);
        }
        put_screen(s);
        Ok(())
    }
}

/// Appends to the ring (the 0xe9 mirror gets it at once).
struct Buffered<'a>(&'a mut Deque<u8, TX_BYTES>);

impl Buffered<'_> {
    fn push(&mut self, b: u8) {
        if MIRROR_E9.load(Ordering::Relaxed) {
            outb(abi::DEBUGCON_PORT, b);
        }
        if self.0.is_full() {
            // Full: wait for the UART to take a FIFO's worth.
            wait_fifo_empty();
            burst(self.0);
        }
        let _ = self.0.push_back(b);
        PENDING.store(true, Ordering::Relaxed);
    }
}

impl Write for Buffered<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.push(b'\r');
            }
            self.push(b);
        }
        put_screen(s);
        Ok(())
    }
}

/// Prints formatted text (lines from different code never interleave: the ring is locked for
/// the whole line), and starts sending it.
pub fn print(args: fmt::Arguments<'_>) {
    {
        let mut tx = TX.lock();
        let _ = Buffered(&mut tx).write_fmt(args);
    }
    pump();
}

/// `println!` for the kernel console.
#[macro_export]
macro_rules! println {
    () => { $crate::console::print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::console::print(format_args!("{}\n", format_args!($($arg)*))) };
}

/// A log line with a level and a subsystem: `log!(info, "mem", "{} MiB usable", n)` prints
/// `[info] mem: 254 MiB usable`.
#[macro_export]
macro_rules! log {
    ($level:ident, $subsystem:expr, $($arg:tt)*) => {
        $crate::console::print(format_args!(
            "[{}] {}: {}\n",
            stringify!($level),
            $subsystem,
            format_args!($($arg)*)
        ))
    };
}
