//! Text rendering helpers: aligned tables, human units, colour only on a terminal (and never
//! with `NO_COLOR`).
use std::io::IsTerminal as _;

/// Colour on or off for this run.
#[derive(Clone, Copy, Debug)]
pub struct Paint {
    pub on: bool,
}

impl Paint {
    /// No colour (logs, pipes).
    pub const OFF: Paint = Paint { on: false };

    /// On when stdout is a terminal and `NO_COLOR` is unset or empty (no-color.org).
    pub fn detect() -> Paint {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Paint {
            on: !no_color && std::io::stdout().is_terminal(),
        }
    }

    fn wrap(self, code: &str, s: &str) -> String {
        if self.on && !s.is_empty() {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }

    pub fn red(self, s: &str) -> String {
        self.wrap("31", s)
    }

    pub fn yellow(self, s: &str) -> String {
        self.wrap("33", s)
    }

    pub fn green(self, s: &str) -> String {
        self.wrap("32", s)
    }

    pub fn bold(self, s: &str) -> String {
        self.wrap("1", s)
    }
}

/// How a cell is coloured (applied after padding, so alignment holds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    Plain,
    Bad,
    Warn,
    Good,
}

/// An aligned table: columns as wide as their widest cell, separated by two spaces.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<(String, Tone)>>,
}

impl Table {
    pub fn new(header: Vec<&'static str>) -> Table {
        Table {
            header,
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<(String, Tone)>) {
        self.rows.push(cells);
    }

    pub fn render(&self, paint: Paint) -> String {
        let cols = self.header.len();
        let mut width: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, (c, _)) in r.iter().enumerate().take(cols) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        let line = |cells: Vec<(String, Tone)>, out: &mut String, header: bool| {
            let last = cells.len().saturating_sub(1);
            for (i, (c, tone)) in cells.into_iter().enumerate() {
                let pad = if i == last {
                    0
                } else {
                    width[i].saturating_sub(c.chars().count()) + 2
                };
                let text = match (header, tone) {
                    (true, _) => paint.bold(&c),
                    (false, Tone::Bad) => paint.red(&c),
                    (false, Tone::Warn) => paint.yellow(&c),
                    (false, Tone::Good) => paint.green(&c),
                    (false, Tone::Plain) => c,
                };
                out.push_str(&text);
                out.push_str(&" ".repeat(pad));
            }
            out.push('\n');
        };
        line(
            self.header
                .iter()
                .map(|h| ((*h).to_owned(), Tone::Plain))
                .collect(),
            &mut out,
            true,
        );
        for r in &self.rows {
            line(r.clone(), &mut out, false);
        }
        out
    }
}

pub fn plain(s: impl Into<String>) -> (String, Tone) {
    (s.into(), Tone::Plain)
}

/// `1.5s`, `320ms`, `45µs`, `2m03s`, `3h12m`.
pub fn human_ns(ns: u64) -> String {
    let us = ns / 1_000;
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{}ms", us / 1_000)
    } else if ns < 60_000_000_000 {
        format!("{:.1}s", ns as f64 / 1e9)
    } else if ns < 3_600_000_000_000 {
        let s = ns / 1_000_000_000;
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        let m = ns / 60_000_000_000;
        format!("{}h{:02}m", m / 60, m % 60)
    }
}

/// Microseconds as a duration (`-` for 0).
pub fn human_us(us: u64) -> String {
    if us == 0 {
        "-".to_owned()
    } else {
        human_ns(us.saturating_mul(1_000))
    }
}

/// `512B`, `1.5KiB`, `3.2MiB`, `1.0GiB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b}B");
    }
    let mut v = b as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1}{unit}")
}

pub fn percent(f: f64) -> String {
    format!("{:.1}%", f * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(human_ns(45_000), "45µs");
        assert_eq!(human_ns(320_000_000), "320ms");
        assert_eq!(human_ns(1_500_000_000), "1.5s");
        assert_eq!(human_ns(123_000_000_000), "2m03s");
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(1536), "1.5KiB");
        assert_eq!(human_us(0), "-");
    }

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(vec!["A", "LONGER", "C"]);
        t.row(vec![plain("xxxx"), plain("y"), plain("z")]);
        let s = t.render(Paint { on: false });
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "A     LONGER  C");
        assert_eq!(lines[1], "xxxx  y       z");
    }
}
