//! Fault injection: scripted outcome sequences per organization's request stream, seeded
//! random 500/503/timeout rates, and scripted batch outcomes.
//!
//! Deterministic sequences exist because random injection alone makes retry-path tests flaky
//! (anchors §5.1); the random rates share the model's seeded RNG.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, UpstreamConfig};

/// One forced outcome of a realtime request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FaultKind {
    /// No injected fault: the request is handled normally (rate limits still apply) and random
    /// faults are suppressed for it.
    #[serde(rename = "ok")]
    Ok,
    /// A 429 on requests per minute, without consuming any limit.
    #[serde(rename = "429")]
    RateLimited,
    /// A 500 server error (the request is charged).
    #[serde(rename = "500")]
    ServerError,
    /// A 503 overloaded error (the request is charged).
    #[serde(rename = "503")]
    Overloaded,
    /// No answer until `timeout_after_ms` (the request is charged).
    #[serde(rename = "timeout")]
    Timeout,
}

/// A scripted run of outcomes on one organization's realtime requests, counted from 0 in the
/// order `Upstream::chat` sees them.
///
/// - `{ outcome = "429", times = 3 }`: requests 0, 1, 2 get a 429, then normal service;
/// - `{ first_n = 3, then = "500" }` (aliases of `after` / `outcome`): the first 3 requests are
///   served normally, then every request gets a 500 (no `times` = forever);
/// - `{ after = 10, sequence = ["429", "ok", "500"] }`: requests 10, 11, 12 get those outcomes.
///
/// When several entries cover a request, the first in the list wins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedFault {
    /// Requests served normally before the script starts, in requests (default 0).
    #[serde(default, alias = "first_n")]
    pub after: u64,
    /// The outcome to repeat.
    #[serde(default, alias = "then")]
    pub outcome: Option<FaultKind>,
    /// How many requests get `outcome`; absent = every later request.
    #[serde(default)]
    pub times: Option<u64>,
    /// Explicit outcomes, one per request, in order.
    #[serde(default)]
    pub sequence: Vec<FaultKind>,
}

impl ScriptedFault {
    /// Checks that exactly one of `outcome` and `sequence` is given.
    pub fn validate(&self, field: &str) -> Result<(), ConfigError> {
        match (self.outcome.is_some(), self.sequence.is_empty()) {
            (false, true) => Err(ConfigError::invalid(
                field,
                "needs `outcome` (alias `then`) or a non-empty `sequence`",
            )),
            (true, false) => Err(ConfigError::invalid(
                field,
                "give either `outcome` or `sequence`, not both",
            )),
            _ if self.times.is_some() && self.outcome.is_none() => Err(ConfigError::invalid(
                format!("{field}.times"),
                "only applies to `outcome`",
            )),
            _ => Ok(()),
        }
    }

    /// The outcome this entry forces on request number `n`, if any.
    pub fn at(&self, n: u64) -> Option<FaultKind> {
        let k = n.checked_sub(self.after)?;
        if !self.sequence.is_empty() {
            return usize::try_from(k)
                .ok()
                .and_then(|k| self.sequence.get(k).copied());
        }
        match (self.outcome, self.times) {
            (Some(o), Some(t)) if k < t => Some(o),
            (Some(o), None) => Some(o),
            _ => None,
        }
    }
}

/// The scripted outcome of request number `n`, first matching entry wins.
pub fn scripted(faults: &[ScriptedFault], n: u64) -> Option<FaultKind> {
    faults.iter().find_map(|f| f.at(n))
}

/// One draw of the random fault rates for an admitted request: `None` means success.
/// Always consumes exactly one random number, so the stream stays aligned whatever the rates.
pub fn random_fault<R: Rng + ?Sized>(cfg: &UpstreamConfig, rng: &mut R) -> Option<FaultKind> {
    let u: f64 = rng.random();
    let mut edge = cfg.server_error_rate;
    if u < edge {
        return Some(FaultKind::ServerError);
    }
    edge += cfg.overloaded_rate;
    if u < edge {
        return Some(FaultKind::Overloaded);
    }
    edge += cfg.timeout_rate;
    if u < edge {
        return Some(FaultKind::Timeout);
    }
    None
}

/// A scripted outcome for one batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchOutcomeKind {
    /// Runs its sampled timeline (it may still expire if that overruns the window).
    Completed,
    /// Forced to overrun the completion window: partial results, the rest `batch_expired`.
    Expired,
    /// Fails when validation ends.
    Failed,
    /// Stays `in_progress` with nothing done, past its window, until it is cancelled. A fault
    /// beyond the documented API (every real batch ends within its 24 h window, facts §5), for
    /// testing that a client does not wait on a lost batch forever.
    Stuck,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml_src: &str, expect: &str) {
        #[derive(Deserialize)]
        struct W {
            faults: Vec<ScriptedFault>,
        }
        let w: W = toml::from_str(toml_src).unwrap();
        let got: Vec<String> = (0..6)
            .map(|n| match scripted(&w.faults, n) {
                None => "-".to_owned(),
                Some(FaultKind::Ok) => "ok".to_owned(),
                Some(FaultKind::RateLimited) => "429".to_owned(),
                Some(FaultKind::ServerError) => "500".to_owned(),
                Some(FaultKind::Overloaded) => "503".to_owned(),
                Some(FaultKind::Timeout) => "to".to_owned(),
            })
            .collect();
        assert_eq!(got.join(" "), expect, "{toml_src}");
    }

    #[test]
    fn scripts() {
        check("faults = []", "- - - - - -");
        check(
            "[[faults]]\noutcome = \"429\"\ntimes = 3",
            "429 429 429 - - -",
        );
        check(
            "[[faults]]\nfirst_n = 3\nthen = \"500\"",
            "- - - 500 500 500",
        );
        check(
            "[[faults]]\nafter = 1\nsequence = [\"429\", \"ok\", \"503\"]",
            "- 429 ok 503 - -",
        );
        check(
            "[[faults]]\nsequence = [\"timeout\"]\n[[faults]]\noutcome = \"500\"\ntimes = 2",
            "to 500 - - - -",
        );
    }

    #[test]
    fn random_rates_split_the_unit_interval() {
        use rand::SeedableRng;
        let cfg = UpstreamConfig {
            server_error_rate: 0.1,
            overloaded_rate: 0.2,
            timeout_rate: 0.3,
            ..UpstreamConfig::default()
        };
        let mut rng = rand_pcg::Pcg64::seed_from_u64(3);
        let mut counts = [0u32; 4];
        for _ in 0..10_000 {
            let i = match random_fault(&cfg, &mut rng) {
                Some(FaultKind::ServerError) => 0,
                Some(FaultKind::Overloaded) => 1,
                Some(FaultKind::Timeout) => 2,
                _ => 3,
            };
            counts[i] += 1;
        }
        assert!((900..1100).contains(&counts[0]), "{counts:?}");
        assert!((1800..2200).contains(&counts[1]), "{counts:?}");
        assert!((2800..3200).contains(&counts[2]), "{counts:?}");
    }
}
