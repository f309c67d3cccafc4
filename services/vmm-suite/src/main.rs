//! The VMM service's client for these scenarios, chosen by the kernel command line:
//!
//! - `demo`: runs the multiboot demo guest; prints `demo: N passed, M failed`.
//! - `vmm`: the VMX/VMM suite: every test guest, configurations the VMM must refuse, guests the
//!   hypervisor must stop (outside RAM, unsupported exit, triple fault), a malformed request;
//!   prints `vmm: N passed, M failed`.
//! - `bench-vmm`: runs the exit-benchmark guest (its figures are console lines the harness
//!   reads); prints `bench-vmm: N passed, M failed`.
//! - `shadow`: the multi-address-space guests on shadow paging; prints `shadow: N passed, M
//!   failed`.
//! - `bench-mmu`: the shadow-MMU benchmark guests, one per paging mode, each run once for its
//!   micro-benchmarks and once per number of address spaces of its workload, with Umbra's
//!   policy and (PAE, 2-level) KVM's; prints the MMU's counters of each run as `bench-mmu: csv`
//!   lines next to the guests' own cycle lines, then `bench-mmu: N passed, M failed`.
//!
//! - `isolation`: the VM isolation probe (`guest-isolation`, see
//!   `userlib::proto::vmm::isolation`) on EPT and on shadow paging: every 2 MiB of the 4 GiB
//!   guest-physical space and every device address is the probe's RAM, a device or a stop,
//!   never the live neighbour VM's memory or the VMM's; prints `isolation: <mode>: probed N,
//!   own RAM A, device D, stopped S, foreign F, ...` per mode, then `isolation: N passed, M
//!   failed`.
//!
//! Then it asks the supervisor to end the scenario with the matching code.
//!
//! - `mmu-restart`: the MMU service crashed 100 times per MMU mode under running guests, then
//!   made to crash until the supervisor gives up ([`restart`]).
//! - `trace`: traced runs whose trace-service counts must equal the VMM's and the MMU
//!   service's, bad trace requests, and a trace-service restart ([`tracing`]).
//!
//! - `guest`: a user's own kernel, `make run GUEST=path` ([`userguest`]).
//!
//! With the word `trace` on the kernel command line (`make trace`), every VM of any of these
//! scenarios is traced, and its report (`trace:` and `trace-hist:` lines) follows its run.
//!
//! Capabilities (manifest `needs=boot,vmm-service,mmu-service,trace`, taken by name through
//! `userlib::wiring`): the supervisor's endpoint, the VMM service's, the MMU service's (fault
//! injection and its recovery counters) and the boot capability (the command line).
#![cfg_attr(target_os = "none", no_std, no_main)]
#![forbid(unsafe_code)]

mod cpu_exits;
mod cpu_fpu;
mod cpu_msr;
mod mmio;
mod platform;
mod platform_timer;
mod restart;
mod smp;
mod tracing;
mod uart_rtc;
mod userguest;

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use abi::CapSlot;
use heapless::String;
use userlib::client::ClientError;
use userlib::proto::supervisor::{Request as SupRequest, Supervisor};
use userlib::proto::vmm::isolation::Problem;
use userlib::proto::vmm::{
    ConfigError, EntryMode, MmuMode, Request, Response, ShadowConfig, VmConfig, VmResult,
    VmSummary, Vmm, VmmError, GUEST_PASS,
};
use userlib::proto::ProtoError;
use userlib::sys;
use userlib::wiring::Wiring;

userlib::entry!(suite_main);

const SUPERVISOR: CapSlot = userlib::wiring::SUPERVISOR;
/// The VMM service's endpoint and the boot capability, found by name at start.
static VMM: AtomicU64 = AtomicU64::new(abi::NO_CAP);
static BOOT: AtomicU64 = AtomicU64::new(abi::NO_CAP);

fn vmm() -> CapSlot {
    VMM.load(Ordering::Relaxed)
}

const MIB: u64 = 1 << 20;

use userlib::suite::Suite;

fn scenario() -> String<32> {
    let mut buf = [0u8; 256];
    let n = sys::kernel_cmdline(BOOT.load(Ordering::Relaxed), &mut buf)
        .unwrap_or(0)
        .min(buf.len());
    let line = core::str::from_utf8(&buf[..n]).unwrap_or("");
    let name = line
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix("scenario="))
        .unwrap_or(abi::scenario::DEFAULT);
    String::try_from(&name[..name.len().min(32)]).unwrap_or_default()
}

/// Whether the kernel command line has the word `word`.
fn cmdline_has(word: &str) -> bool {
    sys::kernel_cmdline_has(BOOT.load(Ordering::Relaxed), word)
}

fn config(name: &str, module: &str, ram_mib: u32, entry: EntryMode) -> VmConfig {
    VmConfig {
        name: String::try_from(name).unwrap_or_default(),
        module: String::try_from(module).unwrap_or_default(),
        ram_mib,
        entry,
        vcpus: 1,
        cmdline: String::try_from("umbra-test-guest").unwrap_or_default(),
        mmu: MmuMode::Ept,
        benchmark: false,
        time_limit_ms: 0,
        trace: tracing::TRACE_ALL.load(Ordering::Relaxed),
        max_resets: 0,
        initrd: heapless::String::new(),
    }
}

/// `cfg` on shadow paging (`audit`: the kernel audits the shadow tables before each entry).
fn shadow(cfg: &VmConfig, audit: bool) -> VmConfig {
    let mut c = cfg.clone();
    c.mmu = MmuMode::Shadow(ShadowConfig {
        audit,
        ..ShadowConfig::DEFAULT
    });
    c
}

/// A guest on shadow paging: it passes, the MMU service fixed faults and kept statistics,
/// and every #PF and CR3 load of the guest went through it.
fn passing_shadow_guest(t: &mut Suite, what: &str, cfg: &VmConfig, audit: bool) {
    let cfg = shadow(cfg, audit);
    let Some(s) = passing_guest(t, what, &cfg) else {
        return;
    };
    let ok = s
        .shadow
        .is_some_and(|m| m.faults_fixed > 0 && m.pool_used > 0);
    t.check(
        "  its shadow MMU statistics",
        ok,
        format_args!("{:?}", s.shadow),
    );
}

fn run(config: &VmConfig) -> Result<Response, ClientError> {
    let mut vmm = userlib::ipc::client::<Vmm>(vmm());
    let r = vmm.call(&Request::RunVm {
        config: config.clone(),
    });
    if let Some(vm) = finished(&r).and_then(|s| s.trace) {
        tracing::print_report(config.name.as_str(), vm);
    }
    r
}

fn finished(r: &Result<Response, ClientError>) -> Option<&VmSummary> {
    match r {
        Ok(Response::Finished(s)) => Some(s),
        _ => None,
    }
}

fn exits_of(s: &VmSummary, reason: u32) -> u32 {
    s.exits
        .iter()
        .find(|(r, _)| u32::from(*r) == reason)
        .map_or(0, |(_, n)| *n)
}

/// Runs a guest that must verify itself and exit through the debug-exit port.
fn passing_guest(t: &mut Suite, what: &str, cfg: &VmConfig) -> Option<VmSummary> {
    let r = run(cfg);
    if matches!(r, Ok(Response::Error(ProtoError::Service(VmmError::NoVmx)))) {
        userlib::println!(
            "{}: this machine has no usable VMX (QEMU TCG has none): run it on Bochs (EMU=bochs) or KVM",
            t.name
        );
    }
    let s = finished(&r).cloned();
    let ok = s
        .as_ref()
        .is_some_and(|s| s.result == VmResult::DebugExit { code: GUEST_PASS });
    t.check(what, ok, format_args!("{r:?}"));
    s
}

fn refused(t: &mut Suite, what: &str, cfg: &VmConfig, want: VmmError) {
    let r = run(cfg);
    let ok = matches!(&r, Ok(Response::Error(ProtoError::Service(e))) if *e == want);
    t.check(what, ok, format_args!("{r:?}"));
}

fn stopped(t: &mut Suite, what: &str, cfg: &VmConfig, want: fn(&VmResult) -> bool) {
    let r = run(cfg);
    let ok = finished(&r).is_some_and(|s| want(&s.result));
    t.check(what, ok, format_args!("{r:?}"));
}

fn vmm_suite(t: &mut Suite) {
    use abi::vmx::reason;
    // Before any guest of this boot has run (the suite asks for the first one below).
    #[cfg(target_os = "none")]
    let gdt_accepted_before = sys::gdt_selectors_accepted();
    let mb = config("mb", "guest-multiboot", 16, EntryMode::Multiboot);
    if let Some(s) = passing_guest(t, "multiboot guest verifies itself", &mb) {
        for (name, r) in [
            ("cpuid", reason::CPUID),
            ("io", reason::IO),
            ("rdmsr", reason::RDMSR),
            ("wrmsr", reason::WRMSR),
            ("vmcall", reason::VMCALL),
            ("hlt", reason::HLT),
            ("ept-violation", reason::EPT_VIOLATION),
            // The kernel bounds every run with the VMX-preemption timer and counts its exits.
            ("preemption-timer", reason::PREEMPTION_TIMER),
        ] {
            let n = exits_of(&s, r);
            t.check(
                name,
                n > 0,
                format_args!("no {name} exit counted: {:?}", s.exits),
            );
        }
    }
    passing_shadow_guest(t, "multiboot guest on shadow paging", &mb, false);
    // A VM exit leaves the GDTR and IDTR limits at 0xFFFF; the kernel must load its tables
    // again, or ring 3 reaches kernel memory past the GDT through LAR, LSL and selectors.
    #[cfg(target_os = "none")]
    {
        let after = sys::gdt_selectors_accepted();
        t.check(
            "after VM exits LSL accepts the same GDT selectors as before any guest ran",
            after == gdt_accepted_before,
            format_args!("{after} selectors accepted, {gdt_accepted_before} before"),
        );
        if let Some((gdt, idt)) = sys::descriptor_table_limits() {
            t.check(
                "after VM exits the GDT and IDT limits are the kernel's",
                gdt < 0x100 && idt == 0xfff,
                format_args!("GDTR limit {gdt:#x}, IDTR limit {idt:#x}"),
            );
        }
    }
    passing_guest(
        t,
        "64-bit guest with three address spaces",
        &config("long", "guest-long", 32, EntryMode::Multiboot),
    );
    passing_guest(
        t,
        "32-bit PAE guest with three address spaces",
        &config("pae", "guest-pae", 32, EntryMode::Multiboot),
    );
    passing_guest(
        t,
        "64-bit guest switching and editing four address spaces",
        &config("spaces64", "guest-spaces64", 16, EntryMode::Multiboot),
    );
    passing_guest(
        t,
        "PAE guest switching and editing four address spaces",
        &config("spacespae", "guest-spacespae", 16, EntryMode::Multiboot),
    );
    passing_guest(
        t,
        "2-level paging guest switching and editing four address spaces",
        &config("spaces32", "guest-spaces32", 16, EntryMode::Multiboot),
    );
    for (what, cfg) in [
        (
            "64-bit guest",
            config("long", "guest-long", 32, EntryMode::Multiboot),
        ),
        (
            "PAE guest",
            config("pae", "guest-pae", 32, EntryMode::Multiboot),
        ),
    ] {
        passing_shadow_guest(t, what, &cfg, false);
    }
    // The exit benchmark guest switches its exits to the kernel's floor: its creator allows it.
    let flat = VmConfig {
        benchmark: true,
        ..config(
            "flat",
            "guest-bench",
            16,
            EntryMode::Flat64 { load_gpa: 2 * MIB },
        )
    };
    passing_guest(t, "flat 64-bit image", &flat);
    passing_shadow_guest(t, "flat 64-bit image on shadow paging", &flat, false);
    let badmem = config("badmem", "guest-badmem", 16, EntryMode::Multiboot);
    for cfg in [badmem.clone(), shadow(&badmem, false)] {
        stopped(
            t,
            "access outside RAM stops the VM",
            &cfg,
            |r| matches!(r, VmResult::OutsideRam { gpa } if *gpa == 0x4000_0000),
        );
    }
    let unsupported = config("unsupported", "guest-unsupported", 16, EntryMode::Multiboot);
    for cfg in [unsupported.clone(), shadow(&unsupported, false)] {
        stopped(
            t,
            "unsupported exit (task switch) stops the VM",
            &cfg,
            |r| {
                *r == VmResult::Unhandled {
                    reason: reason::TASK_SWITCH,
                }
            },
        );
    }
    let triple = config("triple", "guest-triple", 16, EntryMode::Multiboot);
    for cfg in [triple.clone(), shadow(&triple, false)] {
        stopped(t, "triple fault stops the VM", &cfg, |r| {
            *r == VmResult::TripleFault
        });
    }
    let bad = |f: fn(&mut VmConfig)| {
        let mut c = mb.clone();
        f(&mut c);
        c
    };
    let cfg_err = |e| VmmError::InvalidConfig(e);
    refused(
        t,
        "RAM of 0 MiB refused",
        &bad(|c| c.ram_mib = 0),
        cfg_err(ConfigError::RamSize),
    );
    refused(
        t,
        "RAM of 4 GiB refused",
        &bad(|c| c.ram_mib = 4096),
        cfg_err(ConfigError::RamSize),
    );
    refused(
        t,
        "0 vCPUs refused",
        &bad(|c| c.vcpus = 0),
        cfg_err(ConfigError::VcpuCount),
    );
    refused(
        t,
        "9 vCPUs refused (at most MAX_VCPUS = 8)",
        &bad(|c| c.vcpus = userlib::proto::vmm::MAX_VCPUS + 1),
        cfg_err(ConfigError::VcpuCount),
    );
    refused(
        t,
        "empty name refused",
        &bad(|c| c.name.clear()),
        cfg_err(ConfigError::EmptyName),
    );
    refused(
        t,
        "unaligned flat load address refused",
        &bad(|c| {
            c.module = String::try_from("guest-bench").unwrap_or_default();
            c.entry = EntryMode::Flat64 { load_gpa: 0x1234 };
        }),
        cfg_err(ConfigError::LoadAddress),
    );
    refused(
        t,
        "a shadow pool of 8 pages refused",
        &bad(|c| {
            c.mmu = MmuMode::Shadow(ShadowConfig {
                pool_pages: 8,
                ..ShadowConfig::DEFAULT
            })
        }),
        cfg_err(ConfigError::ShadowConfig),
    );
    refused(
        t,
        "unknown module refused",
        &bad(|c| c.module = String::try_from("no-such-guest").unwrap_or_default()),
        VmmError::NoSuchModule,
    );
    let r = run(&bad(|c| {
        c.module = String::try_from("echo").unwrap_or_default()
    }));
    t.check(
        "an ELF without a multiboot header refused",
        matches!(
            r,
            Ok(Response::Error(ProtoError::Service(
                VmmError::BadImage { .. }
            )))
        ),
        format_args!("{r:?}"),
    );
    // Garbage on the wire: a typed error, and the service keeps serving.
    let mut buf = [0xffu8; 16];
    let r = sys::call(vmm(), &mut buf, 16, userlib::proto::vmm::LABEL, None);
    let ok = matches!(r, Ok(ref m) if m.len > 0 && buf[0] == 0);
    t.check(
        "malformed request answered with an error",
        ok,
        format_args!("{r:?}"),
    );
    passing_guest(t, "multiboot guest again after the failures", &mb);
    cpu_msr::msr_suite(t);
    cpu_fpu::fpu_suite(t);
    cpu_exits::suite(t);
    platform_timer::suite(t);
    smp::suite(t);
    uart_rtc::suite(t);
    platform::platform_suite(t);
    platform::reboot_suite(t);
    mmio::suite(t);
}

/// The shadow-paging scenario: the three multi-address-space guests, each paging mode, with
/// the kernel auditing the shadow tables before every entry; then once more without the audit.
fn shadow_suite(t: &mut Suite) {
    let guests = [
        ("64-bit", "spaces64", "guest-spaces64", 3usize),
        ("PAE", "spacespae", "guest-spacespae", 2),
        ("2-level", "spaces32", "guest-spaces32", 1),
    ];
    for audit in [true, false] {
        for (mode, name, module, mode_index) in guests {
            let cfg = shadow(&config(name, module, 16, EntryMode::Multiboot), audit);
            let what = if audit {
                "four address spaces, audited"
            } else {
                "four address spaces"
            };
            let Some(s) = passing_guest(t, what, &cfg) else {
                continue;
            };
            let Some(m) = s.shadow else {
                t.check(mode, false, format_args!("no shadow statistics"));
                continue;
            };
            let hits = m.prev_roots_hits[mode_index];
            t.check(
                "  CR3 switches hit prev_roots",
                hits > 1000,
                format_args!("{mode}: {m:?}"),
            );
            t.check(
                "  guest page-table writes emulated or zapped",
                m.emulated_writes + m.zaps > 0 && m.pf_injected > 0,
                format_args!("{mode}: {m:?}"),
            );
        }
    }
}

/// The benchmark guests of `bench-mmu`: (mode name, module, index of the mode in the MMU's
/// per-mode counters, whether KVM's policy differs from Umbra's for it).
const MMU_BENCH_GUESTS: [(&str, &str, usize, bool); 3] = [
    ("64-bit", "guest-mmubench64", 3, false),
    ("pae", "guest-mmubenchpae", 2, true),
    ("2-level", "guest-mmubench32", 1, true),
];
/// Address spaces of the workload runs; 0 is the micro-benchmark run (rt/mmubench.s).
const MMU_BENCH_SPACES: [u32; 5] = [0, 2, 4, 8, 16];
/// CR3 loads of one workload run (the guest's SWITCHES) and the one that turns paging on.
const MMU_BENCH_SWITCHES: u64 = 400;
/// Timed first touches of the micro-benchmark run (the guest's FT_SAMPLES).
const MMU_BENCH_FIRST_TOUCHES: u64 = 256;

/// The `bench-mmu` scenario: each benchmark guest (rt/mmubench.s) on shadow paging, with
/// the default configuration (prev_roots 8) and, where it differs, KVM's policy (per-vCPU PAE
/// roots never cached). The guest measures cycles and prints them; after each run this prints
/// `bench-mmu: csv mode,policy,spaces,hits,misses,faults,cr3_loads,pool_used` from the MMU's
/// counters (hits and misses of prev_roots in the guest's paging mode), which the harness joins
/// with the guest's lines by (mode, policy, spaces): the guest echoes its command line
/// `policy=P spaces=N`.
fn bench_mmu_suite(t: &mut Suite) {
    userlib::println!("bench-mmu: csv mode,policy,spaces,hits,misses,faults,cr3_loads,pool_used");
    for (mode, module, mode_index, kvm_differs) in MMU_BENCH_GUESTS {
        for kvm_policy in [false, true] {
            if kvm_policy && !kvm_differs {
                continue;
            }
            let policy = if kvm_policy { "kvm" } else { "umbra" };
            for spaces in MMU_BENCH_SPACES {
                let mut name: String<16> = String::new();
                let _ = fmt::write(&mut name, format_args!("{mode}-{policy}-{spaces}"));
                let mut cfg = config(&name, module, 16, EntryMode::Multiboot);
                cfg.cmdline.clear();
                let _ = fmt::write(
                    &mut cfg.cmdline,
                    format_args!("policy={policy} spaces={spaces}"),
                );
                cfg.mmu = MmuMode::Shadow(ShadowConfig {
                    kvm_policy,
                    ..ShadowConfig::DEFAULT
                });
                let mut what: String<48> = String::new();
                let _ = fmt::write(&mut what, format_args!("benchmark guest {name}"));
                let Some(s) = passing_guest(t, &what, &cfg) else {
                    continue;
                };
                let Some(m) = s.shadow else {
                    t.check(mode, false, format_args!("no shadow statistics"));
                    continue;
                };
                let (hits, misses) = (
                    m.prev_roots_hits[mode_index],
                    m.prev_roots_misses[mode_index],
                );
                userlib::println!(
                    "bench-mmu: csv {mode},{policy},{spaces},{hits},{misses},{},{},{}",
                    m.faults,
                    m.cr3_loads,
                    m.pool_used
                );
                if spaces == 0 {
                    t.check(
                        "  every first touch a shadow #PF",
                        m.faults_fixed >= MMU_BENCH_FIRST_TOUCHES,
                        format_args!("{name}: {m:?}"),
                    );
                } else {
                    // Every CR3 load of the workload, and the one turning paging on, went
                    // through prev_roots in the guest's mode.
                    t.check(
                        "  every CR3 load counted as a hit or a miss",
                        hits + misses == MMU_BENCH_SWITCHES + 1,
                        format_args!("{name}: {m:?}"),
                    );
                }
            }
        }
    }
}

/// The `isolation` scenario: the probe (4 MiB of RAM) beside a neighbour (8 MiB) that filled
/// its RAM with the foreign marker and stays alive, in both MMU modes; then a probe the VMM
/// must refuse.
fn isolation_suite(t: &mut Suite) {
    let flat = EntryMode::Flat64 { load_gpa: 2 * MIB };
    let modes = [
        ("ept", MmuMode::Ept),
        ("shadow", MmuMode::Shadow(ShadowConfig::DEFAULT)),
    ];
    let mut vmm = userlib::ipc::client::<Vmm>(vmm());
    for (mode, mmu) in modes {
        let probe = VmConfig {
            mmu,
            ..config("probe", "guest-isolation", 4, flat)
        };
        let neighbour = VmConfig {
            mmu,
            ..config("neighbour", "guest-isolation", 8, flat)
        };
        let r = vmm.call(&Request::ProbeIsolation { probe, neighbour });
        let mut what: String<96> = String::new();
        let Ok(Response::Probed(rep)) = r else {
            let _ = fmt::write(&mut what, format_args!("{mode}: the probe ran"));
            t.check(&what, false, format_args!("{r:?}"));
            continue;
        };
        let g = rep.guest.unwrap_or_default();
        userlib::println!(
            "isolation: {mode}: probed {}, own RAM {}, device {}, stopped {}, foreign {}, unaccounted {} (stops by reason: outside RAM {}, {} of them inside its RAM)",
            g.probed,
            g.own,
            g.device,
            g.stopped,
            g.foreign,
            g.unaccounted,
            rep.stops,
            rep.stops_inside_ram
        );
        userlib::println!(
            "isolation: {mode}: neighbour {:?}, ran {} times between the probe's stops ({} failed, {} changed words seen), {} words of its fill, {} changed; VMM marker {} words, {} changed",
            rep.neighbour,
            rep.neighbour_runs,
            rep.neighbour_bad_runs,
            rep.neighbour_seen_changed,
            rep.neighbour_words,
            rep.neighbour_changed,
            rep.service_words,
            rep.service_changed
        );
        let problems = rep.problems();
        let groups: [(&str, &[Problem]); 3] = [
            (
                "the neighbour filled its RAM, ran between the probe's stops, unchanged",
                &[
                    Problem::NeighbourDidNotFill,
                    Problem::NeighbourChanged,
                    Problem::NotInterleaved,
                ],
            ),
            (
                "every probed address is own RAM, a device or a stop",
                &[
                    Problem::ProbeDidNotFinish,
                    Problem::NoGuestReport,
                    Problem::NotEveryPointProbed,
                    Problem::Unaccounted,
                    Problem::Device,
                    Problem::OwnRamMissing,
                    Problem::StopsDisagree,
                    Problem::StopInsideRam,
                ],
            ),
            (
                "no probe reached foreign memory",
                &[Problem::Foreign, Problem::ServiceChanged],
            ),
        ];
        for (check, group) in groups {
            what.clear();
            let _ = fmt::write(&mut what, format_args!("{mode}: {check}"));
            let ok = !problems.iter().any(|p| group.contains(p));
            t.check(&what, ok, format_args!("{problems:?}: {rep:?}"));
        }
    }
    // The probe runs flat images only: a multiboot probe changes nothing and is refused.
    let r = vmm.call(&Request::ProbeIsolation {
        probe: config("probe", "guest-isolation", 4, EntryMode::Multiboot),
        neighbour: config("neighbour", "guest-isolation", 8, flat),
    });
    t.check(
        "a probe that is not a flat image refused",
        matches!(
            r,
            Ok(Response::Error(ProtoError::Service(
                VmmError::InvalidConfig(ConfigError::ProbeConfig)
            )))
        ),
        format_args!("{r:?}"),
    );
}

fn suite_main(generation: u64) {
    let wired = Wiring::fetch().and_then(|w| {
        Ok((
            w.endpoint("vmm-service")?,
            w.boot()?,
            w.endpoint("mmu-service")?,
        ))
    });
    match wired {
        Ok((vmm, boot, mmu)) => {
            VMM.store(vmm, Ordering::Relaxed);
            BOOT.store(boot, Ordering::Relaxed);
            restart::MMU.store(mmu, Ordering::Relaxed);
        }
        Err(e) => userlib::println!("vmm-suite: the VMM service or boot capability: {e}"),
    }
    if let Ok(ep) = Wiring::fetch().and_then(|w| w.endpoint("trace")) {
        tracing::TRACE.store(ep, Ordering::Relaxed);
    }
    tracing::TRACE_ALL.store(cmdline_has("trace"), Ordering::Relaxed);
    let scenario = scenario();
    let name: &'static str = match scenario.as_str() {
        abi::scenario::VMM => "vmm",
        abi::scenario::BENCH_VMM => "bench-vmm",
        abi::scenario::SHADOW => "shadow",
        abi::scenario::BENCH_MMU => "bench-mmu",
        abi::scenario::ISOLATION => "isolation",
        abi::scenario::MMU_RESTART => "mmu-restart",
        abi::scenario::TRACE => "trace",
        abi::scenario::GUEST => "guest",
        _ => "demo",
    };
    userlib::println!("{name}: client starting (generation {generation})");
    let mut t = Suite::new(name);
    match name {
        "vmm" => vmm_suite(&mut t),
        "shadow" => shadow_suite(&mut t),
        "bench-mmu" => bench_mmu_suite(&mut t),
        "isolation" => isolation_suite(&mut t),
        "mmu-restart" => restart::mmu_restart_suite(&mut t),
        "trace" => tracing::trace_suite(&mut t),
        "guest" => {
            let mut buf = [0u8; 256];
            let n = sys::kernel_cmdline(BOOT.load(Ordering::Relaxed), &mut buf)
                .unwrap_or(0)
                .min(buf.len());
            let line = core::str::from_utf8(&buf[..n]).unwrap_or("");
            userguest::guest_suite(&mut t, line);
        }
        "bench-vmm" => {
            let cfg = VmConfig {
                benchmark: true,
                ..config(
                    "bench",
                    "guest-bench",
                    16,
                    EntryMode::Flat64 { load_gpa: 2 * MIB },
                )
            };
            passing_guest(&mut t, "exit benchmark guest", &cfg);
            // The same with its exits traced: the cost of tracing, side by side.
            let traced = VmConfig {
                name: String::try_from("bench-traced").unwrap_or_default(),
                trace: true,
                ..cfg
            };
            passing_guest(&mut t, "exit benchmark guest, traced", &traced);
        }
        _ => {
            let cfg = config("demo", "guest-multiboot", 16, EntryMode::Multiboot);
            passing_guest(&mut t, "demo guest ran and exited cleanly", &cfg);
        }
    }
    t.summary();
    let code = t.exit_code() as u32;
    let mut sup = userlib::ipc::client::<Supervisor>(SUPERVISOR);
    let r = sup.call(&SupRequest::Shutdown { code });
    userlib::println!("{name}: shutdown request returned {r:?}");
}
