//! `STOS` and `MOVS`, one element per call.

use iced_x86::OpKind;

use super::*;

impl Emulator<'_> {
    /// `STOS`/`MOVS`, one element; with `REP` the count register counts it.
    pub(super) fn string(&mut self, mem: &mut impl GuestAccess) -> Result<bool, EmulateError> {
        let insn = self.insn;
        let addr_size = match insn.op0_kind() {
            OpKind::MemoryESDI => 2,
            OpKind::MemoryESEDI => 4,
            OpKind::MemoryESRDI => 8,
            _ => return Err(self.unsupported("destination is not memory")),
        };
        if insn.has_repne_prefix() {
            return Err(self.unsupported("REPNE prefix"));
        }
        let size = mem_size(insn.memory_size()).ok_or_else(|| self.unsupported("operand size"))?;
        if size > 8 {
            return Err(self.unsupported("operand size"));
        }
        let rep = insn.has_rep_prefix();
        if rep && self.get(1, addr_size) == 0 {
            return Ok(true);
        }
        let movs = insn.op1_kind() != OpKind::Register;
        let value = if movs {
            if !matches!(
                insn.op1_kind(),
                OpKind::MemorySegSI | OpKind::MemorySegESI | OpKind::MemorySegRSI
            ) {
                return Err(self.unsupported("source operand"));
            }
            let src = self.linear(insn, 1)?;
            self.read(mem, src, size)?
        } else {
            self.get(0, size)
        };
        let dst = self.linear(insn, 0)?;
        mem.write(dst, &value.to_le_bytes()[..size])?;
        let step = if self.cpu.rflags & DF != 0 {
            (size as u64).wrapping_neg()
        } else {
            size as u64
        };
        let mut advance = |idx: usize, by: u64| {
            let v = self.get(idx, addr_size).wrapping_add(by);
            self.set(idx, addr_size, v);
        };
        advance(7, step);
        if movs {
            advance(6, step);
        }
        if rep {
            advance(1, u64::MAX);
            return Ok(self.get(1, addr_size) == 0);
        }
        Ok(true)
    }
}
