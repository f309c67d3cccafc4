//! `guest-random`: a hostile multiboot guest for the fuzzer (scenario `fuzz-vm`). Its command
//! line is `guest-random <seed in hex> [t]` (the VMM puts the image's name first); from the seed (xorshift32) it
//!
//! 1. fills a 4 KiB page with random bytes and random registers, and
//! 2. with `t`: fills four pages with random page-table entries (random flag bits, addresses
//!    inside the tables, inside RAM and anywhere), sometimes makes the first entries an
//!    identity map of the first 2/4 MiB, then sets a random CR4 (PSE, PAE, PGE, SMEP, SMAP),
//!    EFER (LME, NXE), CR3 (the tables or a random value) and CR0.PG (and WP), and touches
//!    random addresses through those tables,
//!
//! then jumps into the random page. Every exception vector goes to one stub that writes 0x13
//! to the isa-debug-exit port (reported as exit code 0x27); the random code may of course
//! break that too. There is no "pass": every run must simply end in a clean VM result
//! (debug exit, halt, triple fault, an unhandled exit, a stop, the run's time limit), never a
//! hang or a fault of the kernel or a service.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[path = "../rt/mod.rs"]
mod rt;

#[cfg(target_os = "none")]
core::arch::global_asm!(
    include_str!("../rt/data.s"),
    include_str!("../rt/rt32.s"),
    r#"
    .section .data.guest, "aw"
    .balign 4
rng_state:  .long 0x9e3779b9

    .section .bss.guest, "aw", @nobits
    .balign 4096
rnd_code:
    .skip 4096
rnd_tables:
    .skip 4 * 4096

    .section .text.guest, "ax"
    .code32

# rand32: EAX = the next xorshift32 value (EDX preserved).
rand32:
    pushl %edx
    movl rng_state, %eax
    movl %eax, %edx
    shll $13, %edx
    xorl %edx, %eax
    movl %eax, %edx
    shrl $17, %edx
    xorl %edx, %eax
    movl %eax, %edx
    shll $5, %edx
    xorl %edx, %eax
    movl %eax, rng_state
    popl %edx
    ret

# Every exception: debug exit 0x13 at once (no console output: runs stay short).
rnd_exc:
    movb $0x13, %al
    outb %al, $0xf4
    cli
    hlt
    jmp rnd_exc

    .globl guest_main
guest_main:
    # The 32 gates of the runtime's IDT all point at rnd_exc.
    movl $idt32, %edi
    movl $32, %ecx
.Lgates:
    movl $rnd_exc, %eax
    andl $0x0000ffff, %eax
    orl $0x00080000, %eax
    movl %eax, (%edi)
    movl $rnd_exc, %eax
    andl $0xffff0000, %eax
    orl $0x00008e00, %eax
    movl %eax, 4(%edi)
    addl $8, %edi
    decl %ecx
    jnz .Lgates

    # The seed: hex digits at the start of the multiboot command line (info flag bit 2),
    # after its first word, the image's file name (as a multiboot loader gives it).
    xorl %ebx, %ebx                # seed
    xorl %ebp, %ebp                # 1: tables mode
    movl mb_info, %esi
    testl $4, (%esi)
    jz .Lseeded
    movl 16(%esi), %esi
.Lname:
    movzbl (%esi), %eax
    testl %eax, %eax
    jz .Lseeded
    incl %esi
    cmpb $' ', %al
    jne .Lname
.Lhex:
    movzbl (%esi), %eax
    incl %esi
    cmpb $'0', %al
    jb .Lafter_hex
    cmpb $'9', %al
    jbe .Ldigit
    orb $0x20, %al
    cmpb $'a', %al
    jb .Lafter_hex
    cmpb $'f', %al
    ja .Lafter_hex
    subb $('a' - 10 - '0'), %al
.Ldigit:
    subb $'0', %al
    shll $4, %ebx
    orl %eax, %ebx
    jmp .Lhex
.Lafter_hex:
    cmpb $' ', %al
    jne .Lseeded
    cmpb $'t', (%esi)
    jne .Lseeded
    movl $1, %ebp
.Lseeded:
    testl %ebx, %ebx
    jz 1f
    movl %ebx, rng_state
1:
    # The random code page.
    movl $rnd_code, %edi
    movl $1024, %ecx
.Lfill_code:
    call rand32
    movl %eax, (%edi)
    addl $4, %edi
    decl %ecx
    jnz .Lfill_code
    testl %ebp, %ebp
    jz .Ljump

    # Random page tables: each dword an entry into the tables, into RAM (4 MiB), anything,
    # or not present.
    movl $rnd_tables, %edi
    movl $4096, %ecx
.Lfill_tables:
    call rand32
    movl %eax, %edx
    call rand32
    andl $3, %edx
    jz .Linto_tables
    cmpl $1, %edx
    je .Linto_ram
    cmpl $2, %edx
    je .Lstore_entry
    andl $0xfffffffe, %eax         # not present
    jmp .Lstore_entry
.Linto_tables:
    andl $0x3fff, %eax
    addl $rnd_tables, %eax
    jmp .Lstore_entry
.Linto_ram:
    andl $0x3fffff, %eax
.Lstore_entry:
    movl %eax, (%edi)
    addl $4, %edi
    decl %ecx
    jnz .Lfill_tables

    # Paging mode bits: CR4 PSE (4), PAE (5), PGE (7), SMEP (20), SMAP (21) at random.
    call rand32
    movl %eax, %esi                # the mode draw
    andl $0x3000b0, %eax
    movl %eax, %edx
    movl %cr4, %eax
    andl $~0x3000b0, %eax
    orl %edx, %eax
    movl %eax, %cr4
    # EFER.LME (8) and NXE (11) at random.
    movl %esi, %eax
    shrl $8, %eax
    andl $0x900, %eax
    movl %eax, %edx
    movl $0xc0000080, %ecx
    pushl %edx
    rdmsr
    popl %ebx
    andl $~0x900, %eax
    orl %ebx, %eax
    wrmsr
    # Half the time an identity map of the first 2 or 4 MiB in the first entries, for the
    # mode just set: 2-level PDE 0 (4 MiB), PAE PDPTE 0 -> PD (2 MiB), 4-level PML4E 0 ->
    # PDPTE 0 -> PDE 0 (2 MiB).
    testl $0x40000000, %esi
    jz .Lroot
    movl $(0x83 | 0x4), rnd_tables
    movl $0, rnd_tables + 4
    movl %cr4, %eax
    testl $0x20, %eax              # PAE
    jz .Lroot
    movl $(rnd_tables + 0x1000 + 0x1), rnd_tables
    movl $(0x83 | 0x4), rnd_tables + 0x1000
    movl $0, rnd_tables + 0x1004
    testl $0x100, %esi             # LME drawn
    jz .Lroot
    movl $(rnd_tables + 0x1000 + 0x7), rnd_tables
    movl $(rnd_tables + 0x2000 + 0x7), rnd_tables + 0x1000
    movl $(0x83 | 0x4), rnd_tables + 0x2000
    movl $0, rnd_tables + 0x2004
.Lroot:
    # CR3: the tables (mostly) or a random value.
    movl $rnd_tables, %eax
    testl $0x80000000, %esi
    jz 1f
    testl $0x1, %esi
    jz 1f
    call rand32
1:
    movl %eax, %cr3
    # CR0.PG, and WP (16) at random. In long mode without PAE this is a #GP: fine.
    movl %cr0, %eax
    orl $0x80000000, %eax
    testl $0x2, %esi
    jz 1f
    orl $0x10000, %eax
1:
    movl %eax, %cr0
    # Eight random loads and stores through the tables (below 4 MiB half the time).
    movl $8, %ecx
.Ltouch:
    call rand32
    movl %eax, %edi
    call rand32
    testl $1, %eax
    jz 1f
    andl $0x3fffff, %edi
1:
    testl $2, %eax
    jz 2f
    movl %eax, (%edi)
    jmp 3f
2:
    movl (%edi), %edx
3:
    decl %ecx
    jnz .Ltouch

.Ljump:
    # Random registers, then the random page.
    call rand32
    movl %eax, %ebx
    call rand32
    movl %eax, %ecx
    call rand32
    movl %eax, %edx
    call rand32
    movl %eax, %esi
    call rand32
    movl %eax, %edi
    call rand32
    movl %eax, %ebp
    call rand32
    jmp rnd_code
    .code64
"#,
    options(att_syntax)
);

#[cfg(not(target_os = "none"))]
fn main() {}
