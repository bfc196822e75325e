//! The audit chain on a real SQLite file.
