//! `guest-uart-rtc`: drives COM1 and the CMOS RTC as a kernel does (issue 12, part D).
//! 32-bit protected mode, paging off, interrupts off (IRQ 4 and IRQ 8 are not used here).
//!
//! UART (the loopback checks print nothing while MCR.LOOP is set: the console would go to the
//! receiver; their results are printed afterwards):
//! - `uart-scratch`: SCR holds 0x5a, then 0xa5.
//! - `uart-divisor`: with LCR.DLAB, DLL/DLM take 0x0c/0x00 (9600 baud) and read back, LCR
//!   reads 0x83; without DLAB, offset 1 is IER again (0). 115200 baud is restored.
//! - `uart-fifo`: FCR 0xc7 (enable, clear both, trigger 14): IIR reads 0xc1 (FIFOs enabled,
//!   no interrupt).
//! - `uart-loopback`: MCR 0x1b (DTR, RTS, OUT2, LOOP): MSR reads 0xb0 (CTS, DSR, DCD follow);
//!   OUT1 set gives RI (0xf0), cleared again gives 0xb4 (TERI, the trailing edge); the eleven
//!   bytes of "Umbra-16550" written to THR come back from RBR in order with LSR 0x61 before
//!   (data ready, THR empty, idle) and 0x60 after.
//! - `uart-overrun`: seventeen bytes into the 16-byte FIFO: LSR 0x63 (OE), then 0x61 (OE
//!   cleared by the read), the first sixteen bytes read back.
//! - `uart-iir`: IER.ERBFI with one byte below the trigger: IIR 0xcc (character timeout);
//!   empty: 0xc1; IER.ETBEI set with THR empty: 0xc2, cleared by that read (0xc1 next).
//!
//! RTC:
//! - `rtc-valid`: after UIP clears, B is 0x02 (24-hour BCD), D is 0x80, and seconds, minutes,
//!   hours, weekday, day, month, year and century are BCD within their ranges; the date is
//!   printed as `rtc: date 0xCCYYMMDD time 0x00HHMMSS`.
//! - `rtc-advances`: the time read again (each read after UIP clears) moves forward by 1 to 10
//!   seconds (a while later: when the seconds first change).
//! - `rtc-periodic`: at 1024 Hz (A 0x26) register C shows PF without IRQF while B.PIE is
//!   clear, and PF with IRQF once PIE is set.
//! - `rtc-binary`: with SET held the clock stands; seconds, minutes and hours read in BCD and
//!   in binary (B.DM) are the same numbers.
//! - `rtc-set`: under SET the fields take 1999-12-31 23:59:59 and read back; after SET is
//!   cleared and the next update-ended flag (C.UF), the clock reads 2000-01-01 00:00:00 with
//!   century 0x20.
//!
//! Console ends with `result: pass`, then exit 0x10 through port 0xf4 (0x11 after a failure).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[path = "../rt/mod.rs"]
mod rt;

#[cfg(target_os = "none")]
core::arch::global_asm!(
    include_str!("../rt/data.s"),
    include_str!("../rt/rt32.s"),
    r#"
    .set COM1, 0x3f8
    .set SPINS, 20000000           # bound of every wait loop (a failure, not a hang)

    .section .data.guest, "aw"
    .balign 4
# Results of the loopback checks: EAX (0 = ok) and EDX (detail) each.
res_loop:   .long 0, 0
res_over:   .long 0, 0
res_iir:    .long 0, 0
got:        .skip 32
sod0:       .long 0

    .section .rodata.guest, "a"
msg_hello:  .asciz "uart-rtc: hello from guest-uart-rtc\n"
pattern:    .ascii "Umbra-16550"
    .set PATTERN_LEN, 11
name_scr:   .asciz "uart-scratch"
name_div:   .asciz "uart-divisor"
name_fifo:  .asciz "uart-fifo"
name_loop:  .asciz "uart-loopback"
name_over:  .asciz "uart-overrun"
name_iir:   .asciz "uart-iir"
name_valid: .asciz "rtc-valid"
name_adv:   .asciz "rtc-advances"
name_per:   .asciz "rtc-periodic"
name_bin:   .asciz "rtc-binary"
name_set:   .asciz "rtc-set"
det_scr:    .asciz "scratch read back (first, second):"
det_div:    .asciz "DLL | DLM << 8 | LCR << 16 | IER << 24:"
det_fifo:   .asciz "IIR:"
det_loop:   .asciz "failed steps (bit 0 MSR, 1 RI, 2 TERI, 3 LSR before, 4 bytes, 5 LSR after), LSR/MSR:"
det_over:   .asciz "failed steps (bit 0 OE, 1 OE cleared, 2 bytes, 3 empty), LSR:"
det_iir:    .asciz "failed steps (bit 0 timeout, 1 none, 2 THRE, 3 THRE cleared), IIR:"
det_valid:  .asciz "bad fields (bit: 0 s, 1 min, 2 h, 3 wday, 4 day, 5 month, 6 year, 7 century, 8 B, 9 D, 10 UIP stuck), value:"
det_adv:    .asciz "seconds moved (or 0xffffffff: never changed):"
det_per:    .asciz "failed steps (bit 0 PF without PIE, 1 IRQF without PIE, 2 PF|IRQF with PIE), C:"
det_bin:    .asciz "BCD and binary differ (bit 0 s, 1 min, 2 h), BCD h:m:s:"
det_set:    .asciz "failed (bit 0 held, 1 no UF, 2 new date), date read:"
str_date:   .asciz "rtc: date "
str_time:   .asciz " time "

    .section .text.guest, "ax"
    .code32

# uart_in: EDX = register offset -> AL.  uart_out: EDX = offset, AL = value.
uart_in:
    pushl %edx
    addl $COM1, %edx
    inb %dx, %al
    popl %edx
    ret
uart_out:
    pushl %edx
    addl $COM1, %edx
    outb %al, %dx
    popl %edx
    ret

# uart_tx: AL to THR once LSR.THRE is set (loopback-safe: no console use).
uart_tx:
    pushl %eax
    pushl %edx
    movl $COM1 + 5, %edx
1:  inb %dx, %al
    testb $0x20, %al
    jz 1b
    movl 4(%esp), %eax
    movl $COM1, %edx
    outb %al, %dx
    popl %edx
    popl %eax
    ret

# cmos_in: AL = index -> AL = value.  cmos_out: AL = index, AH = value.
cmos_in:
    outb %al, $0x70
    inb $0x71, %al
    ret
cmos_out:
    outb %al, $0x70
    movb %ah, %al
    outb %al, $0x71
    ret

# bcd_bad: AL = value, CL = highest valid value (binary), CH = lowest -> EAX = 0 when AL is
# BCD and within CH..=CL, else 1.
bcd_bad:
    pushl %edx
    movzbl %al, %edx
    call bcd2bin
    cmpl $0xffffffff, %eax
    je 1f
    cmpb %cl, %al
    ja 1f
    cmpb %ch, %al
    jb 1f
    xorl %eax, %eax
    popl %edx
    ret
1:  movl $1, %eax
    popl %edx
    ret

# bcd2bin: DL = BCD -> EAX = binary, or 0xffffffff when a digit is above 9.
bcd2bin:
    pushl %edx
    movzbl %dl, %eax
    andl $0x0f, %eax
    cmpl $9, %eax
    ja 1f
    shrb $4, %dl
    cmpb $9, %dl
    ja 1f
    movzbl %dl, %edx
    imull $10, %edx
    addl %edx, %eax
    popl %edx
    ret
1:  movl $0xffffffff, %eax
    popl %edx
    ret

# wait_uip: waits for register A's UIP to be clear -> EAX = 0, or 1 after SPINS reads.
wait_uip:
    pushl %ecx
    movl $SPINS, %ecx
1:  movb $0x0a, %al
    call cmos_in
    testb $0x80, %al
    jz 2f
    decl %ecx
    jnz 1b
    movl $1, %eax
    popl %ecx
    ret
2:  xorl %eax, %eax
    popl %ecx
    ret

# rtc_sod: the time as seconds of the day (after UIP clears) -> EAX.
rtc_sod:
    pushl %ebx
    pushl %edx
    call wait_uip
    movb $0x04, %al
    call cmos_in
    movb %al, %dl
    call bcd2bin
    imull $3600, %eax, %ebx
    movb $0x02, %al
    call cmos_in
    movb %al, %dl
    call bcd2bin
    imull $60, %eax
    addl %eax, %ebx
    movb $0x00, %al
    call cmos_in
    movb %al, %dl
    call bcd2bin
    addl %ebx, %eax
    popl %edx
    popl %ebx
    ret

# wait_c: clears register C, then poll_c.
wait_c:
    pushl %eax
    movb $0x0c, %al
    call cmos_in
    popl %eax
# poll_c: reads register C until a bit of AH is set -> EAX = that C (0 after SPINS reads).
poll_c:
    pushl %ecx
    pushl %ebx
    movb %ah, %bl
    movl $SPINS, %ecx
1:  movb $0x0c, %al
    call cmos_in
    testb %bl, %al
    jnz 2f
    decl %ecx
    jnz 1b
    xorl %eax, %eax
2:  movzbl %al, %eax
    popl %ebx
    popl %ecx
    ret

    .globl guest_main
guest_main:
    movl $msg_hello, %esi
    call puts32

    # uart-scratch
    movl $7, %edx
    movb $0x5a, %al
    call uart_out
    call uart_in
    movb %al, %bl
    movb $0xa5, %al
    call uart_out
    call uart_in
    movb %al, %bh
    movzwl %bx, %edx
    movl %edx, %eax
    xorl $0xa55a, %eax
    movl $name_scr, %esi
    movl $det_scr, %edi
    call report32_val

    # uart-divisor
    movl $3, %edx
    movb $0x83, %al
    call uart_out
    xorl %edx, %edx
    movb $0x0c, %al
    call uart_out
    incl %edx
    movb $0x00, %al
    call uart_out
    xorl %edx, %edx
    call uart_in
    movb %al, %bl                  # DLL
    incl %edx
    call uart_in
    movb %al, %bh                  # DLM
    movl $3, %edx
    call uart_in
    shll $16, %eax
    andl $0xff0000, %eax
    movzwl %bx, %ebx
    orl %eax, %ebx
    movb $0x03, %al
    call uart_out
    movl $1, %edx
    call uart_in
    movzbl %al, %eax
    shll $24, %eax
    orl %eax, %ebx                 # IER (DLAB clear)
    movl $3, %edx                  # back to 115200 baud
    movb $0x83, %al
    call uart_out
    xorl %edx, %edx
    movb $0x01, %al
    call uart_out
    movl $3, %edx
    movb $0x03, %al
    call uart_out
    movl %ebx, %edx
    movl %ebx, %eax
    xorl $0x0083000c, %eax
    movl $name_div, %esi
    movl $det_div, %edi
    call report32_val

    # uart-fifo
    movl $2, %edx
    movb $0xc7, %al
    call uart_out
    call uart_in
    movzbl %al, %edx
    movl %edx, %eax
    xorl $0xc1, %eax
    movl $name_fifo, %esi
    movl $det_fifo, %edi
    call report32_val

    # ---- loopback: no console output until MCR.LOOP is cleared ----
    # uart-loopback
    xorl %ebx, %ebx                # failed steps
    movl $4, %edx
    movb $0x1b, %al
    call uart_out
    movl $6, %edx
    call uart_in
    movzbl %al, %edi               # detail: MSR in bits 15:8, LSR in 7:0
    shll $8, %edi
    cmpb $0xb0, %al
    je 1f
    orl $1, %ebx
1:  movl $4, %edx
    movb $0x1f, %al                # OUT1 -> RI
    call uart_out
    movl $6, %edx
    call uart_in
    cmpb $0xf0, %al
    je 1f
    orl $2, %ebx
1:  movl $4, %edx
    movb $0x1b, %al                # RI falls -> TERI
    call uart_out
    movl $6, %edx
    call uart_in
    cmpb $0xb4, %al
    je 1f
    orl $4, %ebx
1:  xorl %ecx, %ecx
2:  movb pattern(%ecx), %al
    call uart_tx
    incl %ecx
    cmpl $PATTERN_LEN, %ecx
    jne 2b
    movl $5, %edx
    call uart_in
    movb %al, %cl
    orl %ecx, %edi
    andl $0xffff, %edi
    cmpb $0x61, %al
    je 1f
    orl $8, %ebx
1:  xorl %ecx, %ecx
    xorl %edx, %edx
2:  call uart_in
    cmpb pattern(%ecx), %al
    je 3f
    orl $16, %ebx
3:  incl %ecx
    cmpl $PATTERN_LEN, %ecx
    jne 2b
    movl $5, %edx
    call uart_in
    cmpb $0x60, %al
    je 1f
    orl $32, %ebx
1:  movl %ebx, res_loop
    movl %edi, res_loop + 4

    # uart-overrun: 17 bytes 0..16 into the FIFO
    xorl %ebx, %ebx
    xorl %ecx, %ecx
2:  movb %cl, %al
    call uart_tx
    incl %ecx
    cmpl $17, %ecx
    jne 2b
    movl $5, %edx
    call uart_in
    movzbl %al, %edi
    cmpb $0x63, %al
    je 1f
    orl $1, %ebx
1:  call uart_in
    cmpb $0x61, %al
    je 1f
    orl $2, %ebx
1:  xorl %ecx, %ecx
    xorl %edx, %edx
2:  call uart_in
    cmpb %cl, %al
    je 3f
    orl $4, %ebx
3:  incl %ecx
    cmpl $16, %ecx
    jne 2b
    movl $5, %edx
    call uart_in
    cmpb $0x60, %al
    je 1f
    orl $8, %ebx
1:  movl %ebx, res_over
    movl %edi, res_over + 4

    # uart-iir
    xorl %ebx, %ebx
    xorl %edi, %edi
    movl $1, %edx
    movb $0x01, %al                # ERBFI
    call uart_out
    movb $0x42, %al
    call uart_tx
    movl $2, %edx
    call uart_in
    movb %al, %cl
    shll $8, %edi
    movb %cl, %al
    orl %eax, %edi
    andl $0xff, %edi
    cmpb $0xcc, %cl
    je 1f
    orl $1, %ebx
1:  xorl %edx, %edx
    call uart_in                   # drain the byte
    movl $2, %edx
    call uart_in
    cmpb $0xc1, %al
    je 1f
    orl $2, %ebx
1:  movl $1, %edx
    movb $0x03, %al                # ERBFI | ETBEI with THR empty
    call uart_out
    movl $2, %edx
    call uart_in
    movzbl %al, %ecx
    shll $8, %ecx
    orl %ecx, %edi
    cmpb $0xc2, %al
    je 1f
    orl $4, %ebx
1:  call uart_in
    cmpb $0xc1, %al
    je 1f
    orl $8, %ebx
1:  movl $1, %edx
    xorl %eax, %eax
    call uart_out                  # IER 0
    movl %ebx, res_iir
    movl %edi, res_iir + 4

    # Out of loopback: DTR, RTS, OUT2 (as kernels leave it).
    movl $4, %edx
    movb $0x0b, %al
    call uart_out
    # ---- console again ----
    movl res_loop, %eax
    movl res_loop + 4, %edx
    movl $name_loop, %esi
    movl $det_loop, %edi
    call report32_val
    movl res_over, %eax
    movl res_over + 4, %edx
    movl $name_over, %esi
    movl $det_over, %edi
    call report32_val
    movl res_iir, %eax
    movl res_iir + 4, %edx
    movl $name_iir, %esi
    movl $det_iir, %edi
    call report32_val

    call rtc_checks
    ret

rtc_checks:
    # rtc-valid
    xorl %ebx, %ebx                # bad fields
    xorl %edi, %edi                # the first bad value
    call wait_uip
    testl %eax, %eax
    jz 1f
    orl $0x400, %ebx
1:
    .macro FIELD index, lo, hi, bit
    movb $\index, %al
    call cmos_in
    movb $\lo, %ch
    movb $\hi, %cl
    movzbl %al, %edx
    call bcd_bad
    testl %eax, %eax
    jz 9f
    orl $(1 << \bit), %ebx
    testl %edi, %edi
    jnz 9f
    movl %edx, %edi
9:
    .endm
    FIELD 0x00, 0, 59, 0
    FIELD 0x02, 0, 59, 1
    FIELD 0x04, 0, 23, 2
    FIELD 0x06, 1, 7, 3
    FIELD 0x07, 1, 31, 4
    FIELD 0x08, 1, 12, 5
    FIELD 0x09, 0, 99, 6
    FIELD 0x32, 19, 99, 7
    movb $0x0b, %al
    call cmos_in
    cmpb $0x02, %al
    je 1f
    orl $0x100, %ebx
1:  movb $0x0d, %al
    call cmos_in
    cmpb $0x80, %al
    je 1f
    orl $0x200, %ebx
1:  movl %edi, %edx
    movl %ebx, %eax
    movl $name_valid, %esi
    movl $det_valid, %edi
    call report32_val
    # rtc: date 0xCCYYMMDD time 0x00HHMMSS
    movl $str_date, %esi
    call puts32
    movb $0x32, %al
    call cmos_in
    movb %al, %bh
    movb $0x09, %al
    call cmos_in
    movb %al, %bl
    shll $16, %ebx
    movb $0x08, %al
    call cmos_in
    movb %al, %bh
    movb $0x07, %al
    call cmos_in
    movb %al, %bl
    movl %ebx, %eax
    call puthex32
    movl $str_time, %esi
    call puts32
    xorl %ebx, %ebx
    movb $0x04, %al
    call cmos_in
    movb %al, %bl
    shll $16, %ebx
    movb $0x02, %al
    call cmos_in
    movb %al, %bh
    movb $0x00, %al
    call cmos_in
    movb %al, %bl
    movl %ebx, %eax
    call puthex32
    movl $str_nl, %esi
    call puts32

    # rtc-advances
    call rtc_sod
    movl %eax, sod0
    movl $SPINS, %ecx
2:  call rtc_sod
    cmpl sod0, %eax
    jne 3f
    decl %ecx
    jnz 2b
    movl $0xffffffff, %edx
    jmp 4f
3:  subl sod0, %eax
    addl $86400, %eax
    xorl %edx, %edx
    movl $86400, %ebx
    divl %ebx
    # EDX = seconds moved, mod a day
4:  xorl %eax, %eax
    cmpl $1, %edx
    jb 5f
    cmpl $10, %edx
    jbe 6f
5:  movl $1, %eax
6:  movl $name_adv, %esi
    movl $det_adv, %edi
    call report32_val

    # rtc-periodic
    xorl %ebx, %ebx
    movw $0x260a, %ax              # A = 0x26: 1024 Hz
    call cmos_out
    movb $0x40, %ah
    call wait_c
    movl %eax, %edi
    testb $0x40, %al
    jnz 1f
    orl $1, %ebx
1:  testb $0x80, %al
    jz 1f
    orl $2, %ebx
1:  movw $0x420b, %ax              # B = PIE | 24-hour
    call cmos_out
    movb $0x40, %ah
    call wait_c
    shll $8, %edi
    orl %eax, %edi
    andb $0xc0, %al
    cmpb $0xc0, %al
    je 1f
    orl $4, %ebx
1:  movw $0x020b, %ax              # B = 24-hour
    call cmos_out
    movl %edi, %edx
    movl %ebx, %eax
    movl $name_per, %esi
    movl $det_per, %edi
    call report32_val

    # rtc-binary: SET holds the clock; BCD then binary reads of s, min, h.
    movw $0x820b, %ax
    call cmos_out
    xorl %ebx, %ebx
    xorl %edi, %edi
    .macro SAME index, bit
    movb $0x0b, %al
    movb $0x82, %ah
    call cmos_out
    movb $\index, %al
    call cmos_in
    shll $8, %edi
    movb %al, %dl
    movb %al, %cl
    orl %ecx, %edi
    andl $0xffffff, %edi
    call bcd2bin
    movl %eax, %ecx
    movw $0x860b, %ax              # SET | DM binary | 24-hour
    call cmos_out
    movb $\index, %al
    call cmos_in
    movzbl %al, %eax
    cmpl %eax, %ecx
    je 9f
    orl $(1 << \bit), %ebx
9:
    .endm
    xorl %ecx, %ecx
    SAME 0x04, 2
    xorl %ecx, %ecx
    SAME 0x02, 1
    xorl %ecx, %ecx
    SAME 0x00, 0
    movw $0x820b, %ax
    call cmos_out
    movl %edi, %edx
    movl %ebx, %eax
    movl $name_bin, %esi
    movl $det_bin, %edi
    call report32_val

    # rtc-set: 1999-12-31 23:59:59 under SET (still set from rtc-binary)
    xorl %ebx, %ebx
    movw $0x5900, %ax
    call cmos_out
    movw $0x5902, %ax
    call cmos_out
    movw $0x2304, %ax
    call cmos_out
    movw $0x3107, %ax
    call cmos_out
    movw $0x1208, %ax
    call cmos_out
    movw $0x9909, %ax
    call cmos_out
    movw $0x1932, %ax
    call cmos_out
    movb $0x00, %al
    call cmos_in
    cmpb $0x59, %al
    jne 1f
    movb $0x32, %al
    call cmos_in
    cmpb $0x19, %al
    je 2f
1:  orl $1, %ebx
2:  movb $0x0c, %al                # clear C while no update can happen
    call cmos_in
    movw $0x020b, %ax              # SET cleared: the clock runs
    call cmos_out
    movb $0x10, %ah                # UF
    call poll_c
    testl %eax, %eax
    jnz 1f
    orl $2, %ebx
1:  xorl %edi, %edi                # century year month day hour min s, compared to 20 00 01 01 00 00 00
    movb $0x32, %al
    call cmos_in
    cmpb $0x20, %al
    jne 8f
    movb $0x09, %al
    call cmos_in
    cmpb $0x00, %al
    jne 8f
    movb $0x08, %al
    call cmos_in
    cmpb $0x01, %al
    jne 8f
    movb $0x07, %al
    call cmos_in
    cmpb $0x01, %al
    jne 8f
    movb $0x04, %al
    call cmos_in
    cmpb $0x00, %al
    jne 8f
    movb $0x02, %al
    call cmos_in
    cmpb $0x00, %al
    jne 8f
    movb $0x00, %al
    call cmos_in
    cmpb $0x00, %al
    je 9f
8:  orl $4, %ebx
9:  movb $0x09, %al                # detail: YYMMDD read now
    call cmos_in
    movzbl %al, %edi
    shll $8, %edi
    movb $0x08, %al
    call cmos_in
    movb %al, %cl
    movzbl %cl, %ecx
    orl %ecx, %edi
    shll $8, %edi
    movb $0x07, %al
    call cmos_in
    movzbl %al, %ecx
    orl %ecx, %edi
    movl %edi, %edx
    movl %ebx, %eax
    movl $name_set, %esi
    movl $det_set, %edi
    call report32_val
    ret
"#,
    options(att_syntax)
);

#[cfg(not(target_os = "none"))]
fn main() {}
