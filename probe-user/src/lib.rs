//! linkprobe userspace: loads the eBPF probes, drains their ring buffer and turns records into
//! typed events. The event path flows one way:
//! probes (`loader`) → ring (`reader`) → `decode` → `event` → `flowtable` → `signal` →
//! `detect` and `metrics` → `exporter` (HTTP) and `output` → CLI.
pub mod api;
pub mod backups;
pub mod bpfsys;
pub mod btf;
pub mod cli;
pub mod config;
pub mod counters;
pub mod ctl;
pub mod daemon;
pub mod decode;
pub mod detail;
pub mod detect;
pub mod diag;
pub mod event;
pub mod exporter;
pub mod flowtable;
pub mod loader;
pub mod lock;
pub mod metrics;
pub mod mounts;
pub mod openflows;
pub mod output;
pub mod output_anomaly;
pub mod output_flow;
pub mod pipeline;
pub mod preflight;
pub mod probes_check;
pub mod progstats;
pub mod reader;
pub mod rst_reason;
pub mod scope;
pub mod signal;
pub mod sink;
pub mod top;
pub mod tracefs;
