//! Sizes as people read them: `1.0 GiB`, `64.0 MiB`, `512 bytes`.

use std::fmt;

pub const MIB: u64 = 1 << 20;

/// A size in bytes, shown in the largest binary unit it reaches, with one decimal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
        if self.0 < 1024 {
            return write!(f, "{} bytes", self.0);
        }
        let mut value = self.0 as f64 / 1024.0;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        // Rounded down, so a disk a little short of the layout never shows the same number.
        let tenths = (value * 10.0).floor() / 10.0;
        write!(f, "{tenths:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        for (bytes, text) in [
            (0, "0 bytes"),
            (512, "512 bytes"),
            (1536, "1.5 KiB"),
            (64 << 20, "64.0 MiB"),
            (1 << 30, "1.0 GiB"),
            (2402 << 20, "2.3 GiB"),
            ((3 << 30) - 1, "2.9 GiB"),
            (5 << 40, "5.0 TiB"),
        ] {
            assert_eq!(Size(bytes).to_string(), text, "{bytes}");
        }
    }
}
