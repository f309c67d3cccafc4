//! How a VM ended: a [`Stop`] holds the protocol's [`VmResult`], the [`Report`] for the
//! console, and the `stop_code` encoding carried by the stopping [`abi::vmx::ExitReply`].

use core::fmt;

use abi::vmx::{group, reason, ExitMessage, SEGMENT_ORDER};
pub use userlib::proto::vmm::VmResult;

/// A VM's name (truncated to 32 bytes).
pub type Name = heapless::String<32>;

/// The `stop_code` of a stopping reply, `kind | (detail & DETAIL_MASK)`: the kinds of the VMM
/// and the MMU service are one number space, defined in `userlib::proto::stop_code`. The full
/// values (64-bit exit codes and the report) are in the [`Stop`] of the `Stopped` event.
pub use userlib::proto::stop_code;

/// What the console should show about an exit that stopped the VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub vm: Name,
    pub vcpu: u32,
    /// Full exit reason.
    pub reason: u32,
    /// Why the VM stopped, in words.
    pub what: &'static str,
    /// Present when the message carried the group.
    pub rip: Option<u64>,
    pub qualification: Option<u64>,
    pub intr_info: Option<u32>,
    pub gpa: Option<u64>,
    pub gprs: Option<[u64; 16]>,
    pub cs: Option<(u16, u64)>,
    /// The code at CS:RIP, when the VM model could read it
    /// ([`crate::guest_walk::code_at_rip`]).
    pub code: Option<crate::guest_walk::Code>,
}

impl Report {
    /// A report from whatever groups `m` carries.
    pub fn new(vm: &Name, m: &ExitMessage, what: &'static str) -> Report {
        let has = |g: u32| m.mask & g != 0;
        Report {
            vm: vm.clone(),
            vcpu: m.vcpu,
            reason: m.reason,
            what,
            rip: has(group::RIP).then_some(m.rip),
            qualification: has(group::QUAL).then_some(m.qualification),
            intr_info: has(group::QUAL).then_some(m.intr_info),
            gpa: has(group::ADDR).then_some(m.gpa),
            gprs: has(group::GPRS).then_some(m.gprs),
            cs: has(group::SEGS).then_some((m.segments[0].selector, m.segments[0].base)),
            code: None,
        }
    }
}

const GPR_NAMES: [&str; 16] = [
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let basic = self.reason & 0xffff;
        let name = reason::name(basic).unwrap_or("unknown");
        write!(
            f,
            "vm {} vcpu {}: {} (exit {} = {}, reason {:#x})",
            self.vm, self.vcpu, self.what, basic, name, self.reason
        )?;
        if let Some(rip) = self.rip {
            write!(f, "\n  rip={rip:#018x}")?;
            if let Some((sel, base)) = self.cs {
                write!(f, " {}={sel:#06x} base={base:#x}", SEGMENT_ORDER[0])?;
            }
        }
        if let (Some(q), Some(i)) = (self.qualification, self.intr_info) {
            write!(f, "\n  qualification={q:#x} intr_info={i:#010x}")?;
        }
        if let Some(gpa) = self.gpa {
            write!(f, " gpa={gpa:#x}")?;
        }
        if let Some(code) = &self.code {
            f.write_str("\n  bytes at rip:")?;
            for b in code {
                write!(f, " {b:02x}")?;
            }
        }
        if let Some(g) = self.gprs {
            for (row, names) in GPR_NAMES.chunks(4).enumerate() {
                f.write_str("\n ")?;
                for (i, n) in names.iter().enumerate() {
                    write!(f, " {n:>3}={:#018x}", g[row * 4 + i])?;
                }
            }
        }
        Ok(())
    }
}

/// How a VM ended, as the model concluded: the protocol's [`VmResult`] (the one definition of
/// the outcome), the [`Report`] the console shows for a stop the guest did not ask for, and the
/// `stop_code` of the stopping reply. Built only by the constructors below, so the three agree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stop {
    result: VmResult,
    report: Option<Report>,
    stop_code: u64,
}

impl Stop {
    fn new(result: VmResult, report: Option<Report>, kind: u64, detail: u64) -> Stop {
        Stop {
            result,
            report,
            stop_code: kind | (detail & stop_code::DETAIL_MASK),
        }
    }

    /// Hypercall 0 with this code.
    pub fn exited(code: u64) -> Stop {
        Stop::new(
            VmResult::HypercallExit { code },
            None,
            stop_code::EXITED,
            code,
        )
    }

    /// A write of `v` to the debug-exit port: `code = (v << 1) | 1`.
    pub fn debug_exit(code: u64) -> Stop {
        let result = VmResult::DebugExit { code: code as u32 };
        Stop::new(result, None, stop_code::DEBUG_EXIT, code)
    }

    pub fn triple_fault(r: Report) -> Stop {
        Stop::new(VmResult::TripleFault, Some(r), stop_code::TRIPLE_FAULT, 0)
    }

    /// VM entry failed; the error is the exit qualification when the message carried it.
    pub fn entry_failed(r: Report) -> Stop {
        let result = VmResult::EntryFailed {
            reason: r.reason,
            error: r.qualification.unwrap_or(0),
        };
        let reason = r.reason as u64;
        Stop::new(result, Some(r), stop_code::ENTRY_FAILED, reason)
    }

    /// An exit the model does not handle (reason, or a form such as string I/O).
    pub fn unhandled(r: Report) -> Stop {
        let basic = r.reason & 0xffff;
        let result = VmResult::Unhandled { reason: basic };
        Stop::new(result, Some(r), stop_code::UNHANDLED, basic as u64)
    }

    /// An access at guest-physical `gpa`, outside RAM and every device (with a report, or
    /// without when many are expected).
    pub fn outside_ram(r: Option<Report>, gpa: u64) -> Stop {
        let result = VmResult::OutsideRam { gpa };
        Stop::new(result, r, stop_code::OUTSIDE_RAM, gpa >> 12)
    }

    /// A malformed exit message.
    pub fn bad_exit(r: Report) -> Stop {
        let result = VmResult::BadExit { reason: r.reason };
        let basic = (r.reason & 0xffff) as u64;
        Stop::new(result, Some(r), stop_code::BAD_EXIT, basic)
    }

    /// HLT with RFLAGS.IF clear: no interrupt can ever wake the vCPU.
    pub fn halted(r: Report) -> Stop {
        let result = VmResult::Halted {
            rip: r.rip.unwrap_or(0),
        };
        Stop::new(result, Some(r), stop_code::HALTED, 0)
    }

    /// The guest powered the VM off (SLP_EN with SLP_TYP = S5 in PM1a_CNT).
    pub fn powered_off() -> Stop {
        Stop::new(VmResult::PoweredOff, None, stop_code::POWERED_OFF, 0)
    }

    /// The guest reset the machine through `port` (0x92, 0x64 or 0xCF9).
    pub fn reset(port: u16) -> Stop {
        let result = VmResult::Reset { port };
        Stop::new(result, None, stop_code::RESET, u64::from(port))
    }

    /// The result as the protocol reports it.
    pub fn result(&self) -> &VmResult {
        &self.result
    }

    /// The report, for the stops that have one.
    pub fn report(&self) -> Option<&Report> {
        self.report.as_ref()
    }

    /// The `stop_code` for the reply (see [`stop_code`]).
    pub fn stop_code(&self) -> u64 {
        self.stop_code
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_display_and_codes() {
        let mut m = ExitMessage {
            reason: reason::XSETBV,
            mask: group::RIP | group::GPRS | group::QUAL,
            vcpu: 1,
            rip: 0x10_0040,
            qualification: 0x12,
            ..ExitMessage::default()
        };
        m.gprs[15] = 0xabcd;
        let name = Name::try_from("guest-a").unwrap();
        let r = Report::new(&name, &m, "exit not handled");
        let s = format!("{r}");
        assert!(
            s.starts_with("vm guest-a vcpu 1: exit not handled (exit 55 = xsetbv"),
            "{s}"
        );
        assert!(s.contains("rip=0x0000000000100040"), "{s}");
        assert!(s.contains("qualification=0x12"), "{s}");
        assert!(s.contains("r15=0x000000000000abcd"), "{s}");
        assert_eq!(s.lines().count(), 7);
        assert_eq!(Stop::unhandled(r.clone()).stop_code(), 0x0500_0037);
        assert_eq!(Stop::debug_exit(0x21).stop_code(), 0x0200_0021);
        assert_eq!(Stop::exited(u64::MAX).stop_code(), 0x01ff_ffff);
        assert_eq!(Stop::triple_fault(r.clone()).stop_code(), 0x0300_0000);
        assert_eq!(
            Stop::exited(u64::MAX).result(),
            &VmResult::HypercallExit { code: u64::MAX }
        );
        assert_eq!(Stop::exited(7).report(), None);
        // Every result keeps what a client needs: HLT and a bad message are not "unhandled",
        // and a failed entry carries its qualification.
        assert_eq!(
            Stop::halted(r.clone()).result(),
            &VmResult::Halted { rip: 0x10_0040 }
        );
        assert_eq!(
            Stop::bad_exit(r.clone()).result(),
            &VmResult::BadExit {
                reason: reason::XSETBV
            }
        );
        let mut failed = r.clone();
        failed.reason = (1 << 31) | 33;
        let s = Stop::entry_failed(failed.clone());
        assert_eq!(
            s.result(),
            &VmResult::EntryFailed {
                reason: (1 << 31) | 33,
                error: 0x12
            }
        );
        assert_eq!(s.stop_code(), 0x0400_0021);
        assert_eq!(s.report(), Some(&failed));
        assert_eq!(
            Stop::unhandled(r.clone()).result(),
            &VmResult::Unhandled {
                reason: reason::XSETBV
            }
        );
        assert_eq!(Stop::unhandled(r.clone()).report(), Some(&r));
        assert_eq!(Stop::powered_off().result(), &VmResult::PoweredOff);
        assert_eq!(Stop::powered_off().stop_code(), 0x0800_0000);
        assert_eq!(Stop::powered_off().report(), None);
        assert_eq!(
            Stop::reset(0xcf9).result(),
            &VmResult::Reset { port: 0xcf9 }
        );
        assert_eq!(Stop::reset(0xcf9).stop_code(), 0x0900_0cf9);
        // (That every stop kind is distinct, the MMU service's included, is
        // `userlib::proto::stop_code`'s test.)
        assert_eq!(
            Stop::outside_ram(None, 0xd000_0000).stop_code(),
            stop_code::outside_ram(0xd000_0000)
        );
        // A report of a bare message is one line.
        let bare = Report::new(&name, &ExitMessage::default(), "x");
        assert_eq!(format!("{bare}").lines().count(), 1);
    }
}
