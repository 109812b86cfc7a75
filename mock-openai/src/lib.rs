//! A behaviour model of the OpenAI API.
