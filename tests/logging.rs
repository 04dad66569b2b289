//! With the `tracing` feature, shard setup and shard failure reach the application's subscriber
//! (`cargo test --features tracing --test logging`). Without the feature this file is empty.
#![cfg(feature = "tracing")]

mod executor_util;

use ringshard::Executor;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Every event as `LEVEL target: field=value ...`.
static EVENTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let m = event.metadata();
        let mut f = Fields(format!("{} {}:", m.level(), m.target()));
        event.record(&mut f);
        EVENTS.lock().unwrap_or_else(|e| e.into_inner()).push(f.0);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn events_with(what: &str) -> Vec<String> {
    EVENTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|e| e.contains(what))
        .cloned()
        .collect()
}

#[test]
fn setup_and_shard_failure_are_logged() {
    tracing::subscriber::set_global_default(Capture).expect("first subscriber");
    let exec = Executor::builder().shards(2).build().expect("executor");
    let ready = events_with("shard ready");
    assert_eq!(ready.len(), 2, "{ready:#?}");
    for e in &ready {
        assert!(e.starts_with("INFO ringshard::shard:"), "{e}");
        assert!(e.contains("ring_mode="), "{e}");
        assert!(e.contains("pool_buffers="), "{e}");
    }
    let mode = exec.stats().shards[0].ring_mode.expect("a ring").name();
    assert!(
        ready[0].contains(&format!("ring_mode=\"{mode}\"")),
        "{}",
        ready[0]
    );

    // A shard thread that dies is logged as an error with its panic message.
    let _ = executor_util::wait(exec.kill_shard_for_tests(1, Duration::ZERO));
    let deadline = std::time::Instant::now() + executor_util::HANG;
    while events_with("shard thread panicked").is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let died = events_with("shard thread panicked");
    assert_eq!(died.len(), 1, "{died:#?}");
    assert!(
        died[0].starts_with("ERROR ringshard::shard:"),
        "{}",
        died[0]
    );
    assert!(died[0].contains("shard=1"), "{}", died[0]);
    drop(exec);

    // The backend is logged once per executor, with its reason.
    let chosen = events_with("ringshard::backend");
    assert!(!chosen.is_empty(), "no backend event");
    assert!(chosen[0].contains("backend="), "{}", chosen[0]);

    // Operations over the slow-op threshold are logged with their kind, path and latency.
    let exec = Executor::builder()
        .shards(1)
        .slow_op_threshold(Some(Duration::ZERO))
        .build()
        .expect("executor");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("slow");
    let f = executor_util::ok(
        exec.open(
            &path,
            ringshard::OpenOptions::new().write(true).create(true),
        ),
        "open",
    );
    executor_util::ok(exec.write(&f, 0, vec![1u8; 10]), "write");
    let slow = events_with("slow operation");
    let write = slow
        .iter()
        .find(|e| e.contains("op=\"write\""))
        .unwrap_or_else(|| panic!("no slow write logged: {slow:#?}"));
    assert!(write.starts_with("WARN ringshard::slow:"), "{write}");
    assert!(write.contains("latency_ms="), "{write}");
    assert!(write.contains(path.to_str().unwrap()), "{write}");
    drop(exec);
    // Off by default for fast operations: the default threshold is 1 s.
    let before = events_with("slow operation").len();
    let exec = Executor::builder().shards(1).build().expect("executor");
    let f = executor_util::ok(
        exec.open(&path, ringshard::OpenOptions::new().write(true)),
        "open",
    );
    executor_util::ok(exec.write(&f, 0, vec![2u8; 10]), "write");
    drop(exec);
    assert_eq!(events_with("slow operation").len(), before);
}
