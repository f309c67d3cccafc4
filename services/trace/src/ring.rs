//! The reader's side of the kernel's exit trace ring ([`abi::trace`] has the layout): check
//! the header, read `head`, `dropped` and `tail`, and hand the records `[from, head)` over.
//!
//! The kernel writes a slot only after the reader acknowledged it, so the records between
//! the reader's tail and the `head` it read are stable while it reads them. A `head` more
//! than a ring's worth ahead of the reader (which the kernel never writes) or behind it is an
//! error, not a reason to read garbage.
#![forbid(unsafe_code)]

use abi::trace::{self, header, Record, CAPACITY, MAGIC, RECORD_SIZE, VERSION};

/// What is wrong with a ring image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// Fewer bytes than a whole ring ([`trace::RING_PAGES`] pages).
    TooShort {
        len: usize,
    },
    BadMagic {
        found: u32,
    },
    BadVersion {
        found: u16,
    },
    BadRecordSize {
        found: u16,
    },
    BadCapacity {
        found: u32,
    },
    /// The reader's position is past the ring's `head`.
    AheadOfHead {
        from: u64,
        head: u64,
    },
    /// `head` is more than [`CAPACITY`] records past the reader's position: records it had
    /// not read were overwritten (the kernel never does this).
    Overrun {
        from: u64,
        head: u64,
    },
}

/// Bytes of a whole ring.
pub const RING_BYTES: usize = trace::RING_PAGES * 4096;

fn u16_at(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes([bytes[offset], bytes[offset + 1]])
}

fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(b)
}

/// A ring image (the mapped ring, or a copy of it).
#[derive(Clone, Copy, Debug)]
pub struct RingView<'a>(pub &'a [u8]);

impl<'a> RingView<'a> {
    /// The image is a whole ring with the header this reader understands. The getters below
    /// read the header fields of a checked view (they panic on an image shorter than the
    /// header).
    pub fn check(&self) -> Result<(), RingError> {
        let bytes = self.0;
        if bytes.len() < RING_BYTES {
            return Err(RingError::TooShort { len: bytes.len() });
        }
        check_header(bytes)
    }

    /// The CPU the ring belongs to.
    pub fn cpu(&self) -> u32 {
        u32_at(self.0, header::CPU)
    }

    /// Records written since boot.
    pub fn head(&self) -> u64 {
        u64_at(self.0, header::HEAD)
    }

    /// Records dropped since boot because the ring was full.
    pub fn dropped(&self) -> u64 {
        u64_at(self.0, header::DROPPED)
    }

    /// The last position the reader acknowledged.
    pub fn tail(&self) -> u64 {
        u64_at(self.0, header::TAIL)
    }

    /// Record number `n` (at slot `n % CAPACITY`).
    fn record(&self, n: u64) -> Record {
        let offset = trace::record_offset((n % CAPACITY as u64) as usize);
        // A checked image holds every slot, so the decode always has its bytes.
        Record::decode(&self.0[offset..offset + RECORD_SIZE]).unwrap_or_default()
    }

    /// Hands the records `[from, head)` to `sink` in order and returns `head` (the reader's
    /// next `from`, and what it acknowledges). Nothing reaches `sink` on an error.
    pub fn drain(&self, from: u64, mut sink: impl FnMut(Record)) -> Result<u64, RingError> {
        self.check()?;
        let head = self.head();
        if from > head {
            return Err(RingError::AheadOfHead { from, head });
        }
        if head - from > CAPACITY as u64 {
            return Err(RingError::Overrun { from, head });
        }
        for n in from..head {
            sink(self.record(n));
        }
        Ok(head)
    }
}

/// [`RingView::drain`] over `bytes`.
pub fn drain(bytes: &[u8], from: u64, sink: impl FnMut(Record)) -> Result<u64, RingError> {
    RingView(bytes).drain(from, sink)
}

/// Checks a ring header (at least [`header::SIZE`] bytes) against the layout this reader
/// understands.
pub fn check_header(bytes: &[u8]) -> Result<(), RingError> {
    if bytes.len() < header::SIZE {
        return Err(RingError::TooShort { len: bytes.len() });
    }
    let found = u32_at(bytes, header::MAGIC);
    if found != MAGIC {
        return Err(RingError::BadMagic { found });
    }
    let found = u16_at(bytes, header::VERSION);
    if found != VERSION {
        return Err(RingError::BadVersion { found });
    }
    let found = u16_at(bytes, header::RECORD_SIZE);
    if usize::from(found) != RECORD_SIZE {
        return Err(RingError::BadRecordSize { found });
    }
    let found = u32_at(bytes, header::CAPACITY);
    if found as usize != CAPACITY {
        return Err(RingError::BadCapacity { found });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;
    use proptest::prelude::*;

    /// A ring image with a valid header, `head` records written, record `n` having
    /// `vm = n as u32` and `t_exit = n`.
    fn ring(head: u64, dropped: u64) -> Vec<u8> {
        let mut b = vec![0u8; RING_BYTES];
        b[header::MAGIC..header::MAGIC + 4].copy_from_slice(&MAGIC.to_le_bytes());
        b[header::VERSION..header::VERSION + 2].copy_from_slice(&VERSION.to_le_bytes());
        b[header::RECORD_SIZE..header::RECORD_SIZE + 2]
            .copy_from_slice(&(RECORD_SIZE as u16).to_le_bytes());
        b[header::CAPACITY..header::CAPACITY + 4].copy_from_slice(&(CAPACITY as u32).to_le_bytes());
        b[header::CPU..header::CPU + 4].copy_from_slice(&3u32.to_le_bytes());
        b[header::HEAD..header::HEAD + 8].copy_from_slice(&head.to_le_bytes());
        b[header::DROPPED..header::DROPPED + 8].copy_from_slice(&dropped.to_le_bytes());
        let tail = head.saturating_sub(CAPACITY as u64);
        b[header::TAIL..header::TAIL + 8].copy_from_slice(&tail.to_le_bytes());
        for n in tail..head {
            let offset = trace::record_offset((n % CAPACITY as u64) as usize);
            let r = Record {
                vm: n as u32,
                reason: 30,
                t_exit: n,
                t_entry: n + 100,
                ..Record::default()
            };
            b[offset..offset + RECORD_SIZE].copy_from_slice(&r.encode());
        }
        b
    }

    fn collect(bytes: &[u8], from: u64) -> Result<(u64, Vec<u64>), RingError> {
        let mut seen = Vec::new();
        let head = drain(bytes, from, |r| seen.push(r.t_exit))?;
        Ok((head, seen))
    }

    #[test]
    fn header_fields() {
        let b = ring(10, 4);
        let view = RingView(&b);
        assert_eq!(view.check(), Ok(()));
        assert_eq!(
            (view.cpu(), view.head(), view.dropped(), view.tail()),
            (3, 10, 4, 0)
        );
    }

    #[test]
    fn drains_from_the_reader_position_to_head() {
        let b = ring(10, 0);
        assert_eq!(collect(&b, 0), Ok((10, (0..10).collect())));
        assert_eq!(collect(&b, 7), Ok((10, vec![7, 8, 9])));
        assert_eq!(collect(&b, 10), Ok((10, vec![])));
        assert_eq!(collect(&ring(0, 0), 0), Ok((0, vec![])));
    }

    #[test]
    fn drains_across_the_wrap() {
        let head = 3 * CAPACITY as u64 + 5;
        let b = ring(head, 0);
        let from = head - 20;
        let (new_head, seen) = collect(&b, from).unwrap();
        assert_eq!(new_head, head);
        assert_eq!(seen, (from..head).collect::<Vec<_>>());
        // A whole ring's worth is the most that can be unread.
        let from = head - CAPACITY as u64;
        let (_, seen) = collect(&b, from).unwrap();
        assert_eq!(seen.len(), CAPACITY);
        assert_eq!(seen.first(), Some(&from));
    }

    #[test]
    fn positions_outside_the_ring_are_errors() {
        let head = CAPACITY as u64 + 50;
        let b = ring(head, 0);
        assert_eq!(
            collect(&b, head + 1),
            Err(RingError::AheadOfHead {
                from: head + 1,
                head
            })
        );
        assert_eq!(collect(&b, 49), Err(RingError::Overrun { from: 49, head }));
        let mut called = false;
        assert!(drain(&b, 0, |_| called = true).is_err());
        assert!(!called, "nothing reaches the sink on an error");
    }

    #[test]
    fn bad_headers_are_errors() {
        let good = ring(1, 0);
        assert_eq!(
            collect(&good[..RING_BYTES - 1], 0),
            Err(RingError::TooShort {
                len: RING_BYTES - 1
            })
        );
        assert_eq!(collect(&[], 0), Err(RingError::TooShort { len: 0 }));
        let patch = |offset: usize, bytes: &[u8]| {
            let mut b = good.clone();
            b[offset..offset + bytes.len()].copy_from_slice(bytes);
            b
        };
        assert_eq!(
            collect(&patch(header::MAGIC, b"UTRX"), 0),
            Err(RingError::BadMagic {
                found: u32::from_le_bytes(*b"UTRX")
            })
        );
        assert_eq!(
            collect(&patch(header::VERSION, &[2, 0]), 0),
            Err(RingError::BadVersion { found: 2 })
        );
        assert_eq!(
            collect(&patch(header::RECORD_SIZE, &[32, 0]), 0),
            Err(RingError::BadRecordSize { found: 32 })
        );
        assert_eq!(
            collect(&patch(header::CAPACITY, &[0, 0, 0, 0]), 0),
            Err(RingError::BadCapacity { found: 0 })
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any reader position within a ring's worth of `head` gets exactly the records
        /// `[from, head)`, in order; anything else is an error.
        #[test]
        fn drains_exactly_the_unread_records(head in 0u64..20_000, back in 0u64..5_000) {
            let b = ring(head, 0);
            let from = head.wrapping_sub(back);
            let result = collect(&b, from);
            if back > head {
                prop_assert_eq!(result, Err(RingError::AheadOfHead { from, head }));
            } else if back > CAPACITY as u64 {
                prop_assert_eq!(result, Err(RingError::Overrun { from, head }));
            } else {
                prop_assert_eq!(result, Ok((head, (from..head).collect::<Vec<_>>())));
            }
        }
    }
}
