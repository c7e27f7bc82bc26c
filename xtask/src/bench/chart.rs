//! The bench chart (PNG, plotters): per workload, one bar per tracer. Top panel: connection
//! rate as a ratio to the baseline of the same round (1.0 = no cost), with the targets of the
//! `conn` and `abort` workloads; bottom panel: the tracer's own CPU per connection.
use std::path::Path;

use anyhow::{anyhow, Context as _, Result};
use plotters::{
    prelude::*,
    style::{
        register_font,
        text_anchor::{HPos, Pos, VPos},
        FontStyle,
    },
};

use super::{
    plan::{TracerKind, Workload},
    stats::{find, Summary},
    targets::{ABORT_RATIO, CONN_RATIO},
};

/// Debian's fonts-dejavu-core (installed by set-up): plotters draws text with this face.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const FAMILY: &str = "sans-serif";
const SIZE: (u32, u32) = (1200, 900);

fn colour(t: TracerKind) -> RGBColor {
    match t {
        TracerKind::Linkprobe => RGBColor(31, 119, 180),
        TracerKind::Bpftrace => RGBColor(255, 127, 14),
        TracerKind::Tcplife => RGBColor(44, 160, 44),
        TracerKind::None => RGBColor(127, 127, 127),
    }
}

fn load_font() -> Result<()> {
    let bytes = std::fs::read(FONT)
        .with_context(|| format!("reading {FONT} (Debian package fonts-dejavu-core)"))?;
    // plotters keeps the face for the process's life; it is loaded once per chart.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font(FAMILY, FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{FONT} is not a font plotters can read"))
}

/// One panel's bars: (workload index, tracer index, value).
struct Bars {
    workloads: Vec<Workload>,
    tracers: Vec<TracerKind>,
    values: Vec<(usize, usize, f64)>,
}

/// The bars of `value` for every tracer but the baseline.
fn bars(rows: &[Summary], value: fn(&Summary) -> Option<f64>) -> Bars {
    let mut workloads: Vec<Workload> = Vec::new();
    let mut tracers: Vec<TracerKind> = Vec::new();
    for r in rows.iter().filter(|r| r.tracer != TracerKind::None) {
        if !workloads.contains(&r.workload) {
            workloads.push(r.workload);
        }
        if !tracers.contains(&r.tracer) {
            tracers.push(r.tracer);
        }
    }
    let mut values = Vec::new();
    for (wi, w) in workloads.iter().enumerate() {
        for (ti, t) in tracers.iter().enumerate() {
            if let Some(v) = find(rows, *w, *t).and_then(value) {
                values.push((wi, ti, v));
            }
        }
    }
    Bars {
        workloads,
        tracers,
        values,
    }
}

/// The x range of bar `ti` of `n` in group `wi` (groups are 1 wide, centred on their index).
fn bar_span(wi: usize, ti: usize, n: usize) -> (f64, f64) {
    let width = 0.8 / n.max(1) as f64;
    let x0 = wi as f64 - 0.4 + width * ti as f64;
    (x0 + 0.01, x0 + width - 0.01)
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn panel(
    area: &Area<'_>,
    b: &Bars,
    caption: &str,
    y_desc: &str,
    decimals: usize,
    targets: &[(Workload, f64)],
) -> Result<()> {
    let n = b.workloads.len().max(1);
    let top = b.values.iter().map(|v| v.2).fold(0.0, f64::max);
    // Headroom above the tallest bar for its value label and the legend.
    let y_max = if targets.is_empty() {
        (top * 1.3).max(1.0)
    } else {
        (top * 1.25).max(1.3)
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FAMILY, 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..y_max)
        .map_err(|e| anyhow!("chart: {e}"))?;
    let names: Vec<&str> = b.workloads.iter().map(|w| w.name()).collect();
    let x_name = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 {
            names
                .get(i as usize)
                .map_or_else(String::new, |s| (*s).to_owned())
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(2 * n + 1)
        .x_label_formatter(&x_name)
        .y_desc(y_desc)
        .label_style((FAMILY, 16))
        .axis_desc_style((FAMILY, 16))
        .draw()
        .map_err(|e| anyhow!("chart mesh: {e}"))?;
    let value_style =
        TextStyle::from((FAMILY, 13).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    for (ti, t) in b.tracers.iter().enumerate() {
        let c = colour(*t);
        let mine: Vec<(usize, f64)> = b
            .values
            .iter()
            .filter(|v| v.1 == ti)
            .map(|v| (v.0, v.2))
            .collect();
        chart
            .draw_series(mine.iter().map(|&(wi, v)| {
                let (x0, x1) = bar_span(wi, ti, b.tracers.len());
                Rectangle::new([(x0, 0.0), (x1, v)], c.filled())
            }))
            .map_err(|e| anyhow!("chart bars: {e}"))?
            .label(t.name())
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], c.filled()));
        chart
            .draw_series(mine.iter().map(|&(wi, v)| {
                let (x0, x1) = bar_span(wi, ti, b.tracers.len());
                Text::new(
                    format!("{v:.decimals$}"),
                    ((x0 + x1) / 2.0, v),
                    value_style.clone(),
                )
            }))
            .map_err(|e| anyhow!("chart labels: {e}"))?;
    }
    if !targets.is_empty() {
        let baseline = PathElement::new(vec![(-0.5, 1.0), (n as f64 - 0.5, 1.0)], BLACK);
        chart
            .draw_series(std::iter::once(baseline))
            .map_err(|e| anyhow!("chart baseline: {e}"))?;
        let red = RGBColor(214, 39, 40);
        for (w, min) in targets {
            let Some(wi) = b.workloads.iter().position(|x| x == w) else {
                continue;
            };
            let (x0, x1) = (wi as f64 - 0.45, wi as f64 + 0.45);
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(x0, *min), (x1, *min)],
                    red.stroke_width(2),
                )))
                .map_err(|e| anyhow!("chart target: {e}"))?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("target {min:.2}"),
                    (x0, *min),
                    TextStyle::from((FAMILY, 12).into_font())
                        .color(&red)
                        .pos(Pos::new(HPos::Left, VPos::Bottom)),
                )))
                .map_err(|e| anyhow!("chart target label: {e}"))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FAMILY, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("chart legend: {e}"))?;
    Ok(())
}

/// Draws the two panels into `path` (PNG).
pub fn draw(rows: &[Summary], subtitle: &str, path: &Path) -> Result<()> {
    load_font()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("chart: {e}"))?;
    let (head, body) = root.split_vertically(40);
    head.draw(&Text::new(
        subtitle.to_owned(),
        (SIZE.0 as i32 / 2, 12),
        TextStyle::from((FAMILY, 15).into_font()).pos(Pos::new(HPos::Center, VPos::Top)),
    ))
    .map_err(|e| anyhow!("chart title: {e}"))?;
    let (upper, lower) = body.split_vertically((SIZE.1 - 40) * 55 / 100);
    panel(
        &upper,
        &bars(rows, |r| r.ratio),
        "Connection rate with the tracer / without (median of rounds; higher is better)",
        "ratio to baseline",
        2,
        &[(Workload::Conn, CONN_RATIO), (Workload::Abort, ABORT_RATIO)],
    )?;
    panel(
        &lower,
        &bars(rows, |r| r.cpu_us_per_conn),
        "Tracer process CPU per connection, less its idle CPU (lower is better)",
        "CPU us / connection",
        1,
        &[],
    )?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::stats::{summarize, tests::meas};

    #[test]
    fn bars_skip_the_baseline_and_keep_orders() {
        let ms = vec![
            meas(1, Workload::Conn, TracerKind::None, 1000, 0),
            meas(1, Workload::Conn, TracerKind::Bpftrace, 900, 0),
            meas(1, Workload::Abort, TracerKind::None, 1000, 0),
            meas(1, Workload::Abort, TracerKind::Linkprobe, 500, 0),
            meas(1, Workload::Abort, TracerKind::Bpftrace, 800, 0),
        ];
        let rows = summarize(&ms, &Workload::ALL, &TracerKind::ALL);
        let b = bars(&rows, |r| r.ratio);
        assert_eq!(b.workloads, [Workload::Conn, Workload::Abort]);
        assert_eq!(b.tracers, [TracerKind::Bpftrace, TracerKind::Linkprobe]);
        assert_eq!(b.values, [(0, 0, 0.9), (1, 0, 0.8), (1, 1, 0.5)]);
    }

    #[test]
    fn bars_of_a_group_do_not_overlap_the_next() {
        let (a0, a1) = bar_span(0, 0, 3);
        let (b0, _) = bar_span(0, 1, 3);
        let (_, c1) = bar_span(0, 2, 3);
        assert!(a0 > -0.5 && a1 < b0 && c1 < 0.5);
    }

    #[test]
    fn draws_a_png() {
        if !Path::new(FONT).exists() {
            eprintln!("skipped: {FONT} missing (fonts-dejavu-core)");
            return;
        }
        let ms = vec![
            meas(1, Workload::Conn, TracerKind::None, 1000, 0),
            meas(1, Workload::Conn, TracerKind::Linkprobe, 700, 0),
            meas(1, Workload::Conn, TracerKind::Bpftrace, 900, 0),
        ];
        let rows = summarize(&ms, &Workload::ALL, &TracerKind::ALL);
        let path = std::env::temp_dir().join(format!("lpbench-chart-{}.png", std::process::id()));
        draw(&rows, "test", &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    }
}
