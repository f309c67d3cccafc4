//! PCI configuration mechanism #1: the 32-bit CONFIG_ADDRESS register at [`CONFIG_ADDRESS`]
//! (0xCF8, dword accesses only: the bus sends them here whole) and the data window
//! [`CONFIG_DATA`]..+4 (0xCFC-0xCFF, byte accesses: the bus splits wider ones, so a byte,
//! word or dword at any offset of the window reaches the register bytes it covers).
//!
//! One device: the host bridge at 00:00.0, an Intel 440FX (8086:1237, class 06/00, header
//! type 0), as QEMU's `pc` machine has it. Every other bus/device/function is absent and
//! reads all ones; so does the window while CONFIG_ADDRESS's enable bit is clear. Writes
//! reach only the bridge's writable bits ([`WRITABLE`]); the rest of its space is read only.

/// The address register and the data window.
pub const CONFIG_ADDRESS: u16 = 0xcf8;
pub const CONFIG_DATA: u16 = 0xcfc;
/// Bits of CONFIG_ADDRESS that hold a value: enable (31), bus, device, function, register
/// (7:2).
const ADDRESS_BITS: u32 = 0x80ff_fffc;
const ENABLE: u32 = 1 << 31;

/// The host bridge's identity.
pub const VENDOR_ID: u16 = 0x8086;
pub const DEVICE_ID: u16 = 0x1237;
pub const REVISION: u8 = 0x02;
/// Base class 06 (bridge), subclass 00 (host bridge), programming interface 00.
pub const CLASS: [u8; 3] = [0x00, 0x00, 0x06];

/// Bytes of a function's configuration space.
const SPACE: usize = 256;

/// (offset, writable bits) of the host bridge's writable bytes: the command register's
/// memory-space and bus-master bits, the latency timer, the PAM registers (0x59-0x5F, the
/// BIOS-area attributes firmware sets) and SMRAM (0x72).
pub const WRITABLE: &[(usize, u8)] = &[
    (0x04, 0x06),
    (0x0d, 0xff),
    (0x59, 0x30),
    (0x5a, 0x33),
    (0x5b, 0x33),
    (0x5c, 0x33),
    (0x5d, 0x33),
    (0x5e, 0x33),
    (0x5f, 0x33),
    (0x72, 0x78),
];

fn bridge_space() -> [u8; SPACE] {
    let mut s = [0u8; SPACE];
    s[0..2].copy_from_slice(&VENDOR_ID.to_le_bytes());
    s[2..4].copy_from_slice(&DEVICE_ID.to_le_bytes());
    // Command: memory space and bus master on; status: medium DEVSEL, fast back-to-back.
    s[4..6].copy_from_slice(&0x0006u16.to_le_bytes());
    s[6..8].copy_from_slice(&0x0280u16.to_le_bytes());
    s[8] = REVISION;
    s[9..12].copy_from_slice(&CLASS);
    // Header type 0, single function.
    s[0x0e] = 0x00;
    // SMRAM: the default value (compatible SMRAM at 0xA0000, closed).
    s[0x72] = 0x02;
    s
}

#[derive(Clone, Debug)]
pub struct Pci {
    address: u32,
    bridge: [u8; SPACE],
}

impl Default for Pci {
    fn default() -> Pci {
        Pci::new()
    }
}

impl Pci {
    pub fn new() -> Pci {
        Pci {
            address: 0,
            bridge: bridge_space(),
        }
    }

    /// Whether `port` is in the data window (byte accesses).
    pub fn claims(port: u16) -> bool {
        (CONFIG_DATA..CONFIG_DATA + 4).contains(&port)
    }

    /// CONFIG_ADDRESS as read (dword).
    pub fn address(&self) -> u32 {
        self.address
    }

    /// A dword write to CONFIG_ADDRESS.
    pub fn set_address(&mut self, v: u32) {
        self.address = v & ADDRESS_BITS;
    }

    /// The bridge's configuration-space offset a data-window byte at `port` reaches, or
    /// `None` when it reaches no device.
    fn target(&self, port: u16) -> Option<usize> {
        let bdf = (self.address >> 8) & 0xffff;
        if self.address & ENABLE == 0 || bdf != 0 {
            return None;
        }
        let reg = (self.address & 0xfc) as usize;
        Some(reg + usize::from(port.wrapping_sub(CONFIG_DATA) & 3))
    }

    /// A byte read in the data window.
    pub fn read(&self, port: u16) -> u8 {
        self.target(port)
            .and_then(|at| self.bridge.get(at).copied())
            .unwrap_or(0xff)
    }

    /// A byte write in the data window: only the bridge's writable bits change.
    pub fn write(&mut self, port: u16, v: u8) {
        let Some(at) = self.target(port) else {
            return;
        };
        if let (Some(&(_, mask)), Some(b)) = (
            WRITABLE.iter().find(|(o, _)| *o == at),
            self.bridge.get_mut(at),
        ) {
            *b = (*b & !mask) | (v & mask);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(bus: u32, dev: u32, func: u32, reg: u32) -> u32 {
        ENABLE | bus << 16 | dev << 11 | func << 8 | reg
    }

    fn read(p: &Pci, port: u16, size: u16) -> u32 {
        (0..size).fold(0, |v, i| v | (p.read(port + i) as u32) << (8 * i))
    }

    #[test]
    fn host_bridge_identity_at_every_width_and_offset() {
        let mut p = Pci::new();
        p.set_address(addr(0, 0, 0, 0));
        assert_eq!(read(&p, CONFIG_DATA, 4), 0x1237_8086);
        assert_eq!(read(&p, CONFIG_DATA, 2), 0x8086);
        assert_eq!(read(&p, CONFIG_DATA + 2, 2), 0x1237);
        assert_eq!(read(&p, CONFIG_DATA + 1, 1), 0x80);
        p.set_address(addr(0, 0, 0, 8));
        assert_eq!(read(&p, CONFIG_DATA, 4), 0x0600_0002);
        assert_eq!(read(&p, CONFIG_DATA + 3, 1), 0x06);
        p.set_address(addr(0, 0, 0, 0x0c));
        assert_eq!(read(&p, CONFIG_DATA + 2, 1), 0); // header type 0
                                                     // The register field's low bits are not stored.
        p.set_address(addr(0, 0, 0, 0) | 3);
        assert_eq!(p.address(), addr(0, 0, 0, 0));
        assert_eq!(read(&p, CONFIG_DATA, 4), 0x1237_8086);
        // Past the standard header: zeros, not all ones (the function exists).
        p.set_address(addr(0, 0, 0, 0xfc));
        assert_eq!(read(&p, CONFIG_DATA, 4), 0);
    }

    #[test]
    fn absent_functions_and_disabled_window_read_all_ones() {
        let mut p = Pci::new();
        for a in [
            addr(0, 1, 0, 0),
            addr(0, 0, 1, 0),
            addr(1, 0, 0, 0),
            addr(0, 31, 7, 0x40),
            addr(0, 0, 0, 0) & !ENABLE,
        ] {
            p.set_address(a);
            assert_eq!(read(&p, CONFIG_DATA, 4), 0xffff_ffff, "{a:#x}");
            assert_eq!(read(&p, CONFIG_DATA + 3, 1), 0xff);
            // Writes go nowhere.
            p.write(CONFIG_DATA, 0);
        }
        p.set_address(addr(0, 0, 0, 0));
        assert_eq!(read(&p, CONFIG_DATA, 4), 0x1237_8086);
    }

    #[test]
    fn read_only_registers_ignore_writes() {
        let mut p = Pci::new();
        p.set_address(addr(0, 0, 0, 0));
        for i in 0..4 {
            p.write(CONFIG_DATA + i, 0);
        }
        assert_eq!(read(&p, CONFIG_DATA, 4), 0x1237_8086);
        // Command: only bits 1 and 2 change; status is read only.
        p.set_address(addr(0, 0, 0, 4));
        for i in 0..4 {
            p.write(CONFIG_DATA + i, 0xff);
        }
        assert_eq!(read(&p, CONFIG_DATA, 4), 0x0280_0006);
        p.write(CONFIG_DATA, 0);
        assert_eq!(read(&p, CONFIG_DATA, 2), 0);
        // Latency timer: writable.
        p.set_address(addr(0, 0, 0, 0x0c));
        p.write(CONFIG_DATA + 1, 0x40);
        assert_eq!(read(&p, CONFIG_DATA, 4), 0x0000_4000);
        // PAM1 (0x5a): bits 5:4 and 1:0 only.
        p.set_address(addr(0, 0, 0, 0x58));
        p.write(CONFIG_DATA + 2, 0xff);
        assert_eq!(read(&p, CONFIG_DATA + 2, 1), 0x33);
        assert!(Pci::claims(0xcff) && !Pci::claims(0xcf8) && !Pci::claims(0xd00));
    }
}
