//! `--svg DIR`: the latency distributions of the run as SVG charts (plotters' SVG backend),
//! berthd and containerd side by side: one panel per operation, each runtime's calls as
//! an empirical CDF (the share of calls done within x ms), so medians, tails and the
//! distance between the runtimes show at a glance.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::report::Col;
use crate::side::Figures;

type Get = fn(&Figures) -> &[f64];

/// The one-call-at-a-time operations, and those of the parallel phase.
const SERIAL: [(&str, Get); 3] = [
    ("RunPodSandbox", |f| &f.run_pod),
    ("CreateContainer + StartContainer", |f| &f.create_start),
    ("StopPodSandbox + RemovePodSandbox", |f| &f.stop_remove),
];
const LOADED: [(&str, Get); 6] = [
    ("RunPodSandbox, 10 in flight", |f| &f.load.run_pod),
    ("CreateContainer, 10 in flight", |f| &f.load.create),
    ("StartContainer, 10 in flight", |f| &f.load.start),
    ("PodSandboxStatus while they run", |f| &f.load.pod_status),
    ("ContainerStatus while they run", |f| &f.load.ctr_status),
    ("relist while they run", |f| &f.load.relist),
];

const SIDES: [(&str, RGBColor); 2] = [("berthd", BLUE), ("containerd 1.6", RED)];

/// Writes `latency-serial.svg` and `latency-load.svg` (panels without samples are left
/// out, a chart without any is not written); returns the files written.
pub(crate) fn write(cols: &[Col; 2], dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let figs: Vec<Option<&Figures>> = cols
        .iter()
        .map(|c| match c {
            Col::Ran(f, _) => Some(*f),
            _ => None,
        })
        .collect();
    let mut written = Vec::new();
    for (name, ops, title) in [
        ("latency-serial.svg", &SERIAL[..], "one call at a time"),
        ("latency-load.svg", &LOADED[..], "10 pods made at once"),
    ] {
        let panels: Vec<(&str, [Vec<f64>; 2])> = ops
            .iter()
            .map(|(label, get)| {
                let v = |i: usize| figs[i].map(|f| sorted(get(f))).unwrap_or_default();
                (*label, [v(0), v(1)])
            })
            .filter(|(_, s)| s.iter().any(|v| !v.is_empty()))
            .collect();
        if panels.is_empty() {
            continue;
        }
        let path = dir.join(name);
        chart(&path, &format!("berthd-bench: {title}"), &panels)?;
        written.push(path);
    }
    Ok(written)
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

fn chart(path: &Path, title: &str, panels: &[(&str, [Vec<f64>; 2])]) -> Result<()> {
    let rows = panels.len().div_ceil(2);
    let root = SVGBackend::new(path, (1000, 300 * rows as u32 + 40)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let root = root.titled(title, ("sans-serif", 18)).map_err(e)?;
    let areas = root.split_evenly((rows, 2));
    for (area, (label, samples)) in areas.iter().zip(panels) {
        let x_max = samples
            .iter()
            .flat_map(|v| v.last())
            .fold(1.0_f64, |a, b| a.max(*b))
            * 1.05;
        let mut c = ChartBuilder::on(area)
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(40)
            .caption(*label, ("sans-serif", 14))
            .build_cartesian_2d(0.0..x_max, 0.0..1.0)
            .map_err(e)?;
        c.configure_mesh()
            .x_desc("ms")
            .y_desc("share of calls")
            .draw()
            .map_err(e)?;
        for (v, (name, color)) in samples.iter().zip(SIDES) {
            if v.is_empty() {
                continue;
            }
            let n = v.len() as f64;
            // A step per call: at x = its latency, the share of calls done by then.
            let steps = v
                .iter()
                .enumerate()
                .flat_map(|(i, &x)| [(x, i as f64 / n), (x, (i + 1) as f64 / n)]);
            c.draw_series(LineSeries::new(steps, color.stroke_width(2)))
                .map_err(e)?
                .label(format!("{name} (n={})", v.len()))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(e)?;
    }
    root.present().map_err(e)?;
    Ok(())
}

fn e<E: std::fmt::Debug>(err: E) -> anyhow::Error {
    anyhow!("plot: {err:?}")
}
