//! The one-pass exit paths (`exit_to_waiting_handler` on the way out of the guest and
//! `vcpu_replied` on the way back in) against the general path: the same run of exits and
//! replies, with the fast paths on and off, leaves the same state after every step.

use std::format;
use std::string::String;
use std::vec::Vec;

use abi::vmx::{
    field, group, interruptibility, pin_based, reason, reply, ExitReply, Gpr, REPLY_LABEL,
};
use abi::{Rights, Sys, NO_CAP};

use super::kernel::{Kernel, Next};
use super::tests::{ok, read_user, sys, write_user, Model, DATA};
use super::tests_vm::{exit, run, vmm, Running, Vmm};

/// What one step leaves: the next thread, the vCPU thread (registers, state, held message),
/// the vCPU (counts, last exit, run state, pending call, VMCS) and the handler (registers,
/// state, whom it owes a reply, its receive buffer).
fn snapshot(k: &Kernel<Model>, v: &Vmm, run: &Running, next: Next) -> String {
    let vt = k.thread(v.vt).unwrap();
    let vc = k.vcpus[v.vi.index()].obj.as_ref().unwrap();
    let s = k.thread(run.server).unwrap();
    format!(
        "{next:?} current {:?}\nvt {:?} {:?} msg {} {:#x} {:#x} {:?}\nvcpu {:?} {:?} {:?} {:?} {:?} {}\nhw {:?}\nserver {:?} {:?} {:?} {:?}",
        k.current,
        vt.regs,
        vt.state,
        vt.msg.len,
        vt.msg.label,
        vt.msg.badge,
        &vt.msg.data[..vt.msg.len],
        &vc.exits[..],
        vc.last_exit,
        vc.run,
        vc.call_result,
        vc.call_ep,
        vc.forwarded,
        vc.hw,
        s.regs,
        s.state,
        s.reply_to,
        read_user(k, run.server, DATA, 512),
    )
}

/// The handler answers with `r` by `reply_recv`, offering a receive buffer of `buf_cap`.
fn reply_recv(k: &mut Kernel<Model>, run: &Running, r: &ExitReply, buf_cap: u64) -> Next {
    let mut buf = [0u8; ExitReply::MAX_SIZE];
    let n = r.encode(&mut buf).unwrap();
    write_user(k, run.server, DATA, &buf[..n]);
    let a = [run.server_ep, DATA, n as u64, buf_cap, REPLY_LABEL, NO_CAP];
    sys(k, Sys::ReplyRecv, a).0
}

/// One run of exits and replies: every exit to a waiting handler (the fast way out), among
/// them an EPT violation and an exception whose NMI blocking the kernel mends; simple
/// replies with and without RSP (the fast way in), replies that are not simple, a message
/// the handler's buffer cannot take. The snapshots after each step.
fn exits_and_replies(fast: bool) -> Vec<String> {
    let mut v = vmm();
    v.k.fast_ipc = fast;
    let badged = ok(&sys(
        &mut v.k,
        Sys::CapCopy,
        [v.ep, Rights::SEND.bits(), 0x77, 0, 0, 0],
    )
    .1);
    for (r, cap, mask) in [
        (reason::CPUID, v.ep, group::GPRS | group::RIP),
        (reason::VMCALL, badged, group::ALL),
        (reason::HLT, v.ep, group::GPRS),
        (reason::IO, v.ep, 0),
        (
            reason::EPT_VIOLATION,
            v.ep,
            group::RIP | group::QUAL | group::ADDR,
        ),
        (reason::EXCEPTION_NMI, v.ep, group::RIP | group::QUAL),
    ] {
        let portal = [v.vcpu, r as u64, cap, mask as u64, 0, 0];
        ok(&sys(&mut v.k, Sys::VcpuPortal, portal).1);
    }
    let run = run(&mut v, false);
    let mut seen = Vec::new();
    // Virtual NMIs: the exits below that mend NMI blocking do.
    let vcpu = v.k.vcpus[v.vi.index()].obj.as_mut().unwrap();
    vcpu.hw
        .insert(field::PIN_BASED_CONTROLS, pin_based::VIRTUAL_NMIS);
    // The VMCS fields each exit finds: an EPT violation during the guest's IRET (bit 12 of
    // its qualification: blocking set again), an exception that cut an NMI's delivery short
    // (blocking cleared).
    let nmi = u64::from(interruptibility::NMI);
    let setups: [&[(u64, u64)]; 8] = [
        &[],
        &[],
        &[(field::GUEST_INTERRUPTIBILITY, 1)],
        &[],
        &[(field::GUEST_PHYSICAL_ADDRESS, 0xfee0_0000)],
        &[
            (field::GUEST_INTERRUPTIBILITY, nmi),
            (field::IDT_VECTORING_INFO, 0x8000_0202),
        ],
        &[],
        &[],
    ];
    let steps: [(u32, u64, u64, ExitReply, u64); 8] = {
        let mut simple = ExitReply::advance();
        simple.set_gpr(Gpr::Rbx, 0xbb);
        simple.set_gpr(Gpr::R15, 0xf15);
        let mut with_rsp = ExitReply::advance();
        with_rsp.set_gpr(Gpr::Rsp, 0x7000);
        with_rsp.set_gpr(Gpr::Rax, 0xa);
        let set_rip = ExitReply {
            flags: reply::SET_RIP,
            rip: 0x1100,
            ..ExitReply::default()
        };
        [
            (reason::CPUID, 0, 2, simple, 512),
            (reason::VMCALL, 0, 3, with_rsp, 512),
            (reason::HLT, 0, 1, set_rip, 512),
            (reason::IO, 0x3f8_0000, 1, ExitReply::advance(), 512),
            (
                reason::EPT_VIOLATION,
                1 << 12 | 0x181,
                0,
                ExitReply::resume(),
                512,
            ),
            (reason::EXCEPTION_NMI, 0, 0, ExitReply::resume(), 512),
            // The handler's buffer now takes 64 bytes: the VMCALL message (every group)
            // does not fit.
            (reason::CPUID, 0, 2, ExitReply::advance(), 64),
            (reason::VMCALL, 0, 3, ExitReply::advance(), 64),
        ]
    };
    for ((r, qualification, len, reply, buf_cap), setup) in steps.into_iter().zip(setups) {
        let vcpu = v.k.vcpus[v.vi.index()].obj.as_mut().unwrap();
        for &(f, value) in setup {
            vcpu.hw.insert(f, value);
        }
        let next = exit(&mut v.k, r, qualification, len);
        seen.push(snapshot(&v.k, &v, &run, next));
        if next != Next::User(run.server) {
            break;
        }
        let next = reply_recv(&mut v.k, &run, &reply, buf_cap);
        seen.push(snapshot(&v.k, &v, &run, next));
        if next != Next::Guest(v.vt) {
            break;
        }
    }
    seen
}

#[test]
fn exits_and_replies_leave_the_same_state_on_the_fast_and_the_general_path() {
    let fast = exits_and_replies(true);
    let general = exits_and_replies(false);
    assert_eq!(fast.len(), general.len());
    for (i, (a, b)) in fast.iter().zip(&general).enumerate() {
        assert_eq!(a, b, "step {i}");
    }
    // Every exit reached the handler (the one its buffer cannot take as an error, by the
    // general path) and every reply entered the guest.
    assert_eq!(fast.len(), 16);
    for (i, s) in fast.iter().enumerate() {
        let want = if i % 2 == 0 { "User(" } else { "Guest(" };
        assert!(s.starts_with(want), "step {i}: {}", &s[..40]);
    }
    assert!(
        fast[14].contains("server UserRegs { rax: 10,"),
        "{}",
        fast[14]
    );
    // The NMI blocking mended at the EPT violation (set again: the guest's IRET faulted) and
    // at the exception (cleared: the NMI it cut short was not delivered).
    let blocking = format!("{}: ", field::GUEST_INTERRUPTIBILITY);
    let nmi = u64::from(interruptibility::NMI);
    assert!(fast[8].contains(&format!("{blocking}{nmi}")), "{}", fast[8]);
    assert!(fast[10].contains(&format!("{blocking}0")), "{}", fast[10]);
}
