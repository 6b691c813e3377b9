//! Conversations: OpenAI-style message files, the REPL's conversation with
//! its `interrupted` marks, and trimming a conversation to the context window.

use crate::formats::json::{kind, read_value, write_atomic};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
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

/// Reads an OpenAI-style conversation: a JSON list of `{"role", "content"}`
/// objects, or an object whose `messages` field is such a list. Other fields
/// are ignored.
pub fn load_messages(path: &Path) -> Result<Vec<Message>> {
    Ok(read_turns(path)?
        .into_iter()
        .map(Turn::into_message)
        .collect())
}

/// Writes messages as a pretty-printed JSON list, atomically.
pub fn save_messages(path: &Path, m: &[Message]) -> Result<()> {
    write_atomic(path, &m)
}

/// Roles a chat template knows.
const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// [`load_messages`], refusing roles no chat template knows.
pub fn load_checked_messages(path: &Path) -> Result<Vec<Message>> {
    let messages = load_messages(path)?;
    check_roles(path, messages.iter().map(|m| m.role.as_str()))?;
    Ok(messages)
}

fn check_roles<'a>(path: &Path, roles: impl Iterator<Item = &'a str>) -> Result<()> {
    for (i, role) in roles.enumerate() {
        if !ROLES.contains(&role) {
            bail!(
                "{}: [{i}].role: expected system, user, assistant or tool, got {role:?}",
                path.display()
            );
        }
    }
    Ok(())
}

/// Replaces the leading system message, or inserts one.
pub fn set_system(messages: &mut Vec<Message>, system: &str) {
    match messages.first_mut() {
        Some(m) if m.role == "system" => m.content = system.to_string(),
        _ => messages.insert(0, Message::new("system", system)),
    }
}

/// A message of a conversation, with whether its generation was cut short
/// (saved as `"interrupted": true`, so a resumed session still shows it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    pub role: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
}

impl Turn {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_string(),
            content: content.to_string(),
            interrupted: false,
        }
    }

    pub fn message(&self) -> Message {
        Message::new(self.role.as_str(), self.content.as_str())
    }

    fn into_message(self) -> Message {
        Message {
            role: self.role,
            content: self.content,
        }
    }
}

/// The message list of a conversation file, each item checked, with its
/// `interrupted` mark (absent or not a boolean: false).
fn read_turns(path: &Path) -> Result<Vec<Turn>> {
    let file = path.display();
    let json = read_value(path)?;
    let (list, prefix) = match &json {
        Json::Array(list) => (list, ""),
        Json::Object(o) => match o.get("messages") {
            Some(Json::Array(list)) => (list, "messages"),
            Some(v) => bail!("{file}: messages: expected a list, got {}", kind(v)),
            None => bail!("{file}: expected a list of messages or an object with \"messages\""),
        },
        v => bail!("{file}: expected a list of messages, got {}", kind(v)),
    };
    list.iter()
        .enumerate()
        .map(|(i, item)| {
            let at = format!("{prefix}[{i}]");
            let Json::Object(o) = item else {
                bail!(
                    "{file}: {at}: expected an object with role and content, got {}",
                    kind(item)
                );
            };
            let field = |key: &str| -> Result<String> {
                match o.get(key) {
                    Some(Json::String(s)) => Ok(s.clone()),
                    Some(v) => bail!("{file}: {at}.{key}: expected a string, got {}", kind(v)),
                    None => bail!("{file}: {at}.{key}: missing"),
                }
            };
            let role = field("role")?;
            if role.is_empty() {
                bail!("{file}: {at}.role: expected a non-empty string");
            }
            Ok(Turn {
                role,
                content: field("content")?,
                interrupted: o
                    .get("interrupted")
                    .and_then(Json::as_bool)
                    .unwrap_or(false),
            })
        })
        .collect()
}

/// The interactive chat's conversation: the system prompt, kept apart so
/// that `/reset` and trimming never touch it, and the turns after it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Conversation {
    pub system: Option<String>,
    pub turns: Vec<Turn>,
}

/// A conversation encoded to fit the context window.
#[derive(Debug)]
pub struct Fitted {
    pub prompt: String,
    pub ids: Vec<u32>,
    /// Messages dropped from the start of the conversation to make it fit.
    pub dropped: usize,
    /// It fits the window but leaves less than the room reserved for the
    /// answer: nothing older was left to drop.
    pub short_of_reserve: bool,
}

impl Conversation {
    /// The messages to render: the system prompt first.
    pub fn messages(&self) -> Vec<Message> {
        let mut m: Vec<Message> = self
            .system
            .iter()
            .map(|s| Message::new("system", s.as_str()))
            .collect();
        m.extend(self.turns.iter().map(Turn::message));
        m
    }

    /// Messages, the system prompt included.
    pub fn message_count(&self) -> usize {
        self.turns.len() + usize::from(self.system.is_some())
    }

    /// Drops the last user message and everything after it (everything when
    /// there is no user message). False when there was nothing to drop.
    pub fn undo(&mut self) -> bool {
        match self.turns.iter().rposition(|t| t.role == "user") {
            Some(at) => self.turns.truncate(at),
            None if !self.turns.is_empty() => self.turns.clear(),
            None => return false,
        }
        true
    }

    /// Writes the conversation as a JSON list of {"role", "content"} (plus
    /// `"interrupted": true` on answers cut short), atomically. It stays an
    /// OpenAI-style list that [`load_messages`] reads.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut all: Vec<Turn> = self
            .system
            .as_deref()
            .map(|s| Turn::new("system", s))
            .into_iter()
            .collect();
        all.extend(self.turns.iter().cloned());
        write_atomic(path, &all)
    }

    /// Reads a conversation: a leading system message becomes the system
    /// prompt; roles are checked as for [`load_checked_messages`].
    pub fn load(path: &Path) -> Result<Self> {
        let mut turns = read_turns(path)?;
        check_roles(path, turns.iter().map(|t| t.role.as_str()))?;
        let system = match turns.first() {
            Some(t) if t.role == "system" => Some(turns.remove(0).content),
            _ => None,
        };
        Ok(Self { system, turns })
    }

    /// Encodes the conversation with `encode`, dropping the oldest exchanges
    /// (never the system prompt, never the last user message) until the
    /// prompt leaves room to answer in the `window`: `max_tokens`, at most a
    /// quarter of the window. When nothing older is left to drop, a prompt
    /// that fits the window at all is still used.
    pub fn fit(
        &mut self,
        window: usize,
        max_tokens: Option<usize>,
        mut encode: impl FnMut(&[Message]) -> Result<(String, Vec<u32>)>,
    ) -> Result<Fitted> {
        let reserve = max_tokens.unwrap_or(usize::MAX).min(window / 4).max(1);
        let mut dropped = 0;
        loop {
            let (prompt, ids) = encode(&self.messages())?;
            let fitted = |ids, short_of_reserve| Fitted {
                prompt,
                ids,
                dropped,
                short_of_reserve,
            };
            if ids.len() + reserve <= window {
                return Ok(fitted(ids, false));
            }
            // The oldest exchange: up to the next user message, keeping the last one.
            let next_user = self.turns.iter().skip(1).position(|t| t.role == "user");
            match next_user {
                Some(i) if i + 1 < self.turns.len() => {
                    self.turns.drain(..i + 1);
                    dropped += i + 1;
                }
                _ if ids.len() < window => return Ok(fitted(ids, true)),
                _ => bail!(
                    "the message does not fit the context window: the prompt has {} tokens, the window {window}",
                    ids.len()
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn conversation_roundtrip_keeps_system_and_interrupted_marks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conv.json");
        let mut turns = vec![
            Turn::new("user", "Olá <|im_end|>"),
            Turn::new("assistant", "partial"),
        ];
        turns[1].interrupted = true;
        let conversation = Conversation {
            system: Some("Be brief.".into()),
            turns: turns.clone(),
        };
        conversation.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        // Still an OpenAI-style list that load_messages reads.
        assert_eq!(load_messages(&path).unwrap().len(), 3);
        assert_eq!(text.matches("interrupted").count(), 1);
        let back = Conversation::load(&path).unwrap();
        assert_eq!(back.system.as_deref(), Some("Be brief."));
        assert_eq!(back.turns, turns);
        let e = Conversation::load(&dir.path().join("missing.json")).unwrap_err();
        assert!(format!("{e:#}").contains("missing.json"));
    }

    #[test]
    fn save_failure_names_the_file() {
        let e = Conversation::default()
            .save(Path::new("/no/such/dir/c.json"))
            .unwrap_err();
        assert!(format!("{e:#}").contains("/no/such/dir"), "{e:#}");
    }

    #[test]
    fn fit_drops_whole_exchanges_and_keeps_system_and_last_message() {
        // One token per character of content: easy to count.
        let encode = |m: &[Message]| -> Result<(String, Vec<u32>)> {
            let n: usize = m.iter().map(|m| m.content.len()).sum();
            Ok((String::new(), vec![0; n]))
        };
        let role = |t: &str| {
            if t.starts_with('u') {
                "user"
            } else {
                "assistant"
            }
        };
        let mut c = Conversation {
            system: Some("ss".into()),
            turns: ["u1", "a1", "u2", "a2", "u3333333"]
                .into_iter()
                .map(|t| Turn::new(role(t), t))
                .collect(),
        };
        // 18 tokens; a window of 20 reserves 5: the first exchange goes.
        let f = c.fit(20, None, encode).unwrap();
        assert_eq!((f.ids.len(), f.dropped, f.short_of_reserve), (14, 2, false));
        assert_eq!(c.message_count(), 4);
        // Only the new message is left: it fits the window, short of the reserve.
        let f = c.fit(11, None, encode).unwrap();
        assert_eq!((f.ids.len(), f.dropped, f.short_of_reserve), (10, 2, true));
        assert_eq!(c.messages()[1].content, "u3333333");
        let e = c.fit(10, None, encode).unwrap_err().to_string();
        assert!(e.contains("does not fit the context window"), "{e}");
        assert!(c.undo() && !c.undo() && c.message_count() == 1);
    }
}
