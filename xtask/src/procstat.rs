//! A process's own figures from /proc: CPU time used and peak resident memory.

/// Peak resident set size (VmHWM) in kB.
pub fn peak_rss_kb(pid: u32) -> Option<u64> {
    status_kb(pid, "VmHWM:")
}

/// Resident set size now (VmRSS) in kB.
pub fn rss_kb(pid: u32) -> Option<u64> {
    status_kb(pid, "VmRSS:")
}

fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kb(&status, key)
}

fn parse_status_kb(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time used so far by all of the process's threads, in milliseconds: the scheduler's
/// nanosecond run time (`/proc/PID/task/*/schedstat`) where the kernel keeps it, else the
/// clock ticks of `/proc/PID/stat` (10 ms steps: too coarse for a few µs per connection).
pub fn cpu_ms(pid: u32) -> Option<f64> {
    schedstat_ms(pid).or_else(|| stat_ms(pid))
}

/// Sum of the threads' on-CPU time (first field of `schedstat`, ns). Threads that exited
/// are missing, which is fine for the long-lived tracers measured here.
fn schedstat_ms(pid: u32) -> Option<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut ns = 0u64;
    let mut any = false;
    for t in tasks.flatten() {
        let text = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
        ns += parse_schedstat_ns(&text)?;
        any = true;
    }
    any.then(|| ns as f64 / 1e6)
}

fn parse_schedstat_ns(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// utime + stime in milliseconds.
fn stat_ms(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = parse_stat_ticks(&stat)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    Some(ticks as f64 * 1000.0 / hz as f64)
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line; the command name in
/// parentheses may hold spaces, so fields are counted after its closing parenthesis.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let after_comm = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_skip_a_command_with_spaces() {
        let stat = "4242 (tokio rt) S 1 4242 4242 0 -1 4194560 1000 0 0 0 150 25 0 0 20 0 3 0";
        assert_eq!(parse_stat_ticks(stat), Some(175));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn status_kb_fields() {
        let status = "Name:\tlinkprobe\nVmHWM:\t  124000 kB\nVmRSS:\t   104000 kB\n";
        assert_eq!(parse_status_kb(status, "VmHWM:"), Some(124_000));
        assert_eq!(parse_status_kb(status, "VmRSS:"), Some(104_000));
        assert_eq!(parse_status_kb(status, "VmSwap:"), None);
    }

    #[test]
    fn schedstat_run_time() {
        assert_eq!(parse_schedstat_ns("149459 1252028 2\n"), Some(149_459));
        assert_eq!(parse_schedstat_ns(""), None);
    }

    #[test]
    fn own_process_has_figures() {
        let me = std::process::id();
        assert!(cpu_ms(me).is_some_and(|ms| ms > 0.0));
        assert!(stat_ms(me).is_some());
        assert!(peak_rss_kb(me).unwrap() > 0);
    }
}
