//! CPU and NUMA topology, and where shards go.
//!
//! A shard is one thread pinned to one CPU, with its buffers on that CPU's NUMA node, so the executor
//! needs to know three things about the machine: which CPUs are online, which of them are SMT
//! siblings on one physical core, and which NUMA node each belongs to. [`Topology`] holds exactly
//! that; [`Placement`] turns a user's wish ("all cores", "these cores", "these nodes", ...) into
//! the list of CPU ids the shards are pinned to, checked against the process's affinity mask.
//!
//! # Where the facts come from
//!
//! * **sysfs** ([`Topology::detect`], [`Topology::from_sysfs`]) is the source of truth. It needs no
//!   library, exists on every Linux, and because [`Topology::from_sysfs`] takes the root of the
//!   tree, every shape of machine (two sockets, offline CPUs, no NUMA directory) can be tested with
//!   small fixture trees under `tests/fixtures/sysfs/`.
//! * **hwloc** (`Topology::from_hwloc`, feature `hwloc`) is an alternative view through the
//!   `hwloc2` crate. hwloc2 2.2.0 has two known defects (see `DESIGN.md`): looking up the depth of
//!   NUMA nodes is off by one (`objects_with_type(NUMANode)` panics) and `TopologyObject::name()` is
//!   unsound. This module therefore uses only topology load, PU enumeration at the PU depth, the
//!   parent chain, `object_type()`, `os_index()`, and per-object `cpuset()` / `nodeset()`.
//!
//! Everything is kept in one module on purpose: the sysfs reader, the hwloc reader and the
//! placement rules share one small data model, and keeping them together keeps them consistent.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use crate::error::{Error, Result};

/// Largest CPU id [`parse_cpu_list`] accepts. Linux's `CONFIG_NR_CPUS` tops out at 8192 today;
/// the guard exists so that garbage such as `"0-99999999999"` is an error instead of a vector that
/// exhausts memory.
const MAX_CPU_ID: usize = 1 << 16;

/// One online logical CPU (a PU, in hwloc's words).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Cpu {
    /// The kernel's CPU number (`cpuN` in sysfs; what `sched_setaffinity` takes).
    pub id: usize,
    /// The core id, as in sysfs `topology/core_id`. Unique only within a package: use
    /// `(package, core)` to name a physical core.
    pub core: usize,
    /// The physical package (socket), as in sysfs `topology/physical_package_id`.
    pub package: usize,
    /// The NUMA node this CPU belongs to (0 on machines without NUMA information).
    pub node: u32,
    /// The online SMT siblings of this CPU on its physical core, itself included, sorted.
    pub siblings: Vec<usize>,
}

/// The machine's online CPUs and the NUMA nodes they sit on.
///
/// Build it with [`detect`](Self::detect) (sysfs under `/sys`), [`from_sysfs`](Self::from_sysfs)
/// (any sysfs-shaped tree, e.g. a test fixture) or, with the `hwloc` feature,
/// `from_hwloc`. It lists every online CPU, including ones the calling
/// process may not run on: [`Placement::resolve`] applies the affinity mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Online CPUs, sorted by id, ids unique.
    cpus: Vec<Cpu>,
    /// NUMA nodes that have at least one online CPU, sorted.
    nodes: Vec<u32>,
}

impl Topology {
    /// Reads the topology of this machine from sysfs at `/sys`.
    ///
    /// # Errors
    ///
    /// [`Error::Topology`] when sysfs is missing or malformed (the text names the file).
    pub fn detect() -> Result<Topology> {
        Self::from_sysfs(Path::new("/sys"))
    }

    /// Reads the topology from a directory laid out like `/sys`.
    ///
    /// Files read (all relative to `root`):
    ///
    /// * `devices/system/cpu/online`: the online CPUs (required);
    /// * `devices/system/cpu/cpuN/topology/{core_id,physical_package_id,thread_siblings_list}` for
    ///   each online CPU N. Offline CPUs are never read, so a missing or stale topology directory
    ///   of an offline CPU does no harm, and sibling lists are filtered to online CPUs. Where a file
    ///   is missing for an online CPU (some virtual machines and sandboxes hide them) the CPU is
    ///   treated as its own core (`core = id`) in package 0, and its siblings are the online CPUs
    ///   with the same `(package, core)`. A negative `physical_package_id` (some platforms report
    ///   -1) is read as package 0.
    /// * `devices/system/node/online` and `devices/system/node/nodeN/cpulist`. Without a
    ///   `devices/system/node` directory (kernels built without NUMA) every CPU is on node 0.
    ///   Without `node/online` the `nodeN` directories are listed instead. An online CPU that no
    ///   node lists is put on the lowest node (the kernel always lists it; this only keeps a
    ///   partial sysfs usable).
    ///
    /// # Errors
    ///
    /// [`Error::Topology`] naming the file that could not be read or parsed, when no CPU
    /// is online, or when one CPU is listed by two nodes.
    pub fn from_sysfs(root: &Path) -> Result<Topology> {
        let cpu_dir = root.join("devices/system/cpu");
        let online_path = cpu_dir.join("online");
        let online = read_cpu_list_file(&online_path, true)?.unwrap_or_default();
        if online.is_empty() {
            return Err(Error::Topology(format!(
                "{} lists no online CPU; is a sysfs tree mounted at {}?",
                online_path.display(),
                root.display()
            )));
        }
        let online_set: BTreeSet<usize> = online.iter().copied().collect();
        let node_of = read_node_map(root, &online_set)?;

        // First pass: core and package of every online CPU, and the sibling list where sysfs has
        // one. Siblings are completed in a second pass, from (package, core), where it has not.
        let mut cpus = Vec::with_capacity(online.len());
        let mut listed_siblings: Vec<Option<Vec<usize>>> = Vec::with_capacity(online.len());
        for &id in &online {
            let dir = cpu_dir.join(format!("cpu{id}/topology"));
            let core = match read_int_file(&dir.join("core_id"))? {
                Some(c) if c >= 0 => usize::try_from(c).unwrap_or(id),
                _ => id,
            };
            let package = match read_int_file(&dir.join("physical_package_id"))? {
                Some(p) if p >= 0 => usize::try_from(p).unwrap_or(0),
                _ => 0,
            };
            let siblings =
                read_cpu_list_file(&dir.join("thread_siblings_list"), false)?.map(|mut list| {
                    list.retain(|c| online_set.contains(c));
                    if !list.contains(&id) {
                        list.push(id);
                        list.sort_unstable();
                    }
                    list
                });
            listed_siblings.push(siblings);
            cpus.push(Cpu {
                id,
                core,
                package,
                node: node_of.node(id),
                siblings: Vec::new(),
            });
        }
        let mut by_core: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
        for cpu in &cpus {
            by_core
                .entry((cpu.package, cpu.core))
                .or_default()
                .push(cpu.id);
        }
        for (cpu, listed) in cpus.iter_mut().zip(listed_siblings) {
            cpu.siblings = match listed {
                Some(list) => list,
                None => by_core
                    .get(&(cpu.package, cpu.core))
                    .cloned()
                    .unwrap_or_else(|| vec![cpu.id]),
            };
        }
        Self::from_cpus(cpus)
    }

    /// Reads the topology through hwloc (the `hwloc2` crate and the system's libhwloc).
    ///
    /// The result has the same meaning as [`from_sysfs`](Self::from_sysfs): every online CPU,
    /// including ones outside this process's cpuset (the topology is loaded with hwloc's
    /// `INCLUDE_DISALLOWED` flag; [`Placement::resolve`] applies the affinity mask).
    ///
    /// How each field is found, using only the parts of hwloc2 2.2.0 that are sound:
    ///
    /// * `id`: the PU's OS index;
    /// * `core`, `package`: the OS index of the nearest `Core` / `Package` ancestor (on Linux
    ///   hwloc copies `core_id` and `physical_package_id` there). Without such an ancestor, or
    ///   with an unknown OS index, the CPU is its own core (`core = id`) in package 0;
    /// * `siblings`: the PUs in the `Core` ancestor's cpuset;
    /// * `node`: the lowest node in the PU's own nodeset (hwloc gives every object the set of
    ///   NUMA nodes local to it). The NUMA node objects themselves are not read, because hwloc2
    ///   2.2.0 panics when asked for them. Where the nodeset is empty or full (hwloc reports no
    ///   NUMA node), the CPU is on node 0. On machines where a CPU has several local nodes (e.g.
    ///   a CPU-less memory node attached high in the tree) the lowest-numbered one is taken,
    ///   which is normally the node that also holds CPUs.
    ///
    /// # Errors
    ///
    /// [`Error::Topology`] when hwloc cannot load the topology or reports no PU.
    #[cfg(feature = "hwloc")]
    pub fn from_hwloc() -> Result<Topology> {
        use hwloc2::{ObjectType, TopologyFlag, TopologyObject};

        // Walks up the parent chain to the nearest ancestor of type `ty`. Only `parent()` and
        // `object_type()` are used: both read fields at the offsets libhwloc 2.x really has.
        fn ancestor(pu: &TopologyObject, ty: ObjectType) -> Option<&TopologyObject> {
            let mut cur = pu.parent();
            while let Some(obj) = cur {
                if obj.object_type() == ty {
                    return Some(obj);
                }
                cur = obj.parent();
            }
            None
        }
        // hwloc's HWLOC_UNKNOWN_INDEX is (unsigned)-1.
        fn known(idx: u32) -> Option<usize> {
            (idx != u32::MAX).then_some(idx as usize)
        }

        let topo = hwloc2::Topology::with_flags(vec![TopologyFlag::IncludeDisallowed]).ok_or_else(
            || {
                Error::Topology(
                    "hwloc could not load the topology (hwloc_topology_init/load failed); use \
                     Topology::detect() (sysfs) instead, or check HWLOC_* environment variables"
                        .to_string(),
                )
            },
        )?;
        let pu_depth = topo.depth_for_type(&ObjectType::PU).map_err(|e| {
            Error::Topology(format!(
                "hwloc reports no depth for PU objects ({e:?}); use Topology::detect() (sysfs) \
                 instead"
            ))
        })?;
        let pus = topo.objects_at_depth(pu_depth);
        let ids: BTreeSet<usize> = pus.iter().map(|pu| pu.os_index() as usize).collect();

        let mut cpus = Vec::with_capacity(pus.len());
        for pu in &pus {
            let id = pu.os_index() as usize;
            let core_obj = ancestor(pu, ObjectType::Core);
            let core = core_obj.and_then(|c| known(c.os_index())).unwrap_or(id);
            let package = ancestor(pu, ObjectType::Package)
                .and_then(|p| known(p.os_index()))
                .unwrap_or(0);
            let mut siblings: Vec<usize> = core_obj
                .and_then(|c| c.cpuset())
                .map(|set| {
                    set.into_iter()
                        .map(|i| i as usize)
                        .filter(|i| ids.contains(i))
                        .collect()
                })
                .unwrap_or_default();
            if !siblings.contains(&id) {
                siblings.push(id);
            }
            siblings.sort_unstable();
            let node = match pu.nodeset() {
                Some(set) if !set.is_empty() && !set.is_full() => {
                    u32::try_from(set.first()).unwrap_or(0)
                }
                _ => 0,
            };
            cpus.push(Cpu {
                id,
                core,
                package,
                node,
                siblings,
            });
        }
        if cpus.is_empty() {
            return Err(Error::Topology(
                "hwloc reports no PU (logical CPU); use Topology::detect() (sysfs) instead"
                    .to_string(),
            ));
        }
        Self::from_cpus(cpus)
    }

    /// Builds a topology from a list of CPUs: sorts them, rejects duplicates, collects the nodes.
    fn from_cpus(mut cpus: Vec<Cpu>) -> Result<Topology> {
        cpus.sort_by_key(|c| c.id);
        if let Some((a, _)) = cpus
            .iter()
            .zip(cpus.iter().skip(1))
            .find(|(a, b)| a.id == b.id)
        {
            return Err(Error::Topology(format!("CPU {} is reported twice", a.id)));
        }
        let nodes: BTreeSet<u32> = cpus.iter().map(|c| c.node).collect();
        Ok(Topology {
            cpus,
            nodes: nodes.into_iter().collect(),
        })
    }

    /// The online CPUs, sorted by id.
    pub fn cpus(&self) -> &[Cpu] {
        &self.cpus
    }

    /// The online CPU with this id, or `None` when it is offline or does not exist.
    pub fn cpu(&self, id: usize) -> Option<&Cpu> {
        self.cpus
            .binary_search_by_key(&id, |c| c.id)
            .ok()
            .and_then(|i| self.cpus.get(i))
    }

    /// The NUMA nodes that have at least one online CPU, sorted. Memory-only nodes (CXL, HBM,
    /// ...) are not listed: no shard can run on them.
    pub fn nodes(&self) -> &[u32] {
        &self.nodes
    }

    /// The NUMA node of an online CPU.
    pub fn node_of_cpu(&self, cpu: usize) -> Option<u32> {
        self.cpu(cpu).map(|c| c.node)
    }

    /// One CPU per physical core: the lowest-numbered online CPU of each `(package, core)`,
    /// sorted by id.
    pub fn physical_cores(&self) -> Vec<usize> {
        physical_cores_of(self.cpus.iter())
    }

    /// The online CPUs of the given NUMA nodes: node by node in the order given, each node's CPUs
    /// by id. An empty slice gives an empty list.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for a node that does not exist or has no online CPU, and
    /// for a node listed twice.
    pub fn cpus_of_nodes(&self, nodes: &[u32]) -> Result<Vec<usize>> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for &node in nodes {
            if !seen.insert(node) {
                return Err(Error::InvalidConfig(format!(
                    "NUMA node {node} is listed twice; list each node once"
                )));
            }
            if !self.nodes.contains(&node) {
                return Err(self.unknown_node(node));
            }
            out.extend(self.cpus.iter().filter(|c| c.node == node).map(|c| c.id));
        }
        Ok(out)
    }

    /// `n` CPUs spread over the machine: round-robin across NUMA nodes, one CPU per physical core
    /// first (the lowest-numbered CPU of each core), then the second SMT thread of each core, and
    /// so on. Within one node and one round, CPUs go by id.
    ///
    /// On two nodes with cores `{0,8} {1,9}` on node 0 and `{4,12} {5,13}` on node 1 this gives
    /// `0, 4, 1, 5, 8, 12, 9, 13`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when `n` is 0 or larger than the number of online CPUs.
    pub fn spread(&self, n: usize) -> Result<Vec<usize>> {
        if n == 0 {
            return Err(Error::InvalidConfig(
                "spread over 0 CPUs: ask for at least one shard".to_string(),
            ));
        }
        if n > self.cpus.len() {
            return Err(Error::InvalidConfig(format!(
                "cannot spread {n} shards: this machine has {} online CPUs ({}); ask for at \
                 most {}",
                self.cpus.len(),
                format_cpu_list(&self.cpus.iter().map(|c| c.id).collect::<Vec<_>>()),
                self.cpus.len()
            )));
        }
        let mut order = spread_order(self.cpus.iter());
        order.truncate(n);
        Ok(order)
    }

    fn unknown_node(&self, node: u32) -> Error {
        Error::InvalidConfig(format!(
            "NUMA node {node} does not exist or has no online CPU; nodes with online CPUs: {}",
            self.nodes
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ))
    }
}

/// Lowest-numbered CPU of each `(package, core)` among `cpus`, sorted by id.
fn physical_cores_of<'a>(cpus: impl Iterator<Item = &'a Cpu>) -> Vec<usize> {
    let mut first: BTreeMap<(usize, usize), usize> = BTreeMap::new();
    for cpu in cpus {
        first
            .entry((cpu.package, cpu.core))
            .and_modify(|id| *id = (*id).min(cpu.id))
            .or_insert(cpu.id);
    }
    let mut out: Vec<usize> = first.into_values().collect();
    out.sort_unstable();
    out
}

/// Every CPU of `cpus` in spread order (see [`Topology::spread`]).
///
/// The SMT rank of a CPU is its position, by id, among the CPUs *of `cpus`* on the same
/// `(package, core)`: when only part of a core is allowed, its lowest allowed CPU counts as the
/// core's first thread, so a restricted mask still gets one shard per core before doubling up.
fn spread_order<'a>(cpus: impl Iterator<Item = &'a Cpu>) -> Vec<usize> {
    let mut sorted: Vec<&Cpu> = cpus.collect();
    sorted.sort_by_key(|c| c.id);
    let mut rank_of_core: HashMap<(usize, usize), usize> = HashMap::new();
    // rank -> node -> CPUs in id order
    let mut tiers: BTreeMap<usize, BTreeMap<u32, Vec<usize>>> = BTreeMap::new();
    for cpu in sorted {
        let rank = rank_of_core.entry((cpu.package, cpu.core)).or_insert(0);
        tiers
            .entry(*rank)
            .or_default()
            .entry(cpu.node)
            .or_default()
            .push(cpu.id);
        *rank += 1;
    }
    let mut out = Vec::new();
    for per_node in tiers.values() {
        let longest = per_node.values().map(Vec::len).max().unwrap_or(0);
        for i in 0..longest {
            out.extend(per_node.values().filter_map(|list| list.get(i).copied()));
        }
    }
    out
}

/// Parses a Linux CPU list such as `"0-3,8,10-11\n"` (the format of sysfs `online`, `cpulist`,
/// `thread_siblings_list`, and of `taskset -c`).
///
/// Surrounding whitespace (and the trailing newline sysfs writes) is ignored, as is whitespace
/// around each item. An empty or all-whitespace string is the empty list, as in the `cpulist` of
/// a node without CPUs. Ids come back in the order written, ranges expanded; duplicates are kept
/// so that a caller that cares (such as [`Placement::resolve`]) can reject them.
///
/// # Errors
///
/// [`Error::InvalidConfig`] for anything else: an empty item (`"1,,2"`, `"1,"`), a
/// missing bound (`"0-"`), a reversed range (`"3-1"`), a non-number (`"a"`, `"+1"`, `"0x1"`),
/// or an id above 65536. Never panics.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>> {
    let bad = |why: String| {
        Error::InvalidConfig(format!(
            "invalid CPU list {s:?}: {why}; expected comma-separated CPU ids and ranges, e.g. \
             \"0-3,8,10-11\""
        ))
    };
    let parse_id = |t: &str| -> Result<usize> {
        let t = t.trim();
        if t.is_empty() {
            return Err(bad("a range is missing a bound".to_string()));
        }
        if !t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(format!("{t:?} is not a CPU id")));
        }
        match t.parse::<usize>() {
            Ok(id) if id <= MAX_CPU_ID => Ok(id),
            _ => Err(bad(format!("CPU id {t} is larger than {MAX_CPU_ID}"))),
        }
    };
    let s_trim = s.trim();
    if s_trim.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for item in s_trim.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(bad("empty item between commas".to_string()));
        }
        match item.split_once('-') {
            None => out.push(parse_id(item)?),
            Some((lo, hi)) => {
                let (lo, hi) = (parse_id(lo)?, parse_id(hi)?);
                if lo > hi {
                    return Err(bad(format!(
                        "range {lo}-{hi} is reversed (write {hi}-{lo})"
                    )));
                }
                out.extend(lo..=hi);
            }
        }
    }
    Ok(out)
}

/// Formats CPU ids (sorted, deduplicated) as a compact list, e.g. `"0-3,8"`; used in error text.
fn format_cpu_list(ids: &[usize]) -> String {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    // Runs of consecutive ids as (start, end).
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for id in ids {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == id => *end = id,
            _ => runs.push((id, id)),
        }
    }
    let parts: Vec<String> = runs
        .into_iter()
        .map(|(start, end)| {
            if start == end {
                start.to_string()
            } else {
                format!("{start}-{end}")
            }
        })
        .collect();
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(",")
    }
}

/// The CPUs the calling thread may run on (`sched_getaffinity(0)`), sorted.
///
/// This is the mask `taskset`, `numactl --physcpubind` and a cgroup cpuset leave the process; a
/// shard pinned outside it would fail to pin.
///
/// # Errors
///
/// [`Error::Topology`] when `sched_getaffinity` fails.
pub fn allowed_cpus() -> Result<Vec<usize>> {
    const WORD_BITS: usize = u64::BITS as usize;
    // Far above any kernel's NR_CPUS (8192 today): stops the doubling if EINVAL has another cause.
    const MAX_MASK_BITS: usize = 1 << 18;
    // Start at glibc's cpu_set_t size (1024 CPUs) and grow: the kernel answers EINVAL when the
    // buffer is smaller than its own CPU mask (machines configured for more CPUs).
    let mut words = 1024 / WORD_BITS;
    loop {
        let mut buf = vec![0u64; words];
        let bytes = words * std::mem::size_of::<u64>();
        // SAFETY: `buf` is a live, 8-byte-aligned buffer of exactly `bytes` bytes, and cpu_set_t
        // is itself an array of 64-bit words; the kernel (and glibc) write at most `bytes` bytes
        // into it. pid 0 means the calling thread.
        let rc = unsafe {
            libc::sched_getaffinity(0, bytes, buf.as_mut_ptr().cast::<libc::cpu_set_t>())
        };
        if rc == 0 {
            let mut out = Vec::new();
            for (w, word) in buf.iter().enumerate() {
                for bit in 0..WORD_BITS {
                    if word & (1u64 << bit) != 0 {
                        out.push(w * WORD_BITS + bit);
                    }
                }
            }
            return Ok(out);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EINVAL) && words * WORD_BITS < MAX_MASK_BITS {
            words *= 2;
            continue;
        }
        return Err(Error::Topology(format!(
            "sched_getaffinity(0) failed: {err}"
        )));
    }
}

/// Where the shards go: which CPUs, in which order. One shard per CPU in the resolved list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Placement {
    /// One shard per online CPU the process may run on (the default), by id.
    #[default]
    AllCores,
    /// Exactly these CPUs, in this order (e.g. from a `--cores 0-3,8` option through
    /// [`parse_cpu_list`]).
    Cores(Vec<usize>),
    /// Every allowed CPU of these NUMA nodes: node by node in the order given, each node's CPUs
    /// by id.
    NumaNodes(Vec<u32>),
    /// One shard per physical core: the lowest-numbered allowed CPU of each core, SMT siblings
    /// left idle.
    PhysicalCores,
    /// This many shards spread round-robin across NUMA nodes, whole physical cores before SMT
    /// siblings (see [`Topology::spread`]).
    Spread(usize),
}

impl Placement {
    /// The CPU ids the shards are pinned to, in shard order, without duplicates.
    ///
    /// `allowed` is the set of CPUs the process may run on, normally [`allowed_cpus()`]. Every
    /// variant except [`Cores`](Self::Cores) considers only online CPUs in `allowed`;
    /// [`Cores`](Self::Cores) rejects a CPU outside it.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] with the reason and the fix: an empty list, a CPU or node
    /// listed twice, a CPU that is not online, a CPU outside the process's affinity mask, a node
    /// that does not exist or has no allowed CPU, `Spread(0)`, or more shards than allowed CPUs.
    pub fn resolve(&self, topo: &Topology, allowed: &[usize]) -> Result<Vec<usize>> {
        let allowed_set: BTreeSet<usize> = allowed.iter().copied().collect();
        let usable: Vec<&Cpu> = topo
            .cpus()
            .iter()
            .filter(|c| allowed_set.contains(&c.id))
            .collect();
        let online_list = || format_cpu_list(&topo.cpus().iter().map(|c| c.id).collect::<Vec<_>>());
        let allowed_list = || format_cpu_list(allowed);
        let nothing_usable = || {
            Error::InvalidConfig(format!(
                "no online CPU is in the process's affinity mask / cpuset (online: {}, \
                 allowed: {}); run the process with a mask that includes online CPUs (taskset \
                 -c, numactl, or the container's cpuset)",
                online_list(),
                allowed_list()
            ))
        };

        match self {
            Placement::AllCores => {
                if usable.is_empty() {
                    return Err(nothing_usable());
                }
                Ok(usable.iter().map(|c| c.id).collect())
            }
            Placement::PhysicalCores => {
                if usable.is_empty() {
                    return Err(nothing_usable());
                }
                Ok(physical_cores_of(usable.into_iter()))
            }
            Placement::Cores(list) => {
                if list.is_empty() {
                    return Err(Error::InvalidConfig(
                        "Placement::Cores with an empty CPU list: name at least one CPU (e.g. \
                         --cores 0-3), or use Placement::AllCores"
                            .to_string(),
                    ));
                }
                let mut seen = BTreeSet::new();
                for &id in list {
                    if !seen.insert(id) {
                        return Err(Error::InvalidConfig(format!(
                            "CPU {id} is listed twice in Placement::Cores ({}); list each CPU \
                             once: one shard per CPU",
                            list.iter()
                                .map(|c| c.to_string())
                                .collect::<Vec<_>>()
                                .join(",")
                        )));
                    }
                    if topo.cpu(id).is_none() {
                        return Err(Error::InvalidConfig(format!(
                            "CPU {id} is not online (online CPUs: {}); choose online CPUs, or \
                             bring it online (echo 1 > /sys/devices/system/cpu/cpu{id}/online)",
                            online_list()
                        )));
                    }
                    if !allowed_set.contains(&id) {
                        return Err(Error::InvalidConfig(format!(
                            "CPU {id} is outside the process's affinity mask / cpuset (allowed: \
                             {}); choose CPUs from the allowed set (or fewer cores), or start \
                             the process with a mask that includes it (taskset -c {}, or the \
                             container's cpuset)",
                            allowed_list(),
                            format_cpu_list(list)
                        )));
                    }
                }
                Ok(list.clone())
            }
            Placement::NumaNodes(nodes) => {
                if nodes.is_empty() {
                    return Err(Error::InvalidConfig(format!(
                        "Placement::NumaNodes with an empty node list: name at least one node \
                         (nodes with online CPUs: {})",
                        topo.nodes()
                            .iter()
                            .map(|n| n.to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    )));
                }
                let mut out = Vec::new();
                let mut seen = BTreeSet::new();
                for &node in nodes {
                    if !seen.insert(node) {
                        return Err(Error::InvalidConfig(format!(
                            "NUMA node {node} is listed twice in Placement::NumaNodes; list \
                             each node once"
                        )));
                    }
                    let of_node = topo.cpus_of_nodes(&[node])?;
                    let before = out.len();
                    out.extend(of_node.iter().copied().filter(|c| allowed_set.contains(c)));
                    if out.len() == before {
                        return Err(Error::InvalidConfig(format!(
                            "none of NUMA node {node}'s CPUs ({}) is in the process's affinity \
                             mask / cpuset (allowed: {}); choose another node, or start the \
                             process with a mask that includes them (taskset -c {}, numactl \
                             --cpunodebind={node})",
                            format_cpu_list(&of_node),
                            allowed_list(),
                            format_cpu_list(&of_node)
                        )));
                    }
                }
                Ok(out)
            }
            Placement::Spread(n) => {
                if *n == 0 {
                    return Err(Error::InvalidConfig(
                        "Placement::Spread(0): ask for at least one shard".to_string(),
                    ));
                }
                if *n > usable.len() {
                    return Err(Error::InvalidConfig(format!(
                        "more shards than cores: Placement::Spread({n}) asks for {n} shards but \
                         only {} CPUs are online and in the process's affinity mask ({}); ask \
                         for at most {} shards, or start the process with a wider mask (taskset \
                         -c, the container's cpuset)",
                        usable.len(),
                        format_cpu_list(&usable.iter().map(|c| c.id).collect::<Vec<_>>()),
                        usable.len()
                    )));
                }
                let mut order = spread_order(usable.into_iter());
                order.truncate(*n);
                Ok(order)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// sysfs reading

/// CPU -> node map read from `devices/system/node`, with the node for CPUs no node lists.
struct NodeMap {
    of_cpu: BTreeMap<usize, u32>,
    fallback: u32,
}

impl NodeMap {
    fn node(&self, cpu: usize) -> u32 {
        self.of_cpu.get(&cpu).copied().unwrap_or(self.fallback)
    }
}

fn read_node_map(root: &Path, online: &BTreeSet<usize>) -> Result<NodeMap> {
    let node_dir = root.join("devices/system/node");
    if !node_dir.is_dir() {
        // Kernel without CONFIG_NUMA: one implicit node.
        return Ok(NodeMap {
            of_cpu: BTreeMap::new(),
            fallback: 0,
        });
    }
    let node_ids: Vec<u32> = match read_cpu_list_file(&node_dir.join("online"), false)? {
        Some(list) => list
            .into_iter()
            .filter_map(|n| u32::try_from(n).ok())
            .collect(),
        None => list_node_dirs(&node_dir)?,
    };
    let mut of_cpu = BTreeMap::new();
    for &node in &node_ids {
        let path = node_dir.join(format!("node{node}/cpulist"));
        let Some(list) = read_cpu_list_file(&path, false)? else {
            continue;
        };
        for cpu in list.into_iter().filter(|c| online.contains(c)) {
            if let Some(other) = of_cpu.insert(cpu, node) {
                if other != node {
                    return Err(Error::Topology(format!(
                        "CPU {cpu} is listed by both node{other} and node{node} under {}; the \
                         sysfs tree is inconsistent",
                        node_dir.display()
                    )));
                }
            }
        }
    }
    Ok(NodeMap {
        of_cpu,
        fallback: node_ids.iter().copied().min().unwrap_or(0),
    })
}

/// Node ids from the names of the `nodeN` directories, sorted.
fn list_node_dirs(node_dir: &Path) -> Result<Vec<u32>> {
    let entries = std::fs::read_dir(node_dir).map_err(|e| read_error(node_dir, &e))?;
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| read_error(node_dir, &e))?;
        let name = entry.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|s| s.strip_prefix("node"))
            .and_then(|s| s.parse::<u32>().ok())
        {
            ids.push(n);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

fn read_error(path: &Path, e: &std::io::Error) -> Error {
    Error::Topology(format!(
        "cannot read {}: {e}; ringshard reads the CPU topology from sysfs (mount sysfs at /sys, \
         or in a container make the host's /sys/devices/system visible)",
        path.display()
    ))
}

/// Reads a sysfs file; `Ok(None)` when it does not exist and `required` is false.
fn read_optional(path: &Path, required: bool) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(None),
        Err(e) => Err(read_error(path, &e)),
    }
}

/// Reads a CPU (or node) list file, sorted and deduplicated; parse errors name the file.
fn read_cpu_list_file(path: &Path, required: bool) -> Result<Option<Vec<usize>>> {
    let Some(text) = read_optional(path, required)? else {
        return Ok(None);
    };
    let mut list = parse_cpu_list(&text).map_err(|e| {
        let why = match e {
            Error::InvalidConfig(why) => why,
            other => other.to_string(),
        };
        Error::Topology(format!("{}: {why}", path.display()))
    })?;
    list.sort_unstable();
    list.dedup();
    Ok(Some(list))
}

/// Reads a file holding one integer (may be negative); `Ok(None)` when it does not exist.
fn read_int_file(path: &Path) -> Result<Option<i64>> {
    let Some(text) = read_optional(path, false)? else {
        return Ok(None);
    };
    text.trim().parse::<i64>().map(Some).map_err(|_| {
        Error::Topology(format!(
            "{}: expected an integer, found {:?}",
            path.display(),
            text.trim()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture_root(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/sysfs")
            .join(name)
    }

    fn fixture(name: &str) -> Topology {
        Topology::from_sysfs(&fixture_root(name)).unwrap()
    }

    fn all(topo: &Topology) -> Vec<usize> {
        topo.cpus().iter().map(|c| c.id).collect()
    }

    fn config_err(r: Result<Vec<usize>>) -> String {
        match r {
            Err(Error::InvalidConfig(s)) => s,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn parse_cpu_list_accepts_kernel_formats() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11\n").unwrap(),
            vec![0, 1, 2, 3, 8, 10, 11]
        );
        assert_eq!(parse_cpu_list("").unwrap(), Vec::<usize>::new());
        assert_eq!(parse_cpu_list("\n").unwrap(), Vec::<usize>::new());
        assert_eq!(parse_cpu_list("  \t\n").unwrap(), Vec::<usize>::new());
        assert_eq!(parse_cpu_list("7").unwrap(), vec![7]);
        assert_eq!(parse_cpu_list("0-0").unwrap(), vec![0]);
        assert_eq!(parse_cpu_list(" 1 - 2 , 5 \n").unwrap(), vec![1, 2, 5]);
        // Order as written, duplicates kept (resolve rejects them with a clear message).
        assert_eq!(parse_cpu_list("3,1,1").unwrap(), vec![3, 1, 1]);
        assert_eq!(parse_cpu_list("65536").unwrap(), vec![65536]);
    }

    #[test]
    fn parse_cpu_list_rejects_garbage() {
        for bad in [
            "0-",
            "-1",
            "-",
            "3-1",
            "a",
            "1,,2",
            "1,",
            ",",
            ",1",
            "1-2-3",
            "+1",
            "0x1",
            "1 2",
            "1.5",
            "65537",
            "0-99999999999",
            "99999999999999999999999999",
            "٣",
            "0-3\0",
        ] {
            let e = parse_cpu_list(bad).unwrap_err();
            match &e {
                Error::InvalidConfig(s) => {
                    assert!(s.contains("invalid CPU list"), "{bad:?}: {s}");
                    assert!(s.contains("0-3,8,10-11"), "{bad:?}: {s}");
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert!(config_err(parse_cpu_list("3-1")).contains("reversed"));
    }

    #[test]
    fn format_cpu_list_compacts_ranges() {
        assert_eq!(format_cpu_list(&[3, 0, 1, 2, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(format_cpu_list(&[]), "none");
        assert_eq!(format_cpu_list(&[5]), "5");
    }

    #[test]
    fn two_socket_smt_parses() {
        let t = fixture("two_socket_smt");
        assert_eq!(all(&t), (0..16).collect::<Vec<_>>());
        assert_eq!(t.nodes(), &[0, 1]);
        assert_eq!(
            t.cpu(0).unwrap(),
            &Cpu {
                id: 0,
                core: 0,
                package: 0,
                node: 0,
                siblings: vec![0, 8]
            }
        );
        assert_eq!(
            t.cpu(13).unwrap(),
            &Cpu {
                id: 13,
                core: 1,
                package: 1,
                node: 1,
                siblings: vec![5, 13]
            }
        );
        assert_eq!(t.node_of_cpu(12), Some(1));
        assert_eq!(t.node_of_cpu(11), Some(0));
        assert_eq!(t.node_of_cpu(16), None);
        assert!(t.cpu(99).is_none());
        for c in t.cpus() {
            assert_eq!(c.siblings.len(), 2, "{c:?}");
            assert!(c.siblings.contains(&c.id));
        }
    }

    #[test]
    fn two_socket_smt_physical_cores_key_on_package_and_core() {
        // core_id repeats across packages (0..4 on each): keying on core_id alone would give 4.
        let t = fixture("two_socket_smt");
        assert_eq!(t.physical_cores(), (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn two_socket_smt_cpus_of_nodes() {
        let t = fixture("two_socket_smt");
        assert_eq!(
            t.cpus_of_nodes(&[1]).unwrap(),
            vec![4, 5, 6, 7, 12, 13, 14, 15]
        );
        assert_eq!(
            t.cpus_of_nodes(&[1, 0]).unwrap(),
            vec![4, 5, 6, 7, 12, 13, 14, 15, 0, 1, 2, 3, 8, 9, 10, 11]
        );
        assert_eq!(t.cpus_of_nodes(&[]).unwrap(), Vec::<usize>::new());
        let e = config_err(t.cpus_of_nodes(&[2]));
        assert!(e.contains("node 2") && e.contains("no online CPU"), "{e}");
        assert!(e.contains("0,1"), "{e}");
        assert!(config_err(t.cpus_of_nodes(&[0, 0])).contains("twice"));
    }

    #[test]
    fn two_socket_smt_spread_alternates_nodes_cores_before_siblings() {
        let t = fixture("two_socket_smt");
        assert_eq!(t.spread(1).unwrap(), vec![0]);
        assert_eq!(t.spread(4).unwrap(), vec![0, 4, 1, 5]);
        assert_eq!(
            t.spread(16).unwrap(),
            vec![0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]
        );
        let nine = t.spread(9).unwrap();
        assert_eq!(
            &nine[8..],
            &[8],
            "SMT siblings only after every physical core"
        );
        assert!(config_err(t.spread(0)).contains("at least one"));
        let e = config_err(t.spread(17));
        assert!(e.contains("16 online CPUs") && e.contains("0-15"), "{e}");
    }

    #[test]
    fn offline_cpu_is_skipped_and_stale_siblings_filtered() {
        let t = fixture("offline_cpu");
        assert_eq!(all(&t), vec![0, 1, 3]);
        assert!(t.cpu(2).is_none());
        assert_eq!(t.nodes(), &[0]);
        // cpu3's stale thread_siblings_list says "2-3"; cpu2 is offline.
        assert_eq!(t.cpu(3).unwrap().siblings, vec![3]);
        assert_eq!(t.cpu(0).unwrap().siblings, vec![0, 1]);
        assert_eq!(t.physical_cores(), vec![0, 3]);
        // node0/cpulist says "0-3": the offline cpu2 must not appear.
        assert_eq!(t.cpus_of_nodes(&[0]).unwrap(), vec![0, 1, 3]);
        assert_eq!(t.spread(3).unwrap(), vec![0, 3, 1]);
        let e = config_err(Placement::Cores(vec![2]).resolve(&t, &[0, 1, 2, 3]));
        assert!(
            e.contains("CPU 2 is not online") && e.contains("0-1,3"),
            "{e}"
        );
    }

    #[test]
    fn no_node_dir_puts_everything_on_node_0() {
        let t = fixture("no_node_dir");
        assert_eq!(all(&t), vec![0, 1, 2, 3]);
        assert_eq!(t.nodes(), &[0]);
        assert!(t.cpus().iter().all(|c| c.node == 0));
        assert_eq!(t.cpu(1).unwrap().siblings, vec![0, 1]);
        assert_eq!(t.physical_cores(), vec![0, 2]);
        assert_eq!(t.spread(4).unwrap(), vec![0, 2, 1, 3]);
        assert_eq!(t.cpus_of_nodes(&[0]).unwrap(), vec![0, 1, 2, 3]);
    }

    #[test]
    fn cpuless_node_missing_files_and_negative_package() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(r, "devices/system/cpu/online", "0-2\n");
        // cpu0: complete. cpu1: package -1, no sibling list. cpu2: no topology dir at all.
        write(r, "devices/system/cpu/cpu0/topology/core_id", "0\n");
        write(
            r,
            "devices/system/cpu/cpu0/topology/physical_package_id",
            "0\n",
        );
        write(
            r,
            "devices/system/cpu/cpu0/topology/thread_siblings_list",
            "0\n",
        );
        write(r, "devices/system/cpu/cpu1/topology/core_id", "1\n");
        write(
            r,
            "devices/system/cpu/cpu1/topology/physical_package_id",
            "-1\n",
        );
        // No node/online: node dirs are listed. node3 is memory-only (empty cpulist).
        write(r, "devices/system/node/node1/cpulist", "0-1\n");
        write(r, "devices/system/node/node3/cpulist", "\n");
        let t = Topology::from_sysfs(r).unwrap();
        assert_eq!(all(&t), vec![0, 1, 2]);
        assert_eq!(t.cpu(1).unwrap().package, 0);
        assert_eq!(t.cpu(1).unwrap().siblings, vec![1]);
        assert_eq!(t.cpu(2).unwrap().core, 2);
        // cpu2 is in no cpulist: it goes to the lowest node.
        assert_eq!(t.node_of_cpu(2), Some(1));
        assert_eq!(t.nodes(), &[1], "memory-only node 3 is not listed");
        let e = config_err(t.cpus_of_nodes(&[3]));
        assert!(e.contains("node 3"), "{e}");
    }

    #[test]
    fn sysfs_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let msg = |res: Result<Topology>| match res {
            Err(Error::Topology(s)) => s,
            other => panic!("expected Topology error, got {other:?}"),
        };

        let e = msg(Topology::from_sysfs(r));
        assert!(e.contains("devices/system/cpu/online"), "{e}");
        assert!(e.contains("sysfs"), "{e}");

        write(r, "devices/system/cpu/online", "\n");
        let e = msg(Topology::from_sysfs(r));
        assert!(e.contains("no online CPU"), "{e}");

        write(r, "devices/system/cpu/online", "0-x\n");
        let e = msg(Topology::from_sysfs(r));
        assert!(
            e.contains("cpu/online") && e.contains("invalid CPU list"),
            "{e}"
        );

        write(r, "devices/system/cpu/online", "0-1\n");
        write(r, "devices/system/cpu/cpu1/topology/core_id", "one\n");
        let e = msg(Topology::from_sysfs(r));
        assert!(
            e.contains("cpu1/topology/core_id") && e.contains("integer"),
            "{e}"
        );

        write(r, "devices/system/cpu/cpu1/topology/core_id", "1\n");
        write(r, "devices/system/node/online", "0-1\n");
        write(r, "devices/system/node/node0/cpulist", "0-1\n");
        write(r, "devices/system/node/node1/cpulist", "1\n");
        let e = msg(Topology::from_sysfs(r));
        assert!(
            e.contains("CPU 1") && e.contains("node0") && e.contains("node1"),
            "{e}"
        );

        write(r, "devices/system/node/node1/cpulist", "\n");
        assert_eq!(Topology::from_sysfs(r).unwrap().nodes(), &[0]);
    }

    #[test]
    fn placement_default_is_all_cores() {
        assert_eq!(Placement::default(), Placement::AllCores);
    }

    #[test]
    fn placement_all_cores_uses_allowed_online_cpus() {
        let t = fixture("two_socket_smt");
        let every: Vec<usize> = (0..16).collect();
        assert_eq!(Placement::AllCores.resolve(&t, &every).unwrap(), every);
        // Allowed CPUs that are not online (e.g. 40) are ignored.
        assert_eq!(
            Placement::AllCores.resolve(&t, &[9, 3, 40]).unwrap(),
            vec![3, 9]
        );
        let e = config_err(Placement::AllCores.resolve(&t, &[40]));
        assert!(e.contains("affinity mask") && e.contains("taskset"), "{e}");
        let t = fixture("offline_cpu");
        assert_eq!(
            Placement::AllCores.resolve(&t, &[0, 1, 2, 3]).unwrap(),
            vec![0, 1, 3]
        );
    }

    #[test]
    fn placement_cores_keeps_order_and_checks_each_cpu() {
        let t = fixture("two_socket_smt");
        let every: Vec<usize> = (0..16).collect();
        assert_eq!(
            Placement::Cores(vec![5, 0, 12])
                .resolve(&t, &every)
                .unwrap(),
            vec![5, 0, 12]
        );
        let e = config_err(Placement::Cores(vec![]).resolve(&t, &every));
        assert!(e.contains("empty"), "{e}");
        let e = config_err(Placement::Cores(vec![1, 2, 1]).resolve(&t, &every));
        assert!(e.contains("CPU 1 is listed twice"), "{e}");
        let e = config_err(Placement::Cores(vec![0, 16]).resolve(&t, &every));
        assert!(
            e.contains("CPU 16 is not online") && e.contains("0-15"),
            "{e}"
        );
        let e = config_err(Placement::Cores(vec![0, 1, 2]).resolve(&t, &[0, 1]));
        assert!(e.contains("CPU 2 is outside"), "{e}");
        assert!(e.contains("affinity mask / cpuset"), "{e}");
        assert!(e.contains("allowed: 0-1"), "{e}");
        assert!(
            e.contains("taskset -c 0-2") && e.contains("fewer cores"),
            "{e}"
        );
    }

    #[test]
    fn placement_numa_nodes() {
        let t = fixture("two_socket_smt");
        let every: Vec<usize> = (0..16).collect();
        assert_eq!(
            Placement::NumaNodes(vec![1]).resolve(&t, &every).unwrap(),
            vec![4, 5, 6, 7, 12, 13, 14, 15]
        );
        // Only allowed CPUs of each node, node order as given.
        assert_eq!(
            Placement::NumaNodes(vec![1, 0])
                .resolve(&t, &[0, 4, 8, 12])
                .unwrap(),
            vec![4, 12, 0, 8]
        );
        let e = config_err(Placement::NumaNodes(vec![]).resolve(&t, &every));
        assert!(e.contains("empty") && e.contains("0,1"), "{e}");
        let e = config_err(Placement::NumaNodes(vec![0, 0]).resolve(&t, &every));
        assert!(e.contains("twice"), "{e}");
        let e = config_err(Placement::NumaNodes(vec![7]).resolve(&t, &every));
        assert!(e.contains("node 7") && e.contains("does not exist"), "{e}");
        let e = config_err(Placement::NumaNodes(vec![0, 1]).resolve(&t, &[0, 1]));
        assert!(e.contains("node 1") && e.contains("4-7,12-15"), "{e}");
        assert!(e.contains("affinity mask"), "{e}");
    }

    #[test]
    fn placement_physical_cores() {
        let t = fixture("two_socket_smt");
        let every: Vec<usize> = (0..16).collect();
        assert_eq!(
            Placement::PhysicalCores.resolve(&t, &every).unwrap(),
            (0..8).collect::<Vec<_>>()
        );
        // cpu0 not allowed: its sibling cpu8 stands for core (0,0).
        assert_eq!(
            Placement::PhysicalCores
                .resolve(&t, &[1, 8, 9, 13])
                .unwrap(),
            vec![1, 8, 13]
        );
        assert!(config_err(Placement::PhysicalCores.resolve(&t, &[])).contains("affinity"));
    }

    #[test]
    fn placement_spread() {
        let t = fixture("two_socket_smt");
        let every: Vec<usize> = (0..16).collect();
        assert_eq!(
            Placement::Spread(6).resolve(&t, &every).unwrap(),
            vec![0, 4, 1, 5, 2, 6]
        );
        // Restricted mask: {0,8} and {1,9} on node 0, {12} on node 1.
        assert_eq!(
            Placement::Spread(5).resolve(&t, &[0, 1, 8, 9, 12]).unwrap(),
            vec![0, 12, 1, 8, 9]
        );
        assert!(config_err(Placement::Spread(0).resolve(&t, &every)).contains("at least one"));
        let e = config_err(Placement::Spread(3).resolve(&t, &[0, 1]));
        assert!(e.contains("more shards than cores"), "{e}");
        assert!(e.contains("only 2 CPUs"), "{e}");
        let e = config_err(Placement::Spread(17).resolve(&t, &every));
        assert!(e.contains("only 16 CPUs"), "{e}");
    }

    #[test]
    fn resolved_lists_have_no_duplicates() {
        for name in ["two_socket_smt", "offline_cpu", "no_node_dir"] {
            let t = fixture(name);
            let every = all(&t);
            let n = every.len();
            for p in [
                Placement::AllCores,
                Placement::PhysicalCores,
                Placement::NumaNodes(t.nodes().to_vec()),
                Placement::Spread(n),
                Placement::Cores(every.clone()),
            ] {
                let got = p.resolve(&t, &every).unwrap();
                let set: BTreeSet<usize> = got.iter().copied().collect();
                assert_eq!(set.len(), got.len(), "{name} {p:?}: {got:?}");
            }
        }
    }

    #[cfg(feature = "serde")]
    #[test]
    fn cpu_serializes_to_json() {
        let t = fixture("two_socket_smt");
        let json = serde_json::to_string(t.cpu(8).unwrap()).unwrap();
        assert_eq!(
            json,
            r#"{"id":8,"core":0,"package":0,"node":0,"siblings":[0,8]}"#
        );
    }

    #[test]
    fn detect_agrees_with_this_machine() {
        let t = Topology::detect().unwrap();
        let allowed = allowed_cpus().unwrap();
        assert!(!allowed.is_empty());
        // SAFETY: sysconf has no memory-safety preconditions.
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        assert_eq!(t.cpus().len() as i64, online as i64);
        for id in &allowed {
            assert!(t.cpu(*id).is_some(), "allowed cpu {id} is not online");
        }
        // available_parallelism = affinity mask, further lowered by a cgroup CPU quota.
        let par = std::thread::available_parallelism().unwrap().get();
        assert!(par <= allowed.len(), "{par} > {allowed:?}");
        assert_eq!(Placement::AllCores.resolve(&t, &allowed).unwrap(), allowed);
        assert!(!t.nodes().is_empty());
        for c in t.cpus() {
            assert!(c.siblings.contains(&c.id));
            assert!(t.nodes().contains(&c.node));
        }
        let phys = Placement::PhysicalCores.resolve(&t, &allowed).unwrap();
        assert!(!phys.is_empty() && phys.len() <= allowed.len());
        assert_eq!(
            Placement::Spread(allowed.len())
                .resolve(&t, &allowed)
                .unwrap()
                .len(),
            allowed.len()
        );
    }

    #[test]
    fn allowed_cpus_matches_proc_status() {
        let allowed = allowed_cpus().unwrap();
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap();
        let mut from_proc = parse_cpu_list(line).unwrap();
        from_proc.sort_unstable();
        assert_eq!(allowed, from_proc);
    }

    /// hwloc and sysfs must describe this machine the same way: same CPU ids, same core and
    /// package of each, same siblings, same node. The node comes from the PU's nodeset (see
    /// [`Topology::from_hwloc`]); NUMA node objects are never read (hwloc2 2.2.0 panics there).
    #[cfg(feature = "hwloc")]
    #[test]
    fn hwloc_agrees_with_sysfs_on_this_machine() {
        let sys = Topology::detect().unwrap();
        let hw = Topology::from_hwloc().unwrap();
        assert_eq!(all(&hw), all(&sys));
        for (h, s) in hw.cpus().iter().zip(sys.cpus()) {
            assert_eq!(h, s, "hwloc {h:?} vs sysfs {s:?}");
        }
        assert_eq!(hw.nodes(), sys.nodes());
        assert_eq!(hw.physical_cores(), sys.physical_cores());
    }

    /// The development machines have one NUMA node, so the test above cannot show that the
    /// nodeset-based node lookup of [`Topology::from_hwloc`] is right on a multi-node machine.
    /// hwloc can read a fake sysfs (`HWLOC_FSROOT`), and the fixtures carry the mask files hwloc
    /// needs (`thread_siblings`, `core_cpus`, `package_cpus`, node `cpumap`, `meminfo`) next to
    /// the list files ringshard reads. The environment variable must be set before hwloc loads and
    /// must not leak into other tests, so each fixture is checked in a child process: this test
    /// binary, re-run with only `hwloc_fixture_child` selected.
    #[cfg(feature = "hwloc")]
    #[test]
    fn hwloc_agrees_with_sysfs_on_fixtures() {
        for name in ["two_socket_smt", "offline_cpu", "no_node_dir"] {
            let fsroot = tempfile::tempdir().unwrap();
            std::os::unix::fs::symlink(fixture_root(name), fsroot.path().join("sys")).unwrap();
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--ignored",
                    "--exact",
                    "topology::tests::hwloc_fixture_child",
                    "--test-threads=1",
                ])
                .env("HWLOC_FSROOT", fsroot.path())
                // hwloc's x86 backend would add this machine's real CPUID caches to the fake tree.
                .env("HWLOC_COMPONENTS", "-x86")
                .env("RINGSHARD_TOPOLOGY_FIXTURE", name)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{name}:\n{stdout}\n{stderr}");
            assert!(
                stdout.contains("1 passed"),
                "{name}: child did not run:\n{stdout}"
            );
        }
    }

    /// Child of [`hwloc_agrees_with_sysfs_on_fixtures`]; does nothing without its environment.
    #[cfg(feature = "hwloc")]
    #[test]
    #[ignore = "run by hwloc_agrees_with_sysfs_on_fixtures with HWLOC_FSROOT set"]
    fn hwloc_fixture_child() {
        let Ok(name) = std::env::var("RINGSHARD_TOPOLOGY_FIXTURE") else {
            return;
        };
        assert_eq!(Topology::from_hwloc().unwrap(), fixture(&name));
    }
}
