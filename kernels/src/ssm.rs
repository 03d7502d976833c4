//! The Mamba-2 SSD recurrence of one head for one token, fused: each row of the state is read
//! once, decayed and updated, written once, and dotted with C in the same pass
//! (`architectures.md`, the per-token step):
//!
//! `h[i][k] = h[i][k]·exp(Δ·A) + (Δ·x[i])·B[k]`, `y[i] = Σ_k h[i][k]·C[k] + D·x[i]`.
//!
//! [`ssd_step_ref`] is the scalar twin (sequential sums); [`ssd_step_at`] runs the same chunked
//! loop compiled for the level's vector width. The state update is the same IEEE operations in
//! the same order at every level (a product, a product, a sum per element: no fused
//! multiply-add), so the state is bit-identical across levels; `y` sums in lanes and agrees to
//! rounding.
//!
//! [`ssd_scan_at`] runs a head over a sequence of tokens in the chunked form
//! (`architectures.md` eqs. 34-38): per chunk of [`CHUNK`] tokens, the outputs from the state
//! entering the chunk (a small matrix product), the intra-chunk terms, and the state leaving the
//! chunk (another small matrix product), with the state held transposed (`[d_state][head_dim]`)
//! so that both products run along `head_dim` in vector lanes. Its scalar twin
//! [`ssd_scan_ref`] is the recurrence itself, one [`ssd_step_ref`] per token.
//!
//! Not here: Δ (softplus), the conv, the gate and the projections (`src/blocks/ssd.rs`).

use crate::dispatch::{level, Level};

/// One token of one head: `x` (`head_dim` values), `b` and `c` (`d_state`), `Δ`, the decay
/// `exp(Δ·A)` and the skip weight `D`.
#[derive(Clone, Copy, Debug)]
pub struct Step<'a> {
    pub x: &'a [f32],
    pub b: &'a [f32],
    pub c: &'a [f32],
    pub dt: f32,
    pub decay: f32,
    pub d: f32,
}

/// One head's step, the scalar twin. `state` is `[x.len()][b.len()]`, `c` as long as `b`, `y`
/// as long as `x`.
pub fn ssd_step_ref(state: &mut [f32], s: &Step<'_>, y: &mut [f32]) {
    let Step {
        x,
        b,
        c,
        dt,
        decay: da,
        d,
    } = *s;
    let n = b.len();
    if n == 0 {
        for (yi, &xi) in y.iter_mut().zip(x) {
            *yi = d * xi;
        }
        return;
    }
    for ((row, &xi), yi) in state.chunks_exact_mut(n).zip(x).zip(y.iter_mut()) {
        let dtx = dt * xi;
        let mut acc = 0.0;
        for k in 0..n {
            row[k] = row[k] * da + dtx * b[k];
            acc += row[k] * c[k];
        }
        *yi = acc + d * xi;
    }
}

#[inline(always)]
fn step_lanes<const L: usize>(state: &mut [f32], s: &Step<'_>, y: &mut [f32]) {
    let Step {
        x,
        b,
        c,
        dt,
        decay: da,
        d,
    } = *s;
    let n = b.len();
    if n == 0 {
        return ssd_step_ref(state, s, y);
    }
    let c = &c[..n];
    for ((row, &xi), yi) in state.chunks_exact_mut(n).zip(x).zip(y.iter_mut()) {
        let dtx = dt * xi;
        let mut acc = [0f32; L];
        let mut rc = row.chunks_exact_mut(L);
        let (mut bc, mut cc) = (b.chunks_exact(L), c.chunks_exact(L));
        for ((r, bv), cv) in (&mut rc).zip(&mut bc).zip(&mut cc) {
            for i in 0..L {
                let v = r[i] * da + dtx * bv[i];
                r[i] = v;
                acc[i] += v * cv[i];
            }
        }
        let mut tail = 0.0;
        for ((r, bv), cv) in rc
            .into_remainder()
            .iter_mut()
            .zip(bc.remainder())
            .zip(cc.remainder())
        {
            *r = *r * da + dtx * bv;
            tail += *r * cv;
        }
        *yi = acc.iter().sum::<f32>() + tail + d * xi;
    }
}

/// A run of tokens of one head: token `t`'s `x` is `x[t * stride..][..p]`, its B and C
/// `b[t * stride..][..n]` and `c[..]`, its Δ and Δ·A `dt[t * dt_stride]` and `dta[..]`; `d` is
/// the skip weight.
#[derive(Clone, Copy, Debug)]
pub struct Seq<'a> {
    pub x: &'a [f32],
    pub b: &'a [f32],
    pub c: &'a [f32],
    pub stride: usize,
    pub dt: &'a [f32],
    pub dta: &'a [f32],
    pub dt_stride: usize,
    pub d: f32,
    pub p: usize,
    pub n: usize,
    pub len: usize,
}

impl<'a> Seq<'a> {
    fn x(&self, t: usize) -> &'a [f32] {
        &self.x[t * self.stride..t * self.stride + self.p]
    }
    fn b(&self, t: usize) -> &'a [f32] {
        &self.b[t * self.stride..t * self.stride + self.n]
    }
    fn c(&self, t: usize) -> &'a [f32] {
        &self.c[t * self.stride..t * self.stride + self.n]
    }
    fn dt(&self, t: usize) -> f32 {
        self.dt[t * self.dt_stride]
    }
    fn dta(&self, t: usize) -> f32 {
        self.dta[t * self.dt_stride]
    }
}

/// Tokens per chunk of the chunked scan. The result does not depend on it (the chunked form is
/// exact); it trades the quadratic intra-chunk work against the state passes.
pub const CHUNK: usize = 32;

/// Floats of work space [`ssd_scan_at`] needs for a head of `p × n`.
pub fn scan_work_len(p: usize, n: usize) -> usize {
    n * p + CHUNK * CHUNK + CHUNK * n + L + 3 * CHUNK
}

/// The scalar twin of the scan: the recurrence, token by token. `state` is `[p][n]`, `y`
/// `[len][p]`.
pub fn ssd_scan_ref(state: &mut [f32], s: &Seq<'_>, y: &mut [f32]) {
    for t in 0..s.len {
        let step = Step {
            x: s.x(t),
            b: s.b(t),
            c: s.c(t),
            dt: s.dt(t),
            decay: s.dta(t).exp(),
            d: s.d,
        };
        ssd_step_ref(state, &step, &mut y[t * s.p..(t + 1) * s.p]);
    }
}

/// Lanes of the scan's vector loops.
const L: usize = 16;

/// Sixteen f32 lanes: the operations the scan's loops need, implemented per level (one
/// AVX-512 register, two AVX registers, or a plain array the compiler vectorizes).
///
/// # Safety
/// The methods may only run on a CPU with the implementation's features; `load`/`store` need
/// 16 readable/writable floats at the pointer.
pub(crate) unsafe trait V16: Copy {
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn store(self, p: *mut f32);
    unsafe fn splat(v: f32) -> Self;
    /// `a · b + c`.
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
    unsafe fn mul(a: Self, b: Self) -> Self;
}

/// The portable lanes (NEON, whose baseline vectorizes them).
#[derive(Clone, Copy)]
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
struct Arr([f32; L]);

// SAFETY: plain Rust, no CPU features.
unsafe impl V16 for Arr {
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: 16 readable floats (trait contract).
        Arr(unsafe { p.cast::<[f32; L]>().read_unaligned() })
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: 16 writable floats (trait contract).
        unsafe { p.cast::<[f32; L]>().write_unaligned(self.0) }
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        Arr([v; L])
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        Arr(core::array::from_fn(|i| a.0[i].mul_add(b.0[i], c.0[i])))
    }
    #[inline(always)]
    unsafe fn mul(a: Self, b: Self) -> Self {
        Arr(core::array::from_fn(|i| a.0[i] * b.0[i]))
    }
}

/// The state (transposed, `[n][p]`) read out by `TB` tokens' C: `Σ_k C_t[k] · st[k][i0..]`.
///
/// # Safety
/// `V`'s features are present; `st` holds `n × p` floats, `i0 + 16 <= p`, each `cs[t]` `n`.
#[inline(always)]
unsafe fn from_state<V: V16, const TB: usize>(
    st: *const f32,
    p: usize,
    n: usize,
    i0: usize,
    cs: [*const f32; TB],
) -> [V; TB] {
    // SAFETY: the indices stay inside the buffers (caller).
    unsafe {
        let mut acc = [V::splat(0.0); TB];
        for k in 0..n {
            let row = V::load(st.add(k * p + i0));
            for t in 0..TB {
                acc[t] = V::fma(V::splat(*cs[t].add(k)), row, acc[t]);
            }
        }
        acc
    }
}

#[inline(always)]
fn dot_l(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; L];
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..L {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    let h: [f32; 8] = core::array::from_fn(|i| acc[i] + acc[i + 8]);
    let q: [f32; 4] = core::array::from_fn(|i| h[i] + h[i + 4]);
    (q[0] + q[2]) + (q[1] + q[3]) + tail
}

/// The chunked scan with `V` lanes.
///
/// # Safety
/// `V`'s features are present on this CPU.
#[inline(always)]
unsafe fn scan_lanes<V: V16>(state: &mut [f32], s: &Seq<'_>, work: &mut [f32], y: &mut [f32]) {
    let (p, n) = (s.p, s.n);
    let fits = s.len == 0
        || ((s.len - 1) * s.stride + p <= s.x.len()
            && (s.len - 1) * s.stride + n <= s.b.len().min(s.c.len())
            && (s.len - 1) * s.dt_stride < s.dt.len().min(s.dta.len()));
    if p % L != 0
        || n % 8 != 0
        || n == 0
        || !fits
        || work.len() < scan_work_len(p, n)
        || y.len() < s.len * p
        || state.len() < p * n
    {
        return ssd_scan_ref(state, s, y);
    }
    let (st, r) = work.split_at_mut(n * p);
    let (cb, r) = r.split_at_mut(CHUNK * CHUNK);
    let (wb, r) = r.split_at_mut(CHUNK * n + L);
    let (acum, r) = r.split_at_mut(CHUNK);
    let (eacum, w) = r.split_at_mut(CHUNK);
    for i in 0..p {
        for k in 0..n {
            st[k * p + i] = state[i * n + k];
        }
    }
    let stp = st.as_mut_ptr();
    let xp = |t: usize| s.x[t * s.stride..].as_ptr();
    let cp = |t: usize| s.c[t * s.stride..].as_ptr();
    let mut c0 = 0;
    while c0 < s.len {
        let q = CHUNK.min(s.len - c0);
        let mut a = 0.0;
        for l in 0..q {
            a += s.dta(c0 + l);
            acum[l] = a;
            eacum[l] = a.exp();
        }
        let total = acum[q - 1];
        // C_l · B_j for j <= l, decayed and times Δ_j. The decay exp(acum_l − acum_j) is
        // eacum_l / eacum_j while the chunk's total decay stays far from underflow.
        let ratio = total > -60.0;
        for j in 0..q {
            w[j] = if ratio {
                s.dt(c0 + j) / eacum[j]
            } else {
                s.dt(c0 + j)
            };
        }
        for l in 0..q {
            let cl = s.c(c0 + l);
            for j in 0..=l {
                let decay = if ratio {
                    eacum[l]
                } else {
                    (acum[l] - acum[j]).exp()
                };
                cb[l * CHUNK + j] = dot_l(cl, s.b(c0 + j)) * decay * w[j];
            }
        }
        // SAFETY: every pointer below indexes inside its buffer: tokens `c0..c0 + q` are in
        // the sequence (`fits`), lanes `i0..i0 + 16 <= p`, state rows `k < n`, `wb` rows
        // `j < q` plus 16 floats of padding, outputs `(c0 + l) * p + i0 + 16 <= len * p`.
        unsafe {
            // The state entering the chunk, read out by C and decayed: 8 tokens at a time.
            let mut l0 = 0;
            while l0 < q {
                let tb = if q - l0 >= 8 { 8 } else { 1 };
                for i0 in (0..p).step_by(L) {
                    if tb == 8 {
                        let acc = from_state::<V, 8>(
                            stp,
                            p,
                            n,
                            i0,
                            core::array::from_fn(|t| cp(c0 + l0 + t)),
                        );
                        for (t, v) in acc.iter().enumerate() {
                            let l = l0 + t;
                            V::mul(*v, V::splat(eacum[l]))
                                .store(y.as_mut_ptr().add((c0 + l) * p + i0));
                        }
                    } else {
                        let acc = from_state::<V, 1>(stp, p, n, i0, [cp(c0 + l0)]);
                        V::mul(acc[0], V::splat(eacum[l0]))
                            .store(y.as_mut_ptr().add((c0 + l0) * p + i0));
                    }
                }
                l0 += tb;
            }
            // Tokens of this chunk up to l, and the skip.
            for l in 0..q {
                let yl = y.as_mut_ptr().add((c0 + l) * p);
                for i0 in (0..p).step_by(L) {
                    let mut acc = V::load(yl.add(i0));
                    for j in 0..=l {
                        acc = V::fma(
                            V::splat(cb[l * CHUNK + j]),
                            V::load(xp(c0 + j).add(i0)),
                            acc,
                        );
                    }
                    acc = V::fma(V::splat(s.d), V::load(xp(c0 + l).add(i0)), acc);
                    acc.store(yl.add(i0));
                }
            }
            // The state leaving the chunk: st[k] = st[k]·exp(total) + Σ_j w_j·B_j[k]·x_j.
            for j in 0..q {
                w[j] = (total - acum[j]).exp() * s.dt(c0 + j);
                let bj = s.b(c0 + j);
                for k in 0..n {
                    wb[j * n + k] = w[j] * bj[k];
                }
            }
            let et = V::splat(total.exp());
            let wbp = wb.as_ptr();
            for k0 in (0..n).step_by(8) {
                for i0 in (0..p).step_by(L) {
                    let mut acc: [V; 8] =
                        core::array::from_fn(|kk| V::mul(V::load(stp.add((k0 + kk) * p + i0)), et));
                    for j in 0..q {
                        let xj = V::load(xp(c0 + j).add(i0));
                        for (kk, a) in acc.iter_mut().enumerate() {
                            *a = V::fma(V::splat(*wbp.add(j * n + k0 + kk)), xj, *a);
                        }
                    }
                    for (kk, a) in acc.iter().enumerate() {
                        a.store(stp.add((k0 + kk) * p + i0));
                    }
                }
            }
        }
        c0 += q;
    }
    for i in 0..p {
        for k in 0..n {
            state[i * n + k] = st[k * p + i];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::*;

    use super::{Seq, Step, V16};

    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn step_avx2(state: &mut [f32], s: &Step<'_>, y: &mut [f32]) {
        super::step_lanes::<16>(state, s, y)
    }

    /// # Safety
    /// The CPU supports AVX-512F.
    #[target_feature(enable = "avx512f,fma")]
    pub unsafe fn step_avx512(state: &mut [f32], s: &Step<'_>, y: &mut [f32]) {
        super::step_lanes::<32>(state, s, y)
    }

    /// Two AVX registers.
    #[derive(Clone, Copy)]
    struct Y2(__m256, __m256);

    // SAFETY: the methods require AVX2 and FMA, which `scan_avx2`'s callers guarantee.
    unsafe impl V16 for Y2 {
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn load(p: *const f32) -> Self {
            // SAFETY: 16 readable floats (trait contract).
            unsafe { Y2(_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))) }
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: 16 writable floats (trait contract).
            unsafe {
                _mm256_storeu_ps(p, self.0);
                _mm256_storeu_ps(p.add(8), self.1);
            }
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn splat(v: f32) -> Self {
            Y2(_mm256_set1_ps(v), _mm256_set1_ps(v))
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            Y2(
                _mm256_fmadd_ps(a.0, b.0, c.0),
                _mm256_fmadd_ps(a.1, b.1, c.1),
            )
        }
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn mul(a: Self, b: Self) -> Self {
            Y2(_mm256_mul_ps(a.0, b.0), _mm256_mul_ps(a.1, b.1))
        }
    }

    /// One AVX-512 register.
    #[derive(Clone, Copy)]
    struct Z(__m512);

    // SAFETY: the methods require AVX-512F, which `scan_avx512`'s callers guarantee.
    unsafe impl V16 for Z {
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn load(p: *const f32) -> Self {
            // SAFETY: 16 readable floats (trait contract).
            unsafe { Z(_mm512_loadu_ps(p)) }
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn store(self, p: *mut f32) {
            // SAFETY: 16 writable floats (trait contract).
            unsafe { _mm512_storeu_ps(p, self.0) }
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn splat(v: f32) -> Self {
            Z(_mm512_set1_ps(v))
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
            Z(_mm512_fmadd_ps(a.0, b.0, c.0))
        }
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn mul(a: Self, b: Self) -> Self {
            Z(_mm512_mul_ps(a.0, b.0))
        }
    }

    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn scan_avx2(state: &mut [f32], s: &Seq<'_>, work: &mut [f32], y: &mut [f32]) {
        // SAFETY: the features are present (caller).
        unsafe { super::scan_lanes::<Y2>(state, s, work, y) }
    }

    /// # Safety
    /// The CPU supports AVX-512F.
    #[target_feature(enable = "avx512f,fma")]
    pub unsafe fn scan_avx512(state: &mut [f32], s: &Seq<'_>, work: &mut [f32], y: &mut [f32]) {
        // SAFETY: the features are present (caller).
        unsafe { super::scan_lanes::<Z>(state, s, work, y) }
    }
}

/// [`ssd_step_ref`] at `lvl` (the scalar twin where the CPU lacks it).
pub fn ssd_step_at(lvl: Level, state: &mut [f32], s: &Step<'_>, y: &mut [f32]) {
    debug_assert!(s.c.len() >= s.b.len() && state.len() >= s.x.len() * s.b.len());
    match lvl {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is supported by this CPU (checked).
        Level::Avx512Vnni if lvl.is_supported() => unsafe { x86::step_avx512(state, s, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Level::Avx2 if lvl.is_supported() => unsafe { x86::step_avx2(state, s, y) },
        // NEON is aarch64's baseline: the chunked loop vectorizes as it is.
        Level::Neon => step_lanes::<16>(state, s, y),
        _ => ssd_step_ref(state, s, y),
    }
}

/// [`ssd_step_at`] at the active level.
#[inline]
pub fn ssd_step(state: &mut [f32], s: &Step<'_>, y: &mut [f32]) {
    ssd_step_at(level(), state, s, y)
}

/// One head over `s.len` tokens at `lvl`: `state` (`[p][n]`) advanced, `y` (`[len][p]`) the
/// outputs; `work` holds [`scan_work_len`] floats. Heads whose `p` is not a multiple of 16 (or
/// `n` of 8) run the recurrence.
pub fn ssd_scan_at(lvl: Level, state: &mut [f32], s: &Seq<'_>, work: &mut [f32], y: &mut [f32]) {
    match lvl {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is supported by this CPU (checked).
        Level::Avx512Vnni if lvl.is_supported() => unsafe { x86::scan_avx512(state, s, work, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Level::Avx2 if lvl.is_supported() => unsafe { x86::scan_avx2(state, s, work, y) },
        // SAFETY: the portable lanes need no CPU features.
        Level::Neon => unsafe { scan_lanes::<Arr>(state, s, work, y) },
        _ => ssd_scan_ref(state, s, y),
    }
}

/// [`ssd_scan_at`] at the active level.
#[inline]
pub fn ssd_scan(state: &mut [f32], s: &Seq<'_>, work: &mut [f32], y: &mut [f32]) {
    ssd_scan_at(level(), state, s, work, y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::available_levels;

    fn rng(seed: u32) -> impl FnMut() -> f32 {
        let mut s = seed;
        move || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        }
    }

    #[test]
    fn every_level_matches_the_scalar_twin() {
        let mut rnd = rng(0x2545_f491);
        for (p, n) in [
            (0usize, 8usize),
            (1, 1),
            (3, 0),
            (2, 7),
            (5, 16),
            (4, 33),
            (64, 128),
            (3, 130),
        ] {
            let x: Vec<f32> = (0..p).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..n).map(|_| rnd()).collect();
            let c: Vec<f32> = (0..n).map(|_| rnd()).collect();
            let h0: Vec<f32> = (0..p * n).map(|_| rnd()).collect();
            let step = Step {
                x: &x,
                b: &b,
                c: &c,
                dt: 0.3,
                decay: 0.9,
                d: 0.7,
            };
            let mut want_h = h0.clone();
            let mut want_y = vec![0f32; p];
            ssd_step_ref(&mut want_h, &step, &mut want_y);
            for lvl in available_levels() {
                let mut h = h0.clone();
                let mut y = vec![0f32; p];
                ssd_step_at(lvl, &mut h, &step, &mut y);
                assert_eq!(h, want_h, "{lvl}: state p={p} n={n}");
                for i in 0..p {
                    let mag: f32 = (0..n)
                        .map(|k| (want_h[i * n + k] * c[k]).abs())
                        .sum::<f32>()
                        + (0.7 * x[i]).abs();
                    assert!(
                        (y[i] - want_y[i]).abs() <= 1e-5 * mag.max(1.0),
                        "{lvl}: y p={p} n={n} i={i}: {} vs {}",
                        y[i],
                        want_y[i]
                    );
                }
            }
        }
    }

    /// The chunked scan equals the recurrence at every level, for lengths around the chunk
    /// size and heads the vector loops take or leave to the recurrence.
    #[test]
    fn the_scan_equals_the_recurrence_at_every_level() {
        let mut rnd = rng(0x9e37_79b9);
        for (p, n, len) in [
            (16, 8, 1),
            (32, 16, 7),
            (64, 128, 33),
            (16, 24, 70),
            (8, 16, 5),
            (16, 12, 9),
        ] {
            let stride = p + 2 * n + 3;
            let seq: Vec<f32> = (0..len * stride).map(|_| rnd()).collect();
            let dt: Vec<f32> = (0..len * 2).map(|_| 0.05 + 0.5 * rnd().abs()).collect();
            let dta: Vec<f32> = dt.iter().map(|d| -0.8 * d).collect();
            let s = Seq {
                x: &seq,
                b: &seq[p..],
                c: &seq[p + n..],
                stride,
                dt: &dt,
                dta: &dta,
                dt_stride: 2,
                d: 0.4,
                p,
                n,
                len,
            };
            let h0: Vec<f32> = (0..p * n).map(|_| rnd()).collect();
            let mut want_h = h0.clone();
            let mut want_y = vec![0f32; len * p];
            ssd_scan_ref(&mut want_h, &s, &mut want_y);
            for lvl in available_levels() {
                let mut h = h0.clone();
                let mut y = vec![0f32; len * p];
                let mut work = vec![0f32; scan_work_len(p, n)];
                ssd_scan_at(lvl, &mut h, &s, &mut work, &mut y);
                let scale = want_h
                    .iter()
                    .chain(&want_y)
                    .fold(1f32, |m, v| m.max(v.abs()));
                for (i, (a, b)) in h.iter().zip(&want_h).enumerate() {
                    assert!(
                        (a - b).abs() <= 2e-5 * scale,
                        "{lvl}: state {p}x{n} len {len} [{i}]: {a} vs {b}"
                    );
                }
                for (i, (a, b)) in y.iter().zip(&want_y).enumerate() {
                    assert!(
                        (a - b).abs() <= 2e-5 * scale,
                        "{lvl}: y {p}x{n} len {len} [{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }
}
