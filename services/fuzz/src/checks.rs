//! What must hold after the fuzzing: every service answers, nothing another task owns has
//! changed (the supervisor's services and generations, echo's generation and its capability
//! table, the MMU service's VM table, a memory object granted read-only to everyone), and
//! no kernel object leaked.

use abi::{CapSlot, Error};
use heapless::Vec;
use userlib::ipc::client;
use userlib::proto::echo::{self, Echo};
use userlib::proto::mmu::{self, Mmu, MmuError};
use userlib::proto::supervisor::{self, ServiceInfo, Supervisor, MAX_SERVICES};
use userlib::proto::trace::{self, Trace};
use userlib::proto::vmm::{self, ConfigError, EntryMode, MmuMode, VmConfig, Vmm, VmmError};
use userlib::proto::ProtoError;
use userlib::sys;

use crate::messages::ECHO_BENCH_LABEL;
use crate::{echo, mmu, vmm, Suite, SUPERVISOR};

/// The state the fuzzing must leave as it found it.
pub struct Snapshot {
    pub services: Vec<ServiceInfo, MAX_SERVICES>,
    pub echo_generation: u32,
    pub endpoints: u32,
    pub notifications: u32,
}

/// How many objects `create` makes before it fails (all deleted again): falls if the kernel
/// leaked objects of that kind.
fn creatable(create: fn() -> Result<CapSlot, Error>) -> u32 {
    let mut made: Vec<CapSlot, 64> = Vec::new();
    while made.len() < 64 {
        match create() {
            Ok(cap) => {
                let _ = made.push(cap);
            }
            Err(_) => break,
        }
    }
    for cap in &made {
        let _ = sys::cap_delete(*cap);
    }
    made.len() as u32
}

/// How many VMs, and vCPUs in one VM, can be created (all deleted again): falls if the
/// kernel leaked VM objects.
pub fn creatable_vms() -> (u32, u32) {
    let Ok(ram) = sys::mem_alloc(1) else {
        return (0, 0);
    };
    let mut vms: Vec<CapSlot, 16> = Vec::new();
    while vms.len() < 16 {
        match sys::vm_create(ram, 0, crate::vmx()) {
            Ok(vm) => {
                let _ = vms.push(vm);
            }
            Err(_) => break,
        }
    }
    let mut vcpus: Vec<CapSlot, 32> = Vec::new();
    if let Some(&vm) = vms.first() {
        while vcpus.len() < 32 {
            match sys::vcpu_create(vm, vcpus.len() as u64) {
                Ok(v) => {
                    let _ = vcpus.push(v);
                }
                Err(_) => break,
            }
        }
    }
    for &c in vcpus.iter().chain(vms.iter()) {
        let _ = sys::cap_delete(c);
    }
    let _ = sys::cap_delete(ram);
    (vms.len() as u32, vcpus.len() as u32)
}

pub fn snapshot() -> Result<Snapshot, &'static str> {
    let services = match client::<Supervisor>(SUPERVISOR).call(&supervisor::Request::ListServices) {
        Ok(supervisor::Response::Services(list)) => list,
        _ => return Err("the supervisor does not list its services"),
    };
    let echo_generation = match client::<Echo>(echo()).call(&echo::Request::Ping) {
        Ok(echo::Response::Pong { generation }) => generation,
        _ => return Err("echo does not answer a ping"),
    };
    // Services make their kernel objects (the VMM's exit endpoint and its runners'
    // notifications, the trace service's ring notification) before they serve: once each
    // answers, counting what is left is not racing its start.
    let vmm_ready = client::<Vmm>(vmm()).call(&vmm::Request::RunVm {
        config: invalid_vm(),
    });
    if vmm_ready.is_err() {
        return Err("the VMM does not answer");
    }
    if client::<Trace>(crate::trace())
        .call(&trace::Request::Status)
        .is_err()
    {
        return Err("the trace service does not answer");
    }
    Ok(Snapshot {
        services,
        echo_generation,
        endpoints: creatable(sys::endpoint_create),
        notifications: creatable(sys::notification_create),
    })
}

/// A configuration the VMM must refuse (no RAM): its "ping".
fn invalid_vm() -> VmConfig {
    VmConfig {
        name: "ping".try_into().unwrap_or_default(),
        module: "guest-multiboot".try_into().unwrap_or_default(),
        ram_mib: 0,
        entry: EntryMode::Multiboot,
        vcpus: 1,
        cmdline: Default::default(),
        mmu: MmuMode::Ept,
        benchmark: false,
        time_limit_ms: 0,
        trace: false,
        max_resets: 0,
        initrd: heapless::String::new(),
    }
}

/// The MMU service takes only a VM capability as a VM (run first, while its capability
/// table has room: a foreign object in a VM slot would take the slot from the VMM's VMs).
pub fn mmu_refuses_foreign_vm(canary: CapSlot, t: &mut Suite) {
    let r = client::<Mmu>(mmu()).call_with_cap(
        &mmu::Request::AttachVm {
            key: u64::MAX,
            ram_pages: 1,
            shadow: None,
        },
        Some(canary),
    );
    if let Ok(mmu::Response::Attached { handle }) = r.as_ref().map(|r| r.response) {
        let _ = client::<Mmu>(mmu()).call(&mmu::Request::DetachVm { handle });
    }
    let ok = matches!(&r, Ok(reply)
        if reply.response == mmu::Response::Error(ProtoError::Service(MmuError::NoGrant)));
    t.check(
        "mmu-service refuses AttachVm with a memory capability for a VM",
        ok,
        format_args!("{r:?}"),
    );
}

/// Capabilities sent along with requests that take none, more than a capability table holds:
/// each service must drop them (the checks after find out whether echo and the supervisor
/// still have room to take and hand out capabilities).
pub fn stray_grants(grant: CapSlot) {
    let rounds = abi::cap::CAP_SLOTS + 8;
    for _ in 0..rounds {
        let _ = client::<Supervisor>(SUPERVISOR)
            .call_with_cap(&supervisor::Request::Version, Some(grant));
        let _ = client::<Echo>(echo()).call_with_cap(&echo::Request::Ping, Some(grant));
        // The raw benchmark message, which echo answers without decoding.
        let mut raw = [0u8; 8];
        let _ = sys::call(echo(), &mut raw, 8, ECHO_BENCH_LABEL, Some(grant));
        let _ = client::<Vmm>(vmm()).call_with_cap(
            &vmm::Request::RunVm {
                config: invalid_vm(),
            },
            Some(grant),
        );
        let _ = client::<Mmu>(mmu()).call_with_cap(&mmu::Request::Stats { handle: 0 }, Some(grant));
    }
}

/// Runs every check; returns how many of the four services answered.
pub fn verify(before: &Snapshot, canary: CapSlot, canary_bytes: &[u8], t: &mut Suite) -> u32 {
    let mut answering = 0;
    let mut sup = client::<Supervisor>(SUPERVISOR);
    let r = sup.call(&supervisor::Request::Version);
    let ok = matches!(r, Ok(supervisor::Response::Version { protocol, version })
        if protocol == supervisor::PROTOCOL_ID && version == supervisor::VERSION);
    answering += u32::from(ok);
    t.check("supervisor answers Version", ok, format_args!("{r:?}"));

    let r = sup.call(&supervisor::Request::ListServices);
    let ok = matches!(&r, Ok(supervisor::Response::Services(list)) if *list == before.services);
    t.check(
        "supervisor: every service at its generation, none restarted",
        ok,
        format_args!("before {:?}, after {r:?}", before.services),
    );

    let r = sup.call_with_cap(
        &supervisor::Request::Lookup {
            name: "echo".try_into().unwrap_or_default(),
        },
        None,
    );
    let ok = match &r {
        Ok(reply) if reply.response == supervisor::Response::Granted => {
            let cap = reply.cap.unwrap_or(abi::NO_CAP);
            let pong = client::<Echo>(cap).call(&echo::Request::Ping);
            let _ = sys::cap_delete(cap);
            matches!(pong, Ok(echo::Response::Pong { .. }))
        }
        _ => false,
    };
    t.check(
        "supervisor still grants a working endpoint (Lookup)",
        ok,
        format_args!("{r:?}"),
    );

    let mut echo = client::<Echo>(echo());
    let r = echo.call(&echo::Request::Ping);
    let ok = r
        == Ok(echo::Response::Pong {
            generation: before.echo_generation,
        });
    answering += u32::from(ok);
    t.check(
        "echo answers Ping, same generation",
        ok,
        format_args!("{r:?}"),
    );

    let mut data: heapless::Vec<u8, { echo::ECHO_CAPACITY }> = heapless::Vec::new();
    for i in 0..200u32 {
        let _ = data.push((i * 7) as u8);
    }
    let r = echo.call(&echo::Request::Echo { data: data.clone() });
    let ok = r == Ok(echo::Response::Echo { data });
    t.check("echo still echoes", ok, format_args!("{r:?}"));

    let expected: u64 = canary_bytes.iter().map(|&b| u64::from(b)).sum();
    let r = echo.call_with_cap(
        &echo::Request::SumShared {
            len: canary_bytes.len() as u32,
        },
        Some(canary),
    );
    let ok = matches!(&r, Ok(reply) if reply.response == echo::Response::Sum { total: expected });
    t.check(
        "echo takes a granted memory object (room in its capability table)",
        ok,
        format_args!("{r:?}, expected sum {expected}"),
    );

    let r = client::<Vmm>(vmm()).call(&vmm::Request::RunVm {
        config: invalid_vm(),
    });
    let ok = r
        == Ok(vmm::Response::Error(ProtoError::Service(
            VmmError::InvalidConfig(ConfigError::RamSize),
        )));
    answering += u32::from(ok);
    t.check(
        "vmm-service answers (refuses a VM without RAM)",
        ok,
        format_args!("{r:?}"),
    );

    let mut all_unknown = true;
    let mut last = None;
    for handle in 0..mmu::MAX_VMS as u32 {
        let r = client::<Mmu>(mmu()).call(&mmu::Request::Stats { handle });
        if r != Ok(mmu::Response::Error(ProtoError::Service(
            MmuError::UnknownVm,
        ))) {
            all_unknown = false;
            last = Some((handle, r));
        }
    }
    answering += u32::from(all_unknown);
    t.check(
        "mmu-service answers and holds no VM (nothing attached it one)",
        all_unknown,
        format_args!("{last:?}"),
    );

    // The trace service answers, at its first generation (the fuzzer never crashes it).
    let r = client::<Trace>(crate::trace()).call(&trace::Request::Status);
    let ok = matches!(&r, Ok(trace::Response::Status(s)) if !s.restarted);
    answering += u32::from(ok);
    t.check(
        "trace answers Status, not restarted",
        ok,
        format_args!("{r:?}"),
    );

    let endpoints = creatable(sys::endpoint_create);
    let notifications = creatable(sys::notification_create);
    t.check(
        "no endpoint or notification leaked",
        endpoints == before.endpoints && notifications == before.notifications,
        format_args!(
            "creatable endpoints {} -> {endpoints}, notifications {} -> {notifications}",
            before.endpoints, before.notifications
        ),
    );
    answering
}
