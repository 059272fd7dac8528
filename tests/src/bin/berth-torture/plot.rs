//! The soak's chart: berthd's RSS, its open fds, and the shims' count and total PSS over
//! the run, as an SVG (plotters' SVG backend only). Each berthd process is a line of its
//! own, so the restarts show as breaks.

use crate::sampler::Sample;
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::path::Path;

type Get = fn(&Sample) -> f64;

pub fn svg(samples: &[Sample], path: &Path, title: &str) -> Result<()> {
    let root = SVGBackend::new(path, (1000, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let root = root.titled(title, ("sans-serif", 18)).map_err(e)?;
    let panels = root.split_evenly((3, 1));
    let rows: [(&str, Get, RGBColor); 3] = [
        ("berthd RSS (MiB)", |s| s.rss_kb as f64 / 1024.0, BLUE),
        ("berthd open fds", |s| s.fds as f64, RED),
        (
            "shims: total PSS (MiB)",
            |s| s.shims_pss_kb as f64 / 1024.0,
            GREEN,
        ),
    ];
    let t_max = samples.last().map_or(1.0, |s| s.t).max(1.0);
    for (area, (label, get, color)) in panels.iter().zip(rows) {
        let y_max = samples.iter().map(get).fold(1.0, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(area)
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .caption(label, ("sans-serif", 14))
            .build_cartesian_2d(0.0..t_max, 0.0..y_max)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("seconds since start")
            .draw()
            .map_err(e)?;
        // One line per berthd process (its pid): a restart breaks the line.
        let mut start = 0;
        while start < samples.len() {
            let pid = samples[start].pid;
            let end = samples[start..]
                .iter()
                .position(|s| s.pid != pid)
                .map_or(samples.len(), |n| start + n);
            chart
                .draw_series(LineSeries::new(
                    samples[start..end].iter().map(|s| (s.t, get(s))),
                    color.stroke_width(2),
                ))
                .map_err(e)?;
            start = end;
        }
        chart
            .draw_series(
                samples
                    .iter()
                    .map(|s| Circle::new((s.t, get(s)), 2, color.filled())),
            )
            .map_err(e)?;
    }
    root.present().map_err(e)?;
    Ok(())
}

fn e<E: std::fmt::Debug>(err: E) -> anyhow::Error {
    anyhow!("plot: {err:?}")
}
