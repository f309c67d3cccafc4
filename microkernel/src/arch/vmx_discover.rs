//! VMX discovery: read CPUID and the capability MSRs, decode them (`microkernel::vmx_caps`).
//! MSRs are read through the fault-tolerant probe, so a CPU or emulator that lacks one gives a
//! clear "not available" rather than a #GP.

use crate::arch::{cpu, trap};
use microkernel::vmx_caps::*;

/// Reads what the CPU offers.
pub fn discover() -> VmxSupport {
    if !cpu::has_vmx() {
        return VmxSupport::decode(false, None);
    }
    let read = |msr| trap::rdmsr(msr).ok();
    let (Some(feature_control), Some(basic)) =
        (read(MSR_IA32_FEATURE_CONTROL), read(MSR_IA32_VMX_BASIC))
    else {
        return VmxSupport::decode(false, None);
    };
    let true_ctls = has_true_controls(basic);
    let pinbased = read(if true_ctls {
        MSR_IA32_VMX_TRUE_PINBASED_CTLS
    } else {
        MSR_IA32_VMX_PINBASED_CTLS
    });
    let procbased = read(if true_ctls {
        MSR_IA32_VMX_TRUE_PROCBASED_CTLS
    } else {
        MSR_IA32_VMX_PROCBASED_CTLS
    });
    let procbased = procbased.unwrap_or(0);
    let secondary = has_secondary_controls(procbased);
    let msrs = VmxMsrs {
        feature_control,
        basic,
        pinbased: pinbased.unwrap_or(0),
        procbased,
        misc: read(MSR_IA32_VMX_MISC).unwrap_or(0),
        procbased2: secondary
            .then(|| read(MSR_IA32_VMX_PROCBASED_CTLS2))
            .flatten(),
        ept_vpid_cap: secondary.then(|| read(MSR_IA32_VMX_EPT_VPID_CAP)).flatten(),
    };
    VmxSupport::decode(true, Some(&msrs))
}
