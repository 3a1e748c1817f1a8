//! Inline SVG charts for the console: drawn on the server from numbers the admin API answered,
//! so the pages need no charting library and no script to show them.

use maud::{Markup, html};

/// One bar: its label (axis and tooltip) and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub label: String,
    pub value: f64,
}

/// Chart size in SVG user units.
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 160.0;
/// Room for the axis labels under the bars.
const LABEL_ROOM: f64 = 18.0;

fn finite_max(values: impl Iterator<Item = f64>) -> f64 {
    values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold(0.0, f64::max)
}

/// A bar chart of `bars` (one `<rect>` each, tallest = full height), with `unit` in tooltips.
/// Non-finite or negative values draw as zero; no bars draws a "no data" note.
pub fn bar_chart(id: &str, title: &str, bars: &[Bar], unit: &str) -> Markup {
    let max = finite_max(bars.iter().map(|b| b.value));
    let plot = HEIGHT - LABEL_ROOM;
    let slot = WIDTH / bars.len().max(1) as f64;
    // Label every bar when they fit, else about every tenth.
    let label_every = (bars.len() / 12).max(1);
    html! {
        svg id=(id) class="chart" viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img"
            aria-label=(title) {
            title { (title) }
            @if bars.is_empty() {
                text x=(WIDTH / 2.0) y=(HEIGHT / 2.0) text-anchor="middle" class="note" { "no data" }
            }
            @for (i, b) in bars.iter().enumerate() {
                @let v = if b.value.is_finite() && b.value > 0.0 { b.value } else { 0.0 };
                @let h = if max > 0.0 { plot * v / max } else { 0.0 };
                @let x = slot * i as f64 + slot * 0.1;
                rect class="bar" x=(fmt(x)) y=(fmt(plot - h)) width=(fmt(slot * 0.8))
                    height=(fmt(h)) {
                    title { (b.label) ": " (fmt_value(v)) " " (unit) }
                }
                @if i % label_every == 0 {
                    text x=(fmt(x + slot * 0.4)) y=(fmt(HEIGHT - 4.0)) text-anchor="middle"
                        class="axis" { (b.label) }
                }
            }
        }
    }
}

/// A polyline of `values` over the chart's width (newest last), scaled to the largest value.
pub fn line_points(values: &[f64]) -> String {
    let max = finite_max(values.iter().copied());
    let n = values.len();
    let step = if n > 1 { WIDTH / (n - 1) as f64 } else { 0.0 };
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let v = if v.is_finite() && *v > 0.0 { *v } else { 0.0 };
            let y = if max > 0.0 {
                HEIGHT - (HEIGHT - 4.0) * v / max
            } else {
                HEIGHT
            };
            format!("{},{}", fmt(step * i as f64), fmt(y))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// An empty line chart the overview's script fills (`points` is the initial polyline).
pub fn live_line(id: &str, title: &str, points: &str) -> Markup {
    html! {
        svg id=(id) class="chart" viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img"
            aria-label=(title) {
            title { (title) }
            polyline class="line" fill="none" points=(points) {}
        }
    }
}

fn fmt(x: f64) -> String {
    format!("{x:.1}")
}

fn fmt_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bars(values: &[f64]) -> Vec<Bar> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| Bar {
                label: format!("b{i}"),
                value: *v,
            })
            .collect()
    }

    #[test]
    fn the_tallest_bar_fills_the_plot_and_the_others_scale_to_it() {
        let svg = bar_chart("c", "t", &bars(&[1.0, 4.0, 2.0]), "s").into_string();
        assert_eq!(svg.matches("<rect").count(), 3, "{svg}");
        assert!(
            svg.contains("height=\"142.0\""),
            "largest is full height: {svg}"
        );
        assert!(svg.contains("height=\"35.5\""), "a quarter of it: {svg}");
        assert!(svg.contains("b1: 4 s"), "tooltip: {svg}");
    }

    #[test]
    fn bad_values_draw_as_zero_and_no_bars_say_so() {
        let svg = bar_chart("c", "t", &bars(&[f64::NAN, -3.0, f64::INFINITY]), "s").into_string();
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        assert_eq!(svg.matches("height=\"0.0\"").count(), 3, "{svg}");
        let empty = bar_chart("c", "t", &[], "s").into_string();
        assert!(empty.contains("no data"), "{empty}");
    }

    #[test]
    fn labels_are_escaped() {
        let svg = bar_chart(
            "c",
            "t",
            &[Bar {
                label: "<script>".into(),
                value: 1.0,
            }],
            "s",
        )
        .into_string();
        assert!(
            !svg.contains("<script>") && svg.contains("&lt;script&gt;"),
            "{svg}"
        );
    }

    #[test]
    fn a_line_spans_the_width_and_peaks_at_the_top() {
        assert_eq!(
            line_points(&[0.0, 2.0, 1.0]),
            "0.0,160.0 320.0,4.0 640.0,82.0"
        );
        assert_eq!(line_points(&[]), "");
        assert_eq!(line_points(&[0.0]), "0.0,160.0");
    }
}
