//! A conversation with a model: the messages, and one [`Session`] that has read them.
//!
//! [`Chat`] keeps the conversation two ways: as [`Message`]s, rendered to text by the model's chat
//! template ([`template`]), and as the tokens its session has consumed. Each turn renders the
//! whole conversation, checks that the text the session has already read is a prefix of it, and
//! feeds only the rest: the history is never processed again, so the time to the first token of
//! a turn depends on the new message, not on the length of the conversation.
//!
//! The reply's own tokens are what the model generated; right after a reply the engine feeds the
//! text the template writes after it (ChatML's `<|im_end|>\n`), so the next turn starts with the
//! user's words. Templates that change a reply when rendering it (Doge's `| trim`) are detected
//! once ([`Chat::new`]); for them the session state before the reply is kept, and the reply is
//! re-read from there the way the template writes it. When the text read is not a prefix of the
//! rendering (a new `/system` message in a template that puts it first, a reply stopped in the
//! middle of the prompt), the session starts over from the whole rendering and says so in a
//! [`Event::Detail`].
//!
//! Plain-attention (llama) models hold a fixed number of positions; when a turn would not fit,
//! the oldest turns are dropped (or the conversation is reset, [`OnFull`]) and the rest is read
//! again, with an [`Event::Notice`]. Mamba-2, Doge and Cheems sessions have bounded state and
//! never fill.
//!
//! The terminal side (line editing, commands, spinner) is `cheems chat` in the binary; nothing
//! here prints.

pub mod template;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};

use crate::model::{Mixer, Model};
use crate::sampler::{Sampler, SamplerParams};
use crate::session::MAX_BATCH;
use crate::snapshot::SessionState;
use crate::tokenizer::{StreamDecoder, Tokenizer};
use crate::{Session, SessionOptions};

pub use template::{render_prompt, ChatTemplate, Message, FALLBACK_TEMPLATE};

/// What to do when a plain-attention model's context cannot hold the next turn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnFull {
    /// Drop the oldest turns (keeping the system message) until the conversation fits.
    #[default]
    Drop,
    /// Forget the conversation (keeping the system message) and start from the new message.
    Reset,
}

/// How a chat is set up.
#[derive(Clone, Debug)]
pub struct ChatOptions {
    pub sampling: SamplerParams,
    /// Tokens a reply may have at most.
    pub max_reply: usize,
    /// Keep generating past end-of-turn and end-of-sequence tokens (for tests and benchmarks).
    pub ignore_eos: bool,
    /// Positions of a plain-attention KV cache; `None`: the model's context, at most 4096.
    pub ctx: Option<usize>,
    /// Threads (`None`: available cores).
    pub threads: Option<usize>,
    pub on_full: OnFull,
    /// Where the forward pass runs.
    pub device: crate::Device,
}

impl Default for ChatOptions {
    fn default() -> Self {
        ChatOptions {
            sampling: SamplerParams::default(),
            max_reply: 1024,
            ignore_eos: false,
            ctx: None,
            threads: None,
            on_full: OnFull::Drop,
            device: crate::Device::Cpu,
        }
    }
}

/// What [`Chat::say`] reports while it works.
#[derive(Debug)]
pub enum Event<'a> {
    /// Reading the prompt: `done` of `total` new tokens (sent before the first batch and after
    /// each).
    Prefill { done: usize, total: usize },
    /// The next piece of the reply (whole UTF-8 characters).
    Text(&'a str),
    /// Something the user should know: the context filled up and turns were dropped.
    Notice(String),
    /// Detail for a verbose mode: what was read again, and why.
    Detail(String),
}

/// Why a reply ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StopReason {
    /// The model ended its turn (an end-of-turn or end-of-sequence token).
    #[default]
    EndOfTurn,
    /// The reply reached [`ChatOptions::max_reply`] tokens.
    Length,
    /// The caller's cancel flag was set.
    Cancelled,
    /// A plain-attention context is full.
    ContextFull,
}

/// Numbers of one turn.
#[derive(Clone, Debug, Default)]
pub struct TurnStats {
    /// Tokens read before the reply (the new part of the conversation).
    pub prompt_tokens: usize,
    /// Seconds from the call to the logits of the first reply token (tokenizing included).
    pub prompt_s: f64,
    /// Whether the session had to read more than the new part (see the module doc).
    pub reread: bool,
    pub reply_tokens: usize,
    pub reply_s: f64,
    /// Tokens the session holds after the turn.
    pub context: usize,
    pub stop: StopReason,
}

/// One reply.
#[derive(Clone, Debug)]
pub struct Reply {
    pub text: String,
    pub stats: TurnStats,
}

/// A conversation and the session that has read it.
pub struct Chat {
    model: Arc<Model>,
    tok: Tokenizer,
    template: ChatTemplate,
    session: Session,
    opts: ChatOptions,
    system: Option<String>,
    /// The conversation without the system message.
    messages: Vec<Message>,
    /// The tokens the session has consumed (`session.pos() == fed.len()`).
    fed: Vec<u32>,
    /// The text `fed` was made from, when known.
    fed_text: Option<String>,
    /// Positions of the KV caches of a model with plain-attention layers.
    kv_capacity: Option<usize>,
    /// Tokens that end a reply: the file's EOS/EOT/EOM and the template's end of turn.
    stop: Vec<u32>,
    /// Whether the template writes a reply exactly as generated (see the module doc).
    keeps_replies: bool,
    last: Option<TurnStats>,
}

impl std::fmt::Debug for Chat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chat")
            .field("messages", &self.messages.len())
            .field("fed", &self.fed.len())
            .field("kv_capacity", &self.kv_capacity)
            .field("stop", &self.stop)
            .field("keeps_replies", &self.keeps_replies)
            .finish_non_exhaustive()
    }
}

/// The transcript half of a saved chat (`/save`); the state half is `<file>.state`.
#[derive(serde::Serialize, serde::Deserialize)]
struct Transcript {
    cheems_chat: u32,
    model_fingerprint: String,
    state_file: String,
    system: Option<String>,
    messages: Vec<Message>,
    fed_tokens: Vec<u32>,
    fed_text: Option<String>,
}

const TRANSCRIPT_VERSION: u32 = 1;

/// The state file saved next to a transcript: `<file>.state`.
pub fn state_path(transcript: &Path) -> PathBuf {
    let mut p = transcript.as_os_str().to_owned();
    p.push(".state");
    PathBuf::from(p)
}

impl Chat {
    /// Opens a session on `model` and reads its tokenizer and chat template.
    pub fn new(model: Arc<Model>, opts: ChatOptions) -> Result<Self> {
        let tok = Tokenizer::from_metadata(model.file.metadata())?;
        let template = ChatTemplate::from_model(&model)?;
        let c = &model.config;
        let ctx = opts.ctx.unwrap_or(c.context_length.min(4096)).max(1);
        let kv_capacity = model
            .layers
            .iter()
            .any(|l| matches!(l.mixer, Mixer::Attention(_)))
            .then_some(ctx);
        let session = Session::new_on(
            model.clone(),
            &SessionOptions {
                ctx: Some(ctx),
                threads: opts.threads,
            },
            opts.device,
        )?;
        let mut stop = tok.stop_tokens().to_vec();
        if let Some(eot) = end_of_turn(&template, &tok) {
            if !stop.contains(&eot) {
                stop.push(eot);
            }
        }
        let keeps_replies = keeps_replies(&template);
        Ok(Chat {
            model,
            tok,
            template,
            session,
            opts,
            system: None,
            messages: Vec::new(),
            fed: Vec::new(),
            fed_text: Some(String::new()),
            kv_capacity,
            stop,
            keeps_replies,
            last: None,
        })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tok
    }

    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The conversation, without the system message.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    pub fn system(&self) -> Option<&str> {
        self.system.as_deref()
    }

    /// Sets (or with `None` removes) the system message; the session catches up at the next turn.
    pub fn set_system(&mut self, text: Option<&str>) {
        self.system = text.filter(|t| !t.is_empty()).map(str::to_string);
    }

    /// Tokens that end a reply.
    pub fn stop_tokens(&self) -> &[u32] {
        &self.stop
    }

    /// Tokens the session holds, and how many it can hold (`None`: no limit).
    pub fn context(&self) -> (usize, Option<usize>) {
        (self.session.pos(), self.kv_capacity)
    }

    /// The numbers of the last turn.
    pub fn last_stats(&self) -> Option<&TurnStats> {
        self.last.as_ref()
    }

    /// Changes the sampling settings of the following replies.
    pub fn set_sampling(&mut self, params: SamplerParams) {
        self.opts.sampling = params;
    }

    /// Forgets the conversation (the system message stays).
    pub fn reset(&mut self) {
        self.messages.clear();
        self.session.reset();
        self.fed.clear();
        self.fed_text = Some(String::new());
        self.last = None;
    }

    /// The whole conversation, system message first.
    fn all_messages(&self) -> Vec<Message> {
        let mut all = Vec::with_capacity(self.messages.len() + 1);
        if let Some(s) = &self.system {
            all.push(Message::new("system", s));
        }
        all.extend(self.messages.iter().cloned());
        all
    }

    fn render(&self, add_generation_prompt: bool) -> Result<String> {
        let text = self
            .template
            .render(&self.all_messages(), add_generation_prompt)?;
        if text.is_empty() {
            bail!("the chat template rendered nothing");
        }
        Ok(text)
    }

    /// Token ids of rendered text; `start`: the text begins the session (the fallback template
    /// gets BOS as the tokenizer asks; real templates write their own).
    fn encode(&self, text: &str, start: bool) -> Result<Vec<u32>> {
        self.tok.encode(text, start && self.template.is_fallback())
    }

    /// Sends the user's message and generates the reply. Text comes through `on` as it is
    /// made; setting `cancel` stops prompt reading or the reply (checked between batches and
    /// tokens). A reply stopped while the prompt was being read leaves no trace in the
    /// conversation; one stopped while generating stays, as far as it got.
    pub fn say(
        &mut self,
        text: &str,
        cancel: &AtomicBool,
        on: &mut impl FnMut(Event<'_>) -> Result<()>,
    ) -> Result<Reply> {
        let t0 = Instant::now();
        self.messages.push(Message::new("user", text));
        let prompt = match self.render(true) {
            Ok(p) => p,
            Err(e) => {
                self.messages.pop();
                return Err(e);
            }
        };
        let (tokens, reread, prompt) = match self.plan_fitting(prompt, on) {
            Ok(p) => p,
            Err(e) => {
                self.messages.pop();
                return Err(e);
            }
        };
        self.fed_text = None;
        if !self.feed(&tokens, cancel, on)? {
            self.messages.pop();
            let stats = TurnStats {
                prompt_tokens: tokens.len(),
                prompt_s: t0.elapsed().as_secs_f64(),
                reread,
                context: self.session.pos(),
                stop: StopReason::Cancelled,
                ..TurnStats::default()
            };
            self.last = Some(stats.clone());
            return Ok(Reply {
                text: String::new(),
                stats,
            });
        }
        // The state before the reply, for templates that re-write replies.
        let checkpoint =
            (!self.keeps_replies).then(|| (self.session.snapshot(), self.fed.len(), prompt.len()));
        let prompt_s = t0.elapsed().as_secs_f64();

        let t1 = Instant::now();
        let (reply, n, stop) = self.generate(cancel, on)?;
        let reply_s = t1.elapsed().as_secs_f64();
        self.fed_text = Some(prompt + &reply);
        self.messages.push(Message::new("assistant", &reply));
        if stop == StopReason::ContextFull {
            on(Event::Notice(format!(
                "the context of {} tokens is full",
                self.kv_capacity.unwrap_or(0)
            )))?;
        }
        self.close_turn(checkpoint, on)?;
        let stats = TurnStats {
            prompt_tokens: tokens.len(),
            prompt_s,
            reread,
            reply_tokens: n,
            reply_s,
            context: self.session.pos(),
            stop,
        };
        self.last = Some(stats.clone());
        Ok(Reply { text: reply, stats })
    }

    /// What to feed so the session has read `text`: the tokens, whether more than the new part
    /// is read, and the text the session will have read. Rewinds or resets the session when
    /// needed; drops turns when a plain-attention context cannot hold the result.
    fn plan_fitting(
        &mut self,
        mut text: String,
        on: &mut impl FnMut(Event<'_>) -> Result<()>,
    ) -> Result<(Vec<u32>, bool, String)> {
        let appended = match &self.fed_text {
            Some(done) if !done.is_empty() && text.starts_with(done.as_str()) => {
                Some(self.encode(&text[done.len()..], false)?)
            }
            _ => None,
        };
        let (mut tokens, mut restart, why) = match appended {
            Some(t) if !t.is_empty() => (t, false, None),
            _ => {
                let all = self.encode(&text, true)?;
                if !self.fed.is_empty() && all.len() > self.fed.len() && all.starts_with(&self.fed)
                {
                    (all[self.fed.len()..].to_vec(), false, None)
                } else {
                    let why = (!self.fed.is_empty()).then_some(
                        "the conversation as rendered no longer begins with what the session read",
                    );
                    (all, true, why)
                }
            }
        };
        if let Some(cap) = self.kv_capacity {
            let reserve = self.opts.max_reply.min(cap / 4).max(1);
            let base = if restart { 0 } else { self.fed.len() };
            if base + tokens.len() + reserve > cap {
                let dropped = self.make_room(cap - reserve.min(cap))?;
                on(Event::Notice(match self.opts.on_full {
                    _ if dropped == 0 => format!(
                        "the context of {cap} tokens is nearly full: re-reading the conversation"
                    ),
                    OnFull::Drop => format!(
                        "the context of {cap} tokens is full: dropped the {dropped} oldest turn{}",
                        if dropped == 1 { "" } else { "s" }
                    ),
                    OnFull::Reset => format!(
                        "the context of {cap} tokens is full: the conversation starts over from your message"
                    ),
                }))?;
                text = self.render(true)?;
                tokens = self.encode(&text, true)?;
                restart = true;
            }
        }
        if restart {
            if let Some(why) = why {
                on(Event::Detail(format!(
                    "re-reading the whole conversation ({} tokens): {why}",
                    tokens.len()
                )))?;
            }
            self.session.reset();
            self.fed.clear();
            self.fed_text = Some(String::new());
        }
        // Earlier turns read again (not the first turn of a conversation).
        let reread = restart && self.messages.len() > 1;
        Ok((tokens, reread, text))
    }

    /// Drops the oldest turns (or, with [`OnFull::Reset`], all but the new message) until the
    /// rendering fits in `budget` tokens; returns how many turns went. Fails, changing nothing,
    /// when the new message alone (with the system message) does not fit.
    fn make_room(&mut self, budget: usize) -> Result<usize> {
        let n_tokens =
            |chat: &Self| -> Result<usize> { Ok(chat.encode(&chat.render(true)?, true)?.len()) };
        let keep_from = self.messages.len().saturating_sub(1);
        let earlier: Vec<Message> = self.messages.drain(..keep_from).collect();
        let alone = n_tokens(self);
        if !matches!(alone, Ok(n) if n <= budget) {
            self.messages.splice(..0, earlier);
            let n = alone?;
            bail!(
                "the message needs {n} tokens with the system message and room for a reply; \
                 the context holds {budget} (raise --ctx)"
            );
        }
        let turns = |m: &[Message]| m.iter().filter(|m| m.role == "user").count();
        if self.opts.on_full == OnFull::Reset {
            return Ok(turns(&earlier));
        }
        // Put back the most recent earlier turns that fit, a turn (a user message and what
        // follows it) at a time.
        let mut start = earlier.len();
        while let Some(i) = earlier[..start].iter().rposition(|m| m.role == "user") {
            self.messages.splice(..0, earlier[i..start].iter().cloned());
            if n_tokens(self)? > budget {
                self.messages.drain(..start - i);
                break;
            }
            start = i;
        }
        Ok(turns(&earlier[..start]))
    }

    /// Feeds tokens in batches, reporting progress; `false` when cancelled part-way.
    fn feed(
        &mut self,
        tokens: &[u32],
        cancel: &AtomicBool,
        on: &mut impl FnMut(Event<'_>) -> Result<()>,
    ) -> Result<bool> {
        let total = tokens.len();
        on(Event::Prefill { done: 0, total })?;
        for (i, chunk) in tokens.chunks(MAX_BATCH).enumerate() {
            if cancel.load(Ordering::Relaxed) {
                return Ok(false);
            }
            self.session.prefill(chunk)?;
            self.fed.extend_from_slice(chunk);
            on(Event::Prefill {
                done: (i * MAX_BATCH + chunk.len()).min(total),
                total,
            })?;
        }
        Ok(true)
    }

    /// Samples and feeds the reply; returns its text, token count and why it ended.
    fn generate(
        &mut self,
        cancel: &AtomicBool,
        on: &mut impl FnMut(Event<'_>) -> Result<()>,
    ) -> Result<(String, usize, StopReason)> {
        let mut params = self.opts.sampling.clone();
        // Each reply's seed depends on where it starts, so a restored conversation replies as
        // the original did.
        params.seed ^= (self.fed.len() as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let recent = params.repeat_last_n;
        let mut sampler = Sampler::new(params, self.model.config.n_vocab);
        let from = self.fed.len().saturating_sub(recent);
        self.fed[from..].iter().for_each(|&t| sampler.accept(t));
        self.fed.reserve(self.opts.max_reply.min(1 << 16));
        let mut reply = String::new();
        let mut stream = StreamDecoder::new();
        let mut stop = StopReason::Length;
        let mut n = 0;
        while n < self.opts.max_reply {
            if cancel.load(Ordering::Relaxed) {
                stop = StopReason::Cancelled;
                break;
            }
            let next = sampler.sample(self.session.logits());
            if !self.opts.ignore_eos && self.stop.contains(&next) {
                stop = StopReason::EndOfTurn;
                break;
            }
            if self
                .kv_capacity
                .is_some_and(|cap| self.session.pos() >= cap)
            {
                stop = StopReason::ContextFull;
                break;
            }
            if let Some(piece) = stream.push(&self.tok, next) {
                on(Event::Text(&piece))?;
                reply.push_str(&piece);
            }
            sampler.accept(next);
            self.session.decode(next)?;
            self.fed.push(next);
            n += 1;
        }
        if let Some(piece) = stream.flush() {
            on(Event::Text(&piece))?;
            reply.push_str(&piece);
        }
        Ok((reply, n, stop))
    }

    /// Feeds what the template writes after the reply (its end-of-turn text), so the next turn
    /// reads only the user's message. When the template writes the reply differently from how
    /// it was generated, goes back to `checkpoint` (state, tokens and text length before the
    /// reply) and reads the reply as written.
    fn close_turn(
        &mut self,
        checkpoint: Option<(SessionState, usize, usize)>,
        on: &mut impl FnMut(Event<'_>) -> Result<()>,
    ) -> Result<()> {
        let (Some(done), Ok(closed)) = (self.fed_text.as_deref(), self.render(false)) else {
            return Ok(());
        };
        let (rewind, at) = if closed.starts_with(done) {
            (None, done.len())
        } else {
            match checkpoint {
                Some((snap, fed_len, at)) if closed.starts_with(&done[..at]) => {
                    (Some((snap, fed_len)), at)
                }
                _ => {
                    on(Event::Detail(
                        "the template rewrites earlier turns: the next turn re-reads the conversation"
                            .to_string(),
                    ))?;
                    return Ok(());
                }
            }
        };
        if at == closed.len() {
            return Ok(());
        }
        let tokens = self.encode(&closed[at..], false)?;
        let base = rewind.as_ref().map_or(self.fed.len(), |r| r.1);
        if tokens.is_empty()
            || self
                .kv_capacity
                .is_some_and(|cap| base + tokens.len() > cap)
        {
            return Ok(());
        }
        if let Some((snap, fed_len)) = rewind {
            on(Event::Detail(format!(
                "the template writes the reply differently from how it was generated: \
                 re-reading it from the end of the prompt ({} tokens)",
                tokens.len()
            )))?;
            self.session.restore(&snap)?;
            self.fed.truncate(fed_len);
        }
        self.fed_text = None;
        let never = AtomicBool::new(false);
        self.feed(&tokens, &never, &mut |_| Ok(()))?;
        self.fed_text = Some(closed);
        Ok(())
    }

    /// Saves the conversation: the transcript (JSON) to `path` and the session state to
    /// `<path>.state` (the format of `cheems run --save-state`).
    pub fn save(&self, path: &Path) -> Result<()> {
        let state = state_path(path);
        self.session.save_state(&state)?;
        let t = Transcript {
            cheems_chat: TRANSCRIPT_VERSION,
            model_fingerprint: format!("{:016x}", self.model.fingerprint),
            state_file: state
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            system: self.system.clone(),
            messages: self.messages.clone(),
            fed_tokens: self.fed.clone(),
            fed_text: self.fed_text.clone(),
        };
        let json = serde_json::to_string_pretty(&t)?;
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Restores a conversation saved by [`Chat::save`] for this model. On an error the
    /// conversation is as it was.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let t: Transcript = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a saved chat", path.display()))?;
        if t.cheems_chat != TRANSCRIPT_VERSION {
            bail!(
                "{} is a saved chat of version {}, this build reads version {TRANSCRIPT_VERSION}",
                path.display(),
                t.cheems_chat
            );
        }
        let fp = format!("{:016x}", self.model.fingerprint);
        if t.model_fingerprint != fp {
            bail!(
                "{} was saved with a different model (fingerprint {}, this model {fp})",
                path.display(),
                t.model_fingerprint
            );
        }
        let n_vocab = self.model.config.n_vocab;
        if let Some(bad) = t.fed_tokens.iter().find(|&&id| id as usize >= n_vocab) {
            bail!(
                "{}: token id {bad} is outside the vocabulary",
                path.display()
            );
        }
        let state = state_path(path);
        let before = self.session.snapshot();
        self.session.load_state(&state)?;
        if self.session.pos() != t.fed_tokens.len() {
            let pos = self.session.pos();
            self.session.restore(&before)?;
            return Err(anyhow!(
                "{} holds {pos} tokens of state, the transcript {}",
                state.display(),
                t.fed_tokens.len()
            ));
        }
        self.system = t.system;
        self.messages = t.messages;
        self.fed = t.fed_tokens;
        self.fed_text = t.fed_text;
        self.last = None;
        Ok(())
    }
}

/// The control token a template writes right after a reply (ChatML's `<|im_end|>`), if any:
/// a chat reply stops there even when the file names no end-of-turn token.
pub fn end_of_turn(t: &ChatTemplate, tok: &Tokenizer) -> Option<u32> {
    let marker = "cheems probe reply";
    let text = t
        .render(
            &[
                Message::new("user", "Hi"),
                Message::new("assistant", marker),
            ],
            false,
        )
        .ok()?;
    let after = text.find(marker)? + marker.len();
    let first = *tok.encode(&text[after..], false).ok()?.first()?;
    tok.is_control(first).then_some(first)
}

/// Whether a rendered conversation ending in a reply begins with the prompt that asked for it
/// followed by the reply as generated (false for templates that trim replies).
fn keeps_replies(t: &ChatTemplate) -> bool {
    let user = Message::new("user", "Hi");
    let reply = " A reply,\nwith spaces. \n";
    let (Ok(prompt), Ok(closed)) = (
        t.render(std::slice::from_ref(&user), true),
        t.render(&[user.clone(), Message::new("assistant", reply)], false),
    ) else {
        return false;
    };
    closed.starts_with(&(prompt + reply))
}
