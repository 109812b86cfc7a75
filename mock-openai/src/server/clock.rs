//! The server's one clock: maps real elapsed time onto the model's [`Time`] multiplied by
//! `--speedup`, and converts the model's durations and timestamps back into real ones.
//!
//! With speedup `N`, one real second is `N` model seconds. The model (limit windows, latency,
//! batch timelines) runs entirely in model time; everything the server *reports* is real:
//!
//! | reported value | conversion |
//! |---|---|
//! | `x-ratelimit-reset-requests`, `x-ratelimit-reset-tokens` | model duration ÷ N |
//! | `retry-after` (whole seconds, ≥ 1, rounded up), `retry-after-ms` | model duration ÷ N |
//! | "Please try again in …" in a 429 body | model duration ÷ N |
//! | modelled latency, 500/503 delays, timeout holds, slow-body dribbles | slept for model ÷ N |
//! | `created_at`, `in_progress_at`, `expires_at`, … of batches and files, `created` of batch output lines | wall-clock start + (model elapsed ÷ N) |
//! | `created` of a realtime chat completion | the wall clock at the response |
//! | `x-ratelimit-limit-*`, `remaining-*`, and the Limit/Used/Requested counts | unchanged (counts, not durations) |
//!
//! So a client that sleeps what the headers say is admitted, and the gap between a batch's
//! `created_at` and `completed_at` is its modelled turnaround divided by N. The `created` of
//! batch output lines, which the model renders itself, goes through the same mapping
//! ([`crate::upstream::WallClock`], handed to the model by [`crate::server::State::new`]).
//!
//! Tests substitute [`ServerClock::manual`], whose real elapsed time only moves when told.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tagstorm_core::Time;

use crate::upstream::WallClock;

/// Smallest accepted speedup (one model second per 1,000 real seconds).
pub const MIN_SPEEDUP: f64 = 0.001;
/// Largest accepted speedup. Model time is a u64 of nanoseconds (584 years) and saturates
/// there, freezing limits and batches; at `N` it lasts 584/`N` years of uptime, so 10,000
/// leaves three weeks (1,000,000 froze the server after 5.1 hours).
pub const MAX_SPEEDUP: f64 = 10_000.0;

/// A speedup outside [`MIN_SPEEDUP`, `MAX_SPEEDUP`] or not finite.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("speedup: must be a finite number within {MIN_SPEEDUP}..={MAX_SPEEDUP}, got {0}")]
pub struct BadSpeedup(pub f64);

#[derive(Debug)]
enum Source {
    /// Real monotonic time since `start`.
    System { start: Instant },
    /// Real elapsed nanoseconds, moved only by [`ManualHandle::advance`].
    Manual(Arc<AtomicU64>),
}

/// Moves a manual [`ServerClock`] forward (tests).
#[derive(Clone, Debug)]
pub struct ManualHandle(Arc<AtomicU64>);

impl ManualHandle {
    /// Advances the clock's *real* elapsed time by `real`; model time moves `real × speedup`.
    pub fn advance(&self, real: Duration) {
        let ns = u64::try_from(real.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some(v.saturating_add(ns))
            });
    }
}

/// The clock every handler reads. See the module docs for what is converted and how.
#[derive(Debug)]
pub struct ServerClock {
    source: Source,
    speedup: f64,
    /// Wall-clock Unix time at model `Time::ZERO`, in milliseconds.
    unix_start_ms: u64,
}

/// Reads the real clocks. The workspace bans `Instant::now` and `SystemTime::now` for core's
/// sake (clippy.toml); the server is a real-time driver, and this and [`read_instant`] are the
/// only places it reads them.
#[allow(clippy::disallowed_methods)]
fn read_real_clocks() -> (Instant, u64) {
    let wall_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    (Instant::now(), wall_ms)
}

/// The monotonic clock alone: every request reads it two or three times, and the wall clock
/// is only needed once, at the start.
#[allow(clippy::disallowed_methods)]
fn read_instant() -> Instant {
    Instant::now()
}

/// `d` in nanoseconds, saturating at 584 years: converting a `u64` to `f64` is one
/// instruction, and a `u128` a library call.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn check_speedup(speedup: f64) -> Result<f64, BadSpeedup> {
    if speedup.is_finite() && (MIN_SPEEDUP..=MAX_SPEEDUP).contains(&speedup) {
        Ok(speedup)
    } else {
        Err(BadSpeedup(speedup))
    }
}

impl ServerClock {
    /// The real clock, starting now, running `speedup` times faster in model time.
    pub fn system(speedup: f64) -> Result<ServerClock, BadSpeedup> {
        let (start, unix_start_ms) = read_real_clocks();
        Ok(ServerClock {
            source: Source::System { start },
            speedup: check_speedup(speedup)?,
            unix_start_ms,
        })
    }

    /// A clock that stands still until its handle advances it; model `Time::ZERO` is
    /// `unix_start_s` on the wall clock.
    pub fn manual(
        speedup: f64,
        unix_start_s: u64,
    ) -> Result<(ServerClock, ManualHandle), BadSpeedup> {
        let cell = Arc::new(AtomicU64::new(0));
        Ok((
            ServerClock {
                source: Source::Manual(cell.clone()),
                speedup: check_speedup(speedup)?,
                unix_start_ms: unix_start_s.saturating_mul(1000),
            },
            ManualHandle(cell),
        ))
    }

    /// The speedup `N`.
    pub fn speedup(&self) -> f64 {
        self.speedup
    }

    /// Real time elapsed since the clock started.
    pub fn real_elapsed(&self) -> Duration {
        match &self.source {
            Source::System { start } => read_instant().saturating_duration_since(*start),
            Source::Manual(cell) => Duration::from_nanos(cell.load(Ordering::SeqCst)),
        }
    }

    /// Model time now: real elapsed × speedup.
    pub fn now(&self) -> Time {
        self.model_at(self.real_elapsed())
    }

    /// Model time at `real` elapsed since the start ([`ServerClock::real_elapsed`]): a handler
    /// that needs several readings of one instant reads the clock once.
    pub fn model_at(&self, real: Duration) -> Time {
        let real_ns = nanos(real);
        if self.speedup == 1.0 {
            return Time::from_nanos(real_ns);
        }
        // `as` saturates on overflow, so this cannot panic.
        Time::from_nanos((real_ns as f64 * self.speedup) as u64)
    }

    /// The real duration of a modelled one: `model ÷ speedup`.
    pub fn to_real(&self, model: Duration) -> Duration {
        if self.speedup == 1.0 {
            return model;
        }
        Duration::from_nanos((nanos(model) as f64 / self.speedup) as u64)
    }

    /// Wall-clock Unix seconds now.
    pub fn unix_now_s(&self) -> u64 {
        self.unix_at_s(self.real_elapsed())
    }

    /// Wall-clock Unix seconds at `real` elapsed since the start.
    pub fn unix_at_s(&self, real: Duration) -> u64 {
        let ms = u64::try_from(real.as_millis()).unwrap_or(u64::MAX);
        self.unix_start_ms.saturating_add(ms) / 1000
    }

    /// Converts a Unix timestamp the model rendered (`model_epoch_s` + model seconds) into
    /// wall-clock seconds: start + model elapsed ÷ speedup.
    pub fn unix_from_model(&self, model_unix_s: u64, model_epoch_s: u64) -> u64 {
        self.wall().unix_from_model(model_unix_s, model_epoch_s)
    }

    /// The mapping of model time onto the wall clock, for the model's own rendering.
    pub fn wall(&self) -> WallClock {
        WallClock {
            unix_start_ms: self.unix_start_ms,
            speedup: self.speedup,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_scales_time_and_durations() {
        let (clock, handle) = ServerClock::manual(60.0, 1_800_000_000).unwrap();
        assert_eq!(clock.now(), Time::ZERO);
        handle.advance(Duration::from_secs(1));
        assert_eq!(clock.now(), Time::from_secs(60));
        assert_eq!(
            clock.to_real(Duration::from_secs(60)),
            Duration::from_secs(1)
        );
        assert_eq!(clock.unix_now_s(), 1_800_000_001);
        // 120 model seconds after the model's epoch are 2 real seconds after the start.
        assert_eq!(clock.unix_from_model(1_000_120, 1_000_000), 1_800_000_002);
    }

    #[test]
    fn speedup_is_checked() {
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e7] {
            assert!(ServerClock::system(bad).is_err(), "{bad}");
        }
        assert!(ServerClock::system(1.0).is_ok());
    }
}
