//! Scenario `fuzz-vm`, part 1: a hostile exit handler. The fuzzer creates its own VMs (EPT,
//! shadow-paged, shadow-paged with audit) with a small guest that exits in a loop, points the
//! portal of every exit reason at its own endpoint, and a handler thread answers each exit
//! message with random bytes, truncated, extended or corrupted `ExitReply` encodings, random
//! flags, registers, control registers, event injections and shadow roots, and writes random
//! guest state while the vCPU waits. Each run ends in a clean stop ([`stop`]) or goes on
//! until the handler stops it; the main thread counts the stops and starts the next run on a
//! fresh vCPU (and every few runs on a fresh VM).
//!
//! At the end a sane handler runs a fresh VM and the guest's loop must produce exactly its
//! exits in order: the kernel still runs VMs correctly.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use abi::ipc::MAX_PAYLOAD;
use abi::vmx::{field, reason, reply, stop, vm_flags, ExitMessage, ExitReply, EXIT_REASONS};
use abi::{CapSlot, Error, Rights};
use spin::Mutex;
use userlib::sys::{self, Mapping, ThreadStack};
use vmm_service::loader::entry;

use crate::counts::Counts;
use crate::rng::Rng;
use crate::{Suite, PROGRESS};

/// Guest RAM of a fuzzed VM (pages) and its shadow page pool.
const RAM_PAGES: u64 = 512;
const POOL_PAGES: u64 = 16;
/// Where the fuzzer maps a VM's RAM while it writes the guest.
const RAM_VA: u64 = 0x6000_0000;
/// The guest's code.
const CODE_GPA: u64 = 0x1000;
/// Runs on one VM before the next VM.
const RUNS_PER_VM: u64 = 4;
/// Replies in one run before the handler stops it.
const REPLIES_PER_RUN: u64 = 32;
/// The stop code of the handler's own stop at the end of a run.
const ENOUGH: u64 = 0x5eed;

/// The guest: 32-bit protected mode, paging off, an endless loop of exits.
const GUEST: [u8; 22] = [
    0x0f, 0xa2, // cpuid
    0xe4, 0x80, // in al, 0x80
    0xe6, 0x80, // out 0x80, al
    0x0f, 0x01, 0xc1, // vmcall
    0x0f, 0x32, // rdmsr
    0xf4, // hlt
    0x0f, 0x08, // invd
    0x0f, 0x30, // wrmsr
    0x0f, 0x22, 0xc0, // mov cr0, eax (EAX = the multiboot magic: PE clear, an owned bit)
    0x90, // nop
    0xeb, 0xea, // jmp CODE_GPA
];
/// The exits of one pass of [`GUEST`], in order.
const GUEST_EXITS: [u32; 9] = [
    reason::CPUID,
    reason::IO,
    reason::IO,
    reason::VMCALL,
    reason::RDMSR,
    reason::HLT,
    reason::INVD,
    reason::WRMSR,
    reason::CR_ACCESS,
];

/// What the handler thread does: answer at random, or sanely (the final check).
static SANE: AtomicBool = AtomicBool::new(false);
/// Replies in the current run (reset by the main thread before each run).
static RUN_REPLIES: AtomicU64 = AtomicU64::new(0);
/// The vCPU being run (the handler writes random state into it), the pool's physical base.
static VCPU: AtomicU64 = AtomicU64::new(abi::NO_CAP);
static POOL_PHYS: AtomicU64 = AtomicU64::new(0);
static HANDLER_STACK: ThreadStack<32768> = ThreadStack::new();

/// The handler's counts, read by the main thread at the end.
pub struct HandlerCounts {
    pub replies: u64,
    pub by_kind: Counts,
    pub exits: Counts,
    pub undecodable: u64,
    /// The sane run: exit reasons seen, in order (up to 32).
    pub sane_reasons: heapless::Vec<u32, 32>,
}

static COUNTS: Mutex<HandlerCounts> = Mutex::new(HandlerCounts {
    replies: 0,
    by_kind: Counts::new(),
    exits: Counts::new(),
    undecodable: 0,
    sane_reasons: heapless::Vec::new(),
});

/// Starts the handler thread on `ep` (its random replies are drawn from `seed`).
pub fn start_handler(ep: CapSlot, seed: u64) -> Result<(), &'static str> {
    let stack = HANDLER_STACK.take().ok_or("handler stack")?;
    HANDLER_SEED.store(seed, Ordering::Relaxed);
    sys::thread_spawn(handler_main, stack, ep, 10).map_err(|_| "no handler thread")?;
    Ok(())
}

static HANDLER_SEED: AtomicU64 = AtomicU64::new(0);

extern "C" fn handler_main(ep: u64) -> ! {
    let rng = Rng::new(HANDLER_SEED.load(Ordering::Relaxed) ^ 0x5ca1_ab1e);
    let mut buf = [0u8; MAX_PAYLOAD];
    let mut msg = ExitMessage::default();
    // This run's replies are all gentle (a third of the runs): guests that run on.
    let mut gentle = false;
    let mut r = sys::recv(ep, &mut buf);
    loop {
        let got = match r {
            Ok(got) => got,
            Err(_) => {
                r = sys::recv(ep, &mut buf);
                continue;
            }
        };
        let len = got.len.min(buf.len());
        let mut c = COUNTS.lock();
        let decoded = msg.decode_into(&buf[..len]).is_ok();
        if !decoded {
            c.undecodable += 1;
        }
        let basic = msg.basic_reason();
        c.exits.add(reason::name(basic).unwrap_or("other"));
        let n = RUN_REPLIES.fetch_add(1, Ordering::Relaxed) + 1;
        let (reply_len, label) = if SANE.load(Ordering::Relaxed) {
            let _ = c.sane_reasons.push(basic);
            let r = if n >= 2 * GUEST_EXITS.len() as u64 {
                ExitReply::stop(ENOUGH)
            } else {
                ExitReply::advance()
            };
            (r.encode(&mut buf).unwrap_or(0), abi::vmx::REPLY_LABEL)
        } else if n >= REPLIES_PER_RUN {
            c.by_kind.add("stop-enough");
            let r = ExitReply::stop(ENOUGH);
            (r.encode(&mut buf).unwrap_or(0), abi::vmx::REPLY_LABEL)
        } else {
            if rng.chance(1, 8) {
                write_random_state(&rng, &mut c.by_kind);
            }
            if n == 1 {
                gentle = rng.chance(1, 3);
            }
            let (len, kind) = random_reply(&rng, &mut buf, gentle);
            c.by_kind.add(kind);
            let label = if rng.chance(1, 8) {
                rng.next()
            } else {
                abi::vmx::REPLY_LABEL
            };
            (len, label)
        };
        c.replies += 1;
        drop(c);
        PROGRESS.fetch_add(1, Ordering::Relaxed);
        r = sys::reply_recv(ep, &mut buf, reply_len, label, None);
    }
}

/// Guest-state fields a handler may write (the kernel forces or refuses the rest).
const FIELDS: [u64; 30] = [
    field::GUEST_CR0,
    field::GUEST_CR3,
    field::GUEST_CR4,
    field::GUEST_IA32_EFER,
    field::GUEST_RIP,
    field::GUEST_RSP,
    field::GUEST_RFLAGS,
    field::GUEST_CS_SELECTOR,
    field::GUEST_CS_AR,
    field::GUEST_CS_LIMIT,
    field::GUEST_CS_BASE,
    field::GUEST_SS_AR,
    field::GUEST_DS_AR,
    field::GUEST_TR_AR,
    field::GUEST_LDTR_AR,
    field::GUEST_GDTR_LIMIT,
    field::GUEST_IDTR_BASE,
    field::GUEST_IDTR_LIMIT,
    field::GUEST_INTERRUPTIBILITY,
    field::GUEST_ACTIVITY_STATE,
    field::EXCEPTION_BITMAP,
    field::VM_ENTRY_INTR_INFO,
    field::VM_ENTRY_EXCEPTION_ERROR_CODE,
    field::VM_ENTRY_INSTRUCTION_LEN,
    field::CR0_GUEST_HOST_MASK,
    field::CR4_GUEST_HOST_MASK,
    field::CR0_READ_SHADOW,
    field::GUEST_PDPTE0,
    field::GUEST_DR7,
    field::GUEST_CR2,
];

/// A value worth writing: zero, all ones, small, random, a random bit of the old value.
fn value(rng: &Rng, old: u64) -> u64 {
    match rng.below(6) {
        0 => 0,
        1 => u64::MAX,
        2 => rng.below(0x100),
        3 => old ^ (1 << rng.below(64)),
        4 => rng.next() & 0xffff_ffff,
        _ => rng.next(),
    }
}

/// Writes one to four random fields of the vCPU being run (refused writes are counted).
fn write_random_state(rng: &Rng, counts: &mut Counts) {
    let vcpu = VCPU.load(Ordering::Relaxed);
    let mut pairs: heapless::Vec<(u64, u64), 4> = heapless::Vec::new();
    for _ in 0..=rng.below(4) {
        let f = if rng.chance(1, 8) {
            field::GPR_BASE + rng.below(16)
        } else {
            rng.pick(&FIELDS)
        };
        let mut old = [0u64];
        let _ = sys::vcpu_read(vcpu, &[f], &mut old);
        let _ = pairs.push((f, value(rng, old[0])));
    }
    match sys::vcpu_write(vcpu, &pairs) {
        Ok(()) => counts.add("state-written"),
        Err((e, _)) => counts.add_fmt(format_args!("state-refused-{e:?}")),
    }
}

/// A control-register value: random, or a plausible one with random bits flipped.
fn control(rng: &Rng, plausible: u64) -> u64 {
    if rng.chance(1, 2) {
        plausible ^ (1 << rng.below(64)) ^ (rng.next() & rng.next() & rng.next())
    } else {
        rng.next()
    }
}

/// A well-formed reply with random contents.
fn random_valid(rng: &Rng) -> ExitReply {
    let mut r = ExitReply {
        flags: (rng.next() as u32) & reply::ALL & rng.next() as u32,
        gpr_mask: rng.next() as u16 & rng.next() as u16,
        ..ExitReply::default()
    };
    for g in r.gprs.iter_mut() {
        *g = value(rng, 0);
    }
    r.rip = rng.pick(&[
        CODE_GPA,
        CODE_GPA + rng.below(24),
        rng.next(),
        rng.below(1 << 21),
    ]);
    r.rflags = rng.pick(&[2, 0x202, rng.next()]);
    r.cr0 = control(rng, 0x8000_0031);
    r.cr3 = rng.pick(&[0, rng.below(1 << 21) & !0xfff, rng.next()]);
    r.cr4 = control(rng, 0x20);
    r.efer = control(rng, 0x500);
    // An event: valid bit, a type (0..7), a vector, sometimes an error code.
    let vector = rng.pick(&[rng.below(32), rng.below(256), 2, 8, 14, 18]);
    let kind = rng.below(8);
    let deliver = rng.below(2);
    let info = (1 << 31) | (deliver << 11) | (kind << 8) | vector;
    r.inject = rng.pick(&[info, info | (rng.next() << 32), rng.next()]);
    r.stop_code = rng.next();
    r.cr2 = rng.next();
    let pool = POOL_PHYS.load(Ordering::Relaxed);
    r.shadow_cr3 = rng.pick(&[
        pool + 4096 * rng.below(POOL_PAGES),
        pool + 4096 * rng.below(POOL_PAGES + 4) + rng.below(4096),
        pool.wrapping_sub(4096),
        rng.next(),
        rng.below(1 << 32) & !0xfff,
    ]);
    if rng.chance(1, 4) {
        r.flags |= reply::SET_SHADOW_CR3;
    }
    if rng.chance(1, 6) {
        r.flags &= !reply::STOP;
    }
    r
}

/// One reply, encoded into `buf`: (length, kind).
/// A gentle reply only advances or resumes with random registers: the guest runs on.
fn random_reply(rng: &Rng, buf: &mut [u8], gentle: bool) -> (usize, &'static str) {
    let max = ExitReply::MAX_SIZE + 16;
    let valid = |buf: &mut [u8], r: &ExitReply| r.encode(buf).unwrap_or(0);
    let pick = if gentle {
        4 + rng.below(4)
    } else {
        rng.below(13)
    };
    match pick {
        0 => {
            let n = rng.below(max as u64 + 1) as usize;
            rng.fill(&mut buf[..n]);
            (n, "random-bytes")
        }
        1 => {
            let n = valid(buf, &random_valid(rng));
            (rng.below(n as u64) as usize, "truncated")
        }
        2 => {
            let n = valid(buf, &random_valid(rng));
            let extra = 1 + rng.below(16) as usize;
            rng.fill(&mut buf[n..n + extra]);
            (n + extra, "extended")
        }
        3 => {
            let n = valid(buf, &random_valid(rng));
            // Unknown flag bits or a non-zero pad byte.
            let at = rng.pick(&[1usize, 2, 3, 6, 7]);
            buf[at] |= 1 << rng.below(8);
            if at == 1 {
                buf[1] |= 0x08; // bit 11 and up: unknown
            }
            (n, "bad-header")
        }
        4..=6 => (valid(buf, &ExitReply::advance()), "advance"),
        7 => {
            let mut r = ExitReply::advance();
            r.gpr_mask = rng.next() as u16;
            for g in r.gprs.iter_mut() {
                *g = value(rng, 0);
            }
            (valid(buf, &r), "advance-registers")
        }
        8 => {
            let mut r = ExitReply::resume();
            r.flags = reply::INJECT | (rng.next() as u32 & reply::ADVANCE_RIP);
            r.inject = random_valid(rng).inject;
            (valid(buf, &r), "inject")
        }
        9 => {
            let mut r = ExitReply::resume();
            r.flags = reply::SET_SHADOW_CR3;
            r.shadow_cr3 = random_valid(rng).shadow_cr3;
            (valid(buf, &r), "shadow-cr3")
        }
        _ => (valid(buf, &random_valid(rng)), "random-valid"),
    }
}

/// A VM of the fuzzer: RAM with the guest, the VM, a shadow pool.
struct FuzzVm {
    ram: CapSlot,
    vm: CapSlot,
    pool: Option<CapSlot>,
}

impl Drop for FuzzVm {
    fn drop(&mut self) {
        let _ = sys::cap_delete(self.vm);
        let _ = sys::cap_delete(self.ram);
        if let Some(p) = self.pool {
            let _ = sys::cap_delete(p);
        }
    }
}

fn new_vm(flags: u64, ep: CapSlot) -> Result<FuzzVm, Error> {
    let ram = sys::mem_alloc(RAM_PAGES)?;
    let mut vm = FuzzVm {
        ram,
        vm: abi::NO_CAP,
        pool: None,
    };
    {
        let mut map = Mapping::new(ram, RAM_VA)?;
        let at = CODE_GPA as usize;
        map.bytes_mut()[at..at + GUEST.len()].copy_from_slice(&GUEST);
    }
    vm.vm = sys::vm_create(ram, flags, crate::vmx())?;
    if flags & vm_flags::SHADOW != 0 {
        let pool = sys::mem_alloc(POOL_PAGES)?;
        vm.pool = Some(pool);
        POOL_PHYS.store(sys::mem_info(pool)?.1, Ordering::Relaxed);
        sys::vm_set_shadow(vm.vm, pool, ep)?;
    } else {
        sys::vm_map_ram(
            vm.vm,
            0,
            RAM_PAGES,
            Rights::READ | Rights::WRITE | Rights::EXEC,
        )?;
    }
    Ok(vm)
}

/// A vCPU in the guest's entry state with every portal on `ep` and a run time limit.
fn new_vcpu(vm: &FuzzVm, ep: CapSlot, id: u64, rng: &Rng) -> Result<CapSlot, Error> {
    let vcpu = sys::vcpu_create(vm.vm, id)?;
    for r in 0..EXIT_REASONS as u32 {
        if reason::NO_PORTAL.contains(&r) {
            continue;
        }
        let mask = if rng.chance(3, 4) {
            abi::vmx::group::ALL
        } else {
            rng.next() as u32 & abi::vmx::group::ALL
        };
        let _ = sys::vcpu_portal(vcpu, r, Some(ep), mask);
    }
    let pairs = entry::protected_mode_entry(CODE_GPA as u32, 0);
    for chunk in pairs.chunks(16) {
        sys::vcpu_write(vcpu, chunk).map_err(|(e, _)| e)?;
    }
    let hz = sys::clock()?.1.max(1);
    sys::vcpu_write(vcpu, &[(field::RUN_TICKS, (hz / 5).max(2))]).map_err(|(e, _)| e)?;
    Ok(vcpu)
}

/// The name of a stop's kind.
fn stop_name(s: u64) -> &'static str {
    match s & stop::KIND_MASK {
        stop::HANDLER if s & !stop::KIND_MASK == ENOUGH => "handler-enough",
        stop::HANDLER => "handler-random-code",
        stop::UNHANDLED => "unhandled",
        stop::BAD_REPLY => "bad-reply",
        stop::ENTRY_FAILED => "entry-failed",
        stop::PORTAL_GONE => "portal-gone",
        stop::BAD_ROOT => "bad-root",
        stop::AUDIT => "audit",
        stop::TIME_LIMIT => "time-limit",
        _ => "other",
    }
}

/// Runs `runs` vCPU runs against the random handler; then the sane check.
pub fn run(seed: u64, runs: u64, ep: CapSlot, t: &mut Suite) -> Result<(), &'static str> {
    let rng = Rng::new(seed ^ 0xe417);
    start_handler(ep, seed)?;
    let mut stops = Counts::new();
    let mut modes = Counts::new();
    let mut done = 0;
    let mut failures = 0u64;
    while done < runs {
        let (flags, mode) = rng.pick(&[
            (0, "ept"),
            (vm_flags::SHADOW, "shadow"),
            (vm_flags::SHADOW | vm_flags::AUDIT, "shadow-audit"),
        ]);
        let vm = new_vm(flags, ep).map_err(|_| "cannot create a VM")?;
        for id in 0..RUNS_PER_VM {
            if done >= runs {
                break;
            }
            modes.add(mode);
            let vcpu = new_vcpu(&vm, ep, id, &rng).map_err(|_| "cannot create a vCPU")?;
            VCPU.store(vcpu, Ordering::Relaxed);
            if rng.chance(1, 4) {
                write_random_state(&rng, &mut modes);
            }
            RUN_REPLIES.store(0, Ordering::Relaxed);
            match sys::vcpu_run(vcpu) {
                Ok(s) => stops.add(stop_name(s.stop)),
                Err(e) => {
                    failures += 1;
                    userlib::println!("fuzz: FAIL VcpuRun returned {e:?}");
                }
            }
            VCPU.store(abi::NO_CAP, Ordering::Relaxed);
            let _ = sys::cap_delete(vcpu);
            done += 1;
            PROGRESS.fetch_add(1, Ordering::Relaxed);
        }
        drop(vm);
    }
    {
        let c = COUNTS.lock();
        userlib::println!(
            "fuzz: exit replies sent: {} in {done} runs ({} exit messages the handler could not decode)",
            c.replies,
            c.undecodable
        );
        c.by_kind.print("exit replies by kind");
        c.exits.print("exits by reason");
    }
    modes.print("runs by MMU mode (and state writes before a run)");
    stops.print("stops by kind");
    t.check(
        "exit replies: every run ended in a clean stop",
        failures == 0 && done == runs,
        format_args!("{failures} VcpuRun failure(s), {done} of {runs} runs"),
    );
    let undecodable = COUNTS.lock().undecodable;
    t.check(
        "exit replies: every exit message decodes",
        undecodable == 0,
        format_args!("{undecodable} did not"),
    );
    sane_run(ep, t);
    Ok(())
}

/// A fresh EPT VM, answered sanely: the guest's loop exits in its order, twice, and the
/// handler's stop ends the run.
fn sane_run(ep: CapSlot, t: &mut Suite) {
    SANE.store(true, Ordering::Relaxed);
    RUN_REPLIES.store(0, Ordering::Relaxed);
    let result = (|| {
        let vm = new_vm(0, ep)?;
        let vcpu = sys::vcpu_create(vm.vm, 9)?;
        for &r in GUEST_EXITS.iter() {
            sys::vcpu_portal(vcpu, r, Some(ep), abi::vmx::group::ALL)?;
        }
        let pairs = entry::protected_mode_entry(CODE_GPA as u32, 0);
        for chunk in pairs.chunks(16) {
            sys::vcpu_write(vcpu, chunk).map_err(|(e, _)| e)?;
        }
        let s = sys::vcpu_run(vcpu);
        let _ = sys::cap_delete(vcpu);
        drop(vm);
        s
    })();
    SANE.store(false, Ordering::Relaxed);
    let c = COUNTS.lock();
    let expected = GUEST_EXITS.iter().chain(GUEST_EXITS.iter());
    let order_ok = c.sane_reasons.len() == 2 * GUEST_EXITS.len()
        && c.sane_reasons.iter().zip(expected).all(|(a, b)| a == b);
    t.check(
        "a fresh VM still runs correctly: its exits in order, then the handler's stop",
        order_ok && matches!(result, Ok(s) if s.stop == stop::HANDLER | ENOUGH),
        format_args!("{result:?}, exits {:?}", c.sane_reasons),
    );
}
