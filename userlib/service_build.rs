// The build script of every user service: links its binaries with `userlib/link.ld` when
// building for the bare-metal target. A service's `build.rs` is one line,
// `include!("<path to userlib>/service_build.rs");`: this file is the one definition.
fn main() {
    // `file!()` names this file relative to the directory rustc ran in (the workspace root)
    // or absolutely; the link script is next to it.
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo");
    let this = std::path::Path::new(file!());
    let found = std::path::Path::new(&dir)
        .ancestors()
        .map(|a| a.join(this))
        .find(|p| p.exists())
        .expect("userlib/service_build.rs below an ancestor of the package");
    let script = found.with_file_name("link.ld").display().to_string();
    println!("cargo:rerun-if-changed={script}");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        println!("cargo:rustc-link-arg-bins=-T{script}");
        println!("cargo:rustc-link-arg-bins=-zmax-page-size=0x1000");
    }
}
