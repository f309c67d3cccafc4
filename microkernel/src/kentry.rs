//! Kernel entry handlers: `arch::user` and `arch::trap` call these four functions on every
//! entry from ring 3 (and `irq_in_kernel` from the idle loop); none returns to its caller
//! except `irq_in_kernel`. Each hands the entry to the kernel object model
//! (`microkernel::kobj::Kernel`, in [`KERNEL`]) and runs what it picks next: a user thread,
//! the idle loop, or the end of the scenario.

use crate::arch::entry_cell::{Entered, EntryCell};
use crate::arch::user::{idle_wait, interrupt_window};
use crate::arch::vmx;
use crate::mm::uspace::{self, KernelMachine};
use abi::ExitCode;
use core::sync::atomic::{AtomicU64, Ordering};
use microkernel::kobj::ids::ThreadId;
use microkernel::kobj::machine::Machine;
use microkernel::kobj::regs::UserRegs;
use microkernel::kobj::vm::VmExit;
use microkernel::kobj::{Kernel, Next};

/// The kernel object model: every task, thread and object.
static KERNEL: EntryCell<Kernel<KernelMachine>> = EntryCell::new(Kernel::new(KernelMachine));

/// Starts the first task of the services' scenarios, the boot module named `supervisor`,
/// and runs user mode from then on.
pub fn start_services() -> ! {
    start_first_task("supervisor", |_| 0)
}

/// Starts the boot module named `name` (the first word of its command line) as the first
/// task, with `arg(its module index)` in its `rdi`, and runs user mode from then on.
pub fn start_first_task(name: &str, arg: impl FnOnce(usize) -> u64) -> ! {
    let next = {
        let mut k = KERNEL.enter();
        let count = k.machine().module_count();
        let index = (0..count).find(|&i| {
            k.machine()
                .module(i)
                .is_some_and(|(line, _)| line.split_whitespace().next() == Some(name))
        });
        let Some(index) = index else {
            drop(k);
            crate::log!(
                error,
                "task",
                "no boot module named '{name}' ({count} module(s))"
            );
            crate::scenario::exit(ExitCode::Failure)
        };
        match k.start_init(index, arg(index)) {
            Ok(task) => crate::log!(
                info,
                "task",
                "started {name} (module {index}) as task {task}"
            ),
            Err(e) => {
                drop(k);
                crate::log!(error, "task", "cannot start {name}: {e:?}");
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
        Next::User(t) => return_to_thread(k, t),
        Next::Guest(t) => enter_guest(k, t),
        Next::MachineExit(code) => {
            drop(k);
            crate::scenario::exit(ExitCode::from_raw(u64::from(code)))
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

/// [`resume`] of [`Next::User`]`(t)`, inlined where a user thread is the common next (the
/// syscall and the exit paths).
#[inline(always)]
fn resume_user(mut k: Entered<'_, Kernel<KernelMachine>>, t: ThreadId) -> ! {
    crate::console::pump();
    k.switch_xstate(Next::User(t));
    return_to_thread(k, t)
}

/// [`resume`] of `next`, a [`Next::Guest`], inlined where a guest is a common next (a
/// reply to an exit): no pass through `resume`'s match.
#[inline(always)]
fn resume_guest(mut k: Entered<'_, Kernel<KernelMachine>>, next: Next) -> ! {
    let Next::Guest(t) = next else {
        resume(k, next)
    };
    crate::console::pump();
    k.switch_xstate(Next::Guest(t));
    enter_guest(k, t)
}

/// Enters vCPU thread `t`'s guest (the console pumped and the extended state switched).
#[inline(always)]
fn enter_guest(k: Entered<'_, Kernel<KernelMachine>>, t: ThreadId) -> ! {
    let k = k.enter_guest(|k| {
        k.trace_entry(t);
        k.guest_context(t).ok()
    });
    resume(k, Next::Idle)
}

/// Returns to user thread `t` (the console pumped and the extended state switched).
#[inline(always)]
fn return_to_thread(k: Entered<'_, Kernel<KernelMachine>>, t: ThreadId) -> ! {
    let k = k.return_to_user(|k| {
        let (regs, space) = k.context(t).ok()?;
        uspace::activate(space);
        Some(regs)
    });
    resume(k, Next::Idle)
}

/// Runs what the object model picked.
fn run(next: Next) -> ! {
    resume(KERNEL.enter(), next)
}

/// Interrupts taken in the idle loop.
static IRQS_IN_KERNEL: AtomicU64 = AtomicU64::new(0);

/// Interrupts taken in the kernel's idle loop so far.
pub fn idle_irqs() -> u64 {
    IRQS_IN_KERNEL.load(Ordering::Relaxed)
}

/// `syscall` from ring 3, its registers saved in the running thread's own storage.
pub fn syscall_saved() -> ! {
    let mut k = KERNEL.enter();
    match k.on_syscall_saved() {
        Next::User(t) => resume_user(k, t),
        // A handler's reply to an exit (the thread taken out of `next` there, so that the
        // user path above does not pay for it).
        next @ Next::Guest(_) => resume_guest(k, next),
        next => resume(k, next),
    }
}

/// A hardware interrupt (already acknowledged) taken in ring 3: resume the same thread.
pub fn irq_from_user(_vector: u8, regs: &mut UserRegs) -> ! {
    let next = KERNEL.enter().on_tick(Some(regs));
    run(next)
}

/// A hardware interrupt (already acknowledged) taken in the idle loop.
pub fn irq_in_kernel(_vector: u8) {
    IRQS_IN_KERNEL.fetch_add(1, Ordering::Relaxed);
    KERNEL.enter().on_tick(None);
}

/// A VM exit: the entry saved the guest's general-purpose registers in the vCPU thread's
/// own storage.
pub fn vm_exit() -> ! {
    let tsc = crate::arch::cpu::rdtsc();
    let reason = vmx::read_current(abi::vmx::field::EXIT_REASON) as u32;
    let mut k = KERNEL.enter();
    let Some(t) = k.current() else {
        drop(k);
        crate::arch::xstate::load_host_xcr0();
        crate::log!(
            error,
            "vmx",
            "VM exit (reason {reason:#x}) without a current vCPU"
        );
        crate::scenario::exit(ExitCode::Crash)
    };
    // The floor: answered in the kernel and straight back into the same guest, which finds
    // its CR2, DR6 and XCR0 still in the CPU (`vm_exited` asks that the thread own the
    // extended state). Back here only if it did not take the exit; the VMCS then keeps
    // what the CPU holds of the guest's.
    k = k.reenter_guest(|k| {
        k.vm_exited(
            t,
            reason,
            tsc,
            || {
                (
                    vmx::read_current(abi::vmx::field::EXIT_QUALIFICATION),
                    vmx::read_current(abi::vmx::field::EXIT_INSTRUCTION_LEN),
                )
            },
            |vmcs| {
                vmcs.cr2 = x86_64::registers::control::Cr2::read_raw();
                vmcs.dr[4] = crate::arch::xstate::read_dr6();
            },
        )
    });
    crate::arch::xstate::load_host_xcr0();
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
    // The common exit, straight to its waiting handler (run from here, not through the
    // match below).
    if let Some(r) = k.fast_vm_exit(exit) {
        resume_user(k, r)
    }
    let next = k.general_vm_exit(exit);
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
    match next {
        // The common next after an exit: its handler.
        Next::User(t) => resume_user(k, t),
        next => resume(k, next),
    }
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
    if vector == 7 {
        // #NM: the thread's first x87/SSE/AVX instruction while another thread owns those
        // registers (CR0.TS). It takes them and runs the instruction again.
        let next = KERNEL.enter().on_device_not_available(regs);
        run(next)
    }
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
