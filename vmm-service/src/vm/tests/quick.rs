//! The quick path ([`VmModel::handle_quick`]) answers as [`VmModel::handle`] does, or leaves
//! the exit to it with nothing changed.

use super::*;

/// `m` as the kernel sends it to the VMM's portal (just the registers for CPUID and VMCALL).
pub(super) fn bytes_of(m: &ExitMessage) -> std::vec::Vec<u8> {
    let mut m = *m;
    m.mask = crate::exit::required_groups(m.basic_reason());
    let mut buf = vec![0u8; ExitMessage::MAX_SIZE];
    let n = m.encode(&mut buf).expect("fits");
    buf.truncate(n);
    buf
}

/// Runs `m` through the quick path of `quick` and the full one of `full` (two copies of
/// the same model); returns whether the quick path answered.
/// The quick path's answer `q` is the full path's outcome `o` for exit `m`: the same reply,
/// encoded to the same bytes, and no events.
pub(super) fn assert_same_reply(q: &QuickReply, o: &Outcome, m: &ExitMessage) {
    assert_eq!(q.to_reply(), o.reply, "{m:?}");
    assert!(o.events.is_empty(), "{m:?}: {:?}", o.events);
    let mut a = [0u8; ExitReply::MAX_SIZE];
    let mut b = [0u8; ExitReply::MAX_SIZE];
    let n = o.reply.encode(&mut a).unwrap();
    assert_eq!(q.encode(&mut b), Some(n));
    assert_eq!(a[..n], b[..n]);
}

fn same_answer(quick: &mut VmModel, full: &mut VmModel, m: &ExitMessage) -> bool {
    let mut env = TestEnv::new();
    env.state.insert(abi::vmx::field::CR4_READ_SHADOW, 0x4_0000);
    env.state.insert(abi::vmx::field::CR4_GUEST_HOST_MASK, !0);
    let mut full_env = TestEnv::new();
    full_env.state = env.state.clone();
    let m = ExitMessage::decode(&bytes_of(m)).expect("decodes");
    let before = quick.exit_count(m.basic_reason());
    let quick_reply = quick.handle_quick(&ExitView::new(&bytes_of(&m)).unwrap(), &mut env);
    let o = full.handle(&m, &mut full_env);
    match quick_reply {
        Some(q) => {
            assert_same_reply(&q, &o, &m);
            true
        }
        None => {
            // Nothing changed: the full path then brings the copies level again.
            assert_eq!(quick.exit_count(m.basic_reason()), before);
            quick.handle(&m, &mut full_env.clone_for_retry());
            false
        }
    }
}

impl TestEnv {
    fn clone_for_retry(&self) -> TestEnv {
        let mut e = TestEnv::new();
        e.state = self.state.clone();
        e
    }
}

use abi::vmx::ExitView;

#[test]
fn quick_answers_are_the_full_paths() {
    for benchmark in [false, true] {
        let mut quick = vm();
        let mut full = vm();
        if benchmark {
            quick = quick.with_benchmark_hypercalls();
            full = full.with_benchmark_hypercalls();
        }
        let mut cpuid = msg(reason::CPUID);
        // The first exit looks at the devices (nothing is settled yet): the full path.
        assert!(!same_answer(&mut quick, &mut full, &cpuid));
        let mut answered = 0;
        for (leaf, sub) in [
            (0, 0),
            (1, 0),
            (7, 0),
            (0xd, 1),
            (0x4000_0000, 0),
            (0x4000_0001, 0),
            (u64::from(hypercall::UNREFLECT_LEAF), 0),
            (0x8000_0001, 0),
            (0x8000_0008, 0),
            (0xffff_ffff, 3),
        ] {
            gprs(&mut cpuid, &[(Gpr::Rax, leaf), (Gpr::Rcx, sub)]);
            answered += usize::from(same_answer(&mut quick, &mut full, &cpuid));
        }
        // All but the leaf that asks for the reflected exits back (a benchmark event).
        assert_eq!(answered, if benchmark { 9 } else { 10 });
        let mut vmcall = msg(reason::VMCALL);
        answered = 0;
        for rax in [
            hypercall::NOP,
            0,
            0x1234,
            hypercall::SIGNATURE | 0xee,
            hypercall::PRINT,
            hypercall::REFLECT,
        ] {
            gprs(
                &mut vmcall,
                &[(Gpr::Rax, rax), (Gpr::Rbx, 0), (Gpr::Rcx, 0)],
            );
            answered += usize::from(same_answer(&mut quick, &mut full, &vmcall));
        }
        // NOP and the numbers without Umbra's signature.
        assert_eq!(answered, 3);
        for r in [reason::CPUID, reason::VMCALL] {
            assert_eq!(quick.exit_count(r), full.exit_count(r));
        }
        // Other reasons, and a stopped VM, are the full path's.
        assert!(!same_answer(&mut quick, &mut full, &io(0x40, 1, false, 0)));
        gprs(&mut vmcall, &[(Gpr::Rax, hypercall::EXIT)]);
        assert!(!same_answer(&mut quick, &mut full, &vmcall));
        gprs(&mut cpuid, &[(Gpr::Rax, 0)]);
        assert!(!same_answer(&mut quick, &mut full, &cpuid));
    }
}
