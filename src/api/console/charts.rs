//! The overview's charts: audit events per time bucket, stacked by outcome, as SVG drawn by
//! `plotters` (its SVG backend; no font files: text is left to the browser's sans-serif). The
//! SVG is inline in the page and carries presentation attributes only, so the console's CSP
//! (no inline style, no script) holds.
//!
//! Owns: turning counts into pictures. Must never: count anything (the store does).

use chrono::{DateTime, Duration, Utc};
use plotters::prelude::*;

use crate::store::{AuditTallies, Bucket};

/// The colours of the outcomes (the page's legend uses the same, in console.css).
const ALLOWED: RGBColor = RGBColor(47, 91, 211);
const DENIED: RGBColor = RGBColor(224, 138, 0);
const ERROR: RGBColor = RGBColor(176, 0, 32);

/// Events per bucket: allowed, denied, and everything else (not found, invalid, failed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Series {
    pub labels: Vec<String>,
    pub allowed: Vec<i64>,
    pub denied: Vec<i64>,
    pub error: Vec<i64>,
}

impl Series {
    /// The `n` buckets ending with the one holding `now`, filled from `tallies` (a bucket
    /// without events is a zero, not a gap).
    pub fn from_tallies(tallies: &AuditTallies, bucket: Bucket, n: usize, now: DateTime<Utc>) -> Series {
        let (step, key_format, label_format) = match bucket {
            Bucket::Hour => (Duration::hours(1), "%Y-%m-%dT%H", "%H:00"),
            Bucket::Day => (Duration::days(1), "%Y-%m-%d", "%m-%d"),
        };
        let mut s = Series::default();
        for i in (0..n).rev() {
            let at = now - step * i32::try_from(i).unwrap_or(0);
            let key = at.format(key_format).to_string();
            let count = |want: &dyn Fn(&str) -> bool| -> i64 {
                tallies.by_bucket.iter().filter(|(b, o, _)| *b == key && want(o)).map(|(_, _, c)| c).sum()
            };
            s.labels.push(at.format(label_format).to_string());
            s.allowed.push(count(&|o| o == "allowed"));
            s.denied.push(count(&|o| o == "denied"));
            s.error.push(count(&|o| o != "allowed" && o != "denied"));
        }
        s
    }
}

/// A stacked bar chart of `series`, `width` × `height` pixels, as an SVG document.
pub fn stacked_bars(series: &Series, width: u32, height: u32) -> Result<String, String> {
    let n = series.labels.len();
    let max = (0..n).map(|i| series.allowed[i] + series.denied[i] + series.error[i]).max().unwrap_or(0).max(1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let x_max = u32::try_from(n).unwrap_or(u32::MAX);
        let mut chart = ChartBuilder::on(&root)
            .margin(8)
            .x_label_area_size(24)
            .y_label_area_size(56)
            .build_cartesian_2d(0u32..x_max, 0i64..(max + max / 10 + 1))
            .map_err(|e| e.to_string())?;
        let labels = series.labels.clone();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n.min(12))
            .x_label_formatter(&|i| labels.get(*i as usize).cloned().unwrap_or_default())
            .y_labels(5)
            .draw()
            .map_err(|e| e.to_string())?;
        for (values, below, colour) in [
            (&series.allowed, None, ALLOWED),
            (&series.denied, Some(vec![&series.allowed]), DENIED),
            (&series.error, Some(vec![&series.allowed, &series.denied]), ERROR),
        ] {
            let bars = (0..n).filter(|i| values[*i] > 0).map(|i| {
                let base: i64 = below.as_ref().map_or(0, |b| b.iter().map(|v| v[i]).sum());
                let x = u32::try_from(i).unwrap_or(0);
                let mut bar = Rectangle::new([(x, base), (x + 1, base + values[i])], colour.filled());
                bar.set_margin(0, 0, 1, 1);
                bar
            });
            chart.draw_series(bars).map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_filled_and_outcomes_grouped() {
        let now = DateTime::parse_from_rfc3339("2026-12-04T18:30:00Z").unwrap().with_timezone(&Utc);
        let tallies = AuditTallies {
            by_bucket: vec![
                ("2026-12-04T17".into(), "allowed".into(), 5),
                ("2026-12-04T18".into(), "denied".into(), 2),
                ("2026-12-04T18".into(), "not_found".into(), 1),
                ("2026-12-04T18".into(), "failed".into(), 1),
            ],
            ..AuditTallies::default()
        };
        let s = Series::from_tallies(&tallies, Bucket::Hour, 3, now);
        assert_eq!(s.labels, ["16:00", "17:00", "18:00"]);
        assert_eq!((s.allowed, s.denied, s.error), (vec![0, 5, 0], vec![0, 0, 2], vec![0, 0, 2]));
    }

    #[test]
    fn the_chart_is_an_svg_without_script_or_style() {
        let s =
            Series { labels: vec!["a".into(), "b".into()], allowed: vec![3, 1], denied: vec![1, 0], error: vec![0, 2] };
        let svg = stacked_bars(&s, 600, 200).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("<rect"), "{svg}");
        assert!(!svg.contains("<script") && !svg.contains("style="), "{svg}");
    }
}
