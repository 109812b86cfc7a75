//! A behaviour model of the OpenAI API.

pub mod config;
pub mod error;
pub mod fault;
pub mod headers;
pub mod ids;
pub mod jsonl;
pub mod latency;
pub mod tags;
