//! The port I/O bus: dispatches byte accesses to the devices, splits wider accesses into
//! byte accesses to consecutive ports (little-endian), except for the debug-exit port, which
//! takes the whole value.
//!
//! An unhandled port reads as all ones and ignores writes; the first access to each unhandled
//! port (read or write, tracked separately) is reported once as a [`BusEvent::FirstUnhandled`],
//! for the first [`LOGGED_PORTS`] such ports (a guest probing every port gets the rest
//! unreported: the set stays small, since the VM model is moved on the VMM's stack).

use super::{cmos::Cmos, debug_exit, pic::Pic, pit::Pit, serial, serial::Serial, Text};
use super::{fw_cfg, fw_cfg::FwCfg, pci, pci::Pci, pm::Pm, reset::Reset};

/// Something the service should know about after an access.
// No allocator: the line travels by value.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BusEvent {
    /// A complete serial console line (without the newline).
    SerialLine(Text),
    /// The first access to an unhandled port (`write` tells the direction).
    FirstUnhandled { port: u16, write: bool },
    /// The guest wrote to the debug-exit port: stop with this code.
    DebugExit { code: u64 },
    /// The guest wrote SLP_EN with SLP_TYP = S5 to PM1a_CNT: power off.
    PowerOff,
    /// The guest reset the machine through `port` (0x92, 0x64 or 0xCF9).
    Reset { port: u16 },
}

/// Unhandled ports reported, per direction.
pub const LOGGED_PORTS: usize = 64;

/// The unhandled ports already reported.
#[derive(Clone, Debug, Default)]
struct PortSet(heapless::Vec<u16, LOGGED_PORTS>);

impl PortSet {
    /// Records `port`; returns whether it is to be reported (new, and room left).
    fn insert(&mut self, port: u16) -> bool {
        !self.0.contains(&port) && self.0.push(port).is_ok()
    }
}

/// The devices on the bus.
#[derive(Clone, Debug)]
pub struct PortBus {
    pub serial: Serial,
    pub pit: Pit,
    pub pic: Pic,
    pub cmos: Cmos,
    pub pm: Pm,
    pub reset: Reset,
    pub pci: Pci,
    pub fw_cfg: FwCfg,
    read_logged: PortSet,
    write_logged: PortSet,
}

impl PortBus {
    /// A bus for a guest with `ram_bytes` of RAM (for the CMOS memory sizes).
    pub fn new(ram_bytes: u64) -> PortBus {
        PortBus {
            serial: Serial::new(),
            pit: Pit::new(),
            pic: Pic::new(),
            cmos: Cmos::new(ram_bytes, super::cmos::START),
            pm: Pm::new(),
            reset: Reset::new(),
            pci: Pci::new(),
            // One vCPU; the service replaces it with the VM's count (`setup::Prepared::model`).
            fw_cfg: FwCfg::new(ram_bytes, 1),
            read_logged: PortSet::default(),
            write_logged: PortSet::default(),
        }
    }

    /// The machine's reset at `ticks`: every device back to its power-on state, except the
    /// CMOS, whose memory and clock survive ([`Cmos::reset`]); fw_cfg keeps describing the
    /// same machine. The unhandled ports already reported stay reported.
    pub fn reset(&mut self, ticks: u64) {
        self.serial = Serial::new();
        self.pit = Pit::new();
        self.pic = Pic::new();
        self.cmos.reset(ticks);
        self.pm = Pm::new();
        self.reset = Reset::new();
        self.pci = Pci::new();
        self.fw_cfg.reset();
    }

    /// Whether some device answers `port` (the debug-exit port counts).
    pub fn claims(port: u16) -> bool {
        port == debug_exit::PORT
            || Serial::claims(port)
            || Pit::claims(port)
            || Pic::claims(port)
            || Cmos::claims(port)
            || Pm::claims(port)
            || Reset::claims(port)
            || Pci::claims(port)
            || port == pci::CONFIG_ADDRESS
            || FwCfg::claims(port)
    }

    /// Whether an access of `size` bytes at `port` (a read, or a write of any value when
    /// `write`) touches the UART alone and leaves its interrupt output as it is, producing no
    /// event ([`Serial::quiet`], every byte judged now, before the access). Such an access
    /// changes nothing interrupt delivery looks at: no interrupt line, no device's next
    /// event, nothing requested.
    #[inline]
    pub fn quiet(&self, port: u16, size: u8, write: bool) -> bool {
        Self::uart_alone(port, size)
            && (0..size.clamp(1, 4))
                .all(|i| self.serial.quiet(port + u16::from(i) - serial::COM1, write))
    }

    /// [`Self::read`] of an access [`Self::quiet`] allowed: every byte is the UART's, so it
    /// goes to the UART without asking each device whether the port is its own.
    #[inline]
    pub fn read_quiet(&mut self, port: u16, size: u8) -> u32 {
        debug_assert!(Self::uart_alone(port, size), "not the UART's: {port:#x}");
        (0..size.clamp(1, 4)).fold(0, |v, i| {
            let byte = self.serial.read(port + u16::from(i) - serial::COM1);
            v | u32::from(byte) << (8 * i)
        })
    }

    /// [`Self::write`] of an access [`Self::quiet`] allowed: every byte is the UART's and
    /// gives no event, so it goes to the UART without asking each device whether the port
    /// is its own.
    #[inline]
    pub fn write_quiet(&mut self, port: u16, size: u8, value: u32) {
        debug_assert!(Self::uart_alone(port, size), "not the UART's: {port:#x}");
        for i in 0..size.clamp(1, 4) {
            let line = self
                .serial
                .write(port + u16::from(i) - serial::COM1, (value >> (8 * i)) as u8);
            debug_assert!(line.is_none(), "a quiet write gives no line");
        }
    }

    /// Whether every byte of an access of `size` bytes at `port` is the UART's.
    #[inline]
    pub fn uart_alone(port: u16, size: u8) -> bool {
        let last = port.checked_add(u16::from(size.clamp(1, 4)) - 1);
        Serial::claims(port) && last.is_some_and(Serial::claims)
    }

    /// `IN` of `size` bytes (1, 2 or 4; other sizes are treated as 4) at `port`; the result
    /// has the access's size. `ticks` drives the PIT.
    pub fn read(
        &mut self,
        port: u16,
        size: u8,
        ticks: u64,
        sink: &mut impl FnMut(BusEvent),
    ) -> u32 {
        // CONFIG_ADDRESS is a dword register: a dword access takes it whole.
        if port == pci::CONFIG_ADDRESS && size == 4 {
            return self.pci.address();
        }
        let mut v = 0u32;
        for i in 0..size.clamp(1, 4) {
            let p = port.wrapping_add(i as u16);
            v |= (self.read_byte(p, ticks, sink) as u32) << (8 * i);
        }
        v
    }

    fn read_byte(&mut self, port: u16, ticks: u64, sink: &mut impl FnMut(BusEvent)) -> u8 {
        if Serial::claims(port) {
            self.serial.read(port - serial::COM1)
        } else if Pit::claims(port) {
            self.pit.read(port, ticks)
        } else if Pic::claims(port) {
            self.pic.read(port)
        } else if Cmos::claims(port) {
            self.cmos.read(port, ticks)
        } else if Pm::claims(port) {
            self.pm.read(port, ticks)
        } else if Reset::claims(port) {
            self.reset.read(port)
        } else if Pci::claims(port) {
            self.pci.read(port)
        } else if FwCfg::claims(port) {
            self.fw_cfg.read(port)
        } else {
            // Includes the debug-exit port, which is write-only.
            if self.read_logged.insert(port) {
                sink(BusEvent::FirstUnhandled { port, write: false });
            }
            0xff
        }
    }

    /// `OUT` of the low `size` bytes of `value` to `port`.
    pub fn write(
        &mut self,
        port: u16,
        size: u8,
        value: u32,
        ticks: u64,
        sink: &mut impl FnMut(BusEvent),
    ) {
        if port == debug_exit::PORT {
            let v = match size {
                1 => value & 0xff,
                2 => value & 0xffff,
                _ => value,
            };
            sink(BusEvent::DebugExit {
                code: debug_exit::code(v),
            });
            return;
        }
        // Registers wider than a byte that a wide write sets at once.
        if port == pci::CONFIG_ADDRESS && size == 4 {
            return self.pci.set_address(value);
        }
        if port == fw_cfg::SELECTOR && size == 2 {
            return self.fw_cfg.select(value as u16);
        }
        for i in 0..size.clamp(1, 4) {
            let p = port.wrapping_add(i as u16);
            self.write_byte(p, (value >> (8 * i)) as u8, ticks, sink);
        }
    }

    fn write_byte(&mut self, port: u16, v: u8, ticks: u64, sink: &mut impl FnMut(BusEvent)) {
        if Serial::claims(port) {
            if let Some(line) = self.serial.write(port - serial::COM1, v) {
                sink(BusEvent::SerialLine(line));
            }
        } else if Pit::claims(port) {
            self.pit.write(port, v, ticks);
        } else if Pic::claims(port) {
            self.pic.write(port, v);
        } else if Cmos::claims(port) {
            self.cmos.write(port, v, ticks);
        } else if Pm::claims(port) {
            if self.pm.write(port, v, ticks) {
                sink(BusEvent::PowerOff);
            }
        } else if Reset::claims(port) {
            if let Some(port) = self.reset.write(port, v) {
                sink(BusEvent::Reset { port });
            }
        } else if Pci::claims(port) {
            self.pci.write(port, v);
        } else if FwCfg::claims(port) {
            self.fw_cfg.write(port, v);
        } else if self.write_logged.insert(port) {
            sink(BusEvent::FirstUnhandled { port, write: true });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unhandled_reads_are_all_ones_and_logged_once() {
        let mut bus = PortBus::new(32 << 20);
        let mut ev = Vec::new();
        let mut sink = |e| ev.push(e);
        assert_eq!(bus.read(0x700, 1, 0, &mut sink), 0xff);
        assert_eq!(bus.read(0x700, 2, 0, &mut sink), 0xffff);
        assert_eq!(bus.read(0x710, 4, 0, &mut sink), 0xffff_ffff);
        bus.write(0x700, 1, 0, 0, &mut sink);
        bus.write(0x700, 1, 0, 0, &mut sink);
        assert_eq!(
            ev,
            vec![
                BusEvent::FirstUnhandled {
                    port: 0x700,
                    write: false
                },
                BusEvent::FirstUnhandled {
                    port: 0x701,
                    write: false
                },
                BusEvent::FirstUnhandled {
                    port: 0x710,
                    write: false
                },
                BusEvent::FirstUnhandled {
                    port: 0x711,
                    write: false
                },
                BusEvent::FirstUnhandled {
                    port: 0x712,
                    write: false
                },
                BusEvent::FirstUnhandled {
                    port: 0x713,
                    write: false
                },
                BusEvent::FirstUnhandled {
                    port: 0x700,
                    write: true
                },
            ]
        );
        // The last port wraps without panicking.
        assert_eq!(bus.read(0xffff, 4, 0, &mut |_| {}), 0xffff_ffff);
        bus.write(0xffff, 4, 0, 0, &mut |_| {});
    }

    #[test]
    fn serial_line_and_debug_exit() {
        let mut bus = PortBus::new(32 << 20);
        let mut ev = Vec::new();
        let mut sink = |e| ev.push(e);
        for b in b"ok\n" {
            bus.write(0x3f8, 1, *b as u32, 0, &mut sink);
        }
        assert_eq!(bus.read(0x3fd, 1, 0, &mut sink), 0x60);
        bus.write(0xf4, 4, 0x10, 0, &mut sink);
        assert_eq!(
            ev,
            vec![
                BusEvent::SerialLine(Text::from_slice(b"ok").unwrap()),
                BusEvent::DebugExit { code: 0x21 }
            ]
        );
    }

    #[test]
    fn platform_ports() {
        let mut bus = PortBus::new(64 << 20);
        let mut sink = |e: BusEvent| panic!("unexpected {e:?}");
        // fw_cfg: a 16-bit selector write, then byte reads of the data port.
        bus.write(0x510, 2, 0x0003, 0, &mut sink);
        let ram: Vec<u8> = (0..8)
            .map(|_| bus.read(0x511, 1, 0, &mut sink) as u8)
            .collect();
        assert_eq!(ram, (64u64 << 20).to_le_bytes());
        bus.write(0x510, 2, 0, 0, &mut sink);
        assert_eq!(bus.read(0x511, 1, 0, &mut sink), b'Q' as u32);
        // PCI: a dword to CONFIG_ADDRESS is the address, not four bytes (0xCF9 untouched).
        bus.write(0xcf8, 4, 0x8000_0000, 0, &mut sink);
        assert_eq!(bus.read(0xcf8, 4, 0, &mut sink), 0x8000_0000);
        assert_eq!(bus.read(0xcfc, 4, 0, &mut sink), 0x1237_8086);
        assert_eq!(bus.read(0xcfe, 2, 0, &mut sink), 0x1237);
        bus.write(0xcf8, 4, 0x8000_0800, 0, &mut sink);
        assert_eq!(bus.read(0xcfc, 4, 0, &mut sink), 0xffff_ffff);
        // PM timer, as a dword.
        assert_eq!(bus.read(0x608, 4, 100, &mut sink), 300);
        let mut ev = Vec::new();
        let mut sink = |e| ev.push(e);
        // S5 through a word write to PM1a_CNT; a reset through each port.
        bus.write(0x604, 2, 7 << 10 | 1 << 13, 0, &mut sink);
        bus.write(0x64, 1, 0xfe, 0, &mut sink);
        bus.write(0x92, 1, 0x01, 0, &mut sink);
        bus.write(0xcf9, 1, 0x06, 0, &mut sink);
        assert_eq!(
            ev,
            vec![
                BusEvent::PowerOff,
                BusEvent::Reset { port: 0x64 },
                BusEvent::Reset { port: 0x92 },
                BusEvent::Reset { port: 0xcf9 },
            ]
        );
        for port in [
            0x510, 0x511, 0x600, 0x60b, 0x60, 0x64, 0x92, 0xcf8, 0xcf9, 0xcfc, 0xcff,
        ] {
            assert!(PortBus::claims(port), "{port:#x}");
        }
    }
}
