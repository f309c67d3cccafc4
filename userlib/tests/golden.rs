//! Golden bytes: the postcard encoding of every request and response variant of every
//! protocol, pinned. A failure here means the wire format changed: bump the protocol VERSION.
//!
//! Reading the bytes: an enum starts with its variant index as a varint; a `u16`/`u32`/`u64`
//! is a varint (7 bits per byte, low first, bit 7 = more); a `u8` is one raw byte; a string or
//! vector is a varint length then its elements; struct fields follow in declaration order.

mod common;

use core::fmt::Debug;

use common::{bytes, hex, name};
use heapless::Vec;
use userlib::codec::{self, DecodeError, Message};
use userlib::proto::echo::{self, CrashKind, EchoError};
use userlib::proto::mmu::{self, MmuError, ShadowParams, ShadowStats};
use userlib::proto::supervisor::{self, ServiceInfo, ServiceState, SupervisorError, Wire};
use userlib::proto::trace::{self, Bucket, Row, Share, Totals, TraceError};
use userlib::proto::vmm::isolation::{GuestCounts, IsolationReport};
use userlib::proto::vmm::{
    self, ConfigError, EntryMode, MmuMode, ShadowConfig, VmConfig, VmResult, VmSummary, VmmError,
};
use userlib::proto::{ProtoError, Protocol};

/// Every value encodes to exactly its bytes and decodes back; the first bytes cover every
/// opcode `0..OPCODE_COUNT`, so the table holds every variant.
fn check_golden<M: Message + PartialEq + Debug>(cases: &[(M, &str)]) {
    let mut opcodes_seen = std::collections::BTreeSet::new();
    for (value, text) in cases {
        let expected = hex(text);
        let mut buf = [0u8; 512];
        let len = codec::encode(value, &mut buf).expect("encodes");
        assert_eq!(&buf[..len], &expected[..], "encoding of {value:?}");
        assert_eq!(codec::decode::<M>(&expected).as_ref(), Ok(value));
        opcodes_seen.insert(expected[0]);
    }
    let all: std::collections::BTreeSet<u8> = (0..M::OPCODE_COUNT as u8).collect();
    assert_eq!(opcodes_seen, all, "golden table misses a variant");
    assert_eq!(
        codec::decode::<M>(&[M::OPCODE_COUNT as u8]),
        Err(DecodeError::UnknownOpcode),
        "OPCODE_COUNT is larger than the number of variants"
    );
}

#[test]
fn labels() {
    assert_eq!(supervisor::LABEL, 0x0001_0003);
    assert_eq!(echo::LABEL, 0x0100_0001);
    assert_eq!(vmm::LABEL, 0x0002_0009);
    assert_eq!(mmu::LABEL, 0x0003_0003);
    assert_eq!(trace::LABEL, 0x0004_0001);
    assert_eq!(<trace::Trace as Protocol>::LABEL, trace::LABEL);
    assert_eq!(<vmm::Vmm as Protocol>::LABEL, vmm::LABEL);
    assert_eq!(<mmu::Mmu as Protocol>::LABEL, mmu::LABEL);
}

#[test]
fn supervisor_requests() {
    use supervisor::Request;
    check_golden(&[
        (Request::Version, "00"),
        (Request::ListServices, "01"),
        (
            Request::ServiceStatus { name: name("echo") },
            "02 04 65 63 68 6f",
        ),
        (
            Request::Lookup {
                name: name("supervisor"),
            },
            "03 0a 73 75 70 65 72 76 69 73 6f 72",
        ),
        (Request::Restart { name: name("mmu") }, "04 03 6d 6d 75"),
        (Request::Restart { name: name("") }, "04 00"),
        // 300 = 0b10_0101100: 0x2c | 0x80, then 2.
        (Request::Shutdown { code: 300 }, "05 ac 02"),
        (Request::Shutdown { code: 0 }, "05 00"),
        (Request::Wiring, "06"),
        (Request::Keep { key: 0x1_0002 }, "07 82 80 04"),
        (Request::Fetch { key: 3 }, "08 03"),
        (Request::Forget { key: 0 }, "09 00"),
    ]);
}

#[test]
fn supervisor_responses() {
    use supervisor::Response;
    check_golden(&[
        (Response::Error(ProtoError::Truncated), "00 00"),
        (Response::Error(ProtoError::UnknownOpcode), "00 01"),
        (Response::Error(ProtoError::Malformed), "00 02"),
        (
            Response::Error(ProtoError::VersionMismatch {
                expected: 1,
                got: 2,
            }),
            "00 03 01 02",
        ),
        // 0x100 = 256: 0x00 | 0x80, then 2.
        (
            Response::Error(ProtoError::WrongProtocol { got: 0x100 }),
            "00 04 80 02",
        ),
        (Response::Error(ProtoError::TooLarge), "00 05"),
        (
            Response::Error(ProtoError::Service(SupervisorError::NoSuchService)),
            "00 06 00",
        ),
        (
            Response::Error(ProtoError::Service(SupervisorError::ServiceDown)),
            "00 06 01",
        ),
        (
            Response::Error(ProtoError::Service(SupervisorError::NotPermitted)),
            "00 06 02",
        ),
        (
            Response::Version {
                protocol: 1,
                version: 1,
            },
            "01 01 01",
        ),
        (Response::Services(Vec::new()), "02 00"),
        // Two entries; 200 = 0x48 | 0x80, then 1.
        (
            Response::Services(Vec::from_iter([
                ServiceInfo {
                    name: name("echo"),
                    generation: 1,
                    state: ServiceState::Running,
                    restarts: 0,
                },
                ServiceInfo {
                    name: name("mmu"),
                    generation: 200,
                    state: ServiceState::GaveUp,
                    restarts: 127,
                },
            ])),
            "02 02  04 65 63 68 6f 01 00 00  03 6d 6d 75 c8 01 03 7f",
        ),
        (
            Response::Status(ServiceInfo {
                name: name("vmm"),
                generation: 3,
                state: ServiceState::Restarting,
                restarts: 2,
            }),
            "03 03 76 6d 6d 03 01 02",
        ),
        (
            Response::Status(ServiceInfo {
                name: name(""),
                generation: 0,
                state: ServiceState::Stopped,
                restarts: 0,
            }),
            "03 00 00 02 00",
        ),
        (Response::Granted, "04"),
        (Response::Restarted { generation: 128 }, "05 80 01"),
        (Response::ShuttingDown, "06"),
        (Response::Wiring(Vec::new()), "07 00"),
        // Two wires: "echo" in slot 4, "boot" in slot 200 (0x48 | 0x80, then 1).
        (
            Response::Wiring(Vec::from_iter([
                Wire {
                    name: name("echo"),
                    slot: 4,
                },
                Wire {
                    name: name("boot"),
                    slot: 200,
                },
            ])),
            "07 02  04 65 63 68 6f 04  04 62 6f 6f 74 c8 01",
        ),
        (Response::Kept, "08"),
        (Response::Forgotten, "09"),
        (
            Response::Error(ProtoError::Service(SupervisorError::NotKept)),
            "00 06 03",
        ),
        (
            Response::Error(ProtoError::Service(SupervisorError::KeepFull)),
            "00 06 04",
        ),
    ]);
}

#[test]
fn echo_requests() {
    use echo::Request;
    check_golden(&[
        (Request::Ping, "00"),
        (
            Request::Echo {
                data: bytes(&[1, 2, 0xff]),
            },
            "01 03 01 02 ff",
        ),
        (Request::Echo { data: Vec::new() }, "01 00"),
        // u32::MAX takes five bytes: four 0xff, then 0x0f.
        (
            Request::Sum {
                values: Vec::from_slice(&[1, 128, u32::MAX]).unwrap(),
            },
            "02 03 01 80 01 ff ff ff ff 0f",
        ),
        (
            Request::Crash {
                kind: CrashKind::PageFault,
            },
            "03 00",
        ),
        (
            Request::Crash {
                kind: CrashKind::InvalidOpcode,
            },
            "03 01",
        ),
        (
            Request::Crash {
                kind: CrashKind::GeneralProtection,
            },
            "03 02",
        ),
        (
            Request::Crash {
                kind: CrashKind::Panic,
            },
            "03 03",
        ),
        // 4096 = 0x1000: 0x00 | 0x80, then 0x20.
        (Request::SumShared { len: 4096 }, "04 80 20"),
        (Request::Stats, "05"),
    ]);
}

#[test]
fn echo_responses() {
    use echo::Response;
    check_golden(&[
        (Response::Error(ProtoError::Truncated), "00 00"),
        (Response::Error(ProtoError::UnknownOpcode), "00 01"),
        (Response::Error(ProtoError::Malformed), "00 02"),
        (
            Response::Error(ProtoError::VersionMismatch {
                expected: 1,
                got: 0,
            }),
            "00 03 01 00",
        ),
        (
            Response::Error(ProtoError::WrongProtocol { got: 1 }),
            "00 04 01",
        ),
        (Response::Error(ProtoError::TooLarge), "00 05"),
        (
            Response::Error(ProtoError::Service(EchoError::NoGrant)),
            "00 06 00",
        ),
        (
            Response::Error(ProtoError::Service(EchoError::MapFailed)),
            "00 06 01",
        ),
        (
            Response::Error(ProtoError::Service(EchoError::LengthTooLarge)),
            "00 06 02",
        ),
        (Response::Pong { generation: 1 }, "01 01"),
        (
            Response::Echo {
                data: bytes(&[0x00, 0x80]),
            },
            "02 02 00 80",
        ),
        // u64::MAX takes ten bytes: nine 0xff (63 bits), then 0x01.
        (
            Response::Sum { total: u64::MAX },
            "03 ff ff ff ff ff ff ff ff ff 01",
        ),
        (
            Response::Stats {
                calls: 300,
                generation: 2,
            },
            "04 ac 02 02",
        ),
    ]);
}

/// Shadow counters with varints of one and two bytes; 16 bytes in all:
/// `e8 07  de 07  0a  81 01  00  05  02  00 01 02 7f  80 01 00 00 03  25  80 04`.
fn sample_shadow_stats() -> ShadowStats {
    ShadowStats {
        // 1000 = 7 * 128 + 0x68: 0x68 | 0x80, then 7.
        faults: 1000,
        // 990 = 7 * 128 + 0x5e.
        faults_fixed: 990,
        pf_injected: 10,
        // 129 = 128 + 1.
        emulated_writes: 129,
        zaps: 0,
        cr3_loads: 5,
        invlpg: 2,
        // Arrays have no length prefix: four varints each.
        prev_roots_hits: [0, 1, 2, 127],
        prev_roots_misses: [128, 0, 0, 3],
        pool_used: 37,
        // 512 = 0x200: 0x00 | 0x80, then 4.
        pool_pages: 512,
    }
}

const SAMPLE_SHADOW_STATS: &str =
    "e8 07 de 07 0a 81 01 00 05 02  00 01 02 7f  80 01 00 00 03  25 80 04";

/// `prefix`, then [`SAMPLE_SHADOW_STATS`].
fn then_stats(prefix: &str) -> String {
    format!("{prefix} {SAMPLE_SHADOW_STATS}")
}

#[test]
fn vmm_requests() {
    use vmm::Request;
    check_golden(&[
        // name, module, ram_mib, entry, vcpus (a raw u8), cmdline, mmu, benchmark, time_limit_ms,
        // trace, max_resets (a raw u8), initrd.
        (
            Request::RunVm {
                config: VmConfig {
                    name: common::ascii("linux"),
                    module: common::ascii("guest.elf"),
                    ram_mib: 64,
                    entry: EntryMode::Linux,
                    vcpus: 1,
                    cmdline: common::ascii("console=ttyS0"),
                    mmu: MmuMode::Ept,
                    benchmark: false,
                    time_limit_ms: 0,
                    trace: true,
                    max_resets: 8,
                    initrd: common::ascii("initrd"),
                },
            },
            "00  05 6c 69 6e 75 78  09 67 75 65 73 74 2e 65 6c 66  40  02  01 \
             0d 63 6f 6e 73 6f 6c 65 3d 74 74 79 53 30  00  00  00  01  08 \
             06 69 6e 69 74 72 64",
        ),
        // load_gpa 0x20_0000 = 1 << 21: three 7-bit groups of zeros, then 1.
        // Shadow: variant 1, prev_roots (raw u8), pool_pages 512, kvm_policy, audit.
        (
            Request::RunVm {
                config: VmConfig {
                    name: common::ascii("shadow"),
                    module: common::ascii("flat"),
                    ram_mib: 32,
                    entry: EntryMode::Flat64 {
                        load_gpa: 0x20_0000,
                    },
                    vcpus: 1,
                    cmdline: common::ascii(""),
                    mmu: MmuMode::Shadow(ShadowConfig {
                        prev_roots: 8,
                        pool_pages: 512,
                        kvm_policy: true,
                        audit: false,
                    }),
                    benchmark: true,
                    time_limit_ms: 0,
                    trace: false,
                    max_resets: 0,
                    initrd: heapless::String::new(),
                },
            },
            "00  06 73 68 61 64 6f 77  04 66 6c 61 74  20  01 80 80 80 01  01  00 \
             01 08 80 04 01 00  01  00  00  00  00",
        ),
        // 2048 = 0x800 = 16 * 128: 0x80, then 0x10; 30 = 0x1e.
        (
            Request::RunVm {
                config: VmConfig {
                    name: common::ascii("a"),
                    module: common::ascii("m"),
                    ram_mib: 2,
                    entry: EntryMode::Multiboot,
                    vcpus: 0,
                    cmdline: common::ascii("x y"),
                    mmu: MmuMode::Shadow(ShadowConfig {
                        prev_roots: 30,
                        pool_pages: 2048,
                        kvm_policy: false,
                        audit: true,
                    }),
                    benchmark: false,
                    time_limit_ms: 0,
                    trace: false,
                    max_resets: 0,
                    initrd: heapless::String::new(),
                },
            },
            "00  01 61  01 6d  02  00  00  03 78 20 79  01 1e 80 10 00 01  00  00  00  00  00",
        ),
        (
            Request::RunVm {
                config: VmConfig {
                    name: common::ascii("d"),
                    module: common::ascii("d"),
                    ram_mib: 16,
                    entry: EntryMode::Multiboot,
                    vcpus: 1,
                    cmdline: common::ascii(""),
                    mmu: MmuMode::Shadow(ShadowConfig::DEFAULT),
                    benchmark: false,
                    time_limit_ms: 0,
                    trace: false,
                    max_resets: 0,
                    initrd: heapless::String::new(),
                },
            },
            "00  01 64  01 64  10  00  01  00  01 08 80 04 00 00  00  00  00  00  00",
        ),
        // ProbeIsolation: the probe (EPT, flat at 2 MiB), then the neighbour.
        (
            Request::ProbeIsolation {
                probe: VmConfig {
                    name: common::ascii("p"),
                    module: common::ascii("g"),
                    ram_mib: 4,
                    entry: EntryMode::Flat64 {
                        load_gpa: 0x20_0000,
                    },
                    vcpus: 1,
                    cmdline: common::ascii(""),
                    mmu: MmuMode::Ept,
                    benchmark: false,
                    time_limit_ms: 0,
                    trace: false,
                    max_resets: 0,
                    initrd: heapless::String::new(),
                },
                neighbour: VmConfig {
                    name: common::ascii("d"),
                    module: common::ascii("d"),
                    ram_mib: 16,
                    entry: EntryMode::Multiboot,
                    vcpus: 1,
                    cmdline: common::ascii(""),
                    mmu: MmuMode::Shadow(ShadowConfig::DEFAULT),
                    benchmark: false,
                    time_limit_ms: 0,
                    trace: false,
                    max_resets: 0,
                    initrd: heapless::String::new(),
                },
            },
            "01  01 70  01 67  04  01 80 80 80 01  01  00  00  00  00  00  00  00 \
                 01 64  01 64  10  00  01  00  01 08 80 04 00 00  00  00  00  00  00",
        ),
    ]);
}

#[test]
fn vmm_responses() {
    use vmm::Response;
    let summary = |result, rip, exits: &[(u8, u32)], total_exits, shadow| {
        Response::Finished(VmSummary {
            result,
            rip,
            exits: Vec::from_slice(exits).expect("exits fit"),
            total_exits,
            shadow,
            trace: None,
            resets: 0,
        })
    };
    let service = |error| Response::Error(ProtoError::Service(error));
    let config = |error| service(VmmError::InvalidConfig(error));
    let stats_case = then_stats(
        // HypercallExit { code: 0 }; rip 0xffff_ffff_8000_0000: bits 0..28 zero (four 0x80),
        // bits 28..35 = 0b1111000 (0xf8 with the continuation bit), four groups of seven
        // ones, then bit 63 alone; exits [(0, 1000), (28, 5), (14, 2)];
        // total 1007 = 7 * 128 + 0x6f; Some.
        "01 01 00  80 80 80 80 f8 ff ff ff ff 01  03 00 e8 07 1c 05 0e 02  ef 07  01",
    );
    check_golden(&[
        (Response::Error(ProtoError::Truncated), "00 00"),
        (Response::Error(ProtoError::UnknownOpcode), "00 01"),
        (Response::Error(ProtoError::Malformed), "00 02"),
        (
            Response::Error(ProtoError::VersionMismatch {
                expected: 2,
                got: 1,
            }),
            "00 03 02 01",
        ),
        (
            Response::Error(ProtoError::WrongProtocol { got: 3 }),
            "00 04 03",
        ),
        (Response::Error(ProtoError::TooLarge), "00 05"),
        // Service, InvalidConfig, then the config error.
        (config(ConfigError::RamSize), "00 06 00 00"),
        (config(ConfigError::VcpuCount), "00 06 00 01"),
        (config(ConfigError::LoadAddress), "00 06 00 02"),
        (config(ConfigError::EmptyName), "00 06 00 03"),
        (config(ConfigError::ShadowConfig), "00 06 00 04"),
        (config(ConfigError::ProbeConfig), "00 06 00 05"),
        (service(VmmError::NoSuchModule), "00 06 01"),
        // `what` is a u8: one raw byte, even above 0x7f.
        (service(VmmError::BadImage { what: 0xff }), "00 06 02 ff"),
        (service(VmmError::NoVmx), "00 06 03"),
        (service(VmmError::Mmu), "00 06 04"),
        (service(VmmError::Kernel { error: 300 }), "00 06 05 ac 02"),
        (service(VmmError::Trace), "00 06 06"),
        // A traced run: the trace id after the (absent) shadow statistics.
        (
            Response::Finished(VmSummary {
                result: VmResult::DebugExit { code: 0x21 },
                rip: 0,
                exits: Vec::new(),
                total_exits: 0,
                shadow: None,
                trace: Some(300),
                resets: 4,
            }),
            "01  00 21  00  00  00  00  01 ac 02  04",
        ),
        // DebugExit 0x21; rip 0x10_0000 = 1 << 20 (bit 6 of the third group); exits
        // [(30, 2), (10, 1)]: a u8 then a varint each; total 3; no shadow.
        (
            summary(
                VmResult::DebugExit { code: 0x21 },
                0x10_0000,
                &[(30, 2), (10, 1)],
                3,
                None,
            ),
            "01  00 21  80 80 40  02 1e 02 0a 01  03  00  00  00",
        ),
        (
            summary(
                VmResult::HypercallExit { code: 0 },
                0xffff_ffff_8000_0000,
                &[(0, 1000), (28, 5), (14, 2)],
                1007,
                Some(sample_shadow_stats()),
            ),
            format!("{stats_case}  00  00").as_str(),
        ),
        // Unhandled 52; everything zero or empty; Some(all-zero stats): 1 + 17 zero bytes.
        (
            summary(
                VmResult::Unhandled { reason: 52 },
                0,
                &[],
                0,
                Some(ShadowStats::default()),
            ),
            "01  02 34  00  00  00  01 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00  00  00",
        ),
        // rip 0xfff0: 0x70 | 0x80, 0x7f | 0x80, 3.
        (
            summary(VmResult::TripleFault, 0xfff0, &[(2, 1)], 1, None),
            "01  03  f0 ff 03  01 02 01  01  00  00  00",
        ),
        // reason 0x8000_0021: 0x21 | 0x80, three 0x80, then bit 31 = bit 3 of the fifth
        // group; rip 0x7c00: 0x80, 0x78 | 0x80, 1.
        (
            summary(
                VmResult::EntryFailed {
                    reason: 0x8000_0021,
                    error: 7,
                },
                0x7c00,
                &[],
                0,
                None,
            ),
            "01  04 a1 80 80 80 08 07  80 f8 01  00  00  00  00  00",
        ),
        // gpa 0xfee0_0000: bits 0..21 zero (three 0x80), bits 21..28 = 0x77, bits 28..32 = 0xf.
        (
            summary(
                VmResult::OutsideRam { gpa: 0xfee0_0000 },
                0x1000,
                &[(48, 1)],
                1,
                None,
            ),
            "01  05 80 80 80 f7 0f  80 20  01 30 01  01  00  00  00",
        ),
        // stop 0x0b00_0000 = 0x58 << 21; faults u64::MAX (nine 0xff, then 1), 14 zero
        // counters, pool 16 of 2048.
        (
            summary(
                VmResult::Stopped { stop: 0x0b00_0000 },
                0,
                &[],
                12,
                Some(ShadowStats {
                    faults: u64::MAX,
                    pool_used: 16,
                    pool_pages: 2048,
                    ..ShadowStats::default()
                }),
            ),
            "01  06 80 80 80 58  00  00  0c  01  ff ff ff ff ff ff ff ff ff 01 \
             00 00 00 00 00 00  00 00 00 00  00 00 00 00  10  80 10  00  00",
        ),
        // Halted { rip 0x100163 = 0x63 | 0x02 << 7 | 0x40 << 14 }, rip 0x100163 again.
        (
            summary(
                VmResult::Halted { rip: 0x10_0163 },
                0x10_0163,
                &[(12, 1)],
                1,
                None,
            ),
            "01  07 e3 82 40  e3 82 40  01 0c 01  01  00  00  00",
        ),
        // BadExit { reason 0x8000_0021 = 0x21 | 0x02 << 28 (fifth byte 0x08) }.
        (
            summary(
                VmResult::BadExit {
                    reason: 0x8000_0021,
                },
                0,
                &[],
                0,
                None,
            ),
            "01  08 a1 80 80 80 08  00  00  00  00  00  00",
        ),
        // PoweredOff is variant 11; Reset { port 0xcf9 = 0x79 | 0x19 << 7 } variant 12.
        (
            summary(VmResult::PoweredOff, 0x1000, &[(30, 1)], 1, None),
            "01  0b  80 20  01 1e 01  01  00  00  00",
        ),
        (
            summary(VmResult::Reset { port: 0xcf9 }, 0, &[], 0, None),
            "01  0c f9 19  00  00  00  00  00  00",
        ),
        // Probed: neighbour HypercallExit { 0 }, result TripleFault, Some(guest counts:
        // probed 4120 = 0x18 | 0x20 << 7, own 12, device 0, stopped 4108 = 0x0c | 0x20 << 7,
        // foreign 0, unaccounted 0, RAM 4 MiB = 2 << 21), points 4120, in RAM 12, devices 6,
        // stops 4108,
        // inside RAM 0, neighbour runs 16, bad 0, seen changed 0, words 2^19 = 0x20 << 14,
        // changed 0, service words 2^15 = 2 << 14, changed 0.
        (
            Response::Probed(IsolationReport {
                neighbour: VmResult::HypercallExit { code: 0 },
                result: VmResult::TripleFault,
                guest: Some(GuestCounts {
                    probed: 4120,
                    own: 12,
                    device: 0,
                    stopped: 4108,
                    foreign: 0,
                    unaccounted: 0,
                    ram_bytes: 4 << 20,
                }),
                points: 4120,
                points_in_ram: 12,
                devices: 6,
                stops: 4108,
                stops_inside_ram: 0,
                neighbour_runs: 16,
                neighbour_bad_runs: 0,
                neighbour_seen_changed: 0,
                neighbour_words: 1 << 19,
                neighbour_changed: 0,
                service_words: 1 << 15,
                service_changed: 0,
            }),
            "02  01 00  03  01 98 20 0c 00 8c 20 00 00 80 80 80 02 \
             98 20  0c  06  8c 20  00  10 00 00  80 80 20  00  80 80 02  00",
        ),
    ]);
}

#[test]
fn mmu_requests() {
    use mmu::Request;
    check_golden(&[
        // key 5; ram_pages 16384 = 1 << 14: 0x80 0x80 1; shadow None.
        (
            Request::AttachVm {
                key: 5,
                ram_pages: 16384,
                shadow: None,
            },
            "00 05 80 80 01 00",
        ),
        // Some, prev_roots (raw u8), pool_pages 512, kvm_policy, maxphyaddr (raw u8 40 =
        // 0x28), gbpages.
        (
            Request::AttachVm {
                key: 0,
                ram_pages: 512,
                shadow: Some(ShadowParams {
                    prev_roots: 8,
                    pool_pages: 512,
                    kvm_policy: false,
                    maxphyaddr: 40,
                    gbpages: true,
                }),
            },
            "00 00 80 04 01 08 80 04 00 28 01",
        ),
        (
            Request::AttachVm {
                key: 300,
                ram_pages: 0,
                shadow: Some(ShadowParams {
                    prev_roots: 0,
                    pool_pages: 16,
                    kvm_policy: true,
                    maxphyaddr: 46,
                    gbpages: false,
                }),
            },
            "00 ac 02 00 01 00 10 01 2e 00",
        ),
        (Request::GrantRam { handle: 1 }, "01 01"),
        (Request::GrantRam { handle: u32::MAX }, "01 ff ff ff ff 0f"),
        (Request::DetachVm { handle: 2 }, "02 02"),
        // 200 = 0x48 | 0x80, then 1.
        (Request::Stats { handle: 200 }, "03 c8 01"),
        // handle 1, index 300 = 0x2c | 0x80, then 2.
        (
            Request::AttachVcpu {
                handle: 1,
                index: 300,
            },
            "04 01 ac 02",
        ),
        // every 1, limit 100, spare_first, seed 7.
        (
            Request::InjectFaults {
                every: 1,
                limit: 100,
                spare_first: true,
                seed: 7,
            },
            "05 01 64 01 07",
        ),
        (Request::Recovery, "06"),
    ]);
}

#[test]
fn mmu_responses() {
    use mmu::Response;
    let service = |error| Response::Error(ProtoError::Service(error));
    // violations 0, pages_mapped 0, stopped 1, Some.
    let stats_case = then_stats("03 00 00 01 01");
    check_golden(&[
        (Response::Error(ProtoError::Truncated), "00 00"),
        (Response::Error(ProtoError::UnknownOpcode), "00 01"),
        (Response::Error(ProtoError::Malformed), "00 02"),
        (
            Response::Error(ProtoError::VersionMismatch {
                expected: 2,
                got: 0xffff,
            }),
            "00 03 02 ff ff 03",
        ),
        (
            Response::Error(ProtoError::WrongProtocol { got: 2 }),
            "00 04 02",
        ),
        (Response::Error(ProtoError::TooLarge), "00 05"),
        (service(MmuError::NoGrant), "00 06 00"),
        (service(MmuError::Full), "00 06 01"),
        (service(MmuError::UnknownVm), "00 06 02"),
        // 0x8000 = 1 << 15: 0x80, 0x80, 2.
        (
            service(MmuError::Kernel { error: 0x8000 }),
            "00 06 03 80 80 02",
        ),
        (service(MmuError::NotShadow), "00 06 04"),
        (service(MmuError::NoMemory), "00 06 05"),
        (Response::Attached { handle: 0 }, "01 00"),
        (Response::Attached { handle: 3 }, "01 03"),
        (Response::Detached, "02"),
        // 300 = 0x2c | 0x80, then 2; shadow None.
        (
            Response::Stats {
                violations: 1,
                pages_mapped: 300,
                stopped: 0,
                shadow: None,
            },
            "03 01 ac 02 00 00",
        ),
        (
            Response::Stats {
                violations: 0,
                pages_mapped: 0,
                stopped: 1,
                shadow: Some(sample_shadow_stats()),
            },
            stats_case.as_str(),
        ),
        (Response::RamGranted, "04"),
        (Response::VcpuAttached, "05"),
        (service(MmuError::NotPermitted), "00 06 06"),
        (Response::Injecting, "06"),
        // 100 crashes, 40 in the phase, 98 re-sent, 100 recoveries, 99 measured, median
        // 1,000,000 (0xc0 0x84 0x3d), max 2.
        (
            Response::Recovery {
                crashes: 100,
                phase_crashes: 40,
                resent: 98,
                recoveries: 100,
                measured: 99,
                median: 1_000_000,
                max: 2,
            },
            "07 64 28 62 64 63 c0 84 3d 02",
        ),
    ]);
}

#[test]
fn trace_requests() {
    use trace::Request;
    check_golden(&[
        (Request::Status, "00"),
        (
            Request::Start {
                name: common::ascii("linux"),
            },
            "01 05 6c 69 6e 75 78",
        ),
        (
            Request::Start {
                name: common::ascii(""),
            },
            "01 00",
        ),
        (Request::Stop { vm: 3 }, "02 03"),
        // 300 = 0x2c | 0x80, then 2.
        (Request::Reset { vm: 300 }, "03 ac 02"),
        (
            Request::Query {
                vm: 1,
                from_reason: 0,
            },
            "04 01 00",
        ),
        // u32::MAX: four 0xff, then 0x0f; reason 48 = 0x30.
        (
            Request::Query {
                vm: u32::MAX,
                from_reason: 48,
            },
            "04 ff ff ff ff 0f 30",
        ),
        // vm, reason 30 = 0x1e, share (variant index), from.
        (
            Request::Buckets {
                vm: 1,
                reason: 30,
                share: Share::Full,
                from: 0,
            },
            "05 01 1e 00 00",
        ),
        // u16::MAX takes three bytes: 0xff 0xff 0x03.
        (
            Request::Buckets {
                vm: 2,
                reason: 48,
                share: Share::Handler,
                from: u16::MAX,
            },
            "05 02 30 01 ff ff 03",
        ),
        (Request::Crash, "06"),
    ]);
}

#[test]
fn trace_responses() {
    use trace::Response;
    let service = |error| Response::Error(ProtoError::Service(error));
    check_golden(&[
        (Response::Error(ProtoError::Truncated), "00 00"),
        (Response::Error(ProtoError::UnknownOpcode), "00 01"),
        (Response::Error(ProtoError::Malformed), "00 02"),
        (
            Response::Error(ProtoError::VersionMismatch {
                expected: 1,
                got: 2,
            }),
            "00 03 01 02",
        ),
        (
            Response::Error(ProtoError::WrongProtocol { got: 4 }),
            "00 04 04",
        ),
        (Response::Error(ProtoError::TooLarge), "00 05"),
        (service(TraceError::UnknownVm), "00 06 00"),
        (service(TraceError::NoVmCapability), "00 06 01"),
        (service(TraceError::NotAVm), "00 06 02"),
        (service(TraceError::TooManyVms), "00 06 03"),
        (service(TraceError::OutOfMemory), "00 06 04"),
        (service(TraceError::InjectOff), "00 06 05"),
        (service(TraceError::Kernel { code: 300 }), "00 06 06 ac 02"),
        // generation 2, restarted, records 1000 = 0x68 | 0x80 then 7, dropped 0, vms (a raw
        // u8) 3.
        (
            Response::Status(trace::Status {
                generation: 2,
                restarted: true,
                records: 1000,
                dropped: 0,
                vms: 3,
            }),
            "01 02 01 e8 07 00 03",
        ),
        (
            Response::Status(trace::Status::default()),
            "01 00 00 00 00 00",
        ),
        (Response::Started { vm: 7 }, "02 07"),
        (Response::Done, "03"),
        // vm 1; totals: "linux", exits 1007 = 0x6f | 0x80 then 7, time 200,000 = 0x40 |
        // 0x1a << 7 | 0x0c << 14, dropped 5, lost false; two rows; next Some(49).
        // Row 10: count 1000, min 100, p50 128, p90 200 = 0x48 | 0x80 then 1, p99 300,
        // max 1000, total 150,000 = 0x70 | 0x13 << 7 | 0x09 << 14, handler 0 and 0.
        // Row 48: count 7, min 5, p50 6, p90 7, p99 7, max 7, total 40, handler 3 and 20.
        (
            Response::Rows {
                vm: 1,
                totals: Totals {
                    name: common::ascii("linux"),
                    exits: 1007,
                    time: 200_000,
                    dropped: 5,
                    lost: false,
                },
                rows: Vec::from_iter([
                    Row {
                        reason: 10,
                        count: 1000,
                        min: 100,
                        p50: 128,
                        p90: 200,
                        p99: 300,
                        max: 1000,
                        total: 150_000,
                        handler_p50: 0,
                        handler_total: 0,
                    },
                    Row {
                        reason: 48,
                        count: 7,
                        min: 5,
                        p50: 6,
                        p90: 7,
                        p99: 7,
                        max: 7,
                        total: 40,
                        handler_p50: 3,
                        handler_total: 20,
                    },
                ]),
                next: Some(49),
            },
            "04 01  05 6c 69 6e 75 78  ef 07  c0 9a 0c  05  00  02 \
             0a  e8 07  64  80 01  c8 01  ac 02  e8 07  f0 93 09  00  00 \
             30  07  05 06 07 07 07  28  03  14  01 31",
        ),
        // vm 9, "vm9", nothing counted, lost; no rows; next None.
        (
            Response::Rows {
                vm: 9,
                totals: Totals {
                    name: common::ascii("vm9"),
                    exits: 0,
                    time: 0,
                    dropped: 0,
                    lost: true,
                },
                rows: Vec::new(),
                next: None,
            },
            "04 09  03 76 6d 39  00 00 00  01  00  00",
        ),
        // Three buckets: 0..=0 once, 16..=16 twice, 1024..=1087 300 times (1024 = 0x80 0x08,
        // 1087 = 0x3f | 0x80 then 8); next Some(3).
        (
            Response::Buckets {
                buckets: Vec::from_iter([
                    Bucket {
                        lo: 0,
                        hi: 0,
                        count: 1,
                    },
                    Bucket {
                        lo: 16,
                        hi: 16,
                        count: 2,
                    },
                    Bucket {
                        lo: 1024,
                        hi: 1087,
                        count: 300,
                    },
                ]),
                next: Some(3),
            },
            "05 03  00 00 01  10 10 02  80 08 bf 08 ac 02  01 03",
        ),
        (
            Response::Buckets {
                buckets: Vec::new(),
                next: None,
            },
            "05 00 00",
        ),
    ]);
}

/// Encoded length of every maximal value; each must fit one message.
fn encoded_lengths<M: Message>(values: &[M]) -> std::vec::Vec<usize> {
    values
        .iter()
        .map(|value| {
            let mut buf = [0u8; 4096];
            let len = postcard::to_slice(value, &mut buf).expect("encodes").len();
            assert!(len <= abi::ipc::MAX_PAYLOAD, "{len} bytes");
            assert_eq!(codec::encode(value, &mut [0u8; 512]), Ok(len));
            len
        })
        .collect()
}

#[test]
fn maximal_messages_fit_one_payload() {
    // name: 1 + 16; ServiceInfo: 17 + 5 + 1 + 5 = 28; Services: 1 + 1 + 8 * 28 = 226.
    assert_eq!(
        encoded_lengths(&common::maximal_supervisor_requests()),
        [1, 1, 18, 18, 18, 6]
    );
    assert_eq!(
        encoded_lengths(&common::maximal_supervisor_responses()),
        [8, 7, 226, 29, 1, 6, 1]
    );
    // Echo: 1 + 2 + 509 = 512 exactly; Sum: 1 + 1 + 64 * 5 = 322.
    assert_eq!(
        encoded_lengths(&common::maximal_echo_requests()),
        [1, 512, 322, 2, 6, 1]
    );
    assert_eq!(
        encoded_lengths(&common::maximal_echo_responses()),
        [8, 6, 512, 11, 16]
    );
    // VmConfig: name 1 + 16, module 1 + 32, ram_mib 5, Flat64 1 + 10, vcpus 1,
    // cmdline 2 + 128, Shadow 1 + 1 + 5 + 1 + 1, benchmark 1, time_limit_ms 5, trace 1,
    // max_resets 1, initrd 1 + 32 = 247; RunVm 248; ProbeIsolation 1 + 2 * 247 = 495.
    assert_eq!(encoded_lengths(&common::maximal_vmm_requests()), [248, 495]);
    // Error: Service, Kernel, u64 = 1 + 1 + 1 + 1 + 10 = 13. ShadowStats: 15 * 10 + 2 * 5 = 160.
    // Finished: 1 + EntryFailed 16 + rip 10 + exits (1 + 16 * 6) + total 10 + Some 161
    // + trace Some (1 + 5) + resets 5 = 306.
    // Probed: 1 + 2 * EntryFailed 16 + Some (1 + 7 * 10) + 12 * 10 = 224.
    assert_eq!(
        encoded_lengths(&common::maximal_vmm_responses()),
        [13, 306, 224]
    );
    // AttachVm: 1 + 10 + 10 + Some (1 + 1 + 5 + 1 + 1 + 1) = 31; AttachVcpu 1 + 5 + 3 = 9;
    // InjectFaults 1 + 5 + 5 + 1 + 10 = 22.
    assert_eq!(
        encoded_lengths(&common::maximal_mmu_requests()),
        [31, 6, 6, 6, 9, 22]
    );
    // Stats: 1 + 3 * 10 + 161 = 192.
    assert_eq!(
        encoded_lengths(&common::maximal_mmu_responses()),
        [13, 6, 1, 192, 1, 1]
    );
    // Start 1 + 17; Query 1 + 5 + 3; Buckets 1 + 5 + 3 + 1 + 3.
    assert_eq!(
        encoded_lengths(&common::maximal_trace_requests()),
        [1, 18, 6, 6, 9, 13, 1]
    );
    // Kernel error 1 + 1 + 1 + 3; Status 1 + 10 + 1 + 10 + 10 + 1 = 33;
    // Rows 1 + 5 + totals 48 + 1 + 4 * 93 + Some 4 = 431; Buckets 1 + 1 + 16 * 30 + 4 = 486.
    assert_eq!(
        encoded_lengths(&common::maximal_trace_responses()),
        [8, 6, 33, 6, 1, 431, 486]
    );
}

#[test]
fn echo_capacity_is_the_largest_that_fits() {
    // One more byte of data than ECHO_CAPACITY, with the same opcode and length prefix
    // layout, does not fit.
    let data = [0xffu8; echo::ECHO_CAPACITY + 1];
    let mut buf = [0u8; 1024];
    assert_eq!(
        codec::encode(&(1u8, &data[..]), &mut buf),
        Err(DecodeError::TooLarge)
    );
    assert_eq!(
        codec::encode(&(1u8, &data[..echo::ECHO_CAPACITY]), &mut buf),
        Ok(512)
    );
}

#[test]
fn trace_page_sizes_are_the_largest_that_fit() {
    use trace::{BUCKETS_MAX, ROWS_MAX};
    // The same layout as `Response::Rows` / `Response::Buckets` (opcode, then the fields in
    // order; a slice encodes as a length and its elements like a `Vec`) with one more
    // element than a page holds, every field at its largest, does not fit.
    let rows = vec![common::longest_row(); ROWS_MAX + 1];
    let buckets = vec![common::longest_bucket(); BUCKETS_MAX + 1];
    let mut buf = [0u8; 1024];
    let rows_value = |n: usize| {
        (
            4u8,
            u32::MAX,
            common::longest_totals(),
            &rows[..n],
            Some(u16::MAX),
        )
    };
    let buckets_value = |n: usize| (5u8, &buckets[..n], Some(u16::MAX));
    assert_eq!(codec::encode(&rows_value(ROWS_MAX), &mut buf), Ok(431));
    assert_eq!(
        codec::encode(&rows_value(ROWS_MAX + 1), &mut buf),
        Err(DecodeError::TooLarge)
    );
    assert_eq!(
        codec::encode(&buckets_value(BUCKETS_MAX), &mut buf),
        Ok(486)
    );
    assert_eq!(
        codec::encode(&buckets_value(BUCKETS_MAX + 1), &mut buf),
        Err(DecodeError::TooLarge)
    );
}
