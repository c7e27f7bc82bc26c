//! Configuration errors: which file or override, which key, what value, what range.
use std::{fmt, path::PathBuf};

/// A position in the file, 1-based.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    pub(super) fn of(text: &str, offset: usize) -> Pos {
        let before = text.get(..offset).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Pos { line, column }
    }
}

/// Where the bad configuration came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A string or an in-memory `Config`.
    Text,
    File(PathBuf),
    /// A command-line `KEY=VALUE` override.
    Override,
}

/// What is wrong.
#[derive(Debug)]
pub enum Problem {
    Read(std::io::Error),
    Syntax {
        message: String,
        at: Option<Pos>,
    },
    UnknownKey {
        key: String,
        /// The table the key was looked up in; `None` at the top level.
        table: Option<&'static str>,
        valid: &'static [&'static str],
        at: Option<Pos>,
    },
    NotATable {
        key: String,
        at: Option<Pos>,
    },
    WrongType {
        key: String,
        value: String,
        expected: &'static str,
        at: Option<Pos>,
    },
    OutOfRange {
        key: String,
        value: String,
        range: String,
        at: Option<Pos>,
    },
    /// Two keys that contradict each other.
    Inconsistent {
        key: String,
        value: String,
        rule: String,
    },
    /// A command-line override without `=`.
    BadOverride(String),
}

pub(super) struct At(Option<Pos>);

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, " at line {}, column {}", p.line, p.column),
            None => Ok(()),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Read(e) => write!(f, "cannot read: {e}"),
            Problem::Syntax { message, at } => write!(f, "TOML syntax error{}: {message}", At(*at)),
            Problem::UnknownKey {
                key,
                table,
                valid,
                at,
            } => {
                write!(f, "unknown key {key}{}; valid keys ", At(*at))?;
                match table {
                    Some(t) => write!(f, "of [{t}]")?,
                    None => f.write_str("at the top level")?,
                }
                write!(f, ": {}", valid.join(", "))
            }
            Problem::NotATable { key, at } => {
                write!(f, "{key}{} must be a table ([{key}])", At(*at))
            }
            Problem::WrongType {
                key,
                value,
                expected,
                at,
            } => write!(f, "{key} = {value} is not {expected}{}", At(*at)),
            Problem::OutOfRange {
                key,
                value,
                range,
                at,
            } => write!(f, "{key} = {value} is out of range ({range}){}", At(*at)),
            Problem::Inconsistent { key, value, rule } => write!(f, "{key} = {value} {rule}"),
            Problem::BadOverride(arg) => {
                write!(f, "{arg:?} is not KEY=VALUE (e.g. detect.rst_ratio=0.1)")
            }
        }
    }
}

/// A configuration error: its origin (file, text or override) and the problem.
#[derive(Debug)]
pub struct ConfigError {
    pub origin: Origin,
    pub problem: Problem,
}

impl ConfigError {
    pub(super) fn new(problem: Problem) -> ConfigError {
        ConfigError {
            origin: Origin::Text,
            problem,
        }
    }

    pub(super) fn with_origin(mut self, origin: Origin) -> ConfigError {
        self.origin = origin;
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::Text => write!(f, "config: {}", self.problem),
            Origin::File(p) => write!(f, "config {}: {}", p.display(), self.problem),
            Origin::Override => write!(f, "config override: {}", self.problem),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.problem {
            Problem::Read(e) => Some(e),
            _ => None,
        }
    }
}
