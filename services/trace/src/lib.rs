//! `trace`: the library of the trace service, what host tests can reach.
//!
//! The kernel time-stamps every exit of a traced VM into a per-CPU ring it shares read-only
//! with the service ([`abi::trace`]). The service reads the ring ([`ring`]), keeps per-VM,
//! per-reason counts and log-linear histograms of the exit-to-entry time and of the handler's
//! share ([`stats`], [`histogram`]) and answers `userlib::proto::trace` with them.
//!
//! Modules:
//! - [`histogram`]: the log-linear (HdrHistogram-style) histogram, 16 sub-buckets per power
//!   of two.
//! - [`stats`]: the per-VM, per-reason table and the rows and buckets of the protocol.
//! - [`ring`]: the reader's side of the ring: header check and draining `[tail, head)`.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod histogram;
pub mod ring;
pub mod stats;
