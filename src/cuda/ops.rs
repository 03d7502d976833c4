//! Single kernels run on their own, for the CPU-vs-CUDA parity suite (`tests/cuda.rs`): each
//! call uploads its inputs, launches the kernel the engine uses, and returns the result.

use std::sync::Arc;

use anyhow::Result;
use cheems_kernels::matvec::MatRef;
use cudarc::driver::{result as cu, CudaStream};

use super::{f, gpu, i, launch_products_at, upload_matref, DPtr, Gpu, Pool};
use crate::config::{Rope, RopePairing};

/// A GPU and a stream for one-off kernel launches.
pub struct Ops {
    gpu: Arc<Gpu>,
    stream: Arc<CudaStream>,
}

impl std::fmt::Debug for Ops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ops({:?})", self.gpu)
    }
}

impl Ops {
    /// Opens `cuda:ordinal` (fails without a GPU and driver).
    pub fn new(ordinal: usize) -> Result<Self> {
        let gpu = gpu(ordinal)?;
        gpu.ctx.bind_to_thread()?;
        let stream = gpu.ctx.new_stream()?;
        Ok(Ops { gpu, stream })
    }

    /// The device's name.
    pub fn device_name(&self) -> &str {
        self.gpu.name()
    }

    fn pool_upload(&self, pool: &mut Pool, v: &[f32]) -> Result<DPtr> {
        pool.floats(&self.gpu, v)
    }

    fn down(&self, p: DPtr, n: usize) -> Result<Vec<f32>> {
        let mut out = vec![0f32; n];
        self.gpu.stream.synchronize()?;
        // SAFETY: `p` is a device buffer of at least `n` floats that this call allocated.
        unsafe { cu::memcpy_dtoh_async(&mut out, p, self.stream.cu_stream()) }?;
        self.stream.synchronize()?;
        Ok(out)
    }

    fn step(&self, pool: &mut Pool, pos: usize) -> Result<DPtr> {
        let b: Vec<u8> = [0i32, pos as i32]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        pool.upload(&self.gpu, &b)
    }

    /// Whether batches of products run on the tensor cores here (compute capability 8.0+).
    pub fn tensor_cores(&self) -> bool {
        self.gpu.mma_min != usize::MAX
    }

    /// `y[t] = W x[t]` for the rows of `x` (`[n][w.cols]`) with the engine's product for `w`'s
    /// type, as a prefill or decode call launches it.
    pub fn matmul(&self, w: &MatRef<'_>, x: &[f32]) -> Result<Vec<f32>> {
        let mut y = self.products(&[(*w, None)], x, self.gpu.mma_min)?;
        Ok(y.pop().unwrap_or_default())
    }

    /// `y_m[t] = W_m x[t] (+ b_m)` for up to three matrices of one width and the rows of `x`
    /// (`[n][cols]`) in one launch as the engine makes it, with batches of at least `mma_min`
    /// tokens on the tensor cores (where the GPU has them; `usize::MAX`: never).
    pub fn products(
        &self,
        ws: &[(MatRef<'_>, Option<&[f32]>)],
        x: &[f32],
        mma_min: usize,
    ) -> Result<Vec<Vec<f32>>> {
        self.gpu.ctx.bind_to_thread()?;
        let Some((w0, _)) = ws.first() else {
            return Ok(Vec::new());
        };
        let n = x.len() / w0.cols.max(1);
        let mut pool = Pool::default();
        let mut mats = Vec::new();
        for (w, b) in ws {
            let gm = upload_matref(&mut pool, &self.gpu, w)?;
            let y = pool.zeros(&self.gpu, n * w.rows * 4)?;
            let bp = match b {
                Some(b) => self.pool_upload(&mut pool, b)?,
                None => 0,
            };
            mats.push((gm, y, bp));
        }
        let (xp, act) = self.activation(&mut pool, x)?;
        self.gpu.stream.synchronize()?;
        let refs: Vec<_> = mats.iter().map(|(g, y, b)| (g, *y, *b)).collect();
        launch_products_at(&self.gpu, &self.stream, &refs, xp, n, act, true, mma_min)?;
        mats.iter()
            .map(|(g, y, _)| self.down(*y, n * g.rows))
            .collect()
    }

    /// `x` on the device, and room for its int8 blocks (`[q | d]`: 32 quants and two floats of
    /// scale per block of 32, see `quantize_q8`) for the product kernels.
    fn activation(&self, pool: &mut Pool, x: &[f32]) -> Result<(DPtr, (DPtr, DPtr))> {
        let xp = self.pool_upload(pool, x)?;
        let blocks = x.len().div_ceil(32);
        let q = pool.zeros(&self.gpu, blocks * 32)?;
        let d = pool.zeros(&self.gpu, blocks * 2 * 4)?;
        Ok((xp, (q, d)))
    }

    /// Mean seconds of one product launch of `w` over the rows of `x` (the int8 blocks made
    /// once), over `reps` launches after one warm-up; `mma_min` as in [`Ops::products`].
    pub fn time_product(
        &self,
        w: &MatRef<'_>,
        x: &[f32],
        mma_min: usize,
        reps: usize,
    ) -> Result<f64> {
        self.gpu.ctx.bind_to_thread()?;
        let n = x.len() / w.cols.max(1);
        let mut pool = Pool::default();
        let gm = upload_matref(&mut pool, &self.gpu, w)?;
        let (xp, act) = self.activation(&mut pool, x)?;
        let y = pool.zeros(&self.gpu, n * w.rows * 4)?;
        self.gpu.stream.synchronize()?;
        let s = &self.stream;
        launch_products_at(&self.gpu, s, &[(&gm, y, 0)], xp, n, act, true, mma_min)?;
        s.synchronize()?;
        let t = std::time::Instant::now();
        for _ in 0..reps {
            launch_products_at(&self.gpu, s, &[(&gm, y, 0)], xp, n, act, false, mma_min)?;
        }
        s.synchronize()?;
        Ok(t.elapsed().as_secs_f64() / reps.max(1) as f64)
    }

    /// RMSNorm of each `w.len()`-sized row of `x`.
    pub fn rmsnorm(&self, x: &[f32], w: &[f32], eps: f32) -> Result<Vec<f32>> {
        self.gpu.ctx.bind_to_thread()?;
        let mut pool = Pool::default();
        let xp = self.pool_upload(&mut pool, x)?;
        let wp = self.pool_upload(&mut pool, w)?;
        let out = pool.zeros(&self.gpu, x.len() * 4)?;
        self.gpu.stream.synchronize()?;
        let rows = x.len() / w.len().max(1);
        self.gpu.launch(
            &self.stream,
            "rmsnorm",
            (rows, 1),
            256,
            &[xp, wp, f(eps), out, i(w.len())],
        )?;
        self.down(out, x.len())
    }

    /// RoPE of `x` (heads of `r.dim` back to back) at position `pos`.
    pub fn rope(&self, x: &[f32], r: &Rope, pos: usize) -> Result<Vec<f32>> {
        self.gpu.ctx.bind_to_thread()?;
        let mut pool = Pool::default();
        let xp = self.pool_upload(&mut pool, x)?;
        let inv: Vec<f32> = (0..r.dim / 2)
            .map(|i| 1.0 / r.theta.powf((2 * i) as f32 / r.dim as f32))
            .collect();
        let invp = self.pool_upload(&mut pool, &inv)?;
        let step = self.step(&mut pool, pos)?;
        self.gpu.stream.synchronize()?;
        let (df, dorig) = r.dynamic.unwrap_or((0.0, 0));
        let pairs = x.len() / r.dim * (r.dim / 2);
        let pairing = usize::from(r.pairing == RopePairing::Adjacent);
        self.gpu.launch(
            &self.stream,
            "rope",
            (pairs.div_ceil(128), 1),
            128,
            &[
                xp,
                x.len() as u64,
                i(x.len()),
                i(r.dim),
                i(pairing),
                step,
                invp,
                f(r.theta),
                f(r.linear_factor),
                f(df),
                i(dorig),
            ],
        )?;
        self.down(xp, x.len())
    }

    /// Attention of `n_heads` query heads over `n` keys and values per KV head, laid out
    /// `[n_kv][n][head_dim]`, with an optional additive bias per key (`[n_kv][n]`, DMA scores).
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        q: &[f32],
        keys: &[f32],
        values: &[f32],
        n_heads: usize,
        n_kv: usize,
        head_dim: usize,
        n: usize,
        bias: Option<&[f32]>,
    ) -> Result<Vec<f32>> {
        self.gpu.ctx.bind_to_thread()?;
        let mut pool = Pool::default();
        let qp = self.pool_upload(&mut pool, q)?;
        let kp = self.pool_upload(&mut pool, keys)?;
        let vp = self.pool_upload(&mut pool, values)?;
        let bp = match bias {
            Some(b) => self.pool_upload(&mut pool, b)?,
            None => 0,
        };
        let lens: Vec<u8> = (0..n_kv).flat_map(|_| (n as i32).to_le_bytes()).collect();
        let lp = pool.upload(&self.gpu, &lens)?;
        let out = pool.zeros(&self.gpu, n_heads * head_dim * 4)?;
        let att = pool.zeros(&self.gpu, n_heads * n * 4)?;
        let step = self.step(&mut pool, n.saturating_sub(1))?;
        let parts = n.div_ceil(super::SPAN) * n_heads;
        let pm = pool.zeros(&self.gpu, parts * 4)?;
        let pl = pool.zeros(&self.gpu, parts * 4)?;
        let po = pool.zeros(&self.gpu, parts * head_dim * 4)?;
        self.gpu.stream.synchronize()?;
        let args = super::AttnArgs {
            q: qp,
            kc: kp,
            vc: vp,
            out,
            att,
            n_heads,
            group: n_heads / n_kv,
            hd: head_dim,
            strides: (n * head_dim, head_dim),
            lens: lp,
            bias: (bp, n),
            max_keys: n,
            step,
            t0: 0,
            n: 1,
            parts: (pm, pl, po),
            q8: (0, 0),
        };
        super::launch_attention(&self.gpu, &self.stream, &args)?;
        self.down(out, n_heads * head_dim)
    }

    /// CDMoE routing of one token's router scores (`rx | ry`, `2·nk`): the chosen experts, best
    /// first, and their softmax weights.
    pub fn route(&self, router: &[f32], nk: usize, k: usize) -> Result<(Vec<usize>, Vec<f32>)> {
        self.gpu.ctx.bind_to_thread()?;
        let mut pool = Pool::default();
        let rp = self.pool_upload(&mut pool, router)?;
        let idx = pool.zeros(&self.gpu, k * 4)?;
        let wt = pool.zeros(&self.gpu, k * 4)?;
        self.gpu.stream.synchronize()?;
        self.gpu.launch(
            &self.stream,
            "moe_route",
            (1, 1),
            256,
            &[rp, i(nk), i(k), idx, wt],
        )?;
        let ids = self.down(idx, k)?;
        let ids = ids.iter().map(|x| x.to_bits() as usize).collect();
        Ok((ids, self.down(wt, k)?))
    }
}
