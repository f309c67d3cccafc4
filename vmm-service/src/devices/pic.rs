//! The 8259A PIC pair (master 0x20/0x21, slave 0xa0/0xa1, cascaded on master line 2) and the
//! edge/level control registers (ELCR, 0x4d0/0x4d1), as kernels drive them: the ICW1..ICW4
//! initialisation sequence, the IMR, IRR and ISR with fixed priority (line 0 highest; the
//! slave's lines take the master's line 2 place), edge- and level-triggered lines, OCW2
//! non-specific and specific EOI, automatic EOI (ICW4 bit 1), OCW3 IRR/ISR read select and
//! poll mode, and the spurious line 7 when a request vanished before the acknowledge.
//! Rotating priority and special mask mode are not modelled (their commands are accepted;
//! the EOI part of a rotate command is honoured).

pub const MASTER_CMD: u16 = 0x20;
pub const MASTER_DATA: u16 = 0x21;
pub const SLAVE_CMD: u16 = 0xa0;
pub const SLAVE_DATA: u16 = 0xa1;
/// The edge/level control registers of the master and the slave.
pub const ELCR_MASTER: u16 = 0x4d0;
pub const ELCR_SLAVE: u16 = 0x4d1;
/// The master line the slave is cascaded on.
const CASCADE_LINE: u8 = 2;

/// Where one chip is in its initialisation sequence.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Init {
    #[default]
    Ready,
    Icw2,
    Icw3,
    Icw4,
}

/// One 8259A.
#[derive(Clone, Copy, Debug, Default)]
pub struct Chip {
    imr: u8,
    irr: u8,
    isr: u8,
    /// The input lines' levels (edge detection).
    lines: u8,
    /// Lines that are level-triggered (ELCR).
    pub elcr: u8,
    init: Init,
    single: bool,
    icw4: bool,
    /// OCW3 selects the ISR for reads of the command port (else the IRR).
    read_isr: bool,
    /// OCW3 poll command: the next read of the command port acknowledges.
    poll: bool,
    /// Vector base from ICW2 (bits 7:3).
    pub vector_base: u8,
    /// ICW3 as written (cascade wiring).
    pub cascade: u8,
    /// ICW4 as written.
    pub mode: u8,
    /// EOIs seen (OCW2), for statistics.
    pub eois: u64,
}

/// The highest-priority (lowest-numbered) set bit of `bits`.
fn highest(bits: u8) -> Option<u8> {
    (bits != 0).then(|| bits.trailing_zeros() as u8)
}

impl Chip {
    fn auto_eoi(&self) -> bool {
        self.icw4 && self.mode & 2 != 0
    }

    /// Sets input line `n` to `level`.
    fn set_line(&mut self, n: u8, level: bool) {
        let bit = 1u8 << n;
        let was = self.lines & bit != 0;
        if level {
            self.lines |= bit;
            if !was || self.elcr & bit != 0 {
                self.irr |= bit;
            }
        } else {
            self.lines &= !bit;
            if self.elcr & bit != 0 {
                self.irr &= !bit;
            }
        }
    }

    /// The line this chip would signal: the highest unmasked request above every line in
    /// service (fixed priority).
    fn request(&self) -> Option<u8> {
        let n = highest(self.irr & !self.imr)?;
        match highest(self.isr) {
            Some(s) if s <= n => None,
            _ => Some(n),
        }
    }

    /// Acknowledges line `n` (the INTA cycle): IRR to ISR (unless automatic EOI).
    fn ack(&mut self, n: u8) {
        let bit = 1u8 << n;
        // An edge-triggered request is consumed; a level one stays while the line is high.
        if self.elcr & bit == 0 || self.lines & bit == 0 {
            self.irr &= !bit;
        }
        if !self.auto_eoi() {
            self.isr |= bit;
        }
    }

    fn command(&mut self, v: u8) {
        if v & 0x10 != 0 {
            // ICW1: start of initialisation; IMR, ISR and edge memory cleared.
            self.init = Init::Icw2;
            self.icw4 = v & 1 != 0;
            self.single = v & 2 != 0;
            self.imr = 0;
            self.isr = 0;
            self.irr &= self.elcr & self.lines;
            self.read_isr = false;
            self.poll = false;
            self.mode = 0;
        } else if v & 0x08 == 0 {
            // OCW2: bits 7:5 = R, SL, EOI.
            if v & 0x20 != 0 {
                self.eois += 1;
                if v & 0x40 != 0 {
                    self.isr &= !(1 << (v & 7)); // specific EOI
                } else if let Some(n) = highest(self.isr) {
                    self.isr &= !(1 << n); // non-specific EOI
                }
            }
        } else {
            // OCW3: bit 2 poll, bits 1:0 register read (10 IRR, 11 ISR).
            if v & 2 != 0 {
                self.read_isr = v & 1 != 0;
            }
            self.poll = v & 4 != 0;
        }
    }

    fn data(&mut self, v: u8) {
        self.init = match self.init {
            Init::Ready => {
                self.imr = v;
                Init::Ready
            }
            Init::Icw2 => {
                self.vector_base = v & 0xf8;
                if !self.single {
                    Init::Icw3
                } else if self.icw4 {
                    Init::Icw4
                } else {
                    Init::Ready
                }
            }
            Init::Icw3 => {
                self.cascade = v;
                if self.icw4 {
                    Init::Icw4
                } else {
                    Init::Ready
                }
            }
            Init::Icw4 => {
                self.mode = v;
                Init::Ready
            }
        };
    }

    /// The interrupt mask register.
    pub fn imr(&self) -> u8 {
        self.imr
    }

    /// The interrupt request register.
    pub fn irr(&self) -> u8 {
        self.irr
    }

    /// The in-service register.
    pub fn isr(&self) -> u8 {
        self.isr
    }
}

/// Master and slave.
#[derive(Clone, Debug, Default)]
pub struct Pic {
    pub master: Chip,
    pub slave: Chip,
}

impl Pic {
    pub fn new() -> Pic {
        Pic::default()
    }

    pub fn claims(port: u16) -> bool {
        matches!(
            port,
            MASTER_CMD | MASTER_DATA | SLAVE_CMD | SLAVE_DATA | ELCR_MASTER | ELCR_SLAVE
        )
    }

    /// Sets ISA line `irq` (0..=15) to `level`; other numbers are ignored.
    pub fn set_irq(&mut self, irq: u8, level: bool) {
        match irq {
            0..=7 => self.master.set_line(irq, level),
            8..=15 => {
                self.slave.set_line(irq - 8, level);
                self.update_cascade();
            }
            _ => {}
        }
    }

    /// The slave's output drives master line 2.
    fn update_cascade(&mut self) {
        let out = self.slave.request().is_some();
        self.master.set_line(CASCADE_LINE, out);
    }

    /// The vector the pair would deliver now (`None` if its INT output is low).
    pub fn pending(&self) -> Option<u8> {
        let n = self.master.request()?;
        if n == CASCADE_LINE {
            let s = self.slave.request()?;
            return Some(self.slave.vector_base | s);
        }
        Some(self.master.vector_base | n)
    }

    /// The INTA cycle: acknowledges the highest request and returns its vector; a request
    /// that went away since [`Pic::pending`] gives the spurious vector (line 7 of the chip).
    pub fn ack(&mut self) -> u8 {
        let Some(n) = self.master.request() else {
            return self.master.vector_base | 7;
        };
        self.master.ack(n);
        if n != CASCADE_LINE {
            return self.master.vector_base | n;
        }
        let v = match self.slave.request() {
            Some(s) => {
                self.slave.ack(s);
                self.slave.vector_base | s
            }
            None => self.slave.vector_base | 7,
        };
        self.update_cascade();
        v
    }

    pub fn read(&mut self, port: u16) -> u8 {
        match port {
            MASTER_DATA => self.master.imr,
            SLAVE_DATA => self.slave.imr,
            MASTER_CMD | SLAVE_CMD => {
                let chip = if port == MASTER_CMD {
                    &mut self.master
                } else {
                    &mut self.slave
                };
                if chip.poll {
                    chip.poll = false;
                    let r = chip.request();
                    if let Some(n) = r {
                        chip.ack(n);
                    }
                    let v = r.map_or(0, |n| 0x80 | n);
                    self.update_cascade();
                    return v;
                }
                if chip.read_isr {
                    chip.isr
                } else {
                    chip.irr
                }
            }
            ELCR_MASTER => self.master.elcr,
            ELCR_SLAVE => self.slave.elcr,
            _ => 0xff,
        }
    }

    pub fn write(&mut self, port: u16, v: u8) {
        match port {
            MASTER_CMD => self.master.command(v),
            MASTER_DATA => self.master.data(v),
            SLAVE_CMD => self.slave.command(v),
            SLAVE_DATA => self.slave.data(v),
            // Lines 0, 1, 2 (master) and 8, 13 (slave) are always edge-triggered on a PC.
            ELCR_MASTER => self.master.elcr = v & 0xf8,
            ELCR_SLAVE => self.slave.elcr = v & 0xde,
            _ => {}
        }
        self.update_cascade();
    }
}

/// Test support: the initialisation words Linux writes to the pair (ICW1-4 of each).
#[cfg(test)]
pub(crate) const LINUX_INIT: [(u16, u8); 8] = [
    (0x20, 0x11),
    (0x21, 0x20),
    (0x21, 0x04),
    (0x21, 0x01),
    (0xa0, 0x11),
    (0xa1, 0x28),
    (0xa1, 0x02),
    (0xa1, 0x01),
];

/// Test support: [`LINUX_INIT`] (vectors 0x20 and 0x28, cascade on
/// line 2, 8086 mode), then the masks `(master, slave)`.
#[cfg(test)]
pub(crate) fn init_like_linux(pic: &mut Pic, masks: (u8, u8)) {
    for (port, v) in LINUX_INIT {
        pic.write(port, v);
    }
    pic.write(0x21, masks.0);
    pic.write(0xa1, masks.1);
}

#[cfg(test)]
mod tests;
