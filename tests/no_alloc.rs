//! Decoding allocates nothing: a counting global allocator watches `Session::decode` on every
//! architecture once the session exists (buffers are sized when it is opened).

#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use cheems::{Model, Session, SessionOptions};
use cheems_formats::GgmlType;
use cheems_quantize::Options;

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn decode_does_not_allocate() {
    for (name, ty) in [
        ("llama", GgmlType::Q8_0),
        ("mamba2", GgmlType::Q4_0),
        ("doge", GgmlType::F16),
        ("doge_moe", GgmlType::Q8_0),
        ("cheems", GgmlType::Q4_K),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m.gguf");
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models")
            .join(name);
        cheems_quantize::convert(&src, &out, &Options::new(ty), 1, false).unwrap();
        let model = Arc::new(Model::load(&out).unwrap());
        // Two threads, so the thread pool's work splitting is covered too.
        let mut s = Session::new(
            model,
            &SessionOptions {
                threads: Some(2),
                ctx: Some(64),
            },
        )
        .unwrap();
        s.prefill(&[1, 2, 3]).unwrap();
        for t in 4..24 {
            s.decode(t).unwrap(); // warm-up: first use of the pool's threads and queues
        }
        ALLOCS.store(0, Ordering::SeqCst);
        COUNTING.store(true, Ordering::SeqCst);
        for t in 24..59 {
            s.decode(t).unwrap();
        }
        COUNTING.store(false, Ordering::SeqCst);
        let n = ALLOCS.load(Ordering::SeqCst);
        assert_eq!(n, 0, "{name}: {n} allocations while decoding 35 tokens");
    }
}
