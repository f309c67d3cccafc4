//! QEMU's firmware configuration interface, the traditional I/O form: a 16-bit selector at
//! [`SELECTOR`] (0x510) chooses an item and resets its read offset; each byte read at
//! [`DATA`] (0x511) returns the item's next byte (0 past its end). Items:
//! - [`item::SIGNATURE`]: the bytes `QEMU`;
//! - [`item::ID`]: 1 (the traditional interface; no DMA);
//! - [`item::RAM_SIZE`]: guest RAM in bytes (64-bit little-endian);
//! - [`item::NB_CPUS`], [`item::MAX_CPUS`]: the vCPU count (16-bit little-endian);
//! - [`item::FILE_DIR`]: the file directory, empty (a 32-bit big-endian count of 0).
//!
//! Any other selector reads as 0; writes to the data port are ignored (as QEMU since 2.4).

/// Selector port (16-bit write) and data port (byte read).
pub const SELECTOR: u16 = 0x510;
pub const DATA: u16 = 0x511;

/// Item selectors.
pub mod item {
    pub const SIGNATURE: u16 = 0x0000;
    pub const ID: u16 = 0x0001;
    pub const RAM_SIZE: u16 = 0x0003;
    pub const NB_CPUS: u16 = 0x0005;
    pub const MAX_CPUS: u16 = 0x000f;
    pub const FILE_DIR: u16 = 0x0019;
}

/// The longest item (the RAM size).
const ITEM_MAX: usize = 8;

#[derive(Clone, Debug)]
pub struct FwCfg {
    ram_bytes: u64,
    cpus: u16,
    selector: u16,
    offset: usize,
}

impl FwCfg {
    /// The interface after the machine's reset: the same guest, no item selected.
    pub fn reset(&mut self) {
        *self = FwCfg::new(self.ram_bytes, self.cpus);
    }

    /// The interface of a guest with `ram_bytes` of RAM and `cpus` vCPUs.
    pub fn new(ram_bytes: u64, cpus: u16) -> FwCfg {
        FwCfg {
            ram_bytes,
            cpus,
            selector: item::SIGNATURE,
            offset: 0,
        }
    }

    pub fn claims(port: u16) -> bool {
        port == SELECTOR || port == DATA
    }

    /// Chooses item `selector` (the 16-bit selector write).
    pub fn select(&mut self, selector: u16) {
        self.selector = selector;
        self.offset = 0;
    }

    /// The bytes of item `selector` (empty for an unknown item) and their count.
    fn item(&self, selector: u16) -> ([u8; ITEM_MAX], usize) {
        let mut b = [0u8; ITEM_MAX];
        let mut put = |bytes: &[u8]| {
            b[..bytes.len()].copy_from_slice(bytes);
            bytes.len()
        };
        let n = match selector {
            item::SIGNATURE => put(b"QEMU"),
            item::ID => put(&1u32.to_le_bytes()),
            item::RAM_SIZE => put(&self.ram_bytes.to_le_bytes()),
            item::NB_CPUS | item::MAX_CPUS => put(&self.cpus.to_le_bytes()),
            item::FILE_DIR => put(&0u32.to_be_bytes()),
            _ => 0,
        };
        (b, n)
    }

    /// A byte read: the next byte of the selected item at [`DATA`], 0 at [`SELECTOR`].
    pub fn read(&mut self, port: u16) -> u8 {
        if port != DATA {
            return 0;
        }
        let (bytes, len) = self.item(self.selector);
        let b = if self.offset < len {
            bytes[self.offset]
        } else {
            0
        };
        self.offset = self.offset.saturating_add(1);
        b
    }

    /// A byte write: at [`SELECTOR`] it selects (the bus sends a 16-bit write whole to
    /// [`FwCfg::select`]); at [`DATA`] it is ignored.
    pub fn write(&mut self, port: u16, v: u8) {
        if port == SELECTOR {
            self.select(u16::from(v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_item(f: &mut FwCfg, sel: u16, n: usize) -> Vec<u8> {
        f.select(sel);
        (0..n).map(|_| f.read(DATA)).collect()
    }

    #[test]
    fn items() {
        let mut f = FwCfg::new(48 << 20, 2);
        assert_eq!(read_item(&mut f, item::SIGNATURE, 6), b"QEMU\0\0");
        assert_eq!(read_item(&mut f, item::ID, 4), [1, 0, 0, 0]);
        assert_eq!(
            read_item(&mut f, item::RAM_SIZE, 8),
            (48u64 << 20).to_le_bytes()
        );
        assert_eq!(read_item(&mut f, item::NB_CPUS, 3), [2, 0, 0]);
        assert_eq!(read_item(&mut f, item::MAX_CPUS, 2), [2, 0]);
        assert_eq!(read_item(&mut f, item::FILE_DIR, 4), [0, 0, 0, 0]);
        assert_eq!(read_item(&mut f, 0x4242, 4), [0, 0, 0, 0]);
        assert_eq!(read_item(&mut f, 0xffff, 2), [0, 0]);
        // Reselecting starts the item again; a byte write to the selector selects too.
        f.select(item::SIGNATURE);
        assert_eq!(f.read(DATA), b'Q');
        f.write(SELECTOR, item::SIGNATURE as u8);
        assert_eq!(f.read(DATA), b'Q');
        assert_eq!(f.read(DATA), b'E');
        // Data writes are ignored; the selector port reads 0.
        f.write(DATA, 0x55);
        assert_eq!(f.read(DATA), b'M');
        assert_eq!(f.read(SELECTOR), 0);
    }
}
