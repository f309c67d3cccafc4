//! The boot manifest: what the supervisor reads from each boot module's command line.
//!
//! One line per service, the module's command line: the service name first, then
//! `key=value` words separated by blanks:
//!
//! ```text
//! echo restart=3 backoff=1
//! ipc-suite run=ipc needs=echo
//! ```
//!
//! | key | value | default |
//! | --- | --- | --- |
//! | `restart` | how many times the supervisor restarts the service after a fault | 3 |
//! | `backoff` | timer ticks to wait before a restart | 1 |
//! | `run` | comma-separated scenarios the service runs in | empty: every scenario |
//! | `needs` | comma-separated services that must be started first; the service gets each one's endpoint, and takes it by name (`userlib::wiring`); `boot` names the read-only boot capability, `vmx` the VMX capability, `spawn` a copy of the spawn capability, `trace-ring` the exit trace ring's | empty |
//! | `image` | `service` (a task the supervisor starts) or `guest` (a guest image the VMM loads; never started as a task) | `service` |
//! | `pages` | the service's page budget: how many pages of memory it may allocate and hold at once (`MemAlloc`) | 1024 (4 MiB) |
//!
//! Names (the service's, scenarios', needed services') are non-empty words of ASCII letters,
//! digits, `-`, `_` and `.`. Unknown keys, repeated keys, empty values or list items and
//! malformed numbers are errors: a typo in the manifest should stop the boot, not be ignored.
#![forbid(unsafe_code)]

use core::fmt;

use heapless::{String, Vec};

/// Longest name (service or scenario), in bytes.
pub const NAME_MAX: usize = 32;
/// Most scenarios in one `run=` list.
pub const MAX_RUN: usize = 12;
/// Most services in one `needs=` list.
pub const MAX_NEEDS: usize = 8;
/// Restart limit when the line sets none.
pub const DEFAULT_RESTART: u32 = 3;
/// Restart backoff, in timer ticks, when the line sets none.
pub const DEFAULT_BACKOFF: u64 = 1;
/// Page budget when the line sets none (4 MiB).
pub const DEFAULT_PAGES: u64 = 1024;
/// The keys a line may set, in the order [`parse`] numbers them.
pub const KEYS: [&str; 6] = ["restart", "backoff", "run", "needs", "image", "pages"];

/// A service or scenario name.
pub type Name = String<NAME_MAX>;

/// One parsed manifest line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestEntry {
    /// The service's name (the first word).
    pub name: Name,
    /// How many times the supervisor restarts it after a fault.
    pub restart: u32,
    /// Timer ticks to wait before each restart.
    pub backoff: u64,
    /// The scenarios it runs in; empty means every scenario.
    pub run: Vec<Name, MAX_RUN>,
    /// Services that must be running before it starts.
    pub needs: Vec<Name, MAX_NEEDS>,
    /// A guest image (`image=guest`), not a service.
    pub guest: bool,
    /// How many pages of memory it may allocate and hold at once.
    pub pages: u64,
}

impl ManifestEntry {
    /// Whether the service runs in `scenario`.
    pub fn runs_in(&self, scenario: &str) -> bool {
        !self.guest && (self.run.is_empty() || self.run.iter().any(|s| s == scenario))
    }

    /// Whether it needs service `name`.
    pub fn needs(&self, name: &str) -> bool {
        self.needs.iter().any(|s| s == name)
    }
}

/// Why a manifest line was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestError {
    /// The line holds no word.
    Empty,
    /// The first word is not a valid name (e.g. it is a `key=value`).
    BadName,
    /// A word after the name is not `key=value`.
    NotKeyValue,
    /// A key this parser does not know.
    UnknownKey,
    /// A key given twice.
    DuplicateKey,
    /// `key=` with nothing after it.
    EmptyValue,
    /// `restart`/`backoff` is not a decimal number in range.
    BadNumber,
    /// A list item is empty or not a valid name.
    BadListItem,
    /// A name or list is longer than this parser keeps.
    TooLong,
    /// The service needs itself.
    NeedsItself,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ManifestError::Empty => "empty manifest line",
            ManifestError::BadName => "the first word must be the service name",
            ManifestError::NotKeyValue => "expected key=value",
            ManifestError::UnknownKey => "unknown key (restart, backoff, run, needs, image, pages)",
            ManifestError::DuplicateKey => "key given twice",
            ManifestError::EmptyValue => "empty value",
            ManifestError::BadNumber => "not a decimal number in range",
            ManifestError::BadListItem => "empty or invalid name in a list",
            ManifestError::TooLong => "name or list too long",
            ManifestError::NeedsItself => "a service cannot need itself",
        })
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn name(s: &str) -> Result<Name, ManifestError> {
    Name::try_from(s).map_err(|_| ManifestError::TooLong)
}

fn list<const N: usize>(value: &str) -> Result<Vec<Name, N>, ManifestError> {
    let mut out = Vec::new();
    for item in value.split(',') {
        if !is_name(item) {
            return Err(ManifestError::BadListItem);
        }
        out.push(name(item)?).map_err(|_| ManifestError::TooLong)?;
    }
    Ok(out)
}

fn number<T: core::str::FromStr>(value: &str) -> Result<T, ManifestError> {
    // `FromStr` for integers accepts a leading `+`; the manifest wants plain digits.
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ManifestError::BadNumber);
    }
    value.parse().map_err(|_| ManifestError::BadNumber)
}

/// Parses one manifest line (a boot module's command line).
pub fn parse(line: &str) -> Result<ManifestEntry, ManifestError> {
    let mut words = line.split_ascii_whitespace();
    let first = words.next().ok_or(ManifestError::Empty)?;
    if !is_name(first) {
        return Err(ManifestError::BadName);
    }
    let mut entry = ManifestEntry {
        name: name(first)?,
        restart: DEFAULT_RESTART,
        backoff: DEFAULT_BACKOFF,
        run: Vec::new(),
        needs: Vec::new(),
        guest: false,
        pages: DEFAULT_PAGES,
    };
    let mut seen = [false; KEYS.len()];
    for word in words {
        let (key, value) = word.split_once('=').ok_or(ManifestError::NotKeyValue)?;
        if key.is_empty() {
            return Err(ManifestError::NotKeyValue);
        }
        let index = KEYS
            .iter()
            .position(|k| *k == key)
            .ok_or(ManifestError::UnknownKey)?;
        if core::mem::replace(&mut seen[index], true) {
            return Err(ManifestError::DuplicateKey);
        }
        if value.is_empty() {
            return Err(ManifestError::EmptyValue);
        }
        match index {
            0 => entry.restart = number(value)?,
            1 => entry.backoff = number(value)?,
            2 => entry.run = list(value)?,
            3 => entry.needs = list(value)?,
            5 => entry.pages = number(value)?,
            _ => {
                entry.guest = match value {
                    "service" => false,
                    "guest" => true,
                    _ => return Err(ManifestError::BadListItem),
                }
            }
        }
    }
    if entry.needs(&entry.name) {
        return Err(ManifestError::NeedsItself);
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[Name]) -> std::vec::Vec<&str> {
        v.iter().map(|s| s.as_str()).collect()
    }

    #[test]
    fn name_alone_takes_the_defaults() {
        let e = parse("supervisor").unwrap();
        assert_eq!(e.name, "supervisor");
        assert_eq!(e.restart, DEFAULT_RESTART);
        assert_eq!(e.backoff, DEFAULT_BACKOFF);
        assert!(e.run.is_empty() && e.needs.is_empty());
        assert!(e.runs_in("kernel") && e.runs_in("ipc"));
    }

    #[test]
    fn guest_images_never_run_as_services() {
        let e = parse("guest-multiboot image=guest").unwrap();
        assert!(e.guest);
        assert!(!e.runs_in("demo") && !e.runs_in("kernel"));
        assert!(!parse("echo image=service").unwrap().guest);
        assert_eq!(parse("g image=vm"), Err(ManifestError::BadListItem));
        assert_eq!(
            parse("g image=guest image=guest"),
            Err(ManifestError::DuplicateKey)
        );
    }

    #[test]
    fn the_boot_manifest_lines_parse() {
        let e = parse("echo restart=3 backoff=1").unwrap();
        assert_eq!((e.name.as_str(), e.restart, e.backoff), ("echo", 3, 1));
        let e = parse("ipc-suite run=ipc needs=echo,supervisor").unwrap();
        assert_eq!(e.name, "ipc-suite");
        assert_eq!(names(&e.run), ["ipc"]);
        assert_eq!(names(&e.needs), ["echo", "supervisor"]);
        assert!(e.runs_in("ipc") && !e.runs_in("kernel"));
        assert!(e.needs("echo") && !e.needs("bench-ipc"));
        let e = parse("bench-ipc run=bench-ipc").unwrap();
        assert!(e.runs_in("bench-ipc") && !e.runs_in("ipc"));
    }

    #[test]
    fn blanks_and_key_order_do_not_matter() {
        let a = parse("  echo\tbackoff=7   restart=0 ").unwrap();
        let b = parse("echo restart=0 backoff=7").unwrap();
        assert_eq!(a, b);
        assert_eq!((a.restart, a.backoff), (0, 7));
        let e = parse("x run=a,b,c,d").unwrap();
        assert_eq!(names(&e.run), ["a", "b", "c", "d"]);
    }

    #[test]
    fn malformed_lines_are_refused() {
        use ManifestError::*;
        let cases: &[(&str, ManifestError)] = &[
            ("", Empty),
            ("   \t ", Empty),
            ("restart=3", BadName),
            ("ec/ho", BadName),
            ("echo restart", NotKeyValue),
            ("echo =3", NotKeyValue),
            ("echo retries=3", UnknownKey),
            ("echo Restart=3", UnknownKey),
            ("echo restart=3 restart=4", DuplicateKey),
            ("echo needs=a needs=b", DuplicateKey),
            ("echo restart=", EmptyValue),
            ("echo run=", EmptyValue),
            ("echo restart=x", BadNumber),
            ("echo restart=-1", BadNumber),
            ("echo restart=+1", BadNumber),
            ("echo restart=4294967296", BadNumber),
            ("echo backoff=1.5", BadNumber),
            ("echo needs=a,,b", BadListItem),
            ("echo needs=a,", BadListItem),
            ("echo run=,ipc", BadListItem),
            ("echo run=ip=c", BadListItem),
            ("echo run=a,b,c,d,e,f,g,h,i,j,k,l,m", TooLong),
            ("echo needs=1,2,3,4,5,6,7,8,9", TooLong),
            ("an-overly-long-service-name-over-32b", TooLong),
            ("echo needs=x,echo", NeedsItself),
        ];
        for (line, want) in cases {
            assert_eq!(parse(line), Err(*want), "line {line:?}");
        }
    }

    #[test]
    fn numbers_use_their_full_range() {
        let e = parse("x restart=4294967295 backoff=18446744073709551615").unwrap();
        assert_eq!((e.restart, e.backoff), (u32::MAX, u64::MAX));
        assert_eq!(
            parse("x backoff=18446744073709551616"),
            Err(ManifestError::BadNumber)
        );
    }

    #[test]
    fn the_page_budget_defaults_and_parses() {
        assert_eq!(parse("x").unwrap().pages, DEFAULT_PAGES);
        assert_eq!(parse("x pages=17408").unwrap().pages, 17408);
        assert_eq!(parse("x pages=-1"), Err(ManifestError::BadNumber));
        assert_eq!(parse("x pages=1 pages=2"), Err(ManifestError::DuplicateKey));
    }

    #[test]
    fn errors_explain_themselves() {
        assert_eq!(
            std::format!("{}", ManifestError::UnknownKey),
            "unknown key (restart, backoff, run, needs, image, pages)"
        );
    }
}
