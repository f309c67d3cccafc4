//! Umbra's IPC round-trip benchmark (scenario bench-ipc).
//!
//! For now it only announces itself and exits.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![forbid(unsafe_code)]

userlib::entry!(bench_ipc_main);

fn bench_ipc_main(arg: u64) {
    userlib::println!("bench-ipc: started (arg {arg:#x})");
}
