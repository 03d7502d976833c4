//! Runtime SIMD dispatch: the instruction-set level is detected once, and each level has a static
//! table of row kernels (one per weight type) that [`crate::matvec`] calls through.
//!
//! Design (the pulp/gemm pattern, written with `std::arch`): every SIMD kernel is an
//! `unsafe fn` compiled with `#[target_feature(enable = ...)]` for its level, so the whole loop
//! nest is generated for that instruction set and intrinsics inline; the tables hold plain
//! `unsafe fn` pointers, and a table is only ever handed out for a level that
//! [`Level::is_supported`] confirmed on this CPU. We use `std::arch` directly rather than
//! pulp's `Simd` types because the integer kernels need `vpmaddubsw`, `vpdpbusd`, `vpsignb`,
//! `vpsrlvq` and byte shuffles that pulp does not wrap; detection is
//! `is_x86_feature_detected!`, cached in a `OnceLock`.
//!
//! Levels, best first: `avx512-vnni` (AVX-512 F/BW/VL/VNNI plus AVX2/FMA/F16C), `avx2`
//! (AVX2/FMA/F16C), `neon` (aarch64 baseline), `scalar` (the [`crate::reference`] twins). The
//! active level is the best supported one, or a lower one named by the environment variable
//! `CHEEMS_KERNEL_LEVEL` (`scalar`, `avx2`, `avx512`, `neon`), or one set with [`force_level`].
//! With `CHEEMS_VERBOSE` set, the chosen level is printed to stderr once. On top of `avx512-vnni`,
//! the F16/BF16 prefill products use AMX-BF16 tiles where the CPU and OS allow it ([`amx`];
//! `CHEEMS_AMX=0` turns them off).
//!
//! Not here: the kernels themselves (the private `x86` and `neon` modules) and the activation
//! conversion ([`crate::matvec::Activation`]).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use cheems_formats::GgmlType;

/// An instruction-set level with its own kernel table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Level {
    /// The scalar reference twins ([`crate::reference`]).
    Scalar,
    /// x86-64 AVX2 + FMA + F16C: `vpmaddubsw`/`vpmaddwd` integer dots, 256-bit FMA.
    Avx2,
    /// AVX-512 F/BW/VL/VNNI on top of AVX2: `vpdpbusd` integer dots, 512-bit where it pays.
    Avx512Vnni,
    /// aarch64 Advanced SIMD (baseline; compile-checked in CI, not run on x86 machines).
    Neon,
}

impl Level {
    /// Every level, best first.
    pub const ALL: [Level; 4] = [Level::Avx512Vnni, Level::Avx2, Level::Neon, Level::Scalar];

    /// The name used in logs and by `CHEEMS_KERNEL_LEVEL`.
    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::Avx512Vnni => "avx512-vnni",
            Level::Neon => "neon",
        }
    }

    /// Parses a level name (`scalar`, `avx2`, `avx512`/`avx512-vnni`, `neon`).
    pub fn parse(s: &str) -> Option<Level> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" | "none" | "reference" => Some(Level::Scalar),
            "avx2" => Some(Level::Avx2),
            "avx512" | "avx512-vnni" | "avx512vnni" => Some(Level::Avx512Vnni),
            "neon" => Some(Level::Neon),
            _ => None,
        }
    }

    /// Whether this CPU runs the level's kernels (detected once per process).
    pub fn is_supported(self) -> bool {
        let f = features();
        match self {
            Level::Scalar => true,
            Level::Avx2 => f.avx2,
            Level::Avx512Vnni => f.avx2 && f.avx512vnni,
            Level::Neon => f.neon,
        }
    }

    fn code(self) -> u8 {
        match self {
            Level::Scalar => 1,
            Level::Avx2 => 2,
            Level::Avx512Vnni => 3,
            Level::Neon => 4,
        }
    }

    fn from_code(c: u8) -> Level {
        match c {
            2 => Level::Avx2,
            3 => Level::Avx512Vnni,
            4 => Level::Neon,
            _ => Level::Scalar,
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Features {
    avx2: bool,
    avx512vnni: bool,
    neon: bool,
}

fn features() -> Features {
    static F: OnceLock<Features> = OnceLock::new();
    *F.get_or_init(|| {
        #[allow(unused_mut)]
        let mut f = Features::default();
        #[cfg(target_arch = "x86_64")]
        {
            f.avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            f.avx512vnni = is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni");
        }
        #[cfg(target_arch = "aarch64")]
        {
            f.neon = std::arch::is_aarch64_feature_detected!("neon");
        }
        f
    })
}

/// The best level this CPU supports.
pub fn detected_level() -> Level {
    Level::ALL
        .into_iter()
        .find(|l| l.is_supported())
        .unwrap_or(Level::Scalar)
}

/// Every level this CPU supports, best first (the parity suite runs each).
pub fn available_levels() -> impl Iterator<Item = Level> {
    Level::ALL.into_iter().filter(|l| l.is_supported())
}

/// The active level's code; 0 until first use.
static ACTIVE: AtomicU8 = AtomicU8::new(0);

/// The level the kernels run at: the detected one unless lowered by `CHEEMS_KERNEL_LEVEL` or
/// [`force_level`].
pub fn level() -> Level {
    match ACTIVE.load(Ordering::Relaxed) {
        0 => init(),
        c => Level::from_code(c),
    }
}

/// The active level's name (`"avx512-vnni"`, `"avx2"`, `"neon"`, `"scalar"`), with `+amx` where
/// the F16/BF16 prefill products run on AMX tiles ([`amx`]).
pub fn level_name() -> &'static str {
    match level() {
        Level::Avx512Vnni if amx() => "avx512-vnni+amx",
        l => l.name(),
    }
}

/// Whether this process can run AMX-BF16 tiles: the CPU has AMX-TILE and AMX-BF16 and the
/// `avx512-vnni` level, the OS granted the tile state, and `CHEEMS_AMX` is not `0` (checked
/// once). The F16/BF16 prefill products use them when [`amx`] says so.
pub fn amx_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        Level::Avx512Vnni.is_supported() && crate::x86::amx::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the F16/BF16 prefill products run on AMX tiles now: [`amx_available`] and the active
/// level is `avx512-vnni` (a lower level, forced or from `CHEEMS_KERNEL_LEVEL`, turns them off).
pub fn amx() -> bool {
    level() == Level::Avx512Vnni && amx_available()
}

#[cold]
fn init() -> Level {
    static CHOSEN: OnceLock<Level> = OnceLock::new();
    let l = *CHOSEN.get_or_init(|| {
        let best = detected_level();
        let l = match std::env::var("CHEEMS_KERNEL_LEVEL") {
            Ok(s) => match Level::parse(&s) {
                Some(l) if l.is_supported() => l,
                _ => {
                    eprintln!(
                        "cheems-kernels: CHEEMS_KERNEL_LEVEL={s:?} is not a supported level \
                         on this CPU; using {best}"
                    );
                    best
                }
            },
            Err(_) => best,
        };
        if std::env::var_os("CHEEMS_VERBOSE").is_some() {
            let amx = if l == Level::Avx512Vnni && amx_available() {
                ", F16/BF16 prefill on AMX-BF16 tiles"
            } else {
                ""
            };
            eprintln!("cheems-kernels: kernel level {l} (best on this CPU: {best}){amx}");
        }
        l
    });
    // A concurrent `force_level` wins over the default.
    let _ = ACTIVE.compare_exchange(0, l.code(), Ordering::Relaxed, Ordering::Relaxed);
    Level::from_code(ACTIVE.load(Ordering::Relaxed))
}

/// The level asked for is not supported by this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unsupported(pub Level);

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "kernel level {} is not supported on this CPU", self.0)
    }
}

impl std::error::Error for Unsupported {}

/// Makes every later product in this process run at `level` (benchmarks and tests; the parity
/// suite prefers the `*_at` functions, which take the level as an argument and touch no global).
///
/// # Errors
/// [`Unsupported`] when this CPU lacks the level's instructions; the active level is unchanged.
pub fn force_level(level: Level) -> Result<(), Unsupported> {
    if !level.is_supported() {
        return Err(Unsupported(level));
    }
    ACTIVE.store(level.code(), Ordering::Relaxed);
    Ok(())
}

/// The activation as the kernels read it: `x` itself and, for quantized partners, the ggml
/// blocks plus level-independent side arrays (see [`crate::matvec::Activation`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ActView<'a> {
    /// Values per row.
    pub n: usize,
    /// The f32 activation (float weights read it directly).
    pub x: &'a [f32],
    /// The partner row as ggml blocks (Q8_0, Q8_1 or Q8_K bytes).
    pub blocks: &'a [u8],
    /// Q8_0/Q8_1 partners: the quants, contiguous (`n` values).
    pub q: &'a [i8],
    /// Q8_0/Q8_1 partners: each block's scale as f32.
    pub d: &'a [f32],
    /// Q8_1 partner: each block's `s` as f32.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub s: &'a [f32],
    /// Q8_0 partner: minus the sum of each 4 consecutive quants (`n / 4` values), the offset
    /// correction of unsigned-times-signed dot products.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub nsum4: &'a [i32],
    /// Q8_0 partner: minus the sum of each block's quants, as f32 (exact).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub nsum: &'a [f32],
}

/// Dots `out.len()` consecutive weight rows with the activation: `out[i] = row_i · x`.
///
/// # Safety
/// `rows.len() == out.len() * row_bytes`, `row_bytes` is the byte length of an `act.n`-value
/// row of the table entry's weight type, `act` was prepared for that type's partner
/// ([`crate::matvec::Activation::quantize_for`]) with `act.n` values, and the level of the
/// table is supported by this CPU.
pub(crate) type RowsFn =
    unsafe fn(rows: &[u8], row_bytes: usize, act: &ActView<'_>, out: &mut [f32]);

/// Products of a block of weight rows with a few activations (prefill's tiles):
/// `out[t * ld + r] = row_r · act_t` for every row `r` of `rows` and every `t < acts.len()`.
///
/// # Safety
/// As [`RowsFn`] for each of `acts` (all of the same length), and `out`
/// is valid for writes at every index `t * ld + r`.
pub(crate) type MmFn =
    unsafe fn(rows: &[u8], row_bytes: usize, acts: &[ActView<'_>], out: *mut f32, ld: usize);

/// Products of a block of F16 weight rows with a batch of f32 activations held transposed
/// (`xt[k][t]` for `t` padded to a multiple of 16 with zeros: value `k` of activation `t` at
/// `xt[k · n.next_multiple_of(16) + t]`): `out[t * ld + r] = row_r · x_t` for `t < n`.
///
/// # Safety
/// `rows` holds whole rows of `cols` F16 values (`row_bytes = 2·cols`), `xt` holds
/// `cols · n.next_multiple_of(16)` floats, and `out` is valid for writes at every index
/// `t * ld + r`.
pub(crate) type F16MmFn = unsafe fn(
    rows: &[u8],
    row_bytes: usize,
    xt: &[f32],
    cols: usize,
    n: usize,
    out: *mut f32,
    ld: usize,
);

/// The buffers of a Q8_0/Q8_1 activation: the ggml blocks and the kernels' side arrays
/// (see [`ActView`]).
#[derive(Debug)]
pub(crate) struct ActBufs<'a> {
    pub blocks: &'a mut [u8],
    pub q: &'a mut [i8],
    pub d: &'a mut [f32],
    pub s: &'a mut [f32],
    pub nsum4: &'a mut [i32],
    pub nsum: &'a mut [f32],
}

/// Quantizes an activation row to Q8_0 (`q8_1` false) or Q8_1 blocks plus side arrays.
///
/// # Safety
/// `x.len()` is a multiple of 32, the buffers hold the partner row of `x.len()` values (see
/// [`ActBufs`]), and the table's level is supported by this CPU.
pub(crate) type QuantFn = unsafe fn(x: &[f32], out: &mut ActBufs<'_>, q8_1: bool);

/// Quantizes an activation row to Q8_K blocks.
///
/// # Safety
/// `x.len()` is a multiple of 256, `blocks` holds exactly `x.len() / 256` Q8_K blocks, and the
/// table's level is supported by this CPU.
pub(crate) type QuantKFn = unsafe fn(x: &[f32], blocks: &mut [u8]);

/// One level's kernels, one per weight type, and its activation quantizers.
#[derive(Debug)]
pub(crate) struct Table {
    pub quant_q8: QuantFn,
    pub quant_q8_k: QuantKFn,
    pub f32: RowsFn,
    pub f16: RowsFn,
    pub bf16: RowsFn,
    pub q4_0: RowsFn,
    pub q4_1: RowsFn,
    pub q5_0: RowsFn,
    pub q5_1: RowsFn,
    pub q8_0: RowsFn,
    pub q4_k: RowsFn,
    pub q5_k: RowsFn,
    pub q6_k: RowsFn,
    /// Tile kernels of the prefill products (`None`: the row kernels, one activation at a time).
    pub q4_0_mm: Option<MmFn>,
    pub q8_0_mm: Option<MmFn>,
    pub f16_mm: Option<F16MmFn>,
}

impl Table {
    /// The kernel for weights of type `ty`, if cheems computes with that type.
    pub fn get(&self, ty: GgmlType) -> Option<RowsFn> {
        use GgmlType as T;
        Some(match ty {
            T::F32 => self.f32,
            T::F16 => self.f16,
            T::BF16 => self.bf16,
            T::Q4_0 => self.q4_0,
            T::Q4_1 => self.q4_1,
            T::Q5_0 => self.q5_0,
            T::Q5_1 => self.q5_1,
            T::Q8_0 => self.q8_0,
            T::Q4_K => self.q4_k,
            T::Q5_K => self.q5_k,
            T::Q6_K => self.q6_k,
            _ => return None,
        })
    }
}

impl Table {
    /// The tile kernel for weights of type `ty`, if the level has one.
    pub fn mm(&self, ty: GgmlType) -> Option<MmFn> {
        match ty {
            GgmlType::Q4_0 => self.q4_0_mm,
            GgmlType::Q8_0 => self.q8_0_mm,
            _ => None,
        }
    }
}

/// The kernel table of `level`; `None` when this CPU does not support it.
pub(crate) fn table(level: Level) -> Option<&'static Table> {
    if !level.is_supported() {
        return None;
    }
    match level {
        Level::Scalar => Some(&crate::scalar::TABLE),
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => Some(&crate::x86::avx2::TABLE),
        #[cfg(target_arch = "x86_64")]
        Level::Avx512Vnni => Some(&crate::x86::avx512::TABLE),
        #[cfg(target_arch = "aarch64")]
        Level::Neon => Some(&crate::neon::TABLE),
        #[allow(unreachable_patterns)]
        _ => None,
    }
}
