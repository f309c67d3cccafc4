//! Kernel entry handlers: `arch::user` and `arch::trap` call these four functions on every
//! entry from ring 3 (and `irq_in_kernel` from the idle loop); none returns to its caller
//! except `irq_in_kernel`. Each hands the entry to the kernel object model
//! (`microkernel::kobj::Kernel`, in [`KERNEL`]) and runs what it picks next: a user thread,
//! the idle loop, or the end of the scenario.
//!
//! The ring-3 self-tests of the `kernel` scenario (`usertest`) run one hand-made thread at a
//! time without the object model; while `usertest::active()`, entries go to that path.

use crate::arch::entry_cell::{Entered, EntryCell};
use crate::arch::user::{idle_wait, interrupt_window, return_to_user};
use crate::arch::vmx;
use crate::mm::uspace::{self, AddressSpace, KernelMachine};
use crate::usertest::{self, End};
use abi::{Error, ExitCode, Sys};
use core::sync::atomic::{AtomicU64, Ordering};
use microkernel::kobj::machine::Machine;
use microkernel::kobj::regs::UserRegs;
use microkernel::kobj::vm::VmExit;
use microkernel::kobj::{Kernel, Next};
use spin::Mutex;

/// The kernel object model: every task, thread and object.
static KERNEL: EntryCell<Kernel<KernelMachine>> = EntryCell::new(Kernel::new(KernelMachine));

/// Starts the first task (the boot module named `supervisor`) and runs user mode from then on.
pub fn start_services() -> ! {
    let next = {
        let mut k = KERNEL.enter();
        let count = k.machine().module_count();
        let index = (0..count).find(|&i| {
            k.machine()
                .module(i)
                .is_some_and(|(line, _)| line.split_whitespace().next() == Some("supervisor"))
        });
        let Some(index) = index else {
            drop(k);
            crate::log!(
                error,
                "task",
                "no boot module named 'supervisor' ({count} module(s))"
            );
            crate::scenario::exit(ExitCode::Failure)
        };
        match k.start_init(index) {
            Ok(task) => crate::log!(
                info,
                "task",
                "started supervisor (module {index}) as task {task}"
            ),
            Err(e) => {
                drop(k);
                crate::log!(error, "task", "cannot start the supervisor: {e:?}");
                crate::scenario::exit(ExitCode::Failure)
            }
        }
        k.schedule()
    };
    run(next)
}

/// Runs what the object model picked: the kernel state is entered once per entry.
fn resume(mut k: Entered<'_, Kernel<KernelMachine>>, next: Next) -> ! {
    // The console's COM1 output moves on at every return (see `console`).
    crate::console::pump();
    k.switch_xstate(next);
    match next {
        // `schedule` picks live threads (and vCPU threads with a live vCPU): were `t` gone,
        // the CPU would wait for the next interrupt instead.
        Next::User(t) => {
            let k = k.return_to_user(|k| {
                let (regs, space) = k.context(t).ok()?;
                uspace::activate(space);
                Some(regs)
            });
            resume(k, Next::Idle)
        }
        Next::Guest(t) => {
            let k = k.enter_guest(|k| {
                k.trace_entry(t);
                k.guest_context(t).ok()
            });
            resume(k, Next::Idle)
        }
        Next::MachineExit(code) => {
            drop(k);
            crate::scenario::exit(match code {
                0 => ExitCode::Success,
                2 => ExitCode::UnknownScenario,
                3 => ExitCode::Crash,
                _ => ExitCode::Failure,
            })
        }
        Next::Idle => {
            drop(k);
            loop {
                // Interrupts are taken here (and at the end of a guest slice);
                // `irq_in_kernel` wakes sleepers.
                crate::console::flush_pending();
                idle_wait();
                let mut k = KERNEL.enter();
                let next = k.schedule();
                if next != Next::Idle {
                    resume(k, next)
                }
            }
        }
    }
}

/// Runs what the object model picked.
fn run(next: Next) -> ! {
    resume(KERNEL.enter(), next)
}

/// The running user thread: its task's name and address space.
struct Current {
    name: &'static str,
    space: AddressSpace,
}

static CURRENT: Mutex<Option<Current>> = Mutex::new(None);

/// Interrupts taken from ring 3 and in the idle loop.
static IRQS_FROM_USER: AtomicU64 = AtomicU64::new(0);
static IRQS_IN_KERNEL: AtomicU64 = AtomicU64::new(0);

/// Longest `DebugWrite` accepted.
const DEBUG_WRITE_MAX: usize = 1024;

/// Interrupts seen so far: (from ring 3, in the kernel's idle loop).
pub fn irq_counts() -> (u64, u64) {
    (
        IRQS_FROM_USER.load(Ordering::Relaxed),
        IRQS_IN_KERNEL.load(Ordering::Relaxed),
    )
}

/// Runs `space` as the one user thread (of task `name`) from `regs`.
pub fn enter(name: &'static str, space: AddressSpace, regs: &UserRegs) -> ! {
    uspace::activate(&space);
    let old = CURRENT.lock().replace(Current { name, space });
    if let Some(old) = old {
        KernelMachine.space_destroy(old.space);
    }
    return_to_user(regs)
}

/// Ends the current thread: its space is freed and `usertest` decides what runs next.
fn end(how: End) -> ! {
    let current = CURRENT.lock().take();
    if let Some(current) = current {
        KernelMachine.space_destroy(current.space);
    }
    usertest::ended(how)
}

/// `syscall` from ring 3, its registers saved in the running thread's own storage.
pub fn syscall_saved() -> ! {
    let mut k = KERNEL.enter();
    let next = k.on_syscall_saved();
    resume(k, next)
}

/// `syscall` from ring 3 (registers in the scratch area: the ring-3 self-tests).
pub fn syscall(regs: &mut UserRegs) -> ! {
    if !usertest::active() {
        let mut k = KERNEL.enter();
        let next = k.on_syscall(regs);
        resume(k, next)
    }
    let (number, args) = regs.syscall_args();
    let (status, ret) = match Sys::from_u64(number) {
        Some(Sys::DebugWrite) => (debug_write(args[0], args[1]), [0; 4]),
        Some(Sys::TaskExit) => end(End::Exit(args[0])),
        Some(Sys::Yield) => (0, [0; 4]),
        Some(Sys::Clock) => {
            let (ticks, hz) = KernelMachine.clock();
            (0, [ticks, hz, 0, 0])
        }
        _ => (Error::UnknownSyscall as u64, [0; 4]),
    };
    regs.set_result(status, ret);
    return_to_user(regs)
}

fn debug_write(ptr: u64, len: u64) -> u64 {
    let len = match usize::try_from(len) {
        Ok(len) if len <= DEBUG_WRITE_MAX => len,
        _ => return Error::BadLength as u64,
    };
    let mut buf = [0u8; DEBUG_WRITE_MAX];
    let guard = CURRENT.lock();
    let Some(current) = guard.as_ref() else {
        return Error::InvalidArgument as u64;
    };
    if KernelMachine
        .copy_from_user(&current.space, ptr, &mut buf[..len])
        .is_err()
    {
        return Error::BadPointer as u64;
    }
    KernelMachine.console_write(current.name, &buf[..len]);
    0
}

/// A hardware interrupt (already acknowledged) taken in ring 3: resume the same thread.
pub fn irq_from_user(vector: u8, regs: &mut UserRegs) -> ! {
    IRQS_FROM_USER.fetch_add(1, Ordering::Relaxed);
    if !usertest::active() {
        let next = KERNEL.enter().on_tick(Some(regs));
        run(next)
    }
    usertest::irq_from_user(vector);
    return_to_user(regs)
}

/// A hardware interrupt (already acknowledged) taken in the idle loop.
pub fn irq_in_kernel(_vector: u8) {
    IRQS_IN_KERNEL.fetch_add(1, Ordering::Relaxed);
    if !usertest::active() {
        KERNEL.enter().on_tick(None);
    }
}

/// A VM exit: the entry saved the guest's general-purpose registers in the vCPU thread's
/// own storage.
pub fn vm_exit() -> ! {
    let tsc = crate::arch::cpu::rdtsc();
    let reason = vmx::read_current(abi::vmx::field::EXIT_REASON) as u32;
    let mut k = KERNEL.enter();
    let Some(t) = k.current() else {
        drop(k);
        crate::log!(
            error,
            "vmx",
            "VM exit (reason {reason:#x}) without a current vCPU"
        );
        crate::scenario::exit(ExitCode::Crash)
    };
    if let Some(vmcs) = k.vm_exited(t, reason) {
        vmcs.cr2 = x86_64::registers::control::Cr2::read_raw();
        vmcs.dr[4] = crate::arch::xstate::read_dr6();
    }
    if reason & 0xffff == abi::vmx::reason::EXTERNAL_INTERRUPT {
        let info = vmx::read_current(abi::vmx::field::EXIT_INTR_INFO);
        let real = vmx::acknowledge_exit_interrupt(info);
        k.count_exit(t, reason, tsc);
        let next = if real { k.on_tick(None) } else { k.schedule() };
        resume(k, next)
    }
    if reason & 0xffff == abi::vmx::reason::EXCEPTION_NMI {
        let info = vmx::read_current(abi::vmx::field::EXIT_INTR_INFO);
        if (info >> 8) & 7 == 2 {
            // A host NMI (NMI exiting is on with virtual NMIs): the host's, never the
            // guest's. Umbra's host arms no NMI source (no watchdog, no performance
            // counters): logged and counted like a host interrupt; the guest goes on.
            crate::log!(warn, "vmx", "host NMI during a guest run");
            k.count_exit(t, reason, tsc);
            let next = k.schedule();
            resume(k, next)
        }
    }
    let exit = VmExit {
        reason,
        qualification: vmx::read_current(abi::vmx::field::EXIT_QUALIFICATION),
        instruction_len: vmx::read_current(abi::vmx::field::EXIT_INSTRUCTION_LEN),
        tsc,
    };
    let next = k.on_vm_exit(exit);
    if reason & 0xffff == abi::vmx::reason::PREEMPTION_TIMER {
        // The end of a guest slice: let a pending host interrupt in before the next entry,
        // outside the kernel state, as the idle loop does. On hardware the interrupt would
        // have exited the guest already; Bochs can keep a pending timer interrupt from
        // exiting a guest that runs with IF = 0 after an I/O exit, and the only CPU then
        // went back into the guest slice after slice with the clock stopped (no tick: no
        // run time limit, no sleeper woken). Found by fuzz-vm (`fuzz.guest=dff5aa35`).
        drop(k);
        interrupt_window();
        let mut k = KERNEL.enter();
        let next = k.schedule();
        resume(k, next)
    }
    resume(k, next)
}

/// VMLAUNCH/VMRESUME failed (VMfail): the vCPU stops with the VM-instruction error.
pub fn vm_entry_failed(error: u64) -> ! {
    let mut k = KERNEL.enter();
    crate::log!(warn, "vmx", "VM entry failed: VM-instruction error {error}");
    let next = k.on_entry_failed(error);
    resume(k, next)
}

/// An exception in ring 3 (`cr2` is 0 unless `vector` is 14): the thread ends with a fault.
pub fn user_exception(vector: u8, error_code: u64, cr2: u64, regs: &mut UserRegs) -> ! {
    if vector == 7 && !usertest::active() {
        // #NM: the thread's first x87/SSE/AVX instruction while another thread owns those
        // registers (CR0.TS). It takes them and runs the instruction again.
        let next = KERNEL.enter().on_device_not_available(regs);
        run(next)
    }
    if !usertest::active() {
        let address = if vector == 14 { cr2 } else { regs.rip };
        let next = {
            let mut k = KERNEL.enter();
            // A supervised task's fault goes to its supervisor, which reports it; the kernel
            // logs only the others (the console is slow: a line is ~0.8 ms at 115200 baud).
            let unsupervised = k
                .current()
                .and_then(|t| k.thread(t).ok())
                .and_then(|th| k.task(th.task).ok())
                .filter(|task| task.fault_ep.is_none());
            if let Some(task) = unsupervised {
                crate::log!(
                    warn,
                    "task",
                    "{} faulted: vector {vector} error {error_code:#x} address {address:#x} rip {:#x}; stopping it",
                    task.name,
                    regs.rip
                );
            }
            k.on_user_fault(regs, vector.into(), error_code, address)
        };
        run(next)
    }
    end(End::Fault {
        vector,
        error_code,
        cr2,
        regs: *regs,
    })
}
