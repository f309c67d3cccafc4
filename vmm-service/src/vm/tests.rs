//! Made-up exit messages in, replies and events out.

use super::*;
use abi::vmx::reason;
use proptest::prelude::*;

struct TestEnv {
    ram: std::vec::Vec<u8>,
    tsc: u64,
    ticks: u64,
    /// The TSC's rate (0: unknown).
    tsc_hz: u64,
    /// The vCPU's state fields, refused as the kernel refuses them.
    state: std::collections::BTreeMap<u64, u64>,
}

impl TestEnv {
    fn new() -> TestEnv {
        TestEnv {
            ram: vec![0; 1 << 20],
            tsc: 1_000_000,
            ticks: 0,
            tsc_hz: 0,
            state: std::collections::BTreeMap::new(),
        }
    }
}

impl Env for TestEnv {
    fn host_cpuid(&mut self, leaf: u32, sub: u32) -> [u32; 4] {
        match leaf {
            1 => [0x906ea, 0x0010_0800, 0x7ffa_fbff, 0xbfeb_fbff], // VMX (bit 5) set
            _ => [leaf, sub, 0, 0],
        }
    }
    fn tsc(&mut self) -> u64 {
        self.tsc
    }
    fn read_guest(&mut self, gpa: u64, buf: &mut [u8]) -> bool {
        let Ok(a) = usize::try_from(gpa) else {
            return false;
        };
        match a.checked_add(buf.len()).and_then(|e| self.ram.get(a..e)) {
            Some(s) => {
                buf.copy_from_slice(s);
                true
            }
            None => false,
        }
    }
    fn write_guest(&mut self, gpa: u64, data: &[u8]) -> bool {
        let Ok(a) = usize::try_from(gpa) else {
            return false;
        };
        match a
            .checked_add(data.len())
            .and_then(|e| self.ram.get_mut(a..e))
        {
            Some(s) => {
                s.copy_from_slice(data);
                true
            }
            None => false,
        }
    }
    fn ticks(&mut self) -> u64 {
        self.ticks
    }
    fn tsc_hz(&mut self) -> u64 {
        self.tsc_hz
    }
    fn vcpu_read(&mut self, fields: &[u64], out: &mut [u64]) -> bool {
        use abi::vmx::field::{access, Access};
        if fields.iter().any(|&f| access(f) == Access::None) {
            return false;
        }
        for (o, f) in out.iter_mut().zip(fields) {
            *o = self.state.get(f).copied().unwrap_or(0);
        }
        true
    }
    fn vcpu_write(&mut self, pairs: &[(u64, u64)]) -> bool {
        use abi::vmx::field::{access, msr_value_ok, Access};
        if pairs
            .iter()
            .any(|&(f, v)| access(f) != Access::ReadWrite || !msr_value_ok(f, v))
        {
            return false;
        }
        self.state.extend(pairs.iter().copied());
        true
    }
}

const RAM: u64 = 32 << 20;

/// #GP(0) injected at a guest whose RFLAGS are 0x202 (the messages of [`msg`]): RF is set.
fn gp() -> ExitReply {
    ExitReply {
        flags: reply::INJECT | reply::SET_RFLAGS,
        inject: cr::GP_INJECT,
        rflags: 0x202 | abi::cpu::rflags::RF,
        ..ExitReply::default()
    }
}

fn vm() -> VmModel {
    VmModel::new("test-vm", RAM)
}

/// A message for `reason` carrying the groups the VMM service's portals ask for.
fn msg(reason: u32) -> ExitMessage {
    ExitMessage {
        reason,
        mask: crate::exit::portal_mask(reason),
        rip: 0x10_0000,
        rflags: 0x202,
        instruction_len: 2,
        cr0_shadow: 0x11,
        ..ExitMessage::default()
    }
}

fn io(port: u16, size: u8, input: bool, rax: u64) -> ExitMessage {
    let mut m = msg(reason::IO);
    let size_bits = match size {
        1 => 0,
        2 => 1,
        _ => 3,
    };
    m.qualification = ((port as u64) << 16) | ((input as u64) << 3) | size_bits;
    m.gprs[0] = rax;
    m
}

fn gprs(m: &mut ExitMessage, regs: &[(Gpr, u64)]) {
    for (g, v) in regs {
        m.gprs[*g as usize] = *v;
    }
}

fn run(vm: &mut VmModel, m: &ExitMessage) -> Outcome {
    vm.handle(m, &mut TestEnv::new())
}

fn rax_of(o: &Outcome) -> u64 {
    assert_ne!(o.reply.gpr_mask & 1, 0, "rax not written: {o:?}");
    o.reply.gprs[0]
}

#[test]
fn cpuid_hides_vmx_and_shows_vendor() {
    let mut v = vm();
    let mut m = msg(reason::CPUID);
    gprs(&mut m, &[(Gpr::Rax, 0xffff_ffff_0000_0001)]);
    let o = run(&mut v, &m);
    assert_eq!(o.reply.flags, reply::ADVANCE_RIP);
    assert_eq!(o.reply.gpr_mask, 0b1111);
    let ecx = o.reply.gprs[Gpr::Rcx as usize];
    assert_eq!(ecx & (1 << 5), 0);
    assert_ne!(ecx & (1 << 31), 0);
    gprs(&mut m, &[(Gpr::Rax, 0x4000_0000)]);
    let o = run(&mut v, &m);
    let r = o.reply.gprs;
    let mut sig = vec![];
    for g in [Gpr::Rbx, Gpr::Rcx, Gpr::Rdx] {
        sig.extend_from_slice(&(r[g as usize] as u32).to_le_bytes());
    }
    assert_eq!(&sig, b"UmbraUmbraUm");
    assert_eq!(r[0], 0x4000_0001);
    assert_eq!(v.exit_count(reason::CPUID), 2);
}

#[test]
fn serial_line_and_lsr() {
    let mut v = vm();
    let mut lines = vec![];
    for b in b"hi\n" {
        let o = run(&mut v, &io(0x3f8, 1, false, 0xffff_ff00 | *b as u64));
        assert_eq!(o.reply, ExitReply::advance());
        lines.extend(o.events);
    }
    assert_eq!(
        lines,
        vec![Event::SerialLine(Text::from_slice(b"hi").unwrap())]
    );
    let o = run(&mut v, &io(0x3fd, 1, true, 0x1234_5678_9abc_def0));
    assert_eq!(rax_of(&o), 0x1234_5678_9abc_de60);
    assert_eq!(o.reply.flags, reply::ADVANCE_RIP);
}

#[test]
fn unknown_ports_read_all_ones_and_log_once() {
    let mut v = vm();
    let o = run(&mut v, &io(0x700, 1, true, 0xaaaa_aaaa_aaaa_aaaa));
    assert_eq!(rax_of(&o), 0xaaaa_aaaa_aaaa_aaff);
    assert_eq!(
        o.events.as_slice(),
        &[Event::UnhandledPort {
            port: 0x700,
            write: false
        }]
    );
    let o = run(&mut v, &io(0x700, 2, true, 0xaaaa_aaaa_aaaa_aaaa));
    assert_eq!(rax_of(&o), 0xaaaa_aaaa_aaaa_ffff);
    assert_eq!(o.events.len(), 1); // only 0x701 is new
    let o = run(&mut v, &io(0x700, 4, true, 0xaaaa_aaaa_aaaa_aaaa));
    assert_eq!(rax_of(&o), 0xffff_ffff);
    assert_eq!(o.events.len(), 2);
    let o = run(&mut v, &io(0x700, 4, true, 0));
    assert!(o.events.is_empty());
    let o = run(&mut v, &io(0x80, 1, false, 0));
    assert_eq!(o.reply, ExitReply::advance());
    assert_eq!(o.events.len(), 1);
    assert!(run(&mut v, &io(0x80, 1, false, 0)).events.is_empty());
}

#[test]
fn debug_exit_stops_with_code() {
    let mut v = vm();
    run(&mut v, &io(0x3f8, 1, false, b'x' as u64));
    let o = run(&mut v, &io(0xf4, 1, false, 0x10));
    assert_eq!(o.reply, ExitReply::stop(stop_code::DEBUG_EXIT | 0x21));
    assert_eq!(
        o.events.as_slice(),
        &[
            Event::SerialLine(Text::from_slice(b"x").unwrap()),
            Event::Stopped(Stop::debug_exit(0x21))
        ]
    );
    assert_eq!(v.result(), Some(&Stop::debug_exit(0x21)));
    // Later exits get the same stop.
    let o = run(&mut v, &msg(reason::HLT));
    assert_eq!(o.reply.flags, reply::STOP);
    assert_eq!(o.stopped(), Some(&Stop::debug_exit(0x21)));
}

#[test]
fn msrs() {
    let mut v = vm();
    let mut env = TestEnv::new();
    let mut m = msg(reason::RDMSR);
    gprs(&mut m, &[(Gpr::Rcx, 0x48)]); // IA32_SPEC_CTRL: not offered
    assert_eq!(v.handle(&m, &mut env).reply, gp());
    let mut w = msg(reason::WRMSR);
    gprs(
        &mut w,
        &[(Gpr::Rcx, 0x174), (Gpr::Rax, 0xdead_0008), (Gpr::Rdx, 0)],
    );
    assert_eq!(v.handle(&w, &mut env).reply, ExitReply::advance());
    gprs(&mut m, &[(Gpr::Rcx, 0x174)]);
    let o = v.handle(&m, &mut env);
    assert_eq!((o.reply.gprs[0], o.reply.gprs[2]), (0xdead_0008, 0));
    assert_eq!(o.reply.gpr_mask, 0b101);
    // EFER: LME|NXE → SET_EFER.
    gprs(
        &mut w,
        &[(Gpr::Rcx, 0xc000_0080), (Gpr::Rax, 0x900), (Gpr::Rdx, 0)],
    );
    let o = v.handle(&w, &mut env);
    assert_eq!(o.reply.flags, reply::ADVANCE_RIP | reply::SET_EFER);
    assert_eq!(o.reply.efer, 0x900);
    // Reserved EFER bit: #GP, nothing stored.
    gprs(&mut w, &[(Gpr::Rax, 0x2)]);
    assert_eq!(v.handle(&w, &mut env).reply, gp());
    assert_eq!(v.msr.efer, 0x900);
    // TSC read comes from the environment, split into EDX:EAX.
    gprs(&mut m, &[(Gpr::Rcx, 0x10)]);
    let mut env = TestEnv::new();
    env.tsc = 0x1_2345_6789;
    let o = v.handle(&m, &mut env);
    assert_eq!((o.reply.gprs[0], o.reply.gprs[2]), (0x2345_6789, 1));
}

#[test]
fn cr_writes() {
    let mut v = vm();
    let mut m = msg(reason::CR_ACCESS);
    m.qualification = 3 << 8; // mov cr0, rbx
    gprs(&mut m, &[(Gpr::Rbx, 0x8000_0010)]); // PG without PE
    assert_eq!(run(&mut v, &m).reply, gp());
    gprs(&mut m, &[(Gpr::Rbx, 0x8000_0011)]);
    let o = run(&mut v, &m);
    assert_eq!(o.reply.flags, reply::ADVANCE_RIP | reply::SET_CR0);
    assert_eq!(o.reply.cr0, 0x8000_0011);
    // Long mode: EFER.LME (via WRMSR), CR4.PAE, then PG → SET_EFER with LMA.
    v.msr.efer = 0x100;
    m.cr4_shadow = 0x20;
    let o = run(&mut v, &m);
    assert_eq!(o.reply.efer, 0x500);
    assert_eq!(v.msr.efer, 0x500);
    // CR8 is the local APIC's TPR: MOV CR8, RBX (0x9) sets TPR 0x90, MOV RCX, CR8 reads 9,
    // and a value above 15 is #GP.
    m.qualification = 8 | 3 << 8;
    gprs(&mut m, &[(Gpr::Rbx, 9)]);
    assert_eq!(run(&mut v, &m).reply, ExitReply::advance());
    assert_eq!(v.irq.lapic().tpr(), 0x90);
    m.qualification = 8 | 1 << 4 | 1 << 8;
    let o = run(&mut v, &m);
    assert_eq!((o.reply.gpr_mask, o.reply.gprs[1]), (1 << 1, 9));
    m.qualification = 8 | 3 << 8;
    gprs(&mut m, &[(Gpr::Rbx, 0x10)]);
    assert_eq!(run(&mut v, &m).reply, gp());
    assert_eq!(v.irq.lapic().tpr(), 0x90, "a refused write changes nothing");
}

#[test]
fn pae_paging_with_bad_pdptes_is_a_gp_not_a_failed_vm_entry() {
    // CR4.PAE is set; the guest turns paging on with CR3 at 0x8000.
    let mut m = msg(reason::CR_ACCESS);
    m.qualification = 3 << 8; // mov cr0, rbx
    m.cr4_shadow = 0x20;
    m.cr3 = 0x8000;
    gprs(&mut m, &[(Gpr::Rbx, 0x8000_0011)]);
    let mut env = TestEnv::new();
    env.ram[0x8000..0x8008].copy_from_slice(&0x9001u64.to_le_bytes());
    let o = vm().handle(&m, &mut env);
    assert_eq!(
        o.reply.flags,
        reply::ADVANCE_RIP | reply::SET_CR0,
        "good PDPTEs"
    );
    // A present PDPTE with a reserved bit (bit 1), or above MAXPHYADDR (36 here).
    for bad in [0x9003u64, 1 << 40 | 0x9001] {
        env.ram[0x8008..0x8010].copy_from_slice(&bad.to_le_bytes());
        assert_eq!(vm().handle(&m, &mut env).reply, gp(), "{bad:#x}");
    }
    // Long mode loads no PDPTEs; a shadow-paged VM's MMU service judges its own.
    let mut v = vm();
    v.msr.efer = 0x100;
    assert_eq!(
        v.handle(&m, &mut env).reply.flags & reply::SET_CR0,
        reply::SET_CR0
    );
    let o = vm().shadow_paged().handle(&m, &mut env);
    assert_eq!(o.reply.flags & reply::SET_CR0, reply::SET_CR0);
}

#[test]
fn cmos_memory_and_pit_through_the_bus() {
    let mut v = vm();
    let read_cmos = |v: &mut VmModel, i: u64| {
        run(v, &io(0x70, 1, false, i));
        rax_of(&run(v, &io(0x71, 1, true, 0))) as u16
    };
    let ext = read_cmos(&mut v, 0x17) | read_cmos(&mut v, 0x18) << 8;
    assert_eq!(ext, 31 * 1024);
    let above16 = read_cmos(&mut v, 0x34) | read_cmos(&mut v, 0x35) << 8;
    assert_eq!(above16, 256);
    // PIT channel 0: lo/hi, mode 2, reload 1000; latch 10 ticks later.
    let mut env = TestEnv::new();
    for (p, val) in [(0x43, 0x34), (0x40, 1000 & 0xff), (0x40, 1000 >> 8)] {
        v.handle(&io(p, 1, false, val), &mut env);
    }
    env.ticks = 10;
    v.handle(&io(0x43, 1, false, 0x00), &mut env);
    env.ticks = 500;
    let lo = rax_of(&v.handle(&io(0x40, 1, true, 0), &mut env));
    let hi = rax_of(&v.handle(&io(0x40, 1, true, 0), &mut env));
    assert_eq!(lo | hi << 8, 990);
}

#[test]
fn hypercalls() {
    let mut v = vm();
    let mut env = TestEnv::new();
    env.ram[0x5000..0x5005].copy_from_slice(b"hello");
    let mut m = msg(reason::VMCALL);
    // Without Umbra's signature in RAX a VMCALL is some other hypervisor's: -ENOSYS, and
    // the guest goes on.
    gprs(&mut m, &[(Gpr::Rax, 1), (Gpr::Rbx, 0x5000), (Gpr::Rcx, 5)]);
    let o = v.handle(&m, &mut env);
    assert!(o.events.is_empty());
    assert_eq!(rax_of(&o), hypercall::ENOSYS);
    assert_eq!(o.reply.flags, reply::ADVANCE_RIP);
    gprs(&mut m, &[(Gpr::Rax, hypercall::PRINT)]);
    let o = v.handle(&m, &mut env);
    assert_eq!(
        o.events.as_slice(),
        &[Event::Print(Text::from_slice(b"hello").unwrap())]
    );
    assert_eq!(rax_of(&o), 0);
    assert_eq!(o.reply.flags, reply::ADVANCE_RIP);
    // Too long, or outside guest memory: error, no event.
    for (gpa, len) in [(0x5000, 257), (u64::MAX, 4), (0xf_fffe, 4), (0, u64::MAX)] {
        gprs(&mut m, &[(Gpr::Rbx, gpa), (Gpr::Rcx, len)]);
        let o = v.handle(&m, &mut env);
        assert_eq!(rax_of(&o), u64::MAX);
        assert!(o.events.is_empty());
    }
    gprs(&mut m, &[(Gpr::Rax, hypercall::NOP)]);
    assert_eq!(rax_of(&v.handle(&m, &mut env)), 0);
    // The benchmark's hypercalls fail for a VM whose creator did not ask for them: a guest
    // must not switch its exits to the kernel's reflect path.
    for nr in [hypercall::REFLECT, hypercall::UNREFLECT] {
        gprs(&mut m, &[(Gpr::Rax, nr), (Gpr::Rbx, 10)]);
        let o = v.handle(&m, &mut env);
        assert!(o.events.is_empty(), "hypercall {nr}: {:?}", o.events);
        assert_eq!(rax_of(&o), hypercall::ENOSYS);
    }
    let mut cpuid = msg(reason::CPUID);
    gprs(&mut cpuid, &[(Gpr::Rax, 0x4000_00ff)]);
    assert!(v.handle(&cpuid, &mut env).events.is_empty());
    let mut v = v.with_benchmark_hypercalls();
    gprs(&mut m, &[(Gpr::Rax, hypercall::REFLECT), (Gpr::Rbx, 10)]);
    let o = v.handle(&m, &mut env);
    assert_eq!(o.events.as_slice(), &[Event::Reflect { reason: 10 }]);
    assert_eq!(rax_of(&o), 0);
    gprs(&mut m, &[(Gpr::Rax, hypercall::REFLECT), (Gpr::Rbx, 12)]); // HLT cannot be reflected
    let o = v.handle(&m, &mut env);
    assert!(o.events.is_empty());
    assert_eq!(rax_of(&o), u64::MAX);
    gprs(&mut m, &[(Gpr::Rax, hypercall::UNREFLECT)]);
    let o = v.handle(&m, &mut env);
    assert_eq!(o.events.as_slice(), &[Event::Unreflect]);
    assert_eq!(rax_of(&o), 0);
    gprs(&mut m, &[(Gpr::Rax, hypercall::SIGNATURE | 99)]);
    assert_eq!(rax_of(&v.handle(&m, &mut env)), hypercall::ENOSYS);
    // The old plain numbers are not Umbra's any more: 0 does not stop the VM.
    gprs(&mut m, &[(Gpr::Rax, 0), (Gpr::Rbx, 7)]);
    assert_eq!(rax_of(&v.handle(&m, &mut env)), hypercall::ENOSYS);
    gprs(&mut m, &[(Gpr::Rax, hypercall::EXIT), (Gpr::Rbx, 7)]);
    let o = v.handle(&m, &mut env);
    assert_eq!(o.reply, ExitReply::stop(stop_code::EXITED | 7));
    assert_eq!(o.stopped(), Some(&Stop::exited(7)));
}

#[test]
fn hlt_resumes_or_stops_when_interrupts_are_off() {
    let mut v = vm();
    let o = run(&mut v, &msg(reason::HLT));
    assert_eq!(o.reply, ExitReply::advance());
    assert_eq!(v.exit_count(reason::HLT), 1);
    let mut m = msg(reason::HLT);
    m.rflags = 0x2;
    let o = run(&mut v, &m);
    assert!(matches!(
        o.stopped().map(Stop::result),
        Some(VmResult::Halted { rip: 0x10_0000 })
    ));
    assert_eq!(o.reply.stop_code, stop_code::HALTED);
}

#[test]
fn fatal_exits_stop_with_reports() {
    let mut v = vm();
    let o = run(&mut v, &msg(reason::TRIPLE_FAULT));
    let Some((VmResult::TripleFault, Some(r))) = o.stopped().map(|s| (s.result(), s.report()))
    else {
        panic!("{o:?}")
    };
    assert_eq!(r.rip, Some(0x10_0000));
    assert!(format!("{r}").contains("triple fault"));
    assert_eq!(o.reply.stop_code, stop_code::TRIPLE_FAULT);

    let mut v = vm();
    let o = run(&mut v, &msg(reason::INVALID_GUEST_STATE | (1 << 31)));
    assert!(matches!(
        o.stopped().map(Stop::result),
        Some(VmResult::EntryFailed { .. })
    ));
    assert_eq!(o.reply.stop_code, stop_code::ENTRY_FAILED | 33);

    let mut v = vm();
    let o = run(&mut v, &msg(reason::TASK_SWITCH));
    assert_eq!(o.reply.stop_code, stop_code::UNHANDLED | 9);
    let Some((VmResult::Unhandled { .. }, Some(r))) = o.stopped().map(|s| (s.result(), s.report()))
    else {
        panic!("{o:?}")
    };
    assert!(r.what.contains("task switch"), "{r}");

    let mut v = vm();
    let mut m = io(0x3f8, 1, false, 0);
    m.qualification |= 1 << 4; // OUTS
    assert!(matches!(
        run(&mut v, &m).stopped().map(Stop::result),
        Some(VmResult::Unhandled { .. })
    ));

    let mut v = vm();
    let mut m = msg(reason::IO);
    m.mask = group::QUAL; // no GPRS
    let o = run(&mut v, &m);
    assert_eq!(o.reply.stop_code, stop_code::BAD_EXIT | 30);

    let mut v = vm();
    let o = run(&mut v, &msg(reason::EXTERNAL_INTERRUPT));
    assert_eq!(o.reply, ExitReply::resume());
    assert!(o.events.is_empty());
}

#[test]
fn long_names_are_truncated() {
    let v = VmModel::new(&"é".repeat(40), RAM);
    assert_eq!(v.name.len(), 32);
}

proptest! {
    #[test]
    fn handle_never_panics_and_replies_encode(
        reason in prop_oneof![0u32..70, any::<u32>()],
        mask in 0u32..64,
        g in prop::array::uniform16(any::<u64>()),
        q in any::<u64>(),
        rflags in any::<u64>(),
        shadow in any::<u64>(),
    ) {
        let mut v = vm();
        let m = ExitMessage { reason, mask, gprs: g, qualification: q, rflags, cr0_shadow: shadow, cr4_shadow: shadow, ..ExitMessage::default() };
        let o = run(&mut v, &m);
        let mut buf = [0u8; ExitReply::MAX_SIZE];
        let n = o.reply.encode(&mut buf);
        prop_assert!(n.is_some());
        prop_assert_eq!(ExitReply::decode(&buf[..n.unwrap()]), Ok(o.reply));
        if o.reply.flags & reply::STOP != 0 {
            prop_assert!(o.stopped().is_some());
            prop_assert!(o.reply.stop_code >> 32 == 0);
        }
    }
}

/// Part `msr`: WRMSR of a guest-state MSR reaches the vCPU (not only the model), RDMSR reads
/// the vCPU, and a bad value is #GP with the vCPU unchanged.
#[test]
fn msrs_reach_the_vcpu_state() {
    use abi::vmx::field;
    let mut v = vm();
    let mut env = TestEnv::new();
    let mut w = msg(reason::WRMSR);
    gprs(
        &mut w,
        &[
            (Gpr::Rcx, 0xc000_0101),
            (Gpr::Rax, 0x20_1000),
            (Gpr::Rdx, 0),
        ],
    );
    assert_eq!(v.handle(&w, &mut env).reply, ExitReply::advance());
    assert_eq!(env.state.get(&field::GUEST_GS_BASE), Some(&0x20_1000));
    gprs(
        &mut w,
        &[(Gpr::Rcx, 0xc000_0082), (Gpr::Rax, 0), (Gpr::Rdx, 0x8000)],
    );
    assert_eq!(v.handle(&w, &mut env).reply.inject, 0x8000_0b0d);
    assert_eq!(env.state.get(&field::GUEST_LSTAR), None);
    env.state
        .insert(field::GUEST_KERNEL_GS_BASE, 0xffff_8000_0000_0040);
    let mut r = msg(reason::RDMSR);
    gprs(&mut r, &[(Gpr::Rcx, 0xc000_0102)]);
    let o = v.handle(&r, &mut env);
    assert_eq!((o.reply.gprs[0], o.reply.gprs[2]), (0x40, 0xffff_8000));
}

/// Part `msr`: CPUID leaf 1's OSXSAVE is the guest's CR4.OSXSAVE.
#[test]
fn cpuid_osxsave_follows_the_guests_cr4() {
    use abi::vmx::field;
    let mut v = vm();
    let mut env = TestEnv::new();
    let mut c = msg(reason::CPUID);
    gprs(&mut c, &[(Gpr::Rax, 1), (Gpr::Rcx, 0)]);
    let ecx = |env: &mut TestEnv, v: &mut VmModel| v.handle(&c, env).reply.gprs[1] as u32;
    assert_eq!(ecx(&mut env, &mut v) & (1 << 27), 0);
    env.state.insert(field::GUEST_CR4, 1 << 18);
    assert_ne!(ecx(&mut env, &mut v) & (1 << 27), 0);
    // An owned bit reads from the read shadow.
    env.state.insert(field::CR4_GUEST_HOST_MASK, 1 << 18);
    assert_eq!(ecx(&mut env, &mut v) & (1 << 27), 0);
}

#[test]
fn instruction_exits_through_the_model() {
    let mut env = TestEnv::new();
    // RDPMC: #GP(0) with RF; INVD, WBINVD: resume after them.
    assert_eq!(run(&mut vm(), &msg(reason::RDPMC)).reply, gp());
    for r in [reason::INVD, reason::WBINVD, reason::PAUSE] {
        assert_eq!(run(&mut vm(), &msg(r)).reply, ExitReply::advance());
    }
    // XSETBV: the test host offers XSAVE (leaf 1 ECX bit 26) but its highest leaf is 0, so
    // no XCR0 component: #GP(0). With CR4.OSXSAVE clear: #UD.
    let mut m = msg(reason::XSETBV);
    m.cr4_shadow = 1 << 18;
    gprs(&mut m, &[(Gpr::Rax, 3)]);
    let o = vm().handle(&m, &mut env);
    assert_eq!(o.reply, gp());
    assert!(o.events.is_empty());
    m.cr4_shadow = 0;
    assert_eq!(vm().handle(&m, &mut env).reply.inject, 0x8000_0306);
    // VMXON: #UD (VMX is hidden).
    assert_eq!(run(&mut vm(), &msg(27)).reply.inject, 0x8000_0306);
    // The instructions the vCPU's controls leave #UD are hidden from CPUID.
    // A host with every bit set, to see the masking.
    struct AllEnv;
    impl Env for AllEnv {
        fn host_cpuid(&mut self, _: u32, _: u32) -> [u32; 4] {
            [u32::MAX; 4]
        }
        fn tsc(&mut self) -> u64 {
            0
        }
        fn read_guest(&mut self, _: u64, _: &mut [u8]) -> bool {
            false
        }
        fn write_guest(&mut self, _: u64, _: &[u8]) -> bool {
            false
        }
        fn ticks(&mut self) -> u64 {
            0
        }
        fn vcpu_read(&mut self, _: &[u64], out: &mut [u64]) -> bool {
            out.fill(0);
            true
        }
        fn vcpu_write(&mut self, _: &[(u64, u64)]) -> bool {
            true
        }
    }
    let gf = abi::vmx::guest_features::INVPCID | abi::vmx::guest_features::RDTSCP;
    let none = VmModel::new("f", RAM);
    let all = VmModel::new("f", RAM).with_guest_features(gf);
    assert_eq!(none.guest_cpuid(7, 0, 0, &mut AllEnv)[1] & EBX7_INVPCID, 0);
    assert_eq!(
        none.guest_cpuid(0x8000_0001, 0, 0, &mut AllEnv)[3] & EDX_EXT_RDTSCP,
        0
    );
    assert_ne!(all.guest_cpuid(7, 0, 0, &mut AllEnv)[1] & EBX7_INVPCID, 0);
    assert_ne!(
        all.guest_cpuid(0x8000_0001, 0, 0, &mut AllEnv)[3] & EDX_EXT_RDTSCP,
        0
    );
}

#[test]
fn an_unhandled_exit_reports_the_code_at_rip() {
    let mut env = TestEnv::new();
    env.ram[0x1_0010..0x1_0013].copy_from_slice(&[0x0f, 0x00, 0xd8]);
    let mut m = msg(reason::INIT);
    m.mask = group::ALL;
    m.rip = 0x10;
    m.segments[0].base = 0x1_0000;
    let o = vm().handle(&m, &mut env);
    let Some((VmResult::Unhandled { .. }, Some(r))) = o.stopped().map(|s| (s.result(), s.report()))
    else {
        panic!("{o:?}")
    };
    assert_eq!(
        r.code.as_ref().map(|c| c[..3].to_vec()),
        Some(vec![0x0f, 0x00, 0xd8])
    );
    assert!(format!("{r}").contains("bytes at rip: 0f 00 d8 00"), "{r}");
}

#[test]
fn a_reset_puts_the_devices_at_power_on_and_keeps_the_cmos() {
    let fresh = || vm().with_vcpus(2);
    let mut v = fresh();
    // What the ports read, from `v` and from a model at power-on.
    let reads = |v: &mut VmModel| {
        let mut out = std::vec::Vec::new();
        for port in [
            0x21, 0xa1, 0x3f9, 0x3fb, 0x3fc, 0x64, 0x92, 0xcf9, 0x4d0, 0x4d1,
        ] {
            out.push((port, rax_of(&run(v, &io(port, 1, true, 0)))));
        }
        // The 8042's command byte.
        run(v, &io(0x64, 1, false, 0x20));
        out.push((0x60, rax_of(&run(v, &io(0x60, 1, true, 0)))));
        // PCI's CONFIG_ADDRESS.
        out.push((0xcf8, rax_of(&run(v, &io(0xcf8, 4, true, 0)))));
        out
    };
    let power_on = reads(&mut fresh());
    // The guest changes every device, writes a CMOS byte, and resets through the 8042.
    for (port, size, value) in [
        (0x21, 1, 0xa5),  // PIC: IMR
        (0xa1, 1, 0x5a),  // slave IMR
        (0x4d0, 1, 0x08), // ELCR
        (0x3fb, 1, 0x83), // UART: LCR with DLAB
        (0x3f9, 1, 0x00),
        (0x3fc, 1, 0x1f), // MCR: loopback
        (0x43, 1, 0x34),  // PIT channel 0, mode 2
        (0x40, 1, 0xe8),
        (0x40, 1, 0x03),
        (0x92, 1, 0x00), // A20 off
        (0xcf9, 1, 0x02),
        (0xcf8, 4, 0x8000_0000),
        (0x70, 1, 0x50), // CMOS memory
        (0x71, 1, 0x2a),
        (0x64, 1, 0x60), // 8042 command byte
        (0x60, 1, 0x61),
    ] {
        let o = run(&mut v, &io(port, size, false, value));
        assert!(o.stopped().is_none(), "{port:#x}: {o:?}");
    }
    v.irq.lapic_mut().set_tpr(0x50);
    assert_ne!(reads(&mut v), power_on);
    let o = run(&mut v, &io(0x64, 1, false, 0xfe));
    assert_eq!(o.stopped(), Some(&Stop::reset(0x64)));
    let io_exits = v.exit_count(reason::IO);

    v.reset(1000);
    assert_eq!(v.result(), None);
    assert_eq!(reads(&mut v), power_on);
    assert_eq!(v.irq.lapic().tpr(), 0);
    assert_eq!(v.irq.vcpus(), 2);
    // The CMOS memory survives, as a battery-backed CMOS does.
    run(&mut v, &io(0x70, 1, false, 0x50));
    assert_eq!(rax_of(&run(&mut v, &io(0x71, 1, true, 0))), 0x2a);
    // The VM runs again, and its exit counts go on.
    let o = run(&mut v, &msg(reason::CPUID));
    assert!(o.stopped().is_none());
    assert!(v.exit_count(reason::IO) > io_exits);
    assert_eq!(v.exit_count(reason::CPUID), 1);
    // A reset again is a reset again.
    let o = run(&mut v, &io(0x92, 1, false, 0x01));
    assert_eq!(o.stopped(), Some(&Stop::reset(0x92)));
}

mod quick;
mod quick_io;
