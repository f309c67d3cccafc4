//! The kernel console: COM1 (16550 UART, 115200 8N1, polled) plus a mirror to the debug port
//! 0xe9 when an emulator provides one (Bochs `port_e9_hack`, QEMU `-debugcon`), which makes
//! Bochs' console live on its stdout while its COM1 file is only complete at exit.
//!
//! Written here rather than with the `uart_16550` crate: the driver is a dozen port writes, and
//! the kernel needs the unlocked crash path and the 0xe9 mirror around it anyway.
//!
//! When the loader hands over a framebuffer ([`attach_framebuffer`]), every line also appears on
//! the screen (`microkernel::fbtext`): real machines often have no serial port.

use crate::arch::cpu::{inb, outb};
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};
use microkernel::fbtext::{FbError, Geometry, TextConsole};
use spin::Mutex;

const COM1: u16 = 0x3f8;
/// Line status register bit: transmitter holding register empty.
const LSR_THR_EMPTY: u8 = 1 << 5;
/// Line status register bit: transmitter empty (holding and shift registers both drained).
const LSR_TX_IDLE: u8 = 1 << 6;

static MIRROR_E9: AtomicBool = AtomicBool::new(false);
static LOCK: Mutex<()> = Mutex::new(());

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
    MIRROR_E9.store(inb(abi::DEBUGCON_PORT) == 0xe9, Ordering::Relaxed);
}

fn put_byte(byte: u8) {
    // A missing UART reads as 0xff (ready); bound the wait so a wedged one cannot hang us.
    for _ in 0..100_000 {
        if inb(COM1 + 5) & LSR_THR_EMPTY != 0 {
            break;
        }
        core::hint::spin_loop();
    }
    outb(COM1, byte);
    if MIRROR_E9.load(Ordering::Relaxed) {
        outb(abi::DEBUGCON_PORT, byte);
    }
}

/// Waits (bounded) until COM1 has sent every byte: call before stopping the machine, or the
/// emulator may drop the last characters.
pub fn drain() {
    for _ in 0..1_000_000 {
        if inb(COM1 + 5) & LSR_TX_IDLE != 0 {
            return;
        }
        core::hint::spin_loop();
    }
}

/// Writes straight to the ports, without the lock: for the crash path, which may run while the
/// interrupted code holds the lock.
pub struct RawConsole;

impl Write for RawConsole {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                put_byte(b'\r');
            }
            put_byte(b);
        }
        put_screen(s);
        Ok(())
    }
}

/// Prints formatted text under the console lock (lines from different code never interleave).
pub fn print(args: fmt::Arguments<'_>) {
    let _guard = LOCK.lock();
    let _ = RawConsole.write_fmt(args);
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
