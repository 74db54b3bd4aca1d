//! PNG plots of an evaluation: the reliability diagram, histograms of uncertainty for correct
//! vs wrong predictions, and the sparsity of each layer.
//!
//! Plots are drawn in memory with plotters' bitmap backend and encoded with `png`; each
//! function returns the PNG bytes, so the caller decides where (and whether) to write them.
//! Text uses DejaVu Sans embedded in the binary (the `dejavu` crate), so rendering needs no
//! system fonts.

use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use plotters::backend::RGBPixel;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{register_font, FontStyle};

use crate::metrics::{LayerSparsity, ReliabilityBin};

/// Width of every plot, in pixels.
pub const WIDTH: u32 = 1000;
/// Height of every plot, in pixels.
pub const HEIGHT: u32 = 750;
/// Number of bars of the uncertainty histograms.
pub const HISTOGRAM_BINS: usize = 30;

const FONT: &str = "sans-serif";
const CORRECT_COLOR: RGBColor = RGBColor(46, 139, 87);
const WRONG_COLOR: RGBColor = RGBColor(214, 39, 40);
const ACCURACY_COLOR: RGBColor = RGBColor(31, 119, 180);
const CONFIDENCE_COLOR: RGBColor = RGBColor(255, 127, 14);

/// Registers the embedded font once per process (plotters keeps a global font table).
fn ensure_font() -> Result<()> {
    static LOADED: OnceLock<bool> = OnceLock::new();
    let loaded = *LOADED
        .get_or_init(|| register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok());
    if loaded {
        Ok(())
    } else {
        Err(anyhow!("the embedded plot font could not be loaded"))
    }
}

fn plot_error<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("cannot draw plot: {e:?}")
}

/// Draws with `draw` on a white `WIDTH x HEIGHT` canvas and returns the image as PNG bytes.
fn render<F>(draw: F) -> Result<Vec<u8>>
where
    F: FnOnce(&DrawingArea<BitMapBackend<'_, RGBPixel>, Shift>) -> Result<()>,
{
    ensure_font()?;
    let mut rgb = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let backend = BitMapBackend::<RGBPixel>::with_buffer_and_format(&mut rgb, (WIDTH, HEIGHT))
            .map_err(plot_error)?;
        let root = backend.into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        draw(&root)?;
        root.present().map_err(plot_error)?;
    }
    encode_png(&rgb, WIDTH, HEIGHT)
}

/// Encodes 8-bit RGB pixels as a PNG image.
pub fn encode_png(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(rgb)?;
        writer.finish()?;
    }
    Ok(out)
}

/// The reliability diagram: accuracy against confidence per bin (bars), the mean confidence of
/// each bin (dots), the diagonal of perfect calibration, and below it the number of images per
/// bin (log scale). `title_note` is appended to the title (e.g. the model and mode).
pub fn reliability_diagram(bins: &[ReliabilityBin], ece: f64, title_note: &str) -> Result<Vec<u8>> {
    render(|root| {
        let (top, bottom) = root.split_vertically(HEIGHT * 68 / 100);
        let title = format!(
            "Reliability diagram{title_note}: ECE = {ece:.4}, {} bins",
            bins.len()
        );
        let mut chart = ChartBuilder::on(&top)
            .caption(title, (FONT, 26))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .max_light_lines(0)
            .x_desc("confidence (top-1 probability)")
            .y_desc("accuracy")
            .label_style((FONT, 16))
            .axis_desc_style((FONT, 18))
            .draw()
            .map_err(plot_error)?;
        chart
            .draw_series(bins.iter().filter_map(|b| {
                let acc = b.accuracy?;
                Some(Rectangle::new(
                    [(b.lower, 0.0), (b.upper, acc)],
                    ACCURACY_COLOR.mix(0.75).filled(),
                ))
            }))
            .map_err(plot_error)?
            .label("accuracy of the bin")
            .legend(|(x, y)| {
                Rectangle::new(
                    [(x, y - 6), (x + 16, y + 6)],
                    ACCURACY_COLOR.mix(0.75).filled(),
                )
            });
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, 0.0), (1.0, 1.0)],
                8,
                6,
                BLACK.stroke_width(2),
            ))
            .map_err(plot_error)?
            .label("perfect calibration")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLACK.stroke_width(2)));
        chart
            .draw_series(bins.iter().filter_map(|b| {
                let (acc, conf) = (b.accuracy?, b.confidence?);
                Some(Circle::new((conf, acc), 5, CONFIDENCE_COLOR.filled()))
            }))
            .map_err(plot_error)?
            .label("(mean confidence, accuracy)")
            .legend(|(x, y)| Circle::new((x + 8, y), 5, CONFIDENCE_COLOR.filled()));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((FONT, 16))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;

        let max_count = bins.iter().map(|b| b.count).max().unwrap_or(1).max(1) as f64;
        let mut counts = ChartBuilder::on(&bottom)
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..1f64, (0.8f64..max_count * 2.0).log_scale())
            .map_err(plot_error)?;
        counts
            .configure_mesh()
            .max_light_lines(0)
            .x_desc("confidence (top-1 probability)")
            .y_desc("images in bin")
            .y_labels(6)
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style((FONT, 16))
            .axis_desc_style((FONT, 18))
            .draw()
            .map_err(plot_error)?;
        counts
            .draw_series(bins.iter().filter(|b| b.count > 0).map(|b| {
                Rectangle::new(
                    [(b.lower, 0.8), (b.upper, b.count as f64)],
                    RGBColor(120, 120, 120).mix(0.7).filled(),
                )
            }))
            .map_err(plot_error)?;
        Ok(())
    })
}

/// Counts of `values` in `bins` equal-width bins over `[lo, hi]`; values outside are put in
/// the first or last bin, NaN is skipped.
pub fn histogram(values: &[f64], lo: f64, hi: f64, bins: usize) -> Vec<usize> {
    let mut counts = vec![0usize; bins];
    if bins == 0 {
        return counts;
    }
    let width = (hi - lo) / bins as f64;
    for &v in values.iter().filter(|v| !v.is_nan()) {
        let b = if width > 0.0 {
            ((v - lo) / width).floor().max(0.0) as usize
        } else {
            0
        };
        counts[b.min(bins - 1)] += 1;
    }
    counts
}

/// Names of the two groups of [`uncertainty_histogram`].
pub const CORRECT_WRONG: [&str; 2] = ["correct", "wrong"];
/// Names of the two groups of [`uncertainty_histogram`] for an out-of-distribution check.
pub const IN_OUT: [&str; 2] = ["test set", "out of distribution"];

/// Overlaid histograms of one uncertainty measure for two groups of images (correct and wrong
/// predictions, or test and out-of-distribution images, named by `names`), each normalised
/// to the fraction of its own group (the groups differ a lot in size). `x_max` is the upper
/// end of the x axis (e.g. ln K for an entropy); it is widened to fit the data (0 = from the
/// data alone).
pub fn uncertainty_histogram(
    title: &str,
    x_label: &str,
    (correct, wrong): (&[f64], &[f64]),
    names: [&str; 2],
    x_max: f64,
) -> Result<Vec<u8>> {
    let data_max = correct
        .iter()
        .chain(wrong)
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    // All-zero data (mutual information of the mean-weights mode) gets a unit axis rather than
    // a degenerate one.
    let hi = match x_max.max(data_max) {
        h if h > 1e-6 => h,
        _ => 1.0,
    };
    let width = hi / HISTOGRAM_BINS as f64;
    let fractions = |values: &[f64]| -> Vec<f64> {
        let n = values.len().max(1) as f64;
        histogram(values, 0.0, hi, HISTOGRAM_BINS)
            .into_iter()
            .map(|c| c as f64 / n)
            .collect()
    };
    let (fc, fw) = (fractions(correct), fractions(wrong));
    let y_max = fc
        .iter()
        .chain(&fw)
        .copied()
        .fold(0.0f64, f64::max)
        .max(0.01)
        * 1.1;
    // The legend goes in the upper corner away from most of the data.
    let all = correct.len() + wrong.len();
    let mean = correct.iter().chain(wrong).sum::<f64>() / all.max(1) as f64;
    let legend_at = if mean > hi / 2.0 {
        SeriesLabelPosition::UpperLeft
    } else {
        SeriesLabelPosition::UpperRight
    };
    render(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 26))
            .margin(14)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d(0f64..hi, 0f64..y_max)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .max_light_lines(0)
            .x_desc(x_label)
            .y_desc("fraction of the group's images")
            .label_style((FONT, 16))
            .axis_desc_style((FONT, 18))
            .draw()
            .map_err(plot_error)?;
        let groups = [
            (
                &fc,
                CORRECT_COLOR,
                format!("{} (n = {})", names[0], correct.len()),
            ),
            (
                &fw,
                WRONG_COLOR,
                format!("{} (n = {})", names[1], wrong.len()),
            ),
        ];
        for (fractions, color, label) in groups {
            chart
                .draw_series(fractions.iter().enumerate().filter(|(_, &f)| f > 0.0).map(
                    |(i, &f)| {
                        let x0 = i as f64 * width;
                        Rectangle::new([(x0, 0.0), (x0 + width, f)], color.mix(0.45).filled())
                    },
                ))
                .map_err(plot_error)?
                .label(label)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 16, y + 6)], color.mix(0.45).filled())
                });
        }
        chart
            .configure_series_labels()
            .position(legend_at)
            .label_font((FONT, 18))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
        Ok(())
    })
}

/// Colour of every text of the sparsity chart: dark on the white background and readable on
/// the light bars (no white label that vanishes where it leaves a bar).
pub const SPARSITY_TEXT_COLOR: RGBColor = RGBColor(20, 20, 20);

/// Left and right margin of the sparsity chart's plotting area, and its y label area.
const SPARSITY_MARGIN: u32 = 14;
const SPARSITY_Y_AREA: u32 = 80;

/// Width in pixels of `text` at `size` in the plot font (an over-estimate if it cannot be
/// measured).
pub fn text_width(text: &str, size: u32) -> u32 {
    if ensure_font().is_err() {
        return u32::MAX;
    }
    (FONT, size)
        .into_font()
        .box_size(text)
        .map(|(w, _)| w)
        .unwrap_or(u32::MAX)
}

/// Pixels of x axis per bar when the sparsity chart has `bars` bars (a lower bound on the
/// plotted slot: the axis and its ticks take a few pixels too).
pub fn sparsity_slot(bars: usize) -> u32 {
    (WIDTH - 2 * SPARSITY_MARGIN - SPARSITY_Y_AREA - 10) / bars.max(1) as u32
}

/// The texts under and above one bar of the sparsity chart, sized so that neighbours do not
/// overlap.
#[derive(Clone, Debug, PartialEq)]
pub struct BarText {
    /// The x label: `layer 0: 784→300` or `layer 3: conv2d` when it fits, else `0 fc`,
    /// `3 conv`, `4 exit`.
    pub label: String,
    /// Font size of the x label.
    pub label_size: u32,
    /// The x label is drawn vertically (it fits no other way).
    pub label_vertical: bool,
    /// The pruning figure above the bar, `83.33%` (fewer decimals on narrow bars).
    pub percent: String,
    /// Font size of the pruning figure.
    pub percent_size: u32,
    /// The weights kept, `1536 of 9216 kept` or `1536/9216`, above the figure; `None` when
    /// neither fits (report.json has the counts).
    pub kept: Option<String>,
    /// Font size of the kept weights.
    pub kept_size: u32,
}

/// A short name of a layer kind for narrow bars.
fn short_kind(kind: &str) -> &str {
    if kind.contains("linear") {
        "fc"
    } else if kind.starts_with("conv") {
        "conv"
    } else if kind == "exit-head" {
        "exit"
    } else {
        kind
    }
}

/// The texts of every bar for a chart whose bars are `slot` pixels apart: the longest form of
/// each that fits in `slot` (with a little room between neighbours).
pub fn bar_texts(layers: &[&LayerSparsity], slot: u32) -> Vec<BarText> {
    let room = slot.saturating_sub(6);
    let fits = |text: &str, size: u32| text_width(text, size) <= room;
    let mut texts: Vec<BarText> = layers
        .iter()
        .map(|l| {
            let sparsity = l.sparsity.unwrap_or(0.0);
            let long = if l.kind.starts_with("linear") || l.kind.starts_with("qlinear") {
                format!("layer {}: {}→{}", l.layer, l.inputs, l.outputs)
            } else {
                format!("layer {}: {}", l.layer, l.kind)
            };
            let short = format!("{} {}", l.layer, short_kind(l.kind));
            let (label, label_size, label_vertical) = if fits(&long, 16) {
                (long, 16, false)
            } else if fits(&short, 14) {
                (short, 14, false)
            } else {
                (short, 13, true)
            };
            // Fewer decimals and smaller type as the bars narrow.
            let (percent, percent_size) = [(2, 18), (2, 15), (1, 13), (0, 12), (0, 10)]
                .into_iter()
                .map(|(decimals, size)| (format!("{:.*}%", decimals, 100.0 * sparsity), size))
                .find(|(text, size)| fits(text, *size))
                .unwrap_or_else(|| (format!("{:.0}", 100.0 * sparsity), 9));
            let long_kept = format!("{} of {} kept", l.nnz, l.dense_weights);
            let short_kept = format!("{}/{}", l.nnz, l.dense_weights);
            let (kept, kept_size) = if fits(&long_kept, 15) {
                (Some(long_kept), 15)
            } else if fits(&short_kept, 13) {
                (Some(short_kept), 13)
            } else if fits(&short_kept, 11) {
                (Some(short_kept), 11)
            } else {
                (None, 0)
            };
            BarText {
                label,
                label_size,
                label_vertical,
                percent,
                percent_size,
                kept,
                kept_size,
            }
        })
        .collect();
    // One style of x label across the chart: abbreviated (and vertical) for all bars as soon
    // as one bar needs it.
    let vertical = texts.iter().any(|t| t.label_vertical);
    let short = texts.iter().any(|t| !t.label.starts_with("layer "));
    for (t, l) in texts.iter_mut().zip(layers) {
        if short && t.label.starts_with("layer ") {
            t.label = format!("{} {}", l.layer, short_kind(l.kind));
            t.label_size = 14;
        }
        if vertical {
            t.label_vertical = true;
            t.label_size = 13;
        }
    }
    texts
}

/// Bar chart of the fraction of weights pruned in each layer that has weights
/// (`1 - nnz / dense weights`; pooling layers and residual additions are left out). Every
/// text is dark, sized or abbreviated to its bar's width (see [`bar_texts`]).
pub fn sparsity_chart(layers: &[LayerSparsity], title_note: &str) -> Result<Vec<u8>> {
    let bars: Vec<&LayerSparsity> = layers.iter().filter(|l| l.sparsity.is_some()).collect();
    let texts = bar_texts(&bars, sparsity_slot(bars.len()));
    let abbreviated = texts.iter().any(|t| !t.label.starts_with("layer"));
    let vertical = texts.iter().any(|t| t.label_vertical);
    // Bar i spans [i + 0.15, i + 0.85] on an x axis of 0..n; the x labels are drawn by hand
    // under the centre of each bar.
    let n = bars.len().max(1) as f64;
    render(|root| {
        let title = format!("Weights pruned per layer{title_note}");
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 26))
            .margin(SPARSITY_MARGIN)
            .x_label_area_size(if vertical { 100 } else { 70 })
            .y_label_area_size(SPARSITY_Y_AREA)
            // Room above the tallest bar for its figure and its kept weights.
            .build_cartesian_2d(0f64..n, 0f64..116f64)
            .map_err(plot_error)?;
        let x_desc = if abbreviated {
            "layer (fc: linear, conv: convolution, exit: exit head)"
        } else {
            "layer (inputs → outputs)"
        };
        chart
            .configure_mesh()
            .max_light_lines(0)
            .disable_x_mesh()
            .x_labels(0)
            .x_desc(x_desc)
            .y_desc("weights pruned (%) = 1 − stored / dense weights")
            .y_labels(12)
            .y_label_formatter(&|v| {
                if *v <= 100.0 {
                    format!("{v:.0}")
                } else {
                    String::new()
                }
            })
            .label_style((FONT, 16).into_font().color(&SPARSITY_TEXT_COLOR))
            .axis_desc_style((FONT, 18).into_font().color(&SPARSITY_TEXT_COLOR))
            .draw()
            .map_err(plot_error)?;
        chart
            .draw_series(bars.iter().enumerate().map(|(i, l)| {
                let x = i as f64;
                Rectangle::new(
                    [
                        (x + 0.15, 0.0),
                        (x + 0.85, 100.0 * l.sparsity.unwrap_or(0.0)),
                    ],
                    ACCURACY_COLOR.mix(0.8).filled(),
                )
            }))
            .map_err(plot_error)?;
        let bottom = Pos::new(HPos::Center, VPos::Bottom);
        for (i, (l, t)) in bars.iter().zip(&texts).enumerate() {
            let top = 100.0 * l.sparsity.unwrap_or(0.0);
            let (x, y) = chart.backend_coord(&(i as f64 + 0.5, top));
            let percent_font = (FONT, t.percent_size)
                .into_font()
                .color(&SPARSITY_TEXT_COLOR)
                .pos(bottom);
            root.draw(&Text::new(t.percent.clone(), (x, y - 4), percent_font))
                .map_err(plot_error)?;
            if let Some(kept) = &t.kept {
                let kept_font = (FONT, t.kept_size)
                    .into_font()
                    .color(&SPARSITY_TEXT_COLOR)
                    .pos(bottom);
                let above = y - 8 - t.percent_size as i32;
                root.draw(&Text::new(kept.clone(), (x, above), kept_font))
                    .map_err(plot_error)?;
            }
        }
        for (i, t) in texts.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
            let font = (FONT, t.label_size).into_font().color(&SPARSITY_TEXT_COLOR);
            let text = if t.label_vertical {
                // Read bottom to top, its end under the bar.
                let font = font
                    .transform(FontTransform::Rotate270)
                    .pos(Pos::new(HPos::Right, VPos::Center));
                Text::new(t.label.clone(), (x, y + 8), font)
            } else {
                let font = font.pos(Pos::new(HPos::Center, VPos::Top));
                Text::new(t.label.clone(), (x, y + 10), font)
            };
            root.draw(&text).map_err(plot_error)?;
        }
        Ok(())
    })
}

/// One curve of [`macs_sweep`]: a policy's (average MACs as a fraction of running every
/// block, test accuracy) points, with the parameter value of each point.
#[derive(Clone, Debug)]
pub struct SweepCurve {
    /// Legend text.
    pub label: String,
    /// `(MACs fraction, accuracy, parameter)` per point.
    pub points: Vec<(f64, f64, f64)>,
}

/// Accuracy against average MACs (fraction of always running every block) for sweeps of a
/// halting parameter; `full` is the always-run-everything reference point.
pub fn macs_sweep(curves: &[SweepCurve], full: (f64, f64), title_note: &str) -> Result<Vec<u8>> {
    let accs = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.1))
        .chain([full.1]);
    let lo = accs.clone().fold(f64::MAX, f64::min);
    let hi = accs.fold(f64::MIN, f64::max);
    let pad = ((hi - lo) * 0.1).max(0.002);
    let colors = [ACCURACY_COLOR, CONFIDENCE_COLOR, CORRECT_COLOR, WRONG_COLOR];
    render(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption(format!("Accuracy against compute{title_note}"), (FONT, 26))
            .margin(14)
            .x_label_area_size(60)
            .y_label_area_size(80)
            .build_cartesian_2d(0f64..1.05f64, (lo - pad) * 100.0..(hi + pad) * 100.0)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("average MACs / MACs of running every block")
            .y_desc("test accuracy (%)")
            .label_style((FONT, 16))
            .axis_desc_style((FONT, 18))
            .draw()
            .map_err(plot_error)?;
        for (curve, color) in curves.iter().zip(colors.iter().cycle()) {
            let color = *color;
            let mut sorted = curve.points.clone();
            sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(
                    sorted.iter().map(|p| (p.0, 100.0 * p.1)),
                    color.stroke_width(2),
                ))
                .map_err(plot_error)?
                .label(curve.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                });
            chart
                .draw_series(
                    curve
                        .points
                        .iter()
                        .map(|p| Circle::new((p.0, 100.0 * p.1), 4, color.filled())),
                )
                .map_err(plot_error)?;
        }
        chart
            .draw_series([Cross::new(
                (full.0, 100.0 * full.1),
                8,
                BLACK.stroke_width(2),
            )])
            .map_err(plot_error)?
            .label("every block")
            .legend(|(x, y)| Cross::new((x + 10, y), 6, BLACK.stroke_width(2)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FONT, 16))
            .border_style(BLACK)
            .background_style(WHITE.mix(0.9))
            .draw()
            .map_err(plot_error)?;
        Ok(())
    })
}

/// Bar chart of how many images stopped at each exit depth (1 = after the first block).
pub fn exit_histogram(counts: &[usize], title_note: &str) -> Result<Vec<u8>> {
    let n = counts.len().max(1);
    let total: usize = counts.iter().sum();
    let top = counts.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.12;
    render(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption(format!("Exit depth{title_note}"), (FONT, 26))
            .margin(14)
            .x_label_area_size(60)
            .y_label_area_size(80)
            .build_cartesian_2d(0.5f64..n as f64 + 0.5, 0f64..top)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .x_desc("blocks run before stopping")
            .y_desc("images")
            .label_style((FONT, 16))
            .axis_desc_style((FONT, 18))
            .draw()
            .map_err(plot_error)?;
        chart
            .draw_series(counts.iter().enumerate().map(|(i, &c)| {
                let x = i as f64 + 1.0;
                Rectangle::new(
                    [(x - 0.35, 0.0), (x + 0.35, c as f64)],
                    ACCURACY_COLOR.mix(0.8).filled(),
                )
            }))
            .map_err(plot_error)?;
        let centered = Pos::new(HPos::Center, VPos::Bottom);
        chart
            .draw_series(counts.iter().enumerate().map(|(i, &c)| {
                Text::new(
                    format!("{c} ({:.1}%)", 100.0 * c as f64 / total.max(1) as f64),
                    (i as f64 + 1.0, c as f64 + top * 0.01),
                    (FONT, 16).into_font().color(&BLACK).pos(centered),
                )
            }))
            .map_err(plot_error)?;
        Ok(())
    })
}

/// `(K, accuracy, NLL, ECE)`: one point of [`adaptation_curve`].
pub type AdaptationPoint = (f64, f64, f64, f64);

/// A panel of [`adaptation_curve`]: its axis name, its value and its colour.
type Panel = (&'static str, fn(&AdaptationPoint) -> f64, RGBColor);

/// Accuracy, NLL and ECE of an adapted model against the number of examples it learnt from
/// (`tinybayes adapt --report`): three panels sharing the K axis; `points` are
/// `(K, accuracy, NLL, ECE)`.
pub fn adaptation_curve(points: &[AdaptationPoint], title_note: &str) -> Result<Vec<u8>> {
    let k_max = points.iter().map(|p| p.0).fold(1.0, f64::max);
    render(|root| {
        let root = root
            .titled(
                &format!("Last-layer adaptation against K{title_note}"),
                (FONT, 24),
            )
            .map_err(plot_error)?;
        let panels = root.split_evenly((3, 1));
        let series: [Panel; 3] = [
            ("accuracy (%)", |p| 100.0 * p.1, ACCURACY_COLOR),
            ("NLL (nats)", |p| p.2, WRONG_COLOR),
            ("ECE", |p| p.3, CONFIDENCE_COLOR),
        ];
        for (panel, (name, value, color)) in panels.iter().zip(series) {
            let values: Vec<f64> = points.iter().map(value).collect();
            let lo = values.iter().cloned().fold(f64::MAX, f64::min);
            let hi = values.iter().cloned().fold(f64::MIN, f64::max);
            let pad = ((hi - lo) * 0.15).max(1e-3 * hi.abs().max(1.0));
            let mut chart = ChartBuilder::on(panel)
                .margin(10)
                .x_label_area_size(40)
                .y_label_area_size(80)
                .build_cartesian_2d(0f64..k_max * 1.03, (lo - pad)..(hi + pad))
                .map_err(plot_error)?;
            chart
                .configure_mesh()
                .x_desc("K: labelled examples learnt from")
                .y_desc(name)
                .label_style((FONT, 15))
                .axis_desc_style((FONT, 16))
                .draw()
                .map_err(plot_error)?;
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|p| (p.0, value(p))),
                    color.stroke_width(2),
                ))
                .map_err(plot_error)?;
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|p| Circle::new((p.0, value(p)), 4, color.filled())),
                )
                .map_err(plot_error)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::reliability_bins;

    const PNG_MAGIC: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

    fn decode(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
        let decoder = png::Decoder::new(bytes);
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    /// A valid PNG of the right size that is not blank (has dark pixels: axes and text).
    fn check_png(bytes: &[u8]) {
        assert_eq!(bytes[..8], PNG_MAGIC);
        let (w, h, px) = decode(bytes);
        assert_eq!((w, h), (WIDTH, HEIGHT));
        let dark = px
            .chunks_exact(3)
            .filter(|p| p.iter().all(|&c| c < 80))
            .count();
        assert!(dark > 2000, "only {dark} dark pixels");
    }

    #[test]
    fn histogram_counts() {
        let h = histogram(
            &[0.0, 0.1, 0.5, 0.99, 1.0, 2.0, -1.0, f64::NAN],
            0.0,
            1.0,
            4,
        );
        // [0, .25): 0, 0.1, -1 (clamped); [.25,.5): -; [.5,.75): 0.5; [.75,1]: .99, 1, 2 (clamped)
        assert_eq!(h, vec![3, 0, 1, 3]);
        assert_eq!(histogram(&[5.0], 1.0, 1.0, 3), vec![1, 0, 0]);
        assert!(histogram(&[1.0], 0.0, 1.0, 0).is_empty());
    }

    #[test]
    fn plots_render_as_png() {
        let conf = [0.3, 0.55, 0.7, 0.95, 1.0, 1.0, 0.99];
        let hits = [false, true, true, true, true, false, true];
        let bins = reliability_bins(&conf, &hits);
        check_png(&reliability_diagram(&bins, 0.1234, "").unwrap());
        check_png(
            &uncertainty_histogram(
                "t",
                "x",
                (&[0.1, 0.2, 0.2], &[1.5, 2.0]),
                CORRECT_WRONG,
                10f64.ln(),
            )
            .unwrap(),
        );
        // Degenerate inputs still render: no data, all zeros.
        check_png(&uncertainty_histogram("t", "x", (&[], &[]), IN_OUT, 0.0).unwrap());
        check_png(&reliability_diagram(&reliability_bins(&[], &[]), 0.0, "").unwrap());
        let layers = [
            LayerSparsity {
                layer: 0,
                kind: "linear-sparse",
                inputs: 784,
                outputs: 300,
                nnz: 7056,
                dense_weights: 235_200,
                sparsity: Some(0.97),
            },
            LayerSparsity {
                layer: 1,
                kind: "maxpool",
                inputs: 300,
                outputs: 75,
                nnz: 0,
                dense_weights: 0,
                sparsity: None,
            },
            LayerSparsity {
                layer: 2,
                kind: "linear-dense",
                inputs: 75,
                outputs: 10,
                nnz: 750,
                dense_weights: 750,
                sparsity: Some(0.0),
            },
        ];
        check_png(&sparsity_chart(&layers, "").unwrap());
        // Few bars: the long labels.
        let bars: Vec<&LayerSparsity> = layers.iter().filter(|l| l.sparsity.is_some()).collect();
        let texts = bar_texts(&bars, sparsity_slot(bars.len()));
        assert_eq!(texts[0].label, "layer 0: 784→300");
        assert_eq!(texts[0].kept.as_deref(), Some("7056 of 235200 kept"));
        // One bar, and none at all (a model of pooling only cannot exist, but must not panic).
        check_png(&sparsity_chart(&layers[..1], "").unwrap());
        check_png(&sparsity_chart(&[], "").unwrap());
    }

    /// The layers of the shipped early-exit ResNet: a stem, then per block two
    /// convolutions, a residual addition (no weights) and an exit head.
    fn resnet_ee_layers() -> Vec<LayerSparsity> {
        let mut layers = vec![LayerSparsity {
            layer: 0,
            kind: "conv2d",
            inputs: 784,
            outputs: 1568,
            nnz: 226,
            dense_weights: 512,
            sparsity: Some(1.0 - 226.0 / 512.0),
        }];
        for block in 0..4 {
            let at = 1 + 4 * block;
            for (k, kind, nnz, dense) in [
                (0, "conv2d", 1536, 9216),
                (1, "conv2d", 1808, 9216),
                (2, "residual-add", 0, 0),
                (3, "exit-head", 320, 320),
            ] {
                layers.push(LayerSparsity {
                    layer: at + k,
                    kind,
                    inputs: 1568,
                    outputs: if kind == "exit-head" { 10 } else { 1568 },
                    nnz,
                    dense_weights: dense,
                    sparsity: (dense > 0).then(|| 1.0 - nnz as f64 / dense as f64),
                });
            }
        }
        layers
    }

    /// The early-exit ResNet's 13 bars (issue 10 item 8): every text fits its bar's slot, so
    /// neighbours cannot overlap; labels are abbreviated, all in one style; all text is dark.
    #[test]
    fn sparsity_texts_fit_their_bars_and_are_dark() {
        let layers = resnet_ee_layers();
        let bars: Vec<&LayerSparsity> = layers.iter().filter(|l| l.sparsity.is_some()).collect();
        assert_eq!(bars.len(), 13);
        let slot = sparsity_slot(bars.len());
        let texts = bar_texts(&bars, slot);
        for t in &texts {
            assert!(!t.label_vertical, "{t:?}");
            assert!(
                text_width(&t.label, t.label_size) < slot,
                "{t:?} in {slot} px"
            );
            assert!(text_width(&t.percent, t.percent_size) < slot, "{t:?}");
            let kept = t.kept.as_deref().expect("kept weights shown");
            assert!(text_width(kept, t.kept_size) < slot, "{t:?}");
            assert!(t.label.len() <= 8, "{t:?}");
        }
        assert_eq!(texts[0].label, "0 conv");
        assert_eq!(texts[3].label, "4 exit");
        assert_eq!(texts[1].kept.as_deref(), Some("1536/9216"));
        let RGBColor(r, g, b) = SPARSITY_TEXT_COLOR;
        let luminance = 0.2126 * r as f64 + 0.7152 * g as f64 + 0.0722 * b as f64;
        assert!(luminance < 60.0, "text colour too light: {luminance}");
        check_png(&sparsity_chart(&layers, "").unwrap());

        // 32 bars (the format's most layers): vertical short labels, all of them.
        let many: Vec<LayerSparsity> = (0..32)
            .map(|layer| LayerSparsity {
                layer,
                kind: "linear-sparse",
                inputs: 30,
                outputs: 30,
                nnz: 27,
                dense_weights: 900,
                sparsity: Some(0.97),
            })
            .collect();
        let bars: Vec<&LayerSparsity> = many.iter().collect();
        let slot = sparsity_slot(bars.len());
        let texts = bar_texts(&bars, slot);
        assert!(texts.iter().all(|t| t.label_vertical), "{texts:?}");
        for t in &texts {
            // Drawn vertically, a label's font height must fit the slot.
            assert!(t.label_size < slot, "{t:?}");
            assert!(text_width(&t.percent, t.percent_size) < slot, "{t:?}");
        }
        check_png(&sparsity_chart(&many, "").unwrap());
    }

    #[test]
    fn png_encoding_round_trips() {
        let rgb: Vec<u8> = (0..4 * 3 * 3).map(|i| (i * 7) as u8).collect();
        let bytes = encode_png(&rgb, 4, 3).unwrap();
        assert_eq!(decode(&bytes), (4, 3, rgb));
    }
}
