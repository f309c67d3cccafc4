//! A user thread's register file, saved on every kernel entry and restored on return.

/// The user-visible registers of a thread. The layout is shared with the kernel's entry
/// assembler (`arch::user`), which saves into and restores from a `UserRegs`: keep it
/// `repr(C)` and change both together.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserRegs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
    pub rsp: u64,
}

/// RFLAGS of a new user thread: IF set, reserved bit 1 set.
pub const USER_RFLAGS: u64 = 0x202;

impl UserRegs {
    /// Registers of a new thread entering at `entry` with `rsp = stack_top` and `rdi = arg`.
    pub fn new_thread(entry: u64, stack_top: u64, arg: u64) -> UserRegs {
        UserRegs {
            rip: entry,
            rsp: stack_top,
            rdi: arg,
            rflags: USER_RFLAGS,
            ..UserRegs::default()
        }
    }

    /// The syscall number and its six arguments (see `abi::syscall`).
    pub fn syscall_args(&self) -> (u64, [u64; 6]) {
        (
            self.rax,
            [self.rdi, self.rsi, self.rdx, self.r10, self.r8, self.r9],
        )
    }

    /// Sets the syscall result: `rax` = error code (0 = ok), results in `rdi, rsi, rdx, r8`.
    pub fn set_result(&mut self, status: u64, ret: [u64; 4]) {
        self.rax = status;
        self.rdi = ret[0];
        self.rsi = ret[1];
        self.rdx = ret[2];
        self.r8 = ret[3];
    }
}
