//! GGUF writer → reader round trips, writer misuse, and interop with the reference implementation
//! (a file written by gguf-py, `tests/fixtures/gguf/`, made by `tests/fixtures/make_gguf_fixtures.py`).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use cheems_formats::gguf::{
    Array, GgufFile, GgufWriter, Metadata, TensorSpec, Value, ValueType, ALIGNMENT_KEY,
};
use cheems_formats::GgmlType;
use serde_json::Value as Json;

/// Metadata with every value type, empty arrays, nested arrays and unicode.
fn every_value_type() -> Metadata {
    let mut md = Metadata::new();
    md.set("general.architecture", "cheems");
    md.set("test.u8", 255u8);
    md.set("test.i8", Value::I8(-128));
    md.set("test.u16", Value::U16(65535));
    md.set("test.i16", Value::I16(-32768));
    md.set("test.u32", u32::MAX);
    md.set("test.i32", i32::MIN);
    md.set("test.f32", 1e-5f32);
    md.set("test.bool", true);
    md.set("test.string", "héllo wörld ✓ 🦀 日本語");
    md.set("test.empty_string", "");
    md.set("test.u64", u64::MAX);
    md.set("test.i64", Value::I64(i64::MIN));
    md.set("test.f64", Value::F64(std::f64::consts::PI));
    md.set(
        "tokenizer.ggml.tokens",
        vec!["<s>".to_string(), " wörld".into(), "".into()],
    );
    md.set("test.i32_array", vec![1i32, -2, i32::MAX]);
    md.set("test.u32_array", vec![0u32, u32::MAX]);
    md.set("test.f32_array", vec![0.5f32, f32::INFINITY, -0.0]);
    md.set("test.u8_array", Array::U8(vec![0, 255]));
    md.set("test.i8_array", Array::I8(vec![-1]));
    md.set("test.u16_array", Array::U16(vec![1, 2]));
    md.set("test.i16_array", Array::I16(vec![-3]));
    md.set("test.bool_array", Array::Bool(vec![true, false, true]));
    md.set("test.u64_array", Array::U64(vec![u64::MAX]));
    md.set("test.i64_array", Array::I64(vec![i64::MIN, 0]));
    md.set("test.f64_array", Array::F64(vec![1e-300, -1e300]));
    md.set("test.empty_u8_array", Array::U8(vec![]));
    md.set("test.empty_string_array", Array::String(vec![]));
    md.set("test.empty_nested_array", Array::Array(vec![]));
    md.set(
        "test.nested_array",
        Array::Array(vec![
            Array::I32(vec![1, 2]),
            Array::String(vec!["ü".into()]),
            Array::Array(vec![Array::F64(vec![0.25]), Array::Bool(vec![])]),
        ]),
    );
    md
}

/// Deterministic bytes.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

fn write_file(path: &Path, md: &Metadata, specs: &[TensorSpec], datas: &[Vec<u8>], chunk: usize) {
    let mut w = GgufWriter::create(path, md, specs.to_vec()).unwrap();
    for (spec, data) in specs.iter().zip(datas) {
        // Empty tensors need no data: the writer moves past them.
        if !data.is_empty() {
            assert_eq!(
                w.current_tensor().map(|t| t.name.as_str()),
                Some(spec.name.as_str())
            );
        }
        for c in data.chunks(chunk) {
            w.write_data(c).unwrap();
        }
    }
    assert!(w.current_tensor().is_none());
    w.finish().unwrap();
}

fn partial_of(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".partial");
    PathBuf::from(p)
}

#[test]
fn round_trip_every_value_type_and_several_tensor_types() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rt.gguf");
    let md = every_value_type();
    let specs = vec![
        TensorSpec::new("a.f32", vec![7], GgmlType::F32),
        TensorSpec::new("b.f16", vec![3, 5], GgmlType::F16),
        TensorSpec::new("c.q4_0", vec![64, 3], GgmlType::Q4_0),
        TensorSpec::new("d.q4_k", vec![512, 2, 2], GgmlType::Q4_K).with_align(4096),
        TensorSpec::new("e.q8_0", vec![32, 1, 1, 3], GgmlType::Q8_0),
        TensorSpec::new("f.empty", vec![0], GgmlType::F32),
        TensorSpec::new("g.f32", vec![1], GgmlType::F32),
    ];
    let datas: Vec<Vec<u8>> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| noise(s.size().unwrap(), i as u64 + 1))
        .collect();
    write_file(&path, &md, &specs, &datas, 37);
    assert!(!partial_of(&path).exists());

    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), 32);
    assert_eq!(file.path(), Some(path.as_path()));
    assert_eq!(file.metadata(), &md);
    assert_eq!(file.data_offset() % 32, 0);
    assert_eq!(
        file.file_size() % 32,
        0,
        "the file ends padded to the alignment"
    );
    assert_eq!(file.tensors().len(), specs.len());
    for ((t, spec), data) in file.tensors().iter().zip(&specs).zip(&datas) {
        assert_eq!(t.name, spec.name);
        assert_eq!(t.dims, spec.dims);
        assert_eq!(t.ggml_type, spec.ggml_type);
        assert_eq!(t.size, data.len());
        assert_eq!(t.offset % 32, 0, "{}", t.name);
        let abs = file.data_offset() as u64 + t.offset;
        assert_eq!(abs % spec.align.max(32) as u64, 0, "{}", t.name);
        assert_eq!(file.tensor_data(t), data.as_slice(), "{}", t.name);
        assert_eq!(file.tensor_bytes(&t.name).unwrap(), data.as_slice());
        // The data lies in place in the map.
        let base = file.bytes().as_ptr() as u64;
        assert_eq!(file.tensor_data(t).as_ptr() as u64 - base, abs);
    }
    // The page-aligned tensor is page-aligned in memory too.
    assert_eq!(
        file.tensor_bytes("d.q4_k").unwrap().as_ptr() as usize % 4096,
        0
    );
    let d = file.tensor("d.q4_k").unwrap();
    assert_eq!((d.row_len(), d.n_rows(), d.n_elements()), (512, 4, 2048));
    assert_eq!(d.shape(), [2, 2, 512]);
    // Padding between tensors is zeros.
    let c = file.tensor("c.q4_0").unwrap();
    let c_end = file.data_offset() + c.offset as usize + c.size;
    let d_start = file.data_offset() + d.offset as usize;
    assert!(file.bytes()[c_end..d_start].iter().all(|&b| b == 0));

    // Typed views.
    let a: &[f32] = file.tensor_slice("a.f32").unwrap();
    assert_eq!(bytemuck::cast_slice::<f32, u8>(a), datas[0].as_slice());
    let b: &[half::f16] = file.tensor_slice("b.f16").unwrap();
    assert_eq!(b.len(), 15);
    let e = file.tensor_slice::<f32>("b.f16").unwrap_err().to_string();
    assert!(e.contains("b.f16") && e.contains("not a multiple"), "{e}");
    let e = file.tensor_bytes("nope").unwrap_err().to_string();
    assert!(
        e.contains("tensor `nope` not found in") && e.contains("rt.gguf"),
        "{e}"
    );
    assert!(file.tensor_slice::<f32>("f.empty").unwrap().is_empty());

    // The same bytes through from_bytes.
    let bytes = std::fs::read(&path).unwrap();
    let mem = GgufFile::from_bytes(&bytes).unwrap();
    assert_eq!(mem.metadata(), file.metadata());
    assert_eq!(mem.tensors(), file.tensors());
    assert_eq!(mem.bytes(), file.bytes());
    assert!(mem.path().is_none());
    let e = mem.tensor_bytes("nope").unwrap_err().to_string();
    assert!(e.contains("in-memory"), "{e}");
}

#[test]
fn custom_alignment_and_no_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.gguf");
    let mut md = Metadata::new();
    md.set(ALIGNMENT_KEY, 256u32);
    let specs = vec![
        TensorSpec::new("x", vec![3], GgmlType::F32),
        TensorSpec::new("y", vec![5], GgmlType::I8),
    ];
    let datas = vec![noise(12, 1), noise(5, 2)];
    write_file(&path, &md, &specs, &datas, 1);
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.alignment(), 256);
    assert_eq!(file.data_offset() % 256, 0);
    assert_eq!(file.tensor("y").unwrap().offset, 256);
    assert_eq!(file.file_size(), file.data_offset() + 512);

    let empty = dir.path().join("empty.gguf");
    let w = GgufWriter::create(&empty, &Metadata::new(), vec![]).unwrap();
    assert!(w.current_tensor().is_none());
    w.finish().unwrap();
    let file = GgufFile::open(&empty).unwrap();
    assert!(file.metadata().is_empty() && file.tensors().is_empty());
    assert_eq!(file.file_size(), 32, "24-byte header padded to 32");
}

#[test]
fn writer_rejects_misuse_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.gguf");
    let specs = vec![
        TensorSpec::new("x", vec![4], GgmlType::F32),
        TensorSpec::new("y", vec![2], GgmlType::F16),
    ];

    // Too many bytes for the current tensor: error, nothing written, the writer still works.
    let mut w = GgufWriter::create(&path, &Metadata::new(), specs.clone()).unwrap();
    assert!(partial_of(&path).exists());
    w.write_data(&[0; 10]).unwrap();
    let e = w.write_data(&[0; 7]).unwrap_err().to_string();
    assert!(
        e.contains("`x`") && e.contains("only 6 of its 16 bytes remain"),
        "{e}"
    );
    w.write_data(&[0; 6]).unwrap();
    assert_eq!(w.current_tensor().unwrap().name, "y");
    // finish with a tensor short: error, partial removed, no output.
    let e = w.finish().unwrap_err().to_string();
    assert!(e.contains("`y` got 0 of its 4 bytes"), "{e}");
    assert!(!partial_of(&path).exists() && !path.exists());

    // More data than tensors.
    let mut w = GgufWriter::create(&path, &Metadata::new(), specs.clone()).unwrap();
    w.write_data(&[1; 16]).unwrap();
    w.write_data(&[2; 4]).unwrap();
    let e = w.write_data(&[3]).unwrap_err().to_string();
    assert!(e.contains("all 2 tensors already have their data"), "{e}");
    w.finish().unwrap();
    assert!(path.exists() && !partial_of(&path).exists());

    // Dropped without finish: the partial file goes away, the finished file is untouched.
    let before = std::fs::read(&path).unwrap();
    let mut w = GgufWriter::create(&path, &Metadata::new(), specs.clone()).unwrap();
    w.write_data(&[9; 3]).unwrap();
    drop(w);
    assert!(!partial_of(&path).exists());
    assert_eq!(std::fs::read(&path).unwrap(), before);

    let check = |md: &Metadata, specs: Vec<TensorSpec>, words: &[&str]| {
        let e = GgufWriter::create(&path, md, specs)
            .unwrap_err()
            .to_string();
        for w in words {
            assert!(e.contains(w), "`{e}` lacks `{w}`");
        }
        assert!(!partial_of(&path).exists());
    };
    let one = |s: TensorSpec| vec![s];
    check(
        &Metadata::new(),
        vec![specs[0].clone(), specs[0].clone()],
        &["duplicate tensor name `x`"],
    );
    check(
        &Metadata::new(),
        one(TensorSpec::new("q", vec![33], GgmlType::Q4_0)),
        &["block size"],
    );
    check(
        &Metadata::new(),
        one(TensorSpec::new("q", vec![1; 5], GgmlType::F32)),
        &["dims"],
    );
    check(
        &Metadata::new(),
        one(TensorSpec::new("q", vec![], GgmlType::F32)),
        &["dims"],
    );
    check(
        &Metadata::new(),
        one(TensorSpec::new("q", vec![u64::MAX / 2, 4], GgmlType::F32)),
        &["overflow"],
    );
    check(
        &Metadata::new(),
        one(TensorSpec::new("x".repeat(64), vec![1], GgmlType::F32)),
        &["64 bytes"],
    );
    check(
        &Metadata::new(),
        one(TensorSpec::new("q", vec![1], GgmlType::F32).with_align(48)),
        &["not a multiple of the file alignment"],
    );
    let mut md = Metadata::new();
    md.set(ALIGNMENT_KEY, 48u32);
    check(&md, vec![], &["general.alignment", "power of two"]);
    md.set(ALIGNMENT_KEY, 32u64);
    check(&md, vec![], &["general.alignment", "u64"]);
    let mut deep = Array::I32(vec![1]);
    for _ in 0..8 {
        deep = Array::Array(vec![deep]);
    }
    let mut md = Metadata::new();
    md.set("deep", deep);
    check(&md, vec![], &["`deep`", "nested 9 levels"]);
}

#[test]
fn nested_arrays_up_to_the_depth_limit_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deep.gguf");
    let mut deep = Array::String(vec!["bottom".into()]);
    for _ in 1..cheems_formats::gguf::MAX_ARRAY_DEPTH {
        deep = Array::Array(vec![deep, Array::U8(vec![1])]);
    }
    let mut md = Metadata::new();
    md.set("deep", deep);
    write_file(&path, &md, &[], &[], 1);
    assert_eq!(GgufFile::open(&path).unwrap().metadata(), &md);
}

/// `GgufFile::read` (no map) sees what `open` sees; the tensors it leaves out read as zeros. The
/// header here is over 1 MiB, so it is read in more than one prefix.
#[test]
fn read_without_a_map_keeps_the_chosen_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("owned.gguf");
    let mut md = every_value_type();
    md.set("test.big", "x".repeat(1_500_000));
    let specs = vec![
        TensorSpec::new("dense.q8_0", vec![64, 40], GgmlType::Q8_0),
        TensorSpec::new("experts.q4_0", vec![64, 2, 60_000], GgmlType::Q4_0),
        TensorSpec::new("tail.f32", vec![9], GgmlType::F32),
    ];
    let datas: Vec<Vec<u8>> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| noise(s.size().unwrap(), i as u64 + 11))
        .collect();
    write_file(&path, &md, &specs, &datas, 1000);
    let mapped = GgufFile::open(&path).unwrap();
    assert!(mapped.data_offset() > 1 << 20);
    let all = GgufFile::read(&path, &|_| true).unwrap();
    assert_eq!(all.bytes(), mapped.bytes());
    assert_eq!(all.bytes().as_ptr() as usize % 64, 0);
    assert_eq!(all.path(), Some(path.as_path()));
    let some = GgufFile::read(&path, &|t| !t.name.starts_with("experts")).unwrap();
    assert_eq!(some.metadata(), mapped.metadata());
    assert_eq!(some.tensors(), mapped.tensors());
    for (t, data) in some.tensors().iter().zip(&datas) {
        if t.name.starts_with("experts") {
            // Read only as far as the last header prefix reached (at most twice the header).
            let start = some.data_offset() + t.offset as usize;
            let got = some.tensor_data(t);
            let read = got.iter().zip(data).take_while(|(a, b)| a == b).count();
            assert!(got[read..].iter().all(|&b| b == 0));
            assert!(
                start + read <= 2 * some.data_offset() + 64,
                "{read} bytes read"
            );
            assert!(read < t.size / 2, "{read} of {} bytes read", t.size);
        } else {
            assert_eq!(some.tensor_data(t), data.as_slice(), "{}", t.name);
        }
    }
    // Errors name the file, as `open`'s do.
    let bad = dir.path().join("bad.gguf");
    std::fs::write(&bad, b"GGUF\x02\0\0\0").unwrap();
    let e = GgufFile::read(&bad, &|_| true).unwrap_err().to_string();
    assert!(e.contains("bad.gguf") && e.contains("version 2"), "{e}");
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &std::fs::read(&path).unwrap()[..1 << 19]).unwrap();
    let e = GgufFile::read(&cut, &|_| true).unwrap_err().to_string();
    assert!(
        e.contains("cut.gguf") && e.contains("end of the file"),
        "{e}"
    );
}

#[test]
fn open_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.gguf");
    let e = GgufFile::open(&missing).unwrap_err().to_string();
    assert!(e.contains("missing.gguf"), "{e}");
    let bad = dir.path().join("bad.gguf");
    std::fs::write(&bad, b"GGUF\x02\0\0\0").unwrap();
    let e = GgufFile::open(&bad).unwrap_err().to_string();
    assert!(e.contains("bad.gguf") && e.contains("version 2"), "{e}");
    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    let e = GgufFile::open(&empty).unwrap_err().to_string();
    assert!(e.contains("empty.gguf") && e.contains("truncated"), "{e}");
}

// ---- Interop with gguf-py ----------------------------------------------------------------------

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/gguf")
        .join(name)
}

/// A metadata value from the JSON description (schema in `check_with_gguf_py.py`).
fn value_from_json(ty: &str, v: &Json) -> Value {
    let f = |v: &Json| match v {
        Json::String(s) if s == "nan" => f64::NAN,
        Json::String(s) if s == "inf" => f64::INFINITY,
        Json::String(s) if s == "-inf" => f64::NEG_INFINITY,
        _ => v.as_f64().unwrap(),
    };
    let i = |v: &Json| v.as_i64().unwrap();
    let u = |v: &Json| v.as_u64().unwrap();
    match ty {
        "u8" => Value::U8(u(v).try_into().unwrap()),
        "i8" => Value::I8(i(v).try_into().unwrap()),
        "u16" => Value::U16(u(v).try_into().unwrap()),
        "i16" => Value::I16(i(v).try_into().unwrap()),
        "u32" => Value::U32(u(v).try_into().unwrap()),
        "i32" => Value::I32(i(v).try_into().unwrap()),
        "f32" => Value::F32(f(v) as f32),
        "bool" => Value::Bool(v.as_bool().unwrap()),
        "string" => Value::String(v.as_str().unwrap().to_string()),
        "u64" => Value::U64(u(v)),
        "i64" => Value::I64(i(v)),
        "f64" => Value::F64(f(v)),
        "array" => Value::Array(array_from_json(v)),
        other => panic!("unknown type {other}"),
    }
}

fn array_from_json(v: &Json) -> Array {
    let et = v["element_type"].as_str().unwrap();
    let items = v["value"].as_array().unwrap();
    let vals: Vec<Value> = items.iter().map(|x| value_from_json(et, x)).collect();
    macro_rules! collect {
        ($variant:ident) => {
            Array::$variant(
                vals.into_iter()
                    .map(|x| match x {
                        Value::$variant(y) => y,
                        _ => unreachable!(),
                    })
                    .collect(),
            )
        };
    }
    match et {
        "u8" => collect!(U8),
        "i8" => collect!(I8),
        "u16" => collect!(U16),
        "i16" => collect!(I16),
        "u32" => collect!(U32),
        "i32" => collect!(I32),
        "f32" => collect!(F32),
        "bool" => collect!(Bool),
        "string" => collect!(String),
        "u64" => collect!(U64),
        "i64" => collect!(I64),
        "f64" => collect!(F64),
        "array" => Array::Array(items.iter().map(array_from_json).collect()),
        other => panic!("unknown element type {other}"),
    }
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn load_fixture() -> (GgufFile, Json) {
    let file = GgufFile::open(&fixture("written_by_gguf_py.gguf")).unwrap();
    let text = std::fs::read_to_string(fixture("written_by_gguf_py.json")).unwrap();
    (file, serde_json::from_str(&text).unwrap())
}

fn fixture_metadata(desc: &Json) -> Metadata {
    let mut md = Metadata::new();
    for entry in desc["metadata"].as_array().unwrap() {
        let key = entry["key"].as_str().unwrap();
        let value = value_from_json(entry["type"].as_str().unwrap(), &entry["value"]);
        assert_eq!(value.type_name(), entry["type"].as_str().unwrap());
        md.set(key, value);
    }
    md
}

#[test]
fn reads_a_file_written_by_gguf_py() {
    let (file, desc) = load_fixture();
    assert_eq!(file.version() as u64, desc["version"].as_u64().unwrap());
    assert_eq!(file.alignment() as u64, desc["alignment"].as_u64().unwrap());
    assert_eq!(file.alignment(), 64);
    assert_eq!(
        file.data_offset() as u64,
        desc["data_offset"].as_u64().unwrap()
    );
    assert_eq!(file.file_size() as u64, desc["file_size"].as_u64().unwrap());

    // Metadata: same keys, order, types and values.
    let expected = fixture_metadata(&desc);
    assert_eq!(file.metadata(), &expected);
    let md = file.metadata();
    assert_eq!(md.get_str("general.architecture").unwrap(), "cheems");
    assert_eq!(md.get_str_array("tokenizer.ggml.tokens").unwrap()[5], "✓🦀");
    assert_eq!(md.get_f32("test.f32").unwrap(), 1e-5f32);
    assert_eq!(
        md.get("test.nested_array").unwrap().value_type(),
        ValueType::Array
    );
    assert_eq!(md.get_u64("test.u64").unwrap(), u64::MAX);
    assert_eq!(
        md.get_i32_array("test.i32_array").unwrap(),
        [1, -2, 3, i32::MAX]
    );

    // Tensors: names, types, dims, offsets and bytes.
    let tensors = desc["tensors"].as_array().unwrap();
    assert_eq!(file.tensors().len(), tensors.len());
    for (t, d) in file.tensors().iter().zip(tensors) {
        assert_eq!(t.name, d["name"].as_str().unwrap());
        assert_eq!(t.ggml_type.name(), d["type"].as_str().unwrap());
        let dims: Vec<u64> = d["dims"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(t.dims, dims);
        let shape: Vec<u64> = d["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(t.shape(), shape);
        assert_eq!(t.offset, d["offset"].as_u64().unwrap());
        assert_eq!(t.size as u64, d["nbytes"].as_u64().unwrap());
        assert_eq!(
            file.tensor_data(t),
            hex_decode(d["data_hex"].as_str().unwrap()).as_slice(),
            "{}",
            t.name
        );
        if let Some(values) = d.get("values") {
            let values: Vec<f32> = values
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            let got: Vec<f32> = match t.ggml_type {
                GgmlType::F32 => file.tensor_slice::<f32>(&t.name).unwrap().to_vec(),
                GgmlType::F16 => file
                    .tensor_slice::<half::f16>(&t.name)
                    .unwrap()
                    .iter()
                    .map(|x| x.to_f32())
                    .collect(),
                other => panic!("unexpected {other}"),
            };
            assert_eq!(got, values, "{}", t.name);
        }
    }
    assert_eq!(
        file.tensor("blk.0.q8_0_mat").unwrap().ggml_type,
        GgmlType::Q8_0
    );
    assert_eq!(file.tensor("blk.0.f32_mat").unwrap().shape(), [3, 4]);
}

/// Our writer, given the fixture's content, reproduces gguf-py's file byte for byte.
#[test]
fn writer_reproduces_the_gguf_py_file_byte_for_byte() {
    let (file, desc) = load_fixture();
    let md = fixture_metadata(&desc);
    let mut specs = Vec::new();
    let mut datas = Vec::new();
    for d in desc["tensors"].as_array().unwrap() {
        let ty = GgmlType::parse(d["type"].as_str().unwrap()).unwrap();
        let dims = d["dims"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        specs.push(TensorSpec::new(d["name"].as_str().unwrap(), dims, ty));
        datas.push(hex_decode(d["data_hex"].as_str().unwrap()));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ours.gguf");
    write_file(&path, &md, &specs, &datas, 1000);
    let ours = std::fs::read(&path).unwrap();
    assert_eq!(ours.len(), file.bytes().len());
    if let Some(i) = ours.iter().zip(file.bytes()).position(|(a, b)| a != b) {
        panic!("first difference at byte {i}");
    }
}
