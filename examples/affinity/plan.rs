//! The layouts `examples/affinity` compares, as CPU lists: pure functions of a [`Topology`] and the
//! CPUs the process may use, so that a fixture topology (a two-socket machine) can be planned on
//! any machine, and `tests/affinity_example.rs` can check the plan without running anything.

use ringshard::{Placement, Topology};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// Where the caller (client) threads of a layout run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Callers {
    /// Wherever the scheduler puts them.
    Unpinned,
    /// Every caller may run on any of these CPUs (one NUMA node's CPUs).
    Within(Vec<usize>),
    /// Caller `i` is pinned to CPU `list[i % list.len()]`.
    Pinned(Vec<usize>),
}

/// One placement to measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Short name (the table's first column).
    pub name: &'static str,
    /// What it means, in one line.
    pub what: &'static str,
    /// One shard per CPU, in shard order.
    pub shards: Vec<usize>,
    pub callers: Callers,
    /// The CPU of the SQPOLL kernel threads (one per shard ring), if any.
    pub sqpoll: Option<usize>,
    /// The shards' idle spin; `None`: the library's default.
    pub spin: Option<Duration>,
    /// Why the layout cannot run here (it is listed, not measured).
    pub skip: Option<String>,
    /// Something worth knowing, e.g. "same CPUs as all-cpus: no SMT".
    pub note: Option<String>,
}

impl Layout {
    /// Every CPU the layout names (shards, pinned callers, SQPOLL), sorted, deduplicated.
    pub fn cpus_used(&self) -> Vec<usize> {
        let mut v = self.shards.clone();
        match &self.callers {
            Callers::Unpinned => {}
            Callers::Within(l) | Callers::Pinned(l) => v.extend(l),
        }
        v.extend(self.sqpoll);
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The caller placement as text: `unpinned`, `within 0-3`, `pinned 2,3`.
    pub fn callers_text(&self) -> String {
        match &self.callers {
            Callers::Unpinned => "unpinned".to_string(),
            Callers::Within(l) => format!("within {}", cpu_list(l)),
            Callers::Pinned(l) => format!("pinned {}", cpu_list(l)),
        }
    }

    /// The spin as text: `default`, `0 µs`, `200 µs`.
    pub fn spin_text(&self) -> String {
        match self.spin {
            None => "default".to_string(),
            Some(d) => format!("{} µs", d.as_micros()),
        }
    }
}

/// The layouts for `topo`, using only the CPUs in `allowed`. `spin_on` is the spin of the
/// `spin-on` layout.
///
/// * `all-cpus`: a shard on every allowed CPU, callers unpinned.
/// * `physical-cores`: a shard on the first allowed CPU of each physical core (SMT siblings idle).
/// * `one-node`: a shard on every allowed CPU of the lowest NUMA node with one, callers kept on
///   that node.
/// * `apart`: in each node, the first half of the physical cores (rounded up) run shards, the
///   other half run the callers, each caller pinned to one CPU. A node with a single core gives it
///   to the shards; if no CPU is left for callers at all, the allowed CPUs are split in half
///   instead (SMT siblings of one core). Skipped with fewer than 2 CPUs.
/// * `sqpoll`: `apart`, with the last caller CPU given to the SQPOLL threads. Skipped when
///   `apart` has fewer than 2 caller CPUs (no spare CPU).
/// * `spin-on` / `spin-off`: `all-cpus` with the shards' idle spin at `spin_on` / zero.
///
/// # Errors
///
/// The placement error when no allowed CPU is online.
pub fn plan(
    topo: &Topology,
    allowed: &[usize],
    spin_on: Duration,
) -> ringshard::Result<Vec<Layout>> {
    let all = Placement::AllCores.resolve(topo, allowed)?;
    let physical = Placement::PhysicalCores.resolve(topo, allowed)?;
    let node = all
        .iter()
        .filter_map(|&c| topo.node_of_cpu(c))
        .min()
        .unwrap_or(0);
    let one_node = Placement::NumaNodes(vec![node]).resolve(topo, allowed)?;
    let (apart_shards, apart_callers) = split_apart(topo, &all);

    let base = Layout {
        name: "",
        what: "",
        shards: all.clone(),
        callers: Callers::Unpinned,
        sqpoll: None,
        spin: None,
        skip: None,
        note: None,
    };
    let mut out = Vec::new();
    out.push(Layout {
        name: "all-cpus",
        what: "a shard on every CPU, callers wherever the scheduler puts them",
        ..base.clone()
    });
    out.push(Layout {
        name: "physical-cores",
        what: "a shard on one CPU of each physical core, SMT siblings left to the callers",
        note: (physical == all).then(|| "same CPUs as all-cpus: no SMT siblings".to_string()),
        shards: physical,
        ..base.clone()
    });
    let nodes = topo.nodes().len();
    out.push(Layout {
        name: "one-node",
        what: "shards on every CPU of one NUMA node, callers kept on that node",
        note: (one_node == all).then(|| {
            if nodes == 1 {
                "same CPUs as all-cpus: one NUMA node".to_string()
            } else {
                "same CPUs as all-cpus: the other nodes' CPUs are not allowed".to_string()
            }
        }),
        callers: Callers::Within(one_node.clone()),
        shards: one_node,
        ..base.clone()
    });
    let apart = Layout {
        name: "apart",
        what: "shards on half the cores, each caller pinned to a CPU of the other half",
        skip: apart_callers.is_empty().then(|| {
            format!(
                "needs at least 2 CPUs (one for shards, one for callers); {} allowed",
                all.len()
            )
        }),
        callers: Callers::Pinned(apart_callers.clone()),
        shards: apart_shards.clone(),
        ..base.clone()
    };
    out.push(apart.clone());
    let mut sq_callers = apart_callers.clone();
    let spare = if sq_callers.len() >= 2 {
        sq_callers.pop()
    } else {
        None
    };
    out.push(Layout {
        name: "sqpoll",
        what: "apart, with the kernel's SQPOLL threads on a spare CPU (no submit system calls)",
        skip: spare.is_none().then(|| {
            format!(
                "no spare CPU: {} allowed CPU(s), apart uses {} for shards and {} for callers; \
                 SQPOLL burns a CPU of its own",
                all.len(),
                apart_shards.len(),
                apart_callers.len()
            )
        }),
        callers: Callers::Pinned(if spare.is_some() {
            sq_callers
        } else {
            apart_callers
        }),
        sqpoll: spare,
        shards: apart_shards,
        ..base.clone()
    });
    out.push(Layout {
        name: "spin-on",
        what: "all-cpus, idle shards spin this long before they sleep",
        spin: Some(spin_on),
        ..base.clone()
    });
    out.push(Layout {
        name: "spin-off",
        what: "all-cpus, idle shards sleep at once",
        spin: Some(Duration::ZERO),
        ..base
    });
    Ok(out)
}

/// Splits `cpus` into (shard CPUs, caller CPUs) for the `apart` layout: per NUMA node, the first
/// half of the physical cores (rounded up) for shards, the rest for callers.
fn split_apart(topo: &Topology, cpus: &[usize]) -> (Vec<usize>, Vec<usize>) {
    // node -> [((package, core), its CPUs)], cores in order of their lowest CPU.
    type Cores = Vec<((usize, usize), Vec<usize>)>;
    let mut by_node: BTreeMap<u32, Cores> = BTreeMap::new();
    for &id in cpus {
        let Some(c) = topo.cpu(id) else { continue };
        let cores = by_node.entry(c.node).or_default();
        match cores.iter_mut().find(|(k, _)| *k == (c.package, c.core)) {
            Some((_, list)) => list.push(id),
            None => cores.push(((c.package, c.core), vec![id])),
        }
    }
    let (mut shards, mut callers) = (Vec::new(), Vec::new());
    for cores in by_node.values() {
        let half = cores.len().div_ceil(2);
        for (i, (_, list)) in cores.iter().enumerate() {
            if i < half {
                shards.extend(list);
            } else {
                callers.extend(list);
            }
        }
    }
    if callers.is_empty() && cpus.len() >= 2 {
        // One core per node (SMT siblings only): split the CPUs themselves.
        let mut sorted = cpus.to_vec();
        sorted.sort_unstable();
        let half = sorted.len().div_ceil(2);
        callers = sorted.split_off(half);
        shards = sorted;
    }
    shards.sort_unstable();
    callers.sort_unstable();
    (shards, callers)
}

/// `[0, 1, 2, 5]` -> `"0-2,5"`.
pub fn cpu_list(ids: &[usize]) -> String {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < ids.len() {
        let start = ids[i];
        let mut end = start;
        while i + 1 < ids.len() && ids[i + 1] == end + 1 {
            i += 1;
            end = ids[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            let _ = write!(out, "{start}");
        } else {
            let _ = write!(out, "{start}-{end}");
        }
        i += 1;
    }
    if out.is_empty() {
        out.push_str("none");
    }
    out
}

/// The plan as a table: layout, shard CPUs, callers, SQPOLL CPU, spin, and the skip reason or
/// note.
pub fn plan_table(layouts: &[Layout]) -> String {
    let mut rows = vec![[
        "layout".to_string(),
        "shards".to_string(),
        "shard CPUs".to_string(),
        "callers".to_string(),
        "sqpoll".to_string(),
        "spin".to_string(),
        "notes".to_string(),
    ]];
    for l in layouts {
        rows.push([
            l.name.to_string(),
            l.shards.len().to_string(),
            cpu_list(&l.shards),
            l.callers_text(),
            l.sqpoll.map_or("-".to_string(), |c| c.to_string()),
            l.spin_text(),
            match (&l.skip, &l.note) {
                (Some(why), _) => format!("SKIPPED: {why}"),
                (None, Some(n)) => n.clone(),
                (None, None) => String::new(),
            },
        ]);
    }
    let mut width = [0usize; 7];
    for r in &rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut s = String::new();
    for r in &rows {
        let mut line = String::new();
        for (k, cell) in r.iter().enumerate() {
            let pad = width[k].saturating_sub(cell.chars().count());
            if k == 6 {
                line.push_str(cell);
            } else if k == 1 {
                let _ = write!(line, "{}{cell}  ", " ".repeat(pad));
            } else {
                let _ = write!(line, "{cell}{}  ", " ".repeat(pad));
            }
        }
        let _ = writeln!(s, "{}", line.trim_end());
    }
    s
}
