//! Chat templates: a conversation ([`Message`]s) to the prompt text a model was trained on.
//!
//! The template is the Jinja text a Hugging Face tokenizer carries (`chat_template`), stored in
//! the model file under `tokenizer.chat_template`. It is rendered with `minijinja`, set up the way
//! transformers' `apply_chat_template` sets up Jinja2: `trim_blocks` and `lstrip_blocks`, loop
//! controls, Python's string, list and dict methods (`.strip()`, `.startswith()`, `.split()`,
//! `.items()`, … from `minijinja_contrib::pycompat`), and the globals and filter transformers adds:
//! `raise_exception(msg)`, `strftime_now(fmt)` and a `tojson` that writes what Python's
//! `json.dumps` writes (no HTML escaping). The context holds `messages`, `add_generation_prompt`,
//! `bos_token`, `eos_token`, and `tools` and `documents` as none. transformers' `{% generation %}`
//! blocks (used only to mark assistant tokens for training) are removed before compiling.
//!
//! A file without a template gets [`FALLBACK_TEMPLATE`], a plain transcript (`User: …`,
//! `Assistant: …`) that any base model can continue; see the README's Chat section.
//!
//! Tokenizing and the state of a conversation live in [`super`]; this module only makes text.

use std::fmt::Write as _;

use anyhow::{anyhow, Context, Result};
use cheems_formats::gguf::Metadata;
use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Value};

use crate::model::Model;

/// Key of the chat template in a model file.
pub const TEMPLATE_KEY: &str = "tokenizer.chat_template";

/// The template used when the model file has none: one paragraph per message, `User: ` and
/// `Assistant: ` before user and assistant text, the system message as a plain first paragraph,
/// and `Assistant:` to ask for a reply. The model's tokenizer adds BOS as it asks.
pub const FALLBACK_TEMPLATE: &str = "{% for m in messages %}\
{% if m.role == 'system' %}{{ m.content }}\
{% elif m.role == 'user' %}{{ 'User: ' + m.content }}\
{% else %}{{ 'Assistant: ' + m.content }}{% endif %}{{ '\\n\\n' }}\
{% endfor %}\
{% if add_generation_prompt %}Assistant:{% endif %}";

/// One message of a conversation: `role` is `system`, `user` or `assistant` (templates may know
/// others, such as `tool`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Message {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// The prompt text of `messages` through the model file's chat template (with the file's BOS and
/// EOS token text), or through [`FALLBACK_TEMPLATE`] when the file has none. With
/// `add_generation_prompt` the text ends where the assistant's reply begins.
///
/// Compiles the template on every call; [`ChatTemplate`] compiles it once.
pub fn render_prompt(
    model: &Model,
    messages: &[Message],
    add_generation_prompt: bool,
) -> Result<String> {
    ChatTemplate::from_model(model)?.render(messages, add_generation_prompt)
}

/// A compiled chat template with the special-token text it is rendered with.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    fallback: bool,
}

const NAME: &str = "chat_template";

impl ChatTemplate {
    /// The template of a model file, or the fallback when the file has none.
    pub fn from_model(model: &Model) -> Result<Self> {
        let md = model.file.metadata();
        let bos = special_text(md, "tokenizer.ggml.bos_token_id")?;
        let eos = special_text(md, "tokenizer.ggml.eos_token_id")?;
        match md.opt_str(TEMPLATE_KEY)? {
            Some(source) => Self::new(source, &bos, &eos)
                .with_context(|| format!("the model file's {TEMPLATE_KEY}")),
            None => Self::fallback(&bos, &eos),
        }
    }

    /// Compiles `source` (Jinja, as in a Hugging Face `tokenizer_config.json`).
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        let mut syntax = minijinja::syntax::SyntaxConfig::builder();
        syntax.trim_blocks(true).lstrip_blocks(true);
        env.set_syntax(syntax.build().map_err(one_line)?);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, strip_generation_tags(source))
            .map_err(|e| anyhow!("cannot compile the chat template: {}", one_line(e)))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            fallback: false,
        })
    }

    /// [`FALLBACK_TEMPLATE`].
    pub fn fallback(bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut t = Self::new(FALLBACK_TEMPLATE, bos_token, eos_token)?;
        t.fallback = true;
        Ok(t)
    }

    /// Whether this is [`FALLBACK_TEMPLATE`] (the file had no template).
    pub fn is_fallback(&self) -> bool {
        self.fallback
    }

    /// Renders a conversation.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let msgs: Vec<Value> = messages
            .iter()
            .map(|m| minijinja::context! { role => m.role.as_str(), content => m.content.as_str() })
            .collect();
        let ctx = minijinja::context! {
            messages => msgs,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
            tools => Value::from(()),
            documents => Value::from(()),
        };
        let t = self.env.get_template(NAME).map_err(one_line)?;
        t.render(ctx)
            .map_err(|e| anyhow!("the chat template failed: {}", one_line(e)))
    }
}

/// The text of the token a `tokenizer.ggml.*_token_id` key names, from `tokenizer.ggml.tokens`
/// (empty when the file names no such token).
fn special_text(md: &Metadata, key: &str) -> Result<String> {
    let Some(id) = md.opt_u32(key)? else {
        return Ok(String::new());
    };
    if md.get("tokenizer.ggml.tokens").is_some() {
        let tokens = md.get_str_array("tokenizer.ggml.tokens")?;
        return tokens
            .get(id as usize)
            .cloned()
            .ok_or_else(|| anyhow!("{key} = {id} is outside tokenizer.ggml.tokens"));
    }
    // Files whose tokenizer lives only in the Hugging Face JSON.
    let tok = crate::tokenizer::Tokenizer::from_metadata(md)?;
    let bytes = tok
        .token_bytes(id)
        .ok_or_else(|| anyhow!("{key} = {id} is outside the vocabulary"))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// A minijinja error (with its causes) on one line.
fn one_line(e: Error) -> anyhow::Error {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let _ = write!(msg, ": {s}");
        source = s.source();
    }
    anyhow!(msg.replace('\n', " "))
}

/// Removes transformers' `{% generation %}` / `{% endgeneration %}` tags, keeping what they
/// enclose (they only mark the assistant's tokens for training masks).
fn strip_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find("{%") {
        let tag_end = rest[at..].find("%}").map(|e| at + e + 2);
        let Some(end) = tag_end else { break };
        let inner =
            rest[at + 2..end - 2].trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        out.push_str(&rest[..at]);
        if inner != "generation" && inner != "endgeneration" {
            out.push_str(&rest[at..end]);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// `raise_exception(message)`: fails the rendering with the template's message.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("the template raised an exception: {message}"),
    ))
}

/// `strftime_now(format)`: the local time in a C `strftime` format (`"%d %b %Y"`).
fn strftime_now(format: String) -> Result<String, Error> {
    let now = jiff::ZonedDateTime::now();
    jiff::fmt::strtime::format(format.as_bytes(), &now).map_err(|e| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now({format:?}): {e}"),
        )
    })
}

/// `x | tojson(indent=None, ensure_ascii=False, sort_keys=False, separators=None)`: Python's
/// `json.dumps` with those arguments, as transformers' filter calls it.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.as_str().unwrap_or("").to_string()),
        Some(v) => {
            let n = v.as_i64().ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer or a string",
                )
            })?;
            Some(" ".repeat(n.max(0) as usize))
        }
    };
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let (item_sep, key_sep) = match separators {
        Some(s) if !s.is_none() => {
            let parts: Vec<String> = s
                .try_iter()?
                .map(|p| p.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be two strings",
                    )
                })?;
            match parts.as_slice() {
                [a, b] => (a.clone(), b.clone()),
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be two strings",
                    ))
                }
            }
        }
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let mut w = JsonWriter {
        out: String::new(),
        indent,
        item_sep,
        key_sep,
        ensure_ascii: ensure_ascii.unwrap_or(false),
        sort_keys: sort_keys.unwrap_or(false),
    };
    w.value(value, 0)?;
    Ok(Value::from(w.out))
}

/// Python's `json.dumps` over minijinja values.
struct JsonWriter {
    out: String,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    ensure_ascii: bool,
    sort_keys: bool,
}

impl JsonWriter {
    fn newline(&mut self, depth: usize) {
        if let Some(ind) = &self.indent {
            self.out.push('\n');
            for _ in 0..depth {
                self.out.push_str(ind);
            }
        }
    }

    fn value(&mut self, v: &Value, depth: usize) -> Result<(), Error> {
        if depth > 100 {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: nested too deeply",
            ));
        }
        match v.kind() {
            ValueKind::Undefined | ValueKind::None => self.out.push_str("null"),
            ValueKind::Bool => self
                .out
                .push_str(if v.is_true() { "true" } else { "false" }),
            ValueKind::Number => self.number(v),
            ValueKind::String => self.string(v.as_str().unwrap_or_default()),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = v.try_iter()?.collect();
                self.out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        let sep = self.item_sep.clone();
                        self.out.push_str(&sep);
                    }
                    self.newline(depth + 1);
                    self.value(item, depth + 1)?;
                }
                if !items.is_empty() {
                    self.newline(depth);
                }
                self.out.push(']');
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = v.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort_by_key(|k| k.to_string());
                }
                self.out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        let sep = self.item_sep.clone();
                        self.out.push_str(&sep);
                    }
                    self.newline(depth + 1);
                    match k.kind() {
                        ValueKind::None => self.out.push_str("\"null\""),
                        ValueKind::Bool => {
                            self.out
                                .push_str(if k.is_true() { "\"true\"" } else { "\"false\"" })
                        }
                        _ => self.string(&k.to_string()),
                    }
                    let sep = self.key_sep.clone();
                    self.out.push_str(&sep);
                    self.value(&v.get_item(k)?, depth + 1)?;
                }
                if !keys.is_empty() {
                    self.newline(depth);
                }
                self.out.push('}');
            }
            // Plain objects, bytes: their text, as Python would fail on them.
            _ => self.string(&v.to_string()),
        }
        Ok(())
    }

    /// Integers as they are; floats as Python's `repr` (`1.0`, `1e-05`, `1e+16`, `Infinity`).
    fn number(&mut self, v: &Value) {
        if v.is_integer() {
            let _ = write!(self.out, "{v}");
            return;
        }
        let Ok(f) = f64::try_from(v.clone()) else {
            let _ = write!(self.out, "{v}");
            return;
        };
        if f.is_nan() {
            self.out.push_str("NaN");
        } else if f.is_infinite() {
            self.out
                .push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
        } else {
            self.out.push_str(&python_float_repr(f));
        }
    }

    fn string(&mut self, s: &str) {
        self.out.push('"');
        for c in s.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '\r' => self.out.push_str("\\r"),
                '\t' => self.out.push_str("\\t"),
                '\u{8}' => self.out.push_str("\\b"),
                '\u{c}' => self.out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && (c as u32) > 0x7e) => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        let _ = write!(self.out, "\\u{u:04x}");
                    }
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }
}

/// Python's `repr(float)`: the shortest digits that round-trip, positional for exponents in
/// [-4, 16), else `d.ddde±XX`.
fn python_float_repr(f: f64) -> String {
    let sci = format!("{f:e}"); // shortest round-trip digits: "-1.2345e-7"
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let s = format!("{f}");
        if s.contains('.') {
            s
        } else {
            s + ".0"
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_float_repr_matches_python() {
        // Python: repr(1.0), repr(0.1), repr(1e-05), repr(1e16), repr(123.456), repr(2.5e-07)
        for (f, want) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e-5, "1e-05"),
            (1e16, "1e+16"),
            (123.456, "123.456"),
            (2.5e-7, "2.5e-07"),
            (0.0001, "0.0001"),
            (-3.0, "-3.0"),
        ] {
            assert_eq!(python_float_repr(f), want);
        }
    }

    #[test]
    fn generation_tags_are_removed() {
        let src = "a{% generation %}b{%- endgeneration -%}c{% if x %}d{% endif %}";
        assert_eq!(strip_generation_tags(src), "abc{% if x %}d{% endif %}");
    }
}
