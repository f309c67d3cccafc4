//! Issue 12's interrupt-delivery requests in a reply: the deadline, the interrupt-window
//! and NMI-window requests, the HLT activity state, and NMI injection.

use abi::vmx::{activity, field, interruptibility, pin_based, proc_based, reason, reply};
use abi::vmx::{stop, ExitReply};
use abi::{Error, Sys};

use super::objects::ThreadState;

use super::kernel::Next;
use super::tests::*;
use super::tests_vm::*;

/// The exit the server receives once it calls `Recv` again: (reason, instruction length).
fn take(v: &mut Vmm, run: &Running) -> (u32, u32) {
    let (next, _) = sys(&mut v.k, Sys::Recv, [run.server_ep, DATA, 512, 0, 0, 0]);
    assert_eq!(next, Next::User(run.server));
    let (m, _) = received(&v.k, run.server);
    (m.reason, m.instruction_len)
}

fn portal(v: &mut Vmm, r: u32) -> Result<(), Error> {
    let p = [
        v.vcpu,
        u64::from(r),
        v.ep,
        abi::vmx::group::ALL as u64,
        0,
        0,
    ];
    status(&sys(&mut v.k, Sys::VcpuPortal, p).1)
}

/// A guest running with CPUID routed to the server, which has answered nothing yet: the
/// first CPUID exit is in the server's hands.
fn at_first_exit(deadline_portal: bool) -> (Vmm, Running) {
    let portals: &[u32] = if deadline_portal {
        &[reason::PREEMPTION_TIMER]
    } else {
        &[]
    };
    at_first_exit_with(portals)
}

/// [`at_first_exit`] with portals for `reasons` (to the server) too.
fn at_first_exit_with(reasons: &[u32]) -> (Vmm, Running) {
    let mut v = vmm();
    for &r in reasons {
        portal(&mut v, r).expect("portal");
    }
    portal(&mut v, reason::INTERRUPT_WINDOW).expect("window portal");
    let run = run(&mut v, true);
    // The server was waiting: the message is already in its hands.
    assert_eq!(exit(&mut v.k, reason::CPUID, 0, 2), Next::User(run.server));
    assert_eq!(received(&v.k, run.server).0.reason, reason::CPUID);
    (v, run)
}

#[test]
fn only_the_external_interrupt_takes_no_portal() {
    let mut v = vmm();
    assert_eq!(
        portal(&mut v, reason::EXTERNAL_INTERRUPT),
        Err(Error::InvalidArgument)
    );
    assert!(portal(&mut v, reason::PREEMPTION_TIMER).is_ok());
    assert!(portal(&mut v, reason::INTERRUPT_WINDOW).is_ok());
}

#[test]
fn a_passed_deadline_reaches_the_handler_once_as_a_preemption_timer_exit() {
    let (mut v, run) = at_first_exit(true);
    let far = v.k.machine.tsc.get() + 1_000_000;
    let r = ExitReply {
        flags: reply::ADVANCE_RIP | reply::SET_DEADLINE,
        deadline: far,
        ..ExitReply::default()
    };
    assert_eq!(reply_with(&mut v.k, &r), Next::Guest(v.vt));
    assert_eq!(vmcs(&v.k, v.vi, field::DEADLINE), far);
    // A slice ends before the deadline: the kernel's own, and the guest goes on.
    assert_eq!(
        exit(&mut v.k, reason::PREEMPTION_TIMER, 0, 0),
        Next::Guest(v.vt)
    );
    assert_eq!(vmcs(&v.k, v.vi, field::DEADLINE), far);
    // The deadline passes (on a host interrupt's exit, too): the handler hears of it.
    v.k.machine.tsc.set(far);
    assert_eq!(
        exit(&mut v.k, reason::EXTERNAL_INTERRUPT, 0, 0),
        Next::User(run.server)
    );
    assert_eq!(take(&mut v, &run), (reason::PREEMPTION_TIMER, 0));
    assert_eq!(
        vmcs(&v.k, v.vi, field::DEADLINE),
        0,
        "a deadline fires once"
    );
    assert_eq!(
        reply_with(&mut v.k, &ExitReply::resume()),
        Next::Guest(v.vt)
    );
    assert_eq!(
        exit(&mut v.k, reason::PREEMPTION_TIMER, 0, 0),
        Next::Guest(v.vt),
        "no deadline: a slice's end again"
    );
}

#[test]
fn without_a_portal_a_passed_deadline_just_ends() {
    let (mut v, _run) = at_first_exit(false);
    let r = ExitReply {
        flags: reply::ADVANCE_RIP | reply::SET_DEADLINE,
        deadline: 1,
        ..ExitReply::default()
    };
    assert_eq!(reply_with(&mut v.k, &r), Next::Guest(v.vt));
    assert_eq!(
        exit(&mut v.k, reason::PREEMPTION_TIMER, 0, 0),
        Next::Guest(v.vt)
    );
    assert_eq!(vmcs(&v.k, v.vi, field::DEADLINE), 0);
}

#[test]
fn the_deadline_is_a_state_field_too() {
    let mut v = vmm();
    write_state(&mut v.k, v.vcpu, &[(field::DEADLINE, 77)]);
    assert_eq!(read_one(&mut v.k, v.vcpu, field::DEADLINE), 77);
}

#[test]
fn an_interrupt_window_request_lasts_until_its_exit() {
    let (mut v, run) = at_first_exit(false);
    let r = ExitReply {
        flags: reply::ADVANCE_RIP | reply::INTR_WINDOW,
        ..ExitReply::default()
    };
    assert_eq!(reply_with(&mut v.k, &r), Next::Guest(v.vt));
    let controls = |v: &Vmm| vmcs(&v.k, v.vi, field::PROC_BASED_CONTROLS);
    assert_ne!(controls(&v) & proc_based::INTR_WINDOW_EXITING, 0);
    assert_eq!(
        exit(&mut v.k, reason::INTERRUPT_WINDOW, 0, 0),
        Next::User(run.server)
    );
    assert_eq!(controls(&v) & proc_based::INTR_WINDOW_EXITING, 0);
    assert_eq!(take(&mut v, &run).0, reason::INTERRUPT_WINDOW);
}

#[test]
fn halt_waits_in_hlt_and_an_injection_wakes_the_guest() {
    let (mut v, run) = at_first_exit(false);
    let activity = |v: &Vmm| vmcs(&v.k, v.vi, field::GUEST_ACTIVITY_STATE);
    let r = ExitReply {
        flags: reply::ADVANCE_RIP | reply::HALT,
        ..ExitReply::default()
    };
    assert_eq!(reply_with(&mut v.k, &r), Next::Guest(v.vt));
    assert_eq!(activity(&v), activity::HLT);
    assert_eq!(vmcs(&v.k, v.vi, field::GUEST_RIP), 0x1002);
    // An exit while halted; the handler injects an external interrupt (vector 0x30).
    assert_eq!(exit(&mut v.k, reason::CPUID, 0, 2), Next::User(run.server));
    take(&mut v, &run);
    let r = ExitReply {
        flags: reply::INJECT,
        inject: 0x8000_0030,
        ..ExitReply::default()
    };
    assert_eq!(reply_with(&mut v.k, &r), Next::Guest(v.vt));
    assert_eq!(activity(&v), activity::ACTIVE);
    assert_eq!(vmcs(&v.k, v.vi, field::VM_ENTRY_INTR_INFO), 0x8000_0030);
    // HALT with an injection in the same reply: the event wins.
    assert_eq!(exit(&mut v.k, reason::CPUID, 0, 2), Next::User(run.server));
    take(&mut v, &run);
    let r = ExitReply {
        flags: reply::HALT | reply::INJECT,
        inject: 0x8000_0031,
        ..ExitReply::default()
    };
    assert_eq!(reply_with(&mut v.k, &r), Next::Guest(v.vt));
    assert_eq!(activity(&v), activity::ACTIVE);
}

#[test]
fn the_new_reply_flags_round_trip_and_carry_values_only_where_they_have_one() {
    let r = ExitReply {
        flags: reply::INTR_WINDOW | reply::HALT | reply::SET_DEADLINE | reply::FORWARD,
        deadline: 5,
        forward_gpa: 0xfee0_0000,
        ..ExitReply::default()
    };
    let mut buf = [0u8; ExitReply::MAX_SIZE];
    let n = r.encode(&mut buf).unwrap();
    assert_eq!(n, 8 + 2 * 8, "two values: the deadline and the address");
    assert_eq!(ExitReply::decode(&buf[..n]), Ok(r));
    let only = ExitReply {
        flags: reply::INTR_WINDOW | reply::HALT,
        ..ExitReply::default()
    };
    assert_eq!(only.encode(&mut buf), Some(8));
}

#[test]
fn advancing_past_an_instruction_ends_sti_and_mov_ss_blocking() {
    let (mut v, _run) = at_first_exit(false);
    let hw = &mut v.k.vcpus[v.vi.index()].obj.as_mut().unwrap().hw;
    hw.insert(field::GUEST_INTERRUPTIBILITY, 0b1011);
    assert_eq!(
        reply_with(&mut v.k, &ExitReply::advance()),
        Next::Guest(v.vt)
    );
    assert_eq!(
        vmcs(&v.k, v.vi, field::GUEST_INTERRUPTIBILITY),
        0b1000,
        "only the one-instruction blocking ends"
    );
}

#[test]
fn an_event_a_host_interrupt_cut_short_is_delivered_again_before_the_deadline() {
    let (mut v, run) = at_first_exit(true);
    let r = ExitReply {
        flags: reply::ADVANCE_RIP | reply::SET_DEADLINE,
        deadline: 1,
        ..ExitReply::default()
    };
    assert_eq!(reply_with(&mut v.k, &r), Next::Guest(v.vt));
    // The exit came while the guest's #PF (error code 2) was being delivered.
    let hw = &mut v.k.vcpus[v.vi.index()].obj.as_mut().unwrap().hw;
    hw.insert(field::IDT_VECTORING_INFO, 0x8000_0b0e);
    hw.insert(field::IDT_VECTORING_ERROR_CODE, 2);
    assert_eq!(
        exit(&mut v.k, reason::EXTERNAL_INTERRUPT, 0, 0),
        Next::Guest(v.vt),
        "the event first"
    );
    assert_eq!(vmcs(&v.k, v.vi, field::VM_ENTRY_INTR_INFO), 0x8000_0b0e);
    assert_eq!(vmcs(&v.k, v.vi, field::VM_ENTRY_EXCEPTION_ERROR_CODE), 2);
    assert_eq!(vmcs(&v.k, v.vi, field::DEADLINE), 1, "still pending");
    // Delivered; the next exit tells the handler.
    let hw = &mut v.k.vcpus[v.vi.index()].obj.as_mut().unwrap().hw;
    hw.insert(field::IDT_VECTORING_INFO, 0);
    assert_eq!(
        exit(&mut v.k, reason::PREEMPTION_TIMER, 0, 0),
        Next::User(run.server)
    );
}

/// A kick (issue 12, multi-vCPU): another vCPU's handler writes this vCPU's deadline as 1
/// (passed) through `VcpuState` while it waits in HLT. One host CPU: it is not in the guest
/// meanwhile, so its next entry has a preemption timer of 0 and exits at once; the kernel
/// turns that exit into the handler's preemption-timer exit, and an injection wakes it.
#[test]
fn a_deadline_written_as_1_wakes_a_halted_vcpu_through_its_handler() {
    let (mut v, run) = at_first_exit(true);
    let halt = ExitReply {
        flags: reply::ADVANCE_RIP | reply::HALT,
        ..ExitReply::default()
    };
    assert_eq!(reply_with(&mut v.k, &halt), Next::Guest(v.vt));
    assert_eq!(vmcs(&v.k, v.vi, field::GUEST_ACTIVITY_STATE), activity::HLT);
    // A slice ends with no deadline: the kernel's own, the vCPU stays halted.
    assert_eq!(
        exit(&mut v.k, reason::PREEMPTION_TIMER, 0, 0),
        Next::Guest(v.vt)
    );
    write_state(&mut v.k, v.vcpu, &[(field::DEADLINE, 1)]);
    assert_eq!(vmcs(&v.k, v.vi, field::DEADLINE), 1);
    assert_eq!(
        exit(&mut v.k, reason::PREEMPTION_TIMER, 0, 0),
        Next::User(run.server),
        "the kick reaches the handler"
    );
    assert_eq!(take(&mut v, &run), (reason::PREEMPTION_TIMER, 0));
    assert_eq!(vmcs(&v.k, v.vi, field::DEADLINE), 0, "fired once");
    let wake = ExitReply {
        flags: reply::INJECT,
        inject: 0x8000_0060,
        ..ExitReply::default()
    };
    assert_eq!(reply_with(&mut v.k, &wake), Next::Guest(v.vt));
    assert_eq!(
        vmcs(&v.k, v.vi, field::GUEST_ACTIVITY_STATE),
        activity::ACTIVE
    );
    assert_eq!(vmcs(&v.k, v.vi, field::VM_ENTRY_INTR_INFO), 0x8000_0060);
}

/// The activity states a VMM may write stay active and HLT: an application processor is
/// kept out of the guest until its SIPI instead (wait-for-SIPI would not exit on a host
/// interrupt or the preemption timer).
#[test]
fn wait_for_sipi_and_shutdown_cannot_be_written() {
    let mut v = vmm();
    for state in [2u64, 3] {
        let p = [(field::GUEST_ACTIVITY_STATE, state)];
        let (r, _) = super::tests_vm::state(&mut v.k, v.vcpu, &p, true);
        assert_eq!(status(&r), Err(Error::InvalidArgument), "{state}");
    }
    write_state(
        &mut v.k,
        v.vcpu,
        &[(field::GUEST_ACTIVITY_STATE, activity::HLT)],
    );
}

#[test]
fn a_host_interrupt_the_machine_takes_itself_also_redelivers_the_event_it_cut_short() {
    let (mut v, _run) = at_first_exit(false);
    assert_eq!(
        reply_with(&mut v.k, &ExitReply::advance()),
        Next::Guest(v.vt)
    );
    let hw = &mut v.k.vcpus[v.vi.index()].obj.as_mut().unwrap().hw;
    hw.insert(field::IDT_VECTORING_INFO, 0x8000_0030);
    hw.insert(field::VM_ENTRY_INTR_INFO, 0);
    // As `kentry::vm_exit` does for an external interrupt: counted, not routed.
    let t = v.k.current.unwrap();
    assert!(v
        .k
        .vm_exited(t, reason::EXTERNAL_INTERRUPT, 5, || (0, 0), |_| {})
        .is_none());
    v.k.count_exit(t, reason::EXTERNAL_INTERRUPT, 5);
    assert_eq!(vmcs(&v.k, v.vi, field::VM_ENTRY_INTR_INFO), 0x8000_0030);
}

/// The guest's VMCS, to set what the CPU would have (the fake machine's VMCS is a map).
fn hw(v: &mut Vmm) -> &mut std::collections::BTreeMap<u64, u64> {
    &mut v.k.vcpus[v.vi.index()].obj.as_mut().unwrap().hw
}

/// A VMCS made on a CPU with virtual NMIs (`arch::vmx` sets both pin-based controls then).
fn with_virtual_nmis(v: &mut Vmm) {
    let pin = pin_based::NMI_EXITING | pin_based::VIRTUAL_NMIS;
    hw(v).insert(field::PIN_BASED_CONTROLS, pin);
}

#[test]
fn an_nmi_window_request_lasts_until_its_own_exit() {
    let (mut v, run) = at_first_exit_with(&[reason::NMI_WINDOW]);
    with_virtual_nmis(&mut v);
    let r = ExitReply {
        flags: reply::ADVANCE_RIP | reply::NMI_WINDOW,
        ..ExitReply::default()
    };
    assert_eq!(reply_with(&mut v.k, &r), Next::Guest(v.vt));
    let controls = |v: &Vmm| vmcs(&v.k, v.vi, field::PROC_BASED_CONTROLS);
    assert_ne!(controls(&v) & proc_based::NMI_WINDOW_EXITING, 0);
    assert_eq!(controls(&v) & proc_based::INTR_WINDOW_EXITING, 0);
    assert_eq!(
        exit(&mut v.k, reason::NMI_WINDOW, 0, 0),
        Next::User(run.server)
    );
    assert_eq!(controls(&v) & proc_based::NMI_WINDOW_EXITING, 0);
    assert_eq!(take(&mut v, &run).0, reason::NMI_WINDOW);
}

#[test]
fn without_virtual_nmis_the_nmi_window_is_the_interrupt_window() {
    let (mut v, run) = at_first_exit(false);
    let r = ExitReply {
        flags: reply::ADVANCE_RIP | reply::NMI_WINDOW,
        ..ExitReply::default()
    };
    assert_eq!(reply_with(&mut v.k, &r), Next::Guest(v.vt));
    let controls = vmcs(&v.k, v.vi, field::PROC_BASED_CONTROLS);
    assert_eq!(
        controls & proc_based::NMI_WINDOW_EXITING,
        0,
        "VM entry would fail"
    );
    assert_ne!(controls & proc_based::INTR_WINDOW_EXITING, 0);
    assert_eq!(
        exit(&mut v.k, reason::INTERRUPT_WINDOW, 0, 0),
        Next::User(run.server)
    );
    assert_eq!(take(&mut v, &run).0, reason::INTERRUPT_WINDOW);
}

#[test]
fn the_nmi_window_flag_carries_no_value_and_round_trips() {
    let r = ExitReply {
        flags: reply::NMI_WINDOW | reply::INTR_WINDOW | reply::SET_DEADLINE,
        deadline: 9,
        ..ExitReply::default()
    };
    let mut buf = [0u8; ExitReply::MAX_SIZE];
    let n = r.encode(&mut buf).unwrap();
    assert_eq!(n, 8 + 8, "only the deadline has a value");
    assert_eq!(ExitReply::decode(&buf[..n]), Ok(r));
    assert_eq!(reply::ALL & reply::NMI_WINDOW, reply::NMI_WINDOW);
    assert_eq!(reply::ALL.count_ones(), 16, "every flag a distinct bit");
}

#[test]
fn the_exit_message_carries_the_interruptibility_state() {
    let (mut v, run) = at_first_exit_with(&[reason::HLT]);
    assert_eq!(
        reply_with(&mut v.k, &ExitReply::advance()),
        Next::Guest(v.vt)
    );
    hw(&mut v).insert(field::GUEST_INTERRUPTIBILITY, 0b1001);
    assert_eq!(exit(&mut v.k, reason::HLT, 0, 1), Next::User(run.server));
    let (next, _) = sys(&mut v.k, Sys::Recv, [run.server_ep, DATA, 512, 0, 0, 0]);
    assert_eq!(next, Next::User(run.server));
    let (m, _) = received(&v.k, run.server);
    assert_eq!(m.reason, reason::HLT);
    assert_eq!(m.instruction_len, 1);
    assert_eq!(
        m.interruptibility,
        interruptibility::NMI | interruptibility::STI
    );
    assert!(!interruptibility::nmi_ok(m.interruptibility));
    assert!(interruptibility::nmi_ok(0));
}

/// An NMI injection is refused (the vCPU stops with `BAD_REPLY` instead of a failed VM
/// entry) in the states VM entry refuses it in, and taken in the others.
#[test]
fn an_nmi_is_injected_only_where_the_guest_can_take_it() {
    const NMI: u64 = 0x8000_0202;
    // (interruptibility, advance RIP, accepted)
    for (blocking, advance, ok) in [
        (0u64, false, true),
        (u64::from(interruptibility::NMI), false, false),
        (u64::from(interruptibility::MOV_SS), false, false),
        (u64::from(interruptibility::STI), false, false),
        // Advancing RIP ends the one-instruction blockings, not NMI blocking.
        (u64::from(interruptibility::MOV_SS), true, true),
        (
            u64::from(interruptibility::NMI | interruptibility::STI),
            true,
            false,
        ),
    ] {
        let (mut v, run) = at_first_exit(false);
        with_virtual_nmis(&mut v);
        hw(&mut v).insert(field::GUEST_INTERRUPTIBILITY, blocking);
        let mut flags = reply::INJECT;
        if advance {
            flags |= reply::ADVANCE_RIP;
        }
        let r = ExitReply {
            flags,
            inject: NMI,
            ..ExitReply::default()
        };
        let next = reply_with(&mut v.k, &r);
        let case = format!("blocking {blocking:#x}, advance {advance}");
        if ok {
            assert_eq!(next, Next::Guest(v.vt), "{case}");
            assert_eq!(vmcs(&v.k, v.vi, field::VM_ENTRY_INTR_INFO), NMI, "{case}");
            continue;
        }
        assert_eq!(next, Next::User(run.server), "{case}");
        assert_eq!(
            v.k.thread(v.vt).unwrap().state,
            ThreadState::Suspended,
            "{case}"
        );
        let (next, _) = sys(&mut v.k, Sys::Recv, [run.server_ep, DATA, 512, 0, 0, 0]);
        assert_eq!(next, Next::User(run.runner));
        assert_eq!(run_result(&v.k, run.runner).0, stop::BAD_REPLY, "{case}");
    }
}

#[test]
fn an_external_interrupt_is_not_injected_under_sti_or_mov_ss_blocking() {
    for (blocking, ok) in [(0u64, true), (1, false), (2, false), (8, true)] {
        let (mut v, run) = at_first_exit(false);
        hw(&mut v).insert(field::GUEST_INTERRUPTIBILITY, blocking);
        let r = ExitReply {
            flags: reply::INJECT,
            inject: 0x8000_0030,
            ..ExitReply::default()
        };
        let want = if ok {
            Next::Guest(v.vt)
        } else {
            Next::User(run.server)
        };
        assert_eq!(reply_with(&mut v.k, &r), want, "blocking {blocking}");
    }
}

#[test]
fn an_nmi_a_host_interrupt_cut_short_is_delivered_again_with_nmi_blocking_cleared() {
    let (mut v, _run) = at_first_exit(false);
    with_virtual_nmis(&mut v);
    assert_eq!(
        reply_with(&mut v.k, &ExitReply::advance()),
        Next::Guest(v.vt)
    );
    hw(&mut v).insert(field::IDT_VECTORING_INFO, 0x8000_0202);
    hw(&mut v).insert(field::GUEST_INTERRUPTIBILITY, 0b1000);
    assert_eq!(
        exit(&mut v.k, reason::EXTERNAL_INTERRUPT, 0, 0),
        Next::Guest(v.vt)
    );
    assert_eq!(vmcs(&v.k, v.vi, field::VM_ENTRY_INTR_INFO), 0x8000_0202);
    assert_eq!(vmcs(&v.k, v.vi, field::GUEST_INTERRUPTIBILITY), 0);
}

/// An EPT violation during the guest's IRET (its stack page not yet mapped): the CPU ended
/// the NMI blocking the IRET was ending, and says so in bit 12 of the qualification. The
/// IRET runs again after the fault is handled, so the blocking is set again meanwhile.
#[test]
fn an_iret_that_faulted_keeps_its_nmi_blocking() {
    let (mut v, run) = at_first_exit_with(&[reason::EPT_VIOLATION]);
    with_virtual_nmis(&mut v);
    assert_eq!(
        reply_with(&mut v.k, &ExitReply::advance()),
        Next::Guest(v.vt)
    );
    let blocking = |v: &Vmm| vmcs(&v.k, v.vi, field::GUEST_INTERRUPTIBILITY);
    assert_eq!(
        exit(&mut v.k, reason::EPT_VIOLATION, (1 << 12) | 0x2, 0),
        Next::User(run.server)
    );
    assert_eq!(blocking(&v), u64::from(interruptibility::NMI));
    take(&mut v, &run);
    assert_eq!(
        reply_with(&mut v.k, &ExitReply::resume()),
        Next::Guest(v.vt)
    );
    // Without bit 12, or while an event was being delivered, nothing changes.
    hw(&mut v).insert(field::GUEST_INTERRUPTIBILITY, 0);
    assert_eq!(
        exit(&mut v.k, reason::EPT_VIOLATION, 0x2, 0),
        Next::User(run.server)
    );
    assert_eq!(blocking(&v), 0);
    take(&mut v, &run);
    assert_eq!(
        reply_with(&mut v.k, &ExitReply::resume()),
        Next::Guest(v.vt)
    );
    hw(&mut v).insert(field::IDT_VECTORING_INFO, 0x8000_0030);
    assert_eq!(
        exit(&mut v.k, reason::EPT_VIOLATION, (1 << 12) | 0x2, 0),
        Next::User(run.server)
    );
    assert_eq!(blocking(&v), 0);
}

/// An NMI written with `VcpuState`, then NMI blocking written too: VM entry would refuse it,
/// so the entry fails cleanly (as the hardware reports an invalid control field).
#[test]
fn an_nmi_written_with_vcpu_state_under_nmi_blocking_fails_the_entry() {
    let mut v = vmm();
    with_virtual_nmis(&mut v);
    write_state(
        &mut v.k,
        v.vcpu,
        &[(field::VM_ENTRY_INTR_INFO, 0x8000_0202)],
    );
    write_state(
        &mut v.k,
        v.vcpu,
        &[(
            field::GUEST_INTERRUPTIBILITY,
            u64::from(interruptibility::NMI),
        )],
    );
    super::tests_vm::assert_entry_refused(&mut v);
}

/// A shadow-paging #PF (or an EPT violation) while an injected NMI was being delivered: the
/// CPU set NMI blocking for it; the handler delivers it again, which VM entry would refuse
/// under that blocking, so the kernel clears it at the exit.
#[test]
fn an_nmi_whose_delivery_faulted_can_be_delivered_again_by_the_handler() {
    let (mut v, run) = at_first_exit_with(&[reason::EXCEPTION_NMI]);
    with_virtual_nmis(&mut v);
    assert_eq!(
        reply_with(&mut v.k, &ExitReply::advance()),
        Next::Guest(v.vt)
    );
    hw(&mut v).insert(field::IDT_VECTORING_INFO, 0x8000_0202);
    hw(&mut v).insert(field::EXIT_INTR_INFO, 0x8000_0b0e);
    hw(&mut v).insert(
        field::GUEST_INTERRUPTIBILITY,
        u64::from(interruptibility::NMI),
    );
    assert_eq!(
        exit(&mut v.k, reason::EXCEPTION_NMI, 0x1000, 0),
        Next::User(run.server)
    );
    assert_eq!(vmcs(&v.k, v.vi, field::GUEST_INTERRUPTIBILITY), 0);
    take(&mut v, &run);
    let again = ExitReply {
        flags: reply::INJECT,
        inject: 0x8000_0202,
        ..ExitReply::default()
    };
    assert_eq!(reply_with(&mut v.k, &again), Next::Guest(v.vt));
    assert_eq!(vmcs(&v.k, v.vi, field::VM_ENTRY_INTR_INFO), 0x8000_0202);
}
