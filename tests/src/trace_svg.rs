//! `build/trace/<name>.svg`: the latency distribution of each exit reason, drawn with
//! `plotters` (SVG backend).
//!
//! One row of panels per VM: on the left the exit-to-entry time, on the right the handler's
//! part (when the log has handler histograms). Each panel holds one cumulative distribution
//! per exit reason on a logarithmic cycle axis: the line at x says what share of that reason's
//! exits took fewer than x cycles. The histogram buckets are the points; inside a bucket the
//! line is straight.

use std::path::Path;

use plotters::prelude::*;

use crate::trace::{thousands, Share, TraceHist, TraceReport};

/// Pixels of one VM's row of panels.
const WIDTH: u32 = 1200;
const ROW_HEIGHT: u32 = 480;

/// Distinct colours for the reasons (the "tab10" palette), then plotters' Palette99.
const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn colour(i: usize) -> RGBColor {
    match COLOURS.get(i) {
        Some(c) => *c,
        None => {
            let c = Palette99::pick(i).to_rgba();
            RGBColor(c.0, c.1, c.2)
        }
    }
}

/// The points of the cumulative distribution of `h`: (cycles, percent of its exits below).
/// Cycles start at 1 (the axis is logarithmic).
pub fn cdf_points(h: &TraceHist) -> Vec<(f64, f64)> {
    let total = h.samples();
    let mut out = Vec::new();
    if total == 0 {
        return out;
    }
    let mut seen = 0u64;
    for b in &h.buckets {
        let pct = 100.0 * seen as f64 / total as f64;
        // The start of the bucket (after a gap, the line stays flat up to it).
        out.push((b.lo.max(1) as f64, pct));
        seen += b.count;
        out.push((b.hi.max(2) as f64, 100.0 * seen as f64 / total as f64));
    }
    out
}

/// Draws the latency distributions of every report into one SVG file at `path` (creating
/// its directory).
pub fn draw_svg(path: &Path, reports: &[TraceReport]) -> Result<(), String> {
    if reports.is_empty() {
        return Err("no trace report to draw".into());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let height = ROW_HEIGHT * reports.len() as u32;
    let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
    let err = |e: DrawingAreaErrorKind<_>| format!("{}: drawing: {e}", path.display());
    root.fill(&WHITE).map_err(err)?;
    let x_range = x_range(reports);
    let rows = root.split_evenly((reports.len(), 1));
    for (r, area) in reports.iter().zip(rows) {
        let has_handler = r.hists.iter().any(|h| h.share == Share::Handler);
        let panels = if has_handler {
            area.split_evenly((1, 2))
        } else {
            vec![area]
        };
        for (panel, share) in panels.iter().zip([Share::Full, Share::Handler]) {
            draw_panel(panel, r, share, x_range)
                .map_err(|e| format!("{}: drawing: {e}", path.display()))?;
        }
    }
    root.present().map_err(err)?;
    Ok(())
}

/// The cycle axis of every panel: decade boundaries around all the histograms' points, at
/// least two decades (so the panels compare and the axis has few, round labels).
fn x_range(reports: &[TraceReport]) -> (f64, f64) {
    let xs = reports
        .iter()
        .flat_map(|r| &r.hists)
        .flat_map(|h| cdf_points(h).into_iter().map(|p| p.0));
    let (lo, hi) = xs.fold((f64::INFINITY, 1.0f64), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    if !lo.is_finite() {
        return (1.0, 100.0);
    }
    let lo = 10f64.powf(lo.log10().floor()).max(1.0);
    let hi = 10f64.powf(hi.log10().ceil()).max(lo * 100.0);
    (lo, hi)
}

/// The labelled cycles of the axis: 1, 2 and 5 times each power of ten in `lo..=hi` (only
/// the powers of ten when the axis spans four decades or more: the labels would touch).
fn key_points(lo: f64, hi: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut decade = lo;
    let steps: &[f64] = if hi / lo >= 1e4 {
        &[1.0]
    } else {
        &[1.0, 2.0, 5.0]
    };
    while decade <= hi {
        for &m in steps {
            let x = decade * m;
            if x <= hi {
                out.push(x);
            }
        }
        decade *= 10.0;
    }
    out
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn draw_panel(
    area: &Area<'_>,
    r: &TraceReport,
    share: Share,
    x_range: (f64, f64),
) -> Result<(), DrawingAreaErrorKind<<SVGBackend<'static> as DrawingBackend>::ErrorType>> {
    // The reasons in the table's order (largest share of time first), with their histograms.
    // Each reason keeps its colour in both panels: the colour follows its row.
    let series: Vec<(usize, String, &TraceHist)> = r
        .rows_by_time()
        .into_iter()
        .enumerate()
        .filter_map(|(i, row)| {
            let h = r.hist(&row.reason, share)?;
            (h.samples() > 0)
                .then(|| (i, format!("{} ({})", row.reason, thousands(h.samples())), h))
        })
        .collect();
    let what = match share {
        Share::Full => "exit to entry",
        Share::Handler => "handler (receive to reply)",
    };
    let title = format!("VM {}: {what}", r.vm);
    let points: Vec<Vec<(f64, f64)>> = series.iter().map(|(_, _, h)| cdf_points(h)).collect();
    let (lo, hi) = x_range;
    let mut chart = ChartBuilder::on(area)
        .caption(&title, ("sans-serif", 20))
        .margin(12)
        .margin_right(36)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(
            (lo..hi).log_scale().with_key_points(key_points(lo, hi)),
            0.0..100.0,
        )?;
    chart
        .configure_mesh()
        .x_desc("cycles (log scale; Bochs: instructions)")
        .y_desc("% of the reason's exits that took < x cycles")
        .x_label_formatter(&|x| thousands(x.round() as u64))
        .y_label_formatter(&|y| format!("{y:.0}%"))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    if series.is_empty() {
        chart.draw_series(std::iter::once(Text::new(
            "no histogram in the log",
            (lo * 2.0, 50.0),
            ("sans-serif", 16),
        )))?;
        return Ok(());
    }
    for ((i, label, _), pts) in series.iter().zip(&points) {
        let c = colour(*i);
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    Ok(())
}
