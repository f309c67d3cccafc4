//! Multiboot loader tests, with hand-built images (also used by the VM model's tests).

use super::*;
use crate::loader::load;
use proptest::prelude::*;

/// One loadable segment for the test builders: (paddr, vaddr, file bytes, memsz).
pub(crate) type TestSeg<'a> = (u64, u64, &'a [u8], u64);

const HDR_AT: usize = 0x100;
const DATA_AT: usize = 0x200;
/// Program headers go here, after the data, so many of them fit.
const PH_AT: usize = 0x400;

fn put(b: &mut Vec<u8>, at: usize, bytes: &[u8]) {
    if b.len() < at + bytes.len() {
        b.resize(at + bytes.len(), 0);
    }
    b[at..at + bytes.len()].copy_from_slice(bytes);
}

fn mb_header(flags: u32) -> Vec<u8> {
    let mut h = Vec::new();
    for v in [
        HEADER_MAGIC,
        flags,
        0u32.wrapping_sub(HEADER_MAGIC.wrapping_add(flags)),
    ] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h
}

/// An ELF32 (EM_386) multiboot image with `segs` and `entry` (virtual).
pub(crate) fn elf32_image(segs: &[TestSeg], entry: u32) -> Vec<u8> {
    let mut b = vec![0u8; 52];
    b[..7].copy_from_slice(&[0x7f, b'E', b'L', b'F', 1, 1, 1]);
    put(&mut b, 16, &2u16.to_le_bytes()); // ET_EXEC
    put(&mut b, 18, &3u16.to_le_bytes()); // EM_386
    put(&mut b, 20, &1u32.to_le_bytes());
    put(&mut b, 24, &entry.to_le_bytes());
    put(&mut b, 28, &(PH_AT as u32).to_le_bytes()); // phoff
    put(&mut b, 40, &52u16.to_le_bytes());
    put(&mut b, 42, &32u16.to_le_bytes());
    put(&mut b, 44, &(segs.len() as u16).to_le_bytes());
    let mut data_at = DATA_AT;
    for (i, (pa, va, data, memsz)) in segs.iter().enumerate() {
        let ph = [
            PT_LOAD,
            data_at as u32,
            *va as u32,
            *pa as u32,
            data.len() as u32,
            *memsz as u32,
            7,
            0x1000,
        ];
        for (j, v) in ph.iter().enumerate() {
            put(&mut b, PH_AT + 32 * i + 4 * j, &v.to_le_bytes());
        }
        put(&mut b, data_at, data);
        data_at += data.len();
    }
    put(&mut b, HDR_AT, &mb_header(0b11));
    b
}

/// The same as an ELF64 (EM_X86_64) image.
pub(crate) fn elf64_image(segs: &[TestSeg], entry: u64) -> Vec<u8> {
    let mut b = vec![0u8; 64];
    b[..7].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1]);
    put(&mut b, 16, &2u16.to_le_bytes());
    put(&mut b, 18, &62u16.to_le_bytes());
    put(&mut b, 20, &1u32.to_le_bytes());
    put(&mut b, 24, &entry.to_le_bytes());
    put(&mut b, 32, &(PH_AT as u64).to_le_bytes());
    put(&mut b, 52, &64u16.to_le_bytes());
    put(&mut b, 54, &56u16.to_le_bytes());
    put(&mut b, 56, &(segs.len() as u16).to_le_bytes());
    let mut data_at = DATA_AT + 0x100;
    for (i, (pa, va, data, memsz)) in segs.iter().enumerate() {
        let at = PH_AT + 56 * i;
        put(&mut b, at, &PT_LOAD.to_le_bytes());
        put(&mut b, at + 4, &7u32.to_le_bytes());
        for (j, v) in [data_at as u64, *va, *pa, data.len() as u64, *memsz, 0x1000]
            .iter()
            .enumerate()
        {
            put(&mut b, at + 8 + 8 * j, &v.to_le_bytes());
        }
        put(&mut b, data_at, data);
        data_at += data.len();
    }
    put(&mut b, HDR_AT + 0x100, &mb_header(0b10));
    b
}

/// An a.out-kludge image: header at 0x40 of a file loaded at `load`.
fn aout_image(load: u32, code: &[u8], bss_end: u32, entry: u32) -> Vec<u8> {
    let flags = FLAG_AOUT_KLUDGE | 0b10;
    let mut b = vec![0u8; 0x40];
    b.extend(mb_header(flags));
    for v in [
        load + 0x40,
        load,
        load + 0x60 + code.len() as u32,
        bss_end,
        entry,
    ] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.resize(0x60, 0);
    b.extend_from_slice(code);
    b
}

const RAM: u64 = 32 << 20;

pub(crate) fn sample_elf32() -> Vec<u8> {
    let code: Vec<u8> = (1..=16).collect();
    elf32_image(
        &[
            (0x10_0000, 0xc010_0000, &code, 0x100),
            (0x20_0000, 0xc020_0000, &[0xaa, 0xbb, 0xcc, 0xdd], 0x2000),
        ],
        0xc010_0004,
    )
}

#[test]
fn elf32_loads_at_paddr_with_bss_zeroed() {
    let image = sample_elf32();
    let plan = plan(&image, RAM).expect("plan");
    assert_eq!(plan.entry, 0x10_0004);
    assert_eq!(plan.segments.len(), 2);
    assert_eq!(
        plan.segments[0],
        Segment {
            gpa: 0x10_0000,
            file_offset: DATA_AT,
            file_len: 16,
            mem_len: 0x100
        }
    );
    let mut ram = vec![0x55u8; RAM as usize];
    load(&plan, &image, &mut ram).unwrap();
    assert_eq!(
        &ram[0x10_0000..0x10_0010],
        &(1..=16).collect::<Vec<u8>>()[..]
    );
    assert!(ram[0x10_0010..0x10_0100].iter().all(|&b| b == 0));
    assert_eq!(ram[0x10_0100], 0x55);
    assert_eq!(&ram[0x20_0000..0x20_0004], &[0xaa, 0xbb, 0xcc, 0xdd]);
    assert!(ram[0x20_0004..0x20_2000].iter().all(|&b| b == 0));
}

#[test]
fn elf64_multiboot_image() {
    let image = elf64_image(&[(0x40_0000, 0x40_0000, &[0xf4; 8], 0x1000)], 0x40_0002);
    let plan = plan(&image, RAM).expect("plan");
    assert_eq!(plan.entry, 0x40_0002);
    assert_eq!(plan.segments[0].mem_len, 0x1000);
}

#[test]
fn aout_kludge() {
    let image = aout_image(0x10_0000, &[0x90, 0xf4], 0x10_2000, 0x10_0060);
    let h = find_header(&image).unwrap();
    assert_eq!(h.offset, 0x40);
    let plan = plan(&image, RAM).expect("plan");
    assert_eq!(plan.entry, 0x10_0060);
    assert_eq!(
        plan.segments[0],
        Segment {
            gpa: 0x10_0000,
            file_offset: 0,
            file_len: 0x62,
            mem_len: 0x2000
        }
    );
    // bss_end below load_end, entry outside, header before load_addr: errors.
    let bad = aout_image(0x10_0000, &[0x90], 0x10_0010, 0x10_0060);
    assert_eq!(plan_err(&bad), LoadError::BadAoutKludge);
    let bad = aout_image(0x10_0000, &[0x90], 0, 0x30_0000);
    assert_eq!(plan_err(&bad), LoadError::EntryOutsideImage);
    let mut bad = aout_image(0x10_0000, &[0x90], 0, 0x10_0060);
    bad[0x4c..0x50].copy_from_slice(&0x0f_0000u32.to_le_bytes()); // header_addr < load_addr
    assert_eq!(plan_err(&bad), LoadError::BadAoutKludge);
}

fn plan_err(image: &[u8]) -> LoadError {
    plan(image, RAM).expect_err("should fail")
}

#[test]
fn header_problems() {
    assert_eq!(plan_err(&[0u8; 100]), LoadError::NoHeader);
    assert_eq!(plan_err(&[]), LoadError::NoHeader);
    let mut image = sample_elf32();
    image[HDR_AT + 8] ^= 1;
    assert_eq!(plan_err(&image), LoadError::BadChecksum);
    // Video mode (flag 2) is not supported.
    let mut image = sample_elf32();
    put(&mut image, HDR_AT, &mb_header(0b111));
    assert_eq!(plan_err(&image), LoadError::UnsupportedFlags(0b111));
    // Misaligned header is not found.
    let mut image = vec![0u8; 2];
    image.extend(mb_header(0));
    assert_eq!(plan_err(&image), LoadError::NoHeader);
    // Header beyond 8 KiB is not found.
    let mut image = vec![0u8; SEARCH_LEN];
    image.extend(mb_header(0));
    assert_eq!(plan_err(&image), LoadError::NoHeader);
    // Kludge header cut short.
    let image = mb_header(FLAG_AOUT_KLUDGE);
    assert_eq!(plan_err(&image), LoadError::Truncated);
    // Magic, flags and no checksum word.
    let image = &mb_header(0)[..8];
    assert_eq!(plan_err(image), LoadError::BadChecksum);
}

#[test]
fn segment_problems() {
    let seg = |pa: u64, memsz: u64| elf32_image(&[(pa, pa, &[1, 2, 3, 4], memsz)], pa as u32);
    assert!(matches!(
        plan_err(&seg(RAM - 2, 0x10)),
        LoadError::SegmentOutsideRam { .. }
    ));
    assert!(matches!(
        plan_err(&seg(0x8000, 0x10)),
        LoadError::SegmentInReservedArea { .. }
    ));
    assert!(matches!(
        plan_err(&seg(0xf_f000, 0x10)),
        LoadError::SegmentInReservedArea { .. }
    ));
    assert!(matches!(
        plan_err(&seg(0x10_0000, 0xffff_ffff)),
        LoadError::SegmentOutsideRam { .. }
    ));
    assert_eq!(
        plan_err(&seg(0x10_0000, 2)),
        LoadError::FileLargerThanMemory
    );
    let overlap = elf32_image(
        &[
            (0x10_0000, 0x10_0000, &[1], 0x100),
            (0x10_0080, 0x10_0080, &[2], 0x100),
        ],
        0x10_0000,
    );
    assert_eq!(plan_err(&overlap), LoadError::Overlap);
    let entry_out = elf32_image(&[(0x10_0000, 0x10_0000, &[1], 0x100)], 0x50_0000);
    assert_eq!(plan_err(&entry_out), LoadError::EntryOutsideImage);
    let none = elf32_image(&[(0x10_0000, 0x10_0000, &[], 0)], 0x10_0000);
    assert_eq!(plan_err(&none), LoadError::NoSegments);
    let segs: Vec<(u64, u64, &[u8], u64)> = (0..17u64)
        .map(|i| {
            (
                0x10_0000 + i * 0x1000,
                0x10_0000 + i * 0x1000,
                &[1u8][..],
                0x10,
            )
        })
        .collect();
    assert_eq!(
        plan_err(&elf32_image(&segs, 0x10_0000)),
        LoadError::TooManySegments
    );
    // Truncated: file bytes past the end of the image.
    let mut image = sample_elf32();
    put(&mut image, PH_AT + 16, &0x1_0000u32.to_le_bytes()); // p_filesz
    put(&mut image, PH_AT + 20, &0x1_0000u32.to_le_bytes()); // p_memsz
    assert_eq!(plan_err(&image), LoadError::Truncated);
    // Not x86.
    let mut image = sample_elf32();
    image[18] = 40; // EM_ARM
    assert_eq!(plan_err(&image), LoadError::BadElf(ElfProblem::WrongKind));
    let mut image = sample_elf32();
    image[1] = b'X';
    assert_eq!(plan_err(&image), LoadError::BadElf(ElfProblem::Parse));
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = plan(&bytes, RAM);
        // With a valid header in front, the ELF and kludge paths see random data too.
        let mut image = mb_header(0b11);
        image.extend_from_slice(&bytes);
        let _ = plan(&image, RAM);
        let mut image = mb_header(FLAG_AOUT_KLUDGE);
        image.extend_from_slice(&bytes);
        if let Ok(p) = plan(&image, RAM) {
            let mut ram = vec![0u8; 4 << 20];
            let _ = load(&p, &image, &mut ram);
        }
    }

    #[test]
    fn mutated_images_never_panic(flips in prop::collection::vec((0usize..0x440, any::<u8>()), 1..8)) {
        let mut image = sample_elf32();
        for (at, v) in flips {
            if let Some(b) = image.get_mut(at) {
                *b ^= v;
            }
        }
        if let Ok(p) = plan(&image, RAM) {
            let mut ram = vec![0u8; RAM as usize];
            prop_assert!(load(&p, &image, &mut ram).is_ok());
        }
    }
}
