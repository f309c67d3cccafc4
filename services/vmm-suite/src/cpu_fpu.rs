//! Each vCPU has its own vector, MMX and debug registers (part `fpu` of issue 17): `guest-fpu`
//! fills XMM0..7 and MM0..7 and DR0..DR3/DR7, causes some 900 exits, and checks they all
//! survive, on EPT and on shadow paging. Meanwhile a thread of this suite keeps its own
//! pattern in XMM0..15 and MM0..7 across yields (the VMM service and the suite are the host
//! side the guest shares the CPU with): it must find it intact too, while the guest ran.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use abi::vmx::reason;
use userlib::proto::vmm::EntryMode;
use userlib::suite::Suite;
use userlib::sys::{self, ThreadStack};
use userlib::xregs::{self, Regs};

static STACK: ThreadStack<8192> = ThreadStack::new();
static STOP: AtomicBool = AtomicBool::new(false);
/// Rounds the thread finished, and registers it found changed.
static ROUNDS: AtomicU32 = AtomicU32::new(0);
static WRONG: AtomicU32 = AtomicU32::new(0);
static NOTIFICATION: AtomicU64 = AtomicU64::new(u64::MAX);

extern "C" fn host_side(_: u64) -> ! {
    let want = Regs::pattern(0xf00d);
    while !STOP.load(Ordering::Relaxed) {
        let got = xregs::hold_across_yields(&want, 4, 20_000);
        WRONG.fetch_add(want.differences(&got), Ordering::Relaxed);
        ROUNDS.fetch_add(1, Ordering::Relaxed);
    }
    let _ = sys::signal(NOTIFICATION.load(Ordering::Relaxed), 1);
    sys::thread_exit()
}

pub fn fpu_suite(t: &mut Suite) {
    let ntfn = match sys::notification_create() {
        Ok(n) => n,
        Err(e) => return t.check("fpu: notification", false, format_args!("{e:?}")),
    };
    NOTIFICATION.store(ntfn, Ordering::Relaxed);
    let started = STACK
        .take()
        .is_some_and(|s| sys::thread_spawn(host_side, s, 0, 10).is_ok());
    let cfg = crate::config("fpu", "guest-fpu", 16, EntryMode::Multiboot);
    let before = ROUNDS.load(Ordering::Relaxed);
    for (mode, cfg) in [("EPT", cfg.clone()), ("shadow", crate::shadow(&cfg, false))] {
        let what = if mode == "EPT" {
            "guest keeps XMM, MMX and DR0-3/DR7 across exits (EPT)"
        } else {
            "guest keeps XMM, MMX and DR0-3/DR7 across exits (shadow paging)"
        };
        if let Some(s) = crate::passing_guest(t, what, &cfg) {
            let dr = crate::exits_of(&s, reason::DR_ACCESS);
            t.check(
                "  its MOV DR exits were answered",
                dr >= 19,
                format_args!("{dr} dr-access exits: {:?}", s.exits),
            );
        }
    }
    let during = ROUNDS.load(Ordering::Relaxed) - before;
    STOP.store(true, Ordering::Relaxed);
    if started {
        let _ = sys::wait(ntfn);
    }
    let wrong = WRONG.load(Ordering::Relaxed);
    t.check(
        "a suite thread keeps its XMM0-15 and MM0-7 while the guests run",
        started && during > 0 && wrong == 0,
        format_args!(
            "started {started}, {during} rounds while the guests ran, {wrong} registers changed"
        ),
    );
    let _ = sys::cap_delete(ntfn);
}
