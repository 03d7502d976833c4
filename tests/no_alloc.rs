//! Decoding allocates nothing: a counting global allocator watches `Session::decode` on every
//! architecture once the session exists (buffers are sized when it is opened), CDMoE with its
//! experts read in place and through a bounded expert cache (evicting and reading records on
//! the fetcher thread).

#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use cheems::{LoadOptions, Model, Session, SessionOptions};
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
    for (name, ty, bounded) in [
        ("llama", GgmlType::Q8_0, false),
        ("mamba2", GgmlType::Q4_0, false),
        ("doge", GgmlType::F16, false),
        ("doge_moe", GgmlType::Q8_0, false),
        ("doge_moe", GgmlType::Q4_0, true),
        ("cheems", GgmlType::Q4_K, false),
        ("cheems", GgmlType::Q8_0, true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m.gguf");
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models")
            .join(name);
        cheems_quantize::convert(&src, &out, &Options::new(ty), 1, false).unwrap();
        let mut model = Model::load(&out).unwrap();
        if bounded {
            // A quarter of the expert bytes: records are evicted and read while decoding.
            let experts: usize = model
                .file
                .tensors()
                .iter()
                .filter(|t| cheems::experts::is_expert_table(&t.name))
                .map(|t| t.size)
                .sum();
            let opts = LoadOptions {
                expert_cache_bytes: Some(experts as u64 / 4),
                ..LoadOptions::default()
            };
            model = Model::load_with(&out, &opts).unwrap();
        }
        let model = Arc::new(model);
        // Two threads, so the thread pool's work splitting is covered too.
        let mut s = Session::new(
            model,
            &SessionOptions {
                threads: Some(2),
                ctx: Some(160),
            },
        )
        .unwrap();
        s.prefill(&[1, 2, 3]).unwrap();
        for t in 4..24 {
            s.decode(t).unwrap(); // warm-up: first use of the pool's threads and queues
        }
        let before = s.expert_stats().unwrap_or_default();
        // The allocator counts every thread of the test process (the harness's too), so a
        // one-off allocation elsewhere can land in a window: a window of 35 tokens must come out
        // clean within three tries. An allocation per token, or per few tokens, fails all three.
        let mut counts = Vec::new();
        for round in 0..3u32 {
            ALLOCS.store(0, Ordering::SeqCst);
            COUNTING.store(true, Ordering::SeqCst);
            for t in 24..59 {
                s.decode(t + 100 * round).unwrap();
            }
            COUNTING.store(false, Ordering::SeqCst);
            counts.push(ALLOCS.load(Ordering::SeqCst));
            if counts.last() == Some(&0) {
                break;
            }
        }
        assert_eq!(
            counts.last(),
            Some(&0),
            "{name}: allocations while decoding 35 tokens, per try: {counts:?}"
        );
        if bounded {
            // The counted tokens did evict and read records.
            let st = s.expert_stats().unwrap().since(&before);
            assert!(st.misses > 0 && st.hits > 0, "{name}: {st:?}");
        }
    }
}
