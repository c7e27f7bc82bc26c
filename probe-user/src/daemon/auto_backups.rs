//! `--backup-probes auto`: attaches the backup programs once the kernel has skipped one of the
//! probes (tried once; hits skipped before are counted as unrecovered).
use crate::kernel::{backups::BackupMode, loader::Loaded, progstats};

#[derive(Debug, Default)]
pub struct AutoBackups {
    /// Whether the backups were tried.
    tried: bool,
}

impl AutoBackups {
    /// Called every drain tick, so the first skipped run is answered at once.
    pub fn check(&mut self, loaded: &Loaded) {
        let backups = &loaded.backups;
        // No backup loaded (none can, before 5.11): nothing to attach, and the skipped runs are
        // exported as they are.
        if self.tried || backups.mode != BackupMode::Auto || backups.probes().next().is_none() {
            return;
        }
        let misses = progstats::recursion_misses(&loaded.ebpf, &loaded.probes);
        let skipped: u64 = misses.values().sum();
        if skipped == 0 {
            return;
        }
        self.tried = true;
        match backups.attach(&loaded.ebpf) {
            Ok(()) => log::warn!(
                "the kernel skipped {skipped} runs of linkprobe's probes (already running on \
                 that CPU: preempted or interrupted inside them); backup programs attached, so \
                 later skips are handled (see linkprobe_probe_recursion_misses_total)"
            ),
            Err(e) => log::error!(
                "the kernel skipped {skipped} runs of linkprobe's probes and the backup \
                 programs could not be attached ({e}): those hits are lost, counted in \
                 linkprobe_probe_recursion_misses_total"
            ),
        }
    }
}
