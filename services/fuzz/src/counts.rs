//! Named counters: errors by kind, replies by kind, how the hostile child ended.

use core::fmt::{self, Write};

use heapless::{String, Vec};

/// Longest counter name.
pub const NAME_MAX: usize = 48;

/// Counters by name, in the order first seen.
pub struct Counts {
    items: Vec<(String<NAME_MAX>, u64), 96>,
    /// Counts whose name did not fit the table.
    pub other: u64,
}

impl Counts {
    pub const fn new() -> Counts {
        Counts {
            items: Vec::new(),
            other: 0,
        }
    }

    pub fn add(&mut self, name: &str) {
        self.add_n(name, 1);
    }

    /// Adds `count` to the counter `name`.
    pub fn add_n(&mut self, name: &str, count: u64) {
        if let Some((_, n)) = self.items.iter_mut().find(|(k, _)| k == name) {
            *n += count;
            return;
        }
        let mut key = String::new();
        for c in name.chars() {
            if key.push(c).is_err() {
                break;
            }
        }
        if self.items.push((key, count)).is_err() {
            self.other += count;
        }
    }

    /// Counts a name made by formatting (cut to [`NAME_MAX`] bytes).
    pub fn add_fmt(&mut self, args: fmt::Arguments<'_>) {
        let mut key: Cut = Cut(String::new());
        let _ = key.write_fmt(args);
        self.add(&key.0);
    }

    /// Prints `fuzz: <title>: name=count ...`, a few counters per line.
    pub fn print(&self, title: &str) {
        if self.items.is_empty() {
            userlib::println!("fuzz: {title}: none");
        }
        for chunk in self.items.chunks(6) {
            let mut line: String<400> = String::new();
            for (k, n) in chunk {
                let _ = write!(line, " {k}={n}");
            }
            userlib::println!("fuzz: {title}:{line}");
        }
        if self.other > 0 {
            userlib::println!("fuzz: {title}: (others)={}", self.other);
        }
    }
}

/// A string sink that drops what does not fit.
struct Cut(String<NAME_MAX>);

impl Write for Cut {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            if self.0.push(c).is_err() {
                break;
            }
        }
        Ok(())
    }
}

/// The name of a `Debug` value up to its first field (`Kernel { error: 3 }` → `Kernel`).
pub fn kind_name(args: fmt::Arguments<'_>) -> String<NAME_MAX> {
    let mut s = Cut(String::new());
    let _ = s.write_fmt(args);
    let end = s.0.find([' ', '{', '(']).unwrap_or(s.0.len());
    let mut out = String::new();
    let _ = out.push_str(&s.0[..end]);
    out
}
