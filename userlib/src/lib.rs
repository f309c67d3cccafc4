//! `userlib`: the user-level runtime every service links against.
//!
//! Not built yet: `_start`, syscall wrappers, IPC helpers and `userlib::proto` arrive with
//! user-level tasks and IPC (issue #4). The crate exists so the workspace has its final shape.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod client;
pub mod codec;
pub mod proto;
pub mod server;
