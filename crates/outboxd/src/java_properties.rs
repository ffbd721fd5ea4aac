//! `java.util.Properties` text, as `Properties.load` reads it: Debezium's trace
//! context column and Kafka Connect's `.properties` files are written in it.

/// `java.util.Properties.load`: `key=value`, `key:value` or `key value` lines;
/// `#` and `!` comments; a trailing backslash continues the line; `\t`, `\n`,
/// `\r`, `\f`, `\uXXXX` and `\x` escapes. Pairs in order of appearance.
pub fn parse(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let text = text.replace("\r\n", "\n");
    let mut lines = text.split(['\n', '\r']);
    while let Some(first) = lines.next() {
        let mut logical = String::new();
        let mut line = first.trim_start_matches([' ', '\t', '\u{c}']);
        if line.is_empty() || line.starts_with(['#', '!']) {
            continue;
        }
        loop {
            let trailing = line.len() - line.trim_end_matches('\\').len();
            if trailing % 2 == 1 {
                logical.push_str(&line[..line.len() - 1]);
                match lines.next() {
                    Some(next) => line = next.trim_start_matches([' ', '\t', '\u{c}']),
                    None => break,
                }
            } else {
                logical.push_str(line);
                break;
            }
        }
        out.push(split_pair(&logical));
    }
    out
}

/// Splits a logical line at the first unescaped `=`, `:` or whitespace.
fn split_pair(line: &str) -> (String, String) {
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '=' | ':' | ' ' | '\t' | '\u{c}' => break,
            _ => i += 1,
        }
    }
    let key_end = i.min(chars.len());
    let mut j = key_end;
    while j < chars.len() && matches!(chars[j], ' ' | '\t' | '\u{c}') {
        j += 1;
    }
    if j < chars.len() && matches!(chars[j], '=' | ':') {
        j += 1;
        while j < chars.len() && matches!(chars[j], ' ' | '\t' | '\u{c}') {
            j += 1;
        }
    }
    let key: String = chars[..key_end].iter().collect();
    let value: String = chars[j..].iter().collect();
    (unescape(&key), unescape(&value))
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('f') => out.push('\u{c}'),
            Some('u') => {
                let hex: String = chars.by_ref().take(4).collect();
                if let Some(c) = u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                    out.push(c);
                }
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax() {
        assert_eq!(
            parse("  a = 1\n! c\nb:two\\\n   parts\nc three\nd\\u0041=\\t"),
            vec![
                ("a".to_owned(), "1".to_owned()),
                ("b".to_owned(), "twoparts".to_owned()),
                ("c".to_owned(), "three".to_owned()),
                ("dA".to_owned(), "\t".to_owned()),
            ]
        );
    }
}
