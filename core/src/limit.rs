//! Client-side rate limiting: token buckets for OpenAI's RPM, TPM and RPD limits, checked across several scopes at once.
//!
//! The principal types are [`Bucket`] (one continuously refilling limit), [`RateLimits`] (one
//! scope's RPM + TPM + optional RPD), [`check_all`] and [`Reservation`] (all-or-nothing across
//! scopes, then reconcile with real usage), [`Keyed`] (one bucket per key from a template) and
//! [`TokenQueue`] (the account's enqueued batch tokens). A rejection is a [`Denied`] value that
//! says when the same request would pass, which maps straight onto a pacer's wake-up time.
//!
//! # Why not governor
//!
//! governor is a good GCRA limiter and this module learns from it, but it does not fit here:
//! it has no peek and no refund (issue #152; PR #211 has been open since 2023), so an RPM check
//! that succeeds before a TPM check fails has already spent its cell; it has no per-key quotas
//! (#193); it cannot charge into debt, which reconciling a reservation upward needs because
//! OpenAI counts failed and longer-than-estimated requests too; and it reads time from a `Clock`,
//! while core is sans-IO and takes `now` as an argument. The `limiter` criterion bench in
//! `benches/benches/limiter.rs` measures this implementation against governor on the same fake
//! clock and quota; the figures are in `BENCHMARKS.md`.
//!
//! # Arithmetic
//!
//! A bucket is stored in GCRA form: one "theoretical arrival time" (TAT). The bucket is full when
//! the TAT is not after `now`; taking `n` units moves the TAT forward by `n` emission intervals;
//! a take is admitted when the TAT afterwards is at most `capacity` intervals after `now`.
//!
//! The emission interval is `window / limit`, which is often not a whole number of nanoseconds
//! (60 s / 7). Rounding it down would admit more than `limit` per window; rounding it up would be
//! safe but drift. Instead every instant is kept in *ticks* of `1 / limit` nanosecond, as a
//! `u128`: `now` becomes `now_ns * limit` ticks and one unit costs exactly `window_ns` ticks. The
//! decision is then exact integer arithmetic with no rounding at all. Both products are at most
//! `(2^64 - 1)^2 < 2^128`, so they never overflow; the only sums that could overflow are
//! saturating, and a saturated TAT only denies more, so it is conservative. Converting a tick back
//! to a [`Time`] (for [`Denied::NotUntil`]) rounds *up*, so the reported instant is the first
//! whole nanosecond at which the request really passes. (The ticks are divided by
//! `gcd(limit, window_ns)` to keep them small; see `Rate`.)

use std::fmt;
use std::hash::Hash;
use std::num::NonZeroU64;
use std::time::Duration;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::time::{Time, duration_nanos};

/// Why a check failed. A rejection is a value that says when to retry (like governor's `NotUntil`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// Would pass at `earliest` (if nothing else is taken meanwhile). `scope` is the index of the
    /// scope that denied in a multi-scope check (0 for a single bucket); when several deny, it is
    /// the one whose limit binds longest, the first such on ties. `dimension` says which of its
    /// limits.
    #[error("{dimension} limit of scope {scope} allows this at {earliest}")]
    NotUntil {
        /// The first instant at which the same check passes.
        earliest: Time,
        /// Index of the denying scope.
        scope: usize,
        /// Which limit of that scope denied.
        dimension: Dimension,
    },
    /// Can never pass: the request is larger than the bucket's capacity.
    #[error(
        "{dimension} request of {requested} exceeds the capacity of {capacity} in scope {scope}"
    )]
    Never {
        /// Units the request asked for.
        requested: u64,
        /// The bucket's capacity (burst).
        capacity: u64,
        /// Index of the denying scope.
        scope: usize,
        /// Which limit of that scope denied.
        dimension: Dimension,
    },
}

impl Denied {
    /// The instant at which the request would pass, or `None` if it never can.
    pub fn earliest(&self) -> Option<Time> {
        match *self {
            Denied::NotUntil { earliest, .. } => Some(earliest),
            Denied::Never { .. } => None,
        }
    }

    /// How long to wait from `now` (what a `Retry-After` would say), or `None` if never.
    pub fn retry_after(&self, now: Time) -> Option<Duration> {
        self.earliest().map(|t| t - now)
    }

    /// Index of the scope that denied.
    pub fn scope(&self) -> usize {
        match *self {
            Denied::NotUntil { scope, .. } | Denied::Never { scope, .. } => scope,
        }
    }

    /// Which limit denied.
    pub fn dimension(&self) -> Dimension {
        match *self {
            Denied::NotUntil { dimension, .. } | Denied::Never { dimension, .. } => dimension,
        }
    }

    /// The same denial attributed to scope `scope`.
    pub fn with_scope(self, scope: usize) -> Denied {
        match self {
            Denied::NotUntil {
                earliest,
                dimension,
                ..
            } => Denied::NotUntil {
                earliest,
                scope,
                dimension,
            },
            Denied::Never {
                requested,
                capacity,
                dimension,
                ..
            } => Denied::Never {
                requested,
                capacity,
                scope,
                dimension,
            },
        }
    }

    /// Of two denials of one request, the one that binds: a `Never` beats any wait, and a later
    /// `earliest` beats an earlier one, because the request passes only once every limit allows
    /// it. Ties keep `self`, so the lower scope or earlier dimension is reported.
    fn worse(self, other: Denied) -> Denied {
        match (self, other) {
            (Denied::Never { .. }, _) => self,
            (_, Denied::Never { .. }) => other,
            (Denied::NotUntil { earliest: a, .. }, Denied::NotUntil { earliest: b, .. }) => {
                if b > a { other } else { self }
            }
        }
    }
}

/// Folds one more check result into the binding denial so far.
fn merge(acc: Option<Denied>, next: Result<(), Denied>) -> Option<Denied> {
    match (acc, next) {
        (acc, Ok(())) => acc,
        (None, Err(d)) => Some(d),
        (Some(a), Err(d)) => Some(a.worse(d)),
    }
}

/// Which limit a bucket enforces; reported in [`Denied`] so a caller can tell RPM from TPM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    /// Requests per minute.
    Requests,
    /// Tokens per minute.
    Tokens,
    /// Requests per day.
    RequestsPerDay,
    /// Images (e.g. a per-workspace image rate).
    Images,
    /// Batches (e.g. per-workspace batch creations).
    Batches,
}

impl fmt::Display for Dimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dimension::Requests => "requests",
            Dimension::Tokens => "tokens",
            Dimension::RequestsPerDay => "requests_per_day",
            Dimension::Images => "images",
            Dimension::Batches => "batches",
        })
    }
}

/// The fixed parameters of a GCRA bucket, shared by [`Bucket`] and [`Keyed`] so that a keyed
/// entry stores only its TAT.
///
/// Ticks are the module docs' `1 / limit` ns divided by `g = gcd(limit, window_ns)`: one
/// nanosecond is `limit / g` ticks and one unit `window_ns / g`. Every decision compares or
/// divides quantities that all carry the same factor `g`, so dividing it out changes no result;
/// what it buys is that the usual limits (60 s / 5,000 requests, 60 s / 2,000,000 tokens) come
/// out at one tick per nanosecond, where [`Rate::decide`] runs in 64-bit arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rate {
    /// Units that refill per window.
    limit: u64,
    /// The window in nanoseconds.
    window_ns: u64,
    /// Ticks per nanosecond: `limit / g`.
    per_ns: u64,
    /// Ticks per unit: `window_ns / g`.
    unit: u64,
    /// The burst: how many units a full bucket holds.
    capacity: u64,
    /// `capacity * unit`: how far ahead of `now` the TAT may run (GCRA's tolerance).
    tau: u128,
    /// `tau` when ticks are nanoseconds (`per_ns == 1`) and it fits in 64 bits: then a TAT that
    /// fits too is decided without 128-bit arithmetic.
    tau64: Option<u64>,
}

/// Euclid's greatest common divisor; `gcd(a, 0) == a`.
fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// What a GCRA decision says, before it is attributed to a dimension and scope.
enum Verdict {
    NotUntil(Time),
    Never,
}

impl Rate {
    fn new(limit: NonZeroU64, window: Duration, capacity: NonZeroU64) -> Rate {
        let window_ns = duration_nanos(window);
        // `limit` is nonzero, so `g` is too.
        let g = gcd(limit.get(), window_ns);
        Rate {
            limit: limit.get(),
            window_ns,
            per_ns: limit.get() / g,
            unit: window_ns / g,
            capacity: 0,
            tau: 0,
            tau64: None,
        }
        .with_capacity(capacity)
    }

    fn with_capacity(mut self, capacity: NonZeroU64) -> Rate {
        self.capacity = capacity.get();
        self.tau = u128::from(capacity.get()) * u128::from(self.unit);
        self.tau64 = u64::try_from(self.tau).ok().filter(|_| self.per_ns == 1);
        self
    }

    /// `now` in ticks. Cannot overflow: both factors are below 2^64.
    fn ticks(&self, now: Time) -> u128 {
        u128::from(now.as_nanos()) * u128::from(self.per_ns)
    }

    /// The cost of `n` units in ticks. Cannot overflow: both factors are below 2^64.
    fn cost(&self, n: u64) -> u128 {
        u128::from(n) * u128::from(self.unit)
    }

    /// The first whole nanosecond at or after `ticks`; rounding up keeps it conservative.
    fn time_at_or_after(&self, ticks: u128) -> Time {
        // Most tick counts fit in 64 bits, where division is a single instruction rather than
        // a call into the 128-bit routine; at one tick per nanosecond there is nothing to divide.
        if let Ok(t) = u64::try_from(ticks) {
            if self.per_ns == 1 {
                return Time::from_nanos(t);
            }
            return Time::from_nanos(t.div_ceil(self.per_ns));
        }
        let nanos = ticks.div_ceil(u128::from(self.per_ns));
        Time::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The GCRA decision for taking `n` at `now` from a bucket whose TAT is `tat`: the new TAT,
    /// or when it would pass.
    // This and `Bucket::decide` are always inlined: `RateLimits::check` runs two or three per
    // request, and as calls their results went through memory (2% of a simulator run).
    #[inline(always)]
    fn decide(&self, tat: u128, now: Time, n: u64) -> Result<u128, Verdict> {
        // The same decision as below, in 64 bits: ticks are nanoseconds, so `now_t` is `now`
        // and `time_at_or_after` is the identity. `cost <= tau` fits because `n <= capacity`,
        // and `start + cost` is summed in 128 bits. The simulator and the mock decide millions
        // of requests through here.
        if let (Some(tau), Ok(tat)) = (self.tau64, u64::try_from(tat)) {
            let now_t = now.as_nanos();
            if n == 0 {
                return Ok(u128::from(tat.max(now_t)));
            }
            if n > self.capacity {
                return Err(Verdict::Never);
            }
            let cost = n * self.unit;
            let start = tat.max(now_t);
            let slack = tau - cost;
            return if start - now_t <= slack {
                Ok(u128::from(start) + u128::from(cost))
            } else {
                Err(Verdict::NotUntil(Time::from_nanos(tat - slack)))
            };
        }
        // Taking nothing can exceed no limit, even from a bucket in debt. The TAT moves up to
        // `now` as `force` moves it, so a check equals a peek followed by a forced take.
        if n == 0 {
            return Ok(tat.max(self.ticks(now)));
        }
        if n > self.capacity {
            return Err(Verdict::Never);
        }
        let now_t = self.ticks(now);
        let cost = self.cost(n);
        let start = tat.max(now_t);
        // Admit when the debt after the take, `start + cost - now_t`, is within `tau`. Written as
        // `start - now_t <= tau - cost` so that nothing can overflow: `tau >= cost` since
        // `n <= capacity`, and `start >= now_t`.
        let slack = self.tau - cost;
        if start - now_t <= slack {
            Ok(start.saturating_add(cost))
        } else {
            // Here `start == tat`. The test turns true once `now_t >= tat - slack`, and stays
            // true as time passes, so the first such nanosecond is the answer.
            Err(Verdict::NotUntil(self.time_at_or_after(tat - slack)))
        }
    }

    /// The first instant at which taking `n` from a bucket whose TAT is `tat` passes, if ever:
    /// where [`Rate::decide`]'s test, `tat - now_t <= tau - cost`, turns true.
    fn earliest(&self, tat: u128, n: u64) -> Option<Time> {
        if n == 0 {
            return Some(Time::ZERO);
        }
        if n > self.capacity {
            return None;
        }
        let slack = self.tau - self.cost(n);
        Some(match tat.checked_sub(slack) {
            Some(ticks) if ticks > 0 => self.time_at_or_after(ticks),
            _ => Time::ZERO,
        })
    }

    /// The TAT after charging `n` regardless of the limit; may run past `tau` (debt).
    fn force(&self, tat: u128, now: Time, n: u64) -> u128 {
        tat.max(self.ticks(now)).saturating_add(self.cost(n))
    }

    /// The TAT after giving back `n`; a full bucket (TAT at or before `now`) stays full.
    fn refund(&self, tat: u128, now: Time, n: u64) -> u128 {
        let now_t = self.ticks(now);
        if tat <= now_t {
            tat
        } else {
            tat.saturating_sub(self.cost(n)).max(now_t)
        }
    }

    /// How far the TAT runs ahead of `now`, in ticks: the used part of the bucket.
    fn debt(&self, tat: u128, now: Time) -> u128 {
        tat.saturating_sub(self.ticks(now))
    }

    /// Whole units that `check` would admit now.
    fn remaining(&self, tat: u128, now: Time) -> u64 {
        let free = self.tau.saturating_sub(self.debt(tat, now));
        // As in `time_at_or_after`: a 64-bit division where the value fits (every response's
        // headers ask for two of these), not the 128-bit routine.
        if let (Ok(free), Some(unit)) = (u64::try_from(free), std::num::NonZeroU64::new(self.unit))
        {
            return free / unit;
        }
        match free.checked_div(u128::from(self.unit)) {
            // `free <= tau = capacity * unit`, so the quotient fits in a u64.
            Some(units) => u64::try_from(units).unwrap_or(self.capacity),
            // A zero window refills instantly: any take within capacity passes.
            None => self.capacity,
        }
    }
}

/// A continuously refilling token bucket in GCRA form (integer ticks, O(1), no allocation).
///
/// `limit` units refill per `window`; the capacity (burst) defaults to `limit`, so a new bucket
/// starts full, as OpenAI's do. See the module docs for the arithmetic. For any interval of
/// length `L`, a bucket that starts full admits at most `capacity + limit * L / window` units.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bucket {
    rate: Rate,
    /// Theoretical arrival time in ticks; the bucket is full when it is at or before `now`.
    tat: u128,
    /// Nothing passes before this instant (a 429's `retry-after`). Kept apart from the TAT so a
    /// block gates the bucket without draining it: at `blocked_until` the bucket holds what it
    /// would have held anyway.
    blocked_until: Time,
    dimension: Dimension,
}

impl Bucket {
    /// `limit` units per `window`, with a burst of `limit`, starting full. A window longer than
    /// about 584 years is clamped; a zero window admits anything within capacity.
    pub fn new(limit: NonZeroU64, window: Duration) -> Bucket {
        Bucket {
            rate: Rate::new(limit, window, limit),
            tat: 0,
            blocked_until: Time::ZERO,
            dimension: Dimension::Requests,
        }
    }

    /// `limit` units per minute, as OpenAI's RPM and TPM limits are stated.
    pub fn per_minute(limit: NonZeroU64) -> Bucket {
        Bucket::new(limit, Duration::from_secs(60))
    }

    /// Sets the burst. The refill rate is unchanged; the debt already taken is kept.
    pub fn with_capacity(mut self, capacity: NonZeroU64) -> Bucket {
        self.rate = self.rate.with_capacity(capacity);
        self
    }

    /// Sets the dimension reported in denials (default [`Dimension::Requests`]).
    pub fn with_dimension(mut self, dimension: Dimension) -> Bucket {
        self.dimension = dimension;
        self
    }

    /// Units that refill per window.
    pub fn limit(&self) -> u64 {
        self.rate.limit
    }

    /// The burst: units a full bucket holds.
    pub fn capacity(&self) -> u64 {
        self.rate.capacity
    }

    /// The refill window.
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.rate.window_ns)
    }

    /// The dimension reported in denials.
    pub fn dimension(&self) -> Dimension {
        self.dimension
    }

    /// The decision for taking `n` at `now`, as the new TAT; shared by `check` and `peek`.
    #[inline(always)]
    fn decide(&self, now: Time, n: u64) -> Result<u128, Denied> {
        let gcra = self.rate.decide(self.tat, now, n);
        let earliest = match gcra {
            Ok(tat) if n == 0 || now >= self.blocked_until => return Ok(tat),
            Ok(_) => self.blocked_until,
            Err(Verdict::Never) => {
                return Err(Denied::Never {
                    requested: n,
                    capacity: self.rate.capacity,
                    scope: 0,
                    dimension: self.dimension,
                });
            }
            // Both conditions only become true as time passes, so the later instant is when both hold.
            Err(Verdict::NotUntil(t)) => t.max(self.blocked_until),
        };
        Err(Denied::NotUntil {
            earliest,
            scope: 0,
            dimension: self.dimension,
        })
    }

    /// The first instant at which `check(_, n)` passes if nothing else is taken, or `None` if
    /// `n` exceeds the capacity. Taking nothing passes at any instant, even while blocked.
    pub fn earliest(&self, n: u64) -> Option<Time> {
        let t = self.rate.earliest(self.tat, n)?;
        Some(if n == 0 { t } else { t.max(self.blocked_until) })
    }

    /// Takes `n` units, or nothing if they are not all available.
    #[inline]
    pub fn check(&mut self, now: Time, n: u64) -> Result<(), Denied> {
        self.tat = self.decide(now, n)?;
        Ok(())
    }

    /// The decision `check` would make, taking nothing.
    #[inline]
    pub fn peek(&self, now: Time, n: u64) -> Result<(), Denied> {
        self.decide(now, n).map(|_| ())
    }

    /// Charges `n` even if that goes into debt: reconciling a reservation upward, or a failed
    /// request that OpenAI counts anyway. Later checks wait until the debt is paid off.
    pub fn force_take(&mut self, now: Time, n: u64) {
        self.tat = self.rate.force(self.tat, now, n);
    }

    /// Gives back `n` units, never above capacity.
    pub fn refund(&mut self, now: Time, n: u64) {
        self.tat = self.rate.refund(self.tat, now, n);
    }

    /// Whole units available now (0 while blocked or in debt).
    pub fn remaining(&self, now: Time) -> u64 {
        if now < self.blocked_until {
            0
        } else {
            self.rate.remaining(self.tat, now)
        }
    }

    /// Time until the bucket is full again and unblocked; what OpenAI's `x-ratelimit-reset-*`
    /// headers report.
    pub fn time_until_full(&self, now: Time) -> Duration {
        // The bucket is full once `now` reaches the TAT; rounding up keeps the report conservative.
        let full = self.rate.time_at_or_after(self.tat);
        (full - now).max(self.blocked_until - now)
    }

    /// Time until `check(_, n)` would pass if nothing else is taken; `None` if `n > capacity`.
    pub fn time_until(&self, now: Time, n: u64) -> Option<Duration> {
        match self.peek(now, n) {
            Ok(()) => Some(Duration::ZERO),
            Err(d) => d.retry_after(now),
        }
    }

    /// Adapts to upstream truth: if the server reports fewer units remaining than we believe,
    /// tightens to its value. Never loosens, because the server may count requests we never saw
    /// (other clients, failed requests) but never forgets ones we sent.
    pub fn observe_remaining(&mut self, now: Time, remaining: u64) {
        if remaining >= self.rate.capacity || now < self.blocked_until {
            return;
        }
        let debt = self.rate.debt(self.tat, now);
        // We believe more than `remaining` is left exactly when `remaining + 1` units would pass.
        let believed_more = debt.saturating_add(self.rate.cost(remaining + 1)) <= self.rate.tau;
        if believed_more {
            // Leave exactly `remaining` whole units and no fraction of the next one.
            let used = self.rate.cost(self.rate.capacity - remaining);
            self.tat = self.ticks_now(now).saturating_add(used);
        }
    }

    /// Blocks everything until `until` (a 429's `retry-after`): `remaining` is 0 until then.
    /// A later block extends an earlier one; an earlier one never shortens it.
    /// `_now` is taken for symmetry with the other inputs; a block is absolute.
    pub fn block_until(&mut self, _now: Time, until: Time) {
        self.blocked_until = self.blocked_until.max(until);
    }

    fn ticks_now(&self, now: Time) -> u128 {
        self.rate.ticks(now)
    }
}

/// The amount a request costs in each dimension.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Charge {
    /// Requests (normally 1); also charged against the RPD limit.
    pub requests: u64,
    /// Tokens: OpenAI charges the larger of `max_tokens` and the estimated input tokens.
    pub tokens: u64,
}

/// What a response said about the limits: `x-ratelimit-remaining-requests`,
/// `x-ratelimit-remaining-tokens` and, on a 429, the retry delay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// `x-ratelimit-remaining-requests`, if present.
    pub remaining_requests: Option<u64>,
    /// `x-ratelimit-remaining-tokens`, if present.
    pub remaining_tokens: Option<u64>,
    /// A 429's `retry-after` (or the "try again in" of its body), if any.
    pub retry_after: Option<Duration>,
}

/// One scope's realtime limits: RPM + TPM (+ optional RPD), e.g. one workspace, or the account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimits {
    requests: Bucket,
    tokens: Bucket,
    rpd: Option<Bucket>,
}

impl RateLimits {
    /// `rpm` requests and `tpm` tokens per minute, each with a burst of one minute's worth.
    pub fn new(rpm: NonZeroU64, tpm: NonZeroU64) -> RateLimits {
        RateLimits {
            requests: Bucket::per_minute(rpm).with_dimension(Dimension::Requests),
            tokens: Bucket::per_minute(tpm).with_dimension(Dimension::Tokens),
            rpd: None,
        }
    }

    /// Adds a requests-per-day limit (a 24-hour bucket, starting full).
    pub fn with_rpd(mut self, rpd: NonZeroU64) -> RateLimits {
        self.rpd = Some(
            Bucket::new(rpd, Duration::from_secs(24 * 60 * 60))
                .with_dimension(Dimension::RequestsPerDay),
        );
        self
    }

    /// Sets the bursts of the RPM and TPM buckets.
    pub fn with_burst(mut self, requests: NonZeroU64, tokens: NonZeroU64) -> RateLimits {
        self.requests = self.requests.with_capacity(requests);
        self.tokens = self.tokens.with_capacity(tokens);
        self
    }

    /// The decision `check` would make, taking nothing. When several limits deny, the one that
    /// binds longest is reported.
    pub fn peek(&self, now: Time, c: Charge) -> Result<(), Denied> {
        let mut denied = merge(None, self.requests.peek(now, c.requests));
        denied = merge(denied, self.tokens.peek(now, c.tokens));
        if let Some(rpd) = &self.rpd {
            denied = merge(denied, rpd.peek(now, c.requests));
        }
        denied.map_or(Ok(()), Err)
    }

    /// Takes `c` from every limit, or nothing if any would deny.
    pub fn check(&mut self, now: Time, c: Charge) -> Result<(), Denied> {
        // Each bucket is decided once: when all admit, their new TATs are committed; when any
        // denies, the denials merge exactly as `peek` merges them (a paced sender meets one
        // denial per request, so this path is as hot as the other).
        let r = self.requests.decide(now, c.requests);
        let t = self.tokens.decide(now, c.tokens);
        let d = self.rpd.as_ref().map(|b| b.decide(now, c.requests));
        match (r, t, d) {
            (Ok(r), Ok(t), None) => {
                self.requests.tat = r;
                self.tokens.tat = t;
                Ok(())
            }
            (Ok(r), Ok(t), Some(Ok(d))) => {
                self.requests.tat = r;
                self.tokens.tat = t;
                if let Some(b) = &mut self.rpd {
                    b.tat = d;
                }
                Ok(())
            }
            // One denial is the answer as it stands: returned directly, it is written once
            // into the caller's slot, where folding it through an `Option` on the stack left
            // a copy whose wide loads waited on the byte stores just made.
            (Err(e), Ok(_), None) | (Ok(_), Err(e), None) => Err(e),
            (r, t, d) => {
                let mut denied = merge(None, r.map(drop));
                denied = merge(denied, t.map(drop));
                if let Some(d) = d {
                    denied = merge(denied, d.map(drop));
                }
                denied.map_or(Ok(()), Err)
            }
        }
    }

    /// A perfect pacer: sends `count` requests of `c` one after another from `from`, each at the
    /// first instant every limit admits it, and takes them. Returns when the last one passes,
    /// or `None` if `c` can never pass (or `count` is 0).
    ///
    /// The same as, `count` times, [`RateLimits::check`] at the current instant and, when it
    /// is denied, [`RateLimits::force_take`] at [`Denied::earliest`], which then becomes the
    /// current instant; but without building a decision per request (the simulator's
    /// physical bound paces every image of a run through here).
    pub fn pace(&mut self, from: Time, count: u64, c: Charge) -> Option<Time> {
        if count > 0
            && self.rpd.is_none()
            && self.requests.rate.per_ns == 1
            && self.tokens.rate.per_ns == 1
        {
            return self.pace_in_nanos(from, count, c);
        }
        let mut t = from;
        let mut last = None;
        for _ in 0..count {
            // Each limit's earliest instant only moves later as it is charged, and a take
            // passes at the latest of them, so that is when the next request goes.
            let mut at = t
                .max(self.requests.earliest(c.requests)?)
                .max(self.tokens.earliest(c.tokens)?);
            if let Some(rpd) = &self.rpd {
                at = at.max(rpd.earliest(c.requests)?);
            }
            t = at;
            self.force_take(t, c);
            last = Some(t);
        }
        last
    }

    /// [`RateLimits::pace`] for RPM and TPM buckets that tick in nanoseconds: the same steps
    /// on the two TATs held in locals, with no division and no decision built per request.
    fn pace_in_nanos(&mut self, from: Time, count: u64, c: Charge) -> Option<Time> {
        // Per bucket: how far its TAT may run ahead of the instant a take passes (`slack`), the
        // take's cost, and the block it waits out. A dimension that takes nothing never binds.
        let limit = |b: &Bucket, n: u64| -> Option<(u128, u128, Time)> {
            if n == 0 {
                return Some((u128::MAX, 0, Time::ZERO));
            }
            if n > b.rate.capacity {
                return None;
            }
            let cost = b.rate.cost(n);
            Some((b.rate.tau - cost, cost, b.blocked_until))
        };
        let (slack_r, cost_r, blocked_r) = limit(&self.requests, c.requests)?;
        let (slack_t, cost_t, blocked_t) = limit(&self.tokens, c.tokens)?;
        // Blocks don't move while pacing, and the instant only moves later, so they count once.
        let mut t = u128::from(from.max(blocked_r).max(blocked_t).as_nanos());
        let (mut tat_r, mut tat_t) = (self.requests.tat, self.tokens.tat);
        // No TAT can end past `max(t, TATs) + count * cost` (a take passes no later than the
        // later of the two), so when that fits in 64 bits nothing saturates or clamps, and the
        // same steps run in 64-bit arithmetic: about half the instructions.
        let bound = t
            .max(tat_r)
            .max(tat_t)
            .saturating_add(u128::from(count).saturating_mul(cost_r.max(cost_t)));
        if let (Ok(_), Ok(mut t64), Ok(mut r), Ok(mut k)) = (
            u64::try_from(bound),
            u64::try_from(t),
            u64::try_from(tat_r),
            u64::try_from(tat_t),
        ) {
            // A slack past 64 bits never binds: clamping it keeps `tat - slack` at zero.
            let clamp = |v: u128| u64::try_from(v).unwrap_or(u64::MAX);
            let (slack_r, slack_t) = (clamp(slack_r), clamp(slack_t));
            let (cost_r, cost_t) = (clamp(cost_r), clamp(cost_t));
            for _ in 0..count {
                t64 = t64
                    .max(r.saturating_sub(slack_r))
                    .max(k.saturating_sub(slack_t));
                r = r.max(t64) + cost_r;
                k = k.max(t64) + cost_t;
            }
            self.requests.tat = u128::from(r);
            self.tokens.tat = u128::from(k);
            return Some(Time::from_nanos(t64));
        }
        for _ in 0..count {
            t = t
                .max(tat_r.saturating_sub(slack_r))
                .max(tat_t.saturating_sub(slack_t))
                // As `time_at_or_after` clamps an instant past the last representable one.
                .min(u128::from(u64::MAX));
            tat_r = tat_r.max(t).saturating_add(cost_r);
            tat_t = tat_t.max(t).saturating_add(cost_t);
        }
        self.requests.tat = tat_r;
        self.tokens.tat = tat_t;
        u64::try_from(t).ok().map(Time::from_nanos)
    }

    /// Charges `c` to every limit even into debt.
    pub fn force_take(&mut self, now: Time, c: Charge) {
        self.requests.force_take(now, c.requests);
        self.tokens.force_take(now, c.tokens);
        if let Some(rpd) = &mut self.rpd {
            rpd.force_take(now, c.requests);
        }
    }

    /// Gives `c` back to every limit, never above capacity.
    pub fn refund(&mut self, now: Time, c: Charge) {
        self.requests.refund(now, c.requests);
        self.tokens.refund(now, c.tokens);
        if let Some(rpd) = &mut self.rpd {
            rpd.refund(now, c.requests);
        }
    }

    /// The requests-per-minute bucket.
    pub fn requests(&self) -> &Bucket {
        &self.requests
    }

    /// The tokens-per-minute bucket.
    pub fn tokens(&self) -> &Bucket {
        &self.tokens
    }

    /// The requests-per-day bucket, if configured.
    pub fn rpd(&self) -> Option<&Bucket> {
        self.rpd.as_ref()
    }

    /// The requests-per-minute bucket, mutably.
    pub fn requests_mut(&mut self) -> &mut Bucket {
        &mut self.requests
    }

    /// The tokens-per-minute bucket, mutably.
    pub fn tokens_mut(&mut self) -> &mut Bucket {
        &mut self.tokens
    }

    /// Applies a response's `x-ratelimit-remaining-requests`/`-tokens` and a 429's retry delay.
    /// The delay blocks both RPM and TPM, because a client cannot always tell which one the
    /// server ran out of, and waiting on both is the safe reading.
    pub fn observe(&mut self, now: Time, obs: &Observed) {
        if let Some(r) = obs.remaining_requests {
            self.requests.observe_remaining(now, r);
        }
        if let Some(t) = obs.remaining_tokens {
            self.tokens.observe_remaining(now, t);
        }
        if let Some(delay) = obs.retry_after {
            let until = now.saturating_add(delay);
            self.requests.block_until(now, until);
            self.tokens.block_until(now, until);
        }
    }

    /// The earliest instant `c` could pass, ignoring other takers; `None` if it never can.
    pub fn ready_at(&self, now: Time, c: Charge) -> Option<Time> {
        match self.peek(now, c) {
            Ok(()) => Some(now),
            Err(d) => d.earliest(),
        }
    }
}

/// All-or-nothing across several scopes (e.g. `[workspace, account]`): peeks every scope, then
/// takes from all, or takes nothing and returns the binding denial, with its scope index set.
/// The binding denial is a `Never` if any scope can never admit `c`, else the one with the
/// latest `earliest` (the first such scope on ties), since `c` passes only when all scopes allow.
pub fn check_all(scopes: &mut [&mut RateLimits], now: Time, c: Charge) -> Result<(), Denied> {
    let mut denied = None;
    for (i, scope) in scopes.iter().enumerate() {
        denied = merge(denied, scope.peek(now, c).map_err(|d| d.with_scope(i)));
    }
    if let Some(d) = denied {
        return Err(d);
    }
    // Every scope admits `c`, so an unconditional take is exactly what `check` would do.
    for scope in scopes.iter_mut() {
        scope.force_take(now, c);
    }
    Ok(())
}

/// Reserve-then-reconcile: what was reserved on the scopes; [`Reservation::reconcile`] charges or
/// refunds the difference once real usage is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// What [`reserve`] took from every scope.
    pub reserved: Charge,
}

/// [`check_all`], returning what was taken so it can be reconciled later.
pub fn reserve(
    scopes: &mut [&mut RateLimits],
    now: Time,
    c: Charge,
) -> Result<Reservation, Denied> {
    check_all(scopes, now, c)?;
    Ok(Reservation { reserved: c })
}

impl Reservation {
    /// Settles the reservation against `actual` usage on the same scopes: usage above the
    /// reservation is charged even into debt (OpenAI already counted it), usage below is refunded.
    /// Each dimension is settled on its own, so one can go up while the other goes down.
    pub fn reconcile(self, scopes: &mut [&mut RateLimits], now: Time, actual: Charge) {
        let r = self.reserved;
        let more = Charge {
            requests: actual.requests.saturating_sub(r.requests),
            tokens: actual.tokens.saturating_sub(r.tokens),
        };
        let less = Charge {
            requests: r.requests.saturating_sub(actual.requests),
            tokens: r.tokens.saturating_sub(actual.tokens),
        };
        // Usually the estimate was right and there is nothing to settle (core reconciles every
        // answer, and only upward). Taking or giving back nothing changes no decision.
        let zero = Charge::default();
        for scope in scopes.iter_mut() {
            if more != zero {
                scope.force_take(now, more);
            }
            if less != zero {
                scope.refund(now, less);
            }
        }
    }
}

/// Per-key buckets sharing one template quota (per-workspace batch limits; the keyed bench).
///
/// Each entry stores only its TAT; a key seen for the first time starts full. Memory grows with
/// the number of keys, so call [`Keyed::retain_recent`] now and then.
#[derive(Clone, Debug)]
pub struct Keyed<K> {
    rate: Rate,
    dimension: Dimension,
    tats: FxHashMap<K, u128>,
}

impl<K: Hash + Eq> Keyed<K> {
    /// Buckets with `template`'s limit, window, capacity and dimension; its current state is ignored.
    pub fn new(template: Bucket) -> Self {
        Keyed {
            rate: template.rate,
            dimension: template.dimension,
            tats: FxHashMap::default(),
        }
    }

    /// Takes `n` from `key`'s bucket, or nothing.
    #[inline]
    pub fn check(&mut self, key: K, now: Time, n: u64) -> Result<(), Denied> {
        let never = Denied::Never {
            requested: n,
            capacity: self.rate.capacity,
            scope: 0,
            dimension: self.dimension,
        };
        if n > self.rate.capacity {
            return Err(never);
        }
        let tat = self.tats.entry(key).or_insert(0);
        match self.rate.decide(*tat, now, n) {
            Ok(next) => {
                *tat = next;
                Ok(())
            }
            Err(Verdict::NotUntil(earliest)) => Err(Denied::NotUntil {
                earliest,
                scope: 0,
                dimension: self.dimension,
            }),
            Err(Verdict::Never) => Err(never),
        }
    }

    /// The decision `check` would make for `key`, taking nothing.
    pub fn peek(&self, key: &K, now: Time, n: u64) -> Result<(), Denied> {
        let tat = self.tats.get(key).copied().unwrap_or(0);
        match self.rate.decide(tat, now, n) {
            Ok(_) => Ok(()),
            Err(Verdict::NotUntil(earliest)) => Err(Denied::NotUntil {
                earliest,
                scope: 0,
                dimension: self.dimension,
            }),
            Err(Verdict::Never) => Err(Denied::Never {
                requested: n,
                capacity: self.rate.capacity,
                scope: 0,
                dimension: self.dimension,
            }),
        }
    }

    /// Gives `n` back to `key`'s bucket, never above capacity.
    pub fn refund(&mut self, key: &K, now: Time, n: u64) {
        if let Some(tat) = self.tats.get_mut(key) {
            *tat = self.rate.refund(*tat, now, n);
        }
    }

    /// Keys currently tracked.
    pub fn len(&self) -> usize {
        self.tats.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.tats.is_empty()
    }

    /// Drops keys whose buckets are back to full: forgetting them changes no decision, since a
    /// new key starts full.
    pub fn retain_recent(&mut self, now: Time) {
        let now_t = self.rate.ticks(now);
        self.tats.retain(|_, tat| *tat > now_t);
    }
}

/// The account's enqueued batch-token queue (OpenAI's "batch queue limit"): a batch's tokens
/// count from its creation until it ends, and a batch that would exceed the limit is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenQueue {
    limit: u64,
    enqueued: u64,
}

impl TokenQueue {
    /// An empty queue holding at most `limit` tokens.
    pub fn new(limit: u64) -> Self {
        TokenQueue { limit, enqueued: 0 }
    }

    /// The most tokens that may be enqueued at once.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Tokens currently enqueued.
    pub fn enqueued(&self) -> u64 {
        self.enqueued
    }

    /// Tokens that can still be enqueued.
    pub fn free(&self) -> u64 {
        self.limit.saturating_sub(self.enqueued)
    }

    /// Enqueues `tokens` if they fit, else changes nothing and returns false.
    pub fn try_enqueue(&mut self, tokens: u64) -> bool {
        match self.enqueued.checked_add(tokens) {
            Some(total) if total <= self.limit => {
                self.enqueued = total;
                true
            }
            _ => false,
        }
    }

    /// Releases `tokens` when a batch ends (completed, failed, expired or cancelled). Releasing
    /// more than is enqueued empties the queue rather than underflowing.
    pub fn release(&mut self, tokens: u64) {
        self.enqueued = self.enqueued.saturating_sub(tokens);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nz(n: u64) -> NonZeroU64 {
        NonZeroU64::new(n).expect("test limits are non-zero")
    }

    /// Parses `20s`, `150ms`, `300us`, `7ns` or a bare `0` into an instant.
    fn at(s: &str) -> Time {
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        let v: u64 = digits.parse().expect("a number");
        let scale = match unit {
            "" | "ns" => 1,
            "us" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            _ => panic!("unknown unit {unit}"),
        };
        Time::from_nanos(v * scale)
    }

    fn show(r: Result<(), Denied>) -> String {
        match r {
            Ok(()) => "ok".into(),
            Err(Denied::NotUntil { earliest, .. }) => format!("until {earliest}"),
            Err(Denied::Never { .. }) => "never".into(),
        }
    }

    /// Runs a comma-separated script of `<time> <verb> [<arg>]` steps against `b` and returns
    /// what each step said: `take`/`peek N` → `ok` / `until t+…` / `never`; `rem` → units;
    /// `full` → time until full; `until N` → time until N passes; `force`, `refund`, `block T`
    /// and `observe R` → `-`.
    fn run(mut b: Bucket, script: &str) -> String {
        let mut out = Vec::new();
        for step in script.split(',') {
            let words: Vec<&str> = step.split_whitespace().collect();
            let now = at(words[0]);
            let arg = || words[2].parse::<u64>().expect("a count");
            out.push(match words[1] {
                "take" => show(b.check(now, arg())),
                "peek" => show(b.peek(now, arg())),
                "rem" => b.remaining(now).to_string(),
                "full" => format!("{:?}", b.time_until_full(now)),
                "until" => b
                    .time_until(now, arg())
                    .map_or("none".into(), |d| format!("{d:?}")),
                "force" => {
                    b.force_take(now, arg());
                    "-".into()
                }
                "refund" => {
                    b.refund(now, arg());
                    "-".into()
                }
                "block" => {
                    b.block_until(now, at(words[2]));
                    "-".into()
                }
                "observe" => {
                    b.observe_remaining(now, arg());
                    "-".into()
                }
                verb => panic!("unknown verb {verb}"),
            });
        }
        out.join(", ")
    }

    #[track_caller]
    fn check(b: Bucket, script: &str, expect: &str) {
        assert_eq!(run(b, script), expect, "script: {script}");
    }

    fn pm(n: u64) -> Bucket {
        Bucket::per_minute(nz(n))
    }

    #[test]
    fn bucket() {
        // Starts full and refills continuously.
        check(
            pm(3),
            "0 take 1, 0 take 1, 0 take 1, 0 take 1",
            "ok, ok, ok, until t+20s",
        );
        check(
            pm(3),
            "0 take 3, 19999ms take 1, 20s take 1, 20s take 1",
            "ok, until t+20s, ok, until t+40s",
        );
        check(
            pm(3),
            "0 take 2, 0 peek 2, 0 peek 1, 0 rem",
            "ok, until t+20s, ok, 1",
        );
        // Intervals that are not whole nanoseconds: 60 s / 7 = 8.571428571428… s, reported rounded up.
        check(pm(7), "0 take 7, 0 take 1", "ok, until t+8.571428572s");
        check(
            pm(7),
            "0 take 7, 8571428571ns take 1, 8571428572ns take 1",
            "ok, until t+8.571428572s, ok",
        );
        check(
            pm(7),
            "0 take 7, 60s rem, 60s take 7, 60s take 1",
            "ok, 7, ok, until t+68.571428572s",
        );
        // 200,000 TPM is exactly 300 µs a token.
        check(
            pm(200_000),
            "0 take 200000, 300us take 1, 300us take 1",
            "ok, ok, until t+600µs",
        );
        check(
            pm(200_000),
            "0 take 1000, 0 full, 0 rem, 150ms rem",
            "ok, 300ms, 199000, 199500",
        );
        // Burst: capacity below and above the per-window limit.
        check(
            pm(60).with_capacity(nz(5)),
            "0 take 5, 0 take 1, 1s take 1, 1s rem",
            "ok, until t+1s, ok, 0",
        );
        check(
            pm(6).with_capacity(nz(12)),
            "0 take 12, 0 rem, 10s rem, 120s rem",
            "ok, 0, 1, 12",
        );
        // More than the capacity can never pass.
        check(
            pm(3),
            "0 take 4, 0 until 4, 0 until 3, 0 take 3, 0 until 3",
            "never, none, 0ns, ok, 60s",
        );
        // Refunds never fill above capacity.
        check(
            pm(3),
            "0 take 2, 0 refund 5, 0 rem, 0 take 3, 0 take 1",
            "ok, -, 3, ok, until t+20s",
        );
        check(
            pm(3),
            "0 take 3, 10s refund 1, 10s rem, 20s rem",
            "ok, -, 1, 2",
        );
        // Forced takes go into debt that must be paid off before anything passes.
        check(
            pm(3),
            "0 force 6, 0 rem, 0 full, 60s take 1, 60s rem, 80s rem",
            "-, 0, 120s, until t+80s, 0, 1",
        );
        check(pm(3), "0 force 10, 0 take 0, 0 peek 0", "-, ok, ok");
        // A block gates the bucket without draining it.
        check(
            pm(3),
            "0 block 10s, 5s take 1, 5s rem, 5s full, 10s take 1, 10s rem",
            "-, until t+10s, 0, 5s, ok, 2",
        );
        check(
            pm(3),
            "0 take 3, 0 block 10s, 5s take 1",
            "ok, -, until t+20s",
        );
        check(
            pm(3),
            "0 block 10s, 0 block 5s, 7s take 1",
            "-, -, until t+10s",
        );
        // Upstream remaining only ever tightens, and leaves our fractional refill alone when it agrees.
        check(
            pm(10),
            "0 observe 4, 0 rem, 0 observe 8, 0 rem, 6s rem",
            "-, 4, -, 4, 5",
        );
        check(
            pm(10),
            "0 observe 10, 0 rem, 0 observe 99, 0 rem",
            "-, 10, -, 10",
        );
        check(
            pm(10),
            "0 take 5, 3s observe 5, 3s rem, 6s rem",
            "ok, -, 5, 6",
        );
        check(
            pm(10),
            "0 take 5, 3s observe 4, 3s rem, 6s rem, 8999ms rem",
            "ok, -, 4, 4, 4",
        );
        // A zero window refills instantly but still caps each take at capacity.
        check(
            Bucket::new(nz(5), Duration::ZERO),
            "0 take 5, 0 take 5, 0 take 6",
            "ok, ok, never",
        );
        // Time going backwards is not a panic; the bucket just sees less refill.
        check(pm(3), "60s take 3, 0 take 1, 0 rem", "ok, until t+80s, 0");
    }

    #[test]
    fn extremes_do_not_panic() {
        let max = u64::MAX;
        for (limit, window) in [
            (max, Duration::MAX),
            (1, Duration::MAX),
            (max, Duration::from_nanos(1)),
        ] {
            let mut b = Bucket::new(nz(limit), window);
            for now in [Time::ZERO, Time::from_secs(1), Time::MAX] {
                for n in [0, 1, max / 2, max] {
                    let _ = b.check(now, n);
                    let _ = b.peek(now, n);
                    let _ = b.time_until(now, n);
                    b.force_take(now, n);
                    b.refund(now, n / 3);
                    b.observe_remaining(now, n);
                    let _ = (b.remaining(now), b.time_until_full(now));
                }
            }
            b.block_until(Time::ZERO, Time::MAX);
            assert_eq!(b.remaining(Time::from_secs(1)), 0);
        }
    }

    fn charge(requests: u64, tokens: u64) -> Charge {
        Charge { requests, tokens }
    }

    fn rl(rpm: u64, tpm: u64) -> RateLimits {
        RateLimits::new(nz(rpm), nz(tpm))
    }

    fn left(s: &RateLimits, now: Time) -> (u64, u64) {
        (s.requests().remaining(now), s.tokens().remaining(now))
    }

    #[test]
    fn rate_limits_take_all_dimensions_or_none() {
        let t0 = Time::ZERO;
        let mut s = rl(3, 1000);
        assert_eq!(s.check(t0, charge(1, 900)), Ok(()));
        let denied = s.check(t0, charge(1, 200));
        assert_eq!(
            denied,
            Err(Denied::NotUntil {
                earliest: Time::from_secs(6),
                scope: 0,
                dimension: Dimension::Tokens
            })
        );
        assert_eq!(left(&s, t0), (2, 100));
        assert_eq!(s.ready_at(t0, charge(1, 200)), Some(Time::from_secs(6)));
        assert_eq!(s.ready_at(t0, charge(1, 1001)), None);
        assert_eq!(s.ready_at(t0, charge(1, 100)), Some(t0));
        // When both deny, the one that binds longer is reported.
        let mut s = rl(1, 1000);
        assert_eq!(s.check(t0, charge(1, 1000)), Ok(()));
        assert_eq!(
            s.peek(t0, charge(1, 500)).map_err(|d| d.dimension()),
            Err(Dimension::Requests)
        );
        assert_eq!(
            s.peek(t0, charge(0, 1000)).map_err(|d| d.dimension()),
            Err(Dimension::Tokens)
        );
    }

    #[test]
    fn rpd_counts_requests() {
        let mut s = rl(100, 1_000_000).with_rpd(nz(2));
        assert_eq!(s.check(Time::ZERO, charge(1, 10)), Ok(()));
        assert_eq!(s.check(Time::ZERO, charge(1, 10)), Ok(()));
        let d = s.check(Time::from_secs(60), charge(1, 10)).unwrap_err();
        assert_eq!(
            (d.dimension(), d.earliest()),
            (Dimension::RequestsPerDay, Some(Time::from_secs(12 * 3600)))
        );
        assert_eq!(s.rpd().map(|b| b.remaining(Time::from_secs(60))), Some(0));
    }

    #[test]
    fn burst_and_observe() {
        let t0 = Time::ZERO;
        let mut s = rl(60, 6000).with_burst(nz(2), nz(100));
        assert_eq!((s.requests().capacity(), s.tokens().capacity()), (2, 100));
        assert_eq!(left(&s, t0), (2, 100));
        s.observe(
            t0,
            &Observed {
                remaining_requests: Some(1),
                remaining_tokens: Some(50),
                retry_after: None,
            },
        );
        assert_eq!(left(&s, t0), (1, 50));
        s.observe(
            t0,
            &Observed {
                retry_after: Some(Duration::from_millis(644)),
                ..Observed::default()
            },
        );
        assert_eq!(left(&s, Time::from_millis(643)), (0, 0));
        assert_eq!(s.ready_at(t0, charge(1, 1)), Some(Time::from_millis(644)));
        s.requests_mut().force_take(t0, 5);
        s.tokens_mut().refund(t0, 100);
        assert_eq!(left(&s, Time::from_secs(1)), (0, 100));
    }

    #[test]
    fn check_all_is_atomic() {
        let t0 = Time::ZERO;
        let (mut ws, mut acct) = (rl(10, 1000), rl(100, 500));
        // The account (scope 1) denies on tokens; the workspace (scope 0) must be untouched.
        let d = check_all(&mut [&mut ws, &mut acct], t0, charge(1, 600));
        assert_eq!(
            d,
            Err(Denied::Never {
                requested: 600,
                capacity: 500,
                scope: 1,
                dimension: Dimension::Tokens
            })
        );
        acct.tokens_mut().force_take(t0, 400);
        let d = check_all(&mut [&mut ws, &mut acct], t0, charge(1, 200));
        assert_eq!(
            d,
            Err(Denied::NotUntil {
                earliest: Time::from_secs(12),
                scope: 1,
                dimension: Dimension::Tokens
            })
        );
        assert_eq!((left(&ws, t0), left(&acct, t0)), ((10, 1000), (100, 100)));
        // Both pass: both are charged.
        assert_eq!(
            check_all(&mut [&mut ws, &mut acct], t0, charge(1, 100)),
            Ok(())
        );
        assert_eq!((left(&ws, t0), left(&acct, t0)), ((9, 900), (99, 0)));
        // Both deny: the later earliest wins, with its scope.
        ws.tokens_mut().force_take(t0, 1900);
        let d = check_all(&mut [&mut ws, &mut acct], t0, charge(1, 100)).unwrap_err();
        assert_eq!((d.scope(), d.earliest()), (0, Some(Time::from_secs(66))));
        assert_eq!(check_all(&mut [], t0, charge(1, 1)), Ok(()));
    }

    #[test]
    fn reserve_then_reconcile() {
        let t0 = Time::ZERO;
        let (mut ws, mut acct) = (rl(10, 1000), rl(100, 2000));
        let r = reserve(&mut [&mut ws, &mut acct], t0, charge(1, 300)).expect("fits");
        assert_eq!(r.reserved, charge(1, 300));
        // Used less than reserved: the difference comes back to both scopes.
        r.reconcile(&mut [&mut ws, &mut acct], t0, charge(1, 120));
        assert_eq!((left(&ws, t0), left(&acct, t0)), ((9, 880), (99, 1880)));
        // Used more than reserved: charged into debt on both scopes.
        let r = reserve(&mut [&mut ws, &mut acct], t0, charge(1, 800)).expect("fits");
        r.reconcile(&mut [&mut ws, &mut acct], t0, charge(2, 1500));
        assert_eq!((left(&ws, t0), left(&acct, t0)), ((7, 0), (97, 380)));
        assert_eq!(
            ws.ready_at(t0, charge(1, 1)),
            Some(Time::from_nanos(37_260_000_000))
        );
    }

    #[test]
    fn keyed() {
        let mut k = Keyed::new(pm(2).with_dimension(Dimension::Batches));
        assert!(k.is_empty());
        let t0 = Time::ZERO;
        assert_eq!(show(k.check("a", t0, 2)), "ok");
        assert_eq!(show(k.check("a", t0, 1)), "until t+30s");
        assert_eq!(show(k.check("b", t0, 1)), "ok");
        assert_eq!(show(k.check("c", t0, 3)), "never");
        assert_eq!(
            k.peek(&"a", t0, 1).map_err(|d| d.dimension()),
            Err(Dimension::Batches)
        );
        k.refund(&"a", t0, 1);
        assert_eq!(show(k.peek(&"a", t0, 1)), "ok");
        assert_eq!(k.len(), 2);
        assert_eq!(show(k.check("a", Time::from_secs(30), 2)), "ok");
        k.retain_recent(Time::from_secs(30));
        assert_eq!(k.len(), 1, "b is full again at 30 s, a is not");
        k.retain_recent(Time::from_secs(90));
        assert!(k.is_empty());
    }

    #[test]
    fn token_queue() {
        let mut q = TokenQueue::new(2_000_000);
        assert!(q.try_enqueue(1_500_000));
        assert!(!q.try_enqueue(600_000), "would exceed the limit");
        assert_eq!(
            (q.enqueued(), q.free(), q.limit()),
            (1_500_000, 500_000, 2_000_000)
        );
        assert!(q.try_enqueue(500_000));
        assert!(!q.try_enqueue(u64::MAX));
        q.release(1_500_000);
        assert_eq!(q.free(), 1_500_000);
        q.release(u64::MAX);
        assert_eq!(q.enqueued(), 0);
    }

    #[test]
    fn denied_reads_well() {
        let d = Denied::NotUntil {
            earliest: Time::from_millis(644),
            scope: 1,
            dimension: Dimension::Tokens,
        };
        assert_eq!(
            d.to_string(),
            "tokens limit of scope 1 allows this at t+644ms"
        );
        assert_eq!(
            d.retry_after(Time::from_millis(600)),
            Some(Duration::from_millis(44))
        );
        let d = Denied::Never {
            requested: 9,
            capacity: 3,
            scope: 0,
            dimension: Dimension::RequestsPerDay,
        };
        assert_eq!(
            d.to_string(),
            "requests_per_day request of 9 exceeds the capacity of 3 in scope 0"
        );
    }

    /// A naive reference: the classic token bucket, holding a signed level of tokens scaled by
    /// `window_ns` (so one token is `window_ns` and refill is `limit` per nanosecond), capped at
    /// capacity. Exact, because everything is an integer in that scale.
    #[derive(Debug)]
    struct Reference {
        limit: i128,
        window_ns: i128,
        capacity: i128,
        level: i128,
        now: u64,
    }

    impl Reference {
        fn advance(&mut self, to: u64) {
            let dt = i128::from(to.saturating_sub(self.now));
            self.level = (self.level + dt * self.limit).min(self.capacity * self.window_ns);
            self.now = self.now.max(to);
        }
        /// `Ok` if admitted, else the first nanosecond it would be, or `None` for never.
        fn check(&mut self, n: u64) -> Result<(), Option<u64>> {
            let need = i128::from(n) * self.window_ns;
            if n == 0 {
                Ok(())
            } else if i128::from(n) > self.capacity {
                Err(None)
            } else if self.level >= need {
                self.level -= need;
                Ok(())
            } else {
                let wait = (need - self.level + self.limit - 1) / self.limit;
                Err(Some(self.now + u64::try_from(wait).expect("small")))
            }
        }
        fn remaining(&self) -> u64 {
            u64::try_from((self.level / self.window_ns).max(0)).expect("small")
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Advance(u64),
        Check(u64),
        Force(u64),
        Refund(u64),
        Observe(u64),
    }

    fn ops(
        capacity: u64,
        window_ns: u64,
        limit: u64,
        refunds: bool,
    ) -> impl Strategy<Value = Vec<Op>> {
        let step = (window_ns / limit).max(1);
        let refund_weight = if refunds { 1 } else { 0 };
        let op = prop_oneof![
            4 => (0..=3 * step).prop_map(Op::Advance),
            1 => (0..=2 * window_ns).prop_map(Op::Advance),
            6 => (0..=capacity + 1).prop_map(Op::Check),
            1 => (0..=capacity).prop_map(Op::Force),
            refund_weight => (0..=capacity).prop_map(Op::Refund),
            1 => (0..=capacity).prop_map(Op::Observe),
        ];
        proptest::collection::vec(op, 1..120)
    }

    fn params() -> impl Strategy<Value = (u64, u64, u64)> {
        // (limit, window_ns, capacity): windows from 1 µs to a minute. Limits that divide the
        // window (most of them, for the minute) take `Rate::decide`'s 64-bit path; the rest the
        // 128-bit one. The reference holds both.
        (
            1u64..=50,
            prop_oneof![1_000u64..=1_000_000, Just(60_000_000_000), 1u64..=1_000],
            1u64..=80,
        )
    }

    /// Bucket parameters with a script of operations sized to them.
    fn scripts(refunds: bool) -> impl Strategy<Value = ((u64, u64, u64), Vec<Op>)> {
        params().prop_flat_map(move |(limit, window_ns, capacity)| {
            (
                Just((limit, window_ns, capacity)),
                ops(capacity, window_ns, limit, refunds),
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Every decision, `earliest` and `remaining` matches the reference, and `earliest` is
        /// exact: the check passes at it and fails one nanosecond before.
        #[test]
        fn matches_reference(((limit, window_ns, capacity), script) in scripts(true)) {
            let mut b = Bucket::new(nz(limit), Duration::from_nanos(window_ns)).with_capacity(nz(capacity));
            let mut r = Reference {
                limit: i128::from(limit),
                window_ns: i128::from(window_ns),
                capacity: i128::from(capacity),
                level: i128::from(capacity) * i128::from(window_ns),
                now: 0,
            };
            for op in script {
                let now = Time::from_nanos(r.now);
                match op {
                    Op::Advance(dt) => r.advance(r.now + dt),
                    Op::Check(n) => {
                        let peeked = b.peek(now, n);
                        let got = b.check(now, n);
                        prop_assert_eq!(peeked, got);
                        let want = r.check(n);
                        match (got, want) {
                            (Ok(()), Ok(())) | (Err(Denied::Never { .. }), Err(None)) => {}
                            (Err(Denied::NotUntil { earliest, .. }), Err(Some(e))) => {
                                prop_assert_eq!(earliest.as_nanos(), e);
                                prop_assert!(earliest > now);
                                prop_assert!(b.peek(earliest, n).is_ok());
                                prop_assert!(b.peek(Time::from_nanos(e - 1), n).is_err());
                            }
                            (got, want) => prop_assert!(false, "got {:?}, reference {:?}", got, want),
                        }
                    }
                    Op::Force(n) => {
                        b.force_take(now, n);
                        r.level -= i128::from(n) * r.window_ns;
                    }
                    Op::Refund(n) => {
                        b.refund(now, n);
                        r.level = (r.level + i128::from(n) * r.window_ns).min(r.capacity * r.window_ns);
                    }
                    Op::Observe(n) => {
                        b.observe_remaining(now, n);
                        if n < r.remaining() {
                            r.level = i128::from(n) * r.window_ns;
                        }
                    }
                }
                prop_assert_eq!(b.remaining(Time::from_nanos(r.now)), r.remaining());
            }
        }

        /// Without refunds, the units admitted by `check` between any two admissions at `a <= b`
        /// (inclusive) are at most `capacity + limit * (b - a) / window`; in particular at most
        /// `capacity + limit` in any window. Forced takes and observations only lower this.
        #[test]
        fn never_admits_more_than_the_rate(((limit, window_ns, capacity), script) in scripts(false)) {
            let mut b = Bucket::new(nz(limit), Duration::from_nanos(window_ns)).with_capacity(nz(capacity));
            let mut now = 0u64;
            let mut admitted: Vec<(u64, u64)> = Vec::new();
            for op in script {
                match op {
                    Op::Advance(dt) => now += dt,
                    Op::Check(n) => {
                        if n > 0 && b.check(Time::from_nanos(now), n).is_ok() {
                            admitted.push((now, n));
                        }
                    }
                    Op::Force(n) => b.force_take(Time::from_nanos(now), n),
                    Op::Observe(n) => b.observe_remaining(Time::from_nanos(now), n),
                    Op::Refund(_) => {}
                }
            }
            for i in 0..admitted.len() {
                let mut sum = 0u128;
                for j in i..admitted.len() {
                    sum += u128::from(admitted[j].1);
                    let span = u128::from(admitted[j].0 - admitted[i].0);
                    // sum <= capacity + limit * span / window, multiplied through by window.
                    prop_assert!(
                        sum * u128::from(window_ns) <= u128::from(capacity) * u128::from(window_ns) + u128::from(limit) * span,
                        "admitted {} in {} ns", sum, span
                    );
                }
            }
        }

        /// `RateLimits::check` (one decision per bucket) is exactly a peek followed by a forced
        /// take, with RPD on or off and with a bucket blocked by a retry-after.
        #[test]
        fn rate_limits_check_is_peek_then_take(
            used in (0u64..=12, 0u64..=1500),
            c in (0u64..=3, 0u64..=1200),
            at_ms in 0u64..=20_000,
            rpd in proptest::option::of(1u64..=20),
            blocked_ms in proptest::option::of(0u64..=20_000),
        ) {
            let now = Time::from_millis(at_ms);
            let c = charge(c.0, c.1);
            let mut s = rl(10, 1000);
            if let Some(d) = rpd {
                s = s.with_rpd(nz(d));
            }
            s.force_take(Time::ZERO, charge(used.0, used.1));
            if let Some(b) = blocked_ms {
                s.requests_mut().block_until(Time::ZERO, Time::from_millis(b));
            }
            let mut want = s.clone();
            let peeked = want.peek(now, c);
            if peeked.is_ok() {
                want.force_take(now, c);
            }
            let got = s.check(now, c);
            prop_assert_eq!(got, peeked);
            prop_assert_eq!(s, want);
        }

        /// `pace` is the loop it replaces: check now, and when denied, take at the earliest
        /// instant the denial names; with RPD on or off, a bucket blocked by a retry-after,
        /// limits that tick in nanoseconds or not, and charges that can never pass.
        #[test]
        fn pace_is_check_then_take_at_earliest(
            // Limits that divide the minute take `pace`'s nanosecond path (when there is no
            // RPD); 7 and 4,999 do not.
            (rpm, tpm) in (
                prop_oneof![Just(10u64), Just(12), Just(7), 1u64..=40],
                prop_oneof![Just(1000u64), Just(2400), Just(4999), 1u64..=5000],
            ),
            used in (0u64..=12, 0u64..=1500),
            c in (0u64..=3, 0u64..=1200),
            // (arrival in ms, requests): arrivals in any order, so some land before the pacer's
            // current instant and some after.
            groups in proptest::collection::vec((0u64..=40_000, 0u64..=30), 1..6),
            rpd in proptest::option::of(1u64..=20),
            blocked_ms in proptest::option::of(0u64..=20_000),
            block_requests in any::<bool>(),
        ) {
            let c = charge(c.0, c.1);
            let mut s = rl(rpm, tpm);
            if let Some(d) = rpd {
                s = s.with_rpd(nz(d));
            }
            s.force_take(Time::ZERO, charge(used.0, used.1));
            if let Some(b) = blocked_ms {
                let bucket = if block_requests { s.requests_mut() } else { s.tokens_mut() };
                bucket.block_until(Time::ZERO, Time::from_millis(b));
            }
            let mut want = s.clone();
            let (mut t_want, mut t_got) = (Time::ZERO, Time::ZERO);
            let (mut last_want, mut last_got) = (None, None);
            'groups: for (at_ms, count) in groups {
                let arrival = Time::from_millis(at_ms);
                t_want = t_want.max(arrival);
                for _ in 0..count {
                    if let Err(d) = want.check(t_want, c) {
                        match d.earliest() {
                            Some(e) => t_want = e,
                            None => {
                                last_want = None;
                                break 'groups;
                            }
                        }
                        want.force_take(t_want, c);
                    }
                    last_want = Some(t_want);
                }
                t_got = t_got.max(arrival);
                if count > 0 {
                    match s.pace(t_got, count, c) {
                        Some(t) => {
                            t_got = t;
                            last_got = Some(t);
                        }
                        None => {
                            last_got = None;
                            break 'groups;
                        }
                    }
                }
                prop_assert_eq!(t_got, t_want);
                prop_assert_eq!(&s, &want);
            }
            prop_assert_eq!(last_got, last_want);
        }

        /// `check_all` takes from every scope exactly when each would admit, and otherwise
        /// changes nothing and reports when all of them will.
        #[test]
        fn check_all_matches_peeks(
            used in proptest::collection::vec((0u64..=12, 0u64..=1500), 1..4),
            c in (0u64..=3, 0u64..=1200),
            at_ms in 0u64..=20_000,
        ) {
            let now = Time::from_millis(at_ms);
            let c = charge(c.0, c.1);
            let mut scopes: Vec<RateLimits> = used.iter().map(|&(r, t)| {
                let mut s = rl(10, 1000);
                s.force_take(Time::ZERO, charge(r, t));
                s
            }).collect();
            let before = scopes.clone();
            let all_pass = scopes.iter().all(|s| s.peek(now, c).is_ok());
            let ready = scopes.iter().map(|s| s.ready_at(now, c)).collect::<Option<Vec<_>>>().map(|v| v.into_iter().max());
            let mut refs: Vec<&mut RateLimits> = scopes.iter_mut().collect();
            let got = check_all(&mut refs, now, c);
            prop_assert_eq!(got.is_ok(), all_pass);
            match got {
                Ok(()) => for (s, mut b) in scopes.iter().zip(before) {
                    b.force_take(now, c);
                    prop_assert_eq!(s, &b);
                },
                Err(d) => {
                    prop_assert_eq!(&scopes, &before);
                    prop_assert_eq!(d.earliest(), ready.flatten());
                    prop_assert!(scopes[d.scope()].peek(now, c).is_err());
                }
            }
        }
    }
}
