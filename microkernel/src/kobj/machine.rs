//! What the kernel object model needs from the machine: address spaces, frames, user-memory
//! copies, boot modules and the console. The kernel binary implements it over real page
//! tables (`mm::uspace`); host tests implement it over plain memory.

/// Errors of [`Machine::map`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The page is already mapped.
    AlreadyMapped,
    /// No frame for an intermediate page table.
    NoMemory,
    /// The address is not a canonical, page-aligned user address.
    BadAddress,
}

/// A user buffer that is not mapped with the access a copy needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadUserAddress;

/// Access a user page is mapped with (it is always readable and user-accessible).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PageAccess {
    pub write: bool,
    pub exec: bool,
}

/// The machine under the kernel object model.
pub trait Machine {
    /// An address space (the kernel half is shared by all of them).
    type Space;

    /// A new, empty user address space; `None` when out of memory.
    fn space_new(&mut self) -> Option<Self::Space>;
    /// Frees the space's page-table frames (not the frames it maps: memory objects own those).
    /// Pages may still be mapped: they go with the tables.
    fn space_destroy(&mut self, space: Self::Space);
    /// Maps one 4 KiB user page.
    fn map(
        &mut self,
        space: &mut Self::Space,
        va: u64,
        phys: u64,
        access: PageAccess,
    ) -> Result<(), MapError>;
    /// Maps `pages` consecutive 4 KiB user pages at `va` to the frames from `phys` on. On an
    /// error, returns it with how many pages were mapped (the first ones), which the caller
    /// unmaps. The default maps page by page; a machine may walk its tables once per table.
    fn map_range(
        &mut self,
        space: &mut Self::Space,
        va: u64,
        phys: u64,
        pages: u64,
        access: PageAccess,
    ) -> Result<(), (MapError, u64)> {
        for i in 0..pages {
            self.map(space, va + i * 4096, phys + i * 4096, access)
                .map_err(|e| (e, i))?;
        }
        Ok(())
    }
    /// Unmaps one page; returns the frame it mapped.
    fn unmap(&mut self, space: &mut Self::Space, va: u64) -> Option<u64>;
    /// Copies `out.len()` bytes from user address `va`. Fails (copying nothing useful) unless
    /// every byte is mapped user-readable in `space`.
    fn copy_from_user(
        &self,
        space: &Self::Space,
        va: u64,
        out: &mut [u8],
    ) -> Result<(), BadUserAddress>;
    /// Whether `[va, va + len)` is mapped user-accessible (and writable if `write`) in `space`.
    /// Lets the kernel refuse a bad buffer before it commits to a message transfer.
    /// The default answers by the copy rules alone and should be overridden with a walk.
    fn user_range_ok(&self, space: &Self::Space, va: u64, len: u64, write: bool) -> bool {
        let _ = (space, write);
        va.checked_add(len).is_some_and(|end| {
            va >= abi::ipc::layout::USER_MIN && end <= abi::ipc::layout::USER_END
        })
    }
    /// The physical address user address `va` maps to in `space`, if it is mapped
    /// user-accessible (and writable if `write`).
    fn user_frame(&self, space: &Self::Space, va: u64, write: bool) -> Option<u64>;
    /// Writes `data` at `phys`, inside one page of a user frame that [`Machine::user_frame`]
    /// found writable in a space that has unmapped nothing since (a remembered receive
    /// buffer, [`super::objects::CheckedBuf`]): no walk. Nothing is written if the range
    /// crosses its page.
    fn write_user_frame(&mut self, phys: u64, data: &[u8]) {
        self.write_phys(phys, data)
    }
    /// Reads `out.len()` bytes at `phys`, as [`Machine::write_user_frame`] writes them.
    fn read_user_frame(&self, phys: u64, out: &mut [u8]) {
        self.read_phys(phys, out)
    }
    /// Copies `data` to user address `va`. Fails unless every byte is mapped user-writable.
    fn copy_to_user(
        &mut self,
        space: &Self::Space,
        va: u64,
        data: &[u8],
    ) -> Result<(), BadUserAddress>;

    /// Copies `len` bytes from `src_va` in `src` to `dst_va` in `dst` (the IPC fast path's
    /// single copy). Fails, having written nothing, unless the source is user-readable and
    /// the destination user-writable. The default bounces through a kernel buffer.
    fn copy_user_to_user(
        &mut self,
        src: &Self::Space,
        src_va: u64,
        dst: &Self::Space,
        dst_va: u64,
        len: usize,
    ) -> Result<(), BadUserAddress> {
        let mut bounce = [0u8; abi::ipc::MAX_PAYLOAD];
        let chunk = bounce.get_mut(..len).ok_or(BadUserAddress)?;
        self.copy_from_user(src, src_va, chunk)?;
        self.copy_to_user(dst, dst_va, chunk)
    }

    /// `pages` zeroed, physically contiguous frames; returns the physical base.
    fn frames_alloc(&mut self, pages: u64) -> Option<u64>;
    /// Returns frames from [`Machine::frames_alloc`].
    fn frames_free(&mut self, phys: u64, pages: u64);
    /// How many frames are free now (the page budgets keep a reserve of them).
    fn frames_available(&self) -> u64;
    /// Writes bytes into physical memory (loading ELF segments into fresh frames).
    fn write_phys(&mut self, phys: u64, data: &[u8]);

    /// Boot module `index`: its command line (name and arguments) and its bytes.
    fn module(&self, index: usize) -> Option<(&str, &[u8])>;
    /// Number of boot modules.
    fn module_count(&self) -> usize;
    /// The kernel command line.
    fn cmdline(&self) -> &str;

    /// Writes u64 words at `phys` (8-aligned) into frames the kernel allocated and owns (the
    /// exit trace ring): unlike [`Machine::write_phys`], the caller vouches for the frames,
    /// so nothing is looked up (this is on every traced exit).
    fn write_owned_words(&mut self, phys: u64, words: &[u64]);

    /// Reads bytes of physical memory (guest RAM, for PAE PDPTEs).
    fn read_phys(&self, phys: u64, out: &mut [u8]);

    // ----- VMX (a machine without it answers `vmx_available() == false`) -----

    /// An EPT hierarchy (guest-physical → host-physical).
    type Ept;
    /// A VMCS and what the machine keeps with it.
    type Vmcs;
    /// Whether VM and vCPU objects can be created.
    fn vmx_available(&self) -> bool;
    /// A new, empty EPT.
    fn ept_new(&mut self) -> Option<Self::Ept>;
    /// Frees the EPT's table frames.
    fn ept_destroy(&mut self, ept: Self::Ept);
    /// Maps one 4 KiB guest page with EPT `rights` (bit 0 read, 1 write, 2 execute);
    /// a mapped page is replaced.
    fn ept_map(
        &mut self,
        ept: &mut Self::Ept,
        gpa: u64,
        hpa: u64,
        rights: u64,
    ) -> Result<(), MapError>;
    /// Unmaps one guest page (nothing if absent) and flushes what the CPU cached of it.
    fn ept_unmap(&mut self, ept: &mut Self::Ept, gpa: u64);
    /// A new VMCS using `ept`, with the kernel's controls and host state, and a valid
    /// initial guest state; `vpid` tags its TLB entries. With `shadow`, EPT is off instead
    /// (and VPIDs, so that every VM entry flushes the guest's TLB): #PF exits are set by the
    /// object model, CR3 loads and stores and INVLPG exit.
    fn vmcs_new(&mut self, ept: &Self::Ept, vpid: u16, shadow: bool) -> Option<Self::Vmcs>;
    /// For a shadow-paged VMCS: runs its guest on `ept` with unrestricted guest
    /// ([`abi::vmx::proc_based2::REAL_MODE`]) while the guest is in real mode (`Some`), or
    /// without EPT, on shadow tables (`None`).
    fn vmcs_real_mode_ept(&mut self, vmcs: &mut Self::Vmcs, ept: Option<&Self::Ept>);
    fn vmcs_destroy(&mut self, vmcs: Self::Vmcs);
    /// Reads a VMCS field (the kernel checked that the field exists).
    fn vmcs_read(&mut self, vmcs: &mut Self::Vmcs, field: u64) -> u64;
    fn vmcs_write(&mut self, vmcs: &mut Self::Vmcs, field: u64, value: u64);
    /// Reads `fields`, which the VMCS itself holds (exit information, guest state: none of
    /// the fields [`Self::vmcs_read`] keeps aside, such as CR2 or an MSR). The default goes
    /// field by field; a machine may load the VMCS once for all of them.
    #[inline(always)]
    fn vmcs_read_plain<const N: usize>(
        &mut self,
        vmcs: &mut Self::Vmcs,
        fields: [u64; N],
    ) -> [u64; N] {
        fields.map(|f| self.vmcs_read(vmcs, f))
    }
    /// Moves the guest's RIP `len` bytes on, past an instruction an exit completed, and ends
    /// blocking by STI or MOV SS, which lasts one instruction (as KVM's skip does). The
    /// default goes field by field; a machine may do it with one VMCS load.
    fn vmcs_skip_instruction(&mut self, vmcs: &mut Self::Vmcs, len: u64) {
        use abi::vmx::{field, interruptibility::ONE_INSTRUCTION};
        let rip = self.vmcs_read(vmcs, field::GUEST_RIP);
        self.vmcs_write(vmcs, field::GUEST_RIP, rip.wrapping_add(len));
        let blocking = self.vmcs_read(vmcs, field::GUEST_INTERRUPTIBILITY);
        if blocking & u64::from(ONE_INSTRUCTION) != 0 {
            let blocking = blocking & !u64::from(ONE_INSTRUCTION);
            self.vmcs_write(vmcs, field::GUEST_INTERRUPTIBILITY, blocking);
        }
    }
    /// The host's CPUID values (eax, ebx, ecx, edx).
    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4];

    /// Writes a task's console output (the kernel prefixes it with the task's name).
    fn console_write(&mut self, task: &str, bytes: &[u8]);
    /// Timer ticks since boot and the tick rate.
    fn clock(&self) -> (u64, u64);
    /// The time-stamp counter (exit trace records).
    fn tsc(&self) -> u64;
    /// The time-stamp counter's rate in Hz, measured at boot (0: unknown).
    fn tsc_hz(&self) -> u64;

    // ----- Extended state (part `fpu` of issue 17): x87/MMX/SSE/AVX registers per thread -----

    /// Saves the registers' extended state (x87, MMX, SSE, AVX...) into the area of thread
    /// `from` (`None`: nobody's state is live, nothing is saved), then loads thread `to`'s.
    /// Called by [`super::Kernel::switch_xstate`] before a different thread runs.
    fn xstate_switch(&mut self, from: Option<super::queue::ThreadId>, to: super::queue::ThreadId);
    /// Puts thread `t`'s area in the initial state (as after FNINIT, MXCSR 0x1F80, vector
    /// registers zero): a new thread never sees another's registers.
    fn xstate_reset(&mut self, t: super::queue::ThreadId);
    /// The XCR0 components a guest may enable: the host's XCR0 (1, x87 only, without XSAVE).
    fn xcr0_supported(&self) -> u64;
    /// Sets (`true`) or clears CR0.TS: with it set, the next x87/SSE/AVX instruction in ring 3
    /// raises #NM (the lazy half of the extended-state switch).
    fn xstate_trap(&mut self, on: bool);
}
