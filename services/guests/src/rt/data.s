# Data shared by the 32-bit (rt32.s) and 64-bit (rt64.s) runtimes of the test guests.
# AT&T syntax. Every guest includes this file exactly once. (No curly braces in these files:
# they are format-string templates of global_asm!.)

    .section .data.rt, "aw"
    .balign 4
    .globl fail_count, ud_vmcall_count, gp_expected, gp_count, gp_error, show_val
fail_count:       .long 0     # number of failed checks (report32/report64)
ud_vmcall_count:  .long 0     # #UD raised by a vmcall (no hypervisor, e.g. plain QEMU): skipped
gp_expected:      .long 0     # set just before an rdmsr/wrmsr that must raise #GP
gp_count:         .long 0     # expected #GPs taken (the 2-byte instruction was skipped)
gp_error:         .long 0     # error code of the last expected #GP
show_val:         .long 0     # report: also print the value after the detail string

    .section .rodata.rt, "a"
    .globl hexdigits, str_ok, str_failed, str_space, str_nl, str_hex_prefix
    .globl str_result_pass, str_result_fail, str_exc, str_exc_rip, str_exc_err
hexdigits:       .ascii "0123456789abcdef"
str_ok:          .asciz ": ok\n"
str_failed:      .asciz ": FAILED"
str_space:       .asciz " "
str_nl:          .asciz "\n"
str_hex_prefix:  .asciz "0x"
str_result_pass: .asciz "result: pass\n"
str_result_fail: .asciz "result: fail\n"
str_exc:         .asciz "exception: FAILED unexpected vector "
str_exc_rip:     .asciz " at ip "
str_exc_err:     .asciz " error code "

# One stack for the whole guest (32-bit and then 64-bit code use the same one).
    .section .bss.stack, "aw", @nobits
    .balign 16
    .globl stack_bottom, stack_top
stack_bottom:
    .skip 16384
stack_top:
