use super::*;

/// The pair programmed as Linux does: vectors 0x20 and 0x28, cascade on line 2, 8086 mode.
fn linux() -> Pic {
    let mut p = Pic::new();
    p.write(0x21, 0xff);
    p.write(0xa1, 0xff);
    init_like_linux(&mut p, (0xfb, 0xff));
    p
}

#[test]
fn linux_style_init_then_mask() {
    let mut p = linux();
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

#[test]
fn an_edge_is_requested_acknowledged_and_ended_by_eoi() {
    let mut p = linux();
    p.write(0x21, 0xfa); // unmask line 0 (and the cascade)
    assert_eq!(p.pending(), None);
    p.set_irq(0, true);
    assert_eq!(p.pending(), Some(0x20));
    p.write(0x20, 0x0a); // OCW3: read IRR
    assert_eq!(p.read(0x20), 1);
    assert_eq!(p.ack(), 0x20);
    assert_eq!(p.pending(), None, "no new edge");
    p.write(0x20, 0x0b);
    assert_eq!(p.read(0x20), 1, "in service");
    // A second edge while in service waits for the EOI.
    p.set_irq(0, false);
    p.set_irq(0, true);
    assert_eq!(p.pending(), None);
    p.write(0x20, 0x20);
    assert_eq!(p.pending(), Some(0x20));
    // Holding the line high makes no new edge.
    assert_eq!(p.ack(), 0x20);
    p.write(0x20, 0x20);
    p.set_irq(0, true);
    assert_eq!(p.pending(), None);
}

#[test]
fn masked_lines_wait_and_priority_is_fixed() {
    let mut p = linux();
    p.set_irq(1, true);
    assert_eq!(p.pending(), None, "line 1 masked");
    p.write(0x21, 0xf8);
    assert_eq!(p.pending(), Some(0x21));
    p.set_irq(0, true);
    assert_eq!(p.pending(), Some(0x20), "line 0 first");
    assert_eq!(p.ack(), 0x20);
    assert_eq!(p.pending(), None, "line 1 is below line 0 in service");
    p.write(0x20, 0x60); // specific EOI for line 0
    assert_eq!(p.ack(), 0x21);
    // A higher line may interrupt a lower one in service.
    p.set_irq(0, false);
    p.set_irq(0, true);
    assert_eq!(p.pending(), Some(0x20));
}

#[test]
fn the_slave_cascades_through_line_2() {
    let mut p = linux();
    p.write(0xa1, 0xfe); // unmask line 8
    p.set_irq(8, true);
    assert_eq!(p.pending(), Some(0x28));
    assert_eq!(p.ack(), 0x28);
    assert_eq!(p.master.isr(), 1 << 2);
    assert_eq!(p.slave.isr(), 1);
    p.write(0xa0, 0x20);
    p.write(0x20, 0x20);
    assert_eq!((p.master.isr(), p.slave.isr()), (0, 0));
}

#[test]
fn level_lines_stay_requested_while_high() {
    let mut p = linux();
    p.write(0x4d1, 0x0e); // lines 9..11 level-triggered
    assert_eq!(p.read(0x4d1), 0x0e);
    p.write(0xa1, 0x00);
    p.set_irq(9, true);
    assert_eq!(p.ack(), 0x29);
    p.write(0xa0, 0x20);
    p.write(0x20, 0x20);
    assert_eq!(p.pending(), Some(0x29), "still high: requested again");
    p.set_irq(9, false);
    assert_eq!(p.pending(), None);
    // ELCR bits of always-edge lines cannot be set.
    p.write(0x4d0, 0xff);
    assert_eq!(p.read(0x4d0), 0xf8);
}

#[test]
fn a_vanished_request_gives_the_spurious_vector() {
    let mut p = linux();
    assert_eq!(p.ack(), 0x27);
    assert_eq!(p.master.isr(), 0, "spurious: nothing in service");
}

#[test]
fn auto_eoi_and_poll_mode() {
    let mut p = Pic::new();
    for (port, v) in [(0x20, 0x13), (0x21, 0x30), (0x21, 0x03)] {
        p.write(port, v); // single, ICW4 with AEOI
    }
    p.write(0x21, 0);
    p.set_irq(3, true);
    assert_eq!(p.ack(), 0x33);
    assert_eq!(p.master.isr(), 0, "automatic EOI");
    p.set_irq(5, true);
    p.write(0x20, 0x0c); // OCW3 poll
    assert_eq!(p.read(0x20), 0x85);
    assert_eq!(p.pending(), None);
}
