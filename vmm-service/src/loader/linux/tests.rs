use super::*;
use crate::loader::entry::AR_CODE64;
use crate::loader::load;
use abi::vmx::field;
use proptest::prelude::*;

const MIB: u64 = 1 << 20;
const PM_LEN: usize = 0x3000;

/// A bzImage as the kernel's build writes one: one setup sector after the boot sector, the
/// header fields this loader reads, and `PM_LEN` bytes of "protected-mode code".
fn sample(long: bool) -> Vec<u8> {
    let mut b = vec![0u8; 1024 + PM_LEN];
    b[hdr::SETUP_SECTS] = 1;
    b[hdr::SYSSIZE..hdr::SYSSIZE + 4].copy_from_slice(&((PM_LEN / 16) as u32).to_le_bytes());
    b[hdr::BOOT_FLAG..hdr::BOOT_FLAG + 2].copy_from_slice(&BOOT_FLAG.to_le_bytes());
    b[hdr::JUMP] = 0xeb;
    b[hdr::JUMP + 1] = 0x6a; // header to 0x26c, as in 6.x kernels
    b[hdr::MAGIC..hdr::MAGIC + 4].copy_from_slice(b"HdrS");
    b[hdr::VERSION..hdr::VERSION + 2].copy_from_slice(&0x020fu16.to_le_bytes());
    b[hdr::LOADFLAGS] = LOADED_HIGH | KEEP_SEGMENTS;
    b[hdr::INITRD_ADDR_MAX..hdr::INITRD_ADDR_MAX + 4]
        .copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    b[hdr::KERNEL_ALIGNMENT..hdr::KERNEL_ALIGNMENT + 4]
        .copy_from_slice(&0x20_0000u32.to_le_bytes());
    b[hdr::RELOCATABLE_KERNEL] = 1;
    let xl: u16 = if long { XLF_KERNEL_64 } else { 0 };
    b[hdr::XLOADFLAGS..hdr::XLOADFLAGS + 2].copy_from_slice(&xl.to_le_bytes());
    b[hdr::CMDLINE_SIZE..hdr::CMDLINE_SIZE + 4].copy_from_slice(&2047u32.to_le_bytes());
    b[hdr::PREF_ADDRESS..hdr::PREF_ADDRESS + 8].copy_from_slice(&0x100_0000u64.to_le_bytes());
    b[hdr::INIT_SIZE..hdr::INIT_SIZE + 4].copy_from_slice(&(8 * MIB as u32).to_le_bytes());
    for (i, x) in b[1024..].iter_mut().enumerate() {
        *x = (i % 251) as u8 + 1;
    }
    b
}

fn get(pairs: &[Pair], f: u64) -> u64 {
    pairs.iter().find(|p| p.0 == f).map(|p| p.1).unwrap()
}

fn le32(ram: &[u8], at: u64) -> u32 {
    let at = at as usize;
    u32::from_le_bytes(ram[at..at + 4].try_into().unwrap())
}

#[test]
fn a_64_bit_kernel_is_planned_at_its_preferred_address_with_the_initramfs_on_top() {
    let p = plan(&sample(true), 64 * MIB, 3 * MIB + 5, 20).unwrap();
    assert_eq!(p.entry, LinuxEntry::Long64);
    assert_eq!(p.load_gpa, 0x100_0000);
    assert_eq!(p.load.entry, 0x100_0200);
    assert_eq!(p.load.segments[0].file_offset, 1024);
    assert_eq!(p.load.segments[0].file_len, PM_LEN);
    assert_eq!(p.initrd_gpa % 4096, 0);
    assert!(p.initrd_gpa + p.initrd_len <= 64 * MIB);
    assert!(p.initrd_gpa >= 0x100_0000 + 8 * MIB);
    assert_eq!(p.header_end, 0x26c);
    // No initramfs: nothing reserved for it.
    assert_eq!(plan(&sample(true), 64 * MIB, 0, 0).unwrap().initrd_gpa, 0);
}

#[test]
fn the_boot_state_and_zero_page_follow_the_protocol() {
    let image = sample(true);
    let mut ram = vec![0u8; 64 << 20];
    let initrd = [7u8; 5000];
    let p = plan(&image, ram.len() as u64, initrd.len() as u64, 11).unwrap();
    load(&p.load, &image, &mut ram).unwrap();
    let pairs = write_boot(&p, &image, &mut ram, b"console=ttyS0").unwrap();
    assert_eq!(get(&pairs, field::GUEST_RIP), 0x100_0200);
    assert_eq!(get(&pairs, field::GUEST_CS_SELECTOR), BOOT_CS);
    assert_eq!(get(&pairs, field::GUEST_CS_AR), AR_CODE64);
    assert_eq!(get(&pairs, field::GUEST_DS_SELECTOR), BOOT_DS);
    assert_eq!(get(&pairs, field::GUEST_SS_SELECTOR), BOOT_DS);
    assert_eq!(get(&pairs, field::GPR_BASE + 6), ZERO_PAGE_GPA);
    assert_eq!(get(&pairs, field::GUEST_CR3), flat64::PML4_GPA);
    assert_eq!(
        get(&pairs, field::GUEST_RFLAGS) & (1 << 9),
        0,
        "interrupts off"
    );
    // The GDT's boot descriptors, and the identity map that covers the kernel.
    let gdt_at = flat64::GDT_GPA as usize;
    assert_eq!(&ram[gdt_at + 16..gdt_at + 24], &GDT_CODE64.to_le_bytes());
    assert_eq!(&ram[gdt_at + 24..gdt_at + 32], &GDT_DATA.to_le_bytes());
    assert_eq!(ram[flat64::PD_GPA as usize + 8 * 8], 0x83); // 16 MiB: 2 MiB page 8
                                                            // The zero page: the image's header, then the loader's fields.
    let zp = ZERO_PAGE_GPA;
    assert_eq!(le32(&ram, zp + hdr::MAGIC as u64), HEADER_MAGIC);
    assert_eq!(ram[(zp as usize) + hdr::TYPE_OF_LOADER], 0xff);
    assert_eq!(ram[(zp as usize) + hdr::LOADFLAGS], LOADED_HIGH);
    assert_eq!(
        le32(&ram, zp + hdr::CMD_LINE_PTR as u64),
        CMDLINE_GPA as u32
    );
    assert_eq!(
        le32(&ram, zp + hdr::RAMDISK_IMAGE as u64),
        p.initrd_gpa as u32
    );
    assert_eq!(le32(&ram, zp + hdr::RAMDISK_SIZE as u64), 5000);
    assert_eq!(le32(&ram, zp + hdr::CODE32_START as u64), 0x100_0000);
    assert_eq!(le32(&ram, zp + params::ACPI_RSDP_ADDR as u64), 0xe_0000);
    assert_eq!(
        &ram[CMDLINE_GPA as usize..CMDLINE_GPA as usize + 14],
        b"console=ttyS0\0"
    );
    // The e820 map: the multiboot map, every entry with a length.
    let n = ram[zp as usize + params::E820_ENTRIES] as usize;
    let map = memory_map(64 << 20);
    assert_eq!(n, map.len());
    for (i, (base, len, kind)) in map.iter().enumerate() {
        let at = zp as usize + params::E820_TABLE + i * params::E820_ENTRY_SIZE;
        assert_eq!(
            u64::from_le_bytes(ram[at..at + 8].try_into().unwrap()),
            *base
        );
        assert_eq!(
            u64::from_le_bytes(ram[at + 8..at + 16].try_into().unwrap()),
            *len
        );
        assert_eq!(le32(&ram, (at + 16) as u64), *kind);
    }
    // The kernel's bytes at the load address; the loader's pages stay in its low area.
    assert_eq!(&ram[0x100_0000..0x100_0000 + PM_LEN], &image[1024..]);
}

#[test]
fn a_32_bit_kernel_enters_at_its_load_address_with_paging_off() {
    let image = sample(false);
    let mut ram = vec![0u8; 32 << 20];
    let p = plan(&image, ram.len() as u64, 0, 0).unwrap();
    assert_eq!(p.entry, LinuxEntry::Protected32);
    load(&p.load, &image, &mut ram).unwrap();
    let pairs = write_boot(&p, &image, &mut ram, b"").unwrap();
    assert_eq!(get(&pairs, field::GUEST_RIP), 0x100_0000);
    assert_eq!(get(&pairs, field::GUEST_CR0) & (1 << 31), 0);
    assert_eq!(get(&pairs, field::GUEST_IA32_EFER), 0);
    assert_eq!(get(&pairs, field::GUEST_CS_SELECTOR), BOOT_CS);
    assert_eq!(get(&pairs, field::GPR_BASE + 6), ZERO_PAGE_GPA);
    let gdt_at = flat64::GDT_GPA as usize;
    assert_eq!(&ram[gdt_at + 16..gdt_at + 24], &GDT_CODE32.to_le_bytes());
    // No page tables written for a 32-bit entry.
    assert_eq!(ram[flat64::PML4_GPA as usize], 0);
}

#[test]
fn malformed_images_get_their_reason() {
    let ram = 64 * MIB;
    let mutate = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = sample(true);
        f(&mut b);
        plan(&b, ram, 4096, 10)
    };
    let not = Err(LoadError::BadLinux(LinuxProblem::NotBzImage));
    assert_eq!(mutate(&|b| b[hdr::MAGIC] = b'X'), not);
    assert_eq!(mutate(&|b| b[hdr::BOOT_FLAG] = 0), not);
    assert_eq!(plan(&[0u8; 100], ram, 0, 0), not);
    assert_eq!(plan(b"README: not a kernel", ram, 0, 0), not);
    assert_eq!(
        mutate(&|b| b[hdr::VERSION..hdr::VERSION + 2].copy_from_slice(&0x0209u16.to_le_bytes())),
        Err(LoadError::BadLinux(LinuxProblem::OldProtocol {
            version: 0x0209
        }))
    );
    assert_eq!(
        mutate(&|b| b[hdr::LOADFLAGS] = 0),
        Err(LoadError::BadLinux(LinuxProblem::NotLoadedHigh))
    );
    // Cut inside the header, inside the protected-mode code, and a syssize past the end.
    assert_eq!(
        plan(&sample(true)[..0x240], ram, 0, 0),
        Err(LoadError::Truncated)
    );
    assert_eq!(
        plan(&sample(true)[..1024], ram, 0, 0),
        Err(LoadError::Truncated)
    );
    assert_eq!(
        plan(&sample(true)[..2048], ram, 0, 0),
        Err(LoadError::Truncated)
    );
    assert_eq!(
        mutate(&|b| b[hdr::SETUP_SECTS] = 200),
        Err(LoadError::Truncated)
    );
    assert_eq!(
        mutate(&|b| b[hdr::JUMP + 1] = 0x10),
        Err(LoadError::Truncated)
    );
    // The command line, the RAM, and the initramfs's room.
    assert_eq!(
        mutate(
            &|b| b[hdr::CMDLINE_SIZE..hdr::CMDLINE_SIZE + 4].copy_from_slice(&5u32.to_le_bytes())
        ),
        Err(LoadError::BadLinux(LinuxProblem::CmdlineTooLong))
    );
    let no_room = Err(LoadError::BadLinux(LinuxProblem::NoRoom));
    assert_eq!(plan(&sample(true), 16 * MIB, 0, 0), no_room);
    assert_eq!(plan(&sample(true), 24 * MIB + 4096, 8192, 0), no_room);
    assert_eq!(plan(&sample(true), 64 * MIB, 63 * MIB, 0), no_room);
    assert_eq!(plan(&sample(true), 64 * MIB, u64::MAX, 0), no_room);
    assert_eq!(
        mutate(&|b| b[hdr::INITRD_ADDR_MAX..hdr::INITRD_ADDR_MAX + 4]
            .copy_from_slice(&0x0100_0fffu32.to_le_bytes())),
        no_room
    );
    assert_eq!(
        mutate(&|b| b[hdr::PREF_ADDRESS..hdr::PREF_ADDRESS + 8]
            .copy_from_slice(&(2u64 << 30).to_le_bytes())),
        no_room
    );
    assert_eq!(
        plan(&sample(true), 2048 * MIB, 0, 0).map(|_| ()),
        Ok(()),
        "a kernel inside the first GiB in a bigger RAM"
    );
    let mut far = sample(true);
    far[hdr::PREF_ADDRESS..hdr::PREF_ADDRESS + 8].copy_from_slice(&(1u64 << 30).to_le_bytes());
    assert_eq!(
        plan(&far, 2048 * MIB, 0, 0),
        Err(LoadError::BadLinux(LinuxProblem::OutsideIdentityMap))
    );
    // A preferred address below 1 MiB or unaligned: the default.
    let low = mutate(&|b| {
        b[hdr::PREF_ADDRESS..hdr::PREF_ADDRESS + 8].copy_from_slice(&0x9_0000u64.to_le_bytes())
    });
    assert_eq!(low.unwrap().load_gpa, DEFAULT_LOAD_GPA);
    // A NUL in the command line.
    let image = sample(true);
    let mut mem = vec![0u8; 64 << 20];
    let p = plan(&image, 64 * MIB, 0, 3).unwrap();
    assert_eq!(
        write_boot(&p, &image, &mut mem, b"a\0b"),
        Err(LoadError::BadCmdline)
    );
}

proptest! {
    /// Any damage to the header gives a plan inside RAM or an error, never a panic, and a
    /// plan's zero page and entry state can always be written.
    #[test]
    fn damaged_headers_never_panic(
        edits in proptest::collection::vec((0x1f0usize..0x270, any::<u8>()), 1..12),
        cut in 0usize..(1024 + PM_LEN + 1),
        initrd in 0u64..(80 * MIB),
        long in any::<bool>(),
    ) {
        let mut b = sample(long);
        for (at, v) in edits {
            b[at] = v;
        }
        b.truncate(cut.max(1));
        let ram_bytes = 64 * MIB;
        if let Ok(p) = plan(&b, ram_bytes, initrd, 10) {
            prop_assert!(p.load_gpa >= HOLE_END);
            prop_assert!(p.initrd_gpa + p.initrd_len <= ram_bytes);
            let mut ram = vec![0u8; ram_bytes as usize];
            load(&p.load, &b, &mut ram).unwrap();
            write_boot(&p, &b, &mut ram, b"0123456789").unwrap();
        }
    }
}
