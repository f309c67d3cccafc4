//! The MMU service's exit handling for shadow-paged vCPUs (`shadow_exit`): exit messages in,
//! replies out, checked against the guest's own tables and the hardware model of `common`.

mod common;

use abi::vmx::{group, reason, reply, ExitMessage, ExitReply};
use common::*;
use mmu_service::shadow_exit::{handle_exit, InMessage, ShadowVcpu, Stop};
use mmu_service::{GuestMemory, Mmu, MmuConfig};

const PML4: u64 = 0x1000;
const PML4_B: u64 = 0x8000;
const PT: u64 = 0x4000;
const CODE: u64 = 0x10000;
/// Valid hardware exception #PF with an error code.
const PF_INFO: u32 = 0x8000_0b0e;

/// A 64-bit guest: two address spaces (PML4 at 0x1000 and 0x8000) sharing one PDPT, PD and
/// page table; the table maps the first 2 MiB one to one, itself included (entry 4), except
/// that entry 6 is not present.
fn guest() -> (TestMmu, ShadowVcpu) {
    let mut mem = TestMemory::new(1024);
    for pml4 in [PML4, PML4_B] {
        mem.w64(pml4, 0x2000 | 3);
    }
    mem.w64(0x2000, 0x3000 | 3);
    mem.w64(0x3000, PT | 3);
    for i in 0..512u64 {
        if i != 6 {
            mem.w64(PT + 8 * i, (i << 12) | 3);
        }
    }
    // mov [rdi], rax
    mem.write(CODE, &[0x48, 0x89, 0x07]).unwrap();
    let pool = TestPool::new(64, 0);
    let mmu = Mmu::new(mem, pool, MmuConfig::default()).unwrap();
    (mmu, ShadowVcpu::default())
}

/// An exit message of the 64-bit guest in ring 0 on CR3 `cr3`.
fn message(basic: u32, cr3: u64) -> ExitMessage {
    let mut m = ExitMessage {
        reason: basic,
        mask: group::ALL,
        cr0_shadow: cr0::PG | cr0::PE | cr0::WP,
        cr3,
        cr4_shadow: cr4::PAE,
        efer: efer::LME | efer::LMA,
        rip: CODE,
        ..ExitMessage::default()
    };
    m.segments[0].access_rights = 0xa09b; // CS: 64-bit code, DPL 0
    m.segments[1].access_rights = 0xc093; // SS: DPL 0
    m
}

fn page_fault(gva: u64, error_code: u32) -> ExitMessage {
    let mut m = message(reason::EXCEPTION_NMI, PML4);
    m.intr_info = PF_INFO;
    m.intr_error = error_code;
    m.qualification = gva;
    m
}

fn read() -> Acc {
    Acc::ALL[0]
}

fn exit(mmu: &mut TestMmu, sv: &mut ShadowVcpu, m: &ExitMessage) -> ExitReply {
    handle_exit(mmu, sv, m, &mut InMessage).expect("handled")
}

#[test]
fn a_fault_on_a_mapped_page_builds_the_shadow_and_names_the_root() {
    let (mut mmu, mut sv) = guest();
    let r = exit(&mut mmu, &mut sv, &page_fault(0x5123, 0));
    assert_eq!(
        r.flags,
        reply::SET_SHADOW_CR3,
        "resume at the same instruction"
    );
    let vcpu = sv.vcpu.as_ref().unwrap();
    assert_eq!(r.shadow_cr3, vcpu.shadow_cr3());
    assert_eq!(
        hw_translate(&mmu, vcpu, &sv.regs, 0x5123, read()),
        Ok(RAM_HPA + 0x5123)
    );
    // The guest's accessed bit is set, as the processor would.
    assert_ne!(mmu.mem().r64(PT + 8 * 5) & (1 << 5), 0);
    // The kernel keeps the root: the next reply does not name it again...
    let r = exit(&mut mmu, &mut sv, &page_fault(0x7000, 0));
    assert_eq!(r.flags, 0);
    // ...until the guest's paging state changed behind the service's back (the kernel then
    // ran the vCPU on its empty root): then it is named again.
    let mut m = page_fault(0x8000, 0);
    m.cr0_shadow &= !cr0::WP;
    let r = exit(&mut mmu, &mut sv, &m);
    assert_eq!(r.flags, reply::SET_SHADOW_CR3);
}

#[test]
fn a_fault_the_guest_tables_deny_is_injected_with_cr2() {
    let (mut mmu, mut sv) = guest();
    let m = page_fault(0x6008, 2);
    let r = exit(&mut mmu, &mut sv, &m);
    assert_eq!(
        r.flags,
        reply::INJECT | reply::SET_CR2 | reply::SET_SHADOW_CR3 | reply::SET_RFLAGS
    );
    // A fault: RF in the RFLAGS the delivery pushes, as the CPU sets it.
    assert_eq!(r.rflags, m.rflags | 1 << 16);
    assert_eq!(
        r.inject,
        u64::from(PF_INFO) | (2 << 32),
        "not present, write"
    );
    assert_eq!(r.cr2, 0x6008);
}

#[test]
fn a_fault_while_delivering_an_event_delivers_it_again_and_a_second_pf_is_a_double_fault() {
    let (mut mmu, mut sv) = guest();
    let mut m = page_fault(0x5000, 2);
    m.idt_vectoring_info = 0x8000_0020; // external interrupt 0x20
    let r = exit(&mut mmu, &mut sv, &m);
    assert_eq!(r.flags, reply::INJECT | reply::SET_SHADOW_CR3);
    assert_eq!(r.inject, 0x8000_0020);
    let mut m = page_fault(0x6000, 2);
    m.idt_vectoring_info = PF_INFO;
    m.idt_vectoring_error = 2;
    let r = exit(&mut mmu, &mut sv, &m);
    assert_eq!(r.inject, 0x8000_0b08, "#DF with error code 0");
    assert_eq!(r.flags & reply::SET_CR2, 0);
}

#[test]
fn cr3_loads_switch_roots_and_come_back_to_the_cached_one() {
    let (mut mmu, mut sv) = guest();
    exit(&mut mmu, &mut sv, &page_fault(0x5000, 0));
    let root_a = sv.vcpu.as_ref().unwrap().shadow_cr3();
    let mov_cr3 = |to: u64, from_cr3: u64| {
        let mut m = message(reason::CR_ACCESS, from_cr3);
        m.qualification = 3 | (3 << 8); // MOV CR3, rbx
        m.gprs[3] = to;
        m.instruction_len = 3;
        m
    };
    let r = exit(&mut mmu, &mut sv, &mov_cr3(PML4_B, PML4));
    assert_eq!(
        r.flags,
        reply::ADVANCE_RIP | reply::SET_CR3 | reply::SET_SHADOW_CR3
    );
    assert_eq!(r.cr3, PML4_B);
    assert_ne!(r.shadow_cr3, root_a);
    let r = exit(&mut mmu, &mut sv, &mov_cr3(PML4, PML4_B));
    assert_eq!(
        r.shadow_cr3, root_a,
        "the first root came back from prev_roots"
    );
    let s = mmu.stats();
    // Built for the first CR3 and for the second, found again for the return.
    assert_eq!(
        (s.prev_roots_hits[3], s.prev_roots_misses[3]),
        (1, 2),
        "{s:?}"
    );
    assert_eq!(sv.cr3_loads, 2);
    // The shadow built before the switch is still there.
    let vcpu = sv.vcpu.as_ref().unwrap();
    assert_eq!(
        hw_translate(&mmu, vcpu, &sv.regs, 0x5000, read()),
        Ok(RAM_HPA + 0x5000)
    );
}

#[test]
fn a_write_to_a_table_on_its_own_walk_is_emulated() {
    let (mut mmu, mut sv) = guest();
    // The guest maps 0x6000 by writing entry 6 of the table through the table's own mapping.
    let mut m = page_fault(PT + 8 * 6, 3);
    m.gprs[7] = PT + 8 * 6; // rdi
    m.gprs[0] = 0x7000 | 3; // rax
    m.rflags = 2;
    let r = exit(&mut mmu, &mut sv, &m);
    assert_eq!(
        r.flags & !reply::SET_SHADOW_CR3,
        reply::SET_RIP | reply::SET_RFLAGS
    );
    assert_eq!(r.rip, CODE + 3);
    assert_eq!(r.gpr_mask, 0, "mov changes no register");
    assert_eq!(mmu.mem().r64(PT + 8 * 6) & !0x60, 0x7000 | 3);
    assert_eq!(mmu.stats().emulate_writes, 1);
    // The new mapping is used: the next access to 0x6000 reaches 0x7000.
    exit(&mut mmu, &mut sv, &page_fault(0x6000, 0));
    let vcpu = sv.vcpu.as_ref().unwrap();
    assert_eq!(
        hw_translate(&mmu, vcpu, &sv.regs, 0x6000, read()),
        Ok(RAM_HPA + 0x7000)
    );
}

#[test]
fn an_instruction_that_cannot_be_emulated_stops_the_vm_with_its_bytes() {
    let (mut mmu, mut sv) = guest();
    mmu.mem_mut().write(CODE, &[0x0f, 0x0b]).unwrap(); // ud2
    let m = page_fault(PT + 8 * 6, 3);
    match handle_exit(&mut mmu, &mut sv, &m, &mut InMessage) {
        Err(Stop::Unemulated { rip, bytes, .. }) => {
            assert_eq!(rip, CODE);
            assert_eq!(bytes[..2], [0x0f, 0x0b]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_data_access_outside_ram_is_forwarded_a_fetch_stops_and_other_exits_are_refused() {
    let (mut mmu, mut sv) = guest();
    let mut m = page_fault(0x4000_0004, 2);
    // Paging off: linear = physical, 1 GiB is beyond the 4 MiB of RAM.
    m.cr0_shadow = cr0::PE;
    m.efer = 0;
    m.cr4_shadow = 0;
    // A write there goes on to the VMM's MMIO portal, with its guest-physical address.
    let r = handle_exit(&mut mmu, &mut sv, &m, &mut InMessage).unwrap();
    assert_eq!((r.flags, r.forward_gpa), (reply::FORWARD, 0x4000_0004));
    assert_eq!(r, mmu_service::shadow_exit::forward(0x4000_0004));
    // An instruction fetch there cannot be emulated: the VM stops.
    m.intr_error = 0x10;
    assert_eq!(
        handle_exit(&mut mmu, &mut sv, &m, &mut InMessage),
        Err(Stop::OutsideRam { gpa: 0x4000_0004 })
    );
    let m = message(reason::CPUID, PML4);
    assert_eq!(
        handle_exit(&mut mmu, &mut sv, &m, &mut InMessage),
        Err(Stop::Unexpected {
            reason: reason::CPUID
        })
    );
}

#[test]
fn invlpg_drops_the_shadow_of_the_page_and_advances() {
    let (mut mmu, mut sv) = guest();
    exit(&mut mmu, &mut sv, &page_fault(0x5000, 0));
    // The guest unmaps 0x5000 (its table is write-protected: do it behind the MMU's back, as
    // a write the MMU was told about would) and executes INVLPG.
    let mut m = message(reason::INVLPG, PML4);
    m.qualification = 0x5000;
    let r = exit(&mut mmu, &mut sv, &m);
    assert_eq!(
        r.flags,
        reply::ADVANCE_RIP,
        "the root did not change: not named again"
    );
    let vcpu = sv.vcpu.as_ref().unwrap();
    assert!(hw_translate(&mmu, vcpu, &sv.regs, 0x5000, read()).is_err());
}

#[test]
fn a_kernel_access_to_a_user_page_after_stac_is_not_a_smap_fault() {
    let (mut mmu, mut sv) = guest();
    let user_page = |mmu: &mut TestMmu, n: u64| {
        for table in [PML4, 0x2000, 0x3000] {
            let e = mmu.mem().r64(table);
            mmu.mem_mut().w64(table, e | 4);
        }
        mmu.mem_mut().w64(PT + 8 * n, (n << 12) | 7);
    };
    user_page(&mut mmu, 5);
    user_page(&mut mmu, 7);
    let with = |gva: u64, rflags: u64| {
        let mut m = page_fault(gva, 0);
        m.cr4_shadow |= cr4::SMAP;
        m.rflags = rflags;
        m
    };
    let r = exit(&mut mmu, &mut sv, &with(0x5000, 2 | (1 << 18)));
    assert_eq!(r.flags, reply::SET_SHADOW_CR3, "EFLAGS.AC = 1: built");
    let r = exit(&mut mmu, &mut sv, &with(0x7000, 2));
    assert_eq!(r.inject, u64::from(PF_INFO) | (1 << 32), "AC = 0: #PF(P)");
}

/// The vCPU's registers and segments, read only when a write must be emulated.
struct FromVcpu(ExitMessage, u32);

impl mmu_service::shadow_exit::MoreState for FromVcpu {
    fn fill(&mut self, m: &mut ExitMessage) -> bool {
        self.1 += 1;
        m.gprs = self.0.gprs;
        m.segments = self.0.segments;
        m.mask |= group::GPRS | group::SEGS;
        true
    }
}

#[test]
fn a_lean_fault_message_reads_the_registers_only_to_emulate() {
    let (mut mmu, mut sv) = guest();
    let lean = |m: &ExitMessage| ExitMessage {
        mask: group::QUAL | group::CRS | group::RIP,
        gprs: [0; 16],
        segments: Default::default(),
        ..*m
    };
    let mut full = page_fault(PT + 8 * 6, 3);
    full.gprs[7] = PT + 8 * 6;
    full.gprs[0] = 0x7000 | 3;
    let mut vcpu = FromVcpu(full, 0);
    // An ordinary fault needs nothing more.
    let r = handle_exit(&mut mmu, &mut sv, &lean(&page_fault(0x5000, 0)), &mut vcpu).unwrap();
    assert_eq!(r.flags, reply::SET_SHADOW_CR3);
    assert_eq!(vcpu.1, 0);
    // The write to the table is emulated with the registers read from the vCPU.
    let r = handle_exit(&mut mmu, &mut sv, &lean(&full), &mut vcpu).unwrap();
    assert_eq!(vcpu.1, 1);
    assert_eq!(r.rip, CODE + 3);
    assert_eq!(mmu.mem().r64(PT + 8 * 6) & !0x60, 0x7000 | 3);
    // Without a way to read them, the VM stops with a clear reason.
    let mut full = page_fault(PT + 8 * 7, 3);
    full.gprs[7] = PT + 8 * 7;
    assert_eq!(
        handle_exit(&mut mmu, &mut sv, &lean(&full), &mut InMessage),
        Err(Stop::NoRegisters)
    );
}

#[test]
fn cr4_bits_the_shadow_mmu_does_not_implement_are_a_gp() {
    let (mut mmu, mut sv) = guest();
    for bit in [1u64 << 12, 1 << 22] {
        let mut m = message(reason::CR_ACCESS, PML4);
        m.qualification = 4; // MOV CR4, rax
        m.gprs[0] = cr4::PAE | bit;
        let r = exit(&mut mmu, &mut sv, &m);
        assert_eq!(r.inject, 0x8000_0b0d, "CR4 bit {bit:#x}: #GP(0)");
        assert_eq!(r.flags & (reply::SET_CR4 | reply::ADVANCE_RIP), 0);
    }
}

/// A processor without SMEP (CR4 bit 20).
struct NoSmep;

impl mmu_service::shadow_exit::MoreState for NoSmep {
    fn fill(&mut self, _m: &mut ExitMessage) -> bool {
        false
    }
    fn limits(&mut self) -> vmm_service::cr::Limits {
        vmm_service::cr::Limits {
            cr4_unoffered: 1 << 20,
            maxphyaddr: 52,
        }
    }
}

#[test]
fn a_cr4_bit_the_processor_lacks_is_a_gp_with_rf_not_a_failed_entry() {
    let (mut mmu, mut sv) = guest();
    let mut m = message(reason::CR_ACCESS, PML4);
    m.qualification = 4; // MOV CR4, rax
    m.gprs[0] = cr4::PAE | 1 << 20;
    m.rflags = 0x202;
    let r = handle_exit(&mut mmu, &mut sv, &m, &mut NoSmep).expect("handled");
    assert_eq!(r.inject, 0x8000_0b0d);
    assert_eq!(
        r.flags & !reply::SET_SHADOW_CR3,
        reply::INJECT | reply::SET_RFLAGS
    );
    assert_eq!(
        r.rflags,
        0x202 | 1 << 16,
        "RF, as the CPU sets it for a fault"
    );
    // Where the processor has it, the write goes through.
    let r = exit(&mut mmu, &mut sv, &m);
    assert_ne!(r.flags & reply::SET_CR4, 0);
}
