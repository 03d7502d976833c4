//! AMX-BF16 prefill products for F16 and BF16 weights (Sapphire Rapids and later), written with
//! stable inline `asm!` (Rust has no stable tile intrinsics).
//!
//! `tdpbf16ps` multiplies bf16 pairs and accumulates in f32; bf16 alone would lose precision,
//! so each product is split (the "bf16x3" scheme). An F16 weight (11 significant bits) is
//! exactly `wh + wl`: `wh` is its value rounded to bf16 (nearest, ties to even; 8 bits) and the
//! rest `wl = w − wh` (at most 3 significant bits, `|wl| ≤ 2⁻⁸|w|`) is exact in bf16. An f32
//! activation is `xh + xl + e`, both halves rounded the same way, `|xl| ≤ 2⁻⁸|x|`,
//! `|e| ≤ 2⁻¹⁶|x|`. The tiles accumulate `wl·xh + wh·xh + wh·xl` in f32; the dropped `wl·xl`
//! and `w·e` are below `2⁻¹⁵|w·x|` together (measured: `2.7e-6 Σ|w·x|` at most, in
//! `crate::matmul`'s test). BF16 weights are exact as `wh`: two products, `w·e` dropped.
//!
//! Tiles (all 16 rows of 64 bytes): `A` = 16 weight rows × 32 values, packed per panel of
//! [`PANEL`] rows, per 32 columns `[wh rows 0-15][wh rows 16-31][wl 0-15][wl 16-31]` (1 KiB
//! each); `B` = 16 tokens × 32 values in the VNNI layout (row `j` holds the pairs `x[2j], x[2j+1]`
//! of each token), packed once per product into the caller's scratch, per block of 16 tokens and
//! per 32 columns `[xh][xl]`; `C` = 16 rows × 16 tokens of f32. Each step keeps four `C` tiles
//! (32 rows × 32 tokens) in `tmm0-3`, the weights in `tmm4-5` and the tokens in `tmm6-7`: eight
//! tile loads per twelve `tdpbf16ps`. The `C` tiles are stored to the stack and transposed into
//! the `[token][row]` output.
//!
//! Not here: when this path runs ([`crate::matmul`]), the AVX-512 FMA path ([`super::avx512`]).

use core::arch::asm;
use core::arch::x86_64::*;
use std::sync::OnceLock;

/// Weight rows packed at a time (two `A` tiles).
pub(crate) const PANEL: usize = 32;
/// Columns per tile.
pub(crate) const KT: usize = 32;
/// u32 words of one tile (16 rows of 64 bytes).
pub(crate) const TW: usize = 256;
/// Column tiles of a panel packed at a time: the stack buffer is `SEG_TILES · 4` KiB.
const SEG_TILES: usize = 32;

/// Whether this process may use AMX-BF16 tiles: the CPU reports AMX-TILE and AMX-BF16 (CPUID
/// leaf 7, EDX bits 24 and 22), Linux granted the tile data state (`arch_prctl`), and the
/// environment variable `CHEEMS_AMX` is not `0`. Checked once.
pub(crate) fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        if std::env::var("CHEEMS_AMX").is_ok_and(|v| v.trim() == "0") {
            return false;
        }
        cpu_has_amx_bf16() && request_permission()
    })
}

fn cpu_has_amx_bf16() -> bool {
    let max = __cpuid(0).eax;
    if max < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    edx & (1 << 22) != 0 && edx & (1 << 24) != 0
}

/// Asks Linux for the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`);
/// true when granted.
#[cfg(target_os = "linux")]
fn request_permission() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let r: i64;
    // SAFETY: this system call only changes the process's permission to use the tile state; it
    // reads and writes no memory of ours; `syscall` clobbers rcx and r11, declared.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => r,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    r == 0
}

#[cfg(not(target_os = "linux"))]
fn request_permission() -> bool {
    false
}

/// The tile configuration: palette 1, the eight tiles 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileCfg([u8; 64]);

impl TileCfg {
    fn all_16x64() -> Self {
        let mut b = [0u8; 64];
        b[0] = 1;
        for t in 0..8 {
            b[16 + 2 * t] = 64;
            b[48 + t] = 16;
        }
        TileCfg(b)
    }
}

/// The odd 16-bit words of two vectors of 16 f32 (their bf16 tops), `a`'s first.
const ODD_WORDS: [u16; 32] = {
    let mut w = [0u16; 32];
    let mut i = 0;
    while i < 32 {
        w[i] = 2 * i as u16 + 1;
        i += 1;
    }
    w
};

/// `v` rounded to bf16 (nearest, ties to even), as f32.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
fn bf16_rne(v: __m512) -> __m512 {
    let b = _mm512_castps_si512(v);
    let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(1));
    let r = _mm512_add_epi32(_mm512_add_epi32(b, _mm512_set1_epi32(0x7fff)), lsb);
    _mm512_castsi512_ps(_mm512_and_si512(
        r,
        _mm512_set1_epi32(0xffff_0000_u32 as i32),
    ))
}

/// The bf16 tops of `a` then `b` (32 values), one vector.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
fn tops(a: __m512, b: __m512, odd: __m512i) -> __m512i {
    _mm512_permutex2var_epi16(_mm512_castps_si512(a), odd, _mm512_castps_si512(b))
}

/// Packs one block of up to 16 tokens (`nt` rows of `cols` f32 at `xs`) into `dst`, the `B`
/// tiles of the block: for each 32 columns `c`, `[xh][xl]` at `dst[2·c·TW..]`, tokens and
/// columns past the ends as zeros.
///
/// # Safety
/// `xs` points at `nt ≤ 16` rows of `cols` f32; `dst` holds `cols.div_ceil(32) · 2 · TW` words.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn pack_tokens(xs: *const f32, cols: usize, nt: usize, dst: &mut [u32]) {
    debug_assert!(nt <= 16 && dst.len() >= cols.div_ceil(KT) * 2 * TW);
    // SAFETY: a constant array of 64 bytes.
    let odd = unsafe { _mm512_loadu_si512(ODD_WORDS.as_ptr().cast()) };
    let step = _mm256_set1_epi32(cols as i32);
    let idx0 = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), step);
    let idx1 = _mm256_add_epi32(idx0, _mm256_slli_epi32::<3>(step));
    let m0: __mmask8 = ((1u32 << nt.min(8)) - 1) as u8;
    let m1: __mmask8 = ((1u32 << nt.saturating_sub(8)) - 1) as u8;
    let pairs = cols.div_ceil(KT) * KT / 2;
    for j in 0..pairs {
        let k = 2 * j;
        // Lanes 2t, 2t + 1: values k, k + 1 of token t (a: tokens 0-7, b: 8-15).
        let (a, b) = if k + 1 < cols {
            // SAFETY: values `k, k + 1` of the tokens in the masks are inside their rows;
            // masked-off lanes are not read.
            unsafe {
                let p = xs.add(k).cast::<i64>();
                (
                    _mm512_castsi512_ps(_mm512_mask_i32gather_epi64::<4>(
                        _mm512_setzero_si512(),
                        m0,
                        idx0,
                        p,
                    )),
                    _mm512_castsi512_ps(_mm512_mask_i32gather_epi64::<4>(
                        _mm512_setzero_si512(),
                        m1,
                        idx1,
                        p,
                    )),
                )
            }
        } else {
            let mut v = [0f32; 32];
            if k < cols {
                for t in 0..nt {
                    // SAFETY: value `k < cols` of token `t < nt`.
                    v[2 * t] = unsafe { *xs.add(t * cols + k) };
                }
            }
            // SAFETY: `v` holds 32 f32.
            unsafe {
                (
                    _mm512_loadu_ps(v.as_ptr()),
                    _mm512_loadu_ps(v.as_ptr().add(16)),
                )
            }
        };
        let (ha, hb) = (bf16_rne(a), bf16_rne(b));
        let (la, lb) = (
            bf16_rne(_mm512_sub_ps(a, ha)),
            bf16_rne(_mm512_sub_ps(b, hb)),
        );
        let o = (j / 16) * 2 * TW + (j % 16) * 16;
        // SAFETY: both rows of 16 words lie in the block's tiles of column tile `j / 16`
        // (`dst` holds them all).
        unsafe {
            _mm512_storeu_si512(dst.as_mut_ptr().add(o).cast(), tops(ha, hb, odd));
            _mm512_storeu_si512(dst.as_mut_ptr().add(o + TW).cast(), tops(la, lb, odd));
        }
    }
}

/// Packs columns `32·c0 .. 32·(c0 + cs)` of `nr ≤ 32` weight rows (F16 split in `wh`/`wl` when
/// `SPLIT`, else BF16 copied as `wh`) into `panel`, tile `(c, part, half)` at
/// `((2c + part)·2 + half)·TW`; rows and columns past the ends as zeros.
///
/// # Safety
/// `rows` points at `nr` rows of `rb` bytes holding `cols` values each; `panel` is writable for
/// `cs · 4 · TW` words.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn pack_panel<const SPLIT: bool>(
    rows: *const u8,
    rb: usize,
    nr: usize,
    cols: usize,
    c0: usize,
    cs: usize,
    panel: *mut u32,
    odd: __m512i,
) {
    debug_assert!(nr <= PANEL && cs <= SEG_TILES);
    let dst = panel;
    for r in 0..PANEL {
        let (half, rr) = (r / 16, r % 16);
        for c in 0..cs {
            let k = KT * (c0 + c);
            let o_hi = ((2 * c) * 2 + half) * TW + 16 * rr;
            let o_lo = ((2 * c + 1) * 2 + half) * TW + 16 * rr;
            // SAFETY: `o_hi, o_lo + 16 <= cs · 4 · TW` (writable: caller); the row's values
            // `k..min(k + 32, cols)` are in bounds (caller); masked-off lanes are not read.
            unsafe {
                if r >= nr || k >= cols {
                    _mm512_storeu_si512(dst.add(o_hi).cast(), _mm512_setzero_si512());
                    if SPLIT {
                        _mm512_storeu_si512(dst.add(o_lo).cast(), _mm512_setzero_si512());
                    }
                    continue;
                }
                let m: __mmask32 = if cols - k >= 32 {
                    !0
                } else {
                    (1u32 << (cols - k)) - 1
                };
                let h = _mm512_maskz_loadu_epi16(m, rows.add(r * rb + 2 * k).cast());
                if !SPLIT {
                    _mm512_storeu_si512(dst.add(o_hi).cast(), h);
                    continue;
                }
                let a = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
                let b = _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(h));
                let (ha, hb) = (bf16_rne(a), bf16_rne(b));
                let (la, lb) = (_mm512_sub_ps(a, ha), _mm512_sub_ps(b, hb));
                _mm512_storeu_si512(dst.add(o_hi).cast(), tops(ha, hb, odd));
                _mm512_storeu_si512(dst.add(o_lo).cast(), tops(la, lb, odd));
            }
        }
    }
}

/// Weight lines to fetch into L2 while the tiles run: `rows` rows `rb` bytes apart from `at`,
/// `chunks` lines of 64 bytes each (the next panel segment to pack, or a share of it).
#[derive(Clone, Copy)]
struct Ahead {
    at: *const u8,
    rows: usize,
    rb: usize,
    chunks: usize,
}

/// The four tile products of one step, `C[half][block] += A[half] · B[block]`: the
/// accumulators `tmm0-3` from the weight tiles `tmm4-5` and the token tiles `tmm6-7`.
macro_rules! products_2x2 {
    () => {
        concat!(
            "tdpbf16ps tmm0, tmm4, tmm6\n",
            "tdpbf16ps tmm1, tmm4, tmm7\n",
            "tdpbf16ps tmm2, tmm5, tmm6\n",
            "tdpbf16ps tmm3, tmm5, tmm7",
        )
    };
}

/// Runs `cs` column tiles: `tmm0-3 += ` the panel's two row halves times the token blocks at
/// `x0` and `x1` (`C[half][block]` in tile `2·half + block`), prefetching `ahead` on the way
/// (the tiles run on their own unit, so the next panel's weights arrive meanwhile).
///
/// # Safety
/// The tile configuration is loaded; `panel` holds `cs · 4` tiles; `x0` and `x1` point at `cs`
/// column tiles (`2 · TW` words each) of a packed token block.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
unsafe fn run_tiles<const SPLIT: bool>(
    panel: *const u32,
    x0: *const u32,
    x1: *const u32,
    cs: usize,
    ahead: Ahead,
) {
    for c in 0..cs {
        let mut k = c;
        while k < ahead.chunks {
            for j in 0..ahead.rows {
                // A prefetch never faults; the address stays inside the weights (caller).
                _mm_prefetch::<_MM_HINT_T1>(
                    ahead.at.wrapping_add(j * ahead.rb + 64 * k).cast::<i8>(),
                );
            }
            k += cs;
        }
        // SAFETY: the loads read tiles `4c..4c + 4` of the panel and tiles `2c, 2c + 1` of
        // both token blocks, all in bounds (caller); tiles touch no other memory.
        unsafe {
            let w = panel.add(4 * c * TW);
            let (a, b) = (x0.add(2 * c * TW), x1.add(2 * c * TW));
            if SPLIT {
                asm!(
                    "tileloadd tmm4, [{w} + {s}*1 + 2048]",
                    "tileloadd tmm5, [{w} + {s}*1 + 3072]",
                    "tileloadd tmm6, [{a} + {s}*1]",
                    "tileloadd tmm7, [{b} + {s}*1]",
                    products_2x2!(),
                    "tileloadd tmm4, [{w} + {s}*1]",
                    "tileloadd tmm5, [{w} + {s}*1 + 1024]",
                    products_2x2!(),
                    "tileloadd tmm6, [{a} + {s}*1 + 1024]",
                    "tileloadd tmm7, [{b} + {s}*1 + 1024]",
                    products_2x2!(),
                    w = in(reg) w,
                    a = in(reg) a,
                    b = in(reg) b,
                    s = in(reg) 64usize,
                    options(nostack, readonly),
                );
            } else {
                asm!(
                    "tileloadd tmm4, [{w} + {s}*1]",
                    "tileloadd tmm5, [{w} + {s}*1 + 1024]",
                    "tileloadd tmm6, [{a} + {s}*1]",
                    "tileloadd tmm7, [{b} + {s}*1]",
                    products_2x2!(),
                    "tileloadd tmm6, [{a} + {s}*1 + 1024]",
                    "tileloadd tmm7, [{b} + {s}*1 + 1024]",
                    products_2x2!(),
                    w = in(reg) w,
                    a = in(reg) a,
                    b = in(reg) b,
                    s = in(reg) 64usize,
                    options(nostack, readonly),
                );
            }
        }
    }
}

/// Writes (`add`: adds) the four `C` tiles to the output: rows `r0..r0 + nr` (`nr ≤ 32`) of
/// tokens `t0..t0 + nt` (`nt ≤ 32`) at `out[t · ld + r]`.
///
/// # Safety
/// The tile configuration is loaded; every `out[t · ld + r]` named is writable.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn store_tiles(
    out: *mut f32,
    ld: usize,
    r0: usize,
    nr: usize,
    t0: usize,
    nt: usize,
    add: bool,
) {
    #[repr(C, align(64))]
    struct CBuf([f32; 4 * TW]);
    let mut cbuf = CBuf([0.0; 4 * TW]);
    // SAFETY: four tiles of 1 KiB into `cbuf` (4 KiB), rows 64 bytes apart.
    unsafe {
        asm!(
            "tilestored [{c} + {s}*1], tmm0",
            "tilestored [{c} + {s}*1 + 1024], tmm1",
            "tilestored [{c} + {s}*1 + 2048], tmm2",
            "tilestored [{c} + {s}*1 + 3072], tmm3",
            c = in(reg) cbuf.0.as_mut_ptr(),
            s = in(reg) 64usize,
            options(nostack),
        );
    }
    let rows16 = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(16),
    );
    for half in 0..2 {
        let rh = 16 * half;
        if rh >= nr {
            break;
        }
        let m: __mmask16 = if nr - rh >= 16 {
            !0
        } else {
            (1u16 << (nr - rh)) - 1
        };
        for blk in 0..2 {
            let tb = 16 * blk;
            if tb >= nt {
                break;
            }
            let tile = cbuf.0.as_ptr().wrapping_add((2 * half + blk) * TW);
            for j in 0..(nt - tb).min(16) {
                // SAFETY: the gather reads column `j` of a tile in `cbuf`; the output row segment
                // of token `t0 + tb + j`, rows `r0 + rh ..` under the mask, is writable (caller);
                // masked-off lanes are not accessed.
                unsafe {
                    let v = _mm512_i32gather_ps::<4>(rows16, tile.add(j));
                    let o = out.add((t0 + tb + j) * ld + r0 + rh);
                    let v = if add {
                        _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, o))
                    } else {
                        v
                    };
                    _mm512_mask_storeu_ps(o, m, v);
                }
            }
        }
    }
}

/// `out[t · ld + r] = row_r · x_t` for the rows of one task (`rows`, `rb` bytes each, F16 when
/// `SPLIT`, else BF16) and the `n` tokens packed by [`pack_tokens`] in `xb` (block `i` at
/// `xb[i · cols.div_ceil(32) · 2 · TW..]`).
///
/// # Safety
/// [`available`] returned true; `rows` holds whole rows of `cols` values; `xb` holds the
/// `n.div_ceil(16)` packed blocks; `out[t · ld + r]` is writable for `t < n` and every row `r`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(crate) unsafe fn mm_rows<const SPLIT: bool>(
    rows: &[u8],
    rb: usize,
    cols: usize,
    xb: &[u32],
    n: usize,
    out: *mut f32,
    ld: usize,
) {
    #[repr(C, align(64))]
    struct Panel([u32; SEG_TILES * 4 * TW]);
    let n_rows = rows.len() / rb.max(1);
    let kc = cols.div_ceil(KT);
    let blocks = n.div_ceil(16);
    if n_rows == 0 || kc == 0 || blocks == 0 {
        return;
    }
    debug_assert!(xb.len() >= blocks * kc * 2 * TW);
    let n_seg = kc.div_ceil(SEG_TILES);
    let seg = kc.div_ceil(n_seg);
    // SAFETY: a constant array of 64 bytes.
    let odd = unsafe { _mm512_loadu_si512(ODD_WORDS.as_ptr().cast()) };
    // Written by `pack_panel` before the tiles read it (no zeroing: 128 KiB per task).
    let mut panel = core::mem::MaybeUninit::<Panel>::uninit();
    let panel = panel.as_mut_ptr().cast::<u32>();
    let pairs = blocks.div_ceil(2);
    let cfg = TileCfg::all_16x64();
    // SAFETY: a valid palette-1 configuration (the process has the tile permission: caller).
    unsafe { asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly)) };
    let mut r0 = 0;
    while r0 < n_rows {
        let nr = PANEL.min(n_rows - r0);
        let mut c0 = 0;
        while c0 < kc {
            let cs = seg.min(kc - c0);
            // SAFETY: rows `r0..r0 + nr` are whole rows; the panel holds `SEG_TILES ≥ cs` tiles.
            unsafe {
                pack_panel::<SPLIT>(rows.as_ptr().add(r0 * rb), rb, nr, cols, c0, cs, panel, odd)
            };
            // The segment packed next: the rest of these rows, else the next panel.
            let (nr_next, r_next, c_next) = if c0 + cs < kc {
                (nr, r0, c0 + cs)
            } else if r0 + nr < n_rows {
                (PANEL.min(n_rows - r0 - nr), r0 + nr, 0)
            } else {
                (0, r0, 0)
            };
            let chunks_next = seg.min(kc - c_next.min(kc));
            let mut b = 0;
            while b < blocks {
                let p = b / 2;
                let (lo, hi) = (p * nr_next / pairs, (p + 1) * nr_next / pairs);
                let ahead = Ahead {
                    at: rows
                        .as_ptr()
                        .wrapping_add((r_next + lo) * rb + 2 * KT * c_next),
                    rows: hi - lo,
                    rb,
                    chunks: chunks_next,
                };
                let b1 = if b + 1 < blocks { b + 1 } else { b };
                let x0 = xb.as_ptr().wrapping_add((b * kc + c0) * 2 * TW);
                let x1 = xb.as_ptr().wrapping_add((b1 * kc + c0) * 2 * TW);
                // SAFETY: the configuration is loaded; the panel holds `cs` column tiles, and
                // blocks `b, b1` hold column tiles `c0..c0 + cs`; the outputs of rows
                // `r0..r0 + nr` and tokens `16b..` below `n` are writable (caller).
                unsafe {
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3",
                        options(nostack, nomem)
                    );
                    run_tiles::<SPLIT>(panel, x0, x1, cs, ahead);
                    let nt = (n - 16 * b).min(if b1 > b { 32 } else { 16 });
                    store_tiles(out, ld, r0, nr, 16 * b, nt, c0 > 0);
                }
                b += 2;
            }
            c0 += cs;
        }
        r0 += nr;
    }
    // SAFETY: returns the tile state to its initial configuration.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}
