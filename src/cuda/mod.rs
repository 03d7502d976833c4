//! The optional CUDA engine (cargo feature `cuda`): a model's weights uploaded once per GPU, and a
//! [`GpuSession`] that runs a [`crate::Session`]'s forward pass on the device. The driver is
//! loaded at run time (`cudarc` with dynamic loading: one binary runs with or without a GPU) and
//! the kernels (`kernels/src/cuda/kernels.cu`) are compiled at run time with NVRTC, once per
//! process and device. Without the feature, `off.rs` provides the same types, whose constructors
//! return a clear error. [`ops`] launches single kernels for the parity suite (`tests/cuda.rs`).
//!
//! The whole forward pass stays on the device: RMSNorm (fused with the residual add before it and
//! the int8 quantization after it), RoPE (with DMA's per-head norm and the KV append), attention
//! split over parts of the cache and combined, the DMA score and bounded cache, the SSD conv and
//! step (one kernel per token), CDMoE routing (router scores never leave the device) and the expert
//! gather. Products of up to three matrices with one input are one launch. Batches of at least
//! [`MMA_MIN`] tokens (F16/BF16: twice that) run on the tensor cores on sm_80+ (`mma.sync` in
//! inline PTX: int8 m16n8k32 against the int8 activation blocks for the quantized types, with the
//! integer sums of the dp4a kernels; tf32 m16n8k8 for F16/BF16 with the activation split into
//! tf32 hi + lo), tiles of 64 rows × 32 tokens staged in shared memory, so a block reads its
//! weight tile once for all its tokens; decode, smaller batches, F32 and older GPUs read each
//! weight row once per 8 tokens on the CUDA cores (dp4a, f32 FMA). A call runs up to [`BATCH`]
//! tokens: causal attention over the KV cache is one launch pair for all of them, the SSD
//! recurrence two (the conv of every token, `ssd_conv_all`, then the chunked matrix form,
//! `ssd_chunk_scan`), and a DMA layer five (`GpuSession::dma_batch`): a key's score does not
//! depend on the query, so after each insert the bounded cache holds exactly the `keep_window`
//! best keys offered so far (score, then the newer); each cache entry and each token of the batch
//! is therefore present during an interval of the batch, which one kernel per KV head
//! (`dma_plan`) computes together with the slots the sequential inserts would give; the attention
//! of all queries masks the keys outside their intervals, and the tokens that stay are stored
//! afterwards. Single tokens (decode) insert and attend as before (`dma_insert`).
//!
//! A decode step is a fixed sequence of launches that read the token and position from a small
//! device buffer, so it is captured once as a CUDA graph and replayed: per token the host copies
//! 8 bytes in, launches the graph and copies the logits row out (the sampler stays on the host),
//! allocating nothing. On sm_90+ kernels are launched with programmatic stream serialization.
//!
//! Weight types: F32, F16, BF16 (f32 activations), Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K,
//! Q6_K (int8 dot products against activations quantized to int8 blocks of 32 with f16 scales, as
//! ggml's q8_0 / q8_1 and llama.cpp's MMVQ); Q2_K and Q3_K, which llama.cpp's files may hold, are
//! requantized to Q8_0 when uploaded.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{anyhow, bail, Context, Result};
use cheems_formats::GgmlType;
use cudarc::driver::{result as cu, sys, CudaContext, CudaFunction, CudaGraph, CudaModule};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, PinnedHostSlice};

use crate::blocks::attention::KvCache;
use crate::blocks::cdmoe::Experts;
use crate::blocks::dma::DmaCache;
use crate::blocks::ssd::SsdState;
use crate::config::{Config, RopePairing};
use crate::model::{Ffn, Mixer, Model};
use crate::snapshot::LayerState as State;
use crate::weights::Mat;
use cheems_kernels::matvec::MatRef;

pub mod ops;

/// The kernels' CUDA C source.
pub const SOURCE: &str = cheems_kernels::CUDA_SOURCE;

/// Every kernel the engine launches.
const KERNELS: &[&str] = &[
    "embed",
    "rmsnorm",
    "add_rmsnorm",
    "residual",
    "silu_mul",
    "silu_mul_q8",
    "quantize_q8",
    "mmvq3_q4_0",
    "mmvq3_q4_1",
    "mmvq3_q5_0",
    "mmvq3_q5_1",
    "mmvq3_q8_0",
    "mmvq3_q4_k",
    "mmvq3_q5_k",
    "mmvq3_q6_k",
    "mvf3_f32",
    "mvf3_f16",
    "mvf3_bf16",
    "mmq3_q4_0",
    "mmq3_q4_1",
    "mmq3_q5_0",
    "mmq3_q5_1",
    "mmq3_q8_0",
    "mmq3_q4_k",
    "mmq3_q5_k",
    "mmq3_q6_k",
    "mmf3_f16",
    "mmf3_bf16",
    "rope",
    "qk_rope",
    "attn_part",
    "attn_combine",
    "dma_insert",
    "dma_scores",
    "dma_plan",
    "dma_attn",
    "dma_commit",
    "ssd_fused",
    "ssd_scan",
    "ssd_conv_hist",
    "ssd_conv_all",
    "ssd_chunk_scan",
    "gate_norm",
    "moe_route",
    "moe_alpha",
    "moe_up",
    "ssd_decode",
];

/// Compiles the kernels to PTX for a compute capability (`(9, 0)`: `compute_90`). Needs NVRTC
/// (`libnvrtc.so.13`), not a GPU.
pub fn compile(cc: (i32, i32)) -> Result<cudarc::nvrtc::Ptx> {
    // SAFETY: probes for the shared library with dlopen; nothing else is touched.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        bail!(
            "NVRTC (libnvrtc.so.13) was not found: install CUDA 13's NVRTC (e.g. `pip install \
             nvidia-cuda-nvrtc`) and add its lib directory to LD_LIBRARY_PATH"
        );
    }
    let mut options = vec![format!("--gpu-architecture=compute_{}{}", cc.0, cc.1)];
    // CHEEMS_CUDA_LINEINFO=1: source line information, for profilers (Nsight Compute's source
    // page correlates the instructions with kernels.cu lines).
    if std::env::var("CHEEMS_CUDA_LINEINFO").is_ok_and(|v| v == "1") {
        options.push("--generate-line-info".into());
    }
    // CHEEMS_CUDA_FUSED_TIMES=2: every block of `ssd_decode` records its stages (see
    // `report_replay`).
    if std::env::var("CHEEMS_CUDA_FUSED_TIMES").is_ok_and(|v| v == "2") {
        options.push("-DFUSED_PHASES".into());
    }
    // CHEEMS_CUDA_DEFINES="-DNAME[=V] ...": the kernels' compile-time switches, for
    // measurements (-DSKELETON: `ssd_decode` without its weights' bytes, wrong results).
    if let Ok(defs) = std::env::var("CHEEMS_CUDA_DEFINES") {
        options.extend(defs.split_whitespace().map(String::from));
    }
    let opts = cudarc::nvrtc::CompileOptions {
        options,
        name: Some("kernels.cu".into()),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(SOURCE, opts)
        .map_err(|e| anyhow!("compiling the CUDA kernels with NVRTC: {e:?}"))
}

/// One GPU: its context, the stream every session on it uses, and the compiled kernels.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    funcs: HashMap<&'static str, CudaFunction>,
    name: String,
    ordinal: usize,
    /// Launch with programmatic stream serialization (compute capability 9.0 and later, unless
    /// `CHEEMS_CUDA_PDL=0`): the next kernel is scheduled while the previous one finishes, and
    /// waits for it in its first instruction (`griddepcontrol.wait`).
    pdl: bool,
    /// Products of at least this many tokens run on the tensor cores (compute capability 8.0 and
    /// later, [`MMA_MIN`] or `CHEEMS_CUDA_MMA_MIN`); `usize::MAX` without them.
    mma_min: usize,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu(cuda:{} {})", self.ordinal, self.name)
    }
}

/// The device `cuda:ordinal`, opened (and its kernels compiled) once per process.
pub fn gpu(ordinal: usize) -> Result<Arc<Gpu>> {
    static GPUS: OnceLock<Mutex<Vec<Arc<Gpu>>>> = OnceLock::new();
    let mut gpus = GPUS
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| anyhow!("the GPU table was poisoned by a panic"))?;
    if let Some(g) = gpus.iter().find(|g| g.ordinal == ordinal) {
        return Ok(g.clone());
    }
    let g = Arc::new(Gpu::open(ordinal).with_context(|| format!("cannot use cuda:{ordinal}"))?);
    gpus.push(g.clone());
    Ok(g)
}

impl Gpu {
    fn open(ordinal: usize) -> Result<Self> {
        // SAFETY: probes for the shared library with dlopen; nothing else is touched.
        if !unsafe { sys::is_culib_present() } {
            bail!("no NVIDIA driver found (libcuda.so): --device cuda needs an NVIDIA GPU and its driver");
        }
        let n = CudaContext::device_count().map_err(|e| anyhow!("no usable GPU: {e}"))?;
        if ordinal >= n.max(0) as usize {
            bail!("the driver sees {n} GPU(s)");
        }
        let ctx = CudaContext::new(ordinal)?;
        // SAFETY: one stream per context and no cudarc-managed buffers are shared between
        // streams, so cudarc's event tracking is not needed (and kernels are launched raw).
        unsafe { ctx.disable_event_tracking() };
        let cc = ctx.compute_capability()?;
        if cc < (6, 1) {
            bail!(
                "compute capability {}.{}: the kernels need 6.1 or later (dp4a)",
                cc.0,
                cc.1
            );
        }
        let ptx = compile(cc)?;
        let module = ctx.load_module(ptx)?;
        let mut funcs = HashMap::new();
        for &k in KERNELS {
            funcs.insert(
                k,
                module
                    .load_function(k)
                    .with_context(|| format!("kernel `{k}`"))?,
            );
        }
        let stream = ctx.new_stream()?;
        let pdl = cc.0 >= 9 && std::env::var("CHEEMS_CUDA_PDL").map_or(true, |v| v != "0");
        let mma_min = if cc.0 >= 8 {
            std::env::var("CHEEMS_CUDA_MMA_MIN")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(MMA_MIN)
        } else {
            usize::MAX
        };
        Ok(Gpu {
            pdl,
            mma_min,
            name: ctx.name().unwrap_or_else(|_| "unknown GPU".into()),
            ctx,
            stream,
            _module: module,
            funcs,
            ordinal,
        })
    }

    /// The device's name (e.g. "NVIDIA H200").
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Launches kernel `name` on `stream` with a two-dimensional grid (see [`Gpu::launch3`]).
    fn launch(
        &self,
        stream: &CudaStream,
        name: &str,
        grid: (usize, usize),
        block: usize,
        args: &[u64],
    ) -> Result<()> {
        self.launch3(stream, name, (grid.0, grid.1, 1), block, args)
    }

    /// Launches kernel `name` on `stream`. Each argument is one kernel parameter passed as 8
    /// bytes: device pointers and `long long` as they are, `int` and `float` parameters in the
    /// low 4 bytes ([`i`], [`f`]), which is what the kernel reads on a little-endian host.
    fn launch3(
        &self,
        stream: &CudaStream,
        name: &str,
        grid: (usize, usize, usize),
        block: usize,
        args: &[u64],
    ) -> Result<()> {
        self.launch_ex(stream, name, grid, block, (0, false), args)
    }

    /// [`Gpu::launch3`] with `extra`: bytes of dynamic shared memory, and whether the launch is
    /// cooperative (every block resident at once, or the launch fails: for grid barriers).
    fn launch_ex(
        &self,
        stream: &CudaStream,
        name: &str,
        grid: (usize, usize, usize),
        block: usize,
        extra: (usize, bool),
        args: &[u64],
    ) -> Result<()> {
        const MAX: usize = 20;
        let f = self
            .funcs
            .get(name)
            .ok_or_else(|| anyhow!("no kernel `{name}`"))?;
        if args.len() > MAX {
            bail!("kernel `{name}`: {} arguments", args.len());
        }
        let mut vals = [0u64; MAX];
        vals[..args.len()].copy_from_slice(args);
        let mut ptrs = [std::ptr::null_mut::<c_void>(); MAX];
        for (p, v) in ptrs.iter_mut().zip(vals.iter_mut()) {
            *p = (v as *mut u64).cast();
        }
        let (gx, gy, gz) = (
            grid.0.max(1) as u32,
            grid.1.max(1) as u32,
            grid.2.max(1) as u32,
        );
        let (smem, coop) = extra;
        if self.pdl || coop || smem > 0 {
            // SAFETY: a plain-data C struct, valid when zeroed.
            let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
            if coop {
                attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_COOPERATIVE;
                attr.value.cooperative = 1;
            } else {
                attr.id =
                    sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
                attr.value.programmaticStreamSerializationAllowed = i32::from(self.pdl);
            }
            let cfg = sys::CUlaunchConfig {
                gridDimX: gx,
                gridDimY: gy,
                gridDimZ: gz,
                blockDimX: block as u32,
                blockDimY: 1,
                blockDimZ: 1,
                sharedMemBytes: smem as u32,
                hStream: stream.cu_stream(),
                attrs: &mut attr,
                numAttrs: 1,
            };
            // SAFETY: as below for the function and its parameters; `cfg` and `attr` outlive
            // the call, which copies them.
            return unsafe {
                sys::cuLaunchKernelEx(
                    &cfg,
                    f.cu_function(),
                    ptrs.as_mut_ptr(),
                    std::ptr::null_mut(),
                )
            }
            .result()
            .with_context(|| format!("launching `{name}`"));
        }
        // SAFETY: `f` belongs to this context's module; every parameter pointer points into
        // `vals`, which outlives the call (cuLaunchKernel copies the values), and each kernel's
        // parameters are at most 8 bytes, as documented above; the device pointers passed are
        // buffers this engine allocated with the sizes the kernels index.
        unsafe {
            cu::launch_kernel(
                f.cu_function(),
                (gx, gy, gz),
                (block as u32, 1, 1),
                0,
                stream.cu_stream(),
                &mut ptrs[..args.len()],
            )
        }
        .with_context(|| format!("launching `{name}`"))
    }
}

/// An `int` kernel parameter.
fn i(v: usize) -> u64 {
    u64::from(v as u32)
}

/// A `float` kernel parameter.
fn f(v: f32) -> u64 {
    u64::from(v.to_bits())
}

/// Device memory owned by a [`Pool`]: the raw pointer handed to kernels.
type DPtr = u64;

/// Owns device buffers; hands out their raw pointers.
#[derive(Default)]
struct Pool {
    bufs: Vec<CudaSlice<u8>>,
    bytes: usize,
}

impl Pool {
    fn push(&mut self, s: CudaSlice<u8>, stream: &Arc<CudaStream>) -> DPtr {
        let p = {
            let (p, _sync) = s.device_ptr(stream);
            p
        };
        self.bytes += s.len();
        self.bufs.push(s);
        p
    }

    fn upload(&mut self, gpu: &Gpu, b: &[u8]) -> Result<DPtr> {
        if b.is_empty() {
            return self.zeros(gpu, 4);
        }
        let s = gpu.stream.clone_htod(b)?;
        Ok(self.push(s, &gpu.stream))
    }

    fn floats(&mut self, gpu: &Gpu, v: &[f32]) -> Result<DPtr> {
        let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.upload(gpu, &b)
    }

    fn opt_floats(&mut self, gpu: &Gpu, v: &Option<Vec<f32>>) -> Result<DPtr> {
        match v {
            Some(v) => self.floats(gpu, v),
            None => Ok(0),
        }
    }

    fn zeros(&mut self, gpu: &Gpu, bytes: usize) -> Result<DPtr> {
        let s = gpu.stream.alloc_zeros::<u8>(bytes.max(4))?;
        Ok(self.push(s, &gpu.stream))
    }
}

/// A weight matrix on the device, in a type the kernels read.
#[derive(Clone, Copy, Debug)]
struct GMat {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    ptr: DPtr,
    row_bytes: usize,
}

impl GMat {
    fn quantized(&self) -> bool {
        !matches!(self.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
    }
}

/// Uploads a matrix in its stored type, or as Q8_0 (F16 for rows that are not whole blocks) for
/// the types the kernels do not read (none of the types the formats write today).
fn upload_mat(pool: &mut Pool, gpu: &Gpu, m: &Mat, map: &[u8]) -> Result<GMat> {
    upload_matref(pool, gpu, &m.get(map))
}

fn upload_matref(pool: &mut Pool, gpu: &Gpu, r: &MatRef<'_>) -> Result<GMat> {
    use GgmlType::*;
    if matches!(
        r.ty,
        F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4_K | Q5_K | Q6_K
    ) {
        return Ok(GMat {
            ty: r.ty,
            rows: r.rows,
            cols: r.cols,
            ptr: pool.upload(gpu, r.data)?,
            row_bytes: r.row_bytes(),
        });
    }
    // Other types are requantized to Q8_0 (8.5 bits per weight) when their rows are whole
    // blocks of 32, else converted to F16.
    let to = if r.cols.is_multiple_of(32) { Q8_0 } else { F16 };
    let row_bytes = to
        .row_bytes(r.cols)
        .ok_or_else(|| anyhow!("rows of {} values as {to}", r.cols))?;
    let mut row = vec![0f32; r.cols];
    let mut out = vec![0u8; r.rows * row_bytes];
    for (i, o) in out.chunks_exact_mut(row_bytes).enumerate() {
        cheems_formats::blocks::dequantize_row(r.ty, r.row(i), &mut row)
            .map_err(|e| anyhow!("dequantizing a {} matrix for the GPU: {e}", r.ty))?;
        if to == Q8_0 {
            cheems_formats::blocks::quantize_row(Q8_0, &row, o)
                .map_err(|e| anyhow!("requantizing a {} matrix for the GPU: {e}", r.ty))?;
        } else {
            for (d, x) in o.chunks_exact_mut(2).zip(&row) {
                d.copy_from_slice(&half::f16::from_f32(*x).to_bits().to_le_bytes());
            }
        }
    }
    Ok(GMat {
        ty: to,
        rows: r.rows,
        cols: r.cols,
        ptr: pool.upload(gpu, &out)?,
        row_bytes,
    })
}

/// The three-matrix product kernel of a device matrix type.
fn product_kernel(ty: GgmlType) -> Result<&'static str> {
    Ok(match ty {
        GgmlType::Q4_0 => "mmvq3_q4_0",
        GgmlType::Q4_1 => "mmvq3_q4_1",
        GgmlType::Q5_0 => "mmvq3_q5_0",
        GgmlType::Q5_1 => "mmvq3_q5_1",
        GgmlType::Q8_0 => "mmvq3_q8_0",
        GgmlType::Q4_K => "mmvq3_q4_k",
        GgmlType::Q5_K => "mmvq3_q5_k",
        GgmlType::Q6_K => "mmvq3_q6_k",
        GgmlType::F32 => "mvf3_f32",
        GgmlType::F16 => "mvf3_f16",
        GgmlType::BF16 => "mvf3_bf16",
        other => bail!("no CUDA product for {other}"),
    })
}

/// Whether any of the matrices reads int8 activation blocks.
fn any_quantized(ws: &[&GMat]) -> bool {
    ws.iter().any(|w| w.quantized())
}

/// Token columns one `mmvq3`/`mvf3` launch handles (the kernels' NC).
const COLS: usize = 8;

/// Quantized products of at least this many tokens run on the tensor cores where the GPU has
/// them, F16/BF16 ones from twice as many (the default of `CHEEMS_CUDA_MMA_MIN`). Measured on an
/// H200 (`product_timings`): the int8 tiles win from 4-6 tokens on 2304x768 Q8_0/Q4_0/Q4_K and
/// from about 20 on 768x2048 (fewer, longer tiles); the tf32 ones from 11 and about 64.
pub const MMA_MIN: usize = 16;

/// Rows and tokens of one tensor-core tile (the kernels' MQ_BM, MQ_BN).
const MMA_TILE: (usize, usize) = (64, 32);

/// The tensor-core product kernel of a device matrix type (F32 has none: it keeps `mvf3_f32`).
fn mma_kernel(ty: GgmlType) -> Option<&'static str> {
    Some(match ty {
        GgmlType::Q4_0 => "mmq3_q4_0",
        GgmlType::Q4_1 => "mmq3_q4_1",
        GgmlType::Q5_0 => "mmq3_q5_0",
        GgmlType::Q5_1 => "mmq3_q5_1",
        GgmlType::Q8_0 => "mmq3_q8_0",
        GgmlType::Q4_K => "mmq3_q4_k",
        GgmlType::Q5_K => "mmq3_q5_k",
        GgmlType::Q6_K => "mmq3_q6_k",
        GgmlType::F16 => "mmf3_f16",
        GgmlType::BF16 => "mmf3_bf16",
        _ => return None,
    })
}

/// `y_m[t] = W_m x[t] (+ bias_m)` for up to three matrices of one type and width (`ws`: matrix,
/// output, bias) and `n` activation rows `x` (`[n][cols]`). Quantized matrices read the int8
/// blocks in `act` (`[q | d]`), which are made from `x` first when `quantize` is set (else they
/// must hold `x` already; `d` holds two floats per block, see the kernels). Batches of at least
/// the GPU's `mma_min` tokens run on the tensor cores (tiles of 64 rows × 32 tokens); smaller
/// ones (F16/BF16: below twice `mma_min`), and F32, read the weights once per 8 tokens on the CUDA
/// cores.
fn launch_products(
    gpu: &Gpu,
    stream: &CudaStream,
    ws: &[(&GMat, DPtr, DPtr)],
    x: DPtr,
    n: usize,
    act: (DPtr, DPtr),
    quantize: bool,
) -> Result<()> {
    launch_products_at(gpu, stream, ws, x, n, act, quantize, gpu.mma_min)
}

/// [`launch_products`] with batches of at least `mma_min` tokens on the tensor cores (when the
/// GPU has them: its own `mma_min` is `usize::MAX` otherwise).
#[allow(clippy::too_many_arguments)]
fn launch_products_at(
    gpu: &Gpu,
    stream: &CudaStream,
    ws: &[(&GMat, DPtr, DPtr)],
    x: DPtr,
    n: usize,
    act: (DPtr, DPtr),
    quantize: bool,
    mma_min: usize,
) -> Result<()> {
    let mma_min = if gpu.mma_min == usize::MAX {
        usize::MAX
    } else {
        mma_min
    };
    let Some(&(w0, _, _)) = ws.first() else {
        return Ok(());
    };
    if ws.iter().any(|(w, _, _)| w.cols != w0.cols) {
        bail!("products of one input need matrices of one width");
    }
    if ws.len() > 3 || ws.iter().any(|(w, _, _)| w.ty != w0.ty) {
        // Mixed types (a file with per-tensor overrides): one launch each, the input quantized
        // once.
        let mut quantize = quantize;
        for &m in ws {
            launch_products_at(gpu, stream, &[m], x, n, act, quantize, mma_min)?;
            quantize &= !m.0.quantized();
        }
        return Ok(());
    }
    let name = product_kernel(w0.ty)?;
    let cols = w0.cols;
    let m: [ProductMat; 3] = std::array::from_fn(|k| {
        ws.get(k)
            .map_or((0, 0, 0, 0), |(w, y, b)| (w.ptr, *y, *b, w.rows))
    });
    // Warps per row: 4 for short products (more parallel loads per row), 1 for tall ones.
    let rows = m[0].3 + m[1].3 + m[2].3;
    let wpr = match rows {
        r if r >= 4096 => 1,
        r if r >= 1024 => 2,
        _ => 4,
    };
    let grid = (rows.div_ceil(4 / wpr), 1);
    let rb = w0.row_bytes as u64;
    let nb = cols / 32;
    // The kernels' width argument: blocks of 32 for int8 activations, else columns.
    let width = if w0.quantized() { nb } else { cols };
    if w0.quantized() && quantize {
        gpu.launch(
            stream,
            "quantize_q8",
            ((n * nb).div_ceil(4), 1),
            128,
            &[x, act.0, act.1, i(n * cols)],
        )?;
    }
    let mma_min = if w0.quantized() {
        mma_min
    } else {
        mma_min.saturating_mul(2)
    };
    if let Some(name) = mma_kernel(w0.ty).filter(|_| n >= mma_min) {
        let grid = (rows.div_ceil(MMA_TILE.0), n.div_ceil(MMA_TILE.1));
        let input: &[u64] = if w0.quantized() {
            &[act.0, act.1]
        } else {
            &[x]
        };
        let y = [m[0].1, m[1].1, m[2].1];
        let (a, len) = product_args(&m, rb, input, y, width, &[i(n)]);
        return gpu.launch(stream, name, grid, 256, &a[..len]);
    }
    let mut c0 = 0;
    while c0 < n {
        let nc = COLS.min(n - c0);
        // Outputs, int8 blocks and scales, or f32 rows from token c0 on.
        let y = m.map(|(_, y, _, rows)| {
            if y == 0 {
                0
            } else {
                y + (c0 * rows * 4) as u64
            }
        });
        let (q, d) = (act.0 + (c0 * cols) as u64, act.1 + (c0 * nb * 8) as u64);
        let xc = x + (c0 * cols * 4) as u64;
        let input: &[u64] = if w0.quantized() { &[q, d] } else { &[xc] };
        let (a, len) = product_args(&m, rb, input, y, width, &[i(nc), i(wpr)]);
        gpu.launch(stream, name, grid, 128, &a[..len])?;
        c0 += nc;
    }
    Ok(())
}

/// One matrix of a product launch: its device address, output, bias and rows (zeros for an
/// unused slot).
type ProductMat = (DPtr, DPtr, DPtr, usize);

/// The argument words of the product kernels, which share one layout (`mmvq3_*`, `mvf3_*`,
/// `mmq3_*`, `mmf3_*` in kernels.cu): the three matrices, their row bytes, the input (int8
/// blocks and their scales, or f32 rows), the three outputs, the three row counts, the width
/// (blocks of 32, or columns), the three biases, then the kernel's own tail (`nc, wpr` or `n`).
/// A fixed array and its length: nothing is allocated per launch.
fn product_args(
    m: &[ProductMat; 3],
    rb: u64,
    input: &[u64],
    y: [DPtr; 3],
    width: usize,
    tail: &[u64],
) -> ([u64; 18], usize) {
    let words = m
        .iter()
        .map(|m| m.0)
        .chain([rb])
        .chain(input.iter().copied())
        .chain(y)
        .chain(m.iter().map(|m| i(m.3)))
        .chain([i(width)])
        .chain(m.iter().map(|m| m.2))
        .chain(tail.iter().copied());
    debug_assert!(4 + input.len() + 10 + tail.len() <= 18);
    let mut a = [0u64; 18];
    let mut len = 0;
    for (slot, v) in a.iter_mut().zip(words) {
        *slot = v;
        len += 1;
    }
    (a, len)
}

#[derive(Debug)]
struct GQkvo {
    q: GMat,
    k: GMat,
    v: GMat,
    o: GMat,
    q_bias: DPtr,
    k_bias: DPtr,
    v_bias: DPtr,
    o_bias: DPtr,
}

#[derive(Debug)]
enum GMixer {
    Attention(GQkvo),
    Dma {
        proj: GQkvo,
        q_norm: DPtr,
        k_norm: DPtr,
        dt: GMat,
        dt_bias: DPtr,
        a: DPtr,
    },
    Ssd {
        in_proj: GMat,
        in_bias: DPtr,
        conv_w: DPtr,
        conv_b: DPtr,
        dt_bias: DPtr,
        a: DPtr,
        d: DPtr,
        norm: DPtr,
        out_proj: GMat,
        out_bias: DPtr,
        /// 0 when B and C are not rotated.
        rope_inv_freq: DPtr,
    },
}

#[derive(Debug)]
struct GMlp {
    gate: GMat,
    up: GMat,
    down: GMat,
}

#[derive(Debug)]
enum GFfn {
    Mlp(GMlp),
    CdMoe {
        shared: GMlp,
        router: GMat,
        /// Expert e's down row at `down + e·stride`, its up row at `up + e·stride`.
        ty: GgmlType,
        down: DPtr,
        up: DPtr,
        stride: usize,
        n_keys: usize,
        n_used: usize,
    },
}

#[derive(Debug)]
struct GLayer {
    attn_norm: DPtr,
    attn_residual: DPtr,
    mixer: GMixer,
    /// (norm, skip scale or 0, FFN)
    ffn: Option<(DPtr, DPtr, GFfn)>,
}

/// A model's weights on one GPU, uploaded once and shared by its sessions.
pub struct GpuWeights {
    gpu: Arc<Gpu>,
    _pool: Pool,
    embed: GMat,
    output: GMat,
    output_norm: DPtr,
    /// RoPE inverse frequencies of the unscaled base (0 without RoPE).
    rope_inv_freq: DPtr,
    layers: Vec<GLayer>,
    bytes: usize,
}

impl std::fmt::Debug for GpuWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuWeights({:?}, {} bytes)", self.gpu, self.bytes)
    }
}

/// Where a model keeps its uploaded weights, per GPU.
#[derive(Debug, Default)]
pub struct WeightCache(Mutex<Vec<Arc<GpuWeights>>>);

fn upload_qkvo(
    pool: &mut Pool,
    gpu: &Gpu,
    p: &crate::blocks::attention::Qkvo,
    map: &[u8],
) -> Result<GQkvo> {
    Ok(GQkvo {
        q: upload_mat(pool, gpu, &p.q, map)?,
        k: upload_mat(pool, gpu, &p.k, map)?,
        v: upload_mat(pool, gpu, &p.v, map)?,
        o: upload_mat(pool, gpu, &p.o, map)?,
        q_bias: pool.opt_floats(gpu, &p.q_bias)?,
        k_bias: pool.opt_floats(gpu, &p.k_bias)?,
        v_bias: pool.opt_floats(gpu, &p.v_bias)?,
        o_bias: pool.opt_floats(gpu, &p.o_bias)?,
    })
}

fn upload_mlp(pool: &mut Pool, gpu: &Gpu, m: &crate::blocks::mlp::Mlp, map: &[u8]) -> Result<GMlp> {
    Ok(GMlp {
        gate: upload_mat(pool, gpu, &m.gate, map)?,
        up: upload_mat(pool, gpu, &m.up, map)?,
        down: upload_mat(pool, gpu, &m.down, map)?,
    })
}

impl GpuWeights {
    /// The model's weights on `gpu`, uploaded on first use.
    pub fn get(model: &Model, gpu: &Arc<Gpu>) -> Result<Arc<GpuWeights>> {
        let mut cache = model
            .gpu_weights
            .0
            .lock()
            .map_err(|_| anyhow!("the model's GPU weights were poisoned by a panic"))?;
        if let Some(w) = cache.iter().find(|w| w.gpu.ordinal == gpu.ordinal) {
            return Ok(w.clone());
        }
        let w = Arc::new(Self::upload(model, gpu)?);
        cache.push(w.clone());
        Ok(w)
    }

    fn upload(model: &Model, gpu: &Arc<Gpu>) -> Result<Self> {
        let c = &model.config;
        if model.experts.is_some() {
            bail!("a bound on the expert cache (--expert-cache) is CPU-only: on CUDA every expert is uploaded");
        }
        if c.head_dim > 256 {
            bail!(
                "head_dim {}: the CUDA attention kernel supports at most 256",
                c.head_dim
            );
        }
        if c.ssd.is_some_and(|s| s.d_state > 256) {
            bail!("SSD d_state above 256 is not supported on CUDA");
        }
        if c.n_experts > 0 && (c.n_keys() > 64 || c.n_experts_used > 64) {
            bail!("CDMoE with more than 64x64 experts or 64 used is not supported on CUDA");
        }
        let map = model.map();
        let mut pool = Pool::default();
        let g = &**gpu;
        let embed = upload_mat(&mut pool, g, &model.embed, map)?;
        let output = if model.output.range() == model.embed.range() {
            embed
        } else {
            upload_mat(&mut pool, g, &model.output, map)?
        };
        let output_norm = pool.floats(g, &model.output_norm)?;
        let rope_inv_freq = match &c.rope {
            Some(r) => {
                let inv: Vec<f32> = (0..r.dim / 2)
                    .map(|i| 1.0 / r.theta.powf((2 * i) as f32 / r.dim as f32))
                    .collect();
                pool.floats(g, &inv)?
            }
            None => 0,
        };
        let mut layers = Vec::with_capacity(model.layers.len());
        for l in &model.layers {
            let mixer = match &l.mixer {
                Mixer::Attention(a) => GMixer::Attention(upload_qkvo(&mut pool, g, &a.proj, map)?),
                Mixer::Dma(d) => GMixer::Dma {
                    proj: upload_qkvo(&mut pool, g, &d.proj, map)?,
                    q_norm: pool.floats(g, &d.q_norm)?,
                    k_norm: pool.floats(g, &d.k_norm)?,
                    dt: upload_mat(&mut pool, g, &d.dt, map)?,
                    dt_bias: pool.opt_floats(g, &d.dt_bias)?,
                    a: pool.floats(g, &d.a)?,
                },
                Mixer::Ssd(s) => GMixer::Ssd {
                    in_proj: upload_mat(&mut pool, g, &s.in_proj, map)?,
                    in_bias: pool.opt_floats(g, &s.in_bias)?,
                    conv_w: pool.floats(g, &s.conv_w)?,
                    conv_b: pool.opt_floats(g, &s.conv_b)?,
                    dt_bias: pool.floats(g, &s.dt_bias)?,
                    a: pool.floats(g, &s.a)?,
                    d: pool.floats(g, &s.d)?,
                    norm: pool.floats(g, &s.norm)?,
                    out_proj: upload_mat(&mut pool, g, &s.out_proj, map)?,
                    out_bias: pool.opt_floats(g, &s.out_bias)?,
                    rope_inv_freq: if s.rope_inv_freq.is_empty() {
                        0
                    } else {
                        pool.floats(g, &s.rope_inv_freq)?
                    },
                },
            };
            let ffn = match &l.ffn {
                None => None,
                Some((norm, res, ffn)) => {
                    let ffn = match ffn {
                        Ffn::Mlp(m) => GFfn::Mlp(upload_mlp(&mut pool, g, m, map)?),
                        Ffn::CdMoe(m) => {
                            let (ty, down, up, stride) = match &m.experts {
                                Experts::Records(r) => {
                                    let gm = upload_mat(&mut pool, g, r, map)?;
                                    (
                                        gm.ty,
                                        gm.ptr,
                                        gm.ptr + gm.row_bytes as u64,
                                        2 * gm.row_bytes,
                                    )
                                }
                                Experts::Tables { down, up } => {
                                    let d = upload_mat(&mut pool, g, down, map)?;
                                    let u = upload_mat(&mut pool, g, up, map)?;
                                    (d.ty, d.ptr, u.ptr, d.row_bytes)
                                }
                            };
                            GFfn::CdMoe {
                                shared: upload_mlp(&mut pool, g, &m.shared, map)?,
                                router: upload_mat(&mut pool, g, &m.router, map)?,
                                ty,
                                down,
                                up,
                                stride,
                                n_keys: m.n_keys,
                                n_used: m.n_used,
                            }
                        }
                    };
                    Some((pool.floats(g, norm)?, pool.opt_floats(g, res)?, ffn))
                }
            };
            layers.push(GLayer {
                attn_norm: pool.floats(g, &l.attn_norm)?,
                attn_residual: pool.opt_floats(g, &l.attn_residual)?,
                mixer,
                ffn,
            });
        }
        gpu.stream.synchronize()?;
        Ok(GpuWeights {
            gpu: gpu.clone(),
            bytes: pool.bytes,
            _pool: pool,
            embed,
            output,
            output_norm,
            rope_inv_freq,
            layers,
        })
    }

    /// Bytes of device memory the weights take.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Keys per block of the split attention (`attn_part`).
const SPAN: usize = 256;

/// One attention launch pair (`attn_part` over parts of [`SPAN`] keys, then `attn_combine`) for
/// `n` tokens from `t0`; see the kernels for the cache layout.
#[derive(Debug)]
struct AttnArgs {
    q: DPtr,
    kc: DPtr,
    vc: DPtr,
    out: DPtr,
    att: DPtr,
    n_heads: usize,
    group: usize,
    hd: usize,
    /// (between KV heads, between keys), in floats
    strides: (usize, usize),
    lens: DPtr,
    bias: (DPtr, usize),
    max_keys: usize,
    step: DPtr,
    t0: usize,
    n: usize,
    /// (max, sum, output) of the parts
    parts: (DPtr, DPtr, DPtr),
    /// int8 blocks of the output, or (0, 0)
    q8: (DPtr, DPtr),
}

fn launch_attention(gpu: &Gpu, stream: &CudaStream, a: &AttnArgs) -> Result<()> {
    let n_parts = a.max_keys.div_ceil(SPAN);
    let scale = 1.0 / (a.hd as f32).sqrt();
    gpu.launch3(
        stream,
        "attn_part",
        (a.n_heads, a.n, n_parts),
        256,
        &[
            a.q,
            a.kc,
            a.vc,
            a.att,
            i(a.group),
            i(a.hd),
            a.strides.0 as u64,
            i(a.strides.1),
            a.lens,
            a.bias.0,
            i(a.bias.1),
            i(a.max_keys),
            f(scale),
            a.step,
            i(a.t0),
            i(SPAN),
            i(n_parts),
            a.parts.0,
            a.parts.1,
            a.parts.2,
        ],
    )?;
    gpu.launch(
        stream,
        "attn_combine",
        (a.n_heads, a.n),
        128,
        &[
            a.parts.0,
            a.parts.1,
            a.parts.2,
            i(n_parts),
            i(a.hd),
            a.out,
            i(a.t0),
            a.q8.0,
            a.q8.1,
        ],
    )
}

/// One layer's state on the device.
#[derive(Debug)]
enum GState {
    /// `[ctx][n_kv_heads·head_dim]` keys (after RoPE) and values.
    Kv { k: DPtr, v: DPtr },
    /// `[n_kv][keep_window][head_dim]` keys and values, `[n_kv][keep_window]` scores and
    /// positions (i32), `[n_kv]` entries held (i32).
    Dma {
        k: DPtr,
        v: DPtr,
        score: DPtr,
        pos: DPtr,
        len: DPtr,
    },
    /// `[2][conv_dim][d_conv-1]` conv inputs (double-buffered: position `pos` reads buffer
    /// `pos & 1`, see the `ssd_fused` kernel) and the `[n_heads][head_dim][d_state]` SSM state.
    Ssd { conv: DPtr, ssm: DPtr },
}

/// Scratch of one session on the device, for up to [`BATCH`] tokens at a time.
#[derive(Debug)]
struct GScratch {
    /// `[BATCH][2]` i32: token t at `2t`; the position of the first token at 1.
    step: DPtr,
    x: DPtr,
    xb: DPtr,
    xb2: DPtr,
    h1: DPtr,
    h2: DPtr,
    q: DPtr,
    k: DPtr,
    v: DPtr,
    att_out: DPtr,
    att: DPtr,
    /// Split attention's parts: max, sum `[BATCH][n_heads][parts]`, output (`· head_dim`).
    part_m: DPtr,
    part_l: DPtr,
    part_o: DPtr,
    act_q: DPtr,
    act_d: DPtr,
    zx: DPtr,
    y: DPtr,
    /// `[BATCH][conv_dim]`: the conv'd x, B, C of a batch (the chunked scan's input).
    xbc: DPtr,
    router: DPtr,
    idx: DPtr,
    wt: DPtr,
    alpha: DPtr,
    logits: DPtr,
    trace: DPtr,
    /// A DMA batch (`dma_plan`): scores `[BATCH][n_kv]`, entries held before it `[n_kv]`, when
    /// each cache slot's entry leaves `[n_kv][keep_window]`, and when each token leaves and its
    /// slot `[n_kv][BATCH]` (i32).
    dma_sc: DPtr,
    dma_olen: DPtr,
    dma_vend: DPtr,
    dma_bend: DPtr,
    dma_bslot: DPtr,
}

/// Dynamic shared memory of `dma_plan` (its layout in kernels.cu) for a keep window, or `None`
/// when it does not fit the default 48 KiB: such models insert and attend token by token.
fn dma_plan_smem(keep_window: usize) -> Option<usize> {
    let n2 = keep_window.max(1).next_power_of_two();
    let bytes = n2 * (8 + 2) + BATCH * (8 + 4 * 4);
    (BATCH <= SPAN && bytes <= 48 * 1024).then_some(bytes)
}

/// The persistent decode kernel of a model whose layers are all SSD mixers without a
/// feed-forward block (`ssd_decode` in kernels.cu): one cooperative launch per token instead of
/// five per layer, with grid barriers between its stages.
#[derive(Debug)]
struct Fused {
    /// The kernel's argument block (`SsdDecodeArgs`, then the layers' `SsdLayerArgs`).
    args: DPtr,
    /// The barrier counter, zeroed before each launch.
    bar: DPtr,
    /// Profiling timestamps (0 when off) and the number of barriers.
    times: (DPtr, usize),
    /// The timestamps are every block's marks (`CHEEMS_CUDA_FUSED_TIMES=2`).
    phases: bool,
    grid: usize,
    block: usize,
    smem: usize,
}

/// Words (8 bytes) of one layer's `SsdLayerArgs` in kernels.cu.
const LAYER_WORDS: usize = 19;

/// Threads per block of `ssd_decode`.
const FUSED_BLOCK: usize = 512;

/// Plans `ssd_decode` for a session, or `None` when the model is not all SSD layers without a
/// feed-forward block, or `CHEEMS_CUDA_FUSED=0`. `CHEEMS_CUDA_FUSED_BPS` sets the blocks per
/// multiprocessor (default 1, at most what fits).
fn plan_fused(
    w: &GpuWeights,
    c: &Config,
    states: &[GState],
    s: &GScratch,
    pool: &mut Pool,
) -> Result<Option<Fused>> {
    let mode = std::env::var("CHEEMS_CUDA_FUSED").unwrap_or_default();
    if mode == "0" {
        return Ok(None);
    }
    let why = plan_fused_or_why(w, c, states, s, pool)?;
    match why {
        Ok(f) => Ok(Some(f)),
        // `CHEEMS_CUDA_FUSED=1` insists (for benchmarks and tests).
        Err(why) if mode == "1" => bail!("CHEEMS_CUDA_FUSED=1, but {why}"),
        Err(_) => Ok(None),
    }
}

fn plan_fused_or_why(
    w: &GpuWeights,
    c: &Config,
    states: &[GState],
    s: &GScratch,
    pool: &mut Pool,
) -> Result<std::result::Result<Fused, String>> {
    let Some(sc) = c.ssd else {
        return Ok(Err("the model has no SSD layers".into()));
    };
    let gpu = &*w.gpu;
    let mut layers: Vec<u64> = Vec::new();
    for (layer, st) in w.layers.iter().zip(states) {
        let (
            GMixer::Ssd {
                in_proj,
                in_bias,
                conv_w,
                conv_b,
                dt_bias,
                a,
                d,
                norm,
                out_proj,
                out_bias,
                rope_inv_freq,
            },
            GState::Ssd { conv, ssm },
            None,
        ) = (&layer.mixer, st, &layer.ffn)
        else {
            return Ok(Err(
                "not every layer is an SSD mixer without a feed-forward block".into(),
            ));
        };
        layers.extend([
            layer.attn_norm,
            layer.attn_residual,
            in_proj.ptr,
            in_proj.row_bytes as u64,
            in_proj.ty as u64,
            *in_bias,
            out_proj.ptr,
            out_proj.row_bytes as u64,
            out_proj.ty as u64,
            *out_bias,
            *conv_w,
            *conv_b,
            *rope_inv_freq,
            *dt_bias,
            *a,
            *d,
            *norm,
            *conv,
            *ssm,
        ]);
    }
    let (d, di) = (c.d_model, sc.d_inner);
    let widest = d.max(di);
    // Shared memory (see the kernel): activation and norm weights, int8 blocks and their
    // scales, every layer's 19 argument words.
    let smem = 2 * widest * 4
        + widest.next_multiple_of(16)
        + (widest / 32 + 1) * 8
        + w.layers.len() * LAYER_WORDS * 8;
    // ssd_item's shared arrays: 2·d_state values of B and C, at most 256 rows of a head.
    if 2 * sc.d_state > 512 || smem > 48 * 1024 || sc.n_heads % sc.n_groups != 0 {
        return Ok(Err(format!(
            "the shape does not fit the kernel (d_state {}, {smem} bytes of shared memory)",
            sc.d_state
        )));
    }
    let func = gpu
        .funcs
        .get("ssd_decode")
        .ok_or_else(|| anyhow!("no kernel `ssd_decode`"))?;
    let mut per_sm: i32 = 0;
    // SAFETY: `f` is a function of this context's module; the call writes one int.
    unsafe {
        sys::cuOccupancyMaxActiveBlocksPerMultiprocessor(
            &mut per_sm,
            func.cu_function(),
            FUSED_BLOCK as i32,
            smem,
        )
    }
    .result()?;
    let sms = gpu
        .ctx
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
    let want = std::env::var("CHEEMS_CUDA_FUSED_BPS")
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(1);
    if per_sm < 1 || sms < 1 {
        return Ok(Err(format!(
            "no block of {FUSED_BLOCK} threads fits a multiprocessor ({per_sm} per SM, {sms} SMs)"
        )));
    }
    let per_sm = per_sm.min(want.max(1));
    // CHEEMS_CUDA_FUSED_GRID=N: at most N blocks (for measurements).
    let cap = std::env::var("CHEEMS_CUDA_FUSED_GRID")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(usize::MAX)
        .max(1);
    let grid = ((sms * per_sm) as usize).min(cap);
    // (head, part) items of the SSD stage: about one per block, at most 256 rows each.
    let parts = (grid / sc.n_heads)
        .clamp(1, sc.head_dim)
        .max(sc.head_dim.div_ceil(256));
    let bar = pool.zeros(gpu, 4)?;
    // CHEEMS_CUDA_FUSED_TIMES=1: block 0's arrival and departure at every barrier; =2: every
    // block's marks [barrier][block][8] (`phase_mark` in kernels.cu). `report_replay` prints
    // or writes them.
    let n_bar = 3 * w.layers.len() + 2;
    let times_mode = std::env::var("CHEEMS_CUDA_FUSED_TIMES").unwrap_or_default();
    let phases = times_mode == "2";
    let times = match times_mode.as_str() {
        "1" => pool.zeros(gpu, n_bar * 16)?,
        "2" => pool.zeros(gpu, n_bar * grid * 64)?,
        _ => 0,
    };
    // The L2 prefetch of what the coming stages read, issued after a block's arrival at the
    // barrier. For measurements, CHEEMS_CUDA_FUSED_PREFETCH=0: none; =1: the weights and SSD
    // states only, not the small vectors; =early: all of it, before the arrival.
    // The bits of `SsdDecodeArgs::prefetch` in kernels.cu.
    const ROWS: u64 = 1; // weights and SSD states
    const VECS: u64 = 2; // the small vectors
    const LATE: u64 = 4; // after the arrival
    const EMB_DIRECT: u64 = 8; // no barrier after the embedding
    let prefetch = match std::env::var("CHEEMS_CUDA_FUSED_PREFETCH").as_deref() {
        Ok("0") => 0,
        Ok("1") => ROWS | LATE,
        Ok("early") => ROWS | VECS,
        _ => ROWS | VECS | LATE,
    };
    // CHEEMS_CUDA_FUSED_EMB=barrier (for measurements): the barrier after the embedding kept.
    let prefetch = match std::env::var("CHEEMS_CUDA_FUSED_EMB").as_deref() {
        Ok("barrier") => prefetch,
        _ => prefetch | EMB_DIRECT,
    };
    let mut words: Vec<u64> = vec![
        0, // the layers' address, set below
        w.layers.len() as u64,
        d as u64,
        di as u64,
        sc.n_heads as u64,
        sc.head_dim as u64,
        sc.d_state as u64,
        sc.n_groups as u64,
        sc.d_conv as u64,
        sc.in_proj_rows() as u64,
        f(c.norm_eps),
        f(sc.norm_eps),
        w.embed.ty as u64,
        w.embed.ptr,
        w.embed.row_bytes as u64,
        w.output.ty as u64,
        w.output.ptr,
        w.output.row_bytes as u64,
        c.n_vocab as u64,
        w.output_norm,
        s.step,
        s.x,
        s.zx,
        s.y,
        s.logits,
        bar,
        parts as u64,
        times,
        prefetch,
    ];
    let layers_at = words.len() * 8;
    debug_assert_eq!(layers.len(), w.layers.len() * LAYER_WORDS);
    words.extend(layers);
    let bytes: Vec<u8> = words.iter().flat_map(|v| v.to_le_bytes()).collect();
    let args = pool.upload(gpu, &bytes)?;
    // The layers' address, now that the block is on the device.
    let at: Vec<u8> = (args + layers_at as u64).to_le_bytes().to_vec();
    // SAFETY: `args` holds the whole block; the first word is the layers' address.
    unsafe { cu::memcpy_htod_async(args, &at, gpu.stream.cu_stream()) }?;
    gpu.stream.synchronize()?;
    Ok(Ok(Fused {
        args,
        bar,
        times: (times, n_bar),
        phases,
        grid,
        block: FUSED_BLOCK,
        smem,
    }))
}

/// The largest d_state of `ssd_chunk_scan` (its `CHUNK_N`), and the head rows of one of its
/// blocks (`CHUNK_P`).
const CHUNK_N: usize = 128;
const CHUNK_P: usize = 16;

/// Tokens one forward call handles (a [`crate::Session`] prefill feeds chunks of this size).
pub const BATCH: usize = crate::session::MAX_BATCH;

/// `dst` from the device buffer at `src` (at least `size_of_val(dst)` bytes), on `stream`,
/// waited for.
fn dtoh_on<T>(stream: &CudaStream, dst: &mut [T], src: DPtr) -> Result<()> {
    if !dst.is_empty() {
        // SAFETY: `src` is a device buffer of at least `size_of_val(dst)` bytes (the callers'
        // buffers are sized so); the stream is synchronized before `dst` is read.
        unsafe { cu::memcpy_dtoh_async(dst, src, stream.cu_stream()) }?;
    }
    stream.synchronize()?;
    Ok(())
}

/// One sequence on the GPU: device states and scratch, sized once; the decode step's CUDA graph.
pub struct GpuSession {
    w: Arc<GpuWeights>,
    config: Config,
    /// Positions of a plain KV cache.
    ctx: usize,
    /// The most keys a query head attends to.
    max_keys: usize,
    pool: Pool,
    s: GScratch,
    states: Vec<GState>,
    /// The session's own stream (sessions on other threads never join its graph capture).
    stream: Arc<CudaStream>,
    graph: Option<CudaGraph>,
    use_graph: bool,
    /// Batches through the chunked SSD scan (`CHEEMS_CUDA_SCAN=seq`: the token-by-token one).
    chunked_scan: bool,
    /// The one-launch decode step of all-SSD models.
    fused: Option<Fused>,
    /// Host copy of the step buffer.
    step: Vec<i32>,
    /// Page-locked landing place of one token's logits (`None`: `CHEEMS_CUDA_PINNED=0`).
    pinned: Option<PinnedHostSlice<f32>>,
    /// `dma_plan`'s shared memory; `None`: DMA layers run a batch token by token.
    dma_smem: Option<usize>,
}

impl std::fmt::Debug for GpuSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuSession({:?})", self.w.gpu)
    }
}

// SAFETY: the raw CUDA handles (graph, stream, context) are only used through `&mut self` (or
// `&self` for reads that the driver serializes on the session's stream); the driver's handles
// may be used from any thread once the context is bound, which every entry point does.
unsafe impl Send for GpuSession {}

/// The pending residual add of a sublayer's output (`x = scale ⊙ x + branch`), applied by the
/// next RMSNorm: (scale or 0, branch or 0).
type Pending = (DPtr, DPtr);

impl GpuSession {
    /// Opens a session on `cuda:ordinal` with room for `ctx` positions of a plain KV cache.
    pub fn new(model: &Arc<Model>, ordinal: usize, ctx: usize) -> Result<Self> {
        let gpu = gpu(ordinal)?;
        gpu.ctx.bind_to_thread()?;
        let w = GpuWeights::get(model, &gpu)?;
        let c = model.config.clone();
        let g = &*gpu;
        let mut pool = Pool::default();
        let (f4, b) = (4usize, BATCH);
        let qd = c.n_heads * c.head_dim;
        let kvd = c.n_kv_heads * c.head_dim;
        let ssd = c.ssd;
        let widest = [c.d_model, c.d_ff, qd, ssd.map_or(0, |s| s.d_inner), kvd]
            .into_iter()
            .max()
            .unwrap_or(c.d_model);
        let max_keys = ctx.max(c.keep_window).max(1);
        // Split attention's parts: a DMA batch takes the cache's and one more for its own keys.
        let kw = c.keep_window;
        let parts = max_keys
            .div_ceil(SPAN)
            .max(if kw > 0 { kw.div_ceil(SPAN) + 1 } else { 0 });
        let nk = c.n_keys();
        let states = model
            .layers
            .iter()
            .map(|l| {
                Ok(match &l.mixer {
                    Mixer::Attention(_) => GState::Kv {
                        k: pool.zeros(g, ctx * kvd * f4)?,
                        v: pool.zeros(g, ctx * kvd * f4)?,
                    },
                    Mixer::Dma(_) => {
                        let n = c.n_kv_heads * c.keep_window;
                        GState::Dma {
                            k: pool.zeros(g, n * c.head_dim * f4)?,
                            v: pool.zeros(g, n * c.head_dim * f4)?,
                            score: pool.zeros(g, n * f4)?,
                            pos: pool.zeros(g, n * f4)?,
                            len: pool.zeros(g, c.n_kv_heads * f4)?,
                        }
                    }
                    Mixer::Ssd(s) => GState::Ssd {
                        conv: pool.zeros(g, 2 * s.cfg.conv_dim() * (s.cfg.d_conv - 1) * f4)?,
                        ssm: pool.zeros(g, s.cfg.n_heads * s.cfg.head_dim * s.cfg.d_state * f4)?,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let s = GScratch {
            step: pool.zeros(g, 2 * b * f4)?,
            x: pool.zeros(g, b * c.d_model * f4)?,
            xb: pool.zeros(g, b * c.d_model * f4)?,
            xb2: pool.zeros(g, b * c.d_model * f4)?,
            h1: pool.zeros(g, b * c.d_ff * f4)?,
            h2: pool.zeros(g, b * c.d_ff * f4)?,
            q: pool.zeros(g, b * qd * f4)?,
            k: pool.zeros(g, b * kvd * f4)?,
            v: pool.zeros(g, b * kvd * f4)?,
            att_out: pool.zeros(g, b * qd * f4)?,
            att: pool.zeros(g, b * c.n_heads * max_keys * f4)?,
            part_m: pool.zeros(g, b * c.n_heads * parts * f4)?,
            part_l: pool.zeros(g, b * c.n_heads * parts * f4)?,
            part_o: pool.zeros(g, b * c.n_heads * parts * c.head_dim * f4)?,
            act_q: pool.zeros(g, b * widest.div_ceil(32) * 32)?,
            act_d: pool.zeros(g, b * widest.div_ceil(32) * 2 * f4)?,
            zx: pool.zeros(g, b * ssd.map_or(0, |s| s.in_proj_rows()) * f4)?,
            y: pool.zeros(g, b * ssd.map_or(0, |s| s.d_inner) * f4)?,
            xbc: pool.zeros(g, b * ssd.map_or(0, |s| s.conv_dim()) * f4)?,
            router: pool.zeros(g, b * 2 * nk * f4)?,
            idx: pool.zeros(g, b * c.n_experts_used * f4)?,
            wt: pool.zeros(g, b * c.n_experts_used * f4)?,
            alpha: pool.zeros(g, b * c.n_experts_used * f4)?,
            logits: pool.zeros(g, b * c.n_vocab * f4)?,
            trace: pool.zeros(g, (c.n_layers + 1) * c.d_model * f4)?,
            dma_sc: pool.zeros(g, b * c.n_kv_heads * f4)?,
            dma_olen: pool.zeros(g, c.n_kv_heads * f4)?,
            dma_vend: pool.zeros(g, c.n_kv_heads * kw * f4)?,
            dma_bend: pool.zeros(g, c.n_kv_heads * b * f4)?,
            dma_bslot: pool.zeros(g, c.n_kv_heads * b * f4)?,
        };
        gpu.stream.synchronize()?;
        let fused = plan_fused(&w, &c, &states, &s, &mut pool)?;
        let use_graph = std::env::var("CHEEMS_CUDA_GRAPH").map_or(true, |v| v != "0");
        let pinned = if std::env::var("CHEEMS_CUDA_PINNED").is_ok_and(|v| v == "0") {
            None
        } else {
            // SAFETY: n_vocab floats of page-locked host memory (flags 0: cached, not
            // write-combined, as the host reads it), zeroed before any view of it is made.
            unsafe {
                let mut p = gpu.ctx.alloc_pinned_with_flags::<f32>(c.n_vocab, 0)?;
                std::ptr::write_bytes(p.as_mut_ptr()?, 0, c.n_vocab);
                Some(p)
            }
        };
        Ok(GpuSession {
            stream: gpu.ctx.new_stream()?,
            w,
            config: c,
            ctx,
            max_keys,
            pool,
            s,
            states,
            graph: None,
            use_graph,
            chunked_scan: std::env::var("CHEEMS_CUDA_SCAN").map_or(true, |v| v != "seq"),
            fused,
            step: vec![0; 2 * b],
            pinned,
            dma_smem: dma_plan_smem(kw),
        })
    }

    /// The device's name.
    pub fn device_name(&self) -> String {
        let fused = if self.fused.is_some() {
            ", fused SSD decode"
        } else {
            ""
        };
        format!("cuda:{} ({}{fused})", self.w.gpu.ordinal, self.w.gpu.name)
    }

    /// Device bytes: (weights, session states and scratch).
    pub fn device_bytes(&self) -> (usize, usize) {
        (self.w.bytes, self.pool.bytes)
    }

    /// Forgets the sequence (zeroes every state).
    pub fn reset(&mut self) -> Result<()> {
        self.w.gpu.ctx.bind_to_thread()?;
        for st in &self.states {
            match *st {
                GState::Kv { .. } => {}
                GState::Dma { len, .. } => self.memset(len, self.config.n_kv_heads * 4)?,
                GState::Ssd { conv, ssm } => {
                    let s = self
                        .config
                        .ssd
                        .ok_or_else(|| anyhow!("SSD config missing"))?;
                    self.memset(conv, 2 * s.conv_dim() * (s.d_conv - 1) * 4)?;
                    self.memset(ssm, s.n_heads * s.head_dim * s.d_state * 4)?;
                }
            }
        }
        self.stream.synchronize()?;
        Ok(())
    }

    fn launch(&self, name: &str, grid: (usize, usize), block: usize, args: &[u64]) -> Result<()> {
        self.w.gpu.launch(&self.stream, name, grid, block, args)
    }

    fn memset(&self, p: DPtr, bytes: usize) -> Result<()> {
        // SAFETY: `p` is a buffer of at least `bytes` bytes allocated by this session.
        unsafe { cu::memset_d8_async(p, 0, bytes, self.stream.cu_stream()) }?;
        Ok(())
    }

    fn htod<T>(&self, dst: DPtr, src: &[T]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        // SAFETY: `dst` is a device buffer of at least `size_of_val(src)` bytes; the source is
        // pageable host memory, which the driver stages before returning.
        unsafe { cu::memcpy_htod_async(dst, src, self.stream.cu_stream()) }?;
        Ok(())
    }

    /// One token's logits into `dst`, through the page-locked buffer when there is one: the
    /// copy engine writes it directly (a pageable destination goes through the driver's
    /// staging), and the host copies it on.
    fn dtoh_logits(&mut self, dst: &mut [f32]) -> Result<()> {
        match self.pinned.as_mut() {
            Some(p) if p.len() == dst.len() => {
                dtoh_on(&self.stream, p.as_mut_slice()?, self.s.logits)?;
                dst.copy_from_slice(p.as_slice()?);
                Ok(())
            }
            _ => self.dtoh(dst, self.s.logits),
        }
    }

    fn dtoh<T>(&self, dst: &mut [T], src: DPtr) -> Result<()> {
        dtoh_on(&self.stream, dst, src)
    }

    /// Runs `tokens` at positions `pos..` ([`BATCH`] at a time): the logits after the last token
    /// into `logits` (and after every token appended to `all`); with `trace`, the residual
    /// stream of the last token after the embedding and after each layer (`[L+1][d_model]`).
    /// A single token without a trace replays the decode step's CUDA graph (captured on first
    /// use).
    pub fn forward(
        &mut self,
        tokens: &[u32],
        pos: usize,
        mut all: Option<&mut Vec<f32>>,
        logits: &mut [f32],
        trace: Option<&mut [f32]>,
    ) -> Result<()> {
        let gpu = self.w.gpu.clone();
        gpu.ctx.bind_to_thread()?;
        if self
            .config
            .layer_kinds
            .contains(&crate::config::LayerKind::Attention)
            && pos + tokens.len() > self.ctx
        {
            bail!("the context is full ({} tokens)", self.ctx);
        }
        let tracing = trace.is_some();
        let v = self.config.n_vocab;
        let mut start = 0;
        while start < tokens.len() {
            let chunk = &tokens[start..(start + BATCH).min(tokens.len())];
            let n = chunk.len();
            for (t, &tok) in chunk.iter().enumerate() {
                self.step[2 * t] = tok as i32;
                self.step[2 * t + 1] = (pos + start + t) as i32;
            }
            self.htod(self.s.step, &self.step[..2 * n])?;
            let every = all.is_some();
            if n == 1 && !tracing && self.use_graph {
                if self.graph.is_none() {
                    self.stream.begin_capture(
                        sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
                    )?;
                    let r = self.launch_batch(1, false, false);
                    let g = self.stream.end_capture(sys::CUgraphInstantiate_flags(0))?;
                    r?;
                    self.graph = Some(g.ok_or_else(|| anyhow!("capturing the decode graph"))?);
                    self.report_replay()?;
                }
                if let Some(g) = &self.graph {
                    g.launch()?;
                }
            } else {
                self.launch_batch(n, tracing, every)?;
            }
            if let Some(a) = all.as_mut() {
                let at = a.len();
                a.resize(at + n * v, 0.0);
                self.dtoh(&mut a[at..], self.s.logits)?;
                logits.copy_from_slice(&a[at + (n - 1) * v..]);
            } else if start + n == tokens.len() {
                self.dtoh_logits(logits)?;
            }
            start += n;
        }
        if let Some(tr) = trace {
            self.dtoh(tr, self.s.trace)?;
        }
        Ok(())
    }

    /// With `CHEEMS_CUDA_REPLAY=N`, right after the decode graph is captured: replays it N times
    /// back to back (the same token and position, so the session's state is not meaningful
    /// afterwards: for benchmarks, which reset after their warm-up) and prints the device time
    /// per step to stderr.
    fn report_replay(&self) -> Result<()> {
        let Some(n) = std::env::var("CHEEMS_CUDA_REPLAY")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
        else {
            return Ok(());
        };
        let Some(g) = &self.graph else {
            return Ok(());
        };
        g.launch()?;
        self.stream.synchronize()?;
        let t0 = std::time::Instant::now();
        for _ in 0..n {
            g.launch()?;
        }
        self.stream.synchronize()?;
        let us = t0.elapsed().as_secs_f64() * 1e6 / n.max(1) as f64;
        eprintln!("cuda graph replay: {us:.1} us per decode step ({n} replays)");
        if let Some(fz) = self
            .fused
            .as_ref()
            .filter(|fz| fz.times.0 != 0 && fz.phases)
        {
            // The last replay's marks, raw for tools/cuda/phases.py: little-endian u64, the
            // number of barriers and of blocks, then [barrier][block][8].
            let mut t = vec![0u64; 8 * fz.times.1 * fz.grid];
            self.dtoh(&mut t, fz.times.0)?;
            let path = std::env::var("CHEEMS_CUDA_PHASES_OUT")
                .unwrap_or_else(|_| "fused-phases.bin".into());
            let head = [fz.times.1 as u64, fz.grid as u64];
            let bytes: Vec<u8> = head
                .iter()
                .chain(&t)
                .flat_map(|v| v.to_le_bytes())
                .collect();
            std::fs::write(&path, bytes).with_context(|| format!("writing {path}"))?;
            eprintln!(
                "fused phases: {} barriers x {} blocks written to {path}",
                fz.times.1, fz.grid
            );
            return Ok(());
        }
        if let Some(fz) = self.fused.as_ref().filter(|fz| fz.times.0 != 0) {
            let mut t = vec![0u64; 2 * fz.times.1];
            self.dtoh(&mut t, fz.times.0)?;
            // Stage k runs from leaving barrier k-1 to leaving barrier k; block 0's own share
            // ends at its arrival. Stages: embed, then per layer norm+in_proj, SSD,
            // gate+out_proj, then the head.
            let names = ["norm+in_proj", "ssd", "gate+out_proj"];
            let mut sums = [(0f64, 0f64); 4];
            for k in 1..fz.times.1 {
                let (arrive, leave, prev) = (t[2 * k], t[2 * k + 1], t[2 * k - 1]);
                let which = if k + 1 == fz.times.1 { 3 } else { (k - 1) % 3 };
                sums[which].0 += leave.saturating_sub(prev) as f64 / 1e3;
                sums[which].1 += arrive.saturating_sub(prev) as f64 / 1e3;
            }
            let layers = (fz.times.1 - 2) / 3;
            for (i, (all, own)) in sums.iter().enumerate() {
                let (name, per) = if i == 3 {
                    ("head", 1)
                } else {
                    (names[i], layers)
                };
                eprintln!(
                    "fused stage {name}: {:.2} us (block 0 busy {:.2} us) x {per}",
                    all / per as f64,
                    own / per as f64
                );
            }
            eprintln!(
                "fused total {:.1} us, embed {:.2} us",
                (t[2 * fz.times.1 - 1] - t[1]) as f64 / 1e3,
                (t[1] - t[0]) as f64 / 1e3
            );
        }
        Ok(())
    }

    /// Products of up to three matrices with the same `n` input rows `x`; `quantize`: make
    /// the int8 activation blocks from `x` first (else they hold `x` already).
    fn products(
        &self,
        x: DPtr,
        n: usize,
        ws: &[(&GMat, DPtr, DPtr)],
        quantize: bool,
    ) -> Result<()> {
        let act = (self.s.act_q, self.s.act_d);
        launch_products(&self.w.gpu, &self.stream, ws, x, n, act, quantize)
    }

    /// `x = scale ⊙ x + branch` (the pending residual, if any), then `out = RMSNorm(x) ⊙ w` for
    /// `n` rows, and the int8 blocks of `out` when `quantize`.
    fn add_norm(
        &self,
        pending: Pending,
        w: DPtr,
        out: DPtr,
        n: usize,
        quantize: bool,
    ) -> Result<()> {
        let d = self.config.d_model;
        let (q, qd) = if quantize {
            (self.s.act_q, self.s.act_d)
        } else {
            (0, 0)
        };
        self.launch(
            "add_rmsnorm",
            (n, 1),
            256,
            &[
                self.s.x,
                pending.0,
                pending.1,
                w,
                f(self.config.norm_eps),
                out,
                i(d),
                q,
                qd,
            ],
        )
    }

    /// Applies a pending residual add now (for traces).
    fn flush(&self, pending: Pending, n: usize) -> Result<()> {
        if pending.1 == 0 {
            return Ok(());
        }
        let len = n * self.config.d_model;
        self.launch(
            "residual",
            (len.div_ceil(256), 1),
            256,
            &[
                self.s.x,
                pending.0,
                pending.1,
                i(len),
                i(self.config.d_model),
            ],
        )
    }

    /// `out = MLP(x)` for `n` rows whose int8 blocks are ready when the MLP is quantized.
    fn mlp(&self, m: &GMlp, x: DPtr, n: usize, out: DPtr) -> Result<()> {
        let s = &self.s;
        self.products(x, n, &[(&m.gate, s.h1, 0), (&m.up, s.h2, 0)], false)?;
        let len = n * m.gate.rows;
        if m.down.quantized() {
            self.launch(
                "silu_mul_q8",
                (len.div_ceil(32 * 4), 1),
                128,
                &[s.h1, s.h2, i(len), s.act_q, s.act_d],
            )?;
        } else {
            self.launch(
                "silu_mul",
                (len.div_ceil(256), 1),
                256,
                &[s.h1, s.h2, i(len)],
            )?;
        }
        self.products(s.h1, n, &[(&m.down, out, 0)], false)
    }

    /// RoPE (after the per-head norm for DMA) of the step's Q and K rows; with `cache`, K and
    /// V are appended to the plain KV cache too.
    fn qk_rope(&self, n: usize, norms: (DPtr, DPtr), cache: (DPtr, DPtr)) -> Result<()> {
        let c = &self.config;
        let Some(r) = &c.rope else {
            bail!("attention without RoPE");
        };
        let (df, dorig) = r.dynamic.unwrap_or((0.0, 0));
        let pairing = usize::from(r.pairing == RopePairing::Adjacent);
        let s = &self.s;
        self.launch(
            "qk_rope",
            (c.n_heads + c.n_kv_heads, n),
            128,
            &[
                s.q,
                s.k,
                s.v,
                i(c.n_heads),
                i(c.n_kv_heads),
                i(c.head_dim),
                norms.0,
                norms.1,
                f(c.norm_eps),
                i(r.dim),
                i(pairing),
                s.step,
                self.w.rope_inv_freq,
                f(r.theta),
                f(r.linear_factor),
                f(df),
                i(dorig),
                cache.0,
                cache.1,
            ],
        )
    }

    /// Attention of tokens `t0..t0 + n` over a cache (see the kernel), writing `att_out` and,
    /// when `quantize`, its int8 blocks.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        t0: usize,
        n: usize,
        kc: DPtr,
        vc: DPtr,
        strides: (usize, usize),
        lens: DPtr,
        bias: (DPtr, usize),
        quantize: bool,
    ) -> Result<()> {
        let c = &self.config;
        let s = &self.s;
        let (q8, d8) = if quantize && c.head_dim.is_multiple_of(32) {
            (s.act_q, s.act_d)
        } else {
            (0, 0)
        };
        let args = AttnArgs {
            q: s.q,
            kc,
            vc,
            out: s.att_out,
            att: s.att,
            n_heads: c.n_heads,
            group: c.n_heads / c.n_kv_heads,
            hd: c.head_dim,
            strides,
            lens,
            bias,
            max_keys: self.max_keys,
            step: s.step,
            t0,
            n,
            parts: (s.part_m, s.part_l, s.part_o),
            q8: (q8, d8),
        };
        launch_attention(&self.w.gpu, &self.stream, &args)
    }

    /// A DMA layer for a batch of `n` tokens (their Q, K, V in the scratch after norm and RoPE)
    /// in five launches with the sequential inserts' results (see `dma_plan` in kernels.cu): the
    /// scores of every token, the plan (when each cache entry and token is in the cache, the
    /// tokens' slots, the new lengths), the attention of every query over the entries present at
    /// its time, and the commit of the tokens that stay (after the attention read the old
    /// entries). `cache`: the layer's keys, values, scores, positions and lengths.
    fn dma_batch(
        &self,
        n: usize,
        (dt, dt_bias, a): (&GMat, DPtr, DPtr),
        cache: [DPtr; 5],
        smem: usize,
        quantize: bool,
    ) -> Result<()> {
        let c = &self.config;
        let s = &self.s;
        let gpu = &self.w.gpu;
        let [kc, vc, score, pos, len] = cache;
        let (kw, hd, n_kv) = (c.keep_window, c.head_dim, c.n_kv_heads);
        self.launch(
            "dma_scores",
            (n_kv, n),
            256,
            &[
                s.v,
                i(dt.ty as usize),
                dt.ptr,
                dt.row_bytes as u64,
                dt_bias,
                a,
                i(n_kv),
                i(hd),
                s.dma_sc,
            ],
        )?;
        gpu.launch_ex(
            &self.stream,
            "dma_plan",
            (n_kv, 1, 1),
            1024,
            (smem, false),
            &[
                s.dma_sc,
                score,
                pos,
                len,
                i(kw),
                i(n_kv),
                i(n),
                s.step,
                s.dma_olen,
                s.dma_vend,
                s.dma_bend,
                s.dma_bslot,
            ],
        )?;
        let n_parts = kw.div_ceil(SPAN) + 1;
        gpu.launch3(
            &self.stream,
            "dma_attn",
            (c.n_heads, n, n_parts),
            256,
            &[
                s.q,
                kc,
                vc,
                score,
                s.k,
                s.v,
                s.dma_sc,
                s.dma_olen,
                s.dma_vend,
                s.dma_bend,
                i(c.n_heads / n_kv),
                i(hd),
                i(n_kv),
                i(kw),
                f(1.0 / (hd as f32).sqrt()),
                i(SPAN),
                i(n_parts),
                s.part_m,
                s.part_l,
                s.part_o,
            ],
        )?;
        let (q8, d8) = if quantize && hd.is_multiple_of(32) {
            (s.act_q, s.act_d)
        } else {
            (0, 0)
        };
        self.launch(
            "attn_combine",
            (c.n_heads, n),
            128,
            &[
                s.part_m,
                s.part_l,
                s.part_o,
                i(n_parts),
                i(hd),
                s.att_out,
                0,
                q8,
                d8,
            ],
        )?;
        self.launch(
            "dma_commit",
            (n_kv, n),
            128,
            &[
                s.k,
                s.v,
                s.dma_sc,
                s.dma_bend,
                s.dma_bslot,
                kc,
                vc,
                score,
                pos,
                i(kw),
                i(hd),
                i(n_kv),
                i(n),
                s.step,
            ],
        )
    }

    /// Every launch of the forward pass of the `n` tokens in the step buffer (a fixed sequence
    /// for a given `n`: the decode graph is the one for `n = 1`). With `every`, the logits of
    /// every token, else of the last one (at row 0 of `logits`).
    fn launch_batch(&self, n: usize, trace: bool, every: bool) -> Result<()> {
        if let (1, false, Some(fz)) = (n, trace, &self.fused) {
            self.memset(fz.bar, 4)?;
            return self.w.gpu.launch_ex(
                &self.stream,
                "ssd_decode",
                (fz.grid, 1, 1),
                fz.block,
                (fz.smem, true),
                &[fz.args],
            );
        }
        let c = &self.config;
        let w = &*self.w;
        let s = &self.s;
        let d = c.d_model;
        let (hd, kvd) = (c.head_dim, c.n_kv_heads * c.head_dim);
        let copy_trace = |l: usize| -> Result<()> {
            if trace {
                // SAFETY: `trace` holds (L+1)·d floats and `x` BATCH·d floats, both device
                // buffers of this session; row n-1 is within the batch.
                unsafe {
                    cu::memcpy_dtod_async(
                        s.trace + (l * d * 4) as u64,
                        s.x + ((n - 1) * d * 4) as u64,
                        d * 4,
                        self.stream.cu_stream(),
                    )
                }?;
            }
            Ok(())
        };
        self.launch(
            "embed",
            (d.div_ceil(256), n),
            256,
            &[
                i(w.embed.ty as usize),
                w.embed.ptr,
                w.embed.row_bytes as u64,
                s.step,
                s.x,
                i(d),
            ],
        )?;
        copy_trace(0)?;
        let mut pending: Pending = (0, 0);
        for (l, (layer, st)) in w.layers.iter().zip(&self.states).enumerate() {
            match (&layer.mixer, st) {
                (GMixer::Attention(p), GState::Kv { k, v }) => {
                    let q8 = any_quantized(&[&p.q, &p.k, &p.v]);
                    self.add_norm(pending, layer.attn_norm, s.xb, n, q8)?;
                    let qkv = [
                        (&p.q, s.q, p.q_bias),
                        (&p.k, s.k, p.k_bias),
                        (&p.v, s.v, p.v_bias),
                    ];
                    self.products(s.xb, n, &qkv, false)?;
                    self.qk_rope(n, (0, 0), (*k, *v))?;
                    self.attend(0, n, *k, *v, (hd, kvd), 0, (0, 0), p.o.quantized())?;
                    let quantized_here = p.o.quantized() && !hd.is_multiple_of(32);
                    self.products(s.att_out, n, &[(&p.o, s.xb2, p.o_bias)], quantized_here)?;
                }
                (
                    GMixer::Dma {
                        proj,
                        q_norm,
                        k_norm,
                        dt,
                        dt_bias,
                        a,
                    },
                    GState::Dma {
                        k,
                        v,
                        score,
                        pos,
                        len,
                    },
                ) => {
                    let p = proj;
                    let q8 = any_quantized(&[&p.q, &p.k, &p.v]);
                    self.add_norm(pending, layer.attn_norm, s.xb, n, q8)?;
                    let qkv = [
                        (&p.q, s.q, p.q_bias),
                        (&p.k, s.k, p.k_bias),
                        (&p.v, s.v, p.v_bias),
                    ];
                    self.products(s.xb, n, &qkv, false)?;
                    self.qk_rope(n, (*q_norm, *k_norm), (0, 0))?;
                    let kw = c.keep_window;
                    if let Some(smem) = self.dma_smem.filter(|_| n > 1) {
                        let cache = [*k, *v, *score, *pos, *len];
                        self.dma_batch(n, (dt, *dt_bias, *a), cache, smem, p.o.quantized())?;
                    } else {
                        for t in 0..n {
                            self.launch(
                                "dma_insert",
                                (c.n_kv_heads, 1),
                                256,
                                &[
                                    s.k,
                                    s.v,
                                    i(dt.ty as usize),
                                    dt.ptr,
                                    dt.row_bytes as u64,
                                    *dt_bias,
                                    *a,
                                    *k,
                                    *v,
                                    *score,
                                    *pos,
                                    *len,
                                    i(kw),
                                    i(hd),
                                    i(c.n_kv_heads),
                                    i(t),
                                    s.step,
                                ],
                            )?;
                            self.attend(
                                t,
                                1,
                                *k,
                                *v,
                                (kw * hd, hd),
                                *len,
                                (*score, kw),
                                p.o.quantized(),
                            )?;
                        }
                    }
                    let quantized_here = p.o.quantized() && !hd.is_multiple_of(32);
                    self.products(s.att_out, n, &[(&p.o, s.xb2, p.o_bias)], quantized_here)?;
                }
                (
                    GMixer::Ssd {
                        in_proj,
                        in_bias,
                        conv_w,
                        conv_b,
                        dt_bias,
                        a,
                        d: dskip,
                        norm,
                        out_proj,
                        out_bias,
                        rope_inv_freq,
                    },
                    GState::Ssd { conv, ssm },
                ) => {
                    let sc = c.ssd.ok_or_else(|| anyhow!("SSD config missing"))?;
                    let (di, rows) = (sc.d_inner, sc.in_proj_rows());
                    self.add_norm(pending, layer.attn_norm, s.xb, n, in_proj.quantized())?;
                    self.products(s.xb, n, &[(in_proj, s.zx, *in_bias)], false)?;
                    // The kernels' arguments, with the token (ssd_fused) or the token count
                    // (ssd_scan) at `t`.
                    let args = |t: usize| {
                        [
                            s.zx,
                            i(rows),
                            *conv,
                            *conv_w,
                            *conv_b,
                            *rope_inv_freq,
                            *dt_bias,
                            *a,
                            *dskip,
                            *ssm,
                            s.y,
                            i(sc.head_dim),
                            i(sc.d_state),
                            i(sc.n_groups),
                            i(di),
                            i(sc.d_conv),
                            i(t),
                            s.step,
                        ]
                    };
                    let cd = sc.conv_dim();
                    let batched = n > 1 && sc.d_state <= 256 && sc.d_conv <= 9;
                    if batched && sc.d_state <= CHUNK_N && self.chunked_scan {
                        // A batch in the chunked matrix form: the conv of every token at once,
                        // then chunks of 32 tokens per (head, CHUNK_P rows) block.
                        self.launch(
                            "ssd_conv_all",
                            (cd.div_ceil(256), n),
                            256,
                            &[
                                s.zx,
                                i(rows),
                                *conv,
                                *conv_w,
                                *conv_b,
                                i(cd),
                                i(di),
                                i(sc.d_conv),
                                s.step,
                                s.xbc,
                            ],
                        )?;
                        self.launch(
                            "ssd_chunk_scan",
                            (sc.n_heads, sc.head_dim.div_ceil(CHUNK_P)),
                            256,
                            &[
                                s.xbc,
                                i(cd),
                                s.zx,
                                i(rows),
                                *rope_inv_freq,
                                *dt_bias,
                                *a,
                                *dskip,
                                *ssm,
                                s.y,
                                i(sc.head_dim),
                                i(sc.d_state),
                                i(sc.n_groups),
                                i(di),
                                i(n),
                                s.step,
                            ],
                        )?;
                    } else if batched {
                        // A batch: the recurrence token by token in one launch.
                        let nw = 8;
                        let grid = (sc.n_heads, sc.head_dim.div_ceil(nw));
                        self.launch("ssd_scan", grid, 32 * nw, &args(n))?;
                    }
                    if batched {
                        // Then the conv history.
                        self.launch(
                            "ssd_conv_hist",
                            (cd.div_ceil(256), 1),
                            256,
                            &[
                                s.zx,
                                i(rows),
                                *conv,
                                i(cd),
                                i(di),
                                i(sc.d_conv),
                                i(n),
                                s.step,
                            ],
                        )?;
                    } else {
                        for t in 0..n {
                            let grid = (sc.n_heads, sc.head_dim.div_ceil(8));
                            self.launch("ssd_fused", grid, 256, &args(t))?;
                        }
                    }
                    let gs = di / sc.n_groups;
                    let q8 = out_proj.quantized() && gs.is_multiple_of(32);
                    let (q, qd) = if q8 { (s.act_q, s.act_d) } else { (0, 0) };
                    self.launch(
                        "gate_norm",
                        (sc.n_groups, n),
                        256,
                        &[s.y, s.zx, i(rows), *norm, f(sc.norm_eps), i(di), q, qd],
                    )?;
                    let quantize = out_proj.quantized() && !q8;
                    self.products(s.y, n, &[(out_proj, s.xb2, *out_bias)], quantize)?;
                }
                _ => bail!("layer {l}: state does not match its mixer"),
            }
            pending = (layer.attn_residual, s.xb2);
            if let Some((norm, res, ffn)) = &layer.ffn {
                match ffn {
                    GFfn::Mlp(m) => {
                        let q8 = any_quantized(&[&m.gate, &m.up]);
                        self.add_norm(pending, *norm, s.xb, n, q8)?;
                        self.mlp(m, s.xb, n, s.xb2)?;
                    }
                    GFfn::CdMoe {
                        shared,
                        router,
                        ty,
                        down,
                        up,
                        stride,
                        n_keys,
                        n_used,
                    } => {
                        let q8 = any_quantized(&[router, &shared.gate, &shared.up]);
                        self.add_norm(pending, *norm, s.xb, n, q8)?;
                        self.products(s.xb, n, &[(router, s.router, 0)], false)?;
                        self.launch(
                            "moe_route",
                            (n, 1),
                            256,
                            &[s.router, i(*n_keys), i(*n_used), s.idx, s.wt],
                        )?;
                        self.mlp(shared, s.xb, n, s.xb2)?;
                        self.launch(
                            "moe_alpha",
                            (*n_used, n),
                            128,
                            &[
                                i(*ty as usize),
                                *down,
                                *stride as u64,
                                s.xb,
                                i(d),
                                s.idx,
                                s.wt,
                                s.alpha,
                                i(*n_used),
                            ],
                        )?;
                        self.launch(
                            "moe_up",
                            (d.div_ceil(256), n),
                            256,
                            &[
                                i(*ty as usize),
                                *up,
                                *stride as u64,
                                s.idx,
                                s.alpha,
                                s.xb2,
                                i(d),
                                i(*n_used),
                            ],
                        )?;
                    }
                }
                pending = (*res, s.xb2);
            }
            if trace {
                self.flush(pending, n)?;
                pending = (0, 0);
            }
            copy_trace(l + 1)?;
        }
        let q8 = w.output.quantized();
        self.add_norm(pending, w.output_norm, s.xb, n, q8)?;
        if every {
            self.products(s.xb, n, &[(&w.output, s.logits, 0)], false)
        } else {
            // Only the last row: its activation and int8 blocks sit at row n-1.
            let off = n - 1;
            let act = (
                s.act_q + (off * d) as u64,
                s.act_d + (off * (d / 32) * 8) as u64,
            );
            let x = s.xb + (off * d * 4) as u64;
            launch_products(
                &w.gpu,
                &self.stream,
                &[(&w.output, s.logits, 0)],
                x,
                1,
                act,
                false,
            )
        }
    }

    /// The device state as a snapshot's layers (KV caches as far as `pos`).
    pub fn download(&self, model: &Model, pos: usize) -> Result<Vec<State>> {
        self.w.gpu.ctx.bind_to_thread()?;
        let c = &self.config;
        let kvd = c.n_kv_heads * c.head_dim;
        let mut out = Vec::with_capacity(self.states.len());
        for (st, l) in self.states.iter().zip(&model.layers) {
            out.push(match (st, &l.mixer) {
                (GState::Kv { k, v }, _) => {
                    let mut kv = KvCache::new(pos.max(1), kvd);
                    self.dtoh(&mut kv.k[..pos * kvd], *k)?;
                    self.dtoh(&mut kv.v[..pos * kvd], *v)?;
                    kv.len = pos;
                    State::Kv(kv)
                }
                (
                    GState::Dma {
                        k,
                        v,
                        score,
                        pos: p,
                        len,
                    },
                    _,
                ) => {
                    let mut dc = DmaCache::new(c);
                    self.dtoh(&mut dc.k, *k)?;
                    self.dtoh(&mut dc.v, *v)?;
                    self.dtoh(&mut dc.score, *score)?;
                    let mut ip = vec![0i32; dc.pos.len()];
                    self.dtoh(&mut ip, *p)?;
                    dc.pos = ip.iter().map(|&x| x.max(0) as usize).collect();
                    let mut il = vec![0i32; dc.len.len()];
                    self.dtoh(&mut il, *len)?;
                    dc.len = il.iter().map(|&x| x.max(0) as usize).collect();
                    State::Dma(dc)
                }
                (GState::Ssd { conv, ssm }, Mixer::Ssd(s)) => {
                    let mut ss = SsdState::new(&s.cfg);
                    let half = (ss.conv.len() * 4 * (pos & 1)) as u64;
                    self.dtoh(&mut ss.conv, *conv + half)?;
                    self.dtoh(&mut ss.ssm, *ssm)?;
                    State::Ssd(ss)
                }
                _ => bail!("a layer's device state does not match its mixer"),
            });
        }
        Ok(out)
    }

    /// Loads the device state from the host's (checked to fit by the caller) for a sequence at
    /// position `pos`.
    pub fn upload(&mut self, states: &[State], pos: usize) -> Result<()> {
        self.w.gpu.ctx.bind_to_thread()?;
        for (st, from) in self.states.iter().zip(states) {
            match (st, from) {
                (GState::Kv { k, v }, State::Kv(kv)) => {
                    let n = kv.len * (kv.k.len() / kv.capacity.max(1));
                    if kv.len > self.ctx {
                        bail!(
                            "the state holds {} positions, the GPU cache {}",
                            kv.len,
                            self.ctx
                        );
                    }
                    self.htod(*k, &kv.k[..n])?;
                    self.htod(*v, &kv.v[..n])?;
                }
                (
                    GState::Dma {
                        k,
                        v,
                        score,
                        pos,
                        len,
                    },
                    State::Dma(dc),
                ) => {
                    self.htod(*k, &dc.k)?;
                    self.htod(*v, &dc.v)?;
                    self.htod(*score, &dc.score)?;
                    let ip: Vec<i32> = dc.pos.iter().map(|&x| x as i32).collect();
                    let il: Vec<i32> = dc.len.iter().map(|&x| x as i32).collect();
                    self.htod(*pos, &ip)?;
                    self.htod(*len, &il)?;
                    self.stream.synchronize()?;
                }
                (GState::Ssd { conv, ssm }, State::Ssd(ss)) => {
                    let half = (ss.conv.len() * 4 * (pos & 1)) as u64;
                    self.htod(*conv + half, &ss.conv)?;
                    self.htod(*ssm, &ss.ssm)?;
                }
                _ => bail!("a layer's state does not match its mixer"),
            }
        }
        self.stream.synchronize()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parameter names of the product kernel that `macro` defines in kernels.cu.
    fn kernel_params(macro_name: &str) -> Vec<String> {
        let at = SOURCE
            .find(&format!("#define {macro_name}("))
            .unwrap_or_else(|| panic!("no macro {macro_name} in kernels.cu"));
        let from = at + SOURCE[at..].find("name(").expect("the kernel's name(") + 5;
        let to = from + SOURCE[from..].find(')').expect("the parameter list's end");
        SOURCE[from..to]
            .split(',')
            .map(|p| {
                p.replace('\\', " ")
                    .split_whitespace()
                    .last()
                    .expect("a parameter name")
                    .trim_start_matches('*')
                    .to_string()
            })
            .collect()
    }

    /// The value of `#define name` in kernels.cu.
    fn define(name: &str) -> usize {
        let at = SOURCE
            .find(&format!("#define {name} "))
            .unwrap_or_else(|| panic!("no #define {name} in kernels.cu"));
        SOURCE[at..]
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("#define {name}: not a number"))
    }

    /// The host's copies of the kernels' tile shapes: the launch grids divide by them.
    #[test]
    fn tile_constants_match_the_kernels() {
        assert_eq!(MMA_TILE, (define("MQ_BM"), define("MQ_BN")));
        assert_eq!((CHUNK_N, CHUNK_P), (define("CHUNK_N"), define("CHUNK_P")));
    }

    /// `product_args` puts every word where the four product kernels' signatures expect it:
    /// distinct values in, read back by parameter name.
    #[test]
    fn product_args_follow_the_kernel_signatures() {
        let m = [(100, 200, 300, 1), (101, 201, 301, 2), (102, 202, 302, 3)];
        for (macro_name, input, names, tail, tail_names) in [
            (
                "MMVQ3",
                &[500u64, 501][..],
                &["q", "d"][..],
                &[600u64, 601][..],
                &["nc", "wpr"][..],
            ),
            ("MVF3", &[500], &["x"], &[600, 601], &["nc", "wpr"]),
            ("MMQ3", &[500, 501], &["q", "d"], &[600], &["n"]),
            ("MMF3", &[500], &["x"], &[600], &["n"]),
        ] {
            let params = kernel_params(macro_name);
            let (a, len) = product_args(&m, 7, input, [400, 401, 402], 9, tail);
            assert_eq!(len, params.len(), "{macro_name}: {params:?}");
            let mut want: HashMap<&str, u64> = HashMap::from([
                ("w0", 100),
                ("w1", 101),
                ("w2", 102),
                ("rb", 7),
                ("y0", 400),
                ("y1", 401),
                ("y2", 402),
                ("r0", 1),
                ("r1", 2),
                ("r2", 3),
                ("b0", 300),
                ("b1", 301),
                ("b2", 302),
                (if input.len() == 2 { "nb" } else { "cols" }, 9),
            ]);
            want.extend(names.iter().copied().zip(input.iter().copied()));
            want.extend(tail_names.iter().copied().zip(tail.iter().copied()));
            for (p, v) in params.iter().zip(&a[..len]) {
                assert_eq!(want.get(p.as_str()), Some(v), "{macro_name}: parameter {p}");
            }
        }
    }
}
