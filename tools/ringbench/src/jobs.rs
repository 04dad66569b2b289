//! Several jobs in one run, as fio takes them: repeated `--name` groups on the command line
//! (options before the first `--name` apply to every job, options after it to that job), or a
//! job file in fio's ini syntax (`[global]` and one `[section]` per job, `key=value` lines with
//! fio's option names). Each job becomes the argument list of a one-job run, parsed by clap as
//! usual; precedence: the job file's `[global]`, its section, then the command line.

use crate::cli::{Args, Config};
use crate::error::BenchError;
use clap::{CommandFactory, Parser};
use std::collections::BTreeMap;
use std::path::Path;

/// Options of the whole run, not of a job: they go before the first `--name`.
const RUN_OPTIONS: [&str; 10] = [
    "--compare",
    "--repeat",
    "--sweep",
    "--plot",
    "--json",
    "--output-format",
    "--output_format",
    "--output",
    "--quiet",
    "--report-every",
];

/// fio options a job file may hold that ringbench accepts without effect: the engine is chosen
/// with --engine, runs are always time- (or --ops-) based, offsets never use a random map, and
/// every percentile list is reported.
const IGNORED_FIO_KEYS: [&str; 12] = [
    "ioengine",
    "thread",
    "group_reporting",
    "time_based",
    "norandommap",
    "randrepeat",
    "invalidate",
    "lat_percentiles",
    "clat_percentiles",
    "slat_percentiles",
    "stonewall",
    "new_group",
];

/// The configurations of every job of the command line `argv` (program name first).
pub fn parse(argv: Vec<String>) -> Result<Vec<Config>, BenchError> {
    let args = argv.get(1..).unwrap_or_default();
    let (global, groups) = split_names(args);
    let base = parse_args(&global);
    for (_, g) in &groups {
        if let Some(t) = g.iter().find(|t| is_run_option(t)) {
            return Err(BenchError::usage(format!(
                "{t} applies to the whole run: put it before the first --name"
            )));
        }
    }
    let jobs: Vec<Vec<String>> = match &base.job_file {
        Some(path) => {
            if !groups.is_empty() {
                return Err(BenchError::usage(
                    "a job file and --name groups together: put every job in the file",
                ));
            }
            let text = std::fs::read_to_string(path)
                .map_err(|e| BenchError::usage(format!("job file {}: {e}", path.display())))?;
            job_file_tokens(path, &text)?
                .into_iter()
                .map(|mut t| {
                    t.extend(global.iter().cloned());
                    t
                })
                .collect()
        }
        None if groups.is_empty() => vec![global.clone()],
        None => groups
            .into_iter()
            .map(|(name, g)| {
                let mut t = global.clone();
                t.push(format!("--name={name}"));
                t.extend(g);
                t
            })
            .collect(),
    };
    let configs = jobs
        .iter()
        .map(|t| parse_args(t).into_config())
        .collect::<Result<Vec<_>, _>>()?;
    check_group(&configs)?;
    Ok(configs)
}

/// clap's parse of one job's options (exits with clap's message, code 2, on a bad option).
fn parse_args(tokens: &[String]) -> Args {
    let argv = std::iter::once("ringbench".to_string()).chain(tokens.iter().cloned());
    Args::try_parse_from(argv).unwrap_or_else(|e| e.exit())
}

fn is_run_option(t: &str) -> bool {
    RUN_OPTIONS
        .iter()
        .any(|o| t == *o || t.strip_prefix(o).is_some_and(|r| r.starts_with('=')))
}

/// Splits the arguments at each `--name NAME` / `--name=NAME`: the options before the first,
/// and (name, options) per group.
type Groups = Vec<(String, Vec<String>)>;

fn split_names(args: &[String]) -> (Vec<String>, Groups) {
    let mut global = Vec::new();
    let mut groups: Groups = Vec::new();
    let mut it = args.iter();
    while let Some(t) = it.next() {
        let name = if t == "--name" {
            Some(it.next().cloned().unwrap_or_default())
        } else {
            t.strip_prefix("--name=").map(str::to_string)
        };
        match (name, groups.last_mut()) {
            (Some(n), _) => groups.push((n, Vec::new())),
            (None, Some((_, g))) => g.push(t.clone()),
            (None, None) => global.push(t.clone()),
        }
    }
    (global, groups)
}

/// Several jobs run at once: one run action, the same ramp, distinct names.
fn check_group(configs: &[Config]) -> Result<(), BenchError> {
    if configs.len() < 2 {
        return Ok(());
    }
    let first = &configs[0];
    if !matches!(first.action, crate::cli::Action::Single) {
        return Err(BenchError::usage(
            "--compare and --sweep run one job: drop the other jobs (--name groups or job file \
             sections)",
        ));
    }
    if first.w.report_every.is_some() {
        return Err(BenchError::usage(
            "--report-every samples one job: run several jobs without it",
        ));
    }
    let mut names = std::collections::BTreeSet::new();
    for c in configs {
        if c.w.ramp != first.w.ramp {
            return Err(BenchError::usage(
                "the jobs have different --ramp-time (ramp_time): the ramp is the whole run's; \
                 give one value",
            ));
        }
        let name = c.w.name.clone().unwrap_or_default();
        let plain = !name.is_empty()
            && name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "._-".contains(ch));
        if !plain || name.starts_with('.') {
            return Err(BenchError::usage(format!(
                "job name {name:?}: use letters, digits, '.', '_' and '-' (it names the job's \
                 directory of files)"
            )));
        }
        if !names.insert(name.clone()) {
            return Err(BenchError::usage(format!(
                "two jobs are named {name:?}: give each job its own name"
            )));
        }
    }
    Ok(())
}

/// ringbench's option names (long names and aliases, without dashes), and whether each takes a
/// value.
fn known_options() -> BTreeMap<String, bool> {
    let cmd = Args::command();
    let mut m = BTreeMap::new();
    for a in cmd.get_arguments() {
        let takes = a.get_action().takes_values();
        for l in a
            .get_long()
            .into_iter()
            .chain(a.get_all_aliases().unwrap_or_default())
        {
            m.insert(l.to_string(), takes);
        }
    }
    m
}

/// One job's argument list per job section of a fio job file.
pub fn job_file_tokens(path: &Path, text: &str) -> Result<Vec<Vec<String>>, BenchError> {
    let at = |line: usize, why: String| {
        BenchError::usage(format!("job file {} line {line}: {why}", path.display()))
    };
    let known = known_options();
    // (key, value, line number)
    type Opt = (String, String, usize);
    let mut global: Vec<Opt> = Vec::new();
    let mut jobs: Vec<(String, Vec<Opt>)> = Vec::new();
    let mut in_global = false;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let n = i + 1;
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(sec) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let sec = sec.trim();
            in_global = sec == "global";
            if !in_global {
                jobs.push((sec.to_string(), Vec::new()));
            }
            continue;
        }
        let (k, v) = match line.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => (line, ""),
        };
        let kv = (k.to_string(), v.to_string(), n);
        match jobs.last_mut() {
            Some((_, opts)) if !in_global => opts.push(kv),
            None if !in_global => {
                return Err(at(n, format!("{k:?} before any [section]")));
            }
            _ => global.push(kv),
        }
    }
    if jobs.is_empty() {
        return Err(BenchError::usage(format!(
            "job file {}: no job: add a [section] per job (options shared by every job go in \
             [global])",
            path.display()
        )));
    }
    let mut out = Vec::new();
    for (name, opts) in jobs {
        let all: Vec<&Opt> = global.iter().chain(&opts).collect();
        // fio's size is the job's total over its files; ringbench's --size is per file.
        let nrfiles: Option<u64> = all
            .iter()
            .rev()
            .find(|(k, _, _)| k == "nrfiles")
            .and_then(|(_, v, _)| v.parse().ok());
        let mut t = vec![format!("--name={name}")];
        for (k, v, n) in all {
            if IGNORED_FIO_KEYS.contains(&k.as_str()) || k == "name" {
                continue;
            }
            let Some(&takes) = known.get(k.as_str()) else {
                return Err(at(
                    *n,
                    format!(
                        "{k:?} is not an option ringbench has (fio's names ringbench knows: see \
                         --help; ignored without effect: {})",
                        IGNORED_FIO_KEYS.join(", ")
                    ),
                ));
            };
            let value = if k == "size" {
                match (nrfiles, crate::cli::parse_size("size", v)) {
                    (Some(f), Ok(total)) if f > 0 => (total / f).to_string(),
                    _ => v.clone(),
                }
            } else {
                v.clone()
            };
            if takes || k == "direct" {
                t.push(format!("--{k}={value}"));
            } else {
                match value.as_str() {
                    "" | "1" | "true" | "yes" | "on" => t.push(format!("--{k}")),
                    "0" | "false" | "no" | "off" => {}
                    _ => return Err(at(*n, format!("{k} takes no value (or 0/1), not {v:?}"))),
                }
            }
        }
        out.push(t);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn name_groups_split_the_command_line() {
        let (g, groups) = split_names(&strings(&[
            "--bs", "8k", "--name", "a", "--rw", "randread", "--name=b", "--rw", "write",
        ]));
        assert_eq!(g, strings(&["--bs", "8k"]));
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0], ("a".into(), strings(&["--rw", "randread"])));
        assert_eq!(groups[1], ("b".into(), strings(&["--rw", "write"])));
    }

    #[test]
    fn jobs_inherit_global_options_and_override_them() {
        let c = parse(strings(&[
            "ringbench",
            "--bs",
            "8k",
            "--runtime",
            "2",
            "--name",
            "r",
            "--rw",
            "randread",
            "--name",
            "w",
            "--rw",
            "randwrite",
            "--bs",
            "16k",
        ]))
        .unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].w.name.as_deref(), Some("r"));
        assert_eq!((c[0].w.bs, c[1].w.bs), (8192, 16384));
        assert_eq!(c[1].w.rw, crate::workload::Rw::Randwrite);
        assert_eq!(c[1].w.duration, Some(std::time::Duration::from_secs(2)));
        let e = parse(strings(&["ringbench", "--name", "a", "--compare"])).unwrap_err();
        assert!(e.to_string().contains("before the first --name"), "{e}");
        let e = parse(strings(&["ringbench", "--name", "a", "--name", "a"])).unwrap_err();
        assert!(e.to_string().contains("two jobs are named"), "{e}");
        let e = parse(strings(&[
            "ringbench",
            "--compare",
            "--name",
            "a",
            "--name",
            "b",
        ]));
        assert!(e.unwrap_err().to_string().contains("run one job"));
    }

    #[test]
    fn fio_job_file() {
        let text = "\
; a fio job file
[global]
ioengine=io_uring
direct=0
bs=4k
size=128m
nrfiles=2
runtime=3
time_based
random_distribution=zipf:1.2

[reader]
rw=randread
iodepth=8
rate_iops=5000

[writer]
rw=randwrite
fsync=16
verify
";
        let t = job_file_tokens(Path::new("j.fio"), text).unwrap();
        assert_eq!(t.len(), 2);
        assert!(t[0].contains(&"--size=67108864".to_string()), "{:?}", t[0]);
        assert!(t[1].contains(&"--verify".to_string()));
        let configs: Vec<Config> = t
            .iter()
            .map(|t| parse_args(t).into_config().unwrap())
            .collect();
        let r = &configs[0].w;
        assert_eq!(r.name.as_deref(), Some("reader"));
        assert_eq!((r.size, r.files, r.iodepth), (64 << 20, Some(2), 8));
        assert_eq!(r.rate_iops, Some(5000.0));
        assert_eq!(r.distribution.to_string(), "zipf:1.2");
        assert!(!r.direct);
        let w = &configs[1].w;
        assert_eq!((w.fsync_every, w.verify), (16, true));
        for (bad, needle) in [
            ("[j]\nfilename=/dev/sda\n", "\"filename\" is not an option"),
            ("bs=4k\n", "before any [section]"),
            ("[global]\nbs=4k\n", "no job"),
            ("[j]\nverify=maybe\n", "takes no value"),
        ] {
            let e = job_file_tokens(Path::new("j.fio"), bad).unwrap_err();
            assert_eq!(e.exit_code(), 2);
            assert!(e.to_string().contains(needle), "{bad}: {e}");
        }
    }
}
