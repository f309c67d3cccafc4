//! The exit thread: receives the exit messages of the VMM's portals and answers each with the
//! reply of the running VM's model ([`VmModel::handle`]), printing what the guest writes.
//!
//! The model's `Reflect`/`Unreflect` events (the benchmark guest's hypercalls 3 and 4) switch
//! an exit reason's portal to the kernel's floor (`PORTAL_REFLECT`) and back.

use abi::ipc::MAX_PAYLOAD;
use abi::vmx::{self, field, reason, ExitMessage, ExitReply, ExitView, Gpr};
use abi::{CapSlot, Error};
use spin::Mutex;
use userlib::proto::vmm::VmResult;
use userlib::sys::{self, ThreadStack};
use vmm_service::exit::{portal_mask, required_groups};
use vmm_service::vm::{self, Env, Event, QuickReply, VmModel};

/// The reasons the VMM handles itself (EPT violations go to the MMU service).
const HANDLED: [u32; 13] = [
    reason::CPUID,
    reason::IO,
    reason::RDMSR,
    reason::WRMSR,
    reason::CR_ACCESS,
    reason::HLT,
    reason::VMCALL,
    reason::TRIPLE_FAULT,
    reason::EPT_MISCONFIG,
    reason::DR_ACCESS,
    // Interrupt delivery (`vmm_service::irq`): a deadline passed, an interrupt window or
    // an NMI window opened.
    reason::PREEMPTION_TIMER,
    reason::INTERRUPT_WINDOW,
    reason::NMI_WINDOW,
];
use vm::hypercall::REFLECTABLE;

/// The VM being run, shared by the main thread (which starts and ends it), the exit thread
/// and the runner threads of its application processors ([`crate::smp`]).
pub(crate) struct Run {
    pub model: VmModel,
    /// Its vCPUs by index (0: the bootstrap processor).
    pub vcpus: heapless::Vec<CapSlot, { vmm_service::irq::MAX_VCPUS }>,
    ram: CapSlot,
    /// The VM's RAM, mapped for the run (`None` if it could not be: every access then maps
    /// it for itself).
    ram_map: Option<sys::Mapping>,
    exit_ep: CapSlot,
    result: Option<vm::Stop>,
    /// The vCPUs in a `VcpuRun` (bit n: index n).
    pub running: u32,
    /// The VM is ending: every exit of every vCPU stops it.
    pub ending: bool,
    /// The first stop of an application processor that ended the VM.
    pub ap_stop: Option<(usize, Result<sys::VcpuStop, Error>)>,
}

static RUN: Mutex<Option<Run>> = Mutex::new(None);

/// The run, locked. One host CPU: a thread preempted while it holds the lock lets the
/// others wait by yielding rather than spinning through their slices.
pub(crate) fn lock_run() -> spin::MutexGuard<'static, Option<Run>> {
    loop {
        if let Some(g) = RUN.try_lock() {
            return g;
        }
        sys::yield_now();
    }
}
/// The events of the exit being handled (kept here: they are too large to move per exit).
static EVENTS: Mutex<heapless::Vec<Event, { vm::MAX_EVENTS }>> = Mutex::new(heapless::Vec::new());
static STACK: ThreadStack<32768> = ThreadStack::new();

/// What the model concluded when the run ended.
pub struct Outcome {
    pub result: Option<VmResult>,
    /// The stop of the application processor that ended the VM, if one did.
    pub ap_stop: Option<(usize, Result<sys::VcpuStop, Error>)>,
    /// The model, for the next boot if the VM restarts.
    pub model: Option<VmModel>,
}

/// Creates the exit endpoint and starts the exit thread on it.
pub fn start() -> Result<CapSlot, Error> {
    let ep = sys::endpoint_create()?;
    let stack = STACK.take().ok_or(Error::NoMemory)?;
    // The services run at priority 10 (the supervisor's choice); the vCPU thread gets its
    // creator's, so exits switch straight to this thread.
    sys::thread_spawn(exit_thread, stack, ep, 10)?;
    Ok(ep)
}

/// The state a portal asks for: what handling needs, plus RIP and RFLAGS for reports and
/// HLT, except on the frequent exits (CPUID, VMCALL, I/O), where the message stays small;
/// a report of one of those reads RIP from the vCPU afterwards.
fn mask_for(reason: u32) -> u32 {
    if REFLECTABLE.contains(&reason) {
        required_groups(reason)
    } else {
        portal_mask(reason) | vmx::group::RIP
    }
}

/// Points the VMM's portals of a new vCPU at the exit endpoint: the reasons it handles with
/// the state they need, every other one with all the state, for a full stop report (the
/// MMU service's reasons are pointed at it afterwards).
pub fn set_portals(vcpu: CapSlot, exit_ep: CapSlot) -> Result<(), Error> {
    for r in 0..vmx::EXIT_REASONS as u32 {
        if reason::NO_PORTAL.contains(&r) {
            continue;
        }
        let handled = HANDLED.contains(&r)
            || vmm_service::insn::REASONS.contains(&r)
            || vmm_service::insn::UD_REASONS.contains(&r);
        let mask = if handled {
            mask_for(r)
        } else {
            vmx::group::ALL
        };
        sys::vcpu_portal(vcpu, r, Some(exit_ep), mask)?;
    }
    // Device accesses the MMU service forwards, with what emulating them needs.
    sys::vcpu_portal(
        vcpu,
        reason::MMIO,
        Some(exit_ep),
        vmm_service::mmio_exit::REQUIRED,
    )?;
    Ok(())
}

/// Starts a run of a VM with one vCPU.
pub fn begin(model: VmModel, vcpu: CapSlot, ram: CapSlot, exit_ep: CapSlot) {
    begin_vcpus(model, &[vcpu], ram, exit_ep);
}

/// Starts a run of a VM with `vcpus` (index 0, the bootstrap processor, is run by the
/// caller; the others when their SIPI comes, [`crate::smp`]).
pub fn begin_vcpus(model: VmModel, vcpus: &[CapSlot], ram: CapSlot, exit_ep: CapSlot) {
    let mut run = lock_run();
    // The previous run's mapping goes first: the window is the same.
    *run = None;
    *run = Some(Run {
        model,
        vcpus: vcpus
            .iter()
            .copied()
            .take(vmm_service::irq::MAX_VCPUS)
            .collect(),
        ram,
        ram_map: sys::Mapping::new(ram, crate::setup::RUN_RAM_VA).ok(),
        exit_ep,
        result: None,
        running: 1,
        ending: false,
        ap_stop: None,
    });
}

/// Ends a run for now and gives its model back, for a later [`begin`] of the same VM (its
/// exit counts and device state carry on).
pub fn pause() -> Option<VmModel> {
    lock_run().take().map(|r| r.model)
}

pub fn end() -> Outcome {
    let run = lock_run().take();
    let ap_stop = run.as_ref().and_then(|r| r.ap_stop);
    let result = run
        .as_ref()
        .and_then(|r| r.result.as_ref())
        .map(|s| *s.result());
    Outcome {
        result,
        ap_stop,
        model: run.map(|r| r.model),
    }
}

/// The host TSC's rate, measured once by the kernel at boot (0 if unknown).
fn tsc_hz() -> u64 {
    static TSC_HZ: spin::Once<u64> = spin::Once::new();
    *TSC_HZ.call_once(|| sys::tsc_hz().unwrap_or(0))
}

/// Device time now ([`Env::ticks`]): the PIT input clock (1.193182 MHz), from the TSC.
pub fn device_ticks() -> u64 {
    match tsc_hz() {
        0 => sys::clock().map_or(0, |(t, hz)| t * 1_193_182 / hz.max(1)),
        hz => vmm_service::irq::Clock::ticks_at(sys::rdtsc(), hz),
    }
}

/// The model's view of the machine: host CPUID, the TSC, guest RAM through the run's mapping.
struct ServiceEnv<'a> {
    ram: CapSlot,
    ram_map: Option<&'a mut sys::Mapping>,
    vcpu: CapSlot,
}

impl Env for ServiceEnv<'_> {
    fn host_cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4] {
        let r = core::arch::x86_64::__cpuid_count(leaf, subleaf);
        [r.eax, r.ebx, r.ecx, r.edx]
    }
    fn tsc(&mut self) -> u64 {
        sys::rdtsc()
    }
    fn read_guest(&mut self, gpa: u64, buf: &mut [u8]) -> bool {
        if let Some(map) = self.ram_map.as_deref() {
            let start = usize::try_from(gpa).ok();
            let piece = start.and_then(|s| map.bytes().get(s..s.checked_add(buf.len())?));
            return piece.map(|p| buf.copy_from_slice(p)).is_some();
        }
        sys::with_mapped_read(self.ram, crate::setup::RAM_VA, |ram| {
            let start = usize::try_from(gpa).ok();
            let piece = start.and_then(|s| ram.get(s..s.checked_add(buf.len())?));
            match piece {
                Some(p) => {
                    buf.copy_from_slice(p);
                    true
                }
                None => false,
            }
        })
        .unwrap_or(false)
    }
    fn write_guest(&mut self, gpa: u64, data: &[u8]) -> bool {
        if let Some(map) = self.ram_map.as_deref_mut() {
            let start = usize::try_from(gpa).ok();
            let piece = start.and_then(|s| map.bytes_mut().get_mut(s..s.checked_add(data.len())?));
            return piece.map(|p| p.copy_from_slice(data)).is_some();
        }
        sys::with_mapped(self.ram, crate::setup::RAM_VA, |ram| {
            let start = usize::try_from(gpa).ok();
            let piece = start.and_then(|s| ram.get_mut(s..s.checked_add(data.len())?));
            match piece {
                Some(p) => {
                    p.copy_from_slice(data);
                    true
                }
                None => false,
            }
        })
        .unwrap_or(false)
    }
    fn ticks(&mut self) -> u64 {
        device_ticks()
    }
    fn tsc_hz(&mut self) -> u64 {
        tsc_hz()
    }
    fn vcpu_read(&mut self, fields: &[u64], out: &mut [u64]) -> bool {
        sys::vcpu_read(self.vcpu, fields, out).is_ok()
    }
    fn vcpu_write(&mut self, pairs: &[(u64, u64)]) -> bool {
        sys::vcpu_write(self.vcpu, pairs).is_ok()
    }
}

extern "C" fn exit_thread(ep: u64) -> ! {
    let mut buf = [0u8; MAX_PAYLOAD];
    let mut reply_len = 0;
    let mut m = ExitMessage::default();
    loop {
        let msg = match sys::reply_recv(ep, &mut buf, reply_len, vmx::REPLY_LABEL, None) {
            Ok(m) => m,
            Err(e) => {
                userlib::println!("vmm: exit thread: {e}");
                reply_len = 0;
                continue;
            }
        };
        let bytes = &buf[..msg.len.min(MAX_PAYLOAD)];
        if msg.label == vmx::EXIT_LABEL {
            if let Some(n) = quick_exit(bytes).and_then(|q| q.encode(&mut buf)) {
                reply_len = n;
                continue;
            }
        }
        let reply = if msg.label == vmx::EXIT_LABEL {
            match m.decode_into(&buf[..msg.len.min(MAX_PAYLOAD)]) {
                Ok(()) => on_exit(&m),
                Err(e) => {
                    userlib::println!("vmm: malformed exit message: {e:?}");
                    ExitReply::stop(0)
                }
            }
        } else {
            userlib::println!("vmm: exit endpoint got label {:#x}; ignored", msg.label);
            ExitReply::resume()
        };
        reply_len = reply.encode(&mut buf).unwrap_or(0);
    }
}

/// The quiet frequent exits (CPUID, VMCALL, quiet port I/O) straight from the message bytes
/// ([`VmModel::handle_quick`]); `None` leaves the exit to [`on_exit`], nothing changed.
fn quick_exit(bytes: &[u8]) -> Option<QuickReply> {
    // The reason first: the other exits pay for nothing more.
    let reason = u32::from_le_bytes(*bytes.first_chunk::<4>()?);
    if reason != reason::CPUID && reason != reason::VMCALL && reason != reason::IO {
        return None;
    }
    let v = ExitView::new(bytes).ok()?;
    let mut guard = lock_run();
    let run = guard.as_mut()?;
    let index = (v.vcpu() & 0xffff) as usize;
    let &vcpu = run.vcpus.get(index)?;
    // What `smp::before_exit` would answer itself (an ending VM, an AP's INIT) is its own.
    if run.ending || (index != 0 && run.model.irq.lapics.get(index)?.init_pending()) {
        return None;
    }
    let mut env = ServiceEnv {
        ram: run.ram,
        ram_map: run.ram_map.as_mut(),
        vcpu,
    };
    run.model.irq.select(index);
    let reply = run.model.handle_quick(&v, &mut env)?;
    crate::smp::after_exit(run, index, false);
    Some(reply)
}

fn on_exit(m: &ExitMessage) -> ExitReply {
    let mut guard = lock_run();
    let Some(run) = guard.as_mut() else {
        userlib::println!("vmm: exit with no VM running; stopping it");
        return ExitReply::stop(0);
    };
    // The vCPU index in its id (`mmu::vcpu_id`).
    let index = (m.vcpu & 0xffff) as usize;
    let Some(&vcpu) = run.vcpus.get(index) else {
        userlib::println!("vmm: exit of unknown vCPU {:#x}; stopping it", m.vcpu);
        return ExitReply::stop(0);
    };
    if let Some(reply) = crate::smp::before_exit(run, index, vcpu) {
        return reply;
    }
    if m.basic_reason() == reason::DR_ACCESS {
        return debug_register_exit(vcpu, m);
    }
    let mut env = ServiceEnv {
        ram: run.ram,
        ram_map: run.ram_map.as_mut(),
        vcpu,
    };
    let mut events = EVENTS.lock();
    events.clear();
    run.model.irq.select(index);
    let mut reply = run.model.handle_into(m, &mut env, &mut events);
    let name = &run.model.name;
    for e in events.iter() {
        match e {
            Event::SerialLine(t) | Event::Print(t) => {
                let text = core::str::from_utf8(t).unwrap_or("(not UTF-8)");
                userlib::println!("{}: {}", name.as_str(), text.trim_end_matches('\n'));
            }
            Event::UnhandledPort { port, write } => userlib::println!(
                "vmm: {}: unhandled port {port:#x} ({}; reads return all ones, logged once)",
                name.as_str(),
                if *write { "write" } else { "read" }
            ),
            Event::Reflect { reason } => {
                if sys::vcpu_portal_reflect(vcpu, *reason).is_err() {
                    reply.set_gpr(Gpr::Rax, vm::hypercall::ERROR);
                }
            }
            Event::Unreflect => {
                let back = REFLECTABLE
                    .iter()
                    .all(|&r| sys::vcpu_portal(vcpu, r, Some(run.exit_ep), mask_for(r)).is_ok());
                if !back {
                    reply.set_gpr(Gpr::Rax, vm::hypercall::ERROR);
                }
            }
            Event::SetXcr0(x) => {
                if sys::vcpu_write(vcpu, &[(field::GUEST_XCR0, *x)]).is_err() {
                    // The host CPU cannot load it: #GP, as a CPU without the component.
                    reply = vmm_service::exception::reply(m, vmm_service::exception::GP, 0)
                        .unwrap_or(reply);
                }
            }
            Event::Stopped(r) => {
                if let Some(report) = r.report() {
                    userlib::println!("{report}");
                }
                run.result = Some(r.clone());
            }
        }
    }
    drop(events);
    crate::smp::after_exit(run, index, reply.flags & vmx::reply::STOP != 0);
    reply
}

/// Prints what the kernel knows about a stop it decided itself (no portal for the reason, a
/// failed VM entry).
pub fn report_kernel_stop(name: &str, vcpu: CapSlot, s: &sys::VcpuStop) {
    let mut regs = [0u64; 16];
    let fields: [u64; 16] = core::array::from_fn(|n| field::GPR_BASE + n as u64);
    let _ = sys::vcpu_read(vcpu, &fields, &mut regs);
    let mut v = [0u64; 4];
    let _ = sys::vcpu_read(
        vcpu,
        &[
            field::GUEST_RIP,
            field::GUEST_RFLAGS,
            field::GUEST_CR0,
            field::GUEST_CR3,
        ],
        &mut v,
    );
    let what = match s.stop & abi::vmx::stop::KIND_MASK {
        abi::vmx::stop::UNHANDLED => "no handler for this exit",
        abi::vmx::stop::ENTRY_FAILED => "VM entry failed",
        abi::vmx::stop::PORTAL_GONE if crate::setup::mmu_reason(s.reason as u32) => {
            "the MMU service is gone: the supervisor gave up restarting it"
        }
        abi::vmx::stop::PORTAL_GONE => "the exit's handler is gone",
        abi::vmx::stop::BAD_REPLY => "malformed reply to an exit",
        abi::vmx::stop::BAD_ROOT => {
            "a shadow root outside the VM's pool, or not from its MMU service (the qualification is the refused root)"
        }
        abi::vmx::stop::AUDIT => {
            "audit: a shadow table names a frame outside the VM's RAM or pool (the qualification is the entry's address)"
        }
        _ => "stopped",
    };
    userlib::println!(
        "vmm: {name}: VM stopped: {what}: exit reason {} ({}), qualification {:#x}, rip {:#x}, rflags {:#x}, cr0 {:#x}, cr3 {:#x}",
        s.reason,
        reason::name(s.reason as u32).unwrap_or("unknown"),
        s.qualification,
        v[0],
        v[1],
        v[2],
        v[3]
    );
    let names = [
        "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15",
    ];
    for row in 0..4 {
        userlib::println!(
            "vmm: {name}:   {}={:#x} {}={:#x} {}={:#x} {}={:#x}",
            names[row * 4],
            regs[row * 4],
            names[row * 4 + 1],
            regs[row * 4 + 1],
            names[row * 4 + 2],
            regs[row * 4 + 2],
            names[row * 4 + 3],
            regs[row * 4 + 3]
        );
    }
}

/// MOV to or from a debug register: the vCPU's DR0..DR7 through `VcpuState`
/// ([`vmm_service::debugreg`]).
fn debug_register_exit(vcpu: CapSlot, m: &ExitMessage) -> ExitReply {
    vmm_service::debugreg::handle(
        m,
        |f| {
            let mut v = [0u64];
            sys::vcpu_read(vcpu, &[f], &mut v).ok().map(|()| v[0])
        },
        |f, v| sys::vcpu_write(vcpu, &[(f, v)]).is_ok(),
    )
}
