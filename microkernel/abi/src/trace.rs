//! The exit trace ring: the kernel's record of every exit of a traced VM, shared read-only
//! with the trace service (`services/trace`).
//!
//! One ring per CPU, a memory object the kernel allocates at boot: a header page, then
//! [`CAPACITY`] records of [`RECORD_SIZE`] bytes. The kernel is the only writer (single
//! producer); the trace service reads records `[tail, head)` and acknowledges them with
//! [`crate::Sys::TraceAck`]. The kernel never writes a record the reader has not acknowledged:
//! when `head - tail` reaches the capacity it drops the record and counts it (`dropped`),
//! so the exit path never waits for the reader. When the unread records reach
//! [`WAKE_AT`], the kernel signals the notification bound with [`crate::Sys::TraceAttach`]
//! once (again after the next acknowledgement).
//!
//! Every integer is little-endian. Header, at offset 0 of the ring:
//!
//! | offset | type | field |
//! | --- | --- | --- |
//! | 0 | u32 | [`MAGIC`] |
//! | 4 | u16 | [`VERSION`] |
//! | 6 | u16 | [`RECORD_SIZE`] |
//! | 8 | u32 | capacity in records ([`CAPACITY`]) |
//! | 12 | u32 | the CPU this ring belongs to |
//! | 16 | u64 | `head`: records written since boot (record `n` is at slot `n % capacity`) |
//! | 24 | u64 | `dropped`: records dropped since boot because the ring was full |
//! | 32 | u64 | `tail`: the reader's last acknowledged `head` |
//!
//! A record ([`Record`]), at `RECORDS_OFFSET + slot * RECORD_SIZE`:
//!
//! | offset | type | field |
//! | --- | --- | --- |
//! | 0 | u32 | `vm`: the VM's trace id ([`crate::Sys::VmTrace`] returns it) |
//! | 4 | u32 | `vcpu`: the vCPU's id (as in its exit messages) |
//! | 8 | u32 | `reason`: the full exit reason |
//! | 12 | u32 | `flags` ([`flags`]) |
//! | 16 | u64 | `qualification`: the exit qualification |
//! | 24 | u64 | `t_exit`: TSC at the VM exit |
//! | 32 | u64 | `t_recv`: TSC when the handler received the exit message (0: no handler) |
//! | 40 | u64 | `t_reply`: TSC when the handler's reply arrived (0: no handler, or no reply) |
//! | 48 | u64 | `t_entry`: TSC at the VM entry that followed (0: none, see [`flags::STOPPED`]) |
//! | 56 | u64 | reserved (0) |
#![forbid(unsafe_code)]

/// `"UTRC"`.
pub const MAGIC: u32 = u32::from_le_bytes(*b"UTRC");
pub const VERSION: u16 = 1;
/// Bytes of one record.
pub const RECORD_SIZE: usize = 64;
/// Pages of records (after the header page).
pub const RECORD_PAGES: usize = 64;
/// Records in one ring.
pub const CAPACITY: usize = RECORD_PAGES * 4096 / RECORD_SIZE;
/// Where the records start (the header has a page of its own).
pub const RECORDS_OFFSET: usize = 4096;
/// Pages of one ring (header and records): the size of the memory object.
pub const RING_PAGES: usize = 1 + RECORD_PAGES;
/// Unread records at which the kernel wakes the reader.
pub const WAKE_AT: usize = CAPACITY / 4;

/// Byte offsets of the header fields.
pub mod header {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 4;
    pub const RECORD_SIZE: usize = 6;
    pub const CAPACITY: usize = 8;
    pub const CPU: usize = 12;
    pub const HEAD: usize = 16;
    pub const DROPPED: usize = 24;
    pub const TAIL: usize = 32;
    /// Bytes of the header.
    pub const SIZE: usize = 40;
}

/// Bits of [`Record::flags`].
pub mod flags {
    /// The kernel answered the exit itself (host interrupt, end of slice, reflected
    /// CPUID/VMCALL/I/O): no handler stamps.
    pub const KERNEL: u32 = 1 << 0;
    /// No VM entry followed: the exit stopped the vCPU (its `t_entry` is 0).
    pub const STOPPED: u32 = 1 << 1;
}

/// One exit, as the kernel records it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub vm: u32,
    pub vcpu: u32,
    pub reason: u32,
    pub flags: u32,
    pub qualification: u64,
    pub t_exit: u64,
    pub t_recv: u64,
    pub t_reply: u64,
    pub t_entry: u64,
}

impl Record {
    /// The record's bytes ([`RECORD_SIZE`] of them, the layout above).
    pub fn encode(&self) -> [u8; RECORD_SIZE] {
        let mut b = [0u8; RECORD_SIZE];
        b[0..4].copy_from_slice(&self.vm.to_le_bytes());
        b[4..8].copy_from_slice(&self.vcpu.to_le_bytes());
        b[8..12].copy_from_slice(&self.reason.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        for (i, v) in [
            self.qualification,
            self.t_exit,
            self.t_recv,
            self.t_reply,
            self.t_entry,
        ]
        .into_iter()
        .enumerate()
        {
            b[16 + 8 * i..24 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// The record as the eight little-endian u64 words of its layout (how the kernel writes
    /// it: eight stores).
    pub fn words(&self) -> [u64; RECORD_SIZE / 8] {
        [
            u64::from(self.vm) | u64::from(self.vcpu) << 32,
            u64::from(self.reason) | u64::from(self.flags) << 32,
            self.qualification,
            self.t_exit,
            self.t_recv,
            self.t_reply,
            self.t_entry,
            0,
        ]
    }

    /// A record from its bytes; `None` when fewer than [`RECORD_SIZE`] are given.
    pub fn decode(b: &[u8]) -> Option<Record> {
        let b = b.get(..RECORD_SIZE)?;
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(w)
        };
        Some(Record {
            vm: u32_at(0),
            vcpu: u32_at(4),
            reason: u32_at(8),
            flags: u32_at(12),
            qualification: u64_at(16),
            t_exit: u64_at(24),
            t_recv: u64_at(32),
            t_reply: u64_at(40),
            t_entry: u64_at(48),
        })
    }

    /// The basic exit reason (bits 0..16).
    pub fn basic_reason(&self) -> u16 {
        self.reason as u16
    }

    /// Cycles from the exit to the entry that followed; `None` when no entry followed.
    pub fn total(&self) -> Option<u64> {
        (self.t_entry != 0).then(|| self.t_entry.saturating_sub(self.t_exit))
    }

    /// Cycles the handler held the exit (receive to reply); `None` without a handler.
    pub fn handler(&self) -> Option<u64> {
        (self.t_recv != 0 && self.t_reply != 0).then(|| self.t_reply.saturating_sub(self.t_recv))
    }
}

/// Byte offset of slot `slot`'s record in the ring.
pub const fn record_offset(slot: usize) -> usize {
    RECORDS_OFFSET + slot * RECORD_SIZE
}

#[cfg(test)]
mod tests {
    use super::*;

    // The header fits its page, and the records fill theirs exactly.
    const _: () = assert!(header::SIZE <= RECORDS_OFFSET);
    const _: () = assert!(record_offset(CAPACITY) == RING_PAGES * 4096);
    const _: () = assert!(4096 % RECORD_SIZE == 0);

    #[test]
    fn record_round_trip_and_bytes() {
        let r = Record {
            vm: 7,
            vcpu: 1,
            reason: 10,
            flags: flags::KERNEL,
            qualification: 0x1122,
            t_exit: 100,
            t_recv: 150,
            t_reply: 400,
            t_entry: 500,
        };
        let b = r.encode();
        assert_eq!(&b[0..4], &[7, 0, 0, 0]);
        assert_eq!(&b[8..12], &[10, 0, 0, 0]);
        assert_eq!(&b[24..32], &100u64.to_le_bytes());
        assert_eq!(&b[56..64], &[0; 8]);
        assert_eq!(Record::decode(&b), Some(r));
        let from_words: std::vec::Vec<u8> =
            r.words().iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(from_words, b, "the words are the bytes");
        assert_eq!(Record::decode(&b[..63]), None);
        assert_eq!(r.total(), Some(400));
        assert_eq!(r.handler(), Some(250));
        let stopped = Record {
            t_entry: 0,
            t_recv: 0,
            ..r
        };
        assert_eq!((stopped.total(), stopped.handler()), (None, None));
    }
}
