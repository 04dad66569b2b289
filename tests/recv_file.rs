//! recv_file: a socket's or pipe's bytes into a file without a user-space copy, on whichever
//! backend `RINGSHARD_BACKEND` picks. Every file is read back and checked byte by byte.

mod executor_util;
mod faultfs;

use executor_util::{eventually, ok, pattern_byte as byte, rwc, wait, Watchdog, HANG};
use ringshard::{Error, Executor, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

fn exec() -> Executor {
    Executor::builder().shards(1).build().unwrap()
}

fn pattern(seed: u64, len: u64) -> Vec<u8> {
    (0..len).map(|i| byte(seed, i)).collect()
}

/// Writes `data` to `w` on a thread (then drops it: the end of the stream, when `close`).
fn writer<W: Write + Send + 'static>(
    mut w: W,
    data: Vec<u8>,
    close: bool,
) -> std::thread::JoinHandle<Option<W>> {
    std::thread::spawn(move || {
        w.write_all(&data).expect("the peer's write");
        (!close).then_some(w)
    })
}

fn new_file(exec: &Executor, path: &Path) -> File {
    ok(exec.open(path, &rwc()), "open")
}

/// Lengths 0, 1, odd, many pipes' worth; a peer that ends its stream early gives a short count;
/// at an offset past the file's end (the file grows, with a hole before).
#[test]
fn lengths_zero_one_odd_many_pipes_and_a_peer_that_ends_early() {
    let _w = Watchdog::new("recv_file lengths", HANG);
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    // (offset, len asked, bytes the peer sends before closing)
    let cases: [(u64, u64, u64); 6] = [
        (0, 0, 0),
        (0, 1, 1),
        (7, 4097, 4097),
        (0, 3 * 1024 * 1024 + 517, 3 * 1024 * 1024 + 517),
        (100, 1 << 20, 300_001),
        (5 << 20, 70_000, 70_000),
    ];
    for (k, (offset, len, sent)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("f{k}"));
        let f = new_file(&exec, &path);
        let (a, b) = UnixStream::pair().unwrap();
        let data = pattern(k as u64, sent);
        // The peer closes after its bytes unless it sends exactly what is asked (then it
        // stays open: the count, not the end of the stream, must end the receive).
        let w = writer(b, data.clone(), sent < len);
        let got = ok(exec.recv_file(&f, offset, len, &a), "recv_file");
        assert_eq!(got, sent, "case {k}: offset {offset} len {len}");
        drop(w.join().unwrap());
        let on_disk = std::fs::read(&path).unwrap();
        let end = if sent == 0 { 0 } else { offset + sent };
        assert_eq!(on_disk.len() as u64, end, "case {k}: file size");
        if sent > 0 {
            assert!(on_disk[..offset as usize].iter().all(|&b| b == 0));
            assert!(
                on_disk[offset as usize..] == data[..],
                "case {k}: bytes differ"
            );
        }
        // A read through the executor after it sees the bytes (it is ordered after the write).
        if sent > 0 {
            let back = ok(exec.read(&f, offset, sent as usize), "read back");
            assert!(back == data, "case {k}: read back differs");
        }
    }
}

/// Over TCP: a non-blocking source (O_NONBLOCK, shared with the op's duplicate) with nothing to
/// read answers EAGAIN, which io_uring does not retry for SPLICE: the receive waits for input
/// and goes on. Arranged: the peer sends a first part, the receive writes it to the file (seen
/// from here), and only then the rest: the receive's next round found the socket empty.
#[test]
fn a_non_blocking_source_with_nothing_yet_is_waited_for() {
    let _w = Watchdog::new("recv_file waits for input", HANG);
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let f = new_file(&exec, &path);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    s.set_nonblocking(true).unwrap();
    let len = 2_000_000u64;
    let data = pattern(3, len);
    c.write_all(&data[..1000]).unwrap();
    let rx = exec.recv_file(&f, 0, len, &s);
    eventually("the first part in the file", HANG, || {
        std::fs::metadata(&path).is_ok_and(|m| m.len() == 1000)
    });
    c.write_all(&data[1000..]).unwrap();
    assert_eq!(ok(rx, "recv_file"), len);
    assert!(std::fs::read(&path).unwrap() == data);
}

/// A peer that sends part and then nothing: a deadline ends the receive with
/// `DeadlineExceeded`, saying how many bytes reached the file (the part sent before the call
/// was made: its first round takes them), and the file holds exactly those. A cancelled and a
/// dropped receive end too, and the next receive on the shard (pipes from the same pool) is
/// exact.
#[test]
fn a_silent_peer_is_cut_off_and_the_next_receive_is_exact() {
    let _w = Watchdog::new("recv_file from a silent peer", HANG);
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    for how in ["deadline", "cancel", "drop"] {
        let path = dir.path().join(format!("silent-{how}"));
        let f = new_file(&exec, &path);
        let (a, mut b) = UnixStream::pair().unwrap();
        let part = pattern(5, 1000);
        b.write_all(&part).unwrap();
        match how {
            "deadline" => {
                let r = wait(
                    exec.timeout(Duration::from_secs(1))
                        .recv_file(&f, 0, 5000, &a),
                );
                match r {
                    Err(e @ Error::DeadlineExceeded { .. }) => {
                        assert_eq!(e.written(), Some(1000), "{e:?}")
                    }
                    r => panic!("a silent peer's receive: {r:?}"),
                }
                assert!(std::fs::read(&path).unwrap() == part);
            }
            "cancel" => {
                let c = exec.recv_file(&f, 0, 5000, &a);
                c.cancel();
                assert!(matches!(wait(c), Err(Error::Cancelled { .. })));
            }
            _ => drop(exec.recv_file(&f, 0, 5000, &a)),
        }
        drop((a, b));
        // The next receive on the same shard: exact.
        let g = new_file(&exec, &dir.path().join(format!("next-{how}")));
        let (a, b) = UnixStream::pair().unwrap();
        let data = pattern(6, 700_000);
        let w = writer(b, data.clone(), true);
        assert_eq!(ok(exec.recv_file(&g, 0, 700_000, &a), how), 700_000);
        w.join().unwrap();
        assert!(std::fs::read(dir.path().join(format!("next-{how}"))).unwrap() == data);
    }
    // Every ended receive is accounted: nothing left in flight.
    let st = exec.stats();
    let kind = ringshard::OpKind::RecvFile.index();
    let done: u64 = st.shards.iter().map(|s| s.ops[kind]).sum();
    assert!(done >= 3, "{done} recv_file ops counted");
}

/// What it refuses, by name, before anything is sent: a file not open for writing, one with
/// O_APPEND or O_DIRECT, a source that is not a socket or pipe, a range past the largest offset.
#[test]
fn what_it_refuses_and_why() {
    let exec = exec();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, b"x").unwrap();
    let (a, _b) = UnixStream::pair().unwrap();
    let ro = ok(exec.open(&path, OpenOptions::new().read(true)), "open ro");
    assert!(matches!(
        wait(exec.recv_file(&ro, 0, 10, &a)),
        Err(Error::BadHandle(_))
    ));
    let ap = ok(
        exec.open(&path, OpenOptions::new().write(true).append(true)),
        "open append",
    );
    match wait(exec.recv_file(&ap, 0, 10, &a)) {
        Err(e @ Error::InvalidArgument { .. }) => assert!(e.to_string().contains("O_APPEND")),
        r => panic!("append: {r:?}"),
    }
    if let Ok(d) = wait(exec.open(&path, OpenOptions::new().write(true).direct(true))) {
        match wait(exec.recv_file(&d, 0, 4096, &a)) {
            Err(e @ Error::InvalidArgument { .. }) => assert!(e.to_string().contains("O_DIRECT")),
            r => panic!("direct: {r:?}"),
        }
    }
    let f = ok(exec.open(&path, &rwc()), "open");
    let plain = std::fs::File::open(&path).unwrap();
    match wait(exec.recv_file(&f, 0, 10, &plain)) {
        Err(e) => assert_eq!(e.errno(), Some(libc::ENOTSOCK), "{e:?}"),
        r => panic!("a regular file as source: {r:?}"),
    }
    assert!(matches!(
        wait(exec.recv_file(&f, u64::MAX - 5, 10, &a)),
        Err(Error::InvalidArgument { .. })
    ));
}

/// One shard with recv_file forced to the blocking path, and a new file `f` in a temporary
/// directory.
fn blocking_path() -> (Executor, tempfile::TempDir, std::path::PathBuf, File) {
    let exec = Executor::builder()
        .shards(1)
        .force_blocking(&[ringshard::OpKind::RecvFile])
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let f = new_file(&exec, &path);
    (exec, dir, path, f)
}

/// Forced to the blocking path (the shard thread runs the rounds as system calls, without
/// waiting for input): bytes already there are received; a source with nothing fails EAGAIN.
#[test]
fn on_the_blocking_path() {
    let (exec, _dir, path, f) = blocking_path();
    let (a, mut b) = UnixStream::pair().unwrap();
    let data = pattern(8, 50_000);
    b.write_all(&data).unwrap();
    assert_eq!(
        ok(exec.recv_file(&f, 0, 50_000, &a), "blocking path"),
        50_000
    );
    assert!(std::fs::read(&path).unwrap() == data);
    match wait(exec.recv_file(&f, 50_000, 10, &a)) {
        Err(e) => assert_eq!(e.errno(), Some(libc::EAGAIN), "{e:?}"),
        r => panic!("nothing to read on the blocking path: {r:?}"),
    }
}

/// From tasks on shards: `TcpStream::recv_file` after a receive of the head on the same stream
/// (the head's bytes are not in the file, the body's all are), into a file on the connection's
/// shard and on the other one, with the stream's receive timeout.
#[test]
fn a_stream_receives_an_upload_after_its_head_into_a_file_on_either_shard() {
    let _w = Watchdog::new("TcpStream::recv_file", HANG);
    let exec = std::sync::Arc::new(Executor::builder().shards(2).build().unwrap());
    let dir = tempfile::tempdir().unwrap();
    for file_shard in 0..2 {
        // A file placed on `file_shard`.
        let (path, f) = (0..64)
            .map(|i| {
                let p = dir.path().join(format!("up-{file_shard}-{i}"));
                let f = new_file(&exec, &p);
                (p, f)
            })
            .find(|(_, f)| f.shard() == file_shard)
            .expect("a file on each shard");
        let body = pattern(9 + file_shard as u64, 1_500_003);
        let head = format!("PUT {}\n", body.len()).into_bytes();
        let e2 = std::sync::Arc::clone(&exec);
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let h = exec.spawn_on(0, async move {
            let _keep = e2;
            let l = ringshard::TcpListener::bind("127.0.0.1:0".parse().unwrap())
                .await
                .expect("bind");
            addr_tx.send(l.local_addr()).unwrap();
            let (mut s, _) = l.accept().await.expect("accept");
            s.set_recv_timeout(Some(Duration::from_secs(30)));
            // The head: read up to its newline, one byte at a time (so no body byte is taken).
            let mut line = Vec::new();
            loop {
                let (r, b) = s.recv(Vec::with_capacity(1)).await.expect("recv handle");
                assert_eq!(r.expect("recv"), 1);
                line.push(b[0]);
                if b[0] == b'\n' {
                    break;
                }
            }
            let len: u64 = std::str::from_utf8(&line[4..line.len() - 1])
                .unwrap()
                .parse()
                .unwrap();
            let got = s.recv_file(&f, 0, len).await.expect("recv_file");
            let (r, _) = s.send_all(b"ok".to_vec()).await.expect("send handle");
            r.expect("answer");
            got
        });
        let addr = addr_rx.recv_timeout(HANG).unwrap();
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.write_all(&head).unwrap();
        c.write_all(&body).unwrap();
        let mut ans = [0u8; 2];
        std::io::Read::read_exact(&mut c, &mut ans).unwrap();
        assert_eq!(&ans, b"ok");
        assert_eq!(h.wait().unwrap(), body.len() as u64);
        assert!(
            std::fs::read(&path).unwrap() == body,
            "file on shard {file_shard}"
        );
    }
}

/// A `submit_to` closure runs once nothing of its shard's is in the kernel: a receive waiting
/// for a silent peer (a SPLICE waiting in the kernel for a blocking source, a POLL_ADD for a
/// non-blocking one) must not hold it, nor every op queued behind it, until the peer speaks. It
/// is taken out of the ring for the closure and put back after, and still receives every byte.
/// Arranged: an fsync sent after the receive completes only once the shard issued what came
/// before it (the receive's round, in the kernel from then on while the peer says nothing).
#[test]
fn submit_to_runs_while_a_receive_waits_for_a_silent_peer() {
    let _w = Watchdog::new("submit_to beside a waiting recv_file", HANG * 2);
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let other = new_file(&exec, &dir.path().join("other"));
    for source in ["blocking unix stream", "non-blocking tcp"] {
        let path = dir.path().join(format!("silent {source}"));
        let f = new_file(&exec, &path);
        // (The source is kept open: only the op's duplicate must be needed, but a receive that
        // ended early shows as its error, not as the peer's EPIPE.)
        type Ends = (Box<dyn Write + Send>, Box<dyn Send>);
        let ((mut peer, _src), rx): (Ends, _) = if source.starts_with("blocking") {
            let (a, b) = UnixStream::pair().unwrap();
            let rx = exec.recv_file(&f, 0, 3000, &a);
            ((Box::new(b), Box::new(a)), rx)
        } else {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (s, _) = l.accept().unwrap();
            s.set_nonblocking(true).unwrap();
            let rx = exec.recv_file(&f, 0, 3000, &s);
            ((Box::new(c), Box::new(s)), rx)
        };
        ok(exec.fsync(&other), "an fsync after the receive");
        assert_eq!(ok(exec.submit_to(0, |_ctx| 42u32), source), 42, "{source}");
        ok(exec.fsync(&other), "an fsync after the closure");
        let data = pattern(11, 3000);
        peer.write_all(&data).unwrap();
        assert_eq!(ok(rx, source), 3000, "{source}");
        assert!(std::fs::read(&path).unwrap() == data, "{source}");
    }
}

/// Forced to the blocking path, a blocking TCP socket with nothing to read fails the receive
/// with EAGAIN at once: the shard thread runs the round and must not wait in the kernel for the
/// peer (SPLICE_F_NONBLOCK does not stop a TCP socket's splice from waiting, only O_NONBLOCK
/// does). Then the peer's bytes are received.
#[test]
fn on_the_blocking_path_a_blocking_tcp_socket_with_nothing_fails_at_once() {
    let _w = Watchdog::new("blocking path, blocking tcp source", HANG * 2);
    let (exec, _dir, path, f) = blocking_path();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // Declared after `exec`, dropped before it: a shard stuck in the peer's socket is let go
    // (end of stream) when the test fails.
    let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    match wait(exec.recv_file(&f, 0, 10, &s)) {
        Err(e) => assert_eq!(e.errno(), Some(libc::EAGAIN), "{e:?}"),
        r => panic!("nothing to read on the blocking path: {r:?}"),
    }
    let data = pattern(12, 5000);
    c.write_all(&data).unwrap();
    // All of it in the socket first (one round takes it: a pipe holds 64 KiB at least), since
    // on the blocking path a receive that takes part and then finds nothing fails EAGAIN.
    eventually("the bytes sent are in the socket", HANG, || {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int into a local.
        let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut n) };
        r == 0 && n == 5000
    });
    assert_eq!(ok(exec.recv_file(&f, 0, 5000, &s), "the bytes sent"), 5000);
    assert!(std::fs::read(&path).unwrap() == data);
}

/// A deadline that passes while received bytes are on their way into the file (the drain held
/// in the filesystem, then taking 100 bytes a call) does not drop them: the receive writes all
/// it took, then stops with `DeadlineExceeded` saying so, and the source's next reader gets the
/// byte after them. Arranged: the first drain is held in FUSE (faultfs) until the deadline has
/// passed and the shard has scanned for it many times over.
#[test]
fn a_deadline_during_a_drain_writes_every_byte_received_first() {
    use faultfs::{Fault, Op};
    let _w = Watchdog::new("recv_file deadline during a held drain", HANG);
    let Some(fs) = fault_fs() else { return };
    let _release = fs.release_on_drop();
    let exec = exec();
    let name = "upload";
    let f = ok(exec.open(fs.join(name), &rwc()), "open on faultfs");
    {
        let mut r = fs.rules();
        r.add(name, &[Op::Write], 0..u64::MAX, Fault::Hold);
        r.add(name, &[Op::Write], 0..u64::MAX, Fault::Short(100));
    }
    let (a, mut b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    let data = pattern(14, 1500);
    b.write_all(&data[..1000]).unwrap();
    let limit = Duration::from_millis(100);
    let start = std::time::Instant::now();
    let rx = exec.timeout(limit).recv_file(&f, 0, 1500, &a);
    eventually("the first drain is held in the filesystem", HANG, || {
        fs.held() == 1
    });
    // The shard looks for passed deadlines every 5 ms: 40 scans past it.
    while start.elapsed() < limit + Duration::from_millis(200) {
        std::thread::sleep(Duration::from_millis(10));
    }
    fs.rules().remove_holds();
    fs.release_held();
    match wait(rx) {
        Err(e @ Error::DeadlineExceeded { .. }) => assert_eq!(e.written(), Some(1000), "{e:?}"),
        r => panic!("a receive past its deadline: {r:?}"),
    }
    assert!(std::fs::read(fs.backing(name)).unwrap() == data[..1000]);
    b.write_all(&data[1000..]).unwrap();
    a.set_nonblocking(false).unwrap();
    let mut next = vec![0u8; 500];
    std::io::Read::read_exact(&mut &a, &mut next).unwrap();
    assert!(
        next == data[1000..],
        "the source's next bytes are not the ones after the file's"
    );
}

/// A file system that fills up mid-receive (a 1 MiB tmpfs, 2 MiB sent): the receive fails with
/// ENOSPC naming the source and the file, the file holds what fitted, and the file's next
/// write is not held back by anything the failed receive left.
#[test]
fn a_full_file_system_fails_the_receive_with_enospc_by_name() {
    let _w = Watchdog::new("recv_file into a full tmpfs", HANG);
    let dir = tempfile::tempdir().unwrap();
    let c_dir = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: C strings that live across the call.
    let mounted = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            c_dir.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            c"size=1m".as_ptr().cast(),
        )
    } == 0;
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here (not root?)");
        return;
    }
    struct Unmount<'a>(&'a std::ffi::CString);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            // SAFETY: a C string that lives across the call.
            unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
        }
    }
    let _unmount = Unmount(&c_dir);
    let exec = exec();
    let path = dir.path().join("big");
    let f = new_file(&exec, &path);
    let (a, b) = UnixStream::pair().unwrap();
    let data = pattern(15, 2 << 20);
    let w = std::thread::spawn(move || {
        let mut b = b;
        // The receive stops reading at ENOSPC: the rest of the write fails with EPIPE.
        let _ = b.write_all(&data);
    });
    match wait(exec.recv_file(&f, 0, 2 << 20, &a)) {
        Err(e) => {
            assert_eq!(e.errno(), Some(libc::ENOSPC), "{e:?}");
            let text = e.to_string();
            assert!(text.contains("recv_file") && text.contains("big"), "{text}");
        }
        r => panic!("a receive larger than the file system: {r:?}"),
    }
    drop(a);
    w.join().unwrap();
    let on_disk = std::fs::read(&path).unwrap();
    assert!(on_disk.len() <= 1 << 20, "{}", on_disk.len());
    assert!(on_disk[..] == pattern(15, on_disk.len() as u64)[..]);
    ok(exec.set_len(&f, 0), "truncate after the failed receive");
    assert_eq!(ok(exec.write(&f, 0, b"ok".to_vec()), "write after it"), 2);
}

/// A file that takes nothing of a non-empty pipe without an error (a broken filesystem: here a
/// FUSE write answered "0 bytes written") fails the receive with EIO, as a write that makes no
/// progress does: not a success short of `len`, which says the peer ended its stream.
#[test]
fn a_file_that_takes_nothing_fails_the_receive_with_eio() {
    use faultfs::{Fault, Op};
    let _w = Watchdog::new("recv_file into a file that takes nothing", HANG);
    let Some(fs) = fault_fs() else { return };
    let exec = exec();
    let name = "nothing";
    let f = ok(exec.open(fs.join(name), &rwc()), "open on faultfs");
    fs.rules()
        .add(name, &[Op::Write], 0..u64::MAX, Fault::WriteNothing);
    let (a, mut b) = UnixStream::pair().unwrap();
    b.write_all(&pattern(16, 1000)).unwrap();
    match wait(exec.recv_file(&f, 0, 5000, &a)) {
        Err(e) => assert_eq!(e.errno(), Some(libc::EIO), "{e:?}"),
        r => panic!("a file that takes nothing: {r:?}"),
    }
}

/// A faultfs mount, or `None` (the test is skipped, saying why) where FUSE is not available.
fn fault_fs() -> Option<faultfs::FaultFs> {
    match faultfs::FaultFs::mount() {
        Ok(fs) => Some(fs),
        Err(e) => {
            eprintln!("skipped: no FUSE mount ({e})");
            None
        }
    }
}

/// Shutdown does not wait for a receive whose peer says nothing (the grace period, an hour
/// here, is for writes to land): the receive is cancelled at once, whether it waits in a
/// SPLICE (a blocking source) or a POLL_ADD (a non-blocking one), and its handle says so.
/// Arranged: an fsync sent after the receives completes only once their rounds were issued.
#[test]
fn shutdown_does_not_wait_for_a_silent_peer() {
    let _w = Watchdog::new("shutdown beside waiting recv_files", HANG);
    let exec = Executor::builder()
        .shards(1)
        .shutdown_timeout(Duration::from_secs(3600))
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = new_file(&exec, &dir.path().join("f"));
    let other = new_file(&exec, &dir.path().join("other"));
    let (blocking, _peer1) = UnixStream::pair().unwrap();
    let (nonblocking, _peer2) = UnixStream::pair().unwrap();
    nonblocking.set_nonblocking(true).unwrap();
    let r1 = exec.recv_file(&f, 0, 100, &blocking);
    let r2 = exec.recv_file(&f, 100, 100, &nonblocking);
    ok(exec.fsync(&other), "an fsync after the receives");
    exec.shutdown().expect("shutdown");
    for r in [r1, r2] {
        match wait(r) {
            Err(Error::Cancelled { .. }) => {}
            r => panic!("a receive at shutdown: {r:?}"),
        }
    }
}
