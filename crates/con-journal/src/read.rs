//! Reading journal entries back as `journalctl` prints them: the export
//! format (`-o export`) and JSON lines (`-o json --all`).

use std::io::{BufRead, Read};

use crate::JournalEntry;

/// Why journal input could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The input could not be read at all.
    #[error("reading the journal: {0}")]
    Io(#[from] std::io::Error),
    /// `-o export` input that does not follow the export format.
    #[error("journal export format, entry {entry}: {reason}")]
    Export {
        /// Ordinal of the entry in the input, from 1.
        entry: u64,
        /// What is wrong.
        reason: String,
    },
    /// `-o json` input that is not one JSON object of journal fields per line.
    #[error("journal JSON, line {line}: {reason}")]
    Json {
        /// Line number in the input, from 1.
        line: u64,
        /// What is wrong.
        reason: String,
    },
}

/// One journal entry as read back: every field with its raw bytes, in input
/// order (a field may occur more than once).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadEntry {
    /// Ordinal of the entry in its input, from 1.
    pub ordinal: u64,
    /// `(name, value)` pairs.
    pub fields: Vec<(String, Vec<u8>)>,
}

impl ReadEntry {
    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// How many values `name` has.
    pub fn count(&self, name: &str) -> usize {
        self.fields.iter().filter(|(k, _)| k == name).count()
    }

    /// Where the entry is, for error messages: its `__CURSOR` if the input
    /// had one, otherwise its ordinal.
    pub fn position(&self) -> String {
        match self.get("__CURSOR") {
            // Escaped: damaged input must not break the one-line error.
            Some(c) => format!("cursor {}", String::from_utf8_lossy(c).escape_debug()),
            None => format!("entry {}", self.ordinal),
        }
    }
}

impl From<&JournalEntry> for ReadEntry {
    /// The fields journald stores for `entry` as con sends it (without the
    /// trusted `_`-fields journald adds itself).
    fn from(entry: &JournalEntry) -> Self {
        let mut fields = vec![
            (
                "PRIORITY".to_owned(),
                entry.priority.level().to_string().into_bytes(),
            ),
            ("MESSAGE".to_owned(), entry.message.clone().into_bytes()),
            ("SYSLOG_IDENTIFIER".to_owned(), b"con".to_vec()),
        ];
        fields.extend(
            entry
                .fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone().into_bytes())),
        );
        ReadEntry { ordinal: 0, fields }
    }
}

/// Entries of `journalctl -o export` output.
///
/// The export format is `NAME=value\n` for printable values and
/// `NAME\n<u64 LE length><bytes>\n` for the others; an empty line ends an
/// entry. Malformed input yields one error and ends the iteration.
pub fn read_export<R: BufRead>(input: R) -> ExportReader<R> {
    ExportReader {
        input,
        entries: 0,
        done: false,
    }
}

/// Iterator returned by [`read_export`].
pub struct ExportReader<R> {
    input: R,
    entries: u64,
    done: bool,
}

impl<R: BufRead> ExportReader<R> {
    fn next_entry(&mut self) -> Result<Option<ReadEntry>, ReadError> {
        let mut entry = ReadEntry {
            ordinal: self.entries + 1,
            fields: Vec::new(),
        };
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = self.input.read_until(b'\n', &mut line)?;
            if n == 0 {
                // End of input; a last entry without its blank line still counts.
                return Ok((!entry.fields.is_empty()).then_some(entry));
            }
            if line.last() != Some(&b'\n') {
                return Err(self.malformed("input ends inside a field"));
            }
            line.pop();
            if line.is_empty() {
                if entry.fields.is_empty() {
                    continue;
                }
                return Ok(Some(entry));
            }
            if let Some(eq) = line.iter().position(|&b| b == b'=') {
                let name = self.name(&line[..eq])?;
                entry.fields.push((name, line[eq + 1..].to_vec()));
                continue;
            }
            let name = self.name(&line)?;
            let mut len = [0u8; 8];
            self.input
                .read_exact(&mut len)
                .map_err(|_| self.malformed(&format!("field {name}: truncated length")))?;
            let len = u64::from_le_bytes(len);
            let mut value = Vec::new();
            // No allocation up front: a corrupt length must not claim memory.
            let got = (&mut self.input).take(len).read_to_end(&mut value)?;
            if got as u64 != len {
                return Err(self.malformed(&format!(
                    "field {name}: {got} of {len} bytes before the end of input"
                )));
            }
            let mut newline = [0u8; 1];
            match self.input.read_exact(&mut newline) {
                Ok(()) if newline[0] == b'\n' => {}
                _ => {
                    return Err(
                        self.malformed(&format!("field {name}: no newline after its {len} bytes"))
                    );
                }
            }
            entry.fields.push((name, value));
        }
    }

    fn name(&self, bytes: &[u8]) -> Result<String, ReadError> {
        match std::str::from_utf8(bytes) {
            Ok(s) if valid_field_name(s) => Ok(s.to_owned()),
            _ => Err(self.malformed(&format!(
                "invalid field name {:?}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(64)])
            ))),
        }
    }

    fn malformed(&self, reason: &str) -> ReadError {
        ReadError::Export {
            entry: self.entries + 1,
            reason: reason.to_owned(),
        }
    }
}

impl<R: BufRead> Iterator for ExportReader<R> {
    type Item = Result<ReadEntry, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_entry() {
            Ok(Some(entry)) => {
                self.entries += 1;
                Some(Ok(entry))
            }
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// journald field names: `A–Z`, `0–9`, `_`, not starting with a digit, at
/// most 64 characters (journalctl adds `__CURSOR` and the like, which fit).
fn valid_field_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Entries of `journalctl -o json --all` output (one object per line).
///
/// Values are strings, arrays of byte values (binary or non-printable
/// values), or arrays of those (a field with several values). Without
/// `--all`, journalctl prints values of 4096 bytes or more (counting
/// `NAME=`) as `null`: such a field is an error naming it, not an empty
/// value. Malformed input yields one error and ends the iteration.
pub fn read_json<R: BufRead>(input: R) -> JsonReader<R> {
    JsonReader {
        lines: input.split(b'\n'),
        line: 0,
        entries: 0,
        done: false,
    }
}

/// Iterator returned by [`read_json`].
pub struct JsonReader<R> {
    lines: std::io::Split<R>,
    line: u64,
    entries: u64,
    done: bool,
}

impl<R: BufRead> JsonReader<R> {
    fn entry(&self, line: &[u8]) -> Result<ReadEntry, ReadError> {
        let bad = |reason: String| ReadError::Json {
            line: self.line,
            reason,
        };
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(line).map_err(|e| bad(format!("not a JSON object: {e}")))?;
        let mut entry = ReadEntry {
            ordinal: self.entries + 1,
            fields: Vec::with_capacity(object.len()),
        };
        for (name, value) in object {
            use serde_json::Value;
            if !valid_field_name(&name) {
                return Err(bad(format!("invalid field name {name:?}")));
            }
            match value {
                Value::Array(values) if values.iter().all(|v| !v.is_number()) => {
                    for v in values {
                        let bytes =
                            json_value(&v).map_err(|e| bad(format!("field {name}: {e}")))?;
                        entry.fields.push((name.clone(), bytes));
                    }
                }
                v => {
                    let bytes = json_value(&v).map_err(|e| bad(format!("field {name}: {e}")))?;
                    entry.fields.push((name, bytes));
                }
            }
        }
        Ok(entry)
    }
}

/// One value: a string, or an array of byte values.
fn json_value(v: &serde_json::Value) -> Result<Vec<u8>, String> {
    use serde_json::Value;
    match v {
        Value::String(s) => Ok(s.clone().into_bytes()),
        Value::Array(bytes) => bytes
            .iter()
            .map(|b| {
                b.as_u64()
                    .and_then(|b| u8::try_from(b).ok())
                    .ok_or_else(|| format!("{b} is not a byte value"))
            })
            .collect(),
        Value::Null => Err(
            "null (journalctl prints values of 4096 bytes or more so unless given --all)".into(),
        ),
        other => Err(format!("unexpected JSON value {other}")),
    }
}

impl<R: BufRead> Iterator for JsonReader<R> {
    type Item = Result<ReadEntry, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let line = match self.lines.next()? {
                Ok(line) => line,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e.into()));
                }
            };
            self.line += 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Some(match self.entry(&line) {
                Ok(entry) => {
                    self.entries += 1;
                    Ok(entry)
                }
                Err(e) => {
                    self.done = true;
                    Err(e)
                }
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn export_text_and_binary_fields() {
        let mut input = b"__CURSOR=s=1\nA=x=y\nB\n".to_vec();
        input.extend_from_slice(&3u64.to_le_bytes());
        input.extend_from_slice(b"a\nb\n\n\nC=2\n");
        let entries: Vec<_> = read_export(&input[..]).map(Result::unwrap).collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].get("A"), Some(&b"x=y"[..]));
        assert_eq!(entries[0].get("B"), Some(&b"a\nb"[..]));
        assert_eq!(entries[0].position(), "cursor s=1");
        assert_eq!(entries[1].get("C"), Some(&b"2"[..]));
        assert_eq!(entries[1].position(), "entry 2");
    }

    #[test]
    fn malformed_export_is_one_error_naming_entry_and_field() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                b"A=1\n\nB\n\x05\0\0".to_vec(),
                "entry 2: field B: truncated length",
            ),
            (
                [&b"B\n"[..], &u64::MAX.to_le_bytes(), b"xy"].concat(),
                "entry 1: field B: 2 of 18446744073709551615 bytes",
            ),
            (
                [&b"B\n"[..], &1u64.to_le_bytes(), b"xy"].concat(),
                "entry 1: field B: no newline",
            ),
            (b"a b=1\n".to_vec(), "entry 1: invalid field name \"a b\""),
            (b"A=1".to_vec(), "entry 1: input ends inside a field"),
        ];
        for (input, expected) in cases {
            let results: Vec<_> = read_export(&input[..]).collect();
            let err = results.last().unwrap().as_ref().unwrap_err().to_string();
            assert!(err.contains(expected), "{err:?} lacks {expected:?}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn json_strings_byte_arrays_and_multiple_values() {
        let input = br#"{"A":"x","B":[97,1,98],"C":["one",[116,119,111]]}

{"D":"4"}
"#;
        let entries: Vec<_> = read_json(&input[..]).map(Result::unwrap).collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].get("A"), Some(&b"x"[..]));
        assert_eq!(entries[0].get("B"), Some(&b"a\x01b"[..]));
        assert_eq!(entries[0].count("C"), 2);
        assert_eq!(entries[1].ordinal, 2);
    }

    #[test]
    fn json_null_and_garbage_are_errors_naming_line_and_field() {
        let err = read_json(&b"{\"A\":\"x\"}\n{\"CON_RECORD\":null}\n"[..])
            .last()
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("journal JSON, line 2: field CON_RECORD: null"),
            "{err}"
        );
        assert!(err.contains("--all"));
        let err = read_json(&b"[1]\n"[..]).next().unwrap().unwrap_err();
        assert!(
            err.to_string().contains("line 1: not a JSON object"),
            "{err}"
        );
        let err = read_json(&b"{\"A\":[300]}\n"[..])
            .next()
            .unwrap()
            .unwrap_err();
        assert!(
            err.to_string().contains("field A: 300 is not a byte value"),
            "{err}"
        );
    }
}
