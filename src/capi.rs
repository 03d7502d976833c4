//! The C API (cargo feature `capi`): opaque handles, `#[repr(C)]` statuses and parameter structs,
//! and `extern "C"` functions that C and C++ programs call through `include/cheems.h`, which
//! cbindgen generates from this file (`tests/capi_header.rs` fails when the committed header is
//! stale; `CHEEMS_BLESS=1` rewrites it).
//!
//! Discipline (rustls-ffi's, with llama.cpp's naming): every function returns a
//! [`cheems_status`] and sets a thread-local message ([`cheems_last_error`]) when it fails; every
//! body runs inside `catch_unwind`, so no panic crosses into C; every pointer is checked for NULL
//! and every handle is looked up in a registry of live handles before it is used, which makes a
//! double free or a use after free a [`cheems_status::CHEEMS_ERR_INVALID_HANDLE`] instead of
//! undefined behaviour (the registry holds addresses only: a freed handle's memory is never read).
//! A session lives behind a mutex taken with `try_lock`, so a session used by two threads at once,
//! or re-entered from a streaming callback, answers [`cheems_status::CHEEMS_ERR_BUSY`].
//!
//! A failed call leaves the session as it was: token ids and context room are checked before
//! anything runs, a saved state is read and checked whole before it replaces anything, and
//! `cheems_generate` and `cheems_chat` snapshot the session and restore it on an error. The exception is a panic inside `cheems_prefill`/`cheems_decode`
//! (a bug, never expected): the session is then marked broken until `cheems_session_reset`.
//!
//! What does not live here: the engine itself ([`crate::Session`]), sampling
//! ([`crate::sampler`]), tokenization ([`crate::tokenizer`]) and chat templates ([`crate::chat`]);
//! this module only translates between them and C.

#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError};

use crate::chat::{end_of_turn, ChatTemplate, Message};
use crate::model::Mixer;
use crate::sampler::{Sampler, SamplerParams};
use crate::snapshot::SessionState;
use crate::tokenizer::{StreamDecoder, Tokenizer};
use crate::{Arch, Model, Session, SessionOptions};

// ---------------------------------------------------------------------------------------------
// Status codes and errors
// ---------------------------------------------------------------------------------------------

/// What a call did. The numbers are stable: new codes are only ever added at the end.
/// `cheems_status_str` names a code; `cheems_last_error` has the detail of the last failure.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum cheems_status {
    /// Success.
    CHEEMS_OK = 0,
    /// A required pointer argument was NULL.
    CHEEMS_ERR_NULL_ARG = 1,
    /// An argument has a bad value: text that is not UTF-8, a parameter out of range, an empty
    /// prompt, a zero count where one is needed.
    CHEEMS_ERR_INVALID_ARG = 2,
    /// A handle is not live: already freed (the double-free guard), never made by cheems, or of
    /// another kind (a session passed as a model). Nothing was done.
    CHEEMS_ERR_INVALID_HANDLE = 3,
    /// A file could not be opened, read or written (missing file, permissions, disk full).
    CHEEMS_ERR_IO = 4,
    /// A model file is not a valid model: corrupt, truncated, not GGUF, missing tensors, or of an
    /// architecture cheems does not run.
    CHEEMS_ERR_FORMAT = 5,
    /// A valid file uses something this build does not handle (a tensor type, a tokenizer kind),
    /// or the model lacks what the call needs (no tokenizer).
    CHEEMS_ERR_UNSUPPORTED = 6,
    /// A token id is outside the model's vocabulary.
    CHEEMS_ERR_INVALID_TOKEN = 7,
    /// The tokens do not fit in the session's context (plain-attention models only; raise
    /// `n_ctx`, or reset the session).
    CHEEMS_ERR_CONTEXT_FULL = 8,
    /// An output buffer is too small; the needed length was written to the length output.
    CHEEMS_ERR_BUFFER_TOO_SMALL = 9,
    /// A saved state was refused: not a cheems state, corrupt or truncated, saved by another
    /// model, or more positions than this session's context holds.
    CHEEMS_ERR_STATE = 10,
    /// The model's chat template could not be compiled, or could not render these messages (a
    /// role it rejects, a template error).
    CHEEMS_ERR_TEMPLATE = 11,
    /// The session (or sampler) is in use by another call: another thread, or a streaming
    /// callback calling back into the session it is streaming from.
    CHEEMS_ERR_BUSY = 12,
    /// The streaming callback returned non-zero; what was generated until then stays in the
    /// session (see `cheems_generate`).
    CHEEMS_CANCELLED = 13,
    /// An internal error (a bug in cheems, caught before it reached C). The process is fine; a
    /// session it happened in during `cheems_prefill`/`cheems_decode` must be reset.
    CHEEMS_ERR_PANIC = 14,
    /// Any other failure (for instance: a thread pool could not be started).
    CHEEMS_ERR_INTERNAL = 15,
}

use cheems_status::*;

/// A failed call: its status and message.
#[derive(Debug)]
struct Failure {
    status: cheems_status,
    msg: String,
}

type R<T> = Result<T, Failure>;

fn fail(status: cheems_status, msg: impl Into<String>) -> Failure {
    Failure {
        status,
        msg: msg.into(),
    }
}

/// An engine error as a failure: I/O anywhere in its chain is [`CHEEMS_ERR_IO`], an unsupported
/// type is [`CHEEMS_ERR_UNSUPPORTED`], anything else `default`.
fn classify(e: anyhow::Error, default: cheems_status) -> Failure {
    let mut status = default;
    for cause in e.chain() {
        if cause.downcast_ref::<std::io::Error>().is_some() {
            status = CHEEMS_ERR_IO;
            break;
        }
        match cause.downcast_ref::<cheems_formats::Error>() {
            Some(cheems_formats::Error::Io { .. }) => {
                status = CHEEMS_ERR_IO;
                break;
            }
            Some(cheems_formats::Error::Unsupported(_)) => {
                status = CHEEMS_ERR_UNSUPPORTED;
                break;
            }
            _ => {}
        }
    }
    fail(status, chain(&e))
}

/// An error and its causes joined with `: `, leaving out a cause that the text already ends with
/// (an I/O error whose message includes its source).
fn chain(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if !msg.ends_with(&c) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&c);
        }
    }
    msg
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(msg: &str) {
    let c = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    // During thread teardown the slot may be gone; the status still reaches the caller.
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = c);
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = p.downcast_ref::<&str>() {
        s
    } else if let Some(s) = p.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

/// Runs the body of entry point `name`: a failure or a panic becomes a status and the
/// thread's last error.
fn guard(name: &str, body: impl FnOnce() -> R<()>) -> cheems_status {
    let failure = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => return CHEEMS_OK,
        Ok(Err(f)) => f,
        Err(p) => fail(
            CHEEMS_ERR_PANIC,
            format!("internal error (a bug in cheems): {}", panic_message(&*p)),
        ),
    };
    set_last_error(&format!("{name}: {}", failure.msg));
    failure.status
}

/// The version of the library, `"MAJOR.MINOR.PATCH"`; a static string.
#[no_mangle]
pub extern "C" fn cheems_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The name of a status code (`"CHEEMS_ERR_IO: ..."` with a short explanation); a static
/// string, never NULL (an unknown code gives `"unknown status"`).
#[no_mangle]
pub extern "C" fn cheems_status_str(code: c_int) -> *const c_char {
    let s: &'static CStr = match code {
        0 => c"CHEEMS_OK: success",
        1 => c"CHEEMS_ERR_NULL_ARG: a required pointer was NULL",
        2 => c"CHEEMS_ERR_INVALID_ARG: an argument has a bad value",
        3 => {
            c"CHEEMS_ERR_INVALID_HANDLE: the handle is not live (freed, foreign or of another kind)"
        }
        4 => c"CHEEMS_ERR_IO: a file could not be opened, read or written",
        5 => c"CHEEMS_ERR_FORMAT: not a valid model file",
        6 => c"CHEEMS_ERR_UNSUPPORTED: not supported by this build or this model",
        7 => c"CHEEMS_ERR_INVALID_TOKEN: a token id is outside the vocabulary",
        8 => c"CHEEMS_ERR_CONTEXT_FULL: the tokens do not fit in the session's context",
        9 => c"CHEEMS_ERR_BUFFER_TOO_SMALL: the output buffer is too small",
        10 => c"CHEEMS_ERR_STATE: the saved state was refused",
        11 => c"CHEEMS_ERR_TEMPLATE: the chat template could not render the messages",
        12 => c"CHEEMS_ERR_BUSY: the session is in use by another call",
        13 => c"CHEEMS_CANCELLED: cancelled by the callback",
        14 => c"CHEEMS_ERR_PANIC: internal error (a bug in cheems)",
        15 => c"CHEEMS_ERR_INTERNAL: internal error",
        _ => c"unknown status",
    };
    s.as_ptr()
}

/// The message of the last call on this thread that failed (`"cheems_model_load: cannot load
/// x.gguf: open x.gguf: No such file or directory"`), or `""` if none has. Never NULL. The
/// string belongs to cheems and stays valid until the next failing call on this thread; successful
/// calls leave it as it is.
#[no_mangle]
pub extern "C" fn cheems_last_error() -> *const c_char {
    LAST_ERROR
        .try_with(|e| e.borrow().as_ptr())
        .unwrap_or(c"".as_ptr())
}

// ---------------------------------------------------------------------------------------------
// Handles and the registry of live ones
// ---------------------------------------------------------------------------------------------

/// A loaded model. Opaque; made by `cheems_model_load`, freed by `cheems_model_free`. Immutable
/// and shared: any number of threads may use one model at once, and each session keeps the model
/// alive, so the model may be freed before its sessions.
#[derive(Debug)]
pub struct cheems_model {
    inner: Arc<ModelShared>,
}

#[derive(Debug)]
struct ModelShared {
    model: Arc<Model>,
    /// Why there is none, if the file's tokenizer could not be built.
    tokenizer: Result<Tokenizer, String>,
    /// The chat template (the file's, or the plain fallback), compiled once; why not, if it
    /// does not compile.
    template: Result<ChatTemplate, String>,
    /// Tokens that end a chat reply: the tokenizer's stop tokens and the template's end of turn.
    chat_stop: Vec<u32>,
    /// Threads of sessions that do not ask for a number (`None`: available cores).
    n_threads: Option<usize>,
    has_chat_template: bool,
}

impl ModelShared {
    fn tokenizer(&self) -> R<&Tokenizer> {
        self.tokenizer.as_ref().map_err(|why| {
            fail(
                CHEEMS_ERR_UNSUPPORTED,
                format!("the model has no usable tokenizer: {why}"),
            )
        })
    }

    fn check_token(&self, t: u32) -> R<()> {
        let n = self.model.config.n_vocab;
        if t as usize >= n {
            return Err(fail(
                CHEEMS_ERR_INVALID_TOKEN,
                format!("token id {t} is outside the vocabulary (0..{n})"),
            ));
        }
        Ok(())
    }
}

/// One sequence's state over a model. Opaque; made by `cheems_session_new`, freed by
/// `cheems_session_free`. Used by one thread at a time (a second concurrent call answers
/// `CHEEMS_ERR_BUSY`); different sessions may run in parallel on different threads.
#[derive(Debug)]
pub struct cheems_session {
    model: Arc<ModelShared>,
    inner: Mutex<SessionInner>,
}

#[derive(Debug)]
struct SessionInner {
    session: Session,
    /// Positions the KV caches hold, if the model has plain-attention layers.
    kv_capacity: Option<usize>,
    /// The logits after the last token, when `has_logits`.
    logits: Vec<f32>,
    has_logits: bool,
    /// For `cheems_chat`: the text whose tokens are exactly the session's state (a rendered
    /// conversation and the reply streamed after it), so the next turn feeds only what follows.
    chat_text: Option<String>,
    /// A panic interrupted a call that changes the state: only reset and free are allowed.
    broken: bool,
}

/// A sampler with its own random state, for programs that run their own decode loop. Opaque;
/// made by `cheems_sampler_new`, freed by `cheems_sampler_free`; one thread at a time.
#[derive(Debug)]
pub struct cheems_sampler {
    inner: Mutex<Sampler>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Model,
    Session,
    Sampler,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Model => "cheems_model",
            Kind::Session => "cheems_session",
            Kind::Sampler => "cheems_sampler",
        }
    }
}

/// The registry key of a handle: its address, disguised so that the registry does not count as a
/// reference to it, and leak checkers such as valgrind still report handles that a program never
/// frees.
fn key<T>(p: *const T) -> usize {
    (p as usize) ^ 0x5A5A_5A5A_5A5A_5A5A_u64 as usize
}

/// Live handles (by [`key`]) and their kinds.
fn live() -> MutexGuard<'static, HashMap<usize, Kind>> {
    static LIVE: OnceLock<Mutex<HashMap<usize, Kind>>> = OnceLock::new();
    LIVE.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

fn register<T>(handle: T, kind: Kind) -> *mut T {
    let p = Box::into_raw(Box::new(handle));
    live().insert(key(p), kind);
    p
}

/// The handle behind `p`, if it is a live handle of `kind`.
fn lookup<'a, T>(p: *const T, kind: Kind, what: &str) -> R<&'a T> {
    if p.is_null() {
        return Err(fail(CHEEMS_ERR_NULL_ARG, format!("`{what}` is NULL")));
    }
    if live().get(&key(p)) != Some(&kind) {
        return Err(fail(
            CHEEMS_ERR_INVALID_HANDLE,
            format!(
                "`{what}` is not a live {} (already freed, or not made by cheems)",
                kind.name()
            ),
        ));
    }
    // SAFETY: registered addresses come from `Box::into_raw` of a `T` of this kind and leave the
    // registry before the box is freed; the caller keeps its promise not to free a handle while
    // another thread uses it.
    Ok(unsafe { &*p })
}

/// Takes a live handle of `kind` out of the registry and back into a box; NULL is `None`.
fn unregister<T>(p: *mut T, kind: Kind, what: &str) -> R<Option<Box<T>>> {
    if p.is_null() {
        return Ok(None);
    }
    let mut reg = live();
    if reg.get(&key(p)) != Some(&kind) {
        return Err(fail(
            CHEEMS_ERR_INVALID_HANDLE,
            format!(
                "`{what}` is not a live {} (freed twice, or not made by cheems); nothing was freed",
                kind.name()
            ),
        ));
    }
    reg.remove(&key(p));
    drop(reg);
    // SAFETY: the address was registered from `Box::into_raw` of a `T` and is removed from the
    // registry above, so this is the only box made from it.
    Ok(Some(unsafe { Box::from_raw(p) }))
}

impl cheems_session {
    /// The session's state, unless another call holds it.
    fn lock(&self) -> R<MutexGuard<'_, SessionInner>> {
        let g = match self.inner.try_lock() {
            Ok(g) => g,
            Err(TryLockError::WouldBlock) => {
                return Err(fail(
                    CHEEMS_ERR_BUSY,
                    "the session is in use by another call (another thread, or a callback \
                     calling back into the session it streams from)",
                ))
            }
            Err(TryLockError::Poisoned(p)) => {
                self.inner.clear_poison();
                let mut g = p.into_inner();
                g.broken = true;
                g
            }
        };
        Ok(g)
    }

    /// The state, usable: not broken by an earlier internal error.
    fn lock_usable(&self) -> R<MutexGuard<'_, SessionInner>> {
        let g = self.lock()?;
        if g.broken {
            return Err(fail(
                CHEEMS_ERR_PANIC,
                "an earlier internal error left this session unusable: call cheems_session_reset",
            ));
        }
        Ok(g)
    }
}

impl SessionInner {
    /// Refuses tokens that do not fit in the context.
    fn check_room(&self, n: usize) -> R<()> {
        if let Some(cap) = self.kv_capacity {
            let held = self.session.pos();
            if held + n > cap {
                return Err(fail(
                    CHEEMS_ERR_CONTEXT_FULL,
                    format!(
                        "{n} tokens do not fit: the session holds {held} of its {cap} positions \
                         (raise n_ctx, or reset the session)"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn has_room(&self, n: usize) -> bool {
        self.kv_capacity
            .is_none_or(|cap| self.session.pos() + n <= cap)
    }

    /// The session after an error that must leave it unchanged: back to `snap`.
    fn restore(&mut self, snap: &SessionState) {
        if self.session.restore(snap).is_err() {
            self.broken = true;
        }
    }

    /// Keeps the logits the session computed last.
    fn take_logits(&mut self) {
        self.logits.copy_from_slice(self.session.logits());
        self.has_logits = true;
    }
}

// ---------------------------------------------------------------------------------------------
// Pointer helpers
// ---------------------------------------------------------------------------------------------

/// A NUL-terminated UTF-8 argument.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays valid for `'a`.
unsafe fn text_arg<'a>(p: *const c_char, what: &str) -> R<&'a str> {
    if p.is_null() {
        return Err(fail(CHEEMS_ERR_NULL_ARG, format!("`{what}` is NULL")));
    }
    // SAFETY: non-NULL, and the caller promises a NUL-terminated string.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str().map_err(|e| {
        fail(
            CHEEMS_ERR_INVALID_ARG,
            format!("`{what}` is not UTF-8: {e}"),
        )
    })
}

/// A path argument (any bytes on Unix).
///
/// # Safety
/// As [`text_arg`].
unsafe fn path_arg(p: *const c_char, what: &str) -> R<PathBuf> {
    if p.is_null() {
        return Err(fail(CHEEMS_ERR_NULL_ARG, format!("`{what}` is NULL")));
    }
    // SAFETY: non-NULL, and the caller promises a NUL-terminated string.
    let c = unsafe { CStr::from_ptr(p) };
    if c.is_empty() {
        return Err(fail(CHEEMS_ERR_INVALID_ARG, format!("`{what}` is empty")));
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Ok(PathBuf::from(std::ffi::OsStr::from_bytes(c.to_bytes())))
    }
    #[cfg(not(unix))]
    {
        c.to_str().map(PathBuf::from).map_err(|e| {
            fail(
                CHEEMS_ERR_INVALID_ARG,
                format!("`{what}` is not UTF-8: {e}"),
            )
        })
    }
}

/// An input array of `n` elements; NULL is allowed only when `n` is 0.
///
/// # Safety
/// `p` is NULL or points to `n` initialized elements that stay valid for `'a`.
unsafe fn slice_arg<'a, T>(p: *const T, n: usize, what: &str) -> R<&'a [T]> {
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(fail(
            CHEEMS_ERR_NULL_ARG,
            format!("`{what}` is NULL but its count is {n}"),
        ));
    }
    // SAFETY: non-NULL, and the caller promises `n` valid elements.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// An output buffer of `n` elements; NULL is allowed only when `n` is 0.
///
/// # Safety
/// `p` is NULL or points to `n` writable elements, not aliased, valid for `'a`.
unsafe fn buf_arg<'a, T>(p: *mut T, n: usize, what: &str) -> R<&'a mut [T]> {
    if n == 0 {
        return Ok(&mut []);
    }
    if p.is_null() {
        return Err(fail(
            CHEEMS_ERR_NULL_ARG,
            format!("`{what}` is NULL but its size is {n}"),
        ));
    }
    // SAFETY: non-NULL, and the caller promises `n` writable elements.
    Ok(unsafe { std::slice::from_raw_parts_mut(p, n) })
}

/// A required output pointer.
fn out_arg<T>(p: *mut T, what: &str) -> R<*mut T> {
    if p.is_null() {
        return Err(fail(CHEEMS_ERR_NULL_ARG, format!("`{what}` is NULL")));
    }
    Ok(p)
}

/// Writes `v` through an output pointer checked by [`out_arg`] (or NULL: nothing is written).
///
/// # Safety
/// `p` is NULL or valid for a write of `T`.
unsafe fn put<T>(p: *mut T, v: T) {
    if !p.is_null() {
        // SAFETY: non-NULL and writable, as the caller promises; `write` reads nothing old.
        unsafe { p.write(v) }
    }
}

/// Copies `bytes` and a NUL into `buf` of `size` bytes, and their length (without the NUL) to
/// `out_len` (if not NULL); when the buffer is too small, writes only the needed length.
///
/// # Safety
/// `buf` is NULL or has `size` writable bytes; `out_len` is NULL or writable.
unsafe fn put_text(bytes: &[u8], buf: *mut c_char, size: usize, out_len: *mut usize) -> R<()> {
    // SAFETY: as the caller promises.
    let dst = unsafe { buf_arg(buf, size, "buf") }?;
    // SAFETY: as the caller promises.
    unsafe { put(out_len, bytes.len()) };
    if dst.len() <= bytes.len() {
        return Err(fail(
            CHEEMS_ERR_BUFFER_TOO_SMALL,
            format!(
                "the text needs {} bytes and a NUL, the buffer has {size}",
                bytes.len()
            ),
        ));
    }
    for (d, &s) in dst.iter_mut().zip(bytes) {
        *d = s as c_char;
    }
    dst[bytes.len()] = 0;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Models
// ---------------------------------------------------------------------------------------------

/// How a model is loaded. Start from `cheems_model_default_params()` and change fields.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct cheems_model_params {
    /// Threads of each session's private pool, for sessions that do not set their own; 0: the
    /// available cores. Threads belong to sessions: two sessions in parallel use twice as many.
    pub n_threads: u32,
    /// For mixture-of-experts (CDMoE) models: a bound on the bytes of expert weights each
    /// session holds. With a bound, a session reads the experts a token's routing selects into
    /// a least-recently-used cache of this size, so memory stays bounded for models larger than
    /// RAM; 0: no bound, experts are read in place like every other weight.
    pub expert_cache_bytes: u64,
    /// true: map the file (weights are paged in as used and shared with the page cache);
    /// false: read the weights into memory (for file systems that cannot map; with an expert
    /// cache bound the expert tables are left out).
    pub use_mmap: bool,
}

/// The default model parameters: all cores, no expert cache bound, mmap on.
#[no_mangle]
pub extern "C" fn cheems_model_default_params() -> cheems_model_params {
    cheems_model_params {
        n_threads: 0,
        expert_cache_bytes: 0,
        use_mmap: true,
    }
}

fn load_model(path: &std::path::Path, p: &cheems_model_params) -> R<Model> {
    let opts = crate::LoadOptions {
        expert_cache_bytes: (p.expert_cache_bytes > 0).then_some(p.expert_cache_bytes),
        use_mmap: p.use_mmap,
    };
    Model::load_with(path, &opts).map_err(|e| classify(e, CHEEMS_ERR_FORMAT))
}

/// Loads a model file (GGUF) with `params` (NULL: the defaults) into `*out_model`.
///
/// Returns `CHEEMS_ERR_IO` for a file that cannot be read (missing, unreadable),
/// `CHEEMS_ERR_FORMAT` for a corrupt or foreign file, `CHEEMS_ERR_UNSUPPORTED` for a tensor type
/// this build lacks. On failure `*out_model` is set to NULL. A file whose tokenizer cannot be
/// built still loads (token ids work; text calls return `CHEEMS_ERR_UNSUPPORTED`).
///
/// # Safety
/// `path` is a NUL-terminated string; `params` is NULL or points to a `cheems_model_params`;
/// `out_model` points to writable storage for a pointer.
#[no_mangle]
pub unsafe extern "C" fn cheems_model_load(
    path: *const c_char,
    params: *const cheems_model_params,
    out_model: *mut *mut cheems_model,
) -> cheems_status {
    guard("cheems_model_load", || {
        let out = out_arg(out_model, "out_model")?;
        // SAFETY: `out` is non-NULL and writable, as the caller promises.
        unsafe { put(out, std::ptr::null_mut()) };
        // SAFETY: the caller promises a NUL-terminated string.
        let path = unsafe { path_arg(path, "path") }?;
        let params = if params.is_null() {
            cheems_model_default_params()
        } else {
            // SAFETY: non-NULL, and the caller promises a valid struct.
            unsafe { *params }
        };
        let model = load_model(&path, &params)?;
        let tokenizer = Tokenizer::from_metadata(model.file.metadata()).map_err(|e| chain(&e));
        let has_chat_template = model
            .file
            .metadata()
            .opt_str(crate::chat::template::TEMPLATE_KEY)
            .is_ok_and(|t| t.is_some());
        let template = ChatTemplate::from_model(&model).map_err(|e| chain(&e));
        let mut chat_stop = Vec::new();
        if let Ok(tok) = &tokenizer {
            chat_stop.extend_from_slice(tok.stop_tokens());
            if let Some(eot) = template.as_ref().ok().and_then(|t| end_of_turn(t, tok)) {
                if !chat_stop.contains(&eot) {
                    chat_stop.push(eot);
                }
            }
        }
        let handle = cheems_model {
            inner: Arc::new(ModelShared {
                model: Arc::new(model),
                tokenizer,
                template,
                chat_stop,
                n_threads: (params.n_threads > 0).then_some(params.n_threads as usize),
                has_chat_template,
            }),
        };
        // SAFETY: checked writable above.
        unsafe { put(out, register(handle, Kind::Model)) };
        Ok(())
    })
}

/// Writes the path of the default model file (and a NUL) into `buf`, its length to `*out_len`
/// (if not NULL): `$CHEEMS_MODEL` when set, else `models/cheems-default.gguf` in the repository
/// the library was built from, else `cheems-default.gguf` beside the running executable.
/// `CHEEMS_ERR_IO` when that file does not exist. Buffer rules as `cheems_detokenize`.
///
/// # Safety
/// `buf` is NULL (with `buf_size` 0) or has `buf_size` writable bytes; `out_len` is NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn cheems_default_model_path(
    buf: *mut c_char,
    buf_size: usize,
    out_len: *mut usize,
) -> cheems_status {
    guard("cheems_default_model_path", || {
        let path = crate::default_model::default_model_path().ok_or_else(|| {
            fail(
                CHEEMS_ERR_IO,
                format!(
                    "no default model: set {} to a model file, or put {} in models/",
                    crate::default_model::ENV_VAR,
                    crate::default_model::FILE_NAME
                ),
            )
        })?;
        #[cfg(unix)]
        let bytes = {
            use std::os::unix::ffi::OsStrExt;
            path.as_os_str().as_bytes().to_vec()
        };
        #[cfg(not(unix))]
        let bytes = path.to_string_lossy().into_owned().into_bytes();
        // SAFETY: the caller promises the buffer and length pointers.
        unsafe { put_text(&bytes, buf, buf_size, out_len) }
    })
}

/// Frees a model. NULL is a no-op. Sessions made from it keep working (they hold the model);
/// its memory goes when the last of them is freed. Freeing it twice returns
/// `CHEEMS_ERR_INVALID_HANDLE` and does nothing (the double-free guard; it cannot tell a freed
/// handle from a new one that happens to get the same address).
///
/// # Safety
/// `model` is NULL or a pointer returned by `cheems_model_load`, not in use by another thread.
#[no_mangle]
pub unsafe extern "C" fn cheems_model_free(model: *mut cheems_model) -> cheems_status {
    guard("cheems_model_free", || {
        drop(unregister(model, Kind::Model, "model")?);
        Ok(())
    })
}

/// What a model is.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct cheems_model_info {
    /// `"llama"`, `"mamba2"`, `"doge"` or `"cheems"`; a static string.
    pub architecture: *const c_char,
    /// The context length the model was trained with (`<arch>.context_length`). Models without
    /// plain attention (mamba2, doge, cheems) have bounded state and no hard limit.
    pub context_length: u64,
    /// Token ids run from 0 to `n_vocab - 1`; logits have `n_vocab` entries.
    pub n_vocab: u32,
    pub n_layers: u32,
    /// Width of the residual stream.
    pub d_model: u32,
    /// The beginning-of-sequence token, or -1.
    pub bos_token: i32,
    /// The end-of-sequence token, or -1.
    pub eos_token: i32,
    /// Whether the file carries a chat template; without one `cheems_chat` uses a plain
    /// transcript (`User: ...`, `Assistant: ...`) that any base model can continue.
    pub has_chat_template: bool,
    /// Whether text can be tokenized (the file's tokenizer was built).
    pub has_tokenizer: bool,
    /// Size of the model file in bytes.
    pub file_size: u64,
}

/// Describes `model` into `*out_info`.
///
/// # Safety
/// `model` is a live model handle; `out_info` points to writable storage.
#[no_mangle]
pub unsafe extern "C" fn cheems_model_get_info(
    model: *const cheems_model,
    out_info: *mut cheems_model_info,
) -> cheems_status {
    guard("cheems_model_get_info", || {
        let m = &lookup(model, Kind::Model, "model")?.inner;
        let out = out_arg(out_info, "out_info")?;
        let c = &m.model.config;
        let arch: &'static CStr = match c.arch {
            Arch::Llama => c"llama",
            Arch::Mamba2 => c"mamba2",
            Arch::Doge => c"doge",
            Arch::Cheems => c"cheems",
        };
        let tok = m.tokenizer.as_ref().ok();
        let id = |t: Option<u32>| t.and_then(|t| i32::try_from(t).ok()).unwrap_or(-1);
        let info = cheems_model_info {
            architecture: arch.as_ptr(),
            context_length: c.context_length as u64,
            n_vocab: u32::try_from(c.n_vocab).unwrap_or(u32::MAX),
            n_layers: u32::try_from(c.n_layers).unwrap_or(u32::MAX),
            d_model: u32::try_from(c.d_model).unwrap_or(u32::MAX),
            bos_token: id(tok.and_then(|t| t.bos())),
            eos_token: id(tok.and_then(|t| t.eos())),
            has_chat_template: m.has_chat_template,
            has_tokenizer: tok.is_some(),
            file_size: m.model.file.file_size() as u64,
        };
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { put(out, info) };
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Tokens and text
// ---------------------------------------------------------------------------------------------

/// Tokenizes `text` (NUL-terminated UTF-8) into `tokens` (room for `capacity` ids) and writes
/// the count to `*out_n`. Special tokens written in the text (`<|im_start|>`) are single ids.
/// With `add_bos`, BOS goes first when the model's tokenizer asks for it. When `capacity` is too
/// small, writes only the count and returns `CHEEMS_ERR_BUFFER_TOO_SMALL` (so `tokens = NULL,
/// capacity = 0` asks for the count).
///
/// # Safety
/// `model` is a live model handle; `text` is NUL-terminated; `tokens` is NULL (with `capacity`
/// 0) or has room for `capacity` ids; `out_n` is writable.
#[no_mangle]
pub unsafe extern "C" fn cheems_tokenize(
    model: *const cheems_model,
    text: *const c_char,
    add_bos: bool,
    tokens: *mut u32,
    capacity: usize,
    out_n: *mut usize,
) -> cheems_status {
    guard("cheems_tokenize", || {
        let m = &lookup(model, Kind::Model, "model")?.inner;
        // SAFETY: the caller promises a NUL-terminated string.
        let text = unsafe { text_arg(text, "text") }?;
        let out_n = out_arg(out_n, "out_n")?;
        // SAFETY: the caller promises `capacity` writable ids.
        let dst = unsafe { buf_arg(tokens, capacity, "tokens") }?;
        let ids = m
            .tokenizer()?
            .encode(text, add_bos)
            .map_err(|e| classify(e, CHEEMS_ERR_INVALID_ARG))?;
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { put(out_n, ids.len()) };
        if ids.len() > dst.len() {
            return Err(fail(
                CHEEMS_ERR_BUFFER_TOO_SMALL,
                format!("{} tokens, room for {capacity}", ids.len()),
            ));
        }
        dst[..ids.len()].copy_from_slice(&ids);
        Ok(())
    })
}

/// Writes the text of `tokens` (their bytes joined; byte sequences that are not UTF-8 become
/// U+FFFD) and a NUL into `buf` of `buf_size` bytes, and its length without the NUL to `*out_len`
/// (if `out_len` is not NULL). Special tokens are written as their text. When `buf_size` is too
/// small, writes only the length and returns `CHEEMS_ERR_BUFFER_TOO_SMALL` (need `*out_len + 1`).
/// An id outside the vocabulary is `CHEEMS_ERR_INVALID_TOKEN`.
///
/// # Safety
/// `model` is a live model handle; `tokens` has `n_tokens` ids (NULL if 0); `buf` is NULL (with
/// `buf_size` 0) or has `buf_size` writable bytes; `out_len` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn cheems_detokenize(
    model: *const cheems_model,
    tokens: *const u32,
    n_tokens: usize,
    buf: *mut c_char,
    buf_size: usize,
    out_len: *mut usize,
) -> cheems_status {
    guard("cheems_detokenize", || {
        let m = &lookup(model, Kind::Model, "model")?.inner;
        // SAFETY: the caller promises `n_tokens` ids.
        let ids = unsafe { slice_arg(tokens, n_tokens, "tokens") }?;
        let tok = m.tokenizer()?;
        for &t in ids {
            m.check_token(t)?;
        }
        let text = tok
            .decode(ids)
            .map_err(|e| classify(e, CHEEMS_ERR_INVALID_TOKEN))?;
        // SAFETY: the caller promises the buffer and length pointers.
        unsafe { put_text(text.as_bytes(), buf, buf_size, out_len) }
    })
}

/// Writes the raw bytes of one token (possibly part of a UTF-8 character; empty for an unused
/// id) and a NUL into `buf`, their count to `*out_len`; as `cheems_detokenize` otherwise. For
/// programs that stream text themselves: print the bytes as they come.
///
/// # Safety
/// As `cheems_detokenize`.
#[no_mangle]
pub unsafe extern "C" fn cheems_token_piece(
    model: *const cheems_model,
    token: u32,
    buf: *mut c_char,
    buf_size: usize,
    out_len: *mut usize,
) -> cheems_status {
    guard("cheems_token_piece", || {
        let m = &lookup(model, Kind::Model, "model")?.inner;
        m.check_token(token)?;
        let tok = m.tokenizer()?;
        let bytes = tok.token_bytes(token).unwrap_or_default();
        // SAFETY: the caller promises the buffer and length pointers.
        unsafe { put_text(&bytes, buf, buf_size, out_len) }
    })
}

/// Writes to `*out_is_stop` whether `token` ends generation (the model's end-of-sequence,
/// end-of-turn or end-of-message token).
///
/// # Safety
/// `model` is a live model handle; `out_is_stop` is writable.
#[no_mangle]
pub unsafe extern "C" fn cheems_token_is_stop(
    model: *const cheems_model,
    token: u32,
    out_is_stop: *mut bool,
) -> cheems_status {
    guard("cheems_token_is_stop", || {
        let m = &lookup(model, Kind::Model, "model")?.inner;
        let out = out_arg(out_is_stop, "out_is_stop")?;
        m.check_token(token)?;
        let stop = m.tokenizer()?.is_stop(token);
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { put(out, stop) };
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------

/// How a session is opened. Start from `cheems_session_default_params()`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct cheems_session_params {
    /// Positions a plain-attention (llama) KV cache holds, allocated up front; 0: the model's
    /// context length, at most 4096. Other architectures keep bounded state and ignore it.
    pub n_ctx: u32,
    /// Threads of the session's pool; 0: the model's `n_threads`.
    pub n_threads: u32,
    /// Where the forward pass runs: -1 (the default) the CPU; N >= 0 the CUDA GPU N. A GPU
    /// needs a library built with the `cuda` feature, an NVIDIA GPU and its driver; without
    /// them `cheems_session_new` fails with `CHEEMS_ERR_UNSUPPORTED` and says why in
    /// `cheems_last_error()`.
    pub device: i32,
}

/// The default session parameters: the model's context (at most 4096) and threads.
#[no_mangle]
pub extern "C" fn cheems_session_default_params() -> cheems_session_params {
    cheems_session_params {
        n_ctx: 0,
        n_threads: 0,
        device: -1,
    }
}

/// Opens a session over `model` with `params` (NULL: the defaults) into `*out_session`. Its
/// state and scratch are allocated once, here. On failure `*out_session` is set to NULL.
///
/// # Safety
/// `model` is a live model handle; `params` is NULL or valid; `out_session` is writable.
#[no_mangle]
pub unsafe extern "C" fn cheems_session_new(
    model: *const cheems_model,
    params: *const cheems_session_params,
    out_session: *mut *mut cheems_session,
) -> cheems_status {
    guard("cheems_session_new", || {
        let out = out_arg(out_session, "out_session")?;
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { put(out, std::ptr::null_mut()) };
        let m = &lookup(model, Kind::Model, "model")?.inner;
        let p = if params.is_null() {
            cheems_session_default_params()
        } else {
            // SAFETY: non-NULL, and the caller promises a valid struct.
            unsafe { *params }
        };
        let c = &m.model.config;
        let ctx = match p.n_ctx {
            0 => c.context_length.min(4096),
            n => n as usize,
        }
        .max(1);
        let threads = match p.n_threads {
            0 => m.n_threads,
            n => Some(n as usize),
        };
        let device = match p.device {
            d if d < 0 => crate::Device::Cpu,
            d => crate::Device::Cuda(d as usize),
        };
        let session = Session::new_on(
            m.model.clone(),
            &SessionOptions {
                ctx: Some(ctx),
                threads,
            },
            device,
        )
        .map_err(|e| match device {
            crate::Device::Cuda(_) => classify(e, CHEEMS_ERR_UNSUPPORTED),
            crate::Device::Cpu => classify(e, CHEEMS_ERR_INTERNAL),
        })?;
        let has_kv = m
            .model
            .layers
            .iter()
            .any(|l| matches!(l.mixer, Mixer::Attention(_)));
        let handle = cheems_session {
            model: m.clone(),
            inner: Mutex::new(SessionInner {
                session,
                kv_capacity: has_kv.then_some(ctx),
                logits: vec![0.0; c.n_vocab],
                has_logits: false,
                chat_text: None,
                broken: false,
            }),
        };
        // SAFETY: checked non-NULL above.
        unsafe { put(out, register(handle, Kind::Session)) };
        Ok(())
    })
}

/// Frees a session. NULL is a no-op. Freeing it twice returns `CHEEMS_ERR_INVALID_HANDLE` and
/// does nothing; freeing it while a call on it runs (another thread, or its own streaming
/// callback) returns `CHEEMS_ERR_BUSY` and does nothing.
///
/// # Safety
/// `session` is NULL or a pointer returned by `cheems_session_new`.
#[no_mangle]
pub unsafe extern "C" fn cheems_session_free(session: *mut cheems_session) -> cheems_status {
    guard("cheems_session_free", || {
        if !session.is_null() && live().get(&key(session)) == Some(&Kind::Session) {
            // Refuse while a call holds it (this check and the removal are not one step: freeing a
            // session that another thread is about to use is the caller's bug, as in C).
            drop(lookup(session, Kind::Session, "session")?.lock()?);
        }
        drop(unregister(session, Kind::Session, "session")?);
        Ok(())
    })
}

/// Forgets the sequence: back to an empty session (position 0, no logits). Also clears the
/// "broken" mark an internal error leaves.
///
/// # Safety
/// `session` is a live session handle.
#[no_mangle]
pub unsafe extern "C" fn cheems_session_reset(session: *mut cheems_session) -> cheems_status {
    guard("cheems_session_reset", || {
        let mut s = lookup(session, Kind::Session, "session")?.lock()?;
        s.session.reset();
        s.has_logits = false;
        s.chat_text = None;
        s.broken = false;
        Ok(())
    })
}

/// Writes to `*out_n_past` how many tokens the session has consumed.
///
/// # Safety
/// `session` is a live session handle; `out_n_past` is writable.
#[no_mangle]
pub unsafe extern "C" fn cheems_session_n_past(
    session: *const cheems_session,
    out_n_past: *mut u64,
) -> cheems_status {
    guard("cheems_session_n_past", || {
        let s = lookup(session, Kind::Session, "session")?.lock_usable()?;
        let out = out_arg(out_n_past, "out_n_past")?;
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { put(out, s.session.pos() as u64) };
        Ok(())
    })
}

/// Checks a logits output buffer: NULL (no copy wanted) or room for `n_vocab` floats.
///
/// # Safety
/// `logits` is NULL or has `n_logits` writable floats.
unsafe fn logits_arg<'a>(
    logits: *mut f32,
    n_logits: usize,
    n_vocab: usize,
) -> R<Option<&'a mut [f32]>> {
    if logits.is_null() {
        return Ok(None);
    }
    if n_logits < n_vocab {
        return Err(fail(
            CHEEMS_ERR_BUFFER_TOO_SMALL,
            format!("`logits` has room for {n_logits} floats, the vocabulary has {n_vocab}"),
        ));
    }
    // SAFETY: non-NULL with `n_logits >= n_vocab` writable floats, as the caller promises.
    Ok(Some(unsafe {
        std::slice::from_raw_parts_mut(logits, n_vocab)
    }))
}

/// Feeds `n_tokens` tokens (a prompt, or the next part of one) and copies the logits after the
/// last one into `logits` (NULL: no copy; otherwise room for `n_logits >= n_vocab` floats).
///
/// Errors, all before anything runs, leaving the session unchanged: `CHEEMS_ERR_INVALID_ARG` for
/// no tokens, `CHEEMS_ERR_INVALID_TOKEN`, `CHEEMS_ERR_CONTEXT_FULL`,
/// `CHEEMS_ERR_BUFFER_TOO_SMALL` for a short logits buffer.
///
/// # Safety
/// `session` is a live session handle; `tokens` has `n_tokens` ids; `logits` is NULL or has
/// `n_logits` writable floats.
#[no_mangle]
pub unsafe extern "C" fn cheems_prefill(
    session: *mut cheems_session,
    tokens: *const u32,
    n_tokens: usize,
    logits: *mut f32,
    n_logits: usize,
) -> cheems_status {
    guard("cheems_prefill", || {
        let h = lookup(session, Kind::Session, "session")?;
        // SAFETY: the caller promises `n_tokens` ids.
        let ids = unsafe { slice_arg(tokens, n_tokens, "tokens") }?;
        // SAFETY: the caller promises `n_logits` writable floats.
        let out = unsafe { logits_arg(logits, n_logits, h.model.model.config.n_vocab) }?;
        let mut s = h.lock_usable()?;
        if ids.is_empty() {
            return Err(fail(CHEEMS_ERR_INVALID_ARG, "no tokens to prefill"));
        }
        for &t in ids {
            h.model.check_token(t)?;
        }
        s.check_room(ids.len())?;
        s.session
            .prefill(ids)
            .map_err(|e| classify(e, CHEEMS_ERR_INTERNAL))?;
        s.take_logits();
        s.chat_text = None;
        if let Some(out) = out {
            out.copy_from_slice(&s.logits);
        }
        Ok(())
    })
}

/// Feeds one token and copies the logits that predict the next into `logits` (as
/// `cheems_prefill`). Errors leave the session unchanged.
///
/// # Safety
/// `session` is a live session handle; `logits` is NULL or has `n_logits` writable floats.
#[no_mangle]
pub unsafe extern "C" fn cheems_decode(
    session: *mut cheems_session,
    token: u32,
    logits: *mut f32,
    n_logits: usize,
) -> cheems_status {
    // SAFETY: one token read from a local; the logits pointer as the caller promises.
    unsafe { cheems_prefill(session, &token, 1, logits, n_logits) }
}

/// Copies the logits after the last token fed (by `cheems_prefill`, `cheems_decode`,
/// `cheems_generate` or `cheems_chat`) into `logits` (room for `n_logits >= n_vocab` floats).
/// A new, reset or just restored session has none: `CHEEMS_ERR_INVALID_ARG`.
///
/// # Safety
/// `session` is a live session handle; `logits` has `n_logits` writable floats.
#[no_mangle]
pub unsafe extern "C" fn cheems_session_logits(
    session: *const cheems_session,
    logits: *mut f32,
    n_logits: usize,
) -> cheems_status {
    guard("cheems_session_logits", || {
        let h = lookup(session, Kind::Session, "session")?;
        if logits.is_null() {
            return Err(fail(CHEEMS_ERR_NULL_ARG, "`logits` is NULL"));
        }
        // SAFETY: the caller promises `n_logits` writable floats.
        let out = unsafe { logits_arg(logits, n_logits, h.model.model.config.n_vocab) }?;
        let s = h.lock_usable()?;
        if !s.has_logits {
            return Err(fail(
                CHEEMS_ERR_INVALID_ARG,
                "the session has no logits yet (feed a token first)",
            ));
        }
        if let Some(out) = out {
            out.copy_from_slice(&s.logits);
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Sampling
// ---------------------------------------------------------------------------------------------

/// How the next token is chosen from logits: repetition penalty, top-k, top-p, min-p, then
/// temperature (llama.cpp's order). Start from `cheems_sampling_default_params()`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct cheems_sampling_params {
    /// 0: greedy (the most likely token). Must be >= 0.
    pub temperature: f32,
    /// Keep the k most likely tokens; 0: all.
    pub top_k: u32,
    /// Keep the smallest set whose probability reaches p, in [0, 1]; 1: all.
    pub top_p: f32,
    /// Drop tokens less likely than min_p times the most likely, in [0, 1]; 0: none.
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of recent tokens by this; 1: off. > 0.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: u32,
    /// The random seed: the same seed, prompt and parameters give the same text.
    pub seed: u64,
}

/// The default sampling: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, no repetition
/// penalty (last 64), seed 0.
#[no_mangle]
pub extern "C" fn cheems_sampling_default_params() -> cheems_sampling_params {
    let d = SamplerParams::default();
    cheems_sampling_params {
        temperature: d.temperature,
        top_k: u32::try_from(d.top_k).unwrap_or(u32::MAX),
        top_p: d.top_p,
        min_p: d.min_p,
        repeat_penalty: d.repeat_penalty,
        repeat_last_n: u32::try_from(d.repeat_last_n).unwrap_or(u32::MAX),
        seed: d.seed,
    }
}

/// Sampling parameters checked and converted.
fn sampler_params(p: &cheems_sampling_params) -> R<SamplerParams> {
    let bad = |v: f32, lo: f32, hi: f32| v.is_nan() || v < lo || v > hi;
    if bad(p.temperature, 0.0, f32::INFINITY) || bad(p.top_p, 0.0, 1.0) || bad(p.min_p, 0.0, 1.0) {
        return Err(fail(
            CHEEMS_ERR_INVALID_ARG,
            format!(
                "sampling parameters out of range (temperature {} must be >= 0, top_p {} and \
                 min_p {} in [0, 1])",
                p.temperature, p.top_p, p.min_p
            ),
        ));
    }
    if p.repeat_penalty.is_nan() || p.repeat_penalty <= 0.0 || p.repeat_penalty.is_infinite() {
        return Err(fail(
            CHEEMS_ERR_INVALID_ARG,
            format!("repeat_penalty {} must be positive", p.repeat_penalty),
        ));
    }
    Ok(SamplerParams {
        temperature: p.temperature,
        top_k: p.top_k as usize,
        top_p: p.top_p,
        min_p: p.min_p,
        repeat_penalty: p.repeat_penalty,
        repeat_last_n: p.repeat_last_n as usize,
        seed: p.seed,
    })
}

/// Makes a sampler with `params` (NULL: the defaults) into `*out_sampler`.
///
/// # Safety
/// `params` is NULL or valid; `out_sampler` is writable.
#[no_mangle]
pub unsafe extern "C" fn cheems_sampler_new(
    params: *const cheems_sampling_params,
    out_sampler: *mut *mut cheems_sampler,
) -> cheems_status {
    guard("cheems_sampler_new", || {
        let out = out_arg(out_sampler, "out_sampler")?;
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { put(out, std::ptr::null_mut()) };
        let p = if params.is_null() {
            cheems_sampling_default_params()
        } else {
            // SAFETY: non-NULL, and the caller promises a valid struct.
            unsafe { *params }
        };
        let sampler = Sampler::new(sampler_params(&p)?, 0);
        let handle = cheems_sampler {
            inner: Mutex::new(sampler),
        };
        // SAFETY: checked non-NULL above.
        unsafe { put(out, register(handle, Kind::Sampler)) };
        Ok(())
    })
}

/// Frees a sampler. NULL is a no-op; a second free returns `CHEEMS_ERR_INVALID_HANDLE`.
///
/// # Safety
/// `sampler` is NULL or a pointer returned by `cheems_sampler_new`, not in use.
#[no_mangle]
pub unsafe extern "C" fn cheems_sampler_free(sampler: *mut cheems_sampler) -> cheems_status {
    guard("cheems_sampler_free", || {
        drop(unregister(sampler, Kind::Sampler, "sampler")?);
        Ok(())
    })
}

fn lock_sampler(h: &cheems_sampler) -> R<MutexGuard<'_, Sampler>> {
    match h.inner.try_lock() {
        Ok(g) => Ok(g),
        Err(TryLockError::WouldBlock) => Err(fail(
            CHEEMS_ERR_BUSY,
            "the sampler is in use by another thread",
        )),
        Err(TryLockError::Poisoned(p)) => Ok(p.into_inner()),
    }
}

/// Picks a token from `n_logits` logits into `*out_token` (it does not record it: call
/// `cheems_sampler_accept` with the token you keep).
///
/// # Safety
/// `sampler` is a live sampler handle; `logits` has `n_logits` floats; `out_token` is writable.
#[no_mangle]
pub unsafe extern "C" fn cheems_sampler_sample(
    sampler: *mut cheems_sampler,
    logits: *const f32,
    n_logits: usize,
    out_token: *mut u32,
) -> cheems_status {
    guard("cheems_sampler_sample", || {
        let h = lookup(sampler, Kind::Sampler, "sampler")?;
        // SAFETY: the caller promises `n_logits` floats.
        let l = unsafe { slice_arg(logits, n_logits, "logits") }?;
        let out = out_arg(out_token, "out_token")?;
        if l.is_empty() || u32::try_from(l.len()).is_err() {
            return Err(fail(
                CHEEMS_ERR_INVALID_ARG,
                format!("{} logits: need 1 to 2^32 - 1", l.len()),
            ));
        }
        let t = lock_sampler(h)?.sample(l);
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { put(out, t) };
        Ok(())
    })
}

/// Records a token (of the prompt or generated) for the repetition penalty.
///
/// # Safety
/// `sampler` is a live sampler handle.
#[no_mangle]
pub unsafe extern "C" fn cheems_sampler_accept(
    sampler: *mut cheems_sampler,
    token: u32,
) -> cheems_status {
    guard("cheems_sampler_accept", || {
        let h = lookup(sampler, Kind::Sampler, "sampler")?;
        lock_sampler(h)?.accept(token);
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Generation and chat
// ---------------------------------------------------------------------------------------------

/// Receives generated text as it is produced: `len` bytes of UTF-8 at `text` (followed by a NUL,
/// so `text` is also a C string unless the model produced a NUL byte), and the `user_data`
/// given to the call. Characters split over tokens arrive whole. The text is valid only during
/// the call. Return 0 to go on, anything else to cancel. The callback must not call into the
/// same session (that returns `CHEEMS_ERR_BUSY`); other sessions and models are fine.
pub type cheems_text_callback =
    Option<unsafe extern "C" fn(text: *const c_char, len: usize, user_data: *mut c_void) -> c_int>;

/// How `cheems_generate` and `cheems_chat` run. Start from
/// `cheems_generate_default_params()`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct cheems_generate_params {
    pub sampling: cheems_sampling_params,
    /// Tokens to generate at most.
    pub max_tokens: u32,
    /// Keep generating past end-of-sequence tokens.
    pub ignore_eos: bool,
}

/// The default generation: default sampling, at most 256 tokens, stop at end-of-sequence.
#[no_mangle]
pub extern "C" fn cheems_generate_default_params() -> cheems_generate_params {
    cheems_generate_params {
        sampling: cheems_sampling_default_params(),
        max_tokens: 256,
        ignore_eos: false,
    }
}

/// Why generation stopped.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum cheems_stop_reason {
    /// The model produced an end-of-sequence token (it is not streamed nor fed to the session).
    CHEEMS_STOP_EOS = 0,
    /// `max_tokens` were generated.
    CHEEMS_STOP_MAX_TOKENS = 1,
    /// The session's context is full (plain-attention models).
    CHEEMS_STOP_CONTEXT_FULL = 2,
    /// The callback returned non-zero.
    CHEEMS_STOP_CANCELLED = 3,
}

/// What a `cheems_generate` or `cheems_chat` call did.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct cheems_generate_result {
    /// Tokens of prompt fed to the session by this call.
    pub n_prompt_tokens: u32,
    /// Tokens generated (each fed to the session and streamed).
    pub n_generated: u32,
    pub stop_reason: cheems_stop_reason,
}

/// The streaming side of a generation: the callback and the text delivered so far.
struct Stream {
    cb: cheems_text_callback,
    user_data: *mut c_void,
    /// The piece being delivered, NUL-terminated.
    buf: Vec<u8>,
    /// Everything delivered.
    text: String,
}

impl Stream {
    /// Hands `piece` to the callback; false: cancel.
    fn deliver(&mut self, piece: &str) -> bool {
        self.text.push_str(piece);
        let Some(f) = self.cb else {
            return true;
        };
        self.buf.clear();
        self.buf.extend_from_slice(piece.as_bytes());
        self.buf.push(0);
        // SAFETY: the caller of cheems_generate/cheems_chat promised a valid callback; the text is
        // NUL-terminated and outlives the call.
        unsafe { f(self.buf.as_ptr().cast(), piece.len(), self.user_data) == 0 }
    }
}

/// What a generation does: its tokenizer, the tokens that stop it, and the parameters.
struct Plan<'a> {
    tok: &'a Tokenizer,
    stop: &'a [u32],
    max_tokens: u32,
    ignore_eos: bool,
    sampling: SamplerParams,
}

/// Feeds `prompt` (or, when empty, starts from the session's logits) and samples up to
/// `max_tokens`, feeding each token back and streaming its text. Leaves the session partly
/// changed on an error: the caller restores its snapshot.
fn run_generation(
    s: &mut SessionInner,
    m: &ModelShared,
    plan: Plan<'_>,
    prompt: &[u32],
    out: &mut Stream,
) -> R<cheems_generate_result> {
    let tok = plan.tok;
    let mut res = cheems_generate_result {
        n_prompt_tokens: u32::try_from(prompt.len()).unwrap_or(u32::MAX),
        n_generated: 0,
        stop_reason: cheems_stop_reason::CHEEMS_STOP_MAX_TOKENS,
    };
    for &t in prompt {
        m.check_token(t)?;
    }
    s.check_room(prompt.len())?;
    if prompt.is_empty() && !s.has_logits {
        return Err(fail(
            CHEEMS_ERR_INVALID_ARG,
            "the prompt is empty and the session has no logits to continue from",
        ));
    }
    let mut sampler = Sampler::new(plan.sampling, m.model.config.n_vocab);
    for &t in prompt {
        sampler.accept(t);
    }
    // Sample first from the kept logits when there is no prompt (the session's own buffer is not
    // kept across a state restore).
    let mut from_kept = prompt.is_empty();
    if !prompt.is_empty() {
        s.session
            .prefill(prompt)
            .map_err(|e| classify(e, CHEEMS_ERR_INTERNAL))?;
    }
    let mut decoder = StreamDecoder::new();
    let mut cancelled = false;
    loop {
        if res.n_generated >= plan.max_tokens {
            res.stop_reason = cheems_stop_reason::CHEEMS_STOP_MAX_TOKENS;
            break;
        }
        if !s.has_room(1) {
            res.stop_reason = cheems_stop_reason::CHEEMS_STOP_CONTEXT_FULL;
            break;
        }
        let next = if from_kept {
            sampler.sample(&s.logits)
        } else {
            sampler.sample(s.session.logits())
        };
        if !plan.ignore_eos && plan.stop.contains(&next) {
            res.stop_reason = cheems_stop_reason::CHEEMS_STOP_EOS;
            break;
        }
        sampler.accept(next);
        s.session
            .decode(next)
            .map_err(|e| classify(e, CHEEMS_ERR_INTERNAL))?;
        from_kept = false;
        res.n_generated += 1;
        if let Some(piece) = decoder.push(tok, next) {
            if !out.deliver(&piece) {
                cancelled = true;
                break;
            }
        }
    }
    if !cancelled {
        if let Some(rest) = decoder.flush() {
            cancelled = !out.deliver(&rest);
        }
    }
    if cancelled {
        res.stop_reason = cheems_stop_reason::CHEEMS_STOP_CANCELLED;
    }
    if !from_kept {
        s.take_logits();
    }
    Ok(res)
}

/// Runs a generation with the session's snapshot taken first: on an error or a panic the
/// session goes back to it. `prepare` runs on the locked session first (a chat turn resets it
/// when the conversation does not continue the state).
fn generate_guarded(
    h: &cheems_session,
    stop: &[u32],
    prepare: impl FnOnce(&mut SessionInner) -> R<(Vec<u32>, Option<String>)>,
    p: &cheems_generate_params,
    cb: cheems_text_callback,
    user_data: *mut c_void,
    out_result: *mut cheems_generate_result,
) -> R<()> {
    let plan = Plan {
        tok: h.model.tokenizer()?,
        stop,
        max_tokens: p.max_tokens,
        ignore_eos: p.ignore_eos,
        sampling: sampler_params(&p.sampling)?,
    };
    let mut s = h.lock_usable()?;
    let snap = s.session.snapshot();
    let (had_logits, had_chat) = (s.has_logits, s.chat_text.clone());
    let mut stream = Stream {
        cb,
        user_data,
        buf: Vec::new(),
        text: String::new(),
    };
    let run = catch_unwind(AssertUnwindSafe(|| {
        let (prompt, chat_prefix) = prepare(&mut s)?;
        let res = run_generation(&mut s, &h.model, plan, &prompt, &mut stream)?;
        Ok::<_, Failure>((res, chat_prefix))
    }));
    let failure = match run {
        Ok(Ok((res, chat_prefix))) => {
            // The session holds the prompt and every streamed token: a chat continues from the
            // reply as streamed. (Bytes that were not UTF-8 were streamed as U+FFFD; the session
            // keeps what the model generated, which that text stands for.)
            s.chat_text = chat_prefix.map(|mut t| {
                t.push_str(&stream.text);
                t
            });
            // SAFETY: the caller promises `out_result` is NULL or writable.
            unsafe { put(out_result, res) };
            if res.stop_reason == cheems_stop_reason::CHEEMS_STOP_CANCELLED {
                return Err(fail(
                    CHEEMS_CANCELLED,
                    format!("cancelled by the callback after {} tokens", res.n_generated),
                ));
            }
            return Ok(());
        }
        Ok(Err(f)) => f,
        Err(p) => fail(
            CHEEMS_ERR_PANIC,
            format!(
                "internal error (a bug in cheems): {}; the session was restored",
                panic_message(&*p)
            ),
        ),
    };
    s.restore(&snap);
    s.has_logits = had_logits;
    s.chat_text = had_chat;
    Err(failure)
}

/// Generates text after `prompt` (NUL-terminated UTF-8), streaming it through `callback` (may be
/// NULL) with `user_data`, and fills `*out_result` (may be NULL).
///
/// The prompt continues the session: on an empty session it gets BOS as the model asks; later
/// calls append to what the session holds, so a session can be fed piece by piece. An empty
/// prompt continues from the last logits. Each generated token is fed to the session and its text
/// streamed; an end-of-sequence token stops generation and is neither streamed nor fed.
///
/// Returns `CHEEMS_CANCELLED` when the callback returns non-zero: that is not an error, the
/// session keeps the prompt and the tokens streamed until then. On any error (a bad argument, a
/// prompt that does not fit, an internal error) the session is as it was before the call.
///
/// # Safety
/// `session` is a live session handle; `prompt` is NUL-terminated; `params` is NULL or valid;
/// `callback` is NULL or a valid function; `out_result` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn cheems_generate(
    session: *mut cheems_session,
    prompt: *const c_char,
    params: *const cheems_generate_params,
    callback: cheems_text_callback,
    user_data: *mut c_void,
    out_result: *mut cheems_generate_result,
) -> cheems_status {
    guard("cheems_generate", || {
        let h = lookup(session, Kind::Session, "session")?;
        // SAFETY: the caller promises a NUL-terminated string.
        let prompt = unsafe { text_arg(prompt, "prompt") }?;
        let p = if params.is_null() {
            cheems_generate_default_params()
        } else {
            // SAFETY: non-NULL, and the caller promises a valid struct.
            unsafe { *params }
        };
        let tok = h.model.tokenizer()?;
        let prepare = |s: &mut SessionInner| {
            let ids = tok
                .encode(prompt, s.session.pos() == 0)
                .map_err(|e| classify(e, CHEEMS_ERR_INVALID_ARG))?;
            Ok((ids, None))
        };
        let stop = tok.stop_tokens();
        generate_guarded(h, stop, prepare, &p, callback, user_data, out_result)
    })
}

/// One message of a conversation: `role` (`"system"`, `"user"`, `"assistant"`) and `content`,
/// both NUL-terminated UTF-8.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct cheems_chat_message {
    pub role: *const c_char,
    pub content: *const c_char,
}

/// Answers a conversation: renders `messages` with the model's chat template (and the assistant
/// prompt), feeds it, and streams the reply as `cheems_generate` does. A reply ends at the
/// model's end-of-sequence tokens and at the template's end-of-turn token (ChatML's
/// `<|im_end|>`). A model without a template gets a plain transcript (`User: ...`,
/// `Assistant: ...`; see `has_chat_template`).
///
/// Pass the whole conversation each turn, with the replies as they were streamed. The session
/// remembers the text it holds: when the rendered conversation continues it, only the new part
/// is fed (a turn costs its own tokens, not the whole history); otherwise (another conversation,
/// an edited history, a template that rewrites replies, such as one that trims them) the session
/// is reset and the whole conversation fed. `CHEEMS_ERR_TEMPLATE` when the template cannot render
/// the messages. Cancellation and errors as `cheems_generate`.
///
/// # Safety
/// `session` is a live session handle; `messages` has `n_messages` messages whose strings are
/// NUL-terminated; the rest as `cheems_generate`.
#[no_mangle]
pub unsafe extern "C" fn cheems_chat(
    session: *mut cheems_session,
    messages: *const cheems_chat_message,
    n_messages: usize,
    params: *const cheems_generate_params,
    callback: cheems_text_callback,
    user_data: *mut c_void,
    out_result: *mut cheems_generate_result,
) -> cheems_status {
    guard("cheems_chat", || {
        let h = lookup(session, Kind::Session, "session")?;
        // SAFETY: the caller promises `n_messages` messages.
        let msgs = unsafe { slice_arg(messages, n_messages, "messages") }?;
        if msgs.is_empty() {
            return Err(fail(CHEEMS_ERR_INVALID_ARG, "no messages"));
        }
        let mut conversation = Vec::with_capacity(msgs.len());
        for (i, m) in msgs.iter().enumerate() {
            // SAFETY: the caller promises NUL-terminated strings.
            let role = unsafe { text_arg(m.role, &format!("messages[{i}].role")) }?;
            // SAFETY: as above.
            let content = unsafe { text_arg(m.content, &format!("messages[{i}].content")) }?;
            conversation.push(Message::new(role, content));
        }
        let p = if params.is_null() {
            cheems_generate_default_params()
        } else {
            // SAFETY: non-NULL, and the caller promises a valid struct.
            unsafe { *params }
        };
        let m = &h.model;
        let tok = m.tokenizer()?;
        let template = m
            .template
            .as_ref()
            .map_err(|why| fail(CHEEMS_ERR_TEMPLATE, why.clone()))?;
        let rendered = template
            .render(&conversation, true)
            .map_err(|e| fail(CHEEMS_ERR_TEMPLATE, chain(&e)))?;
        let prepare = |s: &mut SessionInner| {
            let held = match &s.chat_text {
                Some(t)
                    if s.session.pos() > 0 && s.has_logits && rendered.starts_with(t.as_str()) =>
                {
                    Some(t.len())
                }
                _ => None,
            };
            let ids = match held {
                Some(n) => tok.encode(&rendered[n..], false),
                None => {
                    s.session.reset();
                    s.has_logits = false;
                    // Real templates write their own BOS; the fallback gets it as the tokenizer
                    // asks (as `cheems chat` does).
                    tok.encode(&rendered, template.is_fallback())
                }
            }
            .map_err(|e| classify(e, CHEEMS_ERR_INVALID_ARG))?;
            Ok((ids, Some(rendered.clone())))
        };
        generate_guarded(
            h,
            &m.chat_stop,
            prepare,
            &p,
            callback,
            user_data,
            out_result,
        )
    })
}

// ---------------------------------------------------------------------------------------------
// State snapshots
// ---------------------------------------------------------------------------------------------

/// Positions the session's KV caches hold (0 without plain attention), as the state reader
/// wants it.
fn kv_capacity(s: &SessionInner) -> usize {
    s.kv_capacity.unwrap_or(0)
}

/// Writes to `*out_size` the bytes `cheems_session_state_save` needs now. The state of mamba2,
/// doge and cheems models has a fixed bound; a llama state grows with the tokens held.
///
/// # Safety
/// `session` is a live session handle; `out_size` is writable.
#[no_mangle]
pub unsafe extern "C" fn cheems_session_state_size(
    session: *const cheems_session,
    out_size: *mut usize,
) -> cheems_status {
    guard("cheems_session_state_size", || {
        let s = lookup(session, Kind::Session, "session")?.lock_usable()?;
        let out = out_arg(out_size, "out_size")?;
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { put(out, s.session.snapshot().byte_size()) };
        Ok(())
    })
}

/// Saves the session's state (position, caches, recurrent states; not the logits) into `buf`
/// of `buf_size` bytes and its length to `*out_len`. When the buffer is too small, writes only
/// the length and returns `CHEEMS_ERR_BUFFER_TOO_SMALL`. The bytes are the state file layout:
/// `cheems_session_state_load` or `cheems_session_state_load_file` restore them.
///
/// # Safety
/// `session` is a live session handle; `buf` is NULL (with `buf_size` 0) or has `buf_size`
/// writable bytes; `out_len` is writable.
#[no_mangle]
pub unsafe extern "C" fn cheems_session_state_save(
    session: *const cheems_session,
    buf: *mut u8,
    buf_size: usize,
    out_len: *mut usize,
) -> cheems_status {
    guard("cheems_session_state_save", || {
        let s = lookup(session, Kind::Session, "session")?.lock_usable()?;
        let out_len = out_arg(out_len, "out_len")?;
        // SAFETY: the caller promises `buf_size` writable bytes.
        let dst = unsafe { buf_arg(buf, buf_size, "buf") }?;
        let snap = s.session.snapshot();
        let n = snap.byte_size();
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { put(out_len, n) };
        if n > dst.len() {
            return Err(fail(
                CHEEMS_ERR_BUFFER_TOO_SMALL,
                format!("the state has {n} bytes, the buffer {buf_size}"),
            ));
        }
        let mut w: &mut [u8] = &mut dst[..n];
        snap.write_to(&mut w)
            .map_err(|e| classify(e, CHEEMS_ERR_INTERNAL))?;
        Ok(())
    })
}

/// Restores a state read from `bytes`; checked first, so on an error the session is unchanged.
fn restore_from(h: &cheems_session, bytes: &[u8]) -> R<()> {
    let mut s = h.lock()?;
    let like = s.session.snapshot();
    let cap = kv_capacity(&s);
    let state = SessionState::read_from(bytes, &like, cap)
        .map_err(|e| fail(CHEEMS_ERR_STATE, chain(&e)))?;
    s.session
        .restore(&state)
        .map_err(|e| fail(CHEEMS_ERR_STATE, chain(&e)))?;
    s.has_logits = false;
    s.chat_text = None;
    s.broken = false;
    Ok(())
}

/// Restores a state saved by `cheems_session_state_save` (or `_save_file`) for this model; the
/// session then continues exactly as the saved one would. Logits are not saved: feed a token
/// (or generate with a prompt) next. The text a `cheems_chat` session had read is not saved
/// either: a `cheems_chat` after a restore reads its whole conversation again. A state of another model, a corrupt or truncated one, or
/// one with more positions than this session's `n_ctx` returns `CHEEMS_ERR_STATE` and leaves the
/// session unchanged.
///
/// # Safety
/// `session` is a live session handle; `buf` has `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn cheems_session_state_load(
    session: *mut cheems_session,
    buf: *const u8,
    len: usize,
) -> cheems_status {
    guard("cheems_session_state_load", || {
        let h = lookup(session, Kind::Session, "session")?;
        if buf.is_null() {
            return Err(fail(CHEEMS_ERR_NULL_ARG, "`buf` is NULL"));
        }
        // SAFETY: the caller promises `len` readable bytes.
        let bytes = unsafe { slice_arg(buf, len, "buf") }?;
        restore_from(h, bytes)
    })
}

/// Saves the session's state to the file at `path` (created or replaced).
///
/// # Safety
/// `session` is a live session handle; `path` is NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn cheems_session_state_save_file(
    session: *const cheems_session,
    path: *const c_char,
) -> cheems_status {
    guard("cheems_session_state_save_file", || {
        let h = lookup(session, Kind::Session, "session")?;
        // SAFETY: the caller promises a NUL-terminated string.
        let path = unsafe { path_arg(path, "path") }?;
        let s = h.lock_usable()?;
        s.session
            .save_state(&path)
            .map_err(|e| classify(e, CHEEMS_ERR_IO))
    })
}

/// Restores a state from the file at `path`, as `cheems_session_state_load`; a file that cannot
/// be read is `CHEEMS_ERR_IO`.
///
/// # Safety
/// `session` is a live session handle; `path` is NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn cheems_session_state_load_file(
    session: *mut cheems_session,
    path: *const c_char,
) -> cheems_status {
    guard("cheems_session_state_load_file", || {
        let h = lookup(session, Kind::Session, "session")?;
        // SAFETY: the caller promises a NUL-terminated string.
        let path = unsafe { path_arg(path, "path") }?;
        let bytes = std::fs::read(&path)
            .map_err(|e| fail(CHEEMS_ERR_IO, format!("read {}: {e}", path.display())))?;
        restore_from(h, &bytes)
            .map_err(|f| fail(f.status, format!("{}: {}", path.display(), f.msg)))
    })
}
