//! A behaviour model of the OpenAI API.

pub mod batch;
pub mod chat;
pub mod config;
pub mod error;
pub mod fault;
pub mod files;
pub mod headers;
pub mod ids;
pub mod jsonl;
pub mod latency;
pub mod org;
pub mod tags;
pub mod upstream;

pub use upstream::Upstream;
