//! Per-image stages, failure reasons, and the per-upload progress view.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::UploadId;

/// Where an image is. Every image ends in exactly one of the two terminal stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Waiting in core: for pacing, a chunk, a retry, or room in the batch queue.
    Queued,
    /// Handed to the driver: a realtime request in flight, or a batch file being uploaded or
    /// a batch being created. Nothing upstream has accepted it yet.
    Preparing,
    /// Upstream accepted its batch (the batch id is recorded); the batch is validating.
    Submitted,
    /// Its batch is in progress.
    Processing,
    /// Its batch is finalizing or finished; results are being fetched.
    Completing,
    /// Tagged.
    Completed,
    /// Failed, with a [`FailReason`].
    Failed,
}

impl Stage {
    /// All stages, in order.
    pub const ALL: [Stage; 7] = [
        Stage::Queued,
        Stage::Preparing,
        Stage::Submitted,
        Stage::Processing,
        Stage::Completing,
        Stage::Completed,
        Stage::Failed,
    ];

    /// Completed or failed.
    pub fn is_terminal(self) -> bool {
        matches!(self, Stage::Completed | Stage::Failed)
    }

    /// Pending upstream: accepted there and not yet terminal.
    pub fn is_pending_upstream(self) -> bool {
        matches!(
            self,
            Stage::Submitted | Stage::Processing | Stage::Completing
        )
    }
}

/// Why an image failed. Every failure carries one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum FailReason {
    /// Realtime attempts ran out; `last` is the last error.
    RetriesExhausted {
        /// The last error, e.g. `rate_limited`, `server_error_500`, `timeout`.
        last: String,
    },
    /// Upstream rejected the request as invalid (a 4xx other than 429).
    Rejected {
        /// HTTP status.
        status: u16,
        /// Upstream's message.
        message: String,
    },
    /// The request can never fit the account's limits (larger than TPM, or than a batch).
    TooLarge {
        /// What it exceeds.
        what: String,
    },
    /// The image went through the Batch API `batch_max_attempts` times without a result.
    BatchAttemptsExhausted {
        /// The last batch or line error code.
        last: String,
    },
    /// The batch queue stayed full through every hold.
    QueueFull,
    /// The policy stops polling after `poll_give_up_ms` (the seed's bug, made visible).
    PollingAbandoned {
        /// How long it polled.
        after_ms: u64,
    },
    /// The batch's results could not be downloaded.
    DownloadFailed {
        /// The last error.
        error: String,
    },
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailReason::RetriesExhausted { last } => write!(f, "retries exhausted (last: {last})"),
            FailReason::Rejected { status, message } => {
                write!(f, "rejected with {status}: {message}")
            }
            FailReason::TooLarge { what } => write!(f, "too large: {what}"),
            FailReason::BatchAttemptsExhausted { last } => {
                write!(f, "batch attempts exhausted (last: {last})")
            }
            FailReason::QueueFull => write!(f, "batch queue stayed full"),
            FailReason::PollingAbandoned { after_ms } => {
                write!(f, "polling abandoned after {after_ms} ms")
            }
            FailReason::DownloadFailed { error } => write!(f, "result download failed: {error}"),
        }
    }
}

impl FailReason {
    /// A short stable code for counting, e.g. `retries_exhausted`.
    pub fn code(&self) -> &'static str {
        match self {
            FailReason::RetriesExhausted { .. } => "retries_exhausted",
            FailReason::Rejected { .. } => "rejected",
            FailReason::TooLarge { .. } => "too_large",
            FailReason::BatchAttemptsExhausted { .. } => "batch_attempts_exhausted",
            FailReason::QueueFull => "queue_full",
            FailReason::PollingAbandoned { .. } => "polling_abandoned",
            FailReason::DownloadFailed { .. } => "download_failed",
        }
    }
}

/// A snapshot of one upload's progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The upload.
    pub upload: UploadId,
    /// Images in the upload.
    pub total: u32,
    /// Images per stage, indexed like [`Stage::ALL`].
    pub by_stage: [u32; 7],
    /// Time since the upload started.
    pub elapsed: Duration,
    /// Estimated time to the last terminal image, from the rate observed so far; `None`
    /// before the first image ends.
    pub eta: Option<Duration>,
}

impl Progress {
    /// Images in `stage`.
    pub fn count(&self, stage: Stage) -> u32 {
        self.by_stage[stage as usize]
    }

    /// Images completed or failed.
    pub fn terminal(&self) -> u32 {
        self.count(Stage::Completed) + self.count(Stage::Failed)
    }

    /// Terminal images, percent of the total (0 to 100).
    pub fn percent(&self) -> f64 {
        if self.total == 0 {
            return 100.0;
        }
        f64::from(self.terminal()) * 100.0 / f64::from(self.total)
    }
}
