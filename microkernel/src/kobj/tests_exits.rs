//! Part `exits` of issue 17: the instructions a vCPU's controls let the guest run, as a
//! `VcpuState` pseudo-field. (The guest's XCR0 is tested in `tests_xstate.rs`.)

use super::tests::status;
use super::tests_vm::{read_one, state, vmm_with};
use abi::vmx::field;
use abi::Error;

#[test]
fn guest_features_follow_the_secondary_controls() {
    use abi::vmx::guest_features::{INVPCID, RDTSCP};
    let mut v = vmm_with(0);
    assert_eq!(read_one(&mut v.k, v.vcpu, field::GUEST_FEATURES), 0);
    // The VMCS as `vmcs_new` would set it where the CPU allows both controls.
    let vcpu = v.k.vcpus[v.vi.index()].obj.as_mut().unwrap();
    vcpu.hw.insert(0x401e, 1 << 3 | 1 << 12 | 1 << 1);
    assert_eq!(
        read_one(&mut v.k, v.vcpu, field::GUEST_FEATURES),
        RDTSCP | INVPCID
    );
    let vcpu = v.k.vcpus[v.vi.index()].obj.as_mut().unwrap();
    vcpu.hw.insert(0x401e, 1 << 3);
    assert_eq!(read_one(&mut v.k, v.vcpu, field::GUEST_FEATURES), RDTSCP);
    // Read-only.
    let (r, _) = state(&mut v.k, v.vcpu, &[(field::GUEST_FEATURES, 0)], true);
    assert_eq!(status(&r), Err(Error::InvalidArgument));
}
