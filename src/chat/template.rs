//! Chat templates: Hugging Face Jinja chat templates rendered like
//! transformers' `apply_chat_template` (the environment is in `jinja.rs`).

use super::conversation::Message;
use super::jinja;
use crate::formats::json::{kind, read_object};
use crate::tokenizer::special_token_field;
use anyhow::{anyhow, bail, Context, Result};
use minijinja::{Environment, Value};
use serde_json::Value as Json;
use std::path::Path;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
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
        let mut env = jinja::environment();
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

    /// Whether `c` occurs in the template or in the bos/eos strings it is given.
    pub(super) fn contains_char(&self, c: char) -> bool {
        self.source.contains(c)
            || self.bos.as_deref().is_some_and(|s| s.contains(c))
            || self.eos.as_deref().is_some_and(|s| s.contains(c))
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
            kind(v)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::goldens::{cases, fixture, qwen_dir};

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
}
