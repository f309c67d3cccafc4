//! Decoding made-up exits.
use super::*;
use proptest::prelude::*;

fn msg(reason: u32, mask: u32) -> ExitMessage {
    ExitMessage {
        reason,
        mask,
        ..ExitMessage::default()
    }
}

#[test]
fn io_out_word_with_port_and_value() {
    let mut m = msg(reason::IO, group::QUAL | group::GPRS);
    m.qualification = (0x3f8 << 16) | 1; // OUT, 2 bytes
    m.gprs[0] = 0xdead_beef_1234_5678;
    assert_eq!(
        decode(&m),
        Ok(Exit::Io {
            port: 0x3f8,
            size: 2,
            direction: IoDirection::Out,
            string: false,
            rep: false,
            value: 0x5678
        })
    );
}

#[test]
fn io_in_string_rep_and_bad_size() {
    let mut m = msg(reason::IO, group::QUAL | group::GPRS);
    m.qualification = (0x1f0 << 16) | (1 << 5) | (1 << 4) | (1 << 3) | 3;
    assert_eq!(
        decode(&m),
        Ok(Exit::Io {
            port: 0x1f0,
            size: 4,
            direction: IoDirection::In,
            string: true,
            rep: true,
            value: 0
        })
    );
    m.qualification = 2;
    assert_eq!(decode(&m), Err(ExitError::BadIoSize { qualification: 2 }));
}

#[test]
fn missing_groups_are_errors() {
    let m = msg(reason::IO, group::QUAL);
    assert_eq!(
        decode(&m),
        Err(ExitError::MissingGroups {
            reason: reason::IO,
            need: group::QUAL | group::GPRS
        })
    );
    assert!(decode(&msg(reason::CPUID, 0)).is_err());
    assert!(decode(&msg(reason::CR_ACCESS, group::QUAL | group::GPRS)).is_err());
    assert_eq!(decode(&msg(reason::HLT, 0)), Ok(Exit::Hlt));
}

#[test]
fn msr_cpuid_vmcall() {
    let mut m = msg(reason::WRMSR, group::GPRS);
    m.gprs[0] = 0xffff_ffff_0000_0501; // upper half of RAX ignored
    m.gprs[1] = 0xc000_0080;
    m.gprs[2] = 0x1;
    assert_eq!(
        decode(&m),
        Ok(Exit::Wrmsr {
            msr: 0xc000_0080,
            value: 0x1_0000_0501
        })
    );
    m.reason = reason::RDMSR;
    assert!(decode(&m).is_err(), "RDMSR needs the kernel's EFER (CRS)");
    m.mask |= group::CRS;
    assert_eq!(decode(&m), Ok(Exit::Rdmsr { msr: 0xc000_0080 }));
    m.reason = reason::CPUID;
    assert_eq!(
        decode(&m),
        Ok(Exit::Cpuid {
            leaf: 0x501,
            subleaf: 0xc000_0080
        })
    );
    m.reason = reason::VMCALL;
    m.gprs[3] = 7;
    m.gprs[6] = 9;
    assert_eq!(
        decode(&m),
        Ok(Exit::Vmcall {
            nr: 0xffff_ffff_0000_0501,
            args: [7, 0xc000_0080, 1, 9]
        })
    );
}

#[test]
fn cr_access_forms() {
    let mut m = msg(reason::CR_ACCESS, group::QUAL | group::GPRS | group::CRS);
    m.qualification = (3 << 8) | 4; // mov cr4, rbx
    assert_eq!(
        decode(&m),
        Ok(Exit::CrAccess {
            cr: 4,
            access: CrAccessKind::MovTo { gpr: 3 }
        })
    );
    m.qualification = (15 << 8) | (1 << 4) | 3;
    assert_eq!(
        decode(&m),
        Ok(Exit::CrAccess {
            cr: 3,
            access: CrAccessKind::MovFrom { gpr: 15 }
        })
    );
    m.qualification = 2 << 4;
    assert_eq!(
        decode(&m),
        Ok(Exit::CrAccess {
            cr: 0,
            access: CrAccessKind::Clts
        })
    );
    m.qualification = (0xbeef << 16) | (3 << 4);
    assert_eq!(
        decode(&m),
        Ok(Exit::CrAccess {
            cr: 0,
            access: CrAccessKind::Lmsw {
                source_data: 0xbeef
            }
        })
    );
}

#[test]
fn ept_exception_and_failures() {
    let mut m = msg(reason::EPT_VIOLATION, group::QUAL | group::ADDR);
    m.qualification = 0b1000_1010; // write, readable, gla valid
    m.gpa = 0xfee0_0030;
    m.gla = 0xffff_8000_0000_0030;
    assert_eq!(
        decode(&m),
        Ok(Exit::EptViolation {
            gpa: 0xfee0_0030,
            gla: Some(0xffff_8000_0000_0030),
            read: false,
            write: true,
            fetch: false,
            readable: true,
            writable: false,
            executable: false
        })
    );
    m.qualification = 0b100;
    assert!(matches!(
        decode(&m),
        Ok(Exit::EptViolation {
            gla: None,
            fetch: true,
            ..
        })
    ));
    let mut e = msg(reason::EXCEPTION_NMI, group::QUAL);
    e.intr_info = 0x8000_0b0e;
    e.intr_error = 2;
    assert_eq!(
        decode(&e),
        Ok(Exit::Exception {
            vector: 14,
            error_code: Some(2)
        })
    );
    e.intr_info = 0x8000_0306;
    assert_eq!(
        decode(&e),
        Ok(Exit::Exception {
            vector: 6,
            error_code: None
        })
    );
    assert_eq!(
        decode(&msg(reason::INVALID_GUEST_STATE | ENTRY_FAILURE_BIT, 0)),
        Ok(Exit::InvalidGuestState)
    );
    assert_eq!(
        decode(&msg(reason::MSR_LOADING | ENTRY_FAILURE_BIT, 0)),
        Ok(Exit::EntryFailure {
            reason: reason::MSR_LOADING | ENTRY_FAILURE_BIT
        })
    );
    assert_eq!(decode(&msg(reason::TRIPLE_FAULT, 0)), Ok(Exit::TripleFault));
    assert_eq!(
        decode(&msg(reason::INVLPG, 0)),
        Ok(Exit::Other {
            reason: reason::INVLPG
        })
    );
}

fn any_message() -> impl Strategy<Value = ExitMessage> {
    (
        any::<u32>(),
        0u32..64,
        prop::array::uniform16(any::<u64>()),
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        0u32..80,
    )
        .prop_map(|(reason, mask, gprs, q, info, err, gpa, gla, small)| {
            // Half the time use a small (routed) reason so the interesting arms run.
            let reason = if reason & 1 == 0 { small } else { reason };
            ExitMessage {
                reason,
                mask,
                gprs,
                qualification: q,
                intr_info: info,
                intr_error: err,
                gpa,
                gla,
                ..ExitMessage::default()
            }
        })
}

proptest! {
    #[test]
    fn decode_never_panics(m in any_message()) {
        let _ = decode(&m);
    }
}
