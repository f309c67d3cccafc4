//! `vmm-service`: exit decoding, device models, CPUID/MSR/CR policy, guest loaders and the
//! per-VM model that turns exit messages into replies. Host-testable: no system calls here;
//! the service binary feeds [`vm::VmModel::handle`] with exit messages and an [`vm::Env`].
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod cpuid;
pub mod cr;
pub mod devices;
pub mod exit;
pub mod loader;
pub mod msr;
pub mod report;
pub mod vm;
