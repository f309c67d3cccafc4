//! Umbra's VMM service: creates VMs from a configuration (`proto::vmm::RunVm`), loads the
//! guest image from a boot module, hands the VM's guest-physical memory to the MMU service,
//! and handles the vCPU's exits with the device and CPU model of `vmm_service::vm`.
//!
//! Threads: the main thread serves the protocol and waits in `VcpuRun` for the bootstrap
//! processor while a VM runs; the exit thread receives the exit messages of the VMM's portals
//! (CPUID, I/O, MSRs, CR access, HLT, VMCALL, triple fault), of every vCPU, and answers each
//! with the model's reply; a runner thread per application processor of a multi-vCPU VM
//! waits in `VcpuRun` for it once its SIPI came ([`smp`]). EPT violations go to the MMU
//! service directly (its endpoint, badged with the VM's handle there).
//!
//! Capabilities (manifest `needs=mmu-service,boot,vmx`, taken by name through
//! `userlib::wiring`): its own endpoint, the MMU service's, the boot capability (reads the
//! guest images) and the VMX capability (creates VMs); and, when the manifest wires it
//! (`needs=...,trace`), the trace service's endpoint for VMs run with `VmConfig::trace`.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![forbid(unsafe_code)]

mod exit_thread;
mod isolation;
mod setup;
mod smp;
mod tracing;

use abi::ipc::MAX_PAYLOAD;
use abi::CapSlot;
use userlib::proto::vmm::{Request, Response, Vmm, VmmError};
use userlib::proto::ProtoError;
use userlib::server::serve_one;
use userlib::sys;
use userlib::wiring::Wiring;

userlib::entry!(vmm_main);

const OWN_EP: CapSlot = userlib::wiring::OWN_ENDPOINT;
/// Pages of heap: the instruction emulator's decoder tables.
const HEAP_PAGES: u64 = 64;

/// The capabilities the manifest gives by name, found once at start.
struct Caps {
    mmu: CapSlot,
    boot: CapSlot,
    vmx: CapSlot,
    /// The trace service, if the manifest wires it.
    trace: Option<CapSlot>,
}

static CAPS: spin::Once<Caps> = spin::Once::new();

/// The MMU service's endpoint.
fn mmu() -> CapSlot {
    CAPS.get().map_or(abi::NO_CAP, |c| c.mmu)
}

/// The boot capability: reads the guest images.
fn boot() -> CapSlot {
    CAPS.get().map_or(abi::NO_CAP, |c| c.boot)
}

/// The trace service's endpoint, if wired.
fn trace_service() -> Option<CapSlot> {
    CAPS.get().and_then(|c| c.trace)
}

/// The VMX capability: creates VMs.
fn vmx() -> CapSlot {
    CAPS.get().map_or(abi::NO_CAP, |c| c.vmx)
}

fn vmm_main(generation: u64) {
    let caps = Wiring::fetch().and_then(|w| {
        Ok(Caps {
            mmu: w.endpoint("mmu-service")?,
            boot: w.boot()?,
            vmx: w.vmx()?,
            trace: w.endpoint("trace").ok(),
        })
    });
    match caps {
        Ok(c) => CAPS.call_once(|| c),
        Err(e) => {
            userlib::println!("vmm: cannot start: the MMU service, boot or VMX capability: {e}");
            sys::task_exit(1)
        }
    };
    // The kernel objects first, in one go (the runners' notifications, the exit endpoint),
    // before the slow decoder set-up: a task counting what the kernel can still create (the
    // fuzz's leak check) sees them all made, not some of them.
    if let Err(e) = smp::start() {
        userlib::println!(
            "vmm: runner threads for {} vCPUs per VM only: {e:?}",
            smp::max_vcpus()
        );
    }
    let exit_ep = match exit_thread::start() {
        Ok(ep) => ep,
        Err(e) => {
            userlib::println!("vmm: cannot start the exit thread: {e:?}");
            sys::task_exit(1)
        }
    };
    // The instruction emulator's decoder builds its tables on the heap, once (about 100 KiB):
    // now, before any guest waits on a device access.
    match sys::heap::init(HEAP_PAGES) {
        Ok(()) => vmm_service::emulate::init(),
        Err(e) => {
            userlib::println!("vmm: cannot start: no heap for the instruction emulator ({e:?})");
            sys::task_exit(1)
        }
    }
    userlib::println!("vmm: serving, generation {generation}");
    let mut buf = [0u8; MAX_PAYLOAD];
    let mut request = [0u8; MAX_PAYLOAD];
    let mut msg = loop {
        match sys::recv(OWN_EP, &mut buf) {
            Ok(m) => break m,
            Err(e) => userlib::println!("vmm: recv: {e}"),
        }
    };
    loop {
        if let Some(cap) = msg.cap {
            // No request takes a capability: drop one sent along (kept, it would fill the
            // capability table a VM needs).
            let _ = sys::cap_delete(cap);
        }
        let n = msg.len.min(MAX_PAYLOAD);
        request[..n].copy_from_slice(&buf[..n]);
        let (label, len) = serve_one::<Vmm>(msg.label, &request[..n], &mut buf, |req| {
            match req {
                Request::RunVm { config } => setup::run_vm(&config, exit_ep),
                Request::ProbeIsolation { probe, neighbour } => {
                    isolation::probe(&probe, &neighbour, exit_ep)
                }
            }
            .unwrap_or_else(|e: VmmError| Response::Error(ProtoError::Service(e)))
        });
        msg = loop {
            match sys::reply_recv(OWN_EP, &mut buf, len, label, None) {
                Ok(m) => break m,
                Err(e) => userlib::println!("vmm: reply_recv: {e}"),
            }
        };
    }
}
