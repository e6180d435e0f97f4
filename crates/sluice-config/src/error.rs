//! Configuration errors, located to the byte.

use std::ops::Range;
use std::path::PathBuf;

/// The process exit code for an invalid or unreadable configuration
/// (`EX_USAGE` in sysexits.h).
pub const EXIT_CONFIG: i32 = 64;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable, not UTF-8).
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        /// The file asked for.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The text is not a valid configuration. Displays as `FILE:LINE:COL: message`.
    #[error("{file}:{line}:{col}: {message}")]
    Invalid {
        /// The file (or origin name given to [`crate::parse`]).
        file: String,
        /// 1-based line of the offending value.
        line: usize,
        /// 1-based column (in characters) of the offending value.
        col: usize,
        /// One line saying what is wrong.
        message: String,
    },
}

impl ConfigError {
    /// The exit code a command should end with: always [`EXIT_CONFIG`].
    pub fn exit_code(&self) -> i32 {
        EXIT_CONFIG
    }
}

/// The source text and its name, to turn byte spans into `file:line:col`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Source<'a> {
    pub text: &'a str,
    pub origin: &'a str,
}

impl Source<'_> {
    /// An [`ConfigError::Invalid`] at the start of `span`.
    pub fn error(&self, span: Range<usize>, message: impl std::fmt::Display) -> ConfigError {
        let (line, col) = line_col(self.text, span.start);
        // Messages are one line, whatever a lower layer produced.
        let message = message
            .to_string()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        ConfigError::Invalid {
            file: self.origin.to_owned(),
            line,
            col,
            message,
        }
    }
}

/// 1-based line and character column of byte `offset` (clamped to the text).
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_is_one_based_and_counts_characters() {
        let t = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 4), (1, 5));
        assert_eq!(line_col(t, 6), (2, 1));
        // "bé = " is 6 bytes but 5 characters.
        assert_eq!(line_col(t, 6 + 6), (2, 6));
        assert_eq!(line_col(t, 10_000), (3, 1));
        // Inside a multi-byte character: the character's column.
        assert_eq!(line_col(t, 8), (2, 2));
    }

    #[test]
    fn invalid_displays_as_file_line_col() {
        let src = Source {
            text: "x\ny = 2",
            origin: "sluice.toml",
        };
        let e = src.error(2..3, "bad\nthing");
        assert_eq!(e.to_string(), "sluice.toml:2:1: bad; thing");
    }
}
