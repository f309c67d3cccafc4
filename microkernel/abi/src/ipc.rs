//! The IPC message: what the kernel copies between tasks, and the fault notice it builds.

/// Largest payload the kernel copies in one message, in bytes.
pub const MAX_PAYLOAD: usize = 512;

/// Vector number reported for a task that called [`crate::Sys::Panic`].
pub const FAULT_PANIC: u64 = 0x100;

/// Vector number reported for a task that ended itself with [`crate::Sys::TaskExit`] (the
/// notice's `error_code` holds the exit code). Not a fault, but the supervisor hears of it the
/// same way.
pub const FAULT_EXIT: u64 = 0x101;

/// Label of a fault notice delivered on a fault endpoint.
pub const FAULT_LABEL: u64 = 0xfa17;

/// The fault notice the kernel delivers on a task's fault endpoint: little-endian `u64`s in
/// this order, [`FaultNotice::SIZE`] bytes. The message's badge is the fault endpoint
/// capability's badge, so the receiver knows which task it is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FaultNotice {
    /// Kernel task id.
    pub task: u64,
    /// The task's generation (given at spawn).
    pub generation: u64,
    /// Exception vector (0..31), or [`FAULT_PANIC`].
    pub vector: u64,
    /// Error code pushed by the CPU (0 when none).
    pub error_code: u64,
    /// Faulting address: CR2 for a page fault, otherwise the instruction pointer.
    pub address: u64,
    /// Instruction pointer at the fault.
    pub rip: u64,
}

impl FaultNotice {
    pub const SIZE: usize = 48;

    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        let words = [
            self.task,
            self.generation,
            self.vector,
            self.error_code,
            self.address,
            self.rip,
        ];
        for (chunk, w) in out.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Decodes a notice; `None` if the length is wrong.
    pub fn from_bytes(bytes: &[u8]) -> Option<FaultNotice> {
        if bytes.len() != Self::SIZE {
            return None;
        }
        let mut w = [0u64; 6];
        for (i, chunk) in bytes.chunks_exact(8).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            w[i] = u64::from_le_bytes(b);
        }
        Some(FaultNotice {
            task: w[0],
            generation: w[1],
            vector: w[2],
            error_code: w[3],
            address: w[4],
            rip: w[5],
        })
    }
}

/// User address-space layout every task shares.
pub mod layout {
    /// Lowest address a task may map (the first 4 MiB stay unmapped to catch null pointers).
    pub const USER_MIN: u64 = 0x40_0000;
    /// One past the highest user address (the canonical lower half).
    pub const USER_END: u64 = 0x0000_8000_0000_0000;
    /// Top of the first thread's stack; it grows down [`STACK_PAGES`] pages.
    pub const STACK_TOP: u64 = 0x0000_7fff_ff00_0000;
    pub const STACK_PAGES: u64 = 16;
}
