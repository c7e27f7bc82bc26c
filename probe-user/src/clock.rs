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

/// The difference REALTIME − MONOTONIC now, ns: a wall-clock time minus it is the monotonic
/// time it happened at. Re-read it whenever it is used for a while: a clock step moves it.
pub fn wall_minus_monotonic_ns() -> i128 {
    clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC)
}

/// An RFC 3339 time (`2024-02-29T18:04:56.789Z`, `…+05:30`, fraction optional, up to 9
/// digits; a space instead of `T` is accepted) → ns since the Unix epoch. `None` for anything
/// else (hostile text: no panics, bounded work).
pub fn parse_rfc3339(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    if b.len() < 20 || b.len() > 40 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let d = b.get(r)?;
        if !d.iter().all(u8::is_ascii_digit) {
            return None;
        }
        d.iter()
            .try_fold(0i64, |acc, c| Some(acc * 10 + i64::from(c - b'0')))
    };
    let sep = |i: usize, c: &[u8]| b.get(i).is_some_and(|x| c.contains(x));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos: i64 = 0;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = i - start;
        if digits == 0 || digits > 9 {
            return None;
        }
        nanos = num(start..i)? * 10i64.pow((9 - digits) as u32);
    }
    let offset = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), ..] if b.len() == i + 6 && sep(i + 3, b":") => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 3600 + om * 60;
            if *sign == b'-' {
                -off
            } else {
                off
            }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo as u32, d as u32);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
    Some(i128::from(secs) * 1_000_000_000 + i128::from(nanos))
}

/// (year, month, day) → days since 1970-01-01 (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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

    #[test]
    fn rfc3339_parses_what_it_formats_and_rejects_garbage() {
        let t = 1_709_210_096i128;
        let ns = t * 1_000_000_000 + 789_012_000;
        assert_eq!(parse_rfc3339("2024-02-29T12:34:56.789012Z"), Some(ns));
        assert_eq!(parse_rfc3339("2024-02-29T18:04:56.789012+05:30"), Some(ns));
        assert_eq!(parse_rfc3339("2024-02-29T04:34:56.789012-08:00"), Some(ns));
        assert_eq!(
            parse_rfc3339("2024-02-29T12:34:56.789012345Z"),
            Some(ns + 345)
        );
        assert_eq!(
            parse_rfc3339("2024-02-29 12:34:56Z"),
            Some(t * 1_000_000_000)
        );
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Some(-1_000_000_000));
        for days in [-1_000_000i64, -1, 0, 1, 11_016, 19_782, 2_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        for bad in [
            "",
            "2024-02-29",
            "2024-02-29T12:34:56",
            "2024-13-29T12:34:56Z",
            "2024-02-29T24:34:56Z",
            "2024-02-29T12:34:56.Z",
            "2024-02-29T12:34:56.1234567890Z",
            "2024-02-29T12:34:56+5:30",
            "2024-02-29T12:34:56Zjunk",
            "２024-02-29T12:34:56Z",
            "2024-02-29T12:34:56.78９Z",
            "+024-02-29T12:34:56Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
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
