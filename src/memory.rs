//! Memory as the operating system sees it, for reports and tests (Linux): the process's resident
//! and peak resident set (`/proc/self/status`), and how much of an address range is resident.
//!
//! Two views of residency: `/proc/self/pagemap` says which pages are in this process's page
//! tables (what RSS counts); `mincore` says which pages are in memory at all, which for a file
//! mapping means the kernel's page cache (shared, and kept after the process is gone). A model
//! file just written or read is wholly in the page cache, yet only the pages a process touched
//! are in its RSS. [`Region`]s name the category of each range: [`model_regions`] for the file,
//! `Session::memory_regions` for a session's buffers.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::experts::is_expert_table;
use crate::Model;

/// What a range of memory holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Category {
    /// The file's header, metadata and tensor table.
    Header,
    /// Every weight that is not a CDMoE expert.
    DenseWeights,
    /// CDMoE expert records (or tables) in the file.
    ExpertTables,
    /// A session's cache of expert records.
    ExpertCache,
    /// A session's sequence state (KV caches, DMA caches, SSD states).
    State,
    /// A session's scratch buffers.
    Scratch,
}

impl Category {
    pub const ALL: [Category; 6] = [
        Category::Header,
        Category::DenseWeights,
        Category::ExpertTables,
        Category::ExpertCache,
        Category::State,
        Category::Scratch,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Category::Header => "header",
            Category::DenseWeights => "dense weights",
            Category::ExpertTables => "expert tables",
            Category::ExpertCache => "expert cache",
            Category::State => "state",
            Category::Scratch => "scratch",
        }
    }
}

/// `len` bytes at address `addr`, holding `category`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub category: Category,
    pub addr: usize,
    pub len: usize,
}

/// The model file's bytes by category, adjacent tensors of one category merged.
pub fn model_regions(model: &Model) -> Vec<Region> {
    let bytes = model.map();
    let base = bytes.as_ptr() as usize;
    let data = model.file.data_offset().min(bytes.len());
    let mut spans: Vec<(usize, usize, Category)> = model
        .file
        .tensors()
        .iter()
        .map(|t| {
            let start = data + t.offset as usize;
            let cat = if is_expert_table(&t.name) {
                Category::ExpertTables
            } else {
                Category::DenseWeights
            };
            (start, start + t.size, cat)
        })
        .collect();
    spans.sort_unstable_by_key(|s| s.0);
    let mut out = vec![Region {
        category: Category::Header,
        addr: base,
        len: data,
    }];
    for (start, end, category) in spans {
        match out.last_mut() {
            // Merge over the padding between tensors of the same category.
            Some(r) if r.category == category => r.len = end - (r.addr - base),
            _ => out.push(Region {
                category,
                addr: base + start,
                len: end - start,
            }),
        }
    }
    out
}

/// The process's resident set now and at its peak, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rss {
    pub current: u64,
    pub peak: u64,
}

/// `VmRSS` and `VmHWM` of `/proc/self/status` (`None` where there is no such file).
pub fn rss() -> Option<Rss> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = |key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()
    };
    Some(Rss {
        current: kib("VmRSS:")? * 1024,
        peak: kib("VmHWM:")? * 1024,
    })
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).unwrap_or(4096).max(1)
}

/// Bytes of `addr..addr + len` on pages for which `resident(page index)` holds (pages the range
/// covers only in part count for the part).
fn count(addr: usize, len: usize, page: usize, resident: impl Fn(usize) -> bool) -> u64 {
    let first = addr / page;
    let end = addr + len;
    (first..end.div_ceil(page))
        .filter(|&p| resident(p - first))
        .map(|p| (end.min((p + 1) * page) - addr.max(p * page)) as u64)
        .sum()
}

/// Bytes of a range on pages in memory (`mincore`: for file mappings, the page cache).
pub fn in_memory(addr: usize, len: usize) -> std::io::Result<u64> {
    if len == 0 {
        return Ok(0);
    }
    let page = page_size();
    let start = addr / page * page;
    let pages = (addr + len).div_ceil(page) - addr / page;
    let mut vec = vec![0u8; pages];
    // SAFETY: `start..start + pages·page` covers the caller's range, which lies in mappings of
    // this process (mincore fails with ENOMEM otherwise, and only writes `vec`), and `vec` has
    // one byte per page of it.
    let r = unsafe {
        libc::mincore(
            start as *mut libc::c_void,
            pages * page,
            vec.as_mut_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(count(addr, len, page, |i| vec[i] & 1 != 0))
}

/// Bytes of a range on pages mapped in this process's page tables (`/proc/self/pagemap`'s
/// "present" bit): what RSS counts.
pub fn mapped(addr: usize, len: usize) -> std::io::Result<u64> {
    if len == 0 {
        return Ok(0);
    }
    let page = page_size();
    let pages = (addr + len).div_ceil(page) - addr / page;
    let mut raw = vec![0u8; pages * 8];
    File::open("/proc/self/pagemap")?.read_exact_at(&mut raw, (addr / page * 8) as u64)?;
    let present = |i: usize| {
        let e = u64::from_le_bytes(raw[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        e >> 63 == 1
    };
    Ok(count(addr, len, page, present))
}

/// Per category: (bytes, bytes mapped in this process, bytes in memory per `mincore`).
pub fn report(regions: &[Region]) -> Vec<(Category, u64, Option<u64>, Option<u64>)> {
    Category::ALL
        .iter()
        .map(|&c| {
            let rs = regions.iter().filter(|r| r.category == c);
            let bytes = rs.clone().map(|r| r.len as u64).sum();
            let mapped: Option<u64> = rs.clone().map(|r| mapped(r.addr, r.len).ok()).sum();
            let cached: Option<u64> = rs.map(|r| in_memory(r.addr, r.len).ok()).sum();
            (c, bytes, mapped, cached)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touched_pages_are_resident_and_untouched_ones_are_not() {
        let page = page_size();
        let n = 64 * page;
        // Zeroed allocations of this size come from fresh anonymous mappings: untouched pages
        // are not resident.
        let mut v: Vec<u8> = vec![0; n];
        let addr = v.as_ptr() as usize;
        let (start, len) = (addr.next_multiple_of(page), 32 * page);
        let base = start - addr;
        for p in 0..8 {
            v[base + p * page] = 1;
        }
        assert_eq!(mapped(start, len).ok(), Some(8 * page as u64));
        assert_eq!(in_memory(start, len).ok(), Some(8 * page as u64));
        // Part of a page counts for its part.
        assert_eq!(mapped(start + 10, 100).ok(), Some(100));
        assert_eq!(mapped(start + 20 * page, 100).ok(), Some(0));
        std::hint::black_box(&v);
        let r = rss().expect("a /proc/self/status");
        assert!(r.peak >= r.current && r.current > 0);
    }
}
