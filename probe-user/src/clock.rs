//! The one clock the daemon and the CLI compare times on.
/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`, so ticks and event times compare.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// The wall-clock time (ns since the Unix epoch) of a CLOCK_MONOTONIC time: the two clocks are
/// read now and the monotonic distance applied, so a time keeps its place relative to now even
/// after the wall clock was stepped (it is then the wall time as the clock reads today).
pub fn wall_ns_of(monotonic: u64) -> i128 {
    let (real, mono) = (
        clock_ns(libc::CLOCK_REALTIME),
        clock_ns(libc::CLOCK_MONOTONIC),
    );
    real - (mono - i128::from(monotonic))
}

/// This host's UTC offset (seconds east) at `unix_secs`, from the local time zone (`TZ`,
/// /etc/localtime; UTC when neither is there, as in the FROM-scratch image).
fn local_offset_secs(unix_secs: i64) -> i64 {
    let t: libc::time_t = unix_secs;
    // SAFETY: an all-zero `tm` is a valid value; localtime_r writes into the `tm` we own and
    // reads only `t`.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to values we own, alive for the call.
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if ok {
        tm.tm_gmtoff
    } else {
        0
    }
}

/// RFC 3339 in this host's local time with microseconds, e.g.
/// `2026-11-30T01:40:03.123456+01:00`: the form nginx, Envoy and journald times line up with.
pub fn rfc3339_local(wall_ns: i128) -> String {
    let secs = i64::try_from(wall_ns.div_euclid(1_000_000_000)).unwrap_or(0);
    rfc3339(
        secs,
        wall_ns.rem_euclid(1_000_000_000) as u32,
        local_offset_secs(secs),
    )
}

/// The local time of a CLOCK_MONOTONIC time, RFC 3339.
pub fn rfc3339_of_monotonic(monotonic: u64) -> String {
    rfc3339_local(wall_ns_of(monotonic))
}

/// RFC 3339 of `unix_secs` + `nanos` at UTC offset `offset_secs` (microseconds shown).
pub fn rfc3339(unix_secs: i64, nanos: u32, offset_secs: i64) -> String {
    let local = unix_secs + offset_secs;
    let (days, secs_of_day) = (local.div_euclid(86_400), local.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let sign = if offset_secs < 0 { '-' } else { '+' };
    let off = offset_secs.unsigned_abs() / 60;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}{sign}{:02}:{:02}",
        secs_of_day / 3600,
        secs_of_day / 60 % 60,
        secs_of_day % 60,
        nanos / 1000,
        off / 60,
        off % 60
    )
}

/// The time of day of an RFC 3339 time (`HH:MM:SS.ffffff`), for text where the date is today.
pub fn time_of_day(rfc3339: &str) -> &str {
    rfc3339.get(11..26).unwrap_or(rfc3339)
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_dates_offsets_and_leap_days() {
        assert_eq!(rfc3339(0, 0, 0), "1970-01-01T00:00:00.000000+00:00");
        // 2024-02-29 12:34:56.789012 UTC, shown at +05:30 and at -08:00.
        let t = 1_709_210_096;
        assert_eq!(
            rfc3339(t, 789_012_345, 19_800),
            "2024-02-29T18:04:56.789012+05:30"
        );
        assert_eq!(
            rfc3339(t, 789_012_345, -28_800),
            "2024-02-29T04:34:56.789012-08:00"
        );
        assert_eq!(
            rfc3339(951_782_400, 0, 0),
            "2000-02-29T00:00:00.000000+00:00"
        );
        assert_eq!(rfc3339(-1, 0, 0), "1969-12-31T23:59:59.000000+00:00");
        assert_eq!(
            time_of_day("2024-02-29T18:04:56.789012+05:30"),
            "18:04:56.789012"
        );
    }

    /// A monotonic time maps to the wall clock it happened at: now is now, 5 s ago is 5 s
    /// before, and the local form agrees with the system's own clock.
    #[test]
    fn monotonic_times_map_to_the_wall_clock() {
        let mono = monotonic_ns();
        let real = clock_ns(libc::CLOCK_REALTIME);
        let wall = wall_ns_of(mono);
        assert!((wall - real).abs() < 50_000_000, "{wall} vs {real}");
        let earlier = wall_ns_of(mono - 5_000_000_000);
        assert!((wall - earlier - 5_000_000_000).abs() < 50_000_000);
        let shown = rfc3339_local(wall);
        assert_eq!(
            shown.len(),
            "2026-11-30T01:40:03.123456+01:00".len(),
            "{shown}"
        );
        let secs = i64::try_from(wall / 1_000_000_000).unwrap_or_default();
        assert!(shown.starts_with(&rfc3339(secs, 0, local_offset_secs(secs))[..19]));
    }
}
