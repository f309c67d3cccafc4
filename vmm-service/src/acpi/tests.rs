//! The tables read back by an independent reader: offsets from the ACPI specification
//! written out here, not the writer's constants; every checksum, length and pointer checked.

use super::*;
use crate::loader::info::{memory_map, MMAP_RESERVED};

const RAM: usize = 4 << 20;

fn u16_at(r: &[u8], a: usize) -> u16 {
    u16::from_le_bytes(r[a..a + 2].try_into().unwrap())
}
fn u32_at(r: &[u8], a: usize) -> u32 {
    u32::from_le_bytes(r[a..a + 4].try_into().unwrap())
}
fn u64_at(r: &[u8], a: usize) -> u64 {
    u64::from_le_bytes(r[a..a + 8].try_into().unwrap())
}
fn sums_to_zero(b: &[u8]) -> bool {
    b.iter().fold(0u8, |s, x| s.wrapping_add(*x)) == 0
}

/// A system description table at `a`: its signature and bytes, after checking that it lies
/// in the reserved BIOS area and its checksum.
fn sdt(r: &[u8], a: usize) -> (&[u8], &[u8]) {
    assert!((0xe0000..0x100000).contains(&a), "table at {a:#x}");
    let len = u32_at(r, a + 4) as usize;
    assert!(len >= 36 && a + len <= 0x100000, "length {len}");
    let t = &r[a..a + len];
    assert!(sums_to_zero(t), "checksum of {:?}", &t[..4]);
    assert_eq!(&t[10..16], b"UMBRA ");
    (&t[..4], t)
}

/// A GAS: (space, bit width, address).
fn gas(t: &[u8], at: usize) -> (u8, u8, u64) {
    (t[at], t[at + 1], u64_at(t, at + 4))
}

struct Found {
    lapic_ids: Vec<u8>,
    ioapic: (u8, u32, u32),
    overrides: Vec<(u8, u32, u16)>,
    slp_typ_s5: u8,
}

/// Everything an OS would do at boot, from the RSDP search on.
fn read_all(r: &[u8]) -> Found {
    // The RSDP: "RSD PTR " on a 16-byte boundary of 0xE0000..0xFFFFF.
    let rsdp = (0xe0000..0x100000)
        .step_by(16)
        .find(|&a| &r[a..a + 8] == b"RSD PTR ")
        .expect("RSDP");
    assert!(sums_to_zero(&r[rsdp..rsdp + 20]), "RSDP checksum");
    assert_eq!(r[rsdp + 15], 2, "revision");
    let len = u32_at(r, rsdp + 20) as usize;
    assert_eq!(len, 36);
    assert!(sums_to_zero(&r[rsdp..rsdp + len]), "RSDP extended checksum");
    let rsdt = u32_at(r, rsdp + 16) as usize;
    let xsdt = u64_at(r, rsdp + 24) as usize;
    let (sig, rsdt) = sdt(r, rsdt);
    assert_eq!(sig, b"RSDT");
    let (sig, xsdt) = sdt(r, xsdt);
    assert_eq!(sig, b"XSDT");
    let from_rsdt: Vec<usize> = rsdt[36..]
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()) as usize)
        .collect();
    let from_xsdt: Vec<usize> = xsdt[36..]
        .chunks(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()) as usize)
        .collect();
    assert_eq!(from_rsdt, from_xsdt);
    let by_sig = |want: &[u8]| {
        let hits: Vec<usize> = from_xsdt
            .iter()
            .copied()
            .filter(|&a| sdt(r, a).0 == want)
            .collect();
        assert_eq!(hits.len(), 1, "{want:?}");
        hits[0]
    };
    assert_eq!(from_xsdt.len(), 2);

    // FADT.
    let (_, fadt) = sdt(r, by_sig(b"FACP"));
    assert!(fadt.len() >= 244);
    assert_eq!(fadt[8], 6);
    let sci = u16_at(fadt, 46);
    assert_eq!(sci, 9);
    assert_eq!(u32_at(fadt, 48), 0, "no SMI command port");
    let pm1a_evt = u32_at(fadt, 56) as u64;
    let pm1a_cnt = u32_at(fadt, 64) as u64;
    let pm_tmr = u32_at(fadt, 76) as u64;
    assert_eq!((fadt[88], fadt[89], fadt[91]), (4, 2, 4));
    assert_eq!((pm1a_evt, pm1a_cnt, pm_tmr), (0x600, 0x604, 0x608));
    assert_eq!(gas(fadt, 148), (1, 32, pm1a_evt));
    assert_eq!(gas(fadt, 172), (1, 16, pm1a_cnt));
    assert_eq!(gas(fadt, 208), (1, 32, pm_tmr));
    let flags = u32_at(fadt, 112);
    assert_eq!(flags & (1 << 8), 0, "24-bit PM timer");
    assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
    assert_eq!(gas(fadt, 116), (1, 8, 0xcf9));
    assert_eq!(fadt[128], 0x06);
    // FACS and DSDT in both fields, agreeing.
    let facs = u32_at(fadt, 36) as usize;
    assert_eq!(u64_at(fadt, 132), facs as u64);
    assert_eq!(facs % 64, 0);
    assert_eq!(&r[facs..facs + 4], b"FACS");
    assert_eq!(u32_at(r, facs + 4), 64);
    let dsdt = u32_at(fadt, 40) as usize;
    assert_eq!(u64_at(fadt, 140), dsdt as u64);
    let (sig, dsdt) = sdt(r, dsdt);
    assert_eq!(sig, b"DSDT");
    // `_S5_` as an OS's early scan finds it: NameOp, the name, PackageOp, PkgLength,
    // NumElements, then SLP_TYPa (BytePrefix or a Zero/One opcode).
    let at = dsdt
        .windows(4)
        .position(|w| w == b"_S5_")
        .expect("_S5_ in the DSDT");
    assert_eq!(dsdt[at - 1], 0x08);
    assert_eq!(dsdt[at + 4], 0x12);
    assert_eq!(dsdt[at + 5] as usize, dsdt.len() - (at + 5), "PkgLength");
    assert_eq!(dsdt[at + 6], 4);
    let slp_typ_s5 = match dsdt[at + 7] {
        0x0a => dsdt[at + 8],
        0x00 => 0,
        0x01 => 1,
        other => panic!("SLP_TYPa opcode {other:#x}"),
    };

    // MADT: walk the entries by their lengths to the table's end.
    let (_, madt) = sdt(r, by_sig(b"APIC"));
    assert_eq!(u32_at(madt, 36), 0xfee0_0000);
    assert_eq!(u32_at(madt, 40) & 1, 1, "PCAT_COMPAT");
    let mut found = Found {
        lapic_ids: vec![],
        ioapic: (0xff, 0, 0),
        overrides: vec![],
        slp_typ_s5,
    };
    let mut at = 44;
    let mut ioapics = 0;
    let mut nmis = 0;
    while at < madt.len() {
        let (kind, len) = (madt[at], madt[at + 1] as usize);
        assert!(len >= 2 && at + len <= madt.len(), "entry at {at}");
        let e = &madt[at..at + len];
        match kind {
            0 => {
                assert_eq!(len, 8);
                assert_eq!(u32_at(e, 4) & 1, 1, "enabled");
                assert_eq!(e[2], e[3], "UID = APIC ID");
                found.lapic_ids.push(e[3]);
            }
            1 => {
                assert_eq!(len, 12);
                found.ioapic = (e[2], u32_at(e, 4), u32_at(e, 8));
                ioapics += 1;
            }
            2 => {
                assert_eq!(len, 10);
                assert_eq!(e[2], 0, "ISA bus");
                found.overrides.push((e[3], u32_at(e, 4), u16_at(e, 8)));
            }
            4 => {
                assert_eq!(len, 6);
                assert_eq!((e[2], e[5]), (0xff, 1), "all processors, LINT1");
                nmis += 1;
            }
            other => panic!("MADT entry type {other}"),
        }
        at += len;
    }
    assert_eq!(at, madt.len());
    assert_eq!((ioapics, nmis), (1, 1));
    found
}

#[test]
fn tables_read_back_for_one_two_and_many_vcpus() {
    for cpus in [1usize, 2, 8, 255] {
        let mut ram = vec![0xa5u8; RAM];
        let l = write_tables(&mut ram, cpus).unwrap();
        let f = read_all(&ram);
        assert_eq!(f.lapic_ids, (0..cpus).map(|c| c as u8).collect::<Vec<_>>());
        assert_eq!(f.ioapic, (0, 0xfec0_0000, 0));
        assert_eq!(f.overrides, vec![(0, 2, 0), (9, 9, 0x000d)]);
        assert_eq!(f.slp_typ_s5, crate::devices::pm::SLP_TYP_S5);
        // Inside the area, which the multiboot memory map reserves; nothing written
        // outside it.
        assert!(l.end <= AREA_END);
        assert!(memory_map(RAM as u64)
            .iter()
            .any(|&(b, n, k)| k == MMAP_RESERVED && b <= AREA_START && AREA_END <= b + n));
        assert!(ram[..AREA_START as usize].iter().all(|&b| b == 0xa5));
        assert!(ram[AREA_END as usize..].iter().all(|&b| b == 0xa5));
    }
}

#[test]
fn the_memory_map_covers_ram_without_overlaps() {
    let ram = 64u64 << 20;
    let mut map = memory_map(ram).to_vec();
    map.sort();
    for w in map.windows(2) {
        assert!(w[0].0 + w[0].1 <= w[1].0, "{w:?}");
    }
    let last = map.last().unwrap();
    assert_eq!(last.0 + last.1, ram);
}

#[test]
fn bad_counts_and_small_ram_change_nothing() {
    let mut ram = vec![0x5au8; RAM];
    assert_eq!(write_tables(&mut ram, 0), Err(LoadError::BadCpuCount));
    assert_eq!(write_tables(&mut ram, 256), Err(LoadError::BadCpuCount));
    let mut small = vec![0x5au8; 0xf_0000];
    assert_eq!(write_tables(&mut small, 1), Err(LoadError::RamTooSmall));
    assert!(ram.iter().chain(&small).all(|&b| b == 0x5a));
}

/// A minimal environment for port exits (no state, no RAM).
struct PortEnv;

impl crate::vm::Env for PortEnv {
    fn host_cpuid(&mut self, _: u32, _: u32) -> [u32; 4] {
        [0; 4]
    }
    fn tsc(&mut self) -> u64 {
        0
    }
    fn read_guest(&mut self, _: u64, _: &mut [u8]) -> bool {
        false
    }
    fn write_guest(&mut self, _: u64, _: &[u8]) -> bool {
        false
    }
    fn ticks(&mut self) -> u64 {
        1000
    }
    fn vcpu_read(&mut self, _: &[u64], _: &mut [u64]) -> bool {
        false
    }
    fn vcpu_write(&mut self, _: &[(u64, u64)]) -> bool {
        false
    }
}

fn out(port: u16, size: u8, value: u64) -> abi::vmx::ExitMessage {
    use abi::vmx::reason;
    let size_bits = match size {
        1 => 0,
        2 => 1,
        _ => 3,
    };
    let mut m = abi::vmx::ExitMessage {
        reason: reason::IO,
        mask: crate::exit::portal_mask(reason::IO),
        rip: 0x10_0000,
        rflags: 0x202,
        instruction_len: 1,
        ..abi::vmx::ExitMessage::default()
    };
    m.qualification = ((port as u64) << 16) | size_bits;
    m.gprs[0] = value;
    m
}

#[test]
fn the_vm_powers_off_and_resets_through_its_ports() {
    use crate::vm::{VmModel, VmResult};
    let s5 = (u64::from(crate::devices::pm::SLP_TYP_S5) << 10) | (1 << 13);
    let cases = [
        (vec![out(0x604, 2, s5)], VmResult::PoweredOff),
        (vec![out(0x64, 1, 0xfe)], VmResult::Reset { port: 0x64 }),
        (
            vec![out(0x64, 1, 0xd1), out(0x60, 1, 0x02)],
            VmResult::Reset { port: 0x64 },
        ),
        (vec![out(0x92, 1, 0x03)], VmResult::Reset { port: 0x92 }),
        (vec![out(0xcf9, 1, 0x06)], VmResult::Reset { port: 0xcf9 }),
    ];
    for (exits, want) in cases {
        let mut v = VmModel::new("acpi", RAM as u64);
        let (last, before) = exits.split_last().unwrap();
        for m in before {
            assert!(v.handle(m, &mut PortEnv).stopped().is_none());
        }
        let o = v.handle(last, &mut PortEnv);
        let stop = o.stopped().expect("stopped");
        assert_eq!(stop.result(), &want);
        assert_eq!(o.reply, abi::vmx::ExitReply::stop(stop.stop_code()));
        assert_eq!(v.result().map(|s| *s.result()), Some(want));
    }
    // A sleep type other than S5 and SLP_TYP without SLP_EN go on.
    let mut v = VmModel::new("acpi", RAM as u64);
    for value in [(1 << 10) | (1 << 13), s5 & !(1 << 13)] {
        let o = v.handle(&out(0x604, 2, value), &mut PortEnv);
        assert!(o.stopped().is_none(), "{value:#x}");
    }
}
