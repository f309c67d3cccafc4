//! Several client threads calling the echo server at once.

use core::sync::atomic::{AtomicU32, Ordering};

use heapless::Vec;
use userlib::proto::echo::{self, Echo};
use userlib::sys::{self, ThreadStack};

use crate::{echo, Suite};

const WORKERS: u64 = 3;
const CALLS: u32 = 25;

static STACKS: [ThreadStack<16384>; WORKERS as usize] =
    [ThreadStack::new(), ThreadStack::new(), ThreadStack::new()];
static GOOD: AtomicU32 = AtomicU32::new(0);
static NOTIFICATION: AtomicU32 = AtomicU32::new(u32::MAX);

extern "C" fn worker(index: u64) -> ! {
    let mut client = userlib::ipc::client::<Echo>(echo());
    for call in 0..CALLS {
        let mut data: Vec<u8, 32> = Vec::new();
        for i in 0..32u32 {
            let _ = data.push((index as u32 * 31 + call * 7 + i) as u8);
        }
        let mut sent: Vec<u8, { echo::ECHO_CAPACITY }> = Vec::new();
        let _ = sent.extend_from_slice(&data);
        match client.call(&echo::Request::Echo { data: sent.clone() }) {
            Ok(echo::Response::Echo { data: back }) if back == sent => {
                GOOD.fetch_add(1, Ordering::Relaxed);
            }
            other => userlib::println!("ipc: worker {index} call {call}: {other:?}"),
        }
        if call % 5 == 0 {
            sys::yield_now();
        }
    }
    let _ = sys::signal(u64::from(NOTIFICATION.load(Ordering::Relaxed)), 1 << index);
    sys::thread_exit()
}

pub fn concurrent_clients(t: &mut Suite) {
    let ntfn = match sys::notification_create() {
        Ok(n) => n,
        Err(e) => return t.check("concurrent clients", false, format_args!("{e:?}")),
    };
    NOTIFICATION.store(ntfn as u32, Ordering::Relaxed);
    let mut started = 0;
    for (i, stack) in STACKS.iter().enumerate() {
        let Some(stack) = stack.take() else { continue };
        if sys::thread_spawn(worker, stack, i as u64, 10).is_ok() {
            started += 1;
        }
    }
    let all = (1u64 << started) - 1;
    let mut bits = 0;
    while bits & all != all {
        match sys::wait(ntfn) {
            Ok(b) => bits |= b,
            Err(e) => {
                userlib::println!("ipc: wait: {e:?}");
                break;
            }
        }
    }
    let good = GOOD.load(Ordering::Relaxed);
    t.check(
        "three threads started and signalled completion",
        started == WORKERS && bits & all == all,
        format_args!("{started} started, bits {bits:#b}"),
    );
    t.check(
        "concurrent clients: every call answered with its own data",
        good == WORKERS as u32 * CALLS,
        format_args!("{good} of {} good", WORKERS as u32 * CALLS),
    );
    let _ = sys::cap_delete(ntfn);
}
