//! The charts of the main scenario: `latency.png`, the latency distribution
//! of each system at each load level, and `throughput.png`, orders per
//! second against the number of clients.
//!
//! Text needs a font registered with plotters at run time (there is no
//! system font lookup in this build). Without one the charts are still
//! drawn, lines and grid only, and the Markdown says so.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Context;
use plotters::coord::ranged1d::SegmentValue;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::ScenarioLevels;
use crate::model::System;

/// Where a sans-serif font usually lives: Debian and Ubuntu (fonts-dejavu-core,
/// fonts-liberation, fonts-freefont-ttf, fonts-noto-core), Fedora, Arch.
pub(super) const FONT_CANDIDATES: [&str; 8] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation2/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

const SIZE: (u32, u32) = (1200, 720);
/// The latency chart's x axis ends at p99.9: three nines.
const MAX_NINES: f64 = 3.0;
/// Log scales cannot show zero; faster than this reads as this.
const MIN_LATENCY_MS: f64 = 0.01;
/// Above this max/min spread the latency axis turns logarithmic.
const LOG_SCALE_SPREAD: f64 = 10.0;
/// One colour per number of clients (the Tableau 10 palette).
const PALETTE: [RGBColor; 10] = [
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
/// The length of a legend's line sample, in pixels.
const LEGEND_LINE: i32 = 30;
const SAGA_COLOR: RGBColor = RGBColor(31, 119, 180);
const BASELINE_COLOR: RGBColor = RGBColor(255, 127, 14);
const DTM_COLOR: RGBColor = RGBColor(44, 160, 44);

/// What [`write`] produced.
pub(super) struct Charts {
    pub files: Vec<PathBuf>,
    /// The font the text was drawn with; `None` when no font was found and
    /// the charts have no text.
    pub font: Option<&'static Path>,
}

pub(super) fn write(main: &ScenarioLevels<'_>, dir: &Path) -> anyhow::Result<Charts> {
    let font = chart_font();
    let files = write_with(main, dir, font.is_some())?;
    Ok(Charts { files, font })
}

/// Draws both charts into `dir`, with text only when `text` (a font is
/// registered).
pub(super) fn write_with(
    main: &ScenarioLevels<'_>,
    dir: &Path,
    text: bool,
) -> anyhow::Result<Vec<PathBuf>> {
    let latency = dir.join("latency.png");
    draw_latency(main, &latency, text).with_context(|| format!("drawing {}", latency.display()))?;
    let throughput = dir.join("throughput.png");
    draw_throughput(main, &throughput, text)
        .with_context(|| format!("drawing {}", throughput.display()))?;
    Ok(vec![latency, throughput])
}

/// Registers the first font found as plotters' "sans-serif", once per
/// process (plotters keeps the bytes for the life of the program).
fn chart_font() -> Option<&'static Path> {
    static FONT: OnceLock<Option<&'static Path>> = OnceLock::new();
    *FONT.get_or_init(|| {
        FONT_CANDIDATES.iter().map(Path::new).find(|path| {
            let Ok(bytes) = fs::read(path) else {
                return false;
            };
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
        })
    })
}

/// One line of the latency chart: a system at a number of clients.
struct Curve {
    system: System,
    concurrency: usize,
    color: RGBColor,
    /// (nines, latency ms), by nines ascending.
    points: Vec<(f64, f64)>,
}

/// The percentile on a "nines" scale: p0 is 0, p90 is 1, p99 is 2, p99.9 is
/// 3, so each tenfold rarer tail gets the same width.
fn nines(percentile: f64) -> f64 {
    -(1.0 - percentile / 100.0).log10()
}

fn percentile_of_nines(nines: f64) -> f64 {
    100.0 * (1.0 - 10f64.powf(-nines))
}

fn curves(main: &ScenarioLevels<'_>) -> Vec<Curve> {
    let mut curves = Vec::new();
    for (index, pair) in main.pairs.iter().enumerate() {
        let color = PALETTE[index % PALETTE.len()];
        for system in [System::Saga, System::Baseline, System::Dtm] {
            let Some(level) = pair.side(system) else {
                continue;
            };
            let mut points: Vec<(f64, f64)> = level
                .latency_curve
                .iter()
                .filter(|(p, ms)| (0.0..100.0).contains(p) && ms.is_finite())
                .map(|&(p, ms)| (nines(p), ms.max(MIN_LATENCY_MS)))
                .filter(|(x, _)| *x <= MAX_NINES + 1e-9)
                .collect();
            if points.is_empty() {
                // Nothing to draw, and a legend entry without a line misleads.
                continue;
            }
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            curves.push(Curve {
                system,
                concurrency: pair.concurrency,
                color,
                points,
            });
        }
    }
    curves
}

/// How latency maps to the chart's y axis. Plotters' own log axis labels
/// only whole decades from the first one up, so the log scale is drawn here
/// as log10(ms) on a linear axis with ticks at 1, 2 and 5 × 10^n.
#[derive(Clone, Copy)]
enum LatencyScale {
    Linear,
    Log,
}

impl LatencyScale {
    /// Log when the fastest and slowest plotted latencies are far apart.
    fn for_range(low: f64, high: f64) -> Self {
        if high / low >= LOG_SCALE_SPREAD {
            Self::Log
        } else {
            Self::Linear
        }
    }

    fn to_axis(self, ms: f64) -> f64 {
        match self {
            Self::Linear => ms,
            Self::Log => ms.log10(),
        }
    }

    /// The axis range, padded so no line runs along the frame.
    fn axis_range(self, low: f64, high: f64) -> std::ops::Range<f64> {
        match self {
            Self::Linear => 0.0..(high * 1.1).max(MIN_LATENCY_MS),
            Self::Log => (low * 0.8).log10()..(high * 1.25).log10(),
        }
    }

    fn description(self) -> &'static str {
        match self {
            Self::Linear => "latency (ms)",
            Self::Log => "latency (ms, log scale)",
        }
    }
}

/// The values 1, 2 and 5 × 10^n within `low..=high` (ms): the labelled
/// ticks of a log axis. A range of a decade or more holds at least three.
fn log_ticks(low: f64, high: f64) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut decade = 10f64.powf(low.log10().floor());
    while decade <= high {
        for mantissa in [1.0, 2.0, 5.0] {
            let tick = decade * mantissa;
            if (low..=high).contains(&tick) {
                ticks.push(tick);
            }
        }
        decade *= 10.0;
    }
    ticks
}

fn draw_latency(main: &ScenarioLevels<'_>, path: &Path, text: bool) -> anyhow::Result<()> {
    let mut curves = curves(main);
    let (low, high) = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.1))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), y| {
            (lo.min(y), hi.max(y))
        });
    let (low, high) = if low <= high {
        (low, high)
    } else {
        (0.1, 10.0)
    };
    let scale = LatencyScale::for_range(low, high);
    for curve in &mut curves {
        for point in &mut curve.points {
            point.1 = scale.to_axis(point.1);
        }
    }
    let y_range = scale.axis_range(low, high);

    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if text {
        builder
            .caption(
                format!(
                    "Latency distribution, {} (saga solid, baseline dashed, dtm dotted)",
                    main.scenario
                ),
                ("sans-serif", 28),
            )
            .x_label_area_size(50)
            .y_label_area_size(70);
    }
    let mut chart = builder.build_cartesian_2d(0.0..MAX_NINES, y_range.clone())?;

    let mut mesh = chart.configure_mesh();
    mesh.x_labels(4)
        .x_label_formatter(&|x| format!("p{}", fmt_axis(percentile_of_nines(*x))))
        .y_label_formatter(&|y| fmt_axis(*y))
        .light_line_style(BLACK.mix(0.05));
    if let LatencyScale::Log = scale {
        // The log ticks are drawn below.
        mesh.y_labels(0);
    }
    if text {
        mesh.x_desc("percentile (nines scale)")
            .y_desc(scale.description())
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18));
    }
    mesh.draw()?;

    if let LatencyScale::Log = scale {
        let (low, high) = (10f64.powf(y_range.start), 10f64.powf(y_range.end));
        for tick in log_ticks(low, high) {
            let y = tick.log10();
            chart.draw_series(LineSeries::new([(0.0, y), (MAX_NINES, y)], BLACK.mix(0.2)))?;
            let (px, py) = chart.backend_coord(&(0.0, y));
            root.draw(&PathElement::new([(px - 5, py), (px, py)], BLACK))?;
            if text {
                let style = ("sans-serif", 16)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Right, VPos::Center));
                root.draw(&Text::new(fmt_axis(tick), (px - 10, py), style))?;
            }
        }
    }

    // The median and p95 get ticks too: plotters' own x ticks fall on whole
    // nines only (p0, p90, p99, p99.9).
    for percentile in [50.0, 95.0] {
        let x = nines(percentile);
        chart.draw_series(LineSeries::new(
            [(x, y_range.start), (x, y_range.end)],
            BLACK.mix(0.2),
        ))?;
        let (px, py) = chart.backend_coord(&(x, y_range.start));
        root.draw(&PathElement::new([(px, py), (px, py + 5)], BLACK))?;
        if text {
            let style = ("sans-serif", 16)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Top));
            root.draw(&Text::new(format!("p{percentile}"), (px, py + 10), style))?;
        }
    }

    for curve in &curves {
        let label = format!(
            "{} {}",
            curve.system.label(),
            clients_short(curve.concurrency)
        );
        let color = curve.color;
        match curve.system {
            System::Saga => {
                let style = color.stroke_width(3);
                let series = chart.draw_series(LineSeries::new(curve.points.clone(), style))?;
                series
                    .label(label)
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + LEGEND_LINE, y)], style));
            }
            System::Baseline => {
                let style = color.mix(0.75).stroke_width(2);
                let series =
                    chart.draw_series(DashedLineSeries::new(curve.points.clone(), 10, 6, style))?;
                series.label(label).legend(move |(x, y)| {
                    DashedPathElement::new([(x, y), (x + LEGEND_LINE, y)], 8, 4, style)
                });
            }
            // dtm: dotted.
            System::Dtm => {
                let style = color.mix(0.9).stroke_width(2);
                let series =
                    chart.draw_series(DashedLineSeries::new(curve.points.clone(), 3, 5, style))?;
                series.label(label).legend(move |(x, y)| {
                    DashedPathElement::new([(x, y), (x + LEGEND_LINE, y)], 3, 4, style)
                });
            }
        }
    }
    if text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .legend_area_size(LEGEND_LINE + 10)
            .label_font(("sans-serif", 16))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

fn draw_throughput(main: &ScenarioLevels<'_>, path: &Path, text: bool) -> anyhow::Result<()> {
    let levels: Vec<usize> = main.pairs.iter().map(|p| p.concurrency).collect();
    let high = main
        .pairs
        .iter()
        .flat_map(|p| [p.saga, p.baseline, p.dtm])
        .flatten()
        .map(|l| l.throughput)
        .filter(|t| t.is_finite())
        .fold(0.0, f64::max);
    // Whole pairs fit i32: there are only as many as the levels run.
    let last = i32::try_from(levels.len().saturating_sub(1)).context("too many levels")?;

    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20);
    if text {
        builder
            .caption(
                format!("Throughput by number of clients, {}", main.scenario),
                ("sans-serif", 28),
            )
            .x_label_area_size(50)
            .y_label_area_size(80);
    }
    // One segment per level; a lone level gets an empty one each side so it
    // sits in the middle.
    let segments = if last == 0 { -1..1 } else { 0..last };
    let mut chart =
        builder.build_cartesian_2d(segments.into_segmented(), 0.0..(high * 1.15).max(1.0))?;

    let level_label = |x: &SegmentValue<i32>| match x {
        SegmentValue::Exact(i) | SegmentValue::CenterOf(i) => usize::try_from(*i)
            .ok()
            .and_then(|i| levels.get(i))
            .map(ToString::to_string)
            .unwrap_or_default(),
        SegmentValue::Last => String::new(),
    };
    let mut mesh = chart.configure_mesh();
    mesh.disable_x_mesh()
        .x_labels(levels.len())
        .x_label_formatter(&level_label)
        .y_label_formatter(&|y| fmt_axis(*y))
        .light_line_style(BLACK.mix(0.05));
    if text {
        mesh.x_desc("concurrent clients")
            .y_desc("answered orders per second")
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 18));
    }
    mesh.draw()?;

    for system in [System::Saga, System::Baseline, System::Dtm] {
        let points: Vec<(SegmentValue<i32>, f64)> = main
            .pairs
            .iter()
            .zip(0..)
            .filter_map(|(pair, i)| {
                Some((SegmentValue::CenterOf(i), pair.side(system)?.throughput))
            })
            .collect();
        if points.is_empty() {
            continue;
        }
        let (color, dashed) = match system {
            System::Saga => (SAGA_COLOR, false),
            System::Baseline => (BASELINE_COLOR, true),
            System::Dtm => (DTM_COLOR, true),
        };
        let style = color.stroke_width(3);
        if dashed {
            chart
                .draw_series(DashedLineSeries::new(points.clone(), 10, 6, style))?
                .label(system.label())
                .legend(move |(x, y)| {
                    DashedPathElement::new([(x, y), (x + LEGEND_LINE, y)], 8, 4, style)
                });
        } else {
            chart
                .draw_series(LineSeries::new(points.clone(), style))?
                .label(system.label())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + LEGEND_LINE, y)], style));
        }
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 5, color.filled())),
        )?;
    }
    if text {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .legend_area_size(LEGEND_LINE + 10)
            .label_font(("sans-serif", 16))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// "c=32", short enough for a legend.
fn clients_short(concurrency: usize) -> String {
    format!("c={concurrency}")
}

/// An axis value with as few digits as it needs: 0.25, 2.5, 25, 2500.
fn fmt_axis(value: f64) -> String {
    let text = if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    };
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}
