//! A small, bounded `multipart/form-data` parser (RFC 7578) over a body already in memory.
//!
//! Why not a crate such as `multer`: the upload is buffered whole anyway (the model stores the
//! file's bytes), so a streaming parser buys nothing, and this one is ~150 lines with no
//! dependencies, easy to property-test. Bounds: at most [`MAX_PARTS`] parts and
//! [`MAX_HEADER_BYTES`] of headers per part; parts are returned as ranges into the body, so
//! nothing is copied.

use std::ops::Range;

/// Most parts in one body.
pub const MAX_PARTS: usize = 16;
/// Longest header block of one part, in bytes.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Longest boundary (RFC 2046: 70 characters).
pub const MAX_BOUNDARY: usize = 70;

/// Why a body is not valid multipart; the message is lower-case, no trailing period.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    /// `content-type` is not `multipart/form-data` with a usable boundary.
    #[error("content-type must be multipart/form-data with a boundary")]
    NotMultipart,
    /// The first boundary line is missing.
    #[error("the body does not start with the boundary")]
    NoOpeningBoundary,
    /// A part's header block has no end or is too long.
    #[error("part {0}: malformed or oversized headers")]
    BadHeaders(usize),
    /// A part has no `content-disposition: form-data; name=…`.
    #[error("part {0}: missing content-disposition name")]
    NoName(usize),
    /// The closing boundary is missing.
    #[error("the body ends before the closing boundary")]
    Unterminated,
    /// More than [`MAX_PARTS`] parts.
    #[error("more than {MAX_PARTS} parts")]
    TooManyParts,
}

/// One form field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// The field name.
    pub name: String,
    /// The file name, for file fields.
    pub filename: Option<String>,
    /// Where the field's bytes lie in the body.
    pub data: Range<usize>,
}

/// The boundary of a `multipart/form-data` content type.
pub fn boundary(content_type: &str) -> Result<String, MultipartError> {
    let mut params = content_type.split(';');
    let mime = params.next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return Err(MultipartError::NotMultipart);
    }
    for p in params {
        if let Some((k, v)) = p.split_once('=') {
            if k.trim().eq_ignore_ascii_case("boundary") {
                let b = unquote(v.trim());
                if b.is_empty() || b.len() > MAX_BOUNDARY {
                    return Err(MultipartError::NotMultipart);
                }
                return Ok(b);
            }
        }
    }
    Err(MultipartError::NotMultipart)
}

fn unquote(v: &str) -> String {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut escaped = false;
            for c in inner.chars() {
                if escaped || c != '\\' {
                    out.push(c);
                    escaped = false;
                } else {
                    escaped = true;
                }
            }
            out
        }
        None => v.to_owned(),
    }
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    let first = *needle.first()?;
    let mut i = from;
    while i + needle.len() <= hay.len() {
        let rel = hay.get(i..)?.iter().position(|&b| b == first)?;
        i += rel;
        if hay.get(i..i + needle.len())? == needle {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Splits `content-disposition` parameters, respecting quoted strings.
fn disposition(value: &str) -> (Option<String>, Option<String>) {
    let mut name = None;
    let mut filename = None;
    let mut rest = value;
    // Skip the disposition type (`form-data`).
    match rest.find(';') {
        Some(i) => rest = &rest[i + 1..],
        None => return (None, None),
    }
    while !rest.trim_start().is_empty() {
        rest = rest.trim_start();
        let eq = rest.find('=').unwrap_or(rest.len());
        let key = rest[..eq].trim().to_ascii_lowercase();
        rest = rest.get(eq + 1..).unwrap_or("");
        let value;
        if let Some(stripped) = rest.strip_prefix('"') {
            // A quoted string ends at the first unescaped quote.
            let mut end = None;
            let mut escaped = false;
            for (i, c) in stripped.char_indices() {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    end = Some(i);
                    break;
                }
            }
            let end = end.unwrap_or(stripped.len());
            value = unquote(&format!("\"{}\"", &stripped[..end]));
            rest = stripped.get(end + 1..).unwrap_or("");
        } else {
            let end = rest.find(';').unwrap_or(rest.len());
            value = rest[..end].trim().to_owned();
            rest = &rest[end..];
        }
        match key.as_str() {
            "name" => name = Some(value),
            "filename" => filename = Some(value),
            _ => {}
        }
        rest = rest.trim_start();
        rest = rest.strip_prefix(';').unwrap_or(rest);
    }
    (name, filename)
}

/// Parses `body` into its parts. Never panics; every malformed input is an error.
pub fn parse(body: &[u8], boundary: &str) -> Result<Vec<Part>, MultipartError> {
    let dash = format!("--{boundary}");
    let delim = format!("\r\n--{boundary}");
    // The first boundary sits at the start or after a preamble line.
    let mut at = if body.starts_with(dash.as_bytes()) {
        dash.len()
    } else {
        find(body, delim.as_bytes(), 0).ok_or(MultipartError::NoOpeningBoundary)? + delim.len()
    };
    let mut parts = Vec::new();
    loop {
        let rest = body.get(at..).ok_or(MultipartError::Unterminated)?;
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        // Transport padding, then CRLF.
        let pad = rest
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
        at += pad;
        if !body.get(at..).is_some_and(|r| r.starts_with(b"\r\n")) {
            return Err(MultipartError::Unterminated);
        }
        at += 2;
        if parts.len() == MAX_PARTS {
            return Err(MultipartError::TooManyParts);
        }
        let index = parts.len();
        let window_end = body.len().min(at + MAX_HEADER_BYTES + 4);
        let head_end = if body.get(at..).is_some_and(|r| r.starts_with(b"\r\n")) {
            // No headers at all.
            at
        } else {
            find(body.get(..window_end).unwrap_or(body), b"\r\n\r\n", at)
                .ok_or(MultipartError::BadHeaders(index))?
                + 2
        };
        let headers = std::str::from_utf8(&body[at..head_end])
            .map_err(|_| MultipartError::BadHeaders(index))?;
        let mut name = None;
        let mut filename = None;
        for line in headers.split("\r\n").filter(|l| !l.is_empty()) {
            let (k, v) = line
                .split_once(':')
                .ok_or(MultipartError::BadHeaders(index))?;
            if k.trim().eq_ignore_ascii_case("content-disposition") {
                (name, filename) = disposition(v.trim());
            }
        }
        let name = name.ok_or(MultipartError::NoName(index))?;
        let data_start = head_end + 2;
        let data_end =
            find(body, delim.as_bytes(), data_start).ok_or(MultipartError::Unterminated)?;
        parts.push(Part {
            name,
            filename,
            data: data_start..data_end,
        });
        at = data_end + delim.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn form(boundary: &str, parts: &[(&str, Option<&str>, &str)]) -> String {
        let mut s = String::new();
        for (name, file, data) in parts {
            s.push_str(&format!("--{boundary}\r\n"));
            match file {
                Some(f) => s.push_str(&format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                )),
                None => s.push_str(&format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n")),
            }
            s.push_str(data);
            s.push_str("\r\n");
        }
        s.push_str(&format!("--{boundary}--\r\n"));
        s
    }

    #[test]
    fn parses_a_file_upload() {
        let body = form(
            "xYz",
            &[
                ("purpose", None, "batch"),
                ("file", Some("in; \"a\".jsonl"), "{}\n{}\r\n"),
            ],
        );
        // The quote in the file name is not escaped by `form`; use a plain one for the check.
        let body = body.replace("in; \"a\".jsonl", "in.jsonl");
        let parts = parse(body.as_bytes(), "xYz").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "purpose");
        assert_eq!(&body.as_bytes()[parts[0].data.clone()], b"batch");
        assert_eq!(parts[1].filename.as_deref(), Some("in.jsonl"));
        assert_eq!(&body.as_bytes()[parts[1].data.clone()], b"{}\n{}\r\n");
    }

    #[test]
    fn quoted_parameters_and_boundaries() {
        assert_eq!(
            disposition(r#"form-data; name="f;x"; filename="a \"b\".jsonl""#),
            (Some("f;x".into()), Some("a \"b\".jsonl".into()))
        );
        assert_eq!(
            boundary("multipart/form-data; boundary=\"ab c\"").unwrap(),
            "ab c"
        );
        assert_eq!(boundary("Multipart/Form-Data;boundary=q").unwrap(), "q");
        assert!(boundary("application/json").is_err());
        assert!(boundary("multipart/form-data").is_err());
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let ok = form("b", &[("file", Some("x.jsonl"), "data")]);
        assert!(parse(ok.as_bytes(), "b").is_ok());
        assert_eq!(parse(b"", "b"), Err(MultipartError::NoOpeningBoundary));
        assert_eq!(
            parse(&ok.as_bytes()[..ok.len() - 8], "b"),
            Err(MultipartError::Unterminated)
        );
        assert_eq!(
            parse(b"--b\r\nX-Foo: 1\r\n\r\ndata\r\n--b--", "b"),
            Err(MultipartError::NoName(0))
        );
        let many: Vec<(&str, Option<&str>, &str)> = (0..20).map(|_| ("a", None, "1")).collect();
        assert_eq!(
            parse(form("b", &many).as_bytes(), "b"),
            Err(MultipartError::TooManyParts)
        );
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512), b in "[a-z]{1,8}") {
            let _ = parse(&bytes, &b);
        }

        #[test]
        fn never_panics_on_near_miss(data in "[-a-z\r\n:;=\" ]{0,200}") {
            let body = format!("--b\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n{data}\r\n--b--");
            let _ = parse(body.as_bytes(), "b");
            let _ = parse(data.as_bytes(), "b");
        }
    }
}
