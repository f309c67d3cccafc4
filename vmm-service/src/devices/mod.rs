//! Legacy PC devices the VMM service emulates on the I/O port bus (and the MMIO bus,
//! [`mmio`]). Each device is byte-wide;
//! [`bus::PortBus`] splits wider accesses into byte accesses to consecutive ports, as the ISA
//! bus does.

pub mod bus;
pub mod cmos;
pub mod debug_exit;
pub mod fw_cfg;
pub mod ioapic;
pub mod lapic;
pub mod mmio;
pub mod pci;
pub mod pic;
pub mod pit;
pub mod pm;
pub mod reset;
pub mod serial;

/// Bytes of text carried by one console event (a serial line or a hypercall print).
pub const TEXT_MAX: usize = 256;

/// A piece of guest console output.
pub type Text = heapless::Vec<u8, TEXT_MAX>;
