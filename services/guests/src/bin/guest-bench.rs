//! `guest-bench`: a flat 64-bit image measuring exit round trips with `rdtsc`.
//!
//! Entry (the VMM's flat loader): the raw bytes (`objcopy -O binary` of this ELF) at
//! guest-physical 0x200000, 64-bit long mode, identity paging of the first 1 GiB, CS = 0x08,
//! RIP = 0x200000 (`_start`, first in .text), interrupts off. The guest zeroes its .bss, takes
//! its own stack and installs an IDT; it relies on nothing else.
//!
//! For each op, 1000 rounds of `rdtsc; shl rdx,32; or rax,rdx; mov r8,rax; <op>; rdtsc; ...`
//! (no lfence), the samples sorted: min = the smallest, median = the mean of the 500th and
//! 501st. Ops: `cpuid` (leaf 0), `vmcall` (RAX = 2, the nop hypercall), `out` (`out 0x3ff, al`,
//! COM1's scratch register). First with the exits handled by the VMM service, then after
//! hypercall 3 (this vCPU's CPUID/VMCALL/OUT exits go to the kernel's reflect floor).
//!
//! Console on success (N decimal):
//! ```text
//! bench-vmm: start, 1000 rounds per op
//! bench-vmm: via=vmm op=cpuid min=N median=N
//! bench-vmm: via=vmm op=vmcall min=N median=N
//! bench-vmm: via=vmm op=out min=N median=N
//! vmcall-nop: ok
//! reflect-switch: ok
//! bench-vmm: via=kernel op=cpuid min=N median=N
//! bench-vmm: via=kernel op=vmcall min=N median=N
//! bench-vmm: via=kernel op=out min=N median=N
//! result: pass
//! ```
//! then exit 0x10 through port 0xf4. `vmcall-nop` fails (and the guest exits with 0x11) when
//! a nop hypercall returned RAX != 0 or raised #UD, `reflect-switch` when hypercall 3 did;
//! a #UD of a vmcall in the kernel phase fails the result as well.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[path = "../rt/mod.rs"]
mod rt;

#[cfg(target_os = "none")]
core::arch::global_asm!(
    include_str!("../rt/data.s"),
    include_str!("../rt/rt64.s"),
    r#"
    .set ROUNDS, 1000

    .section .bss.guest, "aw", @nobits
    .balign 8
samples:    .skip ROUNDS * 8
nop_or:     .skip 8                # OR of the RAX values the nop hypercalls returned

    .section .rodata.guest, "a"
msg_hello:  .asciz "bench-vmm: start, 1000 rounds per op\n"
msg_via:    .asciz "bench-vmm: via="
msg_op:     .asciz " op="
msg_min:    .asciz " min="
msg_median: .asciz " median="
via_vmm:    .asciz "vmm"
via_kernel: .asciz "kernel"
op_cpuid:   .asciz "cpuid"
op_vmcall:  .asciz "vmcall"
op_out:     .asciz "out"
name_nop:   .asciz "vmcall-nop"
name_switch: .asciz "reflect-switch"
name_ud:    .asciz "vmcall-kernel"
det_nop:    .asciz "a nop hypercall returned nonzero RAX or raised #UD, OR of RAX ="
det_switch: .asciz "hypercall 3 returned nonzero RAX or raised #UD, RAX ="
det_ud:     .asciz "vmcall raised #UD in the kernel phase, count ="

    .section .text.entry, "ax"
    .code64
    .globl _start
_start:
    cli
    cld
    movq $__bss_start, %rdi        # .bss is not in the raw image: zero it
    movq $__bss_end, %rcx
    subq %rdi, %rcx
    xorl %eax, %eax
    rep stosb
    movq $stack_top, %rsp
    call idt64_install

    movq $msg_hello, %rsi
    call puts64

    # Through the VMM service.
    movl $0, ud_vmcall_count
    movq $0, nop_or
    movq $via_vmm, %r15
    call bench_all
    movq nop_or, %rdx
    xorl %eax, %eax
    testq %rdx, %rdx
    setnz %al
    cmpl $0, ud_vmcall_count
    je 1f
    movl $1, %eax
1:  movq $name_nop, %rsi
    movq $det_nop, %rdi
    call report64_val

    # Switch this vCPU's CPUID/VMCALL/OUT exits to the kernel's reflect floor.
    movl $0, ud_vmcall_count
    movl $3, %eax
    vmcall
    movq %rax, %rdx
    xorl %eax, %eax
    testq %rdx, %rdx
    setnz %al
    cmpl $0, ud_vmcall_count
    je 1f
    movl $1, %eax
1:  movq $name_switch, %rsi
    movq $det_switch, %rdi
    call report64_val

    # Through the kernel's reflect floor (what a nop hypercall returns there is not checked).
    movl $0, ud_vmcall_count
    movq $via_kernel, %r15
    call bench_all
    movl ud_vmcall_count, %edx
    testl %edx, %edx
    jz 1f
    movl $1, %eax                  # only reported when it fails
    movq $name_ud, %rsi
    movq $det_ud, %rdi
    call report64_val
1:  jmp finish64

    .section .text.guest, "ax"
    .code64

# bench_all: measure the three ops and print one line each; R15 = the "via" string.
bench_all:
    call measure_cpuid
    movq $op_cpuid, %rsi
    call stats_and_print
    call measure_vmcall
    movq $op_vmcall, %rsi
    call stats_and_print
    call measure_out
    movq $op_out, %rsi
    call stats_and_print
    ret

# measure_cpuid / measure_vmcall / measure_out: ROUNDS samples (TSC deltas) into samples[].
# The timed region is: mov r8,rax; <setup of the op's register>; <op>; rdtsc.
measure_cpuid:
    pushq %rbx
    xorl %ecx, %ecx                # round
.Lm_cpuid:
    movq %rcx, %r10                # cpuid clobbers RCX
    rdtsc
    shlq $32, %rdx
    orq %rdx, %rax
    movq %rax, %r8
    xorl %eax, %eax                # leaf 0
    cpuid
    rdtsc
    shlq $32, %rdx
    orq %rdx, %rax
    subq %r8, %rax
    movq %r10, %rcx
    movq %rax, samples(,%rcx,8)
    incl %ecx
    cmpl $ROUNDS, %ecx
    jb .Lm_cpuid
    popq %rbx
    ret

measure_vmcall:
    pushq %rbx
    xorl %ecx, %ecx
.Lm_vmcall:
    rdtsc
    shlq $32, %rdx
    orq %rdx, %rax
    movq %rax, %r8
    movl $2, %eax                  # the nop hypercall
    vmcall
    orq %rax, nop_or
    rdtsc
    shlq $32, %rdx
    orq %rdx, %rax
    subq %r8, %rax
    movq %rax, samples(,%rcx,8)
    incl %ecx
    cmpl $ROUNDS, %ecx
    jb .Lm_vmcall
    popq %rbx
    ret

measure_out:
    xorl %ecx, %ecx
.Lm_out:
    rdtsc
    shlq $32, %rdx
    orq %rdx, %rax
    movq %rax, %r8
    movl $0x3ff, %edx              # COM1 scratch register
    outb %al, %dx
    rdtsc
    shlq $32, %rdx
    orq %rdx, %rax
    subq %r8, %rax
    movq %rax, samples(,%rcx,8)
    incl %ecx
    cmpl $ROUNDS, %ecx
    jb .Lm_out
    ret

# stats_and_print: sort samples[] (insertion sort, ascending), then print
# "bench-vmm: via=<R15> op=<RSI> min=<samples[0]> median=<(samples[499] + samples[500]) / 2>".
stats_and_print:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    movl $1, %ecx                  # i
.Lsort_outer:
    movq samples(,%rcx,8), %rax    # key = samples[i]
    movl %ecx, %edx                # j = i
.Lsort_inner:
    testl %edx, %edx
    jz .Lsort_place
    movq samples - 8(,%rdx,8), %rbx    # samples[j - 1]
    cmpq %rax, %rbx
    jbe .Lsort_place
    movq %rbx, samples(,%rdx,8)    # shift up
    decl %edx
    jmp .Lsort_inner
.Lsort_place:
    movq %rax, samples(,%rdx,8)
    incl %ecx
    cmpl $ROUNDS, %ecx
    jb .Lsort_outer

    movq $msg_via, %rsi
    call puts64
    movq %r15, %rsi
    call puts64
    movq $msg_op, %rsi
    call puts64
    movq (%rsp), %rsi              # the op name
    call puts64
    movq $msg_min, %rsi
    call puts64
    movq samples, %rax
    call putdec64
    movq $msg_median, %rsi
    call puts64
    movq samples + (ROUNDS / 2 - 1) * 8, %rax
    addq samples + (ROUNDS / 2) * 8, %rax
    shrq $1, %rax
    call putdec64
    movq $str_nl, %rsi
    call puts64
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    ret
"#,
    options(att_syntax)
);

#[cfg(not(target_os = "none"))]
fn main() {}
