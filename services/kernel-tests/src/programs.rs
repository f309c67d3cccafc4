//! The test programs: exact instructions, in assembly, each run as its own task (a copy of
//! this boot module) so that whatever it provokes ends only that task.
//!
//! The module's `_start` (written here, not by `userlib::entry!`) looks at the start argument:
//! with [`abi::ktests::PROGRAM_FLAG`] clear it calls the suite ([`crate::suite_entry`]); with
//! it set, the low 8 bits name a [`Program`] and `_start` jumps to it with the untouched
//! initial stack (`rsp` = [`STACK_TOP`]). A program ends its task with `TaskExit(code)` or
//! with a fault; the suite learns either from the fault notice on the task's fault endpoint.
//! Bits 16..32 of the argument are the program's parameter (`ecx` at its start).
//!
//! The only `unsafe` of this crate is `global_asm!` (the lint calls every use of it unsafe);
//! the programs touch nothing but their own task.

use abi::ipc::layout::{STACK_TOP, USER_END};
use abi::{Rights, Sys};

/// A test program (its index in the `_start` jump table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Program {
    /// `DebugWrite("hello from ring 3")`, then `TaskExit` with its status.
    Hello = 0,
    /// `DebugWrite` of a kernel address, an unmapped one and a range running off the end of
    /// the image; exits with the three statuses, one a byte (first in the highest).
    BadPointers,
    /// Loads every register with [`EXPECTED`], yields, exits with the number of the first
    /// register the syscall changed (rbx 2, rbp 7, r9..r15 9..15, rsp 16) or 0.
    SyscallRegisters,
    /// A thread of lower priority loads every register with [`EXPECTED`] and spins until the
    /// first thread, woken from `Sleep` by the timer, has preempted it and set a flag; then it
    /// exits with the number of the first register that changed (rax 1 .. r15 15, rsp 16),
    /// 0 if none, or `0xdead` when its spin budget ran out with no preemption.
    TimerPreemption,
    /// Reads [`NEVER_MAPPED`] at `kt_pf_read_at`.
    PageFaultRead,
    /// Writes the read-only `kt_ro_target` (in `.rodata`).
    PageFaultWriteRo,
    /// Reads [`KERNEL_VA`] at `kt_kernel_read_at`.
    KernelRead,
    /// Jumps to `kt_nx_target` (in `.data`, no-execute).
    NxExec,
    /// `cli` at CPL 3.
    PrivilegedCli,
    /// Maps a page of code at the top of the user half and makes a syscall from its last two
    /// bytes: the syscall's return address is [`USER_END`], which is not canonical.
    NoncanonicalReturn,
    /// `sgdt` (a #GP with UMIP on; exits with 5 otherwise).
    UmipSgdt,
    /// Loads the user data selector into DS, ES, FS and GS, yields, and exits with the OR of
    /// the four selectors after the syscall.
    Segments,
    /// LSL on every selector from the parameter (the first past the GDT) to the last; exits
    /// with the first one LSL accepts, or 0.
    LslSweep,
}

/// Programs in the jump table.
const PROGRAMS: u64 = 13;

/// Exit code of a start argument that names no program.
pub const BAD_PROGRAM: u64 = 0xbad;

/// The values [`Program::SyscallRegisters`] and [`Program::TimerPreemption`] load, rax..r15
/// (rsp is not loaded; it is compared with its own start value).
pub const EXPECTED: [u64; 15] = [
    0x0101_0101_0101_0101,
    0x1212_1212_1212_1212,
    0x2323_2323_2323_2323,
    0x3434_3434_3434_3434,
    0x4545_4545_4545_4545,
    0x5656_5656_5656_5656,
    0x6767_6767_6767_6767,
    0x7878_7878_7878_7878,
    0x8989_8989_8989_89a9,
    0x9a9a_9a9a_9a9a_9a9a,
    0xabab_abab_abab_abab,
    0xbcbc_bcbc_bcbc_bcbc,
    0xcdcd_cdcd_cdcd_cdcd,
    0xdede_dede_dede_dede,
    0xefef_efef_efef_efef,
];

/// Register names by the number a register program exits with.
pub const REGISTER_NAMES: [&str; 17] = [
    "none", "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12",
    "r13", "r14", "r15", "rsp",
];

/// A user-half address no task maps (`userlib`'s reserved window).
pub const NEVER_MAPPED: u64 = userlib::sys::NEVER_MAPPED.start;
/// A kernel address (the first page of the kernel's text), present but supervisor-only.
pub const KERNEL_VA: u64 = 0xffff_ffff_8020_0000;
/// Where [`Program::NoncanonicalReturn`] maps its page writable (to store the syscall).
const CODE_RW_VA: u64 = 0x1000_0000;
/// Where it maps the same page executable: the last page of the user half.
const CODE_TOP_VA: u64 = USER_END - 0x1000;
/// Spin iterations of the preempted thread before it gives up (exit code `0xdead`).
const SPIN_BUDGET: u64 = 1 << 28;
/// Priority of the test tasks' first thread; the spinning thread of
/// [`Program::TimerPreemption`] runs one below.
pub const TASK_PRIORITY: u64 = 2;
/// Timer ticks the first thread of [`Program::TimerPreemption`] sleeps.
const SLEEP_TICKS: u64 = 2;

/// Pages of memory objects each program may allocate.
pub fn pages(program: Program) -> u64 {
    match program {
        Program::NoncanonicalReturn => 1,
        _ => 0,
    }
}

/// The start argument that runs `program` with `param` in `ecx`.
pub fn start_arg(program: Program, param: u16) -> u64 {
    abi::ktests::PROGRAM_FLAG | u64::from(param) << 16 | program as u64
}

// Addresses of the programs' labels (same image in every task: linked at a fixed address).
// On the host, where the programs are not assembled, they are 0.
#[cfg(target_os = "none")]
extern "C" {
    static kt_pf_read_at: u8;
    static kt_pf_write_ro: u8;
    static kt_ro_target: u8;
    static kt_kernel_read_at: u8;
    static kt_nx_target: u8;
    static kt_priv_cli: u8;
    static kt_umip_sgdt: u8;
}

#[cfg(target_os = "none")]
macro_rules! label {
    ($name:ident) => {
        core::ptr::addr_of!($name) as u64
    };
}

#[cfg(not(target_os = "none"))]
macro_rules! label {
    ($name:ident) => {
        0
    };
}

/// Where [`Program::PageFaultRead`] faults.
pub fn pf_read_rip() -> u64 {
    label!(kt_pf_read_at)
}

/// Where [`Program::PageFaultWriteRo`] faults.
pub fn pf_write_ro_rip() -> u64 {
    label!(kt_pf_write_ro)
}

/// The read-only quadword it writes.
pub fn ro_target() -> u64 {
    label!(kt_ro_target)
}

/// Where [`Program::KernelRead`] faults.
pub fn kernel_read_rip() -> u64 {
    label!(kt_kernel_read_at)
}

/// The no-execute data [`Program::NxExec`] jumps to.
pub fn nx_target() -> u64 {
    label!(kt_nx_target)
}

/// Where [`Program::PrivilegedCli`] faults.
pub fn cli_rip() -> u64 {
    label!(kt_priv_cli)
}

/// Where [`Program::UmipSgdt`] faults.
pub fn sgdt_rip() -> u64 {
    label!(kt_umip_sgdt)
}

/// Where [`Program::NoncanonicalReturn`]'s syscall returns to.
pub const NONCANONICAL_RIP: u64 = USER_END;

/// Whether the CPU has NX (CPUID 0x8000_0001 EDX bit 20); the kernel uses it wherever it
/// exists, and maps data no-execute.
pub fn cpu_has_nx() -> bool {
    use core::arch::x86_64::__cpuid;
    __cpuid(0x8000_0000).eax >= 0x8000_0001 && __cpuid(0x8000_0001).edx & (1 << 20) != 0
}

/// Whether the CPU has UMIP (the kernel turns it on wherever it exists).
pub fn cpu_has_umip() -> bool {
    use core::arch::x86_64::{__cpuid, __cpuid_count};
    __cpuid(0).eax >= 7 && __cpuid_count(7, 0).ecx & (1 << 2) != 0
}

// SAFETY: `global_asm!` adds code and data to the image, nothing else: `_start` calls the suite
// exactly as `userlib::entry!` would (aligned stack, no frame pointer) or jumps to a program,
// and the programs use only their own registers, stack, image and the memory they map. Every
// symbol is prefixed `kt_` (and `_start`, which this crate defines instead of `entry!`).
#[cfg(target_os = "none")]
core::arch::global_asm!(
    // kt_check REG, OFFSET: on to `kt_fail_REG` unless REG holds its `kt_expected` value.
    ".macro kt_check reg, off",
    "    cmp \\reg, [rip + kt_expected + \\off]",
    "    jne kt_fail_\\reg",
    ".endm",
    ".macro kt_check_r12_to_r15",
    "    kt_check r12, 88",
    "    kt_check r13, 96",
    "    kt_check r14, 104",
    "    kt_check r15, 112",
    ".endm",
    // --- entry: the suite, or one program -------------------------------------------------
    ".pushsection .text._start,\"ax\",@progbits",
    ".globl _start",
    ".type _start, @function",
    "_start:",
    "    bt rdi, 63",
    "    jc kt_dispatch",
    "    xor ebp, ebp",
    "    and rsp, -16",
    "    call {suite}",
    "    ud2",
    "kt_dispatch:",
    "    mov ecx, edi",
    "    shr ecx, 16",
    "    movzx eax, dil",
    "    cmp eax, {programs}",
    "    jae kt_bad_program",
    "    lea rdx, [rip + kt_programs]",
    "    jmp qword ptr [rdx + rax * 8]",
    "kt_bad_program:",
    "    mov edi, {bad_program}",
    "kt_exit_edi:",
    "    mov eax, {task_exit}",
    "    syscall",
    "    ud2",
    ".size _start, . - _start",
    ".popsection",
    // --- the jump table and the programs' read-only data ----------------------------------
    ".pushsection .rodata.kt_programs,\"a\",@progbits",
    ".balign 8",
    "kt_programs:",
    "    .quad kt_hello, kt_badptr, kt_regs, kt_timer, kt_pf_read, kt_pf_write_ro",
    "    .quad kt_kernel_read, kt_nx_exec, kt_priv_cli, kt_noncanonical, kt_umip_sgdt",
    "    .quad kt_segments, kt_lsl_sweep",
    "kt_expected:",
    "    .quad {e0}, {e1}, {e2}, {e3}, {e4}, {e5}, {e6}, {e7}",
    "    .quad {e8}, {e9}, {e10}, {e11}, {e12}, {e13}, {e14}",
    "kt_stack_top:",
    "    .quad {stack_top}",
    "kt_spinner_rsp:",
    "    .quad kt_spinner_stack_top",
    ".globl kt_ro_target",
    "kt_ro_target:",
    "    .quad 0",
    "kt_hello_msg:",
    "    .ascii \"hello from ring 3\"",
    ".popsection",
    // --- writable data ----------------------------------------------------------------------
    ".pushsection .data.kt_programs,\"aw\",@progbits",
    ".balign 8",
    "kt_spin_budget:",
    "    .quad {spin_budget}",
    "kt_preempted:",
    "    .quad 0",
    ".globl kt_nx_target",
    "kt_nx_target:",
    "    .quad 0xc3c3c3c3c3c3c3c3",
    ".popsection",
    ".pushsection .bss.kt_programs,\"aw\",@nobits",
    ".balign 16",
    "kt_spinner_stack:",
    "    .skip 4096",
    "kt_spinner_stack_top:",
    ".popsection",
    // --- the programs -------------------------------------------------------------------------
    ".pushsection .text.kt_programs,\"ax\",@progbits",
    // Hello.
    "kt_hello:",
    "    lea rdi, [rip + kt_hello_msg]",
    "    mov esi, 17",
    "    mov eax, {debug_write}",
    "    syscall",
    "    mov rdi, rax",
    "    jmp kt_exit_edi",
    // BadPointers: kernel address, unmapped address, a range running off the image's end.
    "kt_badptr:",
    "    mov rdi, {kernel_va}",
    "    mov esi, 8",
    "    mov eax, {debug_write}",
    "    syscall",
    "    mov rbx, rax",
    "    mov rdi, {never_mapped}",
    "    mov esi, 8",
    "    mov eax, {debug_write}",
    "    syscall",
    "    shl rbx, 8",
    "    or rbx, rax",
    "    lea rdi, [rip + __user_end - 4]",
    "    mov esi, 8",
    "    mov eax, {debug_write}",
    "    syscall",
    "    shl rbx, 8",
    "    or rbx, rax",
    "    mov rdi, rbx",
    "    mov eax, {task_exit}",
    "    syscall",
    "    ud2",
    // SyscallRegisters.
    "kt_regs:",
    "    call kt_load_registers",
    "    mov eax, {yield_}",
    "    syscall",
    "    kt_check rbx, 8",
    "    kt_check rbp, 48",
    "    kt_check r9, 64",
    "    kt_check r10, 72",
    "    kt_check_r12_to_r15",
    "    cmp rsp, [rip + kt_stack_top]",
    "    jne kt_fail_rsp",
    "    xor edi, edi",
    "    jmp kt_exit_edi",
    // Loads rax..r15 (not rsp) from kt_expected; returns with them loaded (the call and the
    // return leave rsp as it was).
    "kt_load_registers:",
    "    mov rax, [rip + kt_expected]",
    "    mov rbx, [rip + kt_expected + 8]",
    "    mov rcx, [rip + kt_expected + 16]",
    "    mov rdx, [rip + kt_expected + 24]",
    "    mov rsi, [rip + kt_expected + 32]",
    "    mov rdi, [rip + kt_expected + 40]",
    "    mov rbp, [rip + kt_expected + 48]",
    "    mov r8, [rip + kt_expected + 56]",
    "    mov r9, [rip + kt_expected + 64]",
    "    mov r10, [rip + kt_expected + 72]",
    "    mov r11, [rip + kt_expected + 80]",
    "    mov r12, [rip + kt_expected + 88]",
    "    mov r13, [rip + kt_expected + 96]",
    "    mov r14, [rip + kt_expected + 104]",
    "    mov r15, [rip + kt_expected + 112]",
    "    ret",
    // TimerPreemption: this thread starts the spinner one priority below, sleeps, and (woken
    // by a timer tick while the spinner runs in ring 3) sets the flag and ends.
    "kt_timer:",
    "    lea rdi, [rip + kt_spinner]",
    "    mov rsi, [rip + kt_spinner_rsp]",
    "    xor edx, edx",
    "    mov r10d, {spinner_priority}",
    "    mov eax, {thread_create}",
    "    syscall",
    "    test rax, rax",
    "    jnz kt_fail_create",
    "    mov edi, {sleep_ticks}",
    "    mov eax, {sleep}",
    "    syscall",
    "    mov qword ptr [rip + kt_preempted], 1",
    "    mov eax, {thread_exit}",
    "    syscall",
    "    ud2",
    "kt_fail_create:",
    "    mov edi, 0xc0",
    "    jmp kt_exit_edi",
    "kt_spinner:",
    "    call kt_load_registers",
    "kt_spin:",
    "    cmp qword ptr [rip + kt_preempted], 0",
    "    jne kt_spun",
    "    dec qword ptr [rip + kt_spin_budget]",
    "    jne kt_spin",
    "    mov edi, 0xdead",
    "    jmp kt_exit_edi",
    "kt_spun:",
    "    kt_check rax, 0",
    "    kt_check rbx, 8",
    "    kt_check rcx, 16",
    "    kt_check rdx, 24",
    "    kt_check rsi, 32",
    "    kt_check rdi, 40",
    "    kt_check rbp, 48",
    "    kt_check r8, 56",
    "    kt_check r9, 64",
    "    kt_check r10, 72",
    "    kt_check r11, 80",
    "    kt_check_r12_to_r15",
    "    cmp rsp, [rip + kt_spinner_rsp]",
    "    jne kt_fail_rsp",
    "    xor edi, edi",
    "    jmp kt_exit_edi",
    "kt_fail_rax: mov edi, 1",
    "    jmp kt_exit_edi",
    "kt_fail_rbx: mov edi, 2",
    "    jmp kt_exit_edi",
    "kt_fail_rcx: mov edi, 3",
    "    jmp kt_exit_edi",
    "kt_fail_rdx: mov edi, 4",
    "    jmp kt_exit_edi",
    "kt_fail_rsi: mov edi, 5",
    "    jmp kt_exit_edi",
    "kt_fail_rdi: mov edi, 6",
    "    jmp kt_exit_edi",
    "kt_fail_rbp: mov edi, 7",
    "    jmp kt_exit_edi",
    "kt_fail_r8: mov edi, 8",
    "    jmp kt_exit_edi",
    "kt_fail_r9: mov edi, 9",
    "    jmp kt_exit_edi",
    "kt_fail_r10: mov edi, 10",
    "    jmp kt_exit_edi",
    "kt_fail_r11: mov edi, 11",
    "    jmp kt_exit_edi",
    "kt_fail_r12: mov edi, 12",
    "    jmp kt_exit_edi",
    "kt_fail_r13: mov edi, 13",
    "    jmp kt_exit_edi",
    "kt_fail_r14: mov edi, 14",
    "    jmp kt_exit_edi",
    "kt_fail_r15: mov edi, 15",
    "    jmp kt_exit_edi",
    "kt_fail_rsp: mov edi, 16",
    "    jmp kt_exit_edi",
    // PageFaultRead: rbx holds a marker, then the read of an unmapped address.
    "kt_pf_read:",
    "    mov rbx, 0x5a5a5a5a5a5a5a5a",
    "    mov rcx, {never_mapped}",
    ".globl kt_pf_read_at",
    "kt_pf_read_at:",
    "    mov rax, [rcx]",
    "    ud2",
    // PageFaultWriteRo.
    ".globl kt_pf_write_ro",
    "kt_pf_write_ro:",
    "    mov qword ptr [rip + kt_ro_target], 1",
    "    ud2",
    // KernelRead.
    "kt_kernel_read:",
    "    mov rax, {kernel_va}",
    ".globl kt_kernel_read_at",
    "kt_kernel_read_at:",
    "    mov rax, [rax]",
    "    ud2",
    // NxExec.
    "kt_nx_exec:",
    "    lea rax, [rip + kt_nx_target]",
    "    jmp rax",
    // PrivilegedCli.
    ".globl kt_priv_cli",
    "kt_priv_cli:",
    "    cli",
    "    ud2",
    // NoncanonicalReturn: one page mapped writable at CODE_RW_VA and executable at the top
    // of the user half; `syscall` (0f 05) in its last two bytes.
    "kt_noncanonical:",
    "    mov edi, 1",
    "    mov eax, {mem_alloc}",
    "    syscall",
    "    test rax, rax",
    "    jnz kt_fail_alloc",
    "    mov r12, rdi",
    "    mov rsi, {code_rw_va}",
    "    mov edx, {rights_rw}",
    "    mov eax, {mem_map}",
    "    syscall",
    "    test rax, rax",
    "    jnz kt_fail_map_rw",
    "    mov rax, {code_rw_va}",
    "    mov word ptr [rax + 0xffe], 0x050f",
    "    mov rdi, r12",
    "    mov rsi, {code_top_va}",
    "    mov edx, {rights_rx}",
    "    mov eax, {mem_map}",
    "    syscall",
    "    test rax, rax",
    "    jnz kt_fail_map_rx",
    "    mov eax, {yield_}",
    "    mov rcx, {code_top_va} + 0xffe",
    "    jmp rcx",
    "kt_fail_alloc: mov edi, 0xa1",
    "    jmp kt_exit_edi",
    "kt_fail_map_rw: mov edi, 0xa2",
    "    jmp kt_exit_edi",
    "kt_fail_map_rx: mov edi, 0xa3",
    "    jmp kt_exit_edi",
    // UmipSgdt: #GP under UMIP, else exit 5.
    ".globl kt_umip_sgdt",
    "kt_umip_sgdt:",
    "    sgdt [rip + kt_spinner_stack]",
    "    mov edi, 5",
    "    jmp kt_exit_edi",
    // Segments.
    "kt_segments:",
    "    mov ax, ss",
    "    mov ds, eax",
    "    mov es, eax",
    "    mov fs, eax",
    "    mov gs, eax",
    "    mov eax, {yield_}",
    "    syscall",
    "    mov ax, ds",
    "    mov bx, es",
    "    or ax, bx",
    "    mov bx, fs",
    "    or ax, bx",
    "    mov bx, gs",
    "    or ax, bx",
    "    movzx edi, ax",
    "    jmp kt_exit_edi",
    // LslSweep: ecx = the first selector past the GDT.
    "kt_lsl_sweep:",
    "kt_lsl_next:",
    "    lsl eax, ecx",
    "    je kt_lsl_accepted",
    "    add ecx, 8",
    "    cmp ecx, 0x10000",
    "    jb kt_lsl_next",
    "    xor edi, edi",
    "    jmp kt_exit_edi",
    "kt_lsl_accepted:",
    "    mov edi, ecx",
    "    jmp kt_exit_edi",
    ".popsection",
    suite = sym crate::suite_entry,
    programs = const PROGRAMS,
    bad_program = const BAD_PROGRAM,
    task_exit = const Sys::TaskExit as u64,
    debug_write = const Sys::DebugWrite as u64,
    yield_ = const Sys::Yield as u64,
    sleep = const Sys::Sleep as u64,
    thread_create = const Sys::ThreadCreate as u64,
    thread_exit = const Sys::ThreadExit as u64,
    mem_alloc = const Sys::MemAlloc as u64,
    mem_map = const Sys::MemMap as u64,
    rights_rw = const Rights::READ.bits() | Rights::WRITE.bits(),
    rights_rx = const Rights::READ.bits() | Rights::EXEC.bits(),
    code_rw_va = const CODE_RW_VA,
    code_top_va = const CODE_TOP_VA,
    kernel_va = const KERNEL_VA,
    never_mapped = const NEVER_MAPPED,
    stack_top = const STACK_TOP,
    spin_budget = const SPIN_BUDGET,
    spinner_priority = const TASK_PRIORITY - 1,
    sleep_ticks = const SLEEP_TICKS,
    e0 = const EXPECTED[0],
    e1 = const EXPECTED[1],
    e2 = const EXPECTED[2],
    e3 = const EXPECTED[3],
    e4 = const EXPECTED[4],
    e5 = const EXPECTED[5],
    e6 = const EXPECTED[6],
    e7 = const EXPECTED[7],
    e8 = const EXPECTED[8],
    e9 = const EXPECTED[9],
    e10 = const EXPECTED[10],
    e11 = const EXPECTED[11],
    e12 = const EXPECTED[12],
    e13 = const EXPECTED[13],
    e14 = const EXPECTED[14],
);
