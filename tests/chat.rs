//! `cheems chat` as a user meets it: a terminal session driven through a pseudo-terminal
//! (turns, /save, /reset, /load, Ctrl-C, /quit, Ctrl-D), standard input in scripts, the context
//! of a plain-attention model filling up, and clean errors.
//!
//! The models are the tiny random-weight fixtures, converted with `cheems quantize`: replies are
//! gibberish, so the checks are about mechanics. A reply after `/load` must equal the reply the
//! saved conversation got the first time, and a conversation typed into the terminal must get
//! the replies a separate process gets when the same lines come from a pipe.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rexpect::session::PtySession;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_cheems")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(name)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn quantize(name: &str, dir: &Path) -> PathBuf {
    let out = dir.join(format!("{name}.gguf"));
    let run = Command::new(bin())
        .args(["quantize", fixture(name).to_str().unwrap(), "-o"])
        .arg(&out)
        .args(["--type", "f16"])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", text(&run.stderr));
    out
}

/// `cheems chat MODEL ARGS` with `input` on standard input (a pipe).
fn chat_piped(model: &Path, args: &[&str], input: &str) -> Output {
    let mut child = Command::new(bin())
        .arg("chat")
        .arg(model)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// The `[prompt: N tokens ...]` counts of `--stats` lines.
fn prompt_tokens(stderr: &str) -> Vec<usize> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("[prompt: "))
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect()
}

/// What the terminal showed between the end of the typed line and the `--stats` line: the
/// reply, without escape sequences and progress notes, with `\n` line ends.
fn clean_reply(raw: &str) -> String {
    // rexpect hands over each byte as one char.
    let bytes: Vec<u8> = raw.chars().map(|c| c as u32 as u8).collect();
    let raw = String::from_utf8_lossy(&bytes);
    let ansi = regex::Regex::new(r"\x1b\[[0-9;?]*[A-Za-z]").unwrap();
    let spinner = regex::Regex::new(r"\r?[\u{2800}-\u{28FF}] reading \d+/\d+ tokens").unwrap();
    let s = ansi.replace_all(&raw, "");
    let s = spinner.replace_all(&s, "");
    let s = s.replace("\r\n", "\n").replace('\r', "");
    // The typed line ends with the first newline; the reply follows.
    let s = s.split_once('\n').map_or("", |(_, r)| r);
    s.trim_end_matches('\n').to_string()
}

/// Sends a message and returns the reply shown (the session runs with `--stats`).
fn say(p: &mut PtySession, msg: &str) -> String {
    p.exp_string("> ").unwrap();
    p.send_line(msg).unwrap();
    p.exp_string(msg).unwrap();
    let raw = p.exp_string("[prompt: ").unwrap();
    clean_reply(&raw)
}

fn command(p: &mut PtySession, cmd: &str, answer: &str) -> String {
    p.exp_string("> ").unwrap();
    p.send_line(cmd).unwrap();
    p.exp_string(answer).unwrap()
}

fn spawn_chat(model: &Path, args: &[&str]) -> PtySession {
    let mut cmd = Command::new(bin());
    cmd.arg("chat").arg(model).args(args).env("TERM", "xterm");
    let mut p = rexpect::session::spawn_command(cmd, Some(60_000)).unwrap();
    p.exp_string("Ctrl-D to leave").unwrap();
    p
}

#[test]
fn terminal_session_saves_resets_loads_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let model = quantize("doge", dir.path());
    let args = ["--seed", "7", "-n", "24", "--stats", "--temp", "0.9"];
    let saved = dir.path().join("conv.chat");

    let mut p = spawn_chat(&model, &args);
    let first = say(&mut p, "Hello there");
    command(
        &mut p,
        &format!("/save {}", saved.display()),
        "[saved 2 messages",
    );
    let second = say(&mut p, "How are you?");
    assert!(!second.is_empty(), "the second reply is empty");
    command(&mut p, "/reset", "[conversation forgotten]");
    command(
        &mut p,
        &format!("/load {}", saved.display()),
        "[loaded 2 messages",
    );
    let again = say(&mut p, "How are you?");
    assert_eq!(
        again, second,
        "after /load the reply must equal the one the saved conversation got"
    );
    // A bad command is one line and the session goes on.
    command(&mut p, "/load /nonexistent/x.chat", "error: cannot read");
    command(&mut p, "/stats", "4 messages");
    p.exp_string("> ").unwrap();
    p.send_line("/quit").unwrap();
    p.exp_eof().unwrap();
    assert!(saved.exists() && cheems::chat::state_path(&saved).exists());

    // The same lines through a pipe, in another process: the same replies.
    let out = chat_piped(&model, &args, "Hello there\nHow are you?\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let piped = text(&out.stdout);
    let stats = prompt_tokens(&text(&out.stderr));
    assert_eq!(stats.len(), 2, "{}", text(&out.stderr));
    assert!(
        piped.starts_with(&first),
        "piped {piped:?}, terminal {first:?}"
    );
    assert!(
        piped.trim_end_matches('\n').ends_with(&second),
        "piped {piped:?}, terminal {second:?}"
    );

    // Ctrl-C stops an endless reply and the session goes on; Ctrl-D leaves.
    let mut p = spawn_chat(&model, &["--ignore-eos", "-n", "100000000", "--seed", "1"]);
    p.exp_string("> ").unwrap();
    p.send_line("Tell me a long story").unwrap();
    p.exp_string("Tell me a long story").unwrap();
    p.exp_regex(r"[\s\S]{200}").unwrap();
    p.send_control('c').unwrap();
    p.exp_string("[stopped]").unwrap();
    command(&mut p, "/stats", "2 messages");
    p.exp_string("> ").unwrap();
    p.send_control('d').unwrap();
    p.exp_eof().unwrap();
}

#[test]
fn piped_input_prints_only_replies() {
    let dir = tempfile::tempdir().unwrap();
    let model = quantize("llama", dir.path());
    // A trailing backslash joins lines: two turns here, the first of two lines.
    let out = chat_piped(
        &model,
        &["--seed", "3", "-n", "8", "--ignore-eos", "--stats"],
        "first line \\\nsecond line\n\nnext turn\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert_eq!(prompt_tokens(&err).len(), 2, "{err}");
    assert!(!text(&out.stdout).contains("> "));
    assert!(!text(&out.stdout).contains('\x1b'), "no colors in a pipe");

    // Without --stats nothing but replies: stderr is empty.
    let out = chat_piped(&model, &["--seed", "3", "-n", "8"], "hi\n");
    assert!(out.status.success());
    assert_eq!(text(&out.stderr), "");
    assert!(text(&out.stdout).ends_with('\n'));

    // --single: the whole input is one message.
    let out = chat_piped(
        &model,
        &["--seed", "3", "-n", "8", "--single", "--stats"],
        "one\ntwo\nthree\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(prompt_tokens(&text(&out.stderr)).len(), 1);

    // /system in a script, then a turn; a command error fails the script.
    let out = chat_piped(&model, &["-n", "4"], "/system Be brief.\nhi\n");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = chat_piped(&model, &["-n", "4"], "/load /nonexistent/x.chat\nhi\n");
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("error: ") && err.lines().count() == 1,
        "{err}"
    );
}

/// Each turn reads only the new part of the conversation: the second turn's prompt is as long
/// whether the first message was short or long (ChatML, and Doge's template that trims replies).
#[test]
fn later_turns_read_only_the_new_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let long = "the quick brown fox jumps over the lazy dog ".repeat(15);
    for name in ["llama", "doge"] {
        let model = quantize(name, dir.path());
        let mut second = Vec::new();
        for first in ["hi", long.as_str()] {
            let out = chat_piped(
                &model,
                &["--seed", "5", "-n", "12", "--stats", "-v"],
                &format!("{first}\nand now?\n"),
            );
            let err = text(&out.stderr);
            assert!(out.status.success(), "{err}");
            assert!(!err.contains("re-reading the whole"), "{name}: {err}");
            let counts = prompt_tokens(&err);
            assert_eq!(counts.len(), 2, "{err}");
            second.push(counts[1]);
            if first == long {
                assert!(counts[0] > 150, "{name}: {counts:?}");
            }
        }
        assert_eq!(second[0], second[1], "{name}: second-turn prompt tokens");
        assert!(second[0] < 30, "{name}: {second:?}");
    }
}

#[test]
fn a_full_context_drops_the_oldest_turns_or_resets() {
    let dir = tempfile::tempdir().unwrap();
    let model = quantize("llama", dir.path());
    let turns = "tell me about dogs\ntell me about cats\ntell me about birds\ntell me about fish\n";
    let out = chat_piped(
        &model,
        &[
            "--ctx",
            "80",
            "-n",
            "12",
            "--ignore-eos",
            "--seed",
            "2",
            "--stats",
        ],
        turns,
    );
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("context of 80 tokens is full: dropped the"),
        "{err}"
    );
    assert_eq!(prompt_tokens(&err).len(), 4, "{err}");

    let out = chat_piped(
        &model,
        &[
            "--ctx",
            "80",
            "-n",
            "12",
            "--ignore-eos",
            "--on-full",
            "reset",
        ],
        turns,
    );
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("starts over"), "{err}");

    // A message that cannot fit is a clean error.
    let out = chat_piped(
        &model,
        &["--ctx", "32", "-n", "4"],
        &"many words ".repeat(50),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("raise --ctx") && err.lines().count() == 1,
        "{err}"
    );
}

#[test]
fn without_a_model_the_error_says_how_to_pass_one() {
    let out = Command::new(bin())
        .arg("chat")
        .env("CHEEMS_MODEL", "/nonexistent/model.gguf")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("CHEEMS_MODEL") && err.contains("cheems chat MODEL.gguf"),
        "{err}"
    );
}
