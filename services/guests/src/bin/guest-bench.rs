//! `guest-bench`: a flat 64-bit image measuring exit round trips with `rdtsc`.
//!
//! Entry (the VMM's flat loader): the raw bytes (`objcopy -O binary` of this ELF) at
//! guest-physical 0x200000, 64-bit long mode, identity paging of the first 1 GiB, CS = 0x08,
//! RIP = 0x200000 (`_start`, first in .text), interrupts off. The guest zeroes its .bss, takes
//! its own stack and installs an IDT; it relies on nothing else.
//!
//! For each op, 1000 rounds of `rdtsc; shl rdx,32; or rax,rdx; mov r8,rax; <op>; rdtsc; ...`
//! (no lfence), the samples sorted: min = the smallest, median = the mean of the 500th and
//! 501st. Ops: `cpuid` (leaf 0), `vmcall` (`abi::hypercall::NOP`), `out` (`out 0x3ff, al`,
//! COM1's scratch register). First with the exits handled by the VMM service (each op
//! measured and printed in turn), then through the kernel's reflect floor, one exit reason at a
//! time, since a reflected reason is answered by the kernel (the instruction skipped): with
//! I/O reflected the guest's COM1 output and its 0xf4 exit would be swallowed too. Switching:
//! - `vmcall` RAX = `abi::hypercall::REFLECT` ("3" below), RBX = exit reason (10 CPUID,
//!   18 VMCALL, 30 I/O): that reason to the kernel floor;
//! - `vmcall` RAX = `abi::hypercall::UNREFLECT` ("4"): every reason back to the VMM (while
//!   VMCALL is not reflected);
//! - `cpuid` EAX = 0x400000ff, ECX = 0: every reason back (while CPUID is not reflected).
//!
//! Kernel phase, with nothing printed in between: vmcall(3, 10), measure cpuid, vmcall(4);
//! vmcall(3, 18), measure vmcall (the floor sets RAX = 0 and skips it), cpuid(0x400000ff);
//! vmcall(3, 30), measure out, vmcall(4). Each op's samples are kept in its own buffer, and
//! only then are the kernel lines printed.
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
//! a nop hypercall returned RAX != 0 or raised #UD, `reflect-switch` when one of the switching
//! hypercalls (3 and 4) did; a #UD of a measured vmcall in the kernel phase fails the result
//! as well.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[path = "../rt/mod.rs"]
mod rt;

#[cfg(target_os = "none")]
core::arch::global_asm!(
    include_str!("../rt/data.s"),
    include_str!("../rt/rt64.s"),
    r#"
    .set ROUNDS, 1000
    .set REASON_CPUID, 10
    .set REASON_VMCALL, 18
    .set REASON_IO, 30

    .section .bss.guest, "aw", @nobits
    .balign 8
samples_cpuid:  .skip ROUNDS * 8   # one buffer per op: the kernel phase measures all three
samples_vmcall: .skip ROUNDS * 8   # before it prints
samples_out:    .skip ROUNDS * 8
nop_or:     .skip 8                # OR of the RAX values the nop hypercalls returned
switch_or:  .skip 8                # OR of the RAX values the switching hypercalls returned
switch_ud:  .skip 4                # #UDs raised by the switching hypercalls

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
det_switch: .asciz "a switching hypercall (3 or 4) returned nonzero RAX or raised #UD, OR of RAX ="
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

    # Through the VMM service: measure and print each op.
    movl $0, ud_vmcall_count
    movq $0, nop_or
    movq $via_vmm, %r15
    movq $samples_cpuid, %rdi
    call measure_cpuid
    movq $op_cpuid, %rsi
    call stats_and_print
    movq $samples_vmcall, %rdi
    call measure_vmcall
    movq $op_vmcall, %rsi
    call stats_and_print
    movq $samples_out, %rdi
    call measure_out
    movq $op_out, %rsi
    call stats_and_print
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

    # Through the kernel's reflect floor, one exit reason at a time. Nothing is printed until
    # every reason is back with the VMM (a reflected I/O reason would swallow COM1 output).
    # What a nop hypercall returns in the floor is not checked.
    movl $0, ud_vmcall_count
    movq $0, switch_or
    movl $0, switch_ud

    movl ${hc_reflect}, %eax       # CPUID to the floor
    movl $REASON_CPUID, %ebx
    call switch_call
    movq $samples_cpuid, %rdi
    call measure_cpuid
    movl ${hc_unreflect}, %eax     # all back (VMCALL is still the VMM's)
    call switch_call

    movl ${hc_reflect}, %eax       # VMCALL to the floor
    movl $REASON_VMCALL, %ebx
    call switch_call
    movq $samples_vmcall, %rdi
    call measure_vmcall
    movl ${unreflect_leaf}, %eax   # all back (CPUID is still the VMM's)
    xorl %ecx, %ecx
    cpuid

    movl ${hc_reflect}, %eax       # I/O to the floor
    movl $REASON_IO, %ebx
    call switch_call
    movq $samples_out, %rdi
    call measure_out
    movl ${hc_unreflect}, %eax     # all back (VMCALL is still the VMM's)
    call switch_call

    # Every reason is the VMM's again: report the switching, then print.
    movq switch_or, %rdx
    xorl %eax, %eax
    testq %rdx, %rdx
    setnz %al
    cmpl $0, switch_ud
    je 1f
    movl $1, %eax
1:  movq $name_switch, %rsi
    movq $det_switch, %rdi
    call report64_val

    movq $via_kernel, %r15
    movq $samples_cpuid, %rdi
    movq $op_cpuid, %rsi
    call stats_and_print
    movq $samples_vmcall, %rdi
    movq $op_vmcall, %rsi
    call stats_and_print
    movq $samples_out, %rdi
    movq $op_out, %rsi
    call stats_and_print

    movl ud_vmcall_count, %edx     # #UDs of the measured vmcalls only (see switch_call)
    testl %edx, %edx
    jz 1f
    movl $1, %eax                  # only reported when it fails
    movq $name_ud, %rsi
    movq $det_ud, %rdi
    call report64_val
1:  jmp finish64

    .section .text.guest, "ax"
    .code64

# switch_call: a switching hypercall, RAX (3 or 4) and RBX (the exit reason for 3) as given.
# The RAX it returns is ORed into switch_or; a #UD it raised is counted in switch_ud and not
# left in ud_vmcall_count. Prints nothing (I/O may be reflected). Clobbers RAX.
switch_call:
    pushq %rdx
    movl ud_vmcall_count, %edx
    vmcall
    orq %rax, switch_or
    cmpl ud_vmcall_count, %edx
    je 1f
    incl switch_ud
    movl %edx, ud_vmcall_count
1:  popq %rdx
    ret

# measure_cpuid / measure_vmcall / measure_out: ROUNDS samples (TSC deltas) into the buffer
# at RDI. The timed region is: mov r8,rax; <setup of the op's register>; <op>; rdtsc.
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
    movq %rax, (%rdi,%rcx,8)
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
    movl ${hc_nop}, %eax           # the nop hypercall
    vmcall
    orq %rax, nop_or
    rdtsc
    shlq $32, %rdx
    orq %rdx, %rax
    subq %r8, %rax
    movq %rax, (%rdi,%rcx,8)
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
    movq %rax, (%rdi,%rcx,8)
    incl %ecx
    cmpl $ROUNDS, %ecx
    jb .Lm_out
    ret

# stats_and_print: sort the ROUNDS samples at RDI (insertion sort, ascending), then print
# "bench-vmm: via=<R15> op=<RSI> min=<s[0]> median=<(s[499] + s[500]) / 2>".
stats_and_print:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    movl $1, %ecx                  # i
.Lsort_outer:
    movq (%rdi,%rcx,8), %rax       # key = s[i]
    movl %ecx, %edx                # j = i
.Lsort_inner:
    testl %edx, %edx
    jz .Lsort_place
    movq -8(%rdi,%rdx,8), %rbx     # s[j - 1]
    cmpq %rax, %rbx
    jbe .Lsort_place
    movq %rbx, (%rdi,%rdx,8)       # shift up
    decl %edx
    jmp .Lsort_inner
.Lsort_place:
    movq %rax, (%rdi,%rdx,8)
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
    movq (%rdi), %rax
    call putdec64
    movq $msg_median, %rsi
    call puts64
    movq (ROUNDS / 2 - 1) * 8(%rdi), %rax
    addq (ROUNDS / 2) * 8(%rdi), %rax
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
    hc_nop = const abi::hypercall::NOP,
    hc_reflect = const abi::hypercall::REFLECT,
    hc_unreflect = const abi::hypercall::UNREFLECT,
    unreflect_leaf = const abi::hypercall::UNREFLECT_LEAF,
    options(att_syntax)
);

#[cfg(not(target_os = "none"))]
fn main() {}
