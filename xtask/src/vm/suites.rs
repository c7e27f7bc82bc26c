//! The test binaries run inside each VM, in order: their section names in the results stream
//! (shared by the payload, the results and the known failures).
pub const KERNEL_TESTS: &str = "kernel-tests";
pub const UNIT_TESTS: &str = "unit-tests";
