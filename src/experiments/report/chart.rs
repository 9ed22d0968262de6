//! SVG charts (plotters): the paper's ODE-error-against-quality scatter and training-loss curves.

use anyhow::{anyhow, Result};
use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;
use std::path::Path;

/// Eight distinguishable colours (the study's charts have up to 2 methods × 4 step counts).
const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// One named series of (x, y) points with an optional label per point.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64, String)>,
}

fn bounds(series: &[Series], log_y: bool) -> (f64, f64, f64, f64) {
    let pts = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y, _) in pts.filter(|p| p.0.is_finite() && p.1.is_finite() && (!log_y || p.1 > 0.0)) {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        return (0.0, 1.0, 1e-3, 1.0);
    }
    let pad = |a: f64, b: f64| ((b - a).abs() * 0.08).max(1e-9);
    let (px, py) = (pad(x0, x1), pad(y0, y1));
    if log_y {
        (x0 - px, x1 + px, y0 / 1.5, y1 * 1.5)
    } else {
        (x0 - px, x1 + px, y0 - py, y1 + py)
    }
}

/// Draws the mesh, every series (points or lines, with their point labels) and the legend.
fn draw<'a, 'b: 'a, X, Y>(
    mut chart: ChartContext<'a, SVGBackend<'b>, Cartesian2d<X, Y>>,
    (x_label, y_label): (&str, &str),
    series: &[Series],
    lines: bool,
    log_y: bool,
) -> Result<()>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        // A log axis has no place for values ≤ 0.
        let shown = |p: &&(f64, f64, String)| !log_y || p.1 > 0.0;
        let pts: Vec<(f64, f64)> = s.points.iter().filter(shown).map(|p| (p.0, p.1)).collect();
        let legend = if lines {
            chart
                .draw_series(LineSeries::new(pts.clone(), colour.stroke_width(2)))
                .map_err(|e| anyhow!("{e:?}"))?
        } else {
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 5, colour.filled())))
                .map_err(|e| anyhow!("{e:?}"))?
        };
        legend
            .label(s.name.clone())
            .legend(move |(x, y)| Circle::new((x + 8, y), 5, colour.filled()));
        let labels = s.points.iter().filter(|p| !p.2.is_empty()).filter(shown);
        chart
            .draw_series(labels.map(|p| Text::new(p.2.clone(), (p.0, p.1), ("sans-serif", 13).into_font())))
            .map_err(|e| anyhow!("{e:?}"))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;
    Ok(())
}

/// Scatter (`lines = false`) or line chart of several series, written as SVG.
pub fn write_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    lines: bool,
    log_y: bool,
) -> Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
        let (x0, x1, y0, y1) = bounds(series, log_y);
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70);
        let labels = (x_label, y_label);
        if log_y {
            let chart = builder
                .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
                .map_err(|e| anyhow!("{e:?}"))?;
            draw(chart, labels, series, lines, log_y)?;
        } else {
            let chart = builder
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(|e| anyhow!("{e:?}"))?;
            draw(chart, labels, series, lines, log_y)?;
        }
        root.present().map_err(|e| anyhow!("{e:?}"))?;
    }
    crate::runtime::files::write_atomic(path, svg.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_contains_every_series_and_label() {
        let dir = std::env::temp_dir().join(format!("dcm-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.svg");
        let s = vec![
            Series {
                name: "CM".into(),
                points: vec![(1.0, 0.3, "1".into()), (2.0, 0.2, "2".into())],
            },
            Series {
                name: "Direct".into(),
                points: vec![(1.5, 0.1, "1".into())],
            },
        ];
        write_chart(&p, "ODE error vs FD", "FD", "ODE error", &s, false, true).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("CM") && svg.contains("Direct") && svg.contains("ODE error vs FD")
        );
        assert_eq!(svg.matches("<circle").count(), 3 + 2, "3 points and 2 legend markers");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
