//! Session state snapshots: a copy of everything a session remembers (position, KV caches, DMA
//! caches, SSD states), kept in memory or saved to a file and restored later. Because the state is
//! bounded (SSD states and DMA caches have fixed sizes), a snapshot is small and cheap.
//!
//! File layout (little-endian), version 1:
//! ```text
//! "CHEEMSST" | version u32 | model fingerprint u64 | position u64 | layer count u32
//! per layer: kind u8 (0 KV, 1 DMA, 2 SSD), then
//!   KV:  held u64 | row u64 | keys f32[held·row] | values f32[held·row]
//!   DMA: heads u32 | head_dim u64 | per head: held u64, then per entry: position u64, score f32,
//!        key f32[head_dim], value f32[head_dim]
//!   SSD: conv u64 | f32[conv] | ssm u64 | f32[ssm]
//! ```
//! A state is accepted only by a model with the same fingerprint (`model::fingerprint`) and the
//! same layer shapes; everything is checked before the session is touched.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::blocks::attention::KvCache;
use crate::blocks::dma::DmaCache;
use crate::blocks::ssd::SsdState;

const MAGIC: &[u8; 8] = b"CHEEMSST";
const VERSION: u32 = 1;

/// One layer's state.
#[derive(Debug, Clone)]
pub enum LayerState {
    Kv(KvCache),
    Dma(DmaCache),
    Ssd(SsdState),
}

/// Everything a session remembers.
#[derive(Debug, Clone)]
pub struct SessionState {
    pub fingerprint: u64,
    pub pos: usize,
    pub layers: Vec<LayerState>,
}

fn put_f32s(w: &mut impl Write, v: &[f32]) -> std::io::Result<()> {
    for x in v {
        w.write_all(&x.to_le_bytes())?;
    }
    Ok(())
}

impl SessionState {
    /// Bytes of the serialized state.
    pub fn byte_size(&self) -> usize {
        let mut n = 8 + 4 + 8 + 8 + 4;
        for l in &self.layers {
            n += 1 + match l {
                LayerState::Kv(kv) => 16 + 8 * kv.len * (kv.k.len() / kv.capacity.max(1)),
                LayerState::Dma(d) => {
                    12 + d
                        .len
                        .iter()
                        .map(|&h| 8 + h * (12 + 8 * d.head_dim()))
                        .sum::<usize>()
                }
                LayerState::Ssd(s) => 16 + 4 * (s.conv.len() + s.ssm.len()),
            };
        }
        n
    }

    /// Writes the state to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let f =
            std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
        let mut w = std::io::BufWriter::new(f);
        self.write(&mut w)
            .and_then(|()| w.flush())
            .with_context(|| format!("write {}", path.display()))
    }

    /// Writes the state in the file layout to any writer (a buffer in memory).
    pub fn write_to(&self, w: &mut impl Write) -> Result<()> {
        self.write(w).context("write the state")
    }

    fn write(&self, w: &mut impl Write) -> std::io::Result<()> {
        w.write_all(MAGIC)?;
        w.write_all(&VERSION.to_le_bytes())?;
        w.write_all(&self.fingerprint.to_le_bytes())?;
        w.write_all(&(self.pos as u64).to_le_bytes())?;
        w.write_all(&(self.layers.len() as u32).to_le_bytes())?;
        for l in &self.layers {
            match l {
                LayerState::Kv(kv) => {
                    let row = kv.k.len() / kv.capacity.max(1);
                    w.write_all(&[0])?;
                    w.write_all(&(kv.len as u64).to_le_bytes())?;
                    w.write_all(&(row as u64).to_le_bytes())?;
                    put_f32s(w, &kv.k[..kv.len * row])?;
                    put_f32s(w, &kv.v[..kv.len * row])?;
                }
                LayerState::Dma(d) => {
                    let (hd, kw) = (d.head_dim(), d.keep_window);
                    w.write_all(&[1])?;
                    w.write_all(&(d.len.len() as u32).to_le_bytes())?;
                    w.write_all(&(hd as u64).to_le_bytes())?;
                    for (g, &held) in d.len.iter().enumerate() {
                        w.write_all(&(held as u64).to_le_bytes())?;
                        for j in 0..held {
                            let e = g * kw + j;
                            w.write_all(&(d.pos[e] as u64).to_le_bytes())?;
                            w.write_all(&d.score[e].to_le_bytes())?;
                            put_f32s(w, &d.k[e * hd..(e + 1) * hd])?;
                            put_f32s(w, &d.v[e * hd..(e + 1) * hd])?;
                        }
                    }
                }
                LayerState::Ssd(s) => {
                    w.write_all(&[2])?;
                    w.write_all(&(s.conv.len() as u64).to_le_bytes())?;
                    put_f32s(w, &s.conv)?;
                    w.write_all(&(s.ssm.len() as u64).to_le_bytes())?;
                    put_f32s(w, &s.ssm)?;
                }
            }
        }
        Ok(())
    }

    /// Reads a state file into the shapes of `like` (a snapshot of the session it will be
    /// restored into), refusing files of another model or another shape.
    /// `kv_capacity` is the positions the session's KV caches hold.
    pub fn load(path: &Path, like: &SessionState, kv_capacity: usize) -> Result<Self> {
        let f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
        let mut r = Reader {
            r: std::io::BufReader::new(f),
        };
        Self::read(&mut r, like, kv_capacity)
            .with_context(|| format!("{} is not a usable state file", path.display()))
    }

    /// Reads a state in the file layout from any reader (bytes in memory), with the checks of
    /// [`SessionState::load`].
    pub fn read_from(r: impl Read, like: &SessionState, kv_capacity: usize) -> Result<Self> {
        Self::read(&mut Reader { r }, like, kv_capacity)
    }

    fn read(r: &mut Reader<impl Read>, like: &SessionState, kv_capacity: usize) -> Result<Self> {
        let mut magic = [0u8; 8];
        r.r.read_exact(&mut magic).context("truncated header")?;
        if &magic != MAGIC {
            bail!("not a cheems state file (bad magic)");
        }
        let version = r.u32()?;
        if version != VERSION {
            bail!("state file version {version}, this build reads version {VERSION}");
        }
        let fingerprint = r.u64()?;
        if fingerprint != like.fingerprint {
            bail!("it was saved by a different model (fingerprint {fingerprint:016x}, this model {:016x})", like.fingerprint);
        }
        let pos = r.u64()? as usize;
        let n = r.u32()? as usize;
        if n != like.layers.len() {
            bail!("{n} layers, the model has {}", like.layers.len());
        }
        let mut layers = like.layers.clone();
        for (i, l) in layers.iter_mut().enumerate() {
            let kind = r.u8()?;
            match (kind, l) {
                (0, LayerState::Kv(kv)) => {
                    let (held, row) = (r.u64()? as usize, r.u64()? as usize);
                    let want_row = kv.k.len() / kv.capacity.max(1);
                    if row != want_row || held > kv_capacity {
                        bail!("layer {i}: {held} cached positions of width {row}; this session holds {kv_capacity} of width {want_row}");
                    }
                    let mut c = KvCache::new(held.max(1), row);
                    r.f32s(&mut c.k[..held * row])?;
                    r.f32s(&mut c.v[..held * row])?;
                    c.len = held;
                    *kv = c;
                }
                (1, LayerState::Dma(d)) => {
                    let (heads, hd) = (r.u32()? as usize, r.u64()? as usize);
                    if heads != d.len.len() || hd != d.head_dim() {
                        bail!(
                            "layer {i}: DMA cache of {heads} heads x {hd}, the model has {} x {}",
                            d.len.len(),
                            d.head_dim()
                        );
                    }
                    let kw = d.keep_window;
                    for g in 0..heads {
                        let held = r.u64()? as usize;
                        if held > kw {
                            bail!("layer {i}: {held} entries in a DMA cache of {kw}");
                        }
                        for j in 0..held {
                            let e = g * kw + j;
                            d.pos[e] = r.u64()? as usize;
                            d.score[e] = r.f32()?;
                            r.f32s(&mut d.k[e * hd..(e + 1) * hd])?;
                            r.f32s(&mut d.v[e * hd..(e + 1) * hd])?;
                        }
                        d.len[g] = held;
                    }
                }
                (2, LayerState::Ssd(s)) => {
                    for buf in [&mut s.conv, &mut s.ssm] {
                        let len = r.u64()? as usize;
                        if len != buf.len() {
                            bail!(
                                "layer {i}: SSD state of {len} values, the model has {}",
                                buf.len()
                            );
                        }
                        r.f32s(buf)?;
                    }
                }
                (k, _) => bail!("layer {i}: state of kind {k} does not match the model's layer"),
            }
        }
        let mut extra = [0u8; 1];
        if r.r.read(&mut extra)? != 0 {
            bail!("trailing bytes after the last layer");
        }
        Ok(SessionState {
            fingerprint,
            pos,
            layers,
        })
    }
}

struct Reader<R> {
    r: R,
}

impl<R: Read> Reader<R> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        self.r.read_exact(&mut b).context("truncated")?;
        Ok(b)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.bytes::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
    fn f32(&mut self) -> Result<f32> {
        Ok(f32::from_le_bytes(self.bytes()?))
    }
    fn f32s(&mut self, out: &mut [f32]) -> Result<()> {
        for x in out {
            *x = self.f32()?;
        }
        Ok(())
    }
}
