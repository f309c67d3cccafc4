//! Tests of the instruction emulator. Instructions are hand-encoded from the SDM opcode tables
//! and expected flags come from the SDM definitions computed with wide arithmetic (not from
//! the bit tricks of the implementation).

use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

/// Guest memory: bytes never written read as a fixed pseudo-random function of the address;
/// addresses in `[fault_from, fault_to)` fault.
#[derive(Default)]
struct Mem {
    bytes: BTreeMap<u64, u8>,
    reads: Vec<(u64, usize)>,
    writes: Vec<(u64, Vec<u8>)>,
    fault: Option<(u64, u64)>,
    /// Only writes fault.
    read_only: bool,
}

fn filler(a: u64) -> u8 {
    (a.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
}

impl Mem {
    fn check(&self, gla: u64, len: usize, write: bool) -> Result<(), AccessFault> {
        match self.fault {
            Some((lo, hi))
                if (write || !self.read_only)
                    && (0..len as u64).any(|i| (lo..hi).contains(&gla.wrapping_add(i))) =>
            {
                Err(AccessFault::NotRam { gla })
            }
            _ => Ok(()),
        }
    }
    fn get(&self, a: u64, len: usize) -> u64 {
        (0..len as u64).rev().fold(0, |v, i| {
            let b = a.wrapping_add(i);
            (v << 8) | u64::from(*self.bytes.get(&b).unwrap_or(&filler(b)))
        })
    }
    fn put(&mut self, a: u64, v: u64, len: usize) {
        for i in 0..len {
            self.bytes
                .insert(a.wrapping_add(i as u64), (v >> (8 * i)) as u8);
        }
    }
    /// The single write of the last instruction, as (address, value, length).
    fn written(&self) -> (u64, u64, usize) {
        assert_eq!(self.writes.len(), 1, "writes: {:x?}", self.writes);
        let (a, d) = &self.writes[0];
        (*a, self.get(*a, d.len().min(8)), d.len())
    }
}

impl GuestAccess for Mem {
    fn read(&mut self, gla: u64, buf: &mut [u8]) -> Result<(), AccessFault> {
        self.check(gla, buf.len(), false)?;
        self.reads.push((gla, buf.len()));
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.get(gla.wrapping_add(i as u64), 1) as u8;
        }
        Ok(())
    }
    fn write(&mut self, gla: u64, data: &[u8]) -> Result<(), AccessFault> {
        self.check(gla, data.len(), true)?;
        self.writes.push((gla, data.to_vec()));
        for (i, b) in data.iter().enumerate() {
            self.bytes.insert(gla.wrapping_add(i as u64), *b);
        }
        Ok(())
    }
}

const RAX: usize = 0;
const RCX: usize = 1;
const RDX: usize = 2;
const RBX: usize = 3;
const RSI: usize = 6;
const RDI: usize = 7;
const DS: usize = 3;
const FS: usize = 4;
const RIP: u64 = 0x40_1000;
/// RFLAGS bit 1 is always set.
const FIXED: u64 = 2;

fn cpu(bitness: u32) -> CpuState {
    let mut gprs = [0u64; 16];
    for (i, r) in gprs.iter_mut().enumerate() {
        *r = 0x1111_1111_1111_1111u64.wrapping_mul(i as u64 + 1);
    }
    gprs[RBX] = 0x20_0000;
    gprs[RSI] = 0x30_0000;
    gprs[RDI] = 0x50_0000;
    CpuState {
        gprs,
        rip: if bitness == 16 { RIP & 0xffff } else { RIP },
        rflags: FIXED,
        bitness,
        seg_base: [0; 6],
    }
}

fn run(bytes: &[u8], c: &mut CpuState, m: &mut Mem) -> Result<(), EmulateError> {
    emulate(bytes, c, m)
}

/// Runs an instruction expected to succeed and complete: checks RIP advanced by its length.
fn ok(bytes: &[u8], c: &mut CpuState, m: &mut Mem) {
    let rip = c.rip;
    run(bytes, c, m).unwrap_or_else(|e| panic!("{bytes:x?}: {e:?}"));
    assert_eq!(c.rip, rip + bytes.len() as u64, "{bytes:x?}");
}

fn sext(v: u64, bits: u32) -> i128 {
    i128::from(((v << (64 - bits)) as i64) >> (64 - bits))
}

fn parity_even(v: u64) -> bool {
    (0..8)
        .filter(|i| (v >> i) & 1 == 1)
        .count()
        .is_multiple_of(2)
}

/// ZF/SF/PF of a `bits`-bit result.
fn ref_zsp(res: u64, bits: u32) -> u64 {
    let mut f = 0;
    if res == 0 {
        f |= ZF;
    }
    if (res >> (bits - 1)) & 1 == 1 {
        f |= SF;
    }
    if parity_even(res) {
        f |= PF;
    }
    f
}

/// Reference result and status flags of `a op b` (SDM definitions).
fn reference(op: u8, a: u64, b: u64, bits: u32) -> (u64, u64) {
    let m = (1u128 << bits) - 1;
    let (a, b) = (u128::from(a) & m, u128::from(b) & m);
    let (sa, sb) = (sext(a as u64, bits), sext(b as u64, bits));
    let (min, max) = (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1);
    let (res, cf, of, af) = match op {
        b'+' => (
            a + b,
            a + b > m,
            !(min..=max).contains(&(sa + sb)),
            (a & 15) + (b & 15) > 15,
        ),
        b'-' => (
            a.wrapping_sub(b) & m,
            a < b,
            !(min..=max).contains(&(sa - sb)),
            (a & 15) < (b & 15),
        ),
        b'&' => (a & b, false, false, false),
        b'|' => (a | b, false, false, false),
        _ => (a ^ b, false, false, false),
    };
    let res = (res & m) as u64;
    let mut f = ref_zsp(res, bits);
    for (set, flag) in [(cf, CF), (of, OF), (af, AF)] {
        if set {
            f |= flag;
        }
    }
    (res, f)
}

/// `op` as (r/m,reg opcode byte for 8 bits, /digit of the immediate group).
fn alu_opcode(op: u8) -> (u8, u8) {
    match op {
        b'+' => (0x00, 0),
        b'|' => (0x08, 1),
        b'&' => (0x20, 4),
        b'-' => (0x28, 5),
        _ => (0x30, 6),
    }
}

/// Operand-size prefix bytes for `bits` in `mode`.
fn size_prefix(bits: u32, mode: u32) -> Vec<u8> {
    match (bits, mode) {
        (16, 32 | 64) | (32, 16) => vec![0x66],
        (64, _) => vec![0x48],
        _ => vec![],
    }
}

/// `op [m], rcx|ecx|cx|cl` or `op [m], imm` (imm8 sign-extended with `short`), where `[m]` is
/// ModRM.rm `rm` with mod 00.
fn encode_alu(op: u8, bits: u32, mode: u32, imm: Option<(u64, bool)>, rm: u8) -> Vec<u8> {
    let (base, digit) = alu_opcode(op);
    let mut v = size_prefix(bits, mode);
    match imm {
        None => v.extend([base + u8::from(bits != 8), 0x08 | rm]),
        Some((i, short)) => {
            let opc = match (bits, short) {
                (8, _) => 0x80,
                (_, true) => 0x83,
                _ => 0x81,
            };
            v.extend([opc, (digit << 3) | rm]);
            let n = if bits == 8 || short {
                1
            } else {
                (bits / 8).min(4) as usize
            };
            v.extend(&i.to_le_bytes()[..n]);
        }
    }
    v
}

#[test]
fn alu_known_vectors() {
    // (op, a, b, bits, result, flags) worked out by hand from the SDM.
    let cases = [
        (b'+', 0x7f, 0x01, 8, 0x80, OF | SF | AF),
        (b'+', 0xff, 0x01, 8, 0x00, CF | ZF | AF | PF),
        (b'-', 0x00, 0x01, 8, 0xff, CF | SF | AF | PF),
        (b'-', 0x80, 0x01, 8, 0x7f, OF | AF),
        (b'-', 0x8000_0000, 0x8000_0000, 32, 0, ZF | PF),
        (
            b'+',
            0x8000_0000_0000_0000,
            0x8000_0000_0000_0000,
            64,
            0,
            CF | OF | ZF | PF,
        ),
        (b'&', 0xf0f0, 0x0ff0, 16, 0x00f0, PF),
        (b'|', 0x8000, 0x0001, 16, 0x8001, SF),
        (b'^', 0x03, 0x01, 8, 0x02, 0),
    ];
    for (op, a, b, bits, res, flags) in cases {
        assert_eq!(
            reference(op, a, b, bits),
            (res, flags),
            "reference {}",
            op as char
        );
        let mut c = cpu(64);
        c.gprs[RCX] = b;
        c.rflags = FIXED | STATUS_FLAGS ^ flags;
        let mut m = Mem::default();
        m.put(0x20_0000, a, bits as usize / 8);
        ok(&encode_alu(op, bits, 64, None, 3), &mut c, &mut m);
        assert_eq!(m.written(), (0x20_0000, res, bits as usize / 8));
        assert_eq!(c.rflags, FIXED | flags, "{} {a:#x} {b:#x}", op as char);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn alu_matches_reference(
        op in prop::sample::select(b"+-&|^".to_vec()),
        bits in prop::sample::select(vec![8u32, 16, 32, 64]),
        mode in prop::sample::select(vec![16u32, 32, 64]),
        form in 0u8..3,
        a: u64, b: u64, lock: bool, flags_in: u64,
    ) {
        prop_assume!(!(bits == 64 && mode != 64));
        let size = bits as usize / 8;
        let imm = match form {
            0 => None,
            1 => Some((b, false)),
            _ => Some((b, bits != 8)),
        };
        // The value the instruction adds: imm8 and imm32 are sign-extended to the operand size.
        let src = match imm {
            None => b,
            Some((_, true)) => sext(b & 0xff, 8) as u64,
            Some(_) if bits == 64 => sext(b & 0xffff_ffff, 32) as u64,
            Some(_) => b,
        };
        let mut bytes = if lock { vec![0xf0] } else { vec![] };
        // [rbx] / [ebx] is r/m 011; [bx] in 16-bit addressing is r/m 111.
        bytes.extend(encode_alu(op, bits, mode, imm, if mode == 16 { 7 } else { 3 }));
        let mut c = cpu(mode);
        c.gprs[RCX] = b;
        c.rflags = (flags_in & !(RF | (1 << 1))) | FIXED;
        let mut m = Mem::default();
        let addr = c.gprs[RBX] & if mode == 16 { 0xffff } else { u64::MAX };
        m.put(addr, a, size);
        let before = c;
        run(&bytes, &mut c, &mut m).unwrap();
        let (res, flags) = reference(op, a, src, bits);
        prop_assert_eq!(m.written(), (addr, res, size));
        prop_assert_eq!(c.rflags, (before.rflags & !STATUS_FLAGS) | flags);
        prop_assert_eq!(c.gprs, before.gprs);
        prop_assert_eq!(c.rip, before.rip + bytes.len() as u64);
    }

    #[test]
    fn random_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..20),
        mode in prop::sample::select(vec![16u32, 32, 64, 7]),
        gprs: [u64; 16], rflags: u64, seg_base: [u64; 6], rip: u64,
        fault: Option<(u64, u64)>,
    ) {
        let mut c = CpuState { gprs, rip, rflags, bitness: mode, seg_base };
        let before = c;
        let mut m = Mem { fault, ..Mem::default() };
        match emulate(&bytes, &mut c, &mut m) {
            Ok(()) => prop_assert!(m.writes.len() <= 1),
            Err(_) => {
                prop_assert_eq!(c, before);
                prop_assert!(m.writes.is_empty());
            }
        }
    }

    /// Random prefixes and operands around the opcodes the emulator handles.
    #[test]
    fn near_supported_bytes_never_panic(
        prefixes in prop::collection::vec(prop::sample::select(vec![
            0xf0u8, 0xf2, 0xf3, 0x66, 0x67, 0x26, 0x2e, 0x36, 0x3e, 0x64, 0x65, 0x40, 0x44, 0x48,
            0x4c, 0x4f,
        ]), 0..4),
        opcode in prop::sample::select(vec![
            vec![0x88u8], vec![0x89], vec![0xc6], vec![0xc7], vec![0x86], vec![0x87], vec![0x80],
            vec![0x81], vec![0x83], vec![0x01], vec![0x09], vec![0x21], vec![0x29], vec![0x31],
            vec![0xa2], vec![0xa3], vec![0xa4], vec![0xa5], vec![0xaa], vec![0xab], vec![0x8c],
            vec![0x0f, 0xb0], vec![0x0f, 0xb1], vec![0x0f, 0xc7], vec![0x0f, 0xab],
            vec![0x0f, 0xb3], vec![0x0f, 0xbb], vec![0x0f, 0xba], vec![0x0f, 0xa3],
        ]),
        rest in prop::collection::vec(any::<u8>(), 0..12),
        mode in prop::sample::select(vec![16u32, 32, 64]),
        gprs: [u64; 16], rflags: u64, seg_base: [u64; 6], rip: u64,
        fault: Option<(u64, u64)>, read_only: bool,
    ) {
        let bytes: Vec<u8> = prefixes.into_iter().chain(opcode).chain(rest).collect();
        let mut c = CpuState { gprs, rip, rflags, bitness: mode, seg_base };
        let before = c;
        let mut m = Mem { fault, read_only, ..Mem::default() };
        match emulate(&bytes, &mut c, &mut m) {
            Ok(()) => {
                prop_assert!(m.writes.len() <= 1);
                if let Some((_, d)) = m.writes.first() {
                    prop_assert!([1, 2, 4, 8, 16].contains(&d.len()));
                }
                prop_assert_eq!(c.rflags & RF, if c.rip == before.rip { before.rflags & RF } else { 0 });
            }
            Err(_) => {
                prop_assert_eq!(c, before);
                prop_assert!(m.writes.is_empty());
            }
        }
    }

    #[test]
    fn bit_ops_reg_offset_reach_the_right_bit(
        which in 0u8..3, bits in prop::sample::select(vec![16u32, 32, 64]),
        offset: u64, mode in prop::sample::select(vec![32u32, 64]),
    ) {
        prop_assume!(!(bits == 64 && mode != 64));
        // BTS 0F AB, BTR 0F B3, BTC 0F BB, each `op [rbx], rcx/ecx/cx`.
        let opc = [0xab, 0xb3, 0xbb][which as usize];
        let mut bytes = size_prefix(bits, mode);
        bytes.extend([0x0f, opc, 0x0b]);
        let mut c = cpu(mode);
        c.gprs[RCX] = offset;
        let mut m = Mem::default();
        // The bit string starts at rbx; the offset is signed at the operand size.
        let base = c.gprs[RBX];
        let pos = i128::from(base) * 8 + sext(offset, bits);
        let addr_mask = if mode == 64 { u64::MAX } else { 0xffff_ffff };
        let (byte, bit) = ((pos >> 3) as u64 & addr_mask, (pos & 7) as u32);
        let old = (m.get(byte, 1) >> bit) & 1;
        run(&bytes, &mut c, &mut m).unwrap();
        let (gla, _, len) = m.written();
        prop_assert_eq!(len, bits as usize / 8);
        prop_assert!(byte.wrapping_sub(gla) < len as u64);
        let new = (m.get(byte, 1) >> bit) & 1;
        prop_assert_eq!(new, [1, 0, old ^ 1][which as usize]);
        prop_assert_eq!(c.rflags & CF != 0, old == 1);
        // Nothing else in the operand changed.
        let other = m.writes[0].1.iter().enumerate().map(|(i, &x)| {
            let a = gla.wrapping_add(i as u64);
            if a == byte { (x ^ filler(a)) & !(1 << bit) } else { x ^ filler(a) }
        });
        prop_assert!(other.into_iter().all(|x| x == 0));
    }
}

#[test]
fn mov_forms() {
    let rcx = 0x1122_3344_5566_7788u64;
    // (mode, bytes, address, value, length)
    let cases: &[(u32, &[u8], u64, u64, usize)] = &[
        (64, &[0x48, 0x89, 0x0b], 0x20_0000, rcx, 8),
        (64, &[0x89, 0x0b], 0x20_0000, rcx & 0xffff_ffff, 4),
        (64, &[0x66, 0x89, 0x0b], 0x20_0000, 0x7788, 2),
        (64, &[0x88, 0x0b], 0x20_0000, 0x88, 1),
        (64, &[0x88, 0x2b], 0x20_0000, 0x77, 1),       // ch
        (64, &[0x40, 0x88, 0x2b], 0x20_0000, 0x66, 1), // bpl = 0x...66
        (64, &[0xc6, 0x03, 0xab], 0x20_0000, 0xab, 1),
        (64, &[0x66, 0xc7, 0x03, 0x34, 0x12], 0x20_0000, 0x1234, 2),
        (
            64,
            &[0xc7, 0x03, 0x78, 0x56, 0x34, 0x12],
            0x20_0000,
            0x1234_5678,
            4,
        ),
        (
            64,
            &[0x48, 0xc7, 0x03, 0xf0, 0xff, 0xff, 0xff],
            0x20_0000,
            (-16i64) as u64,
            8,
        ),
        // [rbx + rcx*4 + 0x10] with rcx = 3 (set below for this case).
        (
            64,
            &[0x48, 0x89, 0x44, 0x8b, 0x10],
            0x20_0000 + 12 + 0x10,
            0x1111_1111_1111_1111,
            8,
        ),
        // [rip + 0x10]: relative to the next instruction.
        (
            64,
            &[0x48, 0x89, 0x05, 0x10, 0, 0, 0],
            RIP + 7 + 0x10,
            0x1111_1111_1111_1111,
            8,
        ),
        // fs: applies in 64-bit mode, ds: does not.
        (
            64,
            &[0x64, 0x48, 0x89, 0x03],
            0x7000_0000 + 0x20_0000,
            0x1111_1111_1111_1111,
            8,
        ),
        (
            64,
            &[0x3e, 0x48, 0x89, 0x03],
            0x20_0000,
            0x1111_1111_1111_1111,
            8,
        ),
        // 32-bit address size: [ebx] wraps at 4 GiB.
        (
            64,
            &[0x67, 0x48, 0x89, 0x03],
            0x20_0000,
            0x1111_1111_1111_1111,
            8,
        ),
        // moffs64 and moffs32.
        (
            64,
            &[0x48, 0xa3, 8, 7, 6, 5, 4, 3, 2, 1],
            0x0102_0304_0506_0708,
            0x1111_1111_1111_1111,
            8,
        ),
        (
            32,
            &[0xa3, 0x00, 0x30, 0x00, 0x00],
            0x3000 + 0x9000_0000,
            0x1111_1111,
            4,
        ),
        // 32-bit mode: ds base applies and wraps at 4 GiB.
        (32, &[0x89, 0x0b], 0x9000_0000 + 0x20_0000, 0x5566_7788, 4),
        (32, &[0x66, 0xc7, 0x03, 0xcd, 0xab], 0x9020_0000, 0xabcd, 2),
        (32, &[0xc6, 0x03, 0x01], 0x9020_0000, 1, 1),
        // 16-bit addressing in 32-bit code: [bx].
        (32, &[0x67, 0x89, 0x07], 0x9000_0000, 0x1111_1111, 4),
        // 16-bit code: [bx] and a 16-bit store.
        (16, &[0x89, 0x07], 0x9000_0000, 0x1111, 2),
        (16, &[0x66, 0x89, 0x07], 0x9000_0000, 0x1111_1111, 4),
    ];
    for &(mode, bytes, addr, value, len) in cases {
        let mut c = cpu(mode);
        c.gprs[RCX] = rcx;
        c.gprs[RAX] = 0x1111_1111_1111_1111;
        c.gprs[5] = 0x1111_1111_1111_1166; // rbp
        if bytes.contains(&0x44) {
            c.gprs[RCX] = 3;
        }
        c.seg_base[FS] = 0x7000_0000;
        c.seg_base[DS] = 0x9000_0000;
        if bytes == [0x67, 0x48, 0x89, 0x03] {
            c.gprs[RBX] = 0x1_0020_0000;
        }
        if mode == 32 && bytes[0] == 0x89 {
            c.seg_base[DS] = 0xffff_f000_9000_0000; // only the low 32 bits count
        }
        if mode != 64 && bytes.ends_with(&[0x07]) {
            c.gprs[RBX] = 0xffff_0000;
        }
        let mut before = c;
        let mut m = Mem::default();
        ok(bytes, &mut c, &mut m);
        assert_eq!(m.written(), (addr, value, len), "{bytes:x?}");
        assert!(m.reads.is_empty());
        before.rip = c.rip;
        assert_eq!(c, before, "{bytes:x?}: registers and flags unchanged");
    }
}

#[test]
fn xchg() {
    // (mode, bytes, length, memory after, rcx after)
    let cases: &[(u32, &[u8], usize, u64, u64)] = &[
        (
            64,
            &[0x48, 0x87, 0x0b],
            8,
            0x1234_5678_9abc_de0f,
            0xaaaa_bbbb_cccc_dddd,
        ),
        // A 32-bit register write zero-extends.
        (64, &[0x87, 0x0b], 4, 0x9abc_de0f, 0xcccc_dddd),
        (64, &[0x66, 0x87, 0x0b], 2, 0xde0f, 0x1234_5678_9abc_dddd),
        (64, &[0x86, 0x2b], 1, 0xde, 0x1234_5678_9abc_dd0f), // ch
        (32, &[0xf0, 0x87, 0x0b], 4, 0x9abc_de0f, 0xcccc_dddd),
    ];
    for &(mode, bytes, len, mem_after, rcx_after) in cases {
        let mut c = cpu(mode);
        c.gprs[RCX] = 0x1234_5678_9abc_de0f;
        let mut m = Mem::default();
        m.put(0x20_0000, 0xaaaa_bbbb_cccc_dddd, 8);
        let flags = c.rflags;
        ok(bytes, &mut c, &mut m);
        assert_eq!(m.written(), (0x20_0000, mem_after, len), "{bytes:x?}");
        assert_eq!(c.gprs[RCX], rcx_after, "{bytes:x?}");
        assert_eq!(m.reads, vec![(0x20_0000, len)]);
        assert_eq!(c.rflags, flags);
    }
}

#[test]
fn cmpxchg_success_and_failure() {
    // (bytes, mode, size, accumulator, memory, source)
    let forms: &[(&[u8], u32, usize)] = &[
        (&[0xf0, 0x48, 0x0f, 0xb1, 0x0b], 64, 8),
        (&[0xf0, 0x0f, 0xb1, 0x0b], 64, 4),
        (&[0x66, 0x0f, 0xb1, 0x0b], 64, 2),
        (&[0x0f, 0xb0, 0x0b], 64, 1),
        (&[0xf0, 0x0f, 0xb1, 0x0b], 32, 4),
        (&[0xf0, 0x0f, 0xb0, 0x0b], 32, 1),
    ];
    let rax = 0xffff_ffff_0000_0005u64;
    for &(bytes, mode, size) in forms {
        let bits = 8 * size as u32;
        for equal in [true, false] {
            let memval = if equal { rax & mask(size) } else { 7 };
            let mut c = cpu(mode);
            c.gprs[RAX] = rax;
            c.gprs[RCX] = 0x8765_4321_0fed_cba9;
            let mut m = Mem::default();
            m.put(0x20_0000, memval, size);
            let before = c;
            ok(bytes, &mut c, &mut m);
            let (_, flags) = reference(b'-', rax, memval, bits);
            assert_eq!(c.rflags, FIXED | flags, "{bytes:x?} equal={equal}");
            assert_eq!(c.rflags & ZF != 0, equal);
            let (addr, v, n) = m.written();
            assert_eq!((addr, n), (0x20_0000, size));
            if equal {
                assert_eq!(v, c.gprs[RCX] & mask(size));
                assert_eq!(c.gprs[RAX], rax, "accumulator untouched on success");
            } else {
                assert_eq!(v, memval, "old value written back");
                // 32- and 64-bit accumulator writes zero-extend, 8- and 16-bit ones merge.
                let expected = if size >= 4 {
                    memval
                } else {
                    (rax & !mask(size)) | memval
                };
                assert_eq!(c.gprs[RAX], expected);
            }
            assert_eq!(c.gprs[1..], before.gprs[1..]);
        }
    }
}

#[test]
fn cmpxchg8b_and_16b() {
    for mode in [32, 64] {
        for equal in [true, false] {
            let mut c = cpu(mode);
            c.gprs[RAX] = 0x1_1111_1111;
            c.gprs[RDX] = 0x2_2222_2222;
            c.gprs[RBX] = 0x3_3333_3333;
            c.gprs[RCX] = 0x4_4444_4444;
            c.rflags = FIXED | CF | OF;
            let old = if equal {
                0x2222_2222_1111_1111
            } else {
                0x0bad_cafe_dead_beef
            };
            let mut m = Mem::default();
            m.put(0x50_0000, old, 8);
            ok(&[0xf0, 0x0f, 0xc7, 0x0f], &mut c, &mut m);
            let (addr, v, n) = m.written();
            assert_eq!((addr, n), (0x50_0000, 8));
            if equal {
                assert_eq!(v, 0x4444_4444_3333_3333);
                assert_eq!(c.rflags, FIXED | CF | OF | ZF);
                assert_eq!((c.gprs[RAX], c.gprs[RDX]), (0x1_1111_1111, 0x2_2222_2222));
            } else {
                assert_eq!(v, old);
                assert_eq!(c.rflags, FIXED | CF | OF);
                assert_eq!((c.gprs[RAX], c.gprs[RDX]), (0xdead_beef, 0x0bad_cafe));
            }
        }
    }
    // CMPXCHG16B.
    for equal in [true, false] {
        let mut c = cpu(64);
        c.gprs[RAX] = 1;
        c.gprs[RDX] = 2;
        c.gprs[RBX] = 3;
        c.gprs[RCX] = 4;
        let mut m = Mem::default();
        m.put(0x50_0000, 1, 8);
        m.put(0x50_0008, if equal { 2 } else { 9 }, 8);
        ok(&[0xf0, 0x48, 0x0f, 0xc7, 0x0f], &mut c, &mut m);
        assert_eq!(m.writes.len(), 1);
        assert_eq!((m.writes[0].0, m.writes[0].1.len()), (0x50_0000, 16));
        let (lo, hi) = (m.get(0x50_0000, 8), m.get(0x50_0008, 8));
        if equal {
            assert_eq!((lo, hi, c.rflags & ZF), (3, 4, ZF));
        } else {
            assert_eq!((lo, hi, c.rflags & ZF), (1, 9, 0));
            assert_eq!((c.gprs[RAX], c.gprs[RDX]), (1, 9));
        }
    }
    // A misaligned CMPXCHG16B operand is #GP, with no access.
    let mut c = cpu(64);
    c.gprs[RDI] += 8;
    let before = c;
    let mut m = Mem::default();
    let r = run(&[0xf0, 0x48, 0x0f, 0xc7, 0x0f], &mut c, &mut m);
    assert_eq!(r, Err(EmulateError::GeneralProtection));
    assert_eq!(c, before);
    assert!(m.reads.is_empty() && m.writes.is_empty());
}

#[test]
fn bit_ops_immediate_and_register() {
    // (mode, bytes, rcx, address, memory before, memory after, length, CF)
    type Case = (u32, &'static [u8], u64, u64, u64, u64, usize, bool);
    let cases: &[Case] = &[
        // lock bts qword [rbx], 63
        (
            64,
            &[0xf0, 0x48, 0x0f, 0xba, 0x2b, 63],
            0,
            0x20_0000,
            1,
            1 | 1 << 63,
            8,
            false,
        ),
        // lock btr dword [rbx], 0x41 (bit 1: the immediate is taken modulo 32)
        (
            64,
            &[0xf0, 0x0f, 0xba, 0x33, 0x41],
            0,
            0x20_0000,
            0xff,
            0xfd,
            4,
            true,
        ),
        // btc word [rbx], 15
        (
            32,
            &[0x66, 0x0f, 0xba, 0x3b, 15],
            0,
            0x20_0000,
            0x8000,
            0,
            2,
            true,
        ),
        // lock bts [rbx], rcx: in the operand, past it, and before it.
        (
            64,
            &[0xf0, 0x48, 0x0f, 0xab, 0x0b],
            3,
            0x20_0000,
            0,
            8,
            8,
            false,
        ),
        (
            64,
            &[0xf0, 0x48, 0x0f, 0xab, 0x0b],
            64 + 5,
            0x20_0008,
            0x20,
            0x20,
            8,
            true,
        ),
        (
            64,
            &[0xf0, 0x48, 0x0f, 0xab, 0x0b],
            u64::MAX,
            0x1f_fff8,
            0,
            1 << 63,
            8,
            false,
        ),
        // btr [rbx], ecx with ecx = -33 and garbage above: dword at rbx - 8, bit 31.
        (
            64,
            &[0x0f, 0xb3, 0x0b],
            0xdead_0000_ffff_ffdf,
            0x1f_fff8,
            u32::MAX as u64,
            0x7fff_ffff,
            4,
            true,
        ),
        // btc [rbx], cx with cx = -32768: word at rbx - 4096, bit 0.
        (
            32,
            &[0x66, 0x0f, 0xbb, 0x0b],
            0x8000,
            0x1f_f000,
            0,
            1,
            2,
            false,
        ),
        (
            32,
            &[0xf0, 0x0f, 0xab, 0x0b],
            31,
            0x20_0000,
            0,
            1 << 31,
            4,
            false,
        ),
    ];
    for &(mode, bytes, rcx, addr, before_v, after_v, len, cf) in cases {
        let mut c = cpu(mode);
        c.gprs[RCX] = rcx;
        c.rflags = FIXED | ZF | if cf { 0 } else { CF };
        let mut m = Mem::default();
        m.put(addr, before_v, len);
        let regs = c.gprs;
        ok(bytes, &mut c, &mut m);
        assert_eq!(m.written(), (addr, after_v, len), "{bytes:x?} rcx={rcx:#x}");
        assert_eq!(c.rflags, FIXED | ZF | if cf { CF } else { 0 }, "{bytes:x?}");
        assert_eq!(c.gprs, regs);
    }
}

#[test]
fn stos_and_movs() {
    // stosq, stosb, 32-bit stosd with es base, addr32 stosq in 64-bit mode (rdi zero-extends).
    let mut c = cpu(64);
    let mut m = Mem::default();
    ok(&[0x48, 0xab], &mut c, &mut m);
    assert_eq!(m.written(), (0x50_0000, 0x1111_1111_1111_1111, 8));
    assert_eq!(c.gprs[RDI], 0x50_0008);

    let mut c = cpu(64);
    c.rflags |= DF;
    let mut m = Mem::default();
    ok(&[0xaa], &mut c, &mut m);
    assert_eq!(m.written(), (0x50_0000, 0x11, 1));
    assert_eq!(c.gprs[RDI], 0x4f_ffff);

    let mut c = cpu(32);
    c.seg_base[0] = 0x1000;
    c.seg_base[DS] = 0xdead_0000; // stos always uses es
    let mut m = Mem::default();
    ok(&[0x3e, 0xab], &mut c, &mut m);
    assert_eq!(m.written(), (0x50_1000, 0x1111_1111, 4));
    assert_eq!(c.gprs[RDI], 0x50_0004);

    let mut c = cpu(64);
    c.gprs[RDI] = 0xffff_ffff_ffff_fffc;
    let mut m = Mem::default();
    ok(&[0x67, 0x48, 0xab], &mut c, &mut m);
    assert_eq!(m.written(), (0xffff_fffc, 0x1111_1111_1111_1111, 8));
    assert_eq!(c.gprs[RDI], 4);

    // movsd: reads ds:esi (here fs:rsi), writes es:rdi, both advance.
    let mut c = cpu(64);
    c.seg_base[FS] = 0x1_0000_0000;
    let mut m = Mem::default();
    m.put(0x1_0030_0000, 0x1234_5678, 4);
    ok(&[0x64, 0xa5], &mut c, &mut m);
    assert_eq!(m.reads, vec![(0x1_0030_0000, 4)]);
    assert_eq!(m.written(), (0x50_0000, 0x1234_5678, 4));
    assert_eq!((c.gprs[RSI], c.gprs[RDI]), (0x30_0004, 0x50_0004));
}

#[test]
fn rep_stos_one_element_per_call() {
    let mut c = cpu(64);
    c.gprs[RCX] = 2;
    let mut m = Mem::default();
    run(&[0xf3, 0x48, 0xab], &mut c, &mut m).unwrap();
    assert_eq!(m.written(), (0x50_0000, 0x1111_1111_1111_1111, 8));
    assert_eq!((c.rip, c.gprs[RCX], c.gprs[RDI]), (RIP, 1, 0x50_0008));
    m.writes.clear();
    run(&[0xf3, 0x48, 0xab], &mut c, &mut m).unwrap();
    assert_eq!(m.written(), (0x50_0008, 0x1111_1111_1111_1111, 8));
    assert_eq!((c.rip, c.gprs[RCX]), (RIP + 3, 0));
    // A zero count does nothing but advance.
    let mut m = Mem::default();
    c.rip = RIP;
    run(&[0xf3, 0x48, 0xab], &mut c, &mut m).unwrap();
    assert!(m.writes.is_empty());
    assert_eq!((c.rip, c.gprs[RDI]), (RIP + 3, 0x50_0010));
    // The count is cx in 16-bit addressing: upper bits of rcx do not count.
    let mut c = cpu(32);
    c.gprs[RCX] = 0x1_0000;
    let mut m = Mem::default();
    run(&[0x67, 0xf3, 0xaa], &mut c, &mut m).unwrap();
    assert!(m.writes.is_empty());
    assert_eq!(c.rip, RIP + 3);
}

#[test]
fn rip_wraps_and_rf_clears() {
    let mut c = cpu(32);
    c.rip = 0xffff_fffe;
    c.rflags |= RF;
    let mut m = Mem::default();
    run(&[0x89, 0x0b], &mut c, &mut m).unwrap();
    assert_eq!((c.rip, c.rflags), (0, FIXED));
    let mut c = cpu(16);
    c.rip = 0xffff;
    run(&[0x89, 0x07], &mut c, &mut m).unwrap();
    assert_eq!(c.rip, 1);
}

#[test]
fn errors() {
    let cases: &[(u32, &[u8], EmulateError)] = &[
        (64, &[], EmulateError::Truncated),
        (64, &[0x48], EmulateError::Truncated),
        (64, &[0x48, 0x89], EmulateError::Truncated),
        (64, &[0x48, 0xc7, 0x03, 0xf0], EmulateError::Truncated),
        (64, &[0x06, 0x90, 0x90], EmulateError::Decode), // push es: invalid in 64-bit
        (64, &[0xf0, 0x48, 0x89, 0x0b], EmulateError::Decode), // lock mov: #UD
        (64, &[0xf0, 0x48, 0x01, 0xc8], EmulateError::Decode), // lock add reg, reg: #UD
        (64, &[0x48, 0x01, 0xc8], unsupported(Mnemonic::Add, 3)), // add rax, rcx
        (
            64,
            &[0x48, 0x0f, 0xaf, 0x03],
            unsupported(Mnemonic::Imul, 4),
        ), // imul rax, [rbx]
        (64, &[0x8e, 0x1b], unsupported(Mnemonic::Mov, 2)), // mov ds, [rbx]
        (
            64,
            &[0xf3, 0x0f, 0x6f, 0x03],
            unsupported(Mnemonic::Movdqu, 4),
        ), // movdqu xmm0, [rbx]
        (64, &[0x48, 0xff, 0x03], unsupported(Mnemonic::Inc, 3)), // inc qword [rbx]
        (64, &[0x0f, 0x0b], unsupported(Mnemonic::Ud2, 2)),
        (64, &[0x8c, 0x1b], unsupported(Mnemonic::Mov, 2)), // mov [rbx], ds
        (64, &[0x0f, 0xa3, 0x0b], unsupported(Mnemonic::Bt, 3)), // bt reads only
        (64, &[0xf2, 0x48, 0xab], unsupported(Mnemonic::Stosq, 3)),
        (64, &[0x0f, 0x29, 0x03], unsupported(Mnemonic::Movaps, 3)),
        // VEX (vmovaps [rbx], xmm0) is not decoded at all; neither is 3DNow!.
        (64, &[0xc5, 0xf8, 0x29, 0x03], EmulateError::Decode),
        (32, &[0xc5, 0xf8, 0x29, 0x03], EmulateError::Decode),
        (64, &[0x0f, 0x0f, 0x03, 0x9e], EmulateError::Decode),
        // pop [ebx] (XOP space when ModRM.reg != 0) writes memory but is not emulated.
        (32, &[0x8f, 0x03], unsupported(Mnemonic::Pop, 2)),
        (8, &[0x89, 0x0b], EmulateError::BadBitness(8)),
    ];
    for &(mode, bytes, err) in cases {
        let mut c = cpu(mode);
        let before = c;
        let mut m = Mem::default();
        let r = run(bytes, &mut c, &mut m);
        let r = r.map_err(|e| match e {
            EmulateError::Unsupported { mnemonic, len, .. } => unsupported(mnemonic, len),
            e => e,
        });
        assert_eq!(r, Err(err), "{bytes:x?}");
        assert_eq!(c, before);
        assert!(m.writes.is_empty());
    }
}

fn unsupported(mnemonic: Mnemonic, len: u8) -> EmulateError {
    EmulateError::Unsupported {
        mnemonic,
        len,
        reason: "",
    }
}

#[test]
fn faults_leave_state_unchanged() {
    // xchg [rbx], rcx; lock cmpxchg [rbx], rcx; lock bts [rbx], rcx; rep stosq.
    let insns: [&[u8]; 4] = [
        &[0x48, 0x87, 0x0b],
        &[0xf0, 0x48, 0x0f, 0xb1, 0x0b],
        &[0xf0, 0x48, 0x0f, 0xab, 0x0b],
        &[0xf3, 0x48, 0xab],
    ];
    for bytes in insns {
        let target = if bytes[0] == 0xf3 {
            0x50_0000
        } else {
            0x20_0000
        };
        for read_only in [false, true] {
            for (lo, hi) in [(0x20_0007, 0x20_0008), (0x50_0000, 0x50_0001)] {
                let mut c = cpu(64);
                c.gprs[RCX] = 5;
                let before = c;
                let mut m = Mem {
                    fault: Some((lo, hi)),
                    read_only,
                    ..Mem::default()
                };
                let r = run(bytes, &mut c, &mut m);
                if lo & !0xff == target {
                    let gla = AccessFault::NotRam { gla: target };
                    assert_eq!(r, Err(EmulateError::Fault(gla)), "{bytes:x?}");
                    assert_eq!(c, before);
                    assert!(m.writes.is_empty());
                    // Read-modify-writes read before they write.
                    assert_eq!(m.reads.len(), usize::from(read_only && bytes[0] != 0xf3));
                } else {
                    assert!(r.is_ok(), "{bytes:x?}");
                    assert_eq!(m.writes.len(), 1);
                }
            }
        }
    }
}

#[test]
fn init_then_emulate() {
    init();
    init();
    let mut c = cpu(64);
    let mut m = Mem::default();
    ok(&[0x48, 0x89, 0x0b], &mut c, &mut m);
    assert_eq!(m.written(), (0x20_0000, 0x2222_2222_2222_2222, 8));
}
