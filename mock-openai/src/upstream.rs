//! [`Upstream`]: the whole modelled OpenAI service — organizations, realtime limits, batches
//! and files — advanced lazily by the `now` each call passes in.

use rand::SeedableRng;
use rand_pcg::Pcg64;
use rustc_hash::FxHashMap;
use tagstorm_core::Time;
use tagstorm_core::account::AccountLimits;
use tagstorm_core::tokens::Model;

use crate::batch::BatchState;
use crate::config::{AccountConfig, ConfigError, UpstreamConfig};
use crate::files::StoredFile;
use crate::ids;
use crate::latency::Sampler;
use crate::org::{Org, OrgId};

/// Most organizations one model holds.
pub const MAX_ORGS: usize = 1 << 16;

/// The modelled OpenAI service. Sans-IO: every call takes `now`, nothing reads a clock, and
/// all randomness comes from the seed given to [`Upstream::new`].
///
/// `now` should not go backwards between calls; an earlier `now` is treated as the latest one
/// seen, so limits and batch states never run backwards either.
#[derive(Debug)]
pub struct Upstream {
    pub(crate) config: UpstreamConfig,
    /// `config.latency`, ready to draw from.
    pub(crate) latency: Sampler,
    pub(crate) seed: u64,
    pub(crate) orgs: Vec<Org>,
    pub(crate) batches: Vec<BatchState>,
    /// FxHash, not SipHash: every key is an id the model made itself (`batch_` or `file-` and
    /// SplitMix64 output from the seed and a counter), never one a client chose. The HTTP
    /// server's clients only look ids up, and flooding a table takes inserted keys that
    /// collide; a lookup of any string walks probes that the model's own keys, spread at
    /// random, make. SipHash here (batch polls, file ids) cost the simulator 27 instructions an
    /// event on the million-image day (2,442 → 2,415), for no protection the server needs.
    pub(crate) batch_by_id: FxHashMap<String, usize>,
    pub(crate) files: Vec<StoredFile>,
    /// FxHash, for the reason `batch_by_id` gives.
    pub(crate) file_by_id: FxHashMap<String, usize>,
    /// Realtime latencies and faults.
    pub(crate) rng_chat: Pcg64,
    /// Cancellation delays (batch timelines use one generator per batch).
    pub(crate) rng_batch: Pcg64,
    pub(crate) last_now: Time,
    /// The server's wall clock, for the timestamps the model renders into files itself.
    pub(crate) wall: Option<WallClock>,
    /// Whether answers carry the `x-ratelimit-reset-*` durations (see
    /// [`Upstream::set_reset_headers`]).
    pub(crate) reset_headers: bool,
}

/// How a real-time driver maps model time onto the wall clock: model `Time::ZERO` is
/// `unix_start_ms`, and model time runs `speedup` times faster than real time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WallClock {
    /// Wall-clock Unix time at model `Time::ZERO`, in milliseconds.
    pub unix_start_ms: u64,
    /// Model seconds per real second.
    pub speedup: f64,
}

impl WallClock {
    /// Converts a Unix timestamp the model rendered (`model_epoch_s` + model seconds) into
    /// wall-clock seconds: start + model elapsed ÷ speedup.
    pub fn unix_from_model(&self, model_unix_s: u64, model_epoch_s: u64) -> u64 {
        let model_ms = model_unix_s.saturating_sub(model_epoch_s) as f64 * 1000.0;
        let real_ms = (model_ms / self.speedup) as u64;
        self.unix_start_ms.saturating_add(real_ms) / 1000
    }
}

/// Seeds one named random stream, so streams are independent of each other's use.
pub(crate) fn stream(seed: u64, name: u64) -> Pcg64 {
    Pcg64::seed_from_u64(ids::mix(seed, 0x5eed_0000 + name, 0))
}

impl Upstream {
    /// A model with no organizations yet; `config` is validated first.
    pub fn new(config: UpstreamConfig, seed: u64) -> Result<Upstream, ConfigError> {
        config.validate()?;
        Ok(Upstream {
            latency: config.latency.sampler(),
            config,
            seed,
            orgs: Vec::new(),
            batches: Vec::new(),
            batch_by_id: FxHashMap::default(),
            files: Vec::new(),
            file_by_id: FxHashMap::default(),
            rng_chat: stream(seed, 1),
            rng_batch: stream(seed, 2),
            last_now: Time::ZERO,
            wall: None,
            reset_headers: true,
        })
    }

    /// Turns the `x-ratelimit-reset-*` durations of answers on or off (on by default); off,
    /// `reset_requests` and `reset_tokens` are zero. Each takes a division on every request,
    /// and a simulator that reads only the `remaining-*` values turns them off. Nothing else
    /// changes: limits, retry-after and 429 bodies are worked out as before.
    pub fn set_reset_headers(&mut self, on: bool) {
        self.reset_headers = on;
    }

    /// Adds an organization with the limits `account` resolves to. Models other than
    /// `account.model` get the published limits of the same tier (or the same numbers where
    /// that tier has none), each in buckets of their own.
    pub fn add_org(&mut self, account: &AccountConfig) -> Result<OrgId, ConfigError> {
        let limits = account.resolve()?;
        self.push_org(limits, account.tier)
    }

    /// Adds an organization with explicit limits; other models get the same numbers, each in
    /// buckets of their own.
    pub fn add_org_with_limits(&mut self, limits: AccountLimits) -> Result<OrgId, ConfigError> {
        self.push_org(limits, None)
    }

    fn push_org(&mut self, limits: AccountLimits, tier: Option<u8>) -> Result<OrgId, ConfigError> {
        if self.orgs.len() >= MAX_ORGS {
            return Err(ConfigError::invalid(
                "account",
                format!("at most {MAX_ORGS} organizations"),
            ));
        }
        let index = u32::try_from(self.orgs.len()).unwrap_or(u32::MAX);
        let name = format!(
            "org-{}",
            ids::alnum(ids::mix(self.seed, ids::ns::ORG, u64::from(index)), 24)
        );
        self.orgs.push(Org::new(name, limits, tier));
        Ok(OrgId(index))
    }

    /// The configuration in force.
    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    /// Replaces the configuration (latency, faults, batch behaviour) from the next call on,
    /// after validating it; on error nothing changes. Random streams continue where they
    /// were, and existing batches keep the timelines they were created with.
    pub fn set_config(&mut self, config: UpstreamConfig) -> Result<(), ConfigError> {
        config.validate()?;
        // A script set while running counts from now: "fail the next 2" means the next 2, not
        // the 2 after however many requests the server has already seen.
        let new_faults = config.faults != self.config.faults;
        let new_batch_script = config.batch.batch_outcomes != self.config.batch.batch_outcomes;
        for o in &mut self.orgs {
            if new_faults {
                o.requests_seen = 0;
            }
            if new_batch_script {
                o.batches_created = 0;
            }
        }
        self.latency = config.latency.sampler();
        self.config = config;
        Ok(())
    }

    /// The organization's name (`org-…`), as 429 messages show it.
    pub fn org_name(&self, org: OrgId) -> Option<&str> {
        self.orgs.get(org.0 as usize).map(|o| o.name.as_str())
    }

    /// The organization's resolved limits, for its configured model.
    pub fn org_limits(&self, org: OrgId) -> Option<&AccountLimits> {
        self.orgs.get(org.0 as usize).map(|o| &o.limits)
    }

    /// The limits the organization has for `model` (each model counts in buckets of its own).
    pub fn model_limits(&self, org: OrgId, model: Model) -> Option<&AccountLimits> {
        self.orgs
            .get(org.0 as usize)
            .map(|o| &o.model(model).limits)
    }

    /// Batch input tokens the organization has enqueued at `now`, over every model.
    pub fn enqueued_tokens(&mut self, now: Time, org: OrgId) -> Option<u64> {
        let now = self.advance(now);
        self.release_ended(now, org);
        self.orgs.get(org.0 as usize).map(Org::enqueued)
    }

    /// Unix seconds of `t` (facts §5 timestamps): `epoch_unix_s` plus whole seconds since
    /// `Time::ZERO`.
    pub fn unix_s(&self, t: Time) -> u64 {
        self.config
            .epoch_unix_s
            .saturating_add(t.as_nanos() / 1_000_000_000)
    }

    /// Renders the `created` of batch output lines on `wall` instead of `epoch_unix_s` + model
    /// seconds, so they agree with the batch timestamps a real-time server reports.
    pub fn set_wall_clock(&mut self, wall: WallClock) {
        self.wall = Some(wall);
    }

    /// The Unix seconds of a timestamp rendered into a file: [`Upstream::unix_s`], moved onto
    /// the wall clock if one is set.
    pub(crate) fn file_unix_s(&self, t: Time) -> u64 {
        let model = self.unix_s(t);
        match self.wall {
            Some(w) => w.unix_from_model(model, self.config.epoch_unix_s),
            None => model,
        }
    }

    /// Clamps `now` so it never goes backwards.
    pub(crate) fn advance(&mut self, now: Time) -> Time {
        if now > self.last_now {
            self.last_now = now;
        }
        self.last_now
    }

    /// Releases the queue tokens of the organization's batches that ended by `now`.
    pub(crate) fn release_ended(&mut self, now: Time, org: OrgId) {
        let Some(o) = self.orgs.get_mut(org.0 as usize) else {
            return;
        };
        while let Some(&std::cmp::Reverse((end, idx))) = o.ending.peek() {
            if end > now {
                break;
            }
            o.ending.pop();
            if let Some(b) = self.batches.get_mut(idx) {
                if !b.released && b.end_time() == end {
                    b.released = true;
                    o.model_mut(b.model).queue.release(b.queued_tokens);
                }
            }
        }
    }
}
