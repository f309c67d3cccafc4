//! The ways a PC guest resets itself through ports: the fast-reset bit of System Control
//! Port A ([`PORT_A`], 0x92, bit 0 rising; bit 1 is fast A20), the 8042 keyboard controller's
//! reset line ([`KBC_COMMAND`] 0x64: command 0xFE, any pulse command 0xF0-0xFF with bit 0
//! clear, or the output port written with bit 0 clear by command 0xD1), and the chipset's
//! Reset Control Register ([`RESET_CONTROL`], 0xCF9, RST_CPU bit 2 — the FADT's reset
//! register, written with [`RESET_VALUE`]).
//!
//! A reset stops the VM (`VmResult::Reset` with the port that asked); the VMM does not
//! restart it. A20 is never masked (guest memory does not wrap at 1 MiB): the A20 bits are
//! stored and read back only.
//!
//! The 8042 answers what kernels probe before a reset: the status register (input buffer
//! always empty, system flag set), the command byte (0x20/0x60), the self-tests (0xAA → 0x55,
//! 0xAB → 0x00), the output port (0xD0/0xD1), A20 on/off (0xDF/0xDD), keyboard and mouse
//! enable/disable (0xAE/0xAD, 0xA8/0xA7). A byte written to the data port without a pending
//! command goes to the keyboard, which acknowledges it (0xFA; reset 0xFF also answers 0xAA).
//! No key is ever pressed and no IRQ 1 / IRQ 12 is raised.

/// System Control Port A.
pub const PORT_A: u16 = 0x92;
/// The 8042's data port and its status (read) / command (write) port.
pub const KBC_DATA: u16 = 0x60;
pub const KBC_COMMAND: u16 = 0x64;
/// The Reset Control Register (PIIX/ICH).
pub const RESET_CONTROL: u16 = 0xcf9;
/// What the FADT says to write to [`RESET_CONTROL`]: SYS_RST | RST_CPU (a hard reset).
pub const RESET_VALUE: u8 = 0x06;

const PORT_A_RESET: u8 = 1 << 0;
const PORT_A_A20: u8 = 1 << 1;
const RST_CPU: u8 = 1 << 2;
/// Bits of 0xCF9 that hold a value (SYS_RST, FULL_RST); RST_CPU reads 0.
const RESET_CONTROL_BITS: u8 = (1 << 1) | (1 << 3);

/// 8042 status bits.
pub mod status {
    pub const OUTPUT_FULL: u8 = 1 << 0;
    /// System flag (the command byte's bit 2: self-test passed).
    pub const SYSTEM: u8 = 1 << 2;
    /// The last write went to the command port.
    pub const COMMAND: u8 = 1 << 3;
    /// Keyboard not inhibited.
    pub const UNLOCKED: u8 = 1 << 4;
}

/// The 8042 command byte after a BIOS: keyboard interrupt, system flag, translation.
const COMMAND_BYTE: u8 = 0x45;
const CB_SYSTEM: u8 = 1 << 2;
const CB_KBD_DISABLED: u8 = 1 << 4;
const CB_AUX_DISABLED: u8 = 1 << 5;
/// Output port: bit 0 is the CPU reset line (active low), bit 1 A20.
const OUT_RESET: u8 = 1 << 0;
const OUT_A20: u8 = 1 << 1;

/// Bytes the 8042 can have waiting for the guest.
const QUEUE: usize = 2;

/// Port A, the 8042 and the Reset Control Register.
#[derive(Clone, Debug)]
pub struct Reset {
    a20: bool,
    port_a: u8,
    reset_control: u8,
    command_byte: u8,
    /// A command waiting for its data byte (0x60, 0xD1).
    pending: Option<u8>,
    last_was_command: bool,
    output: [u8; QUEUE],
    queued: usize,
    /// The last byte read, returned again when nothing is queued.
    last_output: u8,
}

impl Default for Reset {
    fn default() -> Reset {
        Reset::new()
    }
}

impl Reset {
    pub fn new() -> Reset {
        Reset {
            a20: true,
            port_a: 0,
            reset_control: 0,
            command_byte: COMMAND_BYTE,
            pending: None,
            last_was_command: false,
            output: [0; QUEUE],
            queued: 0,
            last_output: 0,
        }
    }

    pub fn claims(port: u16) -> bool {
        matches!(port, PORT_A | KBC_DATA | KBC_COMMAND | RESET_CONTROL)
    }

    /// Whether A20 is enabled (as the guest last set it; it is never masked).
    pub fn a20(&self) -> bool {
        self.a20
    }

    fn push(&mut self, b: u8) {
        if self.queued < QUEUE {
            self.output[self.queued] = b;
            self.queued += 1;
        }
    }

    fn output_port(&self) -> u8 {
        OUT_RESET | if self.a20 { OUT_A20 } else { 0 }
    }

    fn status(&self) -> u8 {
        let mut s = status::UNLOCKED | (self.command_byte & CB_SYSTEM);
        if self.queued > 0 {
            s |= status::OUTPUT_FULL;
        }
        if self.last_was_command {
            s |= status::COMMAND;
        }
        s
    }

    /// A byte read at `port` (claimed by [`Reset::claims`]).
    pub fn read(&mut self, port: u16) -> u8 {
        match port {
            PORT_A => self.port_a & !PORT_A_A20 | if self.a20 { PORT_A_A20 } else { 0 },
            KBC_COMMAND => self.status(),
            KBC_DATA => {
                if self.queued > 0 {
                    self.last_output = self.output[0];
                    self.output.copy_within(1.., 0);
                    self.queued -= 1;
                }
                self.last_output
            }
            RESET_CONTROL => self.reset_control,
            _ => 0xff,
        }
    }

    /// A byte write at `port`; `Some(port)` when it resets the machine.
    pub fn write(&mut self, port: u16, v: u8) -> Option<u16> {
        match port {
            PORT_A => {
                let rising = v & PORT_A_RESET != 0 && self.port_a & PORT_A_RESET == 0;
                self.port_a = v & PORT_A_RESET;
                self.a20 = v & PORT_A_A20 != 0;
                if rising {
                    return Some(PORT_A);
                }
            }
            RESET_CONTROL => {
                self.reset_control = v & RESET_CONTROL_BITS;
                if v & RST_CPU != 0 {
                    return Some(RESET_CONTROL);
                }
            }
            KBC_COMMAND => {
                self.last_was_command = true;
                return self.command(v);
            }
            KBC_DATA => {
                self.last_was_command = false;
                match self.pending.take() {
                    Some(0x60) => self.command_byte = v,
                    Some(0xd1) => {
                        self.a20 = v & OUT_A20 != 0;
                        if v & OUT_RESET == 0 {
                            return Some(KBC_COMMAND);
                        }
                    }
                    _ => {
                        // To the keyboard: acknowledged; its reset also reports self-test OK.
                        self.push(0xfa);
                        if v == 0xff {
                            self.push(0xaa);
                        }
                    }
                }
            }
            _ => {}
        }
        None
    }

    fn command(&mut self, c: u8) -> Option<u16> {
        self.pending = None;
        match c {
            0x20 => self.push(self.command_byte),
            0x60 | 0xd1 => self.pending = Some(c),
            0xa7 => self.command_byte |= CB_AUX_DISABLED,
            0xa8 => self.command_byte &= !CB_AUX_DISABLED,
            0xaa => {
                self.command_byte |= CB_SYSTEM;
                self.push(0x55);
            }
            0xab => self.push(0x00),
            0xad => self.command_byte |= CB_KBD_DISABLED,
            0xae => self.command_byte &= !CB_KBD_DISABLED,
            0xd0 => self.push(self.output_port()),
            0xdd => self.a20 = false,
            0xdf => self.a20 = true,
            // Pulse output-port bits 3:0 low for each clear bit: bit 0 is the reset line.
            0xf0..=0xff if c & OUT_RESET == 0 => return Some(KBC_COMMAND),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_a_resets_on_a_rising_bit_0_and_keeps_a20() {
        let mut r = Reset::new();
        assert_eq!(r.read(PORT_A), PORT_A_A20);
        assert_eq!(r.write(PORT_A, 0), None);
        assert!(!r.a20());
        assert_eq!(r.read(PORT_A), 0);
        assert_eq!(r.write(PORT_A, PORT_A_A20), None);
        assert!(r.a20());
        assert_eq!(r.write(PORT_A, PORT_A_A20 | PORT_A_RESET), Some(PORT_A));
        // Already set: no new edge.
        assert_eq!(r.write(PORT_A, PORT_A_A20 | PORT_A_RESET), None);
        assert_eq!(r.write(PORT_A, 0), None);
        assert_eq!(r.write(PORT_A, PORT_A_RESET), Some(PORT_A));
    }

    #[test]
    fn reset_control_register() {
        let mut r = Reset::new();
        assert_eq!(r.write(RESET_CONTROL, 0x02), None);
        assert_eq!(r.read(RESET_CONTROL), 0x02);
        assert_eq!(r.write(RESET_CONTROL, RESET_VALUE), Some(RESET_CONTROL));
        assert_eq!(r.read(RESET_CONTROL), 0x02);
        assert_eq!(r.write(RESET_CONTROL, 0x04), Some(RESET_CONTROL));
    }

    #[test]
    fn keyboard_controller_commands_and_reset() {
        let mut r = Reset::new();
        assert_eq!(r.read(KBC_COMMAND), status::UNLOCKED | status::SYSTEM);
        assert_eq!(r.write(KBC_COMMAND, 0xaa), None);
        assert_eq!(r.read(KBC_COMMAND) & status::OUTPUT_FULL, 1);
        assert_eq!(r.read(KBC_DATA), 0x55);
        assert_eq!(r.read(KBC_COMMAND) & status::OUTPUT_FULL, 0);
        // Command byte round trip.
        r.write(KBC_COMMAND, 0x60);
        r.write(KBC_DATA, 0x61);
        r.write(KBC_COMMAND, 0x20);
        assert_eq!(r.read(KBC_DATA), 0x61);
        assert_eq!(r.read(KBC_COMMAND) & status::SYSTEM, 0);
        // Output port: A20 off by 0xDD, read back through 0xD0.
        r.write(KBC_COMMAND, 0xdd);
        r.write(KBC_COMMAND, 0xd0);
        assert_eq!(r.read(KBC_DATA), OUT_RESET);
        r.write(KBC_COMMAND, 0xdf);
        assert!(r.a20());
        // A keyboard reset: ACK then self-test passed.
        assert_eq!(r.write(KBC_DATA, 0xff), None);
        assert_eq!(r.read(KBC_DATA), 0xfa);
        assert_eq!(r.read(KBC_DATA), 0xaa);
        assert_eq!(r.read(KBC_DATA), 0xaa);
        // 0xD1 with bit 0 set only changes A20; with bit 0 clear it resets.
        r.write(KBC_COMMAND, 0xd1);
        assert_eq!(r.write(KBC_DATA, 0x01), None);
        assert!(!r.a20());
        r.write(KBC_COMMAND, 0xd1);
        assert_eq!(r.write(KBC_DATA, 0x02), Some(KBC_COMMAND));
        // Pulse commands: 0xFE resets, 0xFF (no bit clear) does not.
        assert_eq!(r.write(KBC_COMMAND, 0xff), None);
        assert_eq!(r.write(KBC_COMMAND, 0xfe), Some(KBC_COMMAND));
        assert_eq!(r.write(KBC_COMMAND, 0xf0), Some(KBC_COMMAND));
        assert!(Reset::claims(0x92) && Reset::claims(0xcf9) && !Reset::claims(0xcf8));
    }
}
