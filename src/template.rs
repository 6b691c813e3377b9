//! Chat templates: Hugging Face Jinja chat templates rendered with minijinja
//! set up like transformers' sandbox (`trim_blocks`, `lstrip_blocks`, loop
//! controls, `raise_exception`, `strftime_now`, a Python-style `tojson`, the
//! Python string/dict methods of `minijinja_contrib::pycompat`, and Python's
//! spelling of `None`/`True`/`False` when printed).
//!
//! [`encode_prompt`] turns messages into ids so that text written by the user
//! can never become a control token; see its documentation.

use crate::formats::json::read_object;
use crate::tokenizer::{special_token_field, Segment, Tokenizer};
use anyhow::{anyhow, bail, Context, Result};
use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind, Output, State, Value};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::fmt::Write as _;
use std::path::Path;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct RenderOptions {
    /// Append the header of an assistant turn (`<|im_start|>assistant\n`).
    pub add_generation_prompt: bool,
    /// Passed to the template as `enable_thinking`; `None` leaves it
    /// undefined, as transformers does when the kwarg is not given.
    pub enable_thinking: Option<bool>,
}

pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos: Option<String>,
    eos: Option<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

const NAME: &str = "chat_template";

impl ChatTemplate {
    /// Compiles a template; `bos`/`eos` are exposed to it as `bos_token` and
    /// `eos_token` (left undefined when `None`, as transformers does).
    pub fn from_source(source: &str, bos: Option<String>, eos: Option<String>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| anyhow!("chat template does not compile: {e}"))?;
        Ok(Self {
            env,
            source: source.to_string(),
            bos,
            eos,
        })
    }

    /// The model directory's template, in transformers' order of precedence:
    /// `chat_template.jinja`, then `tokenizer_config.json`'s `chat_template`
    /// (a string, or a list of `{name, template}` of which "default" is
    /// used), then `chat_template.json`. `Ok(None)` when there is none.
    pub fn from_dir(dir: &Path) -> Result<Option<Self>> {
        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.exists() {
            Some(read_object(&config_path)?)
        } else {
            None
        };
        let (bos, eos) = match &config {
            Some(c) => (
                special_token_field(c, "bos_token", &config_path)?,
                special_token_field(c, "eos_token", &config_path)?,
            ),
            None => (None, None),
        };
        let jinja_path = dir.join("chat_template.jinja");
        let json_path = dir.join("chat_template.json");
        let (source, origin) = if jinja_path.exists() {
            let s = std::fs::read_to_string(&jinja_path)
                .with_context(|| format!("cannot read {}", jinja_path.display()))?;
            (s, jinja_path)
        } else if let Some(s) = config
            .as_ref()
            .map(|c| template_field(c, &config_path))
            .transpose()?
            .flatten()
        {
            (s, config_path)
        } else if json_path.exists() {
            match template_field(&read_object(&json_path)?, &json_path)? {
                Some(s) => (s, json_path),
                None => return Ok(None),
            }
        } else {
            return Ok(None);
        };
        Self::from_source(&source, bos, eos)
            .map(Some)
            .map_err(|e| anyhow!("{}: {e}", origin.display()))
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders like transformers' `apply_chat_template(messages,
    /// tokenize=False, add_generation_prompt=..., enable_thinking=...)`.
    pub fn render(&self, messages: &[Message], opts: &RenderOptions) -> Result<String> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_iter([
                    ("role", Value::from(m.role.as_str())),
                    ("content", Value::from(m.content.as_str())),
                ])
            })
            .collect();
        // transformers passes tools/documents as None and the special-token
        // strings it knows; enable_thinking only when given.
        let mut ctx: Vec<(&str, Value)> = vec![
            ("messages", Value::from(messages)),
            (
                "add_generation_prompt",
                Value::from(opts.add_generation_prompt),
            ),
            ("tools", Value::from(())),
            ("documents", Value::from(())),
        ];
        if let Some(bos) = &self.bos {
            ctx.push(("bos_token", Value::from(bos.as_str())));
        }
        if let Some(eos) = &self.eos {
            ctx.push(("eos_token", Value::from(eos.as_str())));
        }
        if let Some(thinking) = opts.enable_thinking {
            ctx.push(("enable_thinking", Value::from(thinking)));
        }
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| anyhow!("chat template: {e}"))?;
        tmpl.render(Value::from_iter(ctx))
            .map_err(|e| anyhow!("chat template failed to render: {e}"))
    }
}

/// `chat_template` of a tokenizer_config.json / chat_template.json.
fn template_field(config: &serde_json::Map<String, Json>, path: &Path) -> Result<Option<String>> {
    match config.get("chat_template") {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Array(list)) => {
            let mut names = Vec::new();
            for (i, item) in list.iter().enumerate() {
                let name = item.get("name").and_then(Json::as_str);
                let template = item.get("template").and_then(Json::as_str);
                let (Some(name), Some(template)) = (name, template) else {
                    bail!(
                        "{}: chat_template[{i}]: expected {{\"name\": string, \"template\": string}}",
                        path.display()
                    );
                };
                if name == "default" {
                    return Ok(Some(template.to_string()));
                }
                names.push(name);
            }
            bail!(
                "{}: chat_template: no template named \"default\" (found {})",
                path.display(),
                names.join(", ")
            )
        }
        Some(v) => bail!(
            "{}: chat_template: expected a string or a list of {{name, template}}, got {}",
            path.display(),
            crate::formats::json::kind(v)
        ),
    }
}

/// Renders `messages` and encodes the prompt so that only the template's own
/// markup can produce special (control) tokens.
///
/// Design: every occurrence of a special-token string (e.g. `<|im_end|>`)
/// inside a message's role or content is swapped for a sentinel — a
/// private-use character absent from all inputs, an index, the same
/// character — before rendering. Sentinels contain no whitespace or markup,
/// so the template's string logic (`split('</think>')`, `strip`, `in`, ...)
/// treats them as ordinary text. In the rendered string every remaining
/// special-token string therefore comes from the template; the sentinels are
/// put back as [`Segment::Text`] and the rest is [`Segment::Markup`].
/// [`Tokenizer::encode_chat`] then encodes the text between template special
/// tokens as one piece with special tokens disabled — the same pieces
/// `tokenizers` itself would encode — so a conversation without
/// special-token strings in it gets exactly transformers'
/// `tokenizer(rendered, add_special_tokens=False)` ids, and one with them
/// gets those strings as plain characters.
///
/// Returns the rendered prompt (byte-identical to transformers' rendering)
/// and its ids.
pub fn encode_prompt(
    tok: &Tokenizer,
    tmpl: &ChatTemplate,
    messages: &[Message],
    opts: &RenderOptions,
) -> Result<(String, Vec<u32>)> {
    let specials: Vec<&str> = tok.special_tokens().collect();
    let tainted = |s: &str| specials.iter().any(|sp| s.contains(sp));
    if !messages
        .iter()
        .any(|m| tainted(&m.role) || tainted(&m.content))
    {
        let rendered = tmpl.render(messages, opts)?;
        let ids = tok.encode_chat(&[Segment::Markup(rendered.clone())])?;
        return Ok((rendered, ids));
    }

    let marker = pick_marker(messages, tmpl)?;
    let mut originals: Vec<&str> = Vec::new();
    let mut defang = |text: &str| -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        // Leftmost match first; on a tie the longest token (list is longest-first).
        while let Some((at, sp)) = specials
            .iter()
            .filter_map(|sp| rest.find(sp).map(|at| (at, *sp)))
            .min_by_key(|&(at, sp)| (at, std::cmp::Reverse(sp.len())))
        {
            out.push_str(&rest[..at]);
            let _ = write!(out, "{marker}{}{marker}", originals.len());
            originals.push(sp);
            rest = &rest[at + sp.len()..];
        }
        out.push_str(rest);
        out
    };
    let defanged: Vec<Message> = messages
        .iter()
        .map(|m| Message {
            role: defang(&m.role),
            content: defang(&m.content),
        })
        .collect();
    let rendered = tmpl.render(&defanged, opts)?;

    let mut segments = Vec::new();
    let mut text = String::with_capacity(rendered.len());
    let mut rest = rendered.as_str();
    while let Some(start) = rest.find(marker) {
        let after = &rest[start + marker.len_utf8()..];
        let digits = after
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after.len());
        let original = after[..digits]
            .parse::<usize>()
            .ok()
            .filter(|_| after[digits..].starts_with(marker))
            .and_then(|i| originals.get(i));
        let Some(original) = original else {
            // A template that cut a sentinel apart: keep the text as it is.
            segments.push(Segment::Markup(
                rest[..start + marker.len_utf8()].to_string(),
            ));
            text.push_str(&rest[..start + marker.len_utf8()]);
            rest = after;
            continue;
        };
        segments.push(Segment::Markup(rest[..start].to_string()));
        segments.push(Segment::Text(original.to_string()));
        text.push_str(&rest[..start]);
        text.push_str(original);
        rest = &after[digits + marker.len_utf8()..];
    }
    segments.push(Segment::Markup(rest.to_string()));
    text.push_str(rest);
    let ids = tok.encode_chat(&segments)?;
    Ok((text, ids))
}

/// A private-use character that occurs in no message and not in the template.
fn pick_marker(messages: &[Message], tmpl: &ChatTemplate) -> Result<char> {
    let used = |c: char| {
        tmpl.source.contains(c)
            || tmpl.bos.as_deref().is_some_and(|s| s.contains(c))
            || tmpl.eos.as_deref().is_some_and(|s| s.contains(c))
            || messages
                .iter()
                .any(|m| m.role.contains(c) || m.content.contains(c))
    };
    ('\u{E000}'..='\u{F8FF}')
        .find(|&c| !used(c))
        .ok_or_else(|| anyhow!("messages use every private-use character; cannot mark user text"))
}

/// Splits a Qwen3-style answer into (reasoning, answer) with the rule of
/// Qwen3's chat template: when `</think>` occurs, the answer is what follows
/// the last `</think>` with leading newlines removed, and the reasoning is
/// what precedes the first `</think>`, after the last `<think>`, with
/// surrounding newlines removed. Without `</think>`: `(None, text)`.
pub fn strip_thinking(text: &str) -> (Option<String>, String) {
    const CLOSE: &str = "</think>";
    let Some(first_close) = text.find(CLOSE) else {
        return (None, text.to_string());
    };
    let before = text[..first_close].trim_end_matches('\n');
    let reasoning = before
        .rsplit("<think>")
        .next()
        .unwrap_or(before)
        .trim_start_matches('\n');
    let answer = text
        .rsplit(CLOSE)
        .next()
        .unwrap_or_default()
        .trim_start_matches('\n');
    (Some(reasoning.to_string()), answer.to_string())
}

/// Reads an OpenAI-style conversation: a JSON list of `{"role", "content"}`
/// objects, or an object whose `messages` field is such a list. Other fields
/// are ignored.
pub fn load_messages(path: &Path) -> Result<Vec<Message>> {
    let file = path.display();
    let json = crate::formats::json::read_value(path)?;
    let (list, prefix) = match &json {
        Json::Array(list) => (list, ""),
        Json::Object(o) => match o.get("messages") {
            Some(Json::Array(list)) => (list, "messages"),
            Some(v) => bail!(
                "{file}: messages: expected a list, got {}",
                crate::formats::json::kind(v)
            ),
            None => bail!("{file}: expected a list of messages or an object with \"messages\""),
        },
        v => bail!(
            "{file}: expected a list of messages, got {}",
            crate::formats::json::kind(v)
        ),
    };
    list.iter()
        .enumerate()
        .map(|(i, item)| {
            let at = format!("{prefix}[{i}]");
            let Json::Object(o) = item else {
                bail!(
                    "{file}: {at}: expected an object with role and content, got {}",
                    crate::formats::json::kind(item)
                );
            };
            let field = |key: &str| -> Result<String> {
                match o.get(key) {
                    Some(Json::String(s)) => Ok(s.clone()),
                    Some(v) => bail!(
                        "{file}: {at}.{key}: expected a string, got {}",
                        crate::formats::json::kind(v)
                    ),
                    None => bail!("{file}: {at}.{key}: missing"),
                }
            };
            let role = field("role")?;
            if role.is_empty() {
                bail!("{file}: {at}.role: expected a non-empty string");
            }
            Ok(Message {
                role,
                content: field("content")?,
            })
        })
        .collect()
}

/// Writes messages as a pretty-printed JSON list, atomically.
pub fn save_messages(path: &Path, m: &[Message]) -> Result<()> {
    crate::formats::json::write_atomic(path, &m)
}

// ---------------------------------------------------------------------------
// Jinja environment: the parts of transformers' setup minijinja lacks.

fn raise_exception(message: String) -> Result<Value, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, message))
}

/// Prints values the way Jinja2 (Python's `str`) does: `None`, `True`,
/// `False`, Python float and container reprs. Strings and integers as usual.
fn python_formatter(out: &mut Output, state: &State, value: &Value) -> Result<(), JinjaError> {
    match value.kind() {
        ValueKind::None | ValueKind::Bool | ValueKind::Seq | ValueKind::Map => {
            out.write_str(&py_repr(value)).map_err(JinjaError::from)
        }
        ValueKind::Number if !value.is_integer() => {
            out.write_str(&py_repr(value)).map_err(JinjaError::from)
        }
        _ => minijinja::escape_formatter(out, state, value),
    }
}

/// Python `repr()` of a template value.
fn py_repr(value: &Value) -> String {
    match value.kind() {
        ValueKind::None | ValueKind::Undefined => "None".into(),
        ValueKind::Bool => if value.is_true() { "True" } else { "False" }.into(),
        ValueKind::Number if !value.is_integer() => match f64::try_from(value.clone()) {
            Ok(f) if f.is_nan() => "nan".into(),
            Ok(f) if f.is_infinite() => if f > 0.0 { "inf" } else { "-inf" }.into(),
            Ok(f) => py_float(f),
            Err(_) => value.to_string(),
        },
        ValueKind::String => py_str_repr(value.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => match value.try_iter() {
            Ok(items) => format!(
                "[{}]",
                items.map(|v| py_repr(&v)).collect::<Vec<_>>().join(", ")
            ),
            Err(_) => value.to_string(),
        },
        ValueKind::Map => match value.try_iter() {
            Ok(keys) => {
                let items: Vec<String> = keys
                    .map(|k| {
                        let v = value.get_item(&k).unwrap_or_default();
                        format!("{}: {}", py_repr(&k), py_repr(&v))
                    })
                    .collect();
                format!("{{{}}}", items.join(", "))
            }
            Err(_) => value.to_string(),
        },
        _ => value.to_string(),
    }
}

fn py_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..0xa0).contains(&(c as u32)) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `repr(float)`: shortest round-trip digits, exponent form below
/// 1e-4 and from 1e16 on, written `1e-05` / `1e+16`. Rust's `{:?}` uses the
/// same digits and thresholds, only the exponent is spelled differently.
fn py_float(f: f64) -> String {
    let s = format!("{f:?}");
    match s.split_once('e') {
        Some((mantissa, exp)) => {
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exp),
            };
            format!("{mantissa}e{sign}{digits:0>2}")
        }
        None => s,
    }
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)` — unlike Jinja2's and minijinja's
/// built-in, no HTML escaping and Python's `", "`/`": "` separators.
fn tojson(
    value: &Value,
    ensure_ascii: Option<Value>,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> Result<Value, JinjaError> {
    let ensure_ascii = match kwargs
        .get::<Option<Value>>("ensure_ascii")?
        .or(ensure_ascii)
    {
        Some(v) => v.is_true(),
        None => false,
    };
    let indent = match kwargs.get::<Option<Value>>("indent")?.or(indent) {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                let n = i64::try_from(v.clone()).map_err(|_| {
                    JinjaError::new(
                        ErrorKind::InvalidOperation,
                        "tojson: indent must be an integer or a string",
                    )
                })?;
                Some(" ".repeat(n.max(0) as usize))
            }
        },
    };
    let (item_sep, key_sep) = match kwargs.get::<Option<Value>>("separators")? {
        Some(v) if !v.is_none() => {
            let parts: Vec<String> = v
                .try_iter()?
                .map(|p| p.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .filter(|p: &Vec<String>| p.len() == 2)
                .ok_or_else(|| {
                    JinjaError::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be two strings",
                    )
                })?;
            (parts[0].clone(), parts[1].clone())
        }
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    kwargs.assert_all_used()?;
    let opts = JsonOpts {
        ensure_ascii,
        indent,
        item_sep,
        key_sep,
        sort_keys,
    };
    let mut out = String::new();
    opts.write(&mut out, value, 0)?;
    Ok(Value::from(out))
}

struct JsonOpts {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

impl JsonOpts {
    fn newline(&self, out: &mut String, level: usize) {
        if let Some(indent) = &self.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(indent);
            }
        }
    }

    fn write(&self, out: &mut String, value: &Value, level: usize) -> Result<(), JinjaError> {
        match value.kind() {
            ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number if value.is_integer() => out.push_str(&value.to_string()),
            ValueKind::Number => {
                let f = f64::try_from(value.clone())?;
                if f.is_nan() {
                    out.push_str("NaN");
                } else if f.is_infinite() {
                    out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
                } else {
                    out.push_str(&py_float(f));
                }
            }
            ValueKind::String => self.write_str(out, value.as_str().unwrap_or_default()),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.write_items(out, level, '[', ']', &items, |out, v| {
                    self.write(out, v, level + 1)
                })?;
            }
            ValueKind::Map => {
                let mut keys: Vec<(String, Value)> = value
                    .try_iter()?
                    .map(|k| Ok((self.key_string(&k)?, k)))
                    .collect::<Result<_, JinjaError>>()?;
                if self.sort_keys {
                    keys.sort_by(|a, b| a.0.cmp(&b.0));
                }
                self.write_items(out, level, '{', '}', &keys, |out, (name, k)| {
                    self.write_str(out, name);
                    out.push_str(&self.key_sep);
                    self.write(out, &value.get_item(k)?, level + 1)
                })?;
            }
            kind => {
                return Err(JinjaError::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: object of type {kind} is not JSON serializable"),
                ))
            }
        }
        Ok(())
    }

    fn write_items<T>(
        &self,
        out: &mut String,
        level: usize,
        open: char,
        close: char,
        items: &[T],
        mut each: impl FnMut(&mut String, &T) -> Result<(), JinjaError>,
    ) -> Result<(), JinjaError> {
        out.push(open);
        if items.is_empty() {
            out.push(close);
            return Ok(());
        }
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push_str(&self.item_sep);
            }
            self.newline(out, level + 1);
            each(out, item)?;
        }
        self.newline(out, level);
        out.push(close);
        Ok(())
    }

    /// JSON object keys as Python's json module coerces them.
    fn key_string(&self, key: &Value) -> Result<String, JinjaError> {
        Ok(match key.kind() {
            ValueKind::String => key.as_str().unwrap_or_default().to_string(),
            ValueKind::None => "null".into(),
            ValueKind::Bool => if key.is_true() { "true" } else { "false" }.into(),
            ValueKind::Number => {
                let mut s = String::new();
                self.write(&mut s, key, 0)?;
                s
            }
            kind => {
                return Err(JinjaError::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: keys must be str, int, float, bool or None, not {kind}"),
                ))
            }
        })
    }

    fn write_str(&self, out: &mut String, s: &str) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && !(' '..='~').contains(&c)) => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        let _ = write!(out, "\\u{unit:04x}");
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// transformers' `strftime_now(format)`: the current time formatted with
/// C `strftime` codes. The clock is UTC (no time-zone database here).
fn strftime_now(format: String) -> Result<Value, JinjaError> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Ok(Value::from(strftime(&format, secs)))
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Formats a Unix time (UTC) with the common C/glibc `strftime` codes,
/// including glibc's `%-d` style unpadded variants. Unknown codes are kept
/// verbatim.
fn strftime(format: &str, unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_march = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_march + 2) / 153;
    let day = doy_march - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let cumulative = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cumulative[(month - 1) as usize] + day + i64::from(leap && month > 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };

    let mut out = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let unpadded = chars.peek() == Some(&'-');
        if unpadded {
            chars.next();
        }
        let num = |out: &mut String, v: i64, width: usize| {
            let _ = if unpadded {
                write!(out, "{v}")
            } else {
                write!(out, "{v:0width$}")
            };
        };
        match chars.next() {
            Some('Y') => num(&mut out, year, 4),
            Some('y') => num(&mut out, year.rem_euclid(100), 2),
            Some('m') => num(&mut out, month, 2),
            Some('d') => num(&mut out, day, 2),
            Some('e') => {
                let _ = write!(out, "{day:>2}");
            }
            Some('j') => num(&mut out, yday, 3),
            Some('H') => num(&mut out, hour, 2),
            Some('I') => num(&mut out, hour12, 2),
            Some('M') => num(&mut out, minute, 2),
            Some('S') => num(&mut out, second, 2),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('B') => out.push_str(MONTHS[(month - 1) as usize]),
            Some('b') | Some('h') => out.push_str(&MONTHS[(month - 1) as usize][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('u') => num(&mut out, weekday as i64 + 1, 1),
            Some('w') => num(&mut out, (weekday as i64 + 1) % 7, 1),
            Some('F') => {
                let _ = write!(out, "{year:04}-{month:02}-{day:02}");
            }
            Some('T') => {
                let _ = write!(out, "{hour:02}:{minute:02}:{second:02}");
            }
            Some('Z') => out.push_str("UTC"),
            Some('z') => out.push_str("+0000"),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                if unpadded {
                    out.push('-');
                }
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qwen_dir() -> std::path::PathBuf {
        crate::test_fixtures::qwen3_tokenizer_dir()
    }

    fn fixture(name: &str) -> Json {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/templates")
            .join(name);
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    struct Case {
        name: String,
        messages: Vec<Message>,
        opts: RenderOptions,
        rendered: String,
        ids: Vec<u32>,
        ids_content_as_text: Vec<u32>,
    }

    fn cases(json: &Json) -> Vec<Case> {
        let ids = |v: &Json| -> Vec<u32> {
            v.as_array()
                .map(|a| a.iter().map(|x| x.as_u64().unwrap() as u32).collect())
                .unwrap_or_default()
        };
        json["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| Case {
                name: c["name"].as_str().unwrap().to_string(),
                messages: serde_json::from_value(c["messages"].clone()).unwrap(),
                opts: RenderOptions {
                    add_generation_prompt: c["add_generation_prompt"].as_bool().unwrap(),
                    enable_thinking: c["enable_thinking"].as_bool(),
                },
                rendered: c["rendered"].as_str().unwrap().to_string(),
                ids: ids(&c["ids"]),
                ids_content_as_text: ids(&c["ids_content_as_text"]),
            })
            .collect()
    }

    #[test]
    fn qwen3_renders_like_transformers() {
        let tmpl = ChatTemplate::from_dir(&qwen_dir()).unwrap().unwrap();
        let cases = cases(&fixture("qwen3.json"));
        assert!(cases.len() >= 10);
        for c in &cases {
            assert_eq!(
                tmpl.render(&c.messages, &c.opts).unwrap(),
                c.rendered,
                "case {}",
                c.name
            );
        }
    }

    #[test]
    fn qwen3_prompt_ids_match_transformers_and_are_injection_safe() {
        let tok = Tokenizer::from_dir(&qwen_dir()).unwrap();
        let tmpl = ChatTemplate::from_dir(&qwen_dir()).unwrap().unwrap();
        let mut injected = 0;
        for c in cases(&fixture("qwen3.json")) {
            let (text, ids) = encode_prompt(&tok, &tmpl, &c.messages, &c.opts).unwrap();
            assert_eq!(text, c.rendered, "case {}", c.name);
            assert_eq!(ids, c.ids_content_as_text, "case {}", c.name);
            let has_special_text = c
                .messages
                .iter()
                .any(|m| tok.special_tokens().any(|s| m.content.contains(s)));
            if has_special_text {
                injected += 1;
                assert_ne!(
                    ids, c.ids,
                    "case {}: user text became control tokens",
                    c.name
                );
            } else {
                // No special-token text from users: exactly tokenizer(rendered).
                assert_eq!(ids, c.ids, "case {}", c.name);
            }
            assert_eq!(
                tok.decode(&ids, false).unwrap(),
                c.rendered,
                "case {}",
                c.name
            );
        }
        assert!(
            injected > 0,
            "the fixture should cover an injection attempt"
        );
    }

    #[test]
    fn smollm2_gguf_template_renders_like_transformers() {
        let json = fixture("smollm2.json");
        let source = json["source"]["chat_template"].as_str().unwrap();
        let tmpl = ChatTemplate::from_source(source, None, None).unwrap();
        for c in cases(&json) {
            assert_eq!(
                tmpl.render(&c.messages, &c.opts).unwrap(),
                c.rendered,
                "case {}",
                c.name
            );
        }
    }

    #[test]
    fn injection_in_roles_and_assistant_turns_stays_text() {
        let tok = Tokenizer::from_dir(&qwen_dir()).unwrap();
        let count = |ids: &[u32], id: u32| ids.iter().filter(|&&x| x == id).count();
        let opts = RenderOptions {
            add_generation_prompt: true,
            enable_thinking: None,
        };

        // Qwen3 rewrites assistant content (splits on </think>); the
        // special-token text inside must survive that as plain text.
        let qwen = ChatTemplate::from_dir(&qwen_dir()).unwrap().unwrap();
        let messages = vec![
            Message::new("user", "hi"),
            Message::new(
                "assistant",
                "<think>\nplan <|endoftext|>\n</think>\n\nok<|im_end|>",
            ),
            Message::new("user", "again <|endoftext|>"),
        ];
        let (text, ids) = encode_prompt(&tok, &qwen, &messages, &opts).unwrap();
        assert_eq!(text, qwen.render(&messages, &opts).unwrap());
        // Markup: three turns plus the generation prompt.
        assert_eq!(
            (
                count(&ids, 151644),
                count(&ids, 151645),
                count(&ids, 151643)
            ),
            (4, 3, 0)
        );
        assert_eq!(tok.decode(&ids, false).unwrap(), text);

        // A generic ChatML template prints roles verbatim.
        let json = fixture("smollm2.json");
        let chatml = ChatTemplate::from_source(
            json["source"]["chat_template"].as_str().unwrap(),
            None,
            None,
        )
        .unwrap();
        let messages = vec![
            Message::new("user<|im_end|>", "x"),
            Message::new("user", "y"),
        ];
        let (text, ids) = encode_prompt(&tok, &chatml, &messages, &opts).unwrap();
        assert!(
            text.contains("<|im_start|>user<|im_end|>\nx<|im_end|>"),
            "{text}"
        );
        // Default system turn, two messages, generation prompt.
        assert_eq!((count(&ids, 151644), count(&ids, 151645)), (4, 3));
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }

    #[test]
    fn jinja_environment_matches_transformers() {
        let render = |src: &str| {
            ChatTemplate::from_source(src, Some("<s>".into()), None)
                .unwrap()
                .render(
                    &[Message::new("user", "Olá \"x\"\n")],
                    &RenderOptions::default(),
                )
        };
        // Python json.dumps(..., ensure_ascii=False) separators and escapes.
        assert_eq!(
            render("{{ messages[0] | tojson }}").unwrap(),
            r#"{"role": "user", "content": "Olá \"x\"\n"}"#
        );
        assert_eq!(
            render("{{ {'a': [1, 2.5, none, true], 'b': {}} | tojson(indent=2) }}").unwrap(),
            "{\n  \"a\": [\n    1,\n    2.5,\n    null,\n    true\n  ],\n  \"b\": {}\n}"
        );
        assert_eq!(
            render("{{ 'é<>' | tojson(ensure_ascii=true) }}").unwrap(),
            r#""\u00e9<>""#
        );
        assert_eq!(
            render("{{ {'b': 1, 'a': 2} | tojson(sort_keys=true) }}").unwrap(),
            r#"{"a": 2, "b": 1}"#
        );
        // Python's str() of values.
        assert_eq!(
            render("{{ none }} {{ true }} {{ 1e-5 }} {{ [1, 'a'] }}").unwrap(),
            "None True 1e-05 [1, 'a']"
        );
        // trim_blocks + lstrip_blocks, loop controls, pycompat methods, bos_token.
        assert_eq!(
            render("{{ bos_token }}\n  {% for i in range(5) %}\n{% if i == 3 %}{% break %}{% endif %}{{ i }}\n  {% endfor %}\n{{ ' ab '.strip().upper() }}{{ 'a,b'.split(',') | length }}{{ messages[0].content.startswith('Olá') }}")
                .unwrap(),
            "<s>\n0\n1\n2\nAB2True"
        );
        // enable_thinking left undefined unless given; raise_exception errors.
        assert_eq!(render("{{ enable_thinking is defined }}").unwrap(), "False");
        let e = render("{{ raise_exception('roles must alternate') }}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("roles must alternate"), "{e}");
        assert!(ChatTemplate::from_source("{% if %}", None, None).is_err());
    }

    #[test]
    fn strftime_matches_c() {
        // 2024-02-29 13:05:09 UTC, a Thursday (date -u -d @1709211909).
        let t = 1_709_211_909;
        assert_eq!(strftime("%Y-%m-%d %H:%M:%S", t), "2024-02-29 13:05:09");
        assert_eq!(
            strftime("%d %b %Y, %A %j %I%p %-d/%-m %%", t),
            "29 Feb 2024, Thursday 060 01PM 29/2 %"
        );
        assert_eq!(strftime("%d %B %Y", 0), "01 January 1970");
        assert!(
            ChatTemplate::from_source("{{ strftime_now('%Y') }}", None, None)
                .unwrap()
                .render(&[], &RenderOptions::default())
                .unwrap()
                .starts_with("20")
        );
    }

    #[test]
    fn strip_thinking_follows_qwen3_rule() {
        assert_eq!(
            strip_thinking("<think>\nstep 1\nstep 2\n</think>\n\nThe answer."),
            (
                Some("step 1\nstep 2".to_string()),
                "The answer.".to_string()
            )
        );
        // Generation prompts with thinking open the block in the prompt, so
        // the output starts inside it.
        assert_eq!(
            strip_thinking("reasoning\n</think>\n\nok"),
            (Some("reasoning".to_string()), "ok".to_string())
        );
        assert_eq!(strip_thinking("plain"), (None, "plain".to_string()));
        assert_eq!(
            strip_thinking("<think>\n\n</think>\n\n"),
            (Some(String::new()), String::new())
        );
    }

    #[test]
    fn from_dir_variants() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ChatTemplate::from_dir(dir.path()).unwrap().is_none());
        let cfg = dir.path().join("tokenizer_config.json");
        std::fs::write(
            &cfg,
            r#"{"eos_token": {"content": "</s>"}, "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "{{ eos_token }}D"}]}"#,
        )
        .unwrap();
        let t = ChatTemplate::from_dir(dir.path()).unwrap().unwrap();
        assert_eq!(t.render(&[], &RenderOptions::default()).unwrap(), "</s>D");
        std::fs::write(dir.path().join("chat_template.jinja"), "J{{ eos_token }}\n").unwrap();
        let t = ChatTemplate::from_dir(dir.path()).unwrap().unwrap();
        // Jinja2 drops one trailing newline (keep_trailing_newline=False).
        assert_eq!(t.render(&[], &RenderOptions::default()).unwrap(), "J</s>");
        std::fs::remove_file(dir.path().join("chat_template.jinja")).unwrap();
        std::fs::write(
            &cfg,
            r#"{"chat_template": [{"name": "tool_use", "template": "T"}]}"#,
        )
        .unwrap();
        let e = ChatTemplate::from_dir(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("tokenizer_config.json: chat_template") && e.contains("default"),
            "{e}"
        );
        std::fs::write(&cfg, r#"{"chat_template": 3}"#).unwrap();
        let e = ChatTemplate::from_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("chat_template: expected a string"), "{e}");
        std::fs::write(&cfg, r#"{"chat_template": "{% for %}"}"#).unwrap();
        let e = ChatTemplate::from_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("tokenizer_config.json"), "{e}");
    }

    #[test]
    fn messages_roundtrip_and_errors_name_file_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.json");
        let messages = vec![
            Message::new("system", "Be brief."),
            Message::new("user", "Olá <|im_end|> 👋"),
        ];
        save_messages(&path, &messages).unwrap();
        assert_eq!(load_messages(&path).unwrap(), messages);

        std::fs::write(
            &path,
            r#"{"model": "x", "messages": [{"role": "user", "content": "hi", "name": "a"}]}"#,
        )
        .unwrap();
        assert_eq!(
            load_messages(&path).unwrap(),
            vec![Message::new("user", "hi")]
        );

        let err = |json: &str| {
            std::fs::write(&path, json).unwrap();
            load_messages(&path).unwrap_err().to_string()
        };
        assert!(
            err(r#"[{"role": "user", "content": "a"}, {"role": "user", "content": null}]"#)
                .ends_with("chat.json: [1].content: expected a string, got null")
        );
        assert!(err(r#"[{"content": "a"}]"#).ends_with("chat.json: [0].role: missing"));
        assert!(err(r#"{"messages": [1]}"#).contains("chat.json: messages[0]: expected an object"));
        assert!(err("[").contains("chat.json: invalid JSON"));
        assert!(err("3").contains("expected a list of messages"));
        let e = load_messages(&dir.path().join("nope.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.json"), "{e}");
    }
}
