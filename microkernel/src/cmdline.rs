//! The kernel command line: space-separated `key=value` words and bare flags.
//!
//! The scenario to run is named by `scenario=NAME`; `run=NAME` and `test=NAME` are accepted as
//! synonyms (DESIGN.md writes `run=demo`, `test=ipc`). When several are given the first wins.

pub use abi::scenario::DEFAULT as DEFAULT_SCENARIO;

/// A parsed view of the command line; borrows the original text.
#[derive(Clone, Copy, Debug)]
pub struct Cmdline<'a> {
    text: &'a str,
}

impl<'a> Cmdline<'a> {
    pub fn new(text: &'a str) -> Self {
        Self { text }
    }

    /// The whole command line as given by the loader.
    pub fn as_str(&self) -> &'a str {
        self.text
    }

    /// The words of the command line, split on ASCII whitespace.
    pub fn words(&self) -> impl Iterator<Item = &'a str> {
        self.text.split_ascii_whitespace()
    }

    /// The value of the first `key=value` word with this key (`Some("")` for `key=`).
    pub fn value(&self, key: &str) -> Option<&'a str> {
        self.words().find_map(|word| {
            let (k, v) = word.split_once('=')?;
            (k == key).then_some(v)
        })
    }

    /// Whether the bare word `flag` (no `=`) appears.
    pub fn has_flag(&self, flag: &str) -> bool {
        self.words().any(|word| word == flag)
    }

    /// The scenario named on the command line, or [`DEFAULT_SCENARIO`].
    pub fn scenario(&self) -> &'a str {
        self.words()
            .find_map(|word| {
                let (k, v) = word.split_once('=')?;
                matches!(k, "scenario" | "run" | "test").then_some(v)
            })
            .filter(|v| !v.is_empty())
            .unwrap_or(DEFAULT_SCENARIO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_from_any_synonym() {
        assert_eq!(Cmdline::new("scenario=kernel").scenario(), "kernel");
        assert_eq!(Cmdline::new("quiet run=demo").scenario(), "demo");
        assert_eq!(Cmdline::new("test=ipc loglevel=debug").scenario(), "ipc");
    }

    #[test]
    fn first_scenario_wins_and_default_applies() {
        assert_eq!(Cmdline::new("test=a scenario=b").scenario(), "a");
        assert_eq!(Cmdline::new("").scenario(), DEFAULT_SCENARIO);
        assert_eq!(Cmdline::new("scenario=").scenario(), DEFAULT_SCENARIO);
        assert_eq!(Cmdline::new("scenarios=x").scenario(), DEFAULT_SCENARIO);
    }

    #[test]
    fn values_and_flags() {
        let c = Cmdline::new("  a=1   b= flag c=x=y ");
        assert_eq!(c.value("a"), Some("1"));
        assert_eq!(c.value("b"), Some(""));
        assert_eq!(c.value("c"), Some("x=y"));
        assert_eq!(c.value("flag"), None);
        assert!(c.has_flag("flag"));
        assert!(!c.has_flag("a"));
        assert_eq!(c.words().count(), 4);
    }
}
