//! `mmu-service`: the shadow MMU (issue #3).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
