//! The part of every guest that is Rust: a panic handler (never reached: the guests are
//! `global_asm!`) for the bare-metal target. Included by each bin with `#[path]`.

/// Never called (no Rust code in the guests panics); parks the vCPU if it ever is.
#[cfg(target_os = "none")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {
        core::hint::spin_loop();
    }
}
