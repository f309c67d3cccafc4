//! The ACPI tables the VMM writes into guest RAM when it loads a guest (Multiboot and flat
//! 64-bit images alike), in the BIOS area [`AREA_START`]..[`AREA_END`] where an OS searches
//! for the RSDP (the multiboot memory map reserves the whole area):
//!
//! - RSDP (ACPI 2.0+, 36 bytes) at [`AREA_START`], pointing at the RSDT and the XSDT;
//! - FACS (64 bytes, 64-byte aligned);
//! - RSDT (32-bit entries) and XSDT (64-bit entries): the FADT, then the MADT;
//! - FADT (revision 6, 276 bytes): the SCI (IRQ [`pm::SCI_IRQ`]), the PM1a event and control
//!   blocks and the PM timer ([`crate::devices::pm`], 24-bit: TMR_VAL_EXT clear), no SMI
//!   command port (ACPI mode from reset: SCI_EN reads 1), the reset register (the Reset
//!   Control Register at 0xCF9, value [`reset::RESET_VALUE`], [`crate::devices::reset`]),
//!   the FACS and DSDT in both the 32-bit and 64-bit fields, IA-PC boot flags: legacy devices
//!   (the PIC, PIT, CMOS, COM1), no VGA;
//! - DSDT: one AML object, `Name (_S5, Package () { SLP_TYP_S5, SLP_TYP_S5, 0, 0 })`, so an
//!   OS knows the SLP_TYP that powers off ([`pm::SLP_TYP_S5`]);
//! - MADT: the local APIC address [`LAPIC_BASE`], PCAT_COMPAT (8259s present), one enabled
//!   local APIC per vCPU (processor UID and APIC ID = the vCPU index), the IOAPIC
//!   ([`IOAPIC_BASE`], ID [`IOAPIC_ID`], GSI base 0), the interrupt source overrides ISA IRQ0
//!   → GSI 2 (bus default polarity and trigger) and IRQ9 (the SCI) → GSI 9 level-triggered,
//!   active high, and LINT1 of every processor as NMI.
//!
//! Every table's checksum makes its bytes sum to 0 mod 256; the RSDP has both its ACPI 1.0
//! checksum (first 20 bytes) and its extended checksum (all 36).

use crate::devices::{pm, reset};
use crate::loader::LoadError;

/// The BIOS area the RSDP is searched in (its first 16-byte boundaries).
pub const AREA_START: u64 = 0xe_0000;
pub const AREA_END: u64 = 0x10_0000;
/// Where the local APICs and the IOAPIC are.
pub const LAPIC_BASE: u32 = 0xfee0_0000;
pub const IOAPIC_BASE: u32 = 0xfec0_0000;
/// The IOAPIC's ID (as QEMU's).
pub const IOAPIC_ID: u8 = 0;
/// Most vCPUs the MADT describes (xAPIC IDs 0..=254; 255 is the broadcast ID).
pub const MAX_CPUS: usize = 255;

/// OEM fields of every table.
const OEM_ID: &[u8; 6] = b"UMBRA ";
const OEM_TABLE_ID: &[u8; 8] = b"UMBRAVM ";
const CREATOR_ID: &[u8; 4] = b"UMBR";

const HEADER_LEN: usize = 36;
const RSDP_LEN: usize = 36;
const FACS_LEN: usize = 64;
const FADT_LEN: usize = 276;
const FADT_REVISION: u8 = 6;
const FADT_MINOR: u8 = 5;

/// MADT entry sizes.
const MADT_LAPIC_LEN: usize = 8;
const MADT_IOAPIC_LEN: usize = 12;
const MADT_OVERRIDE_LEN: usize = 10;
const MADT_LAPIC_NMI_LEN: usize = 6;
/// Interrupt source overrides: (ISA IRQ, GSI, MPS INTI flags).
pub const OVERRIDES: [(u8, u32, u16); 2] = [
    (0, 2, 0),
    // Active high (01), level-triggered (11 << 2).
    (pm::SCI_IRQ, pm::SCI_IRQ as u32, 0x000d),
];

/// FADT flags: WBINVD works, C1 supported, the power button is not a fixed feature, no
/// sleep button, the reset register is supported.
const FADT_FLAGS: u32 = (1 << 0) | (1 << 2) | (1 << 4) | (1 << 5) | (1 << 10);
/// IA-PC boot architecture flags: LEGACY_DEVICES; VGA not present (bit 2).
const IAPC_BOOT_ARCH: u16 = (1 << 0) | (1 << 2);

/// The DSDT's AML: `Name (_S5_, Package (4) { S5, S5, Zero, Zero })` (NameOp, the name,
/// PackageOp, PkgLength 8, NumElements 4, BytePrefix S5 twice, ZeroOp twice).
const DSDT_AML: [u8; 14] = [
    0x08,
    b'_',
    b'S',
    b'5',
    b'_',
    0x12,
    0x08,
    0x04,
    0x0a,
    pm::SLP_TYP_S5,
    0x0a,
    pm::SLP_TYP_S5,
    0x00,
    0x00,
];

/// Where each table went (guest-physical addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub rsdp: u64,
    pub facs: u64,
    pub rsdt: u64,
    pub xsdt: u64,
    pub fadt: u64,
    pub madt: u64,
    pub dsdt: u64,
    /// The first byte after the last table.
    pub end: u64,
}

/// Bytes of the MADT for `cpus` vCPUs.
fn madt_len(cpus: usize) -> usize {
    HEADER_LEN
        + 8
        + cpus * MADT_LAPIC_LEN
        + MADT_IOAPIC_LEN
        + OVERRIDES.len() * MADT_OVERRIDE_LEN
        + MADT_LAPIC_NMI_LEN
}

fn align(v: usize, a: usize) -> usize {
    v.div_ceil(a) * a
}

impl Layout {
    /// The placement for `cpus` vCPUs, from [`AREA_START`].
    pub fn new(cpus: usize) -> Layout {
        let at = |off: usize| AREA_START + off as u64;
        let facs = align(RSDP_LEN, 64);
        let rsdt = align(facs + FACS_LEN, 16);
        let xsdt = align(rsdt + HEADER_LEN + 2 * 4, 16);
        let fadt = align(xsdt + HEADER_LEN + 2 * 8, 16);
        let madt = align(fadt + FADT_LEN, 16);
        let dsdt = align(madt + madt_len(cpus), 16);
        let end = dsdt + HEADER_LEN + DSDT_AML.len();
        Layout {
            rsdp: AREA_START,
            facs: at(facs),
            rsdt: at(rsdt),
            xsdt: at(xsdt),
            fadt: at(fadt),
            madt: at(madt),
            dsdt: at(dsdt),
            end: at(end),
        }
    }
}

/// A table being written: little-endian fields at offsets from its start.
struct Table<'a>(&'a mut [u8]);

impl Table<'_> {
    fn bytes(&mut self, at: usize, b: &[u8]) {
        self.0[at..at + b.len()].copy_from_slice(b);
    }
    fn u8(&mut self, at: usize, v: u8) {
        self.0[at] = v;
    }
    fn u16(&mut self, at: usize, v: u16) {
        self.bytes(at, &v.to_le_bytes());
    }
    fn u32(&mut self, at: usize, v: u32) {
        self.bytes(at, &v.to_le_bytes());
    }
    fn u64(&mut self, at: usize, v: u64) {
        self.bytes(at, &v.to_le_bytes());
    }
    /// A Generic Address Structure for `len` bytes of I/O ports at `port`.
    fn io_gas(&mut self, at: usize, port: u16, len: u8) {
        // Address space 1 (system I/O), bit width, bit offset 0, access size (1 byte ..
        // 3 dword), address.
        let access = match len {
            1 => 1,
            2 => 2,
            _ => 3,
        };
        self.bytes(at, &[1, len * 8, 0, access]);
        self.u64(at + 4, u64::from(port));
    }
    /// The standard header (checksum left 0).
    fn header(&mut self, signature: &[u8; 4], revision: u8) {
        let len = self.0.len() as u32;
        self.bytes(0, signature);
        self.u32(4, len);
        self.u8(8, revision);
        self.bytes(10, OEM_ID);
        self.bytes(16, OEM_TABLE_ID);
        self.u32(24, 1);
        self.bytes(28, CREATOR_ID);
        self.u32(32, 1);
    }
    /// Sets the byte at `at` so that the first `len` bytes sum to 0.
    fn checksum(&mut self, at: usize, len: usize) {
        self.0[at] = 0;
        let sum = self.0[..len].iter().fold(0u8, |s, b| s.wrapping_add(*b));
        self.0[at] = sum.wrapping_neg();
    }
}

/// Writes the tables for `cpus` vCPUs into `ram` (guest RAM from GPA 0); the area is zeroed
/// first. An error changes nothing.
pub fn write_tables(ram: &mut [u8], cpus: usize) -> Result<Layout, LoadError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(LoadError::BadCpuCount);
    }
    let l = Layout::new(cpus);
    let area = ram
        .get_mut(AREA_START as usize..AREA_END as usize)
        .ok_or(LoadError::RamTooSmall)?;
    area.fill(0);
    let off = |gpa: u64| (gpa - AREA_START) as usize;
    // Addresses below 1 MiB: they fit the 32-bit fields.
    let a32 = |gpa: u64| gpa as u32;

    // RSDP.
    {
        let mut t = Table(&mut area[off(l.rsdp)..off(l.rsdp) + RSDP_LEN]);
        t.bytes(0, b"RSD PTR ");
        t.bytes(9, OEM_ID);
        t.u8(15, 2);
        t.u32(16, a32(l.rsdt));
        t.u32(20, RSDP_LEN as u32);
        t.u64(24, l.xsdt);
        t.checksum(8, 20);
        t.checksum(32, RSDP_LEN);
    }
    // FACS: signature, length, version 2; no checksum.
    {
        let mut t = Table(&mut area[off(l.facs)..off(l.facs) + FACS_LEN]);
        t.bytes(0, b"FACS");
        t.u32(4, FACS_LEN as u32);
        t.u8(32, 2);
    }
    let entries = [l.fadt, l.madt];
    {
        let len = HEADER_LEN + entries.len() * 4;
        let mut t = Table(&mut area[off(l.rsdt)..off(l.rsdt) + len]);
        t.header(b"RSDT", 1);
        for (i, e) in entries.iter().enumerate() {
            t.u32(HEADER_LEN + 4 * i, a32(*e));
        }
        t.checksum(9, len);
    }
    {
        let len = HEADER_LEN + entries.len() * 8;
        let mut t = Table(&mut area[off(l.xsdt)..off(l.xsdt) + len]);
        t.header(b"XSDT", 1);
        for (i, e) in entries.iter().enumerate() {
            t.u64(HEADER_LEN + 8 * i, *e);
        }
        t.checksum(9, len);
    }
    {
        let mut t = Table(&mut area[off(l.fadt)..off(l.fadt) + FADT_LEN]);
        t.header(b"FACP", FADT_REVISION);
        t.u32(36, a32(l.facs));
        t.u32(40, a32(l.dsdt));
        t.u16(46, u16::from(pm::SCI_IRQ));
        // SMI_CMD 0: no ACPI enable/disable handshake.
        t.u32(56, u32::from(pm::PM1A_EVT));
        t.u32(64, u32::from(pm::PM1A_CNT));
        t.u32(76, u32::from(pm::PM_TMR));
        t.u8(88, pm::PM1_EVT_LEN);
        t.u8(89, pm::PM1_CNT_LEN);
        t.u8(91, pm::PM_TMR_LEN);
        // C2 and C3 not supported (latencies above 100 and 1000 µs).
        t.u16(96, 101);
        t.u16(98, 1001);
        t.u16(109, IAPC_BOOT_ARCH);
        t.u32(112, FADT_FLAGS);
        t.io_gas(116, reset::RESET_CONTROL, 1);
        t.u8(128, reset::RESET_VALUE);
        t.u8(131, FADT_MINOR);
        t.u64(132, l.facs);
        t.u64(140, l.dsdt);
        t.io_gas(148, pm::PM1A_EVT, pm::PM1_EVT_LEN);
        t.io_gas(172, pm::PM1A_CNT, pm::PM1_CNT_LEN);
        t.io_gas(208, pm::PM_TMR, pm::PM_TMR_LEN);
        t.checksum(9, FADT_LEN);
    }
    {
        let len = madt_len(cpus);
        let mut t = Table(&mut area[off(l.madt)..off(l.madt) + len]);
        t.header(b"APIC", 5);
        t.u32(36, LAPIC_BASE);
        t.u32(40, 1); // PCAT_COMPAT
        let mut at = HEADER_LEN + 8;
        for cpu in 0..cpus {
            // Type 0: processor UID, APIC ID, flags (enabled).
            t.bytes(at, &[0, MADT_LAPIC_LEN as u8, cpu as u8, cpu as u8]);
            t.u32(at + 4, 1);
            at += MADT_LAPIC_LEN;
        }
        // Type 1: IOAPIC ID, reserved, address, GSI base.
        t.bytes(at, &[1, MADT_IOAPIC_LEN as u8, IOAPIC_ID, 0]);
        t.u32(at + 4, IOAPIC_BASE);
        t.u32(at + 8, 0);
        at += MADT_IOAPIC_LEN;
        for (irq, gsi, flags) in OVERRIDES {
            // Type 2: bus 0 (ISA), source IRQ, GSI, flags.
            t.bytes(at, &[2, MADT_OVERRIDE_LEN as u8, 0, irq]);
            t.u32(at + 4, gsi);
            t.u16(at + 8, flags);
            at += MADT_OVERRIDE_LEN;
        }
        // Type 4: every processor (UID 0xFF), flags 0 (bus default), LINT1.
        t.bytes(at, &[4, MADT_LAPIC_NMI_LEN as u8, 0xff, 0, 0, 1]);
        t.checksum(9, len);
    }
    {
        let len = HEADER_LEN + DSDT_AML.len();
        let mut t = Table(&mut area[off(l.dsdt)..off(l.dsdt) + len]);
        t.header(b"DSDT", 2);
        t.bytes(HEADER_LEN, &DSDT_AML);
        t.checksum(9, len);
    }
    Ok(l)
}

#[cfg(test)]
mod tests;
