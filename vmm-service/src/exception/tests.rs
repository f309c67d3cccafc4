use super::*;
use abi::vmx::group;

/// SDM vol. 3 table 6-1: vector, type, error code (protected mode).
const TABLE_6_1: [(u8, Kind, bool); 21] = [
    (DE, Kind::Fault, false),
    (DB, Kind::Trap, false),
    (NMI, Kind::Interrupt, false),
    (BP, Kind::Trap, false),
    (OF, Kind::Trap, false),
    (BR, Kind::Fault, false),
    (UD, Kind::Fault, false),
    (NM, Kind::Fault, false),
    (DF, Kind::Abort, true),
    (9, Kind::Fault, false), // coprocessor segment overrun (reserved since the 486)
    (TS, Kind::Fault, true),
    (NP, Kind::Fault, true),
    (SS, Kind::Fault, true),
    (GP, Kind::Fault, true),
    (PF, Kind::Fault, true),
    (MF, Kind::Fault, false),
    (AC, Kind::Fault, true),
    (MC, Kind::Abort, false),
    (XM, Kind::Fault, false),
    (VE, Kind::Fault, false),
    (CP, Kind::Fault, true),
];

fn guest(rflags: u64) -> Guest {
    Guest {
        protected: true,
        rflags: Some(rflags),
        delivering: None,
    }
}

#[test]
fn vectors_have_the_sdm_type_and_error_code() {
    for (v, k, err) in TABLE_6_1 {
        assert_eq!(kind(v), k, "vector {v}");
        assert_eq!(has_error_code(v, true), err, "vector {v}");
        assert!(
            !has_error_code(v, false),
            "vector {v}: no error code in real mode"
        );
    }
}

#[test]
fn gp_carries_its_error_code_and_sets_rf() {
    let Injection::Event { inject, rflags } = injection(GP, 0x18, guest(0x202)) else {
        panic!("delivered");
    };
    assert_eq!(inject, 0x8000_0b0d | 0x18 << 32);
    assert_eq!(rflags, Some(0x202 | rflags::RF));
    // The injection the CR and MSR handlers always used for #GP(0).
    let Injection::Event { inject, .. } = injection(GP, 0, guest(2)) else {
        panic!()
    };
    assert_eq!(inject, crate::cr::GP_INJECT);
}

#[test]
fn ud_has_no_error_code_and_sets_rf() {
    let Injection::Event { inject, rflags } = injection(UD, 0x1234, guest(0x2)) else {
        panic!()
    };
    assert_eq!(inject, 0x8000_0306);
    assert_eq!(rflags, Some(0x2 | rflags::RF));
}

#[test]
fn traps_and_aborts_leave_rf_alone() {
    for v in [DB, BP, OF, MC] {
        let Injection::Event { rflags, .. } = injection(v, 0, guest(0x2)) else {
            panic!()
        };
        assert_eq!(rflags, None, "vector {v}");
    }
}

#[test]
fn real_mode_gets_no_error_code() {
    let g = Guest {
        protected: false,
        ..guest(2)
    };
    let Injection::Event { inject, .. } = injection(GP, 5, g) else {
        panic!()
    };
    assert_eq!(inject, 0x8000_030d);
}

#[test]
fn double_fault_table() {
    // SDM table 6-5: rows = first exception, columns = second.
    use Class::*;
    let rep = |c: Class| match c {
        Benign => UD,
        Contributory => GP,
        PageFault => PF,
        DoubleFault => DF,
    };
    for (first, second, want) in [
        (Benign, Benign, Some(UD)),
        (Benign, Contributory, Some(GP)),
        (Benign, PageFault, Some(PF)),
        (Contributory, Benign, Some(UD)),
        (Contributory, Contributory, Some(DF)),
        (Contributory, PageFault, Some(PF)),
        (PageFault, Benign, Some(UD)),
        (PageFault, Contributory, Some(DF)),
        (PageFault, PageFault, Some(DF)),
        (DoubleFault, Benign, Some(UD)),
        (DoubleFault, Contributory, None),
        (DoubleFault, PageFault, None),
    ] {
        assert_eq!(
            combine(rep(first), rep(second)),
            want,
            "{first:?} then {second:?}"
        );
    }
    for v in [DE, TS, NP, SS, GP] {
        assert_eq!(class(v), Contributory);
    }
    assert_eq!(class(VE), PageFault);
    assert_eq!(class(NMI), Benign);
}

#[test]
fn an_exit_during_delivery_escalates() {
    let mut m = ExitMessage {
        mask: group::QUAL | group::CRS | group::RIP,
        cr0_shadow: 0x11,
        rflags: 0x2,
        idt_vectoring_info: 0x8000_0b0d, // delivering #GP
        ..ExitMessage::default()
    };
    // #GP during #GP: #DF(0), an abort (no RF).
    let r = reply(&m, GP, 0x10).expect("delivered");
    assert_eq!(r.inject, 0x8000_0b08);
    assert_eq!(r.flags, reply::INJECT);
    // #GP during #DF: shutdown.
    m.idt_vectoring_info = 0x8000_0b08;
    assert_eq!(reply(&m, GP, 0), None);
    // An external interrupt being delivered (type 0) does not escalate.
    m.idt_vectoring_info = 0x8000_0020;
    let r = reply(&m, GP, 0).expect("delivered");
    assert_eq!(r.inject, crate::cr::GP_INJECT);
    assert_eq!(r.flags, reply::INJECT | reply::SET_RFLAGS);
    assert_eq!(r.rflags, 0x2 | rflags::RF);
    // Without the RIP group RFLAGS is unknown: no RF (nothing invented).
    m.mask = group::QUAL;
    assert_eq!(reply(&m, UD, 0).unwrap().flags, reply::INJECT);
}
