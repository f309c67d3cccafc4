//! COM1, a 16550 UART subset at 0x3f8..=0x3ff: transmit-only console.
//!
//! Bytes written to THR are collected into a line; a line is emitted on `\n` (which is not
//! included; a `\r` is dropped) or when it reaches [`LINE_MAX`] bytes. The transmitter is
//! always ready: LSR reads 0x60 (THR empty | transmitter idle). There is no receive path (RBR
//! reads 0, LSR.DR is never set) and no interrupts (IIR reads "none pending").

use super::Text;

/// First port of COM1.
pub const COM1: u16 = 0x3f8;
/// Longest line before it is emitted without a newline.
pub const LINE_MAX: usize = 120;
/// LSR value: THR empty (bit 5) and transmitter idle (bit 6).
pub const LSR_READY: u8 = 0x60;

const LCR_DLAB: u8 = 0x80;

/// The UART registers that read back what was written, and the pending line.
#[derive(Clone, Debug)]
pub struct Serial {
    ier: u8,
    fcr: u8,
    lcr: u8,
    mcr: u8,
    msr: u8,
    scr: u8,
    dll: u8,
    dlm: u8,
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
            msr: 0xb0, // DCD | DSR | CTS
            scr: 0,
            dll: 0x01, // 115200 baud
            dlm: 0,
            line: Text::new(),
        }
    }

    /// Whether `port` belongs to this device.
    pub fn claims(port: u16) -> bool {
        (COM1..=COM1 + 7).contains(&port)
    }

    fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    /// Reads register `offset` (0..=7).
    pub fn read(&self, offset: u16) -> u8 {
        match offset {
            0 if self.dlab() => self.dll,
            0 => 0, // RBR: nothing received
            1 if self.dlab() => self.dlm,
            1 => self.ier,
            // IIR: no interrupt pending; FIFO-enabled bits mirror FCR bit 0.
            2 => 0x01 | if self.fcr & 1 != 0 { 0xc0 } else { 0 },
            3 => self.lcr,
            4 => self.mcr,
            5 => LSR_READY,
            6 => self.msr,
            _ => self.scr,
        }
    }

    /// Writes register `offset` (0..=7); returns a completed line, if any.
    pub fn write(&mut self, offset: u16, v: u8) -> Option<Text> {
        match offset {
            0 if self.dlab() => self.dll = v,
            0 => return self.transmit(v),
            1 if self.dlab() => self.dlm = v,
            1 => self.ier = v & 0x0f,
            2 => self.fcr = v,
            3 => self.lcr = v,
            4 => self.mcr = v & 0x1f,
            5 => {} // LSR is read-only
            6 => self.msr = v,
            _ => self.scr = v,
        }
        None
    }

    fn transmit(&mut self, b: u8) -> Option<Text> {
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

    /// The partial line (without a newline yet), taken; `None` when empty.
    pub fn flush(&mut self) -> Option<Text> {
        (!self.line.is_empty()).then(|| core::mem::take(&mut self.line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(s: &mut Serial, bytes: &[u8]) -> Vec<Vec<u8>> {
        bytes
            .iter()
            .filter_map(|&b| s.write(0, b))
            .map(|l| l.to_vec())
            .collect()
    }

    #[test]
    fn lines_on_newline_and_overflow() {
        let mut s = Serial::new();
        assert_eq!(send(&mut s, b"hello\r\nworld"), vec![b"hello".to_vec()]);
        assert_eq!(s.flush().map(|l| l.to_vec()), Some(b"world".to_vec()));
        assert_eq!(s.flush(), None);
        let long = [b'x'; 130];
        let lines = send(&mut s, &long);
        assert_eq!(lines, vec![vec![b'x'; LINE_MAX]]);
        assert_eq!(s.flush().map(|l| l.len()), Some(10));
    }

    #[test]
    fn registers_read_back_and_lsr_is_ready() {
        let mut s = Serial::new();
        assert_eq!(s.read(5), LSR_READY);
        s.write(3, 0x83); // DLAB
        s.write(0, 0x0c);
        s.write(1, 0x00);
        assert_eq!((s.read(0), s.read(1)), (0x0c, 0));
        s.write(3, 0x03);
        s.write(1, 0x05);
        s.write(7, 0x5a);
        s.write(4, 0x0b);
        assert_eq!(
            (s.read(1), s.read(3), s.read(7), s.read(4)),
            (5, 3, 0x5a, 0x0b)
        );
        assert_eq!(s.read(2), 0x01);
        s.write(2, 0xc7);
        assert_eq!(s.read(2), 0xc1);
        // While DLAB was set, THR writes did not transmit.
        assert_eq!(s.flush(), None);
    }
}
