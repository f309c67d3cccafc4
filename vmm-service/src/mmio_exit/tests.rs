//! Tests of the forwarded-exit handling: instructions fetched through the guest's tables,
//! emulated against the test device and guest RAM, the reply; and every stop.

use super::*;
use crate::devices::mmio::test_device::{self, BASE};
use crate::devices::mmio::MmioBus;
use crate::vm::{Stop, VmModel, VmResult};
use abi::vmx::{reason, reply};

/// Guest RAM (2 MiB) and nothing else.
struct Ram(std::vec::Vec<u8>);

impl Env for Ram {
    fn host_cpuid(&mut self, _: u32, _: u32) -> [u32; 4] {
        [0; 4]
    }
    fn tsc(&mut self) -> u64 {
        0
    }
    fn read_guest(&mut self, gpa: u64, buf: &mut [u8]) -> bool {
        let a = gpa as usize;
        match self.0.get(a..a + buf.len()) {
            Some(s) => {
                buf.copy_from_slice(s);
                true
            }
            None => false,
        }
    }
    fn write_guest(&mut self, gpa: u64, data: &[u8]) -> bool {
        let a = gpa as usize;
        match self.0.get_mut(a..a + data.len()) {
            Some(s) => {
                s.copy_from_slice(data);
                true
            }
            None => false,
        }
    }
    fn ticks(&mut self) -> u64 {
        0
    }
    fn vcpu_read(&mut self, _: &[u64], _: &mut [u64]) -> bool {
        false
    }
    fn vcpu_write(&mut self, _: &[(u64, u64)]) -> bool {
        false
    }
}

const CODE: u64 = 0x10_0000;
const PML4: u64 = 0x1000;
const PDPT: u64 = 0x2000;

/// 2 MiB of RAM with `code` at [`CODE`] and, for 64-bit mode, tables mapping the low 4 GiB
/// one to one (1 GiB pages).
fn ram(code: &[u8]) -> Ram {
    let mut r = vec![0u8; 2 << 20];
    r[CODE as usize..CODE as usize + code.len()].copy_from_slice(code);
    r[PML4 as usize..PML4 as usize + 8].copy_from_slice(&(PDPT | 3).to_le_bytes());
    for i in 0..4u64 {
        let e = (i << 30) | 0x83; // present, writable, 1 GiB
        let at = (PDPT + 8 * i) as usize;
        r[at..at + 8].copy_from_slice(&e.to_le_bytes());
    }
    Ram(r)
}

/// A forwarded exit at `gpa` of a guest in 64-bit mode (paging on) or 32-bit protected mode
/// without paging, at RIP [`CODE`].
fn exit(long: bool, gpa: u64, gprs: [u64; 16]) -> ExitMessage {
    let mut m = ExitMessage {
        reason: reason::EPT_VIOLATION,
        mask: group::ALL,
        gprs,
        rip: CODE,
        rflags: 0x2,
        gpa,
        ..ExitMessage::default()
    };
    if long {
        m.cr0_shadow = 0x8000_0011;
        m.cr3 = PML4;
        m.cr4_shadow = 0x20;
        m.efer = efer::LME | efer::LMA;
        m.segments[0].access_rights = 0xa09b; // L
    } else {
        m.cr0_shadow = 0x11;
        m.segments[0].access_rights = 0xc09b; // D
    }
    m
}

fn regs(pairs: &[(Gpr, u64)]) -> [u64; 16] {
    let mut g = [0u64; 16];
    for &(r, v) in pairs {
        g[r as usize] = v;
    }
    g
}

#[test]
fn a_32_bit_store_to_the_device_advances_rip() {
    // mov [0xfebf0008], eax
    let mut env = ram(&[0xa3, 0x08, 0x00, 0xbf, 0xfe]);
    let mut bus = MmioBus::new();
    let m = exit(false, BASE + 8, regs(&[(Gpr::Rax, 0x1234_5678)]));
    let r = handle(&m, &mut bus, &mut env).unwrap();
    assert_eq!(r.flags, reply::SET_RIP | reply::SET_RFLAGS);
    assert_eq!((r.rip, r.rflags, r.gpr_mask), (CODE + 5, 0x2, 0));
    assert_eq!(bus.read(BASE + 8, 8), Some(0x1234_5678));
}

#[test]
fn a_64_bit_load_through_the_guests_tables_sets_the_register() {
    // mov rax, [rbx]; cmp ecx, [rbx + 8]
    let mut bus = MmioBus::new();
    assert!(bus.write(BASE + 8, 4, 7));
    let m = exit(
        true,
        BASE + test_device::ID,
        regs(&[(Gpr::Rbx, BASE + 0x110)]),
    );
    let mut env = ram(&[0x48, 0x8b, 0x03]);
    let r = handle(&m, &mut bus, &mut env).unwrap();
    assert_eq!(r.gpr_mask, 1 << Gpr::Rax as u16);
    assert_eq!((r.gprs[0], r.rip), (test_device::MAGIC, CODE + 3));
    let m = exit(true, BASE + 8, regs(&[(Gpr::Rbx, BASE), (Gpr::Rcx, 7)]));
    let mut env = ram(&[0x3b, 0x4b, 0x08]);
    let r = handle(&m, &mut bus, &mut env).unwrap();
    assert_eq!(r.gpr_mask, 0, "CMP writes no register");
    assert_eq!(r.rflags & emulate::STATUS_FLAGS, emulate::ZF | emulate::PF);
}

#[test]
fn rep_movs_from_ram_to_the_device_runs_one_element_per_exit() {
    // rep movsb
    let mut env = ram(&[0xf3, 0xa4]);
    env.0[0x3000..0x3004].copy_from_slice(b"abcd");
    let mut bus = MmioBus::new();
    let mut g = regs(&[(Gpr::Rcx, 4), (Gpr::Rsi, 0x3000), (Gpr::Rdi, BASE + 0x20)]);
    let mut exits = 0;
    loop {
        let m = exit(true, g[Gpr::Rdi as usize], g);
        let r = handle(&m, &mut bus, &mut env).unwrap();
        exits += 1;
        for (n, reg) in g.iter_mut().enumerate() {
            if r.gpr_mask & (1 << n) != 0 {
                *reg = r.gprs[n];
            }
        }
        if r.rip != CODE {
            assert_eq!(r.rip, CODE + 2);
            break;
        }
    }
    assert_eq!(exits, 4);
    assert_eq!(
        (
            g[Gpr::Rcx as usize],
            g[Gpr::Rsi as usize],
            g[Gpr::Rdi as usize]
        ),
        (0, 0x3004, BASE + 0x24)
    );
    assert_eq!(
        bus.read(BASE + 0x20, 4),
        Some(u64::from(u32::from_le_bytes(*b"abcd")))
    );
}

#[test]
fn stops_leave_the_device_untouched() {
    let mut bus = MmioBus::new();
    // No device there.
    let mut env = ram(&[0x89, 0x03]);
    let m = exit(true, 0xd000_0000, regs(&[(Gpr::Rbx, 0xd000_0000)]));
    assert_eq!(
        handle(&m, &mut bus, &mut env),
        Err(MmioStop::Unclaimed { gpa: 0xd000_0000 })
    );
    // movdqu xmm0, [rbx]: not emulated; the bytes are in the stop.
    let movdqu = [0xf3, 0x0f, 0x6f, 0x03];
    let mut env = ram(&movdqu);
    let m = exit(true, BASE, regs(&[(Gpr::Rbx, BASE)]));
    match handle(&m, &mut bus, &mut env) {
        Err(MmioStop::Unemulated { code, error }) => {
            assert_eq!(&code[..4], &movdqu);
            assert!(
                matches!(error, EmulateError::Unsupported { .. }),
                "{error:?}"
            );
        }
        r => panic!("{r:?}"),
    }
    // Without the registers.
    let mut m = exit(true, BASE, regs(&[]));
    m.mask &= !group::GPRS;
    assert_eq!(handle(&m, &mut bus, &mut env), Err(MmioStop::MissingState));
    // Code the guest's tables do not map.
    let mut m = exit(true, BASE, regs(&[]));
    m.rip = 0x1_0000_0000;
    assert_eq!(handle(&m, &mut bus, &mut env), Err(MmioStop::NoCode));
    assert_eq!(bus.test.read_count(), 0);
}

#[test]
fn the_vm_model_answers_forwarded_exits_and_stops_with_a_report() {
    let mut model = VmModel::new("mmio", 2 << 20);
    let mut env = ram(&[0x89, 0x03]); // mov [rbx], eax
    let m = exit(true, BASE, regs(&[(Gpr::Rbx, BASE), (Gpr::Rax, 9)]));
    let out = model.handle(&m, &mut env);
    assert_eq!(out.reply.rip, CODE + 2);
    assert_eq!(model.mmio.read(BASE, 4), Some(9));
    // A shadow-paged guest's forwarded #PF.
    let mut shadow = VmModel::new("mmio", 2 << 20).shadow_paged();
    let mut m = exit(true, BASE, regs(&[(Gpr::Rbx, BASE), (Gpr::Rax, 5)]));
    m.reason = reason::EXCEPTION_NMI;
    m.intr_info = 0x8000_0b0e;
    assert_eq!(shadow.handle(&m, &mut env).reply.rip, CODE + 2);
    assert_eq!(shadow.mmio.read(BASE, 4), Some(5));
    // Outside every device: the MMU service's outside-RAM result.
    let m = exit(true, 0xd000_0000, regs(&[(Gpr::Rbx, 0xd000_0000)]));
    let out = model.handle(&m, &mut env);
    let stop: &Stop = out.stopped().unwrap();
    assert_eq!(stop.result(), &VmResult::OutsideRam { gpa: 0xd000_0000 });
    assert_eq!(
        stop.stop_code(),
        userlib::proto::stop_code::outside_ram(0xd000_0000)
    );
    // An instruction not emulated: unhandled, with the bytes in the report.
    let mut model = VmModel::new("mmio", 2 << 20);
    let mut env = ram(&[0xf3, 0x0f, 0x6f, 0x03]);
    let out = model.handle(&exit(true, BASE, regs(&[(Gpr::Rbx, BASE)])), &mut env);
    let stop = out.stopped().unwrap();
    assert_eq!(
        stop.result(),
        &VmResult::Unhandled {
            reason: reason::EPT_VIOLATION
        }
    );
    let report = stop.report().unwrap();
    assert_eq!(
        report.what,
        "device access by an instruction the emulator does not handle"
    );
    assert_eq!(
        &report.code.as_ref().unwrap()[..4],
        &[0xf3, 0x0f, 0x6f, 0x03]
    );
    assert_eq!(out.reply.flags, reply::STOP);
}

#[test]
fn outside_ram_stops_are_not_kept_and_only_the_first_are_reported() {
    let mut model = VmModel::new("probe", 2 << 20);
    let mut env = ram(&[0x89, 0x03]); // mov [rbx], eax
    for n in 1..=5u64 {
        let gpa = 0xd000_0000 + n * 0x1000;
        let out = model.handle(&exit(true, gpa, regs(&[(Gpr::Rbx, gpa)])), &mut env);
        let stop = out.stopped().unwrap();
        assert_eq!(stop.result(), &VmResult::OutsideRam { gpa });
        assert_eq!(stop.report().is_some(), n <= 3, "stop {n}");
        assert_eq!(out.reply.flags, reply::STOP);
    }
    // The guest resumed elsewhere: its next device access is handled.
    let out = model.handle(&exit(true, BASE, regs(&[(Gpr::Rbx, BASE)])), &mut env);
    assert_eq!((out.stopped(), out.reply.rip), (None, CODE + 2));
}
