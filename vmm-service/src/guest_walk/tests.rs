use super::*;
use std::collections::HashMap;

/// Guest memory as 8-byte words (absent = not RAM).
struct Mem(HashMap<u64, u8>);

impl Mem {
    fn new() -> Mem {
        Mem(HashMap::new())
    }
    fn put(&mut self, gpa: u64, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            self.0.insert(gpa + i as u64, *b);
        }
    }
    fn put64(&mut self, gpa: u64, v: u64) {
        self.put(gpa, &v.to_le_bytes());
    }
    fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        for (i, b) in buf.iter_mut().enumerate() {
            match self.0.get(&(gpa + i as u64)) {
                Some(v) => *b = *v,
                None => return false,
            }
        }
        true
    }
}

fn msg(cr0: u64, cr3: u64, cr4: u64, efer: u64, cs_base: u64, rip: u64, long: bool) -> ExitMessage {
    let mut m = ExitMessage {
        mask: group::RIP | group::CRS | group::SEGS,
        cr0_shadow: cr0,
        cr3,
        cr4_shadow: cr4,
        efer,
        rip,
        ..ExitMessage::default()
    };
    m.segments[0].base = cs_base;
    m.segments[0].access_rights = if long { 0xa09b } else { 0xc09b };
    m
}

const INSN: [u8; 3] = [0x0f, 0x01, 0xd1]; // xsetbv

#[test]
fn paging_off_reads_cs_base_plus_rip() {
    let mut mem = Mem::new();
    mem.put(0x1_0010, &INSN);
    mem.put(0x1_0013, &[0x90; 12]);
    let m = msg(0x11, 0, 0, 0, 0x1_0000, 0x10, false);
    let code = code_at_rip(&m, |g, b| mem.read(g, b)).unwrap();
    assert_eq!(code.len(), MAX_INSN);
    assert_eq!(&code[..3], &INSN);
}

#[test]
fn four_level_paging_with_a_page_split() {
    let mut mem = Mem::new();
    // PML4 at 0x1000, PDPT 0x2000, PD 0x3000, PT 0x4000; la 0x40_0ffe → frames 0x9000
    // (the first 2 bytes) and 0xa000 (the next page, mapped elsewhere).
    let la = 0x40_0ffe;
    mem.put64(0x1000, 0x2003);
    mem.put64(0x2000, 0x3003);
    mem.put64(0x3000 + 2 * 8, 0x4003);
    mem.put64(0x4000, 0x9003);
    mem.put64(0x4000 + 8, 0xb003);
    mem.put(0x9ffe, &INSN[..2]);
    mem.put(0xb000, &[INSN[2]]);
    let m = msg(
        0x8000_0011,
        0x1000,
        cr4::PAE,
        efer::LME | efer::LMA,
        0,
        la,
        true,
    );
    let code = code_at_rip(&m, |g, b| mem.read(g, b)).unwrap();
    // The second page has only one byte of RAM: the read stops there.
    assert_eq!(&code[..], &INSN[..2], "{code:x?}");
    mem.put(0xb001, &[0x90; 16]);
    let code = code_at_rip(&m, |g, b| mem.read(g, b)).unwrap();
    assert_eq!(&code[..3], &INSN);
    assert_eq!(code.len(), MAX_INSN);
    // A 2 MiB page.
    mem.put64(0x3000 + 3 * 8, 0x20_0000 | 0x83);
    let read8 = |g: u64| {
        let mut b = [0u8; 8];
        mem.read(g, &mut b).then_some(u64::from_le_bytes(b))
    };
    let st = (0x8000_0011, 0x1000, cr4::PAE, efer::LMA);
    assert_eq!(translate(st, 0x61_2345, read8), Some(0x21_2345));
    // Not present.
    assert_eq!(translate(st, 0x80_0000_0000, read8), None);
}

#[test]
fn pae_and_32_bit_paging() {
    let mut mem = Mem::new();
    // PAE: PDPT at 0x5020 (CR3 bits 31:5), PD 0x6000, PT 0x7000.
    mem.put64(0x5020 + 8, 0x6001); // la bits 31:30 = 1
    mem.put64(0x6000 + 8, 0x7003);
    mem.put64(0x7000 + 3 * 8, 0x8_8003);
    let read8 = |g: u64| {
        let mut b = [0u8; 8];
        mem.read(g, &mut b).then_some(u64::from_le_bytes(b))
    };
    let la = 0x4000_0000 | 0x20_0000 | 0x3000 | 0x123;
    assert_eq!(
        translate((0x8000_0011, 0x5020, cr4::PAE, 0), la, read8),
        Some(0x8_8123)
    );
    // 32-bit: PD at 0x1000; a 4 KiB page and a 4 MiB PSE page.
    let mut mem = Mem::new();
    mem.put(0x1000 + 4, &0x2003u32.to_le_bytes());
    mem.put(0x1000 + 8, &(0x0080_0000u32 | 0x83).to_le_bytes());
    mem.put(0x2000 + 5 * 4, &0x0003_3003u32.to_le_bytes());
    // 4-byte entries: pad so 8-byte reads succeed.
    mem.put(0x1000 + 12, &[0; 4]);
    mem.put(0x2000 + 6 * 4, &[0; 4]);
    let read8 = |g: u64| {
        let mut b = [0u8; 8];
        mem.read(g, &mut b).then_some(u64::from_le_bytes(b))
    };
    let st = (0x8000_0011, 0x1000, cr4::PSE, 0);
    assert_eq!(translate(st, 0x40_5abc, read8), Some(0x3_3abc));
    assert_eq!(translate(st, 0x81_2345, read8), Some(0x81_2345));
    assert_eq!(translate(st, 0xc0_0000, read8), None);
}

#[test]
fn no_bytes_without_the_state() {
    let m = ExitMessage::default();
    assert_eq!(code_at_rip(&m, |_, _| true), None);
}
