//! The kernel command line as a type that round-trips, with the kernel's own splitting rules
//! (`lib/cmdline.c: next_arg`): whitespace separates parameters unless inside double quotes,
//! a quote that opens a parameter or its value is dropped along with its partner at the end,
//! and `--` hands everything after it to init as arguments.

use std::fmt;

/// One `key` or `key=value` parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub key: String,
    pub value: Option<String>,
}

/// A parsed kernel command line: parameters in order, and the words after `--`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cmdline {
    pub params: Vec<Param>,
    pub init_args: Vec<String>,
}

impl Cmdline {
    pub fn parse(text: &str) -> Self {
        let mut cmdline = Self::default();
        let mut rest = text.trim_start();
        while !rest.is_empty() {
            let (word, after) = next_word(rest);
            rest = after.trim_start();
            if word == "--" {
                cmdline.init_args = rest.split_whitespace().map(str::to_owned).collect();
                break;
            }
            cmdline.params.push(split_param(word));
        }
        cmdline
    }

    /// The value of the last occurrence of `key` (the kernel and systemd let the last one
    /// win); `Some(None)` for a bare flag.
    pub fn last(&self, key: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .rev()
            .find(|param| param.key == key)
            .map(|param| param.value.as_deref())
    }
}

/// The next whitespace-separated word, honouring double quotes; returns (word, rest).
fn next_word(text: &str) -> (&str, &str) {
    let mut in_quote = false;
    for (index, ch) in text.char_indices() {
        if ch == '"' {
            in_quote = !in_quote;
        } else if ch.is_whitespace() && !in_quote {
            return (&text[..index], &text[index..]);
        }
    }
    (text, "")
}

/// Splits `key=value`, dropping the quotes the kernel drops: a quote opening the whole word
/// or the value, together with a quote that ends the word.
fn split_param(word: &str) -> Param {
    let quoted = word.starts_with('"');
    let word = if quoted { &word[1..] } else { word };
    let strip_end = |s: &str| s.strip_suffix('"').unwrap_or(s).to_owned();
    match word.split_once('=') {
        None if quoted => Param {
            key: strip_end(word),
            value: None,
        },
        None => Param {
            key: word.to_owned(),
            value: None,
        },
        Some((key, value)) => {
            let value = match value.strip_prefix('"') {
                Some(inner) => strip_end(inner),
                None if quoted => strip_end(value),
                None => value.to_owned(),
            };
            Param {
                key: key.to_owned(),
                value: Some(value),
            }
        }
    }
}

impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            None => f.write_str(&self.key),
            Some(value) if value.contains(char::is_whitespace) || value.is_empty() => {
                write!(f, "{}=\"{value}\"", self.key)
            }
            Some(value) => write!(f, "{}={value}", self.key),
        }
    }
}

impl fmt::Display for Cmdline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut words: Vec<String> = self.params.iter().map(Param::to_string).collect();
        if !self.init_args.is_empty() {
            words.push("--".to_owned());
            words.extend(self.init_args.iter().cloned());
        }
        f.write_str(&words.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(key: &str, value: Option<&str>) -> Param {
        Param {
            key: key.into(),
            value: value.map(Into::into),
        }
    }

    #[test]
    fn splits_on_whitespace_and_keeps_flags() {
        let cmdline = Cmdline::parse("  console=ttyS0   quiet\troot=/dev/vda1\n");
        assert_eq!(
            cmdline.params,
            vec![
                param("console", Some("ttyS0")),
                param("quiet", None),
                param("root", Some("/dev/vda1")),
            ]
        );
        assert!(cmdline.init_args.is_empty());
    }

    #[test]
    fn quotes_group_words_and_are_dropped_like_the_kernel_does() {
        let cmdline = Cmdline::parse(r#"a="x y" "b=p q" c=in"ner"quote "flag""#);
        assert_eq!(
            cmdline.params,
            vec![
                param("a", Some("x y")),
                param("b", Some("p q")),
                param("c", Some("in\"ner\"quote")),
                param("flag", None),
            ]
        );
    }

    #[test]
    fn unterminated_quote_runs_to_the_end() {
        let cmdline = Cmdline::parse(r#"a="x y z"#);
        assert_eq!(cmdline.params, vec![param("a", Some("x y z"))]);
    }

    #[test]
    fn double_dash_ends_kernel_parameters() {
        let cmdline = Cmdline::parse("root=/dev/vda -- --debug  single root=ignored");
        assert_eq!(cmdline.params, vec![param("root", Some("/dev/vda"))]);
        assert_eq!(cmdline.init_args, ["--debug", "single", "root=ignored"]);
        assert_eq!(cmdline.last("root"), Some(Some("/dev/vda")));
    }

    #[test]
    fn last_occurrence_wins() {
        let cmdline = Cmdline::parse("init=/a xorbang.dev=1 init=/b xorbang.dev");
        assert_eq!(cmdline.last("init"), Some(Some("/b")));
        assert_eq!(cmdline.last("xorbang.dev"), Some(None));
        assert_eq!(cmdline.last("absent"), None);
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "console=ttyS0 quiet root=PARTUUID=954172df-ee9a-aab2-d90a-0ab162ee6bc5",
            r#"a="x y" b= c=d -- e f"#,
            "",
        ] {
            let parsed = Cmdline::parse(text);
            assert_eq!(Cmdline::parse(&parsed.to_string()), parsed, "{text}");
        }
        assert_eq!(Cmdline::parse(r#""a=x y""#).to_string(), r#"a="x y""#);
    }
}
