//! Chat templates rendered the way transformers renders them (`apply_chat_template`): Jinja with
//! `trim_blocks` and `lstrip_blocks`, `raise_exception`, `strftime_now`, a `tojson` without HTML
//! escaping, Python string and dict methods (minijinja-contrib's pycompat), loop controls, and
//! `{% generation %}` blocks (only used by transformers for assistant masks) rendered as plain text.
use std::sync::OnceLock;

use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior, Value};
use serde_json::Value as Json;

use crate::error::{Error, Result};

const NAME: &str = "chat_template";

/// Template instructions one render may run (minijinja's fuel). A chat template is a loop over
/// the messages: real ones (ChatML, Llama 3, Qwen with tools) spend tens of instructions a
/// message, so this allows conversations of ~100k messages while a runaway loop (nested
/// `range(100000)`s) stops within about a second instead of hanging the process.
pub(crate) const TEMPLATE_FUEL: u64 = 10_000_000;

/// Bytes one render may produce: growth like `messages * 100000000` is refused here, before
/// the text reaches the tokenizer. 16 MiB is about 4M tokens of text, past any context window.
pub(crate) const TEMPLATE_MAX_OUTPUT: usize = 16 << 20;

/// Items one `{{ sequence }}` may print (see the formatter in `environment`).
const TEMPLATE_MAX_PRINTED_ITEMS: usize = 100_000;

/// Wall time one render may take. Fuel counts template instructions, but one instruction can
/// print a lazily repeated sequence item by item (`{{ messages * 100000000 }}` spent 68 s
/// reaching the old 64 MiB cap under load, found by tests/fuzz.rs): the output checks the
/// clock too. Real templates render in microseconds.
pub(crate) const TEMPLATE_MAX_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// A chat template, compiled once. A template that does not compile still loads (as in
/// transformers); the error comes back when it is applied.
#[derive(Debug)]
pub(crate) struct ChatTemplate {
    source: Option<String>,
    /// The file (or GGUF key) the template came from, named when a render runs over budget.
    origin: String,
    compiled: std::result::Result<Environment<'static>, String>,
}

/// The special tokens a template may use, as transformers passes them (only those that are set).
#[derive(Debug, Default, Clone)]
pub(crate) struct TemplateTokens {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub pad_token: Option<String>,
    pub unk_token: Option<String>,
}

/// The message `raise_exception(msg)` raised, carried through minijinja's error as its source.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

impl ChatTemplate {
    pub(crate) fn new(source: String, origin: String) -> Self {
        let mut env = environment();
        let compiled = match env.add_template_owned(NAME, strip_generation_tags(&source)) {
            Ok(()) => Ok(env),
            Err(e) => Err(describe(&e)),
        };
        ChatTemplate { source: Some(source), origin, compiled }
    }

    /// A template that was named but cannot be used (e.g. several and no `default`).
    pub(crate) fn unusable(reason: String) -> Self {
        ChatTemplate { source: None, origin: String::new(), compiled: Err(reason) }
    }

    pub(crate) fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }

    /// Renders `messages` (JSON objects, at least `role` and `content`). `extra` adds variables
    /// (e.g. `tools`, `enable_thinking`) and may override the defaults.
    pub(crate) fn render(
        &self,
        messages: &[Json],
        add_generation_prompt: bool,
        tokens: &TemplateTokens,
        extra: Option<&serde_json::Map<String, Json>>,
    ) -> Result<String> {
        let env = self.compiled.as_ref().map_err(|m| Error::Template { message: m.clone() })?;
        for (i, m) in messages.iter().enumerate() {
            if !m.is_object() {
                let kind = match m {
                    Json::Null => "null",
                    Json::Bool(_) => "a boolean",
                    Json::Number(_) => "a number",
                    Json::String(_) => "a string",
                    Json::Array(_) => "an array",
                    Json::Object(_) => "an object",
                };
                return Err(Error::arg(format!("messages[{i}]"), "an object with `role` and `content`", kind));
            }
        }
        let mut ctx: Vec<(String, Value)> = vec![
            ("messages".into(), Value::from_serialize(messages)),
            ("add_generation_prompt".into(), Value::from(add_generation_prompt)),
            ("tools".into(), Value::from(())),
            ("documents".into(), Value::from(())),
        ];
        let named = [
            ("bos_token", &tokens.bos_token),
            ("eos_token", &tokens.eos_token),
            ("pad_token", &tokens.pad_token),
            ("unk_token", &tokens.unk_token),
        ];
        for (name, token) in named {
            if let Some(t) = token {
                ctx.push((name.into(), Value::from(t.as_str())));
            }
        }
        if let Some(extra) = extra {
            for (k, v) in extra {
                ctx.retain(|(name, _)| name != k);
                ctx.push((k.clone(), Value::from_serialize(v)));
            }
        }
        let ctx: Value = ctx.into_iter().collect();
        let template = env.get_template(NAME).map_err(|e| template_error(&e))?;
        let mut out = BoundedOutput { text: Vec::new(), overflowed: None, deadline: std::time::Instant::now() + TEMPLATE_MAX_TIME };
        match template.render_captured_to(ctx, &mut out) {
            Ok(_) => String::from_utf8(out.text)
                .map_err(|e| Error::Template { message: format!("the chat template from {} rendered invalid UTF-8: {e}", self.origin) }),
            Err(_) if out.overflowed == Some(Overflow::Time) => Err(Error::Template {
                message: format!(
                    "the chat template from {} was still printing after {} s and was stopped \
                     (output that grows without bound, e.g. `messages * 100000000`?)",
                    self.origin,
                    TEMPLATE_MAX_TIME.as_secs()
                ),
            }),
            Err(_) if out.overflowed == Some(Overflow::Size) => Err(Error::Template {
                message: format!(
                    "the chat template from {} produced more than {} MiB of text; \
                     a template whose output grows without bound (e.g. `messages * 100000000`) is refused",
                    self.origin,
                    TEMPLATE_MAX_OUTPUT >> 20
                ),
            }),
            Err(e) if e.detail().is_some_and(|d| d.starts_with("printing a sequence of")) => Err(Error::Template {
                message: format!("the chat template from {}: {} was refused", self.origin, e.detail().unwrap_or_default()),
            }),
            Err(e) if e.kind() == ErrorKind::OutOfFuel => Err(Error::Template {
                message: format!(
                    "the chat template from {} ran more than {TEMPLATE_FUEL} steps and was stopped \
                     (a loop that does not end, or nested loops over large ranges?){}",
                    self.origin,
                    e.line().map(|l| format!(" (template line {l})")).unwrap_or_default()
                ),
            }),
            Err(e) => Err(template_error(&e)),
        }
    }
}

/// The render's output, refusing to grow past `TEMPLATE_MAX_OUTPUT` or to go on past
/// `TEMPLATE_MAX_TIME` (minijinja then stops with a write error, which `render` reports).
struct BoundedOutput {
    text: Vec<u8>,
    overflowed: Option<Overflow>,
    deadline: std::time::Instant,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Overflow {
    Size,
    Time,
}

impl std::io::Write for BoundedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.text.len() + buf.len() > TEMPLATE_MAX_OUTPUT {
            self.overflowed = Some(Overflow::Size);
        } else if std::time::Instant::now() > self.deadline {
            self.overflowed = Some(Overflow::Time);
        }
        if self.overflowed.is_some() {
            return Err(std::io::Error::other("chat template output bound reached"));
        }
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_fuel(Some(TEMPLATE_FUEL));
    // Printing a sequence walks all its items even after the output bound refused the first
    // write (Rust's debug_list keeps iterating): `{{ messages * 100000000 }}` is one
    // instruction, so fuel does not stop it either. Refuse to print one that long instead.
    env.set_formatter(|out, state, value| {
        if matches!(
            value.kind(),
            minijinja::value::ValueKind::Seq | minijinja::value::ValueKind::Iterable | minijinja::value::ValueKind::Map
        ) {
            // A repeated sequence is a lazy iterable without a known length: count at most
            // one past the bound.
            let n = value.len().unwrap_or_else(|| value.try_iter().map_or(0, |it| it.take(TEMPLATE_MAX_PRINTED_ITEMS + 1).count()));
            if n > TEMPLATE_MAX_PRINTED_ITEMS {
                let message = format!("printing a sequence of more than {TEMPLATE_MAX_PRINTED_ITEMS} items");
                return Err(minijinja::Error::new(ErrorKind::InvalidOperation, message));
            }
        }
        minijinja::escape_formatter(out, state, value)
    });
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_filter("tojson", super::pyjson::tojson);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env
}

fn raise_exception(message: Option<Value>) -> std::result::Result<Value, minijinja::Error> {
    let message = message.map(|m| m.to_string()).unwrap_or_default();
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(Raised(message)))
}

/// `datetime.now().strftime(fmt)`, in local time; a bad format is a template error, not a panic.
fn strftime_now(format: String) -> std::result::Result<String, minijinja::Error> {
    use chrono::format::StrftimeItems;
    let items = StrftimeItems::new(&format)
        .parse()
        .map_err(|_| minijinja::Error::new(ErrorKind::InvalidOperation, format!("strftime_now: invalid format {format:?}")))?;
    Ok(chrono::Local::now().format_with_items(items.into_iter()).to_string())
}

/// `{% generation %}…{% endgeneration %}` is a transformers extension; as text it is a no-op,
/// so it becomes `{% if true %}…{% endif %}`, keeping any `-`/`+` whitespace control.
fn strip_generation_tags(source: &str) -> String {
    static TAGS: OnceLock<Option<(regex::Regex, regex::Regex)>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let open = regex::Regex::new(r"\{%([-+]?)\s*generation\s*([-+]?)%\}").ok()?;
        let close = regex::Regex::new(r"\{%([-+]?)\s*endgeneration\s*([-+]?)%\}").ok()?;
        Some((open, close))
    });
    match tags {
        Some((open, close)) if source.contains("generation") => {
            let s = open.replace_all(source, "{%${1} if true ${2}%}");
            close.replace_all(&s, "{%${1} endif ${2}%}").into_owned()
        }
        _ => source.to_string(),
    }
}

/// `raise_exception`'s message as is; any other error with its kind, detail and template line.
fn template_error(e: &minijinja::Error) -> Error {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(Raised(message)) = c.downcast_ref::<Raised>() {
            return Error::Template { message: message.clone() };
        }
        cause = c.source();
    }
    Error::Template { message: describe(e) }
}

fn describe(e: &minijinja::Error) -> String {
    let mut message = match e.detail() {
        Some(detail) => format!("{}: {detail}", e.kind()),
        None => e.kind().to_string(),
    };
    if let Some(line) = e.line() {
        message.push_str(&format!(" (template line {line})"));
    }
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        message.push_str(&format!(": {c}"));
        cause = c.source();
    }
    message
}
