//! Host tests of shadow-paged VMs (`shadow.rs` and its use in `vm.rs`): the guest's view of
//! its paging registers against the hardware's, roots accepted only from the MMU endpoint and
//! only inside the pool, and the audit before entry.

use abi::vmx::{field, group, reason, reply, stop, vm_flags, ExitReply, REPLY_LABEL};
use abi::{Error, Sys, NO_CAP};

use super::kernel::{Kernel, Next};
use super::machine::Machine;
use super::tests::{ok, status, sys, write_user, Model, DATA};
use super::tests_vm::{
    exit, read_one, received, run, run_result, spawn_server, vmcs, vmm_with, write_state, Running,
    Vmm, RAM_PAGES,
};
use crate::PAGE_SIZE;

use abi::cpu::cr0::{NE as CR0_NE, PE as CR0_PE, PG as CR0_PG, WP as CR0_WP};
use abi::cpu::cr4::{PAE as CR4_PAE, PSE as CR4_PSE, VMXE as CR4_VMXE};
use abi::cpu::efer::{LMA as EFER_LMA, LME as EFER_LME, NXE as EFER_NXE};
const ENTRY_IA32E: u64 = 1 << 9;
const POOL_PAGES: u64 = 4;

fn empty_root(v: &Vmm) -> u64 {
    let vm = v.k.vms.iter().find_map(|s| s.obj.as_ref()).unwrap();
    vm.shadow.expect("a shadow VM").empty_root
}

#[test]
fn the_guest_sees_its_own_paging_state_and_the_hardware_stays_paged() {
    let mut v = vmm_with(vm_flags::SHADOW);
    let root = empty_root(&v);
    let k = &mut v.k;
    assert_ne!(root, 0);
    assert_eq!(
        vmcs(k, v.vi, field::GUEST_CR3),
        root,
        "starts on the empty root"
    );
    assert_eq!(read_one(k, v.vcpu, field::SHADOW_CR3), root);
    assert_ne!(vmcs(k, v.vi, field::EXCEPTION_BITMAP) & (1 << 14), 0);
    // Paging off in the guest: paged (and WP) in hardware.
    write_state(k, v.vcpu, &[(field::GUEST_CR0, CR0_PE | 0x10)]);
    let hw0 = vmcs(k, v.vi, field::GUEST_CR0);
    assert_eq!(hw0, CR0_PE | 0x10 | CR0_PG | CR0_WP | CR0_NE);
    assert_eq!(vmcs(k, v.vi, field::CR0_READ_SHADOW), CR0_PE | 0x10);
    let mask0 = vmcs(k, v.vi, field::CR0_GUEST_HOST_MASK);
    assert_eq!(mask0 & (CR0_PG | CR0_WP), CR0_PG | CR0_WP);
    // CR3 is the guest's: the hardware one does not move.
    write_state(k, v.vcpu, &[(field::GUEST_CR3, 0x5000)]);
    assert_eq!(read_one(k, v.vcpu, field::GUEST_CR3), 0x5000);
    assert_eq!(vmcs(k, v.vi, field::GUEST_CR3), root);
    // PSE is the guest's; the hardware always has PAE and never PSE.
    write_state(k, v.vcpu, &[(field::GUEST_CR4, CR4_PSE)]);
    assert_eq!(vmcs(k, v.vi, field::GUEST_CR4), CR4_PAE | CR4_VMXE);
    assert_eq!(vmcs(k, v.vi, field::CR4_READ_SHADOW), CR4_PSE);
    // Long mode follows the guest's EFER.LME and CR0.PG; the hardware has NXE too.
    write_state(k, v.vcpu, &[(field::GUEST_IA32_EFER, EFER_LME)]);
    assert_eq!(vmcs(k, v.vi, field::VM_ENTRY_CONTROLS) & ENTRY_IA32E, 0);
    assert_eq!(vmcs(k, v.vi, field::GUEST_IA32_EFER), EFER_NXE);
    write_state(k, v.vcpu, &[(field::GUEST_CR0, CR0_PE | CR0_PG)]);
    assert_ne!(vmcs(k, v.vi, field::VM_ENTRY_CONTROLS) & ENTRY_IA32E, 0);
    assert_eq!(
        vmcs(k, v.vi, field::GUEST_IA32_EFER),
        EFER_LME | EFER_LMA | EFER_NXE
    );
    assert_eq!(
        read_one(k, v.vcpu, field::GUEST_IA32_EFER),
        EFER_LME | EFER_LMA
    );
    // The VMM cannot switch #PF exits off.
    write_state(k, v.vcpu, &[(field::EXCEPTION_BITMAP, 0)]);
    assert_ne!(vmcs(k, v.vi, field::EXCEPTION_BITMAP) & (1 << 14), 0);
    // CR2 is kept per vCPU.
    write_state(k, v.vcpu, &[(field::GUEST_CR2, 0xdead_b000)]);
    assert_eq!(read_one(k, v.vcpu, field::GUEST_CR2), 0xdead_b000);
}

/// A shadow VM whose pool and MMU endpoint are set (`mmu_ep`: the test's endpoint `v.ep` or
/// a second one), with #PF exits routed to `v.ep`, running. Returns the pool's physical base.
pub(super) fn running_shadow(flags: u64, mmu_is_portal: bool) -> (Vmm, Running, u64) {
    let mut v = vmm_with(vm_flags::SHADOW | flags);
    let k = &mut v.k;
    let pool = ok(&sys(k, Sys::MemAlloc, [POOL_PAGES, 0, 0, 0, 0, 0]).1);
    let pool_phys = sys(k, Sys::MemInfo, [pool, 0, 0, 0, 0, 0]).1.rsi;
    let other = ok(&sys(k, Sys::EndpointCreate, [0; 6]).1);
    let mmu = if mmu_is_portal { v.ep } else { other };
    // Not for an EPT VM; once set, again only with the same MMU endpoint.
    let ram = ok(&sys(k, Sys::MemAlloc, [RAM_PAGES, 0, 0, 0, 0, 0]).1);
    let ept_vm = ok(&sys(k, Sys::VmCreate, [ram, 0, abi::cap::slot::VMX, 0, 0, 0]).1);
    assert_eq!(
        status(&sys(k, Sys::VmSetShadow, [ept_vm, pool, mmu, 0, 0, 0]).1),
        Err(Error::InvalidArgument)
    );
    ok(&sys(k, Sys::VmSetShadow, [v.vm, pool, mmu, 0, 0, 0]).1);
    let stranger = if mmu_is_portal { other } else { v.ep };
    assert_eq!(
        status(&sys(k, Sys::VmSetShadow, [v.vm, pool, stranger, 0, 0, 0]).1),
        Err(Error::Busy)
    );
    ok(&sys(k, Sys::VmSetShadow, [v.vm, pool, mmu, 0, 0, 0]).1);
    let portal = [
        v.vcpu,
        reason::EXCEPTION_NMI as u64,
        v.ep,
        (group::QUAL | group::CRS) as u64,
        0,
        0,
    ];
    ok(&sys(k, Sys::VcpuPortal, portal).1);
    write_state(k, v.vcpu, &[(field::GUEST_CR3, 0x7000)]);
    let r = run(&mut v, false);
    (v, r, pool_phys)
}

/// A #PF exit answered with a new shadow root.
fn fault_and_set_root(k: &mut Kernel<Model>, r: &Running, root: u64) -> Next {
    exit(k, reason::EXCEPTION_NMI, 0x1234, 0);
    let (m, _) = received(k, r.server);
    assert_eq!(m.cr3, 0x7000, "the message carries the guest's CR3");
    let reply = ExitReply {
        flags: reply::SET_SHADOW_CR3 | reply::SET_CR2,
        shadow_cr3: root,
        cr2: 0x1234,
        ..ExitReply::default()
    };
    // Reply and wait for the next exit, as the MMU service does.
    reply_recv(k, r, &reply)
}

#[test]
fn real_mode_runs_on_the_vms_ept_with_unrestricted_guest() {
    use abi::vmx::proc_based2::REAL_MODE;
    let mut v = vmm_with(vm_flags::SHADOW);
    let k = &mut v.k;
    let proc2 = |k: &mut Kernel<Model>, vi| vmcs(k, vi, field::PROC_BASED_CONTROLS2) & REAL_MODE;
    write_state(k, v.vcpu, &[(field::GUEST_CR0, CR0_PE | 0x10)]);
    assert_eq!(proc2(k, v.vi), 0, "protected mode: shadow tables, no EPT");
    // The EPT holds what real mode sees: a shadow VM maps RAM like an EPT VM.
    let rwx = 0b111;
    assert_eq!(
        status(&sys(k, Sys::VmMapRam, [v.vm, 0, 1, rwx, 0, 0]).1),
        Ok(())
    );
    // Real mode (as after a SIPI): EPT and unrestricted guest, the hardware CR0 the guest's.
    write_state(k, v.vcpu, &[(field::GUEST_CR0, 0x10)]);
    assert_eq!(proc2(k, v.vi), REAL_MODE);
    assert_eq!(vmcs(k, v.vi, field::GUEST_CR0), 0x10 | CR0_NE);
    assert_eq!(vmcs(k, v.vi, field::CR0_READ_SHADOW), 0x10);
    // A write that stays in real mode keeps it; leaving it goes back to shadow paging.
    write_state(k, v.vcpu, &[(field::GUEST_CR0, 0x12)]);
    assert_eq!(proc2(k, v.vi), REAL_MODE);
    write_state(k, v.vcpu, &[(field::GUEST_CR0, CR0_PE | 0x10)]);
    assert_eq!(proc2(k, v.vi), 0);
    assert_eq!(
        vmcs(k, v.vi, field::GUEST_CR0),
        CR0_PE | 0x10 | CR0_PG | CR0_WP | CR0_NE
    );
}

#[test]
fn roots_come_from_the_mmu_endpoint_and_lie_in_the_pool() {
    let (mut v, r, pool_phys) = running_shadow(0, true);
    let k = &mut v.k;
    let root = pool_phys + PAGE_SIZE;
    assert_eq!(fault_and_set_root(k, &r, root), Next::Guest(v.vt));
    assert_eq!(vmcs(k, v.vi, field::GUEST_CR3), root);
    assert_eq!(vmcs(k, v.vi, field::GUEST_CR2), 0x1234);
    // A root in guest RAM would let the guest write its own tables: refused, and the vCPU
    // stops with the refused value.
    let next = fault_and_set_root(k, &r, v.ram_phys);
    assert_ne!(next, Next::Guest(v.vt));
    assert_eq!(
        run_result(k, r.runner),
        (stop::BAD_ROOT, reason::EXCEPTION_NMI as u64, v.ram_phys)
    );
    assert_eq!(vmcs(k, v.vi, field::GUEST_CR3), root, "nothing changed");
}

#[test]
fn a_restarted_mmu_service_registers_again_and_no_vcpu_keeps_an_old_root() {
    use super::objects::ThreadState;
    let (mut v, r, pool_phys) = running_shadow(0, true);
    let k = &mut v.k;
    let old_root = pool_phys + PAGE_SIZE;
    assert_eq!(fault_and_set_root(k, &r, old_root), Next::Guest(v.vt));
    // The next fault reaches the MMU service, which dies before it answers (say, halfway
    // through writing shadow entries of the old pool).
    exit(k, reason::EXCEPTION_NMI, 0x5678, 0);
    let (first, _) = received(k, r.server);
    let regs = k.thread(r.server).unwrap().regs;
    k.on_user_fault(&regs, 14, 4, 0xdead);
    assert!(matches!(
        k.thread(v.vt).unwrap().state,
        ThreadState::BlockedSend { call: true, .. }
    ));
    assert_eq!(vmcs(k, v.vi, field::GUEST_CR3), old_root);
    // The supervisor starts the next generation; before its first receive it registers the
    // VM again (here with a fresh pool): every vCPU of the VM is back on the empty root.
    k.machine.ticks = 1;
    assert_eq!(k.on_tick(None), Next::User(v.sup));
    let (_, server_ep) = spawn_server(&mut v, 2);
    let k = &mut v.k;
    let pool = ok(&sys(k, Sys::MemAlloc, [POOL_PAGES, 0, 0, 0, 0, 0]).1);
    let new_pool = sys(k, Sys::MemInfo, [pool, 0, 0, 0, 0, 0]).1.rsi;
    ok(&sys(k, Sys::VmSetShadow, [v.vm, pool, v.ep, 0, 0, 0]).1);
    assert_eq!(vmcs(k, v.vi, field::GUEST_CR3), empty_root(&v));
    let k = &mut v.k;
    // The re-sent exit reaches the new instance, which answers it from the new pool; a root
    // in the old pool is refused from now on.
    let (next, _) = sys(k, Sys::Sleep, [1, 0, 0, 0, 0, 0]);
    let Next::User(server2) = next else {
        panic!("{next:?}")
    };
    let (next, _) = sys(k, Sys::Recv, [server_ep, DATA, 512, 0, 0, 0]);
    assert_eq!(next, Next::User(server2));
    let (again, _) = received(k, server2);
    assert_eq!(again, first, "the same exit, once more");
    let r2 = Running {
        server: server2,
        server_ep,
        ..r
    };
    let answer = |k: &mut Kernel<Model>, root: u64| {
        let reply = ExitReply {
            flags: reply::SET_SHADOW_CR3,
            shadow_cr3: root,
            ..ExitReply::default()
        };
        reply_recv(k, &r2, &reply)
    };
    assert_eq!(answer(k, new_pool + PAGE_SIZE), Next::Guest(v.vt));
    assert_eq!(vmcs(k, v.vi, field::GUEST_CR3), new_pool + PAGE_SIZE);
    exit(k, reason::EXCEPTION_NMI, 0x9abc, 0);
    assert_ne!(answer(k, old_root), Next::Guest(v.vt));
    assert_eq!(run_result(k, r.runner).0, stop::BAD_ROOT);
}

#[test]
fn a_root_from_another_endpoint_is_refused() {
    let (mut v, r, pool_phys) = running_shadow(0, false);
    let k = &mut v.k;
    let next = fault_and_set_root(k, &r, pool_phys);
    assert_ne!(next, Next::Guest(v.vt));
    assert_eq!(run_result(k, r.runner).0, stop::BAD_ROOT);
}

#[test]
fn the_audit_stops_a_vm_whose_tables_leave_ram_and_pool() {
    let (mut v, r, pool_phys) = running_shadow(vm_flags::AUDIT, true);
    let k = &mut v.k;
    // The guest is in long mode: a 4-level root at pool page 0 -> table at page 1 -> leaf in
    // RAM.
    write_state(k, v.vcpu, &[(field::GUEST_IA32_EFER, EFER_LME)]);
    write_state(k, v.vcpu, &[(field::GUEST_CR0, CR0_PE | CR0_PG)]);
    let put = |k: &mut Kernel<Model>, at: u64, e: u64| k.machine.write_phys(at, &e.to_le_bytes());
    put(k, pool_phys, (pool_phys + PAGE_SIZE) | 3);
    put(k, pool_phys + PAGE_SIZE + 8, v.ram_phys | 0x83);
    // 2 MiB page: more than the 16 pages of RAM.
    assert_ne!(fault_and_set_root(k, &r, pool_phys), Next::Guest(v.vt));
    assert_eq!(
        run_result(k, r.runner),
        (
            stop::AUDIT,
            reason::EXCEPTION_NMI as u64,
            pool_phys + PAGE_SIZE + 8
        )
    );
}

#[test]
fn the_audit_lets_sound_tables_through() {
    let (mut v, r, pool_phys) = running_shadow(vm_flags::AUDIT, true);
    let k = &mut v.k;
    let put = |k: &mut Kernel<Model>, at: u64, e: u64| k.machine.write_phys(at, &e.to_le_bytes());
    // 32-bit guest: a PAE root page -> page directory -> page table -> a RAM page.
    put(k, pool_phys, (pool_phys + PAGE_SIZE) | 1);
    put(k, pool_phys + PAGE_SIZE, (pool_phys + 2 * PAGE_SIZE) | 3);
    put(
        k,
        pool_phys + 2 * PAGE_SIZE,
        (v.ram_phys + 3 * PAGE_SIZE) | 3,
    );
    assert_eq!(fault_and_set_root(k, &r, pool_phys), Next::Guest(v.vt));
    assert_eq!(vmcs(k, v.vi, field::GUEST_CR3), pool_phys);
}

#[test]
fn a_paging_change_behind_the_mmus_back_drops_the_root_and_a_rewrite_does_not() {
    let (mut v, r, pool_phys) = running_shadow(0, true);
    let k = &mut v.k;
    let root = pool_phys + PAGE_SIZE;
    assert_eq!(fault_and_set_root(k, &r, root), Next::Guest(v.vt));
    let empty = {
        let vm = k.vms.iter().find_map(|s| s.obj.as_ref()).unwrap();
        vm.shadow.unwrap().empty_root
    };
    // The VMM's reply to a WRMSR that writes EFER with the value it has: the root stays.
    let efer = k.vcpus[v.vi.index()].obj.as_ref().unwrap().guest_efer;
    let same = ExitReply {
        flags: reply::SET_EFER,
        efer,
        ..ExitReply::default()
    };
    exit(k, reason::EXCEPTION_NMI, 0, 0);
    assert_eq!(reply_recv(k, &r, &same), Next::Guest(v.vt));
    assert_eq!(vmcs(k, v.vi, field::GUEST_CR3), root);
    // EFER.NXE changes: the empty root, until the MMU names a root for the new state.
    let nxe = ExitReply {
        flags: reply::SET_EFER,
        efer: efer | EFER_NXE,
        ..ExitReply::default()
    };
    exit(k, reason::EXCEPTION_NMI, 0, 0);
    assert_eq!(reply_recv(k, &r, &nxe), Next::Guest(v.vt));
    assert_eq!(vmcs(k, v.vi, field::GUEST_CR3), empty);
    // CR0.TS is not a paging bit: no drop either.
    assert_eq!(fault_and_set_root(k, &r, root), Next::Guest(v.vt));
    let cr0 = vmcs(k, v.vi, field::CR0_READ_SHADOW);
    let ts = ExitReply {
        flags: reply::SET_CR0,
        cr0: cr0 ^ (1 << 3),
        ..ExitReply::default()
    };
    exit(k, reason::EXCEPTION_NMI, 0, 0);
    assert_eq!(reply_recv(k, &r, &ts), Next::Guest(v.vt));
    assert_eq!(vmcs(k, v.vi, field::GUEST_CR3), root);
}

/// The server answers the pending exit with `reply` and waits for the next one.
pub(super) fn reply_recv(k: &mut Kernel<Model>, r: &Running, reply: &ExitReply) -> Next {
    received(k, r.server);
    let mut buf = [0u8; ExitReply::MAX_SIZE];
    let n = reply.encode(&mut buf).unwrap();
    write_user(k, r.server, DATA, &buf[..n]);
    let a = [r.server_ep, DATA, n as u64, 512, REPLY_LABEL, NO_CAP];
    sys(k, Sys::ReplyRecv, a).0
}

#[test]
fn a_shadow_pool_cannot_be_revoked_while_its_vm_lives() {
    let mut v = vmm_with(vm_flags::SHADOW);
    let k = &mut v.k;
    let pool = ok(&sys(k, Sys::MemAlloc, [POOL_PAGES, 0, 0, 0, 0, 0]).1);
    ok(&sys(k, Sys::VmSetShadow, [v.vm, pool, v.ep, 0, 0, 0]).1);
    // The hardware walks the pool's frames from the vCPU's root: they must not be freed.
    assert_eq!(
        status(&sys(k, Sys::CapRevoke, [pool, 0, 0, 0, 0, 0]).1),
        Err(Error::Busy)
    );
    ok(&sys(k, Sys::CapRevoke, [v.vm, 0, 0, 0, 0, 0]).1);
    ok(&sys(k, Sys::CapRevoke, [pool, 0, 0, 0, 0, 0]).1);
}
