//! `guest-timer`: the PIT and the 8259 pair deliver interrupts on time (issue 12). 32-bit
//! protected mode, paging off. The PICs are programmed as Linux does (vectors 0x20/0x28,
//! cascade on line 2); IRQ 0's handler counts ticks, remembers the ISR it saw, and sends a
//! non-specific EOI.
//!
//! - `pit-periodic-hlt`: channel 0 as a rate generator at 1 kHz; the guest waits with
//!   `sti; hlt` until 20 ticks arrived (each HLT waits in the VMM's HLT state until the
//!   deadline); IRQ 0 was in service (ISR bit 0) inside the handler.
//! - `pit-periodic-spin`: the same 20 ticks while the guest spins without exiting (the
//!   vCPU's deadline makes it exit when the PIT fires).
//! - `pit-one-shot`: mode 0 (interrupt on terminal count) for 2 ms: exactly one tick, none
//!   after it while the guest spins well past it (a periodic tick latched while interrupts
//!   were off is taken first, with the PIT stopped).
//! - `pic-mask`: with IRQ 0 masked no tick arrives while the PIT runs, but IRR bit 0 shows
//!   the request; unmasked, it is delivered.
//! - `port-61`: channel 2 in mode 0 with its gate (port 0x61 bit 0) off does not count; with
//!   it on, OUT2 (bit 5) goes high after the count, as Linux's TSC calibration polls it.
//!
//! Console on success:
//! ```text
//! timer: hello from guest-timer
//! pit-periodic-hlt: ok
//! pit-periodic-spin: ok
//! pit-one-shot: ok
//! pic-mask: ok
//! port-61: ok
//! result: pass
//! ```
//! then exit 0x10 through port 0xf4 (0x11 after any failure).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[path = "../rt/mod.rs"]
mod rt;

#[cfg(target_os = "none")]
core::arch::global_asm!(
    include_str!("../rt/data.s"),
    include_str!("../rt/rt32.s"),
    r#"
    .set TICKS, 20
    .set PERIOD_1MS, 1193
    .set SPIN_LIMIT, 40000000      # bounds every wait (about 0.4 s of Bochs time per loop)

    .section .data.guest, "aw"
    .balign 8
ticks:      .long 0
isr_seen:   .long 0xffffffff
spurious:   .long 0

    .section .rodata.guest, "a"
msg_hello:  .asciz "timer: hello from guest-timer\n"
name_hlt:   .asciz "pit-periodic-hlt"
name_spin:  .asciz "pit-periodic-spin"
name_one:   .asciz "pit-one-shot"
name_mask:  .asciz "pic-mask"
name_p61:   .asciz "port-61"
det_ticks:  .asciz "ticks (high word) and ISR seen in the handler (low word):"
det_count:  .asciz "ticks:"
det_mask:   .asciz "ticks while masked (high word), IRR (low word):"
det_p61:    .asciz "port 0x61 before the gate (high word) and after the count (low word):"

    .section .text.guest, "ax"
    .code32
    .globl guest_main
guest_main:
    movl $msg_hello, %esi
    call puts32
    call timer_idt
    call pic_init

    # pit-periodic-hlt
    movl $0x34, %eax               # channel 0, lo/hi, mode 2
    movl $PERIOD_1MS, %ecx
    call pit0
    movl $0, ticks
    movl $SPIN_LIMIT, %ecx
    sti
1:  hlt
    cmpl $TICKS, ticks
    jae 2f
    decl %ecx
    jnz 1b
2:  cli
    movl ticks, %edx
    shll $16, %edx
    movw isr_seen, %dx
    xorl %eax, %eax
    cmpl $TICKS, ticks
    setb %al
    cmpl $1, isr_seen              # only line 0 in service
    je 3f
    movl $1, %eax
3:  movl $name_hlt, %esi
    movl $det_ticks, %edi
    call report32_val

    # pit-periodic-spin: no HLT, no exit of the guest's own
    movl $0, ticks
    movl $SPIN_LIMIT, %ecx
    sti
1:  cmpl $TICKS, ticks
    jae 2f
    decl %ecx
    jnz 1b
2:  cli
    movl ticks, %edx
    xorl %eax, %eax
    cmpl $TICKS, %edx
    setb %al
    movl $name_spin, %esi
    movl $det_count, %edi
    call report32_val

    # pit-one-shot: mode 0 for 2 ms, then spin far past it. First the periodic tick that
    # came in while interrupts were off (the 8259 latched it) is taken, with channel 0
    # stopped (a mode write without a count).
    movb $0x30, %al
    outb %al, $0x43
    sti
    nop
    nop
    cli
    movl $0, ticks
    movl $0x30, %eax               # channel 0, lo/hi, mode 0
    movl $2 * PERIOD_1MS, %ecx
    call pit0
    movl $SPIN_LIMIT, %ecx
    sti
1:  cmpl $0, ticks
    jne 2f
    decl %ecx
    jnz 1b
2:  movl $4000000, %ecx            # about 10x the count in Bochs
3:  decl %ecx
    jnz 3b
    cli
    movl ticks, %edx
    xorl %eax, %eax
    cmpl $1, %edx
    setne %al
    movl $name_one, %esi
    movl $det_count, %edi
    call report32_val

    # pic-mask: IRQ 0 masked while the PIT runs at 1 kHz
    movb $0xff, %al
    outb %al, $0x21
    movl $0x34, %eax
    movl $PERIOD_1MS, %ecx
    call pit0
    movl $0, ticks
    movl $2000000, %ecx            # a few periods
    sti
1:  decl %ecx
    jnz 1b
    cli
    movb $0x0a, %al                # OCW3: read IRR
    outb %al, $0x20
    inb $0x20, %al
    movzbl %al, %ebx
    movl ticks, %esi               # ticks while masked
    movb $0xfa, %al                # unmask line 0 (and the cascade)
    outb %al, $0x21
    movl $SPIN_LIMIT, %ecx
    sti
1:  cmpl $0, ticks
    jne 2f
    decl %ecx
    jnz 1b
2:  cli
    movl %esi, %edx
    shll $16, %edx
    movw %bx, %dx
    xorl %eax, %eax
    testl %esi, %esi               # none while masked
    setnz %al
    testl $1, %ebx                 # but requested
    jnz 3f
    movl $1, %eax
3:  cmpl $0, ticks                 # and delivered once unmasked
    jne 4f
    movl $1, %eax
4:  movl $name_mask, %esi
    movl $det_mask, %edi
    call report32_val
    movl $0x30, %eax               # channel 0 stopped: a mode write without a count
    outb %al, $0x43

    # port-61: channel 2, mode 0, count 1193, gate off then on
    xorl %eax, %eax
    outb %al, $0x61                # gate off, speaker off
    movb $0xb0, %al                # channel 2, lo/hi, mode 0
    outb %al, $0x43
    movl $PERIOD_1MS, %eax
    outb %al, $0x42
    movb %ah, %al
    outb %al, $0x42
    movl $400000, %ecx             # longer than the count: nothing happens without the gate
1:  decl %ecx
    jnz 1b
    inb $0x61, %al
    movzbl %al, %ebx
    shll $16, %ebx
    movb $1, %al                   # gate on
    outb %al, $0x61
    movl $SPIN_LIMIT, %ecx
1:  inb $0x61, %al
    testb $0x20, %al
    jnz 2f
    decl %ecx
    jnz 1b
2:  movb %al, %bl
    xorl %eax, %eax
    outb %al, $0x61
    movl %ebx, %edx
    xorl %eax, %eax
    testl $0x200000, %ebx          # OUT2 low before the gate
    setnz %al
    testl $0x20, %ebx              # high after the count
    jnz 3f
    movl $1, %eax
3:  movl $name_p61, %esi
    movl $det_p61, %edi
    call report32_val
    ret                            # to finish32

# pit0: control word AL to 0x43, then the count ECX (lo, hi) to channel 0.
pit0:
    outb %al, $0x43
    movl %ecx, %eax
    outb %al, $0x40
    movb %ah, %al
    outb %al, $0x40
    ret

# pic_init: the pair as Linux programs it, every line masked but 0 (and the cascade).
pic_init:
    movb $0x11, %al
    outb %al, $0x20
    outb %al, $0xa0
    movb $0x20, %al
    outb %al, $0x21
    movb $0x28, %al
    outb %al, $0xa1
    movb $0x04, %al
    outb %al, $0x21
    movb $0x02, %al
    outb %al, $0xa1
    movb $0x01, %al
    outb %al, $0x21
    outb %al, $0xa1
    movb $0xfa, %al
    outb %al, $0x21
    movb $0xff, %al
    outb %al, $0xa1
    ret

# timer_idt: the runtime's wide IDT; vector 0x20 the tick, the other IRQ vectors count as
# spurious.
timer_idt:
    movl $other_irq, %edx
    call idt32_wide
    movl $0x20, %ecx
    movl $tick, %edx
    call idt32_gate
    ret

tick:
    pushl %eax
    incl ticks
    cmpl $0xffffffff, isr_seen
    jne 1f
    movb $0x0b, %al                # OCW3: read ISR
    outb %al, $0x20
    inb $0x20, %al
    movzbl %al, %eax
    movl %eax, isr_seen
1:  movb $0x20, %al                # non-specific EOI
    outb %al, $0x20
    popl %eax
    iretl

other_irq:
    pushl %eax
    incl spurious
    movb $0x20, %al
    outb %al, $0xa0
    outb %al, $0x20
    popl %eax
    iretl
"#,
    options(att_syntax)
);

#[cfg(not(target_os = "none"))]
fn main() {}
