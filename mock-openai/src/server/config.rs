//! The server's configuration: command-line flags, the TOML file (a scenario's `[account]` and
//! `[upstream]` sections plus an optional `[mock_server]` section), and the transport faults
//! the server injects itself. Raw flags become a validated [`ServerConfig`] before anything runs.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use tagstorm_core::config::plain_message;

use serde::{Deserialize, Serialize};
use tagstorm_core::tokens::Model;

use crate::config::{AccountConfig, ConfigError, UpstreamConfig, check_rate};
use crate::server::clock::{MAX_SPEEDUP, MIN_SPEEDUP};

/// Largest realtime chat request body, in bytes (default 16 MiB: room for one base64 image
/// of a few MB; OpenAI's own cap is per image, 20 MB).
pub const DEFAULT_CHAT_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Largest JSON body of the other endpoints (batches, `/_mock/config`), in bytes.
pub const DEFAULT_JSON_BODY_BYTES: usize = 1024 * 1024;
/// Largest multipart upload, in bytes: the 512 MB file cap (facts §4) plus room for the
/// multipart framing.
pub const DEFAULT_UPLOAD_BODY_BYTES: usize = 512 * 1024 * 1024 + 64 * 1024;

/// A transport fault the server applies to a successful chat response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportFault {
    /// Delivered normally.
    Ok,
    /// The connection is reset (TCP RST) instead of answering.
    Reset,
    /// The body dribbles out over `slow_body_ms`.
    SlowBody,
}

/// `[mock_server.transport]`: faults below HTTP that the model does not know about. They
/// apply only to responses the model answered 200, after its latency, so the request has been
/// admitted and charged. Random draws come from a stream seeded by `--seed`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransportConfig {
    /// Probability that a successful chat response becomes a connection reset, in 0..=1
    /// (default 0).
    pub reset_rate: f64,
    /// Probability that a successful chat response body is sent slowly, in 0..=1 (default 0).
    pub slow_body_rate: f64,
    /// Model time over which a slow body is sent, in milliseconds (default 5,000).
    pub slow_body_ms: f64,
    /// Successful chat responses (server-wide, counted from 0) delivered normally before
    /// `sequence` starts (default 0).
    pub after: u64,
    /// Scripted faults, one per successful chat response from `after` on; the random rates
    /// apply once it is used up.
    pub sequence: Vec<TransportFault>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            reset_rate: 0.0,
            slow_body_rate: 0.0,
            slow_body_ms: 5_000.0,
            after: 0,
            sequence: Vec::new(),
        }
    }
}

impl TransportConfig {
    /// Checks every field; the error names the first one at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_rate("mock_server.transport.reset_rate", self.reset_rate)?;
        check_rate("mock_server.transport.slow_body_rate", self.slow_body_rate)?;
        if self.reset_rate + self.slow_body_rate > 1.0 {
            return Err(ConfigError::Invalid {
                field: "mock_server.transport.slow_body_rate".into(),
                reason: format!(
                    "reset_rate + slow_body_rate must be at most 1, got {}",
                    self.reset_rate + self.slow_body_rate
                ),
            });
        }
        if !(self.slow_body_ms.is_finite() && (0.0..=86_400_000.0).contains(&self.slow_body_ms)) {
            return Err(ConfigError::Invalid {
                field: "mock_server.transport.slow_body_ms".into(),
                reason: format!("must be within 0..=86400000, got {}", self.slow_body_ms),
            });
        }
        Ok(())
    }
}

/// One `[[mock_server.keys]]` entry: an API key and its organization's limits. Fields left
/// out are taken from `[account]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySection {
    /// The bearer token.
    pub key: String,
    /// The model (default: `[account]`'s).
    #[serde(default)]
    pub model: Option<Model>,
    /// Usage tier.
    #[serde(default)]
    pub tier: Option<u8>,
    /// Requests per minute.
    #[serde(default)]
    pub rpm: Option<u64>,
    /// Tokens per minute.
    #[serde(default)]
    pub tpm: Option<u64>,
    /// Requests per day (`0` removes the tier's RPD).
    #[serde(default)]
    pub rpd: Option<u64>,
    /// Enqueued batch tokens.
    #[serde(default)]
    pub batch_queue_tokens: Option<u64>,
}

/// `[mock_server]`: what only the HTTP server needs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MockServerSection {
    /// API keys, each its own organization. None here and none on the command line = any key
    /// is accepted as one default organization.
    pub keys: Vec<KeySection>,
    /// Transport faults.
    pub transport: TransportConfig,
    /// Whether 429s carry `retry-after-ms` (also `--retry-after-ms`).
    pub retry_after_ms: bool,
    /// Largest multipart upload, in bytes (default [`DEFAULT_UPLOAD_BODY_BYTES`]).
    pub max_upload_bytes: Option<usize>,
    /// Largest chat request body, in bytes (default [`DEFAULT_CHAT_BODY_BYTES`]).
    pub max_chat_body_bytes: Option<usize>,
}

/// One API key and its organization's account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyConfig {
    /// The bearer token (never logged).
    pub key: String,
    /// The organization's account.
    pub account: AccountConfig,
}

/// Request body caps, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyLimits {
    /// `POST /v1/chat/completions`.
    pub chat: usize,
    /// `POST /v1/files`.
    pub upload: usize,
    /// Every other body.
    pub json: usize,
}

impl Default for BodyLimits {
    fn default() -> Self {
        BodyLimits {
            chat: DEFAULT_CHAT_BODY_BYTES,
            upload: DEFAULT_UPLOAD_BODY_BYTES,
            json: DEFAULT_JSON_BODY_BYTES,
        }
    }
}

/// Everything [`crate::server::State::new`] needs, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerConfig {
    /// The default account: the one organization when `keys` is empty.
    pub account: AccountConfig,
    /// The model's behaviour.
    pub upstream: UpstreamConfig,
    /// Configured keys; empty = accept any key as one default organization.
    pub keys: Vec<KeyConfig>,
    /// Transport faults.
    pub transport: TransportConfig,
    /// The model's seed (and the transport faults').
    pub seed: u64,
    /// Whether 429s carry `retry-after-ms`.
    pub retry_after_ms: bool,
    /// `false` serves every chat request as a success without consulting the limiter, the
    /// fault rates or the latency model (`--no-limits`, a plain fast stub).
    pub enforce_limits: bool,
    /// Request body caps.
    pub limits: BodyLimits,
    /// How long a connection may take to send a request's headers, in real time (also how
    /// long hyper keeps an idle keep-alive connection). Neither a flag nor a TOML key: tests
    /// shorten it.
    pub header_read_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            account: AccountConfig::tier(Model::Gpt4oMini, 1),
            upstream: UpstreamConfig::default(),
            keys: Vec::new(),
            transport: TransportConfig::default(),
            seed: 0,
            retry_after_ms: false,
            enforce_limits: true,
            limits: BodyLimits::default(),
            header_read_timeout: super::HEADER_READ_TIMEOUT,
        }
    }
}

/// A configuration file or flag that cannot be used; the message names the file and field.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{path}: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The file is not valid TOML or a section has the wrong shape.
    #[error("{path}: {message}")]
    Parse {
        /// The file (or `--api-key`).
        path: String,
        /// The parser's message, naming the section, line and field.
        message: String,
    },
    /// A value is out of range.
    #[error("{path}: {error}")]
    Invalid {
        /// The file, or `flags`.
        path: String,
        /// The field at fault.
        error: ConfigError,
    },
}

/// Section `name` of the file at `path` (its text `text`); an error names the field at fault
/// and its line (`f.toml:4: mock_server.transport.sequence: unknown variant ...`), not only
/// the section.
fn section<T: serde::de::DeserializeOwned>(
    table: &toml::Table,
    name: &'static str,
    path: &str,
    text: &str,
) -> Result<Option<T>, LoadError> {
    match table.get(name) {
        None => Ok(None),
        Some(v) => v
            .clone()
            .try_into()
            .map(Some)
            .map_err(|e: toml::de::Error| {
                // A value carries no position; the same sections read from the text do.
                let at = toml::from_str::<Sections>(text)
                    .err()
                    .and_then(|e| e.span())
                    .map(|span| field_at(text, span.start));
                let (path, field) = match at {
                    Some((line, field)) => (format!("{path}:{line}"), field),
                    None => (path.to_owned(), format!("[{name}]")),
                };
                LoadError::Parse {
                    path,
                    message: redact_keys(
                        table,
                        &format!("{field}: {}", plain_message(e.message())),
                    ),
                }
            }),
    }
}

/// The sections [`ServerConfig::apply_toml`] reads, deserialized from the text only to find
/// where an error is: the text's deserializer reports the span of the value at fault.
#[derive(Deserialize)]
#[allow(dead_code)]
struct Sections {
    account: Option<AccountConfig>,
    upstream: Option<UpstreamConfig>,
    mock_server: Option<MockServerSection>,
}

/// The 1-based line of byte `offset` in `text` and the dotted field written there: the
/// enclosing `[table]` header joined with the key of that line (`mock_server.transport` and
/// `sequence`), or the header alone when the line has no `key =`.
fn field_at(text: &str, offset: usize) -> (usize, String) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let header = before
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(['[', ']']).trim().to_owned());
    let this = text.lines().nth(line - 1).unwrap_or("");
    let key = this
        .split_once('=')
        .map(|(k, _)| k.trim().trim_matches(['"', '\'']))
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    let field = match (header, key) {
        (Some(h), Some(k)) => format!("{h}.{k}"),
        (Some(h), None) => h,
        (None, Some(k)) => k.to_owned(),
        (None, None) => String::new(),
    };
    (line, field)
}

/// `message` with every string written under `[mock_server] keys` masked: a key in the wrong
/// shape (`keys = ["sk-…"]`) or a value in the wrong place must not reach stderr through the
/// parser's `invalid type: string "…"`.
fn redact_keys(table: &toml::Table, message: &str) -> String {
    fn strings<'a>(v: &'a toml::Value, out: &mut Vec<&'a str>) {
        match v {
            toml::Value::String(s) if !s.is_empty() => out.push(s),
            toml::Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
            toml::Value::Table(t) => t.values().for_each(|v| strings(v, out)),
            _ => {}
        }
    }
    let mut secrets = Vec::new();
    if let Some(keys) = table
        .get("mock_server")
        .and_then(toml::Value::as_table)
        .and_then(|m| m.get("keys"))
    {
        strings(keys, &mut secrets);
    }
    // Longest first, so a key that contains another is masked whole.
    secrets.sort_unstable_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = message.to_owned();
    for s in secrets {
        if out.contains(s) {
            out = out.replace(s, &crate::server::mask_key(s));
        }
    }
    out
}

/// A TOML syntax error located as every other config error is, `(path:LINE, field: message)`
/// (the field written on that line, when there is one), without the parser's snippet of the
/// offending line: that line may hold an API key.
fn syntax_error(path: &str, text: &str, e: &toml::de::Error) -> (String, String) {
    let message = plain_message(e.message());
    match e.span() {
        Some(span) => {
            let (line, field) = field_at(text, span.start);
            let message = if field.is_empty() {
                message
            } else {
                format!("{field}: {message}")
            };
            (format!("{path}:{line}"), message)
        }
        None => (path.to_owned(), message),
    }
}

/// Why no request could present `key` as its bearer token, if so: the server compares the
/// `Authorization` header's text, trimmed, and a header carries only printable ASCII. The
/// reason never quotes the key.
fn unusable_key(key: &str) -> Option<&'static str> {
    if key.is_empty() {
        Some("the key is empty")
    } else if key.trim() != key {
        Some("the key starts or ends with a space, which no Authorization header keeps")
    } else if !key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        Some(
            "the key holds a character other than printable ASCII, which no Authorization header carries",
        )
    } else {
        None
    }
}

impl KeySection {
    fn account(&self, base: &AccountConfig) -> AccountConfig {
        AccountConfig {
            model: self.model.unwrap_or(base.model),
            tier: self.tier.or(base.tier),
            rpm: self.rpm.or(base.rpm),
            tpm: self.tpm.or(base.tpm),
            rpd: self.rpd.or(base.rpd),
            batch_queue_tokens: self.batch_queue_tokens.or(base.batch_queue_tokens),
        }
    }
}

/// The top-level keys and tables [`ServerConfig::apply_toml`] reads.
pub const CONFIG_KEYS: [&str; 4] = ["account", "upstream", "mock_server", "seed"];

/// The other top-level keys and tables of a scenario file (tagstorm-sim's `ScenarioFile`),
/// accepted and ignored so that a scenario works as a configuration file.
pub const SCENARIO_KEYS: [&str; 7] = [
    "name",
    "description",
    "images",
    "uploads",
    "policy",
    "prices",
    "sim",
];

/// The 1-based line where top-level `key` is written (`key =`, `[key]`, `[key.…]` or
/// `[[key]]`), if it is.
fn top_level_line(text: &str, key: &str) -> Option<usize> {
    let named = |rest: &str| {
        rest.strip_prefix(key)
            .is_some_and(|r| r.trim_start().starts_with(['=', ']', '.']))
    };
    // A `key =` line is top-level only before the first table header.
    let mut in_table = false;
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            if let Some(header) = l.strip_prefix('[') {
                in_table = true;
                return named(header.strip_prefix('[').unwrap_or(header));
            }
            !in_table && named(l)
        })
        .map(|i| i + 1)
}

impl ServerConfig {
    /// Applies a TOML file's text: `[account]`, `[upstream]`, `[mock_server]` and a top-level
    /// `seed`. A scenario's other keys and tables ([`SCENARIO_KEYS`]: `[images]`,
    /// `[[uploads]]`, …) are ignored, so a scenario file works as a configuration file; any
    /// other top-level key is refused, so a misspelt table is not silently dropped.
    pub fn apply_toml(&mut self, text: &str, path: &str) -> Result<(), LoadError> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let (path, message) = syntax_error(path, text, &e);
            LoadError::Parse { path, message }
        })?;
        let known = |k: &str| CONFIG_KEYS.contains(&k) || SCENARIO_KEYS.contains(&k);
        if let Some(unknown) = table.keys().find(|k| !known(k)) {
            return Err(LoadError::Parse {
                path: match top_level_line(text, unknown) {
                    Some(line) => format!("{path}:{line}"),
                    None => path.to_owned(),
                },
                message: format!(
                    "{unknown}: unknown top-level key or table (the mock reads {}; a \
                     scenario's {} are allowed and ignored)",
                    CONFIG_KEYS.join(", "),
                    SCENARIO_KEYS.join(", ")
                ),
            });
        }
        if let Some(account) = section::<AccountConfig>(&table, "account", path, text)? {
            self.account = account;
        }
        if let Some(upstream) = section::<UpstreamConfig>(&table, "upstream", path, text)? {
            self.upstream = upstream;
        }
        if let Some(seed) = table.get("seed") {
            self.seed = seed
                .as_integer()
                .and_then(|s| u64::try_from(s).ok())
                .ok_or_else(|| LoadError::Parse {
                    path: path.to_owned(),
                    message: "seed: must be a non-negative integer".to_owned(),
                })?;
        }
        if let Some(mock) = section::<MockServerSection>(&table, "mock_server", path, text)? {
            for k in &mock.keys {
                self.keys.push(KeyConfig {
                    key: k.key.clone(),
                    account: k.account(&self.account),
                });
            }
            self.transport = mock.transport;
            self.retry_after_ms |= mock.retry_after_ms;
            if let Some(v) = mock.max_upload_bytes {
                self.limits.upload = v;
            }
            if let Some(v) = mock.max_chat_body_bytes {
                self.limits.chat = v;
            }
        }
        Ok(())
    }

    /// Adds `--api-key KEY[:tier]`: the key's organization has `[account]`'s limits, or the
    /// plain published tier of `[account]`'s model when `:tier` is given.
    pub fn add_key_flag(&mut self, flag: &str) -> Result<(), LoadError> {
        let (key, tier) = match flag.rsplit_once(':') {
            Some((k, t)) => match t.parse::<u8>() {
                Ok(t) => (k, Some(t)),
                // Not echoed: the text after a colon may be part of a secret.
                Err(_) => {
                    return Err(LoadError::Parse {
                        path: "--api-key".to_owned(),
                        message: "the text after the last ':' must be a tier, 1-5 (a key cannot \
                                  contain ':')"
                            .to_owned(),
                    });
                }
            },
            None => (flag, None),
        };
        if key.is_empty() {
            return Err(LoadError::Parse {
                path: "--api-key".to_owned(),
                message: "the key is empty".to_owned(),
            });
        }
        let account = match tier {
            Some(t) => AccountConfig::tier(self.account.model, t),
            None => self.account.clone(),
        };
        self.keys.push(KeyConfig {
            key: key.to_owned(),
            account,
        });
        Ok(())
    }

    /// Checks every section; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.account.validate()?;
        self.upstream.validate()?;
        self.transport.validate()?;
        for (i, k) in self.keys.iter().enumerate() {
            if let Some(reason) = unusable_key(&k.key) {
                return Err(ConfigError::Invalid {
                    field: format!("mock_server.keys[{i}].key"),
                    reason: reason.to_owned(),
                });
            }
            k.account.validate().map_err(|e| match e {
                ConfigError::Invalid { field, reason } => ConfigError::Invalid {
                    field: format!(
                        "mock_server.keys[{i}].{}",
                        field.trim_start_matches("account.")
                    ),
                    reason,
                },
                other => other,
            })?;
        }
        if self.header_read_timeout.is_zero() {
            return Err(ConfigError::Invalid {
                field: "header_read_timeout".into(),
                reason: "must be more than zero".into(),
            });
        }
        Ok(())
    }
}

const AFTER_HELP: &str = "\
Examples:
  # Any API key is accepted as one Tier 1 gpt-4o-mini organization, on an ephemeral port:
  mock-openai --port 0

  # Two organizations, batches and limit windows 100x faster than real time:
  mock-openai --api-key sk-big:2 --api-key sk-small:1 --speedup 100 --retry-after-ms

  # Configure from a scenario file ([account], [upstream]; other tables are ignored):
  mock-openai --config scenarios/ten-users-fifteen-images.toml --seed 7

  # Change faults while running, read the counters:
  curl -X POST localhost:8080/_mock/config -d '{\"upstream\":{\"server_error_rate\":0.1}}'
  curl localhost:8080/_mock/stats

The first line on stdout is `listening on http://HOST:PORT`. Logs go to stderr (RUST_LOG, default
info); API keys are never logged, only their organization's name. SIGINT or SIGTERM stops
accepting, lets in-flight requests finish, and exits 0; a second one stops at once, with status
130 (SIGINT) or 143 (SIGTERM).

Exit codes: 0 stopped by SIGINT or SIGTERM; 2 bad flags, a bad config file, or an address that
cannot be bound (the error names the file, line and field; nothing is served); 130 or 143 a
second signal.

Config file sections: [account] (model, tier or rpm/tpm/rpd/batch_queue_tokens), [upstream]
(latency, faults, batch timeline), [mock_server] (keys = [{ key, tier, rpm, ... }], transport =
{ reset_rate, slow_body_rate, slow_body_ms, after, sequence }, retry_after_ms, max_upload_bytes,
max_chat_body_bytes) and a top-level seed. A scenario file's other tables ([images],
[[uploads]], [policy], [prices], [sim], name, description) are ignored; any other top-level key
is refused.";

/// `--host`: an IP address, or `localhost` for 127.0.0.1. No name lookup: the mock binds where
/// it is told, without asking a resolver.
fn parse_host(s: &str) -> Result<IpAddr, String> {
    if s.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::from([127, 0, 0, 1]));
    }
    s.parse().map_err(|_| {
        format!("expected an IP address (127.0.0.1, ::1, 0.0.0.0) or localhost, got {s:?}")
    })
}

/// The command line.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "mock-openai",
    version,
    about = "An OpenAI-compatible mock server with real rate limits, the Batch API and faults.",
    after_help = AFTER_HELP,
    // `--speedup -1` is refused by `--speedup`, not as a stray argument `-1`.
    allow_negative_numbers = true
)]
pub struct Args {
    /// Port to listen on; 0 picks a free one.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Address to listen on: an IP address (0.0.0.0 for every interface), or `localhost`.
    #[arg(long, default_value = "127.0.0.1", value_parser = parse_host)]
    pub host: IpAddr,
    /// An API key, optionally with a usage tier (`sk-abc:2`); repeatable, each key is its own
    /// organization. Without any, every key is accepted as one default organization.
    #[arg(long = "api-key", value_name = "KEY[:TIER]")]
    pub api_keys: Vec<String>,
    /// TOML file with `[account]`, `[upstream]` and `[mock_server]` sections (a scenario file works).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Seed of every random choice (default: the file's `seed`, else 0).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Run modelled time N times faster than real time: latency, limit windows, batch
    /// turnaround and reported retry times are divided by N.
    #[arg(long, default_value_t = 1.0, value_name = "N")]
    pub speedup: f64,
    /// Add `retry-after-ms` to 429 responses.
    #[arg(long)]
    pub retry_after_ms: bool,
    /// Answer every chat request 200 at once, without limits, faults or latency.
    #[arg(long)]
    pub no_limits: bool,
    /// Threads serving connections, each with its own single-threaded runtime, all accepting
    /// on the one port. One is enough for tens of thousands of requests a second and has the
    /// lowest latency at moderate load; more add throughput when cores are free.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: u16,
}

impl Args {
    /// Reads the file and flags into a validated configuration and the address to bind.
    pub fn load(&self) -> Result<(SocketAddr, ServerConfig, f64), LoadError> {
        let mut config = ServerConfig::default();
        let mut text = None;
        if let Some(path) = &self.config {
            let t = std::fs::read_to_string(path).map_err(|error| LoadError::Read {
                path: path.clone(),
                error,
            })?;
            config.apply_toml(&t, &path.display().to_string())?;
            text = Some(t);
        }
        for k in &self.api_keys {
            config.add_key_flag(k)?;
        }
        if let Some(seed) = self.seed {
            config.seed = seed;
        }
        config.retry_after_ms |= self.retry_after_ms;
        config.enforce_limits = !self.no_limits;
        config.validate().map_err(|error| {
            let path = match (&self.config, &text, &error) {
                (Some(p), Some(t), ConfigError::Invalid { field, .. }) => match line_of(t, field) {
                    Some(line) => format!("{}:{line}", p.display()),
                    None => p.display().to_string(),
                },
                (Some(p), _, _) => p.display().to_string(),
                (None, _, _) => "flags".to_owned(),
            };
            LoadError::Invalid { path, error }
        })?;
        if !(self.speedup.is_finite() && (MIN_SPEEDUP..=MAX_SPEEDUP).contains(&self.speedup)) {
            return Err(LoadError::Invalid {
                path: "flags".to_owned(),
                error: ConfigError::Invalid {
                    field: "--speedup".to_owned(),
                    reason: format!(
                        "must be within {MIN_SPEEDUP}..={MAX_SPEEDUP}, got {}",
                        // `1e300` would print as 301 digits.
                        if self.speedup.abs() >= 1e9 {
                            format!("{:e}", self.speedup)
                        } else {
                            self.speedup.to_string()
                        }
                    ),
                },
            });
        }
        Ok((SocketAddr::new(self.host, self.port), config, self.speedup))
    }
}

/// The 1-based line of `field` (a dotted path such as `upstream.batch.line_failure_rate`) in a
/// TOML text: the first `key =` line for its last key inside its section, else the section's
/// header. A best effort for messages; `None` when neither is there.
fn line_of(text: &str, field: &str) -> Option<usize> {
    let mut parts: Vec<&str> = field.split('.').collect();
    let key = parts.pop()?;
    let key = key.split('[').next().unwrap_or(key);
    let is_key_line = |line: &str| {
        line.trim_start()
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    };
    // The deepest header that names a prefix of the path, e.g. `[upstream.batch]`, then
    // `[upstream]`.
    for depth in (1..=parts.len()).rev() {
        let header = format!("[{}]", parts[..depth].join("."));
        let Some(start) = text.lines().position(|l| l.trim() == header) else {
            continue;
        };
        let body = text
            .lines()
            .enumerate()
            .skip(start + 1)
            .take_while(|(_, l)| !l.trim_start().starts_with('['));
        for (i, line) in body {
            if is_key_line(line)
                || line.contains(&format!("{key} ="))
                || line.contains(&format!("{key}="))
            {
                return Some(i + 1);
            }
        }
        return Some(start + 1);
    }
    text.lines().position(is_key_line).map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_of_finds_the_field() {
        let t = "seed = 1\n[account]\nmodel = \"gpt-4o-mini\"\ntier = 9\n[upstream]\nlatency = { kind = \"fixed\", ms = 0 }\nserver_error_rate = 1.5\n[upstream.batch]\nline_failure_rate = 2\n";
        assert_eq!(line_of(t, "upstream.server_error_rate"), Some(7));
        assert_eq!(line_of(t, "account.tier"), Some(4));
        assert_eq!(line_of(t, "upstream.batch.line_failure_rate"), Some(9));
        assert_eq!(line_of(t, "upstream.latency.ms"), Some(6));
        assert_eq!(
            line_of(t, "upstream.timeout_rate"),
            Some(5),
            "absent key: its section"
        );
        assert_eq!(line_of(t, "nowhere.at_all"), None);
    }

    #[test]
    fn scenario_file_works_as_config() {
        let text = r#"
name = "ten-users"
seed = 42
[account]
model = "gpt-4o-mini"
tier = 2
[images]
width_px = 1024
[[uploads]]
users = 10
[upstream]
server_error_rate = 0.1
[mock_server]
retry_after_ms = true
keys = [{ key = "sk-small", rpm = 3 }]
"#;
        let mut c = ServerConfig::default();
        c.apply_toml(text, "s.toml").unwrap();
        assert_eq!(c.seed, 42);
        assert_eq!(c.account.tier, Some(2));
        assert_eq!(c.upstream.server_error_rate, 0.1);
        assert!(c.retry_after_ms);
        assert_eq!(c.keys[0].account.rpm, Some(3));
        assert_eq!(c.keys[0].account.tier, Some(2));
        c.validate().unwrap();
    }

    #[test]
    fn host_is_an_ip_address_or_localhost() {
        assert_eq!(parse_host("localhost"), Ok(IpAddr::from([127, 0, 0, 1])));
        assert_eq!(parse_host("0.0.0.0"), Ok(IpAddr::from([0, 0, 0, 0])));
        assert_eq!(parse_host("::1"), Ok("::1".parse().unwrap()));
        assert!(
            parse_host("example.com")
                .unwrap_err()
                .contains("or localhost")
        );
    }

    /// A misspelt top-level table was ignored, so the mock ran on defaults without a word.
    #[test]
    fn an_unknown_top_level_table_or_key_is_refused_with_its_line() {
        let load = |t: &str| {
            ServerConfig::default()
                .apply_toml(t, "m.toml")
                .map_err(|e| e.to_string())
        };
        let e = load("seed = 1\n\n[acount]\ntier = 2\n").unwrap_err();
        assert!(
            e.starts_with("m.toml:3: acount: unknown top-level key or table (the mock reads account, upstream, mock_server, seed;"),
            "{e}"
        );
        let e = load("sead = 1\n").unwrap_err();
        assert!(e.starts_with("m.toml:1: sead: unknown"), "{e}");
        let e = load("[[upload]]\nusers = 1\n").unwrap_err();
        assert!(e.starts_with("m.toml:1: upload: unknown"), "{e}");
        let e = load("[upstreem.batch]\nfail_rate = 0\n").unwrap_err();
        assert!(e.starts_with("m.toml:1: upstreem: unknown"), "{e}");
        // A key of the same name inside a table is not the stray top-level one.
        let e = load("[mock_server]\nkeys = []\n\n[[keys]]\nkey = \"k\"\n").unwrap_err();
        assert!(e.starts_with("m.toml:4: keys: unknown"), "{e}");
        // A scenario's own tables are not the mock's, and stay allowed.
        load(
            "name = \"x\"\ndescription = \"y\"\n[images]\n[[uploads]]\n[policy]\n[prices]\n[sim]\n",
        )
        .unwrap();
    }

    /// A scripted list with an unknown kind is refused naming its field and line, not only
    /// the section (`[mock_server]: unknown variant` left the reader to search for it).
    #[test]
    fn unknown_script_kinds_name_the_field_and_line() {
        let load = |t: &str| {
            ServerConfig::default()
                .apply_toml(t, "f.toml")
                .unwrap_err()
                .to_string()
        };
        let e = load(
            "seed = 1\n[mock_server.transport]\nreset_rate = 0\nsequence = [\"ok\", \"boom\"]\n",
        );
        assert!(
            e.starts_with("f.toml:4: mock_server.transport.sequence: unknown variant `boom`"),
            "{e}"
        );
        let e = load("[upstream]\nfaults = [{ outcome = \"500\" }, { outcome = \"boom\" }]\n");
        assert!(
            e.starts_with("f.toml:2: upstream.faults: unknown variant `boom`"),
            "{e}"
        );
        let e = load("[account]\ntier = \"two\"\n");
        assert!(e.starts_with("f.toml:2: account.tier: invalid type"), "{e}");
    }

    #[test]
    fn errors_name_the_file_and_field() {
        let mut c = ServerConfig::default();
        let e = c
            .apply_toml("[upstream]\nbogus = 1", "x.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("x.toml:2: upstream.bogus: unknown field `bogus`"),
            "{e}"
        );
        let mut c = ServerConfig::default();
        c.apply_toml("[mock_server]\nkeys = [{ key = \"k\", tpm = 0 }]", "y.toml")
            .unwrap();
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "mock_server.keys[0].tpm: must be at least 1, got 0"
        );
        let mut c = ServerConfig::default();
        assert!(c.add_key_flag("sk:x").is_err());
        c.add_key_flag("sk-a:2").unwrap();
        c.add_key_flag("sk-b").unwrap();
        assert_eq!(c.keys[0].key, "sk-a");
        assert_eq!(c.keys[0].account.tier, Some(2));
        assert_eq!(c.keys[1].account.tier, Some(1));
    }

    /// The header read timeout stays 30 s unless a test shortens it, and is never zero.
    #[test]
    fn header_read_timeout_defaults_to_30_s_and_is_never_zero() {
        assert_eq!(
            ServerConfig::default().header_read_timeout,
            Duration::from_secs(30)
        );
        let c = ServerConfig {
            header_read_timeout: Duration::ZERO,
            ..ServerConfig::default()
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "header_read_timeout: must be more than zero"
        );
    }
}
