//! The debug-exit port (QEMU's `isa-debug-exit`): a write of `v` to port 0xf4 ends the VM
//! with the reported code `(v << 1) | 1`, so a guest can never report 0.

/// The port.
pub const PORT: u16 = abi::QEMU_DEBUG_EXIT_PORT;

/// The exit code reported for a write of `v`.
pub fn code(v: u32) -> u64 {
    abi::qemu_debug_exit_status(v)
}

#[cfg(test)]
mod tests {
    #[test]
    fn codes_like_qemu() {
        assert_eq!(super::code(0x10), 0x21);
        assert_eq!(super::code(0), 1);
        assert_eq!(super::code(u32::MAX), 0x1_ffff_ffff);
    }
}
