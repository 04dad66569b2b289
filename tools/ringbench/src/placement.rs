//! Turning --shards / --cores / --numa-nodes / --physical-cores into the list of CPUs, with the
//! library's own placement rules and error messages.

use crate::error::BenchError;
use crate::workload::PlacementSpec;
use ringshard::topology::allowed_cpus;
use ringshard::{Placement, Topology};

/// The CPUs (one shard each) and their NUMA nodes.
#[derive(Debug, Clone)]
pub struct Cpus {
    pub cpus: Vec<usize>,
    pub nodes: Vec<Option<u32>>,
}

/// Resolves the placement; `shards` overrides `--shards` (for --sweep).
pub fn resolve(spec: &PlacementSpec, shards: Option<usize>) -> Result<Cpus, BenchError> {
    let topo = Topology::detect().map_err(|e| BenchError::from_lib("reading the topology", e))?;
    let allowed = allowed_cpus().map_err(|e| BenchError::from_lib("reading the CPU mask", e))?;
    let n = shards.or(spec.shards);
    let (base, flag) = if let Some(c) = &spec.cores {
        (Some(Placement::Cores(c.clone())), "--cores")
    } else if let Some(nodes) = &spec.numa_nodes {
        (Some(Placement::NumaNodes(nodes.clone())), "--numa-nodes")
    } else if spec.physical_cores {
        (Some(Placement::PhysicalCores), "--physical-cores")
    } else {
        (None, "--shards")
    };
    let cpus = match base {
        None => {
            let p = n.map_or(Placement::AllCores, Placement::Spread);
            let what = match n {
                Some(k) => format!("--shards {k}"),
                None => "placing the shards".to_string(),
            };
            p.resolve(&topo, &allowed)
                .map_err(|e| BenchError::from_lib(&what, e))?
        }
        Some(p) => {
            let mut list = p
                .resolve(&topo, &allowed)
                .map_err(|e| BenchError::from_lib(flag, e))?;
            if let Some(k) = n {
                if k == 0 || k > list.len() {
                    return Err(BenchError::usage(format!(
                        "--shards {k}: {flag} gives {} CPU(s) ({}); ask for 1 to {} shards",
                        list.len(),
                        list.iter()
                            .map(|c| c.to_string())
                            .collect::<Vec<_>>()
                            .join(","),
                        list.len()
                    )));
                }
                list.truncate(k);
            }
            list
        }
    };
    let nodes = cpus.iter().map(|&c| topo.node_of_cpu(c)).collect();
    Ok(Cpus { cpus, nodes })
}
