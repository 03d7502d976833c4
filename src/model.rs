//! A loaded model: the mapped file, its hyper-parameters and every layer's weights bound by name
//! and shape. One `Model` is shared (`Arc`) by any number of [`crate::Session`]s.
//!
//! [`LoadOptions`] choose how the bytes are held: mapped (the default) or read into an owned
//! buffer, and CDMoE expert records either read in place or fetched on demand into each
//! session's bounded cache ([`crate::experts`]).

use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use cheems_formats::gguf::GgufFile;

use crate::blocks::attention::Attention;
use crate::blocks::cdmoe::CdMoe;
use crate::blocks::dma::Dma;
use crate::blocks::mlp::Mlp;
use crate::blocks::rope::RopeTable;
use crate::blocks::ssd::Ssd;
use crate::config::{Arch, Config, LayerKind};
use crate::experts::{is_expert_table, ExpertSource};
use crate::weights::{Binder, Mat};

/// How [`Model::load_with`] holds a model file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// A bound on the bytes of CDMoE expert records each session holds. With a bound, records
    /// are never read through the map: a session fetches the ones a token's routing selects
    /// into a least-recently-used cache of this many bytes ([`crate::experts`]). `None`: records
    /// are read in place like every other weight.
    pub expert_cache_bytes: Option<u64>,
    /// Map the file (`true`), or read the weights into an owned, aligned buffer (`false`; with
    /// an expert cache bound the expert tables are left out of it).
    pub use_mmap: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            expert_cache_bytes: None,
            use_mmap: true,
        }
    }
}

/// A layer's sequence mixer.
#[derive(Debug)]
pub enum Mixer {
    Attention(Attention),
    Dma(Dma),
    Ssd(Ssd),
}

/// A layer's feed-forward sublayer.
#[derive(Debug)]
pub enum Ffn {
    Mlp(Mlp),
    CdMoe(CdMoe),
}

#[derive(Debug)]
pub struct Layer {
    /// [d_model]
    pub attn_norm: Vec<f32>,
    /// [d_model], Doge's scale of the skip path around the mixer
    pub attn_residual: Option<Vec<f32>>,
    pub mixer: Mixer,
    /// (norm [d_model], skip scale [d_model], FFN); absent in mamba2
    pub ffn: Option<(Vec<f32>, Option<Vec<f32>>, Ffn)>,
}

#[derive(Debug)]
pub struct Model {
    pub file: GgufFile,
    pub config: Config,
    /// [d_model] x n_vocab rows
    pub embed: Mat,
    /// [d_model] -> [n_vocab] (the embedding when tied)
    pub output: Mat,
    /// [d_model]
    pub output_norm: Vec<f32>,
    pub layers: Vec<Layer>,
    pub rope: Option<RopeTable>,
    /// Identifies the file's content (see [`fingerprint`]); saved states carry it.
    pub fingerprint: u64,
    /// How the file is held.
    pub options: LoadOptions,
    /// With an expert cache bound, where the expert records are read from.
    pub experts: Option<ExpertSource>,
    /// The weights uploaded to each GPU a session ran on (`--device cuda`), uploaded once.
    pub gpu_weights: crate::cuda::WeightCache,
}

/// A 64-bit FNV-1a hash of the file's header (metadata and tensor table), its size, and 16
/// evenly spaced 4 KiB samples of tensor data: cheap to compute, and different for different
/// models (a state saved for one model is refused by another).
pub fn fingerprint(file: &GgufFile) -> u64 {
    let bytes = file.bytes();
    let sample = |at: usize, buf: &mut [u8]| {
        buf.copy_from_slice(&bytes[at..at + buf.len()]);
        Ok(())
    };
    fingerprint_with(file, sample).unwrap_or(0)
}

/// [`fingerprint`] with the data samples read by `sample(offset, buf)`: the same value, without
/// touching the mapped data (whose expert pages stay out of memory with an expert cache).
fn fingerprint_with(
    file: &GgufFile,
    mut sample: impl FnMut(usize, &mut [u8]) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    let bytes = file.bytes();
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |b: &[u8]| {
        for &x in b {
            h ^= u64::from(x);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    let start = file.data_offset().min(bytes.len());
    eat(&(bytes.len() as u64).to_le_bytes());
    eat(&bytes[..start]);
    let data_len = bytes.len() - start;
    let mut buf = [0u8; 4096];
    for i in 0..16 {
        let at = data_len / 16 * i;
        let buf = &mut buf[..4096.min(data_len - at)];
        sample(start + at, buf)?;
        eat(buf);
    }
    Ok(h)
}

impl Model {
    /// Maps and binds a model file.
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_with(path, &LoadOptions::default())
    }

    /// Loads and binds a model file held as `opts` says.
    pub fn load_with(path: &Path, opts: &LoadOptions) -> Result<Self> {
        let what = || format!("cannot load {}", path.display());
        let bounded = opts.expert_cache_bytes.is_some();
        let file = if opts.use_mmap {
            GgufFile::open(path)
        } else {
            GgufFile::read(path, &|t| !(bounded && is_expert_table(&t.name)))
        }
        .with_context(what)?;
        let disk = std::fs::File::open(path).with_context(what)?;
        let fp = fingerprint_with(&file, |at, buf| disk.read_exact_at(buf, at as u64))
            .with_context(what)?;
        if opts.use_mmap {
            crate::experts::advise_random_map(&file, bounded);
        }
        let mut model = Self::bind(file, fp).with_context(what)?;
        model.options = opts.clone();
        if let Some(budget) = opts.expert_cache_bytes {
            model.experts = ExpertSource::new(path, budget, &model.layers).with_context(what)?;
        }
        Ok(model)
    }

    /// Binds a file already open (mapped or in memory), expert records read in place.
    pub fn from_file(file: GgufFile) -> Result<Self> {
        let fp = fingerprint(&file);
        Self::bind(file, fp)
    }

    fn bind(file: GgufFile, fingerprint: u64) -> Result<Self> {
        let c = Config::from_metadata(file.metadata())?;
        let b = Binder { file: &file };
        let embed = b.mat("token_embd.weight", c.d_model, c.n_vocab)?;
        let output = if b.has("output.weight") {
            b.mat("output.weight", c.d_model, c.n_vocab)?
        } else {
            embed
        };
        let output_norm = b.vector("output_norm.weight", c.d_model)?;
        let mut layers = Vec::with_capacity(c.n_layers);
        for (i, kind) in c.layer_kinds.iter().enumerate() {
            let n = |s: &str| format!("blk.{i}.{s}");
            let attn_norm = b.vector(&n("attn_norm.weight"), c.d_model)?;
            let mixer = match kind {
                LayerKind::Attention => Mixer::Attention(Attention::bind(&b, i, &c)?),
                LayerKind::Dma => Mixer::Dma(Dma::bind(&b, i, &c)?),
                LayerKind::Ssd => Mixer::Ssd(Ssd::bind(&b, i, &c)?),
            };
            let (attn_residual, ffn) = match c.arch {
                Arch::Mamba2 => (None, None),
                Arch::Llama => {
                    let norm = b.vector(&n("ffn_norm.weight"), c.d_model)?;
                    (
                        None,
                        Some((norm, None, Ffn::Mlp(Mlp::bind(&b, i, c.d_model, c.d_ff)?))),
                    )
                }
                Arch::Doge | Arch::Cheems => {
                    let norm = b.vector(&n("ffn_norm.weight"), c.d_model)?;
                    let res = b.vector(&n("ffn_residual.weight"), c.d_model)?;
                    let ffn = if c.n_experts > 0 {
                        Ffn::CdMoe(CdMoe::bind(&b, i, &c)?)
                    } else {
                        Ffn::Mlp(Mlp::bind(&b, i, c.d_model, c.d_ff)?)
                    };
                    (
                        Some(b.vector(&n("attn_residual.weight"), c.d_model)?),
                        Some((norm, Some(res), ffn)),
                    )
                }
            };
            layers.push(Layer {
                attn_norm,
                attn_residual,
                mixer,
                ffn,
            });
        }
        if c.n_kv_heads > 64 {
            bail!("{} KV heads: at most 64 are supported", c.n_kv_heads);
        }
        let rope = c.rope.as_ref().map(RopeTable::new);
        Ok(Model {
            file,
            config: c,
            embed,
            output,
            output_norm,
            layers,
            rope,
            fingerprint,
            options: LoadOptions::default(),
            experts: None,
            gpu_weights: Default::default(),
        })
    }

    /// The mapped bytes weights point into.
    pub fn map(&self) -> &[u8] {
        self.file.bytes()
    }
}
