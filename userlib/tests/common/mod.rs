//! Shared by the host test binaries: hex literals, proptest strategies for every message type,
//! and the maximal value of every variant.
#![allow(dead_code)]

use heapless::{String, Vec};
use proptest::prelude::*;
use userlib::proto::echo::{self, CrashKind, EchoError, ECHO_CAPACITY, SUM_CAPACITY};
use userlib::proto::mmu::{self, MmuError, ShadowParams, ShadowStats};
use userlib::proto::supervisor::{
    self, ServiceInfo, ServiceName, ServiceState, SupervisorError, MAX_SERVICES, NAME_LEN,
};
use userlib::proto::trace::{self, Bucket, Row, Share, Totals, TraceError, BUCKETS_MAX, ROWS_MAX};
use userlib::proto::vmm::isolation::{GuestCounts, IsolationReport};
use userlib::proto::vmm::{
    self, ConfigError, EntryMode, MmuMode, ShadowConfig, VmConfig, VmResult, VmSummary, VmmError,
    CMDLINE_MAX, MODULE_MAX, NAME_MAX, SUMMARY_REASONS,
};
use userlib::proto::ProtoError;

/// Parses `"02 04 65 63"` into bytes.
pub fn hex(text: &str) -> std::vec::Vec<u8> {
    text.split_whitespace()
        .map(|byte| u8::from_str_radix(byte, 16).expect("hex byte"))
        .collect()
}

pub fn name(text: &str) -> ServiceName {
    String::try_from(text).expect("name fits")
}

pub fn bytes<const N: usize>(data: &[u8]) -> Vec<u8, N> {
    Vec::from_slice(data).expect("data fits")
}

// ---- strategies ----

/// Names of 0..=16 bytes, with multi-byte UTF-8 characters.
pub fn any_name() -> impl Strategy<Value = ServiceName> {
    proptest::collection::vec(any::<char>(), 0..=NAME_LEN).prop_map(|chars| {
        let mut name = ServiceName::new();
        for c in chars {
            if name.push(c).is_err() {
                break;
            }
        }
        name
    })
}

pub fn any_proto_error<E: Clone + core::fmt::Debug>(
    service: impl Strategy<Value = E> + 'static,
) -> impl Strategy<Value = ProtoError<E>> {
    prop_oneof![
        Just(ProtoError::Truncated),
        Just(ProtoError::UnknownOpcode),
        Just(ProtoError::Malformed),
        (any::<u16>(), any::<u16>())
            .prop_map(|(expected, got)| ProtoError::VersionMismatch { expected, got }),
        any::<u16>().prop_map(|got| ProtoError::WrongProtocol { got }),
        Just(ProtoError::TooLarge),
        service.prop_map(ProtoError::Service),
    ]
}

pub fn any_supervisor_error() -> impl Strategy<Value = SupervisorError> {
    prop_oneof![
        Just(SupervisorError::NoSuchService),
        Just(SupervisorError::ServiceDown),
        Just(SupervisorError::NotPermitted),
        Just(SupervisorError::NotKept),
        Just(SupervisorError::KeepFull),
    ]
}

pub fn any_service_state() -> impl Strategy<Value = ServiceState> {
    prop_oneof![
        Just(ServiceState::Running),
        Just(ServiceState::Restarting),
        Just(ServiceState::Stopped),
        Just(ServiceState::GaveUp),
    ]
}

pub fn any_service_info() -> impl Strategy<Value = ServiceInfo> {
    (any_name(), any::<u32>(), any_service_state(), any::<u32>()).prop_map(
        |(name, generation, state, restarts)| ServiceInfo {
            name,
            generation,
            state,
            restarts,
        },
    )
}

pub fn any_supervisor_request() -> impl Strategy<Value = supervisor::Request> {
    use supervisor::Request;
    prop_oneof![
        Just(Request::Version),
        Just(Request::ListServices),
        any_name().prop_map(|name| Request::ServiceStatus { name }),
        any_name().prop_map(|name| Request::Lookup { name }),
        any_name().prop_map(|name| Request::Restart { name }),
        any::<u32>().prop_map(|code| Request::Shutdown { code }),
        Just(Request::Wiring),
        any::<u32>().prop_map(|key| Request::Keep { key }),
        any::<u32>().prop_map(|key| Request::Fetch { key }),
        any::<u32>().prop_map(|key| Request::Forget { key }),
    ]
}

pub fn any_supervisor_response() -> impl Strategy<Value = supervisor::Response> {
    use supervisor::Response;
    prop_oneof![
        any_proto_error(any_supervisor_error()).prop_map(Response::Error),
        (any::<u16>(), any::<u16>())
            .prop_map(|(protocol, version)| Response::Version { protocol, version }),
        proptest::collection::vec(any_service_info(), 0..=MAX_SERVICES)
            .prop_map(|list| Response::Services(Vec::from_iter(list))),
        any_service_info().prop_map(Response::Status),
        Just(Response::Granted),
        any::<u32>().prop_map(|generation| Response::Restarted { generation }),
        Just(Response::ShuttingDown),
        proptest::collection::vec(
            (any_name(), any::<u32>()).prop_map(|(name, slot)| supervisor::Wire { name, slot }),
            0..=supervisor::MAX_WIRES
        )
        .prop_map(|wires| Response::Wiring(Vec::from_iter(wires))),
        Just(Response::Kept),
        Just(Response::Forgotten),
    ]
}

pub fn any_crash_kind() -> impl Strategy<Value = CrashKind> {
    prop_oneof![
        Just(CrashKind::PageFault),
        Just(CrashKind::InvalidOpcode),
        Just(CrashKind::GeneralProtection),
        Just(CrashKind::Panic),
    ]
}

pub fn any_echo_error() -> impl Strategy<Value = EchoError> {
    prop_oneof![
        Just(EchoError::NoGrant),
        Just(EchoError::MapFailed),
        Just(EchoError::LengthTooLarge),
    ]
}

pub fn any_echo_data() -> impl Strategy<Value = Vec<u8, ECHO_CAPACITY>> {
    proptest::collection::vec(any::<u8>(), 0..=ECHO_CAPACITY).prop_map(|data| bytes(&data))
}

pub fn any_echo_request() -> impl Strategy<Value = echo::Request> {
    use echo::Request;
    prop_oneof![
        Just(Request::Ping),
        any_echo_data().prop_map(|data| Request::Echo { data }),
        proptest::collection::vec(any::<u32>(), 0..=SUM_CAPACITY).prop_map(|values| {
            Request::Sum {
                values: Vec::from_slice(&values).expect("values fit"),
            }
        }),
        any_crash_kind().prop_map(|kind| Request::Crash { kind }),
        any::<u32>().prop_map(|len| Request::SumShared { len }),
        Just(Request::Stats),
    ]
}

pub fn any_echo_response() -> impl Strategy<Value = echo::Response> {
    use echo::Response;
    prop_oneof![
        any_proto_error(any_echo_error()).prop_map(Response::Error),
        any::<u32>().prop_map(|generation| Response::Pong { generation }),
        any_echo_data().prop_map(|data| Response::Echo { data }),
        any::<u64>().prop_map(|total| Response::Sum { total }),
        (any::<u64>(), any::<u32>())
            .prop_map(|(calls, generation)| Response::Stats { calls, generation }),
    ]
}

// ---- maximal values: the longest encoding of every variant ----

/// 16 bytes: the longest name.
pub fn longest_name() -> ServiceName {
    name("abcdefghijklmnop")
}

/// The `ProtoError` with the longest encoding (two 3-byte varints).
pub fn longest_proto_error<E>() -> ProtoError<E> {
    ProtoError::VersionMismatch {
        expected: u16::MAX,
        got: u16::MAX,
    }
}

pub fn longest_service_info() -> ServiceInfo {
    ServiceInfo {
        name: longest_name(),
        generation: u32::MAX,
        state: ServiceState::GaveUp,
        restarts: u32::MAX,
    }
}

pub fn maximal_supervisor_requests() -> std::vec::Vec<supervisor::Request> {
    use supervisor::Request;
    vec![
        Request::Version,
        Request::ListServices,
        Request::ServiceStatus {
            name: longest_name(),
        },
        Request::Lookup {
            name: longest_name(),
        },
        Request::Restart {
            name: longest_name(),
        },
        Request::Shutdown { code: u32::MAX },
    ]
}

pub fn maximal_supervisor_responses() -> std::vec::Vec<supervisor::Response> {
    use supervisor::Response;
    vec![
        Response::Error(longest_proto_error()),
        Response::Version {
            protocol: u16::MAX,
            version: u16::MAX,
        },
        Response::Services(Vec::from_iter(
            core::iter::repeat_with(longest_service_info).take(MAX_SERVICES),
        )),
        Response::Status(longest_service_info()),
        Response::Granted,
        Response::Restarted {
            generation: u32::MAX,
        },
        Response::ShuttingDown,
    ]
}

pub fn maximal_echo_requests() -> std::vec::Vec<echo::Request> {
    use echo::Request;
    vec![
        Request::Ping,
        Request::Echo {
            data: bytes(&[0xff; ECHO_CAPACITY]),
        },
        Request::Sum {
            values: Vec::from_slice(&[u32::MAX; SUM_CAPACITY]).expect("values fit"),
        },
        Request::Crash {
            kind: CrashKind::Panic,
        },
        Request::SumShared { len: u32::MAX },
        Request::Stats,
    ]
}

pub fn maximal_echo_responses() -> std::vec::Vec<echo::Response> {
    use echo::Response;
    vec![
        Response::Error(longest_proto_error()),
        Response::Pong {
            generation: u32::MAX,
        },
        Response::Echo {
            data: bytes(&[0xff; ECHO_CAPACITY]),
        },
        Response::Sum { total: u64::MAX },
        Response::Stats {
            calls: u64::MAX,
            generation: u32::MAX,
        },
    ]
}

// ---- vmm and mmu: strategies ----

/// Strings of 0..=N ASCII characters (one byte each, so any length up to N fits).
pub fn any_ascii<const N: usize>() -> impl Strategy<Value = String<N>> {
    proptest::collection::vec(0u8..0x80, 0..=N).prop_map(|chars| {
        let mut text = String::new();
        for c in chars {
            text.push(char::from(c)).expect("ASCII fits");
        }
        text
    })
}

pub fn any_entry_mode() -> impl Strategy<Value = EntryMode> {
    prop_oneof![
        Just(EntryMode::Multiboot),
        any::<u64>().prop_map(|load_gpa| EntryMode::Flat64 { load_gpa }),
        Just(EntryMode::Linux),
    ]
}

pub fn any_shadow_config() -> impl Strategy<Value = ShadowConfig> {
    (any::<u8>(), any::<u32>(), any::<bool>(), any::<bool>()).prop_map(
        |(prev_roots, pool_pages, kvm_policy, audit)| ShadowConfig {
            prev_roots,
            pool_pages,
            kvm_policy,
            audit,
        },
    )
}

pub fn any_mmu_mode() -> impl Strategy<Value = MmuMode> {
    prop_oneof![
        Just(MmuMode::Ept),
        any_shadow_config().prop_map(MmuMode::Shadow),
    ]
}

pub fn any_vm_config() -> impl Strategy<Value = VmConfig> {
    (
        any_ascii::<NAME_MAX>(),
        any_ascii::<MODULE_MAX>(),
        any::<u32>(),
        any_entry_mode(),
        any::<u8>(),
        any_ascii::<CMDLINE_MAX>(),
        any_mmu_mode(),
        (
            any::<bool>(),
            any::<u32>(),
            any::<bool>(),
            any::<u8>(),
            any_ascii::<MODULE_MAX>(),
        ),
    )
        .prop_map(
            |(
                name,
                module,
                ram_mib,
                entry,
                vcpus,
                cmdline,
                mmu,
                (benchmark, time_limit_ms, trace, max_resets, initrd),
            )| {
                VmConfig {
                    name,
                    module,
                    ram_mib,
                    entry,
                    vcpus,
                    cmdline,
                    mmu,
                    benchmark,
                    time_limit_ms,
                    trace,
                    max_resets,
                    initrd,
                }
            },
        )
}

pub fn any_vmm_request() -> impl Strategy<Value = vmm::Request> {
    prop_oneof![
        any_vm_config().prop_map(|config| vmm::Request::RunVm { config }),
        (any_vm_config(), any_vm_config())
            .prop_map(|(probe, neighbour)| vmm::Request::ProbeIsolation { probe, neighbour }),
    ]
}

pub fn any_vm_result() -> impl Strategy<Value = VmResult> {
    prop_oneof![
        any::<u32>().prop_map(|code| VmResult::DebugExit { code }),
        any::<u64>().prop_map(|code| VmResult::HypercallExit { code }),
        any::<u32>().prop_map(|reason| VmResult::Unhandled { reason }),
        Just(VmResult::TripleFault),
        (any::<u32>(), any::<u64>())
            .prop_map(|(reason, error)| VmResult::EntryFailed { reason, error }),
        any::<u64>().prop_map(|gpa| VmResult::OutsideRam { gpa }),
        any::<u64>().prop_map(|stop| VmResult::Stopped { stop }),
        any::<u64>().prop_map(|rip| VmResult::Halted { rip }),
        any::<u32>().prop_map(|reason| VmResult::BadExit { reason }),
        any::<u32>().prop_map(|reason| VmResult::MmuGone { reason }),
        Just(VmResult::TimeLimit),
        Just(VmResult::PoweredOff),
        any::<u16>().prop_map(|port| VmResult::Reset { port }),
    ]
}

pub fn any_shadow_stats() -> impl Strategy<Value = ShadowStats> {
    (
        any::<[u64; 7]>(),
        any::<[u64; 4]>(),
        any::<[u64; 4]>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(
                [faults, faults_fixed, pf_injected, emulated_writes, zaps, cr3_loads, invlpg],
                prev_roots_hits,
                prev_roots_misses,
                pool_used,
                pool_pages,
            )| ShadowStats {
                faults,
                faults_fixed,
                pf_injected,
                emulated_writes,
                zaps,
                cr3_loads,
                invlpg,
                prev_roots_hits,
                prev_roots_misses,
                pool_used,
                pool_pages,
            },
        )
}

pub fn any_vm_summary() -> impl Strategy<Value = VmSummary> {
    (
        any_vm_result(),
        any::<u64>(),
        proptest::collection::vec(any::<(u8, u32)>(), 0..=SUMMARY_REASONS),
        any::<u64>(),
        proptest::option::of(any_shadow_stats()),
        proptest::option::of(any::<u32>()),
        any::<u32>(),
    )
        .prop_map(
            |(result, rip, exits, total_exits, shadow, trace, resets)| VmSummary {
                result,
                rip,
                exits: Vec::from_slice(&exits).expect("exits fit"),
                total_exits,
                shadow,
                trace,
                resets,
            },
        )
}

pub fn any_config_error() -> impl Strategy<Value = ConfigError> {
    prop_oneof![
        Just(ConfigError::RamSize),
        Just(ConfigError::VcpuCount),
        Just(ConfigError::LoadAddress),
        Just(ConfigError::EmptyName),
        Just(ConfigError::ShadowConfig),
        Just(ConfigError::ProbeConfig),
    ]
}

pub fn any_guest_counts() -> impl Strategy<Value = GuestCounts> {
    any::<[u64; 7]>().prop_map(|c| GuestCounts {
        probed: c[0],
        own: c[1],
        device: c[2],
        stopped: c[3],
        foreign: c[4],
        unaccounted: c[5],
        ram_bytes: c[6],
    })
}

pub fn any_isolation_report() -> impl Strategy<Value = IsolationReport> {
    (
        any_vm_result(),
        any_vm_result(),
        proptest::option::of(any_guest_counts()),
        any::<[u64; 12]>(),
    )
        .prop_map(|(neighbour, result, guest, c)| isolation_report(neighbour, result, guest, c))
}

fn isolation_report(
    neighbour: VmResult,
    result: VmResult,
    guest: Option<GuestCounts>,
    c: [u64; 12],
) -> IsolationReport {
    IsolationReport {
        neighbour,
        result,
        guest,
        points: c[0],
        points_in_ram: c[1],
        stops: c[2],
        stops_inside_ram: c[3],
        neighbour_runs: c[4],
        neighbour_bad_runs: c[5],
        neighbour_seen_changed: c[6],
        neighbour_words: c[7],
        neighbour_changed: c[8],
        service_words: c[9],
        service_changed: c[10],
        devices: c[11],
    }
}

pub fn any_vmm_error() -> impl Strategy<Value = VmmError> {
    prop_oneof![
        any_config_error().prop_map(VmmError::InvalidConfig),
        Just(VmmError::NoSuchModule),
        any::<u8>().prop_map(|what| VmmError::BadImage { what }),
        Just(VmmError::NoVmx),
        Just(VmmError::Mmu),
        any::<u64>().prop_map(|error| VmmError::Kernel { error }),
    ]
}

pub fn any_vmm_response() -> impl Strategy<Value = vmm::Response> {
    use vmm::Response;
    prop_oneof![
        any_proto_error(any_vmm_error()).prop_map(Response::Error),
        any_vm_summary().prop_map(Response::Finished),
        any_isolation_report().prop_map(Response::Probed),
    ]
}

pub fn any_shadow_params() -> impl Strategy<Value = ShadowParams> {
    (
        any::<u8>(),
        any::<u32>(),
        any::<bool>(),
        any::<u8>(),
        any::<bool>(),
    )
        .prop_map(
            |(prev_roots, pool_pages, kvm_policy, maxphyaddr, gbpages)| ShadowParams {
                prev_roots,
                pool_pages,
                kvm_policy,
                maxphyaddr,
                gbpages,
            },
        )
}

pub fn any_mmu_request() -> impl Strategy<Value = mmu::Request> {
    use mmu::Request;
    prop_oneof![
        (
            any::<u64>(),
            any::<u64>(),
            proptest::option::of(any_shadow_params())
        )
            .prop_map(|(key, ram_pages, shadow)| Request::AttachVm {
                key,
                ram_pages,
                shadow
            }),
        any::<u32>().prop_map(|handle| Request::GrantRam { handle }),
        any::<u32>().prop_map(|handle| Request::DetachVm { handle }),
        any::<u32>().prop_map(|handle| Request::Stats { handle }),
        (any::<u32>(), any::<u16>())
            .prop_map(|(handle, index)| Request::AttachVcpu { handle, index }),
        (any::<u32>(), any::<u32>(), any::<bool>(), any::<u64>()).prop_map(
            |(every, limit, spare_first, seed)| Request::InjectFaults {
                every,
                limit,
                spare_first,
                seed
            }
        ),
        Just(Request::Recovery),
    ]
}

pub fn any_mmu_error() -> impl Strategy<Value = MmuError> {
    prop_oneof![
        Just(MmuError::NoGrant),
        Just(MmuError::Full),
        Just(MmuError::UnknownVm),
        any::<u64>().prop_map(|error| MmuError::Kernel { error }),
        Just(MmuError::NotShadow),
        Just(MmuError::NoMemory),
        Just(MmuError::NotPermitted),
    ]
}

pub fn any_mmu_response() -> impl Strategy<Value = mmu::Response> {
    use mmu::Response;
    prop_oneof![
        any_proto_error(any_mmu_error()).prop_map(Response::Error),
        any::<u32>().prop_map(|handle| Response::Attached { handle }),
        Just(Response::Detached),
        (
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            proptest::option::of(any_shadow_stats())
        )
            .prop_map(|(violations, pages_mapped, stopped, shadow)| {
                Response::Stats {
                    violations,
                    pages_mapped,
                    stopped,
                    shadow,
                }
            }),
        Just(Response::RamGranted),
        Just(Response::VcpuAttached),
    ]
}

// ---- vmm and mmu: maximal values ----

pub fn ascii<const N: usize>(text: &str) -> String<N> {
    String::try_from(text).expect("text fits")
}

/// Every counter at its maximum: 15 * 10 + 2 * 5 = 160 bytes.
pub fn longest_shadow_stats() -> ShadowStats {
    ShadowStats {
        faults: u64::MAX,
        faults_fixed: u64::MAX,
        pf_injected: u64::MAX,
        emulated_writes: u64::MAX,
        zaps: u64::MAX,
        cr3_loads: u64::MAX,
        invlpg: u64::MAX,
        prev_roots_hits: [u64::MAX; 4],
        prev_roots_misses: [u64::MAX; 4],
        pool_used: u32::MAX,
        pool_pages: u32::MAX,
    }
}

pub fn maximal_vm_config() -> VmConfig {
    VmConfig {
        name: ascii(&"n".repeat(NAME_MAX)),
        module: ascii(&"m".repeat(MODULE_MAX)),
        ram_mib: u32::MAX,
        entry: EntryMode::Flat64 { load_gpa: u64::MAX },
        vcpus: u8::MAX,
        cmdline: ascii(&"c".repeat(CMDLINE_MAX)),
        mmu: MmuMode::Shadow(ShadowConfig {
            prev_roots: u8::MAX,
            pool_pages: u32::MAX,
            kvm_policy: true,
            audit: true,
        }),
        benchmark: true,
        time_limit_ms: u32::MAX,
        trace: true,
        max_resets: u8::MAX,
        initrd: ascii(&"i".repeat(MODULE_MAX)),
    }
}

pub fn maximal_vmm_requests() -> std::vec::Vec<vmm::Request> {
    vec![
        vmm::Request::RunVm {
            config: maximal_vm_config(),
        },
        vmm::Request::ProbeIsolation {
            probe: maximal_vm_config(),
            neighbour: maximal_vm_config(),
        },
    ]
}

pub fn maximal_vmm_responses() -> std::vec::Vec<vmm::Response> {
    use vmm::Response;
    vec![
        // Longer than `longest_proto_error`: a u64 inside the service error.
        Response::Error(ProtoError::Service(VmmError::Kernel { error: u64::MAX })),
        Response::Finished(VmSummary {
            result: VmResult::EntryFailed {
                reason: u32::MAX,
                error: u64::MAX,
            },
            rip: u64::MAX,
            exits: Vec::from_slice(&[(u8::MAX, u32::MAX); SUMMARY_REASONS]).expect("exits fit"),
            total_exits: u64::MAX,
            shadow: Some(longest_shadow_stats()),
            trace: Some(u32::MAX),
            resets: u32::MAX,
        }),
        Response::Probed(isolation_report(
            VmResult::EntryFailed {
                reason: u32::MAX,
                error: u64::MAX,
            },
            VmResult::EntryFailed {
                reason: u32::MAX,
                error: u64::MAX,
            },
            Some(GuestCounts {
                probed: u64::MAX,
                own: u64::MAX,
                device: u64::MAX,
                stopped: u64::MAX,
                foreign: u64::MAX,
                unaccounted: u64::MAX,
                ram_bytes: u64::MAX,
            }),
            [u64::MAX; 12],
        )),
    ]
}

pub fn maximal_mmu_requests() -> std::vec::Vec<mmu::Request> {
    use mmu::Request;
    vec![
        Request::AttachVm {
            key: u64::MAX,
            ram_pages: u64::MAX,
            shadow: Some(ShadowParams {
                prev_roots: u8::MAX,
                pool_pages: u32::MAX,
                kvm_policy: true,
                maxphyaddr: u8::MAX,
                gbpages: true,
            }),
        },
        Request::GrantRam { handle: u32::MAX },
        Request::DetachVm { handle: u32::MAX },
        Request::Stats { handle: u32::MAX },
        Request::AttachVcpu {
            handle: u32::MAX,
            index: u16::MAX,
        },
        Request::InjectFaults {
            every: u32::MAX,
            limit: u32::MAX,
            spare_first: true,
            seed: u64::MAX,
        },
    ]
}

pub fn maximal_mmu_responses() -> std::vec::Vec<mmu::Response> {
    use mmu::Response;
    vec![
        Response::Error(ProtoError::Service(MmuError::Kernel { error: u64::MAX })),
        Response::Attached { handle: u32::MAX },
        Response::Detached,
        Response::Stats {
            violations: u64::MAX,
            pages_mapped: u64::MAX,
            stopped: u64::MAX,
            shadow: Some(longest_shadow_stats()),
        },
        Response::RamGranted,
        Response::VcpuAttached,
    ]
}

// ---- trace ----

pub fn any_trace_error() -> impl Strategy<Value = TraceError> {
    prop_oneof![
        Just(TraceError::UnknownVm),
        Just(TraceError::NoVmCapability),
        Just(TraceError::NotAVm),
        Just(TraceError::TooManyVms),
        Just(TraceError::OutOfMemory),
        Just(TraceError::InjectOff),
        any::<u16>().prop_map(|code| TraceError::Kernel { code }),
    ]
}

pub fn any_share() -> impl Strategy<Value = Share> {
    prop_oneof![Just(Share::Full), Just(Share::Handler)]
}

pub fn any_trace_request() -> impl Strategy<Value = trace::Request> {
    use trace::Request;
    prop_oneof![
        Just(Request::Status),
        any_ascii::<{ trace::NAME_MAX }>().prop_map(|name| Request::Start { name }),
        any::<u32>().prop_map(|vm| Request::Stop { vm }),
        any::<u32>().prop_map(|vm| Request::Reset { vm }),
        (any::<u32>(), any::<u16>())
            .prop_map(|(vm, from_reason)| Request::Query { vm, from_reason }),
        (any::<u32>(), any::<u16>(), any_share(), any::<u16>()).prop_map(
            |(vm, reason, share, from)| Request::Buckets {
                vm,
                reason,
                share,
                from
            }
        ),
        Just(Request::Crash),
    ]
}

pub fn any_trace_status() -> impl Strategy<Value = trace::Status> {
    (
        any::<u64>(),
        any::<bool>(),
        any::<u64>(),
        any::<u64>(),
        any::<u8>(),
    )
        .prop_map(
            |(generation, restarted, records, dropped, vms)| trace::Status {
                generation,
                restarted,
                records,
                dropped,
                vms,
            },
        )
}

pub fn any_totals() -> impl Strategy<Value = Totals> {
    (
        any_ascii::<{ trace::NAME_MAX }>(),
        any::<[u64; 3]>(),
        any::<bool>(),
    )
        .prop_map(|(name, [exits, time, dropped], lost)| Totals {
            name,
            exits,
            time,
            dropped,
            lost,
        })
}

pub fn row(reason: u16, v: [u64; 9]) -> Row {
    Row {
        reason,
        count: v[0],
        min: v[1],
        p50: v[2],
        p90: v[3],
        p99: v[4],
        max: v[5],
        total: v[6],
        handler_p50: v[7],
        handler_total: v[8],
    }
}

pub fn any_trace_response() -> impl Strategy<Value = trace::Response> {
    use trace::Response;
    prop_oneof![
        any_proto_error(any_trace_error()).prop_map(Response::Error),
        any_trace_status().prop_map(Response::Status),
        any::<u32>().prop_map(|vm| Response::Started { vm }),
        Just(Response::Done),
        (
            any::<u32>(),
            any_totals(),
            proptest::collection::vec(
                (any::<u16>(), any::<[u64; 9]>()).prop_map(|(r, v)| row(r, v)),
                0..=ROWS_MAX
            ),
            proptest::option::of(any::<u16>()),
        )
            .prop_map(|(vm, totals, rows, next)| Response::Rows {
                vm,
                totals,
                rows: Vec::from_iter(rows),
                next,
            }),
        (
            proptest::collection::vec(
                any::<[u64; 3]>().prop_map(|[lo, hi, count]| Bucket { lo, hi, count }),
                0..=BUCKETS_MAX
            ),
            proptest::option::of(any::<u16>()),
        )
            .prop_map(|(buckets, next)| Response::Buckets {
                buckets: Vec::from_iter(buckets),
                next,
            }),
    ]
}

pub fn maximal_trace_requests() -> std::vec::Vec<trace::Request> {
    use trace::Request;
    vec![
        Request::Status,
        Request::Start {
            name: ascii(&"n".repeat(trace::NAME_MAX)),
        },
        Request::Stop { vm: u32::MAX },
        Request::Reset { vm: u32::MAX },
        Request::Query {
            vm: u32::MAX,
            from_reason: u16::MAX,
        },
        Request::Buckets {
            vm: u32::MAX,
            reason: u16::MAX,
            share: Share::Handler,
            from: u16::MAX,
        },
        Request::Crash,
    ]
}

/// Every counter at its maximum and the name full: 17 + 3 * 10 + 1 = 48 bytes.
pub fn longest_totals() -> Totals {
    Totals {
        name: ascii(&"n".repeat(trace::NAME_MAX)),
        exits: u64::MAX,
        time: u64::MAX,
        dropped: u64::MAX,
        lost: true,
    }
}

/// 3 + 9 * 10 = 93 bytes.
pub fn longest_row() -> Row {
    row(u16::MAX, [u64::MAX; 9])
}

/// 3 * 10 = 30 bytes.
pub fn longest_bucket() -> Bucket {
    Bucket {
        lo: u64::MAX,
        hi: u64::MAX,
        count: u64::MAX,
    }
}

pub fn maximal_trace_responses() -> std::vec::Vec<trace::Response> {
    use trace::Response;
    vec![
        Response::Error(longest_proto_error()),
        Response::Error(ProtoError::Service(TraceError::Kernel { code: u16::MAX })),
        Response::Status(trace::Status {
            generation: u64::MAX,
            restarted: true,
            records: u64::MAX,
            dropped: u64::MAX,
            vms: u8::MAX,
        }),
        Response::Started { vm: u32::MAX },
        Response::Done,
        Response::Rows {
            vm: u32::MAX,
            totals: longest_totals(),
            rows: Vec::from_iter(core::iter::repeat_with(longest_row).take(ROWS_MAX)),
            next: Some(u16::MAX),
        },
        Response::Buckets {
            buckets: Vec::from_iter(core::iter::repeat_with(longest_bucket).take(BUCKETS_MAX)),
            next: Some(u16::MAX),
        },
    ]
}
