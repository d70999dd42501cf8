//! `xorbang-update`: moves a xorbang machine to another version of its image.

mod http;

fn main() {}
