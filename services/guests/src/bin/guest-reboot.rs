//! `guest-reboot`: a multiboot guest that resets itself and must start again from the top
//! each time (issue 12, a reset reboots the VM). Its boot count lives in CMOS memory (byte
//! [`COUNT`] = 0x50), which survives a reset as a PC's battery-backed CMOS does; every boot
//! reads it and checks that the machine really started again:
//! - `entry`: EAX held the multiboot magic at entry, EBX the same boot-information address as
//!   at the first boot, CR0 has paging off (PE and ET only, as the loader gives it) and CR4
//!   is 0, though the last boot left paging and CR4.OSFXSR on;
//! - `image`: a word of the image's data, changed by the last boot, is back to its value in
//!   the image (the image was loaded again);
//! - `warm-ram`: RAM the loader does not write keeps what the last boot left there (the
//!   boot count at 0x300000), as a warm reset does;
//! - `unpaged`: linear 0x400000 reads physical 0x400000, though the last boot's page tables
//!   mapped it to 0x500000 (on shadow paging: the MMU service does not run the new boot on the
//!   last boot's shadow pages);
//! - `devices`: the PIC's mask and the 8042's command byte are at their power-on values
//!   (0 and 0x45), though the last boot changed them.
//!
//! Then it counts the boot in CMOS, changes all of the above, turns 2-level paging on (linear
//! 0x400000 -> physical 0x500000, checked as `paging`) and resets through a different path
//! each boot: port 0x92 (boot 0), the keyboard controller's 0xFE (boot 1), the Reset Control
//! Register 0xCF9 (boot 2), a triple fault (boot 3). Boot 4 powers off through ACPI S5 (the
//! PM1a_CNT port and SLP_TYP the FADT and `_S5` give: `guest-acpi` checks those tables). So a
//! VM that restarts on reset (`max_resets` at least 4) is powered off after 4 resets; one
//! with `max_resets` = n < 4 stops at boot n's reset. A failed check, or a VM still running
//! after the reset or power-off write, ends the guest with `result: fail` (debug exit 0x11).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[path = "../rt/mod.rs"]
mod rt;

#[cfg(target_os = "none")]
core::arch::global_asm!(
    include_str!("../rt/data.s"),
    include_str!("../rt/rt32.s"),
    r#"
    .set COUNT, 0x50               # CMOS byte: boots so far
    .set INFO_AT_BOOT0, 0x51       # CMOS bytes 0x51..0x54: EBX at the first boot
    .set WARM, 0x300000            # RAM the loader never writes
    .set PHYS_A, 0x400000          # marker pages
    .set PHYS_B, 0x500000
    .set PD, 0x600000              # page directory and two page tables
    .set PT0, 0x601000
    .set PT1, 0x602000
    .set MARK_A, 0x41414141
    .set MARK_B, 0x42424242
    .set WARM_TAG, 0x57524d00      # "WRM" and the boot count
    .set IMAGE_WORD, 0x600dcafe
    .set PM1A_CNT, 0x604
    .set SLP_S5, (7 << 10) | (1 << 13)

    .section .data.guest, "aw"
    .balign 4
image_word: .long IMAGE_WORD
boot:       .long 0
    .word 0                        # pad: base 4-aligned
null_idt_desc:
    .word 0
    .long 0

    .section .rodata.guest, "a"
msg_boot:   .asciz "reboot: boot "
msg_nl:     .asciz "\n"
msg_r92:    .asciz "reboot: resetting through port 0x92\n"
msg_r64:    .asciz "reboot: resetting through the keyboard controller (0xFE to port 0x64)\n"
msg_rcf9:   .asciz "reboot: resetting through the Reset Control Register (0xCF9)\n"
msg_rtf:    .asciz "reboot: resetting by a triple fault\n"
msg_s5:     .asciz "reboot: every boot passed; powering off (S5 through PM1a_CNT)\n"
name_entry: .asciz "entry"
name_image: .asciz "image"
name_warm:  .asciz "warm-ram"
name_unpaged: .asciz "unpaged"
name_dev:   .asciz "devices"
name_paging: .asciz "paging"
name_still: .asciz "still-running"
det_entry:  .asciz "bit mask: 1 EAX not the multiboot magic, 2 EBX differs from the first boot's, 4 CR0 not PE|ET, 8 CR4 not 0; CR0"
det_image:  .asciz "the image's data word is not the image's; it is"
det_warm:   .asciz "the last boot's word is not in RAM; found"
det_unpaged: .asciz "linear 0x400000 does not read physical 0x400000; it reads"
det_dev:    .asciz "bit mask: 1 PIC mask not 0, 2 8042 command byte not 0x45; mask and command byte"
det_paging: .asciz "linear 0x400000 does not read physical 0x500000 with paging on; it reads"
det_still:  .asciz "the VM went on after the reset or power-off write"

    .section .text.guest, "ax"
    .code32

# cmos_read: AL = CMOS byte at index AL.
cmos_read:
    outb %al, $0x70
    inb $0x71, %al
    ret

# cmos_write: CMOS byte at index AL = AH.
cmos_write:
    outb %al, $0x70
    movb %ah, %al
    outb %al, $0x71
    ret

# kbc_wait: until the 8042's input buffer is empty.
kbc_wait:
1:  inb $0x64, %al
    testb $2, %al
    jnz 1b
    ret

    .globl guest_main
guest_main:
    movb $COUNT, %al
    call cmos_read
    movzbl %al, %eax
    movl %eax, boot
    movl $msg_boot, %esi
    call puts32
    call putdec32
    movl $msg_nl, %esi
    call puts32

    # entry: the magic, EBX as at the first boot, CR0 and CR4 at the loader's values.
    xorl %edx, %edx
    cmpl $0x2badb002, mb_magic
    je 1f
    orl $1, %edx
1:  cmpl $0, boot
    jne 2f
    movl mb_info, %ebx             # the first boot: keep EBX in CMOS
    movl $INFO_AT_BOOT0, %ecx
3:  movb %cl, %al
    movb %bl, %ah
    call cmos_write
    shrl $8, %ebx
    incl %ecx
    cmpl $INFO_AT_BOOT0 + 4, %ecx
    jb 3b
    jmp 4f
2:  xorl %ebx, %ebx
    movl $INFO_AT_BOOT0 + 3, %ecx
5:  shll $8, %ebx
    movb %cl, %al
    call cmos_read
    movb %al, %bl
    decl %ecx
    cmpl $INFO_AT_BOOT0, %ecx
    jae 5b
    cmpl mb_info, %ebx
    je 4f
    orl $2, %edx
4:  movl %cr0, %eax
    andl $0x8000003f, %eax         # PG and the low flags (NE aside: VMX may show it)
    andl $~0x20, %eax
    cmpl $0x11, %eax               # PE | ET
    je 6f
    orl $4, %edx
6:  movl %cr4, %eax
    testl %eax, %eax
    jz 7f
    orl $8, %edx
7:  movl %edx, %eax
    movl %cr0, %edx
    movl $name_entry, %esi
    movl $det_entry, %edi
    call report32_val

    # image: the data word is the image's again.
    xorl %eax, %eax
    movl image_word, %edx
    cmpl $IMAGE_WORD, %edx
    setne %al
    movl $name_image, %esi
    movl $det_image, %edi
    call report32_val

    # warm-ram and unpaged, from the second boot on.
    cmpl $0, boot
    je .Lfirst
    xorl %eax, %eax
    movl WARM, %edx
    movl boot, %ecx
    orl $WARM_TAG, %ecx
    cmpl %ecx, %edx
    setne %al
    movl $name_warm, %esi
    movl $det_warm, %edi
    call report32_val
    xorl %eax, %eax
    movl PHYS_A, %edx
    cmpl $MARK_A, %edx
    setne %al
    movl $name_unpaged, %esi
    movl $det_unpaged, %edi
    call report32_val
.Lfirst:

    # devices: the PIC's mask and the 8042's command byte at power-on.
    xorl %ecx, %ecx                # problem bits
    inb $0x21, %al
    movzbl %al, %edx
    testb %al, %al
    jz 1f
    orl $1, %ecx
1:  call kbc_wait
    movb $0x20, %al
    outb %al, $0x64
2:  inb $0x64, %al
    testb $1, %al                  # output buffer full
    jz 2b
    inb $0x60, %al
    shll $8, %edx
    movb %al, %dl                  # detail: mask << 8 | command byte
    cmpb $0x45, %al
    je 3f
    orl $2, %ecx
3:  movl %ecx, %eax
    movl $name_dev, %esi
    movl $det_dev, %edi
    call report32_val

    cmpl $0, fail_count
    jne .Lend

    # Boot 4: power off.
    cmpl $4, boot
    jb .Lnext
    movl $msg_s5, %esi
    call puts32
    movw $SLP_S5, %ax
    movw $PM1A_CNT, %dx
    outw %ax, %dx
    jmp .Lstill

.Lnext:
    # Count the boot, leave the word in warm RAM, change the image's word and the devices.
    movl boot, %ecx
    incl %ecx
    movb $COUNT, %al
    movb %cl, %ah
    call cmos_write
    orl $WARM_TAG, %ecx
    movl %ecx, WARM
    movl $0xdead, image_word
    movb $0xa5, %al
    outb %al, $0x21
    call kbc_wait
    movb $0x60, %al
    outb %al, $0x64
    call kbc_wait
    movb $0x61, %al
    outb %al, $0x60

    # Paging: PT0 maps 0-4 MiB to itself, PT1 maps 4-8 MiB to 5-9 MiB.
    movl $MARK_A, PHYS_A
    movl $MARK_B, PHYS_B
    movl $PT0, %edi
    movl $0x003, %eax              # present, writable
    movl $2048, %ecx
1:  cmpl $1024, %ecx
    jne 2f
    movl $PHYS_B | 0x003, %eax     # PT1[0]: the first page of 5 MiB
2:  movl %eax, (%edi)
    addl $4, %edi
    addl $0x1000, %eax
    decl %ecx
    jnz 1b
    movl $PD, %edi
    movl $1024, %ecx
    xorl %eax, %eax
    rep stosl
    movl $PT0 | 0x003, PD
    movl $PT1 | 0x003, PD + 4
    movl $PD, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x200, %eax               # OSFXSR
    movl %eax, %cr4
    movl %cr0, %eax
    orl $0x80000000, %eax
    movl %eax, %cr0
    jmp 3f
3:  xorl %eax, %eax
    movl PHYS_A, %edx              # linear 0x400000: physical 0x500000 now
    cmpl $MARK_B, %edx
    setne %al
    movl $name_paging, %esi
    movl $det_paging, %edi
    call report32_val
    testl %eax, %eax
    jnz .Lend

    movl boot, %eax
    cmpl $0, %eax
    je .Lr92
    cmpl $1, %eax
    je .Lr64
    cmpl $2, %eax
    je .Lrcf9
    movl $msg_rtf, %esi
    call puts32
    lidt null_idt_desc
    int3                           # #BP -> #GP -> #DF -> triple fault
    lidt idt32_desc
    jmp .Lstill
.Lr92:
    movl $msg_r92, %esi
    call puts32
    inb $0x92, %al
    orb $1, %al
    outb %al, $0x92
    jmp .Lstill
.Lr64:
    movl $msg_r64, %esi
    call puts32
    call kbc_wait
    movb $0xfe, %al
    outb %al, $0x64
    jmp .Lstill
.Lrcf9:
    movl $msg_rcf9, %esi
    call puts32
    movb $0x06, %al
    movw $0xcf9, %dx
    outb %al, %dx
.Lstill:
    movl $1, %eax
    movl $name_still, %esi
    movl $det_still, %edi
    call report32
.Lend:
    ret                            # to finish32
    .code64
"#,
    options(att_syntax)
);

#[cfg(not(target_os = "none"))]
fn main() {}
