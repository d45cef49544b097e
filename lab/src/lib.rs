//! Whole clusters on one Linux machine. Not built yet.
