//! Criterion bench: the cost of one rate-limit decision in `tagstorm_core::limit` against governor.
//!
//! Both limiters read the same governor `FakeRelativeClock`, advanced by `STEP` before every
//! decision; ours is handed the clock's nanoseconds as a `Time`, so both pay for the clock and
//! neither reads a real one. Both enforce the same quota, `RATE` per second with a burst of one
//! second's worth. With one decision per `STEP` of fake time that quota is never exceeded, so
//! every check passes and each iteration measures the admit-and-update path, which is the
//! common one in the gateway.
//!
//! Ids: `limiter/{tagstorm,governor}/direct` is one bucket; `limiter/{tagstorm,governor}/keyed_10k`
//! cycles through 10,000 `u64` keys, all inserted before measuring. governor's keyed limiter
//! uses its default store (a `DashMap` with std's SipHash `RandomState`), and
//! `limiter/governor/keyed_10k_hashmap_fx` gives it a `Mutex<HashMap>` with the same Fx hasher
//! ours uses, to separate the store from the hasher. governor is `Sync` and ours needs `&mut`,
//! so `limiter/tagstorm/direct_mutex` adds the uncontended `std::sync::Mutex` a shared gateway
//! would put around ours. `limiter/fake_clock_only` times the clock step alone, which every
//! other id includes.

use std::hint::black_box;
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::Mutex;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use governor::clock::{Clock, FakeRelativeClock};
use governor::{Quota, RateLimiter};
use rustc_hash::FxBuildHasher;
use tagstorm_core::Time;
use tagstorm_core::limit::{Bucket, Keyed};

/// Decisions allowed per second; large, so every check in the bench passes.
const RATE: u32 = 1_000_000;
/// Fake time between decisions: exactly one emission interval of `RATE`.
const STEP: Duration = Duration::from_micros(1);
/// Distinct keys in the keyed benches.
const KEYS: u64 = 10_000;

fn governor_quota() -> Quota {
    Quota::per_second(NonZeroU32::new(RATE).unwrap_or(NonZeroU32::MAX))
}

fn tagstorm_bucket() -> Bucket {
    Bucket::new(
        NonZeroU64::new(u64::from(RATE)).unwrap_or(NonZeroU64::MAX),
        Duration::from_secs(1),
    )
}

/// Advances the shared fake clock one step and reads it as our `Time`.
fn tick(clock: &FakeRelativeClock) -> Time {
    clock.advance(STEP);
    Time::from_nanos(clock.now().as_u64())
}

/// The next key in a cycle through `0..KEYS`, without a division in the loop.
fn next_key(key: &mut u64) -> u64 {
    *key += 1;
    if *key == KEYS {
        *key = 0;
    }
    *key
}

fn direct(c: &mut Criterion) {
    let mut group = c.benchmark_group("limiter");

    // The shared cost of advancing and reading the fake clock, to subtract mentally from the rest.
    let clock = FakeRelativeClock::default();
    group.bench_function("fake_clock_only", |b| b.iter(|| black_box(tick(&clock))));

    let clock = FakeRelativeClock::default();
    let mut bucket = tagstorm_bucket();
    group.bench_function("tagstorm/direct", |b| {
        b.iter(|| {
            let now = tick(&clock);
            black_box(bucket.check(black_box(now), black_box(1)))
        })
    });
    // One unit per emission interval leaves the bucket within one unit of full, so no check
    // can have failed; make sure the bucket agrees.
    assert!(bucket.remaining(Time::from_nanos(clock.now().as_u64())) >= u64::from(RATE) - 1);

    let clock = FakeRelativeClock::default();
    let shared = Mutex::new(tagstorm_bucket());
    group.bench_function("tagstorm/direct_mutex", |b| {
        b.iter(|| {
            let now = tick(&clock);
            let mut bucket = shared.lock().unwrap_or_else(|e| e.into_inner());
            black_box(bucket.check(black_box(now), black_box(1)))
        })
    });

    let clock = FakeRelativeClock::default();
    let limiter = RateLimiter::direct_with_clock(governor_quota(), clock.clone());
    group.bench_function("governor/direct", |b| {
        b.iter(|| {
            clock.advance(STEP);
            black_box(limiter.check())
        })
    });
    assert!(limiter.check().is_ok());

    group.finish();
}

fn keyed(c: &mut Criterion) {
    let mut group = c.benchmark_group("limiter");

    let clock = FakeRelativeClock::default();
    let mut ours = Keyed::new(tagstorm_bucket());
    for k in 0..KEYS {
        let _ = ours.check(k, Time::ZERO, 1);
    }
    let mut key = 0;
    group.bench_function("tagstorm/keyed_10k", |b| {
        b.iter(|| {
            let now = tick(&clock);
            black_box(ours.check(black_box(next_key(&mut key)), black_box(now), black_box(1)))
        })
    });
    assert_eq!(ours.len(), KEYS as usize);

    let clock = FakeRelativeClock::default();
    let theirs = RateLimiter::dashmap_with_clock(governor_quota(), clock.clone());
    for k in 0..KEYS {
        let _ = theirs.check_key(&k);
    }
    let mut key = 0;
    group.bench_function("governor/keyed_10k", |b| {
        b.iter(|| {
            clock.advance(STEP);
            black_box(theirs.check_key(black_box(&next_key(&mut key))))
        })
    });
    assert_eq!(theirs.len(), KEYS as usize);

    let clock = FakeRelativeClock::default();
    let theirs =
        RateLimiter::hashmap_with_clock_and_hasher(governor_quota(), clock.clone(), FxBuildHasher);
    for k in 0..KEYS {
        let _ = theirs.check_key(&k);
    }
    let mut key = 0;
    group.bench_function("governor/keyed_10k_hashmap_fx", |b| {
        b.iter(|| {
            clock.advance(STEP);
            black_box(theirs.check_key(black_box(&next_key(&mut key))))
        })
    });

    group.finish();
}

criterion_group!(benches, direct, keyed);
criterion_main!(benches);
