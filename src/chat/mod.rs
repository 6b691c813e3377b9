//! Chat logic, with no printing and no terminal I/O: conversations and their
//! files, the chat template, turning a conversation into prompt ids, and
//! reading thinking text out of an answer. `cli/chat/` shows all this.
//!
//! Imports point one way: `conversation` (messages) ← `template` (rendering,
//! Jinja environment in `jinja`) ← `prompt` (ids); `thinking` stands alone.

pub mod conversation;
mod jinja;
pub mod prompt;
pub mod template;
pub mod thinking;

#[cfg(test)]
mod goldens;

pub use conversation::{load_messages, save_messages, Message};
pub use prompt::{encode_prompt, Prompter};
pub use template::{ChatTemplate, RenderOptions};
pub use thinking::strip_thinking;
