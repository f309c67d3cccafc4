//! COM1, a 16550A UART at 0x3f8..=0x3ff, as kernels drive it.
//!
//! - Transmit: the line is infinitely fast. A byte written to THR leaves at once (THRE and TEMT
//!   read 1 again right after the write) and becomes console text: bytes are collected into a
//!   line, emitted on `\n` (not included; `\r` is dropped) or when it reaches [`LINE_MAX`]
//!   bytes. Only the word length's low bits (LCR bits 1:0: 5 to 8 bits) are sent. In loopback
//!   (MCR.LOOP) the byte goes to the receiver instead of the console.
//! - Receive: [`Serial::receive`] is a byte arriving on the line (ignored in loopback, where
//!   the serial input is disconnected). With the FIFO enabled (FCR bit 0) up to 16 bytes wait;
//!   a byte arriving to a full FIFO is lost and sets LSR.OE. Without the FIFO, RBR holds one
//!   byte and a new byte overwrites it, also setting OE.
//! - Interrupts, by the 16550's priorities in IIR: line status (OE, IER.ELSI; cleared by
//!   reading LSR), received data at the FIFO trigger level (IER.ERBFI; cleared by reading RBR
//!   below it), character timeout (IER.ERBFI, FIFO mode, bytes waiting below the trigger
//!   level: there is no baud-rate timing, so the four character times count as elapsed at
//!   once), THR empty (IER.ETBEI: raised when THR empties and when ETBEI is set while THR is
//!   empty; cleared by reading IIR when it is the reported source, or by writing THR), modem
//!   status (IER.EDSSI, any MSR delta bit; cleared by reading MSR).
//! - [`Serial::irq_level`] is the PC's IRQ 4 line: the UART's interrupt output passes only
//!   while MCR.OUT2 is set, and not in loopback, where the OUT2 pin is forced inactive.
//! - Modem status: outside loopback the line reports DCD, DSR and CTS (a connected null modem
//!   with RI low); in loopback CTS, DSR, RI and DCD follow RTS, DTR, OUT1 and OUT2. A change of
//!   these inputs sets the delta bits (DCTS, DDSR, TERI on RI falling, DDCD).
//! - Parity, framing and break errors never happen; the divisor latch (DLL/DLM under LCR.DLAB)
//!   and the scratch register read back what was written; MSR writes are ignored (it is
//!   read-only).

#[cfg(test)]
mod tests;

use super::Text;

/// First port of COM1.
pub const COM1: u16 = 0x3f8;
/// Longest line before it is emitted without a newline: room for a Linux console line (the
/// test init's longest is 135 bytes) and the VM's prefix inside one console write
/// (`userlib::sys::PRINT_BUF`).
pub const LINE_MAX: usize = 200;
/// Bytes the receive FIFO holds.
pub const FIFO_BYTES: usize = 16;

/// Register offsets from [`COM1`] (the divisor latch shares 0 and 1 under LCR.DLAB).
pub mod reg {
    pub const RBR_THR: u16 = 0;
    pub const IER: u16 = 1;
    pub const IIR_FCR: u16 = 2;
    pub const LCR: u16 = 3;
    pub const MCR: u16 = 4;
    pub const LSR: u16 = 5;
    pub const MSR: u16 = 6;
    pub const SCR: u16 = 7;
}

/// IER bits.
pub mod ier {
    pub const ERBFI: u8 = 0x01;
    pub const ETBEI: u8 = 0x02;
    pub const ELSI: u8 = 0x04;
    pub const EDSSI: u8 = 0x08;
    pub const ALL: u8 = 0x0f;
}

/// IIR values (bits 3:0) by source, and the FIFO-enabled bits.
pub mod iir {
    pub const NONE: u8 = 0x01;
    pub const LINE_STATUS: u8 = 0x06;
    pub const RX_DATA: u8 = 0x04;
    pub const TIMEOUT: u8 = 0x0c;
    pub const THR_EMPTY: u8 = 0x02;
    pub const MODEM_STATUS: u8 = 0x00;
    pub const FIFOS_ENABLED: u8 = 0xc0;
}

/// FCR bits.
pub mod fcr {
    pub const ENABLE: u8 = 0x01;
    pub const CLEAR_RX: u8 = 0x02;
    pub const CLEAR_TX: u8 = 0x04;
    pub const DMA_MODE: u8 = 0x08;
    /// Receive trigger levels by FCR bits 7:6.
    pub const TRIGGER: [usize; 4] = [1, 4, 8, 14];
}

/// LCR bits.
pub mod lcr {
    pub const WORD_LENGTH: u8 = 0x03;
    pub const DLAB: u8 = 0x80;
}

/// MCR bits (bits 7:5 read 0 on the 16550A).
pub mod mcr {
    pub const DTR: u8 = 0x01;
    pub const RTS: u8 = 0x02;
    pub const OUT1: u8 = 0x04;
    pub const OUT2: u8 = 0x08;
    pub const LOOP: u8 = 0x10;
    pub const ALL: u8 = 0x1f;
}

/// LSR bits.
pub mod lsr {
    pub const DR: u8 = 0x01;
    pub const OE: u8 = 0x02;
    pub const THRE: u8 = 0x20;
    pub const TEMT: u8 = 0x40;
}

/// MSR bits: deltas in 3:0, the inputs in 7:4.
pub mod msr {
    pub const DCTS: u8 = 0x01;
    pub const DDSR: u8 = 0x02;
    pub const TERI: u8 = 0x04;
    pub const DDCD: u8 = 0x08;
    pub const DELTAS: u8 = 0x0f;
    pub const CTS: u8 = 0x10;
    pub const DSR: u8 = 0x20;
    pub const RI: u8 = 0x40;
    pub const DCD: u8 = 0x80;
    /// The inputs outside loopback: a connected null modem.
    pub const LINE: u8 = DCD | DSR | CTS;
}

/// LSR with nothing received: THR empty and transmitter idle.
pub const LSR_READY: u8 = lsr::THRE | lsr::TEMT;

/// The UART's registers, receive FIFO and pending console line.
#[derive(Clone, Debug)]
pub struct Serial {
    ier: u8,
    fcr: u8,
    lcr: u8,
    mcr: u8,
    /// The delta bits (the inputs are derived from MCR).
    msr_deltas: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
    /// LSR.OE, until LSR is read.
    overrun: bool,
    /// The THR-empty interrupt is pending.
    thr_pending: bool,
    rx: heapless::Deque<u8, FIFO_BYTES>,
    line: Text,
}

impl Default for Serial {
    fn default() -> Self {
        Self::new()
    }
}

impl Serial {
    pub const fn new() -> Serial {
        Serial {
            ier: 0,
            fcr: 0,
            lcr: 0x03, // 8N1
            mcr: 0,
            msr_deltas: 0,
            scr: 0,
            dll: 0x01, // 115200 baud
            dlm: 0,
            overrun: false,
            thr_pending: false,
            rx: heapless::Deque::new(),
            line: Text::new(),
        }
    }

    /// Whether `port` belongs to this device.
    pub fn claims(port: u16) -> bool {
        (COM1..=COM1 + reg::SCR).contains(&port)
    }

    fn dlab(&self) -> bool {
        self.lcr & lcr::DLAB != 0
    }

    fn fifo(&self) -> bool {
        self.fcr & fcr::ENABLE != 0
    }

    fn loopback(&self) -> bool {
        self.mcr & mcr::LOOP != 0
    }

    fn trigger(&self) -> usize {
        fcr::TRIGGER[(self.fcr >> 6) as usize]
    }

    /// The modem inputs MSR bits 7:4 report, given MCR.
    fn inputs(mcr: u8) -> u8 {
        if mcr & mcr::LOOP == 0 {
            return msr::LINE;
        }
        let bit = |m: u8, s: u8| if mcr & m != 0 { s } else { 0 };
        bit(mcr::RTS, msr::CTS)
            | bit(mcr::DTR, msr::DSR)
            | bit(mcr::OUT1, msr::RI)
            | bit(mcr::OUT2, msr::DCD)
    }

    /// LSR without side effects.
    fn lsr(&self) -> u8 {
        let dr = if self.rx.is_empty() { 0 } else { lsr::DR };
        let oe = if self.overrun { lsr::OE } else { 0 };
        LSR_READY | dr | oe
    }

    /// The interrupt source IIR reports (bits 3:0), by the 16550's priorities.
    fn source(&self) -> u8 {
        let rx = self.rx.len();
        if self.ier & ier::ELSI != 0 && self.overrun {
            iir::LINE_STATUS
        } else if self.ier & ier::ERBFI != 0 && rx > 0 && (!self.fifo() || rx >= self.trigger()) {
            iir::RX_DATA
        } else if self.ier & ier::ERBFI != 0 && rx > 0 {
            iir::TIMEOUT
        } else if self.ier & ier::ETBEI != 0 && self.thr_pending {
            iir::THR_EMPTY
        } else if self.ier & ier::EDSSI != 0 && self.msr_deltas != 0 {
            iir::MODEM_STATUS
        } else {
            iir::NONE
        }
    }

    /// The IRQ 4 line as the PC wires it: the UART's interrupt output gated by MCR.OUT2
    /// (inactive in loopback).
    pub fn irq_level(&self) -> bool {
        self.source() != iir::NONE && self.mcr & (mcr::OUT2 | mcr::LOOP) == mcr::OUT2
    }

    /// Whether reading (or, if `write`, writing any byte to) register `offset` (0..=7) now
    /// leaves the UART's interrupt output ([`Serial::irq_level`]) as it is and produces no
    /// console text: a register that reads without side effects (or whose side effect has
    /// nothing to clear), the divisor latch, LCR (DLAB and the word length bear on no
    /// interrupt source), the scratch register, the read-only LSR and MSR. Not THR (text, THR
    /// empty), IER, FCR (the receive FIFO, the trigger level) or MCR (OUT2, loopback, the
    /// modem deltas).
    ///
    /// The quiet writes change only DLL, DLM (offsets 0 and 1 under DLAB), LCR and SCR, so
    /// the bytes of one access can all be judged before it: only LCR changes how a later
    /// offset is read, and offsets 0 and 1 never follow offset 3 within one access.
    pub fn quiet(&self, offset: u16, write: bool) -> bool {
        match (offset, write) {
            (reg::RBR_THR | reg::IER, _) if self.dlab() => true,
            (reg::RBR_THR, false) => self.rx.is_empty(),
            (reg::IER | reg::LCR | reg::MCR | reg::SCR, false) => true,
            (reg::IIR_FCR, false) => self.source() != iir::THR_EMPTY,
            (reg::LSR, false) => !self.overrun,
            (reg::MSR, false) => self.msr_deltas == 0,
            (reg::LCR | reg::LSR | reg::MSR | reg::SCR, true) => true,
            _ => false,
        }
    }

    /// Reads register `offset` (0..=7), with the read side effects (RBR pops a byte, LSR
    /// clears OE, MSR clears the deltas, IIR clears a reported THR-empty interrupt).
    pub fn read(&mut self, offset: u16) -> u8 {
        match offset {
            reg::RBR_THR if self.dlab() => self.dll,
            reg::RBR_THR => self.rx.pop_front().unwrap_or(0),
            reg::IER if self.dlab() => self.dlm,
            reg::IER => self.ier,
            reg::IIR_FCR => {
                let source = self.source();
                if source == iir::THR_EMPTY {
                    self.thr_pending = false;
                }
                source | if self.fifo() { iir::FIFOS_ENABLED } else { 0 }
            }
            reg::LCR => self.lcr,
            reg::MCR => self.mcr,
            reg::LSR => {
                let v = self.lsr();
                self.overrun = false;
                v
            }
            reg::MSR => {
                let v = Self::inputs(self.mcr) | self.msr_deltas;
                self.msr_deltas = 0;
                v
            }
            _ => self.scr,
        }
    }

    /// Writes register `offset` (0..=7); returns a completed console line, if any.
    pub fn write(&mut self, offset: u16, v: u8) -> Option<Text> {
        match offset {
            reg::RBR_THR if self.dlab() => self.dll = v,
            reg::RBR_THR => return self.transmit(v),
            reg::IER if self.dlab() => self.dlm = v,
            reg::IER => {
                let v = v & ier::ALL;
                if v & !self.ier & ier::ETBEI != 0 {
                    // ETBEI set with THR empty (it always is): the interrupt is raised.
                    self.thr_pending = true;
                }
                self.ier = v;
            }
            reg::IIR_FCR => self.write_fcr(v),
            reg::LCR => self.lcr = v,
            reg::MCR => self.write_mcr(v & mcr::ALL),
            reg::SCR => self.scr = v,
            _ => {} // LSR and MSR are read-only
        }
        None
    }

    fn write_fcr(&mut self, v: u8) {
        if (v ^ self.fcr) & fcr::ENABLE != 0 || v & fcr::CLEAR_RX != 0 {
            // Changing the FIFO mode clears both FIFOs; so does the receiver reset bit.
            self.rx.clear();
        }
        // The reset bits clear themselves; the transmit FIFO is always empty here.
        self.fcr = v & !(fcr::CLEAR_RX | fcr::CLEAR_TX);
    }

    fn write_mcr(&mut self, v: u8) {
        let (old, new) = (Self::inputs(self.mcr), Self::inputs(v));
        let changed = old ^ new;
        let mut deltas = 0;
        if changed & msr::CTS != 0 {
            deltas |= msr::DCTS;
        }
        if changed & msr::DSR != 0 {
            deltas |= msr::DDSR;
        }
        if old & msr::RI != 0 && new & msr::RI == 0 {
            deltas |= msr::TERI;
        }
        if changed & msr::DCD != 0 {
            deltas |= msr::DDCD;
        }
        self.msr_deltas |= deltas;
        self.mcr = v;
    }

    /// The word length's mask (LCR bits 1:0: 5 to 8 data bits).
    fn word_mask(&self) -> u8 {
        (0xffu16 >> (3 - (self.lcr & lcr::WORD_LENGTH))) as u8
    }

    fn transmit(&mut self, b: u8) -> Option<Text> {
        let b = b & self.word_mask();
        // THR was written (its interrupt clears) and empties at once (it is raised again).
        self.thr_pending = true;
        if self.loopback() {
            self.push_rx(b);
            return None;
        }
        match b {
            b'\n' => Some(core::mem::take(&mut self.line)),
            b'\r' => None,
            _ => {
                let mut out = None;
                if self.line.len() >= LINE_MAX {
                    out = Some(core::mem::take(&mut self.line));
                }
                // Cannot fail: the line holds fewer than LINE_MAX < TEXT_MAX bytes here.
                let _ = self.line.push(b);
                out
            }
        }
    }

    fn push_rx(&mut self, b: u8) {
        if !self.fifo() {
            // 16450 mode: one holding register, overwritten.
            if !self.rx.is_empty() {
                self.overrun = true;
                self.rx.clear();
            }
            let _ = self.rx.push_back(b);
        } else if self.rx.push_back(b).is_err() {
            self.overrun = true;
        }
    }

    /// A byte arriving on the serial line. Returns false when it is not received: in loopback
    /// the input is disconnected. (A byte lost to a full receiver still counts as received; it
    /// sets LSR.OE.)
    pub fn receive(&mut self, b: u8) -> bool {
        if self.loopback() {
            return false;
        }
        let b = b & self.word_mask();
        self.push_rx(b);
        true
    }

    /// The partial line (without a newline yet), taken; `None` when empty.
    pub fn flush(&mut self) -> Option<Text> {
        (!self.line.is_empty()).then(|| core::mem::take(&mut self.line))
    }
}
