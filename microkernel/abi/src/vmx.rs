//! What crosses the kernel boundary for virtual machines: basic exit reasons, the VMCS fields a
//! service may name, the state groups an exit portal asks for, and the byte layouts of the
//! exit message (kernel → handler) and of the exit reply (handler → kernel).
//!
//! Both messages are fixed little-endian layouts rather than postcard: the kernel builds and
//! reads them on every exit, and the groups a portal did not ask for are simply absent.
//! `ExitMessage::decode` and `ExitReply::decode` never panic on bad input.

use core::mem::{offset_of, size_of};

/// Label of an exit message (the IPC label the handler receives).
pub const EXIT_LABEL: u64 = 0xe417;
/// Label a handler replies with (any label is accepted; this one is conventional).
pub const REPLY_LABEL: u64 = 0xe418;

/// `ep` value for [`crate::Sys::VcpuPortal`]: the kernel answers the exit itself (CPUID with
/// the host's values, VMCALL and port I/O by skipping the instruction). Kept for measuring the
/// floor of an exit round trip; only those three reasons accept it.
pub const PORTAL_REFLECT: u64 = u64::MAX - 1;

/// Flags of [`crate::Sys::VmCreate`].
pub mod vm_flags {
    /// Shadow paging instead of EPT: the guest's #PF, CR3 accesses, INVLPG and paging-relevant
    /// CR0/CR4 bits exit, and the hardware CR3 is a shadow root set by the VM's MMU endpoint.
    pub const SHADOW: u64 = 1 << 0;
    /// With `SHADOW`: before every VM entry the kernel walks the shadow tables reachable from
    /// the root and stops the VM ([`super::stop::AUDIT`]) if a present entry names a frame
    /// outside the VM's RAM (leaf) or its pool (table).
    pub const AUDIT: u64 = 1 << 1;
    pub const ALL: u64 = SHADOW | AUDIT;
}

/// Number of basic exit reasons the kernel routes (reasons 0..EXIT_REASONS).
pub const EXIT_REASONS: usize = 70;

/// Basic exit reasons (Intel SDM vol. 3, appendix C), the ones Umbra names.
pub mod reason {
    pub const EXCEPTION_NMI: u32 = 0;
    pub const EXTERNAL_INTERRUPT: u32 = 1;
    pub const TRIPLE_FAULT: u32 = 2;
    pub const INIT: u32 = 3;
    pub const SIPI: u32 = 4;
    pub const INTERRUPT_WINDOW: u32 = 7;
    /// The guest can take an NMI ([`super::reply::NMI_WINDOW`]).
    pub const NMI_WINDOW: u32 = 8;
    pub const TASK_SWITCH: u32 = 9;
    pub const CPUID: u32 = 10;
    pub const GETSEC: u32 = 11;
    pub const HLT: u32 = 12;
    pub const INVD: u32 = 13;
    pub const INVLPG: u32 = 14;
    pub const RDPMC: u32 = 15;
    pub const RDTSC: u32 = 16;
    pub const VMCALL: u32 = 18;
    pub const CR_ACCESS: u32 = 28;
    pub const DR_ACCESS: u32 = 29;
    pub const IO: u32 = 30;
    pub const RDMSR: u32 = 31;
    pub const WRMSR: u32 = 32;
    pub const INVALID_GUEST_STATE: u32 = 33;
    pub const MSR_LOADING: u32 = 34;
    pub const MWAIT: u32 = 36;
    pub const MONITOR: u32 = 39;
    pub const PAUSE: u32 = 40;
    pub const MACHINE_CHECK: u32 = 41;
    pub const EPT_VIOLATION: u32 = 48;
    pub const EPT_MISCONFIG: u32 = 49;
    pub const PREEMPTION_TIMER: u32 = 52;
    pub const WBINVD: u32 = 54;
    pub const XSETBV: u32 = 55;
    // Part `exits` (issue 17): reasons of instructions a kernel may use.
    pub const RDTSCP: u32 = 51;
    pub const INVPCID: u32 = 58;

    /// Exits the kernel handles itself and never routes through a portal: a host interrupt,
    /// and the end of a run's time slice (the VMX-preemption timer bounds every run). The
    /// vCPU goes on running after other threads had their turn.
    /// A vCPU's deadline ([`super::field::DEADLINE`]) is the exception: once it has passed,
    /// the exit (either reason) goes to the portal for `PREEMPTION_TIMER` as an exit of
    /// that reason.
    pub const KERNEL_HANDLED: [u32; 2] = [EXTERNAL_INTERRUPT, PREEMPTION_TIMER];
    /// The reasons that take no portal (only deadline exits reach the `PREEMPTION_TIMER`
    /// portal).
    pub const NO_PORTAL: [u32; 1] = [EXTERNAL_INTERRUPT];

    /// Pseudo-reason (issue 12), outside the 16 bits of a basic reason: the portal that
    /// receives exits the MMU endpoint forwards as MMIO ([`super::reply::FORWARD`]). The
    /// forwarded message keeps its basic reason (an EPT violation, or a #PF on shadow
    /// paging) and carries the device's guest-physical address as `gpa`.
    pub const MMIO: u32 = 0x1_0000;

    /// A short name for reports ("cpuid", "io", ...); `None` for reasons Umbra does not name.
    pub fn name(r: u32) -> Option<&'static str> {
        Some(match r {
            EXCEPTION_NMI => "exception",
            EXTERNAL_INTERRUPT => "external-interrupt",
            TRIPLE_FAULT => "triple-fault",
            INIT => "init",
            SIPI => "sipi",
            INTERRUPT_WINDOW => "interrupt-window",
            NMI_WINDOW => "nmi-window",
            TASK_SWITCH => "task-switch",
            CPUID => "cpuid",
            GETSEC => "getsec",
            HLT => "hlt",
            INVD => "invd",
            INVLPG => "invlpg",
            RDPMC => "rdpmc",
            RDTSC => "rdtsc",
            VMCALL => "vmcall",
            CR_ACCESS => "cr-access",
            DR_ACCESS => "dr-access",
            IO => "io",
            RDMSR => "rdmsr",
            WRMSR => "wrmsr",
            INVALID_GUEST_STATE => "invalid-guest-state",
            MSR_LOADING => "msr-loading",
            MWAIT => "mwait",
            MONITOR => "monitor",
            PAUSE => "pause",
            MACHINE_CHECK => "machine-check",
            EPT_VIOLATION => "ept-violation",
            EPT_MISCONFIG => "ept-misconfig",
            PREEMPTION_TIMER => "preemption-timer",
            WBINVD => "wbinvd",
            XSETBV => "xsetbv",
            RDTSCP => "rdtscp",
            INVPCID => "invpcid",
            _ => return None,
        })
    }
}

/// Why a vCPU stopped: the first result of [`crate::Sys::VcpuRun`].
pub mod stop {
    /// A handler's reply asked to stop, with code `code`: the result is `HANDLER | code`.
    pub const HANDLER: u64 = 0;
    /// No portal for the exit reason (the second result is the reason).
    pub const UNHANDLED: u64 = 1 << 32;
    /// A malformed reply to an exit message.
    pub const BAD_REPLY: u64 = 2 << 32;
    /// VM entry failed (invalid guest state, or a VMfail: the third result holds the
    /// VM-instruction error).
    pub const ENTRY_FAILED: u64 = 3 << 32;
    /// The portal's endpoint was closed or its server is gone.
    pub const PORTAL_GONE: u64 = 4 << 32;
    /// A shadow-paged VM: a reply set a shadow root that is not a page of the VM's pool, or
    /// came from an endpoint other than its MMU endpoint (the second result is the exit
    /// reason, the third the refused root).
    pub const BAD_ROOT: u64 = 5 << 32;
    /// Audit mode: a shadow table names a frame outside the VM's RAM or pool (the third
    /// result is the physical address of the offending entry).
    pub const AUDIT: u64 = 6 << 32;
    /// The run lasted its time limit ([`super::field::RUN_TICKS`]): a guest that loops
    /// without exiting ends here.
    pub const TIME_LIMIT: u64 = 7 << 32;
    /// The kind part of a stop value.
    pub const KIND_MASK: u64 = 0xffff_ffff << 32;
}

/// State groups an exit portal asks for (the `mask` of [`crate::Sys::VcpuPortal`]).
pub mod group {
    /// The 16 general-purpose registers, in [`super::Gpr`] order.
    pub const GPRS: u32 = 1 << 0;
    /// RIP, RFLAGS, the exiting instruction's length and the guest's interruptibility state
    /// (in the length's word: bits 31:0 the length, bits 63:32 the state).
    pub const RIP: u32 = 1 << 1;
    /// CR0, CR3, CR4, EFER, and CR0/CR4 as the guest reads them (the read shadow for the
    /// intercepted bits, the real value for the others).
    pub const CRS: u32 = 1 << 2;
    /// CS, SS, DS, ES, FS, GS, TR, LDTR: selector, access rights, limit, base.
    pub const SEGS: u32 = 1 << 3;
    /// Exit qualification, interruption info and error code, IDT-vectoring info and error
    /// code, VM-exit instruction info.
    pub const QUAL: u32 = 1 << 4;
    /// Guest-physical and guest-linear address.
    pub const ADDR: u32 = 1 << 5;
    pub const ALL: u32 = 0x3f;
}

/// The exit message's and the reply's layout, defined once: fixed `#[repr(C)]` records
/// (little-endian, no padding) whose validity the state-group mask says, as NOVA's UTCB
/// does. An exit message is a [`Header`], then the record of each group its `mask` names,
/// in [`GROUPS`] order; a reply is a [`ReplyHeader`], then 8-byte values. The kernel writes
/// and reads these bytes at the offsets derived here ([`group_at`], `offset_of!`), and so
/// do [`super::ExitMessage`], [`super::ExitView`] and [`super::ExitReply`]; the tests tie
/// every mask.
pub mod layout {
    use super::group;
    use core::mem::{offset_of, size_of};

    /// The message header.
    #[repr(C)]
    pub struct Header {
        pub reason: u32,
        /// The state groups that follow.
        pub mask: u32,
        /// The vCPU's id (`vcpu_id`).
        pub vcpu: u32,
        pub reserved: u32,
    }

    /// [`group::GPRS`]: the 16 registers in [`super::Gpr`] order.
    #[repr(C)]
    pub struct Gprs {
        pub gprs: [u64; 16],
    }

    /// [`group::RIP`].
    #[repr(C)]
    pub struct Rip {
        pub rip: u64,
        pub rflags: u64,
        /// Bits 31:0 the exiting instruction's length, 63:32 the interruptibility state.
        pub length_and_blocking: u64,
    }

    /// [`group::CRS`].
    #[repr(C)]
    pub struct Crs {
        pub cr0: u64,
        pub cr3: u64,
        pub cr4: u64,
        pub efer: u64,
        /// CR0 and CR4 as the guest reads them.
        pub cr0_shadow: u64,
        pub cr4_shadow: u64,
    }

    /// One segment of [`group::SEGS`] (CS, SS, DS, ES, FS, GS, TR, LDTR, in that order).
    #[repr(C)]
    pub struct Segment {
        pub selector: u16,
        pub reserved0: u16,
        pub access_rights: u32,
        pub limit: u32,
        pub reserved1: u32,
        pub base: u64,
    }

    /// The segments of [`group::SEGS`].
    pub const SEGMENTS: usize = 8;

    /// [`group::QUAL`].
    #[repr(C)]
    pub struct Qual {
        pub qualification: u64,
        pub intr_info: u32,
        pub intr_error: u32,
        pub idt_vectoring_info: u32,
        pub idt_vectoring_error: u32,
        pub instruction_info: u32,
        pub reserved: u32,
    }

    /// [`group::ADDR`].
    #[repr(C)]
    pub struct Addr {
        pub gpa: u64,
        pub gla: u64,
    }

    /// Bytes of the header.
    pub const HEADER: usize = size_of::<Header>();

    /// The groups in message order, with their sizes.
    pub const GROUPS: [(u32, usize); 6] = [
        (group::GPRS, size_of::<Gprs>()),
        (group::RIP, size_of::<Rip>()),
        (group::CRS, size_of::<Crs>()),
        (group::SEGS, SEGMENTS * size_of::<Segment>()),
        (group::QUAL, size_of::<Qual>()),
        (group::ADDR, size_of::<Addr>()),
    ];

    /// Where group `g` starts in a message with groups `mask` (where it would start, if
    /// `mask` lacks it).
    pub const fn group_at(mask: u32, g: u32) -> usize {
        let mut at = HEADER;
        let mut i = 0;
        while i < GROUPS.len() {
            let (bit, size) = GROUPS[i];
            if bit == g {
                break;
            }
            if mask & bit != 0 {
                at += size;
            }
            i += 1;
        }
        at
    }

    /// The size of a message with groups `mask`: [`group_at`]'s sum, looked up (every exit
    /// message is measured, by the kernel that writes it and the handler that reads it).
    pub const fn size_of_mask(mask: u32) -> usize {
        /// The size of each mask within [`group::ALL`](super::group::ALL).
        const SIZES: [u16; super::group::ALL as usize + 1] = {
            let mut t = [0u16; super::group::ALL as usize + 1];
            let mut m = 0;
            while m < t.len() {
                t[m] = group_at(m as u32, 0) as u16;
                m += 1;
            }
            t
        };
        // Bits outside the groups add nothing (`group_at`).
        SIZES[(mask & super::group::ALL) as usize] as usize
    }

    /// The reply header; the values follow it.
    #[repr(C)]
    pub struct ReplyHeader {
        pub flags: u32,
        /// The registers whose values come first, in [`super::Gpr`] order.
        pub gpr_mask: u16,
        pub reserved: u16,
    }

    /// Bytes of the reply header.
    pub const REPLY_HEADER: usize = size_of::<ReplyHeader>();

    /// Writes a reply header into `out` (at least [`REPLY_HEADER`] bytes; nothing otherwise).
    #[inline]
    pub fn put_reply_header(out: &mut [u8], flags: u32, gpr_mask: u16) {
        if let Some(h) = out.get_mut(..REPLY_HEADER) {
            let (f, g) = (
                offset_of!(ReplyHeader, flags),
                offset_of!(ReplyHeader, gpr_mask),
            );
            let r = offset_of!(ReplyHeader, reserved);
            h[f..f + 4].copy_from_slice(&flags.to_le_bytes());
            h[g..g + 2].copy_from_slice(&gpr_mask.to_le_bytes());
            h[r..r + 2].copy_from_slice(&0u16.to_le_bytes());
        }
    }

    /// A reply's header: `(flags, gpr_mask, reserved)`, if `bytes` hold one.
    #[inline]
    pub fn reply_header(bytes: &[u8]) -> Option<(u32, u16, u16)> {
        let h = bytes.get(..REPLY_HEADER)?;
        let (f, g) = (
            offset_of!(ReplyHeader, flags),
            offset_of!(ReplyHeader, gpr_mask),
        );
        let r = offset_of!(ReplyHeader, reserved);
        Some((
            u32::from_le_bytes([h[f], h[f + 1], h[f + 2], h[f + 3]]),
            u16::from_le_bytes([h[g], h[g + 1]]),
            u16::from_le_bytes([h[r], h[r + 1]]),
        ))
    }

    // No padding anywhere: the records are their fields, back to back.
    const _: () = {
        assert!(HEADER == 16 && size_of::<Gprs>() == 128 && size_of::<Rip>() == 24);
        assert!(size_of::<Crs>() == 48 && size_of::<Segment>() == 24);
        assert!(size_of::<Qual>() == 32 && size_of::<Addr>() == 16 && REPLY_HEADER == 8);
    };
}

/// General-purpose registers in the order of the instruction encoding (so the register fields
/// of exit qualifications index them directly).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Gpr {
    Rax = 0,
    Rcx = 1,
    Rdx = 2,
    Rbx = 3,
    Rsp = 4,
    Rbp = 5,
    Rsi = 6,
    Rdi = 7,
    R8 = 8,
    R9 = 9,
    R10 = 10,
    R11 = 11,
    R12 = 12,
    R13 = 13,
    R14 = 14,
    R15 = 15,
}

pub mod field;

/// Primary processor-based controls the kernel sets for a handler's reply.
pub mod proc_based {
    /// Interrupt-window exiting ([`super::reply::INTR_WINDOW`]).
    pub const INTR_WINDOW_EXITING: u64 = 1 << 2;
    /// NMI-window exiting ([`super::reply::NMI_WINDOW`]; needs [`super::pin_based::VIRTUAL_NMIS`]).
    pub const NMI_WINDOW_EXITING: u64 = 1 << 22;
}

/// Pin-based controls ([`field::PIN_BASED_CONTROLS`]) that decide how NMIs reach a guest.
pub mod pin_based {
    /// A host NMI exits (reason 0, interruption type NMI) instead of reaching the guest.
    pub const NMI_EXITING: u64 = 1 << 3;
    /// The CPU tracks the guest's NMI blocking (bit 3 of the interruptibility state is
    /// virtual-NMI blocking: set by an injected NMI, cleared by the guest's IRET). Needs
    /// [`NMI_EXITING`].
    pub const VIRTUAL_NMIS: u64 = 1 << 5;
}

/// Bits of [`field::GUEST_INTERRUPTIBILITY`] (SDM 25.4.2).
pub mod interruptibility {
    /// Blocking by STI: for one instruction after an STI that set IF.
    pub const STI: u32 = 1 << 0;
    /// Blocking by MOV SS (or POP SS): for one instruction.
    pub const MOV_SS: u32 = 1 << 1;
    /// Blocking by NMI: the guest is in an NMI handler (until its IRET).
    pub const NMI: u32 = 1 << 3;
    /// The one-instruction blockings, which end when the instruction completes.
    pub const ONE_INSTRUCTION: u32 = STI | MOV_SS;
    /// Whether a guest in this state can take an NMI now (SDM 26.3.1.5: an NMI is not
    /// injected under MOV SS blocking nor, with virtual NMIs, under NMI blocking; some
    /// processors refuse it under STI blocking too, so Umbra never does).
    pub const fn nmi_ok(state: u32) -> bool {
        state & (ONE_INSTRUCTION | NMI) == 0
    }
}

/// Secondary processor-based controls the kernel switches per vCPU.
pub mod proc_based2 {
    /// Enable EPT.
    pub const EPT: u64 = 1 << 1;
    /// Unrestricted guest (real mode and paging off run in VMX non-root; needs EPT).
    pub const UNRESTRICTED_GUEST: u64 = 1 << 7;
    /// What a shadow-paged vCPU runs its guest's real mode with (`kobj::shadow`).
    pub const REAL_MODE: u64 = EPT | UNRESTRICTED_GUEST;
}

/// Values of [`field::GUEST_ACTIVITY_STATE`] (SDM 25.4.2).
pub mod activity {
    pub const ACTIVE: u64 = 0;
    pub const HLT: u64 = 1;
    pub const SHUTDOWN: u64 = 2;
    pub const WAIT_FOR_SIPI: u64 = 3;
}

/// Bits of [`field::GUEST_FEATURES`] (part `exits`, issue 17).
pub mod guest_features {
    /// RDTSCP runs in the guest ("enable RDTSCP").
    pub const RDTSCP: u64 = 1 << 0;
    /// INVPCID runs in the guest ("enable INVPCID"; EPT VMs only).
    pub const INVPCID: u64 = 1 << 1;
    /// The secondary processor-based controls that enable them, in the same order.
    pub const CONTROLS: [(u64, u32); 2] = [(RDTSCP, 1 << 3), (INVPCID, 1 << 12)];
}

/// A malformed exit message or reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// The bytes end before the fields the header announces.
    Truncated,
    /// Bytes left over after the announced fields.
    TrailingBytes,
    /// Unknown bits in a mask or flags word.
    UnknownBits,
}

/// One segment register as the VMCS holds it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub selector: u16,
    pub access_rights: u32,
    pub limit: u32,
    pub base: u64,
}

/// Segment order in the [`group::SEGS`] group.
pub const SEGMENT_ORDER: [&str; 8] = ["cs", "ss", "ds", "es", "fs", "gs", "tr", "ldtr"];

/// An exit as a handler sees it. Groups the portal did not ask for read as zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitMessage {
    /// The full exit reason (bits 15:0 basic reason, bit 31 entry failure).
    pub reason: u32,
    /// The groups present ([`group`]).
    pub mask: u32,
    /// The vCPU's id (set at [`crate::Sys::VcpuCreate`]).
    pub vcpu: u32,
    pub gprs: [u64; 16],
    pub rip: u64,
    pub rflags: u64,
    pub instruction_len: u32,
    /// The guest interruptibility state ([`interruptibility`]), with [`group::RIP`].
    pub interruptibility: u32,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub cr0_shadow: u64,
    pub cr4_shadow: u64,
    /// In [`SEGMENT_ORDER`].
    pub segments: [Segment; 8],
    pub qualification: u64,
    pub intr_info: u32,
    pub intr_error: u32,
    pub idt_vectoring_info: u32,
    pub idt_vectoring_error: u32,
    pub instruction_info: u32,
    pub gpa: u64,
    pub gla: u64,
}

/// Little-endian cursor helpers for the two layouts.
struct Writer<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) -> Option<()> {
        let end = self.at.checked_add(bytes.len())?;
        self.out.get_mut(self.at..end)?.copy_from_slice(bytes);
        self.at = end;
        Some(())
    }
    fn u16(&mut self, v: u16) -> Option<()> {
        self.put(&v.to_le_bytes())
    }
    fn u32(&mut self, v: u32) -> Option<()> {
        self.put(&v.to_le_bytes())
    }
    fn u64(&mut self, v: u64) -> Option<()> {
        self.put(&v.to_le_bytes())
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], LayoutError> {
        let end = self.at.checked_add(N).ok_or(LayoutError::Truncated)?;
        let s = self.bytes.get(self.at..end).ok_or(LayoutError::Truncated)?;
        self.at = end;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16, LayoutError> {
        self.take::<2>().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Result<u32, LayoutError> {
        self.take::<4>().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Result<u64, LayoutError> {
        self.take::<8>().map(u64::from_le_bytes)
    }
}

impl ExitMessage {
    /// Bytes of the header (reason, mask, vcpu, reserved: [`layout::Header`]).
    pub const HEADER: usize = layout::HEADER;
    /// The largest message (every group).
    pub const MAX_SIZE: usize = Self::size_of_mask(group::ALL);

    /// The encoded size for a mask ([`layout::size_of_mask`]).
    pub const fn size_of_mask(mask: u32) -> usize {
        layout::size_of_mask(mask)
    }

    /// Writes the header and the groups in `self.mask`; returns the length, or `None` when
    /// `out` is too small.
    pub fn encode(&self, out: &mut [u8]) -> Option<usize> {
        let mask = self.mask & group::ALL;
        let mut w = Writer { out, at: 0 };
        w.u32(self.reason)?;
        w.u32(mask)?;
        w.u32(self.vcpu)?;
        w.u32(0)?;
        if mask & group::GPRS != 0 {
            for g in self.gprs {
                w.u64(g)?;
            }
        }
        if mask & group::RIP != 0 {
            w.u64(self.rip)?;
            w.u64(self.rflags)?;
            w.u64(u64::from(self.instruction_len) | u64::from(self.interruptibility) << 32)?;
        }
        if mask & group::CRS != 0 {
            for v in [
                self.cr0,
                self.cr3,
                self.cr4,
                self.efer,
                self.cr0_shadow,
                self.cr4_shadow,
            ] {
                w.u64(v)?;
            }
        }
        if mask & group::SEGS != 0 {
            for s in self.segments {
                w.u16(s.selector)?;
                w.u16(0)?;
                w.u32(s.access_rights)?;
                w.u32(s.limit)?;
                w.u32(0)?;
                w.u64(s.base)?;
            }
        }
        if mask & group::QUAL != 0 {
            w.u64(self.qualification)?;
            w.u32(self.intr_info)?;
            w.u32(self.intr_error)?;
            w.u32(self.idt_vectoring_info)?;
            w.u32(self.idt_vectoring_error)?;
            w.u32(self.instruction_info)?;
            w.u32(0)?;
        }
        if mask & group::ADDR != 0 {
            w.u64(self.gpa)?;
            w.u64(self.gla)?;
        }
        Some(w.at)
    }

    /// Reads a message; exactly the announced groups must be present.
    pub fn decode(bytes: &[u8]) -> Result<ExitMessage, LayoutError> {
        let mut m = ExitMessage::default();
        m.decode_into(bytes)?;
        Ok(m)
    }

    /// [`ExitMessage::decode`] into an existing value (a handler's, reused for every exit:
    /// the struct is large to build and move). Groups not in the message are zeroed; on an
    /// error `self` is left unspecified.
    pub fn decode_into(&mut self, bytes: &[u8]) -> Result<(), LayoutError> {
        let word32 = |at: usize| {
            bytes
                .get(at..at + 4)
                .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        if bytes.len() < Self::HEADER {
            return Err(LayoutError::Truncated);
        }
        let mask = word32(offset_of!(layout::Header, mask));
        if mask & !group::ALL != 0 {
            return Err(LayoutError::UnknownBits);
        }
        let size = Self::size_of_mask(mask);
        if bytes.len() < size {
            return Err(LayoutError::Truncated);
        }
        if bytes.len() > size {
            return Err(LayoutError::TrailingBytes);
        }
        // The length is checked: the reads below cannot run past the end.
        let mut r = Reader {
            bytes,
            at: layout::HEADER,
        };
        self.reason = word32(offset_of!(layout::Header, reason));
        self.mask = mask;
        self.vcpu = word32(offset_of!(layout::Header, vcpu));
        if mask & group::GPRS != 0 {
            let at = layout::group_at(mask, group::GPRS);
            let regs = bytes.get(at..at + size_of::<layout::Gprs>()).unwrap_or(&[]);
            for (g, w) in self.gprs.iter_mut().zip(regs.chunks_exact(8)) {
                *g = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            }
            r.at = at + size_of::<layout::Gprs>();
        } else {
            self.gprs = [0; 16];
        }
        let mut u64_ = || r.u64().unwrap_or(0);
        if mask & group::RIP != 0 {
            self.rip = u64_();
            self.rflags = u64_();
            let len = u64_();
            self.instruction_len = len as u32;
            self.interruptibility = (len >> 32) as u32;
        } else {
            (self.rip, self.rflags, self.instruction_len) = (0, 0, 0);
            self.interruptibility = 0;
        }
        if mask & group::CRS != 0 {
            self.cr0 = u64_();
            self.cr3 = u64_();
            self.cr4 = u64_();
            self.efer = u64_();
            self.cr0_shadow = u64_();
            self.cr4_shadow = u64_();
        } else {
            (self.cr0, self.cr3, self.cr4, self.efer) = (0, 0, 0, 0);
            (self.cr0_shadow, self.cr4_shadow) = (0, 0);
        }
        if mask & group::SEGS != 0 {
            for s in self.segments.iter_mut() {
                s.selector = r.u16().unwrap_or(0);
                r.at += 2;
                s.access_rights = r.u32().unwrap_or(0);
                s.limit = r.u32().unwrap_or(0);
                r.at += 4;
                s.base = r.u64().unwrap_or(0);
            }
        } else {
            self.segments = [Segment::default(); 8];
        }
        if mask & group::QUAL != 0 {
            self.qualification = r.u64().unwrap_or(0);
            self.intr_info = r.u32().unwrap_or(0);
            self.intr_error = r.u32().unwrap_or(0);
            self.idt_vectoring_info = r.u32().unwrap_or(0);
            self.idt_vectoring_error = r.u32().unwrap_or(0);
            self.instruction_info = r.u32().unwrap_or(0);
            r.at += 4;
        } else {
            self.qualification = 0;
            (self.intr_info, self.intr_error, self.instruction_info) = (0, 0, 0);
            (self.idt_vectoring_info, self.idt_vectoring_error) = (0, 0);
        }
        if mask & group::ADDR != 0 {
            self.gpa = r.u64().unwrap_or(0);
            self.gla = r.u64().unwrap_or(0);
        } else {
            (self.gpa, self.gla) = (0, 0);
        }
        Ok(())
    }

    /// The basic exit reason (bits 15:0).
    pub fn basic_reason(&self) -> u32 {
        self.reason & 0xffff
    }
}

/// A message read in place: the header, the registers and the qualification of a valid
/// message, without building an [`ExitMessage`] (the handlers of the frequent exits need
/// only those). The same checks as [`ExitMessage::decode`].
#[derive(Clone, Copy, Debug)]
pub struct ExitView<'a> {
    bytes: &'a [u8],
    mask: u32,
}

impl<'a> ExitView<'a> {
    #[inline]
    pub fn new(bytes: &'a [u8]) -> Result<ExitView<'a>, LayoutError> {
        let header = bytes
            .first_chunk::<{ ExitMessage::HEADER }>()
            .ok_or(LayoutError::Truncated)?;
        let at = offset_of!(layout::Header, mask);
        let mask = u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
        if mask & !group::ALL != 0 {
            return Err(LayoutError::UnknownBits);
        }
        let size = ExitMessage::size_of_mask(mask);
        if bytes.len() < size {
            return Err(LayoutError::Truncated);
        }
        if bytes.len() > size {
            return Err(LayoutError::TrailingBytes);
        }
        Ok(ExitView { bytes, mask })
    }

    #[inline]
    fn u32_at(&self, at: usize) -> u32 {
        self.bytes
            .get(at..at + 4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    #[inline]
    fn u64_at(&self, at: usize) -> u64 {
        self.bytes.get(at..at + 8).map_or(0, |b| {
            u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
        })
    }

    /// [`ExitMessage::reason`].
    #[inline]
    pub fn reason(&self) -> u32 {
        self.u32_at(offset_of!(layout::Header, reason))
    }

    /// [`ExitMessage::mask`].
    #[inline]
    pub fn mask(&self) -> u32 {
        self.mask
    }

    /// [`ExitMessage::vcpu`].
    #[inline]
    pub fn vcpu(&self) -> u32 {
        self.u32_at(offset_of!(layout::Header, vcpu))
    }

    /// Register `r` (0 without [`group::GPRS`]).
    #[inline]
    pub fn gpr(&self, r: Gpr) -> u64 {
        if self.mask & group::GPRS == 0 {
            return 0;
        }
        self.u64_at(layout::group_at(self.mask, group::GPRS) + 8 * r as usize)
    }

    /// [`ExitMessage::qualification`] (0 without [`group::QUAL`]).
    #[inline]
    pub fn qualification(&self) -> u64 {
        if self.mask & group::QUAL == 0 {
            return 0;
        }
        self.u64_at(
            layout::group_at(self.mask, group::QUAL) + offset_of!(layout::Qual, qualification),
        )
    }
}

/// What a reply asks the kernel to do before resuming (bits of [`ExitReply::flags`]).
pub mod reply {
    /// Add the exiting instruction's length to RIP.
    pub const ADVANCE_RIP: u32 = 1 << 0;
    /// Set RIP (applied before `ADVANCE_RIP`).
    pub const SET_RIP: u32 = 1 << 1;
    pub const SET_RFLAGS: u32 = 1 << 2;
    /// Set guest CR0 (the kernel forces the bits VMX needs; the read shadow gets the value).
    pub const SET_CR0: u32 = 1 << 3;
    pub const SET_CR3: u32 = 1 << 4;
    /// Set guest CR4 (CR4.VMXE is forced on and hidden by the read shadow).
    pub const SET_CR4: u32 = 1 << 5;
    pub const SET_EFER: u32 = 1 << 6;
    /// Inject an event: `inject` = VM-entry interruption info (bit 31 valid) | error code << 32.
    pub const INJECT: u32 = 1 << 7;
    /// Stop the VM; [`crate::Sys::VcpuRun`] returns with `stop_code`.
    pub const STOP: u32 = 1 << 8;
    /// Set the guest's CR2 (before injecting a #PF).
    pub const SET_CR2: u32 = 1 << 9;
    /// Shadow-paged VMs, from the VM's MMU endpoint only: the hardware CR3 (a page of the
    /// VM's pool), applied after every other change of the reply.
    pub const SET_SHADOW_CR3: u32 = 1 << 10;
    // Issue 12 (the PC platform): interrupt delivery and MMIO.
    /// Exit with [`super::reason::INTERRUPT_WINDOW`] (to that reason's portal) as soon as
    /// the guest can take an external interrupt (RFLAGS.IF = 1, no STI or MOV SS blocking);
    /// at once if it already can. The request ends with that exit.
    pub const INTR_WINDOW: u32 = 1 << 11;
    /// Enter the guest in the HLT activity state (after the other changes, RIP advance
    /// included): it waits there for an injected event, an interrupt-window exit or its
    /// deadline. An injection wakes it.
    pub const HALT: u32 = 1 << 12;
    /// Set the vCPU's deadline ([`super::field::DEADLINE`]): a host TSC value (0: none).
    pub const SET_DEADLINE: u32 = 1 << 13;
    /// From the VM's MMU endpoint only: the access was to guest-physical `forward_gpa`,
    /// outside RAM. The kernel sends the exit, with that address, on to the vCPU's MMIO
    /// portal ([`super::reason::MMIO`]) instead of resuming. Nothing else may come with it
    /// (no other flag, no register); the forwarded exit cannot be forwarded again; from any
    /// other endpoint, or for an exit the MMU endpoint does not take, the vCPU stops with
    /// [`super::stop::BAD_REPLY`]. A vCPU without an MMIO endpoint portal stops with
    /// [`super::stop::UNHANDLED`] (qualification: the address).
    pub const FORWARD: u32 = 1 << 14;
    /// Exit with [`super::reason::NMI_WINDOW`] (to that reason's portal) as soon as the
    /// guest can take an NMI (no NMI, MOV SS or STI blocking); at once if it already can. The
    /// request ends with that exit. On a CPU without virtual NMIs the kernel asks for the
    /// interrupt window instead ([`INTR_WINDOW`]'s exit, reason 7): the NMI blocking an
    /// injected NMI set then ends with the guest's IRET, which the handler sees in the
    /// interruptibility state of that exit.
    pub const NMI_WINDOW: u32 = 1 << 15;
    pub const ALL: u32 = 0xffff;
    /// The flags that carry no value in the encoded reply.
    pub const NO_VALUE: u32 = ADVANCE_RIP | INTR_WINDOW | HALT | NMI_WINDOW;
}

/// A handler's answer to an exit message. Registers named in `gpr_mask` are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitReply {
    pub flags: u32,
    /// Bit `n` set: write `gprs[n]`.
    pub gpr_mask: u16,
    pub gprs: [u64; 16],
    pub rip: u64,
    pub rflags: u64,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub inject: u64,
    pub stop_code: u64,
    pub cr2: u64,
    pub shadow_cr3: u64,
    /// With [`reply::SET_DEADLINE`].
    pub deadline: u64,
    /// With [`reply::FORWARD`].
    pub forward_gpa: u64,
}

/// How many registers a `gpr_mask` names: two table loads, where `count_ones` is a dozen
/// shifts and masks on a target without POPCNT (the kernel's, which reads this on every reply).
pub const fn registers(gpr_mask: u16) -> u32 {
    /// The set bits of each byte.
    const ONES: [u8; 256] = {
        let mut t = [0u8; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = (i as u8).count_ones() as u8;
            i += 1;
        }
        t
    };
    ONES[(gpr_mask & 0xff) as usize] as u32 + ONES[(gpr_mask >> 8) as usize] as u32
}

impl ExitReply {
    /// The largest reply.
    pub const MAX_SIZE: usize = layout::REPLY_HEADER + 16 * 8 + Self::VALUE_FLAGS.len() * 8;

    /// Resume after the instruction.
    pub fn advance() -> ExitReply {
        ExitReply {
            flags: reply::ADVANCE_RIP,
            ..ExitReply::default()
        }
    }

    /// Resume at the same instruction (e.g. after a mapping was filled in).
    pub fn resume() -> ExitReply {
        ExitReply::default()
    }

    /// Stop the VM with `code`.
    pub fn stop(code: u64) -> ExitReply {
        ExitReply {
            flags: reply::STOP,
            stop_code: code,
            ..ExitReply::default()
        }
    }

    /// Writes register `r`.
    pub fn set_gpr(&mut self, r: Gpr, value: u64) -> &mut Self {
        self.gpr_mask |= 1 << r as usize;
        self.gprs[r as usize] = value;
        self
    }

    /// The flags that carry a value, in layout order.
    const VALUE_FLAGS: [u32; 12] = [
        reply::SET_RIP,
        reply::SET_RFLAGS,
        reply::SET_CR0,
        reply::SET_CR3,
        reply::SET_CR4,
        reply::SET_EFER,
        reply::INJECT,
        reply::STOP,
        reply::SET_CR2,
        reply::SET_SHADOW_CR3,
        reply::SET_DEADLINE,
        reply::FORWARD,
    ];

    /// The values of the flags in [`Self::VALUE_FLAGS`], in the same order.
    fn values_mut(&mut self) -> [&mut u64; 12] {
        [
            &mut self.rip,
            &mut self.rflags,
            &mut self.cr0,
            &mut self.cr3,
            &mut self.cr4,
            &mut self.efer,
            &mut self.inject,
            &mut self.stop_code,
            &mut self.cr2,
            &mut self.shadow_cr3,
            &mut self.deadline,
            &mut self.forward_gpa,
        ]
    }

    /// The encoded size of a reply with these flags and registers.
    pub const fn size_of(flags: u32, gpr_mask: u16) -> usize {
        let values = (flags & !reply::NO_VALUE & reply::ALL).count_ones();
        layout::REPLY_HEADER + 8 * (registers(gpr_mask) + values) as usize
    }

    /// Header (flags u32, gpr_mask u16, 0u16), then the named registers in order, then
    /// rip, rflags, cr0, cr3, cr4, efer, inject, stop_code for the flags that are set.
    pub fn encode(&self, out: &mut [u8]) -> Option<usize> {
        let flags = self.flags & reply::ALL;
        let n = Self::size_of(flags, self.gpr_mask);
        let out = out.get_mut(..n)?;
        layout::put_reply_header(out, flags, self.gpr_mask);
        let mut words = out[layout::REPLY_HEADER..].chunks_exact_mut(8);
        let mut regs = self.gpr_mask;
        while regs != 0 {
            let i = regs.trailing_zeros() as usize;
            regs &= regs - 1;
            if let (Some(w), Some(v)) = (words.next(), self.gprs.get(i)) {
                w.copy_from_slice(&v.to_le_bytes());
            }
        }
        if flags & !reply::NO_VALUE == 0 {
            return Some(n); // the common reply: registers only
        }
        let mut copy = *self;
        let values = copy.values_mut().map(|v| *v);
        for (flag, v) in Self::VALUE_FLAGS.iter().zip(values) {
            if flags & flag != 0 {
                if let Some(w) = words.next() {
                    w.copy_from_slice(&v.to_le_bytes());
                }
            }
        }
        Some(n)
    }

    /// The bytes [`ExitReply::encode`] writes for a reply of `flags` without values (the
    /// [`reply::NO_VALUE`] ones) that writes `values` to the registers of `gpr_mask`, in
    /// register order, without building an [`ExitReply`]; `None` when `out` is too small,
    /// `flags` carry a value or `values` are not one per register.
    pub fn encode_registers(
        out: &mut [u8],
        flags: u32,
        gpr_mask: u16,
        values: &[u64],
    ) -> Option<usize> {
        if flags & !reply::NO_VALUE & reply::ALL != 0
            || values.len() != registers(gpr_mask) as usize
        {
            return None;
        }
        let flags = flags & reply::ALL;
        let n = Self::size_of(flags, gpr_mask);
        let out = out.get_mut(..n)?;
        layout::put_reply_header(out, flags, gpr_mask);
        for (w, v) in out[layout::REPLY_HEADER..].chunks_exact_mut(8).zip(values) {
            w.copy_from_slice(&v.to_le_bytes());
        }
        Some(n)
    }

    pub fn decode(bytes: &[u8]) -> Result<ExitReply, LayoutError> {
        let (flags, gpr_mask, reserved) =
            layout::reply_header(bytes).ok_or(LayoutError::Truncated)?;
        if flags & !reply::ALL != 0 || reserved != 0 {
            return Err(LayoutError::UnknownBits);
        }
        let n = Self::size_of(flags, gpr_mask);
        if bytes.len() < n {
            return Err(LayoutError::Truncated);
        }
        if bytes.len() > n {
            return Err(LayoutError::TrailingBytes);
        }
        let mut x = ExitReply {
            flags,
            gpr_mask,
            ..ExitReply::default()
        };
        let mut words = bytes[layout::REPLY_HEADER..]
            .chunks_exact(8)
            .map(|w| u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]));
        let mut regs = gpr_mask;
        while regs != 0 {
            let i = regs.trailing_zeros() as usize;
            regs &= regs - 1;
            if let (Some(g), Some(v)) = (x.gprs.get_mut(i), words.next()) {
                *g = v;
            }
        }
        for (flag, v) in Self::VALUE_FLAGS.iter().zip(x.values_mut()) {
            if flags & flag != 0 {
                *v = words.next().unwrap_or(0);
            }
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_of_mask_is_group_at_for_every_mask() {
        for m in (0..=0xffu32).chain([u32::MAX, 0x8000_003f]) {
            assert_eq!(layout::size_of_mask(m), layout::group_at(m, 0), "{m:#x}");
        }
    }

    #[test]
    fn registers_counts_every_mask() {
        for m in 0..=u16::MAX {
            assert_eq!(registers(m), m.count_ones(), "{m:#x}");
        }
    }

    fn full_message() -> ExitMessage {
        let mut m = ExitMessage {
            reason: reason::IO,
            mask: group::ALL,
            vcpu: 3,
            rip: 0x1000,
            rflags: 2,
            instruction_len: 1,
            cr0: 0x31,
            cr3: 0x5000,
            cr4: 0x2000,
            efer: 0x500,
            cr0_shadow: 0x11,
            cr4_shadow: 0,
            qualification: 0x3f8_0000,
            intr_info: 1,
            intr_error: 2,
            idt_vectoring_info: 3,
            idt_vectoring_error: 4,
            instruction_info: 5,
            gpa: 0xfee0_0000,
            gla: 0x1234,
            ..ExitMessage::default()
        };
        for (i, g) in m.gprs.iter_mut().enumerate() {
            *g = 0x100 + i as u64;
        }
        for (i, s) in m.segments.iter_mut().enumerate() {
            *s = Segment {
                selector: 8 * i as u16,
                access_rights: 0x9b,
                limit: 0xffff,
                base: i as u64,
            };
        }
        m
    }

    #[test]
    fn every_mask_round_trips_and_has_its_size() {
        let full = full_message();
        for mask in 0..=group::ALL {
            let mut buf = [0u8; ExitMessage::MAX_SIZE + 1];
            let mut src = full;
            src.mask = mask;
            let n = src.encode(&mut buf).expect("fits");
            assert_eq!(n, ExitMessage::size_of_mask(mask));
            let back = ExitMessage::decode(&buf[..n]).expect("decodes");
            // Only the announced groups come back.
            assert_eq!((back.reason, back.vcpu), (full.reason, full.vcpu));
            assert_eq!(back.mask, mask);
            assert_eq!(back.gprs == full.gprs, mask & group::GPRS != 0);
            assert_eq!(back.rip == full.rip, mask & group::RIP != 0);
            assert_eq!(back.segments == full.segments, mask & group::SEGS != 0);
            assert_eq!(back.gpa == full.gpa, mask & group::ADDR != 0);
            // Truncated or padded input is an error, never a panic.
            for cut in 0..n {
                assert_eq!(
                    ExitMessage::decode(&buf[..cut]),
                    Err(LayoutError::Truncated)
                );
            }
            assert_eq!(
                ExitMessage::decode(&buf[..n + 1]),
                Err(LayoutError::TrailingBytes)
            );
        }
    }

    #[test]
    fn replies_round_trip_and_reject_bad_input() {
        let mut r = ExitReply::advance();
        r.set_gpr(Gpr::Rax, 7).set_gpr(Gpr::R15, 9);
        r.flags |= reply::INJECT | reply::SET_CR0 | reply::STOP | reply::SET_SHADOW_CR3;
        r.inject = 0x8000_0b0d | (5 << 32);
        r.cr0 = 0x8000_0031;
        r.stop_code = 42;
        r.shadow_cr3 = 0x7000;
        let mut buf = [0u8; ExitReply::MAX_SIZE];
        let n = r.encode(&mut buf).expect("fits");
        assert_eq!(n, 8 + 2 * 8 + 4 * 8);
        // The values follow the registers in flag order: the shadow root is last.
        assert_eq!(buf[n - 8..n], 0x7000u64.to_le_bytes());
        assert_eq!(ExitReply::decode(&buf[..n]), Ok(r));
        assert_eq!(
            ExitReply::decode(&buf[..n - 1]),
            Err(LayoutError::Truncated)
        );
        // Every value flag round-trips with its own value.
        for bit in 1..11 {
            let mut one = ExitReply {
                flags: 1 << bit,
                ..ExitReply::default()
            };
            *one.values_mut()[bit - 1] = 0x1000 + bit as u64;
            let n = one.encode(&mut buf).expect("fits");
            assert_eq!(n, 16);
            assert_eq!(ExitReply::decode(&buf[..n]), Ok(one));
        }
        let n = r.encode(&mut buf).expect("fits");
        let mut bad = buf;
        bad[3] = 0x80;
        assert_eq!(ExitReply::decode(&bad[..n]), Err(LayoutError::UnknownBits));
        assert_eq!(
            ExitReply::decode(&[0u8; 9]),
            Err(LayoutError::TrailingBytes)
        );
        // The empty reply is "resume".
        assert_eq!(ExitReply::decode(&[0u8; 8]), Ok(ExitReply::resume()));
    }

    #[test]
    fn views_read_what_decode_reads() {
        let full = full_message();
        for mask in 0..=group::ALL {
            let mut buf = [0u8; ExitMessage::MAX_SIZE + 1];
            let mut src = full;
            src.mask = mask;
            let n = src.encode(&mut buf).expect("fits");
            let m = ExitMessage::decode(&buf[..n]).expect("decodes");
            let v = ExitView::new(&buf[..n]).expect("valid");
            assert_eq!((v.reason(), v.mask(), v.vcpu()), (m.reason, m.mask, m.vcpu));
            for r in [Gpr::Rax, Gpr::Rcx, Gpr::Rsi, Gpr::R15] {
                assert_eq!(v.gpr(r), m.gprs[r as usize]);
            }
            assert_eq!(v.qualification(), m.qualification);
            for cut in 0..n {
                assert_eq!(
                    ExitView::new(&buf[..cut]).map(|v| v.mask()),
                    Err(LayoutError::Truncated)
                );
            }
            assert_eq!(
                ExitView::new(&buf[..n + 1]).map(|v| v.mask()),
                Err(LayoutError::TrailingBytes)
            );
        }
        let mut bad = [0u8; 16];
        bad[4] = 0x40;
        assert_eq!(
            ExitView::new(&bad).map(|v| v.mask()),
            Err(LayoutError::UnknownBits)
        );
    }

    #[test]
    fn register_replies_encode_as_replies_do() {
        let mut r = ExitReply::advance();
        r.set_gpr(Gpr::Rax, 1)
            .set_gpr(Gpr::Rcx, 2)
            .set_gpr(Gpr::Rdx, 3)
            .set_gpr(Gpr::Rbx, 4);
        let (mut a, mut b) = ([0u8; ExitReply::MAX_SIZE], [0u8; ExitReply::MAX_SIZE]);
        let n = r.encode(&mut a).expect("fits");
        let m = ExitReply::encode_registers(&mut b, reply::ADVANCE_RIP, 0b1111, &[1, 2, 3, 4]);
        assert_eq!(m, Some(n));
        assert_eq!(a[..n], b[..n]);
        r.flags |= reply::HALT;
        let n = r.encode(&mut a).expect("fits");
        let flags = reply::ADVANCE_RIP | reply::HALT;
        assert_eq!(
            ExitReply::encode_registers(&mut b, flags, 0b1111, &[1, 2, 3, 4]),
            Some(n)
        );
        assert_eq!(a[..n], b[..n]);
        // Value flags, a register count that does not match, a short buffer: refused.
        assert_eq!(
            ExitReply::encode_registers(&mut b, reply::STOP, 0, &[]),
            None
        );
        assert_eq!(ExitReply::encode_registers(&mut b, 0, 0b11, &[1]), None);
        assert_eq!(ExitReply::encode_registers(&mut b[..15], 0, 1, &[1]), None);
    }

    #[test]
    fn host_state_and_controls_are_out_of_reach() {
        use field::{access, Access};
        for host in [0x0c00u64, 0x2c00, 0x4c00, 0x6c00, 0x6c14, 0x6c16] {
            assert_eq!(access(host), Access::None, "{host:#x}");
        }
        for ctl in [0x4000u64, 0x4002, 0x400c, 0x401e, 0x201a, 0x2000] {
            assert_eq!(access(ctl), Access::None, "{ctl:#x}");
        }
        assert_eq!(access(field::GUEST_RIP), Access::ReadWrite);
        assert_eq!(access(field::GUEST_RIP + 1), Access::None);
        assert_eq!(access(field::EXIT_QUALIFICATION), Access::ReadOnly);
        assert_eq!(access(field::GPR_BASE + 3), Access::ReadWrite);
        assert_eq!(access(field::GPR_BASE + 16), Access::None);
        assert_eq!(access(field::EXIT_COUNT_BASE + 10), Access::ReadOnly);
    }

    #[test]
    fn msr_part_fields_are_writable_and_checked() {
        use field::*;
        for (i, &msr) in SWITCHED_MSRS.iter().enumerate() {
            let f = GUEST_MSR_BASE + i as u64;
            assert_eq!(access(f), Access::ReadWrite);
            assert_eq!(switched_msr_field(msr), Some(f));
        }
        assert_eq!(switched_msr_field(0xc000_0101), None); // GS base is a VMCS field
        assert_eq!(access(GUEST_MSR_BASE + 6), Access::None);
        assert_eq!(access(TSC_OFFSET), Access::ReadWrite);
        assert_eq!(access(TSC_OFFSET + 1), Access::None);
        for f in [
            GUEST_LSTAR,
            GUEST_KERNEL_GS_BASE,
            GUEST_GS_BASE,
            GUEST_SYSENTER_EIP,
        ] {
            assert!(msr_value_ok(f, 0xffff_8000_0000_0000));
            assert!(msr_value_ok(f, 0x0000_7fff_ffff_f000));
            assert!(!msr_value_ok(f, 0x0000_8000_0000_0000), "{f:#x}");
        }
        assert!(msr_value_ok(GUEST_STAR, u64::MAX));
        assert!(!msr_value_ok(GUEST_SFMASK, 1 << 32));
        assert!(!msr_value_ok(GUEST_TSC_AUX, 1 << 32));
        assert!(msr_value_ok(GUEST_IA32_PAT, 0x0007_0406_0007_0406));
        assert!(!msr_value_ok(GUEST_IA32_PAT, 0x0007_0406_0007_0402));
        assert!(msr_value_ok(GUEST_IA32_EFER, 0xd01));
        assert!(!msr_value_ok(GUEST_IA32_EFER, 0x2));
        assert!(msr_value_ok(GUEST_RIP, u64::MAX));
    }
}
