//! `guest-isolation`: the VM isolation probe (a flat 64-bit image at 2 MiB), in the two roles
//! of `userlib::proto::vmm::isolation`, which defines every constant, register and layout
//! used here (the numbers below repeat them; that module is the reference).
//!
//! Entry (each time): RSI = role, RDI = RAM bytes or the stopped gpa, RDX = the fill start or
//! the point list, R8 / R9 / R10 = the own / foreign / service markers (never in this image).
//!
//! - Fill (RSI = 1): writes R9 to every word from RDX to RDI, then hypercall 0 (exit), code 0.
//! - Probe (RSI = 2): zeroes its .bss and the report at 0x5000, maps the 4 GiB guest-physical
//!   space with 2 MiB pages of its own tables (PML4, PDPT, four page directories in .bss),
//!   loads CR3 and accesses each point of the list at RDX (a count, then points: a 64-byte
//!   aligned gpa, kind 0 = read 64 bytes, 1 = write 8 bytes):
//!   - a read that returns: a word equal to R9 or R10 counts it *foreign*; else inside RAM
//!     each word gets R8 ^ its index, is read back and restored (*own*, or *unaccounted* on a
//!     mismatch); outside RAM it counts *device*;
//!   - a write inside RAM: saved, written, read back, restored (*own* / *unaccounted*);
//!     outside RAM a write that returns counts *device*.
//! - Check (RSI = 4): counts the words from RDX to RDI that are not R9 and exits (hypercall
//!   0) with that count as the code: the neighbour runs so between the probe's stops.
//! - Resume (RSI = 3): the VMM stopped the VM at the page RDI: if that is the current point's
//!   page and the point lies outside RAM it counts *stopped*, else *unaccounted*; then the
//!   next point.
//!
//! After the last point: the report (magic, probed, own, device, stopped, foreign,
//! unaccounted, RAM bytes) at 0x5000, a console line `isolation: probed N, own RAM A,
//! device D, stopped S, foreign F, unaccounted U`, and hypercall 0 with code 0.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[path = "../rt/mod.rs"]
mod rt;

#[cfg(target_os = "none")]
core::arch::global_asm!(
    include_str!("../rt/data.s"),
    include_str!("../rt/rt64.s"),
    r#"
    .set REPORT, 0x5000            # isolation::REPORT_GPA
    .set R_PROBED, REPORT + 8
    .set R_OWN, REPORT + 16
    .set R_DEVICE, REPORT + 24
    .set R_STOPPED, REPORT + 32
    .set R_FOREIGN, REPORT + 40
    .set R_UNACCOUNTED, REPORT + 48
    .set R_RAM, REPORT + 56
    .set KIND_MASK, 0x3f

    .section .bss.guest, "aw", @nobits
    .balign 4096
pml4:   .skip 4096
pdpt:   .skip 4096
pds:    .skip 4 * 4096             # 2048 entries of 2 MiB: 4 GiB
cur:    .skip 8                    # index of the point being accessed

    .section .rodata.guest, "a"
msg_line:   .asciz "isolation: probed "
msg_own:    .asciz ", own RAM "
msg_device: .asciz ", device "
msg_stop:   .asciz ", stopped "
msg_for:    .asciz ", foreign "
msg_unacc:  .asciz ", unaccounted "

    .section .text.entry, "ax"
    .code64
    .globl _start
_start:
    cli
    cld
    movq $stack_top, %rsp
    cmpq $3, %rsi
    je resume
    cmpq $4, %rsi
    je check
    cmpq $2, %rsi
    je probe
    cmpq $1, %rsi
    je fill
    movl $1, %ebx                  # unknown role: exit code 1
    jmp exit

    .section .text.guest, "ax"
    .code64

exit:                              # hypercall EXIT with the code in RBX
    movl ${hc_exit}, %eax
    vmcall
1:  hlt
    jmp 1b

fill:
    movq %rdi, %rcx
    subq %rdx, %rcx
    shrq $3, %rcx
    movq %rdx, %rdi
    movq %r9, %rax
    rep stosq
    xorl %ebx, %ebx
    jmp exit

check:                             # count the words from RDX to RDI that are not R9
    xorl %ebx, %ebx
1:  cmpq %rdi, %rdx
    jae exit
    cmpq %r9, (%rdx)
    je 2f
    incq %rbx
2:  addq $8, %rdx
    jmp 1b

probe:
    movq %rdi, %r11                # RAM bytes
    movq $__bss_start, %rdi        # .bss is not in the raw image: zero it
    movq $__bss_end, %rcx
    subq %rdi, %rcx
    xorl %eax, %eax
    rep stosb
    movq $REPORT, %rdi
    movl $8, %ecx
    rep stosq
    movq %r11, R_RAM
    call idt64_install
    # PML4[0] -> PDPT; PDPT[k] -> page directory k; PD entry i maps 2 MiB at i << 21.
    movq $pdpt, %rax
    orq $3, %rax
    movq %rax, pml4
    xorl %ecx, %ecx
1:  movq %rcx, %rax
    shlq $12, %rax
    addq $pds, %rax
    orq $3, %rax
    movq %rax, pdpt(, %rcx, 8)
    incl %ecx
    cmpl $4, %ecx
    jb 1b
    xorl %ecx, %ecx
2:  movq %rcx, %rax
    shlq $21, %rax
    orq $0x83, %rax                # present, writable, 2 MiB
    movq %rax, pds(, %rcx, 8)
    incl %ecx
    cmpl $2048, %ecx
    jb 2b
    movq $pml4, %rax
    movq %rax, %cr3
    jmp next_point

resume:                            # RDI = the stopped page
    movq cur, %rcx
    movq 8(%rdx, %rcx, 8), %rax
    andq $~KIND_MASK, %rax         # the point's gpa
    movq %rax, %rbx
    andq $~0xfff, %rbx
    cmpq %rdi, %rbx
    jne count_unaccounted          # stopped elsewhere
    cmpq R_RAM, %rax
    jb count_unaccounted           # stopped inside its own RAM
    incq R_STOPPED
    jmp advance

count_own:
    incq R_OWN
    jmp advance
count_device:
    incq R_DEVICE
    jmp advance
count_foreign:
    incq R_FOREIGN
    jmp advance
count_unaccounted:
    incq R_UNACCOUNTED
advance:
    incq R_PROBED
    incq cur

next_point:
    movq cur, %rcx
    cmpq (%rdx), %rcx
    jae done
    movq 8(%rdx, %rcx, 8), %rax
    movq %rax, %rbx
    andq $KIND_MASK, %rbx
    andq $~KIND_MASK, %rax
    movq %rax, %rsi                # the point's gpa
    cmpq $1, %rbx
    je write_point

    # Read 64 bytes; the first word outside RAM stops the VM here.
    xorl %r12d, %r12d              # marker words seen
    xorl %ecx, %ecx
1:  movq (%rsi, %rcx, 8), %rax
    cmpq %r9, %rax
    jne 2f
    incq %r12
2:  cmpq %r10, %rax
    jne 3f
    incq %r12
3:  incl %ecx
    cmpl $8, %ecx
    jb 1b
    testq %r12, %r12
    jnz count_foreign
    leaq 64(%rsi), %rax
    cmpq R_RAM, %rax
    ja count_device                # outside RAM, and the read returned
    xorl %ecx, %ecx
4:  movq (%rsi, %rcx, 8), %rbx     # own RAM: marker in, read back, old value back
    movq %r8, %rax
    xorq %rcx, %rax
    movq %rax, (%rsi, %rcx, 8)
    cmpq (%rsi, %rcx, 8), %rax
    movq %rbx, (%rsi, %rcx, 8)
    jne count_unaccounted
    incl %ecx
    cmpl $8, %ecx
    jb 4b
    jmp count_own

write_point:
    leaq 8(%rsi), %rax
    cmpq R_RAM, %rax
    ja 5f
    movq (%rsi), %rbx              # inside RAM: marker in, read back, old value back
    movq %r8, (%rsi)
    cmpq (%rsi), %r8
    movq %rbx, (%rsi)
    jne count_unaccounted
    jmp count_own
5:  movq %r8, (%rsi)               # outside RAM: the VM stops here
    jmp count_device

done:
    movabsq $0x49534f5f444f4e45, %rax  # isolation::REPORT_MAGIC
    movq %rax, REPORT
    movq $msg_line, %rsi
    call puts64
    movq R_PROBED, %rax
    call putdec64
    movq $msg_own, %rsi
    call puts64
    movq R_OWN, %rax
    call putdec64
    movq $msg_device, %rsi
    call puts64
    movq R_DEVICE, %rax
    call putdec64
    movq $msg_stop, %rsi
    call puts64
    movq R_STOPPED, %rax
    call putdec64
    movq $msg_for, %rsi
    call puts64
    movq R_FOREIGN, %rax
    call putdec64
    movq $msg_unacc, %rsi
    call puts64
    movq R_UNACCOUNTED, %rax
    call putdec64
    movq $str_nl, %rsi
    call puts64
    xorl %ebx, %ebx
    jmp exit
"#,
    hc_exit = const abi::hypercall::EXIT,
    options(att_syntax)
);

#[cfg(not(target_os = "none"))]
fn main() {}
