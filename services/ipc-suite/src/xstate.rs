//! Each thread keeps its own vector and MMX registers (part `fpu` of issue 17): three threads
//! (two workers and the suite's own) load distinct patterns into XMM0..15 and MM0..7, then
//! yield and are preempted many times; each must find its own pattern at the end. Without a
//! per-thread save and restore of the extended state, the last writer's values are what all
//! three read back.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use userlib::sys::{self, ThreadStack};
use userlib::xregs::{self, Regs, Ymm};

use crate::Suite;

const WORKERS: usize = 2;
/// Yields per thread, and the spin between two (long enough for timer ticks to preempt the
/// threads in the middle of it too).
const ROUNDS: u64 = 64;
const SPIN: u64 = 100_000;

static STACKS: [ThreadStack<8192>; WORKERS] = [ThreadStack::new(), ThreadStack::new()];
static YMM_STACKS: [ThreadStack<8192>; WORKERS] = [ThreadStack::new(), ThreadStack::new()];
/// Per worker: 1 + the number of registers that came back wrong (0: not finished).
static RESULT: [AtomicU32; WORKERS] = [AtomicU32::new(0), AtomicU32::new(0)];
static NOTIFICATION: AtomicU64 = AtomicU64::new(u64::MAX);

extern "C" fn worker(index: u64) -> ! {
    let want = Regs::pattern(0x1000 + index);
    let got = xregs::hold_across_yields(&want, ROUNDS, SPIN);
    RESULT[index as usize].store(1 + want.differences(&got), Ordering::Relaxed);
    let _ = sys::signal(NOTIFICATION.load(Ordering::Relaxed), 1 << index);
    sys::thread_exit()
}

extern "C" fn ymm_worker(index: u64) -> ! {
    let want = Ymm::pattern(0x2000 + index);
    let got = xregs::hold_ymm_across_yields(&want, ROUNDS, SPIN);
    let wrong = want.0.iter().zip(&got.0).filter(|(a, b)| a != b).count() as u32;
    RESULT[index as usize].store(1 + wrong, Ordering::Relaxed);
    let _ = sys::signal(NOTIFICATION.load(Ordering::Relaxed), 1 << index);
    sys::thread_exit()
}

/// The same with YMM0..15 (all 256 bits), when the CPU and the kernel's XCR0 offer AVX.
pub fn threads_keep_their_ymm(t: &mut Suite) {
    if !xregs::avx_usable() {
        userlib::println!("ipc: xstate: no AVX in ring 3 (CPUID/XCR0): YMM check skipped");
        return;
    }
    let ntfn = match sys::notification_create() {
        Ok(n) => n,
        Err(e) => return t.check("xstate: notification", false, format_args!("{e:?}")),
    };
    NOTIFICATION.store(ntfn, Ordering::Relaxed);
    for r in &RESULT {
        r.store(0, Ordering::Relaxed);
    }
    let mut started = 0;
    for (i, stack) in YMM_STACKS.iter().enumerate() {
        let Some(stack) = stack.take() else { continue };
        if sys::thread_spawn(ymm_worker, stack, i as u64, 10).is_ok() {
            started += 1;
        }
    }
    let mine = Ymm::pattern(0x88);
    let got = xregs::hold_ymm_across_yields(&mine, ROUNDS, SPIN);
    let own_wrong = mine.0.iter().zip(&got.0).filter(|(a, b)| a != b).count();
    let all = (1u64 << started) - 1;
    let mut bits = 0;
    while bits & all != all {
        match sys::wait(ntfn) {
            Ok(b) => bits |= b,
            Err(_) => break,
        }
    }
    let results: [u32; WORKERS] = core::array::from_fn(|i| RESULT[i].load(Ordering::Relaxed));
    t.check(
        "xstate: three threads keep their own YMM0-15 across yields and preemption",
        started == WORKERS && own_wrong == 0 && results.iter().all(|&r| r == 1),
        format_args!(
            "{started} workers; wrong registers: suite {own_wrong}, workers {:?}",
            results.map(|r| r.saturating_sub(1))
        ),
    );
    let _ = sys::cap_delete(ntfn);
}

pub fn threads_keep_their_registers(t: &mut Suite) {
    let ntfn = match sys::notification_create() {
        Ok(n) => n,
        Err(e) => return t.check("xstate: notification", false, format_args!("{e:?}")),
    };
    NOTIFICATION.store(ntfn, Ordering::Relaxed);
    let (ticks0, _) = sys::clock().unwrap_or((0, 1));
    let mut started = 0;
    for (i, stack) in STACKS.iter().enumerate() {
        let Some(stack) = stack.take() else { continue };
        if sys::thread_spawn(worker, stack, i as u64, 10).is_ok() {
            started += 1;
        }
    }
    let mine = Regs::pattern(0x77);
    let got = xregs::hold_across_yields(&mine, ROUNDS, SPIN);
    let own_wrong = mine.differences(&got);
    let all = (1u64 << started) - 1;
    let mut bits = 0;
    while bits & all != all {
        match sys::wait(ntfn) {
            Ok(b) => bits |= b,
            Err(_) => break,
        }
    }
    let (ticks1, _) = sys::clock().unwrap_or((0, 1));
    let results: [u32; WORKERS] = core::array::from_fn(|i| RESULT[i].load(Ordering::Relaxed));
    t.check(
        "xstate: three threads keep their own XMM0-15 and MM0-7 across yields and preemption",
        started == WORKERS && own_wrong == 0 && results.iter().all(|&r| r == 1),
        format_args!(
            "{started} workers; wrong registers: suite {own_wrong}, workers {:?}; {} ticks",
            results.map(|r| r.saturating_sub(1)),
            ticks1 - ticks0
        ),
    );
    let _ = sys::cap_delete(ntfn);
}
