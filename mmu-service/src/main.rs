//! Umbra's MMU service: owns the guest-physical mappings of the VMs handed to it. For an EPT
//! VM it answers EPT-violation exits by mapping guest RAM on demand ([`mmu_service::ept`]) or
//! by stopping the VM for an access outside RAM, with a report. For a shadow-paged VM it
//! allocates the VM's shadow page pool, registers it with the kernel (`VmSetShadow`, naming
//! this service's endpoint as the only one that may set roots), maps it and the guest's RAM,
//! and answers #PF, CR-access and INVLPG exits with the shadow MMU
//! ([`mmu_service::shadow_exit`]).
//!
//! It survives its own crashes: every VM's capabilities are kept with the supervisor and
//! described in a journal page, and a new instance serves the same VMs from its first message
//! on (see [`recover`] for the design). Test suites can make it crash (`InjectFaults`, only
//! with `mmu.inject` on the kernel command line).
//!
//! Capabilities (manifest `needs=boot`, by name through `userlib::wiring`): its own endpoint
//! (receive), the supervisor's, and the boot capability (the kernel command line).
//! Messages: `proto::mmu` requests (the VMM attaches VMs), and exit messages
//! (`abi::vmx::EXIT_LABEL`) from vCPUs whose id names an attached VM (`proto::mmu::vcpu_id`).
#![cfg_attr(target_os = "none", no_std, no_main)]
#![forbid(unsafe_code)]

extern crate alloc;

mod recover;
mod shadow;

use abi::ipc::MAX_PAYLOAD;
use abi::vmx::{self, ExitMessage, ExitReply};
use abi::{CapKind, CapSlot, Rights};
use alloc::boxed::Box;
use mmu_service::ept::{on_violation, Violation};
use mmu_service::journal::{self, CapKey, Injection, VmRecord};
use userlib::proto::mmu::{handle_of, Mmu, MmuError, Request, Response, MAX_VMS};
use userlib::proto::{stop_code, ProtoError};
use userlib::server::serve_one;
use userlib::sys;
use userlib::wiring::Wiring;

userlib::entry!(mmu_main);

const OWN_EP: CapSlot = userlib::wiring::OWN_ENDPOINT;
/// Pages of heap (the shadow MMUs' bookkeeping: about 4 KiB per pool page).
const HEAP_PAGES: u64 = 3072;

#[derive(Default)]
struct VmEntry {
    /// The VMM's key (`AttachVm`).
    key: u64,
    cap: CapSlot,
    ram_pages: u64,
    violations: u64,
    pages_mapped: u64,
    stopped: u64,
    /// A shadow-paged VM's MMU.
    shadow: Option<Box<shadow::ShadowVm>>,
}

struct State {
    vms: [Option<VmEntry>; MAX_VMS],
    exit: ExitMessage,
    /// The heap is there (a shadow-paged VM's MMU lives on it; without it they are refused).
    heap: bool,
}

fn mmu_main(generation: u64) {
    if generation == 1 {
        // Later generations say what they recovered (one line: the console is slow).
        userlib::println!("mmu: serving, generation {generation} (EPT and shadow paging)");
    }
    // The heap object outlives a crash too: a new instance takes it back (no 12 MiB to zero).
    let heap = recover::kept_or_new(journal::key(0, CapKey::Heap), HEAP_PAGES);
    let heap = match heap
        .ok_or(abi::Error::NoMemory)
        .and_then(sys::heap::init_with)
    {
        Ok(()) => {
            // The decoder's tables (some 2,000 allocations), built before any guest waits on
            // them; a restarted instance leaves them to its first emulated write, so that the
            // guests it serves run again sooner (EPT guests never need them).
            if generation == 1 {
                mmu_service::emulate::init();
            }
            true
        }
        Err(e) => {
            userlib::println!("mmu: no heap ({e:?}): shadow-paged VMs will be refused");
            false
        }
    };
    let mut state = State {
        vms: Default::default(),
        exit: ExitMessage::default(),
        heap,
    };
    let inject = injection_allowed();
    if recover::open_journal(generation, inject) {
        recover_vms(&mut state, generation);
    } else {
        userlib::println!("mmu: no journal (no memory, or no supervisor): a crash loses the VMs");
    }
    let mut buf = [0u8; MAX_PAYLOAD];
    let mut request = [0u8; MAX_PAYLOAD];
    let mut msg = loop {
        match sys::recv(OWN_EP, &mut buf) {
            Ok(m) => break m,
            Err(e) => userlib::println!("mmu: recv: {e}"),
        }
    };
    loop {
        let n = msg.len.min(MAX_PAYLOAD);
        request[..n].copy_from_slice(&buf[..n]);
        let mut grant = msg.cap;
        let (label, len) = if msg.label == vmx::EXIT_LABEL {
            recover::with_journal(|j| j.before_exit(&request[..n]));
            let reply = on_exit(&mut state, &request[..n]);
            let len = reply.encode(&mut buf).unwrap_or(0);
            recover::with_journal(|j| j.after_exit());
            (vmx::REPLY_LABEL, len)
        } else {
            serve_one::<Mmu>(msg.label, &request[..n], &mut buf, |req| {
                handle(&mut state, req, &mut grant)
                    .unwrap_or_else(|e| Response::Error(ProtoError::Service(e)))
            })
        };
        if let Some(cap) = grant {
            // Sent with a message that takes none, or a malformed one: dropped.
            let _ = sys::cap_delete(cap);
        }
        msg = loop {
            match sys::reply_recv(OWN_EP, &mut buf, len, label, None) {
                Ok(m) => break m,
                Err(e) => userlib::println!("mmu: reply_recv: {e}"),
            }
        };
    }
}

/// Handles one request. A request that takes a capability takes it out of `grant` (if it
/// is of the kind it needs: a VM for `AttachVm`, memory for `GrantRam`, a vCPU for
/// `AttachVcpu`; any other is `NoGrant` and is dropped by the caller).
fn handle(
    state: &mut State,
    req: Request,
    grant: &mut Option<CapSlot>,
) -> Result<Response, MmuError> {
    match req {
        Request::AttachVm {
            key,
            ram_pages,
            shadow,
        } => {
            let cap = take_grant(grant, CapKind::Vm)?;
            // A retry of an attach the service already did (it crashed before answering).
            let known = state
                .vms
                .iter()
                .position(|v| v.as_ref().is_some_and(|v| v.key == key));
            if let Some(i) = known {
                let _ = sys::cap_delete(cap);
                return Ok(Response::Attached { handle: i as u32 });
            }
            let Some(i) = state.vms.iter().position(Option::is_none) else {
                let _ = sys::cap_delete(cap);
                return Err(MmuError::Full);
            };
            let handle = i as u32;
            if shadow.is_some() && !state.heap {
                let _ = sys::cap_delete(cap);
                return Err(MmuError::NoMemory);
            }
            let shadow = match shadow {
                None => None,
                Some(p) => match shadow::ShadowVm::new(handle, cap, OWN_EP, p) {
                    Ok(s) => Some(Box::new(s)),
                    Err(e) => {
                        let _ = sys::cap_delete(cap);
                        return Err(e);
                    }
                },
            };
            let record = VmRecord {
                key,
                ram_pages,
                shadow: shadow.as_ref().map(|s| s.params()),
                ram: false,
                vcpus: 0,
            };
            let mut kept = recover::keep(journal::key(handle, CapKey::Vm), cap);
            if let Some(s) = shadow.as_ref() {
                kept &= recover::keep(journal::key(handle, CapKey::Pool), s.pool_cap());
            }
            let journaled = recover::with_journal(|j| {
                if kept {
                    j.get().set_record(handle, Some(&record));
                } else {
                    j.forget_vm(handle);
                }
            });
            if journaled.is_some() && !kept {
                drop(shadow);
                let _ = sys::cap_delete(cap);
                return Err(MmuError::Full);
            }
            state.vms[i] = Some(VmEntry {
                key,
                cap,
                ram_pages,
                shadow,
                ..VmEntry::default()
            });
            Ok(Response::Attached { handle })
        }
        Request::GrantRam { handle } => {
            let ram = take_grant(grant, CapKind::Memory)?;
            let vm = slot(state, handle).ok().and_then(Option::as_mut);
            let Some(s) = vm.and_then(|v| v.shadow.as_mut()) else {
                let _ = sys::cap_delete(ram);
                return Err(MmuError::NotShadow);
            };
            if s.has_ram() {
                // A retry after a crash: the recovered VM has its RAM already.
                let _ = sys::cap_delete(ram);
                return Ok(Response::RamGranted);
            }
            s.grant_ram(ram)?;
            journal_cap(handle, CapKey::Ram, ram, |r| r.ram = true)?;
            Ok(Response::RamGranted)
        }
        Request::AttachVcpu { handle, index } => {
            let cap = take_grant(grant, CapKind::Vcpu)?;
            let vm = slot(state, handle).ok().and_then(Option::as_mut);
            let Some(s) = vm.and_then(|v| v.shadow.as_mut()) else {
                let _ = sys::cap_delete(cap);
                return Err(MmuError::NotShadow);
            };
            s.attach_vcpu(index, cap)?;
            if index < 8 {
                journal_cap(handle, CapKey::Vcpu(index as u8), cap, |r| {
                    r.vcpus |= 1 << index
                })?;
            }
            Ok(Response::VcpuAttached)
        }
        Request::DetachVm { handle } => {
            let vm = slot(state, handle)?.take().ok_or(MmuError::UnknownVm)?;
            recover::with_journal(|j| j.forget_vm(handle));
            // The shadow MMU (its mappings, pool and RAM capabilities) goes first.
            drop(vm.shadow);
            let _ = sys::cap_delete(vm.cap);
            Ok(Response::Detached)
        }
        Request::Stats { handle } => {
            let vm = slot(state, handle)?.as_ref().ok_or(MmuError::UnknownVm)?;
            Ok(Response::Stats {
                violations: vm.violations,
                pages_mapped: vm.pages_mapped,
                stopped: vm.stopped,
                shadow: vm.shadow.as_ref().map(|s| s.stats()),
            })
        }
        Request::InjectFaults {
            every,
            limit,
            spare_first,
            seed,
        } => recover::with_journal(|j| {
            if !j.injection_allowed {
                return Err(MmuError::NotPermitted);
            }
            j.update_header(|h| {
                h.injection = Injection {
                    every,
                    limit,
                    done: 0,
                    spare_first,
                    seed,
                }
            });
            Ok(Response::Injecting)
        })
        .unwrap_or(Err(MmuError::NotPermitted)),
        Request::Recovery => Ok(recover::with_journal(|j| {
            let h = j.header();
            let (measured, median, max) = j.get().cost_summary();
            Response::Recovery {
                crashes: h.crashes,
                phase_crashes: h.injection.done,
                resent: h.resent,
                recoveries: h.recoveries,
                measured,
                median,
                max,
            }
        })
        .unwrap_or(Response::Recovery {
            crashes: 0,
            phase_crashes: 0,
            resent: 0,
            recoveries: 0,
            measured: 0,
            median: 0,
            max: 0,
        })),
    }
}

/// Keeps `cap` (just taken by VM `handle`'s shadow MMU) with the supervisor and notes it in
/// the VM's record; without a journal there is nothing to do.
fn journal_cap(
    handle: u32,
    which: CapKey,
    cap: CapSlot,
    note: impl FnOnce(&mut VmRecord),
) -> Result<(), MmuError> {
    recover::with_journal(|j| {
        let mut r = j.get().record(handle).ok_or(MmuError::UnknownVm)?;
        if !recover::keep(journal::key(handle, which), cap) {
            return Err(MmuError::Full);
        }
        note(&mut r);
        j.get().set_record(handle, Some(&r));
        Ok(())
    })
    .unwrap_or(Ok(()))
}

/// Whether the kernel command line allows fault injection (`mmu.inject`).
fn injection_allowed() -> bool {
    let Ok(boot) = Wiring::fetch().and_then(|w| w.boot()) else {
        return false;
    };
    let allowed = sys::kernel_cmdline_has(boot, "mmu.inject");
    let _ = sys::cap_delete(boot);
    allowed
}

/// A new instance: serves again every VM the journal names, before its first receive.
fn recover_vms(state: &mut State, generation: u64) {
    let records: heapless::Vec<(u32, VmRecord), MAX_VMS> = recover::with_journal(|j| {
        (0..MAX_VMS as u32)
            .filter_map(|h| j.get().record(h).map(|r| (h, r)))
            .collect()
    })
    .unwrap_or_default();
    if records.is_empty() {
        return;
    }
    for (handle, r) in records {
        match recover_vm(handle, &r) {
            Ok(vm) => state.vms[handle as usize] = Some(vm),
            Err(why) => {
                userlib::println!("mmu: cannot recover VM {handle}: {why}; forgetting it");
                recover::with_journal(|j| j.forget_vm(handle));
            }
        }
    }
    recover::with_journal(|j| j.update_header(|h| h.recoveries += 1));
    let n = state.vms.iter().flatten().count();
    userlib::println!("mmu: generation {generation}: {n} VM(s) recovered");
}

fn recover_vm(handle: u32, r: &VmRecord) -> Result<VmEntry, &'static str> {
    let caps = recover::JournalPage::fetch_caps(handle, r).ok_or("a kept capability is gone")?;
    let shadow = match (r.shadow, caps.pool) {
        (Some(params), Some(pool)) => {
            let mut s = shadow::ShadowVm::recover(handle, caps.vm, OWN_EP, params, pool)
                .map_err(|_| "the pool cannot be registered again")?;
            if let Some(ram) = caps.ram {
                s.grant_ram(ram).map_err(|_| "the RAM cannot be mapped")?;
            }
            for (i, cap) in caps.vcpus.iter().enumerate() {
                if let Some(cap) = *cap {
                    s.attach_vcpu(i as u16, cap)
                        .map_err(|_| "a vCPU cannot be attached")?;
                }
            }
            Some(Box::new(s))
        }
        _ => None,
    };
    Ok(VmEntry {
        key: r.key,
        cap: caps.vm,
        ram_pages: r.ram_pages,
        shadow,
        ..VmEntry::default()
    })
}

/// Whether a stop for an access outside RAM goes unprinted: a VM's first stops are printed;
/// a VM its VMM resumes after each stop (the isolation probe stops thousands of times) has
/// the later ones only counted (`Stats.stopped`).
fn quiet(stopped: u64) -> bool {
    const PRINTED: u64 = 2;
    if stopped == PRINTED {
        userlib::println!("mmu: further stops of this VM outside RAM are counted, not printed");
    }
    stopped >= PRINTED
}

/// Takes the granted capability if it names an object of `kind` (else leaves it for the
/// caller to drop): a VM slot must never hold, say, a memory object a client sent.
fn take_grant(grant: &mut Option<CapSlot>, kind: CapKind) -> Result<CapSlot, MmuError> {
    let cap = grant.ok_or(MmuError::NoGrant)?;
    if sys::cap_info(cap).map(|i| i.kind) != Ok(Some(kind)) {
        return Err(MmuError::NoGrant);
    }
    *grant = None;
    Ok(cap)
}

fn slot(state: &mut State, handle: u32) -> Result<&mut Option<VmEntry>, MmuError> {
    state
        .vms
        .get_mut(handle as usize)
        .ok_or(MmuError::UnknownVm)
}

/// An exit routed here by a portal: EPT violations map RAM or stop the VM; anything else
/// (a portal set up wrongly) stops it with a report.
fn on_exit(state: &mut State, bytes: &[u8]) -> ExitReply {
    // Decoded into the state's message, reused for every exit (the struct is large).
    let msg = &mut state.exit;
    if let Err(e) = msg.decode_into(bytes) {
        userlib::println!("mmu: malformed exit message ({e:?}); stopping the VM");
        return ExitReply::stop(stop_code::MMU_ERROR);
    }
    let msg = &state.exit;
    let handle = handle_of(msg.vcpu);
    let vm = state.vms.get_mut(handle as usize).and_then(Option::as_mut);
    let Some(vm) = vm else {
        userlib::println!("mmu: exit for an unknown VM (handle {handle}); stopping it");
        return ExitReply::stop(stop_code::MMU_ERROR);
    };
    if let Some(s) = vm.shadow.as_mut() {
        return s.on_exit(msg, quiet(vm.stopped)).unwrap_or_else(|code| {
            vm.stopped += 1;
            ExitReply::stop(code)
        });
    }
    if msg.basic_reason() != vmx::reason::EPT_VIOLATION {
        userlib::println!(
            "mmu: unexpected exit reason {} at rip {:#x}; stopping the VM",
            msg.basic_reason(),
            msg.rip
        );
        return ExitReply::stop(stop_code::MMU_ERROR);
    }
    vm.violations += 1;
    match on_violation(msg.gpa, vm.ram_pages) {
        Violation::Map { gpa, pages } => {
            let rights = Rights::READ | Rights::WRITE | Rights::EXEC;
            match sys::vm_map_ram(vm.cap, gpa, pages, rights) {
                Ok(()) => {
                    vm.pages_mapped += pages;
                    ExitReply::resume()
                }
                Err(e) => {
                    userlib::println!("mmu: mapping gpa {gpa:#x} failed: {e:?}; stopping the VM");
                    vm.stopped += 1;
                    ExitReply::stop(stop_code::outside_ram(msg.gpa))
                }
            }
        }
        // A data access outside RAM: the VMM's MMIO portal decides whether a device is
        // there (it stops the VM otherwise).
        // (Counted with the violations.)
        Violation::OutsideRam { gpa } if msg.qualification & 4 == 0 => {
            mmu_service::shadow_exit::forward(gpa)
        }
        Violation::OutsideRam { gpa } => {
            let q = msg.qualification;
            let access = match (q & 1 != 0, q & 2 != 0, q & 4 != 0) {
                (_, true, _) => "write",
                (_, _, true) => "fetch",
                _ => "read",
            };
            if !quiet(vm.stopped) {
                userlib::println!(
                    "mmu: guest {access} at gpa {gpa:#x} outside RAM ({} MiB) and outside any device, rip {:#x}: stopping the VM",
                    vm.ram_pages / 256,
                    msg.rip
                );
            }
            vm.stopped += 1;
            ExitReply::stop(stop_code::outside_ram(gpa))
        }
    }
}
