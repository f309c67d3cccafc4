//! The 8259A PIC pair (master 0x20/0x21, slave 0xa0/0xa1), enough for guests to program and
//! mask it: the ICW1..ICW4 initialisation sequence, the IMR, OCW2 (EOI, accepted and ignored)
//! and OCW3 (IRR/ISR reads return 0, since no interrupts are delivered yet).

pub const MASTER_CMD: u16 = 0x20;
pub const MASTER_DATA: u16 = 0x21;
pub const SLAVE_CMD: u16 = 0xa0;
pub const SLAVE_DATA: u16 = 0xa1;

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
    init: Init,
    single: bool,
    icw4: bool,
    /// Vector base from ICW2 (bits 7:3).
    pub vector_base: u8,
    /// ICW3 as written (cascade wiring).
    pub cascade: u8,
    /// ICW4 as written.
    pub mode: u8,
    /// EOIs seen (OCW2), for statistics.
    pub eois: u64,
}

impl Chip {
    fn command(&mut self, v: u8) {
        if v & 0x10 != 0 {
            // ICW1
            self.init = Init::Icw2;
            self.icw4 = v & 1 != 0;
            self.single = v & 2 != 0;
            self.imr = 0;
        } else if v & 0x08 == 0 {
            // OCW2: EOI variants are bits 7:5 = 001/011/101/111
            if v & 0x20 != 0 {
                self.eois += 1;
            }
        }
        // OCW3 (bit 3 set): register select for reads; IRR and ISR both read 0.
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
        matches!(port, MASTER_CMD | MASTER_DATA | SLAVE_CMD | SLAVE_DATA)
    }

    pub fn read(&self, port: u16) -> u8 {
        match port {
            MASTER_DATA => self.master.imr,
            SLAVE_DATA => self.slave.imr,
            _ => 0, // IRR / ISR
        }
    }

    pub fn write(&mut self, port: u16, v: u8) {
        match port {
            MASTER_CMD => self.master.command(v),
            MASTER_DATA => self.master.data(v),
            SLAVE_CMD => self.slave.command(v),
            SLAVE_DATA => self.slave.data(v),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_style_init_then_mask() {
        let mut p = Pic::new();
        for (port, v) in [
            (0x21, 0xff),
            (0xa1, 0xff),
            (0x20, 0x11),
            (0x21, 0x20),
            (0x21, 0x04),
            (0x21, 0x01),
            (0xa0, 0x11),
            (0xa1, 0x28),
            (0xa1, 0x02),
            (0xa1, 0x01),
            (0x21, 0xfb),
            (0xa1, 0xff),
        ] {
            p.write(port, v);
        }
        assert_eq!(p.master.vector_base, 0x20);
        assert_eq!(p.slave.vector_base, 0x28);
        assert_eq!((p.master.cascade, p.slave.cascade), (4, 2));
        assert_eq!((p.read(0x21), p.read(0xa1)), (0xfb, 0xff));
        p.write(0x20, 0x20); // EOI
        assert_eq!(p.master.eois, 1);
        p.write(0x20, 0x0b); // OCW3: read ISR
        assert_eq!(p.read(0x20), 0);
        assert_eq!(p.read(0x21), 0xfb);
    }

    #[test]
    fn single_mode_without_icw4() {
        let mut p = Pic::new();
        p.write(0x20, 0x12); // ICW1: single, no ICW4
        p.write(0x21, 0x40); // ICW2
        p.write(0x21, 0x0f); // now the IMR
        assert_eq!(p.master.vector_base, 0x40);
        assert_eq!(p.read(0x21), 0x0f);
    }
}
