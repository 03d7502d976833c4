//! The C API called from Rust (feature `capi`; `cargo test --features capi --test capi`): the
//! statuses of bad calls, the double-free guard, sessions left unchanged by failed calls, state
//! round trips and cancellation. `tests/c/run.sh` runs the same ground from C, under
//! AddressSanitizer and with threads.

#![cfg(feature = "capi")]
#![allow(clippy::unwrap_used, clippy::undocumented_unsafe_blocks)]

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr::{null, null_mut};

use cheems::capi::cheems_status::*;
use cheems::capi::*;
use cheems_formats::GgmlType;

fn model_file(dir: &Path) -> PathBuf {
    fixture_file(dir, "cheems")
}

fn fixture_file(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(format!("{name}.gguf"));
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name);
    cheems_quantize::convert(
        &fixture,
        &out,
        &cheems_quantize::Options::new(GgmlType::Q8_0),
        1,
        false,
    )
    .unwrap();
    out
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn last_error() -> String {
    unsafe { CStr::from_ptr(cheems_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn load(path: &Path) -> *mut cheems_model {
    let mut params = cheems_model_default_params();
    params.n_threads = 1;
    load_with(path, params)
}

fn load_with(path: &Path, params: cheems_model_params) -> *mut cheems_model {
    let mut m = null_mut();
    let p = c(path.to_str().unwrap());
    assert_eq!(
        unsafe { cheems_model_load(p.as_ptr(), &params, &mut m) },
        CHEEMS_OK,
        "{}",
        last_error()
    );
    m
}

fn session(m: *const cheems_model) -> *mut cheems_session {
    let mut s = null_mut();
    assert_eq!(unsafe { cheems_session_new(m, null(), &mut s) }, CHEEMS_OK);
    s
}

fn state(s: *const cheems_session) -> Vec<u8> {
    let mut n = 0;
    assert_eq!(
        unsafe { cheems_session_state_save(s, null_mut(), 0, &mut n) },
        CHEEMS_ERR_BUFFER_TOO_SMALL
    );
    let mut buf = vec![0u8; n];
    let mut len = 0;
    assert_eq!(
        unsafe { cheems_session_state_save(s, buf.as_mut_ptr(), n, &mut len) },
        CHEEMS_OK
    );
    assert_eq!(len, n);
    buf
}

/// Collects text; cancels after `stop_after` pieces when that is positive.
#[derive(Default)]
struct Collect {
    text: String,
    pieces: usize,
    stop_after: usize,
}

unsafe extern "C" fn collect(text: *const c_char, len: usize, user: *mut c_void) -> c_int {
    let c = unsafe { &mut *(user as *mut Collect) };
    let bytes = unsafe { std::slice::from_raw_parts(text.cast::<u8>(), len + 1) };
    assert_eq!(bytes[len], 0, "streamed text is NUL-terminated");
    c.text.push_str(std::str::from_utf8(&bytes[..len]).unwrap());
    c.pieces += 1;
    c_int::from(c.stop_after > 0 && c.pieces >= c.stop_after)
}

fn generate(s: *mut cheems_session, prompt: &str, max: u32, out: &mut Collect) -> cheems_status {
    let mut p = cheems_generate_default_params();
    p.sampling.seed = 7;
    p.max_tokens = max;
    p.ignore_eos = true;
    let prompt = c(prompt);
    unsafe {
        cheems_generate(
            s,
            prompt.as_ptr(),
            &p,
            Some(collect),
            (out as *mut Collect).cast(),
            null_mut(),
        )
    }
}

#[test]
fn status_strings_are_static_and_named() {
    for code in 0..=15 {
        let s = unsafe { CStr::from_ptr(cheems_status_str(code)) }
            .to_str()
            .unwrap();
        assert!(s.starts_with("CHEEMS_"), "{code}: {s}");
    }
    let s = unsafe { CStr::from_ptr(cheems_status_str(42)) };
    assert_eq!(s.to_str().unwrap(), "unknown status");
    let v = unsafe { CStr::from_ptr(cheems_version()) };
    assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}

#[test]
fn bad_calls_return_their_status_and_leave_the_session_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = model_file(dir.path());

    let mut m = null_mut();
    let missing = c(dir.path().join("missing.gguf").to_str().unwrap());
    assert_eq!(
        unsafe { cheems_model_load(missing.as_ptr(), null(), &mut m) },
        CHEEMS_ERR_IO
    );
    assert!(last_error().contains("missing.gguf"), "{}", last_error());
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"not a model file, only some bytes of text").unwrap();
    let junk = c(junk.to_str().unwrap());
    assert_eq!(
        unsafe { cheems_model_load(junk.as_ptr(), null(), &mut m) },
        CHEEMS_ERR_FORMAT
    );
    assert!(m.is_null());
    // The right magic, then a version this build does not read.
    let future = dir.path().join("future.gguf");
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&99u32.to_le_bytes());
    bytes.extend_from_slice(&[0; 64]);
    std::fs::write(&future, bytes).unwrap();
    let future = c(future.to_str().unwrap());
    assert_eq!(
        unsafe { cheems_model_load(future.as_ptr(), null(), &mut m) },
        CHEEMS_ERR_UNSUPPORTED,
        "{}",
        last_error()
    );
    assert_eq!(
        unsafe { cheems_model_load(null(), null(), &mut m) },
        CHEEMS_ERR_NULL_ARG
    );

    let m = load(&path);
    let mut info: cheems_model_info = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { cheems_model_get_info(m, &mut info) }, CHEEMS_OK);
    let arch = unsafe { CStr::from_ptr(info.architecture) };
    assert_eq!(arch.to_str().unwrap(), "cheems");

    let s = session(m);
    let prompt = [3u32, 4, 5];
    let mut logits = vec![0f32; info.n_vocab as usize];
    assert_eq!(
        unsafe { cheems_prefill(s, prompt.as_ptr(), 3, logits.as_mut_ptr(), logits.len()) },
        CHEEMS_OK
    );
    let before = state(s);
    let bad = [7u32, info.n_vocab];
    assert_eq!(
        unsafe { cheems_prefill(s, bad.as_ptr(), 2, null_mut(), 0) },
        CHEEMS_ERR_INVALID_TOKEN
    );
    assert_eq!(
        unsafe { cheems_decode(s, 9, logits.as_mut_ptr(), 3) },
        CHEEMS_ERR_BUFFER_TOO_SMALL
    );
    let mut p = cheems_generate_default_params();
    p.sampling.temperature = f32::NAN;
    let text = c("more");
    assert_eq!(
        unsafe { cheems_generate(s, text.as_ptr(), &p, None, null_mut(), null_mut()) },
        CHEEMS_ERR_INVALID_ARG
    );
    assert_eq!(
        unsafe { cheems_session_state_load(s, before.as_ptr(), before.len() - 1) },
        CHEEMS_ERR_STATE
    );
    assert_eq!(state(s), before, "failed calls changed the session");
    let mut kept = vec![0f32; info.n_vocab as usize];
    assert_eq!(
        unsafe { cheems_session_logits(s, kept.as_mut_ptr(), kept.len()) },
        CHEEMS_OK
    );
    assert_eq!(kept, logits);

    // The double-free guard, and handles of the wrong kind.
    assert_eq!(unsafe { cheems_session_free(s) }, CHEEMS_OK);
    assert_eq!(unsafe { cheems_session_free(s) }, CHEEMS_ERR_INVALID_HANDLE);
    assert_eq!(
        unsafe { cheems_session_free(m.cast()) },
        CHEEMS_ERR_INVALID_HANDLE
    );
    assert_eq!(unsafe { cheems_model_free(m) }, CHEEMS_OK);
    assert_eq!(unsafe { cheems_model_free(m) }, CHEEMS_ERR_INVALID_HANDLE);
    assert_eq!(unsafe { cheems_model_free(null_mut()) }, CHEEMS_OK);
}

#[test]
fn states_round_trip_and_cancellation_keeps_what_was_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let m = load(&model_file(dir.path()));
    let s = session(m);
    assert_eq!(
        generate(s, "Once upon", 6, &mut Collect::default()),
        CHEEMS_OK
    );
    let saved = state(s);
    let file = c(dir.path().join("s.state").to_str().unwrap());
    assert_eq!(
        unsafe { cheems_session_state_save_file(s, file.as_ptr()) },
        CHEEMS_OK
    );
    let (mut a, mut b, mut f) = Default::default();
    assert_eq!(generate(s, " a time", 10, &mut a), CHEEMS_OK);
    assert_eq!(
        unsafe { cheems_session_state_load(s, saved.as_ptr(), saved.len()) },
        CHEEMS_OK
    );
    assert_eq!(generate(s, " a time", 10, &mut b), CHEEMS_OK);
    let t = session(m);
    assert_eq!(
        unsafe { cheems_session_state_load_file(t, file.as_ptr()) },
        CHEEMS_OK
    );
    assert_eq!(generate(t, " a time", 10, &mut f), CHEEMS_OK);
    assert!(!a.text.is_empty());
    assert_eq!(a.text, b.text, "restored from memory");
    assert_eq!(a.text, f.text, "restored from a file");

    let mut cut = Collect {
        stop_after: 2,
        ..Default::default()
    };
    assert_eq!(generate(t, " and", 30, &mut cut), CHEEMS_CANCELLED);
    assert_eq!(cut.pieces, 2);
    let mut past_before = 0;
    assert_eq!(
        unsafe { cheems_session_n_past(t, &mut past_before) },
        CHEEMS_OK
    );
    assert_eq!(generate(t, "", 3, &mut Collect::default()), CHEEMS_OK);
    let mut past = 0;
    assert_eq!(unsafe { cheems_session_n_past(t, &mut past) }, CHEEMS_OK);
    assert_eq!(past, past_before + 3, "continued after the cancelled reply");

    for h in [s, t] {
        assert_eq!(unsafe { cheems_session_free(h) }, CHEEMS_OK);
    }
    assert_eq!(unsafe { cheems_model_free(m) }, CHEEMS_OK);
}

#[test]
fn load_parameters_change_how_not_what() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixture_file(dir.path(), "doge_moe");
    let mut texts = Vec::new();
    for (mmap, cache) in [(true, 0), (false, 0), (true, 64 << 10), (false, 64 << 10)] {
        let mut params = cheems_model_default_params();
        params.n_threads = 2;
        params.use_mmap = mmap;
        params.expert_cache_bytes = cache;
        let m = load_with(&path, params);
        let s = session(m);
        let mut out = Collect::default();
        assert_eq!(generate(s, "Hello", 12, &mut out), CHEEMS_OK);
        texts.push(out.text);
        assert_eq!(unsafe { cheems_session_free(s) }, CHEEMS_OK);
        assert_eq!(unsafe { cheems_model_free(m) }, CHEEMS_OK);
    }
    assert!(!texts[0].is_empty());
    for t in &texts[1..] {
        assert_eq!(
            t, &texts[0],
            "mmap off or an expert cache changed the text: {texts:?}"
        );
    }
}
