//! x86_64 glue: the only modules of the kernel binary that contain `unsafe` besides `mm` and
//! `boot`. Each `unsafe` block says why it is sound in a `// SAFETY:` line. Ring 3 entry and
//! exit live in `user`, the PIC and PIT in `timer`, the kernel state's cell in `entry_cell`.
pub mod cpu;
pub mod entry_cell;
pub mod gdt;
pub mod timer;
pub mod trap;
pub mod user;
pub mod vmx;
pub mod vmx_discover;
pub mod vmx_msr;
pub mod xstate;
