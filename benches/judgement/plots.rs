//! The benchmark's two plots, as PNG: time to detect against effect size, and false
//! rollbacks against traffic.

use std::path::Path;

use plotters::prelude::*;

use crate::judges::NAMES;
use crate::scenarios::{self, Change, Rate, Scenario};
use crate::{row, run_many};

const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
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
    let detection: Vec<Vec<(f64, f64)>> = {
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
                let median = row(verdicts).median_s.unwrap_or(600.0);
                per_judge[j].push((ratio, median));
            }
            eprintln!("detection sweep: {ratio}x done");
        }
        per_judge
    };
    line_chart(
        &out.join("detection.png"),
        "Median time to roll back: canary errors x stable's (1 %), 10 % canary, 200 req/s",
        "canary error rate / stable's (log scale)",
        "seconds (600 = not caught in 10 min)",
        &detection,
        (1.2..11.0, 0.0..620.0),
    );

    let rates = [20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];
    let false_rollbacks: Vec<Vec<(f64, f64)>> = {
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
                per_judge[j].push((rate, row(verdicts).rolled_back * 100.0));
            }
            eprintln!("false rollback sweep: {rate} req/s done");
        }
        per_judge
    };
    line_chart(
        &out.join("false-rollbacks.png"),
        "False rollbacks of a healthy canary (1 % errors on both) in 10 min at 10 %",
        "requests per second, total (log scale)",
        "% of runs rolled back",
        &false_rollbacks,
        (15.0..1200.0, 0.0..101.0),
    );
}

/// One line per judge on a log-scaled x axis.
fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Vec<(f64, f64)>],
    (x, y): (std::ops::Range<f64>, std::ops::Range<f64>),
) {
    let root = BitMapBackend::new(path, (1000, 600)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error + '_>> {
        root.fill(&WHITE)?;
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60);
        {
            let mut chart = builder.build_cartesian_2d(x.log_scale(), y)?;
            chart
                .configure_mesh()
                .x_desc(x_label)
                .y_desc(y_label)
                .label_style(("sans-serif", 14))
                .draw()?;
            for (i, (points, name)) in series.iter().zip(NAMES).enumerate() {
                let colour = COLOURS[i % COLOURS.len()];
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
                .background_style(WHITE.mix(0.9))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .draw()?;
        }
        root.present()?;
        Ok(())
    };
    match draw() {
        Ok(()) => eprintln!("wrote {}", path.display()),
        Err(e) => eprintln!("could not draw {}: {e}", path.display()),
    }
}
