//! The instructions with a memory operand other than the string ones: the dispatch of
//! [`Emulator::run`], memory destinations and register destinations.

use iced_x86::{Mnemonic, OpKind};

use super::*;

impl Emulator<'_> {
    /// Emulates the instruction; returns whether RIP advances (not for a repeated string
    /// instruction with iterations left).
    pub(super) fn run(&mut self, mem: &mut impl GuestAccess) -> Result<bool, EmulateError> {
        let insn = self.insn;
        let mn = insn.mnemonic();
        let string = matches!(
            mn,
            Mnemonic::Stosb
                | Mnemonic::Stosw
                | Mnemonic::Stosd
                | Mnemonic::Stosq
                | Mnemonic::Movsb
                | Mnemonic::Movsw
                | Mnemonic::Movsd
                | Mnemonic::Movsq
        );
        if string {
            return self.string(mem);
        }
        if insn.op0_kind() == OpKind::Memory {
            return self.memory_destination(mem);
        }
        if insn.op_count() == 2 && insn.op1_kind() == OpKind::Memory {
            return self.register_destination(mem);
        }
        Err(self.unsupported("no memory operand"))
    }

    /// An instruction whose destination (operand 0) is memory.
    fn memory_destination(&mut self, mem: &mut impl GuestAccess) -> Result<bool, EmulateError> {
        let insn = self.insn;
        let mn = insn.mnemonic();
        let size = mem_size(insn.memory_size()).ok_or_else(|| self.unsupported("operand size"))?;
        let gla = self.linear(insn, 0)?;
        match mn {
            Mnemonic::Cmpxchg8b | Mnemonic::Cmpxchg16b => return self.cmpxchg_double(mem, gla),
            Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc => return self.bit(mem, gla, size),
            _ => {}
        }
        if size > 8 {
            return Err(self.unsupported("operand size"));
        }
        match mn {
            Mnemonic::Mov => {
                let v = self.source(size)?;
                mem.write(gla, &v.to_le_bytes()[..size])?;
            }
            Mnemonic::Xchg => {
                let v = self.source(size)?;
                let old = self.read(mem, gla, size)?;
                mem.write(gla, &v.to_le_bytes()[..size])?;
                self.write_reg(insn.op1_register(), old);
            }
            Mnemonic::Cmpxchg => {
                let v = self.source(size)?;
                let old = self.read(mem, gla, size)?;
                let acc = self.get(0, size);
                let (_, flags) = alu(Mnemonic::Sub, acc, old, size);
                let new = if acc == old { v } else { old };
                mem.write(gla, &new.to_le_bytes()[..size])?;
                if acc != old {
                    self.set(0, size, old);
                }
                self.set_status(flags, STATUS_FLAGS);
            }
            Mnemonic::Add | Mnemonic::Sub | Mnemonic::And | Mnemonic::Or | Mnemonic::Xor => {
                let v = self.source(size)?;
                let old = self.read(mem, gla, size)?;
                let (res, flags) = alu(mn, old, v, size);
                mem.write(gla, &res.to_le_bytes()[..size])?;
                self.set_status(flags, STATUS_FLAGS);
            }
            Mnemonic::Cmp | Mnemonic::Test => {
                // Flags only: memory minus (or AND) the source; nothing is written.
                let v = self.source(size)?;
                let old = self.read(mem, gla, size)?;
                let op = if mn == Mnemonic::Cmp {
                    Mnemonic::Sub
                } else {
                    Mnemonic::And
                };
                let (_, flags) = alu(op, old, v, size);
                self.set_status(flags, STATUS_FLAGS);
            }
            _ => return Err(self.unsupported("instruction")),
        }
        Ok(true)
    }

    /// An instruction that reads memory (operand 1) into a general-purpose register
    /// (operand 0): `MOV`, `MOVZX`, `MOVSX`, `MOVSXD`, and `ADD`/`SUB`/`AND`/`OR`/`XOR`/`CMP`
    /// with the register first. Everything is checked before the one read (a device read
    /// has effects).
    fn register_destination(&mut self, mem: &mut impl GuestAccess) -> Result<bool, EmulateError> {
        let insn = self.insn;
        let mn = insn.mnemonic();
        let dst = insn.op0_register();
        let Some((_, dst_size, _)) = gpr(dst) else {
            return Err(self.unsupported("destination register"));
        };
        let size = mem_size(insn.memory_size())
            .filter(|&s| s <= 8)
            .ok_or_else(|| self.unsupported("operand size"))?;
        let extend = matches!(mn, Mnemonic::Movzx | Mnemonic::Movsx | Mnemonic::Movsxd);
        let alu_op = matches!(
            mn,
            Mnemonic::Add | Mnemonic::Sub | Mnemonic::And | Mnemonic::Or | Mnemonic::Xor
        );
        if !(extend || alu_op || matches!(mn, Mnemonic::Mov | Mnemonic::Cmp)) {
            return Err(self.unsupported("instruction"));
        }
        let gla = self.linear(insn, 1)?;
        let v = self.read(mem, gla, size)?;
        let reg = self.read_reg(dst).unwrap_or(0);
        match mn {
            Mnemonic::Mov | Mnemonic::Movzx => self.write_reg(dst, v),
            Mnemonic::Movsx | Mnemonic::Movsxd => {
                let shift = 64 - 8 * size as u32;
                self.write_reg(dst, (((v << shift) as i64) >> shift) as u64);
            }
            Mnemonic::Cmp => {
                let (_, flags) = alu(Mnemonic::Sub, reg, v, dst_size);
                self.set_status(flags, STATUS_FLAGS);
            }
            _ => {
                let (res, flags) = alu(mn, reg, v, dst_size);
                self.write_reg(dst, res);
                self.set_status(flags, STATUS_FLAGS);
            }
        }
        Ok(true)
    }

    /// `CMPXCHG8B m64` / `CMPXCHG16B m128`: compares rDX:rAX with the operand; if equal, ZF is
    /// set and rCX:rBX is stored, otherwise ZF is cleared and the operand is loaded into
    /// rDX:rAX (and written back unchanged).
    fn cmpxchg_double(
        &mut self,
        mem: &mut impl GuestAccess,
        gla: u64,
    ) -> Result<bool, EmulateError> {
        let half = if self.insn.mnemonic() == Mnemonic::Cmpxchg16b {
            if gla & 15 != 0 {
                return Err(EmulateError::GeneralProtection);
            }
            8
        } else {
            4
        };
        let mut old = [0u8; 16];
        mem.read(gla, &mut old[..2 * half])?;
        let (lo, hi) = (le(&old[..half]), le(&old[half..2 * half]));
        let equal = lo == self.get(0, half) && hi == self.get(2, half);
        if equal {
            let mut new = [0u8; 16];
            new[..half].copy_from_slice(&self.get(3, half).to_le_bytes()[..half]);
            new[half..2 * half].copy_from_slice(&self.get(1, half).to_le_bytes()[..half]);
            mem.write(gla, &new[..2 * half])?;
        } else {
            mem.write(gla, &old[..2 * half])?;
            self.set(0, half, lo);
            self.set(2, half, hi);
        }
        self.set_status(if equal { ZF } else { 0 }, ZF);
        Ok(true)
    }

    /// `BTS`/`BTR`/`BTC`: CF = the selected bit, then set, clear or complement it. A register
    /// bit offset is signed and selects the operand-sized unit `offset / bits` units away.
    fn bit(
        &mut self,
        mem: &mut impl GuestAccess,
        gla: u64,
        size: usize,
    ) -> Result<bool, EmulateError> {
        let insn = self.insn;
        if !matches!(size, 2 | 4 | 8) {
            return Err(self.unsupported("operand size"));
        }
        let bits = 8 * size as u64;
        let offset = self.source(size)?;
        let (gla, bit) = if insn.op1_kind() == OpKind::Register {
            // Sign-extend the offset from the operand size and move the operand by whole units.
            let shift = 64 - bits;
            let signed = ((offset << shift) as i64) >> shift;
            let delta = (signed >> bits.trailing_zeros()).wrapping_mul(size as i64) as u64;
            let mut moved = *insn;
            moved.set_memory_displacement64(insn.memory_displacement64().wrapping_add(delta));
            (self.linear(&moved, 0)?, offset & (bits - 1))
        } else {
            (gla, offset & (bits - 1))
        };
        let old = self.read(mem, gla, size)?;
        let m = 1u64 << bit;
        let new = match insn.mnemonic() {
            Mnemonic::Bts => old | m,
            Mnemonic::Btr => old & !m,
            _ => old ^ m,
        };
        mem.write(gla, &new.to_le_bytes()[..size])?;
        self.set_status(if old & m != 0 { CF } else { 0 }, CF);
        Ok(true)
    }
}
