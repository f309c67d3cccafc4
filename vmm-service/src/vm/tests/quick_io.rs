//! Port I/O that skips the look at the devices ([`Interrupts::finish`]): the quick path
//! ([`VmModel::handle_quick`] of a [`crate::devices::bus::PortBus::quiet`] access) and
//! [`VmModel::handle`] after an access to the UART alone answer, and leave the devices,
//! the exit counts and the deadlines, as the full look after every access does
//! ([`VmModel::handle_looking`]).

use super::quick::bytes_of;
use super::*;
use crate::devices::pit::PIT_HZ;
use crate::irq::Clock;
use abi::vmx::ExitView;

/// The TSC's rate of the tests: deadlines are set.
const TSC_HZ: u64 = 3 * PIT_HZ;

/// Two copies of one VM: `quick` takes the quick paths, `full` looks at the devices after
/// every exit; both see the same exits at the same times.
struct Pair {
    quick: VmModel,
    full: VmModel,
    tsc: u64,
    /// Exits the quick path answered.
    answered: usize,
}

impl Pair {
    fn new() -> Pair {
        Pair {
            quick: vm(),
            full: vm(),
            tsc: 1_000_000,
            answered: 0,
        }
    }

    fn env(&self) -> TestEnv {
        let mut e = TestEnv::new();
        e.tsc = self.tsc;
        e.tsc_hz = TSC_HZ;
        e.ticks = Clock::ticks_at(self.tsc, TSC_HZ);
        e
    }

    /// Moves time on by `ticks` PIT periods.
    fn advance(&mut self, ticks: u64) {
        self.tsc += ticks * TSC_HZ / PIT_HZ;
    }

    /// Runs exit `m` (as the VMM's portal sends it) on both; returns whether the quick path
    /// answered it. Asserts the same reply, events and state.
    fn exit(&mut self, m: &ExitMessage) -> bool {
        let bytes = if matches!(m.basic_reason(), reason::IO | reason::CPUID) {
            bytes_of(m)
        } else {
            let mut buf = vec![0u8; ExitMessage::MAX_SIZE];
            let n = m.encode(&mut buf).expect("fits");
            buf.truncate(n);
            buf
        };
        let m = ExitMessage::decode(&bytes).expect("decodes");
        let before = format!("{:?}", self.quick);
        let view = ExitView::new(&bytes).expect("a view");
        let quick = self.quick.handle_quick(&view, &mut self.env());
        let o = self.full.handle_looking(&m, &mut self.env());
        match quick {
            Some(q) => {
                super::quick::assert_same_reply(&q, &o, &m);
                self.answered += 1;
            }
            None => {
                assert_eq!(
                    format!("{:?}", self.quick),
                    before,
                    "{m:?} changed the model"
                );
                let got = self.quick.handle(&m, &mut self.env());
                assert_eq!(got, o, "{m:?}");
            }
        }
        self.assert_same(&m);
        quick.is_some()
    }

    /// The two copies are the same VM: after one more look at the devices (an
    /// external-interrupt exit, on copies of both) they answer alike and are equal. (A
    /// skipped look leaves bookkeeping behind, such as the PIT time up to which edges were
    /// counted, which the next look brings level.)
    fn assert_same(&self, m: &ExitMessage) {
        let (mut quick, mut full) = (self.quick.clone(), self.full.clone());
        let look = msg(reason::EXTERNAL_INTERRUPT);
        let a = quick.handle_looking(&look, &mut self.env());
        let b = full.handle_looking(&look, &mut self.env());
        assert_eq!(a, b, "after {m:?}");
        assert_eq!(format!("{quick:?}"), format!("{full:?}"), "after {m:?}");
    }

    fn out(&mut self, port: u16, size: u8, value: u64) -> bool {
        self.exit(&io(port, size, false, value))
    }

    fn inp(&mut self, port: u16, size: u8) -> bool {
        self.exit(&io(port, size, true, 0x1111_2222_3333_4444))
    }

    /// A PC as Linux sets it up: the 8259s at vectors 0x20/0x28 with every line unmasked,
    /// PIT channel 0 periodic (mode 2) every `period` ticks, the UART's IRQ gated through.
    fn boot(&mut self, period: u16) {
        let linux = crate::devices::pic::LINUX_INIT.map(|(p, v)| (p, u16::from(v)));
        for (port, v) in linux.into_iter().chain([
            (0x21, 0x00),
            (0xa1, 0x00),
            (0x43, 0x34),
            (0x40, period & 0xff),
            (0x40, period >> 8),
            (0x3fc, 0x08),
        ]) {
            assert!(!self.out(port, 1, u64::from(v)), "{port:#x}");
        }
    }
}

#[test]
fn scratch_register_skips_the_look_until_the_deadline() {
    let mut p = Pair::new();
    p.boot(1000);
    // The look after the last setup write left nothing to deliver: the scratch register,
    // LSR and LCR are answered quickly.
    assert!(p.out(0x3ff, 1, 0x5a));
    assert!(p.inp(0x3ff, 1));
    assert!(p.inp(0x3fd, 1));
    assert!(p.out(0x3fb, 1, 0x03));
    // A write that may change an interrupt line or a deadline is the full path's.
    for (port, v) in [(0x21, 0x00), (0x43, 0x00), (0x3f9, 0x00), (0x3fc, 0x08)] {
        assert!(!p.out(port, 1, v), "{port:#x}");
    }
    assert!(!p.inp(0x40, 1));
    // A THR write is the full path's (console text); with the UART's output unchanged it
    // skips the look there.
    assert!(!p.out(0x3f8, 1, u64::from(b'x')));
    assert!(p.out(0x3ff, 1, 0x5a));
    // The PIT's edge comes: past the deadline, the full path delivers it.
    p.advance(1001);
    assert!(!p.out(0x3ff, 1, 0x5a));
    assert_eq!(p.quick.irq.windows, 1, "IRQ 0 waits for its window");
    // Nothing settled until it is delivered.
    assert!(!p.out(0x3ff, 1, 0x5a));
    let window = msg(reason::INTERRUPT_WINDOW);
    assert!(!p.exit(&window));
    assert_eq!(p.quick.irq.injected, 1);
    // Not settled right after an injection: one more look, then quick again.
    assert!(!p.out(0x3ff, 1, 0x5a));
    assert!(p.out(0x3ff, 1, 0x5a));
    // Wide accesses: within the UART, quick; reaching past it (0x400), full.
    assert!(p.out(0x3fe, 2, 0xffff));
    assert!(p.inp(0x3fc, 4));
    assert!(!p.inp(0x3fe, 4));
    // A string access and a stopped VM are the full path's.
    let mut outs = io(0x3ff, 1, false, 0);
    outs.qualification |= crate::exit::IO_STRING;
    assert!(!p.exit(&outs));
    assert!(!p.out(0x3ff, 1, 0));
    assert!(p.quick.result().is_some());
}

#[test]
fn serial_reads_with_side_effects_take_the_full_path() {
    let mut p = Pair::new();
    p.boot(0xffff);
    // Loopback, FIFO on: bytes written come back to the receiver.
    assert!(!p.out(0x3fc, 1, 0x10));
    assert!(!p.out(0x3fa, 1, 0x01));
    assert!(!p.out(0x3f8, 1, 0x41));
    assert!(!p.inp(0x3f8, 1), "RBR pops the byte");
    assert!(p.inp(0x3f8, 1), "an empty RBR reads 0, nothing changes");
    // IER.ETBEI raises the THR-empty interrupt: IIR clears it when it reports it.
    assert!(!p.out(0x3f9, 1, 0x02));
    assert!(!p.inp(0x3fa, 1));
    assert!(p.inp(0x3fa, 1));
    // The modem deltas of the loopback switch: MSR clears them.
    assert!(!p.inp(0x3fe, 1));
    assert!(p.inp(0x3fe, 1));
    // The divisor latch under DLAB.
    assert!(p.out(0x3fb, 1, 0x83));
    assert!(p.out(0x3f8, 2, 0x0001));
    assert!(p.inp(0x3f8, 2));
    assert!(p.out(0x3fb, 1, 0x03));
    assert_eq!(
        p.quick.exit_count(reason::IO),
        p.full.exit_count(reason::IO)
    );
}

/// One exit of a random sequence: port I/O at the platform's ports (and a few unhandled),
/// CPUID, an interrupt-window exit, with time passing between them.
#[derive(Clone, Debug)]
enum Step {
    Io {
        port: u16,
        size: u8,
        input: bool,
        value: u32,
    },
    Cpuid,
    Window,
}

const PORTS: [u16; 24] = [
    0x3f8, 0x3f9, 0x3fa, 0x3fb, 0x3fc, 0x3fd, 0x3fe, 0x3ff, 0x3ff, 0x3ff, 0x3fd, 0x3f6, 0x40, 0x43,
    0x61, 0x20, 0x21, 0xa0, 0xa1, 0x70, 0x71, 0x80, 0x510, 0x4d0,
];

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (
            proptest::sample::select(PORTS.to_vec()),
            proptest::sample::select(vec![1u8, 1, 1, 2, 4]),
            any::<bool>(),
            any::<u32>(),
        )
            .prop_map(|(port, size, input, value)| Step::Io {
                port,
                size,
                input,
                value,
            }),
        1 => Just(Step::Cpuid),
        1 => Just(Step::Window),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_port_accesses_answer_as_the_full_look(
        steps in proptest::collection::vec((step(), prop_oneof![3 => Just(0u64), 1 => 0u64..3000]), 1..80),
        period in 200u16..3000,
    ) {
        let mut p = Pair::new();
        p.boot(period);
        for (s, ticks) in steps {
            p.advance(ticks);
            match s {
                Step::Io { port, size, input, value } if input => {
                    p.exit(&io(port, size, true, u64::from(value) << 8 | 0xaa));
                }
                Step::Io { port, size, value, .. } => {
                    p.out(port, size, u64::from(value));
                }
                Step::Cpuid => {
                    p.exit(&msg(reason::CPUID));
                }
                Step::Window => {
                    p.exit(&msg(reason::INTERRUPT_WINDOW));
                }
            }
        }
    }
}
