//! The soak's samples as an SVG chart: broker RSS, open files and the stream's deliveries over
//! time, in three panels sharing the time axis, the warm-up shaded and the memory band drawn.
//!
//! Written by hand, a few hundred bytes of markup per element: a plotting crate would bring
//! far more code than this one picture needs. Long runs are thinned to the smallest and largest
//! value of each pixel column, so a day of samples draws like a minute of them.

use std::fmt::Write;

use super::report::{Memory, Sample};

/// Canvas width, and the plot's margins within it.
const WIDTH: f64 = 960.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 80.0;
/// Height of each panel, and the gap under it (for its title and the next one's).
const PANEL: f64 = 150.0;
const GAP: f64 = 46.0;
/// Room for the time axis's labels under the last panel.
const BOTTOM: f64 = 48.0;
/// About how many divisions each axis has.
const VALUE_DIVISIONS: f64 = 5.0;
const TIME_DIVISIONS: f64 = 10.0;

/// What the chart shows besides the samples.
pub struct Marks<'a> {
    /// The first line: what was run.
    pub title: &'a str,
    /// The second line: the verdict.
    pub subtitle: &'a str,
    /// Seconds of warm-up, shaded.
    pub warmup_s: f64,
    /// The memory verdict: its median and band top are drawn on the RSS panel.
    pub memory: Option<Memory>,
    /// Open files before the load, drawn on the files panel.
    pub files_baseline: Option<usize>,
}

/// One panel: a series and its horizontal marks.
struct Panel<'a> {
    title: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
    /// Horizontal lines: value, label, dashed.
    lines: Vec<(f64, String, bool)>,
}

/// The chart, as an SVG document.
pub fn svg(samples: &[Sample], marks: &Marks<'_>) -> String {
    const MIB: f64 = (1 << 20) as f64;
    let mut rss = Panel {
        title: "broker RSS (MiB)",
        color: "#1f77b4",
        points: samples
            .iter()
            .filter_map(|s| Some((s.t_s, s.rss_bytes? as f64 / MIB)))
            .collect(),
        lines: Vec::new(),
    };
    if let Some(m) = marks.memory {
        let median = m.median_bytes as f64 / MIB;
        let limit = m.limit_bytes as f64 / MIB;
        rss.lines
            .push((median, format!("median {median:.1}"), false));
        rss.lines.push((
            limit,
            format!(
                "band top {limit:.1} ({:.2} × median)",
                limit / median.max(1e-9)
            ),
            true,
        ));
    }
    let mut files = Panel {
        title: "broker open files",
        color: "#2ca02c",
        points: samples
            .iter()
            .filter_map(|s| Some((s.t_s, s.open_files? as f64)))
            .collect(),
        lines: Vec::new(),
    };
    if let Some(b) = marks.files_baseline {
        files
            .lines
            .push((b as f64, format!("before the load: {b}"), true));
    }
    let load = Panel {
        title: "stream deliveries per second (thousands)",
        color: "#9467bd",
        points: samples
            .iter()
            .map(|s| (s.t_s, s.deliveries_per_s / 1000.0))
            .collect(),
        lines: Vec::new(),
    };
    let panels = [rss, files, load];
    let height = TOP + panels.len() as f64 * (PANEL + GAP) - GAP + BOTTOM;
    let t_end = samples.iter().map(|s| s.t_s).fold(1.0, f64::max);
    let time = TimeAxis::new(t_end);

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="20" font-size="15" font-weight="bold">{}</text>"#,
        escape(marks.title)
    );
    let _ = writeln!(
        out,
        r##"<text x="{LEFT}" y="38" fill="#444">{}</text>"##,
        escape(marks.subtitle)
    );
    for (i, panel) in panels.iter().enumerate() {
        let top = TOP + i as f64 * (PANEL + GAP);
        let last = i + 1 == panels.len();
        draw_panel(&mut out, panel, top, &time, marks.warmup_s, i == 0, last);
    }
    out.push_str("</svg>\n");
    out
}

/// The time axis: its unit (seconds, minutes or hours, by the run's length) and its end.
struct TimeAxis {
    end_s: f64,
    unit_s: f64,
    unit: &'static str,
}

impl TimeAxis {
    fn new(end_s: f64) -> Self {
        let (unit_s, unit) = if end_s <= 300.0 {
            (1.0, "s")
        } else if end_s <= 3.0 * 3600.0 {
            (60.0, "min")
        } else {
            (3600.0, "h")
        };
        Self {
            end_s,
            unit_s,
            unit,
        }
    }

    fn x(&self, t_s: f64) -> f64 {
        LEFT + (t_s / self.end_s).clamp(0.0, 1.0) * (WIDTH - LEFT - RIGHT)
    }
}

fn draw_panel(
    out: &mut String,
    panel: &Panel<'_>,
    top: f64,
    time: &TimeAxis,
    warmup_s: f64,
    first: bool,
    last: bool,
) {
    let bottom = top + PANEL;
    let (x0, x1) = (LEFT, WIDTH - RIGHT);
    let _ = writeln!(
        out,
        r#"<text x="{x0}" y="{}" font-weight="bold">{}</text>"#,
        top - 8.0,
        escape(panel.title)
    );
    // Warm-up, shaded behind everything (and named in the first panel).
    let warm_x = time.x(warmup_s);
    if warmup_s > 0.0 {
        let w = warm_x - x0;
        let _ = writeln!(
            out,
            r##"<rect x="{x0}" y="{top}" width="{w:.1}" height="{PANEL}" fill="#ececec"/>"##
        );
        if first {
            let _ = writeln!(
                out,
                r##"<text x="{:.1}" y="{:.1}" fill="#777" text-anchor="middle">warm-up</text>"##,
                x0 + w / 2.0,
                top + 16.0
            );
        }
    }
    let data_max = panel
        .points
        .iter()
        .map(|p| p.1)
        .chain(panel.lines.iter().map(|l| l.0))
        .fold(0.0, f64::max);
    let (step, y_max) = nice_axis(data_max, VALUE_DIVISIONS);
    let y = |v: f64| bottom - v / y_max * PANEL;
    // Value grid and labels (none for a series that was not measured).
    let mut v = 0.0;
    while v <= y_max + step / 2.0 && !panel.points.is_empty() {
        let _ = writeln!(
            out,
            r##"<line x1="{x0}" y1="{0:.1}" x2="{x1}" y2="{0:.1}" stroke="#e0e0e0"/><text x="{1}" y="{2:.1}" text-anchor="end" fill="#444">{3}</text>"##,
            y(v),
            x0 - 6.0,
            y(v) + 4.0,
            number(v, step)
        );
        v += step;
    }
    // Time grid; its labels under the last panel only.
    let (t_step, _) = nice_axis(time.end_s / time.unit_s, TIME_DIVISIONS);
    let mut t = 0.0;
    while t * time.unit_s <= time.end_s + 1e-9 {
        let x = time.x(t * time.unit_s);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{bottom}" stroke="#e0e0e0"/>"##
        );
        if last {
            let _ = writeln!(
                out,
                r##"<text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#444">{}</text>"##,
                bottom + 16.0,
                number(t, t_step)
            );
        }
        t += t_step;
    }
    if last {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">time ({})</text>"#,
            (x0 + x1) / 2.0,
            bottom + 36.0,
            time.unit
        );
    }
    // Marks: dashed lines are limits, across the whole run; solid ones hold after the warm-up.
    for (value, label, dashed) in &panel.lines {
        let (from, style) = if *dashed {
            (x0, r##"stroke="#d62728" stroke-dasharray="6 4""##)
        } else {
            (warm_x, r##"stroke="#555" stroke-dasharray="2 3""##)
        };
        let color = if *dashed { "#d62728" } else { "#555" };
        let _ = writeln!(
            out,
            r##"<line x1="{from:.1}" y1="{0:.1}" x2="{x1}" y2="{0:.1}" {style}/><text x="{2}" y="{1:.1}" text-anchor="end" fill="{color}">{3}</text>"##,
            y(*value),
            y(*value) - 5.0,
            x1 - 4.0,
            escape(label)
        );
    }
    if panel.points.is_empty() {
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#888">not measured (no broker process to read)</text>"##,
            (x0 + x1) / 2.0,
            top + PANEL / 2.0
        );
    } else {
        let path: Vec<String> = thin(&panel.points, |t| time.x(t))
            .iter()
            .map(|&(x, v)| format!("{x:.1},{:.1}", y(v)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
            panel.color,
            path.join(" ")
        );
    }
    let _ = writeln!(
        out,
        r##"<rect x="{x0}" y="{top}" width="{}" height="{PANEL}" fill="none" stroke="#888"/>"##,
        x1 - x0
    );
}

/// Points placed at their pixel column; where several share a column, the smallest and the
/// largest stand for them all (in the order they came), so that no peak is lost.
fn thin(points: &[(f64, f64)], x_of: impl Fn(f64) -> f64) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    let mut column: Option<(i64, usize, usize)> = None; // pixel, index of min, index of max
    let flush = |out: &mut Vec<(f64, f64)>, column: (i64, usize, usize)| {
        let (px, lo, hi) = column;
        for i in [lo.min(hi), lo.max(hi)] {
            if out.last() != Some(&(px as f64, points[i].1)) {
                out.push((px as f64, points[i].1));
            }
        }
    };
    for (i, &(t, v)) in points.iter().enumerate() {
        let px = x_of(t).round() as i64;
        if let Some((p, lo, hi)) = &mut column {
            if *p == px {
                if v < points[*lo].1 {
                    *lo = i;
                }
                if v > points[*hi].1 {
                    *hi = i;
                }
                continue;
            }
        }
        if let Some(c) = column.take() {
            flush(&mut out, c);
        }
        column = Some((px, i, i));
    }
    if let Some(c) = column {
        flush(&mut out, c);
    }
    out
}

/// A step of 1, 2 or 5 times a power of ten giving at most about `divisions` divisions, and
/// the axis top: the first step above `max`, with a little headroom.
fn nice_axis(max: f64, divisions: f64) -> (f64, f64) {
    let max = if max > 0.0 && max.is_finite() {
        max
    } else {
        1.0
    };
    let raw = max / divisions;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let top = (max / step).ceil() * step;
    // A little headroom over a value that lands on the top line.
    let top = if top - max < step * 0.05 {
        top + step
    } else {
        top
    };
    (step, top)
}

/// A tick label: as many decimals as the step needs.
fn number(v: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    };
    format!("{v:.decimals$}")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_are_nice() {
        let close = |(a, b): (f64, f64), (c, d): (f64, f64)| {
            assert!((a - c).abs() < 1e-9 && (b - d).abs() < 1e-9, "{a}, {b}")
        };
        close(nice_axis(9.3, 5.0), (2.0, 10.0));
        close(nice_axis(10.0, 5.0), (2.0, 12.0));
        close(nice_axis(120.0, 5.0), (50.0, 150.0));
        close(nice_axis(120.0, 10.0), (20.0, 140.0));
        close(nice_axis(0.0, 5.0), (0.2, 1.2));
        close(nice_axis(0.37, 5.0), (0.1, 0.4));
        assert_eq!(number(0.30000000000000004, 0.1), "0.3");
        assert_eq!(number(150.0, 50.0), "150");
    }

    #[test]
    fn thinning_keeps_each_columns_extremes() {
        // Ten points in two pixel columns.
        let points: Vec<_> = (0..10)
            .map(|i| (i as f64, [3.0, 9.0, 1.0, 5.0, 4.0][i % 5]))
            .collect();
        let thinned = thin(&points, |t| if t < 5.0 { 0.0 } else { 1.0 });
        assert_eq!(thinned, [(0.0, 9.0), (0.0, 1.0), (1.0, 9.0), (1.0, 1.0)]);
        // Points a column apart are kept as they are.
        let sparse = [(0.0, 1.0), (1.0, 2.0)];
        assert_eq!(thin(&sparse, |t| t), sparse);
    }

    #[test]
    fn chart_is_an_svg_with_its_marks() {
        let samples: Vec<_> = (0..=120)
            .map(|t| Sample {
                t_s: t as f64,
                rss_bytes: Some((10 << 20) + t * 1000),
                open_files: Some(60),
                deliveries_per_s: 100_000.0,
                churn_per_s: 20.0,
            })
            .collect();
        let memory = Memory::judge(&samples, 30.0, 1.25);
        let svg = svg(
            &samples,
            &Marks {
                title: "soak 2m <test>",
                subtitle: "pass",
                warmup_s: 30.0,
                memory,
                files_baseline: Some(9),
            },
        );
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("soak 2m &lt;test&gt;"));
        assert!(svg.contains("warm-up"));
        assert!(svg.contains("band top"));
        assert!(svg.contains("before the load: 9"));
        assert!(svg.contains("time (s)"));
        assert_eq!(svg.matches("<polyline").count(), 3);
    }

    #[test]
    fn unmeasured_panels_say_so() {
        let samples = [
            Sample::default(),
            Sample {
                t_s: 1.0,
                ..Sample::default()
            },
        ];
        let svg = svg(
            &samples,
            &Marks {
                title: "t",
                subtitle: "",
                warmup_s: 0.0,
                memory: None,
                files_baseline: None,
            },
        );
        assert_eq!(svg.matches("not measured").count(), 2);
    }
}
