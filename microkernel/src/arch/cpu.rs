//! CPU instructions that the `x86_64` crate leaves `unsafe` (port I/O, MSRs) or lacks (CPUID
//! wrappers, `str`), behind safe functions whose preconditions are stated here.

use core::arch::asm;
use x86_64::instructions::port::Port;

/// Writes a byte to an I/O port. Every port the kernel writes is a device it owns (COM1, the
/// emulators' debug/exit ports); ring 0 I/O cannot violate memory safety.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects the compiler must know about; the ports used are
    // devices owned by the kernel.
    unsafe { Port::new(port).write(value) }
}

/// Writes a 32-bit value to an I/O port (see [`outb`]).
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe { Port::new(port).write(value) }
}

/// Reads a byte from an I/O port (see [`outb`]).
pub fn inb(port: u16) -> u8 {
    // SAFETY: as for `outb`; reads of the ports used have no side effects beyond the device.
    unsafe { Port::new(port).read() }
}

/// CPUID with a sub-leaf; returns (eax, ebx, ecx, edx).
pub fn cpuid(leaf: u32, subleaf: u32) -> (u32, u32, u32, u32) {
    let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// Highest basic and extended CPUID leaves.
pub fn cpuid_max() -> (u32, u32) {
    (cpuid(0, 0).0, cpuid(0x8000_0000, 0).0)
}

/// Whether the CPU supports 1 GiB pages (CPUID.80000001H:EDX.Page1GB[bit 26]).
pub fn has_1g_pages() -> bool {
    cpuid_max().1 >= 0x8000_0001 && cpuid(0x8000_0001, 0).3 & (1 << 26) != 0
}

/// Whether the CPU supports the NX bit (CPUID.80000001H:EDX.NX[bit 20]).
pub fn has_nx() -> bool {
    cpuid_max().1 >= 0x8000_0001 && cpuid(0x8000_0001, 0).3 & (1 << 20) != 0
}

/// Whether the CPU has VMX (CPUID.1:ECX.VMX[bit 5]).
pub fn has_vmx() -> bool {
    cpuid(1, 0).2 & (1 << 5) != 0
}

/// The task register's selector.
pub fn task_register() -> u16 {
    let tr: u16;
    // SAFETY: `str` only reads the task register.
    unsafe { asm!("str {0:x}", out(reg) tr, options(nomem, nostack, preserves_flags)) };
    tr
}

/// Raises a breakpoint exception (`int3`); the trap handler counts it and returns.
pub fn breakpoint() {
    x86_64::instructions::interrupts::int3();
}

/// Stops this CPU for good: interrupts off, `hlt` forever.
pub fn halt_forever() -> ! {
    x86_64::instructions::interrupts::disable();
    loop {
        x86_64::instructions::hlt();
    }
}

/// The time-stamp counter (exit trace records; not serialised: the stamps measure paths of
/// hundreds of instructions or more).
#[inline(always)]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC reads a counter; CR4.TSD only restricts it in ring 3.
    unsafe { core::arch::x86_64::_rdtsc() }
}
