//! The runtime of a service: its entry point (`_start`, made by [`entry!`](crate::entry)),
//! what happens when `main` returns, and the panic handler (panic → `Panic` syscall → the
//! kernel stops the task and sends a fault notice to its supervisor).
//!
//! A service declares its main function once, at the crate root:
//!
//! ```ignore
//! #![cfg_attr(target_os = "none", no_std, no_main)]
//!
//! userlib::entry!(service_main);
//!
//! fn service_main(arg: u64) {
//!     userlib::println!("hello (arg {arg})");
//! }
//! ```
//!
//! For `x86_64-unknown-none` the macro emits `_start`: the kernel has set the stack (the top
//! of the first thread's stack, [`abi::ipc::layout::STACK_TOP`]) and put the task's start
//! argument in `rdi`; `_start` aligns the stack, clears the frame pointer and calls
//! `service_main(arg)`; when it returns the task exits with code 0. On the host the macro
//! emits a trivial `fn main() {}` instead, so the service crate builds, tests and lints with
//! the rest of the workspace: do not write another `main`.

/// Runs the service's main function, then ends the task with code 0. Called by the `_start`
/// that [`entry!`](crate::entry) emits.
#[doc(hidden)]
pub fn run(arg: u64, main: fn(u64)) -> ! {
    main(arg);
    crate::sys::task_exit(0)
}

/// Declares the service's main function, `fn(arg: u64)`; see the [module docs](self).
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[cfg(target_os = "none")]
        extern "C" fn __userlib_entry(arg: u64) -> ! {
            let main: fn(u64) = $main;
            $crate::rt::run(arg, main)
        }

        #[cfg(target_os = "none")]
        ::core::arch::global_asm!(
            ".pushsection .text._start,\"ax\",@progbits",
            ".globl _start",
            ".type _start, @function",
            "_start:",
            "    xor ebp, ebp",
            "    and rsp, -16",
            "    call {entry}",
            "    ud2",
            ".size _start, . - _start",
            ".popsection",
            entry = sym __userlib_entry,
        );

        #[cfg(not(target_os = "none"))]
        fn main() {
            let _main: fn(u64) = $main;
        }
    };
}

/// Largest panic message passed to the kernel, in bytes (longer ones are cut).
pub const PANIC_MESSAGE_MAX: usize = 256;

/// A [`core::fmt::Write`] sink into a fixed buffer that drops what does not fit.
pub struct MessageBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> MessageBuf<N> {
    pub const fn new() -> Self {
        MessageBuf {
            buf: [0; N],
            len: 0,
        }
    }

    /// The bytes written so far (cut at `N`).
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl<const N: usize> Default for MessageBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> core::fmt::Write for MessageBuf<N> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(N - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Formats a panic as `panicked at FILE:LINE:COL: MESSAGE`, cut to `N` bytes.
pub fn format_panic<const N: usize>(
    location: Option<&core::panic::Location<'_>>,
    message: impl core::fmt::Display,
) -> MessageBuf<N> {
    use core::fmt::Write;
    let mut msg = MessageBuf::new();
    let _ = match location {
        Some(l) => write!(
            msg,
            "panicked at {}:{}:{}: {message}",
            l.file(),
            l.line(),
            l.column(),
        ),
        None => write!(msg, "panicked: {message}"),
    };
    msg
}

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let msg = format_panic::<PANIC_MESSAGE_MAX>(info.location(), info.message());
    crate::sys::panic(msg.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;

    #[test]
    fn message_buf_cuts_what_does_not_fit() {
        let mut m = MessageBuf::<8>::new();
        write!(m, "abc{}", 12345678).unwrap();
        assert_eq!(m.as_bytes(), b"abc12345");
        write!(m, "more").unwrap();
        assert_eq!(m.as_bytes(), b"abc12345");
    }

    #[test]
    fn panic_message_names_the_location() {
        let here = core::panic::Location::caller();
        let m = format_panic::<PANIC_MESSAGE_MAX>(Some(here), format_args!("boom {}", 7));
        let text = core::str::from_utf8(m.as_bytes()).unwrap();
        assert!(text.starts_with("panicked at userlib/src/rt.rs:"), "{text}");
        assert!(text.ends_with(": boom 7"), "{text}");
        let m = format_panic::<16>(None, "a long message that is cut");
        assert_eq!(m.as_bytes(), b"panicked: a long");
    }
}
