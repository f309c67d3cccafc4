//! What the MMU gets from outside: guest memory, a pool of shadow page frames, vCPU registers.
//!
//! The CR0, CR4 and EFER bits these registers are tested against are [`abi::cpu`]'s.

/// Size of a page and of a page-table page.
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

/// A guest-physical access outside the VM's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryError {
    /// The guest-physical address that could not be accessed.
    pub gpa: u64,
}

/// Guest physical memory: the VM's RAM as the MMU service sees it.
///
/// RAM is the gfns `0..ram_pages()`; anything above is not RAM (MMIO or nothing).
pub trait GuestMemory {
    /// Number of 4 KiB guest frames of RAM (gfns `0..ram_pages()`).
    fn ram_pages(&self) -> u64;
    /// Host-physical address of a RAM gfn, `None` when the gfn is not RAM.
    fn gfn_to_hpa(&self, gfn: u64) -> Option<u64>;
    /// Reads `buf.len()` bytes at `gpa`.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError>;
    /// Writes `data` at `gpa`.
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), MemoryError>;
    /// `gfn` now holds a guest page table the MMU shadows: from here on every guest write to
    /// it must reach the MMU. Called before any gpte of it is read. The service takes write
    /// access to it away from the VM's EPT, which the VM's vCPUs run on in real mode
    /// ([`crate::ept::RealModeEpt`]); nothing by default.
    fn write_protect(&mut self, _gfn: u64) {}

    /// Reads a little-endian `u64`.
    fn read_u64(&self, gpa: u64) -> Result<u64, MemoryError> {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }
    /// Reads a little-endian `u32`.
    fn read_u32(&self, gpa: u64) -> Result<u32, MemoryError> {
        let mut b = [0u8; 4];
        self.read(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    /// Replaces the `size`-byte (4 or 8) entry at `gpa` by `new` if it still holds `old`, like the
    /// locked update the processor uses for accessed/dirty bits. Returns whether it was replaced.
    /// The default is not atomic; a service whose guest has several running vCPUs overrides it.
    fn cmpxchg_gpte(
        &mut self,
        gpa: u64,
        size: u8,
        old: u64,
        new: u64,
    ) -> Result<bool, MemoryError> {
        let cur = if size == 4 {
            u64::from(self.read_u32(gpa)?)
        } else {
            self.read_u64(gpa)?
        };
        if cur != old {
            return Ok(false);
        }
        if size == 4 {
            // Truncation is intended: a 4-byte gpte.
            self.write(gpa, &(new as u32).to_le_bytes())?;
        } else {
            self.write(gpa, &new.to_le_bytes())?;
        }
        Ok(true)
    }
}

/// A pool of host-physical 4 KiB frames the MMU fills with shadow page tables.
///
/// Frames are numbered `0..frame_count()`. Some must lie below 4 GiB: the per-vCPU PAE root page
/// (`pae_root`) is taken from those, because a PAE CR3 holds a 32-bit address. The MMU reads and
/// writes the frames only through this trait (on the host a test backs them with plain memory).
pub trait ShadowPagePool {
    /// Number of frames.
    fn frame_count(&self) -> usize;
    /// Host-physical address of frame `frame` (4 KiB aligned).
    fn frame_hpa(&self, frame: usize) -> u64;
    /// Reads 8-byte entry `index` (0..512) of `frame`.
    fn read_entry(&self, frame: usize, index: usize) -> u64;
    /// Writes 8-byte entry `index` (0..512) of `frame`.
    fn write_entry(&mut self, frame: usize, index: usize, value: u64);
    /// Zeroes a frame.
    fn zero_frame(&mut self, frame: usize) {
        for i in 0..512 {
            self.write_entry(frame, i, 0);
        }
    }
}

/// The paging state of a vCPU as the hardware holds it after a transition.
pub trait VcpuPagingState {
    /// CR0.
    fn cr0(&self) -> u64;
    /// CR3 (the guest's own value).
    fn cr3(&self) -> u64;
    /// CR4.
    fn cr4(&self) -> u64;
    /// IA32_EFER.
    fn efer(&self) -> u64;
    /// The four PAE PDPTEs if the caller already holds them (for instance copied from a VMCS).
    /// `None` (the default) makes the MMU read them from guest memory at CR3, as the processor
    /// does on every CR3 load in PAE mode.
    fn pdptes(&self) -> Option<[u64; 4]> {
        None
    }
}

/// A plain set of paging registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PagingRegs {
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// IA32_EFER.
    pub efer: u64,
}

impl VcpuPagingState for PagingRegs {
    fn cr0(&self) -> u64 {
        self.cr0
    }
    fn cr3(&self) -> u64 {
        self.cr3
    }
    fn cr4(&self) -> u64 {
        self.cr4
    }
    fn efer(&self) -> u64 {
        self.efer
    }
}
