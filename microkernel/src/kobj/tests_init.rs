//! The first task: the supervisor, or `kernel-tests` in the `kernel` scenario, which gets the
//! in-kernel checks' tally in its start argument.

use super::tests::kernel;
use super::Next;

#[test]
fn the_first_task_gets_its_start_argument() {
    let mut k = kernel(&["kernel-tests"]);
    k.start_init(0, 0x3b_0001_0017).unwrap();
    let Next::User(t) = k.schedule() else {
        panic!("the first task does not run")
    };
    assert_eq!(k.thread(t).unwrap().regs.rdi, 0x3b_0001_0017);
    assert_eq!(k.init_task, Some(k.thread(t).unwrap().task));
    // The supervisor's start argument is 0.
    let mut k = kernel(&["supervisor"]);
    k.start_init(0, 0).unwrap();
    let Next::User(t) = k.schedule() else {
        panic!("the first task does not run")
    };
    assert_eq!(k.thread(t).unwrap().regs.rdi, 0);
}
