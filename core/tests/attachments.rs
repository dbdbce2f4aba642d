//! Attachments: streamed in and out in chunks (a large file is never in memory at once), deduplicated by hash,
//! verified against the hash on read, referenced from documents by token.

use serde_json::json;
use shoaldb::{AttachmentToken, Store};
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts live heap bytes and their peak, so the test can check that streaming stays small.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn reset_peak() -> usize {
    let live = LIVE.load(Ordering::Relaxed);
    PEAK.store(live, Ordering::Relaxed);
    live
}

/// A deterministic pseudo-random byte stream of a given length, generated on the fly.
struct Generated {
    left: u64,
    state: u64,
}

impl Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        for b in &mut buf[..n] {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            *b = self.state as u8;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[test]
fn large_attachment_streams_in_and_out_with_bounded_memory() {
    // 1 GiB with SHOAL_BIG_ATTACHMENT=1; 96 MiB by default to keep CI quick. Memory is what is checked.
    let size: u64 = if std::env::var_os("SHOAL_BIG_ATTACHMENT").is_some() { 1 << 30 } else { 96 << 20 };
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open_with(
        dir.path().join("db"),
        shoaldb::Options { durability: shoaldb::Durability::Normal, ..Default::default() },
    )
    .unwrap();
    let base = reset_peak();
    let token =
        s.put_attachment(Generated { left: size, state: 7 }, [("name".into(), "big.bin".into())].into()).unwrap();
    let peak_write = PEAK.load(Ordering::Relaxed) - base;
    assert_eq!(token.len, size);
    assert!(peak_write < 16 << 20, "writing {size} bytes used {peak_write} bytes of heap");

    // Read back as a stream and compare with the same generator.
    let base = reset_peak();
    let mut reader = s.open_attachment(&token).unwrap();
    let mut expected = Generated { left: size, state: 7 };
    let (mut a, mut b) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut a).unwrap();
        if n == 0 {
            break;
        }
        expected.read_exact(&mut b[..n]).unwrap();
        assert_eq!(a[..n], b[..n]);
        total += n as u64;
    }
    assert_eq!(total, size);
    let peak_read = PEAK.load(Ordering::Relaxed) - base;
    assert!(peak_read < 16 << 20, "reading used {peak_read} bytes of heap");
}

#[test]
fn attachments_in_documents_dedup_and_verification() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let s = Store::open(&path).unwrap();
    let bytes: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let t1 = s.put_attachment_bytes(&bytes, [("mime".into(), "application/octet-stream".into())].into()).unwrap();
    let t2 = s.put_attachment_bytes(&bytes, Default::default()).unwrap();
    assert_eq!(t1.hash, t2.hash, "content-addressed");
    assert_eq!(t1.hash, *blake3::hash(&bytes).as_bytes());
    assert_eq!(s.attachment_bytes(&t1).unwrap(), bytes);
    let empty = s.put_attachment_bytes(&[], Default::default()).unwrap();
    assert_eq!(s.attachment_bytes(&empty).unwrap(), Vec::<u8>::new());

    // In a document, as a field; its JSON form names the hash; the token comes back from the document.
    let id = s.upsert("files", json!({"name": "blob"})).unwrap();
    s.update("files", &id, |d| Ok(d.set("content", t1.clone())?)).unwrap();
    let doc = s.get("files", &id).unwrap().unwrap();
    assert_eq!(doc["content"]["_attachment"], t1.hash_hex());
    assert_eq!(doc["content"]["len"], 1_000_000);
    assert_eq!(AttachmentToken::from_json(&doc["content"]), Some(t1.clone()));
    let full = s.document("files", &id).unwrap().unwrap();
    assert_eq!(full.attachment("content").unwrap(), Some(t1.clone()));

    // Unknown content: a clear error.
    let mut unknown = t1.clone();
    unknown.hash[0] ^= 1;
    assert!(!s.has_attachment(&unknown).unwrap());
    assert!(matches!(s.open_attachment(&unknown), Err(shoaldb::Error::AttachmentNotFound { .. })));
    drop(s);

    // Corrupt the stored bytes behind the store's back: reading reports it instead of returning bad data.
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute("UPDATE blob_chunks SET data = zeroblob(length(data)) WHERE idx = 1", []).unwrap();
    }
    let s = Store::open(&path).unwrap();
    let err = s.attachment_bytes(&t1).unwrap_err();
    assert!(err.to_string().contains("does not match its hash"), "{err}");
}
