//! Umbra's on-target IPC protocol suite (scenario ipc).
//!
//! For now it only announces itself and exits.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![forbid(unsafe_code)]

userlib::entry!(ipc_suite_main);

fn ipc_suite_main(arg: u64) {
    userlib::println!("ipc-suite: started (arg {arg:#x})");
}
