//! `include/cheems.h` is what cbindgen makes of `src/capi.rs` with `cbindgen.toml`: this test
//! regenerates it and fails when the committed header differs, so a stale header fails CI.
//! `CHEEMS_BLESS=1 cargo test --test capi_header` writes the new header instead.

#![allow(clippy::unwrap_used)]

use std::path::Path;

#[test]
fn the_committed_header_is_what_cbindgen_generates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src/capi.rs"))
        .generate()
        .unwrap()
        .write(&mut generated);
    let generated = String::from_utf8(generated).unwrap();
    let path = root.join("include/cheems.h");
    if std::env::var_os("CHEEMS_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "include/cheems.h is stale (first difference at line {}): run \
             `CHEEMS_BLESS=1 cargo test --test capi_header` and commit the header",
            line + 1
        );
    }
    // The API the issue asks for is all there.
    for f in [
        "cheems_version",
        "cheems_status_str",
        "cheems_last_error",
        "cheems_model_load",
        "cheems_model_free",
        "cheems_model_get_info",
        "cheems_session_new",
        "cheems_session_free",
        "cheems_session_reset",
        "cheems_tokenize",
        "cheems_detokenize",
        "cheems_prefill",
        "cheems_decode",
        "cheems_generate",
        "cheems_chat",
        "cheems_session_state_save",
        "cheems_session_state_load",
        "cheems_session_state_save_file",
        "cheems_session_state_load_file",
    ] {
        assert!(
            generated.contains(&format!("{f}(")),
            "{f} missing from the header"
        );
    }
}
