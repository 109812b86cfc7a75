//! Scenario files: the TOML schema, `--set` overrides, and validation errors that name the file, line and field.
//!
//! A scenario is read in three steps, all on the same path whether or not `--set` is used:
//!
//! 1. the text is parsed into a spanned document ([`toml::de::DeTable`]);
//! 2. every `--set path=value` edits that document (the value is parsed as TOML and given a
//!    span past the end of the file, so an error in it is reported against the `--set`);
//! 3. the typed [`ScenarioFile`] is deserialized from the edited document and checked field
//!    by field.
//!
//! Every error becomes one [`ScenarioError`] line: `file:line: field: message`.

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use crate::report::thousands;
use mock_openai::config::{AccountConfig, ConfigError, UpstreamConfig};
use serde::de;
use serde::{Deserialize, Serialize};
use tagstorm_core::cost::{PriceError, PriceTable};
use tagstorm_core::engine::MAX_IMAGES_PER_UPLOAD;
use tagstorm_core::tokens::Detail;
use tagstorm_core::{Policy, PolicyError};
use toml::Spanned;
use toml::de::{DeArray, DeString, DeTable, DeValue};

/// Longest time a scenario may mention (arrival offsets, durations), in seconds: 365 days.
/// Keeps every conversion to nanoseconds far from overflow.
pub const MAX_TIME_S: f64 = 365.0 * 86_400.0;

/// Most uploads one scenario may generate, so a typo in a rate can't exhaust memory.
pub const MAX_UPLOADS: u64 = 20_000_000;

/// Most images one scenario may generate, so a typo in a count can't exhaust memory. At the
/// cap a release build peaks near 2 GiB when uploads are large and near 5 GiB when every upload
/// is one image (measured at 5 M images: 477 MiB for `workday`'s uploads, 1.18 GiB for 5 M
/// one-image uploads). Debug builds keep every image URL and need several times more.
pub const MAX_IMAGES: u64 = 20_000_000;

/// The most `[[uploads]]` groups a scenario may have: each group draws from its own random
/// stream (`workload::streams::WORKLOAD` + its index), and the streams after it start 4,096
/// further on, so a 4,097th group would share the model's stream.
pub const MAX_GROUPS: usize = 4096;

/// A scenario as written in its file. Every field is documented with its unit; see
/// `scenarios/*.toml` for commented examples. A new top-level field also goes into
/// `mock_openai::server::config::SCENARIO_KEYS`, so the mock accepts the file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// Short identifier, shown in reports.
    pub name: String,
    /// Seed of every random choice of the run (workload, upstream model, core's jitter).
    pub seed: u64,
    /// One or two sentences on what the scenario models.
    #[serde(default)]
    pub description: String,
    /// The OpenAI organization: model and tier or explicit limits (mock-openai's section).
    pub account: AccountConfig,
    /// How the modelled OpenAI behaves: latency, faults, Batch API (mock-openai's section).
    #[serde(default)]
    pub upstream: UpstreamConfig,
    /// What one image request looks like.
    pub images: ImagesConfig,
    /// Who uploads what, when.
    pub uploads: Vec<UploadGroup>,
    /// Overrides applied on top of the chosen policy (same keys as core's `Policy`).
    #[serde(default)]
    pub policy: Option<toml::Table>,
    /// Prices in US dollars per million tokens and the batch discount (core's price table).
    #[serde(default)]
    pub prices: PriceTable,
    /// Simulator settings.
    #[serde(default)]
    pub sim: SimConfig,
}

/// The `[images]` section: what one image request looks like (core's `RequestShape` and
/// `ImageInput`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImagesConfig {
    /// Width of each image, in pixels.
    pub width_px: u32,
    /// Height of each image, in pixels.
    pub height_px: u32,
    /// `low` (the default), `high` or `auto`.
    #[serde(default)]
    pub detail: Detail,
    /// The request's `max_tokens`: the output tokens one answer may use, in tokens.
    pub output_tokens: u32,
    /// The text prompt sent with each image (default: core's tagging prompt).
    #[serde(default)]
    pub prompt: Option<String>,
    /// Bytes of each image URL as it appears in a batch line (default 200, a signed URL).
    #[serde(default = "default_url_bytes")]
    pub url_bytes: u32,
}

fn default_url_bytes() -> u32 {
    200
}

/// One `[[uploads]]` group: who uploads, how many images, and when. Exactly one arrival
/// pattern: `at_s`, `every_s`, `poisson` or `daily`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UploadGroup {
    /// Uploads of an `at_s` or `every_s` group: each user uploads once.
    #[serde(default)]
    pub users: Option<u64>,
    /// Workspaces the uploads belong to (default: one per user, or 1 for `poisson`/`daily`).
    /// Users take workspaces in turn; random arrivals pick one at random.
    #[serde(default)]
    pub workspaces: Option<u32>,
    /// Images per upload: a number, or a distribution.
    pub images: ImageCount,
    /// Every user uploads at this time, in seconds after the start.
    #[serde(default)]
    pub at_s: Option<f64>,
    /// User `i` uploads at `start_s + i × every_s`, in seconds.
    #[serde(default)]
    pub every_s: Option<f64>,
    /// Uploads arrive as a Poisson process.
    #[serde(default)]
    pub poisson: Option<Poisson>,
    /// Uploads arrive by a daily curve: a Poisson process whose rate follows hourly weights.
    #[serde(default)]
    pub daily: Option<Daily>,
    /// Start of `every_s`, `poisson` and `daily` arrivals, in seconds (default 0).
    #[serde(default)]
    pub start_s: Option<f64>,
    /// When each upload should be complete, in seconds after it starts (default: the policy's
    /// `deadline_ms`).
    #[serde(default)]
    pub deadline_s: Option<f64>,
}

/// Poisson arrivals: `{ per_hour = 120, for_s = 3600 }`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Poisson {
    /// Mean uploads per hour.
    pub per_hour: f64,
    /// How long arrivals last, in seconds: they fall in `[start_s, start_s + for_s)`.
    pub for_s: f64,
}

/// A daily curve: `{ uploads_per_day = 2000, hourly_weights = [24 numbers], days = 1 }`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Daily {
    /// Mean uploads per day.
    pub uploads_per_day: f64,
    /// Relative arrival rate of each hour of the day, 24 non-negative numbers (hour 0 first, from
    /// `start_s`): hour `h` of each day gets `uploads_per_day × weight / sum of weights` on
    /// average, and an hour of weight 0 none.
    pub hourly_weights: Vec<f64>,
    /// Days simulated (default 1).
    #[serde(default = "one")]
    pub days: u32,
}

fn one() -> u32 {
    1
}

/// Images per upload: a fixed number or a distribution (uniform, or heavy-tailed: lognormal,
/// Pareto).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ImageCount {
    /// Every upload has this many images.
    Fixed(u32),
    /// Each upload draws its size.
    Dist(SizeDist),
}

/// A distribution of upload sizes, in images. Draws are rounded and clamped to `[min, max]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SizeDist {
    /// Lognormal by median and 99th percentile: `{ kind = "lognormal", median = 20, p99 = 2000, max = 10000 }`.
    Lognormal {
        /// Median, in images.
        median: f64,
        /// 99th percentile, in images.
        p99: f64,
        /// Smallest upload, in images (default 1).
        #[serde(default = "one")]
        min: u32,
        /// Largest upload, in images.
        max: u32,
    },
    /// Pareto with scale `min` and shape `alpha`: `{ kind = "pareto", min = 5, alpha = 1.2, max = 10000 }`.
    Pareto {
        /// Smallest upload and the distribution's scale, in images.
        min: u32,
        /// Shape; smaller is heavier-tailed (must be > 0).
        alpha: f64,
        /// Largest upload, in images.
        max: u32,
    },
    /// Uniform between `min` and `max` images.
    Uniform {
        /// Smallest upload, in images.
        min: u32,
        /// Largest upload, in images.
        max: u32,
    },
}

impl<'de> Deserialize<'de> for ImageCount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ImageCount, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = ImageCount;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number of images or a table like { kind = \"lognormal\", median = 20, p99 = 2000, max = 10000 }")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ImageCount, E> {
                if v < 1 {
                    return Err(E::custom(format!("must be at least 1, got {v}")));
                }
                self.visit_u64(v as u64)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ImageCount, E> {
                u32::try_from(v)
                    .map(ImageCount::Fixed)
                    .map_err(|_| E::custom(format!("{v} is too large")))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<ImageCount, A::Error> {
                SizeDist::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(ImageCount::Dist)
            }
        }
        d.deserialize_any(V)
    }
}

/// The `[sim]` section: the simulator's own settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// Hard bound on virtual time, in seconds (default 259,200 = 3 days). Images still pending
    /// at the bound are reported as pending.
    pub max_duration_s: f64,
    /// Time to upload one batch input file, in milliseconds (default 1,000).
    pub file_upload_ms: f64,
    /// Time of one Batch API call (create, retrieve, download), in milliseconds (default 200).
    pub api_call_ms: f64,
    /// Time until a 429 reaches the client, in milliseconds (default 50: it is refused before
    /// any work).
    pub rate_limited_ms: f64,
    /// Enqueued batch tokens another client of the same organization holds at t = 0, in a
    /// batch of its own that runs its normal lifecycle (default 0). Core does not know.
    pub foreign_batch_tokens: u64,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            max_duration_s: 3.0 * 86_400.0,
            file_upload_ms: 1_000.0,
            api_call_ms: 200.0,
            rate_limited_ms: 50.0,
            foreign_batch_tokens: 0,
        }
    }
}

/// One step of a field path: a key or an array index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    /// A table key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// A field path such as `uploads[0].images`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldPath(pub Vec<Seg>);

impl FieldPath {
    /// Parses `uploads[0].images`, `uploads.0.images` or `upstream.faults[1]`.
    pub fn parse(s: &str) -> FieldPath {
        let mut segs = Vec::new();
        for part in s.split('.').filter(|p| !p.is_empty()) {
            let (key, mut rest) = match part.find('[') {
                Some(i) => (&part[..i], &part[i..]),
                None => (part, ""),
            };
            if !key.is_empty() {
                match key.parse::<usize>() {
                    Ok(i) if key.bytes().all(|b| b.is_ascii_digit()) => segs.push(Seg::Index(i)),
                    _ => segs.push(Seg::Key(key.to_owned())),
                }
            }
            while let Some(end) = rest.find(']') {
                if let Ok(i) = rest[1..end].parse::<usize>() {
                    segs.push(Seg::Index(i));
                }
                rest = &rest[end + 1..];
            }
        }
        FieldPath(segs)
    }

    /// Parses a `--set` path strictly: dot-separated keys (`A-Z a-z 0-9 _ -`), each optionally
    /// followed by `[index]`s; a key of digits only is an index. `None` if anything is left over.
    pub fn parse_strict(s: &str) -> Option<FieldPath> {
        let mut segs = Vec::new();
        for part in s.split('.') {
            let (key, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
            let bare = |k: &str| {
                !k.is_empty()
                    && k.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            };
            if !bare(key) {
                return None;
            }
            match key.parse::<usize>() {
                Ok(i) if key.bytes().all(|b| b.is_ascii_digit()) => segs.push(Seg::Index(i)),
                _ => segs.push(Seg::Key(key.to_owned())),
            }
            while !rest.is_empty() {
                let inner = rest.strip_prefix('[')?;
                let end = inner.find(']')?;
                let digits = &inner[..end];
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                segs.push(Seg::Index(digits.parse().ok()?));
                rest = &inner[end + 1..];
            }
        }
        Some(FieldPath(segs))
    }

    fn key(mut self, k: &str) -> FieldPath {
        self.0.push(Seg::Key(k.to_owned()));
        self
    }

    fn index(mut self, i: usize) -> FieldPath {
        self.0.push(Seg::Index(i));
        self
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A scenario that can't be used, located as precisely as the input allows.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("{file}: {message}")]
    Io {
        /// The file.
        file: String,
        /// Why.
        message: String,
    },
    /// A `--set` argument is malformed or names no field.
    #[error("--set {arg}: {message}")]
    BadSet {
        /// The argument as given.
        arg: String,
        /// Why.
        message: String,
    },
    /// The scenario is invalid: bad TOML, a wrong type, an unknown field or an impossible value.
    #[error("{}", located(.file, *.line, .set.as_deref(), .field, .message))]
    Invalid {
        /// The file.
        file: String,
        /// The 1-based line, when the fault is in the file.
        line: Option<usize>,
        /// The `--set` argument at fault, when the fault is in one.
        set: Option<String>,
        /// The field, e.g. `uploads[0].images` (empty for a syntax error).
        field: String,
        /// What is wrong, lower-case.
        message: String,
    },
}

fn located(file: &str, line: Option<usize>, set: Option<&str>, field: &str, msg: &str) -> String {
    let mut out = file.to_owned();
    if let Some(l) = line {
        out.push_str(&format!(":{l}"));
    }
    if let Some(s) = set {
        out.push_str(&format!(": --set {s}"));
    }
    if !field.is_empty() {
        out.push_str(&format!(": {field}"));
    }
    out.push_str(&format!(": {msg}"));
    out
}

/// One `--set path=value` override.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetArg {
    /// The argument as given.
    pub raw: String,
    /// The dotted path.
    pub path: FieldPath,
    /// The value's TOML text.
    pub value: String,
}

impl SetArg {
    /// Parses `path=value`.
    pub fn parse(raw: &str) -> Result<SetArg, ScenarioError> {
        let bad = |message: &str| ScenarioError::BadSet {
            arg: raw.to_owned(),
            message: message.to_owned(),
        };
        let (path, value) = raw
            .split_once('=')
            .ok_or_else(|| bad("expected key=value, e.g. --set account.tier=2"))?;
        let path = path.trim();
        if path.is_empty() {
            return Err(bad("the key is empty"));
        }
        let value = value.trim();
        if value.is_empty() {
            return Err(bad("the value is empty"));
        }
        let path = FieldPath::parse_strict(path).ok_or_else(|| {
            bad(&format!(
                "`{path}` is not a field path (e.g. uploads.0.images or uploads[0].images)"
            ))
        })?;
        Ok(SetArg {
            raw: raw.to_owned(),
            path,
            value: value.to_owned(),
        })
    }
}

/// A parsed scenario and what is needed to locate later errors in it (the policy is resolved
/// against a base chosen at run time).
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The file as named on the command line.
    pub file: String,
    /// The typed scenario, with `--set` applied.
    pub spec: ScenarioFile,
    text: String,
    sets: Vec<SetArg>,
}

/// Time in seconds as a `Duration` (the value is validated to be finite and in range).
pub fn secs(s: f64) -> Duration {
    Duration::from_nanos((s.clamp(0.0, MAX_TIME_S) * 1e9) as u64)
}

/// Time in milliseconds as a `Duration`.
pub fn millis(ms: f64) -> Duration {
    Duration::from_nanos((ms.clamp(0.0, MAX_TIME_S * 1e3) * 1e6) as u64)
}

impl Scenario {
    /// Reads and validates `file`, applying `sets` in order.
    pub fn load(file: &str, sets: &[SetArg]) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(file).map_err(|e| ScenarioError::Io {
            file: file.to_owned(),
            message: format!("cannot read: {}", e.to_string().to_lowercase()),
        })?;
        Scenario::from_text(file, &text, sets)
    }

    /// Validates a scenario given as text; `file` is only used in messages.
    pub fn from_text(file: &str, text: &str, sets: &[SetArg]) -> Result<Scenario, ScenarioError> {
        let loc = Locator { file, text, sets };
        let doc = loc.document()?;
        let spec: ScenarioFile = ScenarioFile::deserialize(toml::de::Deserializer::from(doc))
            .map_err(|e| loc.serde_error(&e))?;
        let s = Scenario {
            file: file.to_owned(),
            spec,
            text: text.to_owned(),
            sets: sets.to_vec(),
        };
        s.check()
            .map_err(|(path, msg)| s.locator().at(&path, msg))?;
        // Every preset must accept the scenario's policy overrides.
        s.policy(&Policy::tagstorm())?;
        Ok(s)
    }

    fn locator(&self) -> Locator<'_> {
        Locator {
            file: &self.file,
            text: &self.text,
            sets: &self.sets,
        }
    }

    /// The scenario's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The `--set` overrides applied to the file, in order.
    pub fn sets(&self) -> &[SetArg] {
        &self.sets
    }

    /// `base` with the scenario's `[policy]` overrides applied, validated.
    pub fn policy(&self, base: &Policy) -> Result<Policy, ScenarioError> {
        let loc = self.locator();
        let Some(over) = &self.spec.policy else {
            return Ok(base.clone());
        };
        let err =
            |key: &str, msg: String| loc.at(&FieldPath::default().key("policy").key(key), msg);
        let mut merged = toml::Table::try_from(base).map_err(|e| ScenarioError::Invalid {
            file: self.file.clone(),
            line: None,
            set: None,
            field: "policy".into(),
            message: e.to_string(),
        })?;
        for key in over.keys() {
            if !merged.contains_key(key) && !optional_policy_key(key) {
                return Err(err(key, format!("unknown policy field `{key}`")));
            }
        }
        for (key, value) in over {
            let mut one = merged.clone();
            one.insert(key.clone(), value.clone());
            if let Err(e) = Policy::deserialize(toml::Value::Table(one)) {
                return Err(err(key, first_line(&e.to_string())));
            }
        }
        merged.extend(over.clone());
        let policy = Policy::deserialize(toml::Value::Table(merged))
            .map_err(|e| err("", first_line(&e.to_string())))?;
        policy.validate().map_err(|e| match e {
            PolicyError::Invalid { field, message } if over.contains_key(&field) => {
                err(&field, message)
            }
            other => ScenarioError::Invalid {
                file: self.file.clone(),
                line: None,
                set: None,
                field: String::new(),
                message: format!("policy {:?}: {other}", base.name),
            },
        })?;
        Ok(policy)
    }

    /// Checks every value the types can't; the error names the field.
    fn check(&self) -> Result<(), (FieldPath, String)> {
        let s = &self.spec;
        let root = FieldPath::default;
        let cfg = |e: ConfigError| match e {
            ConfigError::Invalid { field, reason } => (FieldPath::parse(&field), reason),
            ConfigError::Parse { section, message } => (root().key(section), message),
        };
        if s.name.trim().is_empty() {
            return Err((root().key("name"), "must not be empty".into()));
        }
        s.account.validate().map_err(cfg)?;
        s.upstream.validate().map_err(cfg)?;
        if let Ok(limits) = s.account.resolve() {
            // A larger batch fails at once with `token_limit_exceeded` and holds nothing: the
            // opposite of what the field is for.
            let queue = limits.batch_queue_tokens.get();
            if s.sim.foreign_batch_tokens > queue {
                return Err((
                    root().key("sim").key("foreign_batch_tokens"),
                    format!(
                        "{} tokens do not fit the account's batch queue of {queue}: such a batch \
                         fails at once and holds nothing",
                        s.sim.foreign_batch_tokens
                    ),
                ));
            }
        }
        if s.upstream.image_charge_tokens == Some(0) {
            // Core refuses it too (as `request.image_charge_tokens`), but only when a run starts.
            return Err((
                root().key("upstream").key("image_charge_tokens"),
                "must be at least 1 when set".into(),
            ));
        }
        s.prices.validate().map_err(|e| {
            let at = match &e {
                PriceError::BadPrice { model, field, .. } => {
                    root().key("prices").key(&model.to_string()).key(field)
                }
                PriceError::BadDiscount { .. } => root().key("prices").key("batch_discount"),
            };
            (at, e.to_string())
        })?;
        let img = root().key("images");
        if s.images.width_px == 0 {
            return Err((img.key("width_px"), "must be at least 1".into()));
        }
        if s.images.height_px == 0 {
            return Err((img.key("height_px"), "must be at least 1".into()));
        }
        if s.images.output_tokens == 0 {
            return Err((img.key("output_tokens"), "must be at least 1".into()));
        }
        if s.images
            .prompt
            .as_deref()
            .is_some_and(|p| p.trim().is_empty())
        {
            return Err((img.key("prompt"), "must not be empty when given".into()));
        }
        let sim = root().key("sim");
        check_time(
            sim.clone().key("max_duration_s"),
            s.sim.max_duration_s,
            true,
        )?;
        for (k, v) in [
            ("file_upload_ms", s.sim.file_upload_ms),
            ("api_call_ms", s.sim.api_call_ms),
            ("rate_limited_ms", s.sim.rate_limited_ms),
        ] {
            // In milliseconds: the message shows the value as written, with its unit.
            if !v.is_finite() || v < 0.0 {
                return Err((
                    sim.clone().key(k),
                    format!("must be a finite number ≥ 0, got {v}"),
                ));
            }
            if v > MAX_TIME_S * 1e3 {
                return Err((
                    sim.clone().key(k),
                    format!("must be at most {} milliseconds, got {v}", MAX_TIME_S * 1e3),
                ));
            }
        }
        if s.uploads.is_empty() {
            return Err((
                root().key("uploads"),
                "needs at least one [[uploads]] group".into(),
            ));
        }
        if s.uploads.len() > MAX_GROUPS {
            return Err((
                root().key("uploads"),
                format!(
                    "{} [[uploads]] groups; at most {MAX_GROUPS} are supported",
                    s.uploads.len()
                ),
            ));
        }
        let mut expected = 0.0;
        let mut images = 0.0;
        for (i, g) in s.uploads.iter().enumerate() {
            let uploads = check_group(root().key("uploads").index(i), g)?;
            expected += uploads;
            images += uploads * mean_count(&g.images);
        }
        if expected > MAX_UPLOADS as f64 {
            return Err((
                root().key("uploads"),
                format!(
                    "about {} uploads expected; at most {} are supported",
                    approx(expected),
                    thousands(MAX_UPLOADS)
                ),
            ));
        }
        if images > MAX_IMAGES as f64 {
            return Err((
                root().key("uploads"),
                format!(
                    "about {} images expected; at most {} are supported",
                    approx(images),
                    thousands(MAX_IMAGES)
                ),
            ));
        }
        Ok(())
    }
}

/// An expected count, in digits while they are exact (`12,345,678`), else in three figures
/// (`1.84e19`: `u64::MAX` users made "about 18446744073709551616", one more than was set).
fn approx(v: f64) -> String {
    if v < 1e15 {
        thousands(v.round() as u64)
    } else {
        format!("{v:.2e}")
    }
}

/// A policy file (`--policy FILE.toml`) read by core's [`Policy::from_toml_str`], its errors
/// located as a scenario's are: one line, `file:line: field: message`.
pub fn policy_file(file: &str, text: &str) -> Result<Policy, ScenarioError> {
    let loc = Locator {
        file,
        text,
        sets: &[],
    };
    // Syntax errors and duplicate keys, with their line.
    loc.document()?;
    Policy::from_toml_str(text).map_err(|e| match e {
        PolicyError::Invalid { field, message } => loc.at(&FieldPath::parse(&field), message),
        // A value the document parser kept but toml's reader refuses (an integer past 64
        // bits): toml's own report, whose reason is its last line, names the line.
        PolicyError::Toml(m) if m.starts_with("TOML parse error at line ") => {
            let line: Option<usize> = m["TOML parse error at line ".len()..]
                .split(',')
                .next()
                .and_then(|n| n.trim().parse().ok());
            let key = line
                .and_then(|l| text.lines().nth(l.saturating_sub(1)))
                .and_then(|l| l.split_once('='))
                .map(|(k, _)| k.trim().trim_matches(['"', '\'']).to_owned())
                .unwrap_or_default();
            let reason = m.lines().last().unwrap_or_default();
            loc.at(&FieldPath::parse(&key), clean_message(reason))
        }
        PolicyError::Toml(m) => {
            // Core reads the file into a plain table first, so toml's message has no line; it
            // names the key as "in `key`" on a line of its own, or in the message itself.
            let message = clean_message(&m);
            let quoted = |prefix: &str| {
                message
                    .strip_prefix(prefix)
                    .and_then(|r| r.split('`').next())
                    .map(str::to_owned)
            };
            let key = m
                .lines()
                .find_map(|l| l.trim().strip_prefix("in `")?.strip_suffix('`'))
                .map(str::to_owned)
                .or_else(|| quoted("unknown field `"))
                .or_else(|| quoted("missing field `"))
                .unwrap_or_default();
            loc.at(&FieldPath::parse(&key), message)
        }
    })
}

fn optional_policy_key(key: &str) -> bool {
    // `Option` fields that a preset leaves unset do not appear in its serialized table.
    matches!(
        key,
        "workspace_rpm"
            | "workspace_tpm"
            | "poll_give_up_ms"
            | "batch_overdue_ms"
            | "workspace_batches_per_hour"
            | "workspace_images_per_hour"
    )
}

/// `1 entry`, `2 entries`.
fn entries(n: usize) -> String {
    if n == 1 {
        "1 entry".to_owned()
    } else {
        format!("{n} entries")
    }
}

fn first_line(s: &str) -> String {
    tagstorm_core::config::plain_message(s.lines().next().unwrap_or_default())
}

fn check_time(path: FieldPath, v: f64, positive: bool) -> Result<(), (FieldPath, String)> {
    if !v.is_finite() || v < 0.0 {
        return Err((path, format!("must be a finite number ≥ 0, got {v}")));
    }
    if positive && v == 0.0 {
        return Err((path, "must be greater than 0".into()));
    }
    if v > MAX_TIME_S {
        return Err((
            path,
            format!("must be at most {MAX_TIME_S} seconds, got {v}"),
        ));
    }
    Ok(())
}

/// Checks one group; returns the number of uploads it is expected to generate.
fn check_group(p: FieldPath, g: &UploadGroup) -> Result<f64, (FieldPath, String)> {
    let arrivals = [
        g.at_s.is_some(),
        g.every_s.is_some(),
        g.poisson.is_some(),
        g.daily.is_some(),
    ];
    match arrivals.iter().filter(|b| **b).count() {
        0 => {
            return Err((
                p,
                "needs an arrival pattern: at_s, every_s, poisson or daily".into(),
            ));
        }
        1 => {}
        _ => {
            return Err((
                p,
                "give exactly one of at_s, every_s, poisson and daily".into(),
            ));
        }
    }
    if g.workspaces == Some(0) {
        return Err((p.key("workspaces"), "must be at least 1".into()));
    }
    if let Some(d) = g.deadline_s {
        check_time(p.clone().key("deadline_s"), d, true)?;
    }
    if let Some(s) = g.start_s {
        if g.at_s.is_some() {
            return Err((
                p.key("start_s"),
                "only applies to every_s, poisson and daily; at_s is the start".into(),
            ));
        }
        check_time(p.clone().key("start_s"), s, false)?;
    }
    check_count(p.clone().key("images"), &g.images)?;
    let needs_users = g.at_s.is_some() || g.every_s.is_some();
    let expected = match (needs_users, g.users) {
        (true, None) => {
            return Err((
                p.key("users"),
                "required with at_s and every_s (each user uploads once)".into(),
            ));
        }
        (true, Some(0)) => return Err((p.key("users"), "must be at least 1".into())),
        (true, Some(u)) => u as f64,
        (false, Some(_)) => {
            return Err((
                p.key("users"),
                "only applies to at_s and every_s; poisson and daily set a rate".into(),
            ));
        }
        (false, None) => 0.0,
    };
    if let Some(t) = g.at_s {
        check_time(p.clone().key("at_s"), t, false)?;
        return Ok(expected);
    }
    if let Some(e) = g.every_s {
        check_time(p.clone().key("every_s"), e, true)?;
        if e * expected > MAX_TIME_S {
            return Err((
                p.key("every_s"),
                format!("users × every_s must be at most {MAX_TIME_S} seconds"),
            ));
        }
        check_end(&p, g, (expected - 1.0) * e)?;
        return Ok(expected);
    }
    if let Some(pp) = &g.poisson {
        let q = p.clone().key("poisson");
        check_rate(q.clone().key("per_hour"), pp.per_hour)?;
        check_time(q.key("for_s"), pp.for_s, true)?;
        check_end(&p, g, pp.for_s)?;
        return Ok(pp.per_hour * pp.for_s / 3600.0);
    }
    if let Some(d) = &g.daily {
        let q = p.clone().key("daily");
        check_rate(q.clone().key("uploads_per_day"), d.uploads_per_day)?;
        if d.hourly_weights.len() != 24 {
            return Err((
                q.key("hourly_weights"),
                format!(
                    "needs 24 values (one per hour), got {}",
                    d.hourly_weights.len()
                ),
            ));
        }
        for (h, w) in d.hourly_weights.iter().enumerate() {
            if !w.is_finite() || *w < 0.0 {
                return Err((
                    q.clone().key("hourly_weights").index(h),
                    format!("must be a finite number ≥ 0, got {w}"),
                ));
            }
        }
        let sum = d.hourly_weights.iter().sum::<f64>();
        if sum <= 0.0 {
            return Err((
                q.key("hourly_weights"),
                "at least one weight must be greater than 0".into(),
            ));
        }
        if !sum.is_finite() {
            // The weights are relative: an infinite sum made every hour's rate 0, no uploads.
            return Err((
                q.key("hourly_weights"),
                format!("the weights must add up to a finite number, got {sum}"),
            ));
        }
        if d.days == 0 || f64::from(d.days) * 86_400.0 > MAX_TIME_S {
            return Err((q.key("days"), "must be within 1..=365".into()));
        }
        check_end(&p, g, f64::from(d.days) * 86_400.0)?;
        return Ok(d.uploads_per_day * f64::from(d.days));
    }
    Ok(expected)
}

/// Refuses a group whose arrivals would run past [`MAX_TIME_S`]: `start_s` and the span are
/// each within it, but [`secs`] would move every later arrival to [`MAX_TIME_S`] exactly.
fn check_end(p: &FieldPath, g: &UploadGroup, span: f64) -> Result<(), (FieldPath, String)> {
    let end = g.start_s.unwrap_or(0.0) + span;
    if end > MAX_TIME_S {
        return Err((
            p.clone(),
            format!("start_s + the arrivals' span must be at most {MAX_TIME_S} seconds, got {end}"),
        ));
    }
    Ok(())
}

/// The mean upload size of a (validated) count, in images, draws clamped to `[min, max]` as
/// [`crate::workload::draw_count`] does (before its rounding to whole images).
pub fn mean_count(c: &ImageCount) -> f64 {
    match c {
        ImageCount::Fixed(n) => f64::from(*n),
        ImageCount::Dist(SizeDist::Uniform { min, max }) => {
            (f64::from(*min) + f64::from(*max)) / 2.0
        }
        ImageCount::Dist(SizeDist::Lognormal {
            median,
            p99,
            min,
            max,
        }) => {
            let sigma = (p99 / median).ln() / 2.326_347_874;
            clamped_lognormal_mean(*median, sigma, f64::from(*min), f64::from(*max))
        }
        ImageCount::Dist(SizeDist::Pareto { min, alpha, max }) => {
            // E[min(X, max)] = min + the integral from min to max of (min / x)^alpha.
            let (xm, m) = (f64::from(*min), f64::from(*max));
            let tail = if (alpha - 1.0).abs() < 1e-9 {
                xm * (m / xm).ln()
            } else {
                xm.powf(*alpha) * (m.powf(1.0 - alpha) - xm.powf(1.0 - alpha)) / (1.0 - alpha)
            };
            (xm + tail).clamp(xm, m)
        }
    }
}

/// E[clamp(X, a, b)] for X lognormal with median `median` and log-sd `sigma`:
/// a Φ(α) + e^(μ + σ²/2) (Φ(β − σ) − Φ(α − σ)) + b (1 − Φ(β)), with μ = ln median,
/// α = (ln a − μ) / σ and β = (ln b − μ) / σ. Clamping the unclamped mean instead overstated a
/// heavy tail cut by `max`: 141.9 images for workday's sizes, whose draws average 133.7.
fn clamped_lognormal_mean(median: f64, sigma: f64, a: f64, b: f64) -> f64 {
    // p99 = median (sigma 0): every draw is the median. A NaN sigma cannot pass validation.
    if sigma.is_nan() || sigma <= 0.0 {
        return median.clamp(a, b);
    }
    // Φ(z) = erfc(−z / √2) / 2, accurate in both tails (libm's erfc, not 1 − erf).
    let phi = |z: f64| libm::erfc(-z / std::f64::consts::SQRT_2) / 2.0;
    let mu = median.ln();
    let alpha = (a.ln() - mu) / sigma;
    let beta = (b.ln() - mu) / sigma;
    let body = (mu + sigma * sigma / 2.0).exp() * (phi(beta - sigma) - phi(alpha - sigma));
    (a * phi(alpha) + body + b * (1.0 - phi(beta))).clamp(a, b)
}

fn check_rate(path: FieldPath, v: f64) -> Result<(), (FieldPath, String)> {
    if !v.is_finite() || v <= 0.0 {
        return Err((path, format!("must be a finite number > 0, got {v}")));
    }
    if v > MAX_UPLOADS as f64 {
        return Err((path, format!("must be at most {MAX_UPLOADS}, got {v}")));
    }
    Ok(())
}

fn check_count(p: FieldPath, c: &ImageCount) -> Result<(), (FieldPath, String)> {
    let max_ok = MAX_IMAGES_PER_UPLOAD as u32;
    let check_max = |min: u32, max: u32| -> Result<(), (FieldPath, String)> {
        if max < min.max(1) {
            return Err((
                p.clone().key("max"),
                format!("must be at least min ({}), got {max}", min.max(1)),
            ));
        }
        if max > max_ok {
            return Err((
                p.clone().key("max"),
                format!("an upload carries at most {max_ok} images, got {max}"),
            ));
        }
        Ok(())
    };
    match c {
        ImageCount::Fixed(0) => Err((p, "must be at least 1".into())),
        ImageCount::Fixed(n) if *n > max_ok => Err((
            p,
            format!("an upload carries at most {max_ok} images, got {n}"),
        )),
        ImageCount::Fixed(_) => Ok(()),
        ImageCount::Dist(SizeDist::Lognormal {
            median,
            p99,
            min,
            max,
        }) => {
            if !median.is_finite() || *median < 1.0 {
                return Err((p.key("median"), format!("must be at least 1, got {median}")));
            }
            if !p99.is_finite() || p99 < median {
                return Err((
                    p.key("p99"),
                    format!("must be at least median ({median}), got {p99}"),
                ));
            }
            if *min == 0 {
                return Err((p.key("min"), "must be at least 1".into()));
            }
            check_max(*min, *max)
        }
        ImageCount::Dist(SizeDist::Pareto { min, alpha, max }) => {
            if *min == 0 {
                return Err((p.key("min"), "must be at least 1".into()));
            }
            if !alpha.is_finite() || *alpha <= 0.0 {
                return Err((
                    p.key("alpha"),
                    format!("must be a finite number > 0, got {alpha}"),
                ));
            }
            check_max(*min, *max)
        }
        ImageCount::Dist(SizeDist::Uniform { min, max }) => {
            if *min == 0 {
                return Err((p.key("min"), "must be at least 1".into()));
            }
            check_max(*min, *max)
        }
    }
}

/// Finds where a field or a parse error is, in the file or in a `--set`.
struct Locator<'a> {
    file: &'a str,
    text: &'a str,
    sets: &'a [SetArg],
}

impl<'a> Locator<'a> {
    /// Where `--set` number `k` lives in span space: past the end of the file.
    fn set_base(&self, k: usize) -> usize {
        self.text.len()
            + 1
            + self.sets[..k]
                .iter()
                .map(|s| s.value.len() + 1)
                .sum::<usize>()
    }

    fn set_at(&self, offset: usize) -> Option<&SetArg> {
        (0..self.sets.len())
            .find(|&k| {
                let b = self.set_base(k);
                offset >= b && offset <= b + self.sets[k].value.len()
            })
            .map(|k| &self.sets[k])
    }

    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    fn invalid(&self, span: Option<Range<usize>>, field: String, message: String) -> ScenarioError {
        let (line, set) = match span {
            Some(r) if r.start > self.text.len() => (None, self.set_at(r.start)),
            Some(r) => (Some(self.line_of(r.start)), None),
            None => (None, None),
        };
        ScenarioError::Invalid {
            file: self.file.to_owned(),
            line,
            set: set.map(|s| s.raw.clone()),
            field,
            message,
        }
    }

    /// The document with every `--set` applied.
    fn document(&self) -> Result<Spanned<DeTable<'a>>, ScenarioError> {
        let mut doc = DeTable::parse(self.text).map_err(|e| {
            // Name the field too, from what the parser could recover around the error.
            let (partial, _) = DeTable::parse_recoverable(self.text);
            let mut path = FieldPath::default();
            if let Some(span) = e.span() {
                path_at(partial.get_ref(), span.start, &mut path, true);
                // Recovery guesses; keep the field only when it sits on the error's line.
                let same_line = span_of(partial.get_ref(), &path.0)
                    .is_some_and(|k| self.line_of(k.start) == self.line_of(span.start));
                // A duplicate key's error is on the second one and recovery keeps the first:
                // the same field when the key at the error is the one found.
                let at_error = self
                    .text
                    .get(span.clone())
                    .map(|t| t.trim().trim_matches(['"', '\'']));
                let same_key = matches!(
                    (path.0.last(), at_error),
                    (Some(Seg::Key(k)), Some(t)) if k == t
                );
                if !same_line && !same_key {
                    path = FieldPath::default();
                }
            }
            self.invalid(e.span(), path.to_string(), clean_message(e.message()))
        })?;
        for (k, set) in self.sets.iter().enumerate() {
            let base = self.set_base(k);
            let value = DeValue::parse(&set.value).map_err(|e| ScenarioError::BadSet {
                arg: set.raw.clone(),
                message: format!("the value is not TOML: {}", clean_message(e.message())),
            })?;
            let value = reoffset(value, base);
            apply_set(
                doc.get_mut(),
                FieldPath::default(),
                &set.path.0,
                value,
                base..base + set.value.len(),
            )
            .map_err(|message| ScenarioError::Invalid {
                file: self.file.to_owned(),
                line: None,
                set: Some(set.raw.clone()),
                field: String::new(),
                message,
            })?;
        }
        Ok(doc)
    }

    /// A serde error from the typed deserialization, with its field named.
    fn serde_error(&self, e: &toml::de::Error) -> ScenarioError {
        let message = clean_message(e.message());
        let Some(span) = e.span() else {
            return self.invalid(None, String::new(), message);
        };
        let Ok(doc) = self.document() else {
            return self.invalid(Some(span), String::new(), message);
        };
        let mut path = FieldPath::default();
        let mut at = span.clone();
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next());
        // The entry whose key or value the error's span is: exact, where the nearest-key search
        // below guesses (it took the last key before a `[table]` header, and every value a
        // `--set` puts in the document lies past the end of the file).
        if let Some(found) = exact_path(doc.get_ref(), &span) {
            path = found;
        } else {
            path_at(doc.get_ref(), span.start, &mut path, true);
        }
        // An error from an internally tagged table (`kind = ...`) carries the table's span;
        // an unknown field is named in the message, so name it in the path too.
        let unknown = message
            .strip_prefix("unknown field `")
            .and_then(|m| m.split('`').next());
        if unknown.is_none()
            && missing.is_none()
            && let Some(DeValue::Table(t)) = value_at(doc.get_ref(), &path.0)
            && let Some(key) = culprit(t, &message)
        {
            // A wrong type or value inside such a table: the one entry that holds it.
            at = key.span();
            path = path.key(key.get_ref());
        }
        if let Some(k) = unknown {
            let seg = Seg::Key(k.to_owned());
            if let Some(i) = path.0.iter().rposition(|s| *s == seg) {
                // Tables a `--set` creates share its span: the unknown one ends the path.
                path.0.truncate(i + 1);
            } else if let Some(DeValue::Table(t)) = value_at(doc.get_ref(), &path.0)
                && let Some((key, _)) = t.get_key_value(k)
            {
                at = key.span();
                path = path.key(k);
            }
        }
        if let Some(missing) = missing {
            // A missing field belongs to a table: a field missing from the top level is
            // reported on a span whose start is the document's first key, which is a value,
            // not the table at fault.
            while !path.0.is_empty() && !holds_fields(doc.get_ref(), &path.0) {
                path.0.pop();
            }
            path = path.key(missing);
        }
        self.invalid(Some(at), path.to_string(), message)
    }

    /// An error about `path`, located at its key (or the nearest enclosing one present).
    fn at(&self, path: &FieldPath, message: String) -> ScenarioError {
        let span = self
            .document()
            .ok()
            .and_then(|doc| span_of(doc.get_ref(), &path.0));
        let mut e = self.invalid(span, path.to_string(), message);
        // A check of a whole table or list (`uploads`: too many uploads in all) is located at
        // its key in the file, but a `--set` inside it may be what tipped it: name the last one.
        if let ScenarioError::Invalid {
            set: set @ None, ..
        } = &mut e
        {
            *set = (self.sets.iter().rev())
                .find(|s| s.path.0.starts_with(&path.0))
                .map(|s| s.raw.clone());
        }
        e
    }
}

/// toml's messages end with a newline and sometimes start upper-case; one lower-case line.
fn clean_message(m: &str) -> String {
    let m = tagstorm_core::config::plain_message(m);
    let line = m
        .trim()
        .lines()
        .next()
        .unwrap_or_default()
        .trim_end_matches('.');
    // Lower-case the first letter of a sentence, not of an acronym ("TOML parse error").
    let mut c = line.chars();
    match (c.next(), c.clone().next()) {
        (Some(f), Some(g)) if g.is_uppercase() => std::iter::once(f).chain(c).collect(),
        (Some(f), _) => f.to_lowercase().chain(c).collect(),
        (None, _) => String::new(),
    }
}

fn reoffset<'i>(v: Spanned<DeValue<'i>>, base: usize) -> Spanned<DeValue<'i>> {
    let span = v.span();
    let shifted = base + span.start..base + span.end;
    let inner = match v.into_inner() {
        DeValue::Table(t) => {
            let mut out = DeTable::new();
            for (k, v) in t {
                let ks = k.span();
                out.insert(
                    Spanned::new(base + ks.start..base + ks.end, k.into_inner()),
                    reoffset(v, base),
                );
            }
            DeValue::Table(out)
        }
        DeValue::Array(a) => {
            let mut out = DeArray::new();
            for item in a.iter() {
                out.push(reoffset(item.clone(), base));
            }
            DeValue::Array(out)
        }
        other => other,
    };
    Spanned::new(shifted, inner)
}

fn apply_set<'i>(
    table: &mut DeTable<'i>,
    prefix: FieldPath,
    path: &[Seg],
    value: Spanned<DeValue<'i>>,
    span: Range<usize>,
) -> Result<(), String> {
    let Some((first, rest)) = path.split_first() else {
        return Err("the key is empty".into());
    };
    let Seg::Key(key) = first else {
        return Err("a path starts with a key, not an index".into());
    };
    if rest.is_empty() {
        let k = Spanned::new(span, std::borrow::Cow::Owned(key.clone()));
        table.remove(key.as_str());
        table.insert(k, value);
        return Ok(());
    }
    if table.get(key.as_str()).is_none() {
        // A missing table is created, so `--set policy.x=1` works without a [policy] section;
        // a key that belongs nowhere is then reported by the typed check, naming the --set.
        let k = Spanned::new(span.clone(), std::borrow::Cow::Owned(key.clone()));
        table.insert(
            k,
            Spanned::new(span.clone(), DeValue::Table(DeTable::new())),
        );
    }
    let Some(child) = table.get_mut(key.as_str()) else {
        return Err(format!("no field `{key}`"));
    };
    descend(child.get_mut(), prefix.key(key), rest, value, span)
}

/// Applies the rest of a `--set` path below `node`, which sits at `at` (named in errors).
fn descend<'i>(
    node: &mut DeValue<'i>,
    at: FieldPath,
    rest: &[Seg],
    value: Spanned<DeValue<'i>>,
    span: Range<usize>,
) -> Result<(), String> {
    match (node, &rest[0]) {
        (DeValue::Table(t), Seg::Key(_)) => apply_set(t, at, rest, value, span),
        (DeValue::Array(a), Seg::Index(i)) => {
            let len = a.len();
            let Some(item) = a.get_mut(*i) else {
                return Err(format!(
                    "`{at}` has {}; there is no index {i}",
                    entries(len)
                ));
            };
            if rest.len() == 1 {
                *item = value;
                return Ok(());
            }
            descend(item.get_mut(), at.index(*i), &rest[1..], value, span)
        }
        (DeValue::Array(a), Seg::Key(k)) => {
            if k.trim_start_matches('-')
                .bytes()
                .all(|b| b.is_ascii_digit())
            {
                // `uploads.-1` or an index past usize: no entry, not a key.
                return Err(format!(
                    "`{at}` has {}; there is no index {k}",
                    entries(a.len())
                ));
            }
            Err(format!("`{at}` is a list; use an index, e.g. {at}.0.{k}"))
        }
        (DeValue::Table(_), Seg::Index(_)) => Err(format!("`{at}` is a table, not a list")),
        (_, _) => Err(format!("`{at}` is not a table")),
    }
}

/// Whether `segs` names a table or an array of tables in `table`.
fn holds_fields(table: &DeTable<'_>, segs: &[Seg]) -> bool {
    let mut value: Option<&DeValue<'_>> = None;
    for seg in segs {
        let next = match (seg, value) {
            (Seg::Key(k), None) => table.get(k.as_str()).map(|v| v.get_ref()),
            (Seg::Key(k), Some(DeValue::Table(t))) => t.get(k.as_str()).map(|v| v.get_ref()),
            (Seg::Index(i), Some(DeValue::Array(a))) => a.get(*i).map(|v| v.get_ref()),
            _ => None,
        };
        let Some(next) = next else { return false };
        value = Some(next);
    }
    matches!(
        value,
        None | Some(DeValue::Table(_)) | Some(DeValue::Array(_))
    )
}

/// The path of the deepest key or value whose span contains `offset`.
fn path_at(table: &DeTable<'_>, offset: usize, path: &mut FieldPath, fallback: bool) {
    for (k, v) in table.iter() {
        if k.span().contains(&offset) {
            path.0.push(Seg::Key(k.get_ref().to_string()));
            return;
        }
        if v.span().contains(&offset) {
            path.0.push(Seg::Key(k.get_ref().to_string()));
            value_path_at(v.get_ref(), offset, path, fallback);
            return;
        }
    }
    if !fallback {
        return;
    }
    // Array-of-tables items and [table] bodies are not always inside their value's span:
    // fall back to the nearest key before the offset.
    let best = table
        .iter()
        .filter(|(k, _)| k.span().start <= offset)
        .max_by_key(|(k, _)| k.span().start);
    if let Some((k, v)) = best {
        path.0.push(Seg::Key(k.get_ref().to_string()));
        value_path_at(v.get_ref(), offset, path, fallback);
    }
}

fn value_path_at(v: &DeValue<'_>, offset: usize, path: &mut FieldPath, fallback: bool) {
    match v {
        DeValue::Table(t) => path_at(t, offset, path, fallback),
        DeValue::Array(a) => {
            let mut pick = None;
            for (i, item) in a.iter().enumerate() {
                if item.span().contains(&offset) {
                    pick = Some(i);
                    break;
                }
                if fallback && item.span().start <= offset {
                    pick = Some(i);
                }
            }
            if let Some(i) = pick {
                path.0.push(Seg::Index(i));
                value_path_at(a[i].get_ref(), offset, path, fallback);
            }
        }
        _ => {}
    }
}

/// The path of the deepest entry whose key or value has exactly `span`.
fn exact_path(table: &DeTable<'_>, span: &Range<usize>) -> Option<FieldPath> {
    fn in_value(v: &Spanned<DeValue<'_>>, at: FieldPath, span: &Range<usize>) -> Option<FieldPath> {
        let deeper = match v.get_ref() {
            DeValue::Table(t) => in_table(t, at.clone(), span),
            DeValue::Array(a) => a
                .iter()
                .enumerate()
                .find_map(|(i, item)| in_value(item, at.clone().index(i), span)),
            _ => None,
        };
        deeper.or_else(|| (v.span() == *span).then_some(at))
    }
    fn in_table(t: &DeTable<'_>, at: FieldPath, span: &Range<usize>) -> Option<FieldPath> {
        t.iter().find_map(|(k, v)| {
            let here = at.clone().key(k.get_ref());
            in_value(v, here.clone(), span).or_else(|| (k.span() == *span).then_some(here))
        })
    }
    in_table(table, FieldPath::default(), span)
}

/// The one entry of `t` holding the scalar a serde "invalid type: X, expected Y" or "invalid
/// value: X, expected Y" message names as X, if exactly one does.
fn culprit<'t, 'i>(t: &'t DeTable<'i>, message: &str) -> Option<&'t Spanned<DeString<'i>>> {
    let rest = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))?;
    let (unexpected, _) = rest.split_once(", expected ")?;
    let literal = |kind: &str| {
        unexpected
            .strip_prefix(kind)
            .and_then(|r| r.strip_prefix(" `"))
            .and_then(|r| r.strip_suffix('`'))
    };
    let shows = |v: &DeValue<'_>| match v {
        DeValue::String(s) => unexpected == format!("string {s:?}"),
        DeValue::Integer(i) => literal("integer").is_some_and(|n| {
            n.parse::<i128>().ok() == i128::from_str_radix(i.as_str(), i.radix()).ok()
        }),
        DeValue::Float(f) => literal("floating point").is_some_and(|x| {
            match (x.parse::<f64>(), f.as_str().parse::<f64>()) {
                (Ok(a), Ok(b)) => a == b || (a.is_nan() && b.is_nan()),
                _ => false,
            }
        }),
        DeValue::Boolean(b) => unexpected == format!("boolean `{b}`"),
        _ => false,
    };
    let mut hits = t.iter().filter(|(_, v)| shows(v.get_ref()));
    match (hits.next(), hits.next()) {
        (Some((k, _)), None) => Some(k),
        _ => None,
    }
}

/// The value at `path`, if there is one.
fn value_at<'t, 'i>(table: &'t DeTable<'i>, path: &[Seg]) -> Option<&'t DeValue<'i>> {
    let mut value: Option<&DeValue<'_>> = None;
    for seg in path {
        value = Some(match (seg, value) {
            (Seg::Key(k), None) => table.get(k.as_str())?.get_ref(),
            (Seg::Key(k), Some(DeValue::Table(t))) => t.get(k.as_str())?.get_ref(),
            (Seg::Index(i), Some(DeValue::Array(a))) => a.get(*i)?.get_ref(),
            _ => return None,
        });
    }
    value
}

/// The span of the key at `path`, or of the nearest enclosing entry that exists.
fn span_of(table: &DeTable<'_>, path: &[Seg]) -> Option<Range<usize>> {
    let (first, rest) = path.split_first()?;
    let Seg::Key(key) = first else {
        return None;
    };
    let (k, v) = table.get_key_value(key.as_str())?;
    if rest.is_empty() {
        return Some(k.span());
    }
    Some(value_span_of(v, rest).unwrap_or_else(|| k.span()))
}

fn value_span_of(v: &Spanned<DeValue<'_>>, rest: &[Seg]) -> Option<Range<usize>> {
    match (v.get_ref(), rest.first()?) {
        (DeValue::Table(t), Seg::Key(_)) => span_of(t, rest),
        (DeValue::Array(a), Seg::Index(i)) => {
            let item = a.get(*i)?;
            if rest.len() == 1 {
                return Some(item.span());
            }
            Some(value_span_of(item, &rest[1..]).unwrap_or_else(|| item.span()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"name = "t"
seed = 1

[account]
model = "gpt-4o-mini"
tier = 1

[images]
width_px = 1024
height_px = 768
detail = "low"
output_tokens = 60

[[uploads]]
users = 10
images = 15
at_s = 0
"#;

    fn check(text: &str, sets: &[&str], expect: &str) {
        let sets: Vec<SetArg> = sets.iter().map(|s| SetArg::parse(s).unwrap()).collect();
        let got = match Scenario::from_text("x.toml", text, &sets) {
            Ok(_) => "ok".to_owned(),
            Err(e) => e.to_string(),
        };
        assert_eq!(got, expect);
    }

    fn edit(from: &str, to: &str) -> String {
        assert!(BASE.contains(from), "{from}");
        BASE.replacen(from, to, 1)
    }

    #[test]
    fn valid_base() {
        check(BASE, &[], "ok");
    }

    /// Another client's batch larger than the account's batch queue (2,000,000 tokens at
    /// Tier 1) would fail at once and hold nothing: refused, on the line or `--set` that says so.
    #[test]
    fn foreign_batch_larger_than_the_queue_is_refused() {
        check(
            &format!("{BASE}\n[sim]\nforeign_batch_tokens = 2000000\n"),
            &[],
            "ok",
        );
        check(
            &format!("{BASE}\n[sim]\nforeign_batch_tokens = 2000001\n"),
            &[],
            "x.toml:20: sim.foreign_batch_tokens: 2000001 tokens do not fit the account's batch \
             queue of 2000000: such a batch fails at once and holds nothing",
        );
        check(
            BASE,
            &["sim.foreign_batch_tokens=2000001", "account.tier=2"],
            "ok",
        );
    }

    #[test]
    fn errors_name_file_line_and_field() {
        check(
            &edit(
                "[images]\nwidth_px = 1024\nheight_px = 768\ndetail = \"low\"\noutput_tokens = 60\n",
                "",
            ),
            &[],
            "x.toml:1: images: missing field `images`",
        );
        check(
            &edit("images = 15", "images = 0"),
            &[],
            "x.toml:16: uploads[0].images: must be at least 1, got 0",
        );
        check(
            &edit("users = 10", "users = 0"),
            &[],
            "x.toml:15: uploads[0].users: must be at least 1",
        );
        check(
            &edit("at_s = 0", "at_s = -5"),
            &[],
            "x.toml:17: uploads[0].at_s: must be a finite number ≥ 0, got -5",
        );
        check(
            &edit("tier = 1", "tier = 9"),
            &[],
            "x.toml:6: account.tier: no published limits for gpt-4o-mini tier 9 (known: 1, 2, 3, 4, 5)",
        );
        check(
            &edit("tier = 1", "tier = \"one\""),
            &[],
            "x.toml:6: account.tier: invalid type: string \"one\", expected a whole number from 0 to 255",
        );
        check(
            &edit("detail = \"low\"", "detail = \"low\"\ncolour = true"),
            &[],
            "x.toml:12: images.colour: unknown field `colour`, expected one of `width_px`, `height_px`, `detail`, `output_tokens`, `prompt`, `url_bytes`",
        );
        check(
            &format!("{BASE}\n[upstream]\nserver_error_rate = 1.5\n"),
            &[],
            "x.toml:20: upstream.server_error_rate: must be within 0..=1, got 1.5",
        );
        check(
            &edit("seed = 1", "seed = 1\n[oops"),
            &[],
            "x.toml:3: unclosed table, expected `]`",
        );
        check(
            &edit("width_px = 1024\n", ""),
            &[],
            "x.toml:8: images.width_px: missing field `width_px`",
        );
        check(
            &format!("{BASE}\n[policy]\nchunk_size = 0\n"),
            &[],
            "x.toml:20: policy.chunk_size: must be at least 1",
        );
        check(
            &format!("{BASE}\n[policy]\nchunk_sise = 3\n"),
            &[],
            "x.toml:20: policy.chunk_sise: unknown policy field `chunk_sise`",
        );
        check(
            &edit("at_s = 0", "at_s = 0\nevery_s = 3"),
            &[],
            "x.toml:14: uploads[0]: give exactly one of at_s, every_s, poisson and daily",
        );
    }

    #[test]
    fn huge_workloads_are_refused_before_they_exhaust_memory() {
        // 20 million uploads of a million images each passed validation, and the run then
        // aborted allocating its per-image tables.
        check(
            BASE,
            &["uploads.0.users=20000000", "uploads.0.images=1000000"],
            "x.toml:14: --set uploads.0.images=1000000: uploads: about 20,000,000,000,000 images \
             expected; at most 20,000,000 are supported",
        );
        // Past 2^53 the count is no longer exact in digits (u64::MAX read one more).
        check(
            BASE,
            &["uploads.0.users=18446744073709551615"],
            "x.toml:14: --set uploads.0.users=18446744073709551615: uploads: about 1.84e19 uploads \
             expected; at most 20,000,000 are supported",
        );
        check(
            &edit(
                "images = 15",
                "images = { kind = \"uniform\", min = 500000, max = 1000000 }",
            ),
            &["uploads.0.users=1000"],
            "x.toml:14: --set uploads.0.users=1000: uploads: about 750,000,000 images expected; at \
             most 20,000,000 are supported",
        );
    }

    #[test]
    fn a_number_past_tomls_integers_says_so() {
        // From 2^63 to u64::MAX toml said only "u64 value was too large".
        check(
            BASE,
            &["policy.retry_base_delay_ms=18446744073709551615"],
            "x.toml: --set policy.retry_base_delay_ms=18446744073709551615: \
             policy.retry_base_delay_ms: a whole number larger than TOML's largest integer, \
             9223372036854775807",
        );
    }

    #[test]
    fn more_groups_than_random_streams_are_refused() {
        let group = "\n[[uploads]]\nusers = 1\nimages = 1\nat_s = 0\n";
        let mut text = BASE.to_owned();
        for _ in 1..MAX_GROUPS {
            text.push_str(group);
        }
        check(&text, &[], "ok");
        text.push_str(group);
        check(
            &text,
            &[],
            "x.toml:14: uploads: 4097 [[uploads]] groups; at most 4096 are supported",
        );
    }

    #[test]
    fn a_policy_value_past_64_bits_names_its_line_and_field() {
        let e = policy_file(
            "p.toml",
            "extends = \"tagstorm\"\nchunk_size = 99999999999999999999\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("p.toml:2: chunk_size: "), "{e}");
        assert!(!e.contains("tOML"), "{e}");
    }

    #[test]
    fn a_duplicate_key_names_its_field() {
        check(
            &edit("width_px = 1024", "width_px = 1024\nwidth_px = 5"),
            &[],
            "x.toml:10: images.width_px: duplicate key",
        );
        check(
            &edit("seed = 1", "seed = 1\nseed = 2"),
            &[],
            "x.toml:3: seed: duplicate key",
        );
        check(
            &format!("{BASE}\n[[uploads]]\nusers = 1\nimages = 2\nat_s = 3\nat_s = 4\n"),
            &[],
            "x.toml:23: uploads[1].at_s: duplicate key",
        );
    }

    #[test]
    fn a_bad_sim_time_shows_the_value_as_written() {
        // `api_call_ms = -5` said "got -0.005", and a huge one was measured in seconds.
        check(
            BASE,
            &["sim.api_call_ms=-5"],
            "x.toml: --set sim.api_call_ms=-5: sim.api_call_ms: must be a finite number ≥ 0, got -5",
        );
        check(
            &format!("{BASE}\n[sim]\nfile_upload_ms = 1e12\n"),
            &[],
            "x.toml:20: sim.file_upload_ms: must be at most 31536000000 milliseconds, got 1000000000000",
        );
    }

    #[test]
    fn a_bad_price_names_its_field() {
        // The field was `prices`, whatever the price.
        check(
            &format!("{BASE}\n[prices]\nbatch_discount = 5\n"),
            &[],
            "x.toml:20: prices.batch_discount: batch_discount must be between 0 and 1, got 5",
        );
        check(
            &format!(
                "{BASE}\n[prices.gpt-4o]\ninput_usd_per_mtok = -1\noutput_usd_per_mtok = 10\n"
            ),
            &[],
            "x.toml:20: prices.gpt-4o.input_usd_per_mtok: gpt-4o input_usd_per_mtok must be a finite non-negative number, got -1",
        );
    }

    #[test]
    fn a_policy_file_error_names_its_line_and_field() {
        // Core's message was printed as is: no line, and over two or five lines.
        let got = |text: &str| policy_file("p.toml", text).unwrap_err().to_string();
        assert_eq!(
            got("extends = \"tagstorm\"\nchunk_size = \"x\"\n"),
            "p.toml:2: chunk_size: invalid type: string \"x\", expected a whole number from 0 to 4294967295"
        );
        assert_eq!(
            got("extends = \"tagstorm\"\n\nchunk_size = 0\n"),
            "p.toml:3: chunk_size: must be at least 1"
        );
        assert!(
            got("extends = \"tagstorm\"\nchunk_sise = 3\n")
                .starts_with("p.toml:2: chunk_sise: unknown field `chunk_sise`, expected one of")
        );
        assert_eq!(
            got("extends = \"tagstorm\"\nchunk_size = [\n"),
            "p.toml:2: chunk_size: unclosed array, expected `]`"
        );
        assert!(policy_file("p.toml", "extends = \"tagstorm\"\nchunk_size = 3\n").is_ok());
    }

    #[test]
    fn daily_weights_whose_sum_overflows_are_refused() {
        // Two weights of 1e308 passed; their sum was infinite, so the day generated 0 uploads.
        let mut weights = vec!["0"; 24];
        weights[0] = "1e308";
        weights[1] = "1e308";
        check(
            BASE,
            &[&format!(
                "uploads.0={{ images = 1, daily = {{ uploads_per_day = 1000, hourly_weights = [{}] }} }}",
                weights.join(", ")
            )],
            &format!(
                "x.toml: --set uploads.0={{ images = 1, daily = {{ uploads_per_day = 1000, hourly_weights = [{}] }} }}: uploads[0].daily.hourly_weights: the weights must add up to a finite number, got inf",
                weights.join(", ")
            ),
        );
    }

    #[test]
    fn a_zero_image_charge_is_refused_at_its_field() {
        // It passed validation (`validate` said ok), then `run` failed with core's
        // "request.image_charge_tokens", a field no scenario has, and no file or line.
        check(
            &format!("{BASE}\n[upstream]\nimage_charge_tokens = 0\n"),
            &[],
            "x.toml:20: upstream.image_charge_tokens: must be at least 1 when set",
        );
    }

    #[test]
    fn start_s_with_at_s_is_refused_not_ignored() {
        // `at_s = 0` with `start_s = 3600` arrived at 0: start_s was silently dropped.
        check(
            &edit("at_s = 0", "at_s = 0\nstart_s = 3600"),
            &[],
            "x.toml:18: uploads[0].start_s: only applies to every_s, poisson and daily; at_s is the start",
        );
    }

    #[test]
    fn a_size_distribution_that_could_draw_0_or_past_the_cap_is_refused_at_its_field() {
        let images = |c: &str| edit("images = 15", &format!("images = {c}"));
        for (c, expect) in [
            (
                "{ kind = \"uniform\", min = 9, max = 3 }",
                "uploads[0].images.max: must be at least min (9), got 3",
            ),
            (
                "{ kind = \"uniform\", min = 0, max = 3 }",
                "uploads[0].images.min: must be at least 1",
            ),
            (
                "{ kind = \"lognormal\", median = 20, p99 = 2000, min = 50, max = 40 }",
                "uploads[0].images.max: must be at least min (50), got 40",
            ),
            (
                "{ kind = \"lognormal\", median = 20, p99 = 10, max = 40 }",
                "uploads[0].images.p99: must be at least median (20), got 10",
            ),
            (
                "{ kind = \"lognormal\", median = 0.5, p99 = 10, max = 40 }",
                "uploads[0].images.median: must be at least 1, got 0.5",
            ),
            (
                "{ kind = \"lognormal\", median = 20, p99 = 2000, max = 0 }",
                "uploads[0].images.max: must be at least min (1), got 0",
            ),
            (
                "{ kind = \"pareto\", min = 5, alpha = 0, max = 40 }",
                "uploads[0].images.alpha: must be a finite number > 0, got 0",
            ),
            (
                "{ kind = \"pareto\", min = 5, alpha = 1.2, max = 1000001 }",
                "uploads[0].images.max: an upload carries at most 1000000 images, got 1000001",
            ),
            (
                "1000001",
                "uploads[0].images: an upload carries at most 1000000 images, got 1000001",
            ),
        ] {
            check(&images(c), &[], &format!("x.toml:16: {expect}"));
        }
        check(
            &images("{ kind = \"pareto\", min = 5, alpha = 1.2, max = 1000000 }"),
            &[],
            "ok",
        );
    }

    #[test]
    fn arrivals_that_would_end_past_365_days_are_refused_not_moved() {
        // Each of start_s and the arrivals' span passed on its own, and every arrival past 365
        // days was moved to 365 days exactly: of 100 users every 3 days from day 200, the last 44.
        let group = |arrival: &str| {
            edit(
                "users = 10\nimages = 15\nat_s = 0",
                &format!("images = 1\nstart_s = 17280000\n{arrival}"),
            )
        };
        check(
            &group("users = 100\nevery_s = 259200"),
            &[],
            "x.toml:14: uploads[0]: start_s + the arrivals' span must be at most 31536000 seconds, got 42940800",
        );
        check(
            &group("poisson = { per_hour = 1, for_s = 17280000 }"),
            &[],
            "x.toml:14: uploads[0]: start_s + the arrivals' span must be at most 31536000 seconds, got 34560000",
        );
        check(
            &group(
                "daily = { uploads_per_day = 1, hourly_weights = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], days = 200 }",
            ),
            &[],
            "x.toml:14: uploads[0]: start_s + the arrivals' span must be at most 31536000 seconds, got 34560000",
        );
        // Up to the bound is fine: the last every_s user at start_s + (users - 1) × every_s.
        check(&group("users = 2\nevery_s = 14256000"), &[], "ok");
        check(
            &group("poisson = { per_hour = 1, for_s = 14256000 }"),
            &[],
            "ok",
        );
    }

    #[test]
    fn a_malformed_set_path_is_refused_and_named() {
        // `uploads[0]x.images` was read as `uploads[0].images`, the `x` dropped silently.
        for bad in [
            "uploads[0]x.images=3",
            "uploads[zero].images=3",
            "uploads[0.images=3",
        ] {
            let e = SetArg::parse(bad).unwrap_err().to_string();
            assert_eq!(
                e,
                format!(
                    "--set {bad}: `{}` is not a field path (e.g. uploads.0.images or uploads[0].images)",
                    bad.split('=').next().unwrap()
                )
            );
        }
        assert!(SetArg::parse("upstream.faults[1].count=3").is_ok());
        // An index into something that is not a list names the path that isn't one.
        check(
            BASE,
            &["uploads.0.0=1"],
            "x.toml: --set uploads.0.0=1: `uploads[0]` is a table, not a list",
        );
        // A negative or oversized index was taken for a key: "use an index, e.g. uploads.0.-1".
        check(
            BASE,
            &["uploads.-1.images=3"],
            "x.toml: --set uploads.-1.images=3: `uploads` has 1 entry; there is no index -1",
        );
        check(
            BASE,
            &["uploads.99999999999999999999.images=3"],
            "x.toml: --set uploads.99999999999999999999.images=3: `uploads` has 1 entry; there is no index 99999999999999999999",
        );
        check(
            BASE,
            &["upstream.faults.0=1"],
            "x.toml: --set upstream.faults.0=1: `upstream.faults` is a table, not a list",
        );
        check(
            BASE,
            &["uploads.0.images.kind=\"pareto\""],
            "x.toml: --set uploads.0.images.kind=\"pareto\": `uploads[0].images` is not a table",
        );
    }

    #[test]
    fn a_set_of_the_wrong_type_names_its_own_field() {
        // A table the file lacks was named instead (`sim`, `upstream`), and a key the file has
        // was located by the nearest key before the end of the file: `uploads[0].at_s`.
        check(
            BASE,
            &["sim.max_duration_s=\"1y\""],
            "x.toml: --set sim.max_duration_s=\"1y\": sim.max_duration_s: invalid type: string \"1y\", expected a number",
        );
        check(
            BASE,
            &["upstream.server_error_rate=\"x\""],
            "x.toml: --set upstream.server_error_rate=\"x\": upstream.server_error_rate: invalid type: string \"x\", expected a number",
        );
        check(
            BASE,
            &["account.tier=300"],
            "x.toml: --set account.tier=300: account.tier: invalid value: integer `300`, expected a whole number from 0 to 255",
        );
        check(
            BASE,
            &["upstream.latency.kind=\"fixed\""],
            "x.toml: --set upstream.latency.kind=\"fixed\": upstream.latency.ms: missing field `ms`",
        );
        check(
            BASE,
            &["a.b.c=1"],
            "x.toml: --set a.b.c=1: a: unknown field `a`, expected one of `name`, `seed`, `description`, `account`, `upstream`, `images`, `uploads`, `policy`, `prices`, `sim`",
        );
    }

    #[test]
    fn a_bad_entry_of_a_kind_table_names_the_entry_and_its_line() {
        // Tables with `kind = ...` lose their entries' spans: the error named the whole table,
        // or, for a `[table]` section, the last key of the file before it (`uploads[0].at_s`).
        check(
            &edit(
                "images = 15",
                "images = { kind = \"uniform\", min = \"one\", max = 3 }",
            ),
            &[],
            "x.toml:16: uploads[0].images.min: invalid type: string \"one\", expected a whole number from 0 to 4294967295",
        );
        check(
            &edit(
                "images = 15",
                "images = { kind = \"uniform\", min = 1, max = 3, mean = 2 }",
            ),
            &[],
            "x.toml:16: uploads[0].images.mean: unknown field `mean`, expected `min` or `max`",
        );
        let latency = "\n[upstream.latency]\nkind = \"lognormal\"\nmedian_ms = 3000\n";
        check(
            &format!("{BASE}{latency}p99_ms = \"x\"\n"),
            &[],
            "x.toml:22: upstream.latency.p99_ms: invalid type: string \"x\", expected a number",
        );
        check(
            &format!("{BASE}{latency}p99_ms = 9000\ncolour = 1\n"),
            &[],
            "x.toml:23: upstream.latency.colour: unknown field `colour`, expected one of `median_ms`, `p99_ms`, `min_ms`, `max_ms`",
        );
        check(
            BASE,
            &["uploads.0.images={ kind = \"pareto\", min = 1, max = 3, alpha = true }"],
            "x.toml: --set uploads.0.images={ kind = \"pareto\", min = 1, max = 3, alpha = true }: uploads[0].images.alpha: invalid type: boolean `true`, expected a number",
        );
    }

    #[test]
    fn sets_edit_the_document() {
        check(
            BASE,
            &["account.tier=2", "uploads.0.images=30", "seed=7"],
            "ok",
        );
        check(BASE, &["policy.realtime_chunked_max=50"], "ok");
        check(
            BASE,
            &["uploads.0.images=0"],
            "x.toml: --set uploads.0.images=0: uploads[0].images: must be at least 1, got 0",
        );
        check(
            BASE,
            &["accout.tier=2"],
            "x.toml: --set accout.tier=2: accout: unknown field `accout`, expected one of `name`, `seed`, `description`, `account`, `upstream`, `images`, `uploads`, `policy`, `prices`, `sim`",
        );
        check(
            BASE,
            // With several scenario files, an index valid in one and not in another says which.
            &["uploads.3.images=1"],
            "x.toml: --set uploads.3.images=1: `uploads` has 1 entry; there is no index 3",
        );
        check(
            BASE,
            &["policy.chunk_size=0"],
            "x.toml: --set policy.chunk_size=0: policy.chunk_size: must be at least 1",
        );
        check(
            BASE,
            &["uploads.0.images={ kind = \"lognormal\", median = 20, p99 = 2000, max = 10000 }"],
            "ok",
        );
    }
}
