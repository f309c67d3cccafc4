//! `guest-ioapic`: the local APIC's xAPIC page and the IOAPIC, both reached by MMIO (issue 12).
//! 32-bit protected mode, paging off: every access to 0xFEE00000 and 0xFEC00000 is an EPT
//! violation (or, on shadow paging, a shadow fault) forwarded to the VMM and emulated.
//!
//! - `xapic-regs`: ID 0, version 0x14 with at least 5 LVT entries; SVR written (software
//!   enable, spurious vector 0xff) reads back.
//! - `xapic-timer`: the timer one-shot through the page (divide by 1, LVT vector 0x40): one
//!   interrupt, EOI by a write of 0xB0, the current count reads 0 afterwards.
//! - `ioapic-regs`: version 0x00170011 (24 entries), ID 0.
//! - `ioapic-pit`: both 8259s masked; the IOAPIC's redirection entry for GSI 2 (the PIT, IRQ 0
//!   by the MADT's override) sends vector 0x31 to APIC 0: ten 1 kHz ticks arrive that way;
//!   masked again, no more.
//!
//! Console: one `name: ok` line per check, then `result: pass`; exit 0x10 through port 0xf4
//! (0x11 after any failure).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[path = "../rt/mod.rs"]
mod rt;

#[cfg(target_os = "none")]
core::arch::global_asm!(
    include_str!("../rt/data.s"),
    include_str!("../rt/rt32.s"),
    r#"
    .set SPIN_LIMIT, 40000000
    .set LAPIC, 0xfee00000
    .set IOAPIC, 0xfec00000

    .section .data.guest, "aw"
    .balign 8
timer_count: .long 0
pit_count:   .long 0

    .section .rodata.guest, "a"
msg_hello:  .asciz "ioapic: hello from guest-ioapic\n"
name_regs:  .asciz "xapic-regs"
name_timer: .asciz "xapic-timer"
name_ioregs: .asciz "ioapic-regs"
name_iopit: .asciz "ioapic-pit"
det_regs:   .asciz "ID (high byte), version (low word), SVR read back ok (bit 8 of byte 2):"
det_timer:  .asciz "interrupts (high word), current count (low word, 0 wanted):"
det_ioregs: .asciz "version register:"
det_iopit:  .asciz "ticks through the IOAPIC (high word), after masking (low word):"

    .section .text.guest, "ax"
    .code32
    .globl guest_main
guest_main:
    movl $msg_hello, %esi
    call puts32
    call io_idt
    movb $0xff, %al                # the 8259s stay masked throughout
    outb %al, $0x21
    outb %al, $0xa1

    # xapic-regs
    movl LAPIC + 0x20, %ebx        # ID in bits 31:24
    movl LAPIC + 0x30, %ecx        # version
    movl $0x1ff, LAPIC + 0xf0      # SVR: enabled, spurious vector 0xff
    movl LAPIC + 0xf0, %esi
    movl %ebx, %edx
    andl $0xff000000, %edx
    movw %cx, %dx
    xorl %eax, %eax
    testl $0xff000000, %ebx
    jz 1f
    movl $1, %eax
1:  cmpb $0x14, %cl
    je 1f
    movl $1, %eax
1:  shrl $16, %ecx
    cmpb $4, %cl                   # max LVT entry index >= 4 (5 entries)
    jae 1f
    movl $1, %eax
1:  cmpl $0x1ff, %esi
    je 1f
    movl $1, %eax
1:  movl $name_regs, %esi
    movl $det_regs, %edi
    call report32_val

    # xapic-timer
    movl $0xb, LAPIC + 0x3e0       # divide by 1
    movl $0x40, LAPIC + 0x320      # one-shot, vector 0x40
    movl $0, timer_count
    movl $200000, LAPIC + 0x380    # initial count
    movl $SPIN_LIMIT, %ecx
    sti
1:  hlt
    cmpl $0, timer_count
    jne 2f
    decl %ecx
    jnz 1b
2:  movl $2000000, %ecx
3:  decl %ecx
    jnz 3b
    cli
    movl LAPIC + 0x390, %ebx       # current count
    movl timer_count, %edx
    shll $16, %edx
    movw %bx, %dx
    xorl %eax, %eax
    cmpl $0x10000, %edx
    setne %al
    testl %ebx, %ebx
    jz 1f
    movl $1, %eax
1:  movl $name_timer, %esi
    movl $det_timer, %edi
    call report32_val

    # ioapic-regs
    movl $1, IOAPIC                # IOREGSEL: version
    movl IOAPIC + 0x10, %ebx
    movl $0, IOAPIC                # ID
    movl IOAPIC + 0x10, %ecx
    movl %ebx, %edx
    xorl %eax, %eax
    cmpl $0x00170011, %ebx
    setne %al
    testl $0x0f000000, %ecx
    jz 1f
    movl $1, %eax
1:  movl $name_ioregs, %esi
    movl $det_ioregs, %edi
    call report32_val

    # ioapic-pit: entry 2 = vector 0x31, fixed, physical, edge, active high, to APIC 0
    movl $0x15, IOAPIC
    movl $0, IOAPIC + 0x10
    movl $0x14, IOAPIC
    movl $0x31, IOAPIC + 0x10
    movb $0x34, %al                # PIT channel 0: rate generator, 1 kHz
    outb %al, $0x43
    movl $1193, %eax
    outb %al, $0x40
    movb %ah, %al
    outb %al, $0x40
    movl $0, pit_count
    movl $SPIN_LIMIT, %ecx
    sti
1:  hlt
    cmpl $10, pit_count
    jae 2f
    decl %ecx
    jnz 1b
2:  cli
    movl $0x14, IOAPIC             # masked again
    movl $0x10031, IOAPIC + 0x10
    movl pit_count, %esi
    sti
    movl $3000000, %ecx            # many periods: none may arrive
3:  decl %ecx
    jnz 3b
    cli
    movb $0x30, %al                # PIT stopped
    outb %al, $0x43
    movl pit_count, %ebx
    subl %esi, %ebx
    movl %esi, %edx
    shll $16, %edx
    movw %bx, %dx
    xorl %eax, %eax
    cmpl $10, %esi
    setb %al
    testl %ebx, %ebx
    jz 4f
    movl $1, %eax
4:  movl $name_iopit, %esi
    movl $det_iopit, %edi
    call report32_val
    ret                            # to finish32

# io_idt: the runtime's wide IDT: 0x40 the APIC timer, 0x31 the PIT through the IOAPIC,
# 0xff the spurious vector, every other vector `stray`.
io_idt:
    movl $stray, %edx
    call idt32_wide
    movl $0x40, %ecx
    movl $apic_timer, %edx
    call idt32_gate
    movl $0x31, %ecx
    movl $pit_tick, %edx
    call idt32_gate
    movl $0xff, %ecx
    movl $spurious, %edx
    call idt32_gate
    ret

apic_timer:
    incl timer_count
    movl $0, LAPIC + 0xb0          # EOI
    iretl

pit_tick:
    incl pit_count
    movl $0, LAPIC + 0xb0
    iretl

spurious:
    iretl

stray:
    movl $0, LAPIC + 0xb0
    iretl
"#,
    options(att_syntax)
);

#[cfg(not(target_os = "none"))]
fn main() {}
