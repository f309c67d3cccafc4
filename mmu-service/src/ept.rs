//! What the MMU service does with a VM's EPT-violation exit (EPT first; shadow paging on the
//! same service comes later): guest RAM is mapped on demand, one 2 MiB-aligned chunk at a
//! time (clipped to the end of RAM), with every right; a data access outside RAM is forwarded
//! to the VMM's MMIO portal (`reply::FORWARD`: the VMM decides what is a device), an
//! instruction fetch there stops the VM.

/// Pages mapped per violation: a 2 MiB-aligned chunk.
pub const CHUNK_PAGES: u64 = 512;
const PAGE_SIZE: u64 = 4096;

/// The answer to one violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Map guest RAM `[gpa, gpa + pages * 4 KiB)` and resume the guest at the same instruction.
    Map { gpa: u64, pages: u64 },
    /// `gpa` is outside its RAM: forward a data access to the VMM, stop on a fetch.
    OutsideRam { gpa: u64 },
}

/// Decides what a violation at `gpa` in a VM with `ram_pages` pages of RAM gets.
pub fn on_violation(gpa: u64, ram_pages: u64) -> Violation {
    let ram_bytes = ram_pages.saturating_mul(PAGE_SIZE);
    if gpa >= ram_bytes {
        return Violation::OutsideRam { gpa };
    }
    let chunk = gpa & !(CHUNK_PAGES * PAGE_SIZE - 1);
    let pages = CHUNK_PAGES.min((ram_bytes - chunk) / PAGE_SIZE);
    Violation::Map { gpa: chunk, pages }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn maps_the_chunk_and_clips_at_the_end_of_ram() {
        // 16 MiB + 12 KiB of RAM.
        let ram = 4096 + 3;
        assert_eq!(
            on_violation(0x1234, ram),
            Violation::Map { gpa: 0, pages: 512 }
        );
        assert_eq!(
            on_violation(0x0060_0000, ram),
            Violation::Map {
                gpa: 0x0060_0000,
                pages: 512
            }
        );
        assert_eq!(
            on_violation(0x0100_1000, ram),
            Violation::Map {
                gpa: 0x0100_0000,
                pages: 3
            }
        );
        assert_eq!(
            on_violation(0x0100_3000, ram),
            Violation::OutsideRam { gpa: 0x0100_3000 }
        );
        assert_eq!(
            on_violation(u64::MAX, ram),
            Violation::OutsideRam { gpa: u64::MAX }
        );
    }

    proptest! {
        #[test]
        fn a_mapping_covers_the_address_and_stays_inside_ram(gpa in any::<u64>(), ram in 0u64..1 << 20) {
            match on_violation(gpa, ram) {
                Violation::Map { gpa: start, pages } => {
                    prop_assert!(start <= gpa && gpa < start + pages * PAGE_SIZE);
                    prop_assert!(start + pages * PAGE_SIZE <= ram * PAGE_SIZE);
                    prop_assert!((1..=CHUNK_PAGES).contains(&pages));
                    prop_assert_eq!(start % (CHUNK_PAGES * PAGE_SIZE), 0);
                }
                Violation::OutsideRam { gpa: g } => {
                    prop_assert_eq!(g, gpa);
                    prop_assert!(gpa >= ram * PAGE_SIZE);
                }
            }
        }
    }
}
