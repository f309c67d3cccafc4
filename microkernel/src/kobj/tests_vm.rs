//! Host tests of VMs, vCPUs and exit portals (`vm.rs`) over the model machine of `tests.rs`:
//! the EPT and the VMCS are `BTreeMap`s there, and exits are injected with
//! [`Kernel::on_vm_exit`] while the vCPU thread is current.

use std::vec::Vec;

use abi::vmx::{
    field, group, reason, reply, stop, ExitMessage, ExitReply, Gpr, EXIT_LABEL, PORTAL_REFLECT,
    REPLY_LABEL,
};
use abi::{CapKind, Error, Rights, Sys, NO_CAP};
use proptest::prelude::*;

use super::ids::{ThreadId, VcpuId};
use super::kernel::{Kernel, Next};
use super::machine::Machine;
use super::objects::{slot_get, ThreadState};
use super::regs::UserRegs;
use super::tests::{boot, kernel, ok, read_user, status, sys, write_user, Model, DATA};
use super::vm::{VcpuRun, VmExit};
use crate::PAGE_SIZE;

pub(super) const RAM_PAGES: u64 = 16;
const RWX: u64 = 0b111;
/// The portal mask of the round-trip tests.
const MASK: u32 = group::GPRS | group::RIP;
// The architectural bits, from their one definition.
const CR0_PE: u64 = abi::cpu::cr0::PE;
const CR0_NE: u64 = abi::cpu::cr0::NE;
const CR0_PG: u64 = abi::cpu::cr0::PG;
const CR4_PAE: u64 = abi::cpu::cr4::PAE;
const CR4_VMXE: u64 = abi::cpu::cr4::VMXE;
const EFER_LME: u64 = abi::cpu::efer::LME;
const EFER_LMA: u64 = abi::cpu::efer::LMA;
const ENTRY_IA32E: u64 = 1 << 9;

/// Init (the VMM) with guest RAM, a VM with all of it mapped, one vCPU (id 3) and an endpoint.
pub(super) struct Vmm {
    pub(super) k: Kernel<Model>,
    pub(super) sup: ThreadId,
    pub(super) mem: u64,
    pub(super) ram_phys: u64,
    pub(super) vm: u64,
    pub(super) vcpu: u64,
    /// The vCPU's object index and thread.
    pub(super) vi: VcpuId,
    pub(super) vt: ThreadId,
    pub(super) ep: u64,
}

pub(super) fn vmm() -> Vmm {
    vmm_with(0)
}

/// [`vmm`] with `VmCreate` flags (`vm_flags`); an EPT VM gets all its RAM mapped.
pub(super) fn vmm_with(flags: u64) -> Vmm {
    let mut k = kernel(&["supervisor", "echo"]);
    k.machine.vmx = true;
    let sup = boot(&mut k);
    let mem = ok(&sys(&mut k, Sys::MemAlloc, [RAM_PAGES, 0, 0, 0, 0, 0]).1);
    let ram_phys = sys(&mut k, Sys::MemInfo, [mem, 0, 0, 0, 0, 0]).1.rsi;
    let vm = ok(&sys(
        &mut k,
        Sys::VmCreate,
        [mem, flags, abi::cap::slot::VMX, 0, 0, 0],
    )
    .1);
    if flags == 0 {
        ok(&sys(&mut k, Sys::VmMapRam, [vm, 0, RAM_PAGES, RWX, 0, 0]).1);
    }
    let vcpu = ok(&sys(&mut k, Sys::VcpuCreate, [vm, 3, 0, 0, 0, 0]).1);
    let vi = k
        .task(k.cur_task().unwrap())
        .unwrap()
        .caps
        .get(vcpu)
        .unwrap()
        .obj
        .id::<VcpuId>();
    let vt = k.vcpus[vi.index()].obj.as_ref().unwrap().thread;
    let ep = ok(&sys(&mut k, Sys::EndpointCreate, [0; 6]).1);
    Vmm {
        k,
        sup,
        mem,
        ram_phys,
        vm,
        vcpu,
        vi,
        vt,
        ep,
    }
}

/// `VcpuState` from the current thread with the pairs at `DATA`; returns the registers
/// afterwards and the pairs as they are in the buffer then.
pub(super) fn state(
    k: &mut Kernel<Model>,
    vcpu: u64,
    pairs: &[(u64, u64)],
    write: bool,
) -> (UserRegs, Vec<(u64, u64)>) {
    let t = k.current.unwrap();
    let bytes: Vec<u8> = pairs
        .iter()
        .flat_map(|&(f, v)| f.to_le_bytes().into_iter().chain(v.to_le_bytes()))
        .collect();
    write_user(k, t, DATA, &bytes);
    let n = pairs.len() as u64;
    let (_, r) = sys(k, Sys::VcpuState, [vcpu, DATA, n, write as u64, 0, 0]);
    let back = read_user(k, t, DATA, bytes.len())
        .chunks(16)
        .map(|c| {
            (
                u64::from_le_bytes(c[..8].try_into().unwrap()),
                u64::from_le_bytes(c[8..].try_into().unwrap()),
            )
        })
        .collect();
    (r, back)
}

pub(super) fn write_state(k: &mut Kernel<Model>, vcpu: u64, pairs: &[(u64, u64)]) {
    let (r, _) = state(k, vcpu, pairs, true);
    ok(&r);
}

pub(super) fn read_one(k: &mut Kernel<Model>, vcpu: u64, f: u64) -> u64 {
    let (r, back) = state(k, vcpu, &[(f, 0)], false);
    ok(&r);
    back[0].1
}

/// A VMCS field as the model machine holds it.
pub(super) fn vmcs(k: &Kernel<Model>, vi: VcpuId, f: u64) -> u64 {
    let v = k.vcpus[vi.index()].obj.as_ref().unwrap();
    v.hw.get(&f).copied().unwrap_or(0)
}

/// A server task and a runner thread, as they are once the guest runs.
pub(super) struct Running {
    /// The server task's cap (in init) and the server's thread.
    pub(super) task: u64,
    pub(super) server: ThreadId,
    /// The endpoint's slot in the server task.
    pub(super) server_ep: u64,
    pub(super) runner: ThreadId,
}

/// Spawns a server task (module 1) receiving on `ep`, which is bound to it; returns (task cap,
/// endpoint slot in the task).
pub(super) fn spawn_server(v: &mut Vmm, generation: u64) -> (u64, u64) {
    let k = &mut v.k;
    let task = ok(&sys(
        k,
        Sys::TaskSpawn,
        [1, generation, 5, NO_CAP, abi::cap::slot::SPAWN, 0],
    )
    .1);
    let server_ep = ok(&sys(
        k,
        Sys::TaskGrant,
        [task, v.ep, Rights::RECV.bits(), 0, 0, 0],
    )
    .1);
    ok(&sys(k, Sys::EndpointBind, [v.ep, task, 0, 0, 0, 0]).1);
    ok(&sys(k, Sys::TaskStart, [task, 0, 0, 0, 0, 0]).1);
    (task, server_ep)
}

/// Sets the guest up (RIP 0x1000, RAX 1, RSP 0x8000), optionally routes CPUID to the server
/// over `ep`, starts the server (priority 5) and a runner thread (priority 3) in init: init
/// sleeps, the server blocks receiving, the runner calls `VcpuRun` and the guest is entered.
pub(super) fn run(v: &mut Vmm, cpuid_portal: bool) -> Running {
    write_state(
        &mut v.k,
        v.vcpu,
        &[
            (field::GUEST_RIP, 0x1000),
            (field::GPR_BASE, 1),
            (field::GPR_BASE + 4, 0x8000),
            (field::GUEST_RFLAGS, 0x202),
        ],
    );
    if cpuid_portal {
        let portal = [v.vcpu, reason::CPUID as u64, v.ep, MASK as u64, 0, 0];
        ok(&sys(&mut v.k, Sys::VcpuPortal, portal).1);
    }
    let (task, server_ep) = spawn_server(v, 1);
    let k = &mut v.k;
    let runner = ok(&sys(k, Sys::ThreadCreate, [0x40_0000, DATA + 0x2000, 0, 3, 0, 0]).1);
    let runner = ThreadId::from_index(runner as usize);
    let (next, _) = sys(k, Sys::Sleep, [1, 0, 0, 0, 0, 0]);
    let Next::User(server) = next else {
        panic!("{next:?}")
    };
    assert_ne!(server, runner);
    let (next, _) = sys(k, Sys::Recv, [server_ep, DATA, 512, 0, 0, 0]);
    assert_eq!(next, Next::User(runner));
    let (next, _) = sys(k, Sys::VcpuRun, [v.vcpu, 0, 0, 0, 0, 0]);
    assert_eq!(next, Next::Guest(v.vt), "the vCPU thread enters the guest");
    assert_eq!(
        k.thread(runner).unwrap().state,
        ThreadState::BlockedRun { vcpu: v.vi }
    );
    assert_eq!(k.current, Some(v.vt));
    Running {
        task,
        server,
        server_ep,
        runner,
    }
}

pub(super) fn exit(
    k: &mut Kernel<Model>,
    reason: u32,
    qualification: u64,
    instruction_len: u64,
) -> Next {
    // As `kentry::vm_exit` does: the launch state first, the floor's fast path, then the
    // exit's handling.
    let t = k.current.expect("a guest is running");
    let tsc = k.machine.tsc();
    let exit = VmExit {
        reason,
        qualification,
        instruction_len,
        tsc,
    };
    if k.vm_exited(t, reason, tsc, || (qualification, instruction_len), |_| {})
        .is_some()
    {
        return Next::Guest(t);
    }
    k.on_vm_exit(exit)
}

/// The exit message the server thread `t` received (checks the label).
pub(super) fn received(k: &Kernel<Model>, t: ThreadId) -> (ExitMessage, Vec<u8>) {
    let r = k.thread(t).unwrap().regs;
    let len = ok(&r) as usize;
    assert_eq!(r.rsi, EXIT_LABEL);
    let bytes = read_user(k, t, DATA, len);
    (
        ExitMessage::decode(&bytes).expect("a well-formed exit message"),
        bytes,
    )
}

/// The current thread replies with `bytes`.
pub(super) fn reply_bytes(k: &mut Kernel<Model>, bytes: &[u8]) -> Next {
    let t = k.current.unwrap();
    write_user(k, t, DATA, bytes);
    let (next, r) = sys(
        k,
        Sys::Reply,
        [DATA, bytes.len() as u64, REPLY_LABEL, NO_CAP, 0, 0],
    );
    ok(&r);
    next
}

pub(super) fn reply_with(k: &mut Kernel<Model>, r: &ExitReply) -> Next {
    let mut buf = [0u8; ExitReply::MAX_SIZE];
    let n = r.encode(&mut buf).unwrap();
    reply_bytes(k, &buf[..n])
}

/// The runner's `VcpuRun` results: (stop, reason, qualification).
pub(super) fn run_result(k: &Kernel<Model>, runner: ThreadId) -> (u64, u64, u64) {
    let r = k.thread(runner).unwrap().regs;
    (ok(&r), r.rsi, r.rdx)
}

// ----- 1. VmCreate -----

#[test]
fn vm_create_needs_vmx_and_a_writable_memory_object() {
    let mut k = kernel(&["supervisor"]);
    boot(&mut k);
    let mem = ok(&sys(&mut k, Sys::MemAlloc, [4, 0, 0, 0, 0, 0]).1);
    assert_eq!(
        status(
            &sys(
                &mut k,
                Sys::VmCreate,
                [mem, 0, abi::cap::slot::VMX, 0, 0, 0]
            )
            .1
        ),
        Err(Error::NoVmx)
    );
    assert!(k.vms.iter().all(|s| s.obj.is_none()));
    k.machine.vmx = true;
    let vm = ok(&sys(
        &mut k,
        Sys::VmCreate,
        [mem, 0, abi::cap::slot::VMX, 0, 0, 0],
    )
    .1);
    let (_, r) = sys(&mut k, Sys::CapInfo, [vm, 0, 0, 0, 0, 0]);
    assert_eq!(ok(&r), CapKind::Vm as u64);
    assert_eq!(r.rsi, Rights::all().bits());
    let v = k.vms.iter().find_map(|s| s.obj.as_ref()).unwrap();
    assert_eq!(v.ram_pages, 4);
    assert!(v.ept.is_empty(), "nothing is mapped yet");
    // A read-only memory cap, a cap of the wrong kind, an empty slot.
    let ro = ok(&sys(&mut k, Sys::CapCopy, [mem, Rights::READ.bits(), 0, 0, 0, 0]).1);
    assert_eq!(
        status(&sys(&mut k, Sys::VmCreate, [ro, 0, abi::cap::slot::VMX, 0, 0, 0]).1),
        Err(Error::NoRights)
    );
    assert_eq!(
        status(&sys(&mut k, Sys::VmCreate, [vm, 0, abi::cap::slot::VMX, 0, 0, 0]).1),
        Err(Error::WrongCapKind)
    );
    assert_eq!(
        status(&sys(&mut k, Sys::VmCreate, [60, 0, abi::cap::slot::VMX, 0, 0, 0]).1),
        Err(Error::InvalidCap)
    );
    // The VM keeps its RAM alive: deleting the memory caps does not free the frames.
    let ram = k
        .task(k.cur_task().unwrap())
        .unwrap()
        .caps
        .get(mem)
        .unwrap()
        .obj;
    ok(&sys(&mut k, Sys::CapDelete, [mem, 0, 0, 0, 0, 0]).1);
    ok(&sys(&mut k, Sys::CapDelete, [ro, 0, 0, 0, 0, 0]).1);
    assert!(slot_get(&k.memory, ram).is_some());
    ok(&sys(&mut k, Sys::CapDelete, [vm, 0, 0, 0, 0, 0]).1);
    assert!(k.vms.iter().all(|s| s.obj.is_none()));
    assert!(
        slot_get(&k.memory, ram).is_none(),
        "the last reference to the RAM went with the VM"
    );
}

// ----- 2. VmMapRam / VmUnmap -----

#[test]
fn vm_map_ram_maps_only_the_vms_own_ram() {
    let mut k = kernel(&["supervisor"]);
    k.machine.vmx = true;
    boot(&mut k);
    let mem = ok(&sys(&mut k, Sys::MemAlloc, [RAM_PAGES, 0, 0, 0, 0, 0]).1);
    let phys = sys(&mut k, Sys::MemInfo, [mem, 0, 0, 0, 0, 0]).1.rsi;
    let vm = ok(&sys(
        &mut k,
        Sys::VmCreate,
        [mem, 0, abi::cap::slot::VMX, 0, 0, 0],
    )
    .1);
    let ept = |k: &Kernel<Model>| {
        k.vms
            .iter()
            .find_map(|s| s.obj.as_ref())
            .unwrap()
            .ept
            .clone()
    };
    let rw = (Rights::READ | Rights::WRITE).bits();
    ok(&sys(&mut k, Sys::VmMapRam, [vm, 0x2000, 3, rw, 0, 0]).1);
    ok(&sys(&mut k, Sys::VmMapRam, [vm, 0xf000, 1, RWX, 0, 0]).1);
    ok(&sys(&mut k, Sys::VmMapRam, [vm, 0, 1, Rights::READ.bits(), 0, 0]).1);
    let want: Vec<(u64, (u64, u64))> = vec![
        (0, (phys, 1)),
        (0x2000, (phys + 0x2000, 3)),
        (0x3000, (phys + 0x3000, 3)),
        (0x4000, (phys + 0x4000, 3)),
        (0xf000, (phys + 0xf000, 7)),
    ];
    assert_eq!(ept(&k).into_iter().collect::<Vec<_>>(), want);
    // Remapping a page replaces its rights.
    ok(&sys(&mut k, Sys::VmMapRam, [vm, 0x3000, 1, RWX, 0, 0]).1);
    assert_eq!(ept(&k)[&0x3000], (phys + 0x3000, 7));
    let before = ept(&k);
    let end = RAM_PAGES * PAGE_SIZE;
    for (gpa, pages, rights) in [
        (end, 1, RWX),                                      // just past the RAM
        (end - PAGE_SIZE, 2, RWX),                          // runs past the end
        (0, RAM_PAGES + 1, RWX),                            // too many pages
        (0x1000, u64::MAX / 2, RWX),                        // overflowing length
        (!0xfff, 2, RWX),                                   // overflowing end
        (0x1001, 1, RWX),                                   // unaligned
        (0x1800, 1, RWX),                                   // unaligned
        (0x1000, 0, RWX),                                   // no pages
        (0x1000, 1, Rights::WRITE.bits()),                  // write without read
        (0x1000, 1, Rights::EXEC.bits()),                   // execute without read
        (0x1000, 1, 0),                                     // no rights at all
        (0x1000, 1, (Rights::READ | Rights::GRANT).bits()), // not an EPT right
        (0x1000, 1, 1 << 40),                               // unknown bits
    ] {
        assert_eq!(
            status(&sys(&mut k, Sys::VmMapRam, [vm, gpa, pages, rights, 0, 0]).1),
            Err(Error::InvalidArgument),
            "gpa {gpa:#x} pages {pages} rights {rights:#x}"
        );
        assert_eq!(ept(&k), before, "a refused map changes nothing");
    }
    // Mapping needs the VM cap's WRITE right.
    let ro = ok(&sys(&mut k, Sys::CapCopy, [vm, Rights::READ.bits(), 0, 0, 0, 0]).1);
    assert_eq!(
        status(&sys(&mut k, Sys::VmMapRam, [ro, 0x1000, 1, RWX, 0, 0]).1),
        Err(Error::NoRights)
    );
    assert_eq!(
        status(&sys(&mut k, Sys::VmMapRam, [mem, 0x1000, 1, RWX, 0, 0]).1),
        Err(Error::WrongCapKind)
    );
    // Unmapping removes exactly the named pages; absent ones are skipped.
    ok(&sys(&mut k, Sys::VmUnmap, [vm, 0x2000, 2, 0, 0, 0]).1);
    ok(&sys(&mut k, Sys::VmUnmap, [vm, 0x8000, 4, 0, 0, 0]).1);
    let keys: Vec<u64> = ept(&k).keys().copied().collect();
    assert_eq!(keys, [0, 0x4000, 0xf000]);
    for (gpa, pages) in [(0x4001, 1), (0x4000, RAM_PAGES + 1)] {
        assert_eq!(
            status(&sys(&mut k, Sys::VmUnmap, [vm, gpa, pages, 0, 0, 0]).1),
            Err(Error::InvalidArgument)
        );
    }
    assert_eq!(
        status(&sys(&mut k, Sys::VmUnmap, [ro, 0x4000, 1, 0, 0, 0]).1),
        Err(Error::NoRights)
    );
    ok(&sys(&mut k, Sys::VmUnmap, [vm, 0, RAM_PAGES, 0, 0, 0]).1);
    assert!(ept(&k).is_empty());
}

// ----- 3. VcpuState -----

#[test]
fn vcpu_state_refuses_host_state_and_controls_with_the_index() {
    let mut v = vmm();
    let k = &mut v.k;
    let (r, _) = state(k, v.vcpu, &[(0x6c16, 0xdead)], true);
    assert_eq!((status(&r), r.rdi), (Err(Error::InvalidArgument), 0));
    let (r, _) = state(
        k,
        v.vcpu,
        &[
            (field::GUEST_RIP, 0x7000),
            (field::GUEST_RSP, 8),
            (0x4002, 0),
        ],
        true,
    );
    assert_eq!((status(&r), r.rdi), (Err(Error::InvalidArgument), 2));
    // A refused batch changes nothing, not even the pairs before the bad one.
    assert_eq!(vmcs(&v.k, v.vi, field::GUEST_RIP), 0);
    assert!(!v.k.vcpus[v.vi.index()]
        .obj
        .as_ref()
        .unwrap()
        .hw
        .contains_key(&0x4002));
    assert!(!v.k.vcpus[v.vi.index()]
        .obj
        .as_ref()
        .unwrap()
        .hw
        .contains_key(&0x6c16));
    let k = &mut v.k;
    // Read-only fields can be read but not written; the high halves of 64-bit fields and
    // pseudo-fields past the ends are out of reach.
    for (f, write, index) in [
        (field::VM_ENTRY_CONTROLS, true, 0),
        (field::EXIT_QUALIFICATION, true, 0),
        (field::EXIT_COUNT_BASE + 10, true, 0),
        (field::GUEST_RIP + 1, false, 0),
        (field::GPR_BASE + 16, false, 0),
        (field::EXIT_COUNT_BASE + 70, false, 0),
        (0x6c00, false, 0),
    ] {
        let (r, _) = state(k, v.vcpu, &[(f, 1)], write);
        assert_eq!(
            (status(&r), r.rdi),
            (Err(Error::InvalidArgument), index),
            "{f:#x}"
        );
    }
    let (r, _) = state(k, v.vcpu, &[(field::EXIT_QUALIFICATION, 0)], false);
    ok(&r);
    // Batches: at most 32 pairs, and the buffer must be readable (and writable for reads).
    let (_, r) = sys(k, Sys::VcpuState, [v.vcpu, DATA, 33, 1, 0, 0]);
    assert_eq!(status(&r), Err(Error::BadLength));
    for bad in [
        0,
        0x1000,
        DATA + 8192 - 8,
        u64::MAX - 8,
        0xffff_8000_0000_0000,
    ] {
        let (_, r) = sys(k, Sys::VcpuState, [v.vcpu, bad, 1, 0, 0, 0]);
        assert_eq!(status(&r), Err(Error::BadPointer), "{bad:#x}");
    }
    // The cap's rights: READ to read, WRITE to write.
    let ro = ok(&sys(k, Sys::CapCopy, [v.vcpu, Rights::READ.bits(), 0, 0, 0, 0]).1);
    let (r, _) = state(k, ro, &[(field::GUEST_RIP, 5)], true);
    assert_eq!(status(&r), Err(Error::NoRights));
    assert_eq!(read_one(k, ro, field::GUEST_RIP), 0);
}

#[test]
fn vcpu_state_forces_what_vmx_needs_on_the_control_registers() {
    let mut v = vmm();
    let (k, vcpu, vi) = (&mut v.k, v.vcpu, v.vi);
    // A new vCPU intercepts the kernel's CR bits.
    assert_eq!(
        vmcs(k, vi, field::CR0_GUEST_HOST_MASK),
        CR0_PE | CR0_NE | CR0_PG
    );
    assert_eq!(vmcs(k, vi, field::CR4_GUEST_HOST_MASK), CR4_VMXE);
    write_state(k, vcpu, &[(field::GUEST_CR0, 0x11)]);
    assert_eq!(vmcs(k, vi, field::GUEST_CR0), 0x31, "CR0.NE is forced on");
    assert_eq!(vmcs(k, vi, field::CR0_READ_SHADOW), 0x11, "and hidden");
    write_state(k, vcpu, &[(field::GUEST_CR4, CR4_PAE)]);
    assert_eq!(vmcs(k, vi, field::GUEST_CR4), CR4_PAE | CR4_VMXE);
    assert_eq!(vmcs(k, vi, field::CR4_READ_SHADOW), CR4_PAE);
    write_state(k, vcpu, &[(field::GUEST_CR4, CR4_VMXE | 0x80)]);
    assert_eq!(vmcs(k, vi, field::GUEST_CR4), CR4_VMXE | 0x80);
    assert_eq!(
        vmcs(k, vi, field::CR4_READ_SHADOW),
        0x80,
        "VMXE is never shown"
    );
    write_state(k, vcpu, &[(field::CR4_READ_SHADOW, CR4_VMXE | 1)]);
    assert_eq!(vmcs(k, vi, field::CR4_READ_SHADOW), 1);
    // The masks keep the kernel's bits whatever the VMM writes.
    write_state(
        k,
        vcpu,
        &[
            (field::CR0_GUEST_HOST_MASK, 0),
            (field::CR4_GUEST_HOST_MASK, 0),
        ],
    );
    assert_eq!(
        vmcs(k, vi, field::CR0_GUEST_HOST_MASK),
        CR0_PE | CR0_NE | CR0_PG
    );
    assert_eq!(vmcs(k, vi, field::CR4_GUEST_HOST_MASK), CR4_VMXE);
    write_state(k, vcpu, &[(field::CR0_GUEST_HOST_MASK, 1 << 3)]);
    assert_eq!(
        vmcs(k, vi, field::CR0_GUEST_HOST_MASK),
        CR0_PE | CR0_NE | CR0_PG | 1 << 3
    );
    assert_eq!(
        read_one(k, vcpu, field::CR0_GUEST_HOST_MASK),
        CR0_PE | CR0_NE | CR0_PG | 1 << 3
    );
    // RFLAGS: reserved bits cleared, bit 1 set.
    write_state(k, vcpu, &[(field::GUEST_RFLAGS, u64::MAX)]);
    assert_eq!(vmcs(k, vi, field::GUEST_RFLAGS), 0x003f_7fd7);
    write_state(k, vcpu, &[(field::GUEST_RFLAGS, 0)]);
    assert_eq!(vmcs(k, vi, field::GUEST_RFLAGS), 2);
    // A plain guest-state field is stored as is, and reads return the VMCS values.
    write_state(k, vcpu, &[(field::GUEST_CS_BASE, 0xf_0000)]);
    let (r, back) = state(
        k,
        vcpu,
        &[
            (field::GUEST_CS_BASE, 0),
            (field::GUEST_CR0, 0),
            (field::CR0_READ_SHADOW, 0),
        ],
        false,
    );
    ok(&r);
    assert_eq!(
        back,
        [
            (field::GUEST_CS_BASE, 0xf_0000),
            (field::GUEST_CR0, 0x31),
            (field::CR0_READ_SHADOW, 0x11)
        ]
    );
}

#[test]
fn gpr_pseudo_fields_are_the_vcpu_threads_registers_and_rsp_is_the_vmcs() {
    let mut v = vmm();
    let (k, vcpu, vi, vt) = (&mut v.k, v.vcpu, v.vi, v.vt);
    let pairs: Vec<(u64, u64)> = (0..16).map(|n| (field::GPR_BASE + n, 0x100 + n)).collect();
    write_state(k, vcpu, &pairs);
    let r = k.thread(vt).unwrap().regs;
    let got = [
        r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15,
    ];
    let mut want: Vec<u64> = (0..16).map(|n| 0x100 + n).collect();
    want[4] = 0; // RSP is not in the register file ...
    assert_eq!(got.to_vec(), want);
    assert_eq!(vmcs(k, vi, field::GUEST_RSP), 0x104, "... but in the VMCS");
    let zero: Vec<(u64, u64)> = (0..16).map(|n| (field::GPR_BASE + n, 0)).collect();
    let (r, back) = state(k, vcpu, &zero, false);
    ok(&r);
    assert_eq!(back, pairs);
    // The caller's own registers are untouched by the writes.
    assert_ne!(k.thread(v.sup).unwrap().regs.rbx, 0x103);
    // Exit counts are readable (none yet) and the batch reads every pair.
    let (r, back) = state(
        k,
        vcpu,
        &[
            (field::EXIT_COUNT_BASE, 9),
            (field::EXIT_COUNT_BASE + 69, 9),
        ],
        false,
    );
    ok(&r);
    assert_eq!(
        back,
        [
            (field::EXIT_COUNT_BASE, 0),
            (field::EXIT_COUNT_BASE + 69, 0)
        ]
    );
}

#[test]
fn long_mode_follows_efer_lme_and_cr0_pg() {
    let mut v = vmm();
    let (k, vcpu, vi) = (&mut v.k, v.vcpu, v.vi);
    write_state(k, vcpu, &[(field::GUEST_IA32_EFER, EFER_LME)]);
    assert_eq!(
        vmcs(k, vi, field::GUEST_IA32_EFER),
        EFER_LME,
        "no paging: no LMA"
    );
    assert_eq!(vmcs(k, vi, field::VM_ENTRY_CONTROLS) & ENTRY_IA32E, 0);
    write_state(
        k,
        vcpu,
        &[
            (field::GUEST_CR4, CR4_PAE),
            (field::GUEST_CR0, CR0_PG | CR0_PE),
        ],
    );
    assert_eq!(vmcs(k, vi, field::GUEST_IA32_EFER), EFER_LME | EFER_LMA);
    assert_ne!(vmcs(k, vi, field::VM_ENTRY_CONTROLS) & ENTRY_IA32E, 0);
    assert_eq!(
        read_one(k, vcpu, field::VM_ENTRY_CONTROLS) & ENTRY_IA32E,
        ENTRY_IA32E
    );
    // Long mode: no PDPTE loading.
    assert_eq!(vmcs(k, vi, field::GUEST_PDPTE0), 0);
    // Paging off again: LMA and the entry control clear.
    write_state(k, vcpu, &[(field::GUEST_CR0, CR0_PE)]);
    assert_eq!(vmcs(k, vi, field::GUEST_IA32_EFER), EFER_LME);
    assert_eq!(vmcs(k, vi, field::VM_ENTRY_CONTROLS) & ENTRY_IA32E, 0);
    // A VMM that writes LMA itself without LME does not get long mode.
    write_state(
        k,
        vcpu,
        &[
            (field::GUEST_IA32_EFER, EFER_LMA),
            (field::GUEST_CR0, CR0_PG | CR0_PE),
        ],
    );
    assert_eq!(vmcs(k, vi, field::GUEST_IA32_EFER), 0);
    assert_eq!(vmcs(k, vi, field::VM_ENTRY_CONTROLS) & ENTRY_IA32E, 0);
}

#[test]
fn pae_paging_without_long_mode_loads_the_pdptes_from_guest_ram() {
    let mut v = vmm();
    let (vcpu, vi) = (v.vcpu, v.vi);
    let pdptes = [0x1001u64, 0x2001, 0x3001, 0x4001];
    let bytes: Vec<u8> = pdptes.iter().flat_map(|p| p.to_le_bytes()).collect();
    v.k.machine.write_phys(v.ram_phys + 0x3020, &bytes);
    let k = &mut v.k;
    write_state(
        k,
        vcpu,
        &[
            (field::GUEST_CR3, 0x3020),
            (field::GUEST_CR4, CR4_PAE),
            (field::GUEST_CR0, CR0_PG | CR0_PE),
        ],
    );
    let got: Vec<u64> = (0..4)
        .map(|i| vmcs(k, vi, field::GUEST_PDPTE0 + 2 * i))
        .collect();
    assert_eq!(got, pdptes);
    assert_eq!(vmcs(k, vi, field::GUEST_IA32_EFER) & EFER_LMA, 0);
    // CR3's low bits are ignored (PAE CR3 is 32-byte aligned).
    let other = [7u64, 8, 9, 10];
    let bytes: Vec<u8> = other.iter().flat_map(|p| p.to_le_bytes()).collect();
    k.machine.write_phys(v.ram_phys + 0x5000, &bytes);
    write_state(k, vcpu, &[(field::GUEST_CR3, 0x5018)]);
    let got: Vec<u64> = (0..4)
        .map(|i| vmcs(k, vi, field::GUEST_PDPTE0 + 2 * i))
        .collect();
    assert_eq!(got, other);
    // CR3 outside the guest's RAM: the PDPTEs read as zero, not host memory.
    k.machine
        .write_phys(v.ram_phys + RAM_PAGES * PAGE_SIZE, &[0xff; 32]);
    write_state(k, vcpu, &[(field::GUEST_CR3, RAM_PAGES * PAGE_SIZE)]);
    write_state(k, vcpu, &[(field::GUEST_CR3, RAM_PAGES * PAGE_SIZE - 16)]);
    let got: Vec<u64> = (0..4)
        .map(|i| vmcs(k, vi, field::GUEST_PDPTE0 + 2 * i))
        .collect();
    assert_eq!(got, [0; 4]);
    // Without PAE no PDPTEs are loaded.
    write_state(
        k,
        vcpu,
        &[(field::GUEST_CR4, 0), (field::GUEST_CR3, 0x3020)],
    );
    assert_eq!(vmcs(k, vi, field::GUEST_PDPTE0), 0);
}

// ----- 4.-7. exit portals -----

/// Every mask a portal may ask for: the message the kernel writes has the size
/// `abi::vmx::layout` gives, decodes, and holds the state of each group it names (the one
/// layout, written by the kernel and read by `ExitMessage` and `ExitView`).
#[test]
fn the_kernel_writes_every_mask_in_the_abi_layout() {
    let mut v = vmm();
    let run = run(&mut v, true);
    let (k, vi, vt) = (&mut v.k, v.vi, v.vt);
    write_state(
        k,
        v.vcpu,
        &[
            (field::GUEST_CR0, 0x8000_0031),
            (field::GUEST_CS_SELECTOR, 0x10),
            (field::GUEST_CS_BASE, 0x7000),
        ],
    );
    // The exit-information fields of QUAL and ADDR, each a value of its own: a field put in
    // another's place fails below.
    let hw = &mut k.vcpus[vi.index()].obj.as_mut().unwrap().hw;
    for (f, value) in [
        (field::EXIT_INTR_INFO, 0x8000_0b0e),
        (field::EXIT_INTR_ERROR_CODE, 0x11),
        (field::IDT_VECTORING_INFO, 0x8000_0322),
        (field::IDT_VECTORING_ERROR_CODE, 0x33),
        (field::EXIT_INSTRUCTION_INFO, 0x44),
        (field::GUEST_PHYSICAL_ADDRESS, 0x5000),
        (field::GUEST_LINEAR_ADDRESS, 0x6000),
    ] {
        hw.insert(f, value);
    }
    k.thread_mut(vt).unwrap().regs.r15 = 0xf15;
    for mask in 0..=group::ALL {
        if let Some(super::vm::Portal::Endpoint { mask: m, .. }) = k.vcpus[vi.index()]
            .obj
            .as_mut()
            .unwrap()
            .portals
            .get_mut(reason::CPUID as usize)
        {
            *m = mask;
        }
        assert_eq!(exit(k, reason::CPUID, 0x55, 2), Next::User(run.server));
        if mask > 0 {
            // The server replied with `Reply` last time: it receives again (the exit queued).
            let (next, _) = sys(k, Sys::Recv, [run.server_ep, DATA, 512, 0, 0, 0]);
            assert_eq!(next, Next::User(run.server));
        }
        let (m, bytes) = received(k, run.server);
        assert_eq!(
            bytes.len(),
            ExitMessage::size_of_mask(mask),
            "mask {mask:#x}"
        );
        let view = abi::vmx::ExitView::new(&bytes).expect("a valid message");
        assert_eq!((m.reason, m.mask, m.vcpu), (reason::CPUID, mask, 3));
        assert_eq!(
            (view.reason(), view.mask(), view.vcpu()),
            (reason::CPUID, mask, 3)
        );
        let has = |g: u32| mask & g != 0;
        assert_eq!(m.gprs[15] == 0xf15, has(group::GPRS), "mask {mask:#x}");
        assert_eq!(view.gpr(Gpr::R15) == 0xf15, has(group::GPRS));
        assert_eq!(m.rip == 0x1000, has(group::RIP), "mask {mask:#x}");
        assert_eq!(m.cr0 == 0x8000_0031, has(group::CRS), "mask {mask:#x}");
        assert_eq!(
            (m.segments[0].selector, m.segments[0].base) == (0x10, 0x7000),
            has(group::SEGS),
            "mask {mask:#x}"
        );
        assert_eq!(m.qualification == 0x55, has(group::QUAL), "mask {mask:#x}");
        assert_eq!(view.qualification() == 0x55, has(group::QUAL));
        let info = (
            m.intr_info,
            m.intr_error,
            m.idt_vectoring_info,
            m.idt_vectoring_error,
            m.instruction_info,
        );
        assert_eq!(
            info == (0x8000_0b0e, 0x11, 0x8000_0322, 0x33, 0x44),
            has(group::QUAL),
            "mask {mask:#x}: {info:x?}"
        );
        assert_eq!(
            (m.gpa, m.gla) == (0x5000, 0x6000),
            has(group::ADDR),
            "mask {mask:#x}"
        );
        assert_eq!(reply_with(k, &ExitReply::resume()), Next::Guest(vt));
    }
}

#[test]
fn an_exit_goes_to_the_portal_server_and_its_reply_is_applied() {
    let mut v = vmm();
    let run = run(&mut v, true);
    let (k, vi, vt) = (&mut v.k, v.vi, v.vt);
    // The guest changed registers since (the machine saved them in the thread).
    k.thread_mut(vt).unwrap().regs.rbx = 0xb0b;
    k.thread_mut(vt).unwrap().regs.r15 = 0xf15;
    let next = exit(k, reason::CPUID, 0, 2);
    assert_eq!(
        next,
        Next::User(run.server),
        "the call switches to the server"
    );
    let (m, bytes) = received(k, run.server);
    assert_eq!(bytes.len(), ExitMessage::size_of_mask(MASK));
    assert_eq!((m.reason, m.mask, m.vcpu), (reason::CPUID, MASK, 3));
    let mut gprs = [0u64; 16];
    gprs[0] = 1;
    gprs[3] = 0xb0b;
    gprs[4] = 0x8000;
    gprs[15] = 0xf15;
    assert_eq!(m.gprs, gprs);
    assert_eq!((m.rip, m.rflags, m.instruction_len), (0x1000, 0x202, 2));
    assert_eq!(m.cr0, 0, "groups outside the mask are absent");
    assert!(matches!(
        k.thread(vt).unwrap().state,
        ThreadState::BlockedReply { server, .. } if server == run.server
    ));
    assert_eq!(
        k.vcpus[vi.index()].obj.as_ref().unwrap().run,
        VcpuRun::AwaitingReply
    );
    let mut r = ExitReply::advance();
    r.set_gpr(Gpr::Rax, 0x1234)
        .set_gpr(Gpr::Rdx, 0x5678)
        .set_gpr(Gpr::Rsp, 0x7ff0);
    let next = reply_with(k, &r);
    assert_eq!(next, Next::Guest(vt), "the vCPU resumes at once");
    let regs = k.thread(vt).unwrap().regs;
    assert_eq!((regs.rax, regs.rdx, regs.rbx), (0x1234, 0x5678, 0xb0b));
    assert_eq!(
        vmcs(k, vi, field::GUEST_RIP),
        0x1002,
        "RIP advanced by the length"
    );
    assert_eq!(vmcs(k, vi, field::GUEST_RSP), 0x7ff0);
    assert_eq!(
        k.vcpus[vi.index()].obj.as_ref().unwrap().run,
        VcpuRun::Running
    );
    assert_eq!(
        k.thread(run.runner).unwrap().state,
        ThreadState::BlockedRun { vcpu: vi }
    );
    // A second exit before the server receives again: it queues, and the server (ready,
    // lower priority) runs and takes it at once.
    assert_eq!(exit(k, reason::CPUID, 0, 3), Next::User(run.server));
    assert!(matches!(
        k.thread(vt).unwrap().state,
        ThreadState::BlockedSend { call: true, .. }
    ));
    let (next, _) = sys(k, Sys::Recv, [run.server_ep, DATA, 512, 0, 0, 0]);
    assert_eq!(next, Next::User(run.server));
    let (m, _) = received(k, run.server);
    assert_eq!((m.gprs[0], m.rip, m.instruction_len), (0x1234, 0x1002, 3));
    // SET_RIP then ADVANCE_RIP, RFLAGS sanitized, CR0 forced, an event injected.
    let mut r = ExitReply {
        flags: reply::SET_RIP
            | reply::ADVANCE_RIP
            | reply::SET_RFLAGS
            | reply::SET_CR0
            | reply::INJECT,
        rip: 0x2000,
        rflags: u64::MAX,
        cr0: 0x11,
        inject: 0x8000_0b0e | (0x1f << 32) | 0x7fff_f000,
        ..ExitReply::default()
    };
    r.set_gpr(Gpr::Rcx, 9);
    assert_eq!(reply_with(k, &r), Next::Guest(vt));
    assert_eq!(vmcs(k, vi, field::GUEST_RIP), 0x2003);
    assert_eq!(vmcs(k, vi, field::GUEST_RFLAGS), 0x003f_7fd7);
    assert_eq!(
        (
            vmcs(k, vi, field::GUEST_CR0),
            vmcs(k, vi, field::CR0_READ_SHADOW)
        ),
        (0x31, 0x11)
    );
    assert_eq!(vmcs(k, vi, field::VM_ENTRY_INTR_INFO), 0x8000_0b0e);
    assert_eq!(vmcs(k, vi, field::VM_ENTRY_EXCEPTION_ERROR_CODE), 0x1f);
    assert_eq!(vmcs(k, vi, field::VM_ENTRY_INSTRUCTION_LEN), 3);
    assert_eq!(k.thread(vt).unwrap().regs.rcx, 9);
    assert_eq!(
        k.vcpus[vi.index()].obj.as_ref().unwrap().exits[reason::CPUID as usize],
        2
    );
}

#[test]
fn a_stop_reply_ends_vcpu_run_with_the_handlers_code() {
    let mut v = vmm();
    let run = run(&mut v, true);
    let (k, vi, vt) = (&mut v.k, v.vi, v.vt);
    assert_eq!(exit(k, reason::CPUID, 0x77, 2), Next::User(run.server));
    let next = reply_with(k, &ExitReply::stop(0xffff_0000_0000_002a));
    assert_eq!(
        next,
        Next::User(run.server),
        "the stopped vCPU is not entered"
    );
    assert_eq!(k.thread(vt).unwrap().state, ThreadState::Suspended);
    assert_eq!(
        k.vcpus[vi.index()].obj.as_ref().unwrap().run,
        VcpuRun::Stopped
    );
    let (next, _) = sys(k, Sys::Recv, [run.server_ep, DATA, 512, 0, 0, 0]);
    assert_eq!(next, Next::User(run.runner));
    assert_eq!(
        run_result(k, run.runner),
        (stop::HANDLER | 0x2a, reason::CPUID as u64, 0x77),
        "the kind bits of the handler's code are dropped"
    );
    // Nothing enters the guest any more: the runner yields and sleeps, the timer ticks.
    let (next, _) = sys(k, Sys::Yield, [0; 6]);
    assert_eq!(next, Next::User(run.runner));
    assert_eq!(
        vmcs(k, vi, field::GUEST_RIP),
        0x1000,
        "a stop does not advance RIP"
    );
    // Exit counts through VcpuState.
    assert_eq!(read_one(k, v.vcpu, field::EXIT_COUNT_BASE + 10), 1);
    assert_eq!(read_one(k, v.vcpu, field::EXIT_COUNT_BASE + 12), 0);
    let (next, _) = sys(k, Sys::Sleep, [5, 0, 0, 0, 0, 0]);
    assert_eq!(next, Next::Idle);
    k.machine.ticks = 1;
    assert_eq!(k.on_tick(None), Next::User(v.sup));
    assert_eq!(k.thread(vt).unwrap().state, ThreadState::Suspended);
    // The VMM may run it again.
    let (next, _) = sys(k, Sys::VcpuRun, [v.vcpu, 0, 0, 0, 0, 0]);
    assert_eq!(next, Next::Guest(vt));
}

#[test]
fn an_exit_without_a_portal_stops_the_vcpu_as_unhandled() {
    let mut v = vmm();
    let run = run(&mut v, true);
    let (k, vi, vt) = (&mut v.k, v.vi, v.vt);
    let next = exit(k, reason::HLT, 0x5, 1);
    assert_eq!(next, Next::User(run.runner));
    assert_eq!(
        run_result(k, run.runner),
        (stop::UNHANDLED | reason::HLT as u64, reason::HLT as u64, 5)
    );
    assert_eq!(k.thread(vt).unwrap().state, ThreadState::Suspended);
    assert!(
        matches!(
            k.thread(run.server).unwrap().state,
            ThreadState::BlockedRecv { .. }
        ),
        "the server got nothing"
    );
    // Running again; removing the CPUID portal makes CPUID unhandled too.
    ok(&sys(
        k,
        Sys::VcpuPortal,
        [v.vcpu, reason::CPUID as u64, NO_CAP, 0, 0, 0],
    )
    .1);
    assert_eq!(
        sys(k, Sys::VcpuRun, [v.vcpu, 0, 0, 0, 0, 0]).0,
        Next::Guest(vt)
    );
    assert_eq!(exit(k, reason::CPUID, 0, 2), Next::User(run.runner));
    assert_eq!(run_result(k, run.runner).0, stop::UNHANDLED | 10);
    // A running vCPU cannot be run twice: init wakes (the guest is preempted) and tries.
    assert_eq!(
        sys(k, Sys::VcpuRun, [v.vcpu, 0, 0, 0, 0, 0]).0,
        Next::Guest(vt)
    );
    k.machine.ticks = 1;
    assert_eq!(k.on_tick(None), Next::User(v.sup));
    let (_, r) = sys(k, Sys::VcpuRun, [v.vcpu, 0, 0, 0, 0, 0]);
    assert_eq!(status(&r), Err(Error::Busy));
    assert_eq!(
        k.vcpus[vi.index()].obj.as_ref().unwrap().runner,
        Some(run.runner)
    );
}

#[test]
fn failed_entries_and_closed_portals_stop_the_vcpu() {
    let mut v = vmm();
    let run = run(&mut v, true);
    let (k, vt) = (&mut v.k, v.vt);
    // Exit with the entry-failure bit: invalid guest state.
    let next = exit(k, 1 << 31 | reason::INVALID_GUEST_STATE, 0, 0);
    assert_eq!(next, Next::User(run.runner));
    assert_eq!(
        run_result(k, run.runner).0,
        stop::ENTRY_FAILED | reason::INVALID_GUEST_STATE as u64
    );
    // VMLAUNCH/VMRESUME failing: the VM-instruction error is the third result.
    assert_eq!(
        sys(k, Sys::VcpuRun, [v.vcpu, 0, 0, 0, 0, 0]).0,
        Next::Guest(vt)
    );
    assert_eq!(k.on_entry_failed(7), Next::User(run.runner));
    assert_eq!(run_result(k, run.runner), (stop::ENTRY_FAILED, 0, 7));
    // The portal's endpoint closed: PORTAL_GONE.
    ok(&sys(k, Sys::EndpointClose, [v.ep, 0, 0, 0, 0, 0]).1);
    assert_eq!(
        sys(k, Sys::VcpuRun, [v.vcpu, 0, 0, 0, 0, 0]).0,
        Next::Guest(vt)
    );
    let next = exit(k, reason::CPUID, 0, 2);
    assert_eq!(next, Next::User(run.runner));
    assert_eq!(run_result(k, run.runner).0, stop::PORTAL_GONE);
    assert_eq!(k.thread(vt).unwrap().state, ThreadState::Suspended);
}

#[test]
fn only_an_exit_after_a_successful_entry_marks_the_vmcs_launched() {
    let mut v = vmm();
    let run = run(&mut v, true);
    let (k, vi, vt) = (&mut v.k, v.vi, v.vt);
    let launched = |k: &Kernel<Model>| k.vcpus[vi.index()].obj.as_ref().unwrap().launched;
    assert!(
        !k.guest_context(vt).unwrap().2,
        "a new vCPU is entered with VMLAUNCH"
    );
    // The first entry fails (invalid guest state): the next one must still be VMLAUNCH.
    assert_eq!(
        exit(k, 1 << 31 | reason::INVALID_GUEST_STATE, 0, 0),
        Next::User(run.runner)
    );
    assert!(!launched(k), "a failed entry marked the VMCS launched");
    assert_eq!(
        sys(k, Sys::VcpuRun, [v.vcpu, 0, 0, 0, 0, 0]).0,
        Next::Guest(vt)
    );
    assert!(!k.guest_context(vt).unwrap().2);
    // An ordinary exit: from now on VMRESUME.
    exit(k, reason::HLT, 0, 1);
    assert!(launched(k));
}

#[test]
fn the_preemption_timer_ends_a_slice_and_the_guest_goes_on() {
    let mut v = vmm();
    // The host interrupt takes no portal (the preemption timer's portal hears of deadlines
    // only: tests_interrupts.rs).
    for r in reason::NO_PORTAL {
        let (_, regs) = sys(
            &mut v.k,
            Sys::VcpuPortal,
            [v.vcpu, u64::from(r), v.ep, 0, 0, 0],
        );
        assert_eq!(status(&regs), Err(Error::InvalidArgument), "reason {r}");
    }
    let run = run(&mut v, true);
    let (k, vi, vt) = (&mut v.k, v.vi, v.vt);
    let next = exit(k, reason::PREEMPTION_TIMER, 0, 0);
    assert_eq!(
        next,
        Next::Guest(vt),
        "nothing else is runnable: the guest goes on"
    );
    let vcpu = k.vcpus[vi.index()].obj.as_ref().unwrap();
    assert_eq!(vcpu.exits[reason::PREEMPTION_TIMER as usize], 1);
    assert_eq!(
        k.thread(run.runner).unwrap().state,
        ThreadState::BlockedRun { vcpu: vi },
        "VcpuRun did not return"
    );
    assert!(
        matches!(
            k.thread(run.server).unwrap().state,
            ThreadState::BlockedRecv { .. }
        ),
        "the server got nothing"
    );
}

#[test]
fn a_run_time_limit_stops_a_guest_that_never_exits_to_a_handler() {
    let mut v = vmm();
    assert_eq!(
        read_one(&mut v.k, v.vcpu, field::RUN_TICKS),
        0,
        "no limit by default"
    );
    write_state(&mut v.k, v.vcpu, &[(field::RUN_TICKS, 3)]);
    assert_eq!(read_one(&mut v.k, v.vcpu, field::RUN_TICKS), 3);
    let run = run(&mut v, false);
    let (k, vt) = (&mut v.k, v.vt);
    // Within the limit, slices end and the guest goes on.
    k.machine.ticks += 2;
    assert_eq!(exit(k, reason::PREEMPTION_TIMER, 0, 0), Next::Guest(vt));
    // At the limit the next entry does not happen: VcpuRun returns with TIME_LIMIT.
    k.machine.ticks += 1;
    let next = exit(k, reason::PREEMPTION_TIMER, 0, 0);
    assert_ne!(next, Next::Guest(vt), "the guest is not entered again");
    let (stopped, why, _) = run_result(k, run.runner);
    assert_eq!(stopped, stop::TIME_LIMIT);
    assert_eq!(why, u64::from(reason::PREEMPTION_TIMER));
    assert_eq!(
        k.vcpus[v.vi.index()].obj.as_ref().unwrap().run,
        VcpuRun::Stopped
    );
}

#[test]
fn a_malformed_reply_stops_the_vcpu_with_bad_reply() {
    for bad in [
        vec![1u8, 2, 3],                       // truncated header
        vec![0, 0, 0, 0x80, 0, 0, 0, 0],       // unknown flag bits
        vec![0, 0, 0, 0, 1, 0, 0, 0],          // a GPR announced, not present
        vec![0, 0, 0, 0, 0, 0, 1, 0],          // reserved bits set
        vec![0; 9],                            // trailing bytes
        vec![2, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3], // SET_RIP with a short value
    ] {
        let mut v = vmm();
        let run = run(&mut v, true);
        let (k, vi, vt) = (&mut v.k, v.vi, v.vt);
        assert_eq!(exit(k, reason::CPUID, 0, 2), Next::User(run.server));
        let next = reply_bytes(k, &bad);
        assert_eq!(next, Next::User(run.server), "{bad:?}");
        assert_eq!(k.thread(vt).unwrap().state, ThreadState::Suspended);
        let (next, _) = sys(k, Sys::Recv, [run.server_ep, DATA, 512, 0, 0, 0]);
        assert_eq!(next, Next::User(run.runner));
        assert_eq!(
            run_result(k, run.runner),
            (stop::BAD_REPLY, reason::CPUID as u64, 0),
            "{bad:?}"
        );
        assert_eq!(
            vmcs(k, vi, field::GUEST_RIP),
            0x1000,
            "nothing of it was applied"
        );
        assert_eq!(k.thread(vt).unwrap().regs.rax, 1);
    }
}

#[test]
fn an_injected_event_vm_entry_would_refuse_stops_the_vcpu_with_bad_reply() {
    const PE_NE_ET: u64 = 0x31;
    for (bad, len) in [
        (0x8000_0700u64, 2u64), // type 7, "other event": Bochs stops the machine on it
        (0x8000_0100, 2),       // type 1: reserved
        (0x8000_0203, 2),       // an NMI that is not vector 2
        (0x8000_0320, 2),       // a hardware exception above vector 31
        (0x8000_030d, 2),       // #GP without its error code
        (0x8000_0b06, 2),       // #UD with an error code
        (0x8000_0b0e | (0x1_0000 << 32), 2), // #PF with an error code above 16 bits
        (0x8000_0480, 0),       // a software interrupt of length 0
    ] {
        let mut v = vmm();
        write_state(&mut v.k, v.vcpu, &[(field::GUEST_CR0, PE_NE_ET)]);
        let run = run(&mut v, true);
        let (k, vt) = (&mut v.k, v.vt);
        assert_eq!(exit(k, reason::CPUID, 0, len), Next::User(run.server));
        let r = ExitReply {
            flags: reply::INJECT | reply::ADVANCE_RIP,
            inject: bad,
            ..ExitReply::default()
        };
        let next = reply_with(k, &r);
        assert_eq!(next, Next::User(run.server), "{bad:#x}");
        assert_eq!(
            k.thread(vt).unwrap().state,
            ThreadState::Suspended,
            "{bad:#x}"
        );
        let (next, _) = sys(k, Sys::Recv, [run.server_ep, DATA, 512, 0, 0, 0]);
        assert_eq!(next, Next::User(run.runner));
        assert_eq!(
            run_result(k, run.runner).0,
            stop::BAD_REPLY,
            "{bad:#x} is refused"
        );
    }
    // The events VM entry takes are injected.
    for (good, len) in [
        (0x8000_0b0du64, 2u64),          // #GP with its error code
        (0x8000_0b0e | (0x15 << 32), 2), // #PF
        (0x8000_0306, 2),                // #UD
        (0x8000_0202, 2),                // NMI
        (0x8000_0020, 2),                // an external interrupt
        (0x8000_0480, 2),                // int 0x80
    ] {
        let mut v = vmm();
        write_state(&mut v.k, v.vcpu, &[(field::GUEST_CR0, PE_NE_ET)]);
        let run = run(&mut v, true);
        let (k, vi, vt) = (&mut v.k, v.vi, v.vt);
        assert_eq!(exit(k, reason::CPUID, 0, len), Next::User(run.server));
        let r = ExitReply {
            flags: reply::INJECT,
            inject: good,
            ..ExitReply::default()
        };
        assert_eq!(reply_with(k, &r), Next::Guest(vt), "{good:#x}");
        assert_eq!(vmcs(k, vi, field::VM_ENTRY_INTR_INFO), good & 0xffff_ffff);
    }
}

#[test]
fn an_event_written_with_vcpu_state_that_vm_entry_would_refuse_fails_the_entry() {
    let mut v = vmm();
    write_state(
        &mut v.k,
        v.vcpu,
        &[(field::VM_ENTRY_INTR_INFO, 0x8000_0700)],
    );
    assert_entry_refused(&mut v);
}

/// A runner thread runs vCPU `v`: VM entry is refused before the guest runs, and the run
/// ends with [`stop::ENTRY_FAILED`] (a refused event: VMfail "invalid control field(s)").
pub(super) fn assert_entry_refused(v: &mut Vmm) {
    let k = &mut v.k;
    let runner = ok(&sys(k, Sys::ThreadCreate, [0x40_0000, DATA + 0x2000, 0, 3, 0, 0]).1);
    let runner = ThreadId::from_index(runner as usize);
    let (next, _) = sys(k, Sys::Sleep, [1, 0, 0, 0, 0, 0]);
    assert_eq!(next, Next::User(runner));
    let (next, _) = sys(k, Sys::VcpuRun, [v.vcpu, 0, 0, 0, 0, 0]);
    assert_ne!(next, Next::Guest(v.vt), "the guest is not entered");
    assert_eq!(run_result(k, runner), (stop::ENTRY_FAILED, 0, 7));
}

// ----- 8. reflect portals -----

#[test]
fn reflect_portals_answer_cpuid_and_vmcall_in_the_kernel() {
    // With the floor's shortcut (`guest_continues`) and without: the same answers.
    for fast in [true, false] {
        reflect_portals_answer(fast);
    }
}

/// The floor's fast path (`vm_exited`'s, taken while the vCPU thread owns the extended
/// state) leaves the kernel as `on_vm_exit` does, exit after exit.
#[test]
fn the_floor_answers_at_once_as_on_vm_exit_does() {
    let mut ways = Vec::new();
    for at_once in [true, false] {
        let mut v = vmm();
        let k = &mut v.k;
        for r in [reason::CPUID, reason::VMCALL, reason::IO] {
            let a = [v.vcpu, r as u64, PORTAL_REFLECT, 0, 0, 0];
            assert_eq!(status(&sys(k, Sys::VcpuPortal, a).1), Ok(()));
        }
        run(&mut v, false);
        let (k, vi, vt) = (&mut v.k, v.vi, v.vt);
        if at_once {
            k.switch_xstate(Next::Guest(vt));
        }
        let mut seen = Vec::new();
        for (i, (r, q, len)) in [
            (reason::CPUID, 0, 2),
            (reason::VMCALL, 0, 3),
            (reason::IO, 0x3f8_0000, 1),
            (reason::CPUID, 0, 2),
        ]
        .into_iter()
        .enumerate()
        {
            k.thread_mut(vt).unwrap().regs.rax = 0x4000_0000 + i as u64;
            let e = VmExit {
                reason: r,
                qualification: q,
                instruction_len: len,
                tsc: 100 * i as u64,
            };
            let next = if k.vm_exited(vt, r, e.tsc, || (q, len), |_| {}).is_some() {
                Next::Guest(vt)
            } else {
                assert!(
                    !at_once,
                    "the fast path is taken while the thread owns the state"
                );
                k.on_vm_exit(e)
            };
            let vc = k.vcpus[vi.index()].obj.as_ref().unwrap();
            seen.push(format!(
                "{next:?} {:?} rip {:#x} exits {:?} last {:?} fwd {}",
                k.thread(vt).unwrap().regs,
                vmcs(k, vi, field::GUEST_RIP),
                &vc.exits[..],
                vc.last_exit,
                vc.forwarded
            ));
        }
        ways.push(seen);
    }
    assert_eq!(ways[0], ways[1]);
}

fn reflect_portals_answer(fast: bool) {
    let mut v = vmm();
    v.k.fast_ipc = fast;
    let k = &mut v.k;
    let refl = |k: &mut Kernel<Model>, r: u32| {
        status(
            &sys(
                k,
                Sys::VcpuPortal,
                [v.vcpu, r as u64, PORTAL_REFLECT, 0, 0, 0],
            )
            .1,
        )
    };
    assert_eq!(refl(k, reason::CPUID), Ok(()));
    assert_eq!(refl(k, reason::VMCALL), Ok(()));
    assert_eq!(refl(k, reason::IO), Ok(()));
    for r in [reason::HLT, reason::RDMSR, reason::EPT_VIOLATION, 0] {
        assert_eq!(refl(k, r), Err(Error::InvalidArgument), "reason {r}");
    }
    let run = run(&mut v, false);
    let (k, vi, vt) = (&mut v.k, v.vi, v.vt);
    {
        let r = &mut k.thread_mut(vt).unwrap().regs;
        r.rax = 0xffff_ffff_4000_0001; // only EAX is the leaf
        r.rbx = 0xdead;
        r.rcx = 0xffff_ffff_0000_0000;
        r.rdx = 0xdead;
    }
    assert_eq!(exit(k, reason::CPUID, 0, 2), Next::Guest(vt));
    let r = k.thread(vt).unwrap().regs;
    assert_eq!((r.rax, r.rbx, r.rcx, r.rdx), (0x4000_0001, 1, 2, 3));
    assert_eq!(vmcs(k, vi, field::GUEST_RIP), 0x1002);
    k.thread_mut(vt).unwrap().regs.rax = 0x55;
    assert_eq!(exit(k, reason::VMCALL, 0, 3), Next::Guest(vt));
    assert_eq!(k.thread(vt).unwrap().regs.rax, 0);
    assert_eq!(vmcs(k, vi, field::GUEST_RIP), 0x1005);
    assert_eq!(exit(k, reason::IO, 0x3f8_0000, 1), Next::Guest(vt));
    assert_eq!(vmcs(k, vi, field::GUEST_RIP), 0x1006);
    assert!(matches!(
        k.thread(run.server).unwrap().state,
        ThreadState::BlockedRecv { .. }
    ));
    let exits = &k.vcpus[vi.index()].obj.as_ref().unwrap().exits;
    assert_eq!((exits[10], exits[18], exits[30]), (1, 1, 1));
}

#[test]
fn vcpu_portal_checks_its_arguments() {
    let mut v = vmm();
    let k = &mut v.k;
    let portal = |k: &mut Kernel<Model>, a: [u64; 4]| {
        status(&sys(k, Sys::VcpuPortal, [a[0], a[1], a[2], a[3], 0, 0]).1)
    };
    let all = group::ALL as u64;
    assert_eq!(portal(k, [v.vcpu, 69, v.ep, all]), Ok(()));
    assert_eq!(
        portal(k, [v.vcpu, 70, v.ep, all]),
        Err(Error::InvalidArgument)
    );
    assert_eq!(
        portal(k, [v.vcpu, u64::MAX, v.ep, all]),
        Err(Error::InvalidArgument)
    );
    assert_eq!(
        portal(k, [v.vcpu, 10, v.ep, all + 1]),
        Err(Error::InvalidArgument)
    );
    assert_eq!(
        portal(k, [v.vcpu, 10, v.ep, 1 << 32]),
        Err(Error::InvalidArgument)
    );
    assert_eq!(portal(k, [v.vcpu, 10, v.vm, all]), Err(Error::WrongCapKind));
    assert_eq!(portal(k, [v.vm, 10, v.ep, all]), Err(Error::WrongCapKind));
    let recv_only = ok(&sys(k, Sys::CapCopy, [v.ep, Rights::RECV.bits(), 0, 0, 0, 0]).1);
    assert_eq!(
        portal(k, [v.vcpu, 10, recv_only, all]),
        Err(Error::NoRights)
    );
    let badged = ok(&sys(k, Sys::CapCopy, [v.ep, Rights::SEND.bits(), 0x99, 0, 0, 0]).1);
    assert_eq!(portal(k, [v.vcpu, 10, badged, all]), Ok(()));
    let portals = k.vcpus[v.vi.index()].obj.as_ref().unwrap().portals;
    assert!(matches!(
        portals[10],
        super::vm::Portal::Endpoint { cap, mask } if cap.badge == 0x99 && mask == group::ALL
    ));
    assert_eq!(portal(k, [v.vcpu, 10, NO_CAP, 0]), Ok(()));
    let portals = k.vcpus[v.vi.index()].obj.as_ref().unwrap().portals;
    assert_eq!(portals[10], super::vm::Portal::None);
}

#[test]
fn the_exit_message_carries_every_group_and_the_badge() {
    let mut v = vmm();
    let badged = ok(&sys(
        &mut v.k,
        Sys::CapCopy,
        [v.ep, Rights::SEND.bits(), 0x99, 0, 0, 0],
    )
    .1);
    let k = &mut v.k;
    write_state(
        k,
        v.vcpu,
        &[
            (field::GUEST_CR0, CR0_PE | 0x8),
            (field::CR0_GUEST_HOST_MASK, 0x8),
            (field::GUEST_CR3, 0x3000),
            (field::GUEST_CR4, 0x10),
            (field::GUEST_CS_SELECTOR, 0x10),
            (field::GUEST_CS_AR, 0xc09b),
            (field::GUEST_CS_LIMIT, 0xffff_ffff),
            (field::GUEST_CS_BASE, 0x1_0000),
            (field::GUEST_TR_SELECTOR, 0x28),
            (field::GUEST_LDTR_BASE, 0x77),
        ],
    );
    let portal = [
        v.vcpu,
        reason::EPT_VIOLATION as u64,
        badged,
        group::ALL as u64,
        0,
        0,
    ];
    ok(&sys(k, Sys::VcpuPortal, portal).1);
    let run = run(&mut v, false);
    let (k, vi) = (&mut v.k, v.vi);
    {
        let hw = &mut k.vcpus[vi.index()].obj.as_mut().unwrap().hw;
        hw.insert(field::GUEST_PHYSICAL_ADDRESS, 0xfee0_0000);
        hw.insert(field::GUEST_LINEAR_ADDRESS, 0x1234);
        hw.insert(field::EXIT_INSTRUCTION_INFO, 5);
    }
    assert_eq!(
        exit(k, reason::EPT_VIOLATION, 0x181, 0),
        Next::User(run.server)
    );
    assert_eq!(
        k.thread(run.server).unwrap().regs.rdx,
        0x99,
        "the portal cap's badge"
    );
    let (m, bytes) = received(k, run.server);
    assert_eq!(bytes.len(), ExitMessage::MAX_SIZE);
    assert_eq!(m.cr0, CR0_PE | 0x8 | CR0_NE);
    assert_eq!(m.cr0_shadow, CR0_PE | 0x8, "the guest's view: no forced NE");
    assert_eq!(
        (m.cr3, m.cr4, m.cr4_shadow),
        (0x3000, 0x10 | CR4_VMXE, 0x10)
    );
    let cs = m.segments[0];
    assert_eq!(
        (cs.selector, cs.access_rights, cs.limit, cs.base),
        (0x10, 0xc09b, 0xffff_ffff, 0x1_0000)
    );
    assert_eq!(m.segments[6].selector, 0x28, "tr");
    assert_eq!(m.segments[7].base, 0x77, "ldtr");
    assert_eq!((m.qualification, m.instruction_info), (0x181, 5));
    assert_eq!((m.gpa, m.gla), (0xfee0_0000, 0x1234));
}

// ----- 9. handler restart -----

#[test]
fn a_restarted_handler_gets_the_same_exit_again_and_its_reply_applies() {
    let mut v = vmm();
    let run = run(&mut v, true);
    let (vi, vt) = (v.vi, v.vt);
    let k = &mut v.k;
    assert_eq!(exit(k, reason::CPUID, 0x44, 2), Next::User(run.server));
    let (first, first_bytes) = received(k, run.server);
    // The server faults before replying.
    let regs = k.thread(run.server).unwrap().regs;
    let next = k.on_user_fault(&regs, 14, 4, 0xdead);
    assert_eq!(
        next,
        Next::Idle,
        "init sleeps, the runner waits, the vCPU waits"
    );
    assert!(k.threads.0[run.server.index()].is_none());
    assert!(matches!(
        k.thread(vt).unwrap().state,
        ThreadState::BlockedSend { call: true, .. }
    ));
    assert_eq!(
        k.vcpus[vi.index()].obj.as_ref().unwrap().run,
        VcpuRun::AwaitingReply
    );
    assert_eq!(
        k.thread(run.runner).unwrap().state,
        ThreadState::BlockedRun { vcpu: vi }
    );
    assert_eq!(k.thread(vt).unwrap().regs.rax, 1, "the guest saw nothing");
    // Init wakes, starts a new incarnation bound to the endpoint.
    k.machine.ticks = 1;
    assert_eq!(k.on_tick(None), Next::User(v.sup));
    assert_eq!(
        status(&sys(k, Sys::TaskStart, [run.task, 0, 0, 0, 0, 0]).1),
        Err(Error::StaleCap)
    );
    let (_, server_ep) = spawn_server(&mut v, 2);
    let k = &mut v.k;
    let (next, _) = sys(k, Sys::Sleep, [1, 0, 0, 0, 0, 0]);
    let Next::User(server2) = next else {
        panic!("{next:?}")
    };
    let (next, _) = sys(k, Sys::Recv, [server_ep, DATA, 512, 0, 0, 0]);
    assert_eq!(
        next,
        Next::User(server2),
        "the queued exit is received at once"
    );
    let (again, again_bytes) = received(k, server2);
    assert_eq!(again, first);
    assert_eq!(again_bytes, first_bytes);
    let mut r = ExitReply::advance();
    r.set_gpr(Gpr::Rax, 0xabc);
    assert_eq!(reply_with(k, &r), Next::Guest(vt));
    assert_eq!(k.thread(vt).unwrap().regs.rax, 0xabc);
    assert_eq!(vmcs(k, vi, field::GUEST_RIP), 0x1002, "advanced once");
    assert_eq!(
        k.vcpus[vi.index()].obj.as_ref().unwrap().exits[10],
        1,
        "one exit"
    );
    assert_eq!(
        k.thread(run.runner).unwrap().state,
        ThreadState::BlockedRun { vcpu: vi }
    );
}

#[test]
fn a_handler_dying_on_an_unbound_endpoint_stops_the_vcpu() {
    let mut v = vmm();
    let run = run(&mut v, true);
    let k = &mut v.k;
    // The endpoint names no server task (as if never bound); then the handler dies.
    let epi = k
        .task(k.thread(v.sup).unwrap().task)
        .unwrap()
        .caps
        .get(v.ep)
        .unwrap()
        .obj
        .index;
    k.endpoints[epi as usize].obj.as_mut().unwrap().server = None;
    assert_eq!(exit(k, reason::CPUID, 0, 2), Next::User(run.server));
    let regs = k.thread(run.server).unwrap().regs;
    let next = k.on_user_fault(&regs, 13, 0, 0);
    assert_eq!(next, Next::User(run.runner));
    assert_eq!(run_result(k, run.runner).0, stop::PORTAL_GONE);
    assert_eq!(k.thread(v.vt).unwrap().state, ThreadState::Suspended);
}

// ----- 10. destruction -----

/// A VMM task (module 1) given init's RAM: creates a VM and a vCPU with a CPUID portal to an
/// endpoint of its own, and runs it from its main thread. Returns (task cap in init, the
/// VMM's thread, the vCPU thread) with the guest entered.
fn vmm_task(k: &mut Kernel<Model>, mem: u64) -> (u64, ThreadId, ThreadId) {
    let task = ok(&sys(
        k,
        Sys::TaskSpawn,
        [1, 1, 5, NO_CAP, abi::cap::slot::SPAWN, 0],
    )
    .1);
    let ram = ok(&sys(
        k,
        Sys::TaskGrant,
        [task, mem, Rights::all().bits(), 0, 0, 0],
    )
    .1);
    // Init grants it the VMX capability (as the supervisor does for `needs=vmx`).
    let vmx = ok(&sys(
        k,
        Sys::TaskGrant,
        [task, abi::cap::slot::VMX, Rights::READ.bits(), 0, 0, 0],
    )
    .1);
    ok(&sys(k, Sys::TaskStart, [task, 0, 0, 0, 0, 0]).1);
    let (next, _) = sys(k, Sys::Sleep, [1, 0, 0, 0, 0, 0]);
    let Next::User(t) = next else {
        panic!("{next:?}")
    };
    // Without the VMX capability a task creates no VM (VM and vCPU slots are global).
    let (_, r) = sys(k, Sys::VmCreate, [ram, 0, 40, 0, 0, 0]);
    assert_eq!(status(&r), Err(Error::InvalidCap));
    let (_, r) = sys(k, Sys::VmCreate, [ram, 0, ram, 0, 0, 0]);
    assert_eq!(status(&r), Err(Error::WrongCapKind));
    assert!(k.vms.iter().all(|s| s.obj.is_none()), "no VM was made");
    let vm = ok(&sys(k, Sys::VmCreate, [ram, 0, vmx, 0, 0, 0]).1);
    let vcpu = ok(&sys(k, Sys::VcpuCreate, [vm, 0, 0, 0, 0, 0]).1);
    let ep = ok(&sys(k, Sys::EndpointCreate, [0; 6]).1);
    ok(&sys(k, Sys::VcpuPortal, [vcpu, 10, ep, MASK as u64, 0, 0]).1);
    let (next, _) = sys(k, Sys::VcpuRun, [vcpu, 0, 0, 0, 0, 0]);
    let Next::Guest(vt) = next else {
        panic!("{next:?}")
    };
    assert_eq!(k.thread(vt).unwrap().task, k.thread(t).unwrap().task);
    (task, t, vt)
}

#[test]
fn killing_the_vmm_task_destroys_its_vcpus_and_vms() {
    let mut k = kernel(&["supervisor", "echo"]);
    k.machine.vmx = true;
    let sup = boot(&mut k);
    let mem = ok(&sys(&mut k, Sys::MemAlloc, [4, 0, 0, 0, 0, 0]).1);
    let (task, t, vt) = vmm_task(&mut k, mem);
    assert!(k.vcpus.iter().any(|s| s.obj.is_some()));
    // Init wakes (preempting the guest) and kills the VMM.
    k.machine.ticks = 1;
    assert_eq!(k.on_tick(None), Next::User(sup));
    assert_eq!(
        k.thread(vt).unwrap().state,
        ThreadState::Ready,
        "the guest is runnable"
    );
    ok(&sys(&mut k, Sys::TaskKill, [task, 0, 0, 0, 0, 0]).1);
    assert!(k.vcpus.iter().all(|s| s.obj.is_none()), "vcpu slot emptied");
    assert!(
        k.vms.iter().all(|s| s.obj.is_none()),
        "the VM went with its caps"
    );
    assert!(k.threads.0[t.index()].is_none() && k.threads.0[vt.index()].is_none());
    // Init's RAM survives; nothing stale is left in the run queue.
    assert_eq!(sys(&mut k, Sys::MemInfo, [mem, 0, 0, 0, 0, 0]).1.rdi, 4);
    let (next, _) = sys(&mut k, Sys::Sleep, [1, 0, 0, 0, 0, 0]);
    assert_eq!(next, Next::Idle);
    k.machine.ticks = 2;
    assert_eq!(k.on_tick(None), Next::User(sup));
    // A VM of its own again, after the slots were freed.
    let vm = ok(&sys(
        &mut k,
        Sys::VmCreate,
        [mem, 0, abi::cap::slot::VMX, 0, 0, 0],
    )
    .1);
    ok(&sys(&mut k, Sys::VcpuCreate, [vm, 1, 0, 0, 0, 0]).1);
}

#[test]
fn revoking_a_vm_destroys_its_vcpus_and_their_threads() {
    let mut v = vmm();
    let k = &mut v.k;
    let threads = k.task(k.cur_task().unwrap()).unwrap().threads;
    let vcpu2 = ok(&sys(k, Sys::VcpuCreate, [v.vm, 4, 0, 0, 0, 0]).1);
    assert_eq!(k.task(k.cur_task().unwrap()).unwrap().threads, threads + 1);
    ok(&sys(k, Sys::CapRevoke, [v.vm, 0, 0, 0, 0, 0]).1);
    assert!(k.vcpus.iter().all(|s| s.obj.is_none()));
    assert!(k.vms.iter().all(|s| s.obj.is_none()));
    assert!(k.threads.0[v.vt.index()].is_none());
    assert_eq!(k.task(k.cur_task().unwrap()).unwrap().threads, threads - 1);
    for (slot, n) in [
        (v.vcpu, Sys::VcpuRun),
        (vcpu2, Sys::VcpuRun),
        (v.vm, Sys::VcpuCreate),
    ] {
        let (_, r) = sys(k, n, [slot, 0, 0, 0, 0, 0]);
        assert!(
            matches!(status(&r), Err(Error::StaleCap | Error::InvalidCap)),
            "{r:?}"
        );
    }
    // The RAM is still init's.
    assert_eq!(
        sys(k, Sys::MemInfo, [v.mem, 0, 0, 0, 0, 0]).1.rdi,
        RAM_PAGES
    );
}

/// KERNEL BUG (vm.rs `destroy_vm_object` / `vcpu_stop`): destroying a vCPU whose thread is
/// blocked in its exit call (`BlockedSend` in an endpoint queue, or `BlockedReply` with the
/// handler's `reply_to` naming it) only overwrites the thread state with `Suspended`, so the
/// following `detach` unlinks nothing; the freed thread id stays in the endpoint queue (or
/// in the handler's `reply_to`) and the kernel panics on the next use of it.
#[test]
fn killing_the_vmm_while_its_vcpu_waits_for_a_handler_does_not_panic() {
    let mut k = kernel(&["supervisor", "echo"]);
    k.machine.vmx = true;
    let sup = boot(&mut k);
    let mem = ok(&sys(&mut k, Sys::MemAlloc, [4, 0, 0, 0, 0, 0]).1);
    let (task, _t, vt) = vmm_task(&mut k, mem);
    // The exit goes to the VMM's own endpoint, where nobody receives yet.
    let next = exit(&mut k, reason::CPUID, 0, 2);
    assert_eq!(next, Next::Idle);
    assert!(matches!(
        k.thread(vt).unwrap().state,
        ThreadState::BlockedSend { .. }
    ));
    k.machine.ticks = 1;
    assert_eq!(k.on_tick(None), Next::User(sup));
    // Ending the task destroys the vCPU, then the endpoint (its last cap).
    ok(&sys(&mut k, Sys::TaskKill, [task, 0, 0, 0, 0, 0]).1);
    assert!(k.vcpus.iter().all(|s| s.obj.is_none()));
    assert!(k.endpoints.iter().all(|s| s.obj.is_none()));
}

#[test]
fn deleting_a_vcpu_that_awaits_a_reply_leaves_the_handler_nothing_to_answer() {
    let mut v = vmm();
    let run = run(&mut v, true);
    let k = &mut v.k;
    assert_eq!(exit(k, reason::CPUID, 0, 2), Next::User(run.server));
    // Init wakes and revokes the vCPU while the server holds the exit.
    k.machine.ticks = 1;
    assert_eq!(k.on_tick(None), Next::User(v.sup));
    ok(&sys(k, Sys::CapRevoke, [v.vcpu, 0, 0, 0, 0, 0]).1);
    assert!(k.threads.0[v.vt.index()].is_none());
    assert_eq!(run_result(k, run.runner).0, stop::PORTAL_GONE);
    // Init sleeps; the server's reply finds no caller.
    let (next, _) = sys(k, Sys::Sleep, [5, 0, 0, 0, 0, 0]);
    assert_eq!(next, Next::User(run.server));
    let (_, r) = sys(k, Sys::Reply, [DATA, 8, 0, NO_CAP, 0, 0]);
    assert_eq!(status(&r), Err(Error::NoCaller));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// Random VM syscalls (and some IPC) with random, half-valid and hostile arguments from
    /// whichever thread runs, and random exits whenever a guest is entered, never panic the
    /// kernel; a guest entered is a live vCPU that is running.
    #[test]
    fn random_vm_syscalls_never_panic(calls in proptest::collection::vec(
        (prop_oneof![96u64..=102, Just(18), Just(19), Just(5)],
         proptest::array::uniform6(prop_oneof![
            Just(0u64), Just(2), Just(3), Just(4), Just(5), Just(6), Just(7), 0u64..40,
            Just(NO_CAP), Just(PORTAL_REFLECT), Just(DATA), Just(DATA + 8190),
            Just(0x40_0000), Just(u64::MAX - 7), Just(0xffff_8000_0000_0000),
            Just(field::GUEST_CR0), Just(field::GPR_BASE + 4), Just(0x1000),
            Just(RAM_PAGES), any::<u64>(),
         ]),
         prop_oneof![0u32..70, Just(reason::CPUID), Just(1 << 31 | 33), any::<u32>()],
         any::<[u64; 4]>()), 1..50)) {
        let mut v = vmm();
        // Slots 2.. hold mem, vm, vcpu, ep; fill some state pairs at DATA.
        let k = &mut v.k;
        for (n, args, why, pairs) in calls {
            let Some(t) = k.current else {
                k.machine.ticks += 10;
                match k.on_tick(None) {
                    Next::User(_) | Next::Guest(_) => continue,
                    _ => break,
                }
            };
            if let Some(vi) = k.vcpu_of(t) {
                prop_assert_eq!(k.vcpus[vi.index()].obj.as_ref().unwrap().run, VcpuRun::Running);
                let next = exit(k, why, pairs[0], pairs[1] & 0xf);
                if let Next::Guest(g) = next {
                    prop_assert!(k.vcpu_of(g).is_some());
                }
                continue;
            }
            let bytes: Vec<u8> = [pairs[0] % 0x7000, pairs[1], field::GPR_BASE + pairs[2] % 17, pairs[3]]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect();
            write_user(k, t, DATA, &bytes);
            let mut regs = k.thread(t).unwrap().regs;
            regs.rax = n;
            [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9] = args;
            match k.on_syscall(&regs) {
                Next::User(t) => prop_assert!(k.threads.0[t.index()].is_some()),
                Next::Idle => prop_assert!(k.current.is_none()),
                Next::MachineExit(_) => break,
                Next::Guest(t) => {
                    let vi = k.vcpu_of(t);
                    prop_assert!(vi.is_some());
                    let run = k.vcpus[(vi.unwrap()).index()].obj.as_ref().unwrap().run;
                    prop_assert_eq!(run, VcpuRun::Running);
                }
            }
        }
    }
}

/// KERNEL BUG (fastpath.rs `fast_reply_recv`, vCPU branch): the reply is copied straight into
/// the vCPU thread's message buffer before the copy is known to succeed; a reply whose bytes
/// run past the handler's mapped memory fails half-way and falls back to the general path
/// (which fails the handler with `BadPointer`), but the exit message held for a re-send is
/// already overwritten: a restarted handler receives a corrupted exit.
#[test]
fn a_failed_reply_leaves_the_exit_message_for_a_restarted_handler_intact() {
    let mut v = vmm();
    let run = run(&mut v, true);
    let k = &mut v.k;
    assert_eq!(exit(k, reason::CPUID, 0x44, 2), Next::User(run.server));
    let (first, _) = received(k, run.server);
    // ReplyRecv with a 64-byte reply whose last 48 bytes are past the data pages.
    let buf = DATA + 8192 - 16;
    write_user(k, run.server, buf, &[0xee; 16]);
    let (next, r) = sys(k, Sys::ReplyRecv, [run.server_ep, buf, 64, 16, 0, NO_CAP]);
    assert_eq!(next, Next::User(run.server));
    assert_eq!(status(&r), Err(Error::BadPointer));
    // The server dies before answering properly; its successor gets the same exit.
    let regs = k.thread(run.server).unwrap().regs;
    assert_eq!(k.on_user_fault(&regs, 14, 4, 0), Next::Idle);
    k.machine.ticks = 1;
    assert_eq!(k.on_tick(None), Next::User(v.sup));
    let (_, server_ep) = spawn_server(&mut v, 2);
    let k = &mut v.k;
    let Next::User(server2) = sys(k, Sys::Sleep, [1, 0, 0, 0, 0, 0]).0 else {
        panic!()
    };
    assert_eq!(
        sys(k, Sys::Recv, [server_ep, DATA, 512, 0, 0, 0]).0,
        Next::User(server2)
    );
    assert_eq!(received(k, server2).0, first);
}

#[test]
fn a_reply_recv_to_a_vcpu_enters_the_guest_and_the_handler_waits_again() {
    let mut v = vmm();
    let run = run(&mut v, true);
    let (vi, vt) = (v.vi, v.vt);
    for fast in [true, false] {
        let k = &mut v.k;
        k.fast_ipc = fast;
        assert_eq!(exit(k, reason::CPUID, 0, 2), Next::User(run.server));
        let mut r = ExitReply::advance();
        r.set_gpr(Gpr::Rbx, 0xbb);
        let mut buf = [0u8; ExitReply::MAX_SIZE];
        let n = r.encode(&mut buf).unwrap();
        write_user(k, run.server, DATA, &buf[..n]);
        let a = [run.server_ep, DATA, n as u64, 512, REPLY_LABEL, NO_CAP];
        let (next, _) = sys(k, Sys::ReplyRecv, a);
        assert_eq!(next, Next::Guest(vt), "fast path {fast}");
        assert_eq!(k.thread(vt).unwrap().regs.rbx, 0xbb);
        assert!(matches!(
            k.thread(run.server).unwrap().state,
            ThreadState::BlockedRecv { .. }
        ));
        assert_eq!(k.thread(run.server).unwrap().reply_to, None);
        // Reset RIP for the next round.
        let hw = &mut k.vcpus[vi.index()].obj.as_mut().unwrap().hw;
        assert_eq!(hw[&field::GUEST_RIP], 0x1002);
        hw.insert(field::GUEST_RIP, 0x1000);
    }
}

#[test]
fn a_vms_ram_cannot_be_revoked_while_the_vm_lives() {
    let mut v = vmm();
    let k = &mut v.k;
    let ram = k
        .task(k.cur_task().unwrap())
        .unwrap()
        .caps
        .get(v.mem)
        .unwrap()
        .obj;
    let frames = k.machine.frames_in_use();
    // Revocation would free frames the EPT still maps: refused, nothing changes.
    assert_eq!(
        status(&sys(k, Sys::CapRevoke, [v.mem, 0, 0, 0, 0, 0]).1),
        Err(Error::Busy)
    );
    assert!(slot_get(&k.memory, ram).is_some());
    assert_eq!(k.machine.frames_in_use(), frames);
    assert!(
        k.task(k.cur_task().unwrap())
            .unwrap()
            .caps
            .get(v.mem)
            .is_ok(),
        "the cap stays too"
    );
    // Once the VM is gone, the RAM can go.
    ok(&sys(k, Sys::CapRevoke, [v.vm, 0, 0, 0, 0, 0]).1);
    ok(&sys(k, Sys::CapRevoke, [v.mem, 0, 0, 0, 0, 0]).1);
    assert!(slot_get(&k.memory, ram).is_none());
}

#[test]
fn vcpu_state_refuses_activity_states_the_kernel_cannot_leave_and_changes_nothing() {
    let mut v = vmm();
    let k = &mut v.k;
    write_state(k, v.vcpu, &[(field::GUEST_RIP, 0x1000)]);
    // Shutdown (2) and wait-for-SIPI (3): no external interrupt would bring the CPU back.
    for bad in [2u64, 3, 4, u64::MAX] {
        let (r, _) = state(
            k,
            v.vcpu,
            &[
                (field::GUEST_RIP, 0x2000),
                (field::GUEST_ACTIVITY_STATE, bad),
            ],
            true,
        );
        assert_eq!((status(&r), r.rdi), (Err(Error::InvalidArgument), 1));
        assert_eq!(vmcs(k, v.vi, field::GUEST_RIP), 0x1000, "nothing written");
        assert_eq!(vmcs(k, v.vi, field::GUEST_ACTIVITY_STATE), 0);
    }
    write_state(k, v.vcpu, &[(field::GUEST_ACTIVITY_STATE, 1)]); // HLT is fine
    assert_eq!(vmcs(k, v.vi, field::GUEST_ACTIVITY_STATE), 1);
}
