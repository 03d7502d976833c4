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
//! chunk (another small matrix product), with the state held transposed (`[d_state][head_dim]`,
//! in 16 × 16 tiles on the way in and out) so that both products run along `head_dim` in vector
//! lanes. Its scalar twin [`ssd_scan_ref`] is the recurrence itself, one [`ssd_step_ref`] per
//! token.
//!
//! The intra-chunk terms need `C_l · B_j` for `j <= l` in a chunk. B and C belong to the group,
//! not the head, so [`ssd_cb_at`] computes the raw block once per group and chunk (lanes along
//! `j`, B transposed a tile at a time; scalar twin [`ssd_cb_ref`]) and every head of the group
//! applies its own decay and Δ to it.
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
    /// A 16 × 16 tile transposed: `dst[c * ds + r] = src[r * ss + c]`.
    ///
    /// # Safety
    /// As for the other methods; 16 rows of 16 readable floats at `src` (row stride `ss`), of
    /// 16 writable floats at `dst` (row stride `ds`), not overlapping.
    #[inline(always)]
    unsafe fn transpose16(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
        for r in 0..L {
            for c in 0..L {
                // SAFETY: inside the tiles (caller).
                unsafe { *dst.add(c * ds + r) = *src.add(r * ss + c) };
            }
        }
    }
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

/// `C` vectors of 16 lanes from `p`, `p + 16`, …
///
/// # Safety
/// `V`'s features are present; `16 · C` readable floats at `p`.
#[inline(always)]
unsafe fn load_row<V: V16, const C: usize>(p: *const f32) -> [V; C] {
    // SAFETY: inside the `16 · C` floats (caller).
    core::array::from_fn(|c| unsafe { V::load(p.add(c * L)) })
}

/// The register tile's rank-1 update `acc[t][c] += s(t) · r[c]`: one broadcast per tile row,
/// `fma(splat(s(t)), r[c], acc[t][c])`.
///
/// # Safety
/// `V`'s features are present; `s` is safe to call for every `t < R`.
#[inline(always)]
unsafe fn rank1<V: V16, const R: usize, const C: usize>(
    acc: &mut [[V; C]; R],
    s: impl Fn(usize) -> f32,
    r: &[V; C],
) {
    for (t, a) in acc.iter_mut().enumerate() {
        // SAFETY: `V`'s features are present (caller).
        unsafe {
            let sv = V::splat(s(t));
            for (av, rv) in a.iter_mut().zip(r) {
                *av = V::fma(sv, *rv, *av);
            }
        }
    }
}

/// Tokens per chunk of the chunked scan. The result does not depend on it (the chunked form is
/// exact); it trades the quadratic intra-chunk work against the state passes.
pub const CHUNK: usize = 32;

/// Floats of one chunk's C·Bᵀ block ([`ssd_cb_at`]): `[CHUNK][CHUNK]`.
pub const CB_LEN: usize = CHUNK * CHUNK;

/// Floats of work space [`ssd_scan_at`] needs for a head of `p × n`.
pub fn scan_work_len(p: usize, n: usize) -> usize {
    n * p + CB_LEN + CHUNK * p + 3 * CHUNK
}

/// Floats of the C·Bᵀ blocks of a run of `len` tokens: one [`CB_LEN`] block per chunk.
pub fn cb_len(len: usize) -> usize {
    len.div_ceil(CHUNK) * CB_LEN
}

/// The scalar twin of [`ssd_cb_at`]: `out[l][j] = C_l · B_j` (a sequential sum over `d_state`)
/// for `j <= l < q`, zero elsewhere in the `[CHUNK][CHUNK]` block. Token `t`'s B is
/// `b[t * stride..][..n]`, its C `c[t * stride..][..n]`.
pub fn ssd_cb_ref(b: &[f32], c: &[f32], stride: usize, n: usize, q: usize, out: &mut [f32]) {
    let out = &mut out[..CB_LEN];
    out.fill(0.0);
    for l in 0..q.min(CHUNK) {
        let cl = &c[l * stride..l * stride + n];
        for j in 0..=l {
            let bj = &b[j * stride..j * stride + n];
            let mut acc = 0.0;
            for k in 0..n {
                acc += cl[k] * bj[k];
            }
            out[l * CHUNK + j] = acc;
        }
    }
}

/// Vectors of `L` lanes across a chunk (the `j` of a C·Bᵀ row).
const NV: usize = CHUNK / L;
const _: () = assert!(CHUNK.is_multiple_of(L) && CHUNK.is_multiple_of(4));

/// `k` values of B per tile of the C·Bᵀ pass (the tile is transposed on the stack).
const KT: usize = 32;

/// The C·Bᵀ block with `V` lanes along `j`: B is transposed a tile of `KT` values of `d_state`
/// at a time (`[KT][CHUNK]`), and four rows `l` accumulate together.
///
/// # Safety
/// `V`'s features are present on this CPU.
#[inline(always)]
unsafe fn cb_lanes<V: V16>(
    b: &[f32],
    c: &[f32],
    stride: usize,
    n: usize,
    q: usize,
    out: &mut [f32],
) {
    let fits = q == 0 || ((q - 1) * stride + n <= b.len() && (q - 1) * stride + n <= c.len());
    if q > CHUNK || out.len() < CB_LEN || !fits {
        return ssd_cb_ref(b, c, stride, n, q, out);
    }
    let out = &mut out[..CB_LEN];
    out.fill(0.0);
    if q == 0 {
        return;
    }
    let mut bt = [0f32; KT * CHUNK];
    let op = out.as_mut_ptr();
    let mut kb = 0;
    while kb < n {
        let kn = KT.min(n - kb);
        for j in 0..q {
            let bj = &b[j * stride + kb..j * stride + kb + kn];
            for (kk, &v) in bj.iter().enumerate() {
                bt[kk * CHUNK + j] = v;
            }
        }
        let btp = bt.as_ptr();
        // SAFETY: rows `l0..l0 + 4 <= CHUNK` of `out` (CB_LEN floats), `bt` rows `kk < kn <=
        // KT`, C of token `min(l, q - 1)` at `kb + kk < n` (`fits`).
        unsafe {
            for l0 in (0..q).step_by(4) {
                let cs: [*const f32; 4] =
                    core::array::from_fn(|t| c.as_ptr().add((l0 + t).min(q - 1) * stride + kb));
                let mut acc = [[V::splat(0.0); NV]; 4];
                for (t, a) in acc.iter_mut().enumerate() {
                    for (v, av) in a.iter_mut().enumerate() {
                        *av = V::load(op.add((l0 + t) * CHUNK + v * L));
                    }
                }
                for kk in 0..kn {
                    let r = load_row::<V, NV>(btp.add(kk * CHUNK));
                    rank1(&mut acc, |t| *cs[t].add(kk), &r);
                }
                for (t, a) in acc.iter().enumerate() {
                    for (v, av) in a.iter().enumerate() {
                        av.store(op.add((l0 + t) * CHUNK + v * L));
                    }
                }
            }
        }
        kb += kn;
    }
    // Only j <= l < q is the block; the rest (rows past q, the upper triangle) is zero.
    for (l, row) in out.chunks_exact_mut(CHUNK).enumerate() {
        let from = if l < q { l + 1 } else { 0 };
        row[from..].fill(0.0);
    }
}

/// `dst[c][r] = src[r][c]` for a `rows × cols` `src`, in 16 × 16 tiles ([`V16::transpose16`]),
/// the edge tiles element by element.
///
/// # Safety
/// `V`'s features are present on this CPU.
#[inline(always)]
unsafe fn transpose<V: V16>(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    let (src, dst) = (&src[..rows * cols], &mut dst[..rows * cols]);
    for r0 in (0..rows).step_by(L) {
        let r1 = (r0 + L).min(rows);
        for c0 in (0..cols).step_by(L) {
            let c1 = (c0 + L).min(cols);
            if r1 - r0 == L && c1 - c0 == L {
                // SAFETY: the tile's rows `r0..r0 + 16` and columns `c0..c0 + 16` are inside
                // both matrices; `src` and `dst` are distinct slices.
                unsafe {
                    V::transpose16(
                        src.as_ptr().add(r0 * cols + c0),
                        cols,
                        dst.as_mut_ptr().add(c0 * rows + r0),
                        rows,
                    )
                };
                continue;
            }
            for r in r0..r1 {
                let s = &src[r * cols + c0..r * cols + c1];
                for (c, &v) in (c0..c1).zip(s) {
                    dst[c * rows + r] = v;
                }
            }
        }
    }
}

/// Outputs of `TB` tokens `l0..l0 + TB` of a chunk at lanes `i0..i0 + IB·16`: the state entering
/// the chunk read out by C and decayed, `eacum_l · Σ_k C_l[k] · st[k][i]`, the tokens of the
/// chunk so far, `Σ_{j < jn} cbs[l][j] · x_j[i]` (`cbs` zero past the diagonal), and the skip.
///
/// # Safety
/// `V`'s features are present; `st` holds `n × p` floats, `i0 + IB·16 <= p`; each `cs[t]` has
/// `n` floats; `cbs` rows `l0..l0 + TB` (stride [`CHUNK`]) have `jn` floats; tokens `j < jn`
/// and `l0..l0 + TB` of `xs` (stride `xs_stride`) have `p`; `yp` rows `0..TB` (stride `p`) too.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn outputs<V: V16, const TB: usize, const IB: usize>(
    st: *const f32,
    p: usize,
    n: usize,
    i0: usize,
    cs: [*const f32; TB],
    ea: [f32; TB],
    cbs: *const f32,
    l0: usize,
    jn: usize,
    xs: *const f32,
    xs_stride: usize,
    d: f32,
    yp: *mut f32,
) {
    // SAFETY: the indices stay inside the buffers (caller).
    unsafe {
        let mut acc = [[V::splat(0.0); IB]; TB];
        for k in 0..n {
            let row = load_row::<V, IB>(st.add(k * p + i0));
            rank1(&mut acc, |t| *cs[t].add(k), &row);
        }
        for (a, &e) in acc.iter_mut().zip(&ea) {
            let ev = V::splat(e);
            for av in a.iter_mut() {
                *av = V::mul(*av, ev);
            }
        }
        for j in 0..jn {
            let xj = load_row::<V, IB>(xs.add(j * xs_stride + i0));
            rank1(&mut acc, |t| *cbs.add((l0 + t) * CHUNK + j), &xj);
        }
        let dv = V::splat(d);
        for (t, a) in acc.iter().enumerate() {
            let xl = xs.add((l0 + t) * xs_stride + i0);
            for (b, av) in a.iter().enumerate() {
                V::fma(dv, V::load(xl.add(b * L)), *av).store(yp.add(t * p + b * L));
            }
        }
    }
}

/// The chunked scan with `V` lanes, `IB` vectors of `head_dim` at a time.
///
/// # Safety
/// `V`'s features are present on this CPU.
#[inline(always)]
unsafe fn scan_lanes<V: V16, const IB: usize>(
    state: &mut [f32],
    s: &Seq<'_>,
    cb: &[f32],
    work: &mut [f32],
    y: &mut [f32],
) {
    let (p, n) = (s.p, s.n);
    let fits = s.len == 0
        || ((s.len - 1) * s.stride + p <= s.x.len()
            && (s.len - 1) * s.stride + n <= s.b.len().min(s.c.len())
            && (s.len - 1) * s.dt_stride < s.dt.len().min(s.dta.len()));
    if p % (L * IB) != 0
        || n % 8 != 0
        || n == 0
        || !fits
        || cb.len() < cb_len(s.len)
        || work.len() < scan_work_len(p, n)
        || y.len() < s.len * p
        || state.len() < p * n
    {
        return ssd_scan_ref(state, s, y);
    }
    let (st, r) = work.split_at_mut(n * p);
    let (cbs, r) = r.split_at_mut(CB_LEN);
    let (wx, r) = r.split_at_mut(CHUNK * p);
    let (acum, r) = r.split_at_mut(CHUNK);
    let (eacum, w) = r.split_at_mut(CHUNK);
    // SAFETY: the features are present (caller).
    unsafe { transpose::<V>(state, p, n, st) };
    let stp = st.as_mut_ptr();
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
        // The group's C_l · B_j (j <= l), decayed and times Δ_j. The decay exp(acum_l − acum_j)
        // is eacum_l / eacum_j while the chunk's total decay stays far from underflow.
        let ratio = total > -60.0;
        for j in 0..q {
            w[j] = if ratio {
                s.dt(c0 + j) / eacum[j]
            } else {
                s.dt(c0 + j)
            };
        }
        let raw = &cb[(c0 / CHUNK) * CB_LEN..][..CB_LEN];
        for l in 0..q {
            let (rr, row) = (&raw[l * CHUNK..][..=l], &mut cbs[l * CHUNK..][..CHUNK]);
            let (low, high) = row.split_at_mut(l + 1);
            if ratio {
                let el = eacum[l];
                for ((o, &v), &wj) in low.iter_mut().zip(rr).zip(&w[..=l]) {
                    *o = v * el * wj;
                }
            } else {
                for (j, (o, &v)) in low.iter_mut().zip(rr).enumerate() {
                    *o = v * (acum[l] - acum[j]).exp() * w[j];
                }
            }
            high.fill(0.0);
        }
        // SAFETY: every pointer below indexes inside its buffer: tokens `c0..c0 + q` are in
        // the sequence (`fits`), lanes `i0..i0 + IB·16 <= p`, state rows `k < n`, `cbs` rows
        // `l < q <= CHUNK` and columns `j < q`, `wx` rows `j < q`, outputs
        // `(c0 + l) * p + i0 + IB·16 <= len * p`.
        unsafe {
            let xs = s.x.as_ptr().add(c0 * s.stride);
            let cp = |t: usize| s.c.as_ptr().add((c0 + t) * s.stride);
            let cbp = cbs.as_ptr();
            // The outputs: 8 tokens at a time, then one.
            let mut l0 = 0;
            while l0 < q {
                let tb = if q - l0 >= 8 { 8 } else { 1 };
                let jn = q.min(l0 + tb);
                for i0 in (0..p).step_by(L * IB) {
                    let yp = y.as_mut_ptr().add((c0 + l0) * p + i0);
                    if tb == 8 {
                        outputs::<V, 8, IB>(
                            stp,
                            p,
                            n,
                            i0,
                            core::array::from_fn(|t| cp(l0 + t)),
                            core::array::from_fn(|t| eacum[l0 + t]),
                            cbp,
                            l0,
                            jn,
                            xs,
                            s.stride,
                            s.d,
                            yp,
                        );
                    } else {
                        outputs::<V, 1, IB>(
                            stp,
                            p,
                            n,
                            i0,
                            [cp(l0)],
                            [eacum[l0]],
                            cbp,
                            l0,
                            jn,
                            xs,
                            s.stride,
                            s.d,
                            yp,
                        );
                    }
                }
                l0 += tb;
            }
            // The state leaving the chunk: st[k] = st[k]·exp(total) + Σ_j B_j[k]·(w_j·x_j),
            // w_j = exp(total − acum_j)·Δ_j.
            for j in 0..q {
                let wj = (total - acum[j]).exp() * s.dt(c0 + j);
                for (o, &x) in wx[j * p..(j + 1) * p].iter_mut().zip(s.x(c0 + j)) {
                    *o = wj * x;
                }
            }
            let et = V::splat(total.exp());
            let wxp = wx.as_ptr();
            let bs = s.b.as_ptr().add(c0 * s.stride);
            for k0 in (0..n).step_by(8) {
                for i0 in (0..p).step_by(L * IB) {
                    let mut acc = [[V::splat(0.0); IB]; 8];
                    for (kk, a) in acc.iter_mut().enumerate() {
                        for (b, av) in a.iter_mut().enumerate() {
                            *av = V::mul(V::load(stp.add((k0 + kk) * p + i0 + b * L)), et);
                        }
                    }
                    for j in 0..q {
                        let xj = load_row::<V, IB>(wxp.add(j * p + i0));
                        let bj = bs.add(j * s.stride + k0);
                        rank1(&mut acc, |kk| *bj.add(kk), &xj);
                    }
                    for (kk, a) in acc.iter().enumerate() {
                        for (b, av) in a.iter().enumerate() {
                            av.store(stp.add((k0 + kk) * p + i0 + b * L));
                        }
                    }
                }
            }
        }
        c0 += q;
    }
    // SAFETY: as above.
    unsafe { transpose::<V>(st, n, p, state) };
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
        #[inline]
        #[target_feature(enable = "avx512f")]
        unsafe fn transpose16(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
            // SAFETY: 16 rows of 16 floats at `src` and `dst` (trait contract).
            unsafe {
                let mut r = [_mm512_setzero_ps(); 16];
                for (i, v) in r.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(src.add(i * ss));
                }
                // Pairs of rows interleaved, then pairs of pairs: each 128-bit lane holds a
                // 4 × 4 block transposed; the two lane shuffles put the blocks in place.
                let mut t = [_mm512_setzero_ps(); 16];
                for m in 0..8 {
                    t[2 * m] = _mm512_unpacklo_ps(r[2 * m], r[2 * m + 1]);
                    t[2 * m + 1] = _mm512_unpackhi_ps(r[2 * m], r[2 * m + 1]);
                }
                let lo = |a: __m512, b: __m512| {
                    _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)))
                };
                let hi = |a: __m512, b: __m512| {
                    _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)))
                };
                for m in 0..4 {
                    let b = 4 * m;
                    r[b] = lo(t[b], t[b + 2]);
                    r[b + 1] = hi(t[b], t[b + 2]);
                    r[b + 2] = lo(t[b + 1], t[b + 3]);
                    r[b + 3] = hi(t[b + 1], t[b + 3]);
                }
                for h in 0..2 {
                    let b = 8 * h;
                    for i in 0..4 {
                        t[b + i] = _mm512_shuffle_f32x4::<0x88>(r[b + i], r[b + 4 + i]);
                        t[b + 4 + i] = _mm512_shuffle_f32x4::<0xdd>(r[b + i], r[b + 4 + i]);
                    }
                }
                for i in 0..8 {
                    r[i] = _mm512_shuffle_f32x4::<0x88>(t[i], t[8 + i]);
                    r[8 + i] = _mm512_shuffle_f32x4::<0xdd>(t[i], t[8 + i]);
                }
                for (i, v) in r.iter().enumerate() {
                    _mm512_storeu_ps(dst.add(i * ds), *v);
                }
            }
        }
    }

    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn scan_avx2(
        state: &mut [f32],
        s: &Seq<'_>,
        cb: &[f32],
        work: &mut [f32],
        y: &mut [f32],
    ) {
        // SAFETY: the features are present (caller).
        unsafe { super::scan_lanes::<Y2, 1>(state, s, cb, work, y) }
    }

    /// # Safety
    /// The CPU supports AVX-512F.
    #[target_feature(enable = "avx512f,fma")]
    pub unsafe fn scan_avx512(
        state: &mut [f32],
        s: &Seq<'_>,
        cb: &[f32],
        work: &mut [f32],
        y: &mut [f32],
    ) {
        // SAFETY: the features are present (caller); two vectors of `head_dim` at a time where
        // they divide it.
        unsafe {
            if s.p.is_multiple_of(32) {
                super::scan_lanes::<Z, 2>(state, s, cb, work, y)
            } else {
                super::scan_lanes::<Z, 1>(state, s, cb, work, y)
            }
        }
    }

    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn cb_avx2(
        b: &[f32],
        c: &[f32],
        stride: usize,
        n: usize,
        q: usize,
        out: &mut [f32],
    ) {
        // SAFETY: the features are present (caller).
        unsafe { super::cb_lanes::<Y2>(b, c, stride, n, q, out) }
    }

    /// # Safety
    /// The CPU supports AVX-512F.
    #[target_feature(enable = "avx512f,fma")]
    pub unsafe fn cb_avx512(
        b: &[f32],
        c: &[f32],
        stride: usize,
        n: usize,
        q: usize,
        out: &mut [f32],
    ) {
        // SAFETY: the features are present (caller).
        unsafe { super::cb_lanes::<Z>(b, c, stride, n, q, out) }
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

/// The C·Bᵀ block of one chunk of `q <= CHUNK` tokens of a group at `lvl` (see
/// [`ssd_cb_ref`]): `out` (`[CHUNK][CHUNK]`) gets `C_l · B_j` for `j <= l < q` and zero
/// elsewhere. B and C belong to the group, so every head of the group shares the block.
pub fn ssd_cb_at(
    lvl: Level,
    b: &[f32],
    c: &[f32],
    stride: usize,
    n: usize,
    q: usize,
    out: &mut [f32],
) {
    match lvl {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is supported by this CPU (checked).
        Level::Avx512Vnni if lvl.is_supported() => unsafe {
            x86::cb_avx512(b, c, stride, n, q, out)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Level::Avx2 if lvl.is_supported() => unsafe { x86::cb_avx2(b, c, stride, n, q, out) },
        // SAFETY: the portable lanes need no CPU features.
        Level::Neon => unsafe { cb_lanes::<Arr>(b, c, stride, n, q, out) },
        _ => ssd_cb_ref(b, c, stride, n, q, out),
    }
}

/// [`ssd_cb_at`] at the active level.
#[inline]
pub fn ssd_cb(b: &[f32], c: &[f32], stride: usize, n: usize, q: usize, out: &mut [f32]) {
    ssd_cb_at(level(), b, c, stride, n, q, out)
}

/// One head over `s.len` tokens at `lvl`: `state` (`[p][n]`) advanced, `y` (`[len][p]`) the
/// outputs; `cb` holds the C·Bᵀ block of each chunk of [`CHUNK`] tokens of the run
/// ([`ssd_cb_at`], [`cb_len`] floats), `work` [`scan_work_len`] floats. Heads whose `p` is not
/// a multiple of 16 (or `n` of 8) run the recurrence, which does not read `cb`.
pub fn ssd_scan_at(
    lvl: Level,
    state: &mut [f32],
    s: &Seq<'_>,
    cb: &[f32],
    work: &mut [f32],
    y: &mut [f32],
) {
    match lvl {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the level is supported by this CPU (checked).
        Level::Avx512Vnni if lvl.is_supported() => unsafe {
            x86::scan_avx512(state, s, cb, work, y)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Level::Avx2 if lvl.is_supported() => unsafe { x86::scan_avx2(state, s, cb, work, y) },
        // SAFETY: the portable lanes need no CPU features.
        Level::Neon => unsafe { scan_lanes::<Arr, 1>(state, s, cb, work, y) },
        _ => ssd_scan_ref(state, s, y),
    }
}

/// [`ssd_scan_at`] at the active level.
#[inline]
pub fn ssd_scan(state: &mut [f32], s: &Seq<'_>, cb: &[f32], work: &mut [f32], y: &mut [f32]) {
    ssd_scan_at(level(), state, s, cb, work, y)
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
                let mut cb = vec![f32::NAN; cb_len(len)];
                for (ch, out) in cb.chunks_exact_mut(CB_LEN).enumerate() {
                    let t0 = ch * CHUNK * stride;
                    let q = CHUNK.min(len - ch * CHUNK);
                    ssd_cb_at(lvl, &s.b[t0..], &s.c[t0..], stride, n, q, out);
                }
                ssd_scan_at(lvl, &mut h, &s, &cb, &mut work, &mut y);
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

    /// The C·Bᵀ block of a chunk equals the scalar twin at every level: full and partial
    /// chunks, `d_state` around the tile of the pass, and zeros outside `j <= l < q`.
    #[test]
    fn every_level_computes_the_cb_block_of_the_scalar_twin() {
        let mut rnd = rng(0x1b87_3593);
        for (n, q) in [
            (128usize, CHUNK),
            (128, 7),
            (8, 1),
            (40, CHUNK - 3),
            (16, 0),
            (3, 5),
        ] {
            let stride = 2 * n + 5;
            let seq: Vec<f32> = (0..CHUNK * stride).map(|_| rnd()).collect();
            let (b, c) = (&seq[1..], &seq[1 + n..]);
            let mut want = vec![f32::NAN; CB_LEN];
            ssd_cb_ref(b, c, stride, n, q, &mut want);
            for l in 0..CHUNK {
                for j in 0..CHUNK {
                    let v = want[l * CHUNK + j];
                    if j > l || l >= q {
                        assert_eq!(v, 0.0, "twin: [{l}][{j}] outside the block");
                    } else {
                        let d: f32 = (0..n).map(|k| c[l * stride + k] * b[j * stride + k]).sum();
                        assert!((v - d).abs() <= 1e-5 * d.abs().max(1.0), "twin [{l}][{j}]");
                    }
                }
            }
            for lvl in available_levels() {
                let mut got = vec![f32::NAN; CB_LEN];
                ssd_cb_at(lvl, b, c, stride, n, q, &mut got);
                for l in 0..CHUNK {
                    for j in 0..CHUNK {
                        let (g, w) = (got[l * CHUNK + j], want[l * CHUNK + j]);
                        let mag: f32 = if j <= l && l < q {
                            (0..n)
                                .map(|k| (c[l * stride + k] * b[j * stride + k]).abs())
                                .sum()
                        } else {
                            0.0
                        };
                        assert!(
                            (g - w).abs() <= 1e-5 * mag.max(1.0) && (mag > 0.0 || g == 0.0),
                            "{lvl}: n={n} q={q} [{l}][{j}]: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }
}
