//! Chat templates rendered by cheems against the text transformers renders.
//!
//! - `chat_templates.json` (`make_fixtures.py`): the fixture checkpoints' own templates (Doge
//!   style, ChatML, a plain one), converted into model files and rendered through
//!   `cheems::chat::render_prompt`; the text and its token ids must equal `apply_chat_template`'s.
//! - `chat_helpers.json` (`make_chat_fixtures.py`): templates that use the Python-compatible
//!   helpers (`.strip()`, `.split()`, `tojson`, `namespace`, `raise_exception`, block tags
//!   trimmed by `trim_blocks`/`lstrip_blocks`), rendered by transformers' `render_jinja_template`.
//! - A file without a template gets the documented fallback.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use cheems::chat::{render_prompt, ChatTemplate, Message};
use cheems::tokenizer::Tokenizer;
use cheems::Model;
use cheems_formats::GgmlType;
use serde_json::Value as Json;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models")
}

fn json(name: &str) -> Json {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(name)).unwrap()).unwrap()
}

fn messages(case: &Json) -> Vec<Message> {
    case["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect()
}

fn convert(hf_dir: &Path, out: &Path) -> Model {
    let opts = cheems_quantize::Options::new(GgmlType::F16);
    cheems_quantize::convert(hf_dir, out, &opts, 2, false).unwrap();
    Model::load(out).unwrap()
}

#[test]
fn fixture_templates_render_as_transformers_does() {
    let refs = json("chat_templates.json");
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for (key, t) in refs.as_object().unwrap() {
        let fixture = t["fixture"].as_str().unwrap();
        let model = convert(
            &fixtures().join(fixture),
            &dir.path().join(format!("{fixture}.gguf")),
        );
        let tok = Tokenizer::from_metadata(model.file.metadata()).unwrap();
        for case in t["cases"].as_array().unwrap() {
            let name = format!("{key}/{}", case["name"].as_str().unwrap());
            let agp = case["add_generation_prompt"].as_bool().unwrap();
            let got = render_prompt(&model, &messages(case), agp).unwrap();
            assert_eq!(got, case["rendered"].as_str().unwrap(), "{name}");
            let ids: Vec<u32> = case["input_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(tok.encode(&got, false).unwrap(), ids, "{name}: token ids");
            checked += 1;
        }
    }
    assert!(checked >= 12, "only {checked} cases");
}

#[test]
fn python_helpers_render_as_transformers_does() {
    let refs = json("chat_helpers.json");
    let bos = refs["bos_token"].as_str().unwrap();
    let eos = refs["eos_token"].as_str().unwrap();
    let mut checked = 0;
    for (key, t) in refs["templates"].as_object().unwrap() {
        let tmpl = ChatTemplate::new(t["template"].as_str().unwrap(), bos, eos).unwrap();
        for case in t["cases"].as_array().unwrap() {
            let name = format!("{key}/{}", case["name"].as_str().unwrap());
            let agp = case["add_generation_prompt"].as_bool().unwrap();
            let got = tmpl.render(&messages(case), agp);
            match (case.get("rendered"), case.get("error")) {
                (Some(want), _) => {
                    let got = got.unwrap_or_else(|e| panic!("{name}: {e:#}"));
                    assert_eq!(got, want.as_str().unwrap(), "{name}");
                }
                (None, Some(err)) => {
                    let e = format!("{:#}", got.expect_err(&name));
                    assert!(e.contains(err.as_str().unwrap()), "{name}: {e}");
                    assert!(!e.contains('\n'), "{name}: the error is one line: {e:?}");
                }
                _ => panic!("{name}: neither text nor error"),
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} cases");
}

#[test]
fn a_file_without_a_template_gets_the_plain_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("llama");
    std::fs::create_dir(&hf).unwrap();
    for entry in std::fs::read_dir(fixtures().join("llama")).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, hf.join(p.file_name().unwrap())).unwrap();
    }
    let cfg_path = hf.join("tokenizer_config.json");
    let mut cfg: Json = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("chat_template");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let model = convert(&hf, &dir.path().join("plain.gguf"));
    assert!(model
        .file
        .metadata()
        .get(cheems::chat::template::TEMPLATE_KEY)
        .is_none());
    let msgs = [
        Message::new("system", "Be kind."),
        Message::new("user", "Hi"),
        Message::new("assistant", "Hello."),
        Message::new("user", "Bye"),
    ];
    assert_eq!(
        render_prompt(&model, &msgs, true).unwrap(),
        "Be kind.\n\nUser: Hi\n\nAssistant: Hello.\n\nUser: Bye\n\nAssistant:"
    );
    assert_eq!(
        render_prompt(&model, &msgs[1..2], false).unwrap(),
        "User: Hi\n\n"
    );
    assert!(ChatTemplate::from_model(&model).unwrap().is_fallback());
}

#[test]
fn a_broken_template_is_a_clear_error() {
    let e = ChatTemplate::new("{% for m in messages %}{{ m.content }", "", "").unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("chat template"), "{msg}");
    assert!(!msg.contains('\n'), "{msg:?}");
}

#[test]
fn strftime_now_formats_the_current_date() {
    let t = ChatTemplate::new("{{ strftime_now('%Y') }}", "", "").unwrap();
    let year: i32 = t.render(&[], false).unwrap().parse().unwrap();
    assert!((2024..2200).contains(&year), "{year}");
}
