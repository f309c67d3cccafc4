//! `guest-mmio`: device accesses by every instruction form the VMM's emulator handles, against
//! Umbra's MMIO test device (`vmm_service::devices::mmio::TestDevice`, one page at guest-physical
//! 0xfebf_0000: 256 bytes of storage, an access counter at +0x100, the previous access at
//! +0x108, an ID at +0x110), in 64-bit mode with the device mapped by the guest's own page
//! tables (identity: 0..16 MiB and the 2 MiB page holding the device).
//!
//! Checks, each printed `<name>: ok` or `<name>: FAILED ...`: the ID; MOV of 1, 2, 4 and 8
//! bytes both ways, with immediates and through moffs; MOVZX/MOVSX/MOVSXD; OR/AND/XOR/ADD/SUB
//! to memory and ADD/SUB/AND/OR/XOR/CMP from it; the flags after CMP and TEST; XCHG; STOS and
//! MOVS with and without REP, RAM to device and device to RAM; the counter and the log.
//!
//! If every check passed, it prints `unsupported: next` and reads the device with MOVDQU,
//! which the emulator does not handle: the VM must stop there (unhandled exit, with the
//! instruction's bytes in the VMM's report). If the VM goes on, or any check failed, it ends
//! with `result: fail` (exit 0x11 through port 0xf4).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[path = "../rt/mod.rs"]
mod rt;

#[cfg(target_os = "none")]
core::arch::global_asm!(
    include_str!("../rt/data.s"),
    include_str!("../rt/rt32.s"),
    include_str!("../rt/rt64.s"),
    r#"
    .set DEV, 0xfebf0000
    .set MAGIC, 0x4f494d6172626d55     # "UmbraMIO"

    .section .bss.pt, "aw", @nobits
    .balign 4096
pml4:       .skip 4096
pdpt:       .skip 4096
pd_low:     .skip 4096             # 0 .. 16 MiB, 2 MiB pages
pd_dev:     .skip 4096             # 3 GiB .. 4 GiB: the device's 2 MiB page
ram_src:    .skip 64
ram_dst:    .skip 64

    .section .rodata.guest, "a"
    .balign 8
pattern:    .quad 0x1111222233334444, 0x5555666677778888, 0x99990000aaaabbbb, 0xccccddddeeeeffff
msg_hello:  .asciz "mmio: hello from guest-mmio\n"
msg_next:   .asciz "unsupported: next (the VM must stop at movdqu)\n"
n_id:       .asciz "id"
n_mov8:     .asciz "mov8"
n_mov16:    .asciz "mov16"
n_mov32:    .asciz "mov32"
n_mov64:    .asciz "mov64"
n_moffs:    .asciz "moffs"
n_movzx:    .asciz "movzx"
n_movsx:    .asciz "movsx"
n_alu_mem:  .asciz "alu-to-memory"
n_alu_reg:  .asciz "alu-from-memory"
n_flags:    .asciz "cmp-test-flags"
n_xchg:     .asciz "xchg"
n_stos:     .asciz "stos"
n_movs_to:  .asciz "rep-movs-to-device"
n_movs_from: .asciz "rep-movs-from-device"
n_count:    .asciz "counter-and-log"
n_unsupp:   .asciz "unsupported"
d_val:      .asciz "got"
d_cont:     .asciz "movdqu from the device did not stop the VM"

    .section .text.guest, "ax"
    .code32
    .globl guest_main
guest_main:
    movl $msg_hello, %esi
    call puts32
    # PML4[0] -> PDPT; PDPT[0] -> pd_low (0..16 MiB), PDPT[3] -> pd_dev; pd_dev[0x1f5] maps
    # 0xfea0_0000 (the 2 MiB page of the device), uncached (PCD | PWT).
    movl $pdpt, %eax
    orl $3, %eax
    movl %eax, pml4
    movl $pd_low, %eax
    orl $3, %eax
    movl %eax, pdpt
    movl $pd_dev, %eax
    orl $3, %eax
    movl %eax, pdpt + 24
    movl $pd_low, %edi
    movl $0x83, %eax
    movl $8, %ecx
1:  movl %eax, (%edi)
    addl $0x200000, %eax
    addl $8, %edi
    decl %ecx
    jnz 1b
    movl $0xfea00000 | 0x9b, pd_dev + 8 * 0x1f5
    # CR4.PAE and OSFXSR, CR3, EFER.LME, CR0.PG: 64-bit mode.
    movl %cr4, %eax
    orl $0x220, %eax
    movl %eax, %cr4
    movl $pml4, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000000, %eax
    movl %eax, %cr0
    ljmp $0x18, $mmio64

    .code64
mmio64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movq $stack_top, %rsp
    call idt64_install
    movq $DEV, %rbx

    # id
    movq 0x110(%rbx), %rdx
    movabsq $MAGIC, %rax
    cmpq %rax, %rdx
    call check

    # mov8: imm and register, both ways; AH as a source.
    movb $0x5a, (%rbx)
    movq $-1, %rcx
    movb (%rbx), %cl
    movq %rcx, %rdx
    movq $0xffffffffffffff5a, %rax
    cmpq %rax, %rdx
    jne 1f
    movl $0x7700, %eax
    movb %ah, 1(%rbx)
    movb 1(%rbx), %dl
    cmpb $0x77, %dl
1:  movq $n_mov8, %rsi
    call check_named

    # mov16
    movw $0xbeef, 2(%rbx)
    movw $0x1234, %ax
    movw %ax, 6(%rbx)
    movq $-1, %rdx
    movw 2(%rbx), %dx
    movq $0xffffffffffffbeef, %rax
    cmpq %rax, %rdx
    jne 1f
    movw 6(%rbx), %dx
    cmpw $0x1234, %dx
1:  movq $n_mov16, %rsi
    call check_named

    # mov32: the load zero-extends into the 64-bit register.
    movl $0x89abcdef, 8(%rbx)
    movq $-1, %rdx
    movl 8(%rbx), %edx
    movl $0x89abcdef, %eax
    cmpq %rax, %rdx
    movq $n_mov32, %rsi
    call check_named

    # mov64 through r9/r10 (REX), and an immediate sign-extended to 64 bits.
    movabsq $0x0123456789abcdef, %r9
    movq %r9, 0x10(%rbx)
    movq 0x10(%rbx), %r10
    movq %r10, %rdx
    cmpq %r9, %r10
    jne 1f
    movq $-2, 0x18(%rbx)
    movq 0x18(%rbx), %rdx
    cmpq $-2, %rdx
1:  movq $n_mov64, %rsi
    call check_named

    # moffs: A3 / A1 with a 64-bit address.
    movl $0xcafef00d, %eax
    movabsl %eax, 0xfebf0020
    xorl %eax, %eax
    movabsl 0xfebf0020, %eax
    movl %eax, %edx
    cmpl $0xcafef00d, %eax
    movq $n_moffs, %rsi
    call check_named

    # movzx: byte and word.
    movb $0x80, 0x28(%rbx)
    movw $0x8001, 0x2a(%rbx)
    movq $-1, %rdx
    movzbl 0x28(%rbx), %edx
    cmpq $0x80, %rdx
    jne 1f
    movzwq 0x2a(%rbx), %rdx
    cmpq $0x8001, %rdx
1:  movq $n_movzx, %rsi
    call check_named

    # movsx: byte to 64, word to 32, dword to 64 (MOVSXD).
    movsbq 0x28(%rbx), %rdx
    cmpq $-0x80, %rdx
    jne 1f
    movq $-1, %rdx
    movswl 0x2a(%rbx), %edx
    movl $0xffff8001, %eax
    cmpq %rax, %rdx
    jne 1f
    movl $0x80000000, 0x2c(%rbx)
    movslq 0x2c(%rbx), %rdx
    movq $0xffffffff80000000, %rax
    cmpq %rax, %rdx
1:  movq $n_movsx, %rsi
    call check_named

    # alu-to-memory: 0xf0 | 0x0f = 0xff, & 0x3c = 0x3c, ^ 0x0f = 0x33, + 0x10 = 0x43,
    # - 3 = 0x40 (bytes, words, dwords and qwords).
    movq $0xf0, 0x30(%rbx)
    orq $0x0f, 0x30(%rbx)
    andl $0x3c, 0x30(%rbx)
    movb $0x0f, %cl
    xorb %cl, 0x30(%rbx)
    movw $0x10, %cx
    addw %cx, 0x30(%rbx)
    subq $3, 0x30(%rbx)
    movq 0x30(%rbx), %rdx
    cmpq $0x40, %rdx
    movq $n_alu_mem, %rsi
    call check_named

    # alu-from-memory: 0x100 + [0x40] = 0x140, - [0x40] = 0x100, | 0x40, & ..., ^ ...
    movq $0x100, %rdx
    addq 0x30(%rbx), %rdx
    cmpq $0x140, %rdx
    jne 1f
    subl 0x30(%rbx), %edx
    cmpq $0x100, %rdx
    jne 1f
    orb 0x30(%rbx), %dl
    andw 0x30(%rbx), %dx
    xorq 0x30(%rbx), %rdx
    testq %rdx, %rdx
1:  movq $n_alu_reg, %rsi
    call check_named

    # cmp-test-flags: CMP to and from memory, TEST with an immediate and a register.
    xorl %edx, %edx                # failures, one bit each
    movq $5, 0x38(%rbx)
    cmpq $5, 0x38(%rbx)
    jne 2f
    cmpl $6, 0x38(%rbx)            # 5 - 6: borrow, negative
    jae 2f
    jns 2f
    movq $7, %rcx
    cmpq 0x38(%rbx), %rcx          # 7 - 5
    jbe 2f
    movl $0x80000000, 0x38(%rbx)
    movl $0x7fffffff, %ecx
    cmpl %ecx, 0x38(%rbx)          # INT_MIN - INT_MAX overflows
    jno 2f
    testl $0x80000000, 0x38(%rbx)
    jz 2f
    jns 2f
    movb $0x01, %cl
    testb %cl, 0x38(%rbx)
    jnz 2f
    jmp 3f
2:  movl $1, %edx
3:  cmpl $0, %edx
    movq $n_flags, %rsi
    call check_named

    # xchg
    movabsq $0x1122334455667788, %rcx
    movq $0x55, 0x40(%rbx)
    xchgq %rcx, 0x40(%rbx)
    movq %rcx, %rdx
    cmpq $0x55, %rcx
    jne 1f
    movq 0x40(%rbx), %rdx
    movabsq $0x1122334455667788, %rax
    cmpq %rax, %rdx
1:  movq $n_xchg, %rsi
    call check_named

    # stos: REP STOSB of 16 bytes, then one STOSW.
    leaq 0x48(%rbx), %rdi
    movl $16, %ecx
    movb $0xa5, %al
    cld
    rep stosb
    movw $0x1234, %ax
    stosw
    movq %rdi, %rdx
    leaq 0x5a(%rbx), %rax
    cmpq %rax, %rdi
    jne 1f
    testl %ecx, %ecx
    jnz 1f
    movq 0x50(%rbx), %rdx
    movabsq $0xa5a5a5a5a5a5a5a5, %rax
    cmpq %rax, %rdx
    jne 1f
    movw 0x58(%rbx), %dx
    cmpw $0x1234, %dx
1:  movq $n_stos, %rsi
    call check_named

    # rep-movs-to-device: 4 qwords of RAM to the device.
    movq $pattern, %rsi
    movq $ram_src, %rdi
    movl $4, %ecx
    rep movsq                      # RAM to RAM (no exit)
    movq $ram_src, %rsi
    leaq 0x60(%rbx), %rdi
    movl $4, %ecx
    rep movsq
    xorl %edx, %edx
    xorl %ecx, %ecx
2:  movq 0x60(%rbx,%rcx,8), %rax
    cmpq pattern(,%rcx,8), %rax
    je 3f
    incl %edx
3:  incl %ecx
    cmpl $4, %ecx
    jb 2b
    cmpl $0, %edx
    movq $n_movs_to, %rsi
    call check_named

    # rep-movs-from-device: back into RAM, then one MOVSB without REP.
    leaq 0x60(%rbx), %rsi
    movq $ram_dst, %rdi
    movl $4, %ecx
    rep movsq
    movb $0x3c, 0x80(%rbx)
    leaq 0x80(%rbx), %rsi
    movsb
    xorl %edx, %edx
    xorl %ecx, %ecx
2:  movq ram_dst(,%rcx,8), %rax
    cmpq pattern(,%rcx,8), %rax
    je 3f
    incl %edx
3:  incl %ecx
    cmpl $4, %ecx
    jb 2b
    cmpb $0x3c, ram_dst + 32
    je 4f
    incl %edx
4:  cmpl $0, %edx
    movq $n_movs_from, %rsi
    call check_named

    # counter-and-log: between two reads of the counter, one write: it counts 2 (the first
    # read and the write); the log then holds the second read (offset 0x100, 8 bytes).
    movq 0x100(%rbx), %rcx
    movb $1, 0x90(%rbx)
    movq 0x100(%rbx), %rdx
    subq %rcx, %rdx
    cmpq $2, %rdx
    jne 1f
    movq 0x108(%rbx), %rdx
    cmpq $0x80100, %rdx
1:  movq $n_count, %rsi
    call check_named

    cmpl $0, fail_count
    jne finish64
    movq $msg_next, %rsi
    call puts64
    movdqu (%rbx), %xmm0           # not emulated: the VM stops here
    movl $1, %eax
    movq $n_unsupp, %rsi
    movq $d_cont, %rdi
    call report64
    jmp finish64

# check_named: ZF set = pass; RSI = name; RDX = the value shown on failure.
check_named:
    setne %al
    movzbl %al, %eax
    movq $d_val, %rdi
    jmp report64_val
# check: the ID check (its name fixed).
check:
    movq $n_id, %rsi
    jmp check_named
"#,
    options(att_syntax)
);

#[cfg(not(target_os = "none"))]
fn main() {}
