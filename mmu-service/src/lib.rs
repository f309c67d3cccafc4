//! `mmu-service`: the shadow MMU (issue #3).
//!
//! The vocabulary follows Linux KVM's `arch/x86/kvm/mmu`: `gva`/`gpa`/`gfn` are guest addresses,
//! `hpa` host-physical, a `gpte` is a guest page-table entry and an `spte` a shadow one, `sp` a
//! [`ShadowPage`](shadow_page) with its [`PageRole`], `root`, `prev_roots` and `pae_root`.
//!
//! The library is generic over three traits ([`GuestMemory`], [`ShadowPagePool`],
//! [`VcpuPagingState`]) so it runs unchanged in the MMU service and in host tests.
//!
//! Modules:
//! - [`ept`]: what an EPT-violation exit gets (the service maps guest RAM on demand).
//! - [`traits`]: what the service gets from outside, plus the register bits it reads.
//! - [`role`]: paging mode, the CPU role of a vCPU and the [`PageRole`] of shadow pages.
//! - [`walker`]: the guest page-table walker (2-level, PAE, 4-level), A/D bits, #PF codes.
//! - [`spte`]: the shadow entry format.
//! - [`shadow_page`]: shadow-page metadata, the (gfn, role) index, parent links, reverse maps,
//!   write tracking, zapping and the LRU used under pool pressure.
//! - [`roots`]: roots, `prev_roots`, the fast CR3 switch, `pae_root` and PAE root sets.
//! - [`fault`]: shadow page-fault handling, INVLPG, emulated writes.
//! - [`emulate`]: the instruction emulator (in `vmm-service`), for writes to guest page tables.
//! - [`shadow_exit`]: a shadow-paged vCPU's exits (#PF, CR access, INVLPG) to replies.
//! - [`mmu`]: the [`Mmu`] object, its configuration and errors, `invalidate_all`.
//! - [`stats`]: the counters.
//! - [`journal`]: what a restarted service recovers its VMs from, and fault injection.
//!
//! # Memory
//!
//! The crate uses `alloc`, but only inside [`Mmu::new`] and [`Mmu::create_vcpu`]: the per-gfn
//! tables (reverse-map heads, shadow-page hash heads, write-tracking counts; KVM keeps the same
//! per-memslot arrays) and the per-spte bookkeeping (8 bytes per spte) are sized from *runtime*
//! values, the guest RAM size and the pool size, which const generics cannot express without
//! making every caller pick them at compile time. Nothing allocates after construction, so a
//! guest can never make the service run out of heap: shadow-page pressure is handled by zapping
//! the oldest unused pages.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

/// The instruction emulator lives in `vmm-service` (it also emulates device accesses).
pub use vmm_service::emulate;
pub mod ept;
pub mod fault;
pub mod journal;
pub mod mmu;
pub mod role;
pub mod roots;
pub mod shadow_exit;
pub mod shadow_page;
pub mod spte;
pub mod stats;
pub mod traits;
pub mod walker;

pub use fault::FaultOutcome;
pub use mmu::{Error, Mmu, MmuConfig};
pub use role::{CpuRole, PageRole, PagingMode};
pub use roots::{RootInfo, Vcpu};
pub use stats::Stats;
pub use traits::{GuestMemory, MemoryError, PagingRegs, ShadowPagePool, VcpuPagingState};
pub use walker::{AccessKind, GuestWalk, PageFault, WalkOutcome};
