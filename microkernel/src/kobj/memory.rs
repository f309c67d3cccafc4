//! Memory objects in the kernel: making one, the pages a task owns, and mapping one into a
//! task (each mapping holds a reference) or out of it.

use abi::{CapKind, Error};

use super::captable::ObjRef;
use super::ids::{MemoryId, TaskId};
use super::kernel::Kernel;
use super::machine::{Machine, PageAccess};
use super::objects::*;
use crate::PAGE_SIZE;

impl<M: Machine> Kernel<M> {
    /// A new memory object of `pages` zeroed frames, with no references yet.
    pub(crate) fn new_memory(
        &mut self,
        pages: u64,
        owner: Option<(TaskId, u32)>,
    ) -> Result<ObjRef, Error> {
        if pages == 0 || pages > MAX_MEMORY_PAGES {
            return Err(Error::BadLength);
        }
        if !self.memory.iter().any(|s| s.obj.is_none()) {
            return Err(Error::NoMemory);
        }
        let phys = self.machine.frames_alloc(pages).ok_or(Error::NoMemory)?;
        let memory = Memory {
            phys,
            pages,
            refs: 0,
            owner,
        };
        match slot_insert::<MemoryId, _>(&mut self.memory, memory) {
            Ok((id, generation)) => Ok(ObjRef::new(CapKind::Memory, id, generation)),
            Err(m) => {
                self.machine.frames_free(m.phys, m.pages);
                Err(Error::NoMemory)
            }
        }
    }

    /// Pages of live memory objects that `owner` (task index, slot generation) allocated.
    pub(crate) fn pages_owned(&self, owner: (TaskId, u32)) -> u64 {
        self.memory
            .iter()
            .filter_map(|s| s.obj.as_ref())
            .filter(|m| m.owner == Some(owner))
            .map(|m| m.pages)
            .sum()
    }

    /// Maps a memory object into a task; the mapping holds a reference.
    pub(crate) fn map_memory(
        &mut self,
        task: TaskId,
        mem: ObjRef,
        va: u64,
        access: PageAccess,
    ) -> Result<(), Error> {
        let (phys, pages) = {
            let m = slot_get(&self.memory, mem).ok_or(Error::StaleCap)?;
            (m.phys, m.pages)
        };
        let end = va
            .checked_add(pages * PAGE_SIZE)
            .ok_or(Error::InvalidArgument)?;
        if !va.is_multiple_of(PAGE_SIZE)
            || va < abi::ipc::layout::USER_MIN
            || end > abi::ipc::layout::USER_END
        {
            return Err(Error::InvalidArgument);
        }
        let t = self.task(task)?;
        let overlaps = t
            .mappings
            .iter()
            .flatten()
            .any(|m| va < m.va + m.pages * PAGE_SIZE && m.va < end);
        if overlaps {
            return Err(Error::AddressInUse);
        }
        let free = t
            .mappings
            .iter()
            .position(Option::is_none)
            .ok_or(Error::NoMemory)?;
        let task_ref = slot_at_mut(&mut self.tasks, task)?;
        let r = self
            .machine
            .map_range(&mut task_ref.space, va, phys, pages, access);
        if let Err((e, mapped)) = r {
            task_ref.unmaps += 1;
            for j in 0..mapped {
                self.machine.unmap(&mut task_ref.space, va + j * PAGE_SIZE);
            }
            return Err(match e {
                super::machine::MapError::AlreadyMapped => Error::AddressInUse,
                super::machine::MapError::NoMemory => Error::NoMemory,
                super::machine::MapError::BadAddress => Error::InvalidArgument,
            });
        }
        task_ref.mappings[free] = Some(Mapping { va, pages, mem });
        self.acquire(mem);
        Ok(())
    }

    /// Removes mapping `mi` of a task; `release` drops its reference (false while the
    /// object is being destroyed anyway).
    pub(crate) fn unmap_mapping(&mut self, task: TaskId, mi: usize, m: Mapping, release: bool) {
        let Ok(task_ref) = slot_at_mut(&mut self.tasks, task) else {
            return;
        };
        task_ref.unmaps += 1;
        for i in 0..m.pages {
            self.machine
                .unmap(&mut task_ref.space, m.va + i * PAGE_SIZE);
        }
        if let Some(slot) = task_ref.mappings.get_mut(mi) {
            *slot = None;
        }
        if release {
            self.release(m.mem);
        }
    }
}
