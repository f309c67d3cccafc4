//! The VM isolation probe ([`super::Request::ProbeIsolation`]): what the VMM, the probe guest
//! (`guest-isolation`) and the suite agree on.
//!
//! The VMM runs two VMs of the same flat 64-bit image. First the *neighbour*
//! ([`role::FILL`]): it fills its RAM from [`FILL_START`] to its end with [`FOREIGN_MARKER`]
//! and exits with hypercall 0, code 0; the VM stays alive (RAM, EPT or shadow tables, MMU
//! service attachment) until the probe is over. The VMM also fills a memory object of its own
//! with [`SERVICE_MARKER`]. Then the *probe* ([`role::PROBE`]): the VMM writes the list of
//! probe points ([`points`]) at [`LIST_GPA`] of its RAM; the guest maps the whole 4 GiB
//! guest-physical space with 2 MiB pages of its own tables and accesses each point in turn:
//!
//! - a read point ([`READ`]): it reads [`READ_BYTES`] bytes; any word equal to the foreign or
//!   the service marker counts as *foreign*; inside its RAM it then writes [`OWN_MARKER`]
//!   (xor the word's index) to each word, reads it back and restores the word: *own RAM*
//!   (a mismatch is *unaccounted*);
//! - a write point ([`WRITE`]): it writes the own marker to one word (inside RAM it reads it
//!   back and restores the word).
//!
//! An access that returns outside its RAM counts as *device*: it must be one of the points
//! the VMM knows a device of its own answers ([`IsolationReport::devices`], from the VMM's
//! device map: the local APIC's page, the IOAPIC, its MMIO test device); every other access
//! outside RAM must stop the VM. When the MMU service
//! stops the VM for an access outside RAM, the VMM counts the stop and enters the guest again
//! at its entry with [`role::RESUME`] and RDI = the stopped gpa (page-aligned); the guest
//! counts the point *stopped* when that page is the page of the point it was accessing, and
//! outside its RAM, else *unaccounted*, and goes on with the next point. At the end the guest
//! writes its counts at [`REPORT_GPA`] ([`GuestCounts`]) and exits with hypercall 0, code 0.
//! Every [`INTERLEAVE`] stops the VMM sets the probe aside and runs the neighbour again
//! ([`role::CHECK`]): it reads its whole fill back and exits with the number of words that
//! changed; so the two VMs run in turn on the one CPU, each through its own translations,
//! many times. The VMM then checks that every word of the neighbour's fill and of its own
//! marker object is unchanged, and answers with an [`IsolationReport`].
//!
//! Entry registers of both VMs (each entry; RIP = the image's entry, RSP = the loader's stack):
//! RSI = role, RDI = RAM bytes ([`role::FILL`], [`role::PROBE`], [`role::CHECK`]) or the
//! stopped gpa ([`role::RESUME`]), RDX = [`FILL_START`] (fill, check) or [`LIST_GPA`] (probe,
//! resume),
//! R8 = [`OWN_MARKER`], R9 = [`FOREIGN_MARKER`], R10 = [`SERVICE_MARKER`]. The markers are
//! given in registers so that no image holds them.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

use super::VmResult;

/// What the probe VM writes into its own RAM.
pub const OWN_MARKER: u64 = 0x4f57_4e5f_5241_4d21;
/// What the neighbour VM writes into every word of its RAM from [`FILL_START`].
pub const FOREIGN_MARKER: u64 = 0x464f_5245_4947_4e21;
/// What the VMM writes into a memory object of its own during the probe.
pub const SERVICE_MARKER: u64 = 0x5345_5256_4943_4521;
/// Pages of the VMM's marker object.
pub const SERVICE_PAGES: u64 = 64;

/// The value of RSI at entry.
pub mod role {
    /// Fill RAM from RDX to RDI with the foreign marker (R9), then exit.
    pub const FILL: u64 = 1;
    /// Probe the points listed at RDX, in a VM of RDI bytes of RAM.
    pub const PROBE: u64 = 2;
    /// The VM stopped at the page RDI: count it and go on with the next point.
    pub const RESUME: u64 = 3;
    /// Count the words from RDX to RDI that are not R9 and exit with that count.
    pub const CHECK: u64 = 4;
}

/// Stops of the probe between two runs of the neighbour ([`role::CHECK`]).
pub const INTERLEAVE: u64 = 256;

const MIB: u64 = 1 << 20;
/// Where the neighbour's fill starts (above its 2 MiB image).
pub const FILL_START: u64 = 4 * MIB;
/// Guest-physical address of the point list in the probe VM's RAM: a word with the number of
/// points, then the points. Below the flat loader's stack ([`LIST_END`]).
pub const LIST_GPA: u64 = 0x1_0000;
/// The list must end here (the flat loader's stack grows down from 0x9f000).
pub const LIST_END: u64 = 0x8_0000;
/// Where the probe guest leaves its counts (after the flat loader's tables and GDT).
pub const REPORT_GPA: u64 = 0x5000;
/// The first word of a finished report.
pub const REPORT_MAGIC: u64 = 0x4953_4f5f_444f_4e45;
/// Words of the report: the magic, then the counts in [`GuestCounts`] order.
pub const REPORT_WORDS: usize = 8;

/// A point's kind, in its low bits (points are 64-byte aligned).
pub const READ: u64 = 0;
pub const WRITE: u64 = 1;
pub const KIND_MASK: u64 = 0x3f;
/// Bytes one read point reads (the first word that stops the VM stops it).
pub const READ_BYTES: u64 = 64;

/// The guest-physical space probed every [`REGION`] bytes, at its first and its last
/// [`READ_BYTES`].
pub const SPACE: u64 = 4 << 30;
pub const REGION: u64 = 2 * MIB;

/// Addresses where a PC has devices or firmware; the VMM models none of them in
/// guest-physical space (its devices are I/O ports), so each is RAM (below the end of RAM) or
/// stops the VM. Each is probed with a read and a write.
pub const DEVICE_ADDRESSES: [(u64, &str); 10] = [
    (0x000a_0000, "VGA window"),
    (0x000b_8000, "VGA text buffer"),
    (0x000f_0000, "BIOS ROM"),
    (0xe000_0000, "PCIe configuration (ECAM)"),
    (0xfec0_0000, "I/O APIC"),
    (0xfed0_0000, "HPET"),
    (0xfee0_0000, "local APIC"),
    (0xfff0_0000, "firmware flash"),
    (0xffff_0000, "BIOS ROM alias"),
    (0xffff_ffc0, "reset vector (top of 4 GiB)"),
];

/// The probe points of a VM with `ram_bytes` of RAM: the first and last [`READ_BYTES`] of every
/// [`REGION`] of [`SPACE`] (reads), then a read and a write at each of [`DEVICE_ADDRESSES`],
/// at the last bytes of RAM and at the first bytes after it.
pub fn points(ram_bytes: u64) -> impl Iterator<Item = u64> {
    let regions = (0..SPACE / REGION)
        .flat_map(|r| [(r * REGION) | READ, ((r + 1) * REGION - READ_BYTES) | READ]);
    let edges = [ram_bytes.saturating_sub(READ_BYTES), ram_bytes];
    let special = DEVICE_ADDRESSES
        .into_iter()
        .map(|(a, _)| a)
        .chain(edges)
        .flat_map(|a| [a | READ, a | WRITE]);
    regions.chain(special)
}

/// Whether point `p` lies inside `ram_bytes` of RAM.
pub fn inside_ram(p: u64, ram_bytes: u64) -> bool {
    let len = if p & KIND_MASK == WRITE {
        8
    } else {
        READ_BYTES
    };
    (p & !KIND_MASK) + len <= ram_bytes
}

/// The counts the probe guest leaves at [`REPORT_GPA`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestCounts {
    /// Points accessed.
    pub probed: u64,
    /// Points inside its RAM that held its marker and their old contents.
    pub own: u64,
    /// Points outside its RAM where the access returned.
    pub device: u64,
    /// Points where the VM stopped, at that point's page, outside its RAM.
    pub stopped: u64,
    /// Points where a read returned the foreign or the service marker.
    pub foreign: u64,
    /// Anything else: a stop elsewhere or inside RAM, RAM that did not keep a marker.
    pub unaccounted: u64,
    /// The RAM size the guest was given.
    pub ram_bytes: u64,
}

impl GuestCounts {
    /// The counts of a report (`None` without [`REPORT_MAGIC`]).
    pub fn from_words(w: &[u64; REPORT_WORDS]) -> Option<GuestCounts> {
        (w[0] == REPORT_MAGIC).then_some(GuestCounts {
            probed: w[1],
            own: w[2],
            device: w[3],
            stopped: w[4],
            foreign: w[5],
            unaccounted: w[6],
            ram_bytes: w[7],
        })
    }
}

/// What [`super::Request::ProbeIsolation`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsolationReport {
    /// How the neighbour's fill run ended.
    pub neighbour: VmResult,
    /// How the probe ended (after its last resume).
    pub result: VmResult,
    /// The probe guest's counts (`None`: it left no report).
    pub guest: Option<GuestCounts>,
    /// Points the VMM gave the guest.
    pub points: u64,
    /// Of those, inside the probe's RAM.
    pub points_in_ram: u64,
    /// Of those, outside RAM at an address a device of the VMM answers.
    pub devices: u64,
    /// Stops for an access outside RAM the VMM counted (and resumed).
    pub stops: u64,
    /// Of those, at a gpa inside the probe's RAM.
    pub stops_inside_ram: u64,
    /// Runs of the neighbour between stops of the probe, how many did not end with a count,
    /// and the words of its fill those runs found changed, summed.
    pub neighbour_runs: u64,
    pub neighbour_bad_runs: u64,
    pub neighbour_seen_changed: u64,
    /// Words of the neighbour's fill checked after the probe, and how many had changed.
    pub neighbour_words: u64,
    pub neighbour_changed: u64,
    /// Words of the VMM's marker object checked after the probe, and how many had changed.
    pub service_words: u64,
    pub service_changed: u64,
}

/// One reason an isolation report fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    NeighbourDidNotFill,
    ProbeDidNotFinish,
    NoGuestReport,
    NotEveryPointProbed,
    Unaccounted,
    Foreign,
    /// Accesses outside RAM returned other than at the points a VMM device answers.
    Device,
    OwnRamMissing,
    StopsDisagree,
    StopInsideRam,
    NeighbourChanged,
    /// The neighbour did not run between the probe's stops, or such a run failed.
    NotInterleaved,
    ServiceChanged,
}

impl IsolationReport {
    /// Every way this report fails; empty when every point is accounted for, none reached
    /// foreign memory and nothing of the neighbour's or the VMM's changed.
    pub fn problems(&self) -> heapless::Vec<Problem, 13> {
        let mut p = heapless::Vec::new();
        let mut fail = |cond: bool, what| {
            if cond {
                let _ = p.push(what);
            }
        };
        let done = VmResult::HypercallExit { code: 0 };
        fail(self.neighbour != done, Problem::NeighbourDidNotFill);
        fail(self.result != done, Problem::ProbeDidNotFinish);
        match self.guest {
            None => fail(true, Problem::NoGuestReport),
            Some(g) => {
                fail(g.probed != self.points, Problem::NotEveryPointProbed);
                let sum = g
                    .own
                    .checked_add(g.device)
                    .and_then(|s| s.checked_add(g.stopped));
                fail(
                    g.unaccounted != 0 || sum != Some(g.probed),
                    Problem::Unaccounted,
                );
                fail(g.foreign != 0, Problem::Foreign);
                fail(g.device != self.devices, Problem::Device);
                fail(g.own != self.points_in_ram, Problem::OwnRamMissing);
                fail(g.stopped != self.stops, Problem::StopsDisagree);
            }
        }
        fail(self.stops_inside_ram != 0, Problem::StopInsideRam);
        fail(
            self.neighbour_words == 0
                || self.neighbour_changed != 0
                || self.neighbour_seen_changed != 0,
            Problem::NeighbourChanged,
        );
        fail(
            self.neighbour_runs != self.stops / INTERLEAVE || self.neighbour_bad_runs != 0,
            Problem::NotInterleaved,
        );
        fail(
            self.service_words == 0 || self.service_changed != 0,
            Problem::ServiceChanged,
        );
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: u64 = 4 * MIB;

    #[test]
    fn points_cover_every_region_and_device_once() {
        let all: std::vec::Vec<u64> = points(RAM).collect();
        assert_eq!(all.len() as u64, 2 * SPACE / REGION + 2 * 12);
        for r in 0..SPACE / REGION {
            assert!(all.contains(&(r * REGION)));
            assert!(all.contains(&(r * REGION + REGION - 64)));
        }
        for (a, _) in DEVICE_ADDRESSES {
            assert!(all.contains(&a) && all.contains(&(a | WRITE)));
        }
        assert!(all.iter().all(|p| (p & !KIND_MASK).is_multiple_of(64)));
        assert!(LIST_GPA + 8 * (all.len() as u64 + 1) <= LIST_END);
        // In 4 MiB of RAM: 2 regions x 2, VGA x 2, VGA text x 2, BIOS x 2, last bytes x 2.
        assert_eq!(all.iter().filter(|&&p| inside_ram(p, RAM)).count(), 12);
        assert!(!inside_ram(RAM | WRITE, RAM));
        assert!(inside_ram((RAM - 8) | WRITE, RAM));
        assert!(!inside_ram(RAM, RAM) && inside_ram(RAM - 64, RAM));
    }

    fn good() -> IsolationReport {
        let points = points(RAM).count() as u64;
        IsolationReport {
            neighbour: VmResult::HypercallExit { code: 0 },
            result: VmResult::HypercallExit { code: 0 },
            guest: Some(GuestCounts {
                probed: points,
                own: 12,
                device: 0,
                stopped: points - 12,
                foreign: 0,
                unaccounted: 0,
                ram_bytes: RAM,
            }),
            points,
            points_in_ram: 12,
            devices: 0,
            stops: points - 12,
            stops_inside_ram: 0,
            neighbour_runs: (points - 12) / INTERLEAVE,
            neighbour_bad_runs: 0,
            neighbour_seen_changed: 0,
            neighbour_words: 1000,
            neighbour_changed: 0,
            service_words: 1000,
            service_changed: 0,
        }
    }

    #[test]
    fn a_clean_report_has_no_problems() {
        assert!(good().problems().is_empty());
    }

    #[test]
    fn every_failure_is_a_problem() {
        let with = |f: fn(&mut IsolationReport)| {
            let mut r = good();
            f(&mut r);
            r.problems()
        };
        fn g(r: &mut IsolationReport) -> &mut GuestCounts {
            r.guest.as_mut().unwrap()
        }
        assert!(with(|r| g(r).foreign = 1).contains(&Problem::Foreign));
        // A point reaching memory that is not the guest's but held no marker: unaccounted
        // sums, caught as a device access or a missing stop.
        let p = with(|r| {
            g(r).stopped -= 1;
            g(r).device += 1
        });
        assert!(p.contains(&Problem::Device) && p.contains(&Problem::StopsDisagree));
        assert!(with(|r| g(r).stopped -= 1).contains(&Problem::Unaccounted));
        assert!(with(|r| g(r).unaccounted = 1).contains(&Problem::Unaccounted));
        assert!(with(|r| g(r).probed -= 1).contains(&Problem::NotEveryPointProbed));
        assert!(with(|r| r.guest = None).contains(&Problem::NoGuestReport));
        assert!(with(|r| r.stops_inside_ram = 1).contains(&Problem::StopInsideRam));
        assert!(with(|r| r.neighbour_changed = 1).contains(&Problem::NeighbourChanged));
        assert!(with(|r| r.neighbour_words = 0).contains(&Problem::NeighbourChanged));
        assert!(with(|r| r.neighbour_seen_changed = 2).contains(&Problem::NeighbourChanged));
        assert!(with(|r| r.neighbour_runs = 0).contains(&Problem::NotInterleaved));
        assert!(with(|r| r.neighbour_bad_runs = 1).contains(&Problem::NotInterleaved));
        assert!(with(|r| r.service_changed = 3).contains(&Problem::ServiceChanged));
        assert!(with(|r| r.result = VmResult::TripleFault).contains(&Problem::ProbeDidNotFinish));
        assert!(with(|r| r.neighbour = VmResult::OutsideRam { gpa: 0 })
            .contains(&Problem::NeighbourDidNotFill));
        let own = with(|r| {
            g(r).own -= 1;
            g(r).stopped += 1;
            r.stops += 1
        });
        assert_eq!(own.as_slice(), &[Problem::OwnRamMissing]);
    }

    #[test]
    fn report_words() {
        let mut w = [0u64; REPORT_WORDS];
        assert_eq!(GuestCounts::from_words(&w), None);
        w = [REPORT_MAGIC, 1, 2, 3, 4, 5, 6, 7];
        let c = GuestCounts::from_words(&w).unwrap();
        assert_eq!((c.probed, c.unaccounted, c.ram_bytes), (1, 6, 7));
    }
}
