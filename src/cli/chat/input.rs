//! Reading what the user types: rustyline on a terminal (line editing,
//! persistent history), plain lines from a pipe or file otherwise. Both
//! assemble multi-line messages the same way: a line ending in `\`
//! continues on the next, and `"""` opens and closes a block.

use anyhow::{Context, Result};
use rustyline::error::ReadlineError;
use rustyline::history::FileHistory;
use rustyline::{Config, Editor};
use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::path::PathBuf;

pub const PROMPT: &str = ">>> ";
pub const CONTINUATION: &str = "... ";
const FENCE: &str = "\"\"\"";

/// One thing the user typed.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    /// A complete message or command (possibly spanning several lines).
    Text(String),
    /// Ctrl-C at the prompt (a terminal only).
    Interrupted,
    /// Ctrl-D, or the end of the input.
    Eof,
    /// A line that could not be read as text (invalid UTF-8): what to tell
    /// the user. The entry it belonged to is skipped; reading goes on.
    Invalid(String),
}

enum Line {
    Text(String),
    Interrupted,
    Eof,
    Invalid(String),
}

pub struct Input {
    source: Source,
    /// Lines of a multi-line paste still to be read.
    pending: VecDeque<String>,
    /// Lines typed while an answer streamed, sent next (shown after the prompt).
    typed: VecDeque<Result<String, String>>,
    /// A line typed while an answer streamed but not finished with Enter:
    /// the editor starts with it.
    unfinished: String,
    /// Lines read from a pipe or file so far (for error messages).
    line_no: usize,
}

enum Source {
    Terminal {
        editor: Box<Editor<(), FileHistory>>,
        history: Option<PathBuf>,
    },
    Lines(Box<dyn BufRead>),
}

impl Input {
    /// rustyline when stdin and stdout are terminals, plain lines otherwise.
    pub fn from_stdin(terminal: bool) -> Result<Self> {
        if !terminal {
            return Ok(Self::lines(Box::new(std::io::BufReader::new(
                std::io::stdin(),
            ))));
        }
        let config = Config::builder()
            .auto_add_history(false)
            .max_history_size(10_000)?
            .history_ignore_dups(true)?
            .history_ignore_space(true)
            .build();
        let mut editor: Editor<(), FileHistory> =
            Editor::with_config(config).context("cannot start the line editor")?;
        let history = history_path();
        if let Some(path) = &history {
            if path.exists() {
                if let Err(e) = editor.load_history(path) {
                    eprintln!("warning: cannot read history {}: {e}", path.display());
                }
            }
        }
        Ok(Self {
            source: Source::Terminal {
                editor: Box::new(editor),
                history,
            },
            pending: Default::default(),
            typed: Default::default(),
            unfinished: String::new(),
            line_no: 0,
        })
    }

    /// Lines from any reader (no line editing).
    pub fn lines(reader: Box<dyn BufRead>) -> Self {
        Self {
            source: Source::Lines(reader),
            pending: Default::default(),
            typed: Default::default(),
            unfinished: String::new(),
            line_no: 0,
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self.source, Source::Terminal { .. })
    }

    /// Keys typed while an answer streamed (see `terminal::TypeAhead`):
    /// their complete lines are read next, an unfinished one starts the
    /// next line in the editor.
    pub fn type_ahead(&mut self, bytes: &[u8]) {
        let (lines, rest) = typed_lines(bytes);
        self.typed.extend(lines);
        self.unfinished.push_str(&rest);
    }

    fn line(&mut self, prompt: &str) -> Result<Line> {
        if let Some(l) = self.pending.pop_front() {
            return Ok(Line::Text(l));
        }
        if let Some(typed) = self.typed.pop_front() {
            // Typed ahead: shown as if typed at this prompt.
            if self.is_terminal() {
                let shown = typed.as_deref().unwrap_or("");
                let mut out = std::io::stdout();
                let _ = writeln!(out, "{prompt}{shown}").and_then(|_| out.flush());
            }
            return Ok(match typed {
                Ok(l) => Line::Text(l),
                Err(why) => Line::Invalid(why),
            });
        }
        match &mut self.source {
            Source::Terminal { editor, .. } => {
                let initial = std::mem::take(&mut self.unfinished);
                match editor.readline_with_initial(prompt, (&initial, "")) {
                    Ok(l) => Ok(Line::Text(l)),
                    Err(ReadlineError::Interrupted) => Ok(Line::Interrupted),
                    Err(ReadlineError::Eof) => Ok(Line::Eof),
                    Err(ReadlineError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                        // The rest of that line is still queued: drop it too.
                        #[cfg(unix)]
                        // SAFETY: discards the terminal's pending input.
                        unsafe {
                            libc::tcflush(0, libc::TCIFLUSH);
                        }
                        Ok(Line::Invalid(
                            "the line typed is not valid UTF-8 (is the terminal set to UTF-8?); it was skipped"
                                .into(),
                        ))
                    }
                    Err(e) => Err(anyhow::Error::new(e).context("cannot read input")),
                }
            }
            Source::Lines(r) => {
                let mut b = Vec::new();
                if r.read_until(b'\n', &mut b).context("cannot read stdin")? == 0 {
                    return Ok(Line::Eof);
                }
                self.line_no += 1;
                if b.ends_with(b"\n") {
                    b.pop();
                    if b.ends_with(b"\r") {
                        b.pop();
                    }
                }
                Ok(match String::from_utf8(b) {
                    Ok(s) => Line::Text(s),
                    Err(e) => Line::Invalid(format!(
                        "stdin line {}: not valid UTF-8 (byte 0x{:02x} at byte {}); the message was skipped",
                        self.line_no,
                        e.as_bytes()[e.utf8_error().valid_up_to()],
                        e.utf8_error().valid_up_to() + 1
                    )),
                })
            }
        }
    }

    /// Reads one entry, joining continued lines and `"""` blocks.
    pub fn read(&mut self) -> Result<Entry> {
        let first = match self.line(PROMPT)? {
            Line::Text(t) => t,
            Line::Interrupted => return Ok(Entry::Interrupted),
            Line::Eof => return Ok(Entry::Eof),
            Line::Invalid(why) => return Ok(Entry::Invalid(why)),
        };
        // A bad line inside a block or a continued message spoils that
        // entry: it is read to its end and skipped as a whole.
        let mut invalid: Option<String> = None;
        // A paste of several lines (bracketed paste) arrives at once: as one
        // message, unless it opens a """ block, whose lines are read as typed.
        let first = match first.split_once('\n') {
            Some((head, rest)) if head.trim_start().starts_with(FENCE) => {
                self.pending.extend(rest.split('\n').map(str::to_string));
                head.to_string()
            }
            Some(_) => {
                let entry = first.trim_end_matches('\n').to_string();
                self.remember(&entry);
                return Ok(Entry::Text(entry));
            }
            None => first,
        };
        let entry = if let Some(rest) = first.trim_start().strip_prefix(FENCE) {
            // """ block: until a line ending in """ (text around the fences is kept).
            if let Some(body) = rest.strip_suffix(FENCE) {
                body.to_string()
            } else {
                let mut lines = vec![rest.to_string()];
                loop {
                    match self.line(CONTINUATION)? {
                        Line::Text(t) => {
                            if let Some(last) = t.trim_end().strip_suffix(FENCE) {
                                lines.push(last.to_string());
                                break;
                            }
                            lines.push(t);
                        }
                        Line::Invalid(why) => {
                            invalid.get_or_insert(why);
                        }
                        Line::Interrupted => return Ok(Entry::Interrupted),
                        Line::Eof => return Ok(Entry::Eof),
                    }
                }
                // The fence lines themselves add no empty first/last line.
                if lines.first().is_some_and(|l| l.trim().is_empty()) {
                    lines.remove(0);
                }
                if lines.last().is_some_and(|l| l.trim().is_empty()) {
                    lines.pop();
                }
                lines.join("\n")
            }
        } else if first.ends_with('\\') {
            let mut lines = vec![continued(&first).to_string()];
            loop {
                match self.line(CONTINUATION)? {
                    Line::Text(t) if t.ends_with('\\') => lines.push(continued(&t).to_string()),
                    Line::Text(t) => {
                        lines.push(t);
                        break;
                    }
                    Line::Invalid(why) => {
                        invalid = Some(why);
                        break;
                    }
                    Line::Interrupted => return Ok(Entry::Interrupted),
                    Line::Eof => return Ok(Entry::Eof),
                }
            }
            lines.join("\n")
        } else {
            first
        };
        if let Some(why) = invalid {
            return Ok(Entry::Invalid(why));
        }
        self.remember(&entry);
        Ok(Entry::Text(entry))
    }

    /// Adds an entry to the line editor's history and the history file.
    fn remember(&mut self, entry: &str) {
        let Source::Terminal { editor, history } = &mut self.source else {
            return;
        };
        if entry.trim().is_empty() {
            return;
        }
        if let Ok(true) = editor.add_history_entry(entry) {
            if let Some(path) = history {
                if let Err(e) = editor.append_history(path) {
                    eprintln!("warning: cannot write history {}: {e}", path.display());
                    *history = None;
                }
            }
        }
    }
}

/// Keys typed into the quiet terminal while an answer streamed → the
/// complete lines (Enter: CR or LF) and what follows the last one. Backspace
/// and Ctrl-U edit as the terminal would have; escape sequences (arrow keys)
/// and other control keys are dropped. A line that is not UTF-8 is an error.
pub fn typed_lines(bytes: &[u8]) -> (Vec<Result<String, String>>, String) {
    let mut lines = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    let mut i = 0;
    let text = |b: Vec<u8>| {
        String::from_utf8(b).map_err(|_| {
            "a line typed during the answer is not valid UTF-8 (is the terminal set to UTF-8?); it was skipped"
                .to_string()
        })
    };
    while i < bytes.len() {
        let b = bytes[i];
        i += 1;
        match b {
            b'\r' | b'\n' => {
                if b == b'\r' && bytes.get(i) == Some(&b'\n') {
                    i += 1;
                }
                lines.push(text(std::mem::take(&mut cur)));
            }
            0x7f | 0x08 => {
                // One character back (a whole UTF-8 sequence).
                while let Some(c) = cur.pop() {
                    if c & 0xc0 != 0x80 {
                        break;
                    }
                }
            }
            0x15 => cur.clear(),
            0x1b => {
                // ESC [ params final, ESC O x, or a lone ESC.
                match bytes.get(i) {
                    Some(b'[') => {
                        i += 1;
                        while i < bytes.len() && !(0x40..=0x7e).contains(&bytes[i]) {
                            i += 1;
                        }
                        i += 1;
                    }
                    Some(b'O') => i += 2,
                    _ => {}
                }
            }
            b'\t' => cur.push(b),
            c if c < 0x20 => {}
            c => cur.push(c),
        }
    }
    let rest = String::from_utf8_lossy(&cur).into_owned();
    (lines, rest)
}

/// A line ending in a backslash, without it and the spaces before it.
fn continued(line: &str) -> &str {
    line.strip_suffix('\\').unwrap_or(line).trim_end()
}

/// `$EXPERT_HISTORY` (empty: no history file), else the platform's data
/// directory: `$XDG_DATA_HOME/expert/history`, `~/.local/share/expert/history`,
/// `%APPDATA%\expert\history`. The directory is created when missing.
pub fn history_path() -> Option<PathBuf> {
    history_path_with(|k| std::env::var_os(k))
}

fn history_path_with(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> Option<PathBuf> {
    let path = match env("EXPERT_HISTORY") {
        Some(p) if p.is_empty() => return None,
        Some(p) => PathBuf::from(p),
        None => {
            let base = if cfg!(windows) {
                env("APPDATA").map(PathBuf::from)
            } else {
                env("XDG_DATA_HOME")
                    .filter(|p| !p.is_empty())
                    .map(PathBuf::from)
                    .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".local").join("share")))
            };
            base?.join("expert").join("history")
        }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if std::fs::create_dir_all(dir).is_err() {
            return None;
        }
    }
    Some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(text: &str) -> Vec<Entry> {
        let mut input = Input::lines(Box::new(std::io::Cursor::new(text.to_string())));
        let mut out = Vec::new();
        loop {
            let e = input.read().unwrap();
            let end = e == Entry::Eof;
            out.push(e);
            if end {
                return out;
            }
        }
    }

    fn text(s: &str) -> Entry {
        Entry::Text(s.to_string())
    }

    #[test]
    fn single_lines_and_crlf() {
        assert_eq!(
            entries("hello\r\n/help\n\n"),
            [text("hello"), text("/help"), text(""), Entry::Eof]
        );
    }

    #[test]
    fn backslash_continues_the_line() {
        assert_eq!(
            entries("first line \\\nsecond line\nnext\n"),
            [text("first line\nsecond line"), text("next"), Entry::Eof]
        );
        assert_eq!(entries("a\\\nb \\\nc\n"), [text("a\nb\nc"), Entry::Eof]);
    }

    #[test]
    fn triple_quote_blocks() {
        assert_eq!(
            entries("\"\"\"\nline one\n  line two\n\"\"\"\nafter\n"),
            [text("line one\n  line two"), text("after"), Entry::Eof]
        );
        // ollama style: text on the fence lines.
        assert_eq!(
            entries("\"\"\"Hello\nworld\"\"\"\n"),
            [text("Hello\nworld"), Entry::Eof]
        );
        assert_eq!(
            entries("\"\"\"one line\"\"\"\n"),
            [text("one line"), Entry::Eof]
        );
        // A block cut by the end of input is dropped.
        assert_eq!(entries("\"\"\"\nunfinished\n"), [Entry::Eof]);
    }

    #[test]
    fn pasted_lines_are_one_message_or_a_block() {
        let pasted = |text: &str| {
            let mut input = Input::lines(Box::new(std::io::Cursor::new(String::new())));
            input.pending.push_back(text.to_string());
            input.read().unwrap()
        };
        assert_eq!(pasted("line one\nline two\n"), text("line one\nline two"));
        assert_eq!(
            pasted("\"\"\"\nWrite a poem\nabout the sea.\n\"\"\""),
            text("Write a poem\nabout the sea.")
        );
    }

    #[test]
    fn invalid_utf8_lines_are_skipped_and_reading_goes_on() {
        let mut input = Input::lines(Box::new(std::io::Cursor::new(
            b"ok\nbad \xff\xfe\n\"\"\"\nblock \xc3\nline\n\"\"\"\ncont \\\n\x80\nnext\n".to_vec(),
        )));
        let mut got = Vec::new();
        loop {
            match input.read().unwrap() {
                Entry::Eof => break,
                e => got.push(e),
            }
        }
        assert_eq!(got.len(), 5, "{got:?}");
        assert_eq!(got[0], text("ok"));
        let Entry::Invalid(why) = &got[1] else {
            panic!("{got:?}")
        };
        assert!(
            why.contains("stdin line 2") && why.contains("0xff"),
            "{why}"
        );
        // The whole block and the whole continued message are skipped, not
        // split into stray messages.
        assert!(matches!(&got[2], Entry::Invalid(w) if w.contains("line 4")));
        assert!(matches!(&got[3], Entry::Invalid(w) if w.contains("line 8")));
        assert_eq!(got[4], text("next"));
    }

    #[test]
    fn typed_ahead_keys_become_lines() {
        let (lines, rest) = typed_lines(
            b"hel\x7flo\rsecond\x1b[A\x1bOB line\r\nwith\x15again\nbad \xff\nunfini\xc3\xa9",
        );
        assert_eq!(
            lines,
            [
                Ok("helo".to_string()),
                Ok("second line".to_string()),
                Ok("again".to_string()),
                Err(lines[3].clone().unwrap_err())
            ]
        );
        assert_eq!(rest, "unfinié");
        // Backspace removes a whole character.
        assert_eq!(typed_lines("é\x7f".as_bytes()).1, "");
        let mut input = Input::lines(Box::new(std::io::Cursor::new("piped\n".to_string())));
        input.type_ahead(b"typed\n\"\"\"\na\nb\n\"\"\"\n");
        assert_eq!(input.read().unwrap(), text("typed"));
        assert_eq!(input.read().unwrap(), text("a\nb"));
        assert_eq!(input.read().unwrap(), text("piped"));
    }

    #[test]
    fn history_path_follows_environment() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let env = |vars: Vec<(&'static str, std::path::PathBuf)>| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.clone().into_os_string())
            }
        };
        let explicit = d.join("h/history");
        assert_eq!(
            history_path_with(env(vec![("EXPERT_HISTORY", explicit.clone())])),
            Some(explicit.clone())
        );
        assert!(
            explicit.parent().unwrap().is_dir(),
            "the directory is created"
        );
        assert_eq!(
            history_path_with(env(vec![("EXPERT_HISTORY", "".into())])),
            None
        );
        if !cfg!(windows) {
            assert_eq!(
                history_path_with(env(vec![("HOME", d.clone())])),
                Some(d.join(".local/share/expert/history"))
            );
            assert_eq!(
                history_path_with(env(vec![
                    ("HOME", d.clone()),
                    ("XDG_DATA_HOME", d.join("x"))
                ])),
                Some(d.join("x/expert/history"))
            );
        }
        assert_eq!(history_path_with(env(vec![])), None);
    }
}
