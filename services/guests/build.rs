//! Links the guests for the bare-metal target: the multiboot guests with `link.ld` (physical
//! 1 MiB, multiboot header first), the flat 64-bit images (`guest-bench`, `guest-isolation`) with `link-flat.ld`
//! (2 MiB).
const MULTIBOOT_BINS: &[&str] = &[
    "guest-multiboot",
    "guest-msr",
    "guest-exits",
    "guest-timer",
    "guest-lapic",
    "guest-ioapic",
    "guest-long",
    "guest-pae",
    "guest-badmem",
    "guest-mmio",
    "guest-unsupported",
    "guest-triple",
    "guest-random",
    "guest-spaces64",
    "guest-spacespae",
    "guest-spaces32",
    "guest-mmubench64",
    "guest-mmubenchpae",
    "guest-mmubench32",
    "guest-fpu",
    "guest-uart-rtc",
    "guest-acpi",
    "guest-reboot",
    "guest-smp",
];

const FLAT_BINS: [&str; 2] = ["guest-bench", "guest-isolation"];

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo");
    let multiboot = format!("{dir}/link.ld");
    let flat = format!("{dir}/link-flat.ld");
    println!("cargo:rerun-if-changed={multiboot}");
    println!("cargo:rerun-if-changed={flat}");
    println!("cargo:rerun-if-changed={dir}/src/rt");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        for bin in MULTIBOOT_BINS {
            println!("cargo:rustc-link-arg-bin={bin}=-T{multiboot}");
        }
        for bin in FLAT_BINS {
            println!("cargo:rustc-link-arg-bin={bin}=-T{flat}");
        }
        println!("cargo:rustc-link-arg-bins=-zmax-page-size=0x1000");
        println!("cargo:rustc-link-arg-bins=--no-pie");
    }
}
