//! ringbench's error: a usage problem the user fixes (exit code 2) or a failure while running
//! (exit code 1). Either prints as one line.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BenchError {
    /// Bad flags or an environment that cannot run the workload: exit code 2.
    Usage(String),
    /// Something failed while running: exit code 1.
    Runtime(String),
}

impl BenchError {
    pub fn usage(msg: impl Into<String>) -> Self {
        BenchError::Usage(msg.into())
    }

    pub fn runtime(msg: impl Into<String>) -> Self {
        BenchError::Runtime(msg.into())
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            BenchError::Usage(_) => 2,
            BenchError::Runtime(_) => 1,
        }
    }

    /// A ringshard error, classified: configuration and environment problems (placement, ring
    /// setup refused, memlock) are usage errors; `context` says which flag or step it came from.
    pub fn from_lib(context: &str, e: ringshard::Error) -> Self {
        use ringshard::Error as E;
        let usage = matches!(
            e,
            E::InvalidConfig(_) | E::RingSetup { .. } | E::Registration { .. } | E::Topology(_)
        ) || (matches!(e, E::Io { op: "open", .. }) && e.errno() == Some(libc::EINVAL));
        let msg = format!("{context}: {e}");
        if usage {
            BenchError::Usage(msg)
        } else {
            BenchError::Runtime(msg)
        }
    }
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::Usage(m) | BenchError::Runtime(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for BenchError {}
