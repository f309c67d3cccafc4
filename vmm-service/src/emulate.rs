//! Emulation of the guest instructions that access memory the guest cannot reach directly:
//! writes to guest page tables (shadow paging) and device accesses (MMIO).
//!
//! When a guest writes a page table that its own translation goes through, the shadow MMU
//! (`mmu-service`) answers `FaultOutcome::EmulateWrite` and carries out the faulting
//! instruction itself (KVM's `x86_emulate_instruction` on a write-protected gfn); when a guest
//! accesses a device, the VMM does ([`crate::mmio_exit`]). [`emulate`] decodes the instruction
//! with `iced-x86`, reads and writes guest memory through a [`GuestAccess`] (the caller
//! translates linear addresses with the guest's tables and sends each access to RAM or to a
//! device), and updates the registers, RFLAGS and RIP as the instruction does.
//!
//! Supported (operand sizes 1/2/4/8 as encoded, with or without LOCK where it is valid):
//! - memory destination (`ops.rs`): `MOV r/m, reg`, `MOV r/m, imm`, `MOV moffs, acc`;
//!   `XCHG r/m, reg`; `CMPXCHG r/m, reg`, `CMPXCHG8B m64`, `CMPXCHG16B m128`;
//!   `ADD`/`SUB`/`AND`/`OR`/`XOR r/m, reg|imm`; `CMP r/m, reg|imm` and `TEST r/m, reg|imm`
//!   (flags only, nothing written); `BTS`/`BTR`/`BTC r/m, reg|imm8`, including register bit
//!   offsets that address memory outside the operand (the operand-sized unit holding the bit
//!   is accessed);
//! - register destination (`ops.rs`): `MOV reg, r/m`, `MOV acc, moffs`, `MOVZX`, `MOVSX`,
//!   `MOVSXD`, `ADD`/`SUB`/`AND`/`OR`/`XOR`/`CMP reg, r/m`; everything is checked before the
//!   one read, since a device read has effects;
//! - `string.rs`: `STOS` and `MOVS` (all element sizes; MOVS between any two of RAM and
//!   devices). With a `REP` (`F3`) prefix one element is processed per call: the count
//!   register is decremented and RIP stays on the instruction until the count reaches zero,
//!   like a repeated string instruction interrupted between iterations (the guest executes
//!   it again and exits again).
//!
//! Everything else is [`EmulateError::Unsupported`].
//!
//! Semantics and limits:
//! - Every instruction does at most one [`GuestAccess::read`] of each operand and at most
//!   one [`GuestAccess::write`], of the operand's address and length. A read-modify-write
//!   reads the same range first. Like the processor, a failed
//!   `CMPXCHG*` writes the old value back.
//! - The emulation is atomic only in that the caller serializes it: the service emulates one
//!   instruction at a time and every other vCPU's write to the page traps too (it is
//!   write-tracked). `LOCK` is accepted and needs nothing more.
//! - Flags follow the SDM. Flags the SDM leaves undefined are: AF cleared by `AND`/`OR`/`XOR`
//!   (what Intel processors do), OF/SF/AF/PF left unchanged by `BTS`/`BTR`/`BTC`. RF is cleared
//!   when the instruction completes.
//! - Linear addresses are `segment base + effective address`; the effective address wraps at
//!   the address size, and in 16/32-bit modes the linear address wraps at 4 GiB. In 64-bit mode
//!   only the FS and GS bases apply. Segment limits and canonical-address checks are left to the
//!   caller's translation, as are privilege checks other than those of the guest page tables.
//! - On any error `cpu` is unchanged (a write that failed did not happen).
//!
//! Decoder: `iced-x86` built for legacy encodings only (no VEX/EVEX/XOP/3DNow!, whose
//! instructions are [`EmulateError::Decode`]): about 90 KiB of code and read-only data instead
//! of 150 KiB. On its first use the decoder builds its tables on the heap, once (about 100 KiB,
//! never freed; 365 KiB for the full decoder): call [`init`] when the service starts so that
//! emulation does not allocate later.

use iced_x86::{Decoder, DecoderError, DecoderOptions, Instruction, MemorySize, Mnemonic, OpKind};
use iced_x86::{Register, Register as R};

/// The longest x86 instruction: the caller fetches up to this many bytes at RIP.
pub const MAX_INSN_LEN: usize = 15;

/// RFLAGS.CF.
pub const CF: u64 = 1 << 0;
/// RFLAGS.PF.
pub const PF: u64 = 1 << 2;
/// RFLAGS.AF.
pub const AF: u64 = 1 << 4;
/// RFLAGS.ZF.
pub const ZF: u64 = 1 << 6;
/// RFLAGS.SF.
pub const SF: u64 = 1 << 7;
/// RFLAGS.DF.
pub const DF: u64 = 1 << 10;
/// RFLAGS.OF.
pub const OF: u64 = 1 << 11;
/// RFLAGS.RF.
pub const RF: u64 = 1 << 16;
/// The six arithmetic status flags.
pub const STATUS_FLAGS: u64 = CF | PF | AF | ZF | SF | OF;

/// A page fault to deliver to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageFault {
    /// The error code pushed by the #PF.
    pub error_code: u32,
    /// The faulting linear address (CR2).
    pub address: u64,
}

/// Why a guest memory access could not be carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessFault {
    /// The guest's own page tables deny the access: inject this #PF.
    PageFault(PageFault),
    /// The linear address `gla` does not translate to guest RAM (MMIO, or no memory at all).
    NotRam {
        /// The linear address of the access.
        gla: u64,
    },
}

/// Guest memory as the emulated instruction sees it: linear addresses, translated by the
/// caller through the guest's page tables (with the instruction's privilege and the access
/// type, so a write sets the dirty bit).
pub trait GuestAccess {
    /// Reads `buf.len()` bytes of guest memory at linear address `gla`.
    fn read(&mut self, gla: u64, buf: &mut [u8]) -> Result<(), AccessFault>;
    /// Writes `data` to guest memory at linear address `gla`.
    fn write(&mut self, gla: u64, data: &[u8]) -> Result<(), AccessFault>;
}

/// The guest state an instruction reads and writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuState {
    /// General-purpose registers in encoding order: RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI,
    /// R8..R15.
    pub gprs: [u64; 16],
    /// RIP (EIP/IP outside 64-bit mode, an offset in CS).
    pub rip: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// Default operand/address size of the code segment: 16, 32 or 64.
    pub bitness: u32,
    /// Segment bases in the order ES, CS, SS, DS, FS, GS.
    pub seg_base: [u64; 6],
}

/// Why an instruction was not emulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmulateError {
    /// `CpuState::bitness` is not 16, 32 or 64.
    BadBitness(u32),
    /// The bytes end inside the instruction.
    Truncated,
    /// The bytes are not a valid instruction (#UD on the processor).
    Decode,
    /// A valid instruction this module does not emulate.
    Unsupported {
        /// The instruction's mnemonic. Its `Debug` form links `iced-x86`'s name table (about
        /// 45 KiB); a service short of space can print `mnemonic as u16` or the bytes instead.
        mnemonic: Mnemonic,
        /// Its length in bytes.
        len: u8,
        /// What is not supported.
        reason: &'static str,
    },
    /// The instruction raises #GP(0) (a misaligned `CMPXCHG16B` operand).
    GeneralProtection,
    /// A guest memory access failed; nothing was written.
    Fault(AccessFault),
}

impl From<AccessFault> for EmulateError {
    fn from(f: AccessFault) -> Self {
        EmulateError::Fault(f)
    }
}

/// Emulates the instruction at the start of `bytes` (fetched by the caller at `cpu.rip`; up
/// to [`MAX_INSN_LEN`] bytes are used). On success `cpu` holds the registers, RFLAGS and RIP
/// after the instruction; on error it is unchanged.
pub fn emulate(
    bytes: &[u8],
    cpu: &mut CpuState,
    mem: &mut impl GuestAccess,
) -> Result<(), EmulateError> {
    let bitness = cpu.bitness;
    if !matches!(bitness, 16 | 32 | 64) {
        return Err(EmulateError::BadBitness(bitness));
    }
    let bytes = &bytes[..bytes.len().min(MAX_INSN_LEN)];
    let mut decoder = Decoder::with_ip(bitness, bytes, cpu.rip, DecoderOptions::NONE);
    let insn = decoder.decode();
    if insn.is_invalid() {
        return Err(match decoder.last_error() {
            DecoderError::NoMoreBytes => EmulateError::Truncated,
            _ => EmulateError::Decode,
        });
    }
    let mut e = Emulator {
        insn: &insn,
        cpu: *cpu,
    };
    if e.run(mem)? {
        let ip_mask = match bitness {
            64 => u64::MAX,
            32 => 0xffff_ffff,
            _ => 0xffff,
        };
        e.cpu.rip = insn.next_ip() & ip_mask;
        e.cpu.rflags &= !RF;
    }
    *cpu = e.cpu;
    Ok(())
}

/// Builds the decoder's tables now (about 100 KiB of heap in some 2,000 allocations, kept for
/// the life of the program) instead of at the first [`emulate`]. Calling it again does nothing.
pub fn init() {
    let _ = Decoder::new(64, &[0x90], DecoderOptions::NONE).decode();
}

/// Bit mask of an operand of `size` bytes.
fn mask(size: usize) -> u64 {
    u64::MAX >> (64 - 8 * size)
}

/// Sign bit of an operand of `size` bytes.
fn sign(size: usize) -> u64 {
    1 << (8 * size - 1)
}

/// ZF, SF and PF of the result `res` of `size` bytes.
fn zsp(res: u64, size: usize) -> u64 {
    let mut f = 0;
    if res & mask(size) == 0 {
        f |= ZF;
    }
    if res & sign(size) != 0 {
        f |= SF;
    }
    if (res as u8).count_ones().is_multiple_of(2) {
        f |= PF;
    }
    f
}

/// `a op b` on `size`-byte operands: the result and the six status flags.
fn alu(op: Mnemonic, a: u64, b: u64, size: usize) -> (u64, u64) {
    let (m, s) = (mask(size), sign(size));
    let (a, b) = (a & m, b & m);
    let (res, carry, overflow) = match op {
        Mnemonic::Add => {
            let r = a.wrapping_add(b) & m;
            (r, r < a, !(a ^ b) & (a ^ r) & s != 0)
        }
        Mnemonic::Sub => {
            let r = a.wrapping_sub(b) & m;
            (r, a < b, (a ^ b) & (a ^ r) & s != 0)
        }
        Mnemonic::And => (a & b, false, false),
        Mnemonic::Or => (a | b, false, false),
        _ => (a ^ b, false, false),
    };
    let mut f = zsp(res, size);
    if carry {
        f |= CF;
    }
    if overflow {
        f |= OF;
    }
    if matches!(op, Mnemonic::Add | Mnemonic::Sub) && (a ^ b ^ res) & 0x10 != 0 {
        f |= AF;
    }
    (res, f)
}

/// A general-purpose register: (index in `gprs`, size in bytes, is AH/CH/DH/BH).
fn gpr(reg: Register) -> Option<(usize, usize, bool)> {
    const AL: usize = R::AL as usize;
    const BL: usize = R::BL as usize;
    const AH: usize = R::AH as usize;
    const BH: usize = R::BH as usize;
    const SPL: usize = R::SPL as usize;
    const R15L: usize = R::R15L as usize;
    const AX: usize = R::AX as usize;
    const R15W: usize = R::R15W as usize;
    const EAX: usize = R::EAX as usize;
    const R15D: usize = R::R15D as usize;
    const RAX: usize = R::RAX as usize;
    const R15: usize = R::R15 as usize;
    let r = reg as usize;
    Some(match r {
        AL..=BL => (r - AL, 1, false),
        AH..=BH => (r - AH, 1, true),
        SPL..=R15L => (r - SPL + 4, 1, false),
        AX..=R15W => (r - AX, 2, false),
        EAX..=R15D => (r - EAX, 4, false),
        RAX..=R15 => (r - RAX, 8, false),
        _ => return None,
    })
}

/// Operand size in bytes of a memory operand.
fn mem_size(m: MemorySize) -> Option<usize> {
    Some(match m {
        MemorySize::UInt8 | MemorySize::Int8 => 1,
        MemorySize::UInt16 | MemorySize::Int16 => 2,
        MemorySize::UInt32 | MemorySize::Int32 => 4,
        MemorySize::UInt64 | MemorySize::Int64 => 8,
        MemorySize::UInt128 => 16,
        _ => return None,
    })
}

/// Little-endian value of `b` (at most 8 bytes).
fn le(b: &[u8]) -> u64 {
    b.iter().rev().fold(0, |v, &x| (v << 8) | u64::from(x))
}

/// One instruction being emulated, on a copy of the state.
struct Emulator<'a> {
    insn: &'a Instruction,
    cpu: CpuState,
}

impl Emulator<'_> {
    fn unsupported(&self, reason: &'static str) -> EmulateError {
        EmulateError::Unsupported {
            mnemonic: self.insn.mnemonic(),
            len: self.insn.len() as u8,
            reason,
        }
    }

    /// Value of general-purpose register `idx` as a `size`-byte register.
    fn get(&self, idx: usize, size: usize) -> u64 {
        self.cpu.gprs[idx] & mask(size)
    }

    /// Writes a `size`-byte register: 1 and 2 bytes merge, 4 bytes zero-extend.
    fn set(&mut self, idx: usize, size: usize, v: u64) {
        let r = &mut self.cpu.gprs[idx];
        *r = match size {
            1 | 2 => (*r & !mask(size)) | (v & mask(size)),
            4 => v & 0xffff_ffff,
            _ => v,
        };
    }

    fn read_reg(&self, reg: Register) -> Option<u64> {
        let (idx, size, high) = gpr(reg)?;
        Some(if high {
            (self.cpu.gprs[idx] >> 8) & 0xff
        } else {
            self.get(idx, size)
        })
    }

    fn write_reg(&mut self, reg: Register, v: u64) {
        match gpr(reg) {
            Some((idx, _, true)) => {
                let r = &mut self.cpu.gprs[idx];
                *r = (*r & !0xff00) | ((v & 0xff) << 8);
            }
            Some((idx, size, false)) => self.set(idx, size, v),
            None => {}
        }
    }

    fn seg_base(&self, seg: Register) -> Option<u64> {
        let i = (seg as usize).checked_sub(R::ES as usize)?;
        match i {
            0..=3 if self.cpu.bitness == 64 => Some(0),
            0..=5 => Some(self.cpu.seg_base[i]),
            _ => None,
        }
    }

    /// Linear address of memory operand `op` of `insn`.
    fn linear(&self, insn: &Instruction, op: u32) -> Result<u64, EmulateError> {
        let la = insn
            .virtual_address(op, 0, |reg, _, _| {
                self.seg_base(reg).or_else(|| self.read_reg(reg))
            })
            .ok_or_else(|| self.unsupported("address register"))?;
        Ok(if self.cpu.bitness == 64 {
            la
        } else {
            la & 0xffff_ffff
        })
    }

    fn read(&self, mem: &mut impl GuestAccess, gla: u64, size: usize) -> Result<u64, AccessFault> {
        let mut b = [0; 8];
        mem.read(gla, &mut b[..size])?;
        Ok(le(&b[..size]))
    }

    /// The source operand (operand 1) as a `size`-byte value: a general-purpose register or an
    /// immediate (sign-extended by the decoder as encoded).
    fn source(&self, size: usize) -> Result<u64, EmulateError> {
        let v = match self.insn.op1_kind() {
            OpKind::Register => self
                .read_reg(self.insn.op1_register())
                .ok_or_else(|| self.unsupported("source register"))?,
            OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64 => self.insn.immediate(1),
            _ => return Err(self.unsupported("source operand")),
        };
        Ok(v & mask(size))
    }

    fn set_status(&mut self, flags: u64, which: u64) {
        self.cpu.rflags = (self.cpu.rflags & !which) | (flags & which);
    }
}

mod ops;
mod string;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_device;
