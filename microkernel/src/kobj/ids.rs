//! Typed indices of the kernel's object tables: a thread id cannot name an endpoint, nor a
//! vCPU index a VM. An id is the slot of its table; whether the slot holds a live object is
//! the table's answer, never assumed: a lookup that finds nothing gives [`Gone`], which a
//! syscall reports as [`Error::StaleCap`] (the object was destroyed under its name).

use abi::Error;

/// The slot index behind a typed id.
pub trait Id: Copy + Eq + core::fmt::Debug {
    /// The id of slot `index` (ids come from the tables, which have fewer than 2^16 slots).
    fn from_index(index: usize) -> Self;
    /// Its slot in the table.
    fn index(self) -> usize;
}

macro_rules! ids {
    ($($(#[$meta:meta])* $name:ident;)*) => {$(
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(u16);

        impl $name {
            /// The id of slot `index`.
            #[inline(always)]
            pub const fn new(index: u16) -> Self {
                $name(index)
            }

            /// The id of slot `index` (ids come from the tables, which have fewer than
            /// 2^16 slots).
            #[inline(always)]
            pub const fn from_index(index: usize) -> Self {
                $name(index as u16)
            }

            /// Its slot in the table.
            #[inline(always)]
            pub const fn index(self) -> usize {
                self.0 as usize
            }

            /// The number a task sees (thread ids, task indices in fault notices).
            #[inline(always)]
            pub const fn raw(self) -> u16 {
                self.0
            }
        }

        impl Id for $name {
            #[inline(always)]
            fn from_index(index: usize) -> Self {
                $name(index as u16)
            }

            #[inline(always)]
            fn index(self) -> usize {
                self.0 as usize
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    )*};
}

ids! {
    /// A task's slot.
    TaskId;
    /// A thread's slot (vCPU threads included).
    ThreadId;
    /// An endpoint's slot.
    EndpointId;
    /// A notification's slot.
    NotificationId;
    /// A memory object's slot.
    MemoryId;
    /// A VM's slot.
    VmId;
    /// A vCPU's slot.
    VcpuId;
}

/// A lookup by id found no live object in the slot (or no current thread).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gone;

impl From<Gone> for Error {
    #[inline]
    fn from(_: Gone) -> Error {
        Error::StaleCap
    }
}

impl From<Gone> for (Error, u64) {
    #[inline]
    fn from(_: Gone) -> (Error, u64) {
        (Error::StaleCap, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_keep_their_index_and_print_it() {
        let t = ThreadId::new(7);
        assert_eq!(t.index(), 7);
        assert_eq!(<VcpuId as Id>::from_index(3).raw(), 3);
        assert_eq!(format!("{}", TaskId::new(12)), "12");
        assert_eq!(Error::from(Gone), Error::StaleCap);
        assert_eq!(<(Error, u64)>::from(Gone), (Error::StaleCap, 0));
    }
}
