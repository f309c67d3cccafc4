//! Umbra's echo service: answers every call with its message (IPC tests and benchmarks).
//!
//! For now it only announces itself and exits.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![forbid(unsafe_code)]

userlib::entry!(echo_main);

fn echo_main(arg: u64) {
    userlib::println!("echo: started (arg {arg:#x})");
}
