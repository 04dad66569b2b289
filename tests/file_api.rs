//! Operations on the file (`file.read_at`, `file.write_all_at`, `file.sync_all`, ...), owned
//! buffers that come back (`IoBuf`/`IoBufMut`: `Vec<u8>`, `Box<[u8]>`, and with the `bytes`
//! feature `Bytes`/`BytesMut`), and `FileCursor` under `std::io` (blocking), tokio (feature
//! `tokio`) and the futures crates (feature `futures-io`), on real files. The backend is
//! whichever `RINGSHARD_BACKEND` picks: run this file under both.
//!
//! `cargo test --test file_api --features tokio,futures-io,bytes` runs every test; without the
//! features, the tests of their impls are left out.

mod executor_util;
mod faultfs;

use executor_util::*;
use ringshard::{Appended, Error, Executor, File, FileCursor, OpenOptions, RwFlags};
use std::io::SeekFrom;
use std::path::Path;

fn exec() -> Executor {
    Executor::builder().shards(2).build().expect("executor")
}

/// Opens `path` with `opts` through `exec`.
#[track_caller]
fn open_with(exec: &Executor, path: &Path, opts: &OpenOptions) -> File {
    ok(exec.open(path, opts), "open")
}

/// Waits for a buffer completion (with [`HANG`] as the limit).
#[track_caller]
fn wait_buf<T, B: ringshard::IoBuf>(
    mut c: ringshard::BufCompletion<T, B>,
) -> ringshard::BufResult<T, B> {
    match c.wait_timeout(HANG) {
        Ok(r) => r,
        Err(e) => panic!("buffer request: the result (and the buffer) did not come back: {e}"),
    }
}

#[track_caller]
fn assert_bad_handle<T: std::fmt::Debug>(r: &ringshard::Result<T>) {
    assert!(
        matches!(r, Err(Error::BadHandle(_))),
        "want BadHandle, got {r:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Every File method
// ---------------------------------------------------------------------------------------------

#[test]
fn every_file_method_on_a_real_file() {
    use std::io::Read;
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    let f = open_rwc(&exec, &p);

    // Writes: write_at counts what landed, write_all_at is all or an error.
    assert_eq!(ok(f.write_at(0, b"hello world".to_vec()), "write_at"), 11);
    ok(f.write_all_at(11, &b"!!"[..]), "write_all_at");
    assert_eq!(std::fs::read(&p).unwrap(), b"hello world!!");
    assert_eq!(
        ok(f.write_with(0, b"H".to_vec(), RwFlags::DSYNC), "write_with"),
        1
    );

    // Reads: fewer bytes only at end of file.
    assert_eq!(ok(f.read_at(6, 100), "read_at"), b"world!!");
    assert_eq!(ok(f.read_at(13, 100), "read_at at the end"), b"");
    let recycled = Vec::with_capacity(64);
    let ptr = recycled.as_ptr();
    let got = ok(f.read_into(0, 5, recycled), "read_into");
    assert_eq!(got, b"Hello");
    assert_eq!(
        got.as_ptr(),
        ptr,
        "read_into reuses the vector's allocation"
    );
    // Just written, so in the page cache: NOWAIT finds it.
    assert_eq!(
        ok(f.read_with(0, 5, RwFlags::NOWAIT), "read_with"),
        b"Hello"
    );
    assert_eq!(
        ok(f.read_vectored(0, &[5, 1, 100]), "read_vectored"),
        vec![b"Hello".to_vec(), b" ".to_vec(), b"world!!".to_vec()]
    );
    assert_eq!(
        ok(
            f.write_vectored(13, vec![b"ab".to_vec(), b"cd".to_vec()]),
            "write_vectored"
        ),
        4
    );
    assert_eq!(std::fs::read(&p).unwrap(), b"Hello world!!abcd");

    // Owned buffers, given back.
    let (n, buf) = wait_buf(f.read_buf_at(Vec::with_capacity(5), 6));
    assert_eq!((n.unwrap(), &buf[..]), (5, &b"world"[..]));
    let ptr = buf.as_ptr();
    let (n, buf) = wait_buf(f.write_buf_at(buf, 17));
    assert_eq!(n.unwrap(), 5);
    assert_eq!(buf.as_ptr(), ptr, "the same vector comes back");
    let (n, buf) = wait_buf(f.write_all_buf_at(buf, 22));
    n.unwrap();
    assert_eq!(&buf[..], b"world");
    assert_eq!(std::fs::read(&p).unwrap(), b"Hello world!!abcdworldworld");

    // Size, metadata, syncs.
    assert_eq!(ok(f.size(), "size"), 27);
    let md = ok(f.metadata(), "metadata");
    assert!(md.is_file());
    assert_eq!(md.len(), 27);
    {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(md.ino(), std::fs::metadata(&p).unwrap().ino());
    }
    ok(f.sync_all(), "sync_all");
    ok(f.sync_data(), "sync_data");
    ok(
        f.sync_file_range(0, 0, ringshard::SyncRangeFlags::WRITE),
        "sync_file_range",
    );

    // Length: set_len, fallocate.
    ok(f.set_len(5), "set_len");
    assert_eq!(ok(f.size(), "size after set_len"), 5);
    assert_eq!(ok(f.read_at(0, 100), "read after set_len"), b"Hello");
    ok(
        f.fallocate(ringshard::FallocateMode::Allocate, 0, 8192),
        "fallocate",
    );
    assert_eq!(ok(f.size(), "size after fallocate"), 8192);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 8192);

    // The cursor starts at 0.
    let mut c = f.cursor();
    let mut five = [0u8; 5];
    c.read_exact(&mut five).unwrap();
    assert_eq!(&five, b"Hello");
    assert_eq!(c.position(), 5);
    drop(c);

    // Close: reported, and every clone is stale after it.
    let g = f.clone();
    ok(f.close(), "close");
    assert_bad_handle(&wait(g.read_at(0, 1)));
    assert_bad_handle(&wait(g.size()));

    // Append: where the data landed.
    let mut ao = OpenOptions::new();
    ao.append(true).create(true);
    let a = open_with(&exec, &dir.path().join("log"), &ao);
    assert_eq!(
        ok(a.append(&b"one"[..]), "append"),
        Appended { offset: 0, len: 3 }
    );
    assert_eq!(
        ok(a.append(&b"two"[..]), "append"),
        Appended { offset: 3, len: 3 }
    );
    assert_eq!(std::fs::read(dir.path().join("log")).unwrap(), b"onetwo");

    // The executor's own methods and the file's are the same operations, in one order.
    let h = open_rwc(&exec, &dir.path().join("mixed"));
    ok(exec.write(&h, 0, b"abc".to_vec()), "exec.write");
    ok(h.write_all_at(1, &b"X"[..]), "file.write_all_at");
    assert_eq!(ok(exec.read(&h, 0, 3), "exec.read"), b"aXc");
    ok(exec.close(&h), "exec.close");
    assert_bad_handle(&wait(h.read_at(0, 1)));

    // After shutdown, the file's operations fail like the executor's.
    let k = open_rwc(&exec, &dir.path().join("late"));
    exec.shutdown().unwrap();
    assert_eq!(wait(k.size()), Err(Error::Shutdown));
}

// ---------------------------------------------------------------------------------------------
// Buffers that come back
// ---------------------------------------------------------------------------------------------

/// Requests refused before they leave (access, size bound, directory handle, shutdown) give
/// their buffer back with the error: the same allocation, contents intact for writes.
#[test]
fn buffers_come_back_when_a_request_is_refused() {
    let exec = Executor::builder()
        .shards(2)
        .max_request_size(64 * 1024)
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    std::fs::write(&p, b"0123456789").unwrap();
    let ro = open_with(&exec, &p, OpenOptions::new().read(true));
    let wo = open_with(&exec, &p, OpenOptions::new().write(true));

    // A read of a write-only file: Vec and Box<[u8]>.
    let v = Vec::<u8>::with_capacity(4096);
    let ptr = v.as_ptr();
    let (r, v) = wait_buf(wo.read_buf_at(v, 0));
    assert_bad_handle(&r);
    assert_eq!((v.as_ptr(), v.capacity()), (ptr, 4096));
    let b: Box<[u8]> = vec![7u8; 100].into_boxed_slice();
    let ptr = b.as_ptr();
    let (r, b) = wait_buf(wo.read_buf_at(b, 0));
    assert_bad_handle(&r);
    assert_eq!(b.as_ptr(), ptr);
    assert_eq!(b.len(), 100);

    // A write of a read-only file: the data comes back untouched.
    let data = vec![5u8; 1000];
    let ptr = data.as_ptr();
    let (r, data) = wait_buf(ro.write_buf_at(data, 0));
    assert_bad_handle(&r);
    assert_eq!(data.as_ptr(), ptr);
    assert_eq!(data, vec![5u8; 1000]);
    let (r, b) = wait_buf(ro.write_all_buf_at(b, 0));
    assert_bad_handle(&r);
    assert_eq!(&b[..], &[7u8; 100][..]);
    assert_bad_handle(&wait(ro.write_at(0, vec![1u8])));
    assert_bad_handle(&wait(ro.write_all_at(0, vec![1u8])));

    // Past max_request_size: InvalidArgument, buffer back.
    let big = vec![1u8; 128 * 1024];
    let ptr = big.as_ptr();
    let rwf = open_with(&exec, &p, &rw());
    let (r, big) = wait_buf(rwf.write_buf_at(big, 0));
    assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{r:?}");
    assert_eq!(big.as_ptr(), ptr);
    let room = Vec::<u8>::with_capacity(128 * 1024);
    let ptr = room.as_ptr();
    let (r, room) = wait_buf(rwf.read_buf_at(room, 0));
    assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{r:?}");
    assert_eq!(room.as_ptr(), ptr);
    // Past the largest file offset.
    let (r, _) = wait_buf(rwf.write_buf_at(vec![1u8; 8], i64::MAX as u64));
    assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{r:?}");

    // A directory handle.
    let d = ok(exec.open_dir(dir.path()), "open_dir");
    let (r, _) = wait_buf(d.read_buf_at(Vec::with_capacity(10), 0));
    assert_bad_handle(&r);

    // After shutdown the request is refused at the shard's door: the buffer still comes back.
    exec.shutdown().unwrap();
    let (r, big) = wait_buf(rwf.write_buf_at(vec![3u8; 10], 0));
    assert_eq!(r, Err(Error::Shutdown));
    assert_eq!(big, vec![3u8; 10]);
    assert_eq!(
        std::fs::read(&p).unwrap(),
        b"0123456789",
        "nothing was written"
    );
}

/// Errors from the kernel give the buffer back too: a read failing with EIO (FUSE), writes
/// running out of space (a small tmpfs), where `write_at` and `write_buf_at` count what landed
/// and `write_all_at` and `write_all_buf_at` fail with how much landed.
#[test]
fn buffers_come_back_from_kernel_errors_and_write_at_counts_what_landed() {
    let exec = Executor::builder()
        .shards(1)
        .inline_write_stall(None)
        .build()
        .unwrap();
    let data = Rng::new(7).bytes(256 * 1024);

    match faultfs::mount_or_skip("buffers_come_back_from_kernel_errors (EIO read)") {
        None => {}
        Some(fs) => {
            std::fs::write(fs.backing("a"), &data[..64 * 1024]).unwrap();
            let f = open_with(&exec, &fs.join("a"), &rw());
            fs.rules()
                .add("a", &[faultfs::Op::Read], 0..4096, faultfs::Fault::Eio);
            let v = Vec::<u8>::with_capacity(4096);
            let ptr = v.as_ptr();
            let (r, v) = wait_buf(f.read_buf_at(v, 0));
            assert_eq!(
                r.as_ref().err().and_then(|e| e.errno()),
                Some(libc::EIO),
                "{r:?}"
            );
            assert_eq!((v.as_ptr(), v.capacity()), (ptr, 4096), "the same vector");
            let b: Box<[u8]> = vec![0u8; 4096].into_boxed_slice();
            let ptr = b.as_ptr();
            let (r, b) = wait_buf(f.read_buf_at(b, 0));
            assert_eq!(
                r.as_ref().err().and_then(|e| e.errno()),
                Some(libc::EIO),
                "{r:?}"
            );
            assert_eq!((b.as_ptr(), b.len()), (ptr, 4096));
            // Outside the bad range the same buffers read fine.
            let (r, v) = wait_buf(f.read_buf_at(v, 8192));
            assert_eq!(r.unwrap(), 4096);
            assert_eq!(&v[..], &data[8192..12288]);
            let (r, b) = wait_buf(f.read_buf_at(b, 8192));
            assert_eq!(r.unwrap(), 4096);
            assert_eq!(&b[..], &data[8192..12288]);
        }
    }

    let tmp = match Tmpfs::mount("64k") {
        Ok(t) => t,
        Err(why) => {
            report_line(format_args!("SKIPPED the ENOSPC part: {why}"));
            return;
        }
    };
    // The write crosses the end of the space: part lands, the rest fails with ENOSPC.
    let a = open_rwc(&exec, &tmp.join("a"));
    let v = data.clone();
    let ptr = v.as_ptr();
    let (r, v) = wait_buf(a.write_buf_at(v, 0));
    let n = r.expect("write_buf_at counts what landed");
    assert!(n > 0 && n < data.len(), "part of it landed: {n}");
    assert_eq!(v.as_ptr(), ptr);
    assert_eq!(std::fs::read(tmp.join("a")).unwrap(), &data[..n]);
    // Nothing more fits: nothing lands, so write_at reports the error itself.
    let e = wait(a.write_at(n as u64, data.clone())).unwrap_err();
    assert_eq!((e.errno(), e.written()), (Some(libc::ENOSPC), Some(0)));
    let e = wait(a.write_all_at(n as u64, data.clone())).unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENOSPC));
    let (r, v) = wait_buf(a.write_all_buf_at(v, n as u64));
    assert_eq!(r.unwrap_err().errno(), Some(libc::ENOSPC));
    assert_eq!(
        (v.as_ptr(), &v[..]),
        (ptr, &data[..]),
        "the data comes back intact"
    );

    // With room for part of it again: write_at gives that count, write_all_at the error with it.
    ok(a.set_len(0), "set_len");
    assert_eq!(ok(a.write_at(0, data.clone()), "write_at"), n);
    ok(a.set_len(0), "set_len");
    let e = wait(a.write_all_at(0, data.clone())).unwrap_err();
    assert_eq!(
        (e.errno(), e.written()),
        (Some(libc::ENOSPC), Some(n as u64))
    );
    let b: Box<[u8]> = data.clone().into_boxed_slice();
    ok(a.set_len(0), "set_len");
    let (r, b) = wait_buf(a.write_all_buf_at(b, 0));
    assert_eq!(r.unwrap_err().written(), Some(n as u64));
    assert_eq!(&b[..], &data[..]);
}

#[test]
fn vec_and_box_buffers_at_the_end_of_the_file() {
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let f = open_rwc(&exec, &dir.path().join("f"));
    ok(f.write_all_at(0, &b"0123456789"[..]), "write");

    // A Vec reads up to its capacity; its length is the count.
    let v = Vec::with_capacity(16);
    let (n, v) = wait_buf(f.read_buf_at(v, 4));
    assert_eq!(n.unwrap(), 6);
    assert_eq!(v, b"456789");
    // Old contents are replaced, not appended to.
    let (n, v) = wait_buf(f.read_buf_at(v, 0));
    assert_eq!(n.unwrap(), 10);
    assert_eq!(v, b"0123456789");
    // A Box<[u8]> keeps its length; past the count it is zeroed.
    let b: Box<[u8]> = vec![0xee; 16].into_boxed_slice();
    let ptr = b.as_ptr();
    let (n, b) = wait_buf(f.read_buf_at(b, 4));
    assert_eq!(n.unwrap(), 6);
    assert_eq!(b.as_ptr(), ptr, "the same allocation");
    assert_eq!(&b[..6], b"456789");
    assert_eq!(&b[6..], &[0u8; 10]);
    // A Box<[u8]> write writes all of it.
    let (n, _) = wait_buf(f.write_buf_at(b, 10));
    assert_eq!(n.unwrap(), 16);
    assert_eq!(ok(f.size(), "size"), 26);
    // An empty Vec reads nothing.
    let (n, v) = wait_buf(f.read_buf_at(Vec::new(), 0));
    assert_eq!((n.unwrap(), v.len()), (0, 0));
}

#[cfg(feature = "bytes")]
#[test]
fn bytes_buffers() {
    use bytes::{Bytes, BytesMut};
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    let f = open_rwc(&exec, &p);

    // A Bytes nothing else shares is moved (no copy) and comes back.
    let b = Bytes::from(b"hello".to_vec());
    let ptr = b.as_ptr();
    let (n, b) = wait_buf(f.write_buf_at(b, 0));
    assert_eq!(n.unwrap(), 5);
    assert_eq!((b.as_ptr(), &b[..]), (ptr, &b"hello"[..]));
    // A shared one is copied, and the original handle comes back.
    let keep = b.clone();
    let (n, b) = wait_buf(f.write_all_buf_at(b, 5));
    n.unwrap();
    assert_eq!(b.as_ptr(), keep.as_ptr());
    let (n, _) = wait_buf(f.write_buf_at(Bytes::from_static(b"!"), 10));
    assert_eq!(n.unwrap(), 1);
    assert_eq!(std::fs::read(&p).unwrap(), b"hellohello!");

    // BytesMut reads up to its capacity.
    let m = BytesMut::with_capacity(64);
    let ptr = m.as_ptr();
    let (n, m) = wait_buf(f.read_buf_at(m, 5));
    assert_eq!(n.unwrap(), 6);
    assert_eq!(&m[..], b"hello!");
    assert_eq!(m.as_ptr(), ptr, "the same allocation");
    let (n, m) = wait_buf(f.write_buf_at(m, 11));
    assert_eq!(n.unwrap(), 6);
    assert_eq!(&m[..], b"hello!");
    assert_eq!(std::fs::read(&p).unwrap(), b"hellohello!hello!");

    // On error too.
    let ro = open_with(&exec, &p, OpenOptions::new().read(true));
    let (r, b) = wait_buf(ro.write_buf_at(Bytes::from_static(b"x"), 0));
    assert_bad_handle(&r);
    assert_eq!(&b[..], b"x");
    let (r, m) = wait_buf(ro.write_buf_at(m, 0));
    assert_bad_handle(&r);
    assert_eq!(&m[..], b"hello!");
}

// ---------------------------------------------------------------------------------------------
// FileCursor: std
// ---------------------------------------------------------------------------------------------

#[test]
fn std_cursor_copy_and_seek() {
    // The std traits in this test only: a cursor also has tokio's and futures' methods of the
    // same names (as `std::io::Cursor` does).
    use std::io::{Read, Seek, Write};
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    let f = open_rwc(&exec, &p);
    let data = Rng::new(3).bytes(300 * 1024 + 17);

    // std::io::copy into the cursor, then out of it.
    let mut c = f.cursor();
    assert_eq!(
        std::io::copy(&mut &data[..], &mut c).unwrap(),
        data.len() as u64
    );
    c.flush().unwrap();
    assert_eq!(c.position(), data.len() as u64);
    assert_bytes_eq(
        &std::fs::read(&p).unwrap(),
        &data,
        "written through the cursor",
    );
    assert_eq!(c.seek(SeekFrom::Start(0)).unwrap(), 0);
    let mut out = Vec::new();
    assert_eq!(std::io::copy(&mut c, &mut out).unwrap(), data.len() as u64);
    assert_bytes_eq(&out, &data, "read through the cursor");
    let mut nothing = [0u8; 8];
    assert_eq!(c.read(&mut nothing).unwrap(), 0, "0 at end of file");

    // Seeks: End (asks the shard for the size), Current, Start.
    let len = data.len() as u64;
    assert_eq!(c.seek(SeekFrom::End(-3)).unwrap(), len - 3);
    let mut tail = Vec::new();
    c.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, &data[data.len() - 3..]);
    assert_eq!(c.seek(SeekFrom::Current(-10)).unwrap(), len - 10);
    let mut two = [0u8; 2];
    c.read_exact(&mut two).unwrap();
    assert_eq!(&two, &data[data.len() - 10..data.len() - 8]);
    assert_eq!(c.stream_position().unwrap(), len - 8);
    assert_eq!(c.seek(SeekFrom::Start(100)).unwrap(), 100);
    let e = c.seek(SeekFrom::Current(-101)).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    assert_eq!(c.position(), 100, "a refused seek leaves the position");
    let e = c.seek(SeekFrom::End(-(len as i64) - 1)).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    // Past the end: reads give 0, a write extends the file.
    assert_eq!(c.seek(SeekFrom::End(5)).unwrap(), len + 5);
    assert_eq!(c.read(&mut nothing).unwrap(), 0);
    c.write_all(b"end").unwrap();
    assert_eq!(ok(f.size(), "size"), len + 8);

    // Errors reach std callers as io::Error with the errno's kind.
    let ro = open_with(&exec, &p, OpenOptions::new().read(true));
    let e = ro.cursor().write(b"x").unwrap_err();
    assert!(e.to_string().contains("not opened for writing"), "{e}");
    let mut wc = FileCursor::new(open_with(&exec, &p, OpenOptions::new().write(true)), 0);
    assert!(wc.read(&mut nothing).is_err());
}

// ---------------------------------------------------------------------------------------------
// FileCursor: tokio
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "tokio")]
#[test]
fn tokio_copy_seek_and_reader_stream() {
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    let f = open_rwc(&exec, &p);
    let data = Rng::new(5).bytes(200 * 1024 + 3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // A source into the cursor.
        let mut c = f.cursor();
        let n = tokio::io::copy(&mut &data[..], &mut c).await.unwrap();
        assert_eq!(n, data.len() as u64);
        c.flush().await.unwrap();
        assert_bytes_eq(&std::fs::read(&p).unwrap(), &data, "tokio::io::copy into");

        // The cursor into a tokio file and into a sink.
        c.seek(SeekFrom::Start(0)).await.unwrap();
        let out_path = dir.path().join("copy");
        let mut out = tokio::fs::File::create(&out_path).await.unwrap();
        let n = tokio::io::copy(&mut c, &mut out).await.unwrap();
        assert_eq!(n, data.len() as u64);
        out.flush().await.unwrap();
        drop(out);
        assert_bytes_eq(
            &std::fs::read(&out_path).unwrap(),
            &data,
            "into tokio::fs::File",
        );
        let mut sink = Vec::new();
        let mut from_100 = FileCursor::new(f.clone(), 100);
        tokio::io::copy(&mut from_100, &mut sink).await.unwrap();
        assert_bytes_eq(&sink, &data[100..], "into a Vec");

        // Seeks.
        let len = data.len() as u64;
        assert_eq!(c.seek(SeekFrom::End(-4)).await.unwrap(), len - 4);
        let mut tail = Vec::new();
        c.read_to_end(&mut tail).await.unwrap();
        assert_eq!(tail, &data[data.len() - 4..]);
        assert_eq!(c.seek(SeekFrom::Current(-6)).await.unwrap(), len - 6);
        let mut two = [0u8; 2];
        c.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, &data[data.len() - 6..data.len() - 4]);
        assert_eq!(c.seek(SeekFrom::Start(7)).await.unwrap(), 7);
        assert_eq!(c.stream_position().await.unwrap(), 7);
        let e = c.seek(SeekFrom::Current(-8)).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);

        // Writes then reads on one cursor: the write behind lands before the read.
        c.seek(SeekFrom::Start(0)).await.unwrap();
        c.write_all(b"XYZ").await.unwrap();
        c.seek(SeekFrom::Start(0)).await.unwrap();
        let mut three = [0u8; 3];
        c.read_exact(&mut three).await.unwrap();
        assert_eq!(&three, b"XYZ");

        // tokio_util's ReaderStream, as a hyper body.
        use http_body_util::BodyExt;
        let stream = tokio_util::io::ReaderStream::new(FileCursor::new(f.clone(), 3));
        let body = http_body_util::StreamBody::new(futures::StreamExt::map(stream, |r| {
            r.map(hyper::body::Frame::data)
        }));
        let got = body.collect().await.unwrap().to_bytes();
        assert_bytes_eq(&got, &data[3..], "ReaderStream body");
    });

    // A write refused before it leaves fails at once; one the kernel fails, at the flush.
    let ro = open_with(&exec, &p, OpenOptions::new().read(true));
    rt.block_on(async {
        let e = ro.cursor().write(b"x").await.unwrap_err();
        assert!(e.to_string().contains("not opened for writing"), "{e}");
    });
    match Tmpfs::mount("64k") {
        Err(why) => report_line(format_args!("SKIPPED the ENOSPC part: {why}")),
        Ok(tmp) => rt.block_on(async {
            let full = open_rwc(&exec, &tmp.join("full"));
            let mut c = full.cursor();
            let r = async {
                c.write_all(&data).await?;
                c.flush().await
            }
            .await;
            let e = r.unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::StorageFull);
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            let landed = std::fs::metadata(tmp.join("full")).unwrap().len();
            assert!(landed > 0 && landed < data.len() as u64, "{landed}");
            assert_eq!(c.position(), landed, "the position follows what landed");
        }),
    }
}

/// A cursor dropped with its write still queued behind a stalled one lets it land (the drop
/// does not cancel it), before what is sent on the file after the drop.
#[cfg(feature = "tokio")]
#[test]
fn dropped_cursor_lets_its_write_land_in_order() {
    use tokio::io::AsyncWriteExt;
    let _dog = Watchdog::new("dropped_cursor_lets_its_write_land_in_order", HANG * 2);
    let Some(fs) = faultfs::mount_or_skip("dropped_cursor_lets_its_write_land_in_order") else {
        return;
    };
    let exec = Executor::builder()
        .shards(1)
        .inline_write_stall(None)
        .build()
        .unwrap();
    std::fs::write(fs.backing("d"), [0u8; 4096]).unwrap();
    let f = open_with(&exec, &fs.join("d"), &rw());
    fs.rules().add(
        "d",
        &[faultfs::Op::Write],
        0..4096,
        faultfs::Fault::Delay(std::time::Duration::from_millis(300)),
    );
    // This write holds the shard (an inline pwrite the filesystem answers late); the cursor's
    // write to the same range is ordered after it, so it is still queued when the cursor drops.
    let first = f.write_all_at(0, vec![1u8; 4096]);
    let mut c = f.cursor();
    futures::executor::block_on(c.write(&[2u8; 4096])).unwrap();
    drop(c);
    ok(first, "the stalled write");
    assert_bytes_eq(
        &ok(f.read_at(0, 4096), "read after"),
        &[2u8; 4096],
        "the cursor's write",
    );
    assert_bytes_eq(
        &std::fs::read(fs.backing("d")).unwrap(),
        &[2u8; 4096],
        "what landed",
    );
}

// ---------------------------------------------------------------------------------------------
// FileCursor: futures-io
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "futures-io")]
#[test]
fn futures_io_copy_and_seek() {
    use futures::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
    let exec = exec();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("f");
    let f = open_rwc(&exec, &p);
    let data = Rng::new(9).bytes(100 * 1024 + 1);
    futures::executor::block_on(async {
        let mut c = f.cursor();
        let n = futures::io::copy(&data[..], &mut c).await.unwrap();
        assert_eq!(n, data.len() as u64);
        c.close().await.unwrap();
        assert_bytes_eq(&std::fs::read(&p).unwrap(), &data, "futures::io::copy into");

        assert_eq!(c.seek(SeekFrom::Start(0)).await.unwrap(), 0);
        let mut out = Vec::new();
        futures::io::copy(&mut c, &mut out).await.unwrap();
        assert_bytes_eq(&out, &data, "futures::io::copy out of");

        let len = data.len() as u64;
        assert_eq!(c.seek(SeekFrom::End(-2)).await.unwrap(), len - 2);
        let mut tail = Vec::new();
        c.read_to_end(&mut tail).await.unwrap();
        assert_eq!(tail, &data[data.len() - 2..]);
        assert_eq!(c.seek(SeekFrom::Current(-5)).await.unwrap(), len - 5);
        let mut one = [0u8; 1];
        c.read_exact(&mut one).await.unwrap();
        assert_eq!(one[0], data[data.len() - 5]);
        let e = c.seek(SeekFrom::End(-(len as i64) - 1)).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        assert_eq!(c.seek(SeekFrom::Start(1)).await.unwrap(), 1);
        c.write_all(b"ab").await.unwrap();
        c.flush().await.unwrap();
        assert_eq!(ok(f.read_at(0, 4), "read"), [data[0], b'a', b'b', data[3]]);
    });
}

#[test]
fn page_cache_says_how_much_of_a_range_is_cached() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("f");
    std::fs::write(&path, vec![7u8; 64 * 1024]).unwrap();
    std::fs::File::open(&path).unwrap().sync_all().unwrap();
    let exec = exec();
    let file = open_with(&exec, &path, OpenOptions::new().read(true));
    // Clean pages (synced above) are dropped by DONTNEED.
    ok(
        exec.fadvise(&file, 0, 0, ringshard::Advice::DontNeed),
        "fadvise",
    );
    let Some(st) = file.page_cache(0, 0).expect("page_cache") else {
        eprintln!("no cachestat (Linux before 6.5): nothing to check");
        return;
    };
    assert_eq!(st.cached, 0, "{st:?}");
    assert_eq!(ok(exec.read(&file, 0, 64 * 1024), "read").len(), 64 * 1024);
    let st = file.page_cache(0, 0).unwrap().unwrap();
    assert_eq!(st.cached, 16, "{st:?}");
    assert_eq!(st.dirty, 0, "{st:?}");
    // A range: its own pages only.
    assert_eq!(file.page_cache(4096, 8192).unwrap().unwrap().cached, 2);
    // The answer is the inode's: an O_DIRECT handle of it sees the same pages.
    let direct = open_with(&exec, &path, OpenOptions::new().read(true).direct(true));
    assert!(direct.is_direct());
    assert_eq!(direct.page_cache(0, 0).unwrap().unwrap().cached, 16);
    // After an explicit close: an error naming the call and the file.
    ok(exec.close(&file), "close");
    let e = file.page_cache(0, 0).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EBADF), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("cachestat") && text.contains(&path.display().to_string()),
        "{text}"
    );
}
