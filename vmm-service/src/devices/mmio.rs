//! The MMIO bus: guest-physical address ranges outside RAM mapped to device models. The MMU
//! service forwards an access outside RAM to the VMM (`reply::FORWARD`); the VMM emulates the
//! instruction ([`crate::mmio_exit`]) and each of its memory accesses that lands in a range
//! here becomes one [`MmioDevice::read`] or [`MmioDevice::write`] of the device, at the
//! offset in its range. An access no device claims entirely stops the VM.
//!
//! Adding a device: a field of [`MmioBus`] and one line in `MmioBus::devices`.
//!
//! One device lives here, as the pattern for the others: [`TestDevice`], "Umbra's MMIO test
//! device", at [`test_device::BASE`].

/// A memory-mapped device: accesses of 1, 2, 4 or 8 bytes at `offset` in its range (the bus
/// only passes accesses that lie wholly inside it).
pub trait MmioDevice {
    /// A read of `size` bytes at `offset`: the value, little-endian, in the low bytes.
    fn read(&mut self, offset: u64, size: u8) -> u64;
    /// A write of the low `size` bytes of `value` at `offset`.
    fn write(&mut self, offset: u64, size: u8, value: u64);
}

/// The devices on the bus.
#[derive(Clone, Debug, Default)]
pub struct MmioBus {
    pub test: TestDevice,
}

/// What the MMIO emulation needs of the devices: the address map and sized accesses at
/// guest-physical addresses. [`MmioBus`] is the plain bus; the VM model puts its interrupt
/// controllers in front of it ([`crate::irq::PlatformMmio`]).
pub trait Devices {
    /// Whether some device answers `gpa`.
    fn claims(&mut self, gpa: u64) -> bool;
    /// A read of `size` bytes (1, 2, 4 or 8); `None` if no device answers all of it.
    fn read(&mut self, gpa: u64, size: u8) -> Option<u64>;
    /// A write of `size` bytes; false if no device answers all of it.
    fn write(&mut self, gpa: u64, size: u8, value: u64) -> bool;
}

impl Devices for MmioBus {
    fn claims(&mut self, gpa: u64) -> bool {
        MmioBus::claims(self, gpa)
    }
    fn read(&mut self, gpa: u64, size: u8) -> Option<u64> {
        MmioBus::read(self, gpa, size)
    }
    fn write(&mut self, gpa: u64, size: u8, value: u64) -> bool {
        MmioBus::write(self, gpa, size, value)
    }
}

impl MmioBus {
    pub fn new() -> MmioBus {
        MmioBus::default()
    }

    /// Every device with its range `(base, length)`: the one list of what is where.
    fn devices(&mut self) -> [(u64, u64, &mut dyn MmioDevice); 1] {
        [(test_device::BASE, test_device::SIZE, &mut self.test)]
    }

    /// The device holding all of `[gpa, gpa + len)`, and the offset of `gpa` in it.
    fn route(&mut self, gpa: u64, len: u64) -> Option<(&mut dyn MmioDevice, u64)> {
        self.devices()
            .into_iter()
            .find(|(base, size, _)| {
                gpa >= *base && gpa - base < *size && len <= size - (gpa - base)
            })
            .map(|(base, _, d)| (d, gpa - base))
    }

    /// Whether some device's range holds guest-physical address `gpa`.
    pub fn claims(&mut self, gpa: u64) -> bool {
        self.route(gpa, 1).is_some()
    }

    /// A read of `size` (1, 2, 4 or 8) bytes at `gpa`; `None` when no device holds all of it.
    pub fn read(&mut self, gpa: u64, size: u8) -> Option<u64> {
        if !matches!(size, 1 | 2 | 4 | 8) {
            return None;
        }
        let (d, offset) = self.route(gpa, u64::from(size))?;
        Some(d.read(offset, size) & size_mask(size))
    }

    /// A write of `size` (1, 2, 4 or 8) bytes at `gpa`; `false` (nothing written) when no
    /// device holds all of it.
    pub fn write(&mut self, gpa: u64, size: u8, value: u64) -> bool {
        if !matches!(size, 1 | 2 | 4 | 8) {
            return false;
        }
        match self.route(gpa, u64::from(size)) {
            Some((d, offset)) => {
                d.write(offset, size, value & size_mask(size));
                true
            }
            None => false,
        }
    }
}

fn size_mask(size: u8) -> u64 {
    u64::MAX >> (64 - 8 * u32::from(size))
}

/// Umbra's MMIO test device: one 4 KiB page at a fixed guest-physical address, for tests of
/// the MMIO path (and a pattern for real devices). Registers, by offset:
/// - `0x000..0x100` [`test_device::STORE`]: 256 bytes of storage. A write of any width at any
///   offset stores its bytes; a read returns what was stored (zero at reset).
/// - `0x100` [`test_device::COUNT`] (read-only, 8 bytes): how many accesses the device took
///   before this read (reads and writes of any register, ignored writes included).
/// - `0x108` [`test_device::LAST`] (read-only): the access before this read, as
///   `offset | size << 16 | write << 24` ([`test_device::log_entry`]).
/// - `0x110` [`test_device::ID`] (read-only): [`test_device::MAGIC`].
///
/// Writes to the read-only registers and to the rest of the page are ignored; reads of the
/// rest of the page return 0. Reads of the read-only registers return the register's bytes at
/// that offset (a 4-byte read at `0x104` is the count's high half).
#[derive(Clone, Debug)]
pub struct TestDevice {
    store: [u8; test_device::STORE_LEN],
    count: u64,
    last: u64,
}

impl Default for TestDevice {
    fn default() -> TestDevice {
        TestDevice {
            store: [0; test_device::STORE_LEN],
            count: 0,
            last: 0,
        }
    }
}

/// The test device's layout (guests use these numbers too).
pub mod test_device {
    /// Its guest-physical address (below the IOAPIC and local APIC, above any guest RAM).
    pub const BASE: u64 = 0xfebf_0000;
    pub const SIZE: u64 = 0x1000;
    /// The storage registers.
    pub const STORE: u64 = 0x000;
    pub const STORE_LEN: usize = 0x100;
    /// Accesses so far (read-only).
    pub const COUNT: u64 = 0x100;
    /// The previous access (read-only).
    pub const LAST: u64 = 0x108;
    /// Identification (read-only).
    pub const ID: u64 = 0x110;
    /// The ID register's value: "UmbraMIO" in ASCII, little-endian.
    pub const MAGIC: u64 = u64::from_le_bytes(*b"UmbraMIO");

    /// The [`LAST`] value of an access.
    pub const fn log_entry(offset: u64, size: u8, write: bool) -> u64 {
        offset | (size as u64) << 16 | (write as u64) << 24
    }
}

impl TestDevice {
    /// The bytes of a read-only register at `offset`, if one is there.
    fn register(&self, offset: u64) -> Option<u8> {
        use test_device::*;
        let (reg, value) = match offset {
            COUNT..=0x107 => (COUNT, self.count),
            LAST..=0x10f => (LAST, self.last),
            ID..=0x117 => (ID, MAGIC),
            _ => return None,
        };
        Some(value.to_le_bytes()[(offset - reg) as usize])
    }

    fn byte(&self, offset: u64) -> u8 {
        match self.store.get(offset as usize) {
            Some(b) => *b,
            None => self.register(offset).unwrap_or(0),
        }
    }

    /// Accesses so far (what [`test_device::COUNT`] reads, without counting a read).
    pub fn read_count(&self) -> u64 {
        self.count
    }

    fn log(&mut self, offset: u64, size: u8, write: bool) {
        self.count += 1;
        self.last = test_device::log_entry(offset, size, write);
    }
}

impl MmioDevice for TestDevice {
    fn read(&mut self, offset: u64, size: u8) -> u64 {
        let v = (0..u64::from(size))
            .rev()
            .fold(0, |v, i| (v << 8) | u64::from(self.byte(offset + i)));
        self.log(offset, size, false);
        v
    }

    fn write(&mut self, offset: u64, size: u8, value: u64) {
        for (i, b) in value
            .to_le_bytes()
            .iter()
            .take(usize::from(size))
            .enumerate()
        {
            if let Some(s) = self.store.get_mut(offset as usize + i) {
                *s = *b;
            }
        }
        self.log(offset, size, true);
    }
}

#[cfg(test)]
mod tests {
    use super::test_device::*;
    use super::*;

    #[test]
    fn the_test_device_stores_counts_and_logs() {
        let mut bus = MmioBus::new();
        assert_eq!(bus.read(BASE + ID, 8), Some(MAGIC));
        assert!(bus.write(BASE + 8, 4, 0x1122_3344_5566_7788));
        assert_eq!(bus.read(BASE + 8, 8), Some(0x5566_7788), "4 bytes stored");
        assert_eq!(bus.read(BASE + 9, 2), Some(0x6677));
        assert_eq!(bus.read(BASE + COUNT, 8), Some(4));
        assert_eq!(bus.read(BASE + LAST, 8), Some(log_entry(COUNT, 8, false)));
        assert_eq!(
            bus.read(BASE + COUNT + 4, 4),
            Some(0),
            "the count's high half"
        );
        // Read-only registers ignore writes; so does the rest of the page, which reads 0.
        assert!(bus.write(BASE + COUNT, 8, 0));
        assert!(bus.write(BASE + 0x800, 8, u64::MAX));
        assert_eq!(bus.read(BASE + 0x800, 8), Some(0));
        assert_eq!(bus.read(BASE + COUNT, 8), Some(10));
        // Storage at its end: a byte of the count follows the last stored byte.
        assert!(bus.write(BASE + 0xff, 1, 0xab));
        assert_eq!(bus.read(BASE + 0xff, 2), Some(0x0cab), "12 accesses before");
    }

    #[test]
    fn accesses_outside_a_device_or_across_its_end_are_refused() {
        let mut bus = MmioBus::new();
        assert!(bus.claims(BASE) && bus.claims(BASE + SIZE - 1));
        assert!(!bus.claims(BASE - 1) && !bus.claims(BASE + SIZE));
        assert_eq!(bus.read(BASE + SIZE - 4, 8), None, "crosses the end");
        assert!(!bus.write(BASE - 2, 4, 0));
        assert_eq!(bus.read(BASE, 3), None, "not a size");
        assert_eq!(bus.read(u64::MAX, 8), None);
        assert_eq!(bus.read(BASE + SIZE - 8, 8), Some(0));
        assert_eq!(bus.test.count, 1, "refused accesses reach no device");
    }
}
