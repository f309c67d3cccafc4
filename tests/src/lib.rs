//! `umbra-tests`: the host-side harness that boots Umbra's ISO in QEMU or Bochs, streams the
//! serial console, judges the serial log, and runs everything behind `make test`.
//!
//! - [`scenarios`]: the one table of boot scenarios.
//! - [`bootcfg`]: GRUB/Limine menus generated from it, and the per-run config disk that picks
//!   a scenario without rebuilding the ISO.
//! - [`emu`]: QEMU and Bochs command lines and configuration.
//! - [`runner`]: one boot: start, stream, time out, keep the log, judge, report.
//! - [`judge`] and [`tally`]: pure log parsing and counting (unit-tested).
//! - [`orchestrate`]: `make test`.
//! - [`bench`]: `make bench`: IPC round trips, VM exit round trips, the shadow MMU.
//! - [`userguest`]: `make run GUEST=path`: a user's own kernel, checked, then booted.
//! - [`trace`] and [`trace_svg`]: `make trace`: the exit trace report, its CSV and its SVG.
//! - [`linux`]: Linux guests' assets, the test init's report, the native (no Umbra) boot.
//! - [`profile`]: `make profile`: where one path's instructions go, from a Bochs trace.

pub mod bench;
pub mod bootcfg;
pub mod emu;
pub mod judge;
pub mod limine;
pub mod linux;
pub mod linux_run;
pub mod orchestrate;
pub mod pass_fail;
pub mod profile;
pub mod runner;
pub mod scenarios;
pub mod screen;
pub mod trace;
pub mod trace_svg;
pub mod userguest;
