//! send_file: a file's bytes to a socket or pipe without a user-space copy, on whichever backend
//! `RINGSHARD_BACKEND` picks. Every reader checks every byte it gets.

mod executor_util;

use executor_util::{
    ok, pattern_byte as byte, pattern_reader as reader, rwc, stop_stalled_send_file, wait,
    wait_until_full,
};
use ringshard::{Error, Executor, File, OpenOptions};
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// One shard: every send below uses the same shard's pipe pool.
fn exec() -> Executor {
    Executor::builder().shards(1).build().unwrap()
}

fn pattern(seed: u64, len: u64) -> Vec<u8> {
    (0..len).map(|i| byte(seed, i)).collect()
}

/// A file at `path` of `len` bytes of pattern `seed`, written with std.
fn make(exec: &Executor, path: &Path, seed: u64, len: u64) -> File {
    std::fs::write(path, pattern(seed, len)).unwrap();
    ok(exec.open(path, &rwc()), "open")
}

#[test]
fn lengths_zero_one_unaligned_larger_than_the_pipe_and_past_eof() {
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let size: u64 = 3 * 1024 * 1024 + 517;
    let f = make(&exec, &dir.path().join("f"), 1, size);
    // (offset, len, bytes that exist there)
    let cases: [(u64, u64, u64); 7] = [
        (0, 0, 0),
        (0, 1, 1),
        (7, 4097, 4097),
        (4095, 300_001, 300_001),
        (0, size, size), // 12+ pipes' worth: many rounds
        (size - 10, 100, 10),
        (size + 5, 100, 0),
    ];
    for (offset, len, exist) in cases {
        let (a, b) = UnixStream::pair().unwrap();
        let r = reader(b, 1, offset, exist);
        let sent = ok(exec.send_file(&f, offset, len, &a), "send_file");
        assert_eq!(sent, exist, "offset {offset} len {len}");
        drop(a);
        r.join().unwrap();
    }
    // The same through the file's own face, to a TCP connection over loopback.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    let r = reader(c, 1, 1000, size - 1000);
    assert_eq!(ok(f.send_to(1000, size, &s), "send_to"), size - 1000);
    r.join().unwrap();
}

#[test]
fn the_destination_may_be_closed_by_its_owner_while_the_send_runs() {
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let len = 2 << 20;
    let f = make(&exec, &dir.path().join("f"), 2, len);
    let (a, b) = UnixStream::pair().unwrap();
    // Nobody reads yet: the send cannot finish before `a` is closed here.
    let c = exec.send_file(&f, 0, len, &a);
    drop(a);
    let r = reader(b, 2, 0, len);
    assert_eq!(ok(c, "send_file"), len);
    r.join().unwrap();
}

/// A peer that stops reading: the send waits (arranged: nobody reads, and the file is larger
/// than the destination pipe and the send's pipe together); a deadline, a cancellation or a
/// dropped handle ends it, and the pipe it leaves with bytes in it is never reused: the next
/// sends on the shard, which take pipes from the same pool, are byte-exact. (The destination
/// is a pipe: a socket's send of a cached range goes inline, with no pipe to leave bytes in.)
#[test]
fn a_stalled_peer_is_cancelled_and_the_next_send_is_exact() {
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let big = 16 << 20;
    let f = make(&exec, &dir.path().join("big"), 3, big);
    let g = make(&exec, &dir.path().join("small"), 4, 700_000);
    for how in ["deadline", "cancel", "drop"] {
        let (b, a) = pipe();
        stop_stalled_send_file(&exec, how, &f, big, &a, || {
            wait_until_full(&a);
            true
        });
        drop((a, b));
        // The next send on the same shard: exact, whatever pipe it gets (and on the copy
        // path, small sends).
        for len in [700_000, 700_000, 700_000, 5000] {
            let (b, a) = pipe();
            let r = reader(b, 4, 0, len);
            assert_eq!(ok(exec.send_file(&g, 0, len, &a), how), len);
            drop(a);
            r.join().unwrap();
        }
    }
    let stats = exec.stats();
    let kind = ringshard::OpKind::SendFile.index();
    let done: u64 = stats.shards.iter().map(|s| s.ops[kind]).sum();
    assert!(done >= 12, "{done} send_file ops counted");
    // The cancelled and the dropped send ended with bytes in their pipes (their socket was
    // full: a drain was waiting): closed, not reused.
    assert!(
        stats.total.pipes_dirty >= 1,
        "{:?}",
        stats.total.pipes_dirty
    );
    assert!(stats.total.pipes_made >= 3);
}

/// A directory on the target's disk (not a tmpfs, whose pages cannot be evicted).
fn disk_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// cachestat(2) over the whole file at `path`: (pages in the page cache, pages of the file), or
/// `None` where the kernel has no cachestat (before 6.5: send_file then never goes inline).
fn cached_pages(path: &Path) -> Option<(u64, u64)> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len();
    let range = [0u64, len]; // struct cachestat_range { off, len }
    let mut st = [0u64; 5]; // struct cachestat: nr_cache first
                            // SAFETY: cachestat (451) reads `range` and writes `st`, two locals of its layout.
    let rc = unsafe {
        libc::syscall(
            451,
            f.as_raw_fd() as libc::c_uint,
            range.as_ptr(),
            st.as_mut_ptr(),
            0 as libc::c_uint,
        )
    };
    if rc != 0 {
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENOSYS),
            "cachestat"
        );
        return None;
    }
    Some((st[0], len.div_ceil(4096)))
}

/// Drops the file at `path` from the page cache (written back first, then
/// POSIX_FADV_DONTNEED), and checks it is gone where the kernel can tell.
fn evict(path: &Path) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    f.sync_all().unwrap();
    // SAFETY: posix_fadvise takes no memory.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise");
    if let Some((cached, _)) = cached_pages(path) {
        assert_eq!(cached, 0, "{} still cached after DONTNEED", path.display());
    }
}

/// Reads the whole file at `path` (into the page cache), and checks it is all there where the
/// kernel can tell.
fn make_resident(path: &Path) {
    std::fs::read(path).unwrap();
    if let Some((cached, pages)) = cached_pages(path) {
        assert!(cached >= pages, "{cached} of {pages} pages cached");
    }
}

/// Sends to `s` until its buffer is full, without blocking.
fn fill(s: &UnixStream) {
    use std::os::fd::AsRawFd;
    let junk = [0u8; 4096];
    loop {
        // SAFETY: reads 4096 bytes from a live local.
        let n = unsafe {
            libc::send(
                s.as_raw_fd(),
                junk.as_ptr().cast(),
                4096,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            assert_eq!(
                std::io::Error::last_os_error().raw_os_error(),
                Some(libc::EAGAIN)
            );
            return;
        }
    }
}

/// A pipe: (read end, write end).
/// Two handles of one file on one shard share its order list: dropping one whose send waits for
/// a peer that reads nothing queues its close behind that send, and the other handle's reads
/// and sends go on meanwhile (the close holds back nothing after it). Arranged: nobody reads
/// the first pipe, and the file is larger than that pipe and the send's own together.
#[test]
fn a_handle_closed_behind_a_stalled_send_holds_back_no_other_handle_of_the_file() {
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    let big = 16 << 20;
    let f = make(&exec, &path, 6, big);
    let g = ok(exec.open(&path, OpenOptions::new().read(true)), "open");
    let (b, a) = pipe();
    let stalled = exec.send_file(&f, 0, big, &a);
    wait_until_full(&a);
    drop(f);
    let _w = executor_util::Watchdog::new("a handle behind another's close", executor_util::HANG);
    let head = ok(exec.read(&g, 0, 4096), "read");
    assert_eq!(head.len(), 4096);
    assert!(head
        .iter()
        .enumerate()
        .all(|(i, &x)| x == byte(6, i as u64)));
    let (b2, a2) = pipe();
    let r = reader(b2, 6, 1000, 700_000);
    assert_eq!(
        ok(exec.send_file(&g, 1000, 700_000, &a2), "send_file"),
        700_000
    );
    drop(a2);
    r.join().unwrap();
    stalled.cancel();
    assert!(matches!(wait(stalled), Err(Error::Cancelled { .. })));
    drop((a, b));
}

fn pipe() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: two fresh descriptors nobody else owns.
    unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

/// The copy path (sends of at most 64 KiB): a stalled peer is cancelled too, and a peer that
/// went away is EPIPE.
#[test]
fn small_sends_to_a_stalled_or_closed_peer() {
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let f = make(&exec, &dir.path().join("f"), 8, 60_000);
    let (a, b) = UnixStream::pair().unwrap();
    // Fill the socket (MSG_DONTWAIT: this call only; the socket stays blocking), so the
    // send cannot finish.
    fill(&a);
    let stalled = exec.send_file(&f, 0, 60_000, &a);
    stalled.cancel();
    assert!(matches!(wait(stalled), Err(Error::Cancelled { .. })));
    drop(b);
    match wait(exec.send_file(&f, 0, 60_000, &a)) {
        Err(e) => assert_eq!(e.errno(), Some(libc::EPIPE), "{e}"),
        Ok(n) => panic!("sent {n} bytes to a closed peer"),
    }
    // And the next small send is exact.
    let (a, b) = UnixStream::pair().unwrap();
    let r = reader(b, 8, 100, 59_900);
    assert_eq!(ok(exec.send_file(&f, 100, 60_000, &a), "copy"), 59_900);
    drop(a);
    r.join().unwrap();
}

/// The peer closes mid-send: EPIPE or ECONNRESET, named, not a panic.
#[test]
fn a_peer_that_goes_away_is_epipe_or_econnreset() {
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let big = 16 << 20;
    let f = make(&exec, &dir.path().join("f"), 5, big);
    for tcp in [false, true] {
        let (sender, mut peer): (Box<dyn std::os::fd::AsFd>, Box<dyn Read + Send>) = if tcp {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (s, _) = l.accept().unwrap();
            (Box::new(s), Box::new(c))
        } else {
            let (a, b) = UnixStream::pair().unwrap();
            (Box::new(a), Box::new(b))
        };
        let c = exec.send_file(&f, 0, big, &*sender);
        // Read a little (the send has started), then go away with bytes unread.
        let mut buf = vec![0u8; 4096];
        peer.read_exact(&mut buf).unwrap();
        assert_eq!(buf, pattern(5, 4096));
        drop(peer);
        match wait(c) {
            Err(e @ Error::PathPair { .. }) => {
                let errno = e.errno().unwrap();
                assert!(
                    errno == libc::EPIPE || errno == libc::ECONNRESET,
                    "tcp {tcp}: {e}"
                );
                let text = e.to_string();
                assert!(text.contains("send_file") && text.contains("/f"), "{text}");
            }
            other => panic!("tcp {tcp}: {other:?}"),
        }
    }
}

#[test]
fn o_direct_files_are_sent_and_checked_for_alignment() {
    let exec = exec();
    // /tmp: ext4 on the development machines (tmpfs may refuse O_DIRECT).
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let path = dir.path().join("d");
    let len: u64 = 1 << 20;
    std::fs::write(&path, pattern(6, len)).unwrap();
    let f = match wait(exec.open(&path, OpenOptions::new().read(true).direct(true))) {
        Ok(f) => f,
        Err(e) if e.errno() == Some(libc::EINVAL) => return, // no O_DIRECT here
        Err(e) => panic!("{e}"),
    };
    let (a, b) = UnixStream::pair().unwrap();
    let r = reader(b, 6, 4096, len - 4096);
    assert_eq!(
        ok(exec.send_file(&f, 4096, len, &a), "O_DIRECT"),
        len - 4096
    );
    r.join().unwrap();
    match wait(exec.send_file(&f, 1, 4096, &a)) {
        Err(Error::InvalidArgument {
            op: "send_file", ..
        }) => {}
        other => panic!("unaligned O_DIRECT: {other:?}"),
    }
}

#[test]
fn a_destination_that_is_not_a_socket_or_pipe_is_refused_by_name() {
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let f = make(&exec, &dir.path().join("f"), 7, 100);
    let plain = std::fs::File::create(dir.path().join("plain")).unwrap();
    match wait(exec.send_file(&f, 0, 100, &plain)) {
        Err(e @ Error::PathPair { .. }) => {
            assert_eq!(e.errno(), Some(libc::ENOTSOCK));
            assert!(e.to_string().contains("send_file"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    // A pipe is a destination too.
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: two fresh descriptors nobody else owns.
    let (mut r, w) = unsafe {
        use std::os::fd::FromRawFd;
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    let t = std::thread::spawn(move || {
        let mut v = Vec::new();
        r.read_to_end(&mut v).unwrap();
        v
    });
    assert_eq!(ok(exec.send_file(&f, 10, 90, &w), "to a pipe"), 90);
    drop(w);
    assert_eq!(t.join().unwrap(), pattern(7, 100)[10..].to_vec());
    // A file not opened for reading.
    let wo = ok(
        exec.open(
            dir.path().join("wo"),
            OpenOptions::new().write(true).create(true),
        ),
        "open",
    );
    let (a, _b) = UnixStream::pair().unwrap();
    assert!(matches!(
        wait(exec.send_file(&wo, 0, 1, &a)),
        Err(Error::BadHandle(_))
    ));
}

/// From a task: on the file's own shard and on another shard (the request crosses to the
/// file's shard, which moves the bytes with its duplicate of the socket), with a deadline
/// through the task's face.
#[test]
fn from_tasks_on_the_files_shard_and_on_another() {
    let exec = Executor::builder().shards(2).build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let len = 1 << 20;
    let f = make(&exec, &dir.path().join("f"), 9, len);
    let owner = f.shard();
    for shard in [owner, 1 - owner] {
        let (a, b) = UnixStream::pair().unwrap();
        let r = reader(b, 9, 10, len - 10);
        let file = f.clone();
        let h = exec.spawn_on(shard, async move {
            let l = ringshard::local().expect("on a shard");
            let sent = l.send_file(&file, 10, len - 20, &a).await.unwrap();
            // The last 10 bytes (the copy path), with a deadline it meets.
            let small = l
                .timeout(Duration::from_secs(30))
                .send_file(&file, len - 10, 10, &a)
                .await
                .unwrap();
            (sent, small)
        });
        let (sent, small) = h.wait().unwrap();
        assert_eq!((sent, small), (len - 20, 10), "task on shard {shard}");
        r.join().unwrap();
    }
}

/// Forced to the blocking path (the shard thread runs the rounds as system calls): sends that
/// fit the socket's buffer, on both paths (copy and splice).
#[test]
fn on_the_blocking_path() {
    let exec = Executor::builder()
        .shards(1)
        .force_blocking(&[ringshard::OpKind::SendFile])
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = make(&exec, &dir.path().join("f"), 10, 100_000);
    for len in [50_000u64, 80_000] {
        let (a, b) = UnixStream::pair().unwrap();
        let r = reader(b, 10, 7, len);
        assert_eq!(ok(exec.send_file(&f, 7, len, &a), "blocking path"), len);
        drop(a);
        r.join().unwrap();
    }
}

/// A non-blocking destination (its O_NONBLOCK is shared with the op's duplicate) answers EAGAIN
/// once full, which io_uring does not retry for SPLICE or a socket WRITE: the send waits for
/// room and goes on, whole, once the peer reads (spliced and copied sends). The peer starts
/// reading only once the socket is full, so the wait is always taken.
#[test]
fn a_non_blocking_destination_that_fills_is_waited_for() {
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let size: u64 = 4 * 1024 * 1024;
    let f = make(&exec, &dir.path().join("f"), 11, size);
    for len in [size, 60_000] {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        if len < 64 * 1024 {
            fill(&a); // a small send must meet a full socket too
        }
        let sending = exec.send_file(&f, 0, len, &a);
        if len < 64 * 1024 {
            // The junk first, then the file's bytes.
            let mut b2 = b.try_clone().unwrap();
            let mut junk = vec![0u8; 4096];
            // Nothing of the file can arrive before the junk is read: drain until the send ends.
            let r = std::thread::spawn(move || {
                let mut all = Vec::new();
                loop {
                    match b2.read(&mut junk) {
                        Ok(0) => return all,
                        Ok(k) => all.extend_from_slice(&junk[..k]),
                        Err(e) => panic!("read: {e}"),
                    }
                }
            });
            let sent = sending.wait().expect("send_file to a non-blocking socket");
            assert_eq!(sent, len);
            drop(a);
            let all = r.join().unwrap();
            let tail = &all[all.len() - len as usize..];
            assert!(
                tail == &pattern(11, len)[..],
                "the file's bytes after the junk"
            );
            continue;
        }
        wait_until_full(&a);
        let r = reader(b, 11, 0, len);
        assert_eq!(
            sending.wait().expect("send_file to a non-blocking socket"),
            len
        );
        drop(a);
        r.join().unwrap();
    }
}

/// The inline path: a range all in the page cache goes to a non-blocking socket with
/// sendfile(2) on the shard thread (no pipe, no io-wq); one evicted from the cache goes through
/// a pipe (its first round at least: the pipe's reads bring pages in), and so does a cached
/// range to a blocking socket (sendfile could wait there for the peer, on the shard thread).
/// All byte-exact, over TCP.
#[test]
fn a_cached_range_is_sent_inline_and_an_evicted_one_through_a_pipe() {
    let exec = exec();
    let dir = disk_dir();
    let path = dir.path().join("f");
    let size: u64 = 3 * 1024 * 1024 + 517;
    let f = make(&exec, &path, 12, size);
    let has_cachestat = cached_pages(&path).is_some();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let send_to = |offset: u64, nonblocking: bool| {
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        s.set_nonblocking(nonblocking).unwrap();
        let r = reader(c, 12, offset, size - offset);
        assert_eq!(
            ok(exec.send_file(&f, offset, size, &s), "send_file"),
            size - offset
        );
        r.join().unwrap();
        exec.stats().total
    };
    let send = |offset: u64| send_to(offset, true);
    evict(&path);
    let before = exec.stats().total;
    let evicted = send(0);
    if has_cachestat {
        assert!(
            evicted.send_file_uncached > before.send_file_uncached,
            "an evicted range went inline"
        );
    }
    make_resident(&path);
    let resident = send(4095);
    if has_cachestat {
        assert!(
            resident.send_file_inline > evicted.send_file_inline,
            "a cached range did not go inline"
        );
        assert_eq!(
            resident.send_file_uncached, evicted.send_file_uncached,
            "a cached range was taken for uncached"
        );
    } else {
        assert_eq!(resident.send_file_inline, 0, "inline without cachestat");
    }
    let blocking = send_to(0, false);
    assert_eq!(
        blocking.send_file_inline, resident.send_file_inline,
        "a blocking socket was sent to inline"
    );
}

/// An inline send to a non-blocking socket whose peer reads slowly: each round takes no more
/// than the socket's room (the shard thread never waits in the kernel for the peer), waits for
/// room with a poll once the socket is full (arranged: nobody reads until then), and goes on
/// in many short rounds as the peer reads 1000 bytes at a time; every byte checked.
#[test]
fn an_inline_send_to_a_slow_reader_waits_for_room_and_is_exact() {
    let exec = exec();
    let dir = disk_dir();
    let path = dir.path().join("f");
    let size: u64 = 4 * 1024 * 1024 + 3;
    let f = make(&exec, &path, 13, size);
    make_resident(&path);
    let has_cachestat = cached_pages(&path).is_some();
    let before = exec.stats().total;
    let (a, b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    let sending = exec.send_file(&f, 1, size, &a);
    wait_until_full(&a);
    let slow = std::thread::spawn(move || {
        let mut b = b;
        let mut got = 0u64;
        let mut buf = [0u8; 1000];
        while got < size - 1 {
            let k = b.read(&mut buf).unwrap();
            assert!(k > 0, "stream ended after {got} bytes");
            for (j, &x) in buf[..k].iter().enumerate() {
                let i = 1 + got + j as u64;
                assert_eq!(x, byte(13, i), "byte {i} of the file");
            }
            got += k as u64;
        }
        b
    });
    assert_eq!(ok(sending, "send_file"), size - 1);
    drop(a);
    let mut b = slow.join().unwrap();
    assert_eq!(b.read(&mut [0u8; 16]).unwrap(), 0, "bytes after the range");
    let after = exec.stats().total;
    if has_cachestat {
        assert!(
            after.send_file_inline >= before.send_file_inline + 2,
            "the send did not go inline (and wait between rounds)"
        );
    }
}

/// A `submit_to` closure runs once nothing of its shard's is in the kernel: a send waiting for
/// room that a peer who reads nothing never makes must not hold it (nor every op queued behind
/// it) for ever. The send's round is taken out of the ring for the closure and put back after,
/// and every byte still arrives. Arranged: the pipe is full (the send's drain waits in the
/// kernel) before the closure is sent.
#[test]
fn submit_to_runs_while_a_send_waits_for_a_peer_that_reads_nothing() {
    let _w = executor_util::Watchdog::new(
        "submit_to beside a stalled send_file",
        executor_util::HANG * 2,
    );
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let len = 4 << 20;
    let f = make(&exec, &dir.path().join("f"), 13, len);
    let (b, a) = pipe();
    let rx = exec.send_file(&f, 0, len, &a);
    wait_until_full(&a);
    assert_eq!(ok(exec.submit_to(0, |_ctx| 42u32), "submit_to"), 42);
    let r = reader(b, 13, 0, len);
    assert_eq!(ok(rx, "send_file after the closure"), len);
    drop(a);
    r.join().unwrap();
}
