//! The kernel side as seen from userspace: the tracefs and BTF facts the programs need, loading
//! and attaching them (each probe alone), the ring buffer, the per-CPU counters and program
//! statistics, the open-flow iterator and the backup programs.
pub mod backups;
pub mod bpfsys;
pub mod btf;
pub mod counters;
pub mod detail;
pub mod loader;
pub mod openflows;
pub mod probes;
pub mod probes_check;
pub mod progstats;
pub mod reader;
pub mod tracefs;
