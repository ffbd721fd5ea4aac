//! Topic names the way Debezium's router picks them: Connect's `RegexRouter` over
//! the routed value with `route.topic.regex` and `route.topic.replacement`. The
//! regular expression must match the whole value; its groups fill the replacement
//! by Java's rules (`$1`, `${name}`, `\` quoting the next character); a value it
//! does not match is the topic itself.

use std::collections::HashMap;

use regex::Regex;

/// At most this many routed values keep their topic cached.
const MAX_CACHED_TOPICS: usize = 1024;

#[derive(Debug, Clone)]
pub struct TopicNamer {
    regex: Regex,
    replacement: Vec<Piece>,
    cache: HashMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Literal(String),
    Group(usize),
    Named(String),
}

impl TopicNamer {
    /// Compiles `regex` and parses `replacement`; errors name the setting.
    pub fn new(regex: &str, replacement: &str) -> Result<TopicNamer, String> {
        let anchored = format!("^(?:{regex})$");
        let compiled = Regex::new(&anchored).map_err(|e| {
            format!(
                "routing.topic_regex '{regex}' is not a regular expression outboxd accepts \
                 ({e}); Rust's regex syntax has no look-around and no backreferences, \
                 otherwise it reads Java's (named groups `(?<name>…)` included)"
            )
        })?;
        let replacement = parse_replacement(replacement, &compiled)
            .map_err(|e| format!("routing.topic '{replacement}': {e}"))?;
        Ok(TopicNamer {
            regex: compiled,
            replacement,
            cache: HashMap::new(),
        })
    }

    /// The topic for a routed value, checked to be a legal Kafka topic name.
    pub fn topic(&mut self, routed: &str) -> Result<String, String> {
        if let Some(topic) = self.cache.get(routed) {
            return Ok(topic.clone());
        }
        let topic = match self.regex.captures(routed) {
            Some(groups) => {
                let mut out = String::new();
                for piece in &self.replacement {
                    match piece {
                        Piece::Literal(s) => out.push_str(s),
                        Piece::Group(i) => {
                            out.push_str(groups.get(*i).map_or("", |m| m.as_str()));
                        }
                        Piece::Named(n) => out.push_str(groups.name(n).map_or("", |m| m.as_str())),
                    }
                }
                out
            }
            None => routed.to_owned(),
        };
        let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if topic.is_empty()
            || topic.len() > 249
            || topic == "."
            || topic == ".."
            || !topic.chars().all(legal)
        {
            return Err(format!(
                "routed value '{routed}' gives topic '{topic}', which is not a legal Kafka \
                 topic name (letters, digits, '.', '_', '-'; at most 249)"
            ));
        }
        if self.cache.len() >= MAX_CACHED_TOPICS {
            self.cache.clear();
        }
        self.cache.insert(routed.to_owned(), topic.clone());
        Ok(topic)
    }
}

/// `Matcher.appendReplacement`'s syntax: `\x` is `x`; `${name}` a named group;
/// `$n` a group number, taking further digits while the number stays a group.
fn parse_replacement(replacement: &str, regex: &Regex) -> Result<Vec<Piece>, String> {
    let groups = regex.captures_len() - 1;
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut chars = replacement.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(next) => literal.push(next),
                None => return Err("character to be escaped is missing".to_owned()),
            },
            '$' => {
                if !literal.is_empty() {
                    pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                }
                if chars.peek() == Some(&'{') {
                    chars.next();
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) if c.is_ascii_alphanumeric() => name.push(c),
                            _ => {
                                return Err(
                                    "named capturing group is missing trailing '}'".to_owned()
                                )
                            }
                        }
                    }
                    if regex.capture_names().flatten().all(|n| n != name) {
                        return Err(format!(
                            "no group with name {{{name}}} in routing.topic_regex"
                        ));
                    }
                    pieces.push(Piece::Named(name));
                } else {
                    let first = chars
                        .next()
                        .and_then(|c| c.to_digit(10))
                        .ok_or("illegal group reference: '$' must be followed by a digit or '{'")?;
                    let mut number = first as usize;
                    while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                        let next = number * 10 + d as usize;
                        if next > groups {
                            break;
                        }
                        number = next;
                        chars.next();
                    }
                    if number > groups {
                        return Err(format!("no group {number} in routing.topic_regex"));
                    }
                    pieces.push(Piece::Group(number));
                }
            }
            c => literal.push(c),
        }
    }
    if !literal.is_empty() {
        pieces.push(Piece::Literal(literal));
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_routing() {
        let mut t =
            TopicNamer::new("(?<routedByValue>.*)", "outbox.event.${routedByValue}").unwrap();
        assert_eq!(t.topic("order").unwrap(), "outbox.event.order");
        assert!(t.topic("bad topic").is_err());
        assert!(t.topic("bad topic").is_err(), "not cached when illegal");
    }

    /// What Debezium 3.7.0 produced for these settings (docs/configuration.md).
    #[test]
    fn groups_and_unmatched_values_as_connects_regex_router() {
        let mut t = TopicNamer::new(
            "(?<routedByValue>[A-Z][a-z]+)(.*)",
            "ex_route.$2.${routedByValue}",
        )
        .unwrap();
        assert_eq!(t.topic("OrderCreated").unwrap(), "ex_route.Created.Order");
        assert_eq!(t.topic("Deleted").unwrap(), "ex_route..Deleted");
        // No full match: the value itself.
        assert_eq!(t.topic("order-x").unwrap(), "order-x");
        let mut t = TopicNamer::new("(a)(b)", r"x.$12.\_.$1").unwrap();
        assert_eq!(t.topic("ab").unwrap(), "x.a2._.a");
    }

    #[test]
    fn bad_settings_are_named() {
        assert!(TopicNamer::new("(?=x)", "t")
            .unwrap_err()
            .contains("look-around"));
        assert!(TopicNamer::new("(x)", "t.$2")
            .unwrap_err()
            .contains("no group 2"));
        assert!(TopicNamer::new("(x)", "t.${nope}")
            .unwrap_err()
            .contains("nope"));
    }
}
