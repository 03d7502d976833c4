//! Where `cheems chat` (and other commands that can do without a file) find a model when none
//! is named: the `CHEEMS_MODEL` environment variable, else `models/cheems-default.gguf` in the
//! repository cheems was built from, else `cheems-default.gguf` next to the executable.
//! Loading the model is the caller's business.

use std::path::PathBuf;

/// The environment variable that names the default model file.
pub const ENV_VAR: &str = "CHEEMS_MODEL";

/// The default model's file name.
pub const FILE_NAME: &str = "cheems-default.gguf";

/// The default model file, if there is one: `$CHEEMS_MODEL` when it is set (and not empty),
/// else `models/cheems-default.gguf` under the repository root, else `cheems-default.gguf`
/// beside the running executable. `None` when the chosen file does not exist; a set
/// `CHEEMS_MODEL` naming a missing file gives `None` too, without looking further.
pub fn default_model_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(ENV_VAR).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(FILE_NAME);
    if repo.is_file() {
        return Some(repo);
    }
    let exe = std::env::current_exe().ok()?;
    let beside = exe.parent()?.join(FILE_NAME);
    beside.is_file().then_some(beside)
}

/// [`default_model_path`], or an error that says how to name a model; `usage` shows the command
/// with a model file (`"cheems chat MODEL.gguf"`).
pub fn require(usage: &str) -> anyhow::Result<PathBuf> {
    default_model_path().ok_or_else(|| match std::env::var_os(ENV_VAR).filter(|v| !v.is_empty()) {
        Some(v) => anyhow::anyhow!(
            "{ENV_VAR} names {}, which is not a file: pass a model file ({usage}) or fix {ENV_VAR}",
            std::path::Path::new(&v).display()
        ),
        None => anyhow::anyhow!(
            "no model file given and no default model found: pass one ({usage}) or set {ENV_VAR}=MODEL.gguf"
        ),
    })
}
