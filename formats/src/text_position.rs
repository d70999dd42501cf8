//! Where in a text file a parser's complaint belongs: TOML parsers give byte offsets, people
//! count lines and characters. Used by every TOML file xorbang reads (host config, build
//! profiles), so each refusal names its line and column the same way.

/// 1-based line and column (in characters) of a byte offset; offsets past the end or inside
/// a character are clamped rather than trusted, since they come from another crate.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line = 1 + before.iter().filter(|&&byte| byte == b'\n').count();
    let line_start = before
        .iter()
        .rposition(|&byte| byte == b'\n')
        .map_or(0, |newline| newline + 1);
    let column = 1 + before[line_start..]
        .iter()
        .filter(|&&byte| byte & 0xC0 != 0x80)
        .count();
    (line, column)
}

/// Makes any message one line: the boot log writes one record per line, and a key name in
/// a toml message may hold a newline.
pub fn one_line(message: &str) -> String {
    message
        .split(['\n', '\r', '\u{2028}', '\u{2029}'])
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_characters_and_lines() {
        assert_eq!(line_col("", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 3), (2, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("äö = 1", 5), (1, 4));
        assert_eq!(line_col("ab", 99), (1, 3));
        assert_eq!(line_col("ä", 1), (1, 2));
        assert_eq!(one_line("a\n  b\r\n\nc\td"), "a; b; c d");
    }
}
