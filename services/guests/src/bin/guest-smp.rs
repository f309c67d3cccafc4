//! `guest-smp`: two vCPUs (issue 12). 32-bit protected mode, paging off, both local APICs in
//! x2APIC mode. The bootstrap processor (BSP) copies a 16-bit trampoline to 0x70000 and
//! starts the application processor (AP) with INIT, SIPI (vector 0x70), SIPI; the AP switches
//! to protected mode with the runtime's GDT, loads the shared IDT, enables its local APIC and
//! reports in.
//!
//! - `cpuid-apic-id`: CPUID.1 EBX[31:24] is 0 on the BSP, 1 on the AP; each reads its own
//!   x2APIC ID register (0 and 1).
//! - `ap-startup`: the AP reached protected mode after INIT/SIPI/SIPI and started once (the
//!   second SIPI is ignored).
//! - `ipi-ping-pong`: 20 rounds: the BSP sends vector 0x60 to APIC ID 1 and waits in HLT for
//!   vector 0x61 back; the AP waits in HLT for 0x60 and answers with 0x61 to APIC ID 0. Each
//!   side counts exactly 20 deliveries.
//! - `halted-wakeup`: the AP waits in HLT with nothing else to wake it; the BSP spins well
//!   past that, then sends vector 0x62: the AP wakes, counts it and answers with 0x61.
//! - `nmi-wakeup`: the AP waits in HLT (interrupts on, nothing else to wake it); the BSP
//!   spins well past that, then sends an NMI to APIC ID 1 (ICR delivery mode NMI): the AP's
//!   NMI handler (vector 2) runs once and answers with 0x61.
//! - `init-restart`: INIT puts the running AP back in wait-for-SIPI; a SIPI starts it again
//!   through the trampoline (its second start, which only reports in).
//!
//! Console on success: one `name: ok` line per check, then `result: pass`; exit 0x10 through
//! port 0xf4 (0x11 after any failure). The AP stays in a HLT loop with interrupts on. With
//! one vCPU the AP never reports in: `ap-startup` and the checks after it fail.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[path = "../rt/mod.rs"]
mod rt;

#[cfg(target_os = "none")]
core::arch::global_asm!(
    include_str!("../rt/data.s"),
    include_str!("../rt/rt32.s"),
    r#"
    .set SPIN_LIMIT, 2000000
    .set ROUNDS, 20
    .set TRAMPOLINE, 0x70000
    .set APIC_BASE, 0x1b
    .set X2APIC_ID, 0x802
    .set SVR, 0x80f
    .set ICR, 0x830

    .section .data.guest, "aw"
    .balign 8
ap_alive:    .long 0
ap_starts:   .long 0
ap_cpuid_id: .long 0xffffffff
ap_x2_id:    .long 0xffffffff
ping_count:  .long 0               # 0x60 deliveries on the AP
pong_count:  .long 0               # 0x61 deliveries on the BSP
wake_count:  .long 0               # 0x62 deliveries on the AP
ap_halting:  .long 0
ap_back:     .long 0               # set by the AP's second start
nmi_count:   .long 0               # NMIs on the AP

    .section .bss.guest, "aw", @nobits
    .balign 16
ap_stack:    .skip 4096
ap_stack_top:

    .section .rodata.guest, "a"
msg_hello:  .asciz "smp: hello from guest-smp\n"
name_id:    .asciz "cpuid-apic-id"
name_start: .asciz "ap-startup"
name_pp:    .asciz "ipi-ping-pong"
name_wake:  .asciz "halted-wakeup"
name_init:  .asciz "init-restart"
name_nmi:   .asciz "nmi-wakeup"
det_id:     .asciz "BSP CPUID id, x2APIC id (high byte pair), AP's (low byte pair):"
det_start:  .asciz "AP alive (high word), starts (low word):"
det_pp:     .asciz "pings on the AP (high word), pongs on the BSP (low word):"
det_wake:   .asciz "wake-ups on the AP (high word), pongs on the BSP (low word):"
det_init:   .asciz "back (high word), starts (low word):"
det_nmi:    .asciz "NMIs on the AP (high word), pongs on the BSP (low word):"

    .section .text.guest, "ax"
    .code32
    .globl guest_main
guest_main:
    movl $msg_hello, %esi
    call puts32
    call smp_idt
    call x2apic_on

    # The trampoline below 1 MiB.
    movl $ap_tramp, %esi
    movl $TRAMPOLINE, %edi
    movl $ap_tramp_end - ap_tramp, %ecx
    rep movsb

    # INIT, SIPI, SIPI to APIC ID 1 (x2APIC ICR: destination in EDX).
    movl $ICR, %ecx
    movl $1, %edx
    movl $0x4500, %eax             # INIT, level assert
    wrmsr
    movl $0x4600 + (TRAMPOLINE >> 12), %eax
    wrmsr
    call delay
    movl $0x4600 + (TRAMPOLINE >> 12), %eax
    wrmsr
    movl $SPIN_LIMIT, %ebx
1:  cmpl $0, ap_alive
    jne 2f
    pause
    decl %ebx
    jnz 1b
2:  call delay                     # a late second start would show in ap_starts
    movl ap_alive, %edx
    shll $16, %edx
    orl ap_starts, %edx
    xorl %eax, %eax
    cmpl $0x10001, %edx
    setne %al
    movl $name_start, %esi
    movl $det_start, %edi
    call report32_val
    cmpl $0, ap_alive
    jne 10f
    # No AP (one vCPU): the checks that need it fail at once.
    movl $1, %eax
    xorl %edx, %edx
    movl $name_pp, %esi
    movl $det_pp, %edi
    call report32_val
    movl $name_wake, %esi
    movl $det_wake, %edi
    call report32_val
    movl $name_nmi, %esi
    movl $det_nmi, %edi
    call report32_val
    movl $name_init, %esi
    movl $det_init, %edi
    call report32_val
    ret
10:

    # cpuid-apic-id: the BSP's CPUID and x2APIC ID, and what the AP saw.
    movl $1, %eax
    xorl %ecx, %ecx
    cpuid
    shrl $24, %ebx
    movl %ebx, %edx
    shll $8, %edx
    movl $X2APIC_ID, %ecx
    pushl %edx
    rdmsr
    popl %edx
    orl %eax, %edx
    shll $8, %edx
    orl ap_cpuid_id, %edx
    shll $8, %edx
    orl ap_x2_id, %edx
    xorl %eax, %eax
    cmpl $0x00000101, %edx
    setne %al
    movl $name_id, %esi
    movl $det_id, %edi
    call report32_val

    # ipi-ping-pong
    xorl %ebx, %ebx                # rounds done
3:  incl %ebx
    movl $ICR, %ecx
    movl $1, %edx
    movl $0x60, %eax               # fixed, physical, vector 0x60 to APIC ID 1
    wrmsr
    movl $SPIN_LIMIT, %esi
4:  cli
    cmpl %ebx, pong_count
    jae 5f
    sti
    hlt
    decl %esi
    jnz 4b
5:  sti
    cmpl $ROUNDS, %ebx
    jb 3b
    call delay
    cli
    movl ping_count, %edx
    shll $16, %edx
    orl pong_count, %edx
    xorl %eax, %eax
    cmpl $(ROUNDS << 16) | ROUNDS, %edx
    setne %al
    movl $name_pp, %esi
    movl $det_pp, %edi
    call report32_val

    # halted-wakeup: the AP says it is about to halt; wait well past it, then 0x62.
    movl $SPIN_LIMIT, %ebx
6:  cmpl $0, ap_halting
    jne 7f
    pause
    decl %ebx
    jnz 6b
7:  call delay
    call delay
    movl $ICR, %ecx
    movl $1, %edx
    movl $0x62, %eax
    wrmsr
    movl $SPIN_LIMIT, %esi
8:  cli
    cmpl $ROUNDS + 1, pong_count
    jae 9f
    sti
    hlt
    decl %esi
    jnz 8b
9:  sti
    cli
    movl wake_count, %edx
    shll $16, %edx
    orl pong_count, %edx
    xorl %eax, %eax
    cmpl $(1 << 16) | (ROUNDS + 1), %edx
    setne %al
    movl $name_wake, %esi
    movl $det_wake, %edi
    call report32_val

    # nmi-wakeup: the AP says it halts for good; wait well past it, then an NMI to it.
    movl $SPIN_LIMIT, %ebx
1:  cmpl $2, ap_halting
    je 2f
    pause
    decl %ebx
    jnz 1b
2:  call delay
    call delay
    movl $ICR, %ecx
    movl $1, %edx
    movl $0x4400, %eax             # NMI, level assert, physical, to APIC ID 1
    wrmsr
    movl $SPIN_LIMIT, %esi
3:  cli
    cmpl $ROUNDS + 2, pong_count
    jae 4f
    sti
    hlt
    decl %esi
    jnz 3b
4:  sti
    call delay                     # a second NMI handler run would show
    cli
    movl nmi_count, %edx
    shll $16, %edx
    orl pong_count, %edx
    xorl %eax, %eax
    cmpl $(1 << 16) | (ROUNDS + 2), %edx
    setne %al
    movl $name_nmi, %esi
    movl $det_nmi, %edi
    call report32_val

    # init-restart: INIT parks the AP (it was halted, interrupts on); then a SIPI.
    movl $ICR, %ecx
    movl $1, %edx
    movl $0x4500, %eax
    wrmsr
    call delay
    call delay
    call delay
    movl $0x4600 + (TRAMPOLINE >> 12), %eax
    wrmsr
    movl $SPIN_LIMIT, %ebx
1:  cmpl $0, ap_back
    jne 2f
    pause
    decl %ebx
    jnz 1b
2:  movl ap_back, %edx
    shll $16, %edx
    orl ap_starts, %edx
    xorl %eax, %eax
    cmpl $0x10002, %edx
    setne %al
    movl $name_init, %esi
    movl $det_init, %edi
    call report32_val
    ret                            # to finish32

# delay: a busy wait (keeps every register).
delay:
    pushl %ecx
    movl $200000, %ecx
1:  pause
    decl %ecx
    jnz 1b
    popl %ecx
    ret

# x2apic_on: IA32_APIC_BASE EXTD and EN, then software enable (spurious vector 0xff).
x2apic_on:
    movl $APIC_BASE, %ecx
    rdmsr
    orl $0xc00, %eax
    wrmsr
    movl $SVR, %ecx
    movl $0x1ff, %eax
    xorl %edx, %edx
    wrmsr
    ret

# smp_idt: the runtime's wide IDT, 0x20..0xff to `stray`, then 0x60/0x61/0x62 and the
# spurious vector 0xff.
smp_idt:
    movl $stray, %edx
    call idt32_wide
    movl $0x60, %ecx
    movl $on_ping, %edx
    call idt32_gate
    movl $0x61, %ecx
    movl $on_pong, %edx
    call idt32_gate
    movl $0x62, %ecx
    movl $on_wake, %edx
    call idt32_gate
    movl $0xff, %ecx
    movl $spurious, %edx
    call idt32_gate
    movl $2, %ecx
    movl $on_nmi, %edx
    call idt32_gate
    ret

# on_nmi (vector 2, the AP's): counts and answers with a pong.
on_nmi:
    pushl %eax
    pushl %ecx
    pushl %edx
    lock incl nmi_count
    call pong
    popl %edx
    popl %ecx
    popl %eax
    iretl


on_ping:
    incl ping_count
    call x2apic_eoi
    iretl

on_pong:
    incl pong_count
    call x2apic_eoi
    iretl

on_wake:
    incl wake_count
    call x2apic_eoi
    iretl

spurious:
    iretl

stray:
    call x2apic_eoi
    iretl

# The AP in protected mode (from the trampoline): segments, stack, IDT, APIC, report in.
ap_main:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %fs
    movw %ax, %gs
    movw %ax, %ss
    movl $ap_stack_top, %esp
    lock incl ap_starts
    lidt idt32_wide_desc
    call x2apic_on
    cmpl $1, ap_starts
    jne ap_again
    movl $1, %eax
    xorl %ecx, %ecx
    cpuid
    shrl $24, %ebx
    movl %ebx, ap_cpuid_id
    movl $X2APIC_ID, %ecx
    rdmsr
    movl %eax, ap_x2_id
    movl $1, ap_alive
    # Answer each ping with a pong to APIC ID 0, ROUNDS times.
    xorl %ebx, %ebx
1:  cli
    cmpl %ebx, ping_count
    ja 2f
    sti
    hlt
    jmp 1b
2:  incl %ebx
    sti
    call pong
    cmpl $ROUNDS, %ebx
    jb 1b
    # halted-wakeup: HLT until the BSP's 0x62, then one more pong.
    movl $1, ap_halting
3:  cli
    cmpl $0, wake_count
    jne 4f
    sti
    hlt
    jmp 3b
4:  sti
    call pong
    movl $2, ap_halting            # nmi-wakeup: halted for good from here
5:  hlt                            # interrupts on: the VM goes on with the BSP
    jmp 5b

# The AP's second start (after INIT and SIPI): it reports in and waits.
ap_again:
    movl $1, ap_back
1:  sti
    hlt
    jmp 1b

pong:
    movl $ICR, %ecx
    xorl %edx, %edx
    movl $0x61, %eax
    wrmsr
    ret

# The 16-bit trampoline, copied to TRAMPOLINE (CS = TRAMPOLINE >> 4, IP = 0): the GDT
# descriptor it loads is its own copy (addressed through CS), the far jump goes to ap_main.
    .code16
ap_tramp:
    cli
    movw %cs, %ax
    movw %ax, %ds
    lgdtl (tramp_gdt_desc - ap_tramp)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $0x08, $ap_main
    .balign 4
tramp_gdt_desc:
    .word 4 * 8 - 1
    .long gdt
ap_tramp_end:
    .code32
"#,
    options(att_syntax)
);

#[cfg(not(target_os = "none"))]
fn main() {}
