//! `make run GUEST=path [RAM=64M] [CMDLINE="..."] [MMU=ept|shadow] [FLAT=1]`: a user's own
//! kernel, checked on the host before anything boots, then put on the run's boot media as the
//! boot module `<file name> image=guest` and run by the `guest` scenario (vmm-suite's
//! `userguest`), which reads the `guest.*` words this module adds to the kernel command line.
//!
//! The checks are the VMM's own: the image is planned with `vmm_service::loader` (the code
//! the VMM loads it with) for the RAM asked for, so a file that is not a multiboot kernel (or a
//! flat image), or that does not fit its RAM, is refused here with the loader's reason.

use std::fs;
use std::path::{Path, PathBuf};

use abi::scenario::{
    GUEST_CMDLINE, GUEST_ENTRY, GUEST_INITRD, GUEST_KVM_POLICY, GUEST_MMU, GUEST_MODULE,
    GUEST_POOL, GUEST_PREV_ROOTS, GUEST_RAM, GUEST_VCPUS,
};
use userlib::proto::vmm::{
    CMDLINE_MAX, DEFAULT_FLAT_LOAD_GPA, MODULE_MAX, RAM_MAX_MIB, RAM_MIN_MIB,
};
use vmm_service::loader::{flat64, linux, multiboot, LoadError};

use crate::bootcfg::{GuestFile, BOOT_MODULES};
use crate::emu::MACHINE_MIB;
use crate::pass_fail::PassFail;
use crate::runner::RunOptions;

/// Guest RAM when `RAM=` is not given.
pub const DEFAULT_RAM_MIB: u32 = 64;
/// Memory the machine keeps beside a guest's RAM (kernel, services, page tables, the MMU
/// service's pools): a guest of `R` MiB runs on a machine of `max(MACHINE_MIB, R + this)`.
pub const MACHINE_MIB_BESIDE_GUEST: u32 = 256;
/// The kernel keeps this much of its command line.
const KERNEL_CMDLINE_MAX: usize = microkernel::bootinfo::CMDLINE_MAX;

/// Who translates the guest's physical addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestMmu {
    Ept,
    Shadow,
}

/// A user's guest, checked and ready to boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserGuest {
    /// The file (absolute).
    pub path: PathBuf,
    /// Its file name: the boot module's name and the first word of the guest's command line.
    pub name: String,
    pub ram_mib: u32,
    pub mmu: GuestMmu,
    /// A flat 64-bit image (loaded at [`DEFAULT_FLAT_LOAD_GPA`]) rather than multiboot.
    pub flat: bool,
    /// A Linux bzImage (found by its header), booted by the Linux boot protocol.
    pub linux: bool,
    /// A Linux guest's initramfs (`INITRD=`): its file, module name and size.
    pub initrd: Option<(PathBuf, String, u64)>,
    /// Shadow page pool pages (absent: the VMM's default).
    pub pool_pages: Option<u32>,
    /// Previous roots each vCPU caches (`PREV_ROOTS=`; absent: the VMM's default).
    pub prev_roots: Option<u8>,
    /// Shadow paging with KVM's policy: per-vCPU PAE roots never cached (`KVM_POLICY=1`).
    pub kvm_policy: bool,
    /// The guest's command line after its file name.
    pub cmdline: String,
    /// vCPUs (`VCPUS=`; 1 unless [`UserGuest::with_vcpus`] says otherwise).
    pub vcpus: u8,
    /// The file's size in bytes.
    pub bytes: u64,
}

/// Parses a RAM size: `64`, `64M`, `64MiB`, `1G`, `1GiB` (MiB unless `G` says GiB).
pub fn parse_ram(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let (digits, scale) = if let Some(d) = lower
        .strip_suffix("gib")
        .or_else(|| lower.strip_suffix("gb"))
        .or_else(|| lower.strip_suffix('g'))
    {
        (d, 1024)
    } else if let Some(d) = lower
        .strip_suffix("mib")
        .or_else(|| lower.strip_suffix("mb"))
        .or_else(|| lower.strip_suffix('m'))
    {
        (d, 1)
    } else {
        (lower.as_str(), 1)
    };
    let n: u32 = digits
        .trim()
        .parse()
        .map_err(|_| format!("RAM={t}: not a size (e.g. 64M or 1G)"))?;
    let mib = n
        .checked_mul(scale)
        .ok_or_else(|| format!("RAM={t}: too large"))?;
    if !(RAM_MIN_MIB..=RAM_MAX_MIB).contains(&mib) {
        return Err(format!(
            "RAM={t}: guest RAM must be {RAM_MIN_MIB} MiB .. {RAM_MAX_MIB} MiB ({} GiB)",
            RAM_MAX_MIB / 1024
        ));
    }
    Ok(mib)
}

/// Parses `ept` or `shadow`.
pub fn parse_mmu(s: &str) -> Result<GuestMmu, String> {
    match s.trim() {
        "" | "ept" => Ok(GuestMmu::Ept),
        "shadow" => Ok(GuestMmu::Shadow),
        other => Err(format!("MMU={other}: ept or shadow")),
    }
}

/// Why the VMM's loader refuses an image, in words.
pub fn load_error_words(e: LoadError) -> String {
    match e {
        LoadError::NoHeader => "no multiboot (v1) header (magic 0x1BADB002, 4-byte aligned) in its first 8 KiB: not a multiboot kernel (a flat 64-bit image needs FLAT=1)".into(),
        LoadError::BadChecksum => "its multiboot header's checksum is wrong (magic + flags + checksum must be 0)".into(),
        LoadError::UnsupportedFlags(f) => format!("its multiboot header asks for something Umbra does not provide (flags {f:#x}: e.g. bit 2, a video mode)"),
        LoadError::BadElf(p) => format!("not an ELF executable the loader takes ({p:?}; a multiboot kernel without the a.out kludge must be an ELF32/ELF64 ET_EXEC for x86)"),
        LoadError::Truncated => "the file ends before the data its headers describe".into(),
        LoadError::SegmentOutsideRam { gpa, len } => format!("a segment at {gpa:#x} ({len:#x} bytes) does not fit in the guest's RAM (raise RAM=)"),
        LoadError::SegmentInReservedArea { gpa, len } => format!("a segment at {gpa:#x} ({len:#x} bytes) overlaps the loader's area below 1 MiB"),
        LoadError::Overlap => "two of its segments overlap".into(),
        LoadError::EntryOutsideImage => "its entry point is not inside a loaded segment".into(),
        LoadError::TooManySegments => "too many loadable segments".into(),
        LoadError::NoSegments => "nothing to load".into(),
        LoadError::BadAoutKludge => "inconsistent a.out kludge addresses in its multiboot header".into(),
        LoadError::FileLargerThanMemory => "a segment's file size exceeds its memory size".into(),
        LoadError::RamTooSmall => "the guest's RAM is too small".into(),
        LoadError::BadCmdline => "the command line holds a NUL byte".into(),
        LoadError::InfoDoesNotFit => "the command line is too long for the multiboot information".into(),
        LoadError::ImageLargerThanRam => "the file is larger than the guest's RAM (raise RAM=)".into(),
        LoadError::BadCpuCount => "the ACPI tables cannot describe that many vCPUs (1 to 255)".into(),
        LoadError::BadLinux(p) => linux_problem_words(p),
    }
}

/// Why the VMM's Linux loader refuses a bzImage, in words.
fn linux_problem_words(p: linux::LinuxProblem) -> String {
    use linux::LinuxProblem as P;
    match p {
        P::NotBzImage => "no Linux boot header (\"HdrS\" at 0x202): not a bzImage".into(),
        P::OldProtocol { version } => format!(
            "boot protocol {}.{:02}: Umbra needs 2.10 or later (Linux 2.6.31+)",
            version >> 8,
            version & 0xff
        ),
        P::NotLoadedHigh => "a zImage (loads below 1 MiB): only bzImages are booted".into(),
        P::CmdlineTooLong => "the command line is longer than the kernel takes".into(),
        P::NoRoom => "the kernel's decompression area and the initramfs do not fit in the guest's RAM (raise RAM=)".into(),
        P::OutsideIdentityMap => "the kernel's area ends above the first GiB the 64-bit entry maps".into(),
    }
}

/// A file name the boot manifest takes as a module name.
fn valid_module_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MODULE_MAX
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl UserGuest {
    /// Checks everything before a boot: the file, its name, the image against its RAM (with
    /// the VMM's loader), the command line.
    pub fn new(
        path: &Path,
        ram_mib: u32,
        mmu: GuestMmu,
        flat: bool,
        cmdline: &str,
    ) -> Result<UserGuest, String> {
        let shown = path.display();
        let meta = fs::metadata(path).map_err(|e| format!("GUEST={shown}: {e}"))?;
        if !meta.is_file() {
            return Err(format!("GUEST={shown}: not a file"));
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !valid_module_name(&name) {
            return Err(format!(
                "GUEST={shown}: the file name `{name}` becomes the boot module's name and the \
                 first word of the guest's command line: use letters, digits, `-`, `_` and `.` \
                 (at most {MODULE_MAX} bytes); rename or copy the file"
            ));
        }
        if BOOT_MODULES
            .iter()
            .any(|m| m.manifest.split(' ').next() == Some(name.as_str()))
        {
            return Err(format!(
                "GUEST={shown}: `{name}` is the name of one of Umbra's own boot modules; \
                 rename or copy the file"
            ));
        }
        let cmdline = cmdline
            .split_ascii_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if cmdline.len() > CMDLINE_MAX {
            return Err(format!(
                "CMDLINE: {} bytes; the guest's command line takes at most {CMDLINE_MAX}",
                cmdline.len()
            ));
        }
        if !cmdline.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err("CMDLINE: only printable ASCII".into());
        }
        let image = fs::read(path).map_err(|e| format!("GUEST={shown}: {e}"))?;
        let ram_bytes = u64::from(ram_mib) << 20;
        let linux = !flat && linux::is_bzimage(&image);
        let planned = if image.len() as u64 > ram_bytes {
            Err(LoadError::ImageLargerThanRam)
        } else if flat {
            flat64::flat64_plan(image.len(), DEFAULT_FLAT_LOAD_GPA, ram_bytes)
        } else if linux {
            // Planned again with its initramfs by `with_initrd`.
            linux::plan(&image, ram_bytes, 0, cmdline.len()).map(|p| p.load)
        } else {
            multiboot::plan(&image, ram_bytes)
        };
        if let Err(e) = planned {
            let kind = if flat {
                "flat 64-bit image"
            } else if linux {
                "Linux kernel"
            } else {
                "multiboot kernel"
            };
            return Err(format!(
                "GUEST={shown}: cannot run it as a {kind} in {ram_mib} MiB of RAM: {}",
                load_error_words(e)
            ));
        }
        let guest = UserGuest {
            path: crate::runner::absolute(path).map_err(|e| format!("GUEST={shown}: {e}"))?,
            name,
            ram_mib,
            mmu,
            flat,
            linux,
            initrd: None,
            pool_pages: None,
            prev_roots: None,
            kvm_policy: false,
            cmdline,
            vcpus: 1,
            bytes: image.len() as u64,
        };
        let words = guest.kernel_cmdline_words();
        let total = crate::scenarios::cmdline_for(abi::scenario::GUEST).len() + 1 + words.len();
        if total > KERNEL_CMDLINE_MAX {
            return Err(format!(
                "CMDLINE: too long: the kernel's command line would be {total} bytes (at most \
                 {KERNEL_CMDLINE_MAX}); shorten CMDLINE"
            ));
        }
        Ok(guest)
    }

    /// The guest with `vcpus` vCPUs (`VCPUS=n`): 1 to the VMM's `MAX_VCPUS`.
    pub fn with_vcpus(mut self, vcpus: &str) -> Result<UserGuest, String> {
        let max = userlib::proto::vmm::MAX_VCPUS;
        let n: u8 = vcpus
            .trim()
            .parse()
            .map_err(|_| format!("VCPUS={vcpus}: not a number (1 to {max})"))?;
        if !(1..=max).contains(&n) {
            return Err(format!("VCPUS={n}: a VM has 1 to {max} vCPUs"));
        }
        self.vcpus = n;
        Ok(self)
    }

    /// The guest with the initramfs at `path` (`INITRD=`; a Linux kernel only), checked to fit
    /// its RAM above the kernel as the VMM places it.
    pub fn with_initrd(mut self, path: &Path) -> Result<UserGuest, String> {
        let shown = path.display();
        if !self.linux {
            return Err(format!(
                "INITRD={shown}: only a Linux kernel (a bzImage) takes an initramfs"
            ));
        }
        let bytes = fs::metadata(path)
            .map_err(|e| format!("INITRD={shown}: {e}"))?
            .len();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !valid_module_name(&name) || name == self.name {
            return Err(format!(
                "INITRD={shown}: the file name `{name}` becomes a boot module's name: use \
                 letters, digits, `-`, `_` and `.` (at most {MODULE_MAX} bytes), not the \
                 kernel's name"
            ));
        }
        let image = fs::read(&self.path).map_err(|e| format!("GUEST: {e}"))?;
        linux::plan(
            &image,
            u64::from(self.ram_mib) << 20,
            bytes,
            self.cmdline.len(),
        )
        .map_err(|e| {
            format!(
                "INITRD={shown}: the kernel and its initramfs do not fit in {} MiB of RAM: \
                     {}",
                self.ram_mib,
                load_error_words(e)
            )
        })?;
        let path = crate::runner::absolute(path).map_err(|e| format!("INITRD={shown}: {e}"))?;
        self.initrd = Some((path, name, bytes));
        Ok(self)
    }

    /// The guest with a shadow page pool of `pages` pages (`POOL=`).
    pub fn with_pool(mut self, pages: &str) -> Result<UserGuest, String> {
        use userlib::proto::vmm::{POOL_MAX_PAGES, POOL_MIN_PAGES};
        if self.mmu != GuestMmu::Shadow {
            return Err(format!("POOL={pages}: the shadow page pool (MMU=shadow)"));
        }
        let n: u32 = pages
            .trim()
            .parse()
            .map_err(|_| format!("POOL={pages}: not a number of pages"))?;
        if !(POOL_MIN_PAGES..=POOL_MAX_PAGES).contains(&n) {
            return Err(format!(
                "POOL={n}: a shadow page pool has {POOL_MIN_PAGES} to {POOL_MAX_PAGES} pages"
            ));
        }
        self.pool_pages = Some(n);
        Ok(self)
    }

    /// The guest with `n` previous roots cached per vCPU (`PREV_ROOTS=`; shadow paging only).
    pub fn with_prev_roots(mut self, n: &str) -> Result<UserGuest, String> {
        use userlib::proto::vmm::MAX_PREV_ROOTS;
        if self.mmu != GuestMmu::Shadow {
            return Err(format!(
                "PREV_ROOTS={n}: the fast CR3 switch's cache of shadow paging (MMU=shadow)"
            ));
        }
        let count: u8 = n
            .trim()
            .parse()
            .ok()
            .filter(|c| *c <= MAX_PREV_ROOTS)
            .ok_or_else(|| {
                format!("PREV_ROOTS={n}: a number of roots from 0 to {MAX_PREV_ROOTS}")
            })?;
        self.prev_roots = Some(count);
        Ok(self)
    }

    /// The guest on shadow paging with KVM's policy (`KVM_POLICY=1`; shadow paging only).
    pub fn with_kvm_policy(mut self) -> Result<UserGuest, String> {
        if self.mmu != GuestMmu::Shadow {
            return Err("KVM_POLICY=1: a root-caching policy of shadow paging (MMU=shadow)".into());
        }
        self.kvm_policy = true;
        Ok(self)
    }

    /// What the image is, in words.
    pub fn kind_words(&self) -> &'static str {
        match self.entry_word() {
            "flat" => "flat 64-bit image",
            "linux" => "Linux kernel",
            _ => "multiboot kernel",
        }
    }

    /// The command line the guest reads: a multiboot kernel its file name first, a Linux
    /// kernel its command line alone.
    pub fn guest_cmdline(&self) -> String {
        match (self.linux, self.cmdline.is_empty()) {
            (true, _) => self.cmdline.clone(),
            (false, true) => self.name.clone(),
            (false, false) => format!("{} {}", self.name, self.cmdline),
        }
    }

    /// How the guest is booted, in the `guest.entry=` word's terms.
    pub fn entry_word(&self) -> &'static str {
        if self.flat {
            "flat"
        } else if self.linux {
            "linux"
        } else {
            "multiboot"
        }
    }

    /// The words the `guest` scenario reads from the kernel command line (the guest's own
    /// command line last: it runs to the end).
    pub fn kernel_cmdline_words(&self) -> String {
        let vcpus = if self.vcpus > 1 {
            format!("{GUEST_VCPUS}{} ", self.vcpus)
        } else {
            String::new()
        };
        let initrd = match &self.initrd {
            Some((_, name, _)) => format!("{GUEST_INITRD}{name} "),
            None => String::new(),
        };
        let mut pool = match self.pool_pages {
            Some(n) => format!("{GUEST_POOL}{n} "),
            None => String::new(),
        };
        if let Some(n) = self.prev_roots {
            pool.push_str(&format!("{GUEST_PREV_ROOTS}{n} "));
        }
        if self.kvm_policy {
            pool.push_str(GUEST_KVM_POLICY);
            pool.push(' ');
        }
        format!(
            "{GUEST_MODULE}{} {GUEST_RAM}{} {GUEST_MMU}{} {GUEST_ENTRY}{} \
             {vcpus}{initrd}{pool}{GUEST_CMDLINE}{}",
            self.name,
            self.ram_mib,
            match self.mmu {
                GuestMmu::Ept => "ept",
                GuestMmu::Shadow => "shadow",
            },
            self.entry_word(),
            self.cmdline
        )
    }

    /// The emulated machine's memory for this guest (MiB).
    pub fn machine_mib(&self) -> u32 {
        MACHINE_MIB.max(self.ram_mib + MACHINE_MIB_BESIDE_GUEST)
    }

    /// The files as the boot media carry them: the kernel, then its initramfs.
    pub fn files(&self) -> Vec<GuestFile<'_>> {
        let mut v = vec![GuestFile {
            name: &self.name,
            path: &self.path,
        }];
        if let Some((path, name, _)) = &self.initrd {
            v.push(GuestFile { name, path });
        }
        v
    }

    /// Bytes of every file the boot media carry.
    pub fn files_bytes(&self) -> u64 {
        self.bytes + self.initrd.as_ref().map_or(0, |i| i.2)
    }
}

/// The example kernel (`make example-kernel`, tests/example-kernel) as `make test` runs it:
/// its file name in the build directory, its command line and its RAM (the largest, so every
/// `make test` runs a 1 GiB guest).
pub const EXAMPLE_KERNEL: &str = "example-kernel.elf";
pub const EXAMPLE_CMDLINE: &str = "console=ttyS0 answer=42";
pub const EXAMPLE_RAM_MIB: u32 = RAM_MAX_MIB;

/// The console lines the example kernel must print when it runs in `ram_mib` of RAM with
/// [`EXAMPLE_CMDLINE`]: what it read from its multiboot information, RAM at the top of the
/// memory map really there, its verdict, and the suite's reading of the result.
pub fn example_expected_lines(ram_mib: u32) -> Vec<String> {
    let ram = u64::from(ram_mib) << 20;
    vec![
        format!("example-kernel: command line \"{EXAMPLE_KERNEL} {EXAMPLE_CMDLINE}\""),
        format!(
            "example-kernel: mem_lower 640 KiB, mem_upper {} KiB",
            (ram >> 10) - 1024
        ),
        format!(
            "example-kernel: mmap base 0x{:016x} length 0x{:016x} type 1",
            1u64 << 20,
            ram - (1 << 20)
        ),
        format!(
            "example-kernel: last RAM page 0x{:08x} written and read back",
            ram - 4096
        ),
        "example-kernel: all checks passed; writing 0 to port 0xf4".to_string(),
        "guest: result: debug-exit value 0 (QEMU status 0x1)".to_string(),
    ]
}

/// `make test`'s run of the example kernel through the `GUEST=` path on Bochs (it needs VMX):
/// the file checked like `make run GUEST=...` does, booted, then the run's verdict and each of
/// [`example_expected_lines`] in its log. Returns (passed, what was seen, counts).
pub fn run_example(build_dir: &Path, iso: &Path) -> Result<(bool, String, PassFail), String> {
    let path = build_dir.join(EXAMPLE_KERNEL);
    let guest = UserGuest::new(
        &path,
        EXAMPLE_RAM_MIB,
        GuestMmu::Ept,
        false,
        EXAMPLE_CMDLINE,
    )?;
    let opts = RunOptions {
        guest: Some(guest),
        ..RunOptions::grub(
            crate::emu::Emu::Bochs,
            abi::scenario::GUEST,
            iso.to_path_buf(),
            build_dir.to_path_buf(),
        )
    };
    let r = crate::runner::run(&opts).map_err(|e| e.0)?;
    let log = crate::judge::clean_console(&fs::read(&r.log_path).unwrap_or_default());
    let mut tally = r.verdict.tally;
    let mut missing = Vec::new();
    for want in example_expected_lines(EXAMPLE_RAM_MIB) {
        let found = log.lines().any(|l| l.contains(want.as_str()));
        tally.add_check(found);
        if !found {
            println!("FAIL example kernel: no console line `{want}`");
            missing.push(want);
        }
    }
    let ok = r.verdict.check_passed && missing.is_empty();
    let seen = if missing.is_empty() {
        format!(
            "{}; its {} expected console lines present [{}]",
            r.verdict.seen,
            example_expected_lines(EXAMPLE_RAM_MIB).len(),
            crate::runner::rel(&r.log_path)
        )
    } else {
        format!(
            "{}; {} expected console lines missing [{}]",
            r.verdict.seen,
            missing.len(),
            crate::runner::rel(&r.log_path)
        )
    };
    Ok((ok, seen, tally))
}

/// The lines of a `guest` run's log that tell how the guest ended: the suite's result line
/// and the VMM's summary (`vmm: guest: result ...`, `vmm: guest: N exits: ...`, `vmm: guest:
/// N resets restarted the VM`), without the service prefix.
pub fn result_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.split_once("] ").map_or(l, |(_, r)| r);
            (rest.starts_with("guest: result: ")
                || rest.starts_with("vmm: guest: result ")
                || (rest.starts_with("vmm: guest: ")
                    && (rest.contains(" exits") || rest.ends_with(" resets restarted the VM"))))
            .then_some(rest)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal multiboot (v1) ELF32 kernel: one PT_LOAD at 1 MiB, the header at its start.
    fn tiny_kernel(load: u32, memsz: u32) -> Vec<u8> {
        let mut f = vec![0u8; 0x1000 + 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 1; // ELF32
        f[5] = 1; // little-endian
        f[6] = 1;
        let put16 =
            |f: &mut Vec<u8>, at: usize, v: u16| f[at..at + 2].copy_from_slice(&v.to_le_bytes());
        let put32 =
            |f: &mut Vec<u8>, at: usize, v: u32| f[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put16(&mut f, 16, 2); // ET_EXEC
        put16(&mut f, 18, 3); // EM_386
        put32(&mut f, 20, 1);
        put32(&mut f, 24, load + 12); // entry
        put32(&mut f, 28, 52); // phoff
        put16(&mut f, 40, 52);
        put16(&mut f, 42, 32);
        put16(&mut f, 44, 1);
        // PT_LOAD: offset 0x1000, vaddr = paddr = load, filesz 64, memsz, RWX
        for (at, v) in [
            (52, 1),
            (56, 0x1000),
            (60, load),
            (64, load),
            (68, 64),
            (72, memsz),
            (76, 7),
            (80, 0x1000),
        ] {
            put32(&mut f, at, v);
        }
        let magic = 0x1bad_b002u32;
        put32(&mut f, 0x1000, magic);
        put32(&mut f, 0x1004, 0);
        put32(&mut f, 0x1008, 0u32.wrapping_sub(magic));
        f
    }

    fn temp(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("umbra-userguest-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn result_lines_are_picked_from_the_log() {
        let log = "[vmm-service] guest: example-kernel: hello\n\
                   [vmm-service] vmm: guest: result DebugExit { code: 1 }, last rip 0x100123\n\
                   [vmm-service] vmm: guest: 2 resets restarted the VM\n\
                   [vmm-service] vmm: guest: 40 exits: io=38 hlt=2\n\
                   [vmm-suite] guest: result: debug-exit value 0 (QEMU status 0x1) (last rip 0x100123, 40 exits, 2 reboots)\n\
                   [vmm-suite] guest: 1 passed, 0 failed\n";
        assert_eq!(
            result_lines(log),
            [
                "vmm: guest: result DebugExit { code: 1 }, last rip 0x100123",
                "vmm: guest: 2 resets restarted the VM",
                "vmm: guest: 40 exits: io=38 hlt=2",
                "guest: result: debug-exit value 0 (QEMU status 0x1) (last rip 0x100123, 40 exits, 2 reboots)",
            ]
        );
    }

    #[test]
    fn example_lines_follow_the_ram() {
        let l = example_expected_lines(1024);
        assert!(l.contains(&"example-kernel: mem_lower 640 KiB, mem_upper 1047552 KiB".to_string()));
        assert!(l.contains(
            &"example-kernel: mmap base 0x0000000000100000 length 0x000000003ff00000 type 1"
                .to_string()
        ));
        assert!(l.contains(
            &"example-kernel: last RAM page 0x3ffff000 written and read back".to_string()
        ));
        assert!(l[0].contains("\"example-kernel.elf console=ttyS0 answer=42\""));
    }

    #[test]
    fn ram_sizes() {
        assert_eq!(parse_ram("64M"), Ok(64));
        assert_eq!(parse_ram("64"), Ok(64));
        assert_eq!(parse_ram("512MiB"), Ok(512));
        assert_eq!(parse_ram("1G"), Ok(1024));
        assert_eq!(parse_ram("1gib"), Ok(1024));
        assert!(parse_ram("2G").unwrap_err().contains("1024 MiB"));
        assert!(parse_ram("1M").is_err());
        assert!(parse_ram("lots").is_err());
        assert!(parse_ram("4294967295G").is_err());
    }

    #[test]
    fn a_multiboot_kernel_is_taken_with_its_words() {
        let p = temp("tiny.elf", &tiny_kernel(0x10_0000, 0x1000));
        let g = UserGuest::new(&p, 64, GuestMmu::Shadow, false, "  a   b=c ").unwrap();
        assert_eq!(g.name, "tiny.elf");
        assert_eq!(g.cmdline, "a b=c");
        assert_eq!(
            g.kernel_cmdline_words(),
            "guest.module=tiny.elf guest.ram=64 guest.mmu=shadow guest.entry=multiboot guest.cmdline=a b=c"
        );
        assert_eq!(g.machine_mib(), 320);
        let two = g.clone().with_vcpus("2").unwrap();
        assert!(
            two.kernel_cmdline_words()
                .contains("guest.mmu=shadow guest.entry=multiboot guest.vcpus=2 "),
            "2 vCPUs on shadow paging too"
        );
        let ept = UserGuest::new(&p, 64, GuestMmu::Ept, false, "x").unwrap();
        let two = ept.clone().with_vcpus("2").unwrap();
        assert!(two
            .kernel_cmdline_words()
            .contains("guest.vcpus=2 guest.cmdline=x"));
        assert!(
            !ept.kernel_cmdline_words().contains("guest.vcpus="),
            "1: the default"
        );
        assert!(ept.clone().with_vcpus("9").is_err());
        assert!(ept.clone().with_vcpus("0").is_err());
        assert!(ept.clone().with_vcpus("two").is_err());
        let tuned = g.clone().with_pool("1024").unwrap();
        let tuned = tuned
            .with_prev_roots("16")
            .unwrap()
            .with_kvm_policy()
            .unwrap();
        assert!(tuned
            .kernel_cmdline_words()
            .contains("guest.pool=1024 guest.prev-roots=16 guest.kvm-policy guest.cmdline=a b=c"));
        assert!(
            g.clone().with_prev_roots("31").is_err(),
            "at most MAX_PREV_ROOTS"
        );
        assert!(g.clone().with_prev_roots("-1").is_err());
        assert!(g.clone().with_prev_roots("0").is_ok(), "0: no cache");
        assert!(
            ept.clone().with_prev_roots("8").is_err(),
            "shadow paging only"
        );
        assert!(ept.clone().with_pool("512").is_err(), "shadow paging only");
        assert!(ept.clone().with_kvm_policy().is_err(), "shadow paging only");
        let big = UserGuest::new(&p, 1024, GuestMmu::Ept, false, "").unwrap();
        assert_eq!(big.machine_mib(), 1280);
    }

    #[test]
    fn what_is_not_a_kernel_or_does_not_fit_is_refused_with_the_reason() {
        let text = temp("notes.txt", b"just some text, not a kernel\n");
        let e = UserGuest::new(&text, 64, GuestMmu::Ept, false, "").unwrap_err();
        assert!(e.contains("no multiboot (v1) header"), "{e}");
        // A segment ending at 80 MiB does not fit in 64 MiB.
        let high = temp("high.elf", &tiny_kernel(0x10_0000, 79 << 20));
        let e = UserGuest::new(&high, 64, GuestMmu::Ept, false, "").unwrap_err();
        assert!(e.contains("does not fit in the guest's RAM"), "{e}");
        assert!(UserGuest::new(&high, 128, GuestMmu::Ept, false, "").is_ok());
        // A flat image larger than its RAM.
        let flat = temp("big.bin", &vec![0x90u8; 3 << 20]);
        let e = UserGuest::new(&flat, 2, GuestMmu::Ept, true, "").unwrap_err();
        assert!(e.contains("larger than the guest's RAM"), "{e}");
        assert!(UserGuest::new(&flat, 8, GuestMmu::Ept, true, "").is_ok());
        // Missing file, bad names, long command lines.
        assert!(UserGuest::new(
            Path::new("/nonexistent/k.elf"),
            64,
            GuestMmu::Ept,
            false,
            ""
        )
        .is_err());
        let spaced = temp("my kernel", &tiny_kernel(0x10_0000, 0x1000));
        assert!(UserGuest::new(&spaced, 64, GuestMmu::Ept, false, "")
            .unwrap_err()
            .contains("rename"));
        let clash = temp("guest-multiboot", &tiny_kernel(0x10_0000, 0x1000));
        assert!(UserGuest::new(&clash, 64, GuestMmu::Ept, false, "")
            .unwrap_err()
            .contains("Umbra's own boot modules"));
        let p = temp("ok.elf", &tiny_kernel(0x10_0000, 0x1000));
        let long = "x".repeat(CMDLINE_MAX + 1);
        assert!(UserGuest::new(&p, 64, GuestMmu::Ept, false, &long).is_err());
        assert!(UserGuest::new(&p, 64, GuestMmu::Ept, false, "tab\u{7}").is_err());
    }
}
