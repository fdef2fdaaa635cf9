//! Plan renderings (human, JSON, Markdown).
