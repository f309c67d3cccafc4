//! The kernel's state cell: entered once per kernel entry, left by returning to user mode.
//!
//! Like a spin lock that never spins: the kernel runs with interrupts off on one CPU, so an
//! entry never finds the cell taken (a nested `enter` panics rather than alias). What a lock
//! cannot do is [`Entered::return_to_user`]: it leaves the cell and returns to ring 3 with
//! registers read from *inside* the cell, sparing a copy of the register file on every
//! syscall. That is sound because nothing can enter between leaving and `iretq`.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, Ordering};

use microkernel::kobj::regs::UserRegs;

pub struct EntryCell<T> {
    value: UnsafeCell<T>,
    entered: AtomicBool,
}

// SAFETY: access goes through `enter`, which hands out one `Entered` at a time (the flag).
unsafe impl<T: Send> Sync for EntryCell<T> {}

impl<T> EntryCell<T> {
    pub const fn new(value: T) -> Self {
        EntryCell {
            value: UnsafeCell::new(value),
            entered: AtomicBool::new(false),
        }
    }

    /// The state, for this entry. Panics if it is already entered (a kernel bug).
    #[inline]
    pub fn enter(&self) -> Entered<'_, T> {
        assert!(
            !self.entered.swap(true, Ordering::Acquire),
            "kernel state entered twice"
        );
        Entered { cell: self }
    }
}

/// The entered state; leaving it (drop) frees the cell.
pub struct Entered<'a, T> {
    cell: &'a EntryCell<T>,
}

impl<T> Deref for Entered<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the flag makes this the only `Entered`, so no `&mut` to the value exists
        // except through this guard, which the borrow checker tracks.
        unsafe { &*self.cell.value.get() }
    }
}

impl<T> DerefMut for Entered<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for `deref`; `&mut self` makes the borrow exclusive.
        unsafe { &mut *self.cell.value.get() }
    }
}

impl<T> Drop for Entered<'_, T> {
    fn drop(&mut self) {
        self.cell.entered.store(false, Ordering::Release);
    }
}

impl<T> Entered<'_, T> {
    /// Leaves the cell and enters a guest with the registers and VMCS `pick` chooses inside
    /// it (see [`super::vmx::enter`]). Returns (still in the cell) only if `pick` finds none.
    #[inline(always)]
    pub fn enter_guest(
        mut self,
        pick: impl FnOnce(&mut T) -> Option<(&mut UserRegs, &mut super::vmx::Vmcs, bool)>,
    ) -> Self {
        let Some((regs, vmcs, launched)) = pick(&mut self) else {
            return self;
        };
        let (regs, vmcs): (*const UserRegs, *const super::vmx::Vmcs) = (regs, vmcs);
        // Leaves the cell (the pointers borrow nothing).
        drop(self);
        // SAFETY: both point into the cell's value, in a static. Interrupts are off and there
        // is one CPU, so nothing enters the cell before VM entry has read them.
        super::vmx::enter(unsafe { &*regs }, unsafe { &*vmcs }, launched)
    }

    /// Leaves the cell and enters the guest that just exited again, with the registers and
    /// VMCS `pick` chooses inside it (see [`super::vmx::reenter`]). Returns (still in the
    /// cell) only if `pick` finds none.
    #[inline]
    pub fn reenter_guest(
        mut self,
        pick: impl FnOnce(&mut T) -> Option<(&mut UserRegs, &mut super::vmx::Vmcs)>,
    ) -> Self {
        let Some((regs, vmcs)) = pick(&mut self) else {
            return self;
        };
        let (regs, vmcs): (*const UserRegs, *const super::vmx::Vmcs) = (regs, vmcs);
        // Leaves the cell (the pointers borrow nothing).
        drop(self);
        // SAFETY: as for `enter_guest`.
        super::vmx::reenter(unsafe { &*regs }, unsafe { &*vmcs })
    }

    /// Leaves the cell and returns to ring 3 with the registers `regs` picks inside it (see
    /// [`super::user::return_to_user`] for what is checked on the way). Returns (still in
    /// the cell) only if `regs` finds none.
    #[inline(always)]
    pub fn return_to_user(self, regs: impl FnOnce(&T) -> Option<&UserRegs>) -> Self {
        let Some(p) = regs(&self) else {
            return self;
        };
        let p: *const UserRegs = p;
        // Leaves the cell (the pointers borrow nothing).
        drop(self);
        // SAFETY: `p` points into the cell's value, which lives in a static. Interrupts are
        // off and there is one CPU, so no entry can enter the cell and change the registers
        // between here and the `iretq` that reads them.
        // The next `syscall` saves the thread's registers back there.
        super::user::return_to_user_saving_into_regs(unsafe { &*p })
    }
}
