//! The kernel objects: threads, tasks, endpoints, notifications and memory objects, and the
//! generation-checked slots they live in.

use abi::ipc::{FaultNotice, MAX_PAYLOAD};
use heapless::{Deque, String};

use super::captable::{Cap, CapTable, ObjRef};
use super::ids::{EndpointId, Gone, Id, NotificationId, TaskId, ThreadId, VcpuId};
use super::queue::Queue;
use super::regs::UserRegs;

pub const MAX_TASKS: usize = 16;
pub const MAX_THREADS: usize = 48;
pub const MAX_ENDPOINTS: usize = 48;
pub const MAX_NOTIFICATIONS: usize = 32;
pub const MAX_MEMORY: usize = 128;
/// Mappings one task may hold (image segments, stack, mapped memory objects).
pub const MAX_MAPPINGS: usize = 24;
/// Fault notices an endpoint holds while nobody receives.
pub const MAX_PENDING_NOTICES: usize = 8;

/// A slot of an object table: the object, if any, and the generation that capabilities
/// must name to reach it.
#[derive(Debug)]
pub struct Slot<T> {
    pub generation: u32,
    pub obj: Option<T>,
}

impl<T> Slot<T> {
    pub const fn empty() -> Self {
        Slot {
            generation: 1,
            obj: None,
        }
    }
}

/// Finds a free slot, fills it, returns (id, generation); `Err(obj)` when the table is full.
pub fn slot_insert<I: Id, T>(slots: &mut [Slot<T>], obj: T) -> Result<(I, u32), T> {
    let Some(s) = slots.iter_mut().position(|s| s.obj.is_none()) else {
        return Err(obj);
    };
    slots[s].obj = Some(obj);
    Ok((I::from_index(s), slots[s].generation))
}

/// Empties a slot and moves its generation on, so capabilities to the old object go stale.
pub fn slot_remove<I: Id, T>(slots: &mut [Slot<T>], id: I) -> Option<T> {
    let s = slots.get_mut(id.index())?;
    let obj = s.obj.take();
    if obj.is_some() {
        s.generation = s.generation.wrapping_add(1).max(1);
    }
    obj
}

/// The live object an [`ObjRef`] names.
pub fn slot_get<T>(slots: &[Slot<T>], r: ObjRef) -> Option<&T> {
    let s = slots.get(r.index as usize)?;
    if s.generation != r.generation {
        return None;
    }
    s.obj.as_ref()
}

pub fn slot_get_mut<T>(slots: &mut [Slot<T>], r: ObjRef) -> Option<&mut T> {
    let s = slots.get_mut(r.index as usize)?;
    if s.generation != r.generation {
        return None;
    }
    s.obj.as_mut()
}

/// The live object in slot `id`, whatever its generation (the kernel's own references: a
/// thread's state, a vCPU's thread).
#[inline(always)]
pub fn slot_at<I: Id, T>(slots: &[Slot<T>], id: I) -> Result<&T, Gone> {
    slots
        .get(id.index())
        .and_then(|s| s.obj.as_ref())
        .ok_or(Gone)
}

#[inline(always)]
pub fn slot_at_mut<I: Id, T>(slots: &mut [Slot<T>], id: I) -> Result<&mut T, Gone> {
    slots
        .get_mut(id.index())
        .and_then(|s| s.obj.as_mut())
        .ok_or(Gone)
}

/// A message held by the kernel between a send and its delivery.
#[derive(Clone, Debug)]
pub struct Message {
    pub label: u64,
    pub len: usize,
    pub data: [u8; MAX_PAYLOAD],
    /// A capability travelling with the message.
    pub grant: Option<Cap>,
    /// The badge of the capability it was sent through.
    pub badge: u64,
}

impl Message {
    pub const fn empty() -> Self {
        Message {
            label: 0,
            len: 0,
            data: [0; MAX_PAYLOAD],
            grant: None,
            badge: 0,
        }
    }
}

/// What a thread is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadState {
    /// Created, not started.
    Suspended,
    /// Running or in the run queue.
    Ready,
    /// In endpoint `ep`'s sender queue with its message; `call` waits for a reply after.
    BlockedSend { ep: EndpointId, call: bool },
    /// In endpoint `ep`'s receiver queue.
    BlockedRecv { ep: EndpointId },
    /// Waiting for `server`'s reply to a call made on endpoint `ep`.
    BlockedReply { server: ThreadId, ep: EndpointId },
    /// In notification `ntfn`'s waiter queue.
    BlockedWait { ntfn: NotificationId },
    /// Until the tick count reaches `until`.
    Sleeping { until: u64 },
    /// In `VcpuRun` until vCPU `vcpu` stops.
    BlockedRun { vcpu: VcpuId },
}

#[derive(Debug)]
pub struct Thread {
    pub task: TaskId,
    pub prio: u8,
    pub state: ThreadState,
    pub regs: UserRegs,
    /// The outgoing message while blocked sending.
    pub msg: Message,
    /// The caller waiting for this thread's reply.
    pub reply_to: Option<ThreadId>,
    /// Where an incoming message or reply goes.
    pub buf: u64,
    pub buf_cap: u64,
    /// The last buffer found writable: still good while the task has unmapped nothing since
    /// (mappings only go away through unmaps).
    pub checked_buf: Option<CheckedBuf>,
    /// The vCPU this thread runs (its `regs` are then the guest's registers).
    pub vcpu: Option<VcpuId>,
}

/// A receive buffer found writable ([`Thread::checked_buf`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckedBuf {
    pub buf: u64,
    pub cap: u64,
    /// The task's unmap count when it was checked.
    pub unmaps: u64,
    /// Where `buf` is in physical memory, when the whole buffer lies in one page: the exit
    /// paths then copy without walking the task's page tables.
    pub phys: Option<u64>,
}

impl CheckedBuf {
    /// Whether this is the answer for `(buf, cap)` in a task that has unmapped `unmaps`.
    #[inline(always)]
    pub fn holds(&self, buf: u64, cap: u64, unmaps: u64) -> bool {
        self.buf == buf && self.cap == cap && self.unmaps == unmaps
    }
}

/// A mapping of a memory object into a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub va: u64,
    pub pages: u64,
    pub mem: ObjRef,
}

#[derive(Debug)]
pub struct Task<S> {
    pub name: String<16>,
    pub generation: u64,
    pub space: S,
    pub caps: CapTable,
    pub prio: u8,
    /// Where fault and exit notices of this task go.
    pub fault_ep: Option<Cap>,
    pub mappings: [Option<Mapping>; MAX_MAPPINGS],
    pub threads: u16,
    pub main_thread: ThreadId,
    /// Pages unmapped from this task so far (see [`Thread::checked_buf`]).
    pub unmaps: u64,
    /// How many pages of memory objects it may have allocated ([`abi::Sys::MemAlloc`]) and
    /// alive at once; set by its spawner ([`abi::Sys::TaskSetPages`]), none at first.
    pub page_budget: u64,
}

/// Serving state of an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointState {
    /// Served (or never bound to a server task).
    Open,
    /// Its server died; a new one is expected (callers queue up meanwhile).
    Restarting,
    /// No server will come back: callers get `ServerGone`.
    Closed,
}

#[derive(Debug)]
pub struct Endpoint {
    pub senders: Queue,
    pub receivers: Queue,
    /// The task serving it, as (task index, task slot generation).
    pub server: Option<(TaskId, u32)>,
    /// The generation of the server incarnation (the task's generation at bind time).
    pub generation: u64,
    pub state: EndpointState,
    pub notices: Deque<(FaultNotice, u64), MAX_PENDING_NOTICES>,
    /// Capabilities naming it.
    pub refs: u32,
    /// The task that created it, as (task index, task slot generation): what its quota counts.
    pub owner: (TaskId, u32),
}

#[derive(Debug)]
pub struct Notification {
    pub bits: u64,
    pub waiters: Queue,
    pub refs: u32,
    /// The task that created it (see [`Endpoint::owner`]).
    pub owner: (TaskId, u32),
}

/// Endpoints and notifications a task other than the first may have created and still alive
/// (each), and the slots of each table only the first task (the supervisor) may fill: however
/// many a service takes, the supervisor can still restart the others.
pub const OBJECT_QUOTA: usize = 16;
pub const SUPERVISOR_RESERVE: usize = 8;
/// Free frames only the first task (the supervisor) may allocate into: whatever budgets the
/// services have, it can still load a service's image and stack to restart it.
pub const FRAME_RESERVE: u64 = 1024;
/// The largest memory object, in pages (1 GiB: the largest guest RAM,
/// `userlib::proto::vmm::RAM_MAX_MIB`).
pub const MAX_MEMORY_PAGES: u64 = 1 << 18;

#[derive(Debug)]
pub struct Memory {
    pub phys: u64,
    pub pages: u64,
    /// Capabilities and mappings naming it; the frames are freed at zero.
    pub refs: u32,
    /// The task that allocated it with `MemAlloc` (see [`Endpoint::owner`]), whose page
    /// budget it counts against; `None` for what the kernel made (task images, stacks).
    pub owner: Option<(TaskId, u32)>,
}
