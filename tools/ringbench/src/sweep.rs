//! `--sweep KEY=1,2,...`: the workload once per value of one key (shards, clients, iodepth or
//! tasks; per round, values rotated each round), a scaling table (IOPS, speed-up against the first
//! value, and for shards and clients the efficiency) and an SVG plot (with the ideal, linear line
//! for shards and clients).

use crate::cli::{check_count, Config, MAX_IODEPTH, MAX_TASKS};
use crate::error::BenchError;
use crate::files::Workspace;
use crate::report::{self, fmt_count, median, Host, RunReport};
use crate::workload::{Mode, Workload};
use crate::Setup;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// What a sweep varies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SweepKey {
    Shards,
    Clients,
    Iodepth,
    Tasks,
}

impl SweepKey {
    pub const ALL: [SweepKey; 4] = [
        SweepKey::Shards,
        SweepKey::Clients,
        SweepKey::Iodepth,
        SweepKey::Tasks,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SweepKey::Shards => "shards",
            SweepKey::Clients => "clients",
            SweepKey::Iodepth => "iodepth",
            SweepKey::Tasks => "tasks",
        }
    }

    /// Whether the key counts parallel workers, so that ideal scaling is linear and efficiency
    /// (speed-up / relative value) means something; iodepth and tasks get a speed-up only.
    pub fn scales_linearly(self) -> bool {
        matches!(self, SweepKey::Shards | SweepKey::Clients)
    }

    /// Checks that the key can be swept in `mode` and that its values are valid.
    pub fn check(self, mode: Mode, values: &[usize]) -> Result<(), BenchError> {
        let flag = format!("--sweep {}=", self.name());
        match (self, mode) {
            (SweepKey::Clients, Mode::InShard | Mode::Tasks) => {
                return Err(BenchError::usage(format!(
                    "{flag} needs --mode routed or --mode async (in-shard runs one load loop per \
                     shard)"
                )))
            }
            (SweepKey::Tasks, Mode::InShard | Mode::Routed) => {
                return Err(BenchError::usage(format!(
                    "{flag} needs --mode async (tasks are tokio tasks)"
                )))
            }
            _ => {}
        }
        let limit = match self {
            SweepKey::Iodepth => Some((MAX_IODEPTH, "operations in flight")),
            SweepKey::Tasks => Some((MAX_TASKS, "tasks")),
            SweepKey::Shards | SweepKey::Clients => None,
        };
        if let Some((max, what)) = limit {
            for &v in values {
                check_count(&flag, v, max, what)?;
            }
        }
        Ok(())
    }

    /// The workload of the point with this value.
    pub fn apply(self, w: &mut Workload, v: usize) {
        match self {
            SweepKey::Shards => w.placement.shards = Some(v),
            SweepKey::Clients => w.clients = v,
            SweepKey::Iodepth => w.iodepth = v,
            SweepKey::Tasks => w.tasks = v,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// The swept key's value (the key is the report's `sweep`).
    pub value: usize,
    /// Median IOPS over the rounds.
    pub iops: f64,
    pub mb_s: f64,
    pub rounds_iops: Vec<f64>,
    /// IOPS / IOPS of the first value.
    pub speedup: f64,
    /// speed-up / (value / first value); shards and clients only.
    pub efficiency: Option<f64>,
    pub cpu_s_per_mop: f64,
}

#[derive(Debug, Serialize)]
struct SweepReport<'a> {
    sweep: &'static str,
    engine: &'static str,
    mode: &'static str,
    /// The ringshard request API (routed and async ringshard runs).
    api: Option<&'static str>,
    workload: &'a crate::workload::Workload,
    host: &'a Host,
    points: &'a [Point],
    runs: Vec<&'a RunReport>,
}

pub fn run(
    cfg: &Config,
    ws: &Workspace,
    host: &Host,
    key: SweepKey,
    values: &[usize],
    repeat: usize,
    progress: bool,
) -> Result<i32, BenchError> {
    // Only the shard count changes the placement and the files: one setup serves other keys.
    let setups: Vec<Setup> = if key == SweepKey::Shards {
        values
            .iter()
            .map(|&n| Setup::new(&cfg.w, ws, Some(n)))
            .collect::<Result<_, _>>()?
    } else {
        vec![Setup::new(&cfg.w, ws, None)?]
    };
    let setup_of = |i: usize| &setups[i.min(setups.len() - 1)];
    let mut runs: Vec<Vec<RunReport>> = vec![Vec::new(); values.len()];
    let api = crate::report::api_of(cfg.w.engine, &cfg.w);
    println!(
        "== sweep: {} {}{} {} | {} | {} {:?} | {} round(s)",
        cfg.w.engine.name(),
        cfg.w.mode.name(),
        api.map_or(String::new(), |a| format!(" ({a} API)")),
        cfg.w.label(),
        report::load_params(&cfg.w, Some(key)),
        key.name(),
        values,
        repeat
    );
    for round in 0..repeat {
        for k in 0..values.len() {
            let i = (round + k) % values.len();
            let mut w = cfg.w.clone();
            key.apply(&mut w, values[i]);
            let setup = setup_of(i);
            let r = setup.run(&w, cfg.w.engine, host, progress)?;
            let what = match key {
                SweepKey::Shards => {
                    format!("{:>3} shard(s) on CPUs {:?}", values[i], setup.cpus.cpus)
                }
                _ => format!("{} {:>4}", key.name(), values[i]),
            };
            println!(
                "round {}/{repeat}  {what}: {:>9} IOPS  {:.1} MB/s  {:.3} CPU s/Mop{}",
                round + 1,
                fmt_count(r.total.iops),
                r.total.mb_s,
                r.cpu.cpu_s_per_mop,
                if r.failed() { "  FAILED CHECKS" } else { "" }
            );
            runs[i].push(r);
        }
    }
    let points = points(key, values, &runs);
    println!();
    let mut head = vec![key.name(), "IOPS", "MB/s", "speed-up"];
    if key.scales_linearly() {
        head.push("efficiency");
    }
    head.extend(["CPU s/Mop", "IOPS by round"]);
    let rows: Vec<Vec<String>> = points
        .iter()
        .map(|p| {
            let mut row = vec![
                p.value.to_string(),
                fmt_count(p.iops),
                format!("{:.1}", p.mb_s),
                format!("{:.2}x", p.speedup),
            ];
            if let Some(e) = p.efficiency {
                row.push(format!("{:.0}%", e * 100.0));
            }
            row.extend([
                format!("{:.3}", p.cpu_s_per_mop),
                report::fmt_rounds(&p.rounds_iops),
            ]);
            row
        })
        .collect();
    report::print_table(&head, &rows);
    if let Some(path) = &cfg.plot {
        let title = format!(
            "{} {} {} {} ({}, {})",
            cfg.w.engine.name(),
            cfg.w.mode.name(),
            cfg.w.label(),
            report::load_params(&cfg.w, Some(key)),
            if cfg.w.direct {
                "O_DIRECT"
            } else {
                "page cache"
            },
            host.kernel
        );
        write_svg(path, &title, key, &points)?;
        println!("plot: {}", path.display());
    }
    let failed = runs.iter().flatten().any(RunReport::failed);
    if let Some(p) = &cfg.json {
        let rep = SweepReport {
            sweep: key.name(),
            engine: cfg.w.engine.name(),
            mode: cfg.w.mode.name(),
            api,
            workload: &cfg.w,
            host,
            points: &points,
            runs: runs.iter().flatten().collect(),
        };
        report::write_json(p, &rep)?;
    }
    Ok(i32::from(failed))
}

fn points(key: SweepKey, values: &[usize], runs: &[Vec<RunReport>]) -> Vec<Point> {
    let med = |rs: &[RunReport], f: &dyn Fn(&RunReport) -> f64| {
        median(&rs.iter().map(f).collect::<Vec<_>>())
    };
    let base_iops = med(&runs[0], &|r| r.total.iops);
    let base_n = values[0] as f64;
    values
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
                value: n,
                iops,
                mb_s: med(rs, &|r| r.total.mb_s),
                rounds_iops: rs.iter().map(|r| r.total.iops).collect(),
                speedup,
                efficiency: key.scales_linearly().then(|| speedup / (n as f64 / base_n)),
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

/// The scaling plot: measured IOPS per value of `key`, and for shards and clients the ideal line
/// through the first point.
pub fn svg(title: &str, key: SweepKey, points: &[Point]) -> String {
    let linear = key.scales_linearly();
    let (w, h) = (720.0, 440.0);
    let (left, right, top, bottom) = (90.0, 80.0, 50.0, 60.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let max_n = points.iter().map(|p| p.value).max().unwrap_or(1) as f64;
    let base = points.first().map_or(0.0, |p| p.iops / p.value as f64);
    let ideal_max = if linear { base * max_n } else { 0.0 };
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
    // X ticks at each measured value.
    for p in points {
        let xx = x(p.value as f64);
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
            p.value
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
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        left + pw / 2.0,
        h - 18.0,
        key.name()
    );
    let _ = writeln!(
        s,
        r#"<text x="20" y="{:.1}" text-anchor="middle" transform="rotate(-90 20 {:.1})">IOPS</text>"#,
        top + ph / 2.0,
        top + ph / 2.0
    );
    // Ideal scaling: linear through the first point, from 0.
    if linear {
        let _ = writeln!(
            s,
            r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#999" stroke-dasharray="6 4"/>"##,
            x(0.0),
            y(0.0),
            x(max_n),
            y(ideal_max)
        );
    }
    // Measured.
    let pts: Vec<String> = points
        .iter()
        .map(|p| format!("{:.1},{:.1}", x(p.value as f64), y(p.iops)))
        .collect();
    let _ = writeln!(
        s,
        r##"<polyline points="{}" fill="none" stroke="#1f6feb" stroke-width="2.5"/>"##,
        pts.join(" ")
    );
    for p in points {
        let (xx, yy) = (x(p.value as f64), y(p.iops));
        let _ = writeln!(
            s,
            r##"<circle cx="{xx:.1}" cy="{yy:.1}" r="4" fill="#1f6feb"/>"##
        );
        let label = match p.efficiency {
            Some(e) => format!("{} ({:.0}%)", fmt_count(p.iops), e * 100.0),
            None => format!("{} ({:.2}x)", fmt_count(p.iops), p.speedup),
        };
        let _ = writeln!(
            s,
            r#"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
            yy - 10.0
        );
    }
    // Legend.
    let lx = left + 16.0;
    let _ = writeln!(
        s,
        r##"<line x1="{lx}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#1f6feb" stroke-width="2.5"/><text x="{:.1}" y="{:.1}">measured (median IOPS, {})</text>"##,
        top + 14.0,
        lx + 24.0,
        top + 14.0,
        lx + 30.0,
        top + 18.0,
        if linear { "efficiency" } else { "speed-up" }
    );
    if linear {
        let _ = writeln!(
            s,
            r##"<line x1="{lx}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#999" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}">ideal (linear from {} {})</text>"##,
            top + 32.0,
            lx + 24.0,
            top + 32.0,
            lx + 30.0,
            top + 36.0,
            points.first().map_or(1, |p| p.value),
            key.name()
        );
    }
    s.push_str("</svg>\n");
    s
}

fn write_svg(path: &Path, title: &str, key: SweepKey, points: &[Point]) -> Result<(), BenchError> {
    std::fs::write(path, svg(title, key, points))
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
        let p = |value, iops: f64| Point {
            value,
            iops,
            mb_s: 0.0,
            rounds_iops: vec![iops],
            speedup: iops / 100.0,
            efficiency: Some(iops / 100.0 / value as f64),
            cpu_s_per_mop: 1.0,
        };
        let s = svg("t <x>", SweepKey::Shards, &[p(1, 100.0), p(2, 180.0)]);
        assert!(s.starts_with("<svg"));
        assert!(s.contains("polyline"));
        assert!(s.contains("stroke-dasharray"));
        assert!(s.contains(">shards<"));
        assert!(s.contains("t &lt;x&gt;"));
        assert!(s.trim_end().ends_with("</svg>"));
        // iodepth: no ideal line, speed-up instead of efficiency.
        let q = |value, iops: f64| Point {
            efficiency: None,
            ..p(value, iops)
        };
        let d = svg("t", SweepKey::Iodepth, &[q(1, 100.0), q(8, 300.0)]);
        assert!(d.contains(">iodepth<"));
        assert!(!d.contains("stroke-dasharray"));
        assert!(d.contains("(3.00x)"));
    }
}
