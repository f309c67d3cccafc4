//! `ProbeIsolation` (see `userlib::proto::vmm::isolation`): a neighbour VM fills its RAM with
//! the foreign marker and stays alive; a memory object of this service holds the service
//! marker; the probe VM then accesses every point of its guest-physical space. Each stop for
//! an access outside RAM is counted and the probe entered again at its entry, told where it
//! stopped; the VM, its RAM and its tables stay. Every `INTERLEAVE` stops the neighbour runs
//! again and checks its fill itself. Afterwards the neighbour's fill and the marker object are
//! checked word by word here.

use abi::vmx::field;
use abi::CapSlot;
use userlib::proto::vmm::isolation::{
    self, role, GuestCounts, IsolationReport, FILL_START, FOREIGN_MARKER, INTERLEAVE, LIST_END,
    LIST_GPA, OWN_MARKER, REPORT_GPA, REPORT_WORDS, SERVICE_MARKER, SERVICE_PAGES,
};
use userlib::proto::vmm::{ConfigError, EntryMode, Response, VmConfig, VmResult, VmmError};
use userlib::sys;
use vmm_service::loader::flat64::STACK_TOP;

use crate::exit_thread;

/// Whether a device of a VM's reset state answers guest-physical `gpa` (the VMM's own map:
/// [`vmm_service::irq::PlatformMmio`]).
fn device_answers(gpa: u64) -> bool {
    use vmm_service::devices::mmio::{Devices, MmioBus};
    let (mut bus, mut irq) = (MmioBus::new(), vmm_service::irq::Interrupts::default());
    let mut map = vmm_service::irq::PlatformMmio {
        bus: &mut bus,
        irq: &mut irq,
        now: 0,
    };
    map.claims(gpa)
}

/// The probe's VM model while the neighbour runs.
static PAUSED: spin::Mutex<Option<vmm_service::vm::VmModel>> = spin::Mutex::new(None);
use crate::setup::{self, kernel, Prepared, RAM_VA};

const MIB: u64 = 1 << 20;
const RSP: u64 = field::GPR_BASE + 4;

/// The registers a probe guest reads at each entry (see the protocol module).
fn entry_regs(role: u64, rdi: u64, rdx: u64) -> [(u64, u64); 6] {
    let gpr = |n: u64| field::GPR_BASE + n;
    [
        (gpr(6), role),
        (gpr(7), rdi),
        (gpr(2), rdx),
        (gpr(8), OWN_MARKER),
        (gpr(9), FOREIGN_MARKER),
        (gpr(10), SERVICE_MARKER),
    ]
}

fn check(probe: &VmConfig, neighbour: &VmConfig) -> Result<(), ConfigError> {
    setup::validate(probe)?;
    setup::validate(neighbour)?;
    let flat = |c: &VmConfig| matches!(c.entry, EntryMode::Flat64 { .. });
    let ram = u64::from(probe.ram_mib) * MIB;
    let list_end = LIST_GPA + 8 * (isolation::points(ram).count() as u64 + 1);
    if !flat(probe)
        || !flat(neighbour)
        || list_end > LIST_END
        || u64::from(neighbour.ram_mib) * MIB <= FILL_START
    {
        return Err(ConfigError::ProbeConfig);
    }
    Ok(())
}

/// A memory object deleted when the probe ends.
struct Object(CapSlot);

impl Drop for Object {
    fn drop(&mut self) {
        let _ = sys::cap_delete(self.0);
    }
}

fn words(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    bytes
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().unwrap_or([0; 8])))
}

/// (words, words not equal to `marker`) of `mem` from byte `from` on.
fn changed(mem: CapSlot, from: u64, marker: u64) -> Result<(u64, u64), VmmError> {
    sys::with_mapped_read(mem, RAM_VA, |m| {
        let fill = m.get(from as usize..).unwrap_or(&[]);
        let n = (fill.len() / 8) as u64;
        (n, words(fill).filter(|&w| w != marker).count() as u64)
    })
    .map_err(kernel)
}

/// The neighbour VM and what its runs between the probe's stops found.
struct Neighbour<'a> {
    vm: Prepared,
    cfg: &'a VmConfig,
    runs: u64,
    bad_runs: u64,
    seen_changed: u64,
}

impl Neighbour<'_> {
    /// Enters the neighbour at its entry in `role`, runs it to its end, returns how it ended.
    fn run(&self, role: u64, exit_ep: CapSlot) -> Result<VmResult, VmmError> {
        let ram = self.vm.ram_bytes;
        let at = [(field::GUEST_RIP, self.vm.entry), (RSP, STACK_TOP)];
        for pairs in [&entry_regs(role, ram, FILL_START)[..], &at[..]] {
            sys::vcpu_write(self.vm.vcpu, pairs).map_err(|(e, _)| kernel(e))?;
        }
        exit_thread::begin(self.vm.model(self.cfg), self.vm.vcpu, self.vm.ram, exit_ep);
        let run = sys::vcpu_run(self.vm.vcpu);
        let outcome = exit_thread::end();
        let s = run.map_err(kernel)?;
        if role == role::FILL {
            Ok(setup::summarize(self.cfg, self.vm.vcpu, &[self.vm.vcpu], &s, outcome).result)
        } else {
            Ok(setup::result_of(&s, &outcome))
        }
    }

    /// A run between two stops of the probe: the neighbour reads its fill back.
    fn check(&mut self, exit_ep: CapSlot) -> Result<(), VmmError> {
        match self.run(role::CHECK, exit_ep)? {
            VmResult::HypercallExit { code } => {
                self.runs += 1;
                self.seen_changed += code;
            }
            other => {
                userlib::println!("vmm: {}: check run ended {other:?}", self.cfg.name.as_str());
                self.bad_runs += 1;
            }
        }
        Ok(())
    }
}

/// Runs the probe `vm` until its model or a handler other than the MMU service's outside-RAM
/// stop ends it; each outside-RAM stop (at most `max_stops`) is counted and the guest resumed,
/// every [`INTERLEAVE`] stops after a run of the neighbour. Returns (the last stop, stops,
/// stops inside its RAM).
fn run_resuming(
    vm: &Prepared,
    max_stops: u64,
    neighbour: &mut Neighbour<'_>,
    exit_ep: CapSlot,
) -> Result<(sys::VcpuStop, u64, u64), VmmError> {
    let (mut stops, mut inside) = (0, 0);
    loop {
        let s = sys::vcpu_run(vm.vcpu).map_err(kernel)?;
        match setup::outside_ram(&s) {
            Some(gpa) if stops < max_stops => {
                stops += 1;
                if gpa < vm.ram_bytes {
                    inside += 1;
                }
                if stops % INTERLEAVE == 0 {
                    // The probe's model (about 19 KiB) waits in a static, not on this stack,
                    // while the neighbour's run needs the stack.
                    *PAUSED.lock() = exit_thread::pause();
                    neighbour.check(exit_ep)?;
                    let model = PAUSED.lock().take();
                    if let Some(m) = model {
                        exit_thread::begin(m, vm.vcpu, vm.ram, exit_ep);
                    }
                }
                let regs = entry_regs(role::RESUME, gpa, LIST_GPA);
                let at = [(field::GUEST_RIP, vm.entry), (RSP, STACK_TOP)];
                for pairs in [&regs[..], &at[..]] {
                    sys::vcpu_write(vm.vcpu, pairs).map_err(|(e, _)| kernel(e))?;
                }
            }
            _ => return Ok((s, stops, inside)),
        }
    }
}

/// The isolation probe.
pub fn probe(
    probe: &VmConfig,
    neighbour: &VmConfig,
    exit_ep: CapSlot,
) -> Result<Response, VmmError> {
    check(probe, neighbour).map_err(VmmError::InvalidConfig)?;
    // The probe's RAM first, then the neighbour's, then the marker object: memory allocated
    // after the probe's is where an access past the end of its RAM would land.
    let ram = u64::from(probe.ram_mib) * MIB;
    let p = setup::prepare(probe, exit_ep, &entry_regs(role::PROBE, ram, LIST_GPA))?;
    let n_ram = u64::from(neighbour.ram_mib) * MIB;
    let mut n = Neighbour {
        vm: setup::prepare(
            neighbour,
            exit_ep,
            &entry_regs(role::FILL, n_ram, FILL_START),
        )?,
        cfg: neighbour,
        runs: 0,
        bad_runs: 0,
        seen_changed: 0,
    };
    userlib::println!(
        "vmm: {}: filling {} MiB from {:#x} with the foreign marker",
        neighbour.name.as_str(),
        (n_ram - FILL_START) / MIB,
        FILL_START
    );
    let marker = Object(sys::mem_alloc(SERVICE_PAGES).map_err(kernel)?);
    sys::with_mapped(marker.0, RAM_VA, |m| {
        for w in m.chunks_exact_mut(8) {
            w.copy_from_slice(&SERVICE_MARKER.to_le_bytes());
        }
    })
    .map_err(kernel)?;
    let neighbour_result = n.run(role::FILL, exit_ep)?;

    let devices = isolation::points(ram)
        .filter(|&pt| !isolation::inside_ram(pt, ram) && device_answers(pt & !isolation::KIND_MASK))
        .count() as u64;
    let (points, points_in_ram) = sys::with_mapped(p.ram, RAM_VA, |m| {
        // `check` made sure the list fits below LIST_END, inside RAM.
        let mut put = |i: u64, v: u64| {
            let at = (LIST_GPA + 8 * i) as usize;
            if let Some(d) = m.get_mut(at..at + 8) {
                d.copy_from_slice(&v.to_le_bytes());
            }
        };
        let (mut n, mut inside) = (0u64, 0u64);
        for pt in isolation::points(ram) {
            n += 1;
            inside += u64::from(isolation::inside_ram(pt, ram));
            put(n, pt);
        }
        put(0, n);
        (n, inside)
    })
    .map_err(kernel)?;
    userlib::println!(
        "vmm: {}: probing {points} points ({points_in_ram} in its {} MiB of RAM) while the neighbour lives",
        probe.name.as_str(),
        probe.ram_mib
    );
    exit_thread::begin(p.model(probe), p.vcpu, p.ram, exit_ep);
    let run = run_resuming(&p, points, &mut n, exit_ep);
    let outcome = exit_thread::end();
    let (last, stops, stops_inside_ram) = run?;
    let result = setup::summarize(probe, p.vcpu, &[p.vcpu], &last, outcome).result;
    let guest = sys::with_mapped_read(p.ram, RAM_VA, |m| {
        let mut w = [0u64; REPORT_WORDS];
        for (d, s) in w
            .iter_mut()
            .zip(words(m.get(REPORT_GPA as usize..).unwrap_or(&[])))
        {
            *d = s;
        }
        GuestCounts::from_words(&w)
    })
    .map_err(kernel)?;
    let (neighbour_words, neighbour_changed) = changed(n.vm.ram, FILL_START, FOREIGN_MARKER)?;
    let (service_words, service_changed) = changed(marker.0, 0, SERVICE_MARKER)?;
    userlib::println!(
        "vmm: {}: {stops} stops outside RAM resumed, the neighbour ran {} times between them; neighbour {neighbour_changed} of {neighbour_words} words changed, service marker {service_changed} of {service_words}",
        probe.name.as_str(),
        n.runs
    );
    let report = IsolationReport {
        neighbour: neighbour_result,
        result,
        guest,
        points,
        points_in_ram,
        devices,
        stops,
        stops_inside_ram,
        neighbour_runs: n.runs,
        neighbour_bad_runs: n.bad_runs,
        neighbour_seen_changed: n.seen_changed,
        neighbour_words,
        neighbour_changed,
        service_words,
        service_changed,
    };
    drop(n);
    drop(p);
    Ok(Response::Probed(report))
}
