//! The kernel console: COM1 (16550 UART, 115200 8N1, polled) plus a mirror to the debug port
//! 0xe9 when an emulator provides one (Bochs `port_e9_hack`, QEMU `-debugcon`), which makes
//! Bochs' console live on its stdout while its COM1 file is only complete at exit.
//!
//! Written here rather than with the `uart_16550` crate: the driver is a dozen port writes, and
//! the kernel needs the unlocked crash path and the 0xe9 mirror around it anyway.

use crate::arch::cpu::{inb, outb};
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};
use spin::Mutex;

const COM1: u16 = 0x3f8;
/// Line status register bit: transmitter holding register empty.
const LSR_THR_EMPTY: u8 = 1 << 5;
/// Line status register bit: transmitter empty (holding and shift registers both drained).
const LSR_TX_IDLE: u8 = 1 << 6;

static MIRROR_E9: AtomicBool = AtomicBool::new(false);
static LOCK: Mutex<()> = Mutex::new(());

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
