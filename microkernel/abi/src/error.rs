//! Error codes returned in `rax` by every syscall (0 = success).

/// Why a syscall failed. The numeric values are the ABI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Error {
    /// `rax` held no known syscall number.
    UnknownSyscall = 1,
    /// The capability slot is out of range or empty.
    InvalidCap = 2,
    /// The slot holds a capability of another kind than the syscall needs.
    WrongCapKind = 3,
    /// The capability lacks a right the operation needs.
    NoRights = 4,
    /// The capability names an object that was destroyed (revoked, or its task restarted).
    StaleCap = 5,
    /// A pointer is not a mapped user address with the access the syscall needs.
    BadPointer = 6,
    /// A length or count is out of range (e.g. a payload over [`crate::ipc::MAX_PAYLOAD`]).
    BadLength = 7,
    /// Another argument is out of range (address not aligned, priority, module index...).
    InvalidArgument = 8,
    /// Out of kernel objects, capability slots or memory.
    NoMemory = 9,
    /// The reply did not fit the caller's buffer (the caller gets this; `rdi` holds the size).
    Truncated = 10,
    /// The server serving the endpoint died during the call; it is being restarted. `rdi`
    /// holds the generation of the server that will handle a retry.
    ServerRestarted = 11,
    /// The endpoint is closed: no server will come back.
    ServerGone = 12,
    /// [`crate::Sys::Reply`] without a caller to answer.
    NoCaller = 13,
    /// The address range overlaps an existing mapping, or is outside the user half.
    AddressInUse = 14,
    /// A boot module is not a loadable ELF for this machine.
    BadImage = 15,
    /// [`crate::Sys::Poll`] found no bits (also returned as `Ok(0)`; kept for completeness).
    WouldBlock = 16,
    /// The machine has no usable VMX (no VM or vCPU can be created).
    NoVmx = 17,
    /// The vCPU is running a guest (or waiting for a handler): its state cannot be touched.
    Busy = 18,
}

impl Error {
    /// Every error, in numeric order.
    pub const ALL: &'static [Error] = &[
        Error::UnknownSyscall,
        Error::InvalidCap,
        Error::WrongCapKind,
        Error::NoRights,
        Error::StaleCap,
        Error::BadPointer,
        Error::BadLength,
        Error::InvalidArgument,
        Error::NoMemory,
        Error::Truncated,
        Error::ServerRestarted,
        Error::ServerGone,
        Error::NoCaller,
        Error::AddressInUse,
        Error::BadImage,
        Error::WouldBlock,
        Error::NoVmx,
        Error::Busy,
    ];

    /// Decodes `rax` after a syscall: `Ok(())` for 0, the error otherwise (an unknown
    /// value maps to [`Error::InvalidArgument`] rather than panicking).
    #[inline]
    pub fn check(rax: u64) -> Result<(), Error> {
        if rax == 0 {
            return Ok(());
        }
        Err(Self::from_code(rax))
    }

    /// The error of a non-zero `rax` ([`Error::InvalidArgument`] for an unknown one).
    #[inline(never)]
    fn from_code(rax: u64) -> Error {
        Error::ALL
            .iter()
            .copied()
            .find(|e| *e as u64 == rax)
            .unwrap_or(Error::InvalidArgument)
    }
}
