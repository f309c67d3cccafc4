//! The forms a device access needs, against a reference model: random instructions of every
//! form (encoded here from the SDM's opcode tables), random registers, flags and memory; the
//! emulator must give the registers, RFLAGS, RIP and memory the reference gives. The
//! reference is written the plain way: values as `u128`/`i128`, one `match` per form.

use super::*;
use proptest::prelude::*;

/// The memory operand's address (in RBX) and the code's.
const ADDR: u64 = 0x1000;
const CODE: u64 = 0x40_0000;
const RBX: usize = 3;

/// Eight bytes of memory at [`ADDR`], counting accesses.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Bytes {
    mem: [u8; 8],
    reads: usize,
    writes: usize,
}

impl GuestAccess for Bytes {
    fn read(&mut self, gla: u64, buf: &mut [u8]) -> Result<(), AccessFault> {
        let at = gla.wrapping_sub(ADDR) as usize;
        let src = self
            .mem
            .get(at..at + buf.len())
            .ok_or(AccessFault::NotRam { gla })?;
        buf.copy_from_slice(src);
        self.reads += 1;
        Ok(())
    }
    fn write(&mut self, gla: u64, data: &[u8]) -> Result<(), AccessFault> {
        let at = gla.wrapping_sub(ADDR) as usize;
        let dst = self
            .mem
            .get_mut(at..at + data.len())
            .ok_or(AccessFault::NotRam { gla })?;
        dst.copy_from_slice(data);
        self.writes += 1;
        Ok(())
    }
}

/// ALU operations by their `/digit` (and opcode row).
#[derive(Clone, Copy, Debug)]
enum Op {
    Add = 0,
    Or = 1,
    And = 4,
    Sub = 5,
    Xor = 6,
    Cmp = 7,
}

/// One instruction form with its operands: `size` in bytes, `reg` the register operand.
#[derive(Clone, Copy, Debug)]
enum Form {
    Store {
        size: u32,
        reg: usize,
    },
    Load {
        size: u32,
        reg: usize,
    },
    StoreImm {
        size: u32,
        imm: i32,
    },
    MoffsLoad {
        size: u32,
    },
    MoffsStore {
        size: u32,
    },
    Movzx {
        dst: u32,
        src: u32,
        reg: usize,
    },
    Movsx {
        dst: u32,
        src: u32,
        reg: usize,
    },
    AluToMem {
        op: Op,
        size: u32,
        reg: usize,
    },
    AluToReg {
        op: Op,
        size: u32,
        reg: usize,
    },
    AluImm {
        op: Op,
        size: u32,
        imm: i32,
        short: bool,
    },
    TestReg {
        size: u32,
        reg: usize,
    },
    TestImm {
        size: u32,
        imm: i32,
    },
    Xchg {
        size: u32,
        reg: usize,
    },
}

fn size() -> impl Strategy<Value = u32> {
    prop_oneof![Just(1u32), Just(2), Just(4), Just(8)]
}

/// Any register but RBX (the address).
fn reg() -> impl Strategy<Value = usize> {
    (0usize..15).prop_map(|r| if r >= RBX { r + 1 } else { r })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::Add),
        Just(Op::Or),
        Just(Op::And),
        Just(Op::Sub),
        Just(Op::Xor),
        Just(Op::Cmp)
    ]
}

fn form() -> impl Strategy<Value = Form> {
    prop_oneof![
        (size(), reg()).prop_map(|(size, reg)| Form::Store { size, reg }),
        (size(), reg()).prop_map(|(size, reg)| Form::Load { size, reg }),
        (size(), any::<i32>()).prop_map(|(size, imm)| Form::StoreImm { size, imm }),
        size().prop_map(|size| Form::MoffsLoad { size }),
        size().prop_map(|size| Form::MoffsStore { size }),
        (
            prop_oneof![Just(2u32), Just(4), Just(8)],
            prop_oneof![Just(1u32), Just(2)],
            reg()
        )
            .prop_map(|(dst, src, reg)| Form::Movzx { dst, src, reg }),
        (
            prop_oneof![
                Just((2u32, 1u32)),
                Just((4, 1)),
                Just((8, 1)),
                Just((4, 2)),
                Just((8, 2)),
                Just((8, 4))
            ],
            reg()
        )
            .prop_map(|((dst, src), reg)| Form::Movsx { dst, src, reg }),
        (op(), size(), reg()).prop_map(|(op, size, reg)| Form::AluToMem { op, size, reg }),
        (op(), size(), reg()).prop_map(|(op, size, reg)| Form::AluToReg { op, size, reg }),
        (op(), size(), any::<i32>(), any::<bool>()).prop_map(|(op, size, imm, short)| {
            Form::AluImm {
                op,
                size,
                imm,
                short: short && size > 1,
            }
        }),
        (size(), reg()).prop_map(|(size, reg)| Form::TestReg { size, reg }),
        (size(), any::<i32>()).prop_map(|(size, imm)| Form::TestImm { size, imm }),
        (size(), reg()).prop_map(|(size, reg)| Form::Xchg { size, reg }),
    ]
}

/// Prefixes for an operand of `size` with register `reg` in ModRM.reg: 66 for 16 bits, and
/// always a REX (so byte registers 4..7 are SPL..DIL), with W for 64 bits.
fn prefixes(size: u32, reg: usize) -> Vec<u8> {
    let mut p = Vec::new();
    if size == 2 {
        p.push(0x66);
    }
    p.push(0x40 | u8::from(size == 8) << 3 | u8::from(reg >= 8) << 2);
    p
}

/// ModRM for `[rbx]` with `reg` (or a `/digit`).
fn modrm(reg: usize) -> u8 {
    ((reg as u8 & 7) << 3) | 3
}

/// The immediate of `size` (an `imm32` for 64 bits), little-endian.
fn imm_bytes(imm: i32, size: u32) -> Vec<u8> {
    imm.to_le_bytes()[..size.min(4) as usize].to_vec()
}

/// Byte (`b`) or full-size (`b + 1`) form of an opcode.
fn wide(b: u8, size: u32) -> u8 {
    if size == 1 {
        b
    } else {
        b + 1
    }
}

fn encode(f: Form) -> Vec<u8> {
    let mut out;
    match f {
        Form::Store { size, reg } | Form::Load { size, reg } | Form::Xchg { size, reg } => {
            out = prefixes(size, reg);
            let base = match f {
                Form::Store { .. } => 0x88,
                Form::Load { .. } => 0x8a,
                _ => 0x86,
            };
            out.extend([wide(base, size), modrm(reg)]);
        }
        Form::StoreImm { size, imm } => {
            out = prefixes(size, 0);
            out.extend([wide(0xc6, size), modrm(0)]);
            out.extend(imm_bytes(imm, size));
        }
        Form::MoffsLoad { size } | Form::MoffsStore { size } => {
            out = prefixes(size, 0);
            let base = if matches!(f, Form::MoffsLoad { .. }) {
                0xa0
            } else {
                0xa2
            };
            out.push(wide(base, size));
            out.extend(ADDR.to_le_bytes());
        }
        Form::Movzx { dst, src, reg } | Form::Movsx { dst, src, reg } => {
            out = prefixes(dst, reg);
            if src == 4 {
                out.push(0x63);
            } else {
                let base = if matches!(f, Form::Movzx { .. }) {
                    0xb6
                } else {
                    0xbe
                };
                out.extend([0x0f, base + u8::from(src == 2)]);
            }
            out.push(modrm(reg));
        }
        Form::AluToMem { op, size, reg } | Form::AluToReg { op, size, reg } => {
            out = prefixes(size, reg);
            let dir = if matches!(f, Form::AluToReg { .. }) {
                2
            } else {
                0
            };
            out.extend([wide((op as u8) * 8 + dir, size), modrm(reg)]);
        }
        Form::AluImm {
            op,
            size,
            imm,
            short,
        } => {
            out = prefixes(size, 0);
            if short {
                out.extend([0x83, modrm(op as usize), imm as u8]);
            } else {
                out.extend([wide(0x80, size), modrm(op as usize)]);
                out.extend(imm_bytes(imm, size));
            }
        }
        Form::TestReg { size, reg } => {
            out = prefixes(size, reg);
            out.extend([wide(0x84, size), modrm(reg)]);
        }
        Form::TestImm { size, imm } => {
            out = prefixes(size, 0);
            out.extend([wide(0xf6, size), modrm(0)]);
            out.extend(imm_bytes(imm, size));
        }
    }
    out
}

// ----- The reference -----

fn bits_mask(size: u32) -> u64 {
    if size == 8 {
        u64::MAX
    } else {
        (1u64 << (8 * size)) - 1
    }
}

/// `v` of `size` bytes as a signed number.
fn signed(v: u64, size: u32) -> i128 {
    let v = v & bits_mask(size);
    let top = 1u128 << (8 * size - 1);
    if u128::from(v) & top != 0 {
        i128::from(v) - (1i128 << (8 * size))
    } else {
        i128::from(v)
    }
}

/// A register as `size` bytes (REX: byte registers are the low bytes of all 16).
fn reg_get(g: &[u64; 16], r: usize, size: u32) -> u64 {
    g[r] & bits_mask(size)
}

/// Writes a register as the processor does: 1 and 2 bytes merge, 4 zero-extends.
fn reg_set(g: &mut [u64; 16], r: usize, size: u32, v: u64) {
    let m = bits_mask(size);
    g[r] = match size {
        4 => v & m,
        8 => v,
        _ => (g[r] & !m) | (v & m),
    };
}

/// The result and the six status flags of `a op b` on `size` bytes.
fn reference_alu(op: Op, a: u64, b: u64, size: u32) -> (u64, u64) {
    let (a, b) = (a & bits_mask(size), b & bits_mask(size));
    let width = 8 * size;
    let (min, max) = (-(1i128 << (width - 1)), (1i128 << (width - 1)) - 1);
    let (res, cf, of, af) = match op {
        Op::Add => {
            let wide = u128::from(a) + u128::from(b);
            let s = signed(a, size) + signed(b, size);
            (
                wide as u64,
                wide >> width != 0,
                s < min || s > max,
                (a & 0xf) + (b & 0xf) > 0xf,
            )
        }
        Op::Sub | Op::Cmp => {
            let s = signed(a, size) - signed(b, size);
            (
                a.wrapping_sub(b),
                a < b,
                s < min || s > max,
                (a & 0xf) < (b & 0xf),
            )
        }
        Op::And => (a & b, false, false, false),
        Op::Or => (a | b, false, false, false),
        Op::Xor => (a ^ b, false, false, false),
    };
    let res = res & bits_mask(size);
    let mut f = 0;
    f |= if cf { CF } else { 0 };
    f |= if of { OF } else { 0 };
    f |= if af { AF } else { 0 };
    f |= if res == 0 { ZF } else { 0 };
    f |= if res >> (width - 1) & 1 == 1 { SF } else { 0 };
    // PF: the parity of the low byte only.
    f |= if (res & 0xff).count_ones().is_multiple_of(2) {
        PF
    } else {
        0
    };
    (res, f)
}

/// The immediate as the instruction uses it: sign-extended from its encoded width.
fn imm_value(imm: i32, size: u32, short: bool) -> u64 {
    let v = if short {
        i64::from(imm as i8)
    } else {
        match size {
            1 => i64::from(imm as i8),
            2 => i64::from(imm as i16),
            _ => i64::from(imm),
        }
    };
    v as u64 & bits_mask(size)
}

/// The registers, RFLAGS and memory after `f`, computed from the definitions.
fn reference(f: Form, g: &mut [u64; 16], rflags: &mut u64, mem: &mut [u8; 8]) {
    let load = |mem: &[u8; 8], size: u32| {
        let mut b = [0u8; 8];
        b[..size as usize].copy_from_slice(&mem[..size as usize]);
        u64::from_le_bytes(b)
    };
    let store = |mem: &mut [u8; 8], size: u32, v: u64| {
        mem[..size as usize].copy_from_slice(&v.to_le_bytes()[..size as usize]);
    };
    let mut flags = |fl: u64| *rflags = (*rflags & !STATUS_FLAGS) | fl;
    match f {
        Form::Store { size, reg } => store(mem, size, reg_get(g, reg, size)),
        Form::Load { size, reg } => reg_set(g, reg, size, load(mem, size)),
        Form::StoreImm { size, imm } => store(mem, size, imm_value(imm, size, false)),
        Form::MoffsLoad { size } => reg_set(g, 0, size, load(mem, size)),
        Form::MoffsStore { size } => store(mem, size, reg_get(g, 0, size)),
        Form::Movzx { dst, src, reg } => reg_set(g, reg, dst, load(mem, src)),
        Form::Movsx { dst, src, reg } => reg_set(g, reg, dst, signed(load(mem, src), src) as u64),
        Form::AluToMem { op, size, reg } => {
            let (res, fl) = reference_alu(op, load(mem, size), reg_get(g, reg, size), size);
            if !matches!(op, Op::Cmp) {
                store(mem, size, res);
            }
            flags(fl);
        }
        Form::AluToReg { op, size, reg } => {
            let (res, fl) = reference_alu(op, reg_get(g, reg, size), load(mem, size), size);
            if !matches!(op, Op::Cmp) {
                reg_set(g, reg, size, res);
            }
            flags(fl);
        }
        Form::AluImm {
            op,
            size,
            imm,
            short,
        } => {
            let (res, fl) = reference_alu(op, load(mem, size), imm_value(imm, size, short), size);
            if !matches!(op, Op::Cmp) {
                store(mem, size, res);
            }
            flags(fl);
        }
        Form::TestReg { size, reg } => {
            flags(reference_alu(Op::And, load(mem, size), reg_get(g, reg, size), size).1)
        }
        Form::TestImm { size, imm } => {
            let v = imm_value(imm, size, false);
            flags(reference_alu(Op::And, load(mem, size), v, size).1)
        }
        Form::Xchg { size, reg } => {
            let old = load(mem, size);
            store(mem, size, reg_get(g, reg, size));
            reg_set(g, reg, size, old);
        }
    }
    *rflags &= !RF;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn device_access_forms_match_the_reference(
        f in form(),
        regs in any::<[u64; 16]>(),
        status in any::<u64>(),
        rf in any::<bool>(),
        mem in any::<[u8; 8]>(),
    ) {
        let mut gprs = regs;
        gprs[RBX] = ADDR;
        let rflags = 2 | (status & STATUS_FLAGS) | if rf { RF } else { 0 };
        let bytes = encode(f);
        let mut cpu = CpuState { gprs, rip: CODE, rflags, bitness: 64, seg_base: [0; 6] };
        let mut m = Bytes { mem, reads: 0, writes: 0 };
        let r = emulate(&bytes, &mut cpu, &mut m);
        prop_assert_eq!(r, Ok(()), "{:?} {:02x?}", f, bytes);
        let (mut want_g, mut want_f, mut want_m) = (gprs, rflags, mem);
        reference(f, &mut want_g, &mut want_f, &mut want_m);
        prop_assert_eq!(cpu.gprs, want_g, "registers: {:?} {:02x?}", f, bytes);
        prop_assert_eq!(cpu.rflags, want_f, "rflags: {:?} {:02x?}", f, bytes);
        prop_assert_eq!(m.mem, want_m, "memory: {:?} {:02x?}", f, bytes);
        prop_assert_eq!(cpu.rip, CODE + bytes.len() as u64);
        // One read at most, one write at most (a device sees each access once).
        prop_assert!(m.reads <= 1 && m.writes <= 1, "{:?}: {} reads, {} writes", f, m.reads, m.writes);
    }
}
