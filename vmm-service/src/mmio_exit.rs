//! A device access the MMU service forwarded (`reply::FORWARD`, the vCPU's MMIO portal): an
//! EPT violation, or a #PF on shadow paging, at a guest-physical address outside RAM.
//!
//! If a device of the [`MmioBus`] claims the address, the instruction at CS:RIP is fetched
//! through the guest's own page tables ([`guest_walk`]), emulated ([`emulate`]) with its
//! memory operands going to the device or to guest RAM (MOVS between the two), and the
//! reply carries the registers it changed, RIP and RFLAGS. Otherwise, or when the instruction
//! is one the emulator does not handle, the VM stops with a report ([`MmioStop`]): never a
//! wrong result.
//!
//! Limits: linear addresses are translated without setting accessed/dirty bits and without
//! privilege checks (an access the guest's tables do not map is a stop, not a #PF); a RAM
//! operand of a shadow-paged guest is written directly, so a MOVS from a device into one of
//! the guest's own page tables is not seen by the shadow MMU.

use abi::cpu::efer;
use abi::vmx::{group, ExitMessage, ExitReply, Gpr, Segment};

use crate::devices::mmio::Devices;
use crate::emulate::{self, AccessFault, CpuState, EmulateError, GuestAccess};
use crate::guest_walk::{self, Code};
use crate::vm::Env;

/// The state groups a forwarded exit must carry (the MMIO portal's mask): the registers
/// and segments to emulate, the control registers to walk the guest's tables, the rest for
/// reports.
pub const REQUIRED: u32 = group::ALL;

/// Why a forwarded access stops the VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MmioStop {
    /// The message lacks groups of [`REQUIRED`].
    MissingState,
    /// No device claims the address.
    Unclaimed { gpa: u64 },
    /// The instruction at RIP could not be read.
    NoCode,
    /// The instruction is not emulated (or is not valid).
    Unemulated { code: Code, error: EmulateError },
    /// The instruction raises #GP(0).
    GeneralProtection,
}

impl MmioStop {
    /// In words, for the report.
    pub fn what(&self) -> &'static str {
        match self {
            MmioStop::MissingState => "MMIO exit without the state emulation needs",
            MmioStop::Unclaimed { .. } => "access outside RAM and outside every device",
            MmioStop::NoCode => "device access: the instruction at RIP cannot be read",
            MmioStop::Unemulated {
                error: EmulateError::Fault(_),
                ..
            } => "device access: an operand is neither RAM nor a device, or does not translate",
            MmioStop::Unemulated { .. } => {
                "device access by an instruction the emulator does not handle"
            }
            MmioStop::GeneralProtection => "device access raising #GP",
        }
    }
}

/// Handles forwarded exit `m` against the devices of `bus`.
pub fn handle(
    m: &ExitMessage,
    bus: &mut impl Devices,
    env: &mut impl Env,
) -> Result<ExitReply, MmioStop> {
    if m.mask & REQUIRED != REQUIRED {
        return Err(MmioStop::MissingState);
    }
    if !bus.claims(m.gpa) {
        return Err(MmioStop::Unclaimed { gpa: m.gpa });
    }
    let code =
        guest_walk::code_at_rip(m, |gpa, buf| env.read_guest(gpa, buf)).ok_or(MmioStop::NoCode)?;
    let before = cpu_state(m);
    let mut cpu = before;
    let mut access = Access { m, bus, env };
    match emulate::emulate(&code, &mut cpu, &mut access) {
        Ok(()) => Ok(reply(&before, &cpu)),
        Err(EmulateError::GeneralProtection) => Err(MmioStop::GeneralProtection),
        Err(error) => Err(MmioStop::Unemulated { code, error }),
    }
}

/// The emulator's view of the vCPU in `m`.
fn cpu_state(m: &ExitMessage) -> CpuState {
    // The message's order: cs, ss, ds, es, fs, gs; the emulator's: es, cs, ss, ds, fs, gs.
    let s: &[Segment; 8] = &m.segments;
    let cs = s[0].access_rights;
    let bitness = if m.efer & efer::LMA != 0 && cs & (1 << 13) != 0 {
        64
    } else if cs & (1 << 14) != 0 {
        32
    } else {
        16
    };
    CpuState {
        gprs: m.gprs,
        rip: m.rip,
        rflags: m.rflags,
        bitness,
        seg_base: [
            s[3].base, s[0].base, s[1].base, s[2].base, s[4].base, s[5].base,
        ],
    }
}

/// The reply that makes the vCPU's state `after`: the registers that changed, RIP, RFLAGS.
fn reply(before: &CpuState, after: &CpuState) -> ExitReply {
    let mut r = ExitReply::resume();
    for (n, (b, a)) in before.gprs.iter().zip(after.gprs).enumerate() {
        if *b != a {
            if let Some(g) = gpr(n) {
                r.set_gpr(g, a);
            }
        }
    }
    r.flags |= abi::vmx::reply::SET_RIP | abi::vmx::reply::SET_RFLAGS;
    r.rip = after.rip;
    r.rflags = after.rflags;
    r
}

fn gpr(n: usize) -> Option<Gpr> {
    use Gpr::*;
    [
        Rax, Rcx, Rdx, Rbx, Rsp, Rbp, Rsi, Rdi, R8, R9, R10, R11, R12, R13, R14, R15,
    ]
    .get(n)
    .copied()
}

const PAGE: u64 = 4096;

/// Guest memory for the emulator: linear addresses through the guest's tables, then a
/// device of the bus or guest RAM.
struct Access<'a, E: Env, D: Devices> {
    m: &'a ExitMessage,
    bus: &'a mut D,
    env: &'a mut E,
}

impl<E: Env, D: Devices> Access<'_, E, D> {
    fn translate(&mut self, gla: u64) -> Option<u64> {
        let m = self.m;
        let state = (m.cr0_shadow, m.cr3, m.cr4_shadow, m.efer);
        let env = &mut *self.env;
        guest_walk::translate(state, gla, |gpa| {
            let mut b = [0u8; 8];
            env.read_guest(gpa, &mut b).then_some(u64::from_le_bytes(b))
        })
    }

    /// Calls `f(gpa, offset in buf, length)` for each piece of `[gla, gla + len)` within one
    /// page; stops at the first piece `f` refuses.
    fn pieces(
        &mut self,
        gla: u64,
        len: usize,
        mut f: impl FnMut(&mut Self, u64, usize, usize) -> bool,
    ) -> Result<(), AccessFault> {
        let mut done = 0;
        while done < len {
            let la = gla.wrapping_add(done as u64);
            let n = ((PAGE - (la & (PAGE - 1))) as usize).min(len - done);
            let gpa = self.translate(la).ok_or(AccessFault::NotRam { gla: la })?;
            if !f(self, gpa, done, n) {
                return Err(AccessFault::NotRam { gla: la });
            }
            done += n;
        }
        Ok(())
    }
}

impl<E: Env, D: Devices> GuestAccess for Access<'_, E, D> {
    fn read(&mut self, gla: u64, buf: &mut [u8]) -> Result<(), AccessFault> {
        let len = buf.len();
        self.pieces(gla, len, |a, gpa, at, n| {
            let piece = &mut buf[at..at + n];
            if a.bus.claims(gpa) {
                match a.bus.read(gpa, n as u8) {
                    Some(v) => {
                        piece.copy_from_slice(&v.to_le_bytes()[..n]);
                        true
                    }
                    None => false,
                }
            } else {
                a.env.read_guest(gpa, piece)
            }
        })
    }

    fn write(&mut self, gla: u64, data: &[u8]) -> Result<(), AccessFault> {
        self.pieces(gla, data.len(), |a, gpa, at, n| {
            let piece = &data[at..at + n];
            if a.bus.claims(gpa) {
                let mut v = [0u8; 8];
                match v.get_mut(..n) {
                    Some(dst) => dst.copy_from_slice(piece),
                    None => return false,
                }
                a.bus.write(gpa, n as u8, u64::from_le_bytes(v))
            } else {
                a.env.write_guest(gpa, piece)
            }
        })
    }
}

#[cfg(test)]
#[path = "mmio_exit/tests.rs"]
mod tests;
