//! The host-testable half of the Umbra microkernel: everything that is pure logic over boot data.
//!
//! The kernel binary (`main.rs`) is a thin layer of CPU and loader glue over these modules; this
//! library has no `unsafe` and runs its tests on the host (`cargo test -p microkernel`).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod bootinfo;
pub mod cmdline;
pub mod fbtext;
pub mod frame_alloc;
pub mod kobj;
pub mod limine_protocol;
pub mod memmap;
pub mod vmx_caps;

/// Size of a small page and of a physical frame.
pub const PAGE_SIZE: u64 = 4096;
