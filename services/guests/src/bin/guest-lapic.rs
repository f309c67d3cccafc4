//! `guest-lapic`: the local APIC through its x2APIC MSRs (issue 12). 32-bit protected mode,
//! paging off. CPUID must offer the APIC, x2APIC and the TSC-deadline timer; the guest
//! switches the APIC to x2APIC mode, software-enables it (spurious vector 0xff) and points
//! its timer at vector 0x40, whose handler counts, records ISR bit 0x40 and writes EOI.
//!
//! - `cpuid-apic`: CPUID.1 EDX.APIC, ECX.x2APIC and ECX.TSC-deadline set, APIC ID 0.
//! - `apic-base`: IA32_APIC_BASE reads 0xfee00900 (BSP, enabled) at reset; x2APIC mode on.
//! - `timer-one-shot`: divide by 1, an initial count: exactly one interrupt (waited for
//!   with HLT); the current count reads 0 after it; the handler saw vector 0x40 in service.
//! - `timer-periodic`: 10 interrupts at a period, then masked: no more.
//! - `timer-tsc-deadline`: IA32_TSC_DEADLINE a little ahead: one interrupt, the MSR reads 0
//!   after it fired.
//! - `self-ipi`: the SELF IPI register and an ICR write with the self shorthand each deliver
//!   their vector (0x50, 0x51) once.
//! - `tpr-masking`: with TPR 0x60 a self-IPI of vector 0x50 (class 5) stays in the IRR; with
//!   TPR 0 it is delivered.
//! - `self-nmi`: an ICR write with destination its own APIC ID (0) and delivery mode NMI,
//!   interrupts off: the NMI handler (vector 2) runs. It sends a second self-NMI the same
//!   way and spins: the second is held while the handler runs (NMI blocking), and is
//!   delivered once, after the handler's IRET. Two NMIs in all, none nested.
//!
//! Console on success: one `name: ok` line per check, then `result: pass`; exit 0x10 through
//! port 0xf4 (0x11 after any failure).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[path = "../rt/mod.rs"]
mod rt;

#[cfg(target_os = "none")]
core::arch::global_asm!(
    include_str!("../rt/data.s"),
    include_str!("../rt/rt32.s"),
    r#"
    .set SPIN_LIMIT, 40000000
    .set APIC_BASE, 0x1b
    .set TPR, 0x808
    .set SVR, 0x80f
    .set ISR2, 0x812               # ISR bits 64..95 (vector 0x40 is bit 0 of it)
    .set IRR2, 0x822
    .set ICR, 0x830
    .set LVT_TIMER, 0x832
    .set INIT_COUNT, 0x838
    .set CUR_COUNT, 0x839
    .set DIVIDE, 0x83e
    .set SELF_IPI, 0x83f
    .set TSC_DEADLINE, 0x6e0

    .section .data.guest, "aw"
    .balign 8
timer_count: .long 0
isr_seen:    .long 0
ipi50:       .long 0
ipi51:       .long 0
nmi_count:   .long 0
nmi_in:      .long 0               # the handler runs
nmi_nested:  .long 0               # an NMI came while the handler ran
nmi_inside:  .long 0               # NMIs counted at the end of the first handler

    .section .rodata.guest, "a"
msg_hello:  .asciz "lapic: hello from guest-lapic\n"
name_cpuid: .asciz "cpuid-apic"
name_base:  .asciz "apic-base"
name_one:   .asciz "timer-one-shot"
name_per:   .asciz "timer-periodic"
name_dl:    .asciz "timer-tsc-deadline"
name_ipi:   .asciz "self-ipi"
name_tpr:   .asciz "tpr-masking"
name_nmi:   .asciz "self-nmi"
det_cpuid:  .asciz "CPUID.1 EDX (APIC) and ECX (x2APIC, deadline) bits, EBX[31:24]:"
det_base:   .asciz "IA32_APIC_BASE at reset:"
det_one:    .asciz "interrupts (high word), ISR seen (bit 0), current count left (bit 1):"
det_count:  .asciz "interrupts:"
det_ipi:    .asciz "vector 0x50 (high word) and 0x51 (low word) deliveries:"
det_tpr:    .asciz "deliveries while TPR 0x60 (high word), after TPR 0 (low word):"
det_nmi:    .asciz "NMIs (bits 23:16), counted at the first handler's end (15:8), nested (7:0):"

    .section .text.guest, "ax"
    .code32
    .globl guest_main
guest_main:
    movl $msg_hello, %esi
    call puts32
    call apic_idt

    # cpuid-apic
    movl $1, %eax
    xorl %ecx, %ecx
    cpuid
    xorl %eax, %eax
    testl $1 << 9, %edx
    jnz 1f
    orl $1, %eax
1:  testl $1 << 21, %ecx
    jnz 1f
    orl $2, %eax
1:  testl $1 << 24, %ecx
    jnz 1f
    orl $4, %eax
1:  testl $0xff000000, %ebx
    jz 1f
    orl $8, %eax
1:  movl %eax, %edx
    movl $name_cpuid, %esi
    movl $det_cpuid, %edi
    call report32_val

    # apic-base: read, then x2APIC mode (EXTD with EN)
    movl $APIC_BASE, %ecx
    rdmsr
    movl %eax, %edx
    xorl %ebx, %ebx
    cmpl $0xfee00900, %eax
    setne %bl
    orl $0xc00, %eax
    movl %eax, %esi
    movl %edx, %edi
    movl %esi, %eax
    xorl %edx, %edx
    wrmsr
    movl %edi, %edx
    movl %ebx, %eax
    movl $name_base, %esi
    movl $det_base, %edi
    call report32_val
    # software enable, spurious vector 0xff
    movl $SVR, %ecx
    movl $0x1ff, %eax
    xorl %edx, %edx
    wrmsr

    # timer-one-shot: divide by 1, vector 0x40, one-shot
    movl $DIVIDE, %ecx
    movl $0xb, %eax
    xorl %edx, %edx
    wrmsr
    movl $LVT_TIMER, %ecx
    movl $0x40, %eax
    wrmsr
    movl $0, timer_count
    movl $INIT_COUNT, %ecx
    movl $200000, %eax
    wrmsr
    movl $SPIN_LIMIT, %ebx
    sti
1:  hlt
    cmpl $0, timer_count
    jne 2f
    decl %ebx
    jnz 1b
2:  movl $2000000, %ebx            # well past: a one-shot fires once
3:  decl %ebx
    jnz 3b
    cli
    movl $CUR_COUNT, %ecx
    rdmsr
    movl timer_count, %edx
    shll $16, %edx
    xorl %ebx, %ebx
    testl %eax, %eax
    setnz %bl
    shll $1, %ebx
    orl isr_seen, %ebx             # 1 if seen: flip it to 0 = good
    xorl $1, %ebx
    orl %ebx, %edx
    xorl %eax, %eax
    cmpl $0x10000, %edx            # one interrupt, ISR seen, count 0
    setne %al
    movl $name_one, %esi
    movl $det_one, %edi
    call report32_val

    # timer-periodic: 10 periods, then masked
    movl $0, timer_count
    movl $LVT_TIMER, %ecx
    movl $0x20040, %eax            # periodic, vector 0x40
    xorl %edx, %edx
    wrmsr
    movl $INIT_COUNT, %ecx
    movl $100000, %eax
    wrmsr
    movl $SPIN_LIMIT, %ebx
    sti
1:  hlt
    cmpl $10, timer_count
    jae 2f
    decl %ebx
    jnz 1b
2:  cli
    movl $LVT_TIMER, %ecx
    movl $0x30040, %eax            # masked
    xorl %edx, %edx
    wrmsr
    movl timer_count, %esi
    sti
    movl $3000000, %ebx            # 30 periods: none may come
3:  decl %ebx
    jnz 3b
    cli
    movl timer_count, %edx
    xorl %eax, %eax
    cmpl $10, %esi
    setb %al
    cmpl %esi, %edx
    je 4f
    movl $1, %eax
4:  movl $name_per, %esi
    movl $det_count, %edi
    call report32_val
    movl $INIT_COUNT, %ecx         # stop
    xorl %eax, %eax
    xorl %edx, %edx
    wrmsr

    # timer-tsc-deadline
    movl $0, timer_count
    movl $LVT_TIMER, %ecx
    movl $0x40040, %eax            # TSC-deadline mode, vector 0x40
    xorl %edx, %edx
    wrmsr
    rdtsc
    addl $300000, %eax
    adcl $0, %edx
    movl $TSC_DEADLINE, %ecx
    wrmsr
    movl $SPIN_LIMIT, %ebx
    sti
1:  hlt
    cmpl $0, timer_count
    jne 2f
    decl %ebx
    jnz 1b
2:  cli
    movl $TSC_DEADLINE, %ecx
    rdmsr
    orl %edx, %eax                 # 0 after it fired
    movl timer_count, %edx
    cmpl $1, %edx
    je 3f
    movl $1, %eax
3:  movl $name_dl, %esi
    movl $det_count, %edi
    call report32_val

    # self-ipi: SELF IPI register (0x50) and ICR with the self shorthand (0x51)
    movl $0, ipi50
    movl $0, ipi51
    sti
    movl $SELF_IPI, %ecx
    movl $0x50, %eax
    xorl %edx, %edx
    wrmsr
    nop
    movl $ICR, %ecx
    movl $0x40051, %eax            # shorthand 01 (self), fixed, vector 0x51
    xorl %edx, %edx
    wrmsr
    nop
    cli
    movl ipi50, %edx
    shll $16, %edx
    orl ipi51, %edx
    xorl %eax, %eax
    cmpl $0x10001, %edx
    setne %al
    movl $name_ipi, %esi
    movl $det_ipi, %edi
    call report32_val

    # tpr-masking
    movl $0, ipi50
    movl $TPR, %ecx
    movl $0x60, %eax
    xorl %edx, %edx
    wrmsr
    sti
    movl $SELF_IPI, %ecx
    movl $0x50, %eax
    wrmsr
    nop
    nop
    movl ipi50, %esi               # none: class 5 is below TPR class 6
    movl $TPR, %ecx
    xorl %eax, %eax
    wrmsr
    nop
    nop
    cli
    movl %esi, %edx
    shll $16, %edx
    orl ipi50, %edx
    xorl %eax, %eax
    cmpl $1, %edx
    setne %al
    movl $name_tpr, %esi
    movl $det_tpr, %edi
    call report32_val

    # self-nmi: ICR destination 0 (this APIC), delivery mode NMI, level assert; IF clear
    # (an NMI does not wait for IF).
    cli
    movl $ICR, %ecx
    movl $0x4400, %eax
    xorl %edx, %edx
    wrmsr
    movl $SPIN_LIMIT, %ebx
1:  cmpl $2, nmi_count
    jae 2f
    decl %ebx
    jnz 1b
2:  movl $2000000, %ebx            # a third NMI would show
3:  decl %ebx
    jnz 3b
    movl nmi_count, %edx
    shll $8, %edx
    orl nmi_inside, %edx
    shll $8, %edx
    orl nmi_nested, %edx
    xorl %eax, %eax
    cmpl $0x20100, %edx
    setne %al
    movl $name_nmi, %esi
    movl $det_nmi, %edi
    call report32_val
    ret                            # to finish32

# apic_idt: the runtime's wide IDT: 0x40 the timer, 0x50/0x51 the IPIs, 0xff the spurious
# vector (no EOI), every other vector `stray`.
apic_idt:
    movl $stray, %edx
    call idt32_wide
    movl $0x40, %ecx
    movl $apic_timer, %edx
    call idt32_gate
    movl $0x50, %ecx
    movl $ipi_50, %edx
    call idt32_gate
    movl $0x51, %ecx
    movl $ipi_51, %edx
    call idt32_gate
    movl $0xff, %ecx
    movl $spurious, %edx
    call idt32_gate
    movl $2, %ecx
    movl $nmi_handler, %edx
    call idt32_gate
    ret

# nmi_handler (vector 2): counts; the first one sends a second self-NMI and spins well past
# the time it takes to arrive, then notes the count (1 if it was held until the IRET).
nmi_handler:
    pushl %eax
    pushl %ecx
    pushl %edx
    cmpl $0, nmi_in
    je 1f
    incl nmi_nested
1:  movl $1, nmi_in
    incl nmi_count
    cmpl $1, nmi_count
    jne 3f
    movl $ICR, %ecx
    movl $0x4400, %eax
    xorl %edx, %edx
    wrmsr
    movl $1000000, %ecx
2:  decl %ecx
    jnz 2b
    movl nmi_count, %eax
    movl %eax, nmi_inside
3:  movl $0, nmi_in
    popl %edx
    popl %ecx
    popl %eax
    iretl


apic_timer:
    pushl %eax
    pushl %ecx
    pushl %edx
    incl timer_count
    movl $ISR2, %ecx
    rdmsr
    andl $1, %eax
    orl %eax, isr_seen
    popl %edx
    popl %ecx
    popl %eax
    call x2apic_eoi
    iretl

ipi_50:
    incl ipi50
    call x2apic_eoi
    iretl

ipi_51:
    incl ipi51
    call x2apic_eoi
    iretl

spurious:
    iretl

stray:
    call x2apic_eoi
    iretl
"#,
    options(att_syntax)
);

#[cfg(not(target_os = "none"))]
fn main() {}
