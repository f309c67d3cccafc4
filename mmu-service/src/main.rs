//! Umbra's MMU service: owns the guest-physical mappings of the VMs handed to it. For an EPT
//! VM it answers EPT-violation exits by mapping guest RAM on demand ([`mmu_service::ept`]) or
//! by stopping the VM for an access outside RAM, with a report. For a shadow-paged VM it
//! allocates the VM's shadow page pool, registers it with the kernel (`VmSetShadow`, naming
//! this service's endpoint as the only one that may set roots), maps it and the guest's RAM,
//! and answers #PF, CR-access and INVLPG exits with the shadow MMU
//! ([`mmu_service::shadow_exit`]).
//!
//! Capabilities (granted by the supervisor): slot 2 = its own endpoint (receive).
//! Messages: `proto::mmu` requests (the VMM attaches VMs), and exit messages
//! (`abi::vmx::EXIT_LABEL`) from vCPUs whose id names an attached VM (`proto::mmu::vcpu_id`).
#![cfg_attr(target_os = "none", no_std, no_main)]
#![forbid(unsafe_code)]

extern crate alloc;

mod shadow;

use abi::ipc::MAX_PAYLOAD;
use abi::vmx::{self, ExitMessage, ExitReply};
use abi::{CapKind, CapSlot, Rights};
use alloc::boxed::Box;
use mmu_service::ept::{on_violation, Violation};
use userlib::proto::mmu::{
    handle_of, outside_ram_code, Mmu, MmuError, Request, Response, MAX_VMS, STOP_MMU_ERROR,
};
use userlib::proto::ProtoError;
use userlib::server::serve_one;
use userlib::sys;

userlib::entry!(mmu_main);

const OWN_EP: CapSlot = abi::cap::slot::FIRST_GRANTED;
/// Pages of heap (the shadow MMUs' bookkeeping: about 4 KiB per pool page).
const HEAP_PAGES: u64 = 3072;

#[derive(Default)]
struct VmEntry {
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
}

fn mmu_main(generation: u64) {
    userlib::println!("mmu: serving, generation {generation} (EPT and shadow paging)");
    match sys::heap::init(HEAP_PAGES) {
        // The decoder's tables, built once, before any guest waits on them.
        Ok(()) => mmu_service::emulate::init(),
        Err(e) => userlib::println!("mmu: no heap ({e:?}): shadow-paged VMs will be refused"),
    }
    let mut state = State {
        vms: Default::default(),
        exit: ExitMessage::default(),
    };
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
            let reply = on_exit(&mut state, &request[..n]);
            let len = reply.encode(&mut buf).unwrap_or(0);
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
        Request::AttachVm { ram_pages, shadow } => {
            let cap = take_grant(grant, CapKind::Vm)?;
            let Some(i) = state.vms.iter().position(Option::is_none) else {
                let _ = sys::cap_delete(cap);
                return Err(MmuError::Full);
            };
            let shadow = match shadow {
                None => None,
                Some(p) => match shadow::ShadowVm::new(i as u32, cap, OWN_EP, p) {
                    Ok(s) => Some(Box::new(s)),
                    Err(e) => {
                        let _ = sys::cap_delete(cap);
                        return Err(e);
                    }
                },
            };
            state.vms[i] = Some(VmEntry {
                cap,
                ram_pages,
                shadow,
                ..VmEntry::default()
            });
            Ok(Response::Attached { handle: i as u32 })
        }
        Request::GrantRam { handle } => {
            let ram = take_grant(grant, CapKind::Memory)?;
            let vm = slot(state, handle).ok().and_then(Option::as_mut);
            let Some(s) = vm.and_then(|v| v.shadow.as_mut()) else {
                let _ = sys::cap_delete(ram);
                return Err(MmuError::NotShadow);
            };
            s.grant_ram(ram)?;
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
            Ok(Response::VcpuAttached)
        }
        Request::DetachVm { handle } => {
            let vm = slot(state, handle)?.take().ok_or(MmuError::UnknownVm)?;
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
    }
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
        return ExitReply::stop(STOP_MMU_ERROR);
    }
    let msg = &state.exit;
    let handle = handle_of(msg.vcpu);
    let vm = state.vms.get_mut(handle as usize).and_then(Option::as_mut);
    let Some(vm) = vm else {
        userlib::println!("mmu: exit for an unknown VM (handle {handle}); stopping it");
        return ExitReply::stop(STOP_MMU_ERROR);
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
        return ExitReply::stop(STOP_MMU_ERROR);
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
                    ExitReply::stop(outside_ram_code(msg.gpa))
                }
            }
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
            ExitReply::stop(outside_ram_code(gpa))
        }
    }
}
