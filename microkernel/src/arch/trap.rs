//! CPU exceptions: entry stubs that save every register into a [`TrapFrame`], the IDT, and the
//! dispatcher. An exception either hits an exception-table entry (a *probe*: an instruction
//! allowed to fault, whose fixup reports the fault to its caller — the mechanism user-memory
//! access will use) or is fatal: the report (vector, error code, RIP, CR2, registers) goes to
//! the console and the machine stops with `ExitCode::Crash`.
//!
//! An exception from ring 3 is the user's, not the kernel's: it goes to
//! `kentry::user_exception` with the thread's registers (see `arch::user`). The IDT also holds
//! the PIC vectors 32..47, whose stubs live in `arch::user`.

use crate::console::RawConsole;
use core::arch::global_asm;
use core::fmt::Write;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use microkernel::kobj::regs::UserRegs;
use spin::LazyLock;
use x86_64::registers::control::{Cr0, Cr2, Cr3, Cr4};
use x86_64::structures::idt::InterruptDescriptorTable;
use x86_64::VirtAddr;

/// The registers an exception stub saves, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

// One 16-byte stub per vector 0..31 (stub address = trap_stubs + 16 * vector). Vectors without
// a CPU error code push a 0 so every frame has the same shape.
global_asm!(
    r#"
    .section .text
    .balign 16
    .global trap_stubs
trap_stubs:
    .irp vec, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .balign 16
    .if (\vec == 8) || ((\vec >= 10) && (\vec <= 14)) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30)
    .else
    pushq $0
    .endif
    pushq $\vec
    jmp trap_common
    .endr

trap_common:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, %rdi
    cld
    call trap_dispatch
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    addq $16, %rsp
    iretq
"#,
    options(att_syntax)
);

// Probes: single instructions allowed to fault. Each labels its faulting instruction `1:` and
// ends with `probe_fixup`, which adds the fixup (return `faulted = 1` to the caller) and the
// exception-table entry (faulting instruction, fixup).
global_asm!(
    r#"
    .macro probe_fixup
2:  xorl %eax, %eax
    movl $1, %edx
    ret
    .pushsection .ex_table, "a"
    .quad 1b, 2b
    .popsection
    .endm

    .section .text
    .global probe_read_u64
probe_read_u64:
    xorl %edx, %edx
1:  movq (%rdi), %rax
    ret
    probe_fixup

    .global probe_write_u64
probe_write_u64:
    xorl %edx, %edx
1:  movq %rsi, (%rdi)
    xorl %eax, %eax
    ret
    probe_fixup

    .global probe_ud2
probe_ud2:
1:  ud2
    probe_fixup

    .global probe_rdmsr
probe_rdmsr:
    movl %edi, %ecx
1:  rdmsr
    shlq $32, %rdx
    orq %rdx, %rax
    xorl %edx, %edx
    ret
    probe_fixup
"#,
    options(att_syntax)
);

/// What a probe returns: the value read, and whether the access faulted instead.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct ProbeResult {
    value: u64,
    faulted: u64,
}

extern "C" {
    static trap_stubs: u8;
    static __ex_table_start: u8;
    static __ex_table_end: u8;
    fn probe_read_u64(addr: u64) -> ProbeResult;
    fn probe_write_u64(addr: u64, value: u64) -> ProbeResult;
    fn probe_rdmsr(msr: u32) -> ProbeResult;
    fn probe_ud2() -> ProbeResult;
}

/// The exception a probe took, for callers that want to know which.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeFault {
    pub vector: u8,
    pub error_code: u64,
    /// CR2 at the time of the fault (meaningful for page faults).
    pub address: u64,
}

static LAST_PROBE_VECTOR: AtomicU32 = AtomicU32::new(0);
static LAST_PROBE_ERROR: AtomicU64 = AtomicU64::new(0);
static LAST_PROBE_ADDRESS: AtomicU64 = AtomicU64::new(0);

impl ProbeResult {
    /// The value, or the fault the probe took (recorded by `trap_dispatch`).
    fn into_result(self) -> Result<u64, ProbeFault> {
        if self.faulted == 0 {
            return Ok(self.value);
        }
        Err(ProbeFault {
            vector: LAST_PROBE_VECTOR.load(Ordering::Relaxed) as u8,
            error_code: LAST_PROBE_ERROR.load(Ordering::Relaxed),
            address: LAST_PROBE_ADDRESS.load(Ordering::Relaxed),
        })
    }
}

/// Reads a u64 at `addr`; a fault (unmapped, non-canonical, ...) is returned, not fatal.
pub fn read_u64(addr: u64) -> Result<u64, ProbeFault> {
    // SAFETY: the probe's only access is covered by an exception-table entry, so any fault
    // resumes at its fixup; a successful read of a mapped kernel address has no side effects.
    unsafe { probe_read_u64(addr) }.into_result()
}

/// Writes a u64 at `addr`; a fault is returned, not fatal. Callers only aim it at memory no
/// Rust object owns (a test page, later user memory).
pub fn write_u64(addr: u64, value: u64) -> Result<(), ProbeFault> {
    // SAFETY: as for `read_u64`; callers only pass addresses outside any Rust object.
    unsafe { probe_write_u64(addr, value) }
        .into_result()
        .map(drop)
}

/// Reads an MSR; a #GP (the MSR does not exist) is returned, not fatal.
pub fn rdmsr(msr: u32) -> Result<u64, ProbeFault> {
    // SAFETY: reading an MSR has no memory effects; a #GP resumes at the fixup.
    unsafe { probe_rdmsr(msr) }.into_result()
}

/// Executes `ud2` under a probe: always returns the #UD it takes (a self-test of recovery).
pub fn ud2() -> Result<(), ProbeFault> {
    // SAFETY: `ud2` only raises #UD, which resumes at the probe's fixup.
    unsafe { probe_ud2() }.into_result().map(drop)
}

/// A plain read of `va` with no exception-table entry, for the `fault-selftest` scenario: if
/// `va` is unmapped the fault is fatal and produces the exception report.
pub fn unprotected_read(va: u64) -> u64 {
    // SAFETY: a volatile read creates no reference; callers aim it at an unmapped kernel
    // address on purpose, and the fault handler stops the machine, so no value is produced.
    unsafe { core::ptr::read_volatile(va as *const u64) }
}

/// The fixup for a faulting instruction at `rip`, from the exception table.
fn fixup_for(rip: u64) -> Option<u64> {
    let start = (&raw const __ex_table_start) as usize;
    let end = (&raw const __ex_table_end) as usize;
    let entries = (end - start) / 16;
    (0..entries).find_map(|i| {
        let entry = (start + 16 * i) as *const [u64; 2];
        // SAFETY: the linker script brackets `.ex_table` with these symbols; it holds
        // 16-byte (instruction, fixup) pairs and is read-only.
        let [insn, fixup] = unsafe { entry.read() };
        (insn == rip).then_some(fixup)
    })
}

/// Breakpoints taken, for the self-test.
pub static BREAKPOINTS: AtomicU64 = AtomicU64::new(0);

static IDT: LazyLock<InterruptDescriptorTable> = LazyLock::new(|| {
    let mut idt = InterruptDescriptorTable::new();
    let stub = |vector: u64| VirtAddr::from_ptr(&raw const trap_stubs) + 16 * vector;
    // SAFETY: (for every `set_handler_addr` below) each stub saves all registers, calls
    // `trap_dispatch` with a valid frame and returns with `iretq`, with the error-code layout
    // the vector has; the double-fault IST index names a stack the TSS provides. The PIC
    // stubs (no error code) either return with `iretq` (from ring 0) or never return (from
    // ring 3, see `arch::user`).
    unsafe {
        idt.divide_error.set_handler_addr(stub(0));
        idt.debug.set_handler_addr(stub(1));
        idt.non_maskable_interrupt.set_handler_addr(stub(2));
        idt.breakpoint.set_handler_addr(stub(3));
        idt.overflow.set_handler_addr(stub(4));
        idt.bound_range_exceeded.set_handler_addr(stub(5));
        idt.invalid_opcode.set_handler_addr(stub(6));
        idt.device_not_available.set_handler_addr(stub(7));
        idt.double_fault
            .set_handler_addr(stub(8))
            .set_stack_index(super::gdt::DOUBLE_FAULT_IST);
        idt.invalid_tss.set_handler_addr(stub(10));
        idt.segment_not_present.set_handler_addr(stub(11));
        idt.stack_segment_fault.set_handler_addr(stub(12));
        idt.general_protection_fault.set_handler_addr(stub(13));
        idt.page_fault.set_handler_addr(stub(14));
        idt.x87_floating_point.set_handler_addr(stub(16));
        idt.alignment_check.set_handler_addr(stub(17));
        idt.machine_check.set_handler_addr(stub(18));
        idt.simd_floating_point.set_handler_addr(stub(19));
        idt.virtualization.set_handler_addr(stub(20));
        idt.cp_protection_exception.set_handler_addr(stub(21));
        idt.hv_injection_exception.set_handler_addr(stub(28));
        idt.vmm_communication_exception.set_handler_addr(stub(29));
        idt.security_exception.set_handler_addr(stub(30));
        for irq in 0..16 {
            idt[super::timer::IRQ_BASE + irq].set_handler_addr(super::user::irq_stub(irq));
        }
    }
    idt
});

/// Loads the IDT, then remaps the PICs and starts the timer (interrupts stay disabled).
pub fn init() {
    IDT.load();
    super::timer::init();
}

const NAMES: [&str; 32] = [
    "#DE divide error",
    "#DB debug",
    "NMI",
    "#BP breakpoint",
    "#OF overflow",
    "#BR bound range exceeded",
    "#UD invalid opcode",
    "#NM device not available",
    "#DF double fault",
    "coprocessor segment overrun",
    "#TS invalid TSS",
    "#NP segment not present",
    "#SS stack-segment fault",
    "#GP general protection",
    "#PF page fault",
    "reserved",
    "#MF x87 floating point",
    "#AC alignment check",
    "#MC machine check",
    "#XM SIMD floating point",
    "#VE virtualization",
    "#CP control protection",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "#HV hypervisor injection",
    "#VC VMM communication",
    "#SX security",
    "reserved",
];

/// Faults taken while reporting a fault: a second one skips the report and stops at once.
static REPORTING: AtomicU32 = AtomicU32::new(0);

/// Exceptions a user thread cannot cause on its own, fatal even when taken in ring 3.
fn machine_fatal(vector: u64) -> bool {
    matches!(vector, 2 | 8 | 18)
}

/// The user registers of a frame taken in ring 3.
fn user_regs(f: &TrapFrame) -> UserRegs {
    UserRegs {
        rax: f.rax,
        rbx: f.rbx,
        rcx: f.rcx,
        rdx: f.rdx,
        rsi: f.rsi,
        rdi: f.rdi,
        rbp: f.rbp,
        r8: f.r8,
        r9: f.r9,
        r10: f.r10,
        r11: f.r11,
        r12: f.r12,
        r13: f.r13,
        r14: f.r14,
        r15: f.r15,
        rip: f.rip,
        rflags: f.rflags,
        rsp: f.rsp,
    }
}

#[no_mangle]
extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    if frame.cs & 3 == 3 && !machine_fatal(frame.vector) {
        super::user::clear_ac();
        let cr2 = if frame.vector == 14 {
            Cr2::read_raw()
        } else {
            0
        };
        let mut regs = user_regs(frame);
        crate::kentry::user_exception(frame.vector as u8, frame.error_code, cr2, &mut regs)
    }
    match frame.vector {
        3 => {
            BREAKPOINTS.fetch_add(1, Ordering::Relaxed);
            return;
        }
        8 => {}
        _ => {
            if let Some(fixup) = fixup_for(frame.rip) {
                LAST_PROBE_VECTOR.store(frame.vector as u32, Ordering::Relaxed);
                LAST_PROBE_ERROR.store(frame.error_code, Ordering::Relaxed);
                LAST_PROBE_ADDRESS.store(Cr2::read_raw(), Ordering::Relaxed);
                frame.rip = fixup;
                return;
            }
        }
    }
    if REPORTING.fetch_add(1, Ordering::SeqCst) == 0 {
        let _ = report(frame);
    }
    crate::scenario::exit(abi::ExitCode::Crash);
}

fn report(f: &TrapFrame) -> core::fmt::Result {
    let mut out = RawConsole;
    let name = NAMES.get(f.vector as usize).copied().unwrap_or("?");
    writeln!(
        out,
        "\nEXCEPTION {name} (vector {}) error {:#x} at rip {:#018x} cr2 {:#018x}",
        f.vector,
        f.error_code,
        f.rip,
        Cr2::read_raw()
    )?;
    if f.vector == 14 {
        let e = f.error_code;
        writeln!(
            out,
            "  page fault: {} {} {}{}{}",
            if e & 1 != 0 {
                "protection"
            } else {
                "not-present"
            },
            if e & 2 != 0 { "write" } else { "read" },
            if e & 4 != 0 { "user" } else { "supervisor" },
            if e & 8 != 0 { " reserved-bit" } else { "" },
            if e & 16 != 0 { " fetch" } else { "" },
        )?;
    }
    let (cr3, _) = Cr3::read_raw();
    writeln!(
        out,
        "  cs {:#x} ss {:#x} rflags {:#x} rsp {:#018x}",
        f.cs, f.ss, f.rflags, f.rsp
    )?;
    writeln!(
        out,
        "  cr0 {:#x} cr3 {:#x} cr4 {:#x}",
        Cr0::read_raw(),
        cr3.start_address().as_u64(),
        Cr4::read_raw()
    )?;
    let regs = [
        ("rax", f.rax),
        ("rbx", f.rbx),
        ("rcx", f.rcx),
        ("rdx", f.rdx),
        ("rsi", f.rsi),
        ("rdi", f.rdi),
        ("rbp", f.rbp),
        ("r8", f.r8),
        ("r9", f.r9),
        ("r10", f.r10),
        ("r11", f.r11),
        ("r12", f.r12),
        ("r13", f.r13),
        ("r14", f.r14),
        ("r15", f.r15),
    ];
    for row in regs.chunks(4) {
        write!(out, " ")?;
        for (name, value) in row {
            write!(out, " {name:>3} {value:#018x}")?;
        }
        writeln!(out)?;
    }
    Ok(())
}
