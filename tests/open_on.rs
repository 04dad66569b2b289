//! `Executor::open_on`: a file installed on a chosen shard, not the one its inode hashes to, on
//! both backends; one inode open on two shards; a bad shard index; opened from a shard task
//! onto that shard (its I/O then skips the channel).

mod executor_util;

use executor_util::*;
use ringshard::{BackendChoice, Error, Executor};

const BACKENDS: [BackendChoice; 2] = [BackendChoice::IoUring, BackendChoice::Threads];

fn exec(backend: BackendChoice) -> Executor {
    Executor::builder()
        .shards(2)
        .backend(backend)
        .build()
        .expect("executor")
}

#[test]
fn open_on_installs_on_the_named_shard() {
    for backend in BACKENDS {
        let exec = exec(backend);
        let dir = tempfile::tempdir().unwrap();
        for i in 0..4 {
            let path = dir.path().join(format!("f{i}"));
            std::fs::write(&path, b"").unwrap();
            // The other shard than the one its inode picks.
            let shard = 1 - exec.shard_of_path(&path).unwrap();
            let f = ok(exec.open_on(shard, &path, &rw()), "open_on");
            assert_eq!(f.shard(), shard, "{backend:?}: {}", path.display());
            let data = format!("file {i} on shard {shard}").into_bytes();
            assert_eq!(ok(exec.write(&f, 0, data.clone()), "write"), data.len());
            ok(exec.fsync(&f), "fsync");
            assert_eq!(ok(exec.read(&f, 0, 64), "read"), data);
            ok(exec.close(&f), "close");
            assert_eq!(std::fs::read(&path).unwrap(), data);
        }
        // Created by the open itself, too.
        let new = dir.path().join("new");
        let f = ok(exec.open_on(1, &new, &rwc()), "open_on with create");
        assert_eq!(f.shard(), 1);
        assert!(new.exists());
        exec.shutdown().unwrap();
    }
}

/// The same inode on both shards: each handle works, writes through one are read through the
/// other once awaited, and closing one leaves the other (each shard counts its own opens of it).
#[test]
fn one_inode_open_on_two_shards() {
    for backend in BACKENDS {
        let exec = exec(backend);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared");
        let home = ok(exec.open(&path, &rwc()), "open");
        let away = ok(exec.open_on(1 - home.shard(), &path, &rw()), "open_on");
        assert_ne!(home.shard(), away.shard(), "{backend:?}");
        ok(exec.write(&home, 0, b"written at home".to_vec()), "write");
        assert_eq!(ok(exec.read(&away, 0, 15), "read away"), b"written at home");
        ok(exec.write(&away, 0, b"WRITTEN".to_vec()), "write away");
        ok(exec.close(&home), "close home");
        assert_eq!(ok(exec.read(&away, 0, 15), "read away"), b"WRITTEN at home");
        assert_eq!(ok(exec.size(&away), "size"), 15);
        ok(exec.close(&away), "close away");
        exec.shutdown().unwrap();
    }
}

#[test]
fn open_on_a_shard_that_does_not_exist_is_refused() {
    let exec = exec(BackendChoice::Auto);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("never");
    let err = wait(exec.open_on(2, &path, &rwc())).unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument { op: "open_on", .. }),
        "{err:?}"
    );
    assert!(!path.exists(), "nothing created");
    exec.shutdown().unwrap();
}

/// A shard task opens its own file onto its own shard: the file's I/O from the task is local.
#[test]
fn a_task_opens_a_file_onto_its_own_shard() {
    for backend in BACKENDS {
        let exec = std::sync::Arc::new(exec(backend));
        let dir = tempfile::tempdir().unwrap();
        for shard in 0..2 {
            let path = dir.path().join(format!("log-{shard}"));
            let e = std::sync::Arc::clone(&exec);
            let got = exec
                .spawn_on(shard, async move {
                    let local = ringshard::local().expect("a shard task");
                    let f = e.open_on(local.index(), &path, &rwc()).await?;
                    assert_eq!(f.shard(), local.index());
                    local.write(&f, 0, b"mine".to_vec()).await?;
                    local.read(&f, 0, 4).await
                })
                .wait()
                .unwrap()
                .unwrap();
            assert_eq!(got, b"mine", "{backend:?}");
        }
        exec.shutdown().unwrap();
    }
}
