//! The status page's charts, drawn here as inline SVG (no script, no external file):
//! messages received, recipients delivered, deferred and bounced per minute, and the
//! queue's size, over the last hour (60 points) and the last day (1,440 points), from the
//! supervisor's minute history (`crate::history`).

use crate::history::Minute;
use std::fmt::Write as _;

const WIDTH: u32 = 720;
const HEIGHT: u32 = 160;
/// Room for the axis labels.
const LEFT: u32 = 48;
const BOTTOM: u32 = 20;

/// One line of a chart.
struct Series {
    label: &'static str,
    color: &'static str,
    values: Vec<u64>,
}

/// The two charts for one span (`hour` or `day`): traffic per minute, and the queue.
pub fn span(id: &str, title: &str, minutes: &[Minute]) -> String {
    type Pick = fn(&Minute) -> u64;
    let series = |list: &[(&'static str, &'static str, Pick)]| -> Vec<Series> {
        list.iter()
            .map(|&(label, color, pick)| Series {
                label,
                color,
                values: minutes.iter().map(pick).collect(),
            })
            .collect()
    };
    let traffic = series(&[
        ("received", "#05a", |m| m.received),
        ("delivered", "#070", |m| m.delivered),
        ("deferred", "#d80", |m| m.deferred),
        ("bounced", "#b00", |m| m.bounced),
    ]);
    let queue = series(&[("queued", "#555", |m| m.queued)]);
    let span_label = span_label(minutes.len());
    format!(
        "<figure id=\"chart-{id}\"><figcaption>{title}: per minute</figcaption>{}\
         <figcaption>{title}: messages in the queue</figcaption>{}</figure>",
        chart(&format!("{id}-traffic"), &traffic, &span_label),
        chart(&format!("{id}-queue"), &queue, &span_label),
    )
}

fn span_label(minutes: usize) -> String {
    if minutes >= 120 {
        format!("{} h ago", minutes / 60)
    } else {
        format!("{minutes} min ago")
    }
}

/// A line chart of `series` over the same minutes, with its scale and a legend.
fn chart(id: &str, series: &[Series], span_label: &str) -> String {
    let top = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1);
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg id=\"{id}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" font-family=\"sans-serif\" font-size=\"11\">"
    );
    svg.push_str(&axes(top, span_label));
    for s in series {
        svg.push_str(&polyline(s, top));
    }
    svg.push_str(&legend(series));
    svg.push_str("</svg>");
    svg
}

/// The plot area's frame, the top value and the time labels.
fn axes(top: u64, span_label: &str) -> String {
    let (right, bottom) = (WIDTH - 4, HEIGHT - BOTTOM);
    format!(
        "<rect x=\"{LEFT}\" y=\"4\" width=\"{}\" height=\"{}\" fill=\"#fafafa\" stroke=\"#ccc\"/>\
         <text x=\"{}\" y=\"14\" text-anchor=\"end\">{top}</text>\
         <text x=\"{}\" y=\"{bottom}\" text-anchor=\"end\">0</text>\
         <text x=\"{LEFT}\" y=\"{}\">{span_label}</text>\
         <text x=\"{right}\" y=\"{}\" text-anchor=\"end\">now</text>",
        right - LEFT,
        bottom - 4,
        LEFT - 4,
        LEFT - 4,
        HEIGHT - 4,
        HEIGHT - 4,
    )
}

/// One series as a polyline over the plot area (values scaled to `top`).
fn polyline(s: &Series, top: u64) -> String {
    let plot_w = f64::from(WIDTH - 4 - LEFT);
    let plot_h = f64::from(HEIGHT - BOTTOM - 8);
    let n = s.values.len().max(2) - 1;
    let mut points = String::new();
    for (i, v) in s.values.iter().enumerate() {
        let x = f64::from(LEFT) + plot_w * i as f64 / n as f64;
        let y = f64::from(HEIGHT - BOTTOM) - plot_h * (*v as f64) / top as f64;
        let _ = write!(points, "{x:.1},{y:.1} ");
    }
    format!(
        "<polyline class=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>",
        s.label,
        s.color,
        points.trim_end()
    )
}

/// The series' names and their totals over the span, in their colours.
fn legend(series: &[Series]) -> String {
    let mut out = String::new();
    let mut x = LEFT + 8;
    for s in series {
        let total: u64 = s.values.iter().sum();
        let text = if s.label == "queued" {
            format!("{} now", s.values.last().copied().unwrap_or(0))
        } else {
            format!("{} {total}", s.label)
        };
        let _ = write!(
            out,
            "<rect x=\"{x}\" y=\"10\" width=\"10\" height=\"10\" fill=\"{}\"/>\
             <text x=\"{}\" y=\"19\">{text}</text>",
            s.color,
            x + 14
        );
        x += 16 + 7 * text.len() as u32;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_has_both_charts_with_every_series() {
        let minutes: Vec<Minute> = (0..60)
            .map(|i| Minute {
                start_ms: i * 60_000,
                received: i,
                delivered: i / 2,
                queued: 3,
                ..Minute::default()
            })
            .collect();
        let html = span("hour", "Last hour", &minutes);
        for class in ["received", "delivered", "deferred", "bounced", "queued"] {
            assert!(
                html.contains(&format!("<polyline class=\"{class}\"")),
                "{class}"
            );
        }
        assert!(html.contains(">received 1770<"), "{html}");
        assert!(html.contains(">3 now<"), "{html}");
        assert!(!html.contains("<script"));
        // 60 points per line.
        let line = html.split("<polyline class=\"received\"").nth(1).unwrap();
        let points = line
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(points.split(' ').count(), 60);
    }
}
