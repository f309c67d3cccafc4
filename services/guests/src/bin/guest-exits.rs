//! `guest-exits`: a multiboot guest (32-bit protected mode, paging off) that executes the
//! instructions a kernel may use which make a VM exit or must fault like hardware, and checks
//! each architectural result (issue 17, part `exits`). Its own #UD and #GP handlers (in its
//! IDT) record the vector, the error code, the saved EIP and EFLAGS, and resume after the
//! instruction; a fault must point at the instruction and carry EFLAGS.RF, as a fault
//! delivered by the CPU does.
//!
//! Console on success (each line ": ok"):
//! ```text
//! exits: hello from guest-exits
//! invd / wbinvd / pause         resume after the instruction, no fault
//! rdpmc-gp                      #GP(0) with RF (no performance counters are offered)
//! vmxon-ud                      #UD (VMX is hidden)
//! vmcall-foreign                EAX = 0x12345678 (not Umbra's signature): EAX = -1000, runs on
//! rdmsr-gp                      #GP(0) with RF for an MSR no CPU has
//! cr0-pg-without-pe-gp          MOV CR0 with PG set and PE clear: #GP(0) with RF
//! cr4-pcide-gp                  MOV CR4 with PCIDE outside long mode: #GP(0)
//! xsetbv-*                      with XSAVE in CPUID: x87 clear, ECX = 1, AVX without SSE,
//!                               a reserved bit: #GP(0) with RF; x87|SSE: no fault. Without
//!                               XSAVE: #UD.
//! rdtscp                        no fault if CPUID.80000001H:EDX.RDTSCP, else #UD
//! invpcid                       type 2 no fault and type 4 #GP(0) if CPUID.(7,0):EBX.INVPCID,
//!                               else #UD
//! monitor-mwait                 no fault if CPUID.1:ECX.MONITOR, else #UD (both)
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
    .set NO_FAULT, 0xff            # exc_vector when nothing was raised
    .set NO_ERROR, 0xffffffff      # exc_error of a fault without an error code
    .set RF, 0x10000
    .set UNKNOWN_MSR, 0x12345678

    .section .data.guest, "aw"
    .balign 16
exc_vector: .long 0
exc_error:  .long 0
exc_eip:    .long 0
exc_eflags: .long 0
exc_count:  .long 0
skip_len:   .long 0                # bytes the handler skips (the length of the instruction)
want_eip:   .long 0
vmxon_region: .quad 0
invpcid_desc: .quad 0, 0
monitor_line: .skip 64

    .section .rodata.guest, "a"
msg_hello:   .asciz "exits: hello from guest-exits\n"
name_invd:   .asciz "invd"
name_wbinvd: .asciz "wbinvd"
name_pause:  .asciz "pause"
name_rdpmc:  .asciz "rdpmc-gp"
name_vmxon:  .asciz "vmxon-ud"
name_vmcall: .asciz "vmcall-foreign"
name_rdmsr:  .asciz "rdmsr-gp"
name_cr0:    .asciz "cr0-pg-without-pe-gp"
name_cr4:    .asciz "cr4-pcide-gp"
name_xs_x87: .asciz "xsetbv-x87-clear-gp"
name_xs_ecx: .asciz "xsetbv-ecx-gp"
name_xs_avx: .asciz "xsetbv-avx-without-sse-gp"
name_xs_res: .asciz "xsetbv-reserved-gp"
name_xs_ok:  .asciz "xsetbv-x87-sse"
name_xs_ud:  .asciz "xsetbv-ud-without-xsave"
name_rdtscp: .asciz "rdtscp"
name_invpcid: .asciz "invpcid"
name_invpcid_gp: .asciz "invpcid-bad-type-gp"
name_monitor: .asciz "monitor"
name_mwait:  .asciz "mwait"
det_fault:   .asciz "want the fault; got (count << 28 | RF << 24 | vector << 16 | error & 0xffff, or eip wrong: bit 27)"
det_vmcall:  .asciz "want eax -1000, got"

    .section .text.guest, "ax"
    .code32
    .globl guest_main
guest_main:
    movl $msg_hello, %esi
    call puts32
    # Our own #UD and #GP handlers.
    movl $6, %eax
    movl $exits_ud, %edx
    call set_gate
    movl $13, %eax
    movl $exits_gp, %edx
    call set_gate

    # Three more of each always-exiting instruction, so that the VMM's exit summary (its
    # busiest reasons) lists them: the suite checks they reached it.
    movl $3, %edi
.Lburst:
    invd
    wbinvd
    xorl %ecx, %ecx
    movl $(2f - 1f), skip_len
1:  rdpmc
2:  movl $(2f - 1f), skip_len
1:  vmxon vmxon_region
2:  decl %edi
    jnz .Lburst

    movl $name_invd, %esi
    movl $NO_FAULT, %eax
    movl $NO_ERROR, %edx
    movl $(2f - 1f), skip_len
    movl $1f, want_eip
    call arm
1:  invd
2:  call check

    movl $name_wbinvd, %esi
    movl $NO_FAULT, %eax
    movl $(2f - 1f), skip_len
    movl $1f, want_eip
    call arm
1:  wbinvd
2:  call check

    movl $name_pause, %esi
    movl $NO_FAULT, %eax
    movl $(2f - 1f), skip_len
    call arm
1:  pause
2:  call check

    movl $name_rdpmc, %esi
    movl $13, %eax
    xorl %edx, %edx
    movl $(2f - 1f), skip_len
    movl $1f, want_eip
    xorl %ecx, %ecx
    call arm
1:  rdpmc
2:  call check

    movl $name_vmxon, %esi
    movl $6, %eax
    movl $NO_ERROR, %edx
    movl $(2f - 1f), skip_len
    movl $1f, want_eip
    call arm
1:  vmxon vmxon_region
2:  call check

    # A VMCALL without Umbra's signature: -ENOSYS, and the guest goes on.
    movl $0x12345678, %eax
    vmcall
    movl %eax, %edx
    xorl %eax, %eax
    cmpl $-1000, %edx
    setne %al
    movl $name_vmcall, %esi
    movl $det_vmcall, %edi
    call report32_val

    movl $name_rdmsr, %esi
    movl $13, %eax
    xorl %edx, %edx
    movl $(2f - 1f), skip_len
    movl $1f, want_eip
    movl $UNKNOWN_MSR, %ecx
    call arm
1:  rdmsr
2:  call check

    movl $name_cr0, %esi
    movl $13, %eax
    xorl %edx, %edx
    movl $(2f - 1f), skip_len
    movl $1f, want_eip
    movl $0x80000010, %ebx         # PG, ET; PE clear
    call arm
1:  movl %ebx, %cr0
2:  call check

    movl $name_cr4, %esi
    movl $13, %eax
    xorl %edx, %edx
    movl $(2f - 1f), skip_len
    movl $1f, want_eip
    movl %cr4, %ebx
    orl $0x20000, %ebx             # PCIDE
    call arm
1:  movl %ebx, %cr4
2:  call check

    call xsetbv_tests
    call rdtscp_test
    call invpcid_tests
    call monitor_tests
    ret                            # to finish32

# xsetbv: with CPUID.1:ECX.XSAVE (bit 26), CR4.OSXSAVE on, then the #GP cases and a good value.
xsetbv_tests:
    movl $1, %eax
    xorl %ecx, %ecx
    cpuid
    testl $(1 << 26), %ecx
    jnz 3f
    movl $name_xs_ud, %esi
    movl $6, %eax
    movl $NO_ERROR, %edx
    movl $(2f - 1f), skip_len
    movl $1f, want_eip
    xorl %ecx, %ecx
    call arm
1:  xsetbv
2:  call check
    ret
3:  movl %cr4, %eax
    orl $(1 << 18), %eax           # OSXSAVE
    movl %eax, %cr4
    movl $name_xs_x87, %esi
    movl $0, %ebx                  # EDX:EAX = 0: x87 clear
    xorl %edi, %edi
    xorl %ebp, %ebp                # ECX
    call xsetbv_gp
    movl $name_xs_ecx, %esi
    movl $1, %ebx
    movl $1, %ebp
    call xsetbv_gp
    movl $name_xs_avx, %esi
    movl $5, %ebx                  # x87 | AVX
    xorl %ebp, %ebp
    call xsetbv_gp
    movl $name_xs_res, %esi
    movl $1, %ebx
    movl $0x80000000, %edi         # bit 63
    call xsetbv_gp
    movl $name_xs_ok, %esi
    movl $NO_FAULT, %eax
    movl $(2f - 1f), skip_len
    movl $1f, want_eip
    movl $3, %ebx
    xorl %edi, %edi
    call arm
    movl %ebx, %eax
    movl %edi, %edx
    xorl %ecx, %ecx
1:  xsetbv
2:  movl $NO_FAULT, %eax
    call check
    ret

# xsetbv_gp: XSETBV with ECX = EBP, EDX:EAX = EDI:EBX must raise #GP(0) at the instruction.
xsetbv_gp:
    movl $13, %eax
    xorl %edx, %edx
    movl $(2f - 1f), skip_len
    movl $1f, want_eip
    call arm
    movl %ebx, %eax
    movl %edi, %edx
    movl %ebp, %ecx
1:  xsetbv
2:  movl $13, %eax                 # check's expectations again (XSETBV's inputs used them)
    xorl %edx, %edx
    call check
    ret

# rdtscp: no fault with CPUID.80000001H:EDX.RDTSCP (bit 27), #UD without.
rdtscp_test:
    movl $0x80000000, %eax
    cpuid
    xorl %edx, %edx
    cmpl $0x80000001, %eax
    jb 3f
    movl $0x80000001, %eax
    cpuid
3:  movl $NO_FAULT, %eax
    testl $(1 << 27), %edx
    jnz 4f
    movl $6, %eax
4:  movl $NO_ERROR, %edx
    movl $name_rdtscp, %esi
    movl $(2f - 1f), skip_len
    movl $1f, want_eip
    pushl %eax
    call arm
1:  rdtscp
2:  popl %eax
    movl $NO_ERROR, %edx
    call check
    ret

# invpcid: with CPUID.(7,0):EBX.INVPCID (bit 10): type 2 (all contexts) no fault, type 4
# (no such type) #GP(0); without it both #UD.
invpcid_tests:
    xorl %eax, %eax
    cpuid
    xorl %ebx, %ebx
    cmpl $7, %eax
    jb 3f
    movl $7, %eax
    xorl %ecx, %ecx
    cpuid
3:  testl $(1 << 10), %ebx
    jz 5f
    movl $name_invpcid, %esi
    movl $NO_FAULT, %eax
    movl $NO_ERROR, %edx
    movl $2, %ebx
    call invpcid_one
    movl $name_invpcid_gp, %esi
    movl $13, %eax
    xorl %edx, %edx
    movl $4, %ebx
    call invpcid_one
    ret
5:  movl $name_invpcid, %esi
    movl $6, %eax
    movl $NO_ERROR, %edx
    movl $2, %ebx
    call invpcid_one
    ret

# invpcid_one: INVPCID of type EBX with invpcid_desc; expects EAX/EDX as check does.
invpcid_one:
    movl $(2f - 1f), skip_len
    movl $1f, want_eip
    call arm
1:  invpcid invpcid_desc, %ebx
2:  call check
    ret

# monitor / mwait: no fault with CPUID.1:ECX.MONITOR (bit 3), #UD without.
monitor_tests:
    movl $1, %eax
    xorl %ecx, %ecx
    cpuid
    movl $NO_FAULT, %ebx
    testl $(1 << 3), %ecx
    jnz 3f
    movl $6, %ebx
3:  pushl %ebx
    movl $name_monitor, %esi
    movl %ebx, %eax
    movl $NO_ERROR, %edx
    movl $(2f - 1f), skip_len
    movl $1f, want_eip
    call arm
    movl $monitor_line, %eax
    xorl %ecx, %ecx
    xorl %edx, %edx
1:  monitor
2:  movl (%esp), %eax
    movl $NO_ERROR, %edx
    call check
    movl $name_mwait, %esi
    movl (%esp), %eax
    movl $(2f - 1f), skip_len
    movl $1f, want_eip
    call arm
    xorl %eax, %eax
    xorl %ecx, %ecx
1:  mwait
2:  popl %eax
    movl $NO_ERROR, %edx
    call check
    ret

# arm: clears the record before an instruction (preserves every register).
arm:
    movl $NO_FAULT, exc_vector
    movl $NO_ERROR, exc_error
    movl $0, exc_count
    movl $0, exc_eflags
    ret

# check: ESI = name; EAX = the vector wanted (NO_FAULT: none), EDX = the error code wanted
# (NO_ERROR: none); the fault must be at want_eip with RF set. Reports the line.
check:
    pushal
    movl exc_vector, %ebx
    movl exc_count, %ecx
    xorl %edi, %edi                # failure flag
    cmpl $NO_FAULT, %eax
    jne 1f
    cmpl $0, %ecx                  # no fault wanted: none taken
    setne %dl
    movzbl %dl, %edi
    jmp 2f
1:  cmpl $1, %ecx
    jne 3f
    cmpl %eax, %ebx
    jne 3f
    cmpl exc_error, %edx
    jne 3f
    testl $RF, exc_eflags
    jz 3f
    movl exc_eip, %ebx
    cmpl want_eip, %ebx
    jne 4f
    jmp 2f
4:  movl $1, %edi
    orl $(1 << 27), exc_count      # shows in the detail value
    jmp 2f
3:  movl $1, %edi
2:  # detail: count << 28 | RF << 24 | vector << 16 | error & 0xffff
    movl exc_count, %edx
    shll $28, %edx
    movl exc_eflags, %ebx
    andl $RF, %ebx
    shll $8, %ebx
    orl %ebx, %edx
    movl exc_vector, %ebx
    andl $0xff, %ebx
    shll $16, %ebx
    orl %ebx, %edx
    movl exc_error, %ebx
    andl $0xffff, %ebx
    orl %ebx, %edx
    movl %edi, %eax
    movl $det_fault, %edi
    call report32_val
    popal
    ret

# set_gate: IDT entry EAX -> handler EDX (interrupt gate, DPL 0, selector 0x08).
set_gate:
    pushl %edi
    leal idt32(, %eax, 8), %edi
    movl %edx, %eax
    andl $0x0000ffff, %eax
    orl $0x00080000, %eax
    movl %eax, (%edi)
    movl %edx, %eax
    andl $0xffff0000, %eax
    orl $0x00008e00, %eax
    movl %eax, 4(%edi)
    popl %edi
    ret

# The handlers: frame EIP, CS, EFLAGS (after the error code for #GP). Record, skip skip_len
# bytes, return.
exits_ud:
    movl $6, exc_vector
    movl $NO_ERROR, exc_error
    jmp 1f
exits_gp:
    movl $13, exc_vector
    popl exc_error
1:  incl exc_count
    pushl %eax
    movl 4(%esp), %eax
    movl %eax, exc_eip
    addl skip_len, %eax
    movl %eax, 4(%esp)
    movl 12(%esp), %eax
    movl %eax, exc_eflags
    popl %eax
    iretl
    .code64
"#,
    options(att_syntax)
);

#[cfg(not(target_os = "none"))]
fn main() {}
