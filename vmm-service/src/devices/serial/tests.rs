use super::*;
use proptest::prelude::*;

fn send(s: &mut Serial, bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes
        .iter()
        .filter_map(|&b| s.write(reg::RBR_THR, b))
        .map(|l| l.to_vec())
        .collect()
}

/// IIR bits 3:0.
fn iir(s: &mut Serial) -> u8 {
    s.read(reg::IIR_FCR) & 0x0f
}

#[test]
fn lines_on_newline_and_overflow() {
    let mut s = Serial::new();
    assert_eq!(send(&mut s, b"hello\r\nworld"), vec![b"hello".to_vec()]);
    assert_eq!(s.flush().map(|l| l.to_vec()), Some(b"world".to_vec()));
    assert_eq!(s.flush(), None);
    let long = [b'x'; LINE_MAX + 10];
    let lines = send(&mut s, &long);
    assert_eq!(lines, vec![vec![b'x'; LINE_MAX]]);
    assert_eq!(s.flush().map(|l| l.len()), Some(10));
}

#[test]
fn registers_read_back_and_lsr_is_ready() {
    let mut s = Serial::new();
    assert_eq!(s.read(reg::LSR), LSR_READY);
    s.write(reg::LCR, 0x83); // DLAB
    s.write(0, 0x0c);
    s.write(1, 0x00);
    assert_eq!((s.read(0), s.read(1)), (0x0c, 0));
    s.write(reg::LCR, 0x03);
    s.write(reg::IER, 0xf5); // the high nibble reads 0
    s.write(reg::SCR, 0x5a);
    s.write(reg::MCR, 0xeb); // bits 7:5 read 0
    assert_eq!(
        (s.read(1), s.read(3), s.read(7), s.read(4)),
        (5, 3, 0x5a, 0x0b)
    );
    assert_eq!(s.read(reg::IIR_FCR), 0x01);
    s.write(reg::IIR_FCR, 0xc7);
    assert_eq!(s.read(reg::IIR_FCR), 0xc1);
    // While DLAB was set, THR writes did not transmit; MSR and LSR ignore writes.
    assert_eq!(s.flush(), None);
    s.write(reg::MSR, 0);
    s.write(reg::LSR, 0);
    assert_eq!(s.read(reg::MSR), msr::LINE);
    assert_eq!(s.read(reg::LSR), LSR_READY);
}

#[test]
fn word_length_masks_transmitted_and_received_bytes() {
    let mut s = Serial::new();
    s.write(reg::LCR, 0x02); // 7 data bits
    assert_eq!(send(&mut s, b"\xc1\n"), vec![vec![0x41]]);
    s.write(reg::LCR, 0x00); // 5 data bits
    assert!(s.receive(0xff));
    assert_eq!(s.read(reg::RBR_THR), 0x1f);
}

#[test]
fn loopback_echoes_into_the_fifo_not_the_console() {
    let mut s = Serial::new();
    s.write(reg::IIR_FCR, fcr::ENABLE | fcr::CLEAR_RX | fcr::CLEAR_TX);
    s.write(reg::MCR, mcr::LOOP);
    assert!(
        !s.receive(b'z'),
        "the line input is disconnected in loopback"
    );
    assert_eq!(send(&mut s, b"ab\ncd"), Vec::<Vec<u8>>::new());
    assert_eq!(s.read(reg::LSR), LSR_READY | lsr::DR);
    let got: Vec<u8> = (0..5).map(|_| s.read(reg::RBR_THR)).collect();
    assert_eq!(got, b"ab\ncd");
    assert_eq!(s.read(reg::LSR), LSR_READY);
    assert_eq!(s.flush(), None);
    // Out of loopback the console works again and the line input is connected.
    s.write(reg::MCR, 0);
    assert_eq!(send(&mut s, b"ok\n"), vec![b"ok".to_vec()]);
    assert!(s.receive(b'z'));
    assert_eq!(s.read(reg::RBR_THR), b'z');
}

#[test]
fn fifo_overrun_keeps_sixteen_and_sets_oe_until_lsr_is_read() {
    let mut s = Serial::new();
    s.write(reg::IIR_FCR, fcr::ENABLE);
    for b in 0..20u8 {
        assert!(s.receive(b));
    }
    assert_eq!(s.read(reg::LSR), LSR_READY | lsr::DR | lsr::OE);
    assert_eq!(s.read(reg::LSR), LSR_READY | lsr::DR);
    let got: Vec<u8> = (0..FIFO_BYTES).map(|_| s.read(reg::RBR_THR)).collect();
    assert_eq!(got, (0..16).collect::<Vec<u8>>());
    assert_eq!(s.read(reg::LSR), LSR_READY);
    assert_eq!(s.read(reg::RBR_THR), 0);
}

#[test]
fn without_fifo_a_new_byte_overwrites_rbr() {
    let mut s = Serial::new();
    s.receive(1);
    s.receive(2);
    assert_eq!(s.read(reg::LSR), LSR_READY | lsr::DR | lsr::OE);
    assert_eq!(s.read(reg::RBR_THR), 2);
    assert_eq!(s.read(reg::LSR), LSR_READY);
}

#[test]
fn fifo_reset_and_mode_change_clear_the_receiver() {
    let mut s = Serial::new();
    s.write(reg::IIR_FCR, fcr::ENABLE);
    s.receive(1);
    s.write(reg::IIR_FCR, fcr::ENABLE | 0x80); // trigger 8, no reset: kept
    assert_eq!(s.read(reg::LSR) & lsr::DR, lsr::DR);
    s.write(reg::IIR_FCR, fcr::ENABLE | fcr::CLEAR_RX);
    assert_eq!(s.read(reg::LSR) & lsr::DR, 0);
    s.receive(2);
    s.write(reg::IIR_FCR, 0); // FIFO off
    assert_eq!(s.read(reg::LSR) & lsr::DR, 0);
}

#[test]
fn thre_interrupt_follows_the_16550() {
    let mut s = Serial::new();
    s.write(reg::MCR, mcr::OUT2);
    assert!(!s.irq_level());
    // Setting ETBEI with THR empty raises it at once.
    s.write(reg::IER, ier::ETBEI);
    assert!(s.irq_level());
    // Reading IIR when it is the source clears it.
    assert_eq!(iir(&mut s), iir::THR_EMPTY);
    assert!(!s.irq_level());
    assert_eq!(iir(&mut s), iir::NONE);
    // Writing THR: it empties again at once, so the interrupt is raised again.
    s.write(reg::RBR_THR, b'x');
    assert!(s.irq_level());
    // Clearing ETBEI masks it; setting it again raises it (THR is empty).
    s.write(reg::IER, 0);
    assert!(!s.irq_level());
    assert_eq!(iir(&mut s), iir::NONE);
    s.write(reg::IER, ier::ETBEI);
    assert_eq!(iir(&mut s), iir::THR_EMPTY);
    // Writing IER again with ETBEI already set does not raise it.
    s.write(reg::IER, ier::ETBEI);
    assert_eq!(iir(&mut s), iir::NONE);
}

#[test]
fn irq_line_needs_out2_and_not_loopback() {
    let mut s = Serial::new();
    s.write(reg::IER, ier::ERBFI);
    s.receive(b'a');
    assert!(!s.irq_level(), "OUT2 clear: the IRQ line is not driven");
    assert_eq!(
        iir(&mut s),
        iir::RX_DATA,
        "the UART's own IIR still reports it"
    );
    s.write(reg::MCR, mcr::OUT2);
    assert!(s.irq_level());
    s.write(reg::MCR, mcr::OUT2 | mcr::LOOP);
    assert!(!s.irq_level(), "loopback forces the OUT2 pin inactive");
    s.write(reg::MCR, mcr::OUT2);
    s.read(reg::RBR_THR);
    assert!(!s.irq_level());
}

#[test]
fn rx_trigger_level_and_character_timeout() {
    let mut s = Serial::new();
    s.write(reg::MCR, mcr::OUT2);
    s.write(reg::IER, ier::ERBFI);
    s.write(reg::IIR_FCR, fcr::ENABLE | 0x40); // trigger 4
    for b in 0..3 {
        s.receive(b);
    }
    // Below the trigger: the character timeout reports the waiting bytes.
    assert_eq!(s.read(reg::IIR_FCR), iir::FIFOS_ENABLED | iir::TIMEOUT);
    assert!(s.irq_level());
    s.receive(3);
    assert_eq!(iir(&mut s), iir::RX_DATA);
    s.read(reg::RBR_THR);
    assert_eq!(iir(&mut s), iir::TIMEOUT);
    for _ in 0..3 {
        s.read(reg::RBR_THR);
    }
    assert_eq!(iir(&mut s), iir::NONE);
    assert!(!s.irq_level());
}

#[test]
fn priorities_line_status_then_rx_then_thre_then_modem() {
    let mut s = Serial::new();
    s.write(reg::MCR, mcr::OUT2 | mcr::LOOP | mcr::RTS); // CTS changes: DCTS
    s.write(reg::MCR, mcr::OUT2);
    s.write(reg::IER, ier::ALL); // THRE pending
    s.receive(1);
    s.receive(2); // overrun without FIFO
    assert_eq!(iir(&mut s), iir::LINE_STATUS);
    assert_eq!(s.read(reg::LSR) & lsr::OE, lsr::OE);
    assert_eq!(iir(&mut s), iir::RX_DATA);
    s.read(reg::RBR_THR);
    assert_eq!(iir(&mut s), iir::THR_EMPTY);
    assert_eq!(iir(&mut s), iir::MODEM_STATUS);
    assert!(s.irq_level());
    assert_ne!(s.read(reg::MSR) & msr::DELTAS, 0);
    assert_eq!(iir(&mut s), iir::NONE);
    assert!(!s.irq_level());
}

#[test]
fn loopback_modem_lines_and_deltas() {
    let mut s = Serial::new();
    assert_eq!(s.read(reg::MSR), msr::LINE);
    // Loopback with nothing set: CTS, DSR and DCD fall.
    s.write(reg::MCR, mcr::LOOP);
    assert_eq!(s.read(reg::MSR), msr::DCTS | msr::DDSR | msr::DDCD);
    assert_eq!(s.read(reg::MSR), 0, "reading MSR cleared the deltas");
    s.write(
        reg::MCR,
        mcr::LOOP | mcr::DTR | mcr::RTS | mcr::OUT1 | mcr::OUT2,
    );
    assert_eq!(
        s.read(reg::MSR),
        msr::CTS | msr::DSR | msr::RI | msr::DCD | msr::DCTS | msr::DDSR | msr::DDCD
    );
    // RI falling sets TERI; rising does not.
    s.write(reg::MCR, mcr::LOOP | mcr::DTR | mcr::RTS | mcr::OUT2);
    assert_eq!(s.read(reg::MSR), msr::CTS | msr::DSR | msr::DCD | msr::TERI);
    // The Linux 8250 probe: loopback with OUT2 and RTS gives DCD and CTS (0x90).
    s.write(reg::MCR, mcr::LOOP | mcr::OUT2 | mcr::RTS);
    assert_eq!(s.read(reg::MSR) & 0xf0, 0x90);
}

proptest! {
    /// Any sequence of received bytes and RBR/LSR reads behaves as a 16-byte queue that drops
    /// bytes arriving when full and flags exactly that with OE.
    #[test]
    fn fifo_matches_a_bounded_queue(ops in prop::collection::vec(prop::option::of(any::<u8>()), 0..200)) {
        let mut s = Serial::new();
        s.write(reg::IIR_FCR, fcr::ENABLE);
        let mut model = std::collections::VecDeque::new();
        let mut oe = false;
        for op in ops {
            match op {
                Some(b) => {
                    s.receive(b);
                    if model.len() == FIFO_BYTES { oe = true } else { model.push_back(b) }
                }
                None => {
                    let l = s.read(reg::LSR);
                    prop_assert_eq!(l & lsr::DR != 0, !model.is_empty());
                    prop_assert_eq!(l & lsr::OE != 0, oe);
                    oe = false;
                    prop_assert_eq!(s.read(reg::RBR_THR), model.pop_front().unwrap_or(0));
                }
            }
        }
    }
}

/// Register accesses: (write?, offset, value).
fn access() -> impl Strategy<Value = (bool, u16, u8)> {
    (any::<bool>(), 0u16..8, any::<u8>())
}

proptest! {
    /// Whatever a guest does, the IRQ line is exactly "IIR reports a source, OUT2 is set and
    /// loopback is off", and IIR's low bits are one of the 16550's six values.
    #[test]
    fn irq_level_is_iir_gated_by_out2(ops in prop::collection::vec(prop::option::of(access()), 0..300)) {
        let mut s = Serial::new();
        for op in ops {
            match op {
                Some((true, off, v)) => {
                    let _ = s.write(off, v);
                }
                Some((false, off, _)) => {
                    let _ = s.read(off);
                }
                None => {
                    s.receive(0x55);
                }
            }
            let mcr = s.mcr;
            let level = s.irq_level();
            let id = s.source();
            prop_assert!([iir::NONE, iir::LINE_STATUS, iir::RX_DATA, iir::TIMEOUT, iir::THR_EMPTY, iir::MODEM_STATUS].contains(&id));
            prop_assert_eq!(level, id != iir::NONE && mcr & mcr::OUT2 != 0 && mcr & mcr::LOOP == 0);
        }
    }
}
