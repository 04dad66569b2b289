//! `--sweep shards=1,2,...`: the workload once per shard count (per round; counts rotated each
//! round), a scaling table (IOPS, speed-up, efficiency against the first count) and an SVG plot
//! with the ideal (linear) line.

use crate::cli::Config;
use crate::error::BenchError;
use crate::files::Workspace;
use crate::report::{self, fmt_count, median, Host, RunReport};
use crate::Setup;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub shards: usize,
    /// Median IOPS over the rounds.
    pub iops: f64,
    pub mb_s: f64,
    pub rounds_iops: Vec<f64>,
    /// IOPS / IOPS of the first count.
    pub speedup: f64,
    /// speed-up / (shards / first count's shards).
    pub efficiency: f64,
    pub cpu_s_per_mop: f64,
}

#[derive(Debug, Serialize)]
struct SweepReport<'a> {
    sweep: &'static str,
    engine: &'static str,
    mode: &'static str,
    workload: &'a crate::workload::Workload,
    host: &'a Host,
    points: &'a [Point],
    runs: Vec<&'a RunReport>,
}

pub fn run(
    cfg: &Config,
    ws: &Workspace,
    host: &Host,
    counts: &[usize],
    repeat: usize,
    progress: bool,
) -> Result<i32, BenchError> {
    let setups: Vec<Setup> = counts
        .iter()
        .map(|&n| Setup::new(&cfg.w, ws, Some(n)))
        .collect::<Result<_, _>>()?;
    let mut runs: Vec<Vec<RunReport>> = vec![Vec::new(); counts.len()];
    println!(
        "== sweep: {} {} {} | iodepth {} | shards {:?} | {} round(s)",
        cfg.w.engine.name(),
        cfg.w.mode.name(),
        cfg.w.label(),
        cfg.w.iodepth,
        counts,
        repeat
    );
    for round in 0..repeat {
        for k in 0..counts.len() {
            let i = (round + k) % counts.len();
            let mut w = cfg.w.clone();
            w.placement.shards = Some(counts[i]);
            let r = setups[i].run(&w, cfg.w.engine, host, progress)?;
            println!(
                "round {}/{repeat}  {:>3} shard(s) on CPUs {:?}: {:>9} IOPS  {:.1} MB/s  {:.3} \
                 CPU s/Mop{}",
                round + 1,
                counts[i],
                setups[i].cpus.cpus,
                fmt_count(r.total.iops),
                r.total.mb_s,
                r.cpu.cpu_s_per_mop,
                if r.failed() { "  FAILED CHECKS" } else { "" }
            );
            runs[i].push(r);
        }
    }
    let points = points(counts, &runs);
    println!();
    let head = [
        "shards",
        "IOPS",
        "MB/s",
        "speed-up",
        "efficiency",
        "CPU s/Mop",
        "IOPS by round",
    ];
    let rows: Vec<Vec<String>> = points
        .iter()
        .map(|p| {
            vec![
                p.shards.to_string(),
                fmt_count(p.iops),
                format!("{:.1}", p.mb_s),
                format!("{:.2}x", p.speedup),
                format!("{:.0}%", p.efficiency * 100.0),
                format!("{:.3}", p.cpu_s_per_mop),
                report::fmt_rounds(&p.rounds_iops),
            ]
        })
        .collect();
    report::print_table(&head, &rows);
    if let Some(path) = &cfg.plot {
        let title = format!(
            "{} {} {} iodepth {} ({}, {})",
            cfg.w.engine.name(),
            cfg.w.mode.name(),
            cfg.w.label(),
            cfg.w.iodepth,
            if cfg.w.direct {
                "O_DIRECT"
            } else {
                "page cache"
            },
            host.kernel
        );
        write_svg(path, &title, &points)?;
        println!("plot: {}", path.display());
    }
    let failed = runs.iter().flatten().any(RunReport::failed);
    if let Some(p) = &cfg.json {
        let rep = SweepReport {
            sweep: "shards",
            engine: cfg.w.engine.name(),
            mode: cfg.w.mode.name(),
            workload: &cfg.w,
            host,
            points: &points,
            runs: runs.iter().flatten().collect(),
        };
        report::write_json(p, &rep)?;
    }
    Ok(i32::from(failed))
}

fn points(counts: &[usize], runs: &[Vec<RunReport>]) -> Vec<Point> {
    let med = |rs: &[RunReport], f: &dyn Fn(&RunReport) -> f64| {
        median(&rs.iter().map(f).collect::<Vec<_>>())
    };
    let base_iops = med(&runs[0], &|r| r.total.iops);
    let base_n = counts[0] as f64;
    counts
        .iter()
        .zip(runs)
        .map(|(&n, rs)| {
            let iops = med(rs, &|r| r.total.iops);
            let speedup = if base_iops > 0.0 {
                iops / base_iops
            } else {
                0.0
            };
            Point {
                shards: n,
                iops,
                mb_s: med(rs, &|r| r.total.mb_s),
                rounds_iops: rs.iter().map(|r| r.total.iops).collect(),
                speedup,
                efficiency: speedup / (n as f64 / base_n),
                cpu_s_per_mop: med(rs, &|r| r.cpu.cpu_s_per_mop),
            }
        })
        .collect()
}

/// A "nice" tick step (1, 2 or 5 times a power of ten) for about `target` ticks up to `max`.
fn tick_step(max: f64, target: f64) -> f64 {
    let raw = (max / target).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// "1.5M", "500K", "0": tick labels without trailing zeros.
fn fmt_tick(v: f64) -> String {
    let s = fmt_count(v);
    if !s.contains('.') {
        return s;
    }
    let (num, unit) = s.split_at(s.trim_end_matches(char::is_alphabetic).len());
    format!("{}{unit}", num.trim_end_matches('0').trim_end_matches('.'))
}

/// The scaling plot: measured IOPS per shard count, and the ideal line through the first point.
pub fn svg(title: &str, points: &[Point]) -> String {
    let (w, h) = (720.0, 440.0);
    let (left, right, top, bottom) = (90.0, 80.0, 50.0, 60.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let max_n = points.iter().map(|p| p.shards).max().unwrap_or(1) as f64;
    let base = points.first().map_or(0.0, |p| p.iops / p.shards as f64);
    let ideal_max = base * max_n;
    let y_top = points
        .iter()
        .map(|p| p.iops)
        .fold(ideal_max, f64::max)
        .max(1.0)
        * 1.08;
    let step = tick_step(y_top, 6.0);
    let y_max = (y_top / step).ceil() * step;
    let x = |n: f64| left + pw * n / max_n;
    let y = |v: f64| top + ph * (1.0 - v / y_max);

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        w / 2.0,
        esc(title)
    );
    // Grid and y ticks.
    let mut v = 0.0;
    while v <= y_max + step / 2.0 {
        let yy = y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#e4e4e4"/>"##,
            left + pw
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 8.0,
            yy + 4.0,
            fmt_tick(v)
        );
        v += step;
    }
    // X ticks at each measured shard count.
    for p in points {
        let xx = x(p.shards as f64);
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{:.1}" x2="{xx:.1}" y2="{:.1}" stroke="#333"/>"##,
            top + ph,
            top + ph + 5.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            top + ph + 20.0,
            p.shards
        );
    }
    // Axes and labels.
    let _ = writeln!(
        s,
        r##"<line x1="{left}" y1="{top}" x2="{left}" y2="{:.1}" stroke="#333"/>"##,
        top + ph
    );
    let _ = writeln!(
        s,
        r##"<line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/>"##,
        top + ph,
        left + pw,
        top + ph
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">shards</text>"#,
        left + pw / 2.0,
        h - 18.0
    );
    let _ = writeln!(
        s,
        r#"<text x="20" y="{:.1}" text-anchor="middle" transform="rotate(-90 20 {:.1})">IOPS</text>"#,
        top + ph / 2.0,
        top + ph / 2.0
    );
    // Ideal scaling: linear through the first point, from 0.
    let _ = writeln!(
        s,
        r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#999" stroke-dasharray="6 4"/>"##,
        x(0.0),
        y(0.0),
        x(max_n),
        y(ideal_max)
    );
    // Measured.
    let pts: Vec<String> = points
        .iter()
        .map(|p| format!("{:.1},{:.1}", x(p.shards as f64), y(p.iops)))
        .collect();
    let _ = writeln!(
        s,
        r##"<polyline points="{}" fill="none" stroke="#1f6feb" stroke-width="2.5"/>"##,
        pts.join(" ")
    );
    for p in points {
        let (xx, yy) = (x(p.shards as f64), y(p.iops));
        let _ = writeln!(
            s,
            r##"<circle cx="{xx:.1}" cy="{yy:.1}" r="4" fill="#1f6feb"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{} ({:.0}%)</text>"#,
            yy - 10.0,
            fmt_count(p.iops),
            p.efficiency * 100.0
        );
    }
    // Legend.
    let lx = left + 16.0;
    let _ = writeln!(
        s,
        r##"<line x1="{lx}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#1f6feb" stroke-width="2.5"/><text x="{:.1}" y="{:.1}">measured (median IOPS, efficiency)</text>"##,
        top + 14.0,
        lx + 24.0,
        top + 14.0,
        lx + 30.0,
        top + 18.0
    );
    let _ = writeln!(
        s,
        r##"<line x1="{lx}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#999" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}">ideal (linear from {} shard(s))</text>"##,
        top + 32.0,
        lx + 24.0,
        top + 32.0,
        lx + 30.0,
        top + 36.0,
        points.first().map_or(1, |p| p.shards)
    );
    s.push_str("</svg>\n");
    s
}

fn write_svg(path: &Path, title: &str, points: &[Point]) -> Result<(), BenchError> {
    std::fs::write(path, svg(title, points))
        .map_err(|e| BenchError::runtime(format!("writing --plot {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_nice() {
        assert_eq!(tick_step(1_000_000.0, 5.0), 200_000.0);
        assert_eq!(tick_step(7.0, 6.0), 2.0);
        assert_eq!(fmt_tick(500_000.0), "500K");
        assert_eq!(fmt_tick(1_500_000.0), "1.5M");
        assert_eq!(fmt_tick(2_000_000.0), "2M");
        assert_eq!(fmt_tick(0.0), "0");
    }

    #[test]
    fn svg_has_axes_and_both_lines() {
        let p = |shards, iops: f64| Point {
            shards,
            iops,
            mb_s: 0.0,
            rounds_iops: vec![iops],
            speedup: iops / 100.0,
            efficiency: iops / 100.0 / shards as f64,
            cpu_s_per_mop: 1.0,
        };
        let s = svg("t <x>", &[p(1, 100.0), p(2, 180.0)]);
        assert!(s.starts_with("<svg"));
        assert!(s.contains("polyline"));
        assert!(s.contains("stroke-dasharray"));
        assert!(s.contains(">shards<"));
        assert!(s.contains("t &lt;x&gt;"));
        assert!(s.trim_end().ends_with("</svg>"));
    }
}
