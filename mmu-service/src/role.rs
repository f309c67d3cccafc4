//! Paging modes, the CPU role of a vCPU and the role of shadow pages.

use abi::cpu::{cr0, cr4, efer};

use crate::traits::VcpuPagingState;

/// Access bit: instruction fetch allowed (KVM's `ACC_EXEC_MASK`).
pub const ACC_EXEC: u8 = 1;
/// Access bit: write allowed (KVM's `ACC_WRITE_MASK`).
pub const ACC_WRITE: u8 = 2;
/// Access bit: user-mode access allowed (KVM's `ACC_USER_MASK`).
pub const ACC_USER: u8 = 4;
/// All access bits.
pub const ACC_ALL: u8 = ACC_EXEC | ACC_WRITE | ACC_USER;

/// The guest's paging mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PagingMode {
    /// CR0.PG = 0: linear = physical (32 bits).
    NonPaging,
    /// 32-bit paging with 4-byte entries (4 MiB pages with CR4.PSE).
    TwoLevel,
    /// PAE paging: PDPTEs, 8-byte entries, 2 MiB pages.
    Pae,
    /// 4-level paging: 2 MiB and 1 GiB pages.
    FourLevel,
}

impl PagingMode {
    /// True for the modes shadowed with PAE tables below the per-vCPU root page.
    pub fn uses_pae_root(self) -> bool {
        !matches!(self, PagingMode::FourLevel)
    }
    /// Number of guest paging levels (0 without paging).
    pub fn guest_levels(self) -> u8 {
        match self {
            PagingMode::NonPaging => 0,
            PagingMode::TwoLevel => 2,
            PagingMode::Pae => 3,
            PagingMode::FourLevel => 4,
        }
    }
}

/// Everything about a vCPU's registers that changes how its guest tables are read
/// (KVM's `cpu_role`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuRole {
    /// Paging mode.
    pub mode: PagingMode,
    /// CR0.WP.
    pub wp: bool,
    /// EFER.NXE, only where the XD bit exists (PAE and 4-level).
    pub nxe: bool,
    /// CR4.SMEP (with paging on).
    pub smep: bool,
    /// CR4.SMAP (with paging on).
    pub smap: bool,
    /// CR4.PSE (matters in 2-level mode only).
    pub pse: bool,
    /// Guest MAXPHYADDR (bits of physical address).
    pub maxphyaddr: u8,
    /// The guest's CPUID has 1 GiB pages; without them PS in a 4-level PDPTE is reserved.
    pub gbpages: bool,
}

/// The paging configuration cannot be shadowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnsupportedMode;

impl CpuRole {
    /// Computes the role from the registers *after* a transition.
    pub fn from_state<S: VcpuPagingState + ?Sized>(
        state: &S,
        maxphyaddr: u8,
        gbpages: bool,
    ) -> Result<Self, UnsupportedMode> {
        let (cr0, cr4, efer) = (state.cr0(), state.cr4(), state.efer());
        let mode = if cr0 & cr0::PG == 0 {
            PagingMode::NonPaging
        } else if cr4 & cr4::PAE == 0 {
            PagingMode::TwoLevel
        } else if efer & efer::LMA != 0 {
            if cr4 & cr4::LA57 != 0 {
                return Err(UnsupportedMode);
            }
            PagingMode::FourLevel
        } else {
            PagingMode::Pae
        };
        let paging = mode != PagingMode::NonPaging;
        Ok(CpuRole {
            mode,
            wp: cr0 & cr0::WP != 0,
            nxe: efer & efer::NXE != 0 && matches!(mode, PagingMode::Pae | PagingMode::FourLevel),
            smep: paging && cr4 & cr4::SMEP != 0,
            smap: paging && cr4 & cr4::SMAP != 0,
            pse: mode == PagingMode::TwoLevel && cr4 & cr4::PSE != 0,
            maxphyaddr,
            gbpages,
        })
    }

    /// The role of this vCPU's root (KVM's `root_role`): 4 for 4-level guests, 3 (a PAE root
    /// page) for everything else.
    pub fn root_role(&self) -> PageRole {
        PageRole {
            level: if self.mode == PagingMode::FourLevel {
                4
            } else {
                3
            },
            has_4_byte_gpte: self.mode == PagingMode::TwoLevel,
            quadrant: 0,
            direct: self.mode == PagingMode::NonPaging,
            access: ACC_ALL,
            cr0_wp: self.wp,
            efer_nx: self.nxe,
            smep_andnot_wp: self.smep && !self.wp,
            smap_andnot_wp: self.smap && !self.wp,
            mode: self.mode,
            cr4_pse: self.pse,
        }
    }
}

/// What a shadow page shadows and how (KVM's `kvm_mmu_page_role`). A shadow page is reused
/// only for an identical role.
///
/// Beyond KVM, the role also records the guest paging `mode` (the reserved bits of a PAE entry
/// differ from a 4-level one) and `cr4_pse` for 2-level guests (whether a PDE with PS=1 maps a
/// 4 MiB page), so two vCPUs in different modes never share a page they would read differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageRole {
    /// Shadow level: 1 = page table ... 4 = PML4.
    pub level: u8,
    /// The guest table has 4-byte entries (2-level guest).
    pub has_4_byte_gpte: bool,
    /// Which part of a 4-byte-gpte guest table this page shadows (0..4 at level 2, 0..2 at
    /// level 1): a 1024-entry guest table is larger than one 512-entry shadow table.
    pub quadrant: u8,
    /// The page maps a guest-physical range directly (guest huge page or no paging).
    pub direct: bool,
    /// Access allowed by the guest entries above this page (`ACC_*`).
    pub access: u8,
    /// CR0.WP.
    pub cr0_wp: bool,
    /// EFER.NXE as it applies to the guest tables.
    pub efer_nx: bool,
    /// CR4.SMEP && !CR0.WP (pages turned into kernel pages for a WP=0 write differ).
    pub smep_andnot_wp: bool,
    /// CR4.SMAP && !CR0.WP.
    pub smap_andnot_wp: bool,
    /// Guest paging mode.
    pub mode: PagingMode,
    /// CR4.PSE for 2-level guests (false otherwise).
    pub cr4_pse: bool,
}

impl PageRole {
    /// Role of a child page linked from entry `index` of a page with role `self`
    /// (KVM's `kvm_mmu_child_role`).
    pub fn child(&self, index: usize, direct: bool, access: u8) -> PageRole {
        let mut role = *self;
        role.level = self.level - 1;
        role.direct = direct;
        role.access = access;
        role.quadrant = 0;
        if !direct && role.has_4_byte_gpte && role.level == 1 {
            // A 32-bit PDE maps 4 MiB = two PAE PDEs; the child shadows one half of the guest
            // page table.
            role.quadrant = (index & 1) as u8;
        }
        role
    }
}
