//! Typed indices of the kernel's object tables: a thread id cannot name an endpoint, nor a
//! vCPU index a VM. An id is the slot of its table; whether the slot holds a live object is
//! the table's answer, never assumed: a lookup that finds nothing gives [`Gone`], which a
//! syscall reports as [`Error::StaleCap`] (the object was destroyed under its name).

use core::num::NonZeroU16;

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
        ///
        /// Held as the index plus one in a `NonZeroU16`: `Option` of an id is then two bytes,
        /// `None` is zero, and testing it is one compare (the queues' links, the current
        /// thread, a reply's caller, the extended state's owner). An index past `u16::MAX - 1`
        /// (no table is that large) saturates at `u16::MAX - 1`, a slot no table has.
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(NonZeroU16);

        impl $name {
            /// The id of slot `index`.
            #[inline(always)]
            pub const fn new(index: u16) -> Self {
                match NonZeroU16::new(index.saturating_add(1)) {
                    Some(n) => $name(n),
                    // `saturating_add(1)` is never zero.
                    None => $name(NonZeroU16::MAX),
                }
            }

            /// The id of slot `index` (ids come from the tables, which have fewer than
            /// 2^16 slots).
            #[inline(always)]
            pub const fn from_index(index: usize) -> Self {
                Self::new(if index > u16::MAX as usize { u16::MAX } else { index as u16 })
            }

            /// Its slot in the table.
            #[inline(always)]
            pub const fn index(self) -> usize {
                // In `usize`: never below zero, and a bounds check `index < n` folds into
                // `raw + 1 <= n`.
                self.0.get() as usize - 1
            }

            /// Whether `held` is `Some(self)`, as one compare (`None` is zero, which no id
            /// is; `==` on the `Option` tests `None` apart).
            #[inline(always)]
            pub fn is_in(self, held: Option<Self>) -> bool {
                held.map_or(0, |h| h.0.get()) == self.0.get()
            }

            /// The number a task sees (thread ids, task indices in fault notices).
            #[inline(always)]
            pub const fn raw(self) -> u16 {
                self.0.get() - 1
            }
        }

        impl Id for $name {
            #[inline(always)]
            fn from_index(index: usize) -> Self {
                $name::from_index(index)
            }

            #[inline(always)]
            fn index(self) -> usize {
                $name::index(self)
            }
        }

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                write!(f, "{}({})", stringify!($name), self.raw())
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                write!(f, "{}", self.raw())
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
        assert_eq!(format!("{t:?}"), "ThreadId(7)");
    }

    #[test]
    fn an_option_of_an_id_is_two_bytes_and_ids_order_by_index() {
        assert_eq!(core::mem::size_of::<Option<ThreadId>>(), 2);
        assert!(ThreadId::new(0) < ThreadId::new(1));
        assert_eq!(ThreadId::new(0).index(), 0);
        // Past every table: saturates to a slot no table has, and never panics.
        assert_eq!(ThreadId::new(u16::MAX).index(), usize::from(u16::MAX - 1));
        assert_eq!(
            ThreadId::from_index(1 << 20).index(),
            usize::from(u16::MAX - 1)
        );
    }
}
