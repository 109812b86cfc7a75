//! SVG percentile plots of latency histograms: one line per run, in the shape of HdrHistogram's plotter;
//! the `sweep` chart, metrics against a swept value; the `report` chart, a latency against
//! concurrent users or an arrival rate, one line per account tier; and the `compare --seeds`
//! chart, each policy's figure seed by seed.
//!
//! The x axis is the percentile on HdrHistogram's scale, `1 / (1 − p)` on a log axis, so the
//! median, p90, p99 and p99.9 are evenly spaced and the tail gets as much room as the body; the
//! y axis is latency in seconds. `--out` writes one file per metric, so a threshold change shows
//! up as one curve moving against another.

use hdrhistogram::Histogram;
use plotters::coord::ranged1d::{BoldPoints, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

/// Tail depth of the x axis: percentiles up to 1 − 1/`X_MAX` (99.99%).
const X_MAX: f64 = 10_000.0;

/// Height of a percentile chart, in pixels.
const HEIGHT: u32 = 520;

/// Points per curve.
const STEPS: u32 = 200;

/// Line colours, one per run, in order.
const COLOURS: [RGBColor; 6] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

/// An SVG chart of `series` (label, histogram of milliseconds). Empty histograms are skipped;
/// with none left the chart says so instead of drawing axes for nothing.
pub fn percentile_svg(title: &str, series: &[(&str, &Histogram<u64>)]) -> String {
    let mut svg = String::new();
    // Drawing into a String cannot fail for I/O reasons; an error here would be a plotting
    // bug, and the caller still gets a (possibly partial) valid SVG rather than a panic.
    let _ = draw(&mut svg, title, series);
    svg
}

fn draw(
    svg: &mut String,
    title: &str,
    series: &[(&str, &Histogram<u64>)],
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::with_string(svg, (900, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let curves: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .filter(|(_, h)| !h.is_empty())
        .map(|(label, h)| (*label, curve(h)))
        .collect();
    if curves.is_empty() {
        root.draw(&Text::new(
            format!("{title}: no samples"),
            (20, 30),
            ("sans-serif", 18),
        ))?;
        root.present()?;
        return Ok(());
    }
    // The legend sits in the top-left corner, over the plot. A flat curve (every image of a
    // batch tagged at once) can run along the top, so the y range leaves the legend's band
    // free: no curve is drawn under it.
    let (margin, caption, x_labels) = (12.0, 30.0, 40.0);
    let plot_px = f64::from(HEIGHT) - 2.0 * margin - caption - x_labels;
    let legend_px = 16.0 + 22.0 * curves.len() as f64;
    let y_max = curves
        .iter()
        .flat_map(|(_, pts)| pts.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(0.001)
        * 1.05
        / (1.0 - (legend_px / plot_px).min(0.5));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(margin as u32)
        .margin_right(36)
        .x_label_area_size(x_labels as u32)
        .y_label_area_size(60)
        .build_cartesian_2d((1.0f64..X_MAX).log_scale(), 0.0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (s)")
        .x_label_formatter(&|x| percentile_label(*x))
        .y_label_formatter(&|y| format!("{y:.1}"))
        .draw()?;
    for (i, (label, pts)) in curves.into_iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(pts, colour.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// (x, seconds) points from the median-less start (p = 0) to p99.99, evenly spaced in log x.
fn curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    (0..=STEPS)
        .map(|i| {
            let x = X_MAX.powf(f64::from(i) / f64::from(STEPS));
            let p = 1.0 - 1.0 / x;
            (x, h.value_at_quantile(p) as f64 / 1000.0)
        })
        .collect()
}

/// `1 / (1 − p)` as a percentile: 1 → `0%`, 10 → `90%`, 100 → `99%`, 1000 → `99.9%`.
fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 1.0 / x);
    let digits = x.log10().round().max(0.0) as usize;
    let decimals = digits.saturating_sub(2);
    format!("{p:.decimals$}%")
}

/// An SVG chart of metrics against a swept value: one panel per metric (label, one figure per
/// value; `None` is no figure), stacked and sharing the x axis. Values that are all numbers are
/// placed at their value; otherwise evenly, labelled with their text.
pub fn sweep_svg(
    title: &str,
    key: &str,
    values: &[String],
    panels: &[(&str, Vec<Option<f64>>)],
) -> String {
    let mut svg = String::new();
    // As in `percentile_svg`: a drawing error is a plotting bug, not worth a panic.
    let _ = draw_sweep(&mut svg, title, key, values, panels);
    svg
}

fn draw_sweep(
    svg: &mut String,
    title: &str,
    key: &str,
    values: &[String],
    panels: &[(&str, Vec<Option<f64>>)],
) -> Result<(), Box<dyn std::error::Error>> {
    let height = 40 + 240 * panels.len().max(1) as u32;
    let root = SVGBackend::with_string(svg, (900, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 20))?;
    let numeric: Option<Vec<f64>> = values
        .iter()
        .map(|v| v.parse::<f64>().ok().filter(|x| x.is_finite()))
        .collect();
    let xs: Vec<f64> = match &numeric {
        Some(xs) => xs.clone(),
        None => (0..values.len()).map(|i| i as f64).collect(),
    };
    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = match (lo.is_finite() && hi.is_finite(), hi - lo) {
        (false, _) => (-1.0, 1.0),
        (true, span) if span <= 0.0 => (lo - 1.0, hi + 1.0),
        (true, span) if numeric.is_some() => (lo - span * 0.05, hi + span * 0.05),
        (true, _) => (lo - 0.5, hi + 0.5),
    };
    // Without numbers, the x axis is the value's position: label whole positions with its text.
    let category = |x: &f64| -> String {
        let i = x.round();
        if (x - i).abs() > 1e-6 || i < 0.0 {
            return String::new();
        }
        values.get(i as usize).cloned().unwrap_or_default()
    };
    // Whole numbers without a decimal point: a threshold of 20 reads `20`, not `20.0`.
    let number = |x: &f64| -> String {
        if x.fract() == 0.0 && x.abs() < 1e15 {
            format!("{x:.0}")
        } else {
            format!("{x}")
        }
    };
    let areas = root.split_evenly((panels.len().max(1), 1));
    for (i, (area, (label, ys))) in areas.iter().zip(panels).enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let pts: Vec<(f64, f64)> = xs
            .iter()
            .zip(ys)
            .filter_map(|(x, y)| y.map(|y| (*x, y)))
            .collect();
        let y_max = pts.iter().map(|p| p.1).fold(0.0f64, f64::max);
        let y_max = if y_max > 0.0 { y_max * 1.1 } else { 1.0 };
        let mut chart = ChartBuilder::on(area)
            .margin(10)
            .margin_right(36)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(lo..hi, 0.0f64..y_max)?;
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(key).y_desc(*label);
        if numeric.is_none() {
            mesh.x_labels(values.len() + 1).x_label_formatter(&category);
        } else {
            mesh.x_label_formatter(&number);
        }
        mesh.draw()?;
        chart.draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))?;
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, colour.filled())))?;
    }
    root.present()?;
    Ok(())
}

/// An SVG chart of a latency (seconds) against concurrent users, one line per series (label,
/// points), both axes logarithmic (a capacity search doubles the users, and latencies run from
/// seconds to hours), with `limit_s` drawn as a dashed horizontal line.
pub fn capacity_svg(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(&str, Vec<(f64, f64)>)],
    limit_s: f64,
) -> String {
    let mut svg = String::new();
    // As in `percentile_svg`: a drawing error is a plotting bug, not worth a panic.
    let _ = draw_capacity(&mut svg, title, x_desc, y_desc, series, limit_s);
    svg
}

/// Seconds as an axis label: `0.5 s`, `90 s`, `2 min`, `2.5 h`. The unit is chosen on the
/// rounded figure, so 119.97 s reads `2 min` as 120 s does, not `120 s`.
fn seconds_label(s: f64) -> String {
    // One decimal, without a `.0`, and whether that figure is under 120.
    let trim = |v: f64| {
        let t = format!("{v:.1}");
        let under = t.parse::<f64>().is_ok_and(|r| r < 120.0);
        (t.strip_suffix(".0").map_or(t.clone(), str::to_owned), under)
    };
    match (trim(s), trim(s / 60.0)) {
        ((secs, true), _) => format!("{secs} s"),
        (_, (mins, true)) => format!("{mins} min"),
        _ => format!("{} h", trim(s / 3600.0).0),
    }
}

/// `coord`'s own ticks for about `n` labels, less each one whose label reads as the one before
/// it: a log axis ends one decade's steps on the next decade's first tick (10 × (1 + 9), then
/// 100), which drew `100 s` twice, and rounding can make two close ticks read alike.
fn distinct_ticks(
    coord: &impl Ranged<ValueType = f64>,
    n: usize,
    label: &dyn Fn(f64) -> String,
) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut last = None;
    for v in coord.key_points(BoldPoints(n)) {
        let text = label(v);
        if last.as_ref() != Some(&text) {
            ticks.push(v);
            last = Some(text);
        }
    }
    ticks
}

fn draw_capacity(
    svg: &mut String,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(&str, Vec<(f64, f64)>)],
    limit_s: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::with_string(svg, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let pts = || series.iter().flat_map(|(_, p)| p.iter());
    if pts().next().is_none() {
        root.draw(&Text::new(
            format!("{title}: no runs"),
            (20, 30),
            ("sans-serif", 18),
        ))?;
        root.present()?;
        return Ok(());
    }
    // Log axes need positive ranges; a latency of 0 is drawn at the floor.
    let floor = 0.1f64;
    let x_max = pts().map(|p| p.0).fold(1.0f64, f64::max) * 1.5;
    // From 0.8 (one user, with room), or lower when a load falls below it (a slow rate).
    let x_min = pts()
        .map(|p| p.0)
        .filter(|x| *x > 0.0)
        .fold(0.8f64, |m, x| m.min(x / 1.25));
    let y_max = pts().map(|p| p.1).fold(limit_s, f64::max).max(floor) * 1.5;
    let y_min = pts()
        .map(|p| p.1.max(floor))
        .fold(limit_s, f64::min)
        .max(floor)
        / 1.5;
    let (x_range, y_range) = ((x_min..x_max).log_scale(), (y_min..y_max).log_scale());
    let x_label = |x: f64| format!("{x:.0}");
    let x_ticks = distinct_ticks(&LogCoord::from(x_range.clone()), 11, &x_label);
    let y_ticks = distinct_ticks(&LogCoord::from(y_range.clone()), 12, &seconds_label);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .margin_right(36)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            x_range.with_key_points(x_ticks),
            y_range.with_key_points(y_ticks),
        )?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .light_line_style(WHITE)
        .x_label_formatter(&|x| x_label(*x))
        .y_label_formatter(&|y| seconds_label(*y))
        .draw()?;
    let grey = RGBColor(0x60, 0x60, 0x60);
    chart
        .draw_series(DashedLineSeries::new(
            [(x_min, limit_s), (x_max, limit_s)],
            8,
            6,
            grey.stroke_width(1),
        ))?
        .label(format!("limit {}", seconds_label(limit_s)))
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], grey.stroke_width(1)));
    for (i, (label, points)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let points: Vec<(f64, f64)> = points.iter().map(|&(x, y)| (x, y.max(floor))).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?
            .label(*label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
        chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, colour.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// One panel of [`seeds_svg`]: its label, whether its values are seconds (drawn on a log axis,
/// as latencies run from seconds to hours) or plain numbers, and `values[p][k]`, policy `p`'s
/// figure with the `k`-th seed (`None` where that run has none).
#[derive(Debug)]
pub struct SeedPanel<'a> {
    /// The y axis' label.
    pub label: &'a str,
    /// Seconds on a log axis, or plain numbers on a linear one.
    pub seconds: bool,
    /// Per policy, per seed.
    pub values: Vec<Vec<Option<f64>>>,
}

/// An SVG chart for `compare --seeds`: a panel per metric, a column per policy, a dot per seed
/// and a bar at the median, so a policy's spread over seeds shows next to the others'.
pub fn seeds_svg(title: &str, policies: &[&str], panels: &[SeedPanel<'_>]) -> String {
    let mut svg = String::new();
    // As in `percentile_svg`: a drawing error is a plotting bug, not worth a panic.
    let _ = draw_seeds(&mut svg, title, policies, panels);
    svg
}

fn draw_seeds(
    svg: &mut String,
    title: &str,
    policies: &[&str],
    panels: &[SeedPanel<'_>],
) -> Result<(), Box<dyn std::error::Error>> {
    let height = 40 + 220 * panels.len().max(1) as u32;
    let root = SVGBackend::with_string(svg, (900, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 20))?;
    let (x_lo, x_hi) = (-0.5, policies.len() as f64 - 0.5);
    for (area, panel) in root
        .split_evenly((panels.len().max(1), 1))
        .iter()
        .zip(panels)
    {
        // A dot per seed, spread across its policy's column so equal figures stay visible.
        let mut dots = Vec::new();
        let mut bars = Vec::new();
        for (p, seeds) in panel.values.iter().enumerate() {
            let n = seeds.len().max(1) as f64;
            for (k, v) in seeds.iter().enumerate() {
                if let Some(v) = v {
                    dots.push((p, p as f64 - 0.2 + 0.4 * (k as f64 + 0.5) / n, *v));
                }
            }
            let present: Vec<f64> = seeds.iter().flatten().copied().collect();
            if let Some(m) = crate::seeds::median(&present) {
                bars.push((p, m));
            }
        }
        let all = || dots.iter().map(|d| d.2);
        let mut chart = ChartBuilder::on(area);
        chart
            .margin(10)
            .margin_right(36)
            .x_label_area_size(30)
            .y_label_area_size(80);
        if panel.seconds {
            // Log axes need positive ranges; a latency of 0 is drawn at the floor.
            let floor = 0.1f64;
            let hi = all().fold(floor, f64::max) * 1.5;
            let lo = all().map(|v| v.max(floor)).fold(hi, f64::min) / 1.5;
            let y_range = (lo..hi).log_scale();
            let ticks = distinct_ticks(&LogCoord::from(y_range.clone()), 8, &seconds_label);
            let mut chart = chart.build_cartesian_2d(x_lo..x_hi, y_range.with_key_points(ticks))?;
            seed_marks(
                &mut chart,
                panel.label,
                policies,
                &seconds_label,
                &dots,
                &bars,
                floor,
            )?;
        } else {
            let hi = all().fold(0.0f64, f64::max);
            let hi = if hi > 0.0 { hi * 1.1 } else { 1.0 };
            let mut chart = chart.build_cartesian_2d(x_lo..x_hi, 0.0f64..hi)?;
            let number = |y: f64| format!("{y:.2}");
            seed_marks(
                &mut chart,
                panel.label,
                policies,
                &number,
                &dots,
                &bars,
                0.0,
            )?;
        }
    }
    root.present()?;
    Ok(())
}

/// One [`seeds_svg`] panel's axes (a column per policy) and marks, on a log or a linear y axis: the dots
/// `(policy, x, value)` and the median bars `(policy, value)`, values below `floor` drawn at it.
fn seed_marks<Y: Ranged<ValueType = f64> + ValueFormatter<f64>>(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<RangedCoordf64, Y>>,
    y_desc: &str,
    policies: &[&str],
    y_label: &dyn Fn(f64) -> String,
    dots: &[(usize, f64, f64)],
    bars: &[(usize, f64)],
    floor: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    // Policies sit at whole positions; only those are labelled.
    let category = |x: &f64| -> String {
        let i = x.round();
        if (x - i).abs() > 1e-6 || i < 0.0 {
            return String::new();
        }
        policies
            .get(i as usize)
            .map_or(String::new(), |p| (*p).to_owned())
    };
    let colour = |p: usize| COLOURS[p % COLOURS.len()];
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(WHITE)
        .x_labels(policies.len() + 1)
        .x_label_formatter(&category)
        .y_desc(y_desc)
        .y_label_formatter(&|y| y_label(*y))
        .draw()?;
    chart.draw_series(
        dots.iter()
            .map(|&(p, x, v)| Circle::new((x, v.max(floor)), 3, colour(p).filled())),
    )?;
    chart.draw_series(bars.iter().map(|&(p, m)| {
        let (x, y) = (p as f64, m.max(floor));
        PathElement::new([(x - 0.3, y), (x + 0.3, y)], colour(p).stroke_width(2))
    }))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_match_the_hdrhistogram_scale() {
        let got: Vec<String> = [1.0, 10.0, 100.0, 1000.0, 10_000.0]
            .map(percentile_label)
            .to_vec();
        assert_eq!(got, ["0%", "90%", "99%", "99.9%", "99.99%"]);
    }

    #[test]
    fn one_line_per_run_and_a_note_for_no_data() {
        let mut a = crate::results::new_histogram();
        let mut b = crate::results::new_histogram();
        for v in 1..=1000u64 {
            let _ = a.record(v * 10);
            let _ = b.record(v * 20);
        }
        let svg = percentile_svg("upload complete", &[("tagstorm", &a), ("seed-current", &b)]);
        assert!(svg.starts_with("<svg"), "{}", &svg[..40.min(svg.len())]);
        assert!(svg.contains("tagstorm") && svg.contains("seed-current"));
        // Each series draws its curve and its legend mark in its own colour; the grid is black.
        for colour in ["#D62728", "#1F77B4"] {
            assert_eq!(
                svg.matches(&format!("stroke=\"{colour}\"")).count(),
                2,
                "{colour}"
            );
        }
        assert!(!svg.contains("#2CA02C"), "no third series");
        let empty = crate::results::new_histogram();
        assert!(percentile_svg("x", &[("p", &empty)]).contains("no samples"));
    }

    #[test]
    fn sweep_panels_place_numbers_at_their_value_and_label_other_values() {
        let texts = |svg: &str| -> Vec<String> {
            svg.split("<text")
                .skip(1)
                .filter_map(|t| t.split('>').nth(1)?.split('<').next())
                .map(|t| t.trim().to_owned())
                .collect()
        };
        let values: Vec<String> = ["10", "20", "40"].map(String::from).to_vec();
        let svg = sweep_svg(
            "sweep",
            "policy.realtime_max_images",
            &values,
            &[
                ("image tagged p95 (s)", vec![Some(3.0), None, Some(9.0)]),
                ("cost (USD)", vec![Some(0.1), Some(0.2), Some(0.4)]),
            ],
        );
        // One dot per figure: the missing latency has none.
        assert_eq!(svg.matches("<circle").count(), 5);
        let labels = texts(&svg);
        assert!(labels.iter().any(|t| t == "20"), "{labels:?}");
        assert!(!labels.iter().any(|t| t == "20.0"), "{labels:?}");
        for t in [
            "image tagged p95 (s)",
            "cost (USD)",
            "policy.realtime_max_images",
        ] {
            assert!(labels.iter().any(|l| l == t), "{t}: {labels:?}");
        }
        let words: Vec<String> = ["\"low\"", "\"high\""].map(String::from).to_vec();
        let svg = sweep_svg(
            "s",
            "images.detail",
            &words,
            &[("cost (USD)", vec![Some(1.0), Some(2.0)])],
        );
        let labels = texts(&svg);
        for t in ["&quot;low&quot;", "&quot;high&quot;"] {
            assert!(labels.iter().any(|l| l == t), "{t}: {labels:?}");
        }
    }

    #[test]
    fn capacity_chart_draws_one_line_per_tier_the_limit_and_every_point() {
        let svg = capacity_svg(
            "capacity",
            "concurrent users",
            "p95 (s)",
            &[
                ("tier 1", vec![(1.0, 10.0), (2.0, 20.0), (4.0, 200.0)]),
                ("tier 2", vec![(1.0, 5.0), (2.0, 0.0)]),
            ],
            120.0,
        );
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<circle").count(), 5, "one dot per run");
        for t in ["tier 1", "tier 2", "limit 2 min", "concurrent users"] {
            assert!(svg.contains(t), "{t}");
        }
        assert_eq!(seconds_label(0.5), "0.5 s");
        assert_eq!(seconds_label(90.0), "90 s");
        assert_eq!(seconds_label(9000.0), "2.5 h");
        // The unit follows the rounded figure: never `120 s` or `120 min`.
        for (s, want) in [
            (119.94, "119.9 s"),
            (119.96, "2 min"),
            (120.0, "2 min"),
            (7196.9, "119.9 min"),
            (7197.0, "2 h"),
            (7200.0, "2 h"),
        ] {
            assert_eq!(seconds_label(s), want, "{s} s");
        }
        assert!(capacity_svg("c", "users", "p95", &[], 120.0).contains("no runs"));
    }

    #[test]
    fn capacity_chart_draws_each_axis_label_once() {
        // A log axis's ticks end one decade's steps on the next decade (10 × (1 + 9) and 100),
        // which both read `100 s` on y, and `10` on x when the users span one decade.
        for (x_top, y_top) in [(4.0, 300.0), (8.0, 80.0), (300.0, 3000.0), (40.0, 9000.0)] {
            let svg = capacity_svg(
                "capacity",
                "concurrent users",
                "p95 (s)",
                &[("tier 1", vec![(1.0, 8.0), (x_top, y_top)])],
                120.0,
            );
            let labels: Vec<String> = svg
                .split("<text")
                .skip(1)
                .filter_map(|t| t.split('>').nth(1)?.split('<').next())
                .map(|t| t.trim().to_owned())
                .collect();
            for l in &labels {
                assert_eq!(
                    labels.iter().filter(|m| *m == l).count(),
                    1,
                    "{l:?} in {labels:?}"
                );
            }
            // The axes are still labelled.
            assert!(labels.iter().any(|l| l == "1"), "{labels:?}");
            let y_labels = labels
                .iter()
                .filter(|l| {
                    !l.starts_with("limit ") && [" s", " min", " h"].iter().any(|u| l.ends_with(u))
                })
                .count();
            assert!(y_labels >= 3, "{labels:?}");
        }
    }

    #[test]
    fn seeds_chart_draws_a_dot_per_seed_and_a_bar_per_policy() {
        let svg = seeds_svg(
            "workday over 3 seeds",
            &["seed-current", "tagstorm"],
            &[
                SeedPanel {
                    label: "upload complete p50",
                    seconds: true,
                    values: vec![
                        vec![Some(10.0), Some(12.0), Some(3600.0)],
                        vec![Some(600.0), None, Some(0.0)],
                    ],
                },
                SeedPanel {
                    label: "cost (USD)",
                    seconds: false,
                    values: vec![vec![Some(18.0), Some(19.0), Some(20.0)]; 2],
                },
            ],
        );
        assert!(svg.starts_with("<svg"));
        // Five latencies (one run had none) and six costs.
        assert_eq!(svg.matches("<circle").count(), 11);
        // A median bar per policy and panel, in the policy's colour.
        for colour in ["#D62728", "#1F77B4"] {
            assert_eq!(
                svg.matches(&format!(
                    "<polyline fill=\"none\" opacity=\"1\" stroke=\"{colour}\" stroke-width=\"2\""
                ))
                .count(),
                2,
                "{colour}"
            );
        }
        for t in [
            "seed-current",
            "tagstorm",
            "upload complete p50",
            "cost (USD)",
        ] {
            assert!(svg.contains(t), "{t}");
        }
        let labels: Vec<&str> = svg
            .split("<text")
            .skip(1)
            .filter_map(|t| t.split('>').nth(1)?.split('<').next())
            .map(str::trim)
            .collect();
        // Latencies read in seconds on a log axis; each panel names the policies under it.
        assert!(
            labels.contains(&"10 s") && labels.contains(&"100 s"),
            "{labels:?}"
        );
        for p in ["seed-current", "tagstorm"] {
            assert_eq!(labels.iter().filter(|l| **l == p).count(), 2, "{labels:?}");
        }
    }
}
