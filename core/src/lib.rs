//! Sans-IO decision logic for tagging images with the OpenAI API.
