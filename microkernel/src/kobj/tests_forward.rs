//! Host tests of forwarding (`vm/forward.rs`, issue 12): the MMU endpoint answers an access
//! outside RAM with `reply::FORWARD` and the kernel sends the same exit, with the device's
//! address, on to the vCPU's MMIO portal; every other use of FORWARD is refused.

use abi::vmx::{field, group, reason, reply, stop, ExitReply, Gpr, PORTAL_REFLECT};
use abi::{Error, Sys, NO_CAP};

use super::kernel::Next;
use super::tests::{ok, status, sys};
use super::tests_invariants::check_invariants;
use super::tests_shadow::{reply_recv, running_shadow};
use super::tests_vm::{exit, received, run, run_result, vmcs, vmm_with, Running, Vmm};
use super::vm::{Portal, VcpuRun};

/// The MMIO portal's state groups in these tests.
const MMIO_MASK: u32 = group::ALL;
const DEVICE_GPA: u64 = 0xfebf_0010;

fn forward(gpa: u64) -> ExitReply {
    ExitReply {
        flags: reply::FORWARD,
        forward_gpa: gpa,
        ..ExitReply::default()
    }
}

/// An EPT VM whose EPT-violation portal is the test server's endpoint (standing for the MMU
/// service) and, with `mmio`, whose MMIO portal is the same endpoint; running.
fn running_ept(mmio: bool) -> (Vmm, Running) {
    let mut v = vmm_with(0);
    let k = &mut v.k;
    let mask = (group::QUAL | group::ADDR | group::RIP) as u64;
    let portal = [v.vcpu, reason::EPT_VIOLATION as u64, v.ep, mask, 0, 0];
    ok(&sys(k, Sys::VcpuPortal, portal).1);
    if mmio {
        let portal = [v.vcpu, reason::MMIO as u64, v.ep, MMIO_MASK as u64, 0, 0];
        ok(&sys(k, Sys::VcpuPortal, portal).1);
    }
    let r = run(&mut v, true);
    (v, r)
}

fn vcpu_run_state(v: &Vmm) -> VcpuRun {
    v.k.vcpus[v.vi.index()].obj.as_ref().unwrap().run
}

#[test]
fn the_mmio_portal_takes_an_endpoint_only() {
    let mut v = vmm_with(0);
    let k = &mut v.k;
    let mmio = reason::MMIO as u64;
    assert_eq!(
        status(&sys(k, Sys::VcpuPortal, [v.vcpu, mmio, PORTAL_REFLECT, 0, 0, 0]).1),
        Err(Error::InvalidArgument),
        "the kernel cannot answer a device access"
    );
    assert_eq!(
        status(&sys(k, Sys::VcpuPortal, [v.vcpu, mmio + 1, v.ep, 0, 0, 0]).1),
        Err(Error::InvalidArgument),
        "no other pseudo-reason"
    );
    let bad_mask = [v.vcpu, mmio, v.ep, (group::ALL as u64) << 1, 0, 0];
    assert_eq!(
        status(&sys(k, Sys::VcpuPortal, bad_mask).1),
        Err(Error::InvalidArgument)
    );
    let vcpu =
        |k: &super::kernel::Kernel<_>| k.vcpus[v.vi.index()].obj.as_ref().unwrap().mmio_portal;
    assert_eq!(vcpu(k), Portal::None, "nothing changed");
    ok(&sys(k, Sys::VcpuPortal, [v.vcpu, mmio, v.ep, 0x21, 0, 0]).1);
    assert!(matches!(vcpu(k), Portal::Endpoint { mask: 0x21, .. }));
    let portals = k.vcpus[v.vi.index()].obj.as_ref().unwrap().portals;
    assert!(
        portals.iter().all(|p| *p == Portal::None),
        "no exit reason's portal changed"
    );
    ok(&sys(k, Sys::VcpuPortal, [v.vcpu, mmio, NO_CAP, 0, 0, 0]).1);
    assert_eq!(vcpu(k), Portal::None);
}

#[test]
fn a_forwarded_ept_violation_reaches_the_mmio_portal_with_the_device_address() {
    let (mut v, r) = running_ept(true);
    let (k, vt, vi) = (&mut v.k, v.vt, v.vi);
    k.thread_mut(vt).unwrap().regs.rbx = 0xb0b;
    let qual = 0x182; // a write, with a valid linear address
    assert_eq!(
        exit(k, reason::EPT_VIOLATION, qual, 6),
        Next::User(r.server)
    );
    let (m, _) = received(k, r.server);
    assert_eq!(m.mask, group::QUAL | group::ADDR | group::RIP);
    // The "MMU service" forwards: the same exit comes back through the MMIO portal.
    reply_recv(k, &r, &forward(DEVICE_GPA));
    let (m, _) = received(k, r.server);
    assert_eq!(
        m.basic_reason(),
        reason::EPT_VIOLATION,
        "the same basic reason"
    );
    assert_eq!(m.mask, MMIO_MASK, "the MMIO portal's groups");
    assert_eq!(m.gpa, DEVICE_GPA, "the forwarded address");
    assert_eq!((m.qualification, m.instruction_len), (qual, 6));
    assert_eq!((m.rip, m.gprs[Gpr::Rbx as usize]), (0x1000, 0xb0b));
    assert_eq!(vcpu_run_state(&v), VcpuRun::AwaitingReply);
    check_invariants(&v.k).unwrap();
    // The device handler emulates and advances: the guest goes on.
    let k = &mut v.k;
    let mut done = ExitReply::advance();
    done.set_gpr(Gpr::Rax, 0x55);
    assert_eq!(reply_recv(k, &r, &done), Next::Guest(vt));
    assert_eq!(vmcs(k, vi, field::GUEST_RIP), 0x1006);
    assert_eq!(k.thread(vt).unwrap().regs.rax, 0x55);
    // A later exit is a fresh one: it may be forwarded again.
    exit(k, reason::EPT_VIOLATION, 1, 2);
    reply_recv(k, &r, &forward(DEVICE_GPA + 8));
    let (m, _) = received(k, r.server);
    assert_eq!(
        (m.gpa, m.rip, m.instruction_len),
        (DEVICE_GPA + 8, 0x1006, 2)
    );
}

#[test]
fn a_forwarded_exit_cannot_be_forwarded_again() {
    let (mut v, r) = running_ept(true);
    let k = &mut v.k;
    exit(k, reason::EPT_VIOLATION, 1, 3);
    reply_recv(k, &r, &forward(DEVICE_GPA));
    reply_recv(k, &r, &forward(DEVICE_GPA));
    assert_eq!(run_result(k, r.runner).0, stop::BAD_REPLY);
    assert_eq!(vmcs(k, v.vi, field::GUEST_RIP), 0x1000, "nothing applied");
    check_invariants(k).unwrap();
}

#[test]
fn forward_with_other_changes_or_for_another_exit_is_a_bad_reply() {
    let mut others = [
        forward(DEVICE_GPA),
        forward(DEVICE_GPA),
        forward(DEVICE_GPA),
    ];
    others[0].flags |= reply::ADVANCE_RIP;
    others[1].set_gpr(Gpr::Rax, 1);
    others[2].flags |= reply::SET_RIP;
    others[2].rip = 0x4000;
    for bad in others {
        let (mut v, r) = running_ept(true);
        let k = &mut v.k;
        exit(k, reason::EPT_VIOLATION, 1, 3);
        reply_recv(k, &r, &bad);
        assert_eq!(run_result(k, r.runner).0, stop::BAD_REPLY, "{bad:?}");
        assert_eq!(vmcs(k, v.vi, field::GUEST_RIP), 0x1000, "nothing applied");
        assert_eq!(k.thread(v.vt).unwrap().regs.rax, 1);
    }
    // A CPUID exit is not the MMU endpoint's to forward.
    let (mut v, r) = running_ept(true);
    let k = &mut v.k;
    exit(k, reason::CPUID, 0, 2);
    reply_recv(k, &r, &forward(DEVICE_GPA));
    assert_eq!(run_result(k, r.runner).0, stop::BAD_REPLY);
}

#[test]
fn forward_without_an_mmio_portal_stops_as_unhandled_with_the_address() {
    let (mut v, r) = running_ept(false);
    let k = &mut v.k;
    exit(k, reason::EPT_VIOLATION, 1, 3);
    reply_recv(k, &r, &forward(DEVICE_GPA));
    assert_eq!(
        run_result(k, r.runner),
        (stop::UNHANDLED, reason::EPT_VIOLATION as u64, DEVICE_GPA)
    );
    assert_eq!(vmcs(k, v.vi, field::GUEST_RIP), 0x1000);
}

#[test]
fn a_shadow_vm_forwards_a_page_fault_only_from_its_mmu_endpoint() {
    // The #PF portal is the MMU endpoint.
    let (mut v, r, _) = running_shadow(0, true);
    let k = &mut v.k;
    let mmio = [v.vcpu, reason::MMIO as u64, v.ep, MMIO_MASK as u64, 0, 0];
    ok(&sys(k, Sys::VcpuPortal, mmio).1);
    exit(k, reason::EXCEPTION_NMI, 0xfebf_0000, 4);
    reply_recv(k, &r, &forward(DEVICE_GPA));
    let (m, _) = received(k, r.server);
    assert_eq!(m.basic_reason(), reason::EXCEPTION_NMI);
    assert_eq!(
        (m.gpa, m.qualification, m.mask),
        (DEVICE_GPA, 0xfebf_0000, MMIO_MASK)
    );
    assert_eq!(m.cr3, 0x7000, "the guest's own CR3");
    // The #PF portal is another endpoint than the MMU service's: refused.
    let (mut v, r, _) = running_shadow(0, false);
    let k = &mut v.k;
    let mmio = [v.vcpu, reason::MMIO as u64, v.ep, MMIO_MASK as u64, 0, 0];
    ok(&sys(k, Sys::VcpuPortal, mmio).1);
    exit(k, reason::EXCEPTION_NMI, 0xfebf_0000, 4);
    reply_recv(k, &r, &forward(DEVICE_GPA));
    assert_eq!(run_result(k, r.runner).0, stop::BAD_REPLY);
}
