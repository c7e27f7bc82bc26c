//! Shared harness for the real-kernel tests: a network namespace per test, nftables rules and
//! nstat counters inside it, and a `linkprobe trace` process scoped to it. For the exporter: a
//! small HTTP client and a real Prometheus server with promtool. What xtask's bench needs too
//! lives in the `testkit` crate; these modules add the tests' side (panics, linkprobe's flags,
//! its JSON records, socket cookies).

pub mod api;
pub mod netns;
pub mod prometheus;
pub mod proxy;
pub mod tracer;
pub mod workload;

pub use testkit::http;

/// A one-page ring drained once a second: it cannot hold a burst of refused connects, so
/// records are lost (and counted).
pub const TINY_RING_ARGS: &[&str] = &[
    "--ring-bytes",
    "4096",
    "--drain-interval-ms",
    "1000",
    "--wakeup-bytes",
    "1048576",
];

/// Set (to anything) by `cargo xtask test --unit-only`: the user asked for unit tests only, so
/// a real-kernel test that cannot run here returns early instead of failing.
pub const UNIT_ONLY_ENV: &str = "LINKPROBE_UNIT_ONLY";

/// A real-kernel test cannot run here (`why`): it fails, since a test that returns early
/// passes without testing anything, unless the user asked for unit tests only
/// ([`UNIT_ONLY_ENV`]); then it says so and returns false.
pub fn cannot_run(test: &str, why: &str) -> bool {
    assert!(
        std::env::var_os(UNIT_ONLY_ENV).is_some(),
        "{test} cannot run: {why}. Run the real-kernel tests as root (`sudo -E cargo test -p \
         probe-user --test kernel`), or ask for unit tests only with `cargo xtask test \
         --unit-only` ({UNIT_ONLY_ENV}=1)"
    );
    eprintln!("skip {test} ({UNIT_ONLY_ENV} set): {why}");
    false
}

/// Whether this process can run real-kernel tests: fails when it cannot (see [`cannot_run`]).
pub fn can_run_kernel_tests(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return cannot_run(test, "real-kernel tests need root (CAP_BPF, CAP_SYS_ADMIN)");
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        return cannot_run(test, "this kernel has no BTF (/sys/kernel/btf/vmlinux)");
    }
    for tool in ["ip", "nft", "nstat"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).exists()));
        assert!(
            found,
            "{tool} is missing: run `cargo xtask setup` (installs iproute2 and nftables)"
        );
    }
    true
}

/// Whether this kernel's `tcp:tcp_send_reset` has a `reason` field (6.10+): read from tracefs,
/// not from linkprobe, as an oracle of its own (tracefs is mounted by the tracer started
/// before).
pub fn send_reset_has_reason() -> bool {
    std::fs::read_to_string("/sys/kernel/tracing/events/tcp/tcp_send_reset/format")
        .expect("tcp_send_reset format (tracefs mounted by the tracer)")
        .contains(" reason;")
}

/// RSTs sent that this kernel's `tcp:tcp_send_reset` never shows, of `socketless` sent without
/// a socket (answers to refused connects): all of them before 6.10, whose tracepoint fires
/// only for RSTs sent from a socket (the same kernels have no `reason` field).
pub fn rsts_the_kernel_hides(socketless: u64) -> u64 {
    if send_reset_has_reason() {
        0
    } else {
        socketless
    }
}
