//! The Limine ISO (BIOS and UEFI): built the way Limine's documentation does it (xorriso with
//! Limine's BIOS and UEFI CD images, then `limine bios-install`), from the tree `make iso`
//! stages in `build/limine-root` and a configuration file grafted in as
//! `/boot/limine/limine.conf`. `make iso` builds `build/umbra-limine.iso` with the menu
//! (`limine.cfg`); the harness builds one per run with [`crate::bootcfg::limine_run_cfg`],
//! since Limine reads its configuration only from the boot volume.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The staged ISO tree under the build directory (kernel, modules, Limine's loaders).
pub const ROOT_DIR: &str = "limine-root";
/// The `limine` host tool, compiled by `make iso` into the build directory.
pub const TOOL: &str = "limine";
/// The Limine ISO `make iso` builds.
pub const ISO: &str = "umbra-limine.iso";
/// Where the configuration goes in the ISO.
pub const CONF_IN_ISO: &str = "boot/limine/limine.conf";
/// Debian's `ovmf` package: UEFI firmware for QEMU.
pub const OVMF: &str = "/usr/share/ovmf/OVMF.fd";

/// The files one Limine ISO build uses.
#[derive(Clone, Debug)]
pub struct Parts {
    pub root: PathBuf,
    pub tool: PathBuf,
}

impl Parts {
    /// The parts under `build_dir`, or why they are missing.
    pub fn find(build_dir: &Path) -> Result<Parts, String> {
        let parts = Parts {
            root: build_dir.join(ROOT_DIR),
            tool: build_dir.join(TOOL),
        };
        for (what, path) in [
            (
                "staged tree",
                parts.root.join("boot/limine/limine-bios-cd.bin"),
            ),
            ("host tool", parts.tool.clone()),
        ] {
            if !path.is_file() {
                return Err(format!(
                    "the Limine ISO's {what} ({}) is missing: `make iso` builds it when it finds \
                     Limine's binaries (LIMINE_DIR, ../shared/limine or a clone of Limine's \
                     binary branch)",
                    path.display()
                ));
            }
        }
        Ok(parts)
    }
}

/// The xorriso arguments that build `out` from `root` with `conf` as the configuration.
pub fn xorriso_args(root: &Path, conf: &Path, out: &Path) -> Vec<String> {
    let mut args: Vec<String> = [
        "-as",
        "mkisofs",
        "-graft-points",
        "-R",
        "-r",
        "-J",
        "-b",
        "boot/limine/limine-bios-cd.bin",
        "-no-emul-boot",
        "-boot-load-size",
        "4",
        "-boot-info-table",
        "-hfsplus",
        "-apm-block-size",
        "2048",
        "--efi-boot",
        "boot/limine/limine-uefi-cd.bin",
        "-efi-boot-part",
        "--efi-boot-image",
        "--protective-msdos-label",
        "-o",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(out.display().to_string());
    args.push(format!("/={}", root.display()));
    args.push(format!("/{CONF_IN_ISO}={}", conf.display()));
    args
}

/// Builds a Limine ISO at `out` with `conf` as its configuration.
pub fn build_iso(parts: &Parts, conf: &Path, out: &Path) -> Result<(), String> {
    build_iso_grafting(parts, conf, &[], out)
}

/// [`build_iso`] with more files: (path in the ISO, file on the host), e.g. a user's guest.
pub fn build_iso_grafting(
    parts: &Parts,
    conf: &Path,
    grafts: &[(String, PathBuf)],
    out: &Path,
) -> Result<(), String> {
    let _ = std::fs::remove_file(out);
    let mut args = xorriso_args(&parts.root, conf, out);
    args.extend(
        grafts
            .iter()
            .map(|(in_iso, file)| format!("{in_iso}={}", file.display())),
    );
    run(Command::new("xorriso").args(args))?;
    run(Command::new(&parts.tool).arg("bios-install").arg(out))
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run `{program}`: {e} (run `make setup`?)"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "`{program}` failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xorriso_grafts_the_configuration_and_boots_bios_and_uefi() {
        let a = xorriso_args(
            Path::new("/b/limine-root"),
            Path::new("/b/run/limine.conf"),
            Path::new("/b/run/x.iso"),
        );
        let joined = a.join(" ");
        assert!(joined.contains("-b boot/limine/limine-bios-cd.bin"));
        assert!(joined.contains("--efi-boot boot/limine/limine-uefi-cd.bin"));
        assert!(joined.contains("-o /b/run/x.iso"));
        assert!(a.contains(&"/=/b/limine-root".to_string()));
        assert!(a.contains(&"/boot/limine/limine.conf=/b/run/limine.conf".to_string()));
    }

    #[test]
    fn missing_parts_are_named() {
        let e = Parts::find(Path::new("/nonexistent-build")).unwrap_err();
        assert!(
            e.contains("limine-bios-cd.bin") && e.contains("make iso"),
            "{e}"
        );
    }
}
