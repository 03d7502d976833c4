//! The error type of the formats crate: every variant says what was wrong and where.

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error reading or writing a model file. Messages are one line and name the offending item
/// (file offset, key, tensor name) and what was expected versus found.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error, with the path or action it concerns.
    #[error("{context}: {source}")]
    Io {
        /// What was being done (e.g. "open model.gguf").
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not what it claims to be, or violates the format.
    #[error("{0}")]
    Format(String),
    /// A value the caller supplied is not valid (shape, length, type).
    #[error("{0}")]
    Invalid(String),
    /// A type or feature this build does not handle.
    #[error("{0}")]
    Unsupported(String),
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// `return Err(Error::Format(format!(...)))` in one line.
#[macro_export]
macro_rules! bail_format {
    ($($arg:tt)*) => { return Err($crate::Error::Format(format!($($arg)*))) };
}

/// `return Err(Error::Invalid(format!(...)))` in one line.
#[macro_export]
macro_rules! bail_invalid {
    ($($arg:tt)*) => { return Err($crate::Error::Invalid(format!($($arg)*))) };
}
