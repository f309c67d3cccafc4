//! The IPC benchmark (`scenario=bench-ipc`): call+reply round trips to the echo server's raw
//! benchmark label, timed with `rdtsc` around each `call`, for 0, 64 and 512-byte payloads.
//! In Bochs the TSC counts instructions, so the figures are deterministic path lengths.
//!
//! Prints one `bench-ipc: csv ...` line per payload size (read by `make bench`), a summary
//! `bench-ipc: N passed, M failed` (a size passes when every round trip came back with its
//! payload), then asks the supervisor to end the scenario.
//!
//! Capabilities (manifest `needs=echo`, taken by name through `userlib::wiring`): echo's
//! endpoint and the supervisor's.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![forbid(unsafe_code)]

use abi::ipc::MAX_PAYLOAD;
use abi::CapSlot;
use userlib::proto::supervisor::{Request, Supervisor};
use userlib::sys;
use userlib::wiring::Wiring;

userlib::entry!(bench_main);

const SUPERVISOR: CapSlot = userlib::wiring::SUPERVISOR;
/// The echo server's raw label (see `services/echo`).
const BENCH_LABEL: u64 = 0xbe7c;
const WARMUP: usize = 100;
const ROUNDS: usize = 1000;

fn bench_main(_generation: u64) {
    let mut passed = 0;
    let mut failed = 0;
    let echo = match Wiring::fetch().and_then(|w| w.endpoint("echo")) {
        Ok(ep) => ep,
        Err(e) => {
            userlib::println!("bench-ipc: no echo endpoint: {e}");
            abi::NO_CAP
        }
    };
    userlib::println!(
        "bench-ipc: csv payload_bytes,median_cycles,min_cycles,mean_cycles,max_cycles,rounds"
    );
    for size in [0usize, 64, MAX_PAYLOAD] {
        match measure(echo, size) {
            Some(s) => {
                passed += 1;
                userlib::println!(
                    "bench-ipc: payload {size:>3} bytes: round trip median {} cycles (min {}, mean {}, max {}; {ROUNDS} rounds)",
                    s.median, s.min, s.mean, s.max
                );
                userlib::println!(
                    "bench-ipc: csv {size},{},{},{},{},{ROUNDS}",
                    s.median,
                    s.min,
                    s.mean,
                    s.max
                );
            }
            None => failed += 1,
        }
    }
    let mut null = [0u32; ROUNDS];
    for sample in null.iter_mut() {
        let t0 = sys::rdtsc();
        let _ = sys::clock();
        *sample = (sys::rdtsc() - t0) as u32;
    }
    null.sort_unstable();
    userlib::println!(
        "bench-ipc: null syscall (clock) median {} cycles, min {}",
        null[ROUNDS / 2],
        null[0]
    );
    userlib::println!("bench-ipc: {passed} passed, {failed} failed");
    let mut sup = userlib::ipc::client::<Supervisor>(SUPERVISOR);
    let r = sup.call(&Request::Shutdown {
        code: u32::from(failed > 0),
    });
    userlib::println!("bench-ipc: shutdown request returned {r:?}");
}

struct Stats {
    median: u64,
    min: u64,
    mean: u64,
    max: u64,
}

/// Times `ROUNDS` round trips of `size` bytes; `None` if one failed or came back wrong.
/// Never inlined: its first `syscall` is the timed call, where `make profile` breaks.
#[inline(never)]
fn measure(echo: CapSlot, size: usize) -> Option<Stats> {
    let mut buf = [0u8; MAX_PAYLOAD];
    let mut samples = [0u32; ROUNDS];
    for round in 0..WARMUP + ROUNDS {
        for (i, b) in buf[..size].iter_mut().enumerate() {
            *b = (i + round) as u8;
        }
        let t0 = sys::rdtsc();
        let r = sys::call(echo, &mut buf, size, BENCH_LABEL, None);
        let t1 = sys::rdtsc();
        match r {
            Ok(reply) if reply.len == size && reply.label == BENCH_LABEL => {}
            other => {
                userlib::println!("bench-ipc: payload {size}: round {round}: {other:?}");
                return None;
            }
        }
        let intact = buf[..size]
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i + round) as u8);
        if !intact {
            userlib::println!("bench-ipc: payload {size}: round {round}: reply differs");
            return None;
        }
        if round >= WARMUP {
            samples[round - WARMUP] = (t1 - t0).min(u64::from(u32::MAX)) as u32;
        }
    }
    samples.sort_unstable();
    let sum: u64 = samples.iter().map(|&s| u64::from(s)).sum();
    Some(Stats {
        median: u64::from(samples[ROUNDS / 2]),
        min: u64::from(samples[0]),
        mean: sum / ROUNDS as u64,
        max: u64::from(samples[ROUNDS - 1]),
    })
}
