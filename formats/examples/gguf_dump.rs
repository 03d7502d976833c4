//! Describes GGUF files as JSON, for checking cheems' reader and writer against gguf-py.
//!
//! ```text
//! gguf_dump json FILE.gguf            print cheems' reading of FILE as JSON
//! gguf_dump write OUT.gguf OUT.json   write a test file (every metadata type, several tensor
//!                                     types, a page-aligned tensor) and its JSON description
//! ```
//!
//! The JSON schema is documented in `tests/fixtures/gguf/check_with_gguf_py.py`, which reads the
//! same file with gguf-py and compares:
//!
//! ```text
//! cargo run -p cheems-formats --example gguf_dump -- write /tmp/t.gguf /tmp/t.json
//! python tests/fixtures/gguf/check_with_gguf_py.py /tmp/t.gguf /tmp/t.json
//! ```

use std::path::Path;
use std::process::ExitCode;

use cheems_formats::gguf::{
    Array, GgufFile, GgufWriter, Metadata, TensorSpec, Value, ALIGNMENT_KEY,
};
use cheems_formats::{GgmlType, Result};
use serde_json::{json, Value as Json};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["json", file] => dump(Path::new(file)).map(|j| println!("{j:#}")),
        ["write", gguf, out_json] => write_test_file(Path::new(gguf), Path::new(out_json)),
        _ => {
            eprintln!("usage: gguf_dump json FILE.gguf | gguf_dump write OUT.gguf OUT.json");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gguf_dump: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Our reader's description of a file.
fn dump(path: &Path) -> Result<Json> {
    let file = GgufFile::open(path)?;
    Ok(describe(&file))
}

fn describe(file: &GgufFile) -> Json {
    let metadata: Vec<Json> = file
        .metadata()
        .iter()
        .map(|(key, value)| json!({"key": key, "type": value.type_name(), "value": value_json(value)}))
        .collect();
    let tensors: Vec<Json> = file
        .tensors()
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "type": t.ggml_type.name(),
                "dims": t.dims,
                "shape": t.shape(),
                "offset": t.offset,
                "nbytes": t.size,
                "sha256": hex(&sha256(file.tensor_data(t))),
            })
        })
        .collect();
    json!({
        "version": file.version(),
        "alignment": file.alignment(),
        "data_offset": file.data_offset(),
        "file_size": file.file_size(),
        "metadata": metadata,
        "tensors": tensors,
    })
}

fn float_json(x: f64) -> Json {
    if x.is_nan() {
        json!("nan")
    } else if x.is_infinite() {
        json!(if x > 0.0 { "inf" } else { "-inf" })
    } else {
        json!(x)
    }
}

fn value_json(value: &Value) -> Json {
    match value {
        Value::U8(v) => json!(v),
        Value::I8(v) => json!(v),
        Value::U16(v) => json!(v),
        Value::I16(v) => json!(v),
        Value::U32(v) => json!(v),
        Value::I32(v) => json!(v),
        Value::F32(v) => float_json(f64::from(*v)),
        Value::Bool(v) => json!(v),
        Value::String(v) => json!(v),
        Value::Array(a) => array_json(a),
        Value::U64(v) => json!(v),
        Value::I64(v) => json!(v),
        Value::F64(v) => float_json(*v),
    }
}

fn array_json(array: &Array) -> Json {
    let elements: Vec<Json> = match array {
        Array::U8(v) => v.iter().map(|x| json!(x)).collect(),
        Array::I8(v) => v.iter().map(|x| json!(x)).collect(),
        Array::U16(v) => v.iter().map(|x| json!(x)).collect(),
        Array::I16(v) => v.iter().map(|x| json!(x)).collect(),
        Array::U32(v) => v.iter().map(|x| json!(x)).collect(),
        Array::I32(v) => v.iter().map(|x| json!(x)).collect(),
        Array::F32(v) => v.iter().map(|&x| float_json(f64::from(x))).collect(),
        Array::Bool(v) => v.iter().map(|x| json!(x)).collect(),
        Array::String(v) => v.iter().map(|x| json!(x)).collect(),
        Array::Array(v) => v.iter().map(array_json).collect(),
        Array::U64(v) => v.iter().map(|x| json!(x)).collect(),
        Array::I64(v) => v.iter().map(|x| json!(x)).collect(),
        Array::F64(v) => v.iter().map(|&x| float_json(x)).collect(),
    };
    json!({"element_type": array.element_type().name(), "value": elements})
}

/// The test file: every metadata value type, several tensor types, chunked writes and one tensor
/// aligned to 4096 bytes in the file.
fn write_test_file(path: &Path, json_path: &Path) -> Result<()> {
    let mut md = Metadata::new();
    md.set("general.architecture", "cheems");
    md.set("general.name", "gguf_dump test file ✓ 🦀");
    md.set(ALIGNMENT_KEY, 32u32);
    md.set("test.u8", 255u8);
    md.set("test.i8", Value::I8(-128));
    md.set("test.u16", Value::U16(65535));
    md.set("test.i16", Value::I16(-32768));
    md.set("test.u32", u32::MAX);
    md.set("test.i32", i32::MIN);
    md.set("test.f32", 1e-5f32);
    md.set("test.f32_nan", f32::NAN);
    md.set("test.f32_neg_inf", f32::NEG_INFINITY);
    md.set("test.bool", true);
    md.set("test.string", "héllo wörld ✓ 🦀");
    md.set("test.empty_string", "");
    md.set("test.u64", u64::MAX);
    md.set("test.i64", Value::I64(i64::MIN));
    md.set("test.f64", Value::F64(-2.5e-300));
    md.set(
        "tokenizer.ggml.tokens",
        vec!["<s>", "</s>", " wörld", "", "🦀"],
    );
    md.set("test.i32_array", vec![1i32, -2, i32::MAX]);
    md.set("test.u32_array", vec![0u32, u32::MAX]);
    md.set("test.f32_array", vec![0.5f32, -1.25, f32::MAX]);
    md.set("test.u8_array", Array::U8(vec![0, 1, 255]));
    md.set("test.i8_array", Array::I8(vec![-1, 1]));
    md.set("test.u16_array", Array::U16(vec![7, 65535]));
    md.set("test.i16_array", Array::I16(vec![-7, 7]));
    md.set("test.bool_array", Array::Bool(vec![true, false]));
    md.set("test.u64_array", Array::U64(vec![u64::MAX, 0]));
    md.set("test.i64_array", Array::I64(vec![i64::MIN, -1]));
    md.set("test.f64_array", Array::F64(vec![1.5, -0.0]));
    md.set("test.empty_i32_array", Array::I32(vec![]));
    md.set("test.empty_string_array", Array::String(vec![]));
    md.set(
        "test.nested_array",
        Array::Array(vec![
            Array::I32(vec![1, 2, 3]),
            Array::String(vec!["a".into()]),
            Array::Array(vec![Array::F32(vec![0.25])]),
            Array::U8(vec![]),
        ]),
    );

    let specs = vec![
        TensorSpec::new("f32_vec", vec![5], GgmlType::F32),
        TensorSpec::new("blk.0.f16_mat", vec![8, 3], GgmlType::F16),
        TensorSpec::new("blk.0.q4_0", vec![64, 2], GgmlType::Q4_0),
        TensorSpec::new("token_embd.weight", vec![256, 4], GgmlType::Q4_K).with_align(4096),
        TensorSpec::new("blk.0.q8_0", vec![32, 3], GgmlType::Q8_0),
        TensorSpec::new("blk.0.bf16", vec![2, 2, 2, 2], GgmlType::BF16),
        TensorSpec::new("empty", vec![0, 4], GgmlType::F32),
    ];
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut datas = Vec::new();
    for spec in &specs {
        let size = spec.size()?;
        let bytes: Vec<u8> = match spec.ggml_type {
            GgmlType::F32 => (0..size / 4)
                .flat_map(|i| (i as f32 * 0.5 - 1.0).to_le_bytes())
                .collect(),
            GgmlType::F16 => (0..size / 2)
                .flat_map(|i| half::f16::from_f32(i as f32 / 8.0).to_le_bytes())
                .collect(),
            _ => (0..size)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng as u8
                })
                .collect(),
        };
        datas.push(bytes);
    }

    let mut w = GgufWriter::create(path, &md, specs.clone())?;
    for data in &datas {
        // Several chunks per tensor.
        for chunk in data.chunks(50) {
            w.write_data(chunk)?;
        }
    }
    w.finish()?;

    // Read it back and check it is what we wrote, before describing it.
    let file = GgufFile::open(path)?;
    let same_metadata = file.metadata().len() == md.len()
        && file
            .metadata()
            .iter()
            .zip(md.iter())
            .all(|((ka, va), (kb, vb))| {
                // NaN != NaN: compare through the JSON encoding, which spells it "nan".
                ka == kb && value_json(va) == value_json(vb)
            });
    if !same_metadata {
        return Err(cheems_formats::Error::Invalid(
            "metadata differs after reading back".into(),
        ));
    }
    for (spec, data) in specs.iter().zip(&datas) {
        let t = file.tensor(&spec.name);
        let ok = t.is_some_and(|t| {
            t.dims == spec.dims
                && t.ggml_type == spec.ggml_type
                && file.tensor_data(t) == data.as_slice()
                && (file.data_offset() as u64 + t.offset).is_multiple_of(spec.align.max(32) as u64)
        });
        if !ok {
            return Err(cheems_formats::Error::Invalid(format!(
                "tensor `{}` differs after reading back",
                spec.name
            )));
        }
    }
    let text = format!("{:#}\n", describe(&file));
    std::fs::write(json_path, text)
        .map_err(|e| cheems_formats::Error::io(format!("write {}", json_path.display()), e))?;
    eprintln!(
        "wrote {} ({} bytes, {} tensors) and {}",
        path.display(),
        file.file_size(),
        file.tensors().len(),
        json_path.display()
    );
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 (FIPS 180-4), small and slow; enough to fingerprint test tensors.
fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64).wrapping_mul(8)).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16]
                .wrapping_add(s0)
                .wrapping_add(w[i - 7])
                .wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh
                .wrapping_add(s1)
                .wrapping_add(ch)
                .wrapping_add(K[i])
                .wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (o, x) in out.chunks_exact_mut(4).zip(h) {
        o.copy_from_slice(&x.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_known_vectors() {
        assert_eq!(
            hex(&sha256(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let long = vec![b'a'; 1000];
        assert_eq!(
            hex(&sha256(&long)),
            "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3"
        );
    }
}
