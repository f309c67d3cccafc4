//! Scenario `fuzz-vm`, part 2: hostile guests through the normal VMM service. Each run is
//! `RunVm` of `guest-random` with a fresh seed on its command line: the guest executes a page
//! of random bytes, or first sets up random page tables and random paging modes and touches
//! random addresses (mostly on shadow paging, where the MMU service walks those tables). Every
//! run must end in a VM result with a time limit bounding guests that loop; a VMM error, a
//! service that stops answering or a restarted service fails the run.

use core::fmt::Write;

use heapless::String;
use userlib::ipc::client;
use userlib::proto::vmm::{
    self, EntryMode, MmuMode, ShadowConfig, VmConfig, VmResult, Vmm, DEFAULT_PREV_ROOTS, GUEST_PASS,
};

use crate::counts::{kind_name, Counts};
use crate::rng::Rng;
use crate::{vmm, Suite, PROGRESS};

/// The time limit of one random guest: enough for a loop of exits to show, short enough that a
/// guest looping without exits costs little.
const TIME_LIMIT_MS: u32 = 300;
/// Guests that once found a bug, run first in every run: (seed, random tables, shadow
/// paging). 0xdff5aa35: random code looping through an instruction across a page boundary
/// with IF = 0 after an I/O exit; Bochs kept the timer interrupt from exiting it and the
/// machine hung (the kernel now lets pending interrupts in at the end of each slice).
const REGRESSIONS: [(u32, bool, bool); 1] = [(0xdff5_aa35, false, false)];

fn name(s: &str) -> String<16> {
    let mut out = String::new();
    let _ = out.push_str(s);
    out
}

/// `runs` random guests, then a normal guest that must still pass. With `only`, the guest
/// seed `only` in each of its four kinds instead (to repeat one run).
pub fn run(seed: u64, runs: u64, only: Option<u32>, t: &mut Suite) {
    let runs = if only.is_some() {
        4
    } else {
        runs + REGRESSIONS.len() as u64
    };
    let rng = Rng::new(seed ^ 0x6e57);
    let mut results = Counts::new();
    let mut kinds = Counts::new();
    let mut exits = Counts::new();
    let mut failures = 0u64;
    let mut done = 0u64;
    let mut total_exits = 0u64;
    for i in 0..runs {
        let tables = rng.chance(1, 2);
        let shadow = if tables {
            rng.chance(3, 4)
        } else {
            rng.chance(1, 2)
        };
        let guest_seed = rng.next() as u32 | 1;
        let (tables, shadow, guest_seed) = match (only, REGRESSIONS.get(i as usize)) {
            (Some(g), _) => (i & 1 != 0, i & 2 != 0, g),
            (None, Some(&(g, t, s))) => (t, s, g),
            (None, None) => (tables, shadow, guest_seed),
        };
        let mut cmdline: String<{ userlib::proto::vmm::CMDLINE_MAX }> = String::new();
        let _ = write!(cmdline, "{guest_seed:x}{}", if tables { " t" } else { "" });
        let mmu = if shadow {
            MmuMode::Shadow(ShadowConfig {
                prev_roots: DEFAULT_PREV_ROOTS,
                pool_pages: rng.pick(&[16, 64, 512]),
                kvm_policy: rng.chance(1, 2),
                audit: rng.chance(1, 2),
            })
        } else {
            MmuMode::Ept
        };
        kinds.add(match (tables, shadow) {
            (false, false) => "code-ept",
            (false, true) => "code-shadow",
            (true, false) => "tables-ept",
            (true, true) => "tables-shadow",
        });
        let config = VmConfig {
            name: name("rnd"),
            module: "guest-random".try_into().unwrap_or_default(),
            ram_mib: 4,
            entry: EntryMode::Multiboot,
            vcpus: 1,
            cmdline,
            mmu,
            benchmark: false,
            time_limit_ms: TIME_LIMIT_MS,
            trace: false,
            max_resets: 0,
            initrd: heapless::String::new(),
        };
        let r = client::<Vmm>(vmm()).call(&vmm::Request::RunVm { config });
        PROGRESS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        done += 1;
        match r {
            Ok(vmm::Response::Finished(s)) => {
                results.add(&kind_name(format_args!("{:?}", s.result)));
                total_exits += s.total_exits;
                for (reason, n) in &s.exits {
                    let rname = abi::vmx::reason::name(u32::from(*reason)).unwrap_or("other");
                    exits.add_n(rname, u64::from(*n));
                }
            }
            other => {
                failures += 1;
                userlib::println!(
                    "fuzz: FAIL random guest {guest_seed:#x} (tables {tables}, shadow {shadow}): {other:?}"
                );
            }
        }
    }
    userlib::println!("fuzz: guest runs: {done} ({total_exits} exits handled by the VMM)");
    kinds.print("guest runs by kind");
    results.print("results by kind");
    exits.print("guest exits by reason (the VMM's and the kernel's)");
    t.check(
        "random guests: every run ended in a VM result",
        failures == 0 && done == runs,
        format_args!("{failures} failure(s), {done} of {runs} runs"),
    );
    // The host is intact: a normal guest still passes, on EPT and on shadow paging.
    for mmu in [MmuMode::Ept, MmuMode::Shadow(ShadowConfig::DEFAULT)] {
        let config = VmConfig {
            name: name("after"),
            module: "guest-multiboot".try_into().unwrap_or_default(),
            ram_mib: 16,
            entry: EntryMode::Multiboot,
            vcpus: 1,
            cmdline: String::new(),
            mmu,
            benchmark: false,
            time_limit_ms: 0,
            trace: false,
            max_resets: 0,
            initrd: heapless::String::new(),
        };
        let r = client::<Vmm>(vmm()).call(&vmm::Request::RunVm { config });
        let ok = matches!(&r, Ok(vmm::Response::Finished(s))
            if s.result == VmResult::DebugExit { code: GUEST_PASS });
        t.check(
            "a normal guest still passes through the VMM afterwards",
            ok,
            format_args!("{mmu:?}: {r:?}"),
        );
    }
}
