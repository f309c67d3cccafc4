//! The kernel object model: tasks, threads, capabilities, endpoints, notifications, memory
//! objects and the scheduler, as plain data over a [`machine::Machine`]. The kernel binary
//! drives it from its entry points; host tests drive it with a model machine.

pub mod captable;
mod fastpath;
pub mod ids;
pub mod image;
mod ipc;
pub mod kernel;
pub mod machine;
mod memory;
pub mod objects;
pub mod queue;
mod refs;
pub mod regs;
mod sched;
pub mod shadow;
mod syscalls;
mod tasks;
mod threads;
pub mod trace;
pub mod vm;
mod xstate;

pub use kernel::{Kernel, Next};

#[cfg(test)]
mod tests;

#[cfg(test)]
mod tests_exit_fast;
#[cfg(test)]
mod tests_exits;
#[cfg(test)]
mod tests_forward;
#[cfg(test)]
mod tests_gone;
#[cfg(test)]
mod tests_init;
#[cfg(test)]
mod tests_interrupts;
#[cfg(test)]
mod tests_invariants;
#[cfg(test)]
mod tests_shadow;
#[cfg(test)]
mod tests_syscall_props;
#[cfg(test)]
mod tests_trace;
#[cfg(test)]
mod tests_vm;
#[cfg(test)]
mod tests_xstate;
