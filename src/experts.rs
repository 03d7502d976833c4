//! CDMoE experts read on demand (`LoadOptions::expert_cache_bytes`): instead of reading expert
//! records in place through the map, a session fetches the records a token's routing selects
//! into a cache of a user-set size and evicts the least recently used ones. Everything else
//! stays mapped.
//!
//! - [`ExpertSource`] (held by the model): where each layer's records lie in the file, and the
//!   file handle they are read from (`pread`, with readahead turned off: accesses are random).
//! - [`ExpertCache`] (held by a session): `n_slots` record slots, allocated once when the session
//!   opens; a table from (layer, expert) to slot; an LRU list over the slots; and a fetcher
//!   thread. [`ExpertCache::request`] looks a token's experts up as soon as its routing is known
//!   and hands the misses to the fetcher, which reads them while the caller runs the shared MLP;
//!   [`ExpertCache::wait`] joins the reads before the experts are used. Neither allocates.
//!
//! Explicit reads were measured against reading the records in place with `madvise` (WillNeed
//! on a miss, DontNeed on eviction) and kept; README "Memory" has the numbers. Reads bound the
//! resident bytes exactly (the kernel's fault-around maps neighbouring pages of a mapping, which
//! `madvise` does not undo) and cost no page faults or TLB shootdowns.

use std::alloc::Layout;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use anyhow::{anyhow, bail, Context, Result};
use cheems_formats::GgmlType;

use crate::blocks::cdmoe::Experts;
use crate::model::{Ffn, Layer};

/// Whether a tensor holds CDMoE experts (records or tables).
pub fn is_expert_table(name: &str) -> bool {
    [
        "ffn_experts.weight",
        "ffn_down_embed.weight",
        "ffn_up_embed.weight",
    ]
    .iter()
    .any(|s| name.ends_with(s))
}

/// Where one layer's experts lie: expert `e`'s `down_embed` row at `down + e·stride` and its
/// `up_embed` row at `up + e·stride` (records: `up = down + row_bytes`, one read).
#[derive(Clone, Copy, Debug)]
struct LayerExperts {
    ty: GgmlType,
    row_bytes: usize,
    down: u64,
    up: u64,
    stride: u64,
}

impl LayerExperts {
    fn contiguous(&self) -> bool {
        self.up == self.down + self.row_bytes as u64
    }
}

/// The expert records of a model, read from its file on demand.
#[derive(Debug)]
pub struct ExpertSource {
    file: Arc<File>,
    path: PathBuf,
    /// The user's bound on cached record bytes, per session.
    pub budget: u64,
    /// Per layer; `None` for layers without CDMoE.
    layers: Vec<Option<LayerExperts>>,
    pub n_experts: usize,
    /// Bytes of one record (a down row and an up row) of the widest layer.
    pub record_bytes: usize,
    /// Bytes of every record of every layer.
    pub total_bytes: u64,
}

impl ExpertSource {
    /// The experts of `layers`, read from `path`; `None` when no layer has CDMoE.
    pub fn new(path: &Path, budget: u64, layers: &[Layer]) -> Result<Option<Self>> {
        let mut n_experts = 0;
        let per_layer: Vec<Option<LayerExperts>> = layers
            .iter()
            .map(|l| {
                let Some((_, _, Ffn::CdMoe(m))) = &l.ffn else {
                    return None;
                };
                let (ty, rb) = match &m.experts {
                    Experts::Records(r) => (r.ty, r.row_bytes()),
                    Experts::Tables { down, .. } => (down.ty, down.row_bytes()),
                };
                let (down, up, stride, rows) = match &m.experts {
                    Experts::Records(r) => {
                        (r.range().start, r.range().start + rb, 2 * rb, r.rows / 2)
                    }
                    Experts::Tables { down, up } => {
                        (down.range().start, up.range().start, rb, down.rows)
                    }
                };
                n_experts = rows;
                Some(LayerExperts {
                    ty,
                    row_bytes: rb,
                    down: down as u64,
                    up: up as u64,
                    stride: stride as u64,
                })
            })
            .collect();
        if per_layer.iter().all(Option::is_none) {
            return Ok(None);
        }
        let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
        advise_random(&file);
        let record_bytes = per_layer
            .iter()
            .flatten()
            .map(|l| 2 * l.row_bytes)
            .max()
            .unwrap_or(0);
        let total_bytes = per_layer
            .iter()
            .flatten()
            .map(|l| (2 * l.row_bytes * n_experts) as u64)
            .sum();
        Ok(Some(ExpertSource {
            file: Arc::new(file),
            path: path.to_path_buf(),
            budget,
            layers: per_layer,
            n_experts,
            record_bytes,
            total_bytes,
        }))
    }
}

/// Marks the expert tables of a mapped file for random access (`madvise(MADV_RANDOM)` on the
/// pages they touch): no readahead when records are read in place, and, because the advice
/// gives the tables mappings of their own, no pages of theirs mapped by faults on the dense
/// weights next to them (the kernel maps the cached pages around a faulting page, or its whole
/// large folio, within the faulting mapping). With `unmap` (records read into an expert cache
/// instead), expert pages already mapped, by parsing the header for instance, are unmapped
/// (`MADV_DONTNEED`), so that none stays in the process through the map.
pub fn advise_random_map(file: &cheems_formats::gguf::GgufFile, unmap: bool) {
    let bytes = file.bytes();
    let base = bytes.as_ptr() as usize;
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    for t in file.tensors().iter().filter(|t| is_expert_table(&t.name)) {
        let start = base + file.data_offset() + t.offset as usize;
        let (a, b) = (start / page * page, (start + t.size).next_multiple_of(page));
        if a >= b {
            continue;
        }
        let advice = [libc::MADV_RANDOM, libc::MADV_DONTNEED];
        for &advice in &advice[..1 + usize::from(unmap)] {
            // SAFETY: `a..b` is the page-aligned range around a tensor of the file's read-only
            // mapping (which ends on a page boundary or a partial page of the same mapping),
            // kept alive by `file`. MADV_RANDOM is advice on readahead. MADV_DONTNEED on a
            // read-only file mapping only drops page-table entries: later reads fault the same
            // bytes back in from the file, so every borrowed slice still reads what it read.
            unsafe { libc::madvise(a as *mut libc::c_void, b - a, advice) };
        }
    }
}

/// Random access: no readahead around each record (`posix_fadvise(RANDOM)` on this handle).
fn advise_random(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: plain system call on an open descriptor this function borrows; advice only.
    let _ = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
}

/// Hits, misses and bytes read by a session's expert cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExpertStats {
    pub hits: u64,
    pub misses: u64,
    pub bytes_read: u64,
}

impl ExpertStats {
    /// The counts since `earlier`.
    pub fn since(&self, earlier: &ExpertStats) -> ExpertStats {
        ExpertStats {
            hits: self.hits - earlier.hits,
            misses: self.misses - earlier.misses,
            bytes_read: self.bytes_read - earlier.bytes_read,
        }
    }

    /// Hits per lookup (0 with none).
    pub fn hit_rate(&self) -> f64 {
        self.hits as f64 / (self.hits + self.misses).max(1) as f64
    }
}

const NONE: u32 = u32::MAX;

/// Alignment (and slot granularity) of the cache memory.
const SLOT_ALIGN: usize = 64;

/// The cache's record slots: one zeroed allocation (pages become resident as slots fill).
struct Slots {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: `Slots` owns its allocation like a `Box<[u8]>`; access is coordinated by
// `ExpertCache` (the fetcher writes only slots of a pending request, which the session does not
// read until `wait` has synchronised with it through the job mutex).
unsafe impl Send for Slots {}
// SAFETY: as above; shared references only read slots no read is pending on.
unsafe impl Sync for Slots {}

impl Slots {
    fn new(bytes: usize) -> Result<Self> {
        let layout = Layout::from_size_align(bytes.max(1), SLOT_ALIGN)
            .map_err(|_| anyhow!("expert cache of {bytes} bytes is too large"))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr)
            .ok_or_else(|| anyhow!("cannot allocate an expert cache of {bytes} bytes"))?;
        Ok(Slots { ptr, layout })
    }

    /// Bytes `at..at + len`.
    fn get(&self, at: usize, len: usize) -> &[u8] {
        debug_assert!(at + len <= self.layout.size());
        // SAFETY: in bounds (callers pass ranges of whole slots), initialised (zeroed at
        // allocation), and not written while this borrow lives: the fetcher writes only slots
        // of a pending request, and `ExpertCache::rows` is called after `wait`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(at), len) }
    }

    /// Bytes `at..at + len` for the fetcher to fill.
    fn get_mut(&self, at: usize, len: usize) -> *mut u8 {
        debug_assert!(at + len <= self.layout.size());
        // SAFETY: in bounds, as above (the pointer is only formed here).
        unsafe { self.ptr.as_ptr().add(at) }
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        // SAFETY: allocated in `Slots::new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// One read: `len` bytes at file offset `at` into the slot memory at `dst`.
#[derive(Clone, Copy, Debug)]
struct Read {
    at: u64,
    dst: usize,
    len: usize,
}

/// The reads of the current request, shared with the fetcher thread.
#[derive(Debug)]
struct Job {
    reads: Vec<Read>,
    requested: u64,
    done: u64,
    error: Option<std::io::Error>,
    stop: bool,
}

#[derive(Debug)]
struct Shared {
    job: Mutex<Job>,
    work: Condvar,
    finished: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Job> {
        self.job.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Performs `reads` from `file` into the slot memory they point at.
fn perform(file: &File, reads: &[Read]) -> std::io::Result<()> {
    for r in reads {
        // SAFETY: `dst..dst + len` is a slot of the cache's memory (`Slots::get_mut`), which
        // outlives every read (the fetcher is joined before the memory is freed), and nothing
        // else reads or writes it until the request is waited for.
        let buf = unsafe { std::slice::from_raw_parts_mut(r.dst as *mut u8, r.len) };
        file.read_exact_at(buf, r.at)?;
    }
    Ok(())
}

fn fetcher(file: &File, s: &Shared) {
    let mut job = s.lock();
    loop {
        while job.requested == job.done && !job.stop {
            job = s.work.wait(job).unwrap_or_else(|e| e.into_inner());
        }
        if job.stop {
            return;
        }
        // The session waits for these reads anyway, so they are done holding the lock.
        if let Err(e) = perform(file, &job.reads) {
            job.error = Some(e);
        }
        job.done = job.requested;
        s.finished.notify_all();
    }
}

/// A session's cache of expert records (see the module documentation).
pub struct ExpertCache {
    file: Arc<File>,
    path: PathBuf,
    layers: Vec<Option<LayerExperts>>,
    n_experts: usize,
    /// Bytes of a slot (a record, rounded up to [`SLOT_ALIGN`]).
    slot_bytes: usize,
    n_slots: usize,
    slots: Slots,
    /// [layer][expert] -> slot, or NONE
    slot_of: Vec<u32>,
    /// slot -> layer·n_experts + expert, or NONE
    owner: Vec<u32>,
    /// The LRU list over slots: most recently used first.
    prev: Vec<u32>,
    next: Vec<u32>,
    head: u32,
    tail: u32,
    /// Slots of the experts of the current request, in the order asked.
    chosen: Vec<u32>,
    /// Layer of the current request.
    layer: usize,
    /// Reads of the current request when done inline.
    reads: Vec<Read>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    pending: bool,
    stats: ExpertStats,
}

impl std::fmt::Debug for ExpertCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpertCache")
            .field("n_slots", &self.n_slots)
            .field("slot_bytes", &self.slot_bytes)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl ExpertCache {
    /// A cache within `src.budget` bytes for tokens that use `n_used` experts per layer. Fails
    /// if the budget cannot hold one token's experts.
    pub fn new(src: &ExpertSource, n_used: usize) -> Result<Self> {
        let slot_bytes = src.record_bytes.next_multiple_of(SLOT_ALIGN);
        let n_layers = src.layers.iter().flatten().count();
        let all = n_layers * src.n_experts;
        let fit = usize::try_from(src.budget / slot_bytes.max(1) as u64).unwrap_or(usize::MAX);
        if fit < n_used.max(1) {
            bail!(
                "an expert cache of {:.2} MiB holds {fit} expert records of {slot_bytes} bytes; a \
                 token needs {n_used} per layer, so at least {:.2} MiB",
                src.budget as f64 / (1u64 << 20) as f64,
                (n_used * slot_bytes) as f64 / (1u64 << 20) as f64
            );
        }
        let n_slots = fit.min(all).max(1);
        if u32::try_from(all).is_err() {
            bail!("{all} expert records: too many to index");
        }
        let slots = Slots::new(n_slots * slot_bytes)?;
        let shared = Arc::new(Shared {
            job: Mutex::new(Job {
                reads: Vec::with_capacity(2 * n_used),
                requested: 0,
                done: 0,
                error: None,
                stop: false,
            }),
            work: Condvar::new(),
            finished: Condvar::new(),
        });
        let thread = {
            let (file, shared) = (src.file.clone(), shared.clone());
            std::thread::Builder::new()
                .name("cheems-experts".into())
                .spawn(move || fetcher(&file, &shared))
                .context("cannot start the expert fetcher thread")?
        };
        let mut c = ExpertCache {
            file: src.file.clone(),
            path: src.path.clone(),
            layers: src.layers.clone(),
            n_experts: src.n_experts,
            slot_bytes,
            n_slots,
            slots,
            slot_of: vec![NONE; src.layers.len() * src.n_experts],
            owner: vec![NONE; n_slots],
            prev: vec![NONE; n_slots],
            next: vec![NONE; n_slots],
            head: NONE,
            tail: NONE,
            chosen: Vec::with_capacity(n_used),
            layer: 0,
            reads: Vec::with_capacity(2 * n_used),
            shared,
            thread: Some(thread),
            pending: false,
            stats: ExpertStats::default(),
        };
        for s in 0..n_slots as u32 {
            c.push_front(s);
        }
        Ok(c)
    }

    /// Bytes of the cache's slots.
    pub fn bytes(&self) -> usize {
        self.n_slots * self.slot_bytes
    }

    /// Records the cache holds at most.
    pub fn capacity(&self) -> usize {
        self.n_slots
    }

    /// Records it holds now.
    pub fn len(&self) -> usize {
        self.owner.iter().filter(|&&o| o != NONE).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn stats(&self) -> ExpertStats {
        self.stats
    }

    /// The slot memory, for memory reports: (address, bytes).
    pub fn region(&self) -> (usize, usize) {
        (self.slots.ptr.as_ptr() as usize, self.bytes())
    }

    fn unlink(&mut self, s: u32) {
        let (p, n) = (self.prev[s as usize], self.next[s as usize]);
        match p {
            NONE => self.head = n,
            p => self.next[p as usize] = n,
        }
        match n {
            NONE => self.tail = p,
            n => self.prev[n as usize] = p,
        }
    }

    fn push_front(&mut self, s: u32) {
        self.prev[s as usize] = NONE;
        self.next[s as usize] = self.head;
        match self.head {
            NONE => self.tail = s,
            h => self.prev[h as usize] = s,
        }
        self.head = s;
    }

    /// Looks up the experts `ids` (distinct, at most `n_used`) of one token at `layer`, makes
    /// them the most recently used, and reads the missing ones into the least recently used
    /// slots: on the fetcher thread when `overlap` (join with [`ExpertCache::wait`]), else here.
    pub fn request(
        &mut self,
        layer: usize,
        ids: impl Iterator<Item = usize> + Clone,
        overlap: bool,
    ) -> Result<()> {
        self.wait()?;
        let Some(Some(lx)) = self.layers.get(layer).copied() else {
            bail!("layer {layer} has no expert records");
        };
        self.layer = layer;
        self.chosen.clear();
        // Hits first, so that no miss evicts an expert this token uses (the list has at least
        // `n_used` slots, so the tail is never one of them).
        for e in ids.clone() {
            debug_assert!(e < self.n_experts);
            let s = self.slot_of[layer * self.n_experts + e];
            if s != NONE {
                self.unlink(s);
                self.push_front(s);
            }
            self.chosen.push(s);
        }
        self.reads.clear();
        let rb = lx.row_bytes;
        for (i, e) in ids.enumerate() {
            if self.chosen[i] != NONE {
                self.stats.hits += 1;
                continue;
            }
            self.stats.misses += 1;
            self.stats.bytes_read += 2 * rb as u64;
            let s = self.tail;
            self.unlink(s);
            self.push_front(s);
            let old = self.owner[s as usize];
            if old != NONE {
                self.slot_of[old as usize] = NONE;
            }
            let key = layer * self.n_experts + e;
            self.owner[s as usize] = key as u32;
            self.slot_of[key] = s;
            self.chosen[i] = s;
            let (down, up) = (lx.down + e as u64 * lx.stride, lx.up + e as u64 * lx.stride);
            let dst = self.slots.get_mut(s as usize * self.slot_bytes, 2 * rb) as usize;
            if lx.contiguous() {
                let len = 2 * rb;
                self.reads.push(Read { at: down, dst, len });
            } else {
                self.reads.push(Read {
                    at: down,
                    dst,
                    len: rb,
                });
                self.reads.push(Read {
                    at: up,
                    dst: dst + rb,
                    len: rb,
                });
            }
        }
        if self.reads.is_empty() {
            return Ok(());
        }
        if !overlap {
            let r = perform(&self.file, &self.reads);
            return self.finish(r);
        }
        let mut job = self.shared.lock();
        job.reads.clear();
        job.reads.extend_from_slice(&self.reads);
        job.requested += 1;
        drop(job);
        self.pending = true;
        self.shared.work.notify_one();
        Ok(())
    }

    /// Waits for the reads of the current request.
    pub fn wait(&mut self) -> Result<()> {
        if !self.pending {
            return Ok(());
        }
        self.pending = false;
        let mut job = self.shared.lock();
        while job.done != job.requested {
            job = self
                .shared
                .finished
                .wait(job)
                .unwrap_or_else(|e| e.into_inner());
        }
        let r = job.error.take().map_or(Ok(()), Err);
        drop(job);
        self.finish(r)
    }

    /// On a failed read, forgets the slots of the request (their bytes are not the records).
    fn finish(&mut self, r: std::io::Result<()>) -> Result<()> {
        let Err(e) = r else { return Ok(()) };
        for i in 0..self.chosen.len() {
            let s = self.chosen[i] as usize;
            if self.owner[s] != NONE {
                self.slot_of[self.owner[s] as usize] = NONE;
                self.owner[s] = NONE;
            }
        }
        Err(e).with_context(|| {
            format!(
                "cannot read expert records of layer {} from {}",
                self.layer,
                self.path.display()
            )
        })
    }

    /// The type and the (down, up) rows of the `i`-th expert of the current request.
    pub fn rows(&self, i: usize) -> (GgmlType, &[u8], &[u8]) {
        debug_assert!(!self.pending);
        let (ty, rb) = self.layers[self.layer].map_or((GgmlType::F32, 0), |l| (l.ty, l.row_bytes));
        let at = self.chosen[i] as usize * self.slot_bytes;
        (ty, self.slots.get(at, rb), self.slots.get(at + rb, rb))
    }
}

impl Drop for ExpertCache {
    fn drop(&mut self) {
        // Stop and join the fetcher before the slot memory goes.
        self.shared.lock().stop = true;
        self.shared.work.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
