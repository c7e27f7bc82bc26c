//! Parser for tracefs `events/<category>/<event>/format` files.
//!
//! Fields are indented and separated by tabs (shown as `→` here):
//!
//! ```text
//! name: tcp_send_reset
//! ID: 2280
//! format:
//! →field:unsigned short common_type;→offset:0;→size:2;→signed:0;
//! →...
//! →field:const void * skbaddr;→offset:8;→size:8;→signed:0;
//!
//! print fmt: "skbaddr=%p ...", REC->skbaddr, ...
//! ```
use std::path::{Path, PathBuf};

use probe_common::ABSENT;

use super::tracepoint::Tracepoint;

/// One `field:` line of a format file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// `skaddr`, `saddr` (array brackets stripped).
    pub name: String,
    /// `const void *`, `__u16`, `__u8[28]` (array length kept on the type).
    pub c_type: String,
    /// Byte offset in the record, common header included.
    pub offset: u16,
    pub size: u16,
    pub signed: bool,
}

/// A parsed format file. `fields` includes the `common_*` header fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpFormat {
    pub name: String,
    pub id: Option<u32>,
    pub fields: Vec<Field>,
}

impl TpFormat {
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// Reading or parsing a format file failed.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error(
        "{} has no events/ directory: tracefs does not seem to be mounted there",
        .root.display()
    )]
    NoTracefs { root: PathBuf },
    #[error(
        "this kernel has no {tp} tracepoint ({} does not exist); the probe stays off",
        .dir.display()
    )]
    MissingTracepoint { tp: Tracepoint, dir: PathBuf },
    #[error("cannot read {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}line {line}: {message} (the line reads `{text}`)", in_file(.path.as_deref()))]
    Syntax {
        path: Option<PathBuf>,
        line: usize,
        message: String,
        text: String,
    },
    #[error("{}{message}", in_file(.path.as_deref()))]
    Incomplete {
        path: Option<PathBuf>,
        message: &'static str,
    },
    #[error(
        "{}the format is for `{found}`, expected `{expected}`",
        in_file(.path.as_deref())
    )]
    NameMismatch {
        path: Option<PathBuf>,
        expected: &'static str,
        found: String,
    },
}

fn in_file(path: Option<&Path>) -> String {
    path.map(|p| format!("{}: ", p.display()))
        .unwrap_or_default()
}

impl FormatError {
    /// Names the file a parse error came from.
    pub(super) fn in_file(mut self, file: &Path) -> FormatError {
        match &mut self {
            FormatError::Syntax { path, .. }
            | FormatError::Incomplete { path, .. }
            | FormatError::NameMismatch { path, .. } => *path = Some(file.to_path_buf()),
            FormatError::NoTracefs { .. }
            | FormatError::MissingTracepoint { .. }
            | FormatError::Io { .. } => {}
        }
        self
    }

    /// Line number of a syntax error (1-based).
    #[cfg(test)]
    pub fn line(&self) -> Option<usize> {
        match self {
            FormatError::Syntax { line, .. } => Some(*line),
            _ => None,
        }
    }
}

fn syntax(line: usize, message: impl Into<String>, text: &str) -> FormatError {
    FormatError::Syntax {
        path: None,
        line,
        message: message.into(),
        text: text.trim_end().to_owned(),
    }
}

fn incomplete(message: &'static str) -> FormatError {
    FormatError::Incomplete {
        path: None,
        message,
    }
}

/// Parses the text of a format file. Everything from `print fmt:` on is ignored.
pub fn parse_format(text: &str) -> Result<TpFormat, FormatError> {
    let mut name: Option<String> = None;
    let mut id = None;
    let mut in_format = false;
    let mut fields: Vec<Field> = Vec::new();

    for (idx, raw) in text.lines().enumerate() {
        let line_no = idx + 1;
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with("print fmt:") {
            break;
        }
        if in_format {
            let Some(decl) = line.strip_prefix("field:") else {
                return Err(syntax(
                    line_no,
                    "expected a `field:` line inside the format section",
                    raw,
                ));
            };
            let field = parse_field(decl).map_err(|m| syntax(line_no, m, raw))?;
            if fields.iter().any(|f| f.name == field.name) {
                return Err(syntax(
                    line_no,
                    format!("field `{}` is listed twice", field.name),
                    raw,
                ));
            }
            fields.push(field);
        } else if let Some(value) = line.strip_prefix("name:") {
            let value = value.trim();
            if value.is_empty() {
                return Err(syntax(line_no, "empty tracepoint name", raw));
            }
            name = Some(value.to_owned());
        } else if let Some(value) = line.strip_prefix("ID:") {
            let value = value.trim();
            let parsed = value
                .parse::<u32>()
                .map_err(|_| syntax(line_no, format!("ID `{value}` is not a number"), raw))?;
            id = Some(parsed);
        } else if line == "format:" {
            in_format = true;
        } else {
            return Err(syntax(
                line_no,
                "unexpected line (expected `name:`, `ID:` or `format:`)",
                raw,
            ));
        }
    }

    let Some(name) = name else {
        return Err(incomplete("no `name:` line"));
    };
    if !in_format {
        return Err(incomplete("no `format:` line"));
    }
    if fields.is_empty() {
        return Err(incomplete("the `format:` section lists no fields"));
    }
    Ok(TpFormat { name, id, fields })
}

/// Parses what follows `field:`: `TYPE NAME;\toffset:N;\tsize:N;\tsigned:N;`.
fn parse_field(decl: &str) -> Result<Field, String> {
    let mut parts = decl.split(';');
    let declaration = parts.next().unwrap_or("").trim();
    let (c_type, name) = split_declaration(declaration)?;

    let (mut offset, mut size, mut signed) = (None, None, None);
    for part in parts {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let Some((key, value)) = part.split_once(':') else {
            return Err(format!("`{part}` is not a `key:value` pair"));
        };
        let value = value.trim();
        match key.trim() {
            "offset" => offset = Some(parse_u16("offset", value)?),
            "size" => size = Some(parse_u16("size", value)?),
            "signed" => {
                signed = Some(match value {
                    "0" => false,
                    "1" => true,
                    _ => return Err(format!("signed `{value}` is neither 0 nor 1")),
                })
            }
            // Unknown keys from a future kernel do not change the layout.
            _ => {}
        }
    }
    let Some(offset) = offset else {
        return Err(format!("field `{name}` has no offset"));
    };
    let Some(size) = size else {
        return Err(format!("field `{name}` has no size"));
    };
    if u32::from(offset) + u32::from(size) >= u32::from(ABSENT) {
        return Err(format!(
            "field `{name}` ends past byte {}, beyond what a record can hold",
            ABSENT - 1
        ));
    }
    Ok(Field {
        name,
        c_type,
        offset,
        size,
        // Kernels before 2.6.32 printed no `signed:`.
        signed: signed.unwrap_or(false),
    })
}

fn parse_u16(what: &str, value: &str) -> Result<u16, String> {
    match value.parse::<u16>() {
        Ok(n) if n != ABSENT => Ok(n),
        _ => Err(format!("{what} `{value}` is not a number below {ABSENT}")),
    }
}

/// `const void * skaddr` → (`const void *`, `skaddr`); `__u8 saddr[28]` → (`__u8[28]`, `saddr`).
fn split_declaration(declaration: &str) -> Result<(String, String), String> {
    let Some((head, last)) = declaration.rsplit_once(char::is_whitespace) else {
        return Err(format!(
            "`{declaration}` is not `TYPE NAME` (no type or no name)"
        ));
    };
    // `void *name` puts the star on the name.
    let stars = last.len() - last.trim_start_matches('*').len();
    let (stars, token) = last.split_at(stars);
    let (name, array) = match token.find('[') {
        Some(i) if token.ends_with(']') => token.split_at(i),
        Some(_) => return Err(format!("unbalanced `[` in `{declaration}`")),
        None => (token, ""),
    };
    let valid_name = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_name {
        return Err(format!("no field name in `{declaration}`"));
    }
    let mut c_type = head.trim().to_owned();
    if c_type.is_empty() {
        return Err(format!("no type in `{declaration}`"));
    }
    if !stars.is_empty() {
        c_type.push(' ');
        c_type.push_str(stars);
    }
    c_type.push_str(array);
    Ok((c_type, name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEND_RESET_6_18: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tracefs/6.18/tcp/tcp_send_reset/format"
    ));

    #[test]
    fn parses_header_fields_and_types() {
        let fmt = parse_format(SEND_RESET_6_18).unwrap();
        assert_eq!(fmt.name, "tcp_send_reset");
        assert_eq!(fmt.id, Some(2280));
        assert_eq!(fmt.fields.len(), 10);
        assert_eq!(
            fmt.field("common_pid").unwrap(),
            &Field {
                name: "common_pid".into(),
                c_type: "int".into(),
                offset: 4,
                size: 4,
                signed: true,
            }
        );
        let skaddr = fmt.field("skaddr").unwrap();
        assert_eq!(
            (skaddr.c_type.as_str(), skaddr.offset, skaddr.size),
            ("const void *", 16, 8)
        );
        let reason = fmt.field("reason").unwrap();
        assert_eq!(reason.c_type, "enum sk_rst_reason");
        assert!(!reason.signed);
        let saddr = fmt.field("saddr").unwrap();
        assert_eq!(
            (saddr.c_type.as_str(), saddr.offset, saddr.size),
            ("__u8[28]", 32, 28)
        );
        assert!(fmt.field("sport").is_none());
    }

    #[test]
    fn tolerates_spaces_crlf_missing_id_and_signed() {
        let text = "name: x\r\nformat:\r\n  field:void *p; offset:8; size:8;\r\n";
        let fmt = parse_format(text).unwrap();
        assert_eq!(fmt.id, None);
        let p = fmt.field("p").unwrap();
        assert_eq!(
            (p.c_type.as_str(), p.offset, p.size, p.signed),
            ("void *", 8, 8, false)
        );
    }

    #[test]
    fn malformed_offset_names_the_line() {
        let text = SEND_RESET_6_18.replace("offset:24;", "offset:2x4;");
        let err = parse_format(&text).unwrap_err();
        assert_eq!(err.line(), Some(11));
        let msg = err.to_string();
        assert!(
            msg.starts_with("line 11: offset `2x4` is not a number"),
            "{msg}"
        );
        assert!(msg.contains("field:int state;"), "{msg}");
    }

    #[test]
    fn malformed_lines_are_errors() {
        let cases: [(&str, usize, &str); 8] = [
            ("name: a\nformat:\n\tfield:int x;\toffset:8;\n", 3, "has no size"),
            ("name: a\nformat:\n\tfield:int;\toffset:8;\tsize:4;\n", 3, "not `TYPE NAME`"),
            ("name: a\nformat:\n\tfield:int x[4;\toffset:8;\tsize:4;\n", 3, "unbalanced"),
            ("name: a\nformat:\n\tfield:int x;\toffset:8;\tsize:4;\tsigned:2;\n", 3, "signed"),
            ("name: a\nformat:\n\tbogus line\n", 3, "expected a `field:` line"),
            ("name: a\nID: 12z\n", 2, "ID `12z`"),
            ("hello\n", 1, "unexpected line"),
            (
                "name: a\nformat:\n\tfield:int x;\toffset:8;\tsize:4;\n\tfield:int x;\toffset:12;\tsize:4;\n",
                4,
                "listed twice",
            ),
        ];
        for (text, line, needle) in cases {
            let err = parse_format(text).unwrap_err();
            assert_eq!(err.line(), Some(line), "{text:?}: {err}");
            assert!(err.to_string().contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn offset_that_collides_with_absent_is_rejected() {
        let err =
            parse_format("name: a\nformat:\n\tfield:int x;\toffset:65535;\tsize:4;\n").unwrap_err();
        assert_eq!(err.line(), Some(3));
        let err =
            parse_format("name: a\nformat:\n\tfield:int x;\toffset:65533;\tsize:4;\n").unwrap_err();
        assert!(
            err.to_string().contains("beyond what a record can hold"),
            "{err}"
        );
    }

    #[test]
    fn incomplete_files_are_errors() {
        for (text, needle) in [
            ("", "no `name:` line"),
            ("name: a\nID: 1\n", "no `format:` line"),
            ("name: a\nformat:\n\nprint fmt: \"\"\n", "lists no fields"),
        ] {
            let err = parse_format(text).unwrap_err();
            assert!(err.to_string().contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn errors_name_the_file_once_known() {
        let err = parse_format("hello\n")
            .unwrap_err()
            .in_file(Path::new("/t/events/tcp/x/format"));
        assert!(
            err.to_string()
                .starts_with("/t/events/tcp/x/format: line 1: "),
            "{err}"
        );
    }
}
