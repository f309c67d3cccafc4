//! Reading the guest's code for stop reports: the bytes at CS:RIP, through the guest's own
//! page tables (SDM vol. 3, chapter 4: 32-bit, PAE and 4-level paging). Read-only and
//! best-effort: an address that does not translate gives no bytes, never an error.

use abi::cpu::{cr0, cr4, efer};
use abi::vmx::{group, ExitMessage};

/// The longest x86 instruction.
pub const MAX_INSN: usize = 15;

/// Up to [`MAX_INSN`] bytes of guest code.
pub type Code = heapless::Vec<u8, MAX_INSN>;

const PAGE: u64 = 4096;
/// Bits 51:12 of an entry.
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const PS: u64 = 1 << 7;

/// The guest-physical address of linear address `la` under the paging state
/// (`cr0`, `cr3`, `cr4`, `efer`); `read8(gpa)` reads a little-endian u64 of guest memory.
/// `None` when a level is not present or the mode is one this walker does not know (5-level).
pub fn translate(
    (cr0, cr3, cr4, efer): (u64, u64, u64, u64),
    la: u64,
    mut read8: impl FnMut(u64) -> Option<u64>,
) -> Option<u64> {
    if cr0 & cr0::PG == 0 {
        return Some(la);
    }
    let present = |e: u64| e & 1 != 0;
    if cr4 & cr4::PAE == 0 {
        // 32-bit paging: two levels of 4-byte entries, 4 MiB pages with PSE.
        let la = la & 0xffff_ffff;
        let pde = read8((cr3 & 0xffff_f000) + (la >> 22) * 4)? & 0xffff_ffff;
        if !present(pde) {
            return None;
        }
        if pde & PS != 0 && cr4 & cr4::PSE != 0 {
            let high = ((pde >> 13) & 0xff) << 32;
            return Some(high | (pde & 0xffc0_0000) | (la & 0x3f_ffff));
        }
        let pte = read8((pde & 0xffff_f000) + ((la >> 12) & 0x3ff) * 4)? & 0xffff_ffff;
        return present(pte).then_some((pte & 0xffff_f000) | (la & 0xfff));
    }
    let (mut table, levels) = if efer & efer::LMA != 0 {
        if cr4 & cr4::LA57 != 0 {
            return None;
        }
        (cr3 & ADDR_MASK, 4)
    } else {
        // PAE: the PDPTE by CR3[31:5] and bits 31:30.
        let la = la & 0xffff_ffff;
        let pdpte = read8((cr3 & 0xffff_ffe0) + (la >> 30) * 8)?;
        if !present(pdpte) {
            return None;
        }
        (pdpte & ADDR_MASK, 2)
    };
    for level in (1..=levels).rev() {
        let shift = 12 + 9 * (level - 1);
        let e = read8(table + ((la >> shift) & 0x1ff) * 8)?;
        if !present(e) {
            return None;
        }
        let size = 1u64 << shift;
        if level == 1 || (level <= 3 && e & PS != 0) {
            return Some((e & ADDR_MASK & !(size - 1)) | (la & (size - 1)));
        }
        table = e & ADDR_MASK;
    }
    None
}

/// The code at the exit's CS:RIP (the message must carry RIP, CRS and SEGS), up to
/// [`MAX_INSN`] bytes and no further than the translation allows; `None` without those
/// groups or when the first byte does not translate. `read(gpa, buf)` reads guest memory.
pub fn code_at_rip(m: &ExitMessage, mut read: impl FnMut(u64, &mut [u8]) -> bool) -> Option<Code> {
    let need = group::RIP | group::CRS | group::SEGS;
    if m.mask & need != need {
        return None;
    }
    let long = m.efer & efer::LMA != 0 && m.segments[0].access_rights & (1 << 13) != 0;
    let la = if long {
        m.rip
    } else {
        m.segments[0].base.wrapping_add(m.rip) & 0xffff_ffff
    };
    let state = (m.cr0_shadow, m.cr3, m.cr4_shadow, m.efer);
    let mut code = Code::new();
    let mut at = la;
    while code.len() < MAX_INSN {
        let mut read8 = |gpa: u64| {
            let mut b = [0u8; 8];
            read(gpa, &mut b).then_some(u64::from_le_bytes(b))
        };
        let Some(gpa) = translate(state, at, &mut read8) else {
            break;
        };
        let in_page = (PAGE - (at & (PAGE - 1))) as usize;
        let n = in_page.min(MAX_INSN - code.len());
        let mut buf = [0u8; MAX_INSN];
        if !read(gpa, &mut buf[..n]) {
            break;
        }
        let _ = code.extend_from_slice(&buf[..n]);
        at = at.wrapping_add(n as u64);
    }
    (!code.is_empty()).then_some(code)
}

#[cfg(test)]
mod tests;
