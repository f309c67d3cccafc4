//! Links the service with `userlib/link.ld` (the shared build script).
include!("../../userlib/service_build.rs");
