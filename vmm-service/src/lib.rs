//! `vmm-service`: exit decoding, device models and guest loaders for the VMM service.
//!
//! Not built yet: this arrives with VMX and the VMM service (issue #5). The crate exists so the
//! workspace has its final shape.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
