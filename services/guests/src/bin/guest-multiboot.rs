//! `guest-multiboot`: the demo guest, 32-bit protected mode only. It checks what the VMM
//! provides to a multiboot guest, one console line per check.
//!
//! Console on success (N = mem_upper in KiB from the multiboot info, 15360 with 16 MiB of RAM;
//! C = the checksum of the memory test, the same on every run):
//! ```text
//! multiboot: hello from guest-multiboot, mem_upper=N KiB
//! magic: ok
//! meminfo: ok
//! memory: checksum 0xC
//! memory: ok
//! cpuid-hv: ok
//! cpuid-vendor: ok
//! msr-apic-base: ok
//! msr-sysenter-cs: ok
//! msr-unknown-gp: ok
//! cmos-extmem: ok
//! port-unhandled: ok
//! guest-multiboot: hello through the print hypercall     <- written by the VMM (vmcall 1)
//! vmcall-print: ok
//! vmcall-nop: ok
//! vmcall-unknown: ok
//! hlt: ok
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
# The memory test: 4 MiB of dwords from 4 MiB, an LCG sequence (x = x * 1664525 + 1013904223).
    .set MEM_BASE, 0x400000
    .set MEM_DWORDS, 0x100000
    .set LCG_SEED, 0x2badcafe
# An MSR no CPU has: rdmsr must raise #GP(0).
    .set UNKNOWN_MSR, 0x12345678

    .section .data.guest, "aw"
    .balign 4
mem_upper:  .long 0                # KiB above 1 MiB (0 when the info has none)
vendor:     .skip 12               # CPUID 0x40000000 EBX, ECX, EDX
    .byte 0

    .section .rodata.guest, "a"
    .balign 4
vendor_expected: .ascii "UmbraUmbraUm"
hypercall_msg:  .ascii "guest-multiboot: hello through the print hypercall\n"
hypercall_msg_end:
msg_hello:  .asciz "multiboot: hello from guest-multiboot, mem_upper="
msg_kib:    .asciz " KiB\n"
msg_checksum: .asciz "memory: checksum "
name_magic: .asciz "magic"
name_meminfo: .asciz "meminfo"
name_memory: .asciz "memory"
name_cpuid_hv: .asciz "cpuid-hv"
name_cpuid_vendor: .asciz "cpuid-vendor"
name_apic: .asciz "msr-apic-base"
name_sysenter: .asciz "msr-sysenter-cs"
name_gp: .asciz "msr-unknown-gp"
name_cmos: .asciz "cmos-extmem"
name_port: .asciz "port-unhandled"
name_print: .asciz "vmcall-print"
name_nop: .asciz "vmcall-nop"
name_unknown: .asciz "vmcall-unknown"
name_hlt: .asciz "hlt"
det_magic: .asciz "eax was"
det_meminfo: .asciz "no mem_lower/mem_upper in the multiboot info (flag bit 0), flags ="
det_small: .asciz "RAM too small for the test (needs 8 MiB), mem_upper ="
det_memory: .asciz "read back differs, mismatching dwords:"
det_cpuid_hv: .asciz "leaf 1 ECX (want bit 31 set, bit 5 clear) ="
det_cpuid_vendor: .asciz "leaf 0x40000000 is not UmbraUmbraUm, EAX ="
det_apic: .asciz "want 0xfee00900, read"
det_sysenter: .asciz "wrote 0x00001238, read"
det_gp: .asciz "no #GP(0), #GPs taken and error code:"
det_cmos: .asciz "CMOS 0x17/0x18 disagree with mem_upper, CMOS ="
det_port: .asciz "want 0xff, read"
det_ud: .asciz "vmcall raised #UD (no hypervisor)"
det_nop: .asciz "want rax 0, got"
det_unknown: .asciz "want eax -1000 (-ENOSYS), got"

    .section .text.guest, "ax"
    .code32
    .globl guest_main
guest_main:
    # hello, with mem_upper when the info has it (flags bit 0)
    movl mb_info, %ebx
    movl (%ebx), %edx              # flags
    testl $1, %edx
    jz 1f
    movl 8(%ebx), %eax
    movl %eax, mem_upper
1:  movl $msg_hello, %esi
    call puts32
    movl mem_upper, %eax
    call putdec32
    movl $msg_kib, %esi
    call puts32

    # magic: EAX at entry was 0x2BADB002
    movl mb_magic, %edx
    xorl %eax, %eax
    cmpl $0x2badb002, %edx
    setne %al
    movl $name_magic, %esi
    movl $det_magic, %edi
    call report32_val

    # meminfo: flags bit 0 set and mem_upper nonzero
    movl mb_info, %ebx
    movl (%ebx), %edx
    xorl %eax, %eax
    cmpl $0, mem_upper
    jne 1f
    movl $1, %eax
1:  movl $name_meminfo, %esi
    movl $det_meminfo, %edi
    call report32_val

    call memory_test
    call cpuid_tests
    call msr_tests
    call cmos_test
    call port_test
    call vmcall_tests

    # hlt with interrupts enabled: no interrupt is injected yet, so the VMM resumes at the
    # next instruction (with IF clear it would stop the VM: nothing could ever wake it)
    sti
    hlt
    cli
    xorl %eax, %eax
    movl $name_hlt, %esi
    xorl %edi, %edi
    call report32
    ret                            # to finish32

# memory: fill MEM_BASE .. +4 MiB with the LCG while summing, read it back summing again and
# comparing every dword with the regenerated sequence.
memory_test:
    movl mem_upper, %edx
    cmpl $7 * 1024, %edx           # needs RAM up to 8 MiB (7 MiB above the first)
    jae 1f
    movl $1, %eax
    movl $name_memory, %esi
    movl $det_small, %edi
    call report32_val
    ret
1:  movl $MEM_BASE, %edi
    movl $MEM_DWORDS, %ecx
    movl $LCG_SEED, %eax
    xorl %ebx, %ebx                # sum of what was written
.Lmem_fill:
    imull $1664525, %eax, %eax
    addl $1013904223, %eax
    movl %eax, (%edi)
    addl %eax, %ebx
    addl $4, %edi
    decl %ecx
    jnz .Lmem_fill
    movl $MEM_BASE, %edi
    movl $MEM_DWORDS, %ecx
    movl $LCG_SEED, %eax
    xorl %edx, %edx                # sum of what is read
    xorl %ebp, %ebp                # mismatching dwords
.Lmem_verify:
    imull $1664525, %eax, %eax
    addl $1013904223, %eax
    movl (%edi), %esi
    addl %esi, %edx
    cmpl %eax, %esi
    je 1f
    incl %ebp
1:  addl $4, %edi
    decl %ecx
    jnz .Lmem_verify
    movl $msg_checksum, %esi
    call puts32
    movl %edx, %eax
    call puthex32
    movl $str_nl, %esi
    call puts32
    cmpl %ebx, %edx                # the two sums agree
    je 1f
    incl %ebp
1:  xorl %eax, %eax
    testl %ebp, %ebp
    setnz %al
    movl %ebp, %edx
    movl $name_memory, %esi
    movl $det_memory, %edi
    call report32_val
    ret

# cpuid-hv: leaf 1 ECX bit 31 (hypervisor present) set, bit 5 (VMX) clear.
# cpuid-vendor: leaf 0x40000000 EAX = 0x40000001, EBX ECX EDX = "UmbraUmbraUm".
cpuid_tests:
    movl $1, %eax
    xorl %ecx, %ecx
    cpuid
    movl %ecx, %edx
    andl $0x80000020, %ecx
    xorl %eax, %eax
    cmpl $0x80000000, %ecx
    setne %al
    movl $name_cpuid_hv, %esi
    movl $det_cpuid_hv, %edi
    call report32_val

    movl $0x40000000, %eax
    xorl %ecx, %ecx
    cpuid
    movl %ebx, vendor
    movl %ecx, vendor + 4
    movl %edx, vendor + 8
    movl %eax, %edx
    movl $vendor, %esi
    movl $vendor_expected, %edi
    movl $12, %ecx
    repe cmpsb
    setne %al
    movzbl %al, %eax
    cmpl $0x40000001, %edx
    je 1f
    movl $1, %eax
1:  movl $name_cpuid_vendor, %esi
    movl $det_cpuid_vendor, %edi
    call report32_val
    ret

# msr-apic-base: IA32_APIC_BASE (0x1b) reads 0xfee00900 (BSP, the local APIC globally
# enabled in xAPIC mode, as at reset).
# msr-sysenter-cs: IA32_SYSENTER_CS (0x174) reads back what was written.
# msr-unknown-gp: rdmsr of UNKNOWN_MSR raises #GP(0) (the handler skips the rdmsr).
msr_tests:
    movl $0x1b, %ecx
    rdmsr
    movl %eax, %ebx
    xorl %eax, %eax
    cmpl $0xfee00900, %ebx
    jne 1f
    testl %edx, %edx
    jz 2f
1:  movl $1, %eax
2:  movl %ebx, %edx
    movl $name_apic, %esi
    movl $det_apic, %edi
    call report32_val

    movl $0x174, %ecx
    movl $0x1238, %eax
    xorl %edx, %edx
    wrmsr
    xorl %eax, %eax
    rdmsr
    movl %eax, %ebx
    xorl %eax, %eax
    cmpl $0x1238, %ebx
    jne 1f
    testl %edx, %edx
    jz 2f
1:  movl $1, %eax
2:  movl %ebx, %edx
    movl $name_sysenter, %esi
    movl $det_sysenter, %edi
    call report32_val
    movl $0x174, %ecx              # back to 0
    xorl %eax, %eax
    xorl %edx, %edx
    wrmsr

    movl $0, gp_count
    movl $0xffff, gp_error         # no #GP: shows as 0x0000ffff
    movl $1, gp_expected
    movl $UNKNOWN_MSR, %ecx
    rdmsr                          # must raise #GP(0); the handler resumes after it
    movl $0, gp_expected
    movl gp_count, %edx
    shll $16, %edx
    movzwl gp_error, %eax
    orl %eax, %edx                 # failure detail: count << 16 | error code
    xorl %eax, %eax
    cmpl $0x00010000, %edx         # exactly one #GP, error code 0
    setne %al
    movl $name_gp, %esi
    movl $det_gp, %edi
    call report32_val
    ret

# cmos-extmem: CMOS registers 0x17 (low) and 0x18 (high) = extended memory in KiB above 1 MiB.
# Never zero; equal to mem_upper or up to 1 MiB more (a loader may keep the top of RAM out of
# mem_upper: QEMU's says 15232 with 16 MiB while its CMOS says 15360); a BIOS-style CMOS caps
# the value (at 0xfc00 or 0xffff), accepted when mem_upper is above the cap.
cmos_test:
    movb $0x18, %al
    outb %al, $0x70
    inb $0x71, %al
    movzbl %al, %edx
    shll $8, %edx
    movb $0x17, %al
    outb %al, $0x70
    inb $0x71, %al
    movb %al, %dl
    xorl %eax, %eax
    testl %edx, %edx
    jz .Lcmos_bad
    movl %edx, %ecx
    subl mem_upper, %ecx           # CMOS - mem_upper, unsigned: 0 .. 1024 is fine
    cmpl $1024, %ecx
    jbe .Lcmos_report
    cmpl $0xfc00, %edx             # capped value and more RAM than it can say
    jb .Lcmos_bad
    cmpl mem_upper, %edx
    jb .Lcmos_report
.Lcmos_bad:
    movl $1, %eax
.Lcmos_report:
    movl $name_cmos, %esi
    movl $det_cmos, %edi
    call report32_val
    ret

# port-unhandled: a read of a port no device claims (COM2's data register 0x2f8) gives 0xff.
port_test:
    movw $0x2f8, %dx
    inb %dx, %al
    movzbl %al, %edx
    xorl %eax, %eax
    cmpl $0xff, %edx
    setne %al
    movl $name_port, %esi
    movl $det_port, %edi
    call report32_val
    ret

# vmcall-print: hypercall PRINT prints hypercall_msg (RBX = address, RCX = length).
# vmcall-nop: hypercall NOP returns RAX = 0. vmcall-unknown: a VMCALL without Umbra's signature
# (EAX = 0x7777) returns -1000 (-ENOSYS) and the guest goes on.
vmcall_tests:
    movl $0, ud_vmcall_count
    movl ${hc_print}, %eax
    movl $hypercall_msg, %ebx
    movl $hypercall_msg_end - hypercall_msg, %ecx
    vmcall
    xorl %eax, %eax
    xorl %edi, %edi
    cmpl $0, ud_vmcall_count
    je 1f
    movl $1, %eax
    movl $det_ud, %edi
1:  movl $name_print, %esi
    call report32

    movl $0, ud_vmcall_count
    movl ${hc_nop}, %eax
    vmcall
    movl %eax, %edx
    movl $det_nop, %edi
    xorl %eax, %eax
    testl %edx, %edx
    setnz %al
    cmpl $0, ud_vmcall_count
    je 1f
    movl $1, %eax
    movl $det_ud, %edi
1:  movl $name_nop, %esi
    call report32_val

    movl $0, ud_vmcall_count
    movl $0x7777, %eax
    vmcall
    movl %eax, %edx
    movl $det_unknown, %edi
    xorl %eax, %eax
    cmpl $-1000, %edx
    setne %al
    cmpl $0, ud_vmcall_count
    je 1f
    movl $1, %eax
    movl $det_ud, %edi
1:  movl $name_unknown, %esi
    call report32_val
    ret
    .code64
"#,
    hc_print = const abi::hypercall::PRINT,
    hc_nop = const abi::hypercall::NOP,
    options(att_syntax)
);

#[cfg(not(target_os = "none"))]
fn main() {}
