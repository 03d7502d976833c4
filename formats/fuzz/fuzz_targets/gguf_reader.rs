//! Fuzzes the GGUF reader: any input must give `Ok` or `Err`, never a panic, and an accepted file
//! must hand out every tensor's data and metadata without panicking.
//!
//! Run: `cd formats/fuzz && cargo +nightly fuzz run gguf_reader` (see `formats/fuzz/README.md`).

#![no_main]

use cheems_formats::gguf::{GgufFile, Value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(data) else {
        return;
    };
    let mut sum = 0u64;
    for (key, value) in file.metadata().iter() {
        sum = sum.wrapping_add(key.len() as u64);
        sum = sum.wrapping_add(touch(value));
        // The typed accessors must not panic whatever the value.
        let _ = file.metadata().get_u32(key);
        let _ = file.metadata().get_f32(key);
        let _ = file.metadata().get_str_array(key);
    }
    for t in file.tensors() {
        let bytes = file.tensor_data(t);
        assert_eq!(bytes.len(), t.size);
        assert_eq!(
            (file.data_offset() as u64 + t.offset) % file.alignment() as u64,
            0
        );
        sum = sum.wrapping_add(bytes.iter().map(|&b| u64::from(b)).sum::<u64>());
        sum = sum.wrapping_add(t.n_elements() ^ t.row_len() as u64 ^ t.n_rows() as u64);
        let by_name = file
            .tensor_bytes(&t.name)
            .map(<[u8]>::len)
            .unwrap_or(usize::MAX);
        assert_eq!(by_name, t.size);
        let _ = file.tensor_slice::<f32>(&t.name);
        let _ = file.tensor_slice::<u16>(&t.name);
    }
    std::hint::black_box(sum);
});

fn touch(value: &Value) -> u64 {
    let _ = (
        value.as_u64(),
        value.as_i64(),
        value.as_f64(),
        value.as_bool(),
    );
    match value {
        Value::String(s) => s.len() as u64,
        Value::Array(a) => a.len() as u64 ^ a.element_type() as u64,
        _ => value.value_type() as u64,
    }
}
