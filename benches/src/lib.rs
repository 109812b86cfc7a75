//! Shared helpers for the criterion benches; the benches themselves live in `benches/benches/`.
