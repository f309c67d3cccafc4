//! `guest-fpu`: its own vector, MMX and debug registers survive VM exits (part `fpu` of issue
//! 17). 32-bit protected mode, paging off.
//!
//! - `sse-on`: CR0.EM and TS cleared, MP set; CR4.OSFXSR and OSXMMEXCPT set (CR exits the
//!   VMM checks), read back.
//! - `xmm-mmx`: XMM0..XMM7 and MM0..MM7 get a pattern; then ROUNDS times CPUID and two port
//!   accesses (CMOS: three exits handled by the VMM, whose exit thread runs meanwhile) and a
//!   spin (host timer ticks and the VMX-preemption timer end the slice: other threads, among
//!   them the vmm-suite's, which loads its own XMM/MMX values, run in between); at the end
//!   every register must hold its pattern.
//! - `debug-regs`: DR0..DR3 get four addresses, DR7 enables them (execution breakpoints on
//!   addresses never executed), DR6 is written 0; after ROUNDS more exits DR0..DR3 read back
//!   as written, DR7 as 0x455 (bit 10 reads 1), DR6 as 0xffff0ff0 (its fixed bits), and DR5
//!   and DR4 (CR4.DE clear) as DR7 and DR6. DR7 is cleared at the end.
//!
//! - `data-breakpoint`: DR0 watches a dword, DR7 arms it for writes; after ROUNDS more exits a
//!   write to the dword raises #DB (its own IDT gate) with DR6.B0 set, read in the handler.
//!
//! Console on success:
//! ```text
//! fpu: hello from guest-fpu
//! sse-on: ok
//! xmm-mmx: ok
//! debug-regs: ok
//! data-breakpoint: ok
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
    .set ROUNDS, 300
    .set SPIN, 20000
    .set REGBYTES, 8 * 16 + 8 * 8  # XMM0..7 then MM0..7

    .section .data.guest, "aw"
    .balign 16
pattern:    .skip REGBYTES
got:        .skip REGBYTES
dr_want:    .long 0xdead0000, 0xdead1000, 0xdead2000, 0xdead3000, 0x455, 0xffff0ff0, 0x455, 0xffff0ff0
dr_got:     .skip 8 * 4
watch:      .long 0
db_count:   .long 0
db_dr6:     .long 0

    .section .rodata.guest, "a"
msg_hello:  .asciz "fpu: hello from guest-fpu\n"
name_sse:   .asciz "sse-on"
name_xmm:   .asciz "xmm-mmx"
name_dr:    .asciz "debug-regs"
name_db:    .asciz "data-breakpoint"
det_db:     .asciz "want one #DB with DR6.B0 set; #DB count in the high word, DR6 in the low:"
det_sse:    .asciz "CR0/CR4 read back wrong, CR4 ="
det_xmm:    .asciz "registers changed across exits, wrong dwords:"
det_dr:     .asciz "debug registers changed across exits, wrong ones (bit n: DR0-3, DR7, DR6, DR5, DR4):"

    .section .text.guest, "ax"
    .code32
    .globl guest_main
guest_main:
    movl $msg_hello, %esi
    call puts32

    # sse-on
    movl %cr0, %eax
    andl $~0xc, %eax               # EM, TS
    orl $0x22, %eax                # MP, NE
    movl %eax, %cr0
    movl %cr4, %eax
    orl $0x600, %eax               # OSFXSR, OSXMMEXCPT
    movl %eax, %cr4
    movl %cr0, %eax
    movl %cr4, %edx
    andl $0xe, %eax
    xorl $0x2, %eax                # 0 when MP set, EM and TS clear
    movl %edx, %ecx
    andl $0x600, %ecx
    xorl $0x600, %ecx
    orl %ecx, %eax
    movl $name_sse, %esi
    movl $det_sse, %edi
    call report32_val
    fninit

    # xmm-mmx: the pattern, dword i = 0x5eed0000 + i * 0x01030507
    movl $pattern, %edi
    movl $REGBYTES / 4, %ecx
    movl $0x5eed0000, %eax
1:  movl %eax, (%edi)
    addl $0x01030507, %eax
    addl $4, %edi
    decl %ecx
    jnz 1b
    movdqu pattern + 0, %xmm0
    movdqu pattern + 16, %xmm1
    movdqu pattern + 32, %xmm2
    movdqu pattern + 48, %xmm3
    movdqu pattern + 64, %xmm4
    movdqu pattern + 80, %xmm5
    movdqu pattern + 96, %xmm6
    movdqu pattern + 112, %xmm7
    movq pattern + 128, %mm0
    movq pattern + 136, %mm1
    movq pattern + 144, %mm2
    movq pattern + 152, %mm3
    movq pattern + 160, %mm4
    movq pattern + 168, %mm5
    movq pattern + 176, %mm6
    movq pattern + 184, %mm7
    call exits
    movdqu %xmm0, got + 0
    movdqu %xmm1, got + 16
    movdqu %xmm2, got + 32
    movdqu %xmm3, got + 48
    movdqu %xmm4, got + 64
    movdqu %xmm5, got + 80
    movdqu %xmm6, got + 96
    movdqu %xmm7, got + 112
    movq %mm0, got + 128
    movq %mm1, got + 136
    movq %mm2, got + 144
    movq %mm3, got + 152
    movq %mm4, got + 160
    movq %mm5, got + 168
    movq %mm6, got + 176
    movq %mm7, got + 184
    emms
    movl $pattern, %esi
    movl $got, %edi
    movl $REGBYTES / 4, %ecx
    xorl %edx, %edx                # wrong dwords
1:  movl (%esi), %eax
    cmpl (%edi), %eax
    je 2f
    incl %edx
2:  addl $4, %esi
    addl $4, %edi
    decl %ecx
    jnz 1b
    xorl %eax, %eax
    testl %edx, %edx
    setnz %al
    movl $name_xmm, %esi
    movl $det_xmm, %edi
    call report32_val

    # debug-regs
    movl dr_want + 0, %eax
    movl %eax, %dr0
    movl dr_want + 4, %eax
    movl %eax, %dr1
    movl dr_want + 8, %eax
    movl %eax, %dr2
    movl dr_want + 12, %eax
    movl %eax, %dr3
    movl $0x55, %eax               # L0..L3, execute, 1 byte
    movl %eax, %dr7
    xorl %eax, %eax
    movl %eax, %dr6
    call exits
    movl %dr0, %eax
    movl %eax, dr_got + 0
    movl %dr1, %eax
    movl %eax, dr_got + 4
    movl %dr2, %eax
    movl %eax, dr_got + 8
    movl %dr3, %eax
    movl %eax, dr_got + 12
    movl %dr7, %eax
    movl %eax, dr_got + 16
    movl %dr6, %eax
    movl %eax, dr_got + 20
    movl %dr5, %eax
    movl %eax, dr_got + 24
    movl %dr4, %eax
    movl %eax, dr_got + 28
    xorl %eax, %eax
    movl %eax, %dr7
    xorl %edx, %edx                # bit n: dword n differs
    xorl %ecx, %ecx
1:  movl dr_want(,%ecx,4), %eax
    cmpl dr_got(,%ecx,4), %eax
    je 2f
    btsl %ecx, %edx
2:  incl %ecx
    cmpl $8, %ecx
    jb 1b
    xorl %eax, %eax
    testl %edx, %edx
    setnz %al
    movl $name_dr, %esi
    movl $det_dr, %edi
    call report32_val

    # data-breakpoint: DR0 watches `watch` (DR7: L0, break on write, 4 bytes); after the
    # exits, a write to it must raise #DB (a trap) with DR6.B0 set: the guest's DR0 and DR7
    # are really in the debug registers while it runs, and DR6 is saved at the exits.
    movl $db_handler, %edx         # IDT gate 1 -> db_handler
    movl %edx, %eax
    andl $0x0000ffff, %eax
    orl $0x00080000, %eax
    movl %eax, idt32 + 8
    movl %edx, %eax
    andl $0xffff0000, %eax
    orl $0x00008e00, %eax
    movl %eax, idt32 + 12
    xorl %eax, %eax
    movl %eax, %dr6
    movl $watch, %eax
    movl %eax, %dr0
    movl $0x000d0001, %eax
    movl %eax, %dr7
    call exits
    movl $0x1234, watch            # #DB here
    xorl %eax, %eax
    movl %eax, %dr7
    movl db_count, %edx
    shll $16, %edx
    movw db_dr6, %dx
    xorl %eax, %eax
    cmpl $1, db_count
    setne %al
    testl $1, db_dr6
    jnz 1f
    movl $1, %eax
1:  movl $name_db, %esi
    movl $det_db, %edi
    call report32_val
    ret                            # to finish32

# #DB: count it and keep DR6 (a MOV DR exit: the VMM reads the DR6 the kernel saved).
db_handler:
    pushl %eax
    incl db_count
    movl %dr6, %eax
    movl %eax, db_dr6
    popl %eax
    iretl

# ROUNDS times: CPUID, CMOS index write and data read (three exits), then a spin. Keeps
# every XMM, MMX and debug register; clobbers EAX, EBX, ECX, EDX.
exits:
    pushl %ebp
    pushl %esi
    movl $ROUNDS, %ebp
1:  xorl %eax, %eax
    xorl %ecx, %ecx
    cpuid
    movb $0x17, %al
    outb %al, $0x70
    inb $0x71, %al
    movl $SPIN, %esi
2:  decl %esi
    jnz 2b
    decl %ebp
    jnz 1b
    popl %esi
    popl %ebp
    ret
"#,
    options(att_syntax)
);

#[cfg(not(target_os = "none"))]
fn main() {}
