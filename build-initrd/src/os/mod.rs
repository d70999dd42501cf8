//! `xorbang-build os`: a whole OS from one profile.

pub mod cache;
pub mod profile;
