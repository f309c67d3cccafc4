//! x86_64 glue: the only modules of the kernel binary that contain `unsafe` besides `mm` and
//! `boot`. Each `unsafe` block says why it is sound in a `// SAFETY:` line.
pub mod cpu;
pub mod gdt;
pub mod trap;
