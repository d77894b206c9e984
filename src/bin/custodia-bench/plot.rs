//! The benchmark plot: throughput and p99 latency against concurrency, one line per scenario,
//! as a self-contained SVG (log-scale y axes: the figures span three orders of magnitude).
//!
//! Owns: drawing. Must never: measure anything.

use std::fmt::Write;

use super::Row;

const W: f64 = 1000.0;
const H: f64 = 460.0;
const PANEL_W: f64 = 400.0;
const PANEL_H: f64 = 300.0;
const TOP: f64 = 70.0;
const COLOURS: [&str; 8] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Decades covering `values` (positive), as exponents.
fn decades(values: impl Iterator<Item = f64>) -> (i32, i32) {
    let (lo, hi) = values.filter(|v| *v > 0.0).fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (0, 1);
    }
    let (a, b) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    (a, b.max(a + 1))
}

#[allow(clippy::too_many_arguments)]
fn panel(
    out: &mut String,
    x0: f64,
    title: &str,
    unit: &str,
    rows: &[Row],
    levels: &[usize],
    names: &[&str],
    value: fn(&Row) -> f64,
) {
    let (lo, hi) = decades(rows.iter().map(value));
    let y = |v: f64| TOP + PANEL_H - (v.max(10f64.powi(lo)).log10() - f64::from(lo)) / f64::from(hi - lo) * PANEL_H;
    let x =
        |i: usize| x0 + if levels.len() < 2 { PANEL_W / 2.0 } else { i as f64 * PANEL_W / (levels.len() - 1) as f64 };
    let _ = write!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">{}</text>"#,
        x0 + PANEL_W / 2.0,
        TOP - 20.0,
        escape(title)
    );
    let _ =
        write!(out, r##"<rect x="{x0}" y="{TOP}" width="{PANEL_W}" height="{PANEL_H}" fill="none" stroke="#999"/>"##);
    for d in lo..=hi {
        let yy = y(10f64.powi(d));
        let _ = write!(out, r##"<line x1="{x0}" y1="{yy}" x2="{}" y2="{yy}" stroke="#eee"/>"##, x0 + PANEL_W);
        let _ = write!(
            out,
            r#"<text x="{}" y="{}" text-anchor="end" font-size="11">1e{d} {unit}</text>"#,
            x0 - 5.0,
            yy + 4.0
        );
    }
    for (i, c) in levels.iter().enumerate() {
        let _ = write!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle" font-size="11">{c}</text>"#,
            x(i),
            TOP + PANEL_H + 16.0
        );
    }
    let _ = write!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="11">connections</text>"#,
        x0 + PANEL_W / 2.0,
        TOP + PANEL_H + 32.0
    );
    for (n, name) in names.iter().enumerate() {
        let colour = COLOURS[n % COLOURS.len()];
        let points: Vec<String> = levels
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                rows.iter().find(|r| r.scenario == *name && r.concurrency == *c).map(|r| (i, value(r)))
            })
            .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(v)))
            .collect();
        let dash = if name.starts_with("baseline") { r#" stroke-dasharray="6 4""# } else { "" };
        let _ = write!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>"#,
            points.join(" ")
        );
        for p in &points {
            let (px, py) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = write!(out, r#"<circle cx="{px}" cy="{py}" r="3" fill="{colour}"/>"#);
        }
    }
}

/// The plot of `rows` (reference endpoints are left out: they only set the ratios).
pub fn svg(rows: &[Row], caption: &str) -> String {
    let rows: Vec<Row> = rows.iter().filter(|r| !r.scenario.starts_with("reference")).cloned().collect();
    let mut levels: Vec<usize> = rows.iter().map(|r| r.concurrency).collect();
    levels.sort_unstable();
    levels.dedup();
    let mut names: Vec<&str> = Vec::new();
    for r in &rows {
        if !names.contains(&r.scenario) {
            names.push(r.scenario);
        }
    }
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{}" font-family="sans-serif" font-size="13"><rect width="100%" height="100%" fill="white"/>"#,
        H + 20.0 * names.len().div_ceil(2) as f64
    );
    panel(&mut out, 80.0, "Throughput (requests/s)", "", &rows, &levels, &names, |r| r.per_second);
    panel(&mut out, 80.0 + PANEL_W + 110.0, "p99 latency (ms)", "", &rows, &levels, &names, |r| r.p99_ms);
    for (n, name) in names.iter().enumerate() {
        let (col, line) = (n % 2, n / 2);
        let (lx, ly) = (80.0 + col as f64 * 460.0, TOP + PANEL_H + 60.0 + line as f64 * 20.0);
        let dash = if name.starts_with("baseline") { r#" stroke-dasharray="6 4""# } else { "" };
        let _ = write!(
            out,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            lx + 24.0,
            COLOURS[n % COLOURS.len()],
            lx + 30.0,
            ly + 4.0,
            escape(name)
        );
    }
    let _ = write!(
        out,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="12">{}</text></svg>"#,
        W / 2.0,
        escape(caption)
    );
    out
}

/// A linear panel of one soak figure per interval.
fn soak_panel(out: &mut String, x0: f64, title: &str, points: &[(usize, f64)]) {
    let max = points.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.2;
    let n = points.len().max(2) as f64;
    let (w, h, y0) = (260.0, PANEL_H, TOP);
    let _ = write!(
        out,
        r##"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">{}</text><rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>"##,
        x0 + w / 2.0,
        y0 - 12.0,
        escape(title)
    );
    for k in 0..=4 {
        let v = max * f64::from(k) / 4.0;
        let y = y0 + h - h * f64::from(k) / 4.0;
        let _ = write!(
            out,
            r##"<line x1="{x0}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end" font-size="11">{v:.1}</text>"##,
            x0 + w,
            x0 - 6.0,
            y + 4.0
        );
    }
    let coords: Vec<String> = points
        .iter()
        .map(|(i, v)| format!("{:.1},{:.1}", x0 + w * (*i as f64 - 1.0) / (n - 1.0), y0 + h - h * v / max))
        .collect();
    let _ = write!(
        out,
        r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/><text x="{}" y="{}" text-anchor="middle" font-size="11">interval</text>"#,
        coords.join(" "),
        COLOURS[0],
        x0 + w / 2.0,
        y0 + h + 18.0
    );
}

/// The soak plot: throughput, p99 latency and resident memory per interval.
pub fn soak_svg(intervals: &[super::soak::Interval], caption: &str) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{}" font-family="sans-serif" font-size="13"><rect width="100%" height="100%" fill="white"/>"#,
        TOP + PANEL_H + 50.0
    );
    let series = |f: fn(&super::soak::Interval) -> f64| intervals.iter().map(|i| (i.index, f(i))).collect::<Vec<_>>();
    soak_panel(&mut out, 60.0, "Throughput (requests/s)", &series(|i| i.per_second));
    soak_panel(&mut out, 390.0, "p99 latency (ms)", &series(|i| i.p99_ms));
    soak_panel(&mut out, 720.0, "Resident memory (MB)", &series(|i| i.rss_mb));
    let _ = write!(
        out,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="12">{}</text></svg>"#,
        W / 2.0,
        escape(caption)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(scenario: &'static str, concurrency: usize, per_second: f64, p99_ms: f64) -> Row {
        Row {
            scenario,
            concurrency,
            requests: 1,
            errors: 0,
            per_second,
            p50_ms: 1.0,
            p99_ms,
            p999_ms: 1.0,
            server: None,
        }
    }

    #[test]
    fn the_soak_plot_has_three_panels() {
        let intervals: Vec<_> = (1..=3)
            .map(|i| super::super::soak::Interval {
                index: i,
                per_second: 100.0,
                p99_ms: 2.0,
                rss_mb: 70.0,
                ..Default::default()
            })
            .collect();
        let svg = soak_svg(&intervals, "soak <1>");
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("soak &lt;1&gt;") && svg.ends_with("</svg>"));
    }

    #[test]
    fn one_line_per_scenario_without_references() {
        let rows = [
            row("reference: no work", 1, 1e5, 0.1),
            row("masked read", 1, 1500.0, 1.0),
            row("masked read", 64, 10000.0, 12.0),
            row("baseline: x <&>", 64, 11000.0, 18.0),
        ];
        let svg = svg(&rows, "caption");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2 * 2, "two scenarios in two panels");
        assert!(!svg.contains("reference"));
        assert!(svg.contains("baseline: x &lt;&amp;&gt;"));
    }
}
