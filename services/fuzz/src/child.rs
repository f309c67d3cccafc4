//! The hostile child: a task of its own (spawned by the fuzzer from its own boot module) that
//! executes the syscalls the fuzzer orders, one at a time, and reports each result. It holds
//! no state worth keeping: any call may end it (`TaskExit`, a fault of a thread it created,
//! deleting its report capability), and the fuzzer then spawns the next one.
//!
//! Capabilities (granted by the fuzzer): slot 2 = the fuzzer's child endpoint (send, grant,
//! badged), 3 = a read-only copy of the fuzzer's canary memory object.
//!
//! Pointer arguments point into scratch memory in [`sys::HOSTILE_SCRATCH`] (one read-write
//! region, an unmapped gap, one read-only page), never into memory Rust code uses.

use abi::cap::slot;
use abi::{CapSlot, Rights};
use userlib::sys::{self, HOSTILE_SCRATCH};

/// The fuzzer's endpoint, as the child holds it.
pub const REPORT: CapSlot = slot::FIRST_GRANTED;
/// The fuzzer's canary memory object (read-only).
pub const CANARY: CapSlot = slot::FIRST_GRANTED + 1;
/// Label of a result report (child → fuzzer).
pub const REPORT_LABEL: u64 = 0xf022_0001;
/// Label of an order (fuzzer → child): the syscall number and its six arguments.
pub const ORDER_LABEL: u64 = 0xf022_0002;
/// Read-write scratch: pages at the start of [`HOSTILE_SCRATCH`].
pub const SCRATCH_RW: u64 = HOSTILE_SCRATCH.start;
pub const SCRATCH_RW_PAGES: u64 = 2;
/// Read-only scratch page, after a one-page unmapped gap.
pub const SCRATCH_RO: u64 = SCRATCH_RW + (SCRATCH_RW_PAGES + 1) * 4096;
/// Bytes of a report: sequence, `rax`, four result registers (u64, little endian).
pub const REPORT_LEN: usize = 48;
/// Bytes of an order: sequence, number, six arguments.
pub const ORDER_LEN: usize = 64;
/// `rax` of a report the child could not issue (an argument could reach its own memory).
pub const REFUSED: u64 = u64::MAX;

/// Runs orders until the fuzzer stops answering or a call ends the task.
pub fn run() -> ! {
    if map_scratch().is_err() {
        sys::task_exit(3);
    }
    let mut report = [0u64; 6];
    let mut buf = [0u8; ORDER_LEN];
    loop {
        for (i, v) in report.iter().enumerate() {
            buf[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        match sys::call(REPORT, &mut buf, REPORT_LEN, REPORT_LABEL, None) {
            Ok(r) if r.label == ORDER_LABEL && r.len == ORDER_LEN => {}
            // The report capability is gone (a fuzzed CapDelete) or the fuzzer said stop.
            _ => sys::task_exit(4),
        }
        let word =
            |i: usize| u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        let seq = word(0);
        let nr = word(1);
        let args = [word(2), word(3), word(4), word(5), word(6), word(7)];
        report = match sys::hostile_syscall(nr, args) {
            Some((rax, ret)) => [seq, rax, ret[0], ret[1], ret[2], ret[3]],
            None => [seq, REFUSED, 0, 0, 0, 0],
        };
    }
}

/// Maps the scratch regions and drops their capabilities (so no fuzzed call can unmap them).
fn map_scratch() -> Result<(), abi::Error> {
    let rw = sys::mem_alloc(SCRATCH_RW_PAGES)?;
    sys::mem_map(rw, SCRATCH_RW, Rights::READ | Rights::WRITE)?;
    sys::cap_delete(rw)?;
    let ro = sys::mem_alloc(1)?;
    sys::mem_map(ro, SCRATCH_RO, Rights::READ)?;
    sys::cap_delete(ro)
}
