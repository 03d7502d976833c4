//! A small private thread pool for kernels: `threads - 1` persistent workers plus the calling
//! thread share the chunks of one job at a time, claimed from one atomic word.
//!
//! Why not rayon: every `install` from a thread outside a rayon pool pushes onto rayon's injector
//! queue, which allocates a new block every 63 jobs, and decoding must not allocate. Publishing a
//! job here takes an uncontended lock and allocates nothing.
//!
//! The caller never waits for a worker that has not joined the job. Chunks are claimed with a
//! compare-and-swap on a word that holds the job's epoch and the next chunk index, so a worker
//! that wakes late (its core was given to another process) cannot take a chunk of a job it did
//! not see published; the caller waits only for chunks that were claimed and are still running.
//! On a machine whose cores are shared with other work, a job therefore finishes on the threads
//! that are running, instead of stalling for a descheduled worker's next time slice.
//!
//! Decoding publishes a job every few microseconds (one per matrix product), so waiting threads
//! first spin for a short while ([`SPIN`] rounds, pausing, then yielding the core), and only then
//! sleep on a condvar; a wake-up is sent only to a thread that sleeps. An idle session's workers
//! are asleep after that short spin.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// The job being run: a borrowed closure whose lifetime is erased while it is published.
#[derive(Clone, Copy)]
struct Job(*const (dyn Fn(usize) + Sync));

// SAFETY: the pointer is only dereferenced by a thread that has claimed one of the job's chunks,
// and `Pool::run` does not return before every claimed chunk has finished; the closure itself is
// `Sync`.
unsafe impl Send for Job {}

/// What a worker reads under the lock: the job of `epoch`.
struct State {
    epoch: u32,
    job: Option<Job>,
    n_chunks: usize,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    work: Condvar,
    done: Condvar,
    /// `epoch << 32 | next chunk index` of the current job.
    claim: AtomicU64,
    /// Chunks of the current job that have finished (a panicking chunk counts as finished).
    finished: AtomicUsize,
    panicked: AtomicBool,
    /// The first panic's payload, re-raised by the caller.
    payload: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    /// The epoch of the job published last (mirrors `State::epoch` for spinners).
    published: AtomicU64,
    /// Workers asleep on `work`, and whether the caller sleeps on `done` (changed under the lock).
    sleepers: AtomicUsize,
    caller_sleeps: AtomicBool,
    /// Tests: workers stop between reading a job and claiming its chunks while this is set.
    #[cfg(test)]
    hold_workers: AtomicBool,
}

/// Rounds a waiting thread spins before it sleeps: the first [`SPIN_PAUSE`] are `spin_loop`
/// hints (tens of ns each), the rest give the core away (`yield_now`), so a spinning thread does
/// not starve the one it waits for when the machine has fewer free cores than threads; it sleeps
/// only after some milliseconds idle, because a futex wake-up between the jobs of a prompt costs
/// more than the yields. Measured on 2 vCPUs, mamba2-130m Q4_0, 2 threads: beside a busy process,
/// 20,000 pause rounds gave 84-88 tok/s decode and 2,000 gave 110-126 (one thread alone: 107;
/// the pool before the epoch claims: 21-29); quiet, 18,000 yields instead of 200 gave 2-3 % more
/// prompt speed (fewer sleeps and wake-ups).
const SPIN: u32 = 20_000;
const SPIN_PAUSE: u32 = 2_000;

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
                epoch: 0,
                job: None,
                n_chunks: 0,
                shutdown: false,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            // Epoch 0 has no chunks to claim: its index is already past any count.
            claim: AtomicU64::new(u64::from(u32::MAX)),
            finished: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            payload: Mutex::new(None),
            published: AtomicU64::new(0),
            sleepers: AtomicUsize::new(0),
            caller_sleeps: AtomicBool::new(false),
            #[cfg(test)]
            hold_workers: AtomicBool::new(false),
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
    /// A panic in `f` is re-raised here after every chunk has finished.
    pub fn run(&self, n_chunks: usize, f: &(dyn Fn(usize) + Sync)) {
        // Chunk indices live in the low half of the claim word: a count that does not fit runs
        // on this thread (rather than losing chunks).
        if self.workers.is_empty() || n_chunks <= 1 || n_chunks >= u32::MAX as usize {
            (0..n_chunks).for_each(f);
            return;
        }
        let s = &*self.shared;
        // SAFETY: erases the borrow's lifetime for publication; a thread dereferences the pointer
        // only after claiming a chunk of this epoch, this function does not return before every
        // chunk has finished, and no chunk of this epoch can be claimed after that (every index
        // is taken, and the next job changes the epoch).
        let job = Job(unsafe {
            std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(f)
        });
        let epoch = {
            let mut st = s.state.lock().unwrap_or_else(|e| e.into_inner());
            st.epoch = st.epoch.wrapping_add(1);
            st.job = Some(job);
            st.n_chunks = n_chunks;
            s.finished.store(0, Ordering::SeqCst);
            s.claim.store(u64::from(st.epoch) << 32, Ordering::SeqCst);
            s.published.store(u64::from(st.epoch), Ordering::SeqCst);
            if s.sleepers.load(Ordering::SeqCst) > 0 {
                s.work.notify_all();
            }
            st.epoch
        };
        take_chunks(s, epoch, n_chunks, job);
        let mut spins = 0;
        while s.finished.load(Ordering::SeqCst) < n_chunks && spins < SPIN {
            wait_round(spins);
            spins += 1;
        }
        if s.finished.load(Ordering::SeqCst) < n_chunks {
            let mut st = s.state.lock().unwrap_or_else(|e| e.into_inner());
            s.caller_sleeps.store(true, Ordering::SeqCst);
            while s.finished.load(Ordering::SeqCst) < n_chunks {
                st = s.done.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            s.caller_sleeps.store(false, Ordering::SeqCst);
            drop(st);
        }
        if s.panicked.swap(false, Ordering::SeqCst) {
            let payload = s.payload.lock().unwrap_or_else(|e| e.into_inner()).take();
            match payload {
                Some(p) => std::panic::resume_unwind(p),
                None => panic!("a kernel panicked"),
            }
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

/// Claims and runs chunks of the job of `epoch` until none is left; returns at once if that job
/// is over. A panicking chunk is recorded and counted as finished.
fn take_chunks(s: &Shared, epoch: u32, n: usize, job: Job) {
    let mut word = s.claim.load(Ordering::Acquire);
    loop {
        let i = (word & u64::from(u32::MAX)) as usize;
        if (word >> 32) as u32 != epoch || i >= n {
            return;
        }
        match s
            .claim
            .compare_exchange_weak(word, word + 1, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                // SAFETY: chunk `i` of `epoch` is claimed and not finished, so `Pool::run` of
                // that epoch is still waiting and the closure it published is alive.
                let f = unsafe { &*job.0 };
                if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(i))) {
                    let mut first = s.payload.lock().unwrap_or_else(|e| e.into_inner());
                    first.get_or_insert(p);
                    s.panicked.store(true, Ordering::SeqCst);
                }
                if s.finished.fetch_add(1, Ordering::SeqCst) + 1 == n
                    && s.caller_sleeps.load(Ordering::SeqCst)
                {
                    // Under the lock, so the caller cannot miss it between its check and its wait.
                    let _st = s.state.lock().unwrap_or_else(|e| e.into_inner());
                    s.done.notify_all();
                }
                word = s.claim.load(Ordering::Acquire);
            }
            Err(now) => word = now,
        }
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
        let (epoch, job, n) = {
            let mut st = s.state.lock().unwrap_or_else(|e| e.into_inner());
            while u64::from(st.epoch) == seen && !st.shutdown {
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                st = s.work.wait(st).unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
            if st.shutdown {
                return;
            }
            seen = u64::from(st.epoch);
            (st.epoch, st.job, st.n_chunks)
        };
        #[cfg(test)]
        while s.hold_workers.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        if let Some(job) = job {
            take_chunks(s, epoch, n, job);
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
        let msg = r.expect_err("the panic is re-raised");
        assert_eq!(
            msg.downcast_ref::<&str>(),
            Some(&"chunk 5"),
            "the chunk's own message"
        );
        let count = AtomicUsize::new(0);
        pool.run(8, &|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 8);
    }

    #[test]
    fn back_to_back_jobs_run_every_chunk_once() {
        // Many short jobs in a row: a worker that wakes late must not take a chunk of a job it
        // did not see published, nor miss one of the job it did.
        let pool = Pool::new(3).expect("threads");
        let hits: Vec<AtomicUsize> = (0..9).map(|_| AtomicUsize::new(0)).collect();
        for round in 0..20_000usize {
            let n = 2 + round % 8;
            pool.run(n, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            for (i, h) in hits.iter().enumerate() {
                assert_eq!(
                    h.swap(0, Ordering::Relaxed),
                    usize::from(i < n),
                    "round {round}"
                );
            }
        }
    }

    #[test]
    fn a_job_does_not_wait_for_a_worker_that_is_not_running() {
        // The worker sees the job published and is then held before it claims a chunk, as a
        // worker whose core went to another process is: the caller must finish the job alone,
        // and the late worker must then take nothing of it.
        let pool = Pool::new(2).expect("threads");
        pool.shared.hold_workers.store(true, Ordering::SeqCst);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let me = std::thread::current().id();
                let mine = AtomicUsize::new(0);
                pool.run(6, &|_| {
                    if std::thread::current().id() == me {
                        mine.fetch_add(1, Ordering::Relaxed);
                    }
                });
                tx.send(mine.load(Ordering::Relaxed)).expect("send");
            });
            let mine = rx.recv_timeout(std::time::Duration::from_secs(20));
            pool.shared.hold_workers.store(false, Ordering::SeqCst);
            assert_eq!(
                mine,
                Ok(6),
                "the caller ran every chunk without waiting for the worker"
            );
        });
        let count = AtomicUsize::new(0);
        for _ in 0..100 {
            pool.run(5, &|_| {
                count.fetch_add(1, Ordering::Relaxed);
            });
        }
        assert_eq!(count.load(Ordering::Relaxed), 500);
    }
}
