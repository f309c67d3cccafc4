//! Umbra's supervisor: starts the boot modules named in the manifest and restarts faulted services.
//!
//! For now it only announces itself and exits.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![forbid(unsafe_code)]

userlib::entry!(supervisor_main);

fn supervisor_main(arg: u64) {
    userlib::println!("supervisor: started (arg {arg:#x})");
}
