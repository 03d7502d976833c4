//! A small private thread pool for kernels: `threads - 1` persistent workers plus the calling
//! thread share the chunks of one job at a time, taken from an atomic counter.
//!
//! Why not rayon: every `install` from a thread outside a rayon pool pushes onto rayon's injector
//! queue, which allocates a new block every 63 jobs, and decoding must not allocate. Publishing a
//! job here takes an uncontended lock and allocates nothing.
//!
//! Decoding publishes a job every few microseconds (one per matrix product), so waiting threads
//! first spin for a short while ([`SPIN`] rounds, pausing, then yielding the core) on the job's generation
//! and on the count of busy workers, and only then sleep on a condvar; a wake-up is sent only to
//! a thread that sleeps. An idle session's workers are asleep after that short spin.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// The job being run: a borrowed closure whose lifetime is erased while it is published.
#[derive(Clone, Copy)]
struct Job(*const (dyn Fn(usize) + Sync));

// SAFETY: the pointer is only dereferenced between publication and the end of `Pool::run`,
// which waits until every worker is done with it; the closure itself is `Sync`.
unsafe impl Send for Job {}

struct State {
    generation: u64,
    job: Option<Job>,
    n_chunks: usize,
    /// Workers still inside the current job.
    busy: usize,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    work: Condvar,
    done: Condvar,
    next: AtomicUsize,
    panicked: AtomicBool,
    /// The generation of the job published last (mirrors `State::generation` for spinners).
    published: AtomicU64,
    /// Workers still inside the current job (mirrors `State::busy` for the spinning caller).
    remaining: AtomicUsize,
    /// Workers asleep on `work`, and whether the caller sleeps on `done` (changed under the lock).
    sleepers: AtomicUsize,
    caller_sleeps: AtomicBool,
}

/// Rounds a waiting thread spins before it sleeps: the first [`SPIN_PAUSE`] are `spin_loop`
/// hints (tens of ns each), the rest give the core away (`yield_now`), so a spinning thread does
/// not starve the one it waits for when the machine has fewer free cores than threads.
const SPIN: u32 = 20_200;
const SPIN_PAUSE: u32 = 20_000;

/// One round of waiting: a pause hint, or a yield once the pause rounds are spent.
#[inline]
fn wait_round(round: u32) {
    if round < SPIN_PAUSE {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// A fixed set of worker threads. `run` is called from one thread at a time (a session's).
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.threads())
            .finish()
    }
}

impl Pool {
    /// A pool that runs jobs on `threads` threads (the caller counts as one).
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                generation: 0,
                job: None,
                n_chunks: 0,
                busy: 0,
                shutdown: false,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            next: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            published: AtomicU64::new(0),
            remaining: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            caller_sleeps: AtomicBool::new(false),
        });
        let mut workers = Vec::new();
        for i in 1..threads.max(1) {
            let s = shared.clone();
            workers.push(
                std::thread::Builder::new()
                    .name(format!("cheems-{i}"))
                    .spawn(move || worker(&s))?,
            );
        }
        Ok(Pool { shared, workers })
    }

    /// Threads that work on a job, the caller included.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Calls `f(i)` for every `i < n_chunks`, spread over the pool; returns when all are done.
    /// A panic in `f` is re-raised here after every thread has left the job.
    pub fn run(&self, n_chunks: usize, f: &(dyn Fn(usize) + Sync)) {
        if self.workers.is_empty() || n_chunks <= 1 {
            (0..n_chunks).for_each(f);
            return;
        }
        let s = &*self.shared;
        // SAFETY: erases the borrow's lifetime for publication; this function does not return
        // before every worker has finished with the job (`busy == 0`), and the job is cleared
        // before returning, so the pointer never outlives `f`.
        let job = Job(unsafe {
            std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(f)
        });
        {
            let mut st = s.state.lock().unwrap_or_else(|e| e.into_inner());
            s.next.store(0, Ordering::SeqCst);
            st.job = Some(job);
            st.n_chunks = n_chunks;
            st.busy = self.workers.len();
            st.generation = st.generation.wrapping_add(1);
            s.remaining.store(self.workers.len(), Ordering::SeqCst);
            s.published.store(st.generation, Ordering::SeqCst);
            if s.sleepers.load(Ordering::SeqCst) > 0 {
                s.work.notify_all();
            }
        }
        let mine = catch_unwind(AssertUnwindSafe(|| take_chunks(s, n_chunks, f)));
        let mut spins = 0;
        while s.remaining.load(Ordering::Acquire) > 0 && spins < SPIN {
            wait_round(spins);
            spins += 1;
        }
        let mut st = s.state.lock().unwrap_or_else(|e| e.into_inner());
        while st.busy > 0 {
            s.caller_sleeps.store(true, Ordering::SeqCst);
            st = s.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        s.caller_sleeps.store(false, Ordering::SeqCst);
        st.job = None;
        drop(st);
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if s.panicked.swap(false, Ordering::SeqCst) {
            panic!("a kernel panicked on a worker thread");
        }
    }
}

/// A raw pointer to a slice whose disjoint chunks are handed to different threads.
struct ChunksPtr<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: `Pool::for_chunks_mut` gives each chunk index, hence each disjoint sub-slice, to
// exactly one thread; `T: Send` values may be written from any thread.
unsafe impl<T: Send> Sync for ChunksPtr<T> {}

impl Pool {
    /// Splits `data` into chunks of `chunk` elements and calls `f(index, chunk)` for each,
    /// spread over the pool.
    pub fn for_chunks_mut<T: Send>(
        &self,
        data: &mut [T],
        chunk: usize,
        f: &(dyn Fn(usize, &mut [T]) + Sync),
    ) {
        let chunk = chunk.max(1);
        let n = data.len().div_ceil(chunk);
        let p = ChunksPtr {
            ptr: data.as_mut_ptr(),
            len: data.len(),
        };
        let p = &p;
        self.run(n, &|i| {
            let start = i * chunk;
            let len = chunk.min(p.len - start);
            // SAFETY: chunk `i` covers `start..start + len`, inside `data` and disjoint from every
            // other chunk; `run` hands each index to one thread once, and `data` stays mutably
            // borrowed until `run` returns.
            let part = unsafe { std::slice::from_raw_parts_mut(p.ptr.add(start), len) };
            f(i, part);
        });
    }
}

/// The task of [`Pool::for_chunks_mut2`]: a chunk index and the two chunks.
pub type Chunks2Fn<'a, T, U> = dyn Fn(usize, &mut [T], &mut [U]) + Sync + 'a;

impl Pool {
    /// Splits `a` into chunks of `chunk_a` elements and `b` into chunks of `chunk_b`, and calls
    /// `f(index, a_chunk, b_chunk)` for each index, spread over the pool. The number of chunks
    /// is `a`'s; a `b` chunk past `b`'s end is empty.
    pub fn for_chunks_mut2<T: Send, U: Send>(
        &self,
        a: &mut [T],
        chunk_a: usize,
        b: &mut [U],
        chunk_b: usize,
        f: &Chunks2Fn<'_, T, U>,
    ) {
        let (chunk_a, chunk_b) = (chunk_a.max(1), chunk_b.max(1));
        let n = a.len().div_ceil(chunk_a);
        let pa = ChunksPtr {
            ptr: a.as_mut_ptr(),
            len: a.len(),
        };
        let pb = ChunksPtr {
            ptr: b.as_mut_ptr(),
            len: b.len(),
        };
        let (pa, pb) = (&pa, &pb);
        self.run(n, &|i| {
            let sa = i * chunk_a;
            let la = chunk_a.min(pa.len - sa);
            let sb = (i * chunk_b).min(pb.len);
            let lb = chunk_b.min(pb.len - sb);
            // SAFETY: chunk `i` of each slice covers a range inside it, disjoint from every
            // other chunk of that slice; `run` hands each index to one thread once, and both
            // slices stay mutably borrowed until `run` returns.
            let (ca, cb) = unsafe {
                (
                    std::slice::from_raw_parts_mut(pa.ptr.add(sa), la),
                    std::slice::from_raw_parts_mut(pb.ptr.add(sb), lb),
                )
            };
            f(i, ca, cb);
        });
    }
}

fn take_chunks(s: &Shared, n: usize, f: &(dyn Fn(usize) + Sync)) {
    loop {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            break;
        }
        f(i);
    }
}

fn worker(s: &Shared) {
    let mut seen = 0u64;
    loop {
        let mut spins = 0;
        while s.published.load(Ordering::Acquire) == seen && spins < SPIN {
            wait_round(spins);
            spins += 1;
        }
        let (job, n) = {
            let mut st = s.state.lock().unwrap_or_else(|e| e.into_inner());
            while st.generation == seen && !st.shutdown {
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                st = s.work.wait(st).unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
            if st.shutdown {
                return;
            }
            seen = st.generation;
            (st.job, st.n_chunks)
        };
        if let Some(Job(ptr)) = job {
            // SAFETY: `Pool::run` keeps the closure alive until this worker reports done below.
            let f = unsafe { &*ptr };
            if catch_unwind(AssertUnwindSafe(|| take_chunks(s, n, f))).is_err() {
                s.panicked.store(true, Ordering::SeqCst);
            }
        }
        let mut st = s.state.lock().unwrap_or_else(|e| e.into_inner());
        st.busy -= 1;
        s.remaining.fetch_sub(1, Ordering::Release);
        if st.busy == 0 && s.caller_sleeps.load(Ordering::SeqCst) {
            s.done.notify_all();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        {
            let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            st.shutdown = true;
        }
        self.shared.work.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_runs_once() {
        let pool = Pool::new(3).expect("threads");
        for n in [0, 1, 2, 7, 100] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.run(n, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "n = {n}"
            );
        }
    }

    #[test]
    fn a_panicking_chunk_is_reported_and_the_pool_survives() {
        let pool = Pool::new(2).expect("threads");
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(8, &|i| assert!(i != 5, "chunk 5"))
        }));
        assert!(r.is_err());
        let count = AtomicUsize::new(0);
        pool.run(8, &|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 8);
    }
}
