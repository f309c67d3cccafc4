//! Shadow-paged VMs: what the hardware runs while the guest sees its own paging state.
//!
//! A shadow-paged vCPU runs without EPT. The guest's CR0, CR4, CR3 and EFER are its *view*
//! (the read shadows, and `guest_cr3`/`guest_efer` of the vCPU); the hardware runs with paging
//! always on, CR0.WP set, PAE-format tables (4-level when the guest is in long mode, PAE
//! otherwise) and EFER.NXE, on a root the VM's MMU service built in the VM's pool
//! ([`Pool`]). The kernel intercepts every CR0/CR4 bit that changes how the guest's tables
//! are read, CR3 loads and stores, INVLPG and #PF (see `arch::vmx` for the controls).
//!
//! The kernel never enters a shadow vCPU on a root built for another paging state: whenever
//! the view changes other than through the MMU endpoint's reply, the hardware CR3 goes back to
//! the VM's *empty root*, a zeroed page the kernel owns. The guest's next access faults, the
//! #PF goes to the MMU service, which sees the new view in the exit message and builds the
//! right root. A root is accepted only from the MMU endpoint, and only if it is the empty root
//! or a page of the pool (below 4 GiB for a PAE root: its CR3 is 32 bits).

use super::captable::ObjRef;

use abi::cpu::cr0::WP as CR0_WP;
use abi::cpu::cr0::{CD as CR0_CD, NE as CR0_NE, NW as CR0_NW, PE as CR0_PE, PG as CR0_PG};
use abi::cpu::cr4::{
    LA57 as CR4_LA57, PAE as CR4_PAE, PCIDE as CR4_PCIDE, PGE as CR4_PGE, PKE as CR4_PKE,
    PSE as CR4_PSE, SMAP as CR4_SMAP, SMEP as CR4_SMEP, VMXE as CR4_VMXE,
};
use abi::cpu::efer::{LMA as EFER_LMA, LME as EFER_LME, NXE as EFER_NXE};

const PAGE: u64 = 4096;

/// CR0 bits a shadow vCPU's guest never owns: the paging ones, plus NE (VMX needs it).
pub const CR0_OWNED: u64 = CR0_PE | CR0_NE | CR0_WP | CR0_NW | CR0_CD | CR0_PG;
/// CR4 bits a shadow vCPU's guest never owns: every bit that changes how tables are read.
pub const CR4_OWNED: u64 =
    CR4_PSE | CR4_PAE | CR4_PGE | CR4_LA57 | CR4_VMXE | CR4_PCIDE | CR4_SMEP | CR4_SMAP | CR4_PKE;
/// The #PF bit of the exception bitmap.
pub const PF_EXITS: u64 = 1 << 14;

/// The hardware CR0 for the guest's `cr0`: paging and protection on (the shadow tables map
/// guest-physical = linear while the guest has paging off), WP on (the MMU emulates WP = 0
/// with kernel-only writable sptes), NE for VMX. In real mode only NE: the vCPU then runs on
/// the VM's EPT with unrestricted guest ([`real_mode`]).
pub fn hw_cr0(cr0: u64) -> u64 {
    if real_mode(cr0) {
        cr0 | CR0_NE
    } else {
        cr0 | CR0_PE | CR0_PG | CR0_WP | CR0_NE
    }
}

/// Whether the guest's view is real mode (CR0.PE clear). VMX runs real mode only as an
/// unrestricted guest, which needs EPT: a shadow vCPU in real mode runs on its VM's EPT,
/// which the MMU service fills on demand and keeps coherent with the shadow pages (a guest
/// page table it shadows is never writable there). KVM without unrestricted guest emulates
/// real mode instead; Umbra requires the control anyway.
pub fn real_mode(cr0: u64) -> bool {
    cr0 & CR0_PE == 0
}

/// The hardware CR4 for the guest's `cr4` and `cr0`: PAE-format tables always; no PSE, PGE,
/// PCID, LA57 or protection keys in hardware (the shadow tables have none of those); SMEP and
/// SMAP are the guest's while it pages (the hardware then checks them, EFLAGS.AC included, on
/// the shadow tables) and off while it does not, when its processor ignores them but the
/// hardware still pages (as KVM does).
pub fn hw_cr4(cr4: u64, cr0: u64) -> u64 {
    let mut off = CR4_PSE | CR4_PGE | CR4_PCIDE | CR4_LA57 | CR4_PKE;
    if cr0 & CR0_PG == 0 {
        off |= CR4_SMEP | CR4_SMAP;
    }
    (cr4 & !off) | CR4_PAE | CR4_VMXE
}

/// A segment register (`index` in VMCS order: ES, CS, SS, DS, FS, GS) with `selector` and
/// access rights `ar` as real mode left it, made acceptable to VM entry without unrestricted
/// guest when the guest has just set CR0.PE (the guest reloads its segments next): a data
/// type in CS becomes execute/read (real mode leaves any type there), the DPL follows the
/// selector's RPL, and CS and SS get RPL 0, which VM entry wants equal (KVM's
/// `fix_pmode_seg` does the same). An unusable segment stays as it is.
pub fn protected_mode_segment(index: u64, selector: u64, ar: u64) -> (u64, u64) {
    const UNUSABLE: u64 = 1 << 16;
    const S: u64 = 1 << 4;
    const CODE: u64 = 1 << 3;
    const ACCESSED: u64 = 1;
    const CS: u64 = 1;
    const SS: u64 = 2;
    if ar & UNUSABLE != 0 {
        return (selector, ar);
    }
    let selector = if index == CS || index == SS {
        selector & !3
    } else {
        selector
    };
    let mut ar = (ar & !(3 << 5)) | ((selector & 3) << 5) | S | ACCESSED;
    if index == CS && ar & CODE == 0 {
        ar = (ar & !0xf) | 0xb;
    }
    (selector, ar)
}

/// Whether the guest's view is in long mode (EFER.LME with CR0.PG).
pub fn long_mode(cr0: u64, efer: u64) -> bool {
    cr0 & CR0_PG != 0 && efer & EFER_LME != 0
}

/// The guest's EFER with LMA following LME and CR0.PG, as the processor keeps it.
pub fn guest_efer(efer: u64, cr0: u64) -> u64 {
    if long_mode(cr0, efer) {
        efer | EFER_LMA
    } else {
        efer & !EFER_LMA
    }
}

/// The hardware EFER: NXE always (sptes use XD), LME = LMA = the guest's long mode (the
/// hardware has paging on even while the guest has not, so LME must not be set alone).
pub fn hw_efer(efer: u64, cr0: u64) -> u64 {
    let base = (efer & !(EFER_LME | EFER_LMA)) | EFER_NXE;
    if long_mode(cr0, efer) {
        base | EFER_LME | EFER_LMA
    } else {
        base
    }
}

/// The shadow page pool of a VM and the endpoint allowed to set roots in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    pub mem: ObjRef,
    pub phys: u64,
    pub pages: u64,
    pub mmu_ep: ObjRef,
}

impl Pool {
    /// Whether `[hpa, hpa + len)` lies inside the pool.
    pub fn contains(&self, hpa: u64, len: u64) -> bool {
        hpa >= self.phys
            && hpa
                .checked_add(len)
                .is_some_and(|end| end <= self.phys + self.pages * PAGE)
    }
}

/// What the kernel keeps for a shadow-paged VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShadowVm {
    /// A zeroed frame (below 4 GiB) the kernel owns: the root of a vCPU the MMU service has
    /// not given one yet.
    pub empty_root: u64,
    /// Walk the shadow tables before every entry.
    pub audit: bool,
    /// Set once by `VmSetShadow`.
    pub pool: Option<Pool>,
}

impl ShadowVm {
    /// Whether `root` may become the hardware CR3 of a vCPU whose guest is (`long_mode`) or
    /// is not in long mode.
    #[inline(always)]
    pub fn root_ok(&self, root: u64, long_mode: bool) -> bool {
        if root == self.empty_root {
            return true;
        }
        let Some(pool) = self.pool else {
            return false;
        };
        root.is_multiple_of(PAGE) && pool.contains(root, PAGE) && (long_mode || root < 1 << 32)
    }
}

/// Entry bits the audit looks at.
const P: u64 = 1;
const PS: u64 = 1 << 7;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// Walks the shadow tables under `root` (4-level when `long_mode`, else a PAE root page whose
/// four entries point at page directories) and returns the physical address of the first
/// present entry that names a table outside `pool` or a page outside the RAM at
/// `[ram_phys, ram_phys + ram_pages * 4 KiB)`. `read` reads one 8-byte entry.
pub fn audit(
    root: u64,
    long_mode: bool,
    pool: &Pool,
    ram_phys: u64,
    ram_pages: u64,
    read: &mut impl FnMut(u64) -> u64,
) -> Result<(), u64> {
    let ram_end = ram_phys + ram_pages * PAGE;
    let in_ram = |hpa: u64, len: u64| hpa >= ram_phys && hpa.saturating_add(len) <= ram_end;
    // Depth first; shadow tables are at most 4 deep.
    fn walk(
        table: u64,
        level: u8,
        pool: &Pool,
        in_ram: &dyn Fn(u64, u64) -> bool,
        read: &mut dyn FnMut(u64) -> u64,
    ) -> Result<(), u64> {
        for i in 0..512u64 {
            let at = table + 8 * i;
            let e = read(at);
            if e & P == 0 {
                continue;
            }
            let hpa = e & ADDR;
            let leaf = level == 1 || (e & PS != 0 && level <= 3);
            if e & PS != 0 && level == 4 {
                return Err(at);
            }
            if leaf {
                let size = PAGE << (9 * u32::from(level - 1));
                if !in_ram(hpa, size) {
                    return Err(at);
                }
            } else {
                if !pool.contains(hpa, PAGE) {
                    return Err(at);
                }
                walk(hpa, level - 1, pool, in_ram, read)?;
            }
        }
        Ok(())
    }
    if long_mode {
        return walk(root, 4, pool, &in_ram, read);
    }
    for i in 0..4u64 {
        let at = root + 8 * i;
        let e = read(at);
        if e & P == 0 {
            continue;
        }
        let hpa = e & ADDR;
        if !pool.contains(hpa, PAGE) {
            return Err(at);
        }
        walk(hpa, 2, pool, &in_ram, read)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_left_by_real_mode_become_valid_for_protected_mode() {
        // CS with the data type real mode leaves, selector RPL 1: code, RPL and DPL 0.
        assert_eq!(protected_mode_segment(1, 0x7001, 0x93), (0x7000, 0x9b));
        assert_eq!(protected_mode_segment(1, 0x7000, 0x9b), (0x7000, 0x9b));
        // SS: RPL cleared; DS: DPL follows the RPL; the accessed bit set.
        assert_eq!(protected_mode_segment(2, 0x0003, 0x92), (0, 0x93));
        assert_eq!(protected_mode_segment(3, 0x1233, 0x93), (0x1233, 0xf3));
        // Unusable stays.
        assert_eq!(protected_mode_segment(4, 0, 0x1_0000), (0, 0x1_0000));
    }
    use abi::CapKind;
    use std::collections::BTreeMap;

    fn pool() -> Pool {
        let r = ObjRef {
            kind: CapKind::Memory,
            index: 0,
            generation: 0,
        };
        Pool {
            mem: r,
            phys: 0x10_0000,
            pages: 16,
            mmu_ep: r,
        }
    }

    #[test]
    fn hardware_registers_keep_paging_on_and_hide_what_the_tables_lack() {
        // A guest with paging off still runs paged, with WP and PAE.
        assert_eq!(hw_cr0(0x11), 0x11 | CR0_PG | CR0_WP | CR0_NE);
        assert_eq!(
            hw_cr4(CR4_PSE | CR4_PGE | CR4_SMEP | CR4_PKE | 1, CR0_PG),
            CR4_SMEP | CR4_PAE | CR4_VMXE | 1
        );
        // Without guest paging the identity map's user sptes must not trip SMEP/SMAP.
        assert_eq!(hw_cr4(CR4_SMEP | CR4_SMAP, 0x11), CR4_PAE | CR4_VMXE);
        // 32-bit guest: no long mode even with LME set (and NXE always).
        assert_eq!(hw_efer(EFER_LME, 0x11), EFER_NXE);
        assert_eq!(guest_efer(EFER_LME, 0x11), EFER_LME);
        let pg = 0x11 | CR0_PG;
        assert_eq!(hw_efer(EFER_LME, pg), EFER_LME | EFER_LMA | EFER_NXE);
        assert_eq!(guest_efer(EFER_LME | EFER_LMA, 0x11), EFER_LME);
        assert!(long_mode(pg, EFER_LME) && !long_mode(0x11, EFER_LME));
    }

    #[test]
    fn roots_are_the_empty_root_or_pool_pages() {
        let mut s = ShadowVm {
            empty_root: 0x5000,
            audit: false,
            pool: None,
        };
        assert!(s.root_ok(0x5000, false));
        assert!(!s.root_ok(0x10_0000, true), "no pool yet");
        s.pool = Some(pool());
        assert!(s.root_ok(0x10_0000, true));
        assert!(s.root_ok(0x10_f000, false));
        assert!(!s.root_ok(0x11_0000, true), "one past the pool");
        assert!(!s.root_ok(0x10_0008, true), "not a page");
        assert!(!s.root_ok(0xf_f000, true));
        let mut high = pool();
        high.phys = 1 << 32;
        s.pool = Some(high);
        assert!(s.root_ok(1 << 32, true));
        assert!(
            !s.root_ok(1 << 32, false),
            "a PAE root must lie below 4 GiB"
        );
    }

    #[test]
    fn audit_accepts_tables_in_the_pool_and_pages_in_ram_only() {
        let p = pool();
        let (ram, ram_pages) = (0x100_0000u64, 512u64); // 2 MiB of RAM at 16 MiB
        let mut mem: BTreeMap<u64, u64> = BTreeMap::new();
        let root = 0x10_0000;
        mem.insert(root, 0x10_1000 | 3);
        mem.insert(0x10_1000 + 8, 0x10_2000 | 3);
        mem.insert(0x10_2000, ram | PS | 3); // a 2 MiB page: exactly the RAM
        mem.insert(0x10_2000 + 8, 0x10_3000 | 3);
        mem.insert(0x10_3000 + 511 * 8, (ram + 511 * PAGE) | 3);
        let run = |mem: &BTreeMap<u64, u64>, long| {
            let mut read = |a: u64| mem.get(&a).copied().unwrap_or(0);
            audit(root, long, &p, ram, ram_pages, &mut read)
        };
        assert_eq!(run(&mem, true), Ok(()));
        // A leaf one page past RAM.
        let mut bad = mem.clone();
        bad.insert(0x10_3000 + 8, (ram + 512 * PAGE) | 3);
        assert_eq!(run(&bad, true), Err(0x10_3000 + 8));
        // A table outside the pool (guest RAM posing as a table).
        let mut bad = mem.clone();
        bad.insert(0x10_1000 + 16, ram | 3);
        assert_eq!(run(&bad, true), Err(0x10_1000 + 16));
        // A huge page crossing the end of RAM.
        let mut bad = mem.clone();
        bad.insert(0x10_2000 + 16, (ram + 0x1000) | PS | 3);
        assert_eq!(run(&bad, true), Err(0x10_2000 + 16));
        // PS in a PML4 entry.
        let mut bad = mem.clone();
        bad.insert(root + 8, 0x10_1000 | PS | 3);
        assert_eq!(run(&bad, true), Err(root + 8));
        // Not-present entries are ignored whatever they hold.
        let mut fine = mem.clone();
        fine.insert(root + 16, 0xdead_0000);
        assert_eq!(run(&fine, true), Ok(()));
        // PAE: four root entries, tables two levels deep.
        let mut pae: BTreeMap<u64, u64> = BTreeMap::new();
        pae.insert(root + 24, 0x10_2000 | 1);
        pae.insert(0x10_2000, ram | PS | 3);
        pae.insert(0x10_2000 + 8, 0x10_3000 | 3);
        pae.insert(0x10_3000, (ram + PAGE) | 3);
        assert_eq!(run(&pae, false), Ok(()));
        pae.insert(root, ram | 1);
        assert_eq!(run(&pae, false), Err(root));
    }
}
