//! The benchmark's two plots, as PNG: time to detect against effect size, and false
//! rollbacks against traffic.

use std::path::Path;

use plotters::prelude::*;

use crate::judges::NAMES;
use crate::scenarios::{self, Change, Rate, Scenario};
use crate::{row, run_many};

const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(140, 86, 75),
];

/// Runs the sweeps (`runs` rollouts a point) and writes `detection.png` and
/// `false-rollbacks.png` into `out`.
pub fn draw(out: &Path, runs: usize) {
    let Ok(font) = std::fs::read("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf") else {
        eprintln!("no DejaVu Sans font (apt fonts-dejavu-core): plots skipped");
        return;
    };
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    if plotters::style::register_font("sans-serif", FontStyle::Normal, font).is_err() {
        eprintln!("font not usable: plots skipped");
        return;
    }

    let ratios = [1.25, 1.5, 2.0, 3.0, 4.0, 6.0, 10.0];
    let detection: Vec<Vec<f64>> = {
        let mut per_judge = vec![Vec::new(); NAMES.len()];
        for (k, &ratio) in ratios.iter().enumerate() {
            let s = Scenario {
                change: Change::ErrorsTimes(ratio),
                ..scenarios::healthy()[0].clone()
            };
            for (j, verdicts) in run_many(&s, runs, 50_000_000 + k as u64 * 10_000)
                .iter()
                .enumerate()
            {
                per_judge[j].push(row(verdicts).median_s.unwrap_or(600.0));
            }
            eprintln!("detection sweep: {ratio}x done");
        }
        per_judge
    };
    line_chart(
        &out.join("detection.png"),
        Chart {
            title: "Median time to roll back: canary errors x stable's (1 %), 10 % canary, 200 req/s",
            x_label: "canary error rate / stable's",
            y_label: "seconds (600 = not caught in 10 min)",
            xs: &ratios,
            label: |r| format!("{r}x"),
            y: 0.0..620.0,
        },
        &detection,
    );

    let rates = [20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];
    let false_rollbacks: Vec<Vec<f64>> = {
        let mut per_judge = vec![Vec::new(); NAMES.len()];
        for (k, &rate) in rates.iter().enumerate() {
            let s = Scenario {
                rate: Rate::Constant(rate),
                ..scenarios::healthy()[0].clone()
            };
            for (j, verdicts) in run_many(&s, runs, 60_000_000 + k as u64 * 10_000)
                .iter()
                .enumerate()
            {
                per_judge[j].push(row(verdicts).rolled_back * 100.0);
            }
            eprintln!("false rollback sweep: {rate} req/s done");
        }
        per_judge
    };
    line_chart(
        &out.join("false-rollbacks.png"),
        Chart {
            title: "False rollbacks of a healthy canary (1 % errors on both) in 10 min at 10 %",
            x_label: "requests per second, total (a tenth to the canary)",
            y_label: "% of runs rolled back",
            xs: &rates,
            label: |r| format!("{r}"),
            y: 0.0..101.0,
        },
        &false_rollbacks,
    );
}

/// What a chart shows: one line per judge over the points `xs` (equally spaced, labelled
/// with `label`).
struct Chart<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    xs: &'a [f64],
    label: fn(f64) -> String,
    y: std::ops::Range<f64>,
}

fn line_chart(path: &Path, c: Chart<'_>, series: &[Vec<f64>]) {
    let Chart {
        title,
        x_label,
        y_label,
        xs,
        label,
        y,
    } = c;
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error + '_>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.3..(xs.len() as f64 - 0.7), y)?;
        chart
            .configure_mesh()
            .x_labels(xs.len())
            .x_label_formatter(&|i| {
                let i = i.round();
                if (i - i.round()).abs() < 1e-6 && i >= 0.0 && (i as usize) < xs.len() {
                    label(xs[i as usize])
                } else {
                    String::new()
                }
            })
            .x_desc(x_label)
            .y_desc(y_label)
            .label_style(("sans-serif", 14))
            .draw()?;
        for (i, (values, name)) in series.iter().zip(NAMES).enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let points: Vec<(f64, f64)> = values
                .iter()
                .enumerate()
                .map(|(k, &v)| (k as f64, v))
                .collect();
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    colour.stroke_width(3),
                ))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(3))
                });
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, colour.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
        root.present()?;
        Ok(())
    };
    match draw() {
        Ok(()) => eprintln!("wrote {}", path.display()),
        Err(e) => eprintln!("could not draw {}: {e}", path.display()),
    }
}
