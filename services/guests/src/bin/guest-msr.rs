//! `guest-msr`: the guest's MSRs are its real state (issue 17, part `msr`).
//!
//! From multiboot's 32-bit entry to long mode (identity map of 16 MiB with 2 MiB user pages,
//! its own GDT with ring-3 segments for SYSRET), then:
//! - `gs-base`: WRMSR GS_BASE, then `mov %gs:0` reads the word there, RDMSR reads it back;
//! - `swapgs`: KERNEL_GS_BASE written, SWAPGS exchanges the two bases (both read back);
//! - `syscall`: STAR/LSTAR/SFMASK written, SYSRET to ring 3 (CS 0x33), SYSCALL back to the
//!   guest's own LSTAR with RCX = the return address, R11 = ring 3's RFLAGS (DF set) and DF
//!   cleared by SFMASK (before, SYSCALL went to the host's LSTAR);
//! - `sysenter`: SYSENTER_CS/ESP/EIP read back, and SYSENTER lands on them;
//! - `msr-gp`: a non-canonical LSTAR is #GP(0) and changes nothing;
//! - `tsc-write`: WRMSR TSC = RDTSC + 2^40 moves RDTSC by about 2^40; TSC_ADJUST then reads
//!   about 2^40, and writing it back to 0 moves RDTSC back;
//! - `cpuid`: VMX, PDCM and MONITOR hidden; the local APIC, x2APIC, TSC-deadline and the
//!   hypervisor bit shown (issue 12); leaf 0xA zero; TSC_ADJUST, SYSCALL, LM shown;
//!   PERF_CAPABILITIES (0x345) and, in xAPIC mode, the x2APIC ID (0x802) #GP, while
//!   IA32_TSC_DEADLINE (0x6e0) reads;
//! - `cr8-tpr`: CR8 written reads back (it is the local APIC's TPR, kept by the VMM);
//! - `osxsave`: CPUID.1:ECX.OSXSAVE follows CR4.OSXSAVE (when XSAVE is offered).
//!
//! Console ends with `result: pass`, then exit 0x10 through port 0xf4 (0x11 after a failure).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[path = "../rt/mod.rs"]
mod rt;

#[cfg(target_os = "none")]
core::arch::global_asm!(
    include_str!("../rt/data.s"),
    include_str!("../rt/rt32.s"),
    include_str!("../rt/rt64.s"),
    r#"
    .section .bss.pt, "aw", @nobits
    .balign 4096
msr_pml4:   .skip 4096
msr_pdpt:   .skip 4096
msr_pd:     .skip 4096
sysenter_stack: .skip 4096
sysenter_stack_top:

    .section .data.guest, "aw"
    .balign 8
# 0x08 code32, 0x10 data, 0x18 code64 (as rt32's), 0x20 kernel data (SYSCALL SS),
# 0x28 user data DPL 3 (SYSRET SS), 0x30 user code64 DPL 3 (SYSRET CS).
msr_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00cff2000000ffff
    .quad 0x00affa000000ffff
msr_gdt_end:
    .word 0, 0, 0
msr_gdt_desc:
    .word msr_gdt_end - msr_gdt - 1
    .quad msr_gdt
gs_area1:   .quad 0x6a5e000000000001
gs_area2:   .quad 0x6a5e000000000002
saved_rsp:  .quad 0
user_cs_seen: .quad 0
sc_rcx:     .quad 0
sc_r11:     .quad 0
sc_rflags:  .quad 0
sc_cs:      .quad 0
se_rsp:     .quad 0
se_cs:      .quad 0

    .section .rodata.guest, "a"
msg_hello:  .asciz "msr: hello from guest-msr\n"
name_gs:    .asciz "gs-base"
name_swapgs: .asciz "swapgs"
name_syscall: .asciz "syscall"
name_sysenter: .asciz "sysenter"
name_msrgp: .asciz "msr-gp"
name_tsc:   .asciz "tsc-write"
name_tscadj: .asciz "tsc-adjust"
name_cpuid: .asciz "cpuid"
name_hidden: .asciz "hidden-msrs-gp"
name_osxsave: .asciz "osxsave"
det_gs:     .asciz "mov %gs:0 / rdmsr gave (bit mask of failures)"
det_syscall: .asciz "failed checks (bit mask: 1 rcx, 2 r11.DF, 4 DF cleared, 8 ring-3 CS, 16 CS)"
det_sysenter: .asciz "failed checks (bit mask: 1 CS, 2 ESP, 4 EIP read back, 8 landed RSP, 16 CS)"
det_msrgp:  .asciz "GP count << 16 | error code, or LSTAR changed"
det_tsc:    .asciz "RDTSC after the write minus (before + 2^40)"
det_tscadj: .asciz "failed checks (bit mask: 1 TSC_ADJUST ~ 2^40, 2 RDTSC moved back)"
det_cpuid:  .asciz "failed checks (bit mask: 1 leaf 1 ECX, 2 leaf 1 EDX, 4 leaf 0xA, 8 leaf 7, 16 ext, 32 hv)"
det_hidden: .asciz "GP count (want 2)"
name_cr8:   .asciz "cr8-tpr"
det_cr8:    .asciz "CR8 read back:"
det_osxsave: .asciz "failed checks (bit mask: 1 clear with CR4 clear, 2 set with CR4 set)"

    .section .text.guest, "ax"
    .code32
    .globl guest_main
guest_main:
    movl $msg_hello, %esi
    call puts32
    # PD: 8 x 2 MiB identity, P | RW | US | PS.
    movl $msr_pd, %edi
    movl $0x87, %eax
    movl $8, %ecx
1:  movl %eax, (%edi)
    addl $0x200000, %eax
    addl $8, %edi
    decl %ecx
    jnz 1b
    movl $msr_pdpt, %eax
    orl $7, %eax
    movl %eax, msr_pml4
    movl $msr_pd, %eax
    orl $7, %eax
    movl %eax, msr_pdpt
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $msr_pml4, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000000, %eax
    movl %eax, %cr0
    ljmp $0x18, $msr64

    .code64
# wrmsr64: MSR ECX = RAX (64-bit).
wrmsr64:
    pushq %rdx
    movq %rax, %rdx
    shrq $32, %rdx
    wrmsr
    popq %rdx
    ret
# rdmsr64: RAX = MSR ECX (64-bit).
rdmsr64:
    pushq %rdx
    rdmsr
    shlq $32, %rdx
    movl %eax, %eax
    orq %rdx, %rax
    popq %rdx
    ret
# rdtsc64: RAX = TSC.
rdtsc64:
    pushq %rdx
    rdtsc
    shlq $32, %rdx
    movl %eax, %eax
    orq %rdx, %rax
    popq %rdx
    ret

# #GP: skipped (2-byte RDMSR/WRMSR) and counted while gp_expected is set; else fatal.
gp64_handler:
    cmpl $0, gp_expected
    je exc64_stubs + 16 * 13
    pushq %rax
    incl gp_count
    movq 8(%rsp), %rax
    movl %eax, gp_error
    addq $2, 16(%rsp)
    popq %rax
    addq $8, %rsp
    iretq

msr64:
    lgdt msr_gdt_desc
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movq $stack_top, %rsp
    call idt64_install
    # Vector 13 -> gp64_handler (offset fields of its gate).
    movq $gp64_handler, %rax
    movw %ax, idt64 + 13 * 16
    shrq $16, %rax
    movw %ax, idt64 + 13 * 16 + 6
    shrq $16, %rax
    movl %eax, idt64 + 13 * 16 + 8

    # ---- gs-base ----
    xorl %ebx, %ebx
    movl $0xc0000101, %ecx
    movq $gs_area1, %rax
    call wrmsr64
    movq %gs:0, %rdx
    cmpq gs_area1, %rdx
    je 1f
    orl $1, %ebx
1:  call rdmsr64
    cmpq $gs_area1, %rax
    je 1f
    orl $2, %ebx
1:  movl %ebx, %eax
    movl %ebx, %edx
    movq $name_gs, %rsi
    movq $det_gs, %rdi
    call report64_val

    # ---- swapgs ----
    xorl %ebx, %ebx
    movl $0xc0000102, %ecx
    movq $gs_area2, %rax
    call wrmsr64
    swapgs
    movq %gs:0, %rdx
    cmpq gs_area2, %rdx
    je 1f
    orl $1, %ebx
1:  movl $0xc0000101, %ecx
    call rdmsr64
    cmpq $gs_area2, %rax
    je 1f
    orl $2, %ebx
1:  movl $0xc0000102, %ecx
    call rdmsr64
    cmpq $gs_area1, %rax
    je 1f
    orl $4, %ebx
1:  swapgs
    movq %gs:0, %rdx
    cmpq gs_area1, %rdx
    je 1f
    orl $8, %ebx
1:  movl %ebx, %eax
    movl %ebx, %edx
    movq $name_swapgs, %rsi
    movq $det_gs, %rdi
    call report64_val

    # ---- syscall: STAR (SYSCALL CS 0x18, SYSRET base 0x20), LSTAR, SFMASK = DF, EFER.SCE ----
    movl $0xc0000081, %ecx
    movabsq $0x0020001800000000, %rax
    call wrmsr64
    movl $0xc0000082, %ecx
    movq $syscall_entry, %rax
    call wrmsr64
    movl $0xc0000084, %ecx
    movq $0x400, %rax
    call wrmsr64
    movl $0xc0000080, %ecx
    call rdmsr64
    orq $1, %rax
    call wrmsr64
    movq %rsp, saved_rsp
    movq $user_code, %rcx
    movq $0x402, %r11              # ring 3 with DF set, IF clear
    sysretq
user_code:
    movq $0, %rax
    movw %cs, %ax
    movq %rax, user_cs_seen
    syscall
user_after_syscall:
    ud2
syscall_entry:
    movq %rcx, sc_rcx
    movq %r11, sc_r11
    pushfq
    popq %rax
    movq %rax, sc_rflags
    xorl %eax, %eax
    movw %cs, %ax
    movq %rax, sc_cs
    movw $0x10, %ax
    movw %ax, %ss
    movq saved_rsp, %rsp
    xorl %ebx, %ebx
    movq $user_after_syscall, %rax
    cmpq %rax, sc_rcx
    je 1f
    orl $1, %ebx
1:  testq $0x400, sc_r11
    jnz 1f
    orl $2, %ebx
1:  testq $0x400, sc_rflags
    jz 1f
    orl $4, %ebx
1:  cmpq $0x33, user_cs_seen
    je 1f
    orl $8, %ebx
1:  cmpq $0x18, sc_cs
    je 1f
    orl $16, %ebx
1:  cld
    movl %ebx, %eax
    movl %ebx, %edx
    movq $name_syscall, %rsi
    movq $det_syscall, %rdi
    call report64_val

    # ---- sysenter ----
    xorl %ebx, %ebx
    movl $0x174, %ecx
    movq $0x18, %rax
    call wrmsr64
    movl $0x175, %ecx
    movq $sysenter_stack_top, %rax
    call wrmsr64
    movl $0x176, %ecx
    movq $sysenter_entry, %rax
    call wrmsr64
    movl $0x174, %ecx
    call rdmsr64
    cmpq $0x18, %rax
    je 1f
    orl $1, %ebx
1:  movl $0x175, %ecx
    call rdmsr64
    cmpq $sysenter_stack_top, %rax
    je 1f
    orl $2, %ebx
1:  movl $0x176, %ecx
    call rdmsr64
    cmpq $sysenter_entry, %rax
    je 1f
    orl $4, %ebx
1:  movq %rsp, saved_rsp
    sysenter
    ud2
sysenter_entry:
    movq %rsp, se_rsp
    xorl %eax, %eax
    movw %cs, %ax
    movq %rax, se_cs
    movw $0x10, %ax
    movw %ax, %ss
    movq saved_rsp, %rsp
    cmpq $sysenter_stack_top, se_rsp
    je 1f
    orl $8, %ebx
1:  cmpq $0x18, se_cs
    je 1f
    orl $16, %ebx
1:  movl %ebx, %eax
    movl %ebx, %edx
    movq $name_sysenter, %rsi
    movq $det_sysenter, %rdi
    call report64_val

    # ---- msr-gp: non-canonical LSTAR ----
    movl $0, gp_count
    movl $0xffff, gp_error
    movl $1, gp_expected
    movl $0xc0000082, %ecx
    xorl %eax, %eax
    movl $0x8000, %edx             # 0x0000_8000_0000_0000
    wrmsr
    movl $0, gp_expected
    movl gp_count, %edx
    shll $16, %edx
    movzwl gp_error, %eax
    orl %eax, %edx
    xorl %ebx, %ebx
    cmpl $0x00010000, %edx
    setne %bl
    movl $0xc0000082, %ecx
    call rdmsr64
    cmpq $syscall_entry, %rax
    je 1f
    movl $1, %ebx
1:  movl %ebx, %eax
    movq $name_msrgp, %rsi
    movq $det_msrgp, %rdi
    call report64_val

    # ---- tsc-write ----
    movabsq $0x10000000000, %r15   # 2^40
    call rdtsc64
    movq %rax, %r12                # t0
    addq %r15, %rax
    movl $0x10, %ecx
    call wrmsr64
    call rdtsc64
    subq %r12, %rax
    subq %r15, %rax                # elapsed, if the TSC moved by 2^40
    movq %rax, %rdx
    xorl %eax, %eax
    movq $0x100000000, %rcx
    cmpq %rcx, %rdx
    setae %al
    movq $name_tsc, %rsi
    movq $det_tsc, %rdi
    call report64_val

    # ---- tsc-adjust ----
    xorl %ebx, %ebx
    movl $0x3b, %ecx
    call rdmsr64
    movq %r15, %rdx
    subq %rax, %rdx                # 2^40 - TSC_ADJUST: the few ticks before the write
    movq $0x100000000, %rcx
    cmpq %rcx, %rdx
    jb 1f
    orl $1, %ebx
1:  movl $0x3b, %ecx
    xorl %eax, %eax
    call wrmsr64
    call rdtsc64
    subq %r12, %rax                # back near t0
    movq $0x100000000, %rcx
    cmpq %rcx, %rax
    jb 1f
    orl $2, %ebx
1:  movl %ebx, %eax
    movl %ebx, %edx
    movq $name_tscadj, %rsi
    movq $det_tscadj, %rdi
    call report64_val

    # ---- cpuid ----
    xorl %r8d, %r8d
    movl $1, %eax
    xorl %ecx, %ecx
    cpuid
    andl $0x81208028, %ecx         # hypervisor, TSC deadline, x2APIC, PDCM, VMX, MONITOR
    cmpl $0x81200000, %ecx         # the first three only
    je 1f
    orl $1, %r8d
1:  testl $0x200, %edx             # APIC
    jnz 1f
    orl $2, %r8d
1:  movl $0xa, %eax
    xorl %ecx, %ecx
    cpuid
    orl %ebx, %eax
    orl %ecx, %eax
    orl %edx, %eax
    jz 1f
    orl $4, %r8d
1:  movl $7, %eax
    xorl %ecx, %ecx
    cpuid
    testl $2, %ebx                 # TSC_ADJUST
    jnz 1f
    orl $8, %r8d
1:  movl $0x80000001, %eax
    xorl %ecx, %ecx
    cpuid
    andl $0x20000800, %edx         # LM, SYSCALL
    cmpl $0x20000800, %edx
    je 1f
    orl $16, %r8d
1:  movl $0x40000000, %eax
    xorl %ecx, %ecx
    cpuid
    cmpl $0x40000001, %eax
    jae 1f
    orl $32, %r8d
1:  movl %r8d, %eax
    movl %r8d, %edx
    movq $name_cpuid, %rsi
    movq $det_cpuid, %rdi
    call report64_val

    # ---- cr8-tpr: CR8 is the local APIC's TPR (issue 12): 9 written reads back 9 ----
    movq $9, %rax
    movq %rax, %cr8
    movq %cr8, %rdx
    xorq %rax, %rax
    movq %rax, %cr8
    cmpq $9, %rdx
    setne %al
    movq $name_cr8, %rsi
    movq $det_cr8, %rdi
    call report64_val

    # ---- hidden MSRs: PERF_CAPABILITIES, the x2APIC ID in xAPIC mode; TSC deadline reads ----
    movl $0, gp_count
    movl $1, gp_expected
    movl $0x345, %ecx
    rdmsr
    movl $0x802, %ecx
    rdmsr
    movl $0, gp_expected
    movl $0x6e0, %ecx
    rdmsr
    movl gp_count, %edx
    xorl %eax, %eax
    cmpl $2, %edx
    setne %al
    movq $name_hidden, %rsi
    movq $det_hidden, %rdi
    call report64_val

    # ---- osxsave (only when XSAVE is offered) ----
    movl $1, %eax
    xorl %ecx, %ecx
    cpuid
    btl $26, %ecx
    jnc .Lmsr_done
    xorl %r9d, %r9d
    btl $27, %ecx                  # CR4.OSXSAVE is clear: so is the bit
    jnc 1f
    orl $1, %r9d
1:  movq %cr4, %rax
    orq $0x40000, %rax
    movq %rax, %cr4
    movl $1, %eax
    xorl %ecx, %ecx
    cpuid
    btl $27, %ecx
    jc 1f
    orl $2, %r9d
1:  movq %cr4, %rax
    andq $~0x40000, %rax
    movq %rax, %cr4
    movl %r9d, %eax
    movl %r9d, %edx
    movq $name_osxsave, %rsi
    movq $det_osxsave, %rdi
    call report64_val
.Lmsr_done:
    jmp finish64
"#,
    options(att_syntax)
);

#[cfg(not(target_os = "none"))]
fn main() {}
