//! The frequent quiet exits (CPUID, VMCALL, port I/O the devices answer quietly) answered
//! from the message bytes ([`ExitView`]): no [`abi::vmx::ExitMessage`], no
//! [`crate::exit::Exit`], no full [`ExitReply`]. The answer is the one
//! [`VmModel::handle_into`] gives; an exit whose handling could do more than answer with
//! registers (an event, a stop, a look at the devices) is left to it, with nothing changed.

use abi::vmx::{layout, reason, reply, ExitReply, ExitView, Gpr};

use super::{guest_cr4, hypercall, in_rax, Env, VmModel};
use crate::exit::{io_size, required_groups, size_mask, ENTRY_FAILURE_BIT, IO_IN, IO_STRING};

/// The reasons [`VmModel::handle_quick`] may answer.
/// (CPUID and VMCALL, whose answers are the same registers whatever the devices; and port
/// I/O, [`VmModel::quick_io`], tried apart so that the others' path stays as short.)
pub const QUICK_REASONS: [u32; 3] = [reason::CPUID, reason::VMCALL, reason::IO];

/// A register-only answer: advance RIP and write `values` to the registers of `gpr_mask`
/// (in register order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuickReply {
    gpr_mask: u16,
    /// How many registers `gpr_mask` names (at most four).
    len: u8,
    values: [u64; 4],
}

impl QuickReply {
    /// The flags of the reply ([`abi::vmx::ExitReply::encode_registers`]).
    pub const FLAGS: u32 = reply::ADVANCE_RIP;

    /// An answer that writes `values` (in register order) to the registers of `gpr_mask`,
    /// which names at most four.
    const fn new(gpr_mask: u16, values: [u64; 4]) -> QuickReply {
        QuickReply {
            gpr_mask,
            len: abi::vmx::registers(gpr_mask) as u8,
            values,
        }
    }

    /// The registers it writes.
    pub fn gpr_mask(&self) -> u16 {
        self.gpr_mask
    }

    /// The register values, in register order.
    #[inline]
    pub fn values(&self) -> &[u64] {
        self.values.get(..usize::from(self.len)).unwrap_or(&[])
    }

    /// The reply's bytes ([`ExitReply::encode`]'s layout, [`abi::vmx::layout`]): their
    /// length, which takes the registers `gpr_mask` names. All four value slots are written
    /// (the unused ones as zeros, past the reply's end), so that the encoding is straight-line
    /// stores with no loop over the count; `None` if `out` cannot hold all four.
    #[inline]
    pub fn encode(&self, out: &mut [u8]) -> Option<usize> {
        let n = layout::REPLY_HEADER + 8 * usize::from(self.len);
        let out = out.get_mut(..layout::REPLY_HEADER + 8 * self.values.len())?;
        layout::put_reply_header(out, Self::FLAGS, self.gpr_mask);
        for (w, v) in out[layout::REPLY_HEADER..]
            .chunks_exact_mut(8)
            .zip(&self.values)
        {
            w.copy_from_slice(&v.to_le_bytes());
        }
        Some(n)
    }

    /// The same answer as an [`ExitReply`].
    pub fn to_reply(&self) -> ExitReply {
        let mut r = ExitReply::advance();
        r.gpr_mask = self.gpr_mask;
        let mut regs = self.gpr_mask;
        for &v in self.values() {
            let i = regs.trailing_zeros() as usize;
            regs &= regs - 1;
            r.gprs[i] = v;
        }
        r
    }
}

impl VmModel {
    /// Answers `v` when it is a CPUID or VMCALL exit with just the registers, whose handling
    /// only writes registers and advances RIP, and after which interrupt delivery has nothing
    /// to do ([`crate::irq::Interrupts::settled_after`]), or a port access the devices answer
    /// quietly ([`VmModel::quick_io`]); counts it. `None`: nothing changed,
    /// [`VmModel::handle_into`] handles it. Always inlined into its one caller, the exit
    /// thread's loop: this is on every frequent exit.
    #[inline(always)]
    pub fn handle_quick(&mut self, v: &ExitView, env: &mut impl Env) -> Option<QuickReply> {
        let full = v.reason();
        if self.result.is_some() || full & ENTRY_FAILURE_BIT != 0 {
            return None;
        }
        let basic = full & 0xffff;
        if basic != reason::CPUID && basic != reason::VMCALL {
            let need = required_groups(reason::IO);
            if basic != reason::IO || v.mask() & need != need {
                return None;
            }
            let r = self.quick_io(v, env)?;
            self.count(basic);
            return Some(r);
        }
        let need = required_groups(basic);
        if v.mask() & need != need {
            return None;
        }
        let r = match basic {
            reason::CPUID => {
                let (leaf, subleaf) = (v.gpr(Gpr::Rax) as u32, v.gpr(Gpr::Rcx) as u32);
                if self.benchmark && leaf == hypercall::UNREFLECT_LEAF {
                    return None; // an event
                }
                let cr4 = if matches!(leaf, 1 | 7) {
                    guest_cr4(env)?
                } else {
                    0
                };
                let [a, b, c, d] = self.guest_cpuid(leaf, subleaf, cr4, env);
                // Register order: RAX, RCX, RDX, RBX.
                QuickReply::new(0b1111, [a.into(), c.into(), d.into(), b.into()])
            }
            reason::VMCALL => {
                let rax = match hypercall::number(v.gpr(Gpr::Rax)) {
                    None => hypercall::ENOSYS,
                    Some(n) if u64::from(n) | hypercall::SIGNATURE == hypercall::NOP => {
                        hypercall::OK
                    }
                    Some(_) => return None,
                };
                QuickReply::new(1 << Gpr::Rax as u16, [rax, 0, 0, 0])
            }
            _ => return None,
        };
        if !self.irq.settled_after(basic, env.tsc()) {
            return None;
        }
        self.count(basic);
        Some(r)
    }

    fn count(&mut self, basic: u32) {
        if let Some(c) = self.counts.get_mut(basic as usize) {
            *c += 1;
        }
    }

    /// A port access (not a string one) that touches only what [`PortBus::quiet`] allows, at
    /// a time when interrupt delivery is settled ([`crate::irq::Interrupts::settled_at`]):
    /// the access changes nothing [`crate::irq::Interrupts::finish`] looks at, so finish
    /// would change nothing and is skipped; the answer is RAX for an IN, nothing for an
    /// OUT. Judged before anything changes: `None` leaves the exit to the full path.
    ///
    /// [`PortBus::quiet`]: crate::devices::bus::PortBus::quiet
    #[inline(always)]
    fn quick_io(&mut self, v: &ExitView, env: &mut impl Env) -> Option<QuickReply> {
        let q = v.qualification();
        let size = io_size(q)?;
        if q & IO_STRING != 0 {
            return None;
        }
        let (port, input) = ((q >> 16) as u16, q & IO_IN != 0);
        if !self.bus.quiet(port, size, !input) || !self.irq.settled_at(env.tsc()) {
            return None;
        }
        // A quiet access is the UART's alone and gives no event (judged above): straight to
        // the UART, which keeps no time.
        let rax = v.gpr(Gpr::Rax);
        Some(if input {
            let got = self.bus.read_quiet(port, size);
            QuickReply::new(1 << Gpr::Rax as u16, [in_rax(rax, size, got), 0, 0, 0])
        } else {
            let value = (rax & size_mask(size)) as u32;
            self.bus.write_quiet(port, size, value);
            QuickReply::new(0, [0; 4])
        })
    }
}
