//! `userlib`: the user-level runtime every service links against.
//!
//! `sys`: the syscalls (raw and typed) and `print!`/`println!`; `rt`: the entry point
//! (`userlib::entry!`) and the panic handler; `manifest`: the boot manifest lines the
//! supervisor reads; `wiring`: a service's capabilities by name.
#![cfg_attr(not(test), no_std)]
// `unsafe` is allowed only in `sys` (the `syscall` instruction and what the kernel does with
// the memory it is given); every other module is safe code.
#![deny(unsafe_code)]

pub mod client;
pub mod codec;
pub mod ipc;
pub mod kept;
pub mod manifest;
pub mod proto;
pub mod rt;
pub mod server;
pub mod suite;
#[allow(unsafe_code)]
pub mod sys;
pub mod wiring;
#[allow(unsafe_code)]
pub mod xregs;
