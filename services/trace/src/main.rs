//! Umbra's trace service (placeholder until the service loop lands): drains the kernel's exit
//! trace ring and answers `proto::trace` with the statistics of [`trace::stats`].
#![cfg_attr(target_os = "none", no_std, no_main)]
#![forbid(unsafe_code)]

userlib::entry!(trace_main);

fn trace_main(generation: u64) {
    let stats = trace::stats::TraceStats::new();
    userlib::println!(
        "trace: generation {generation}, {} VMs (service loop not written yet)",
        stats.vm_count()
    );
}
