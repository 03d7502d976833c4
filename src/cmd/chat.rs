//! `cheems chat [FILE]`: a conversation in the terminal, or one turn per line of standard input.
//!
//! On a terminal: line editing and history (`rustyline`), a trailing `\` or a paste for several
//! lines, `/` commands, a short progress note on stderr while the prompt is read, Ctrl-C to stop
//! a reply, Ctrl-D to leave. Otherwise: each line of standard input is a user turn (or the whole
//! input with `--single`) and only the replies are printed, one after another, each ending with
//! a newline. The conversation itself is [`cheems::chat::Chat`].

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use cheems::chat::{Chat, ChatOptions, Event, OnFull, StopReason, TurnStats};
use cheems::Model;
use rustyline::error::ReadlineError;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};

use super::run::SamplingArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Model file (default: $CHEEMS_MODEL, else the model that ships with cheems).
    pub file: Option<PathBuf>,
    /// The system message.
    #[arg(long)]
    pub system: Option<String>,
    /// Tokens a reply may have at most.
    #[arg(short = 'n', long, default_value_t = 1024)]
    pub n_predict: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Keep generating past end-of-turn and end-of-sequence tokens (replies last -n tokens).
    #[arg(long)]
    pub ignore_eos: bool,
    /// Positions of a plain-attention KV cache (llama); default: the model's context, at most 4096.
    #[arg(long)]
    pub ctx: Option<usize>,
    /// When a plain-attention context is full: drop the oldest turns, or reset the conversation.
    #[arg(long, value_enum, default_value_t = Full::Drop)]
    pub on_full: Full,
    /// Threads (default: available cores).
    #[arg(short, long)]
    pub threads: Option<usize>,
    /// Where the forward pass runs: cpu, cuda or cuda:N (CUDA needs a build with
    /// `--features cuda`, an NVIDIA GPU and its driver).
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: cheems::Device,
    /// Read all of standard input as one user message.
    #[arg(long)]
    pub single: bool,
    /// Print prompt and reply timings after each reply (to stderr).
    #[arg(long)]
    pub stats: bool,
    /// Say what the session reads again, and why (to stderr).
    #[arg(short, long)]
    pub verbose: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Full {
    Drop,
    Reset,
}

const HELP: &str = "\
/help             this list
/reset            forget the conversation (the system message stays)
/system [TEXT]    set the system message; alone: show it; `/system -` removes it
/save FILE        save the conversation: FILE (transcript) and FILE.state (session state)
/load FILE        restore a conversation saved with /save
/stats            timings of the last reply and the context in use
/quit             leave (also /exit, Ctrl-D)
A line ending in \\ continues on the next line; a paste may hold several lines.
Start a message with // to send one that begins with /. Ctrl-C stops a reply.";

pub fn run(a: Args) -> Result<()> {
    let params = a.sampling.params()?;
    let path = match &a.file {
        Some(p) => p.clone(),
        None => cheems::default_model::require("cheems chat MODEL.gguf")?,
    };
    let interactive = std::io::stdin().is_terminal() && !a.single;
    let model = Arc::new(Model::load(&path)?);
    let mut chat = Chat::new(
        model,
        ChatOptions {
            sampling: params.clone(),
            max_reply: a.n_predict,
            ignore_eos: a.ignore_eos,
            ctx: a.ctx,
            threads: a.threads,
            on_full: match a.on_full {
                Full::Drop => OnFull::Drop,
                Full::Reset => OnFull::Reset,
            },
            device: a.device,
        },
    )?;
    chat.set_system(a.system.as_deref());
    if a.verbose {
        eprintln!(
            "seed {}; stop tokens {:?}; {}",
            params.seed,
            chat.stop_tokens(),
            if chat.template().is_fallback() {
                "no chat template in the file: using the plain User:/Assistant: format"
            } else {
                "the file's chat template"
            }
        );
    }
    let mut ui = Ui {
        interactive,
        spinner: interactive && std::io::stderr().is_terminal(),
        stats: a.stats,
        verbose: a.verbose,
        cancel: Arc::new(AtomicBool::new(false)),
    };
    if interactive {
        ui.interactive(&mut chat, &path)
    } else if a.single {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading standard input")?;
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let text = text.strip_suffix('\r').unwrap_or(text);
        if text.trim().is_empty() {
            bail!("standard input is empty: nothing to say");
        }
        ui.turn(&mut chat, text)
    } else {
        ui.piped(&mut chat)
    }
}

/// What a command asks of the loop.
enum Flow {
    Continue,
    Quit,
}

struct Ui {
    interactive: bool,
    /// Progress note on stderr while reading the prompt.
    spinner: bool,
    stats: bool,
    verbose: bool,
    /// Set by Ctrl-C while a reply is made.
    cancel: Arc<AtomicBool>,
}

impl Ui {
    fn interactive(&mut self, chat: &mut Chat, path: &Path) -> Result<()> {
        let flag = self.cancel.clone();
        ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed))
            .context("cannot catch Ctrl-C")?;
        let config = rustyline::Config::builder()
            .auto_add_history(false)
            .bracketed_paste(true)
            .build();
        let mut rl =
            rustyline::Editor::<Input, rustyline::history::DefaultHistory>::with_config(config)
                .context("cannot set up line editing")?;
        rl.set_helper(Some(Input));
        let (held, cap) = chat.context();
        eprintln!(
            "cheems chat: {} ({}{}). /help for commands, Ctrl-D to leave.",
            path.display(),
            chat.model().config.arch.name(),
            match cap {
                Some(c) => format!(", context {c} tokens"),
                None => String::new(),
            }
        );
        debug_assert_eq!(held, 0);
        loop {
            let line = match rl.readline("> ") {
                Ok(line) => line,
                Err(ReadlineError::Interrupted) => {
                    eprintln!("(Ctrl-D or /quit to leave)");
                    continue;
                }
                Err(ReadlineError::Eof) => break,
                Err(e) => return Err(anyhow!("reading the terminal: {e}")),
            };
            let text = line.replace("\\\n", "\n");
            if text.trim().is_empty() {
                continue;
            }
            let _ = rl.add_history_entry(line.as_str());
            match self.input(chat, &text) {
                Ok(Flow::Quit) => break,
                Ok(Flow::Continue) => {}
                Err(e) => eprintln!("error: {}", format!("{e:#}").replace('\n', " ")),
            }
        }
        Ok(())
    }

    /// Standard input, one user turn per line (a trailing `\` joins the next line).
    fn piped(&mut self, chat: &mut Chat) -> Result<()> {
        let mut pending = String::new();
        for line in std::io::stdin().lock().lines() {
            let line = line.context("reading standard input")?;
            let line = line.strip_suffix('\r').unwrap_or(&line);
            if let Some(head) = line.strip_suffix('\\') {
                pending.push_str(head);
                pending.push('\n');
                continue;
            }
            pending.push_str(line);
            let text = std::mem::take(&mut pending);
            if text.trim().is_empty() {
                continue;
            }
            if let Flow::Quit = self.input(chat, &text)? {
                return Ok(());
            }
        }
        if !pending.trim().is_empty() {
            self.input(chat, &pending)?;
        }
        Ok(())
    }

    /// A line of input: a command, or a message.
    fn input(&mut self, chat: &mut Chat, text: &str) -> Result<Flow> {
        if let Some(escaped) = text.strip_prefix("//") {
            let msg = format!("/{escaped}");
            self.turn(chat, &msg)?;
            return Ok(Flow::Continue);
        }
        match text.strip_prefix('/') {
            Some(cmd) => self.command(chat, cmd.trim()),
            None => {
                self.turn(chat, text)?;
                Ok(Flow::Continue)
            }
        }
    }

    fn command(&mut self, chat: &mut Chat, cmd: &str) -> Result<Flow> {
        let (name, arg) = cmd.split_once(char::is_whitespace).unwrap_or((cmd, ""));
        let arg = arg.trim();
        let need_file = |what: &str| -> Result<PathBuf> {
            if arg.is_empty() {
                bail!("/{what} needs a file name");
            }
            Ok(PathBuf::from(arg))
        };
        match name {
            "help" | "?" => eprintln!("{HELP}"),
            "quit" | "exit" | "q" => return Ok(Flow::Quit),
            "reset" | "clear" => {
                chat.reset();
                self.note("conversation forgotten");
            }
            "system" => match arg {
                "" => match chat.system() {
                    Some(s) => eprintln!("system: {s}"),
                    None => eprintln!("no system message"),
                },
                "-" => {
                    chat.set_system(None);
                    self.note("system message removed");
                }
                text => {
                    chat.set_system(Some(text));
                    self.note("system message set");
                }
            },
            "save" => {
                let p = need_file("save")?;
                chat.save(&p)?;
                self.note(&format!(
                    "saved {} messages to {} and {}",
                    chat.messages().len(),
                    p.display(),
                    cheems::chat::state_path(&p).display()
                ));
            }
            "load" => {
                let p = need_file("load")?;
                let t = std::time::Instant::now();
                chat.load(&p)?;
                self.note(&format!(
                    "loaded {} messages ({} tokens of state) in {:.1} ms",
                    chat.messages().len(),
                    chat.context().0,
                    t.elapsed().as_secs_f64() * 1e3
                ));
            }
            "stats" => {
                match chat.last_stats() {
                    Some(s) => eprintln!("{}", stats_line(s, chat)),
                    None => eprintln!("no reply yet"),
                }
                let (held, cap) = chat.context();
                eprintln!(
                    "{} messages, {held} tokens read{}",
                    chat.messages().len(),
                    cap.map_or(String::new(), |c| format!(" of {c}"))
                );
            }
            other => bail!("unknown command /{other} (/help lists them)"),
        }
        Ok(Flow::Continue)
    }

    /// One message and its reply.
    fn turn(&mut self, chat: &mut Chat, text: &str) -> Result<()> {
        self.cancel.store(false, Ordering::Relaxed);
        let mut spin = Spinner {
            on: self.spinner,
            shown: false,
            frame: 0,
        };
        let mut out = Printer {
            out: std::io::stdout().lock(),
            mid_line: false,
            interactive: self.interactive,
        };
        let verbose = self.verbose;
        let reply = chat.say(text, &self.cancel, &mut |ev| {
            spin.clear_unless_progress(&ev);
            match ev {
                Event::Prefill { done, total } => spin.show(done, total),
                Event::Text(t) => out.text(t)?,
                Event::Notice(m) => out.note(&m)?,
                Event::Detail(m) if verbose => out.note(&m)?,
                Event::Detail(_) => {}
            }
            Ok(())
        });
        spin.clear();
        let reply = reply?;
        out.end_reply()?;
        if reply.stats.stop == StopReason::Cancelled && self.interactive {
            // Over the terminal's `^C` echo, if it left one at the start of the line.
            eprintln!("\r\x1b[K[stopped]");
        }
        if self.stats {
            eprintln!("{}", stats_line(&reply.stats, chat));
        }
        Ok(())
    }

    /// A command's confirmation: on the terminal only.
    fn note(&self, msg: &str) {
        if self.interactive {
            eprintln!("[{msg}]");
        }
    }
}

fn stats_line(s: &TurnStats, chat: &Chat) -> String {
    let rate = |n: usize, t: f64| n as f64 / t.max(1e-9);
    let (_, cap) = chat.context();
    format!(
        "[prompt: {} tokens in {:.1} ms ({:.1} tok/s){} | reply: {} tokens in {:.1} ms ({:.1} tok/s) | context: {}{} tokens]",
        s.prompt_tokens,
        s.prompt_s * 1e3,
        rate(s.prompt_tokens, s.prompt_s),
        if s.reread { ", history re-read" } else { "" },
        s.reply_tokens,
        s.reply_s * 1e3,
        rate(s.reply_tokens, s.reply_s),
        s.context,
        cap.map_or(String::new(), |c| format!("/{c}")),
    )
}

/// Reply text to stdout, notes to stderr on lines of their own.
struct Printer<'a> {
    out: std::io::StdoutLock<'a>,
    /// Whether the terminal's cursor is after reply text.
    mid_line: bool,
    interactive: bool,
}

impl Printer<'_> {
    fn text(&mut self, t: &str) -> Result<()> {
        self.out.write_all(t.as_bytes())?;
        self.out.flush()?;
        self.mid_line = !t.ends_with('\n');
        Ok(())
    }

    fn note(&mut self, m: &str) -> Result<()> {
        // On a terminal stdout and stderr share the screen: start a line.
        if self.interactive && self.mid_line {
            self.out.write_all(b"\n")?;
            self.out.flush()?;
            self.mid_line = false;
        }
        eprintln!("[{m}]");
        Ok(())
    }

    /// On a terminal the reply ends at the start of a line; in a pipe, with a newline.
    fn end_reply(&mut self) -> Result<()> {
        if !self.interactive || self.mid_line {
            self.out.write_all(b"\n")?;
        }
        self.mid_line = false;
        self.out.flush()?;
        Ok(())
    }
}

/// A one-line progress note on stderr while the prompt is read.
struct Spinner {
    on: bool,
    shown: bool,
    frame: usize,
}

impl Spinner {
    const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

    fn show(&mut self, done: usize, total: usize) {
        if !self.on {
            return;
        }
        let f = Self::FRAMES[self.frame % Self::FRAMES.len()];
        self.frame += 1;
        eprint!("\r\x1b[2K{f} reading {done}/{total} tokens");
        let _ = std::io::stderr().flush();
        self.shown = true;
    }

    /// Clears the note before anything but more progress.
    fn clear_unless_progress(&mut self, ev: &Event<'_>) {
        if !matches!(ev, Event::Prefill { .. }) {
            self.clear();
        }
    }

    fn clear(&mut self) {
        if self.shown {
            eprint!("\r\x1b[2K");
            let _ = std::io::stderr().flush();
            self.shown = false;
        }
    }
}

/// Line-editor helper: a line ending in `\` continues on the next.
struct Input;

impl rustyline::completion::Completer for Input {
    type Candidate = String;
}

impl rustyline::hint::Hinter for Input {
    type Hint = String;
}

impl rustyline::highlight::Highlighter for Input {}

impl Validator for Input {
    fn validate(&self, ctx: &mut ValidationContext) -> rustyline::Result<ValidationResult> {
        Ok(if ctx.input().ends_with('\\') {
            ValidationResult::Incomplete
        } else {
            ValidationResult::Valid(None)
        })
    }
}

impl rustyline::Helper for Input {}
