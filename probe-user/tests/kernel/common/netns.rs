//! A network namespace owned by one test, removed when dropped ([`testkit::netns::Netns`];
//! here every failure is a panic).
use std::collections::BTreeMap;

pub use testkit::netns::delta;
use testkit::netns::Netns;

pub struct TestNetns {
    pub name: String,
    ns: Netns,
}

impl TestNetns {
    pub fn new(tag: &str) -> TestNetns {
        let ns = Netns::create(format!("lpt-{tag}-{}", std::process::id()))
            .unwrap_or_else(|e| panic!("{e}"));
        TestNetns {
            name: ns.name().to_owned(),
            ns,
        }
    }

    /// Runs `f` on a thread that has entered this namespace.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.ns.enter(f).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Loads an nftables script into the namespace.
    pub fn nft(&self, script: &str) {
        nft(&self.name, script);
    }

    /// Absolute SNMP/netstat counters of the namespace (`nstat -asz`: absolute, no history).
    pub fn nstat(&self) -> BTreeMap<String, u64> {
        self.ns.nstat().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Moves the calling thread (only) into the named namespace.
pub fn enter_current_thread(name: &str) {
    testkit::netns::enter_current_thread(name).unwrap_or_else(|e| panic!("{e}"));
}

/// Loads an nftables script into namespace `ns` (usable from any thread).
pub fn nft(ns: &str, script: &str) {
    testkit::netns::nft(ns, script).unwrap_or_else(|e| panic!("{e}"));
}
