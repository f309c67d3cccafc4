//! `vmm-service`: exit decoding, device models, CPUID/MSR/CR policy, guest loaders and the
//! per-VM model that turns exit messages into replies. Host-testable: no system calls here.
//!
//! The service binary:
//! 1. loads a guest with [`loader::boot::boot_multiboot`] or [`loader::boot::boot_flat64`]
//!    into the guest RAM it mapped, and writes the returned (field, value) pairs with
//!    `VcpuState`;
//! 2. creates exit portals with [`exit::portal_mask`] for each reason it routes here;
//! 3. for each exit message: [`vm::VmModel::handle`] with an [`vm::Env`], sends
//!    `outcome.reply`, and acts on `outcome.events` ([`vm::Event`]).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod acpi;
pub mod cpuid;
pub mod cpuid_policy;
pub mod cr;
pub mod debugreg;
pub mod devices;
pub mod emulate;
pub mod exception;
pub mod exit;
pub mod guest_walk;
pub mod insn;
pub mod irq;
pub mod loader;
pub mod mmio_exit;
pub mod msr;
pub mod reboot;
pub mod report;
pub mod vm;
