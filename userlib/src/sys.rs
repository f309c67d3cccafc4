//! System calls: the raw `syscall` instruction and one typed wrapper per [`abi::Sys`] entry.
//!
//! This is the only module of `userlib` that contains `unsafe` code. The register convention
//! is the one of [`abi::syscall`]: `rax` holds the number, the arguments go in
//! `rdi, rsi, rdx, r10, r8, r9`; on return `rax` holds the error code (0 = success) and the
//! results are in `rdi, rsi, rdx, r8`; `rcx` and `r11` are clobbered.
//!
//! On the host (any `target_os` but `none`) there is no kernel: the raw calls return
//! [`Error::UnknownSyscall`] so the crate builds and its pure parts can be unit-tested; the
//! calls that never return panic there.
//!
//! Safety model: the kernel checks every pointer it is given against the task's mappings, so
//! the typed wrappers only have to make sure that the memory the kernel reads or writes is a
//! Rust object the call may read or write (a `&[u8]` or a `&mut [u8]` of at least that
//! length). The calls that change the address space under running code ([`mem_unmap`],
//! [`thread_create`]) are `unsafe fn`.

use core::cell::UnsafeCell;
use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

use abi::ipc::MAX_PAYLOAD;
use abi::{CapKind, CapSlot, Error, Rights, Sys, NO_CAP};

/// What the kernel returns: `rax` (the error code) and the result registers
/// `[rdi, rsi, rdx, r8]`.
pub type RawRet = (u64, [u64; 4]);

/// The raw `syscall` instruction with six arguments.
///
/// # Safety
///
/// The kernel may read or write user memory at any pointer among the arguments, change the
/// address space (map, unmap, revoke memory), start threads on any stack, or end the task:
/// the caller must make sure the call, with these arguments, does not break Rust's rules for
/// the memory it names (e.g. a buffer the kernel writes must be exclusively borrowed, and
/// memory that is unmapped must not be referenced any more). Pointers to addresses that hold
/// no Rust object (unmapped pages, kernel addresses) are fine: the kernel refuses them with
/// [`Error::BadPointer`].
#[cfg(target_os = "none")]
#[inline(always)]
pub unsafe fn syscall6(nr: u64, a0: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> RawRet {
    let rax: u64;
    let (r0, r1, r2, r3): (u64, u64, u64, u64);
    // SAFETY: `syscall` enters the kernel, which preserves every register but the ones named
    // here (rax and the result registers are outputs, rcx/r11 are clobbered) and does not
    // touch the user stack. What the kernel does with the arguments is the caller's contract.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") nr => rax,
            inlateout("rdi") a0 => r0,
            inlateout("rsi") a1 => r1,
            inlateout("rdx") a2 => r2,
            in("r10") a3,
            inlateout("r8") a4 => r3,
            in("r9") a5,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    (rax, [r0, r1, r2, r3])
}

/// The host stand-in for [`syscall6`]: there is no kernel, every call fails with
/// [`Error::UnknownSyscall`].
///
/// # Safety
///
/// None needed on the host; `unsafe` only to match the bare-metal signature.
#[cfg(not(target_os = "none"))]
#[inline(always)]
pub unsafe fn syscall6(nr: u64, a0: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> RawRet {
    let _ = (nr, a0, a1, a2, a3, a4, a5);
    (Error::UnknownSyscall as u64, [0; 4])
}

/// [`syscall6`] with no argument.
///
/// # Safety
///
/// As for [`syscall6`].
#[inline(always)]
pub unsafe fn syscall0(nr: u64) -> RawRet {
    // SAFETY: forwarded contract.
    unsafe { syscall6(nr, 0, 0, 0, 0, 0, 0) }
}

/// [`syscall6`] with one argument.
///
/// # Safety
///
/// As for [`syscall6`].
#[inline(always)]
pub unsafe fn syscall1(nr: u64, a0: u64) -> RawRet {
    // SAFETY: forwarded contract.
    unsafe { syscall6(nr, a0, 0, 0, 0, 0, 0) }
}

/// [`syscall6`] with two arguments.
///
/// # Safety
///
/// As for [`syscall6`].
#[inline(always)]
pub unsafe fn syscall2(nr: u64, a0: u64, a1: u64) -> RawRet {
    // SAFETY: forwarded contract.
    unsafe { syscall6(nr, a0, a1, 0, 0, 0, 0) }
}

/// [`syscall6`] with three arguments.
///
/// # Safety
///
/// As for [`syscall6`].
#[inline(always)]
pub unsafe fn syscall3(nr: u64, a0: u64, a1: u64, a2: u64) -> RawRet {
    // SAFETY: forwarded contract.
    unsafe { syscall6(nr, a0, a1, a2, 0, 0, 0) }
}

/// [`syscall6`] with four arguments.
///
/// # Safety
///
/// As for [`syscall6`].
#[inline(always)]
pub unsafe fn syscall4(nr: u64, a0: u64, a1: u64, a2: u64, a3: u64) -> RawRet {
    // SAFETY: forwarded contract.
    unsafe { syscall6(nr, a0, a1, a2, a3, 0, 0) }
}

/// [`syscall6`] with five arguments.
///
/// # Safety
///
/// As for [`syscall6`].
#[inline(always)]
pub unsafe fn syscall5(nr: u64, a0: u64, a1: u64, a2: u64, a3: u64, a4: u64) -> RawRet {
    // SAFETY: forwarded contract.
    unsafe { syscall6(nr, a0, a1, a2, a3, a4, 0) }
}

/// Calls that take no pointer and cannot change the address space: safe whatever the values.
#[inline(always)]
fn plain(nr: Sys, args: [u64; 5]) -> Result<[u64; 4], Error> {
    // SAFETY: only used for syscalls whose arguments are numbers and capability slots, and
    // which do not unmap memory of this task (checked at each caller).
    let (rax, ret) = unsafe { syscall5(nr as u64, args[0], args[1], args[2], args[3], args[4]) };
    Error::check(rax).map(|()| ret)
}

/// `NO_CAP` → `None`.
fn cap_or_none(v: u64) -> Option<CapSlot> {
    (v != NO_CAP).then_some(v)
}

/// `None` → `NO_CAP`.
fn grant_arg(grant: Option<CapSlot>) -> u64 {
    grant.unwrap_or(NO_CAP)
}

/// What `syscall` leaves when a call that never returns did return anyway.
#[cold]
fn returned_from_noreturn(what: &str) -> ! {
    #[cfg(target_os = "none")]
    {
        let _ = what;
        loop {
            yield_now();
        }
    }
    #[cfg(not(target_os = "none"))]
    panic!("{what}: no kernel on the host")
}

// ---------------------------------------------------------------------------------------------
// Console, tasks, threads, time
// ---------------------------------------------------------------------------------------------

/// Writes bytes to the console; the kernel prefixes them with the task's name.
pub fn debug_write(bytes: &[u8]) -> Result<(), Error> {
    // SAFETY: the kernel reads `bytes.len()` bytes from a live shared slice.
    let (rax, _) = unsafe {
        syscall2(
            Sys::DebugWrite as u64,
            bytes.as_ptr() as u64,
            bytes.len() as u64,
        )
    };
    Error::check(rax)
}

/// Ends the calling task (all its threads) with `code`.
pub fn task_exit(code: u64) -> ! {
    // SAFETY: the task ends; nothing of it is used any more.
    let _ = unsafe { syscall1(Sys::TaskExit as u64, code) };
    returned_from_noreturn("task_exit")
}

/// Reports a panic with its message: the kernel stops the task and sends a fault notice with
/// vector [`abi::ipc::FAULT_PANIC`] to its fault endpoint.
pub fn panic(message: &[u8]) -> ! {
    // SAFETY: the kernel reads `message.len()` bytes from a live shared slice, then stops
    // the task.
    let _ = unsafe {
        syscall2(
            Sys::Panic as u64,
            message.as_ptr() as u64,
            message.len() as u64,
        )
    };
    returned_from_noreturn("panic")
}

/// Gives up the rest of the time slice.
pub fn yield_now() {
    let _ = plain(Sys::Yield, [0; 5]);
}

/// Timer ticks since boot and the tick frequency: `(ticks, tick_hz)`.
pub fn clock() -> Result<(u64, u64), Error> {
    plain(Sys::Clock, [0; 5]).map(|r| (r[0], r[1]))
}

/// The TSC's rate in Hz, measured by the kernel at boot (0: unknown).
pub fn tsc_hz() -> Result<u64, Error> {
    plain(Sys::Clock, [0; 5]).map(|r| r[2])
}

/// Sleeps at least `ticks` timer ticks.
pub fn sleep(ticks: u64) -> Result<(), Error> {
    plain(Sys::Sleep, [ticks, 0, 0, 0, 0]).map(drop)
}

/// Starts a thread of the calling task at `entry` with `rsp = stack_top` and `rdi = arg`;
/// returns its thread id. `priority` is capped at the caller's.
///
/// # Safety
///
/// `stack_top` must be the top of memory the new thread owns exclusively for as long as it
/// runs, aligned so that `entry` sees the System V stack alignment (`stack_top % 16 == 8`).
/// [`thread_spawn`] is the safe way.
pub unsafe fn thread_create(
    entry: extern "C" fn(u64) -> !,
    stack_top: u64,
    arg: u64,
    priority: u64,
) -> Result<u64, Error> {
    // SAFETY: the new thread's stack is the caller's contract; the entry is a valid function.
    let (rax, ret) = unsafe {
        syscall4(
            Sys::ThreadCreate as u64,
            entry as usize as u64,
            stack_top,
            arg,
            priority,
        )
    };
    Error::check(rax).map(|()| ret[0])
}

/// Memory for one thread's stack, handed out once: a `static` the thread owns after
/// [`ThreadStack::take`].
///
/// ```ignore
/// static STACK: ThreadStack<16384> = ThreadStack::new();
/// sys::thread_spawn(worker, STACK.take().unwrap(), 0, 1)?;
/// ```
#[repr(C, align(16))]
pub struct ThreadStack<const N: usize> {
    mem: UnsafeCell<[u8; N]>,
    taken: AtomicBool,
}

// SAFETY: the memory is only reachable through the one `&'static mut` that `take` hands out
// (guarded by the atomic flag), so sharing the `ThreadStack` itself between threads is sound.
unsafe impl<const N: usize> Sync for ThreadStack<N> {}

impl<const N: usize> ThreadStack<N> {
    /// A stack not handed out yet.
    pub const fn new() -> Self {
        ThreadStack {
            mem: UnsafeCell::new([0; N]),
            taken: AtomicBool::new(false),
        }
    }

    /// The stack memory, the first time only.
    // The one `&mut` is handed out once, guarded by the flag: not a `&self` -> `&mut` leak.
    #[allow(clippy::mut_from_ref)]
    pub fn take(&'static self) -> Option<&'static mut [u8]> {
        if self.taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: the flag was clear, so no other reference to the memory exists and none
        // will be made: this is the only `&mut` ever created, and it lives for `'static`.
        Some(unsafe { &mut *self.mem.get() })
    }
}

impl<const N: usize> Default for ThreadStack<N> {
    fn default() -> Self {
        Self::new()
    }
}

// The new thread's first instructions: the entry function and its argument are on top of the
// stack `thread_spawn` prepared; align the stack and call the entry. It never returns.
#[cfg(target_os = "none")]
core::arch::global_asm!(
    ".pushsection .text.umbra_thread_trampoline,\"ax\",@progbits",
    ".globl umbra_thread_trampoline",
    "umbra_thread_trampoline:",
    "    mov rax, [rsp]",
    "    mov rdi, [rsp + 8]",
    "    xor ebp, ebp",
    "    and rsp, -16",
    "    call rax",
    "    ud2",
    ".popsection",
);

#[cfg(target_os = "none")]
extern "C" {
    fn umbra_thread_trampoline() -> !;
}

/// The address a thread made by [`thread_spawn`] starts at.
fn trampoline_addr(entry: extern "C" fn(u64) -> !) -> u64 {
    #[cfg(target_os = "none")]
    {
        let _ = entry;
        umbra_thread_trampoline as *const () as u64
    }
    #[cfg(not(target_os = "none"))]
    {
        entry as usize as u64
    }
}

/// Starts a thread running `entry(arg)` on `stack` (e.g. from a [`ThreadStack`]); returns its
/// thread id. The stack must hold at least 48 bytes; `priority` is capped at the caller's.
pub fn thread_spawn(
    entry: extern "C" fn(u64) -> !,
    stack: &'static mut [u8],
    arg: u64,
    priority: u64,
) -> Result<u64, Error> {
    let top = trampoline_frame(entry, stack, arg)?;
    // SAFETY: `stack` is given to the new thread exclusively and for good (`'static mut`);
    // `top` lies inside it with the entry and argument the trampoline reads from `[top]` and
    // `[top + 8]`, and the trampoline aligns the stack before calling `entry`.
    let (rax, ret) = unsafe {
        syscall4(
            Sys::ThreadCreate as u64,
            trampoline_addr(entry),
            top,
            arg,
            priority,
        )
    };
    Error::check(rax).map(|()| ret[0])
}

/// Writes `entry` and `arg` at the 16-aligned top of `stack` for the trampoline; returns the
/// address of that frame, the new thread's initial `rsp`.
fn trampoline_frame(
    entry: extern "C" fn(u64) -> !,
    stack: &mut [u8],
    arg: u64,
) -> Result<u64, Error> {
    let base = stack.as_ptr() as u64;
    let end = base + stack.len() as u64;
    let top = (end & !15).checked_sub(16).ok_or(Error::BadLength)?;
    if top < base + 32 {
        return Err(Error::BadLength);
    }
    let off = (top - base) as usize;
    stack[off..off + 8].copy_from_slice(&(entry as usize as u64).to_le_bytes());
    stack[off + 8..off + 16].copy_from_slice(&arg.to_le_bytes());
    Ok(top)
}

/// Ends the calling thread; the last thread ends the task with code 0.
pub fn thread_exit() -> ! {
    // SAFETY: the thread ends; its stack is not used any more.
    let _ = unsafe { syscall0(Sys::ThreadExit as u64) };
    returned_from_noreturn("thread_exit")
}

// ---------------------------------------------------------------------------------------------
// IPC
// ---------------------------------------------------------------------------------------------

/// Why an IPC call failed: the error code, with the value the kernel gives for some of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SysError {
    /// The server died during the call and is being restarted; `generation` is the one of
    /// the server that will handle a retry.
    ServerRestarted { generation: u64 },
    /// The message did not fit the buffer; `len` is its size.
    Truncated { len: u64 },
    /// Any other error.
    Other(Error),
}

impl SysError {
    /// The bare error code.
    pub fn code(self) -> Error {
        match self {
            SysError::ServerRestarted { .. } => Error::ServerRestarted,
            SysError::Truncated { .. } => Error::Truncated,
            SysError::Other(e) => e,
        }
    }

    #[inline(always)]
    fn from_ret(rax: u64, ret: [u64; 4]) -> Result<[u64; 4], SysError> {
        match Error::check(rax) {
            Ok(()) => Ok(ret),
            Err(Error::ServerRestarted) => Err(SysError::ServerRestarted { generation: ret[0] }),
            Err(Error::Truncated) => Err(SysError::Truncated { len: ret[0] }),
            Err(e) => Err(SysError::Other(e)),
        }
    }
}

impl From<Error> for SysError {
    fn from(e: Error) -> Self {
        match e {
            Error::ServerRestarted => SysError::ServerRestarted { generation: 0 },
            Error::Truncated => SysError::Truncated { len: 0 },
            e => SysError::Other(e),
        }
    }
}

impl From<SysError> for Error {
    fn from(e: SysError) -> Self {
        e.code()
    }
}

impl fmt::Display for SysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SysError::ServerRestarted { generation } => {
                write!(f, "ServerRestarted (generation {generation})")
            }
            SysError::Truncated { len } => write!(f, "Truncated ({len} bytes)"),
            SysError::Other(e) => write!(f, "{e:?}"),
        }
    }
}

/// The reply to a [`call`]: it is in `buf[..len]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallResult {
    pub len: usize,
    pub label: u64,
    /// The slot of the capability the server granted, if any.
    pub cap: Option<CapSlot>,
}

/// A message taken by [`recv`] or [`reply_recv`]: it is in `buf[..len]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecvResult {
    pub len: usize,
    pub label: u64,
    /// The badge of the capability the sender used (0 if unbadged).
    pub badge: u64,
    /// The slot of the capability the sender granted, if any.
    pub cap: Option<CapSlot>,
}

/// The buffer capacity given to the kernel: the slice length, at most [`MAX_PAYLOAD`].
fn buf_cap(buf: &[u8]) -> u64 {
    buf.len().min(MAX_PAYLOAD) as u64
}

/// Sends `buf[..send_len]` on endpoint `ep` with `label` (granting capability `grant`) and
/// waits for the reply, which overwrites `buf` (at most [`MAX_PAYLOAD`] bytes). Inlined, as
/// [`reply_recv`] is: the caller reads the result from registers.
#[inline]
pub fn call(
    ep: CapSlot,
    buf: &mut [u8],
    send_len: usize,
    label: u64,
    grant: Option<CapSlot>,
) -> Result<CallResult, SysError> {
    if send_len > buf.len() {
        return Err(SysError::Other(Error::BadLength));
    }
    // SAFETY: the kernel reads `send_len <= buf.len()` bytes and writes at most
    // `buf_cap(buf) <= buf.len()` bytes of the exclusively borrowed `buf`.
    let (rax, ret) = unsafe {
        syscall6(
            Sys::Call as u64,
            ep,
            buf.as_mut_ptr() as u64,
            send_len as u64,
            buf_cap(buf),
            label,
            grant_arg(grant),
        )
    };
    let r = SysError::from_ret(rax, ret)?;
    Ok(CallResult {
        len: r[0] as usize,
        label: r[1],
        cap: cap_or_none(r[3]),
    })
}

/// Sends `msg` on endpoint `ep` and waits until a receiver takes it (no reply).
pub fn send(ep: CapSlot, msg: &[u8], label: u64, grant: Option<CapSlot>) -> Result<(), SysError> {
    // SAFETY: the kernel reads `msg.len()` bytes of a live shared slice.
    let (rax, ret) = unsafe {
        syscall5(
            Sys::Send as u64,
            ep,
            msg.as_ptr() as u64,
            msg.len() as u64,
            label,
            grant_arg(grant),
        )
    };
    SysError::from_ret(rax, ret).map(drop)
}

/// Waits for a message on endpoint `ep`; it is written into `buf`.
pub fn recv(ep: CapSlot, buf: &mut [u8]) -> Result<RecvResult, SysError> {
    // SAFETY: the kernel writes at most `buf_cap(buf) <= buf.len()` bytes of the exclusively
    // borrowed `buf`.
    let (rax, ret) =
        unsafe { syscall3(Sys::Recv as u64, ep, buf.as_mut_ptr() as u64, buf_cap(buf)) };
    SysError::from_ret(rax, ret).map(recv_result)
}

#[inline(always)]
fn recv_result(r: [u64; 4]) -> RecvResult {
    RecvResult {
        len: r[0] as usize,
        label: r[1],
        badge: r[2],
        cap: cap_or_none(r[3]),
    }
}

/// Answers the last [`call`] this thread received with `msg`.
pub fn reply(msg: &[u8], label: u64, grant: Option<CapSlot>) -> Result<(), Error> {
    // SAFETY: the kernel reads `msg.len()` bytes of a live shared slice.
    let (rax, _) = unsafe {
        syscall4(
            Sys::Reply as u64,
            msg.as_ptr() as u64,
            msg.len() as u64,
            label,
            grant_arg(grant),
        )
    };
    Error::check(rax)
}

/// [`reply`] with `buf[..reply_len]`, then [`recv`] on `ep` into `buf`, in one entry.
/// Inlined: a server's loop then reads the result from registers, not from a copy.
#[inline]
pub fn reply_recv(
    ep: CapSlot,
    buf: &mut [u8],
    reply_len: usize,
    label: u64,
    grant: Option<CapSlot>,
) -> Result<RecvResult, SysError> {
    if reply_len > buf.len() {
        return Err(SysError::Other(Error::BadLength));
    }
    // SAFETY: the kernel reads `reply_len <= buf.len()` bytes and writes at most
    // `buf_cap(buf) <= buf.len()` bytes of the exclusively borrowed `buf`.
    let (rax, ret) = unsafe {
        syscall6(
            Sys::ReplyRecv as u64,
            ep,
            buf.as_mut_ptr() as u64,
            reply_len as u64,
            buf_cap(buf),
            label,
            grant_arg(grant),
        )
    };
    SysError::from_ret(rax, ret).map(recv_result)
}

// ---------------------------------------------------------------------------------------------
// Endpoints and notifications
// ---------------------------------------------------------------------------------------------

/// A new endpoint; the capability has every right.
pub fn endpoint_create() -> Result<CapSlot, Error> {
    plain(Sys::EndpointCreate, [0; 5]).map(|r| r[0])
}

/// A new notification; the capability has every right.
pub fn notification_create() -> Result<CapSlot, Error> {
    plain(Sys::NotificationCreate, [0; 5]).map(|r| r[0])
}

/// ORs `bits` into notification `ntfn` and wakes a waiter.
pub fn signal(ntfn: CapSlot, bits: u64) -> Result<(), Error> {
    plain(Sys::Signal, [ntfn, bits, 0, 0, 0]).map(drop)
}

/// Waits until some bit of `ntfn` is set, then takes (clears) them all.
pub fn wait(ntfn: CapSlot) -> Result<u64, Error> {
    plain(Sys::Wait, [ntfn, 0, 0, 0, 0]).map(|r| r[0])
}

/// Takes the bits of `ntfn` without waiting (0 if none).
pub fn poll(ntfn: CapSlot) -> Result<u64, Error> {
    match plain(Sys::Poll, [ntfn, 0, 0, 0, 0]) {
        Err(Error::WouldBlock) => Ok(0),
        r => r.map(|r| r[0]),
    }
}

// ---------------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------------

/// A new zeroed memory object of `pages` 4 KiB pages.
pub fn mem_alloc(pages: u64) -> Result<CapSlot, Error> {
    plain(Sys::MemAlloc, [pages, 0, 0, 0, 0]).map(|r| r[0])
}

/// Maps the whole memory object `mem` at `vaddr` (page aligned) with `rights`. The kernel
/// refuses ranges that overlap an existing mapping ([`Error::AddressInUse`]), so this never
/// changes memory already in use. Accessing the mapping needs `unsafe` code of the caller.
pub fn mem_map(mem: CapSlot, vaddr: u64, rights: Rights) -> Result<(), Error> {
    plain(Sys::MemMap, [mem, vaddr, rights.bits(), 0, 0]).map(drop)
}

/// Removes the mapping of `mem` at `vaddr`.
///
/// # Safety
///
/// No reference into the mapping may be used afterwards.
pub unsafe fn mem_unmap(mem: CapSlot, vaddr: u64) -> Result<(), Error> {
    // SAFETY: the caller guarantees nothing uses the mapping any more.
    let (rax, _) = unsafe { syscall2(Sys::MemUnmap as u64, mem, vaddr) };
    Error::check(rax)
}

/// `(pages, phys_base)` of memory object `mem`.
pub fn mem_info(mem: CapSlot) -> Result<(u64, u64), Error> {
    plain(Sys::MemInfo, [mem, 0, 0, 0, 0]).map(|r| (r[0], r[1]))
}

// ---------------------------------------------------------------------------------------------
// Capabilities
// ---------------------------------------------------------------------------------------------

/// What [`cap_info`] reports about a capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapInfo {
    /// `None` when the kernel reports a kind this `abi` does not know.
    pub kind: Option<CapKind>,
    pub rights: Rights,
    pub badge: u64,
}

/// A copy of `cap` with rights reduced to `rights` and, for an unbadged endpoint capability,
/// `badge` (0 keeps it unbadged).
pub fn cap_copy(cap: CapSlot, rights: Rights, badge: u64) -> Result<CapSlot, Error> {
    plain(Sys::CapCopy, [cap, rights.bits(), badge, 0, 0]).map(|r| r[0])
}

/// Empties slot `cap`.
pub fn cap_delete(cap: CapSlot) -> Result<(), Error> {
    plain(Sys::CapDelete, [cap, 0, 0, 0, 0]).map(drop)
}

/// Destroys the object `cap` names (needs [`Rights::REVOKE`]); every other capability to it
/// becomes stale. Do not revoke a memory object this task has mapped and still uses.
pub fn cap_revoke(cap: CapSlot) -> Result<(), Error> {
    plain(Sys::CapRevoke, [cap, 0, 0, 0, 0]).map(drop)
}

/// Kind, rights and badge of `cap`.
pub fn cap_info(cap: CapSlot) -> Result<CapInfo, Error> {
    plain(Sys::CapInfo, [cap, 0, 0, 0, 0]).map(|r| CapInfo {
        kind: CapKind::from_u64(r[0]),
        rights: Rights::from_bits_retain(r[1]),
        badge: r[2],
    })
}

// ---------------------------------------------------------------------------------------------
// Tasks, boot modules, machine
// ---------------------------------------------------------------------------------------------

/// Loads boot module `module` into a new, suspended task with `generation` and `priority`;
/// faults of its threads go to `fault_ep`. Needs the spawn capability `spawn`
/// ([`abi::cap::slot::SPAWN`]). Returns the task capability.
pub fn task_spawn(
    spawn: CapSlot,
    module: u64,
    generation: u64,
    priority: u64,
    fault_ep: CapSlot,
) -> Result<CapSlot, Error> {
    plain(
        Sys::TaskSpawn,
        [module, generation, priority, fault_ep, spawn],
    )
    .map(|r| r[0])
}

/// Copies the caller's capability `cap` (with `rights`) into `task`; returns its slot there.
pub fn task_grant(task: CapSlot, cap: CapSlot, rights: Rights) -> Result<CapSlot, Error> {
    plain(Sys::TaskGrant, [task, cap, rights.bits(), 0, 0]).map(|r| r[0])
}

/// Sets `task`'s page budget (how many pages of memory objects it may allocate and hold);
/// returns (previous budget, pages it holds now).
pub fn task_set_pages(task: CapSlot, pages: u64) -> Result<(u64, u64), Error> {
    plain(Sys::TaskSetPages, [task, pages, 0, 0, 0]).map(|r| (r[0], r[1]))
}

/// Starts `task`'s first thread with `rdi = arg`.
pub fn task_start(task: CapSlot, arg: u64) -> Result<(), Error> {
    plain(Sys::TaskStart, [task, arg, 0, 0, 0]).map(drop)
}

/// Stops and destroys `task`.
pub fn task_kill(task: CapSlot) -> Result<(), Error> {
    plain(Sys::TaskKill, [task, 0, 0, 0, 0]).map(drop)
}

/// Names `task` as the server of endpoint `ep` (and reopens it).
pub fn endpoint_bind(ep: CapSlot, task: CapSlot) -> Result<(), Error> {
    plain(Sys::EndpointBind, [ep, task, 0, 0, 0]).map(drop)
}

/// Closes endpoint `ep`: callers get [`Error::ServerGone`].
pub fn endpoint_close(ep: CapSlot) -> Result<(), Error> {
    plain(Sys::EndpointClose, [ep, 0, 0, 0, 0]).map(drop)
}

/// What [`module_info`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModuleInfo {
    /// Length of the module's command line (copied into the buffer, cut to its size).
    pub name_len: usize,
    /// Size of the module in bytes.
    pub size: u64,
    /// Number of boot modules.
    pub count: u64,
}

/// Boot module `index`: its command line (written into `buf`), size, and the module count.
/// Needs the boot capability `boot` ([`abi::CapKind::Boot`]). A command line is at most
/// [`abi::MODULE_CMDLINE_MAX`] bytes: a buffer that size takes any (a shorter one gets
/// `BadLength` for a longer line).
pub fn module_info(boot: CapSlot, index: u64, buf: &mut [u8]) -> Result<ModuleInfo, Error> {
    // SAFETY: the kernel writes at most `buf.len()` bytes of the exclusively borrowed `buf`.
    let (rax, r) = unsafe {
        syscall4(
            Sys::ModuleInfo as u64,
            index,
            buf.as_mut_ptr() as u64,
            buf.len() as u64,
            boot,
        )
    };
    Error::check(rax).map(|()| ModuleInfo {
        name_len: r[0] as usize,
        size: r[1],
        count: r[2],
    })
}

/// Copies bytes of boot module `index` from `offset` into `buf`; returns how many (fewer
/// than `buf.len()` at the end of the module, 0 past it). Needs the boot capability `boot`.
pub fn module_read(boot: CapSlot, index: u64, offset: u64, buf: &mut [u8]) -> Result<usize, Error> {
    // SAFETY: the kernel writes at most `buf.len()` bytes of the exclusively borrowed `buf`.
    let (rax, r) = unsafe {
        syscall5(
            Sys::ModuleRead as u64,
            index,
            offset,
            buf.as_mut_ptr() as u64,
            buf.len() as u64,
            boot,
        )
    };
    Error::check(rax).map(|()| r[0] as usize)
}

/// Ends the scenario with `code` (`umbra: exit <code>`) and powers off. Needs the machine
/// capability ([`abi::cap::slot::MACHINE`]). Returns only on error.
pub fn machine_exit(machine: CapSlot, code: u64) -> Error {
    match plain(Sys::MachineExit, [machine, code, 0, 0, 0]) {
        Err(e) => e,
        Ok(_) => returned_from_noreturn("machine_exit"),
    }
}

/// The kernel command line, written into `buf`; returns its length (which may exceed
/// `buf.len()`, then only the start was written). Needs the boot capability `boot`.
/// Whether the kernel command line (read with the boot capability `boot`) has the word
/// `word` (whitespace-separated; `false` when it cannot be read).
pub fn kernel_cmdline_has(boot: CapSlot, word: &str) -> bool {
    let mut line = [0u8; 256];
    let n = kernel_cmdline(boot, &mut line).unwrap_or(0).min(line.len());
    core::str::from_utf8(&line[..n]).is_ok_and(|l| l.split_ascii_whitespace().any(|w| w == word))
}

pub fn kernel_cmdline(boot: CapSlot, buf: &mut [u8]) -> Result<usize, Error> {
    // SAFETY: the kernel writes at most `buf.len()` bytes of the exclusively borrowed `buf`.
    let (rax, r) = unsafe {
        syscall3(
            Sys::KernelCmdline as u64,
            buf.as_mut_ptr() as u64,
            buf.len() as u64,
            boot,
        )
    };
    Error::check(rax).map(|()| r[0] as usize)
}

// ---------------------------------------------------------------------------------------------
// print! / println!
// ---------------------------------------------------------------------------------------------

/// Size of the stack buffer `print!` formats into; longer output is written in pieces.
pub const PRINT_BUF: usize = 256;

/// A [`fmt::Write`] sink over [`debug_write`] that buffers up to [`PRINT_BUF`] bytes, so that
/// a line normally reaches the console in one piece (the kernel prefixes each write with the
/// task's name).
pub struct DebugWriter {
    buf: [u8; PRINT_BUF],
    len: usize,
}

impl DebugWriter {
    pub const fn new() -> Self {
        DebugWriter {
            buf: [0; PRINT_BUF],
            len: 0,
        }
    }

    /// What is buffered and not written yet.
    pub fn pending(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Writes what is buffered.
    pub fn flush(&mut self) {
        if self.len > 0 {
            let _ = debug_write(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl Default for DebugWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Write for DebugWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut bytes = s.as_bytes();
        while !bytes.is_empty() {
            if self.len == PRINT_BUF {
                self.flush();
            }
            let n = bytes.len().min(PRINT_BUF - self.len);
            self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
            self.len += n;
            bytes = &bytes[n..];
        }
        Ok(())
    }
}

/// The body of [`print!`](crate::print) and [`println!`](crate::println).
#[doc(hidden)]
pub fn _print(args: fmt::Arguments<'_>) {
    let mut w = DebugWriter::new();
    let _ = fmt::Write::write_fmt(&mut w, args);
    w.flush();
}

/// Prints to the console (the kernel prefixes each write with the task's name).
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {
        $crate::sys::_print(::core::format_args!($($arg)*))
    };
}

/// Prints a line to the console (the kernel prefixes each write with the task's name).
#[macro_export]
macro_rules! println {
    () => {
        $crate::sys::_print(::core::format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::sys::_print(::core::format_args!("{}\n", ::core::format_args!($($arg)*)))
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::fmt::Write;

    #[test]
    fn host_calls_report_unknown_syscall() {
        assert_eq!(debug_write(b"x"), Err(Error::UnknownSyscall));
        assert_eq!(clock(), Err(Error::UnknownSyscall));
        assert_eq!(
            call(3, &mut [0u8; 8], 4, 1, None),
            Err(SysError::Other(Error::UnknownSyscall))
        );
    }

    #[test]
    fn call_refuses_send_len_beyond_buffer() {
        assert_eq!(
            call(3, &mut [0u8; 8], 9, 1, None),
            Err(SysError::Other(Error::BadLength))
        );
        assert_eq!(
            reply_recv(3, &mut [0u8; 8], 9, 1, None),
            Err(SysError::Other(Error::BadLength))
        );
    }

    #[test]
    fn ipc_errors_carry_the_kernel_value() {
        let ret = [7, 0, 0, 0];
        assert_eq!(
            SysError::from_ret(Error::ServerRestarted as u64, ret),
            Err(SysError::ServerRestarted { generation: 7 })
        );
        assert_eq!(
            SysError::from_ret(Error::Truncated as u64, ret),
            Err(SysError::Truncated { len: 7 })
        );
        assert_eq!(
            SysError::from_ret(Error::StaleCap as u64, ret),
            Err(SysError::Other(Error::StaleCap))
        );
        assert_eq!(SysError::from_ret(0, ret), Ok(ret));
        assert_eq!(
            Error::from(SysError::ServerRestarted { generation: 2 }),
            Error::ServerRestarted
        );
    }

    #[test]
    fn buffer_capacity_is_capped_at_max_payload() {
        assert_eq!(buf_cap(&[0u8; 8]), 8);
        assert_eq!(buf_cap(&[0u8; 2 * MAX_PAYLOAD]), MAX_PAYLOAD as u64);
    }

    #[test]
    fn no_cap_is_none() {
        assert_eq!(cap_or_none(NO_CAP), None);
        assert_eq!(cap_or_none(5), Some(5));
        assert_eq!(grant_arg(None), NO_CAP);
        assert_eq!(grant_arg(Some(4)), 4);
    }

    #[test]
    fn writer_buffers_and_splits_long_output() {
        let mut w = DebugWriter::new();
        write!(w, "hello {}", 42).unwrap();
        assert_eq!(w.pending(), b"hello 42");
        let long = "x".repeat(PRINT_BUF + 10);
        let mut w = DebugWriter::new();
        w.write_str(&long).unwrap();
        // The first PRINT_BUF bytes went out (to the host stub); the rest is pending.
        assert_eq!(w.pending().len(), 10);
    }

    #[test]
    fn thread_stack_is_handed_out_once() {
        static STACK: ThreadStack<256> = ThreadStack::new();
        let s = STACK.take().unwrap();
        assert_eq!(s.len(), 256);
        assert!(STACK.take().is_none());
    }

    #[test]
    fn thread_spawn_prepares_the_trampoline_frame() {
        extern "C" fn entry(_: u64) -> ! {
            panic!("not run on the host")
        }
        let mut stack = [0u8; 100];
        let base = stack.as_ptr() as u64;
        let top = trampoline_frame(entry, &mut stack, 0x1234).unwrap();
        assert_eq!(top % 16, 0);
        assert!(top >= base + 32 && top + 16 <= base + 100);
        let off = (top - base) as usize;
        let word = |o: usize| u64::from_le_bytes(stack[o..o + 8].try_into().unwrap());
        assert_eq!(word(off), entry as *const () as u64);
        assert_eq!(word(off + 8), 0x1234);
        assert_eq!(
            trampoline_frame(entry, &mut [0u8; 16], 0),
            Err(Error::BadLength)
        );
        static STACK: ThreadStack<256> = ThreadStack::new();
        assert_eq!(
            thread_spawn(entry, STACK.take().unwrap(), 0, 1),
            Err(Error::UnknownSyscall)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Scoped mappings, deliberate crashes, hostile arguments
// ---------------------------------------------------------------------------------------------

/// Maps memory object `mem` readable and writable at `vaddr`, runs `f` over its bytes, and
/// unmaps it: the mapping never outlives the borrow.
pub fn with_mapped<R>(
    mem: CapSlot,
    vaddr: u64,
    f: impl FnOnce(&mut [u8]) -> R,
) -> Result<R, Error> {
    let (pages, _) = mem_info(mem)?;
    mem_map(mem, vaddr, Rights::READ | Rights::WRITE)?;
    let len = (pages * 4096) as usize;
    // SAFETY: the kernel just mapped `len` bytes at `vaddr` readable and writable in this
    // task; nothing else refers to that range (it was free, or `mem_map` would have failed),
    // and it stays mapped until the unmap below, after the slice is gone.
    let result = f(unsafe { core::slice::from_raw_parts_mut(vaddr as *mut u8, len) });
    // SAFETY: the slice given to `f` ended with the call above.
    let _ = unsafe { mem_unmap(mem, vaddr) };
    Ok(result)
}

/// A memory object mapped readable and writable in this task until the value is dropped
/// (for memory a service keeps using: the MMU service's view of guest RAM and of a shadow
/// page pool). The byte slices borrow the value, so none outlives the mapping.
pub struct Mapping {
    mem: CapSlot,
    vaddr: u64,
    len: usize,
}

impl Mapping {
    /// Maps all of `mem` at `vaddr`.
    pub fn new(mem: CapSlot, vaddr: u64) -> Result<Mapping, Error> {
        let (pages, _) = mem_info(mem)?;
        mem_map(mem, vaddr, Rights::READ | Rights::WRITE)?;
        Ok(Mapping {
            mem,
            vaddr,
            len: (pages * 4096) as usize,
        })
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes at `vaddr` are mapped readable while `self` lives (it unmaps
        // them only in `drop`), and the slice borrows `self`.
        unsafe { core::slice::from_raw_parts(self.vaddr as *const u8, self.len) }
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and writable; the mutable borrow of `self` makes the slice
        // the only access through this mapping.
        unsafe { core::slice::from_raw_parts_mut(self.vaddr as *mut u8, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: every slice of the mapping borrowed `self`, so none is left.
        let _ = unsafe { mem_unmap(self.mem, self.vaddr) };
    }
}

/// A memory object another party writes while this task reads it (the kernel's exit trace
/// ring), mapped read-only until the value is dropped. No slice of it is ever handed out:
/// every read is volatile, so a value written since the last read is seen.
pub struct SharedRead {
    mem: CapSlot,
    vaddr: u64,
    len: usize,
}

impl SharedRead {
    /// Maps all of `mem` read-only at `vaddr`.
    pub fn new(mem: CapSlot, vaddr: u64) -> Result<SharedRead, Error> {
        let (pages, _) = mem_info(mem)?;
        mem_map(mem, vaddr, Rights::READ)?;
        Ok(SharedRead {
            mem,
            vaddr,
            len: (pages * 4096) as usize,
        })
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies `out.len()` bytes from `offset` with volatile reads; `None` (nothing read) when
    /// the range is not inside the mapping.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Option<()> {
        let end = offset.checked_add(out.len())?;
        if end > self.len {
            return None;
        }
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: `offset + i < len`: the byte is mapped readable while `self` lives.
            *b = unsafe {
                core::ptr::read_volatile((self.vaddr as usize + offset + i) as *const u8)
            };
        }
        Some(())
    }

    /// The little-endian u64 at `offset` (8-aligned: one volatile load).
    pub fn read_u64(&self, offset: usize) -> Option<u64> {
        if !offset.is_multiple_of(8) || offset.checked_add(8)? > self.len {
            return None;
        }
        // SAFETY: aligned and inside the readable mapping (checked above).
        Some(u64::from_le(unsafe {
            core::ptr::read_volatile((self.vaddr as usize + offset) as *const u64)
        }))
    }
}

impl Drop for SharedRead {
    fn drop(&mut self) {
        // SAFETY: no reference into the mapping exists (reads copy out).
        let _ = unsafe { mem_unmap(self.mem, self.vaddr) };
    }
}

/// Maps memory object `mem` read-only at `vaddr`, runs `f` over its bytes, and unmaps it.
pub fn with_mapped_read<R>(
    mem: CapSlot,
    vaddr: u64,
    f: impl FnOnce(&[u8]) -> R,
) -> Result<R, Error> {
    let (pages, _) = mem_info(mem)?;
    mem_map(mem, vaddr, Rights::READ)?;
    let len = (pages * 4096) as usize;
    // SAFETY: the kernel just mapped `len` bytes at `vaddr` readable in this task; the range
    // was free (or `mem_map` fails), and it stays mapped until the unmap below.
    let result = f(unsafe { core::slice::from_raw_parts(vaddr as *const u8, len) });
    // SAFETY: the slice given to `f` ended with the call above.
    let _ = unsafe { mem_unmap(mem, vaddr) };
    Ok(result)
}

/// Whether the CPU has UMIP (CPUID.(7,0):ECX bit 2); the kernel turns it on wherever it
/// exists, and then SGDT, SIDT, SLDT, STR and SMSW raise #GP in ring 3.
#[cfg(target_os = "none")]
pub fn cpu_has_umip() -> bool {
    let max = core::arch::x86_64::__cpuid(0).eax;
    max >= 7 && core::arch::x86_64::__cpuid_count(7, 0).ecx & (1 << 2) != 0
}

/// The GDTR and IDTR limits as ring 3 reads them with SGDT/SIDT, or `None` where the kernel
/// has turned CR4.UMIP on (they would raise #GP): for the suites that check what a task can
/// see of the kernel.
#[cfg(target_os = "none")]
pub fn descriptor_table_limits() -> Option<(u16, u16)> {
    if cpu_has_umip() {
        return None;
    }
    let mut gdtr = [0u8; 10];
    let mut idtr = [0u8; 10];
    // SAFETY: SGDT and SIDT store 10 bytes each into the local buffers and change nothing
    // else; without UMIP they are allowed at CPL 3.
    unsafe {
        core::arch::asm!("sgdt [{g}]", "sidt [{i}]", g = in(reg) &mut gdtr, i = in(reg) &mut idtr,
            options(nostack))
    };
    Some((
        u16::from_le_bytes([gdtr[0], gdtr[1]]),
        u16::from_le_bytes([idtr[0], idtr[1]]),
    ))
}

/// How many of the 8,192 ring-3 selectors of the GDT (index 0 to 8191, RPL 3) LSL accepts:
/// the few user-visible descriptors of the kernel's GDT, unless the GDT limit lets ring 3
/// read memory past the table as descriptors. Works with and without UMIP.
#[cfg(target_os = "none")]
pub fn gdt_selectors_accepted() -> u32 {
    let mut accepted = 0u32;
    for index in 0..8192u32 {
        let selector = (index << 3) | 3;
        let ok: u8;
        // SAFETY: LSL only reads a descriptor through the CPU's own checks (it sets ZF or
        // not) and writes the two named registers.
        unsafe {
            core::arch::asm!("lsl {lim:e}, {sel:e}", "setz {ok}", sel = in(reg) selector,
                lim = out(reg) _, ok = out(reg_byte) ok, options(nomem, nostack))
        };
        accepted += u32::from(ok);
    }
    accepted
}

/// Deliberate CPU exceptions, for the test servers that crash on request.
pub mod crash {
    /// Reads an address that is never mapped (the first 4 MiB are not): #PF.
    pub fn page_fault() -> ! {
        // SAFETY: the read faults; the kernel stops the task, so nothing observes a value.
        unsafe {
            let _ = core::ptr::read_volatile(0x10 as *const u64);
        }
        super::task_exit(99)
    }

    /// Executes `ud2`: #UD.
    pub fn invalid_opcode() -> ! {
        // SAFETY: `ud2` only raises #UD; the kernel stops the task.
        unsafe { core::arch::asm!("ud2", options(noreturn)) }
    }

    /// Executes a privileged instruction in ring 3 (`hlt`): #GP.
    pub fn general_protection() -> ! {
        // SAFETY: `hlt` at CPL 3 raises #GP; the kernel stops the task.
        unsafe { core::arch::asm!("hlt", options(noreturn)) }
    }
}

/// Addresses no task ever maps: below `USER_MIN`, and a 1 GiB window userlib reserves.
pub const NEVER_MAPPED: core::ops::Range<u64> = 0x6000_0000_0000..0x6000_4000_0000;

/// A 1 GiB window for memory that only the kernel reads and writes: a hostile test maps
/// scratch memory here (with [`mem_map`]) and passes pointers into it; no Rust reference ever
/// points here, so whatever the kernel writes there cannot break this task's own memory.
pub const HOSTILE_SCRATCH: core::ops::Range<u64> = 0x6000_4000_0000..0x6000_8000_0000;

/// Whether a value is safe to pass as any syscall argument: the kernel cannot reach this
/// task's memory through it (it is below the lowest user address, in [`NEVER_MAPPED`] or
/// [`HOSTILE_SCRATCH`], or outside the user half).
pub fn is_hostile_safe(v: u64) -> bool {
    v < abi::ipc::layout::USER_MIN
        || NEVER_MAPPED.contains(&v)
        || HOSTILE_SCRATCH.contains(&v)
        || v >= abi::ipc::layout::USER_END
}

/// Issues syscall `nr` with arguments that cannot point into this task's memory (checked
/// with [`is_hostile_safe`]; `None` if one could). For tests of the kernel's argument checks.
pub fn hostile_syscall(nr: u64, args: [u64; 6]) -> Option<RawRet> {
    if !args.iter().all(|&a| is_hostile_safe(a)) {
        return None;
    }
    // SAFETY: no argument can name memory of this task, so whatever the kernel does with
    // them (it should refuse them) cannot write into memory Rust code owns.
    Some(unsafe { syscall6(nr, args[0], args[1], args[2], args[3], args[4], args[5]) })
}

/// The time-stamp counter (`rdtsc`; the kernel leaves CR4.TSD clear). In Bochs it counts
/// instructions, so differences are deterministic path lengths.
#[inline]
pub fn rdtsc() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `rdtsc` only reads the time-stamp counter into edx:eax.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}

// ---------------------------------------------------------------------------------------------
// Virtual machines
// ---------------------------------------------------------------------------------------------

/// A new VM whose guest RAM (at guest-physical 0) is the memory object `ram`; needs the VMX
/// capability `vmx` ([`abi::CapKind::Vmx`]). [`Error::NoVmx`] on a machine without VMX.
pub fn vm_create(ram: CapSlot, flags: u64, vmx: CapSlot) -> Result<CapSlot, Error> {
    plain(Sys::VmCreate, [ram, flags, vmx, 0, 0]).map(|r| r[0])
}

/// Makes `pool` the shadow page pool of the shadow-paged VM `vm`, and `ep` the endpoint whose
/// exit replies may set shadow roots (a page of `pool`). Once per VM.
pub fn vm_set_shadow(vm: CapSlot, pool: CapSlot, ep: CapSlot) -> Result<(), Error> {
    plain(Sys::VmSetShadow, [vm, pool, ep, 0, 0]).map(drop)
}

/// Maps guest RAM `[gpa, gpa + pages * 4 KiB)` into the VM's EPT with `rights`.
pub fn vm_map_ram(vm: CapSlot, gpa: u64, pages: u64, rights: Rights) -> Result<(), Error> {
    plain(Sys::VmMapRam, [vm, gpa, pages, rights.bits(), 0]).map(drop)
}

/// Removes EPT mappings of `[gpa, gpa + pages * 4 KiB)`.
pub fn vm_unmap(vm: CapSlot, gpa: u64, pages: u64) -> Result<(), Error> {
    plain(Sys::VmUnmap, [vm, gpa, pages, 0, 0]).map(drop)
}

/// Switches the tracing of `vm`'s exits on or off; returns the VM's trace id (the `vm` of
/// its records in the exit trace ring, [`abi::trace`]).
pub fn vm_trace(vm: CapSlot, on: bool) -> Result<u32, Error> {
    plain(Sys::VmTrace, [vm, u64::from(on), 0, 0, 0]).map(|r| r[0] as u32)
}

/// Binds `ntfn` as the notification the kernel signals when the exit trace ring fills, and
/// returns a read-only memory capability to the ring; needs the trace capability `trace`
/// ([`abi::CapKind::Trace`]).
pub fn trace_attach(trace: CapSlot, ntfn: CapSlot) -> Result<CapSlot, Error> {
    plain(Sys::TraceAttach, [trace, ntfn, 0, 0, 0]).map(|r| r[0])
}

/// Tells the kernel the ring's records before `tail` are read.
pub fn trace_ack(trace: CapSlot, tail: u64) -> Result<(), Error> {
    plain(Sys::TraceAck, [trace, tail, 0, 0, 0]).map(drop)
}

/// A new vCPU of `vm`; exit messages carry `id`.
pub fn vcpu_create(vm: CapSlot, id: u64) -> Result<CapSlot, Error> {
    plain(Sys::VcpuCreate, [vm, id, 0, 0, 0]).map(|r| r[0])
}

/// Where the exits of basic reason `reason` go: an endpoint with the state groups in `mask`
/// ([`abi::vmx::group`]), `None` to remove the portal.
pub fn vcpu_portal(
    vcpu: CapSlot,
    reason: u32,
    ep: Option<CapSlot>,
    mask: u32,
) -> Result<(), Error> {
    plain(
        Sys::VcpuPortal,
        [vcpu, reason as u64, grant_arg(ep), mask as u64, 0],
    )
    .map(drop)
}

/// Has the kernel answer exits of `reason` itself (CPUID, VMCALL, port I/O only): the
/// floor an exit round trip is measured against.
pub fn vcpu_portal_reflect(vcpu: CapSlot, reason: u32) -> Result<(), Error> {
    plain(
        Sys::VcpuPortal,
        [vcpu, reason as u64, abi::vmx::PORTAL_REFLECT, 0, 0],
    )
    .map(drop)
}

/// Writes `(field, value)` pairs into a stopped vCPU ([`abi::vmx::field`]). On an error the
/// second value is the index of the pair that failed.
pub fn vcpu_write(vcpu: CapSlot, pairs: &[(u64, u64)]) -> Result<(), (Error, usize)> {
    // `(u64, u64)` has no guaranteed layout: the pairs go through a flat array.
    vcpu_state(
        vcpu,
        pairs.iter().flat_map(|&(f, v)| [f, v]),
        pairs.len(),
        true,
    )
    .map(drop)
}

/// Reads the fields named in `fields` of a stopped vCPU into `values`.
pub fn vcpu_read(vcpu: CapSlot, fields: &[u64], values: &mut [u64]) -> Result<(), (Error, usize)> {
    let n = fields.len().min(values.len());
    let out = vcpu_state(vcpu, fields.iter().flat_map(|&f| [f, 0]), n, false)?;
    for (i, v) in values.iter_mut().take(n).enumerate() {
        *v = out[2 * i + 1];
    }
    Ok(())
}

/// Pairs per [`vcpu_state`] call.
const STATE_BATCH: usize = 32;

fn vcpu_state(
    vcpu: CapSlot,
    words: impl Iterator<Item = u64>,
    count: usize,
    write: bool,
) -> Result<[u64; 2 * STATE_BATCH], (Error, usize)> {
    let mut flat = [0u64; 2 * STATE_BATCH];
    if count > STATE_BATCH {
        return Err((Error::BadLength, 0));
    }
    for (slot, w) in flat.iter_mut().zip(words) {
        *slot = w;
    }
    // SAFETY: `flat` is a local array of `2 * STATE_BATCH` u64; the kernel reads and (for a
    // read) writes at most `count` ≤ STATE_BATCH pairs of it.
    let (rax, r) = unsafe {
        syscall4(
            Sys::VcpuState as u64,
            vcpu,
            flat.as_mut_ptr() as u64,
            count as u64,
            write as u64,
        )
    };
    match Error::check(rax) {
        Ok(()) => Ok(flat),
        Err(e) => Err((e, r[0] as usize)),
    }
}

/// Why [`vcpu_run`] returned: the stop value ([`abi::vmx::stop`]), the last basic exit reason
/// and its qualification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuStop {
    pub stop: u64,
    pub reason: u64,
    pub qualification: u64,
}

/// Runs the vCPU until it stops; the calling thread waits meanwhile.
pub fn vcpu_run(vcpu: CapSlot) -> Result<VcpuStop, Error> {
    plain(Sys::VcpuRun, [vcpu, 0, 0, 0, 0]).map(|r| VcpuStop {
        stop: r[0],
        reason: r[1],
        qualification: r[2],
    })
}

// ---------------------------------------------------------------------------------------------
// Heap (feature `heap`)
// ---------------------------------------------------------------------------------------------

/// On the host the system allocator serves: `init` has nothing to do.
#[cfg(all(feature = "heap", not(target_os = "none")))]
pub mod heap {
    /// Nothing to set up on the host.
    pub fn init(_pages: u64) -> Result<(), abi::Error> {
        Ok(())
    }

    /// Nothing to set up on the host.
    pub fn init_with(_mem: abi::CapSlot) -> Result<(), abi::Error> {
        Ok(())
    }
}

/// The heap of services whose libraries allocate (the MMU service's shadow-MMU tables, one set
/// per VM, freed when the VM goes): a first-fit free-list allocator (`linked_list_allocator`)
/// over a memory object mapped at [`heap::HEAP_VA`] by [`heap::init`]. Before `init`, and
/// when it is exhausted, allocation fails (the allocation-error handler ends the task).
#[cfg(all(feature = "heap", target_os = "none"))]
pub mod heap {
    use core::alloc::{GlobalAlloc, Layout};
    use core::ptr::NonNull;

    use abi::{Error, Rights};
    use linked_list_allocator::Heap;
    use spin::Mutex;

    /// Where the heap is mapped.
    pub const HEAP_VA: u64 = 0x0000_5000_0000_0000;

    static HEAP: Mutex<Heap> = Mutex::new(Heap::empty());

    /// Gives the heap `pages` fresh pages (once; a second call fails with `Busy`).
    pub fn init(pages: u64) -> Result<(), Error> {
        init_with(super::mem_alloc(pages)?)
    }

    /// Makes the memory object `mem` the heap (once; a second call fails with `Busy`). Its
    /// contents need not be zero: the allocator writes its own bookkeeping, and nothing
    /// allocated is assumed zeroed (a service that restarts can reuse its old heap object
    /// without the kernel zeroing it again).
    pub fn init_with(mem: abi::CapSlot) -> Result<(), Error> {
        let mut heap = HEAP.lock();
        if heap.size() != 0 {
            return Err(Error::Busy);
        }
        let (pages, _) = super::mem_info(mem)?;
        super::mem_map(mem, HEAP_VA, Rights::READ | Rights::WRITE)?;
        // SAFETY: the kernel just mapped `pages` pages at HEAP_VA, readable and writable, for
        // the rest of the task's life (nothing unmaps HEAP_VA); the heap owns them from here.
        unsafe { heap.init(HEAP_VA as *mut u8, (pages * 4096) as usize) };
        Ok(())
    }

    pub struct FreeList;

    // SAFETY: `Heap` hands out disjoint, suitably aligned blocks of the mapped region and
    // takes back only blocks it handed out (GlobalAlloc's contract on `dealloc`).
    unsafe impl GlobalAlloc for FreeList {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            HEAP.lock()
                .allocate_first_fit(layout)
                .map_or(core::ptr::null_mut(), NonNull::as_ptr)
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            if let Some(p) = NonNull::new(ptr) {
                // SAFETY: `ptr` came from `alloc` with this `layout` (GlobalAlloc's contract).
                unsafe { HEAP.lock().deallocate(p, layout) };
            }
        }
    }

    #[global_allocator]
    static GLOBAL: FreeList = FreeList;
}
