//! `guest-acpi`: the PC platform as a kernel finds it at boot (issue 12, part `platform`), in
//! 32-bit protected mode without paging:
//! - `rsdp`: the RSDP found by scanning 0xE0000-0xFFFFF on 16-byte boundaries, both
//!   checksums right, revision 2;
//! - `rsdt`, `xsdt`: each table's signature, length and checksum, every entry's table
//!   checked too; the XSDT lists the same tables as the RSDT (64-bit entries, below 4 GiB);
//! - `tables`: a FADT (`FACP`) and a MADT (`APIC`) among them;
//! - `fadt`: the PM1a control block, the PM timer block (4 bytes: a 24-bit timer), the reset
//!   register (RESET_REG_SUP, in I/O space), X_DSDT = DSDT;
//! - `dsdt-s5`: the DSDT's checksum, and `_S5_` as a package whose first element (SLP_TYPa)
//!   is a byte constant;
//! - `mmap`: the multiboot memory map reserves every table (type 2);
//! - `madt`, `ioapic`, `irq0-override`, `lapic-count`: the local APIC address 0xFEE00000,
//!   the entries exactly fill the table, one IOAPIC at 0xFEC00000 with GSI base 0, ISA IRQ0
//!   overridden to GSI 2, as many enabled local APICs as fw_cfg's CPU count;
//! - `pm-timer`: the PM timer changes, forwards, within 24 bits;
//! - `fw-cfg`: signature `QEMU`, a CPU count, the RAM size equal to multiboot's;
//! - `pci`: mechanism #1: the host bridge at 00:00.0 (vendor 0x8086, device 0x1237 by a word
//!   read at 0xCFE, class 06/00 by dword and byte reads), 00:01.0 and 00:00.1 all ones,
//!   CONFIG_ADDRESS reads back.
//!
//! Then, if every check passed, the command line chooses the end: `reset=92` (port 0x92 bit
//! 0), `reset=64` (command 0xFE to the keyboard controller), `reset=cf9` (the FADT's reset
//! register and value), else power off: SLP_TYP from `_S5` with SLP_EN to PM1a_CNT. The VMM
//! must stop the VM there (a reset or a power-off result); if the guest still runs it prints
//! `still-running: FAILED` and exits through port 0xf4 with 0x11, as it does after a failed
//! check.
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
# The tables, in this order (the mmap check walks them as an array).
rsdp_addr:  .long 0
rsdt_addr:  .long 0
xsdt_addr:  .long 0
fadt_addr:  .long 0
madt_addr:  .long 0
dsdt_addr:  .long 0
pm1a_cnt:   .long 0
pm_tmr:     .long 0
reset_port: .long 0
reset_value: .long 0
slp_typ:    .long 0
lapics:     .long 0
ioapics:    .long 0
ioapic_addr: .long 0
ioapic_gsi: .long 0xffffffff
irq0_gsi:   .long 0xffffffff
fw_cpus:    .long 0
fw_buf:     .quad 0

    .section .rodata.guest, "a"
msg_hello:  .asciz "acpi: hello from guest-acpi\n"
msg_s5:     .asciz "acpi: every check passed; powering off (S5 through PM1a_CNT)\n"
msg_r92:    .asciz "acpi: every check passed; resetting through port 0x92\n"
msg_r64:    .asciz "acpi: every check passed; resetting through the keyboard controller (0xFE to port 0x64)\n"
msg_rcf9:   .asciz "acpi: every check passed; resetting through the FADT reset register\n"
word_r92:   .asciz "reset=92"
word_r64:   .asciz "reset=64"
word_rcf9:  .asciz "reset=cf9"
name_rsdp:  .asciz "rsdp"
name_rsdt:  .asciz "rsdt"
name_xsdt:  .asciz "xsdt"
name_tables: .asciz "tables"
name_fadt:  .asciz "fadt"
name_dsdt:  .asciz "dsdt-s5"
name_mmap:  .asciz "mmap"
name_madt:  .asciz "madt"
name_ioapic: .asciz "ioapic"
name_irq0:  .asciz "irq0-override"
name_lapics: .asciz "lapic-count"
name_pmtmr: .asciz "pm-timer"
name_fwcfg: .asciz "fw-cfg"
name_pci:   .asciz "pci"
name_still: .asciz "still-running"
det_rsdp:   .asciz "bit mask: 1 not found, 2 checksum, 4 extended checksum or length, 8 revision; at"
det_sdt:    .asciz "bit mask: 1 signature, 2 checksum, 4 length (times 16: an entry's table)"
det_xsdt:   .asciz "bit mask: 1 signature, 2 checksum, 4 length, 16 entry count, 32 an entry differs from the RSDT's, 64 above 4 GiB"
det_tables: .asciz "missing (bit mask: 1 FACP, 2 APIC)"
det_fadt:   .asciz "bit mask: 1 no PM1a_CNT, 2 no PM_TMR, 4 PM1_CNT_LEN, 8 PM_TMR_LEN, 16 no RESET_REG_SUP, 32 reset register not I/O, 64 X_DSDT differs"
det_dsdt:   .asciz "bit mask: 1 signature, 2 checksum, 4 length, 8 no _S5_, 16 not a package of byte constants"
det_mmap:   .asciz "tables not in reserved memory (bit mask: rsdp rsdt xsdt fadt madt dsdt)"
det_madt:   .asciz "bit mask: 1 local APIC address, 2 entry lengths"
det_ioapic: .asciz "bit mask: 1 count, 2 address, 4 GSI base; address"
det_irq0:   .asciz "IRQ0 goes to GSI"
det_lapics: .asciz "bit mask: 1 none, 2 differs from fw_cfg's CPU count; local APICs"
det_pmtmr:  .asciz "bit mask: 1 did not change, 2 above 24 bits, 4 went backwards; last value"
det_fwcfg:  .asciz "bit mask: 1 signature, 2 CPU count 0, 4 RAM size differs from multiboot's; RAM bytes"
det_pci:    .asciz "bit mask: 1 vendor/device, 2 word at 0xcfe, 4 class, 8 byte at 0xcff, 16 absent function not all ones, 32 CONFIG_ADDRESS"
det_still:  .asciz "the VM went on after the reset or power-off write"

    .section .text.guest, "ax"
    .code32

# sum8: EAX = the 8-bit sum of the ECX bytes at ESI.
sum8:
    pushl %esi
    pushl %ecx
    xorl %eax, %eax
1:  testl %ecx, %ecx
    jz 2f
    addb (%esi), %al
    incl %esi
    decl %ecx
    jmp 1b
2:  popl %ecx
    popl %esi
    ret

# sdt_check: ESI = table, EDX = its signature (0: any) -> EAX = problem bits (1 signature,
# 2 checksum, 4 length below 36 or above 64 KiB).
sdt_check:
    pushl %ebx
    pushl %ecx
    xorl %ebx, %ebx
    testl %edx, %edx
    jz 1f
    cmpl %edx, (%esi)
    je 1f
    orl $1, %ebx
1:  movl 4(%esi), %ecx
    cmpl $36, %ecx
    jb 2f
    cmpl $0x10000, %ecx
    ja 2f
    call sum8
    testb %al, %al
    jz 3f
    orl $2, %ebx
    jmp 3f
2:  orl $4, %ebx
3:  movl %ebx, %eax
    popl %ecx
    popl %ebx
    ret

# entry_table: ESI = a table the RSDT lists -> EAX = its problems (sdt_check); a FACP or
# APIC is remembered.
entry_table:
    xorl %edx, %edx
    call sdt_check
    cmpl $0x50434146, (%esi)       # "FACP"
    jne 1f
    movl %esi, fadt_addr
1:  cmpl $0x43495041, (%esi)       # "APIC"
    jne 2f
    movl %esi, madt_addr
2:  ret

# mmap_type: EAX = address -> EAX = the type of the multiboot memory-map entry holding it
# (0: none, or no map).
mmap_type:
    pushl %ebx
    pushl %ecx
    pushl %edx
    pushl %esi
    movl %eax, %edx
    xorl %eax, %eax
    movl mb_info, %ebx
    testl $0x40, (%ebx)
    jz 9f
    movl 48(%ebx), %esi
    movl 44(%ebx), %ecx
    addl %esi, %ecx
1:  cmpl %ecx, %esi
    jae 9f
    cmpl $0, 8(%esi)               # base above 4 GiB
    jne 2f
    cmpl 4(%esi), %edx
    jb 2f
    movl %edx, %ebx
    subl 4(%esi), %ebx             # offset into the entry
    cmpl $0, 16(%esi)              # length of 4 GiB or more
    jne 3f
    cmpl 12(%esi), %ebx
    jae 2f
3:  movl 20(%esi), %eax
    jmp 9f
2:  addl (%esi), %esi
    addl $4, %esi
    jmp 1b
9:  popl %esi
    popl %edx
    popl %ecx
    popl %ebx
    ret

# fwcfg_item: AX = selector -> the item's first 8 bytes in fw_buf.
fwcfg_item:
    pushl %eax
    pushl %ecx
    pushl %edx
    movw $0x510, %dx
    outw %ax, %dx
    movw $0x511, %dx
    xorl %ecx, %ecx
1:  inb %dx, %al
    movb %al, fw_buf(%ecx)
    incl %ecx
    cmpl $8, %ecx
    jb 1b
    popl %edx
    popl %ecx
    popl %eax
    ret

# pci_read: EAX = CONFIG_ADDRESS -> EAX = the dword at 0xCFC.
pci_read:
    pushl %edx
    movw $0xcf8, %dx
    outl %eax, %dx
    movw $0xcfc, %dx
    inl %dx, %eax
    popl %edx
    ret

# has_word: ESI = NUL-terminated text, EDI = NUL-terminated word -> EAX = 1 if the text
# holds the word.
has_word:
    pushl %ebx
    pushl %ecx
    pushl %esi
1:  xorl %ecx, %ecx
2:  movb (%edi,%ecx), %bl
    testb %bl, %bl
    jz 8f                          # the whole word matched
    cmpb (%esi,%ecx), %bl
    jne 3f
    incl %ecx
    jmp 2b
3:  cmpb $0, (%esi)
    je 7f
    incl %esi
    jmp 1b
7:  xorl %eax, %eax
    jmp 9f
8:  movl $1, %eax
9:  popl %esi
    popl %ecx
    popl %ebx
    ret

    .globl guest_main
guest_main:
    movl $msg_hello, %esi
    call puts32

    # ---- rsdp ----
    movl $0xe0000, %esi
1:  cmpl $0x20445352, (%esi)       # "RSD "
    jne 2f
    cmpl $0x20525450, 4(%esi)      # "PTR "
    je 3f
2:  addl $16, %esi
    cmpl $0x100000, %esi
    jb 1b
    xorl %esi, %esi
3:  movl %esi, rsdp_addr
    xorl %ebx, %ebx
    testl %esi, %esi
    jnz 4f
    movl $1, %ebx
    jmp 5f
4:  movl $20, %ecx
    call sum8
    testb %al, %al
    jz 6f
    orl $2, %ebx
6:  movl 20(%esi), %ecx
    cmpl $36, %ecx
    jb 7f
    call sum8
    testb %al, %al
    jz 8f
7:  orl $4, %ebx
8:  cmpb $2, 15(%esi)
    jae 5f
    orl $8, %ebx
5:  movl %ebx, %eax
    movl rsdp_addr, %edx
    movl $name_rsdp, %esi
    movl $det_rsdp, %edi
    call report32_val
    cmpl $0, rsdp_addr
    jne 1f
    ret                            # nothing else to find: result: fail
1:
    # ---- rsdt: the table, then every table it lists ----
    movl rsdp_addr, %esi
    movl 16(%esi), %esi
    movl %esi, rsdt_addr
    movl $0x54445352, %edx         # "RSDT"
    call sdt_check
    movl %eax, %ebx
    testl %eax, %eax
    jnz 9f
    movl 4(%esi), %ecx
    subl $36, %ecx
    shrl $2, %ecx
    leal 36(%esi), %edi
1:  testl %ecx, %ecx
    jz 9f
    pushl %esi
    movl (%edi), %esi
    call entry_table
    popl %esi
    shll $4, %eax
    orl %eax, %ebx
    addl $4, %edi
    decl %ecx
    jmp 1b
9:  movl %ebx, %eax
    movl %ebx, %edx
    movl $name_rsdt, %esi
    movl $det_sdt, %edi
    call report32_val

    # ---- xsdt: the same tables in 64-bit entries ----
    movl rsdp_addr, %esi
    xorl %ebx, %ebx
    cmpl $0, 28(%esi)
    je 1f
    orl $64, %ebx
1:  movl 24(%esi), %esi
    movl %esi, xsdt_addr
    movl $0x54445358, %edx         # "XSDT"
    call sdt_check
    orl %eax, %ebx
    testl %eax, %eax
    jnz 9f
    movl 4(%esi), %ecx
    subl $36, %ecx
    shrl $3, %ecx
    movl rsdt_addr, %edi
    movl 4(%edi), %eax
    subl $36, %eax
    shrl $2, %eax
    cmpl %eax, %ecx
    je 2f
    orl $16, %ebx
    jmp 9f
2:  addl $36, %edi
    addl $36, %esi
3:  testl %ecx, %ecx
    jz 9f
    movl (%esi), %eax
    cmpl (%edi), %eax
    jne 4f
    cmpl $0, 4(%esi)
    je 5f
4:  orl $32, %ebx
5:  addl $8, %esi
    addl $4, %edi
    decl %ecx
    jmp 3b
9:  movl %ebx, %eax
    movl %ebx, %edx
    movl $name_xsdt, %esi
    movl $det_xsdt, %edi
    call report32_val

    # ---- tables: a FADT and a MADT ----
    xorl %eax, %eax
    cmpl $0, fadt_addr
    jne 1f
    orl $1, %eax
1:  cmpl $0, madt_addr
    jne 2f
    orl $2, %eax
2:  movl $name_tables, %esi
    movl $det_tables, %edi
    call report32
    testl %eax, %eax
    jz 1f
    ret
1:
    # ---- fadt ----
    movl fadt_addr, %esi
    xorl %ebx, %ebx
    movl 64(%esi), %eax
    movl %eax, pm1a_cnt
    testl %eax, %eax
    jnz 1f
    orl $1, %ebx
1:  movl 76(%esi), %eax
    movl %eax, pm_tmr
    testl %eax, %eax
    jnz 1f
    orl $2, %ebx
1:  cmpb $2, 89(%esi)
    jae 1f
    orl $4, %ebx
1:  cmpb $4, 91(%esi)
    je 1f
    orl $8, %ebx
1:  testl $0x400, 112(%esi)
    jnz 1f
    orl $16, %ebx
1:  cmpb $1, 116(%esi)
    je 1f
    orl $32, %ebx
1:  movl 120(%esi), %eax
    movl %eax, reset_port
    movzbl 128(%esi), %eax
    movl %eax, reset_value
    movl 40(%esi), %eax
    movl %eax, dsdt_addr
    cmpl 140(%esi), %eax
    jne 2f
    cmpl $0, 144(%esi)
    je 1f
2:  orl $64, %ebx
1:  movl %ebx, %eax
    movl %ebx, %edx
    movl $name_fadt, %esi
    movl $det_fadt, %edi
    call report32_val

    # ---- dsdt-s5 ----
    movl dsdt_addr, %esi
    movl $0x54445344, %edx         # "DSDT"
    call sdt_check
    movl %eax, %ebx
    testl $4, %eax
    jnz 9f
    movl 4(%esi), %ecx
    subl $9, %ecx
    leal (%esi,%ecx), %edx         # the last place "_S5_" + 5 bytes can start
    leal 36(%esi), %edi
1:  cmpl %edx, %edi
    ja 3f
    cmpl $0x5f35535f, (%edi)       # "_S5_"
    je 2f
    incl %edi
    jmp 1b
3:  orl $8, %ebx
    jmp 9f
2:  cmpb $0x12, 4(%edi)            # PackageOp
    jne 6f
    movzbl 7(%edi), %eax           # SLP_TYPa: BytePrefix n, ZeroOp or OneOp
    cmpl $0x0a, %eax
    jne 4f
    movzbl 8(%edi), %eax
    jmp 5f
4:  cmpl $1, %eax
    jbe 5f
6:  orl $16, %ebx
    jmp 9f
5:  movl %eax, slp_typ
9:  movl %ebx, %eax
    movl %ebx, %edx
    movl $name_dsdt, %esi
    movl $det_dsdt, %edi
    call report32_val

    # ---- mmap: every table in reserved memory ----
    xorl %ebx, %ebx
    xorl %ecx, %ecx
1:  movl rsdp_addr(,%ecx,4), %eax
    call mmap_type
    cmpl $2, %eax
    je 2f
    btsl %ecx, %ebx
2:  incl %ecx
    cmpl $6, %ecx
    jb 1b
    movl %ebx, %eax
    movl %ebx, %edx
    movl $name_mmap, %esi
    movl $det_mmap, %edi
    call report32_val

    # ---- madt: walk the entries ----
    movl madt_addr, %esi
    xorl %ebx, %ebx
    cmpl $0xfee00000, 36(%esi)
    je 1f
    orl $1, %ebx
1:  movl 4(%esi), %edx
    addl %esi, %edx                # the table's end
    leal 44(%esi), %edi
1:  cmpl %edx, %edi
    jae 9f
    movzbl 1(%edi), %ecx
    cmpl $2, %ecx
    jb 8f
    movb (%edi), %al
    cmpb $0, %al
    jne 2f
    testb $1, 4(%edi)              # enabled
    jz 7f
    incl lapics
    jmp 7f
2:  cmpb $1, %al
    jne 3f
    incl ioapics
    movl 4(%edi), %eax
    movl %eax, ioapic_addr
    movl 8(%edi), %eax
    movl %eax, ioapic_gsi
    jmp 7f
3:  cmpb $2, %al
    jne 7f
    cmpb $0, 3(%edi)               # source: ISA IRQ0
    jne 7f
    movl 4(%edi), %eax
    movl %eax, irq0_gsi
7:  addl %ecx, %edi
    jmp 1b
8:  movl %edx, %edi                # a length below 2: stop the walk
    orl $2, %ebx
9:  cmpl %edx, %edi
    je 1f
    orl $2, %ebx
1:  movl %ebx, %eax
    movl %ebx, %edx
    movl $name_madt, %esi
    movl $det_madt, %edi
    call report32_val

    xorl %eax, %eax
    cmpl $1, ioapics
    je 1f
    orl $1, %eax
1:  cmpl $0xfec00000, ioapic_addr
    je 1f
    orl $2, %eax
1:  cmpl $0, ioapic_gsi
    je 1f
    orl $4, %eax
1:  movl ioapic_addr, %edx
    movl $name_ioapic, %esi
    movl $det_ioapic, %edi
    call report32_val

    xorl %eax, %eax
    movl irq0_gsi, %edx
    cmpl $2, %edx
    setne %al
    movl $name_irq0, %esi
    movl $det_irq0, %edi
    call report32_val

    # ---- fw-cfg ----
    xorl %ebx, %ebx
    movw $0x0000, %ax              # signature
    call fwcfg_item
    cmpl $0x554d4551, fw_buf       # "QEMU"
    je 1f
    orl $1, %ebx
1:  movw $0x0005, %ax              # FW_CFG_NB_CPUS
    call fwcfg_item
    movzwl fw_buf, %eax
    movl %eax, fw_cpus
    testl %eax, %eax
    jnz 1f
    orl $2, %ebx
1:  movw $0x0003, %ax              # FW_CFG_RAM_SIZE
    call fwcfg_item
    movl mb_info, %esi
    movl 8(%esi), %eax             # mem_upper (KiB above 1 MiB)
    addl $1024, %eax
    shll $10, %eax
    cmpl fw_buf, %eax
    jne 2f
    cmpl $0, fw_buf + 4
    je 1f
2:  orl $4, %ebx
1:  movl %ebx, %eax
    movl fw_buf, %edx
    movl $name_fwcfg, %esi
    movl $det_fwcfg, %edi
    call report32_val

    xorl %eax, %eax
    movl lapics, %edx
    testl %edx, %edx
    jnz 1f
    orl $1, %eax
1:  cmpl fw_cpus, %edx
    je 1f
    orl $2, %eax
1:  movl $name_lapics, %esi
    movl $det_lapics, %edi
    call report32_val

    # ---- pm-timer: read until it changes ----
    movl pm_tmr, %edx
    inl %dx, %eax
    movl %eax, %ebx
    movl $1000000, %ecx
1:  inl %dx, %eax
    cmpl %ebx, %eax
    jne 2f
    decl %ecx
    jnz 1b
2:  movl %eax, %edx                # the last value
    xorl %eax, %eax
    cmpl %ebx, %edx
    jne 1f
    orl $1, %eax
1:  movl %edx, %ecx
    orl %ebx, %ecx
    testl $0xff000000, %ecx
    jz 1f
    orl $2, %eax
1:  movl %edx, %ecx
    subl %ebx, %ecx
    testl $0x800000, %ecx          # (last - first) mod 2^24 below 2^23: forwards
    jz 1f
    orl $4, %eax
1:  movl $name_pmtmr, %esi
    movl $det_pmtmr, %edi
    call report32_val

    # ---- pci ----
    xorl %ebx, %ebx
    movl $0x80000000, %eax         # 00:00.0, register 0
    call pci_read
    cmpl $0x12378086, %eax
    je 1f
    orl $1, %ebx
1:  movw $0xcfe, %dx
    inw %dx, %ax
    cmpw $0x1237, %ax
    je 1f
    orl $2, %ebx
1:  movl $0x80000008, %eax         # revision and class
    call pci_read
    shrl $16, %eax
    cmpl $0x0600, %eax
    je 1f
    orl $4, %ebx
1:  movw $0xcff, %dx
    inb %dx, %al
    cmpb $0x06, %al
    je 1f
    orl $8, %ebx
1:  movl $0x80000800, %eax         # 00:01.0
    call pci_read
    cmpl $0xffffffff, %eax
    je 1f
    orl $16, %ebx
1:  movl $0x80000100, %eax         # 00:00.1
    call pci_read
    cmpl $0xffffffff, %eax
    je 1f
    orl $16, %ebx
1:  movw $0xcf8, %dx
    inl %dx, %eax
    cmpl $0x80000100, %eax
    je 1f
    orl $32, %ebx
1:  movl %ebx, %eax
    movl %ebx, %edx
    movl $name_pci, %esi
    movl $det_pci, %edi
    call report32_val

    # ---- the end the command line asks for, if everything passed ----
    cmpl $0, fail_count
    je 1f
    ret
1:  movl mb_info, %ebx
    testl $4, (%ebx)
    jz .Lpower_off
    movl 16(%ebx), %esi
    movl $word_r92, %edi
    call has_word
    testl %eax, %eax
    jnz .Lreset_92
    movl $word_r64, %edi
    call has_word
    testl %eax, %eax
    jnz .Lreset_64
    movl $word_rcf9, %edi
    call has_word
    testl %eax, %eax
    jnz .Lreset_cf9
.Lpower_off:
    movl $msg_s5, %esi
    call puts32
    movl slp_typ, %eax
    shll $10, %eax
    orl $0x2000, %eax              # SLP_EN
    movl pm1a_cnt, %edx
    outw %ax, %dx
    jmp .Lstill_running
.Lreset_92:
    movl $msg_r92, %esi
    call puts32
    inb $0x92, %al
    andb $0xfe, %al
    outb %al, $0x92
    orb $1, %al
    outb %al, $0x92
    jmp .Lstill_running
.Lreset_64:
    movl $msg_r64, %esi
    call puts32
    movl $100000, %ecx
1:  inb $0x64, %al
    testb $2, %al                  # input buffer full: wait
    jz 2f
    decl %ecx
    jnz 1b
2:  movb $0xfe, %al
    outb %al, $0x64
    jmp .Lstill_running
.Lreset_cf9:
    movl $msg_rcf9, %esi
    call puts32
    movl reset_port, %edx
    movl reset_value, %eax
    outb %al, %dx
.Lstill_running:
    movl $1, %eax
    movl $name_still, %esi
    movl $det_still, %edi
    call report32
    ret                            # to finish32: result: fail, exit 0x11
"#,
    options(att_syntax)
);

#[cfg(not(target_os = "none"))]
fn main() {}
